/**
 * io/atomic.ts, the one write path of the engine: a folder swapped for a symbolic link while a
 * file is written, a link at the final path, a link on the way to a folder under a write root,
 * and exclusive (must-be-new) writes. The swaps happen inside the write callback, i.e. after the
 * temp file was created and before the rename: the interleaving is forced, not timed.
 */
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  atomicWrite,
  atomicWriteFile,
  ensureDir,
  makeNewDir,
  withWriteRoots,
  writeRoot,
} from '../../src-main/engine/io/atomic.ts';

let dir: string;
let k = 0;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'singlora-atomic-'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

/** A fresh project-like folder and a folder outside it. */
async function layout() {
  const base = join(dir, `case${k++}`);
  const project = join(base, 'project');
  const outside = join(base, 'outside');
  await mkdir(join(project, 'adapters'), { recursive: true });
  await mkdir(outside, { recursive: true });
  return { project, outside };
}

describe('io/atomic.ts: writes never follow a link swapped in', () => {
  it('the folder replaced by a link while the file is written: refused, with or without write roots', async () => {
    for (const roots of [false, true]) {
      const { project, outside } = await layout();
      const folder = join(project, 'adapters');
      const write = () =>
        atomicWrite(join(folder, 'x.bin'), async (fh) => {
          await rename(folder, `${folder}-moved`);
          await symlink(outside, folder);
          await fh.writeFile('data');
        });
      const p = roots ? withWriteRoots([await writeRoot(project)], write) : write();
      await expect(p, `roots: ${roots}`).rejects.toThrow(/refusing to write .*x\.bin: its folder .* was replaced/);
      expect(readdirSync(outside)).toEqual([]);
      // The temp file stays in the moved folder (it can no longer be reached by its path), never renamed.
      expect(readdirSync(`${folder}-moved`).filter((f) => !/^\.x\.bin\.[0-9a-f]+\.tmp$/.test(f))).toEqual([]);
    }
  });

  it('a link at the final path is refused; the file it points to is untouched', async () => {
    const { project, outside } = await layout();
    const victim = join(outside, 'victim');
    await writeFile(victim, 'precious');
    await symlink(victim, join(project, 'adapters', 'x.bin'));
    await expect(atomicWriteFile(join(project, 'adapters', 'x.bin'), 'evil')).rejects.toThrow(
      /x\.bin: it is a symbolic link/,
    );
    expect(await readFile(victim, 'utf8')).toBe('precious');
    expect(readdirSync(join(project, 'adapters'))).toEqual(['x.bin']);
  });

  it('under a write root, a link on the way out of it is refused before any folder is made', async () => {
    const { project, outside } = await layout();
    await symlink(outside, join(project, 'escape'));
    const roots = [await writeRoot(project)];
    await expect(
      withWriteRoots(roots, () => atomicWriteFile(join(project, 'escape', 'deep', 'x.bin'), 'evil')),
    ).rejects.toThrow(/refusing to write .*x\.bin: .*escape\/deep leads to .*outside/);
    expect(readdirSync(outside)).toEqual([]);
    // A link that stays inside the root is fine; so is a write outside every root.
    await symlink(join(project, 'adapters'), join(project, 'inside'));
    await withWriteRoots(roots, () => atomicWriteFile(join(project, 'inside', 'ok.bin'), 'ok'));
    expect(await readFile(join(project, 'adapters', 'ok.bin'), 'utf8')).toBe('ok');
    await withWriteRoots(roots, () => atomicWriteFile(join(outside, 'cache.bin'), 'cache'));
    expect(readdirSync(outside)).toEqual(['cache.bin']);
    await expect(withWriteRoots(roots, () => ensureDir(join(project, 'escape', 'more')))).rejects.toThrow(/outside/);
    expect(existsSync(join(outside, 'more'))).toBe(false);
  });

  it('exclusive writes and folders refuse an existing name and leave it as it was', async () => {
    const { project } = await layout();
    const file = join(project, 'adapters', 'x.bin');
    await atomicWriteFile(file, 'first', { exclusive: true });
    await expect(atomicWriteFile(file, 'second', { exclusive: true })).rejects.toThrow(/x\.bin already exists/);
    expect(await readFile(file, 'utf8')).toBe('first');
    await atomicWriteFile(file, 'replaced');
    expect(await readFile(file, 'utf8')).toBe('replaced');
    expect(readdirSync(join(project, 'adapters'))).toEqual(['x.bin']);
    await makeNewDir(join(project, 'adapters', 'merged'));
    await expect(makeNewDir(join(project, 'adapters', 'merged'))).rejects.toThrow(/merged already exists/);
  });
});

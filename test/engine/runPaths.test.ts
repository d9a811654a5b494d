/**
 * Portable paths in run.json (issue 29): a base model inside the models folder is recorded relative
 * to it, a photo inside the run's project relative to the project, so that a machine mounting the
 * shared folder at another path finds them; anything else stays absolute, and run.json files with
 * absolute paths (written before) read as they are.
 */
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { newRunManifest, trainSettingsSchema, type RunManifest } from '../../src-main/api/schemas.ts';
import {
  portableBasePath,
  portablePhotoPath,
  runBasePath,
  runPhotoPaths,
} from '../../src-main/engine/train/runFiles.ts';

const root = mkdtempSync(join(tmpdir(), 'singlora-runpaths-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** `<root>/share` with a project (photos, a run folder) and a models folder, seen through two mount paths. */
function share() {
  const dir = join(root, 'share');
  mkdirSync(join(dir, 'data/proj/photos'), { recursive: true });
  mkdirSync(join(dir, 'data/proj/runs/r1'), { recursive: true });
  mkdirSync(join(dir, 'models/toy-sd'), { recursive: true });
  writeFileSync(join(dir, 'data/proj/project.json'), '{}');
  writeFileSync(join(dir, 'data/proj/photos/a.png'), '');
  for (const m of ['mnt-a', 'mnt-b']) symlinkSync(dir, join(root, m), 'dir');
  return (mount: string) => ({
    models: join(root, mount, 'models'),
    run: join(root, mount, 'data/proj/runs/r1'),
    photo: join(root, mount, 'data/proj/photos/a.png'),
  });
}
const at = share();

function manifest(base: string, used: string[]): RunManifest {
  const settings = trainSettingsSchema.parse({});
  return newRunManifest({
    id: 'r1',
    status: 'running',
    settings,
    baseModel: { path: base, name: 'toy-sd', unetSha256: '' },
    backend: '',
    usedPhotos: used,
  });
}

describe('run.json paths', () => {
  it('records a base model in the models folder and a photo in the project relative to them', () => {
    const a = at('mnt-a');
    expect(portableBasePath(join(a.models, 'toy-sd'), a.models)).toBe('toy-sd');
    expect(portablePhotoPath(a.run, a.photo)).toBe('photos/a.png');
  });

  it('keeps a path outside those folders (or with no models folder given) absolute', () => {
    const a = at('mnt-a');
    const elsewhere = join(root, 'elsewhere/base');
    expect(portableBasePath(elsewhere, a.models)).toBe(elsewhere);
    expect(portableBasePath(join(a.models, 'toy-sd'), undefined)).toBe(join(a.models, 'toy-sd'));
    expect(portableBasePath(`${a.models}-other/x`, a.models)).toBe(`${a.models}-other/x`);
    expect(portablePhotoPath(a.run, join(root, 'elsewhere/b.png'))).toBe(join(root, 'elsewhere/b.png'));
  });

  it('keeps photos absolute for a run folder that is in no project (no project.json above it)', () => {
    const run = join(root, 'cli/runs/r2');
    mkdirSync(run, { recursive: true });
    const photo = join(root, 'cli/photos/a.png');
    expect(portablePhotoPath(run, photo)).toBe(photo);
  });

  it('a run written through one mount path reads through another', () => {
    const [a, b] = [at('mnt-a'), at('mnt-b')];
    const m = manifest(portableBasePath(join(a.models, 'toy-sd'), a.models), [portablePhotoPath(a.run, a.photo)]);
    expect(JSON.stringify(m)).not.toContain(root);
    expect(runBasePath(m, b.models)).toBe(join(b.models, 'toy-sd'));
    expect(runPhotoPaths(b.run, m)).toEqual([b.photo]);
  });

  it('an older run.json with absolute paths reads as it was written', () => {
    const a = at('mnt-a');
    const m = manifest(join(a.models, 'toy-sd'), [a.photo]);
    expect(runBasePath(m, at('mnt-b').models)).toBe(join(a.models, 'toy-sd'));
    expect(runPhotoPaths(at('mnt-b').run, m)).toEqual([a.photo]);
    expect(runBasePath(manifest('', []), a.models)).toBe('');
  });
});

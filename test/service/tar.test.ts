/**
 * Export folders as one download (gateway/tar.ts, served by the server as
 * /files/<project>/adapters/<folder>.tar): the archive is read back here, header by header, and by
 * the system's `tar` where there is one.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tarEntries, tarSize, writeTar } from '../../src-main/gateway/tar.ts';
import { startServer, type RunningServer } from '../../src-main/server.ts';
import { Service } from '../../src-main/service/service.ts';
import { fakeEngine } from './fakeEngine.ts';
import { readTar } from '../helpers/tar.ts';
import { tempDir } from './helpers.ts';

let dir: string;
let cleanup: () => Promise<void>;
let folder: string;
const LONG = `${'deep-folder-name-'.repeat(4)}x/${'file-name-'.repeat(8)}.json`; // over 100 bytes: uses the prefix field

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('singlora-tar-'));
  folder = join(dir, 'merged');
  await mkdir(join(folder, 'unet'), { recursive: true });
  await mkdir(join(folder, `${'deep-folder-name-'.repeat(4)}x`), { recursive: true });
  await writeFile(join(folder, 'model_index.json'), '{"_class_name": "StableDiffusionPipeline"}');
  await writeFile(join(folder, 'unet', 'weights.safetensors'), Buffer.alloc(1300, 7)); // not a multiple of 512
  await writeFile(join(folder, 'unet', 'empty.txt'), '');
  await writeFile(join(folder, LONG), '{"long": true}');
});
afterAll(async () => {
  await cleanup?.();
});

async function pack(root: string): Promise<Buffer> {
  const entries = await tarEntries(folder, root);
  const sink = new PassThrough();
  const chunks: Buffer[] = [];
  sink.on('data', (c: Buffer) => chunks.push(c));
  await writeTar(entries, sink);
  const buf = Buffer.concat(chunks);
  expect(buf.length).toBe(tarSize(entries));
  return buf;
}

describe('tar', () => {
  it('packs every folder and file with its bytes; reads back entry by entry', async () => {
    const entries = readTar(await pack('merged'));
    expect(entries.map((e) => [e.name, e.type])).toEqual([
      ['merged/', '5'],
      [`merged/${'deep-folder-name-'.repeat(4)}x/`, '5'],
      [`merged/${LONG}`, '0'],
      ['merged/model_index.json', '0'],
      ['merged/unet/', '5'],
      ['merged/unet/empty.txt', '0'],
      ['merged/unet/weights.safetensors', '0'],
    ]);
    expect(entries.find((e) => e.name.endsWith('weights.safetensors'))!.data).toEqual(Buffer.alloc(1300, 7));
    expect(entries.find((e) => e.name === `merged/${LONG}`)!.data.toString()).toBe('{"long": true}');
  });

  it.skipIf(!existsSync('/usr/bin/tar'))('the system tar extracts the same files', async () => {
    const archive = join(dir, 'out.tar');
    await writeFile(archive, await pack('merged'));
    const out = join(dir, 'extracted');
    await mkdir(out);
    await promisify(execFile)('/usr/bin/tar', ['-xf', archive, '-C', out]);
    expect(await readFile(join(out, 'merged', 'unet', 'weights.safetensors'))).toEqual(Buffer.alloc(1300, 7));
    expect(await readFile(join(out, 'merged', LONG), 'utf8')).toBe('{"long": true}');
  });

  it('refuses a link inside the folder instead of following it', async () => {
    const linked = join(dir, 'linked');
    await mkdir(linked);
    await symlink('/etc/passwd', join(linked, 'passwd'));
    await expect(tarEntries(linked, 'linked')).rejects.toThrow(
      /^linked\/passwd is a symbolic link; only files and folders are packed \(remove it, then download linked.tar again\)$/,
    );
  });

  it('the server sends an export folder as <folder>.tar (token required); nothing outside adapters/', async () => {
    const service = await Service.open({
      dataDir: join(dir, 'data'),
      modelsDir: join(dir, 'models'),
      log: () => {},
      spawnEngine: fakeEngine({}).spawn,
    });
    let server: RunningServer | null = null;
    try {
      server = await startServer({ port: 0, service, rendererDir: join(dir, 'none'), log: () => {} });
      const p = (await service.call('projects.create', { name: 'Tar' })) as { id: string };
      const pdir = service.store.dir(p.id);
      await mkdir(join(pdir, 'adapters', 'm', 'unet'), { recursive: true });
      await writeFile(join(pdir, 'adapters', 'm', 'unet', 'w.bin'), 'weights');
      const url = `${server.url}files/${p.id}/adapters/m.tar`;
      expect((await fetch(url)).status).toBe(401);
      const r = await fetch(`${url}?token=${server.token}`);
      expect(r.status).toBe(200);
      expect(r.headers.get('content-type')).toBe('application/x-tar');
      expect(r.headers.get('content-disposition')).toBe('attachment; filename="m.tar"');
      const buf = Buffer.from(await r.arrayBuffer());
      expect(Number(r.headers.get('content-length'))).toBe(buf.length);
      expect(readTar(buf).map((e) => [e.name, e.data.toString()])).toEqual([
        ['m/', ''],
        ['m/unet/', ''],
        ['m/unet/w.bin', 'weights'],
      ]);
      expect((await fetch(`${server.url}files/${p.id}/photos.tar?token=${server.token}`)).status).toBe(404);
      // Issue 27 item 7: a link inside is a 409 that names it in the archive (was: 500 "internal").
      await symlink('/etc/passwd', join(pdir, 'adapters', 'm', 'unet', 'passwd'));
      const linked = await fetch(`${url}?token=${server.token}`);
      expect(linked.status).toBe(409);
      const { error } = (await linked.json()) as { error: { code: string; message: string } };
      expect(error).toEqual({
        code: 'conflict',
        message:
          'm/unet/passwd is a symbolic link; only files and folders are packed (remove it, then download m.tar again)',
      });
      expect((await fetch(`${server.url}files/${p.id}/adapters/none.tar?token=${server.token}`)).status).toBe(404);
    } finally {
      await server?.close();
      await service.close();
    }
  });
});

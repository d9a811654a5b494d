/**
 * Run by fullDisk.test.ts inside a mount namespace, with `<dir>` a small tmpfs: opens a service
 * there, fills the disk, and prints what each request answered as one JSON line.
 */
import { open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Service } from '../../src-main/service/service.ts';
import { shapePng, TINY_MODEL } from './helpers.ts';

const dir = process.argv[2];
const service = await Service.open({
  dataDir: join(dir, 'data'),
  modelsDir: join(dir, 'models'),
  defaultBaseModel: TINY_MODEL,
  log: () => {},
  spawnEngine: () => {
    throw new Error('no engine in this test');
  },
});
const out: Record<string, unknown> = {};
const attempt = async (name: string, fn: () => Promise<unknown>) => {
  try {
    out[name] = { ok: true, result: await fn() };
  } catch (err) {
    out[name] = { ok: false, code: (err as { code?: string }).code, message: (err as Error).message };
  }
};
const project = (await service.call('projects.create', { name: 'Before' })) as { id: string };
// A project ready to train (photos at 64 px), for a training.start on the full disk.
const trainer = (await service.call('projects.create', { name: 'Trainer' })) as { id: string };
await service.call('projects.update', { projectId: trainer.id, settings: { resolution: 64 } });
await service.call('photos.add', {
  projectId: trainer.id,
  files: [{ name: 't.png', dataBase64: (await shapePng(1, 64)).toString('base64') }],
});

// Fill the disk.
const fh = await open(join(dir, 'filler'), 'w');
const block = Buffer.alloc(4096, 1);
try {
  for (;;) await fh.write(block);
} catch (err) {
  out.filled = (err as NodeJS.ErrnoException).code;
}
await fh.close();

await attempt('create', () => service.call('projects.create', { name: 'After' }));
await attempt('photo', async () =>
  service.call('photos.add', {
    projectId: project.id,
    files: [{ name: 'p.png', dataBase64: (await shapePng(0)).toString('base64') }],
  }),
);
await attempt('update', () =>
  service.call('projects.update', { projectId: project.id, name: 'Renamed on a full disk' }),
);
await attempt('train', () => service.call('training.start', { projectId: trainer.id, settings: {} }));
out.runs = await readdir(service.store.runDir(trainer.id, 'x').replace(/[/\\]x$/, ''));
out.folders = await readdir(join(dir, 'data', 'projects'));
await attempt('open', () => service.call('projects.open', { projectId: project.id }));
await attempt('list', () => service.call('projects.list', {}));
await service.close();
process.stdout.write(`${JSON.stringify(out)}\n`);

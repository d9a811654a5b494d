/**
 * The service's guards, each a reproduction of a failure found by review (issue 15), on a fake
 * engine (fakeEngine.ts): no request may make a project unreadable; every host path goes through
 * one policy, checked when it is used; failures end in a state the user can act on.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { api, type Method } from '../../src-main/api/contract.ts';
import { readRunManifest, writeRunManifest } from '../../src-main/engine/train/runFiles.ts';
import type { ServiceOptions } from '../../src-main/service/service.ts';
import type { FakeHandlers } from './fakeEngine.ts';
import { apiError, fakeServices, finished, shapePng, TINY_MODEL } from './helpers.ts';

/** A gate a fake request waits on. */
function gate() {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  return { open, opened };
}

const engine: FakeHandlers = {
  train: async (p) => ({ status: 'completed', step: 1, error: null, fixedLoss: null, ...(p.resume ? {} : {}) }),
  generate: async () => ({ files: [] }),
  export: async (p) => {
    await writeFile(p.out, 'exported');
    return { format: p.format, path: p.out, tensors: 1 };
  },
  inspect: async (p) => p.files.map(() => ({ ok: false, error: 'not an adapter (fake engine)' })),
  doctor: async () => ({
    node: process.version,
    platform: process.platform,
    backends: [],
    selected: { name: 'fake' },
    memory: {},
  }),
  evaluate: async () => {
    throw new Error('no evaluation in the fake engine');
  },
};

const openService = fakeServices('singlora-guards-', { maxPhotoBytes: 200_000 });
const root = () => openService.root();

/** A service on the fake engine (`handlers`, by default the one above). */
function open(opts: Partial<ServiceOptions> = {}, handlers: FakeHandlers = engine) {
  return openService(handlers, opts);
}

async function projectWithPhotos(call: Awaited<ReturnType<typeof open>>['call']): Promise<string> {
  const p = await call('projects.create', { name: 'Dog' });
  await call('photos.add', {
    projectId: p.id,
    files: await Promise.all(
      [0, 1, 2].map(async (k) => ({ name: `p${k}.png`, dataBase64: (await shapePng(k)).toString('base64') })),
    ),
  });
  return p.id;
}

// -------------------------------------------------------------------------------------------------

/** Every leaf field of a params schema, as a path (objects are walked; unions are leaves). */
function fieldPaths(schema: z.ZodType, prefix: string[] = []): string[][] {
  let s = schema as z.ZodType & { def: { type: string; innerType?: z.ZodType } };
  while (['optional', 'default', 'nullable', 'prefault', 'readonly'].includes(s.def.type))
    s = s.def.innerType as typeof s;
  if (s instanceof z.ZodObject)
    return Object.entries(s.shape).flatMap(([k, v]) => fieldPaths(v as z.ZodType, [...prefix, k]));
  return [prefix];
}

function withField(base: Record<string, unknown>, path: string[], value: unknown): Record<string, unknown> {
  const out = structuredClone(base);
  let o = out;
  for (const k of path.slice(0, -1))
    o = (o[k] = typeof o[k] === 'object' && o[k] !== null ? o[k] : {}) as Record<string, unknown>;
  o[path[path.length - 1]] = value;
  return out;
}

const BAD_VALUES: unknown[] = [
  '',
  '   ',
  'x'.repeat(65),
  'x'.repeat(5_000_000),
  '\0',
  '../../../etc/passwd',
  '/etc/passwd',
  -1,
  0,
  1.5,
  1e15,
  1e308,
  -1e308,
  null,
  true,
  [],
  ['x'.repeat(5000)],
  Array(1000).fill('a'),
  {},
];

describe('validate before write', () => {
  it('projects.update with a blank or over-long subject is refused and the project still loads (was: 500 after the write, project gone)', async () => {
    const { call } = await open();
    const p = await call('projects.create', { name: 'Dog' });
    for (const subject of [{ triggerToken: '' }, { triggerToken: '   ' }, { classWord: 'x'.repeat(65) }]) {
      const e = await apiError(call('projects.update', { projectId: p.id, subject }));
      expect(e.code).toBe('invalid_params');
    }
    expect((await call('projects.list', {})).map((x) => x.id)).toEqual([p.id]);
    expect(await call('projects.open', { projectId: p.id })).toEqual(p);
  });

  it('refuses unbounded fields (a 5,000,000-character prompt, checkpointEvery 1e15, maxGradNorm 1e308, 1,000 sample prompts)', async () => {
    const { call } = await open();
    const p = await call('projects.create', { name: 'Dog' });
    for (const settings of [
      { instancePrompt: 'x'.repeat(5_000_000) },
      { checkpointEvery: 1e15 },
      { maxGradNorm: 1e308 },
      { samplePrompts: Array(1000).fill('a') },
      { classPrompt: 'x'.repeat(5000) },
    ]) {
      expect((await apiError(call('projects.update', { projectId: p.id, settings }))).code).toBe('invalid_params');
    }
  });

  it('every field of every method, given invalid values, leaves the project loadable', async () => {
    const { service, call } = await open();
    const projectId = await projectWithPhotos(call);
    const { runId, jobId } = await call('training.start', { projectId, settings: { steps: 2 } });
    await finished(service, jobId);
    const before = await call('projects.open', { projectId });
    const templates: Record<Method, Record<string, unknown>> = {
      'system.doctor': {},
      'system.info': {},
      'settings.get': {},
      'settings.set': { engine: 'onnx', provider: 'cpu' },
      'projects.list': {},
      'projects.create': { name: 'Cat' },
      'projects.open': { projectId },
      'projects.update': {
        projectId,
        name: 'Dog',
        subject: { triggerToken: 'sks', classWord: 'dog', type: 'live' },
        baseModel: null,
        settings: { steps: 2 },
      },
      'projects.delete': { projectId: 'no-such-project' },
      'photos.add': { projectId, files: [{ name: 'x.png', dataBase64: 'AAAA' }], paths: [] },
      'photos.list': { projectId },
      'photos.remove': { projectId, photoId: 'no-such-photo.png' },
      'photos.cropPreview': { projectId, photoId: 'p0.png', crop: 'center', size: 64 },
      'training.start': { projectId, settings: { steps: 2 } },
      'training.cancel': { jobId: 'job-none' },
      'training.resume': { projectId, runId },
      'training.runs': { projectId },
      'training.status': { projectId, runId },
      'evaluation.start': {
        projectId,
        runId,
        checkpoints: 'all',
        quick: true,
        imagesPerPrompt: 1,
        prompts: ['a photo'],
      },
      'evaluation.check': { projectId },
      'evaluation.images': { projectId, runId },
      'evaluation.get': { projectId, runId },
      'evaluation.choose': { projectId, runId, step: 1 },
      'generation.start': { projectId, settings: { prompt: 'a dog', steps: 2, width: 64, height: 64 }, adapters: [] },
      'generation.list': { projectId },
      'adapters.list': { projectId },
      'adapters.export': {
        projectId,
        adapter: { file: 'adapters/none.safetensors' },
        format: 'kohya',
        outPath: 'adapters/out.safetensors',
      },
      'adapters.import': { projectId, path: 'adapters/none.safetensors' },
      'adapters.inspect': { projectId, file: 'adapters/none.safetensors' },
      'models.list': {},
      'models.bases': {},
      'models.setBase': { projectId, path: '/nonexistent/model' },
      'models.download': { name: 'nope' },
      'jobs.list': {},
      'jobs.queue': {},
      'jobs.cancel': { jobId: 'job-none' },
      'desktop.reveal': { projectId, file: 'images/none.png' },
      'desktop.pickBaseModel': { kind: 'folder' },
    };
    let calls = 0;
    const t0 = performance.now();
    const internal: string[] = [];
    for (const method of Object.keys(api) as Method[]) {
      for (const path of fieldPaths(api[method].params)) {
        if (!path.length) continue;
        for (const value of BAD_VALUES) {
          calls++;
          await service
            .call(method, withField(templates[method], path, value))
            .catch((err: { code?: string; message: string }) => {
              if (err.code === 'internal')
                internal.push(
                  `${method} ${path.join('.')}=${JSON.stringify(value)?.slice(0, 40)}: ${err.message.slice(0, 200)}`,
                );
            });
          await service.jobs.idle();
          const list = await call('projects.list', {});
          if (!list.some((x) => x.id === projectId))
            throw new Error(
              `${method} ${path.join('.')}=${JSON.stringify(value)?.slice(0, 40)} made the project unreadable`,
            );
        }
      }
    }
    expect(internal).toEqual([]);
    console.log(`guards: ${calls} invalid calls in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    expect(calls).toBeGreaterThan(1000);
    const after = await call('projects.open', { projectId });
    expect(after.id).toBe(before.id);
    expect(after.subject.triggerToken.trim()).not.toBe('');
  }, 300_000);
});

describe('one path policy', () => {
  it('class-image folders live inside the project: an absolute one is refused on loopback and with --allow-remote, and nothing is created', async () => {
    for (const hostPaths of ['allow', 'deny'] as const) {
      const { service, call, requests } = await open({ hostPaths });
      const projectId = await projectWithPhotos(call);
      const outside = join(root(), `class-${hostPaths}`);
      const settings = { priorPreservation: true, classImagesDir: outside };
      expect((await apiError(call('training.start', { projectId, settings }))).message).toMatch(
        /classImagesDir: .* is outside the project/,
      );
      expect((await apiError(call('projects.update', { projectId, settings }))).code).toBe('invalid_params');
      expect(existsSync(outside)).toBe(false);
      expect(requests.filter((r) => r.kind === 'train')).toEqual([]);
      // ... and a symlink inside the project that leads out is refused too.
      await mkdir(outside);
      await symlink(outside, join(service.store.dir(projectId), 'escape'));
      expect(
        (
          await apiError(
            call('training.start', { projectId, settings: { priorPreservation: true, classImagesDir: 'escape/x' } }),
          )
        ).code,
      ).toBe('invalid_params');
    }
  });

  it('a folder inside the project is resolved for the engine; the desktop app may use a folder the user picked', async () => {
    const { service, call, requests } = await open();
    const projectId = await projectWithPhotos(call);
    const { jobId } = await call('training.start', {
      projectId,
      settings: { priorPreservation: true, classImagesDir: 'class-images/dog', steps: 2 },
    });
    await finished(service, jobId);
    // Resolved beside the settings, which keep the relative folder (run.json is written from them).
    const sent = requests.find((r) => r.kind === 'train')!.params as {
      classImagesDir: string;
      settings: { classImagesDir: string };
    };
    expect(sent.classImagesDir).toBe(join(service.store.dir(projectId), 'class-images', 'dog'));
    expect(sent.settings.classImagesDir).toBe('class-images/dog');

    const desktop = await open({ hostPaths: 'desktop' });
    const id2 = await projectWithPhotos(desktop.call);
    const picked = join(root(), 'picked-class-images');
    const started = await desktop.call('training.start', {
      projectId: id2,
      settings: { priorPreservation: true, classImagesDir: picked, steps: 2 },
    });
    await finished(desktop.service, started.jobId);
    expect(
      (desktop.requests.find((r) => r.kind === 'train')!.params as { classImagesDir: string }).classImagesDir,
    ).toBe(picked);
  });

  it('with --allow-remote, models.setBase and projects.update baseModel say nothing about files outside the models folder', async () => {
    const { call } = await open({ hostPaths: 'deny' });
    const p = await call('projects.create', { name: 'Dog' });
    const existing = await apiError(call('models.setBase', { projectId: p.id, path: '/etc/passwd' }));
    const missing = await apiError(call('models.setBase', { projectId: p.id, path: '/etc/no-such-file' }));
    expect(existing.code).toBe('invalid_params');
    expect(existing.message).toBe(missing.message);
    expect(existing.message).not.toMatch(/root:|ENOENT|not found|header/i);
    const viaUpdate = await apiError(call('projects.update', { projectId: p.id, baseModel: '/etc/passwd' }));
    expect(viaUpdate.message).toMatch(/^baseModel: this server only uses base models inside its models folder/);
    expect((await call('projects.open', { projectId: p.id })).baseModel).toBeNull();
  });

  it('a base model inside the models folder is allowed with --allow-remote', async () => {
    const { service, call } = await open({ hostPaths: 'deny' });
    await mkdir(service.modelsDir, { recursive: true });
    await symlink(TINY_MODEL, join(service.modelsDir, 'tiny'));
    const p = await call('projects.create', { name: 'Dog' });
    // The symlink's real path is outside the models folder: refused (the real path decides).
    expect(
      (await apiError(call('models.setBase', { projectId: p.id, path: join(service.modelsDir, 'tiny') }))).code,
    ).toBe('invalid_params');
  });

  it('photos.add from paths takes photos only, up to the upload limit (was: /etc/passwd and /proc/self/environ copied in)', async () => {
    const { service, call } = await open();
    const p = await call('projects.create', { name: 'Dog' });
    for (const path of ['/etc/passwd', '/proc/self/environ']) {
      const e = await apiError(call('photos.add', { projectId: p.id, paths: [path] }));
      expect(e.message).toMatch(/is not a photo/);
    }
    const big = join(root(), 'big.png');
    await writeFile(big, Buffer.alloc(300_000, 1));
    expect((await apiError(call('photos.add', { projectId: p.id, paths: [big] }))).code).toBe('too_large');
    const dev = join(root(), 'zero.png');
    await symlink('/dev/zero', dev);
    expect((await apiError(call('photos.add', { projectId: p.id, paths: [dev] }))).message).toMatch(/is not a file/);
    expect(await readdir(join(service.store.dir(p.id), 'photos'))).toEqual([]);
    const ok = join(root(), 'ok.png');
    await writeFile(ok, await shapePng(3));
    expect((await call('photos.add', { projectId: p.id, paths: [ok] })).map((x) => x.id)).toEqual(['ok.png']);
  });

  it('adapters.export checks its destination again when the job runs (was: a symlink made in between redirected the write)', async () => {
    const hold = gate();
    const { service, call, requests } = await open(
      {},
      {
        ...engine,
        train: async () => (await hold.opened, { status: 'completed', step: 1, error: null, fixedLoss: null }),
      },
    );
    const projectId = await projectWithPhotos(call);
    const dir = service.store.dir(projectId);
    await writeFile(join(dir, 'adapters', 'mine.safetensors'), 'adapter');
    const training = await call('training.start', { projectId, settings: { steps: 2 } });
    const { jobId } = await call('adapters.export', {
      projectId,
      adapter: { file: 'adapters/mine.safetensors' },
      format: 'kohya',
      outPath: 'adapters/out.safetensors',
    });
    expect(service.jobs.get(jobId)!.status).toBe('queued');
    const outside = join(root(), 'outside-export.safetensors');
    await symlink(outside, join(dir, 'adapters', 'out.safetensors'));
    hold.open();
    await finished(service, training.jobId);
    const job = await finished(service, jobId);
    expect(job.status).toBe('failed');
    expect(job.error).toMatch(/outPath: 'adapters\/out.safetensors' already exists/);
    expect(existsSync(outside)).toBe(false);
    expect(requests.some((r) => r.kind === 'export')).toBe(false);
  });
});

describe('failures end in a state the user can act on', () => {
  it('ENOSPC during training: the job says "disk full: <path>", the run is paused at its checkpoint, and resume works (was: raw message, run stuck running, 409)', async () => {
    let fail = true;
    const { service, call } = await open(
      {},
      {
        ...engine,
        train: async (p) => {
          if (!fail) return { status: 'completed', step: 2, error: null, fixedLoss: null };
          // What the trainer got to write before the disk filled: running, one checkpoint.
          const m = await readRunManifest(p.runDir);
          await writeRunManifest(p.runDir, {
            ...m,
            status: 'running',
            step: 1,
            checkpoints: [
              {
                step: 1,
                dir: 'checkpoints/step-000001',
                adapter: 'checkpoints/step-000001/adapter.safetensors',
                createdAt: m.createdAt,
                loss: 0.1,
              },
            ],
          });
          throw new Error(`ENOSPC: no space left on device, write '${join(p.runDir, 'samples', 'step-000002-0.png')}'`);
        },
      },
    );
    const projectId = await projectWithPhotos(call);
    const { jobId, runId } = await call('training.start', { projectId, settings: { steps: 2 } });
    const job = await finished(service, jobId);
    expect(job.status).toBe('failed');
    expect(job.error).toMatch(
      /^disk full: .*step-000002-0\.png \(free some space, then try again\); the run keeps its last checkpoint \(step 1\) and can be resumed$/,
    );
    const run = await call('training.status', { projectId, runId });
    expect(run.status).toBe('paused');
    expect(run.error).toBe(job.error);
    fail = false;
    const resumed = await call('training.resume', { projectId, runId });
    expect((await finished(service, resumed.jobId)).status).toBe('done');
  });

  it('a trainer that records its own failure gets the readable reason in run.json; a class-image folder refused at run time fails the run, not leaves it queued', async () => {
    const { service, call } = await open(
      {},
      {
        ...engine,
        train: async (p) => {
          const m = await readRunManifest(p.runDir);
          const error = `EACCES: permission denied, open '${join(p.runDir, 'samples')}'`;
          await writeRunManifest(p.runDir, { ...m, status: 'failed', error });
          return { status: 'failed', step: 0, error, fixedLoss: null };
        },
      },
    );
    const projectId = await projectWithPhotos(call);
    const { jobId, runId } = await call('training.start', { projectId, settings: { steps: 2 } });
    const job = await finished(service, jobId);
    expect(job.error).toMatch(
      /^permission denied: .*samples \(check the folder's permissions\); no checkpoint was written yet, so start the run again$/,
    );
    expect((await call('training.status', { projectId, runId })).error).toBe(job.error);

    // The folder was fine when asked for; a symlink out of the project appears before the job runs.
    const hold = gate();
    const second = await open({}, { ...engine, generate: async () => (await hold.opened, { files: [] }) });
    const id2 = await projectWithPhotos(second.call);
    const blocker = await second.call('generation.start', {
      projectId: id2,
      settings: { prompt: 'a dog', steps: 2, width: 64, height: 64 },
    });
    const started = await second.call('training.start', {
      projectId: id2,
      settings: { steps: 2, priorPreservation: true, classImagesDir: 'class-images' },
    });
    await mkdir(join(root(), 'elsewhere'), { recursive: true });
    await symlink(join(root(), 'elsewhere'), join(second.service.store.dir(id2), 'class-images'));
    hold.open();
    await finished(second.service, blocker.jobId);
    const failed = await finished(second.service, started.jobId);
    expect(failed.error).toMatch(/settings.classImagesDir: 'class-images' leads outside its folder/);
    expect((await second.call('training.status', { projectId: id2, runId: started.runId })).status).toBe('failed');
    expect(second.requests.some((r) => r.kind === 'train')).toBe(false);
  });

  it('a run left "running" with no job behind it can be resumed without a restart', async () => {
    const { service, call } = await open();
    const projectId = await projectWithPhotos(call);
    const { jobId, runId } = await call('training.start', { projectId, settings: { steps: 2 } });
    await finished(service, jobId);
    const runDir = service.store.runDir(projectId, runId);
    const m = await readRunManifest(runDir);
    await writeRunManifest(runDir, {
      ...m,
      status: 'running',
      step: 1,
      checkpoints: [
        {
          step: 1,
          dir: 'checkpoints/step-000001',
          adapter: 'checkpoints/step-000001/adapter.safetensors',
          createdAt: m.createdAt,
          loss: 0.1,
        },
      ],
    });
    const resumed = await call('training.resume', { projectId, runId });
    expect(resumed.runId).toBe(runId);
  });

  it('jobs.json write failures reach the client, and the job is withdrawn', async () => {
    const { service, call, requests } = await open();
    const projectId = await projectWithPhotos(call);
    // jobs.json becomes a folder with a file in it: renaming over it fails.
    const jobsFile = join(service.dataDir, 'jobs.json');
    await mkdir(join(jobsFile, 'blocked'), { recursive: true });
    const e = await apiError(
      call('generation.start', { projectId, settings: { prompt: 'a dog', steps: 2, width: 64, height: 64 } }),
    );
    expect(e.message).toMatch(/^cannot start the generate job: cannot write .*jobs\.json/);
    await service.jobs.idle();
    const generate = service.jobs.list().filter((j) => j.kind === 'generate');
    expect(generate.map((j) => [j.status, j.error?.slice(0, 25)])).toEqual([
      ['cancelled', 'not started: cannot write'],
    ]);
    expect(requests.some((r) => r.kind === 'generate')).toBe(false);
    expect(JSON.parse(await readFile(join(service.store.dir(projectId), 'project.json'), 'utf8')).id).toBe(projectId);
  });
});

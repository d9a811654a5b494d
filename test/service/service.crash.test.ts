/**
 * Crash safety: the engine process is SIGKILLed in the middle of a training step. The project,
 * its photos and the last checkpoint must survive; the run must become resumable and
 * `training.resume` must finish it from that checkpoint. Then the service itself "dies" (its
 * files are left as a crash leaves them) and the next service settles what was interrupted.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { cp, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EventData, Job, Params, Result } from '../../src-main/api/contract.ts';
import type { Method } from '../../src-main/api/contract.ts';
import { readRunManifest, writeRunManifest } from '../../src-main/engine/train/runFiles.ts';
import { forkEngine, type EngineProcess } from '../../src-main/service/engineHost.ts';
import { INTERRUPTED_QUEUED, INTERRUPTED_RUNNING } from '../../src-main/service/jobs.ts';
import { Service } from '../../src-main/service/service.ts';
import { apiError, recordEvents, shapePng, tempDir, TINY_MODEL } from './helpers.ts';

/** Training on wasm on 2 shared cores: generous, so a busy machine does not fail the test. */
const LONG = 300_000;

let dir: string;
let cleanup: () => Promise<void>;
let service: Service;
let rec: ReturnType<typeof recordEvents>;
const spawned: EngineProcess[] = [];
const call = <M extends Method>(m: M, p: Params<M>) => service.call(m, p) as Promise<Result<M>>;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const open = () =>
  Service.open({
    dataDir: join(dir, 'data'),
    modelsDir: join(dir, 'models'),
    backend: 'wasm',
    log: () => {},
    spawnEngine: (o) => {
      const p = forkEngine(o);
      spawned.push(p);
      return p;
    },
  });

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
  service = await open();
  rec = recordEvents(service);
});
afterAll(async () => {
  rec?.stop();
  await service?.close();
  await cleanup?.();
});

describe('the engine process dies during training', () => {
  let projectId: string;
  let runId: string;
  let photoHashes: Map<string, string>;
  let lastCheckpoint: number;

  it(
    'SIGKILL mid-step: the job fails with a clear message; the run is paused at its last checkpoint',
    async () => {
      const p = await call('projects.create', { name: 'Crash test', classWord: 'dog', triggerToken: 'zwx' });
      projectId = p.id;
      await call('projects.update', { projectId, settings: { resolution: 64 } });
      await call('models.setBase', { projectId, path: TINY_MODEL });
      const pngs = await Promise.all([0, 1, 2].map((k) => shapePng(k)));
      photoHashes = new Map(pngs.map((b, k) => [`p${k}.png`, sha(b)]));
      await call('photos.add', {
        projectId,
        files: pngs.map((b, k) => ({ name: `p${k}.png`, dataBase64: b.toString('base64') })),
      });

      const r = await call('training.start', { projectId, settings: { steps: 4, checkpointEvery: 1, sampleEvery: 0 } });
      runId = r.runId;
      await rec.waitFor(
        (e) => e.event === 'train.event' && (e.data as EventData<'train.event'>).event.event === 'checkpoint',
        180_000,
        'the first checkpoint',
      );
      // The next step has started in the engine: kill it now.
      expect(spawned.length).toBe(1);
      spawned[0].kill('SIGKILL');

      const job = await service.jobs.wait(r.jobId);
      const m = await readRunManifest(service.store.runDir(projectId, runId));
      lastCheckpoint = Math.max(...m.checkpoints.map((c) => c.step));
      expect(lastCheckpoint).toBeGreaterThanOrEqual(1);
      expect(lastCheckpoint).toBeLessThan(4);
      const message = `the engine process exited (signal SIGKILL) during training; the run keeps its last checkpoint (step ${lastCheckpoint}) and can be resumed`;
      expect(job).toMatchObject({ status: 'failed', error: message });
      expect(m).toMatchObject({ status: 'paused', error: message });
      const crashed = rec.of<EventData<'engine.status'>>('engine.status').at(-1)!;
      expect(crashed.state).toBe('crashed');
      expect(crashed.message).toContain('signal SIGKILL');
    },
    LONG,
  );

  it('the project still opens; photos and the checkpoint are intact', async () => {
    expect((await call('projects.open', { projectId })).name).toBe('Crash test');
    const photos = await call('photos.list', { projectId });
    expect(photos.map((p) => [p.id, p.status])).toEqual([
      ['p0.png', 'ok'],
      ['p1.png', 'ok'],
      ['p2.png', 'ok'],
    ]);
    for (const p of photos)
      expect(sha(await readFile(join(service.store.dir(projectId), p.file))), p.id).toBe(photoHashes.get(p.id));
    const ckpt = `runs/${runId}/checkpoints/step-${String(lastCheckpoint).padStart(6, '0')}`;
    for (const f of ['adapter.safetensors', 'optimizer.safetensors', 'state.json'])
      expect(existsSync(join(service.store.dir(projectId), ckpt, f)), f).toBe(true);
    // Reading the adapter needs the engine: a new process starts.
    const info = await call('adapters.inspect', { projectId, file: `${ckpt}/adapter.safetensors` });
    expect(info).toMatchObject({ format: 'native', method: 'singlora' });
    expect(spawned.length).toBe(2);
    expect(
      rec
        .of<EventData<'engine.status'>>('engine.status')
        .slice(-2)
        .map((s) => s.state),
    ).toEqual(['restarting', 'ready']);
    const runs = await call('training.runs', { projectId });
    expect(runs[0]).toMatchObject({ id: runId, status: 'paused', step: lastCheckpoint });
  });

  it(
    'training.resume finishes the run from the last checkpoint',
    async () => {
      const r = await call('training.resume', { projectId, runId });
      const job = await service.jobs.wait(r.jobId);
      expect(job).toMatchObject({ status: 'done', error: null });
      const events = rec.of<EventData<'train.event'>>('train.event').filter((e) => e.jobId === r.jobId);
      expect(events.find((e) => e.event.event === 'prepare' && e.event.stage === 'resume')?.event).toMatchObject({
        detail: `checkpoints/step-${String(lastCheckpoint).padStart(6, '0')}`,
      });
      expect(events.filter((e) => e.event.event === 'step').map((e) => (e.event as { step: number }).step)).toEqual(
        [lastCheckpoint + 1, lastCheckpoint + 2, 4].slice(0, 4 - lastCheckpoint),
      );
      const m = await call('training.status', { projectId, runId });
      expect(m).toMatchObject({ status: 'completed', step: 4, error: null });
      expect(m.losses.map((l) => l.step)).toEqual([1, 2, 3, 4]);
      expect(m.checkpoints.map((c) => c.step)).toEqual([1, 2, 3, 4]);
    },
    LONG,
  );
});

describe('the service itself stops mid-job', () => {
  it('another service cannot take the data folder while this one runs', async () => {
    await expect(open()).rejects.toThrow(/another SingLoRA Studio service \(pid \d+, started .*\) is using/);
    // A reader (the projects CLI) can list, but not delete under a running owner.
    const reader = await Service.open({ dataDir: join(dir, 'data'), exclusive: false, log: () => {} });
    try {
      expect(((await reader.call('projects.list', {})) as unknown[]).length).toBe(1);
      const projectId = ((await reader.call('projects.list', {})) as Array<{ id: string }>)[0].id;
      const e = await apiError(reader.call('projects.delete', { projectId }));
      expect(e.code).toBe('conflict');
      expect(e.message).toContain(`(pid ${process.pid})`);
    } finally {
      await reader.close();
    }
  });

  it('on the next start, interrupted jobs are marked and their runs become resumable', async () => {
    const projectId = ((await call('projects.list', {})) as Array<{ id: string }>)[0].id;
    const [done] = await service.store.runIds(projectId);
    await service.jobs.idle();
    expect(rec.invalid).toEqual([]);
    rec.stop();
    await service.close();

    // Leave the files as a killed service would: a run mid-training (with and without a
    // checkpoint), a run still queued, and jobs.json saying running / queued.
    const runsDir = join(service.store.dir(projectId), 'runs');
    const mk = async (
      id: string,
      edit: (m: Awaited<ReturnType<typeof readRunManifest>>) => Awaited<ReturnType<typeof readRunManifest>>,
    ) => {
      await cp(join(runsDir, done), join(runsDir, id), { recursive: true });
      const m = await readRunManifest(join(runsDir, id));
      await writeRunManifest(join(runsDir, id), edit({ ...m, id }));
    };
    await mk('20990101-000000-aaaa', (m) => ({
      ...m,
      status: 'running',
      step: 3,
      checkpoints: m.checkpoints.filter((c) => c.step <= 2),
    }));
    await mk('20990101-000000-bbbb', (m) => ({ ...m, status: 'running', step: 0, checkpoints: [] }));
    await mk('20990101-000000-cccc', (m) => ({ ...m, status: 'queued', step: 0, checkpoints: [] }));
    const now = new Date().toISOString();
    const job = (id: string, runId: string, status: Job['status']): Job => ({
      id,
      kind: 'train',
      projectId,
      runId,
      status,
      createdAt: now,
      error: null,
      progress: null,
    });
    await writeFile(
      join(dir, 'data', 'jobs.json'),
      JSON.stringify({
        schemaVersion: 1,
        jobs: [job('job-a', '20990101-000000-aaaa', 'running'), job('job-c', '20990101-000000-cccc', 'queued')],
      }),
    );
    // Its lock file too, naming a process that no longer exists.
    await writeFile(join(dir, 'data', 'service.lock'), JSON.stringify({ pid: 2 ** 22 + 12345, startedAt: now }));

    service = await open();
    const jobs = (await call('jobs.list', {})) as Job[];
    expect(jobs.map((j) => [j.id, j.status, j.error])).toEqual([
      ['job-a', 'failed', INTERRUPTED_RUNNING],
      ['job-c', 'cancelled', INTERRUPTED_QUEUED],
    ]);
    const status = async (runId: string) => call('training.status', { projectId, runId });
    expect(await status('20990101-000000-aaaa')).toMatchObject({
      status: 'paused',
      error: 'the service stopped during training; the run keeps its last checkpoint (step 2) and can be resumed',
    });
    expect(await status('20990101-000000-bbbb')).toMatchObject({
      status: 'failed',
      error: 'the service stopped during training; no checkpoint was written yet, so start the run again',
    });
    expect(await status('20990101-000000-cccc')).toMatchObject({ status: 'cancelled' });
    expect(await status(done)).toMatchObject({ status: 'completed' });
    expect((await apiError(call('training.resume', { projectId, runId: '20990101-000000-bbbb' }))).message).toContain(
      'no checkpoint to resume from',
    );
    // The paused run is accepted for resuming (cancelled at once: the first test trained enough).
    const r = await call('training.resume', { projectId, runId: '20990101-000000-aaaa' });
    expect(await call('jobs.cancel', { jobId: r.jobId })).toEqual({ cancelled: true });
    expect((await service.jobs.wait(r.jobId)).status).toBe('cancelled');
    expect(await status('20990101-000000-aaaa')).toMatchObject({ status: 'paused', step: 3 });
  });
});

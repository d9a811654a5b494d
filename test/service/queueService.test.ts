/**
 * The service on a Redis queue (issue 29), in one process: a server-side Service opened with
 * `queue` and a `singlora worker` (startWorker) on the same data folder, both over a real
 * redis-server, the worker's engine faked (fakeEngine.ts). The contract's methods answer as in
 * embedded mode; the worker runs the jobs through the handler registry; its progress and events
 * reach the server's listeners; cancel reaches the worker; the project lock is Redis's.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job, Method, Params, Result } from '../../src-main/api/contract.ts';
import type { TrainEvent } from '../../src-main/api/schemas.ts';
import { startWorker, type RunningWorker } from '../../src-main/service/queueWorker.ts';
import { Service } from '../../src-main/service/service.ts';
import { redisSkipReason, startRedis, type TestRedis } from '../helpers/redis.ts';
import { fakeEngine } from './fakeEngine.ts';
import { recordEvents, shapePng, tempDir, TINY_MODEL } from './helpers.ts';

const skip = redisSkipReason();

describe.skipIf(skip !== null)(`a service on a Redis queue${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let redis: TestRedis;
  let dir: string;
  let cleanup: () => Promise<void>;
  let server: Service;
  let worker: RunningWorker;
  const trainRequests: Array<{ resume: boolean; photos: string[] }> = [];
  const engine = fakeEngine({
    generate: async (_p, progress) => {
      progress({ type: 'step', image: 0, images: 1, step: 1, steps: 2 });
      progress({ type: 'step', image: 0, images: 1, step: 2, steps: 2 });
      return { files: ['a.png'] };
    },
    // Steps until cancelled, then "pauses" at the step it reached.
    train: async (p, progress, signal) => {
      trainRequests.push({ resume: p.resume, photos: p.photos });
      let step = 0;
      while (!signal.aborted) {
        step++;
        const e: TrainEvent = {
          event: 'step',
          step,
          steps: 100,
          loss: 0.1,
          smoothed: 0.1,
          lr: 1e-3,
          u: 1,
        } as TrainEvent;
        progress(e);
        await new Promise((r) => setTimeout(r, 20));
      }
      return { status: 'cancelled', step, error: null, fixedLoss: null };
    },
  });
  const call = <M extends Method>(m: M, p: Params<M>) => server.call(m, p) as Promise<Result<M>>;
  const waitJob = async (id: string): Promise<Job> => server.queue.wait(id);

  beforeAll(async () => {
    redis = await startRedis();
    ({ dir, cleanup } = await tempDir('singlora-queue-service-'));
    const common = { dataDir: `${dir}/data`, modelsDir: `${dir}/models`, defaultBaseModel: TINY_MODEL, log: () => {} };
    server = await Service.open({ ...common, queue: redis.url });
    worker = await startWorker({
      queue: redis.url,
      dataDir: common.dataDir,
      modelsDir: common.modelsDir,
      name: 'gpu-box-1',
      allowCpuTraining: true,
      log: () => {},
      service: { spawnEngine: engine.spawn, defaultBaseModel: TINY_MODEL },
    });
  }, 60_000);

  afterAll(async () => {
    await worker?.close();
    await server?.close();
    await redis?.dispose();
    await cleanup?.();
  });

  it('runs generation on the worker; the server relays its progress and events; jobs.queue lists the worker', async () => {
    const events = recordEvents(server);
    const { id: projectId } = await call('projects.create', { name: 'Rex' });
    const { jobId } = await call('generation.start', { projectId, settings: { prompt: 'a photo of sks dog' } });
    const job = await waitJob(jobId);
    expect(job).toMatchObject({ status: 'done', worker: 'gpu-box-1', progress: { label: '1 image in images/' } });
    await events.waitFor((e) => e.event === 'job.updated' && (e.data as Job).status === 'done', 10_000, 'done');
    expect(events.of<{ jobId: string; step: number }>('generation.step').map((e) => [e.jobId, e.step])).toEqual([
      [jobId, 1],
      [jobId, 2],
    ]);
    expect(events.invalid).toEqual([]);
    const queue = await call('jobs.queue', {});
    expect(queue.mode).toBe('redis');
    expect(queue.workers).toMatchObject([{ name: 'gpu-box-1', queues: ['train', 'engine', 'io'], alive: true }]);
    expect((await call('jobs.list', {})).map((j) => j.id)).toContain(jobId);
    // The engine got the project's path as the worker sees the share (here: the same folder).
    expect(engine.requests.find((r) => r.kind === 'generate')!.params).toMatchObject({
      outDir: `${dir}/data/projects/${projectId}/images`,
      base: TINY_MODEL,
    });
    events.stop();
  });

  it('training: a second start conflicts across the queue; cancel reaches the worker, which stops the run', async () => {
    const { id: projectId } = await call('projects.create', { name: 'Dog' });
    await call('photos.add', {
      projectId,
      files: await Promise.all(
        [0, 1, 2].map(async (k) => ({ name: `p${k}.png`, dataBase64: (await shapePng(k, 64)).toString('base64') })),
      ),
    });
    const { jobId, runId } = await call('training.start', { projectId, settings: { steps: 100 } });
    const second = await call('training.start', { projectId, settings: { steps: 100 } }).catch((e) => e);
    expect(second).toMatchObject({ code: 'conflict', message: expect.stringMatching(/already training/) });
    await expect
      .poll(async () => (await server.queue.get(jobId))?.progress?.done ?? 0, { timeout: 15_000 })
      .toBeGreaterThan(2);
    expect(await call('training.cancel', { jobId })).toEqual({ cancelled: true });
    const job = await waitJob(jobId);
    expect(job).toMatchObject({ status: 'cancelled', worker: 'gpu-box-1' });
    expect(job.progress!.label).toMatch(/^cancelled at step \d+$/);
    expect(trainRequests[0].photos).toHaveLength(3);
    expect(trainRequests[0].photos[0]).toBe(`${dir}/data/projects/${projectId}/photos/p0.png`);
    // Nothing runs it now: the queue lets another training start.
    expect(await server.queue.active({ projectId, runId })).toEqual([]);
  });

  it('refuses a data folder that a service without a queue owns (its jobs would ignore the queue)', async () => {
    const embedded = await Service.open({ dataDir: `${dir}/embedded`, log: () => {} });
    try {
      const refused = Service.open({ dataDir: `${dir}/embedded`, log: () => {}, queue: redis.url });
      await expect(refused).rejects.toThrow(
        new RegExp(`a SingLoRA Studio service without a queue \\(pid ${process.pid}, .*\\) is using ${dir}/embedded`),
      );
      const worker = startWorker({ queue: redis.url, dataDir: `${dir}/embedded`, log: () => {} });
      await expect(worker).rejects.toThrow(/without a queue .* is using/);
    } finally {
      await embedded.close();
    }
  });

  it('the project lock is also in Redis: a lock held elsewhere makes the handler wait for it', async () => {
    const { id: projectId } = await call('projects.create', { name: 'Locked' });
    const other = await Service.open({
      dataDir: `${dir}/data`,
      modelsDir: `${dir}/models`,
      log: () => {},
      queue: redis.url,
    });
    try {
      let released = false;
      let release!: () => void;
      const held = other.store.withLock(projectId, () => new Promise<void>((r) => (release = r)));
      await new Promise((r) => setTimeout(r, 100));
      const update = call('projects.update', { projectId, name: 'Locked 2' }).then((p) => ({ p, released }));
      await new Promise((r) => setTimeout(r, 300));
      released = true;
      release();
      await held;
      const { p, released: after } = await update;
      expect(after).toBe(true);
      expect(p.name).toBe('Locked 2');
    } finally {
      await other.close();
    }
  });
});

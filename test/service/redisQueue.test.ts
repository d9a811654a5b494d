/**
 * The Redis queue against a real redis-server (test/helpers/redis.ts), without an engine: the
 * server's side (RedisJobQueue) and a worker (startQueueWorker) whose job handler the test writes.
 * What a job record says (worker, progress, why it waits), the relay of a handler's events,
 * cancelling a queued and a running job, the Redis project lock, and Redis restarting.
 * The multi-process runs (`singlora serve --queue` and `singlora worker` over the toy model) are
 * in their own suite.
 */
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job } from '../../src-main/api/contract.ts';
import type { JobData } from '../../src-main/service/jobData.ts';
import {
  RedisJobQueue,
  RedisLock,
  connectRedis,
  startQueueWorker,
  type QueueJobContext,
  type RedisQueueOptions,
  type RunningQueueWorker,
} from '../../src-main/service/redisQueue.ts';
import { IN_CI } from '../helpers/ciRequirements.ts';
import { redisSkipReason, startRedis, type TestRedis } from '../helpers/redis.ts';

/** ioredis is a dependency (package.json); a checkout that has not installed it yet says so. */
function ioredisMissing(): string | null {
  try {
    createRequire(import.meta.url).resolve('ioredis');
    return null;
  } catch {
    if (IN_CI) throw new Error('[needs ioredis] CI installs the dependencies (npm ci), so this fails under CI=true');
    return '[needs ioredis] run npm install';
  }
}

const skip = redisSkipReason() ?? ioredisMissing();

const generate = (prompt: string): JobData => ({
  kind: 'generate',
  projectId: 'p1',
  runId: null,
  params: {
    base: { in: 'models', rel: 'toy-sd' },
    settings: { prompt } as never,
    adapters: [],
    compute: { engine: 'onnx', provider: 'auto' },
  },
});
const train: JobData = {
  kind: 'train',
  projectId: 'p1',
  runId: 'run-1',
  params: {
    base: { in: 'models', rel: 'toy-sd' },
    photos: [{ in: 'project', rel: 'photos/a.png' }],
    settings: {} as never,
    resume: false,
    compute: { engine: 'onnx', provider: 'auto' },
  },
};

async function until<T>(what: string, f: () => Promise<T | undefined | false>, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe.skipIf(skip !== null)(`the Redis queue${skip ? ` (skipped: ${skip})` : ''}`, () => {
  let redis: TestRedis;
  let queue: RedisJobQueue;
  const updates: Job[] = [];
  const events: Array<[string, unknown]> = [];
  const cancelledQueued: JobData[] = [];
  const workers: RunningQueueWorker[] = [];
  /** What the test's worker does with each job, by prompt. */
  const behaviour = new Map<string, (ctx: QueueJobContext) => Promise<unknown>>();

  const opts = (url: string): RedisQueueOptions => ({
    url,
    onUpdate: (j) => updates.push(j),
    onEvent: (e, d) => events.push([e, d]),
    cancelQueued: async (d) => void cancelledQueued.push(d),
    log: () => {},
  });

  beforeAll(async () => {
    redis = await startRedis({ appendonly: true });
    queue = await RedisJobQueue.open(opts(redis.url));
    workers.push(
      await startQueueWorker({
        url: redis.url,
        name: 'worker-a',
        queues: ['engine', 'io'],
        log: () => {},
        run: async (data, ctx) => {
          const prompt = ((data as JobData).params as { settings: { prompt: string } }).settings.prompt;
          return (behaviour.get(prompt) ?? (async () => ({ label: 'ran' })))(ctx) as never;
        },
      }),
    );
  }, 30_000);

  afterAll(async () => {
    for (const w of workers) await w.close();
    await queue?.close();
    await redis?.dispose();
  });

  it('runs a job on a worker: the record names it, its progress and events reach the server', async () => {
    behaviour.set('steps', async (ctx) => {
      ctx.emit('generation.step', { jobId: ctx.jobId, image: 1, images: 1, step: 1, steps: 2 });
      ctx.progress({ done: 1, total: 2, label: 'step 1/2' });
      ctx.progress({ done: 2, total: 2, label: 'step 2/2' });
      return { label: '1 image in images/' };
    });
    const submitted = await queue.submitJob(generate('steps'));
    expect(submitted).toMatchObject({ kind: 'generate', projectId: 'p1', status: 'queued', worker: null });
    const done = await queue.wait(submitted.id);
    expect(done).toMatchObject({
      status: 'done',
      worker: 'worker-a',
      error: null,
      progress: { done: 2, total: 2, label: '1 image in images/' },
    });
    await until('the relayed event', async () => events.some(([e]) => e === 'generation.step'));
    expect(events.find(([e]) => e === 'generation.step')![1]).toMatchObject({ jobId: submitted.id, step: 1 });
    const mine = () => updates.filter((u) => u.id === submitted.id);
    await until('the done update', async () => mine().some((u) => u.status === 'done'));
    expect(mine().some((u) => u.status === 'running' && u.worker === 'worker-a')).toBe(true);
    expect((await queue.list()).map((j) => j.id)).toContain(submitted.id);
  });

  it('a job no live worker takes says why it waits; cancelling it withdraws it and settles its run', async () => {
    const job = await queue.submitJob(train);
    const waiting = await queue.get(job.id);
    expect(waiting).toMatchObject({ status: 'queued', worker: null });
    expect(waiting!.waiting).toMatch(/no connected worker takes train jobs: .*--allow-cpu-training/);
    const status = await queue.queueStatus();
    expect(status.mode).toBe('redis');
    expect(status.queues.find((q) => q.name === 'train')).toEqual({ name: 'train', waiting: 1, active: 0 });
    expect(status.workers).toMatchObject([{ name: 'worker-a', queues: ['engine', 'io'], alive: true }]);
    expect(await queue.active({ projectId: 'p1', kind: 'train' })).toHaveLength(1);
    expect(await queue.cancel(job.id)).toBe(true);
    expect(await queue.get(job.id)).toMatchObject({ status: 'cancelled', waiting: null });
    expect(cancelledQueued).toEqual([train]);
    expect(await queue.active({ projectId: 'p1', kind: 'train' })).toHaveLength(0);
    expect(await queue.cancel(job.id)).toBe(false);
    expect(await queue.cancel('job-none')).toBeUndefined();
  });

  it('a worker silent for 30 s is listed as gone and takes no part in why a job waits', async () => {
    const client = connectRedis(redis.url, { blocking: false });
    const lastSeen = new Date(Date.now() - 31_000).toISOString();
    await client.hset(
      'singlora:workers',
      'ghost',
      JSON.stringify({ name: 'ghost', queues: ['train'], lastSeen, jobId: null }),
    );
    try {
      expect((await queue.queueStatus()).workers.find((w) => w.name === 'ghost')).toMatchObject({
        alive: false,
        lastSeen,
      });
      const job = await queue.submitJob(train);
      expect((await queue.get(job.id))!.waiting).toMatch(/no connected worker takes train jobs/);
      await queue.cancel(job.id);
    } finally {
      await client.hdel('singlora:workers', 'ghost');
      await client.quit();
    }
  });

  it('cancel reaches the worker that runs the job, with its reason', async () => {
    let seen: unknown = null;
    behaviour.set('long', (ctx) => {
      ctx.progress({ done: 0, total: 1, label: 'started' });
      return new Promise((resolve) =>
        ctx.signal.addEventListener('abort', () => {
          seen = ctx.signal.reason;
          resolve({ status: 'cancelled', label: 'paused at step 3' });
        }),
      );
    });
    const job = await queue.submitJob(generate('long'));
    await until('the job to run', async () => (await queue.get(job.id))?.progress?.label === 'started');
    expect(await queue.cancel(job.id, 'pause')).toBe(true);
    const end = await queue.wait(job.id);
    expect(seen).toBe('pause');
    expect(end).toMatchObject({ status: 'cancelled', worker: 'worker-a', progress: { label: 'paused at step 3' } });
  });

  it('a failing job fails alone with its error; the next one runs', async () => {
    behaviour.set('bad', async () => {
      throw new Error('adapter.safetensors: header length 999999 is past the end of the file');
    });
    const bad = await queue.submitJob(generate('bad'));
    const good = await queue.submitJob(generate('good'));
    expect(await queue.wait(bad.id)).toMatchObject({ status: 'failed', error: expect.stringMatching(/header length/) });
    expect(await queue.wait(good.id)).toMatchObject({ status: 'done', worker: 'worker-a' });
  });

  it('the project lock: one holder at a time across connections, released only by its token', async () => {
    const other = await RedisJobQueue.open(opts(redis.url));
    try {
      const order: string[] = [];
      const hold = (q: RedisJobQueue, name: string) =>
        q.lock('project:p1').with(async () => {
          order.push(`${name} in`);
          await new Promise((r) => setTimeout(r, 100));
          order.push(`${name} out`);
        });
      await Promise.all([hold(queue, 'a'), hold(other, 'b')]);
      expect([order.slice(0, 2), order.slice(2)].every(([i, o]) => i.endsWith('in') && o.endsWith('out'))).toBe(true);
      expect(order[0].split(' ')[0]).toBe(order[1].split(' ')[0]);
      // A holder that died: its token expires (here a short ttl), and nobody else's release frees it early.
      const client = connectRedis(redis.url, { blocking: false });
      await client.set('singlora:lock:project:p2', 'dead-token', 'PX', 300);
      expect(await client.eval(RedisLock.RELEASE, 1, 'singlora:lock:project:p2', 'wrong-token')).toBe(0);
      const t0 = Date.now();
      await queue.lock('project:p2').with(async () => {});
      expect(Date.now() - t0).toBeGreaterThanOrEqual(200);
      await client.quit();
    } finally {
      await other.close();
    }
  });

  it('a worker killed mid-job: the stalled check hands its job to another worker, which finishes it', async () => {
    const tsx = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
    const child = spawn(
      process.execPath,
      ['--import', tsx, `${import.meta.dirname}/queueWorkerChild.ts`, redis.url, 'doomed'],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    const exited = new Promise((r) => child.once('exit', r));
    let workerB: RunningQueueWorker | undefined;
    try {
      await until('the child worker', async () => out.includes('ready'), 30_000);
      const job = await queue.submitJob(train);
      await until('the child to take the job', async () => out.includes(`running ${job.id}`));
      // The name is on the job from the moment it is active (BullMQ's processedBy), not only
      // once the worker's first progress write lands: the record names it whatever that write does.
      expect(await redis.command('HGET', `singlora:train:${job.id}`, 'pb')).toBe('doomed');
      expect(await queue.get(job.id)).toMatchObject({ status: 'running', worker: 'doomed' });
      child.kill('SIGKILL');
      await exited;
      const taken: string[] = [];
      workerB = await startQueueWorker({
        url: redis.url,
        name: 'worker-b',
        queues: ['train'],
        lockMs: 1_000,
        log: () => {},
        run: async (_data, ctx) => {
          taken.push(ctx.jobId);
          return { label: 'resumed and completed' };
        },
      });
      const end = await queue.wait(job.id);
      expect(end).toMatchObject({ status: 'done', worker: 'worker-b', progress: { label: 'resumed and completed' } });
      expect(taken).toEqual([job.id]);
    } finally {
      child.kill('SIGKILL');
      await workerB?.close(); // the next test needs no worker on the train queue
    }
  }, 60_000);

  it('Redis restarts: server and worker reconnect, and a queued job survives (appendonly)', async () => {
    const job = await queue.submitJob(train); // no worker takes train: it stays queued
    await redis.stop();
    await redis.start();
    const back = await until('the queued job after the restart', async () => queue.get(job.id).catch(() => undefined));
    expect(back).toMatchObject({ status: 'queued' });
    const after = await until('a submit after the restart', () =>
      queue.submitJob(generate('after')).catch(() => undefined),
    );
    expect(await queue.wait(after.id)).toMatchObject({ status: 'done', worker: 'worker-a' });
    await queue.cancel(job.id);
  }, 60_000);

  it('a Redis with a password: the URL carries it; a wrong one is refused, not retried forever', async () => {
    const locked = await startRedis({ password: 's3cret pass' });
    try {
      const q = await RedisJobQueue.open({ ...opts(locked.url), log: () => {} });
      expect((await q.queueStatus()).mode).toBe('redis');
      await q.close();
      const wrong = locked.url.replace('s3cret%20pass', 'wrong');
      const logged: string[] = [];
      const client = connectRedis(wrong, { blocking: false, log: (l) => logged.push(l) });
      await expect(client.set('k', 'v')).rejects.toThrow(/WRONGPASS|invalid username-password|NOAUTH/);
      client.disconnect();
    } finally {
      await locked.dispose();
    }
  });
});

/**
 * Issue 29 with the real thing: Debian's redis-server on a free port (a password, appendonly on),
 * `singlora serve --queue` and two `singlora worker --allow-cpu-training` processes on one
 * machine, over the toy model, through the server's HTTP API and WebSocket as the UI uses them.
 * Each worker reaches the shared folder through a path of its own (a symlink standing for its
 * mount point) and keeps its own graph cache.
 *
 * The tests run in order on one cluster: 20 generate jobs spread over both workers; a second
 * server on the same queue (SINGLORA_QUEUE) runs nothing twice; a corrupt adapter fails its job
 * alone; cancel reaches the worker, and the run resumes on a worker; Redis stopped and restarted
 * mid-queue; a worker SIGKILLed mid-training (with its engine process, as when its machine dies),
 * the run finishing on the other from its last checkpoint with every step in its loss log exactly
 * once; no mount path in the project's and runs' files; a worker stopped with SIGTERM mid-training
 * handing the run back at once; with no worker left, a queued job saying why it waits.
 */
import { writeFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Job, RunEvent } from '../../src-main/api/contract.ts';
import type { Exit, TestProcess } from '../helpers/processes.ts';
import { Cluster, newProject, toyImage, type Served, type WsEvent } from '../helpers/queueCluster.ts';
import { sleep, TestRedis } from '../helpers/redis.ts';
import { redisGate } from '../helpers/redisGate.ts';

const WORKERS = ['w1', 'w2'] as const;
/** Toy jobs on 2 shared cores, with the server and both workers on them. */
const JOBS_MS = 240_000;
/** BullMQ hands a dead worker's job on after its lock expires and the stalled check runs (30 s each). */
const STALLED_MS = 120_000;

/** Training events in a line: step numbers, and the other events by kind (`prepare:resume:<detail>`). */
function summary(events: Array<{ event: RunEvent }>, max = 60): string {
  const parts = events.map(({ event: e }) =>
    e.event === 'step'
      ? String(e.step)
      : [e.event, 'stage' in e ? e.stage : '', 'detail' in e ? e.detail : '', 'step' in e ? e.step : '']
          .filter((x) => x !== '' && x !== undefined)
          .join(':'),
  );
  return parts.length > max ? `${parts.slice(0, max).join(' ')} ... (${parts.length})` : parts.join(' ');
}

const gate = redisGate('scale-out: a server and two workers on a real Redis (toy model)');

describe.skipIf(gate.skip)(gate.title, () => {
  let redis: TestRedis;
  let cluster: Cluster;
  let server: Served;
  let projectId: string;
  const workers = new Map<string, TestProcess>();

  const startWorker = (name: string) =>
    workers.set(name, cluster.worker(name, redis.url, { args: ['--allow-cpu-training'] }));
  const generate = async (on: Served, seeds: number[], adapters: Array<{ file: string }> = []) => {
    const ids: string[] = [];
    for (const seed of seeds)
      ids.push((await on.call('generation.start', { projectId, settings: toyImage(seed), adapters })).jobId);
    return ids;
  };
  const imageSeeds = async () =>
    (await server.call('generation.list', { projectId })).map((i) => i.settings.seed).sort((a, b) => a - b);
  const statuses = (jobs: Job[]) => jobs.map((j) => `${j.id}:${j.status}${j.error ? ` (${j.error})` : ''}`);

  beforeAll(async () => {
    redis = await TestRedis.start({ appendonly: true });
    cluster = new Cluster();
    server = await cluster.serve({ queue: redis.url });
    for (const name of WORKERS) startWorker(name);
    await server.waitWorkers(WORKERS);
    projectId = await newProject(server, 'Scale out', true);
  }, 180_000);

  afterEach((ctx) => {
    if (ctx.task.result?.state === 'fail')
      console.error(
        `${ctx.task.name}: the processes' output\n${cluster?.report()}\n=== redis ===\n${redis?.log.slice(-1500)}`,
      );
  });

  afterAll(async () => {
    await cluster?.dispose();
    await redis?.dispose();
  });

  it('jobs.queue: redis mode, both workers alive, each on its queues', async () => {
    const q = await server.call('jobs.queue', {});
    expect(q.mode).toBe('redis');
    for (const name of WORKERS) {
      const w = q.workers.find((x) => x.name === name);
      expect(w, `${name} in ${JSON.stringify(q.workers)}`).toMatchObject({ alive: true, jobId: null });
      expect(w!.queues.length).toBeGreaterThan(0);
      expect(Date.now() - Date.parse(w!.lastSeen)).toBeLessThan(30_000);
    }
    expect(q.queues.length).toBeGreaterThan(0);
  });

  it('20 generate jobs run once each, spread over both workers; the server relays their events', {
    timeout: JOBS_MS + 30_000,
  }, async () => {
    const seeds = Array.from({ length: 20 }, (_, i) => 100 + i);
    const from = server.events.length;
    const ids = await generate(server, seeds);
    const jobs = await server.waitJobs(ids, JOBS_MS);
    expect(statuses(jobs).filter((s) => !s.endsWith(':done'))).toEqual([]);
    const counts = new Map<string, number>();
    for (const j of jobs) counts.set(String(j.worker), (counts.get(String(j.worker)) ?? 0) + 1);
    expect([...counts.keys()].sort(), JSON.stringify([...counts])).toEqual([...WORKERS]);
    expect(await imageSeeds()).toEqual(seeds);

    const events = server.events.slice(from);
    const of = (name: WsEvent['event'], id: string) =>
      events.filter(
        (e) =>
          e.event === name &&
          (e.data as { id?: string; jobId?: string })[name === 'job.updated' ? 'id' : 'jobId'] === id,
      );
    for (const id of ids) {
      expect(
        of('job.updated', id).map((e) => (e.data as Job).status),
        id,
      ).toContain('done');
      expect(of('generation.step', id).length, `generation.step events of ${id}`).toBeGreaterThan(0);
      expect(of('generation.image', id), `generation.image events of ${id}`).toHaveLength(1);
    }
  });

  it('a second server on the same queue (SINGLORA_QUEUE) sees the workers; no job runs twice', {
    timeout: JOBS_MS + 60_000,
  }, async () => {
    const second = await cluster.serve({ name: 'server2', env: { SINGLORA_QUEUE: redis.url } });
    let exit: Exit | null = null;
    try {
      expect((await second.call('jobs.queue', {})).mode).toBe('redis');
      await second.waitWorkers(WORKERS, 30_000);
      const before = await imageSeeds();
      const a = await generate(server, [200, 201, 202]);
      const b = await generate(second, [203, 204, 205]);
      const jobs = [...(await server.waitJobs(a, JOBS_MS / 2)), ...(await second.waitJobs(b, JOBS_MS / 2))];
      expect(statuses(jobs).filter((s) => !s.endsWith(':done'))).toEqual([]);
      expect(await imageSeeds()).toEqual([...before, 200, 201, 202, 203, 204, 205].sort((x, y) => x - y));
    } finally {
      second.close();
      second.proc.kill('SIGTERM');
      exit = await Promise.race([second.proc.exited, sleep(30_000).then(() => null)]);
      if (!exit) await second.proc.killHard();
    }
    expect(exit, `server2 after SIGTERM; its output ends:\n${second.proc.tail()}`).toEqual({ code: 0, signal: null });
  });

  it('a corrupt adapter fails its job alone, with its error; the jobs around it finish', {
    timeout: JOBS_MS + 30_000,
  }, async () => {
    // Written on the share as a user's copy would leave it: not a safetensors file.
    writeFileSync(
      join(cluster.share, 'data/projects', projectId, 'adapters/bad.safetensors'),
      'not a safetensors file\n',
    );
    const before = await generate(server, [300, 301]);
    const [bad] = await generate(server, [302], [{ file: 'adapters/bad.safetensors' }]);
    const after = await generate(server, [303, 304]);
    const jobs = await server.waitJobs([...before, bad, ...after], JOBS_MS);
    const failed = jobs.find((j) => j.id === bad)!;
    expect(failed.status).toBe('failed');
    expect(failed.error).toMatch(/bad\.safetensors/);
    expect(failed.error).toMatch(/not a safetensors file|corrupt/);
    expect(failed.worker).toMatch(/^w[12]$/);
    expect(statuses(jobs.filter((j) => j.id !== bad)).filter((s) => !s.endsWith(':done'))).toEqual([]);
    const q = await server.call('jobs.queue', {});
    for (const name of WORKERS) expect(q.workers.find((w) => w.name === name)?.alive, name).toBe(true);
  });

  it('cancel through the server reaches the worker: the job ends cancelled with a checkpoint; resume finishes it', {
    timeout: 2 * JOBS_MS,
  }, async () => {
    const steps = 250;
    const r = await server.call('training.start', {
      projectId,
      settings: { steps, checkpointEvery: 10, sampleEvery: 0, resolution: 64 },
    });
    await server.waitEvent(
      (e) =>
        e.event === 'train.event' &&
        (e.data as { runId: string; event: RunEvent }).runId === r.runId &&
        (e.data as { event: RunEvent }).event.event === 'step',
      JOBS_MS,
      'the first training step',
    );
    const running = (await server.call('jobs.list', {})).find((j) => j.id === r.jobId);
    expect(running).toMatchObject({ status: 'running', worker: expect.stringMatching(/^w[12]$/) });
    expect(await server.call('training.cancel', { jobId: r.jobId })).toEqual({ cancelled: true });
    const job = await server.waitJob(r.jobId, 60_000);
    expect(job.status).toBe('cancelled');
    const stopped = await server.call('training.status', { projectId, runId: r.runId });
    expect(stopped.status).toBe('cancelled');
    expect(stopped.step).toBeLessThan(steps);
    expect(stopped.checkpoints.at(-1)?.step).toBe(stopped.step); // a checkpoint is written on cancel

    const resumed = await server.call('training.resume', { projectId, runId: r.runId });
    const since = performance.now();
    expect((await server.waitJob(resumed.jobId, JOBS_MS)).status).toBe('done');
    const first = server.trainEvents(r.runId, since).find((e) => e.event.event === 'step');
    expect(first?.event).toMatchObject({ step: stopped.step + 1 });
    const end = await server.call('training.status', { projectId, runId: r.runId });
    expect(end).toMatchObject({ status: 'completed', step: steps });
    expect(end.losses.map((l) => l.step)).toEqual(Array.from({ length: steps }, (_, i) => i + 1));
  });

  it('Redis stopped and restarted mid-queue: server and workers reconnect, the queued jobs still run', {
    timeout: 2 * JOBS_MS,
  }, async () => {
    const ids = await generate(server, [400, 401, 402, 403, 404, 405, 406, 407]);
    const atStop = await server.until(
      async () => {
        const jobs = (await server.call('jobs.list', {})).filter((j) => ids.includes(j.id));
        return jobs.some((j) => j.status !== 'queued') ? jobs : null;
      },
      JOBS_MS,
      'the first of 8 jobs to start',
    );
    const queued = atStop.filter((j) => j.status === 'queued').length;
    expect(queued, `jobs still queued when Redis stopped: ${statuses(atStop)}`).toBeGreaterThan(0);
    await redis.stop();
    await sleep(3000);
    await redis.restart();

    const jobs = await server.waitJobs(ids, JOBS_MS);
    expect(statuses(jobs).filter((s) => !s.endsWith(':done'))).toEqual([]);
    await server.waitWorkers(WORKERS, 60_000);
    // A job submitted after the restart runs, and its events reach the WebSocket again.
    const from = server.events.length;
    const [late] = await generate(server, [408]);
    expect((await server.waitJob(late, JOBS_MS)).status).toBe('done');
    await server.waitEvent(
      (e) => e.event === 'job.updated' && (e.data as Job).id === late && (e.data as Job).status === 'done',
      30_000,
      'job.updated (done) of the job submitted after the restart',
      from,
    );
  });

  it('a worker SIGKILLed mid-training: the other resumes from the last checkpoint; every step logged once', {
    timeout: 2 * JOBS_MS + STALLED_MS,
  }, async () => {
    const steps = 200;
    const every = 10;
    const r = await server.call('training.start', {
      projectId,
      settings: { steps, checkpointEvery: every, sampleEvery: 0, resolution: 64 },
    });
    const seen = await server.waitEvent(
      (e) => {
        const d = e.data as { runId: string; event: RunEvent };
        return e.event === 'train.event' && d.runId === r.runId && d.event.event === 'step' && d.event.step >= 25;
      },
      JOBS_MS,
      'training step 25',
    );
    const seenStep = (seen.data as { event: { step: number } }).event.step;
    const victim = (await server.call('jobs.list', {})).find((j) => j.id === r.jobId)?.worker;
    expect(victim, 'the worker running the training job').toMatch(/^w[12]$/);
    const survivor = WORKERS.find((w) => w !== victim)!;
    const killedAt = performance.now();
    await workers.get(victim!)!.killHard();

    const job = await server.waitJob(r.jobId, STALLED_MS + JOBS_MS);
    expect(job).toMatchObject({ status: 'done', error: null, worker: survivor });
    // The survivor's attempt: a resume from checkpoint N, then steps N+1.. (at most `every` lost).
    const after = server.trainEvents(r.runId, killedAt);
    const resume = after.findIndex((e) => e.event.event === 'prepare' && e.event.stage === 'resume');
    expect(resume, 'a prepare/resume event after the kill').toBeGreaterThanOrEqual(0);
    const from = Number((after[resume].event as { detail?: string }).detail?.match(/step-(\d+)/)?.[1]);
    const story = `step ${seenStep} seen before the kill; events after it: ${summary(server.trainEvents(r.runId, killedAt))}`;
    expect(from % every, story).toBe(0);
    expect(from, story).toBeGreaterThan(seenStep - every);
    const first = after.slice(resume).find((e) => e.event.event === 'step');
    expect(first?.event, story).toMatchObject({ step: from + 1 });

    const end = await server.call('training.status', { projectId, runId: r.runId });
    expect(end).toMatchObject({ status: 'completed', step: steps });
    expect(end.losses.map((l) => l.step)).toEqual(Array.from({ length: steps }, (_, i) => i + 1));
    // The killed worker is listed as gone once it has been silent for 30 s.
    await server.until(
      async () =>
        (await server.call('jobs.queue', {})).workers.find((w) => w.name === victim)?.alive === false ? true : null,
      60_000,
      `jobs.queue to list ${victim} as not alive`,
    );
  });

  it("the project's and runs' files on the share name no machine's mount path", async () => {
    const dir = join(cluster.share, 'data/projects', projectId);
    const files = [join(dir, 'project.json')];
    for (const run of await readdir(join(dir, 'runs'))) files.push(join(dir, 'runs', run, 'run.json'));
    expect(files.length).toBeGreaterThan(2);
    for (const f of files) expect(await readFile(f, 'utf8'), f).not.toContain(cluster.root);
  });

  it('a worker stopped with SIGTERM mid-training exits, and another resumes the run at once from where it paused', {
    timeout: 2 * JOBS_MS,
  }, async () => {
    startWorker('w3');
    const names = () => [...workers].filter(([, p]) => p.isRunning).map(([n]) => n);
    await server.waitWorkers(names());
    const steps = 200;
    const r = await server.call('training.start', {
      projectId,
      settings: { steps, checkpointEvery: 50, sampleEvery: 0, resolution: 64 },
    });
    const seen = await server.waitEvent(
      (e) => {
        const d = e.data as { runId: string; event: RunEvent };
        return e.event === 'train.event' && d.runId === r.runId && d.event.event === 'step' && d.event.step >= 20;
      },
      JOBS_MS,
      'training step 20',
    );
    const seenStep = (seen.data as { event: { step: number } }).event.step;
    const runner = (await server.call('jobs.list', {})).find((j) => j.id === r.jobId)?.worker;
    const proc = workers.get(String(runner));
    expect(proc, `the worker running the job: ${runner}`).toBeDefined();
    const stoppedAt = performance.now();
    proc!.kill('SIGTERM');
    const exit = await Promise.race([proc!.exited, sleep(30_000).then(() => null)]);
    expect(exit, `${runner} after SIGTERM; its output ends:\n${proc!.tail()}`).toEqual({ code: 0, signal: null });
    expect((await server.call('jobs.queue', {})).workers.map((w) => w.name)).not.toContain(runner);

    const job = await server.waitJob(r.jobId, JOBS_MS);
    expect(job).toMatchObject({ status: 'done', error: null, worker: names()[0] });
    const after = server.trainEvents(r.runId, stoppedAt);
    const story = `step ${seenStep} seen before SIGTERM; events after it: ${summary(after)}`;
    const resume = after.find((e) => e.event.event === 'prepare' && e.event.stage === 'resume');
    expect(resume, story).toBeDefined();
    // Handed back at once, not found by the stalled check (which waits for the 30 s lock to expire).
    expect(resume!.at - stoppedAt, story).toBeLessThan(30_000);
    const from = Number((resume!.event as { detail?: string }).detail?.match(/step-(\d+)/)?.[1]);
    expect(from, story).toBeGreaterThanOrEqual(seenStep); // paused at a checkpoint where it was: nothing lost
    const first = after.slice(after.indexOf(resume!)).find((e) => e.event.event === 'step');
    expect(first?.event, story).toMatchObject({ step: from + 1 });
    const end = await server.call('training.status', { projectId, runId: r.runId });
    expect(end).toMatchObject({ status: 'completed', step: steps });
    expect(end.losses.map((l) => l.step)).toEqual(Array.from({ length: steps }, (_, i) => i + 1));
  });

  it('with no worker left, a job stays queued and says why; cancelling it ends it at once', async () => {
    for (const proc of workers.values()) proc.kill('SIGTERM');
    await Promise.all([...workers.values()].map((p) => p.exited));
    const [jobId] = await generate(server, [500]);
    const queued = await server.until(
      async () => (await server.call('jobs.list', {})).find((j) => j.id === jobId && j.waiting) ?? null,
      30_000,
      'the queued job to say why it waits',
    );
    expect(queued).toMatchObject({ status: 'queued', worker: null });
    expect(queued.waiting).toMatch(/no connected worker takes engine jobs/);
    expect(await server.call('jobs.cancel', { jobId })).toEqual({ cancelled: true });
    expect(await server.waitJob(jobId, 30_000)).toMatchObject({ status: 'cancelled' });
  });
});

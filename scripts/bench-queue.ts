/**
 * What the Redis queue costs and gives on one machine (issue 29, docs/scale-out.md):
 *
 *   nice npx tsx scripts/bench-queue.ts [--latency-jobs 50] [--throughput-jobs 30] [--steps 6] [--json]
 *
 * 1. Added latency per job: from `generation.start` returning to the job's first progress event
 *    (`generation.step` on the WebSocket), one toy generate job at a time (so no job waits behind
 *    another), the median over `--latency-jobs` jobs with `singlora serve --queue` and one
 *    `singlora worker`, minus the same median with the embedded queue (`singlora serve`).
 * 2. Jobs per minute: `--throughput-jobs` toy generate jobs submitted at once, from the first
 *    submit to the last one done, with the embedded queue, one worker and two workers.
 *
 * Everything runs on this machine as the tests run it (test/helpers/queueCluster.ts): Debian's
 * redis-server on a free port with appendonly on, every process through `node bin/singlora.js`.
 * Each setup first runs 2 jobs per engine that are not counted (the graph cache and the model load).
 * The configuration, with the load average before and after, is printed with the figures.
 */
import { execFileSync } from 'node:child_process';
import { cpus, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { Cluster, newProject, toyImage, type Served } from '../test/helpers/queueCluster.ts';
import { REDIS_SERVER, TestRedis } from '../test/helpers/redis.ts';

const { values } = parseArgs({
  options: {
    'latency-jobs': { type: 'string', default: '50' },
    'throughput-jobs': { type: 'string', default: '30' },
    steps: { type: 'string', default: '6' },
    json: { type: 'boolean', default: false },
  },
});
const LATENCY_JOBS = Number(values['latency-jobs']);
const THROUGHPUT_JOBS = Number(values['throughput-jobs']);
const STEPS = Number(values.steps);
const JOB_MS = 120_000;
for (const [flag, v] of [
  ['--latency-jobs', LATENCY_JOBS],
  ['--throughput-jobs', THROUGHPUT_JOBS],
  ['--steps', STEPS],
] as const)
  if (!Number.isInteger(v) || v < 1) throw new Error(`bench-queue: ${flag} must be a positive integer, got ${v}`);

const log = (line: string) => console.error(`[bench-queue] ${line}`);
let seed = 1;

/** One job, alone: ms from generation.start returning to its first generation.step event. */
async function oneLatency(server: Served, projectId: string): Promise<number> {
  const from = server.events.length;
  const { jobId } = await server.call('generation.start', { projectId, settings: toyImage(seed++, STEPS) });
  const returned = performance.now();
  const first = await server.waitEvent(
    (e) => e.event === 'generation.step' && (e.data as { jobId: string }).jobId === jobId,
    JOB_MS,
    `the first progress event of ${jobId}`,
    from,
  );
  const job = await server.waitJob(jobId, JOB_MS);
  if (job.status !== 'done') throw new Error(`bench-queue: job ${jobId} ended ${job.status}: ${job.error}`);
  return first.at - returned;
}

async function latencies(server: Served, projectId: string, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(await oneLatency(server, projectId));
  return out;
}

/** `n` jobs submitted at once; jobs per minute from the first submit to the last one done. */
async function throughput(
  server: Served,
  projectId: string,
  n: number,
): Promise<{ jobsPerMin: number; byWorker: Record<string, number> }> {
  const t0 = performance.now();
  const ids: string[] = [];
  for (let i = 0; i < n; i++)
    ids.push((await server.call('generation.start', { projectId, settings: toyImage(seed++, STEPS) })).jobId);
  const jobs = await server.waitJobs(ids, n * JOB_MS);
  const minutes = (performance.now() - t0) / 60_000;
  const bad = jobs.filter((j) => j.status !== 'done');
  if (bad.length) throw new Error(`bench-queue: ${bad.length} of ${n} jobs did not finish: ${bad[0].error}`);
  const byWorker: Record<string, number> = {};
  for (const j of jobs) byWorker[String(j.worker)] = (byWorker[String(j.worker)] ?? 0) + 1;
  return { jobsPerMin: n / minutes, byWorker };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const round = (x: number, digits = 1) => Number(x.toFixed(digits));

async function embedded() {
  const cluster = new Cluster();
  try {
    const server = await cluster.serve();
    const projectId = await newProject(server, 'Bench embedded');
    await latencies(server, projectId, 2);
    log(`embedded: ${LATENCY_JOBS} jobs one at a time`);
    const lat = await latencies(server, projectId, LATENCY_JOBS);
    log(`embedded: ${THROUGHPUT_JOBS} jobs at once`);
    return { latency: lat, throughput: await throughput(server, projectId, THROUGHPUT_JOBS) };
  } finally {
    await cluster.dispose();
  }
}

async function queued() {
  const redis = await TestRedis.start({ appendonly: true });
  const cluster = new Cluster();
  try {
    const server = await cluster.serve({ queue: redis.url });
    cluster.worker('w1', redis.url);
    await server.waitWorkers(['w1']);
    const projectId = await newProject(server, 'Bench queue');
    await latencies(server, projectId, 2);
    log(`redis, 1 worker: ${LATENCY_JOBS} jobs one at a time`);
    const lat = await latencies(server, projectId, LATENCY_JOBS);
    log(`redis, 1 worker: ${THROUGHPUT_JOBS} jobs at once`);
    const one = await throughput(server, projectId, THROUGHPUT_JOBS);
    cluster.worker('w2', redis.url);
    await server.waitWorkers(['w1', 'w2']);
    // Warm w2 (its own graph cache, its model load): jobs at once until it has done two.
    await server.until(
      async () => ((await throughput(server, projectId, 4)).byWorker.w2 >= 2 ? true : null),
      10 * JOB_MS,
      'w2 to warm up',
    );
    log(`redis, 2 workers: ${THROUGHPUT_JOBS} jobs at once`);
    const two = await throughput(server, projectId, THROUGHPUT_JOBS);
    return { latency: lat, one, two };
  } finally {
    await cluster.dispose();
    await redis.dispose();
  }
}

const config = {
  date: new Date().toISOString(),
  node: process.version,
  cpus: `${cpus().length} x ${cpus()[0]?.model ?? '?'}`,
  redis: execFileSync(REDIS_SERVER, ['--version'], { encoding: 'utf8' }).trim(),
  model: 'models/toy-sd (64x64)',
  job: `generate, 1 image, ${STEPS} DDIM steps`,
  latencyJobs: LATENCY_JOBS,
  throughputJobs: THROUGHPUT_JOBS,
  loadBefore: loadavg().map((x) => round(x, 2)),
};
log(JSON.stringify(config));
const e = await embedded();
const q = await queued();
const result = {
  config: { ...config, loadAfter: loadavg().map((x) => round(x, 2)) },
  latencyMs: {
    embeddedMedian: round(median(e.latency)),
    redisMedian: round(median(q.latency)),
    added: round(median(q.latency) - median(e.latency)),
    embeddedP90: round([...e.latency].sort((a, b) => a - b)[Math.floor(0.9 * e.latency.length)]),
    redisP90: round([...q.latency].sort((a, b) => a - b)[Math.floor(0.9 * q.latency.length)]),
  },
  jobsPerMinute: {
    embedded: round(e.throughput.jobsPerMin),
    oneWorker: round(q.one.jobsPerMin),
    twoWorkers: round(q.two.jobsPerMin),
    twoWorkersSplit: q.two.byWorker,
  },
};
if (values.json) console.log(JSON.stringify(result, null, 2));
else {
  const l = result.latencyMs;
  const t = result.jobsPerMinute;
  console.log(
    [
      `configuration: ${JSON.stringify(result.config)}`,
      `latency, generation.start returned -> first progress event (median of ${LATENCY_JOBS}):`,
      `  embedded ${l.embeddedMedian} ms (p90 ${l.embeddedP90}), redis + 1 worker ${l.redisMedian} ms (p90 ${l.redisP90}); added by the queue: ${l.added} ms`,
      `jobs per minute (${THROUGHPUT_JOBS} jobs at once): embedded ${t.embedded}, 1 worker ${t.oneWorker}, 2 workers ${t.twoWorkers} (${JSON.stringify(t.twoWorkersSplit)})`,
    ].join('\n'),
  );
}

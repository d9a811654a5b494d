/**
 * The Redis queue (issue 29): the one file that imports BullMQ. Jobs are data (jobData.ts) on one
 * BullMQ queue per capability; `singlora worker`s take them (queueWorker.ts); the server submits,
 * lists, cancels and relays what the workers report to its clients.
 *
 *   Redis key (prefix `singlora`)   what it holds
 *   ------------------------------  -------------------------------------------------------------
 *   singlora:{train,engine,io}:*    BullMQ's queues: job data, state, progress, return values
 *   singlora:workers                hash: worker name -> {queues, lastSeen, jobId} (heartbeats)
 *   singlora:cancelled              hash: job id -> the record of a job cancelled while queued
 *   singlora:cancel                 pub/sub channel: {jobId, reason} to the worker running it
 *   singlora:lock:project:<id>      a project's lock: a token, SET NX PX, refreshed, freed by token
 *
 * A job's record (`jobs.list`) is read from BullMQ: its data (kind, project, run, created), its
 * state, the worker BullMQ recorded as it made the job active (`processedBy`, the worker's name),
 * its progress (`{p: progress, w: worker, e?: [event, data]}`: the worker also sends the
 * handler's events through it, and the server relays them from QueueEvents) and its return value
 * (the outcome: done, cancelled or failed as the handler said, and the worker's name).
 *
 * Failures: a worker that dies leaves its job locked; BullMQ's stalled check (every lock period,
 * 30 s) moves it back to the queue and another worker resumes it (jobHandlers.ts). ioredis
 * reconnects after a Redis restart; the queued jobs survive as far as Redis persists them
 * (docs/scale-out.md: appendonly). Two servers share one queue: a job is added once, by the server
 * that was asked, under its own id, and BullMQ gives each job one active owner.
 */
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { type Job as BullJob, Queue, QueueEvents, WaitingError, Worker } from 'bullmq';
import type { EventName, Job, QueueStatus } from '../api/contract.ts';
import { readableError } from './fsErrors.ts';
import { QUEUES, queueOf, type JobData, type QueueName } from './jobData.ts';
import { matches, type JobFilter, type JobQueue } from './jobQueue.ts';
import type { JobOutcome, JobProgress } from './jobs.ts';

const PREFIX = 'singlora';
const WORKERS_KEY = `${PREFIX}:workers`;
const CANCELLED_KEY = `${PREFIX}:cancelled`;
const CANCEL_CHANNEL = `${PREFIX}:cancel`;
/** `singlora:cancel:<jobId>`: a cancel kept for an hour, for a job between workers when it was sent. */
const cancelKey = (jobId: string) => `${PREFIX}:cancel:${jobId}`;
/** Heartbeats older than this are dropped from the list (a worker gone for good). */
const FORGET_WORKER_MS = 60 * 60_000;
/** A worker silent this long counts as gone. */
export const WORKER_GONE_MS = 30_000;
export const HEARTBEAT_MS = 5_000;
/** Finished jobs kept per queue (as the embedded runner keeps 200). */
const KEEP = 200;

/** The part of an ioredis connection this file uses (ioredis is loaded at run time, see connect). */
export interface RedisClient {
  status: string;
  duplicate(): RedisClient;
  quit(): Promise<unknown>;
  disconnect(): void;
  on(event: string, listener: (...args: never[]) => void): unknown;
  set(key: string, value: string, ...args: Array<string | number>): Promise<string | null>;
  eval(script: string, keys: number, ...args: Array<string | number>): Promise<unknown>;
  hset(key: string, field: string, value: string): Promise<number>;
  hdel(key: string, field: string): Promise<number>;
  get(key: string): Promise<string | null>;
  hgetall(key: string): Promise<Record<string, string>>;
  publish(channel: string, message: string): Promise<number>;
  subscribe(channel: string): Promise<unknown>;
}

/**
 * Opens an ioredis connection to `url` (`redis://[:password@]host:port[/db]`, or `rediss://` for
 * TLS). `blocking`: for BullMQ workers and QueueEvents, which wait on Redis (no retry limit per
 * request: they wait through a Redis restart). ioredis reconnects by itself either way.
 */
export function connectRedis(url: string, o: { blocking: boolean; log?: (line: string) => void }): RedisClient {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`--queue: '${url}' is not a URL; give redis://host:port or rediss://:password@host:port`);
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:')
    throw new Error(`--queue: '${url}' is not a Redis URL (redis:// or rediss://)`);
  // Through require: bullmq's ESM build loads no Redis driver itself, and a desktop build that
  // never uses a queue does not need ioredis at all.
  let Redis: new (url: string, opts: Record<string, unknown>) => RedisClient;
  try {
    const mod = createRequire(import.meta.url)('ioredis') as { default?: typeof Redis } & typeof Redis;
    Redis = mod.default ?? mod;
  } catch (err) {
    throw new Error(`the Redis queue needs the ioredis package (npm install): ${(err as Error).message}`);
  }
  const client = new Redis(url, {
    maxRetriesPerRequest: o.blocking ? null : 3,
    retryStrategy: (times: number) => Math.min(times * 200, 2_000),
  });
  let said = false;
  client.on('error', (err: Error) => {
    if (!said) o.log?.(`queue: Redis at ${parsed.host}: ${err.message} (retrying)`);
    said = true;
  });
  client.on('ready', () => {
    if (said) o.log?.(`queue: Redis at ${parsed.host} is back`);
    said = false;
  });
  return client;
}

/** Runs a Redis read or write; Redis out of reach becomes one sentence (ioredis keeps reconnecting). */
async function reach<T>(f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (err) {
    const m = readableError(err);
    if (/max retries|ECONNREFUSED|Connection is closed|ETIMEDOUT|EHOSTUNREACH|ENOTFOUND/i.test(m))
      throw new Error(`the Redis queue is out of reach (${m}); queued jobs wait in Redis, try again when it is back`);
    throw err;
  }
}

/** What BullMQ holds for one job. */
interface StoredJob {
  job: JobData;
  createdAt: string;
}
/** A job's BullMQ progress: the handler's progress, the worker, and (maybe) one handler event. */
interface ProgressPayload {
  p: JobProgress | null;
  w: string;
  e?: [EventName, unknown];
}
/** A job's BullMQ return value: the handler's outcome, as the embedded runner settles it. */
interface StoredOutcome {
  status: 'done' | 'failed' | 'cancelled';
  error: string | null;
  label?: string;
  result?: Job['result'];
  worker: string;
}
/** A worker's heartbeat. */
interface Heartbeat {
  name: string;
  queues: QueueName[];
  lastSeen: string;
  jobId: string | null;
}

export function newJobId(): string {
  return `job-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
}

const bullOpts = (connection: RedisClient) => ({ connection: connection as never, prefix: PREFIX });

function isProgressPayload(v: unknown): v is ProgressPayload {
  return typeof v === 'object' && v !== null && 'w' in v;
}

/** Why a queued job waits, from the workers' heartbeats; null when some live worker takes its queue. */
export function waitingReason(queue: QueueName, workers: QueueStatus['workers']): string | null {
  if (workers.some((w) => w.alive && w.queues.includes(queue))) return null;
  const how =
    queue === 'train'
      ? 'start `singlora worker` on a machine with a GPU provider, or one with --allow-cpu-training'
      : 'start `singlora worker --queue ...`';
  return `no connected worker takes ${queue} jobs: ${how}`;
}

/** A job record from BullMQ's state. */
function recordOf(job: BullJob, state: string, workers: QueueStatus['workers']): Job {
  const stored = job.data as StoredJob;
  const d = stored.job;
  const progress = isProgressPayload(job.progress) ? job.progress : null;
  const outcome = state === 'completed' ? (job.returnvalue as StoredOutcome | null) : null;
  const queued = state !== 'active' && state !== 'completed' && state !== 'failed';
  const status: Job['status'] = outcome
    ? outcome.status
    : state === 'failed'
      ? 'failed'
      : state === 'active'
        ? 'running'
        : 'queued';
  let p = progress?.p ?? null;
  if (outcome?.label !== undefined) p = { ...(p ?? { done: 1, total: 1 }), label: outcome.label };
  return {
    id: job.id ?? '',
    kind: d.kind,
    projectId: d.projectId,
    runId: d.runId,
    status,
    createdAt: stored.createdAt,
    error: outcome ? outcome.error : state === 'failed' ? job.failedReason || 'failed' : null,
    progress: p,
    ...(outcome?.result && status === 'done' ? { result: outcome.result } : {}),
    // `processedBy`: the name BullMQ writes in the same step that makes the job active, so a
    // running job names its worker before its first progress write reaches Redis (and a job
    // handed on names its new worker, not the last progress of the one before).
    worker: queued ? null : (outcome?.worker ?? job.processedBy ?? progress?.w ?? null),
    waiting: queued ? waitingReason(queueOf(d.kind), workers) : null,
  };
}

type JobState = 'waiting' | 'active' | 'delayed' | 'prioritized' | 'waiting-children' | 'completed' | 'failed';
const ACTIVE_STATES: readonly JobState[] = ['waiting', 'active', 'delayed', 'prioritized', 'waiting-children'];
const FINISHED_STATES: readonly JobState[] = ['completed', 'failed'];

export interface RedisQueueOptions {
  url: string;
  /** Every change of a job's record (the service emits it as `job.updated`). */
  onUpdate: (job: Job) => void;
  /** A handler's event a worker sent (`train.event`, `generation.*`, `evaluation.progress`). */
  onEvent: (event: EventName, data: unknown) => void;
  /** What a job cancelled while queued leaves behind (a new run reads `cancelled`). */
  cancelQueued: (data: JobData) => Promise<void>;
  log: (line: string) => void;
}

/** The server's side of the Redis queue (see the top of this file). */
export class RedisJobQueue implements JobQueue {
  readonly mode = 'redis' as const;
  readonly #client: RedisClient;
  readonly #queues: Map<QueueName, Queue>;
  readonly #events: QueueEvents[] = [];
  readonly #connections: RedisClient[] = [];
  /** The last record sent of each recent job (progress updates build on it). */
  readonly #known = new Map<string, Job>();
  readonly #chains = new Map<string, Promise<void>>();
  #closed = false;

  private constructor(
    private readonly opts: RedisQueueOptions,
    client: RedisClient,
  ) {
    this.#client = client;
    this.#queues = new Map(QUEUES.map((q) => [q, new Queue(q, bullOpts(client))]));
    for (const q of this.#queues.values()) q.on('error', (err) => this.#logError(err));
  }

  /** Connects, and follows every queue's events. */
  static async open(opts: RedisQueueOptions): Promise<RedisJobQueue> {
    const client = connectRedis(opts.url, { blocking: false, log: opts.log });
    const queue = new RedisJobQueue(opts, client);
    for (const name of QUEUES) {
      // Its own connection (it blocks reading the event stream), closed with the queue.
      const connection = connectRedis(opts.url, { blocking: true });
      queue.#connections.push(connection);
      const events = new QueueEvents(name, bullOpts(connection));
      events.on('error', (err) => queue.#logError(err));
      for (const e of ['waiting', 'active', 'completed', 'failed', 'removed'] as const)
        events.on(e, ({ jobId }: { jobId: string }) => queue.#inOrder(jobId, () => queue.#refresh(jobId)));
      events.on('progress', ({ jobId, data }: { jobId: string; data: unknown }) => queue.#onProgress(jobId, data));
      queue.#events.push(events);
    }
    await Promise.all([...queue.#queues.values()].map((q) => q.waitUntilReady()));
    await Promise.all(queue.#events.map((e) => e.waitUntilReady()));
    return queue;
  }

  /** The project lock over Redis (see RedisLock), on this queue's connection. */
  lock(name: string): RedisLock {
    return new RedisLock(this.#client, `${PREFIX}:lock:${name}`);
  }

  submitJob(data: JobData): Promise<Job> {
    return this.#reach(() => this.#submit(data));
  }

  async #submit(data: JobData): Promise<Job> {
    const id = newJobId();
    const stored: StoredJob = { job: data, createdAt: new Date().toISOString() };
    const queue = this.#queues.get(queueOf(data.kind))!;
    const job = await queue.add(data.kind, stored, {
      jobId: id,
      removeOnComplete: { count: KEEP },
      removeOnFail: { count: KEEP },
    });
    return recordOf(job as BullJob, 'waiting', await this.#workers());
  }

  async list(): Promise<Job[]> {
    return this.#reach(async () => {
      const out = [...(await this.#byState(ACTIVE_STATES, -1)), ...(await this.#byState(FINISHED_STATES, KEEP))];
      out.push(...(await this.#tombstones()));
      return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
    });
  }

  get(jobId: string): Promise<Job | undefined> {
    return this.#reach(() => this.#get(jobId));
  }

  async #get(jobId: string): Promise<Job | undefined> {
    const found = await this.#findRecord(jobId);
    if (found) return recordOf(found.job, found.state, await this.#workers());
    return (await this.#tombstones()).find((j) => j.id === jobId);
  }

  async active(filter: JobFilter = {}): Promise<Job[]> {
    return this.#reach(async () =>
      (await this.#byState(ACTIVE_STATES, -1)).filter(
        (j) => (j.status === 'queued' || j.status === 'running') && matches(j, filter),
      ),
    );
  }

  /** The records of every job in `states`, one BullMQ read per queue and state. */
  async #byState(states: readonly JobState[], last: number): Promise<Job[]> {
    const workers = await this.#workers();
    const out: Job[] = [];
    for (const q of this.#queues.values())
      for (const state of states)
        for (const job of (await q.getJobs([state], 0, last)) as BullJob[])
          if (job?.id) out.push(recordOf(job, state, workers));
    return out;
  }

  #reach<T>(f: () => Promise<T>): Promise<T> {
    return reach(f);
  }

  /**
   * A queued job is removed from its queue and recorded as cancelled; a running one is told
   * through the cancel channel, and the worker that runs it aborts it (training pauses at a
   * checkpoint). A job that became active in between is told as a running one.
   */
  cancel(jobId: string, reason: 'cancel' | 'pause' = 'cancel'): Promise<boolean | undefined> {
    return this.#reach(() => this.#cancel(jobId, reason));
  }

  async #cancel(jobId: string, reason: 'cancel' | 'pause'): Promise<boolean | undefined> {
    const job = await this.#find(jobId);
    if (!job) return (await this.#tombstones()).some((j) => j.id === jobId) ? false : undefined;
    const state = await job.getState();
    if (state === 'completed' || state === 'failed') return false;
    if (state !== 'active') {
      const removed = await job.remove().then(
        () => true,
        () => false,
      );
      if (removed) {
        const record: Job = {
          ...recordOf(job, state, []),
          status: 'cancelled',
          waiting: null,
          error: reason === 'pause' ? INTERRUPTED_QUEUED : null,
        };
        await this.#client.hset(CANCELLED_KEY, jobId, JSON.stringify(record));
        const old = (await this.#tombstones()).sort((a, b) => a.createdAt.localeCompare(b.createdAt)).slice(0, -KEEP);
        for (const j of old) await this.#client.hdel(CANCELLED_KEY, j.id);
        this.#update(record);
        await this.opts
          .cancelQueued((job.data as StoredJob).job)
          .catch((err) => this.opts.log(`jobs: ${jobId}: after cancelling: ${readableError(err)}`));
        return true;
      }
    }
    // Kept as well as sent: a job that is between workers (handed back, or its worker died) is
    // cancelled by the worker that takes it next.
    await this.#client.set(cancelKey(jobId), reason, 'EX', 3600);
    await this.#client.publish(CANCEL_CHANNEL, JSON.stringify({ jobId, reason }));
    return true;
  }

  async wait(jobId: string): Promise<Job> {
    for (;;) {
      const j = await this.get(jobId);
      if (!j) throw new Error(`no job ${jobId}`);
      if (j.status !== 'queued' && j.status !== 'running') return j;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  queueStatus(): Promise<QueueStatus> {
    return this.#reach(() => this.#status());
  }

  async #status(): Promise<QueueStatus> {
    const queues = [];
    for (const [name, q] of this.#queues) {
      const c = await q.getJobCounts('waiting', 'delayed', 'prioritized', 'active');
      queues.push({
        name,
        waiting: (c.waiting ?? 0) + (c.delayed ?? 0) + (c.prioritized ?? 0),
        active: c.active ?? 0,
      });
    }
    return { mode: 'redis', queues, workers: await this.#workers() };
  }

  /** Closes the connections; jobs stay in Redis, running ones on their workers. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all(this.#events.map((e) => e.close().catch(() => {})));
    await Promise.all([...this.#queues.values()].map((q) => q.close().catch(() => {})));
    for (const c of [...this.#connections, this.#client]) await c.quit().catch(() => c.disconnect());
  }

  async #find(jobId: string): Promise<BullJob | undefined> {
    for (const q of this.#queues.values()) {
      const job = (await q.getJob(jobId)) as BullJob | undefined;
      if (job) return job;
    }
    return undefined;
  }

  /**
   * A job and its state, the state read first: BullMQ finishes a job (state, failedReason or
   * return value) in one script, so a job read after a finished state holds its outcome. (Read
   * the other way round, a job that failed between the two reads had no failedReason yet.)
   */
  async #findRecord(jobId: string): Promise<{ job: BullJob; state: string } | undefined> {
    for (const q of this.#queues.values()) {
      const state = await q.getJobState(jobId);
      if (state === 'unknown') continue;
      const job = (await q.getJob(jobId)) as BullJob | undefined;
      if (job) return { job, state };
    }
    return undefined;
  }

  async #workers(): Promise<QueueStatus['workers']> {
    const now = Date.now();
    const beats = Object.values(await this.#client.hgetall(WORKERS_KEY)).map((text) => JSON.parse(text) as Heartbeat);
    const forgotten = beats.filter((h) => now - Date.parse(h.lastSeen) > FORGET_WORKER_MS);
    for (const h of forgotten) await this.#client.hdel(WORKERS_KEY, h.name);
    return beats
      .filter((h) => !forgotten.includes(h))
      .map((h) => ({ ...h, alive: now - Date.parse(h.lastSeen) < WORKER_GONE_MS }))
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  async #tombstones(): Promise<Job[]> {
    return Object.values(await this.#client.hgetall(CANCELLED_KEY)).map((t) => JSON.parse(t) as Job);
  }

  /**
   * Runs one job's record updates in the order its events came (a slow read of an earlier state
   * must not land after a later one).
   */
  #inOrder(jobId: string, update: () => Promise<void> | void): void {
    const next = (this.#chains.get(jobId) ?? Promise.resolve()).then(update).catch((err) => this.#logError(err));
    this.#chains.set(jobId, next);
    void next.then(() => {
      if (this.#chains.get(jobId) === next) this.#chains.delete(jobId);
    });
  }

  /** A job changed state: its record from Redis, to every client (once per change). */
  async #refresh(jobId: string): Promise<void> {
    const found = await this.#findRecord(jobId);
    if (!found) return;
    this.#update(recordOf(found.job, found.state, await this.#workers()));
  }

  /** A worker's progress: its event relayed at once, the record's progress updated (no Redis read). */
  #onProgress(jobId: string, data: unknown): void {
    if (!isProgressPayload(data)) return;
    if (data.e) this.opts.onEvent(data.e[0], data.e[1]);
    this.#inOrder(jobId, async () => {
      const known = this.#known.get(jobId);
      if (!known) return this.#refresh(jobId);
      if (known.status !== 'queued' && known.status !== 'running') return;
      // Progress means a worker has it, even before the 'active' event's read is back.
      this.#update({ ...known, status: 'running', waiting: null, progress: data.p, worker: data.w });
    });
  }

  /** Emits a record that changed, and remembers it (the last 1000 jobs). */
  #update(record: Job): void {
    const before = this.#known.get(record.id);
    if (before && JSON.stringify(before) === JSON.stringify(record)) return;
    this.#known.delete(record.id);
    this.#known.set(record.id, record);
    if (this.#known.size > 1000) this.#known.delete(this.#known.keys().next().value!);
    this.#emit(record);
  }

  #emit(job: Job): void {
    try {
      this.opts.onUpdate(job);
    } catch (err) {
      this.opts.log(`jobs: an update listener failed: ${(err as Error).message}`);
    }
  }

  #lastError = '';
  /** Logs a queue error once, not once per retry while Redis is away. */
  #logError(err: unknown): void {
    const m = readableError(err);
    if (this.#closed || m === this.#lastError) return;
    this.#lastError = m;
    this.opts.log(`queue: ${m}`);
  }
}

const INTERRUPTED_QUEUED = 'interrupted: the service stopped before this job started';

/**
 * A lock over Redis, for one name: `SET key token NX PX ttl`, refreshed while held (so a holder
 * that dies frees it within `ttlMs`), released only by the token that took it.
 */
export class RedisLock {
  static readonly RELEASE =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";
  static readonly REFRESH =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";

  constructor(
    private readonly client: RedisClient,
    readonly key: string,
    private readonly ttlMs = 30_000,
  ) {}

  /** Runs `fn` holding the lock; waits up to `waitMs` for it, then throws saying who holds it. */
  async with<T>(fn: () => Promise<T>, waitMs = 120_000): Promise<T> {
    const token = randomBytes(12).toString('hex');
    const start = Date.now();
    while ((await reach(() => this.client.set(this.key, token, 'PX', this.ttlMs, 'NX'))) !== 'OK') {
      if (Date.now() - start > waitMs)
        throw new Error(`${this.key} is held by another server (waited ${Math.round(waitMs / 1000)} s)`);
      await new Promise((r) => setTimeout(r, 25 + Math.random() * 50));
    }
    const refresh = setInterval(
      () => void this.client.eval(RedisLock.REFRESH, 1, this.key, token, this.ttlMs).catch(() => {}),
      this.ttlMs / 3,
    );
    try {
      return await fn();
    } finally {
      clearInterval(refresh);
      await this.client.eval(RedisLock.RELEASE, 1, this.key, token).catch(() => {});
    }
  }
}

/** What a worker's job handler gets: the job's id, its abort signal, its progress and events. */
export interface QueueJobContext {
  jobId: string;
  signal: AbortSignal;
  progress(p: JobProgress): void;
  emit(event: EventName, data: unknown): void;
}

export interface QueueWorkerOptions {
  url: string;
  name: string;
  queues: QueueName[];
  run(job: StoredJob['job'] | unknown, ctx: QueueJobContext): Promise<JobOutcome | void>;
  /** The lock period: a dead worker's job is handed on after about this long (default 30 s). */
  lockMs?: number;
  log: (line: string) => void;
}

export interface RunningQueueWorker {
  /** Stops taking jobs; a running training job pauses at a checkpoint and goes back to the queue. */
  close(): Promise<void>;
}

/**
 * Takes jobs from `queues` and runs them with `run`: one job at a time on the engine (train and
 * engine queues), downloads beside it; heartbeats; cancels from the cancel channel.
 */
export async function startQueueWorker(o: QueueWorkerOptions): Promise<RunningQueueWorker> {
  const taker = new JobTaker(o);
  await taker.start();
  return { close: () => taker.close() };
}

/** A worker's side of the queue: its BullMQ workers, heartbeats, cancels, and the jobs it runs. */
class JobTaker {
  readonly #client: RedisClient;
  readonly #subscriber: RedisClient;
  readonly #running = new Map<string, AbortController>();
  #workers: Worker[] = [];
  #beats: NodeJS.Timeout | undefined;
  #closing = false;
  #engineBusy = false;
  #lastError = '';

  constructor(private readonly o: QueueWorkerOptions) {
    this.#client = connectRedis(o.url, { blocking: true, log: o.log });
    this.#subscriber = connectRedis(o.url, { blocking: true });
  }

  async start(): Promise<void> {
    await this.#heartbeat();
    this.#beats = setInterval(() => void this.#heartbeat(), HEARTBEAT_MS);
    await this.#subscriber.subscribe(CANCEL_CHANNEL);
    this.#subscriber.on('message', ((_channel: string, text: string) => {
      try {
        const { jobId, reason } = JSON.parse(text) as { jobId: string; reason: 'cancel' | 'pause' };
        this.#running.get(jobId)?.abort(reason);
      } catch {
        /* not a cancel */
      }
    }) as never);
    const lockMs = this.o.lockMs ?? 30_000;
    this.#workers = this.o.queues.map(
      (name) =>
        new Worker(name, ((job: BullJob, token?: string) => this.#take(job, token)) as never, {
          ...bullOpts(this.#client),
          // BullMQ stores it on the job (processedBy) as it moves it to active.
          name: this.o.name,
          concurrency: 1,
          lockDuration: lockMs,
          stalledInterval: lockMs,
          maxStalledCount: 3,
        }),
    );
    for (const w of this.#workers) {
      // A job whose lock was lost (Redis away longer than the lock period) is handed on by the
      // stalled check: it stops here (training pauses at a checkpoint), so it never runs twice.
      w.on('lockRenewalFailed', (ids: string[]) => {
        for (const id of ids.filter((id) => this.#running.has(id))) {
          this.o.log(`queue: lost the lock of ${id} (Redis was away too long): stopping it here`);
          this.#running.get(id)?.abort('pause');
        }
      });
      w.on('error', (err) => {
        const m = readableError(err);
        if (m !== this.#lastError) this.o.log(`queue: ${m}`);
        this.#lastError = m;
      });
    }
    await Promise.all(this.#workers.map((w) => w.waitUntilReady()));
  }

  /** Stops taking jobs; running ones are paused and go back to the queue (see #run). */
  async close(): Promise<void> {
    this.#closing = true;
    clearInterval(this.#beats);
    for (const c of this.#running.values()) c.abort('pause');
    await Promise.all(this.#workers.map((w) => w.close()));
    await this.#client.hdel(WORKERS_KEY, this.o.name).catch(() => {});
    await this.#subscriber.quit().catch(() => this.#subscriber.disconnect());
    await this.#client.quit().catch(() => this.#client.disconnect());
  }

  async #heartbeat(): Promise<void> {
    const beat: Heartbeat = {
      name: this.o.name,
      queues: this.o.queues,
      lastSeen: new Date().toISOString(),
      jobId: [...this.#running.keys()][0] ?? null,
    };
    await this.#client.hset(WORKERS_KEY, this.o.name, JSON.stringify(beat)).catch(() => {});
  }

  /**
   * One engine job at a time (train and engine queues share this worker's one engine process):
   * while one runs, the other engine queue's BullMQ worker is paused, and a job it had already
   * fetched goes back to the queue for another worker.
   */
  async #take(job: BullJob, token?: string): Promise<StoredOutcome> {
    if (queueOf((job.data as StoredJob).job.kind) === 'io') return this.#run(job, token);
    if (this.#engineBusy && token) {
      await job.moveToWait(token);
      throw new WaitingError();
    }
    this.#engineBusy = true;
    const others = this.#workers.filter((w) => w.name !== job.queueName && w.name !== 'io');
    await Promise.all(others.map((w) => w.pause(true)));
    try {
      return await this.#run(job, token);
    } finally {
      this.#engineBusy = false;
      if (!this.#closing) for (const w of others) w.resume();
    }
  }

  /**
   * Runs one job: its progress and events go out through BullMQ's job progress, in order; its
   * outcome is the return value. A job this worker stops because it is closing goes back to the
   * queue (another worker resumes it); one cancelled before it started here ends at once.
   */
  async #run(job: BullJob, token?: string): Promise<StoredOutcome> {
    const id = job.id ?? '';
    const name = this.o.name;
    const controller = new AbortController();
    this.#running.set(id, controller);
    const cancelled = await this.#client.get(cancelKey(id)).catch(() => null);
    if (cancelled === 'cancel' || cancelled === 'pause') controller.abort(cancelled);
    void this.#heartbeat();
    let last: JobProgress | null = null;
    let sending: Promise<unknown> = Promise.resolve();
    const send = (payload: ProgressPayload) => {
      sending = sending.then(() => job.updateProgress(payload as never)).catch((e) => this.o.log(`queue: ${id}: ${e}`));
    };
    send({ p: null, w: name });
    let outcome: JobOutcome | void = undefined;
    let error: unknown = null;
    try {
      outcome = await this.o.run((job.data as StoredJob).job, {
        jobId: id,
        signal: controller.signal,
        progress: (p) => send({ p: (last = p), w: name }),
        emit: (event, data) => send({ p: last, w: name, e: [event, data] }),
      });
    } catch (err) {
      error = err;
    } finally {
      this.#running.delete(id);
      void this.#heartbeat();
    }
    await sending;
    const aborted = controller.signal.aborted;
    if (this.#closing && aborted && controller.signal.reason === 'pause' && token) {
      await job.moveToWait(token);
      throw new WaitingError();
    }
    if (error !== null && !aborted) throw new Error(readableError(error));
    return {
      status: outcome?.status ?? (aborted ? 'cancelled' : 'done'),
      error: outcome?.error ?? null,
      ...(outcome?.label !== undefined ? { label: outcome.label } : {}),
      ...(outcome?.result !== undefined ? { result: outcome.result } : {}),
      worker: name,
    };
  }
}

/**
 * The job runner, the embedded JobQueue (jobQueue.ts; the Redis one is redisQueue.ts): long work
 * (train, evaluate, generate, export, download) as jobs that clients follow through `job.updated`.
 * Jobs come as data (`submitJob`, run by the handler registry: jobHandlers.ts) or, in tests, as
 * a closure (`submit`).
 *
 * Lanes: the `engine` lane runs one job at a time, first in, first out, because there is one
 * engine process and one GPU; a generation submitted during training waits until the training
 * job ends. Downloads use the `io` lane (network and disk only), one at a time, beside it.
 *
 * Cancelling: a queued job is removed from the queue (status `cancelled`); a running one gets
 * its AbortSignal aborted and ends `cancelled` once its work stops (training: after the current
 * step, with a checkpoint).
 *
 * Persistence: `<dataDir>/jobs.json` is written atomically on every status change (not on every
 * progress update). On startup, jobs the file says were running become `failed` (interrupted)
 * and queued ones `cancelled`; the service then pauses their runs so they can be resumed.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { readFile, rename } from 'node:fs/promises';
import { z } from 'zod';
import { jobSchema, type Job, type QueueStatus } from '../api/contract.ts';
import { atomicWriteJson } from '../engine/io/atomic.ts';
import { readableError } from './fsErrors.ts';
import { laneOf, type JobData } from './jobData.ts';
import { matches, type JobFilter, type JobQueue } from './jobQueue.ts';

export type JobKind = Job['kind'];
export type Lane = 'engine' | 'io';
export type JobProgress = NonNullable<Job['progress']>;

export interface JobContext {
  readonly jobId: string;
  readonly signal: AbortSignal;
  /** Updates the job's progress (emitted, not persisted). */
  progress(p: JobProgress): void;
}

/** What a job's work may say about how it ended (default: done, or cancelled when aborted). */
export interface JobOutcome {
  status?: 'done' | 'failed' | 'cancelled';
  error?: string | null;
  /** The final progress label (e.g. the exported file). */
  label?: string;
  /** What the job made (the contract's `Job.result`; an export: its path and URL). */
  result?: Job['result'];
}

export interface JobSpec {
  kind: JobKind;
  projectId: string | null;
  runId: string | null;
  lane?: Lane;
  run(ctx: JobContext): Promise<JobOutcome | void>;
  /** Called when the job is cancelled before it started. */
  onCancelQueued?(): Promise<void> | void;
}

export interface JobRunnerOptions {
  /** jobs.json, or null for a runner that keeps nothing on disk. */
  file: string | null;
  onUpdate: (job: Job) => void;
  log?: (line: string) => void;
  /** Finished jobs kept in the list (default 200). */
  keep?: number;
  /** The name job records carry as their `worker` (default: `<host>:<pid>`, as `singlora worker` names itself). */
  workerName?: string;
  /** How jobs.json is written (default: atomically); a test injects a failing disk here. */
  write?: (file: string, value: unknown) => Promise<void>;
  /** What runs jobs submitted as data (`submitJob`): the handler registry over the service's context. */
  handlers?: DataJobHandlers;
}

/** How the runner runs a job given as data, and what a queued one leaves when cancelled. */
export interface DataJobHandlers {
  run(data: JobData, ctx: JobContext): Promise<JobOutcome | void>;
  cancelQueued(data: JobData): Promise<void>;
}

const jobsFileSchema = z.object({ schemaVersion: z.literal(1), jobs: z.array(jobSchema) });

/** A worker's default name: the host name and process id. */
export function defaultWorkerName(): string {
  return `${hostname()}:${process.pid}`;
}

export const INTERRUPTED_RUNNING = 'interrupted: the service stopped while this job was running';
export const INTERRUPTED_QUEUED = 'interrupted: the service stopped before this job started';

export class JobRunner implements JobQueue {
  readonly mode = 'embedded' as const;
  #jobs: Job[] = [];
  readonly #specs = new Map<string, JobSpec>();
  readonly #controllers = new Map<string, AbortController>();
  readonly #runningByLane = new Map<Lane, string>();
  readonly #settled = new Map<string, Promise<void>>();
  #writes: Promise<void> = Promise.resolve();
  #writeError: string | null = null;
  /** Jobs submitted but not yet in jobs.json: they wait (submitRecorded). */
  readonly #unrecorded = new Set<string>();
  #closed = false;

  private constructor(private readonly opts: JobRunnerOptions) {}

  /** Loads jobs.json and marks what was interrupted; returns the runner and those jobs. */
  static async open(opts: JobRunnerOptions): Promise<{ runner: JobRunner; interrupted: Job[] }> {
    const runner = new JobRunner(opts);
    const interrupted: Job[] = [];
    if (opts.file) {
      let text: string | null = null;
      try {
        text = await readFile(opts.file, 'utf8');
      } catch {
        /* no file yet */
      }
      if (text !== null) {
        const r = (() => {
          try {
            return jobsFileSchema.safeParse(JSON.parse(text));
          } catch (err) {
            return { success: false as const, error: err as Error };
          }
        })();
        if (r.success) {
          runner.#jobs = r.data.jobs.map((j) => {
            if (j.status === 'running' || j.status === 'queued') {
              const fixed: Job = {
                ...j,
                status: j.status === 'running' ? 'failed' : 'cancelled',
                error: j.status === 'running' ? INTERRUPTED_RUNNING : INTERRUPTED_QUEUED,
              };
              interrupted.push(fixed);
              return fixed;
            }
            return j;
          });
        } else {
          // Kept aside, not overwritten: the list may still matter to someone reading it.
          const aside = `${opts.file}.damaged-${new Date().toISOString().replace(/[:.]/g, '-')}`;
          const kept = await rename(opts.file, aside).then(
            () => `kept it as ${aside}`,
            (err: Error) => `could not keep it aside (${readableError(err)})`,
          );
          opts.log?.(
            `jobs: ${opts.file} is not a valid job list (${r.error.message.replace(/\s+/g, ' ').slice(0, 200)}); ${kept}, starting with an empty list`,
          );
        }
      }
      if (interrupted.length) runner.#persist();
    }
    return { runner, interrupted };
  }

  list(): Job[] {
    return this.#jobs.map((j) => ({ ...j }));
  }

  get(jobId: string): Job | undefined {
    const j = this.#jobs.find((x) => x.id === jobId);
    return j && { ...j };
  }

  /** The embedded queue's status: its lanes as queues, and this process as the one worker. */
  queueStatus(): QueueStatus {
    const lanes: Lane[] = ['engine', 'io'];
    const laneOf = (j: Job): Lane => this.#specs.get(j.id)?.lane ?? 'engine';
    const count = (lane: Lane, status: Job['status']) =>
      this.#jobs.filter((j) => j.status === status && laneOf(j) === lane).length;
    const running = [...this.#runningByLane.values()];
    return {
      mode: 'embedded',
      queues: lanes.map((name) => ({ name, waiting: count(name, 'queued'), active: count(name, 'running') })),
      workers: [
        {
          name: this.#workerName,
          queues: lanes,
          lastSeen: new Date().toISOString(),
          alive: !this.#closed,
          jobId: running[0] ?? null,
        },
      ],
    };
  }

  get #workerName(): string {
    return this.opts.workerName ?? defaultWorkerName();
  }

  /** Queued or running jobs matching the filter. */
  active(filter: JobFilter = {}): Job[] {
    return this.#jobs.filter((j) => (j.status === 'queued' || j.status === 'running') && matches(j, filter));
  }

  /** Submits a job given as data (jobData.ts), once recorded; the handlers given at open run it. */
  submitJob(data: JobData): Promise<Job> {
    const handlers = this.opts.handlers;
    if (!handlers) throw new Error('this job runner was opened without job handlers');
    return this.submitRecorded({
      kind: data.kind,
      projectId: data.projectId,
      runId: data.runId,
      lane: laneOf(data.kind),
      run: (ctx) => handlers.run(data, ctx),
      onCancelQueued: () => handlers.cancelQueued(data),
    });
  }

  submit(spec: JobSpec): Job {
    const job = this.#enqueue(spec);
    queueMicrotask(() => this.#pump(spec.lane ?? 'engine'));
    return { ...job };
  }

  /**
   * Submits a job once it is recorded in jobs.json. When that write fails (a full disk), the job
   * never starts: it is withdrawn (`cancelled`, with the reason) and the error is thrown.
   */
  async submitRecorded(spec: JobSpec): Promise<Job> {
    const job = this.#enqueue(spec);
    this.#unrecorded.add(job.id);
    try {
      await this.flushed();
    } catch (err) {
      this.#specs.delete(job.id);
      job.status = 'cancelled';
      job.error = `not started: ${(err as Error).message}`;
      this.#changed(job, true);
      throw err;
    } finally {
      this.#unrecorded.delete(job.id);
    }
    queueMicrotask(() => this.#pump(spec.lane ?? 'engine'));
    return { ...job };
  }

  #enqueue(spec: JobSpec): Job {
    if (this.#closed) throw new Error('the job runner is closed');
    const job: Job = {
      id: `job-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`,
      kind: spec.kind,
      projectId: spec.projectId,
      runId: spec.runId,
      status: 'queued',
      createdAt: new Date().toISOString(),
      error: null,
      progress: null,
    };
    this.#jobs.push(job);
    this.#specs.set(job.id, spec);
    this.#changed(job, true);
    return job;
  }

  /**
   * Cancels a job: a queued one is removed at once, a running one is signalled (`reason` 'pause'
   * pauses training instead of cancelling it). False when the job had already finished;
   * undefined when there is no such job.
   */
  cancel(jobId: string, reason: 'cancel' | 'pause' = 'cancel'): boolean | undefined {
    const job = this.#jobs.find((j) => j.id === jobId);
    if (!job) return undefined;
    if (job.status === 'queued') {
      const spec = this.#specs.get(jobId);
      this.#specs.delete(jobId);
      job.status = 'cancelled';
      this.#changed(job, true);
      void Promise.resolve(spec?.onCancelQueued?.()).catch((err) =>
        this.opts.log?.(`jobs: ${jobId}: after cancelling: ${(err as Error).message}`),
      );
      return true;
    }
    if (job.status === 'running') {
      this.#controllers.get(jobId)?.abort(reason);
      return true;
    }
    return false;
  }

  /** Resolves when nothing is queued or running. */
  async idle(): Promise<void> {
    while (this.#settled.size || this.#jobs.some((j) => j.status === 'queued')) {
      await Promise.all([...this.#settled.values()]);
      await new Promise((r) => setImmediate(r));
    }
    await this.#writes;
  }

  /**
   * Resolves when every change so far is in jobs.json; rejects, saying why, when the last write
   * failed (the service then withdraws the job it was submitting and tells the client).
   */
  async flushed(): Promise<void> {
    await this.#writes;
    if (this.#writeError) throw new Error(this.#writeError);
  }

  /** Why the last jobs.json write failed, or null. */
  get writeError(): string | null {
    return this.#writeError;
  }

  /** Waits for one job to finish and returns it. */
  async wait(jobId: string): Promise<Job> {
    for (;;) {
      const j = this.get(jobId);
      if (!j) throw new Error(`no job ${jobId}`);
      if (j.status !== 'queued' && j.status !== 'running') return j;
      await (this.#settled.get(jobId) ?? new Promise((r) => setTimeout(r, 20)));
    }
  }

  /** Cancels queued jobs, pauses running ones, and waits for them to stop. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const j of this.#jobs) {
      if (j.status === 'queued') {
        j.status = 'cancelled';
        j.error = INTERRUPTED_QUEUED;
        const spec = this.#specs.get(j.id);
        this.#specs.delete(j.id);
        this.#changed(j, true);
        await Promise.resolve(spec?.onCancelQueued?.()).catch(() => {});
      }
    }
    for (const c of this.#controllers.values()) c.abort('pause');
    await Promise.all([...this.#settled.values()]);
    await this.#writes;
  }

  #pump(lane: Lane): void {
    if (this.#closed || this.#runningByLane.has(lane)) return;
    const next = this.#jobs.find(
      (j) => j.status === 'queued' && !this.#unrecorded.has(j.id) && (this.#specs.get(j.id)?.lane ?? 'engine') === lane,
    );
    if (!next) return;
    const spec = this.#specs.get(next.id)!;
    this.#runningByLane.set(lane, next.id);
    const controller = new AbortController();
    this.#controllers.set(next.id, controller);
    next.status = 'running';
    next.worker = this.#workerName;
    this.#changed(next, true);
    const settled = (async () => {
      let outcome: JobOutcome | void = undefined;
      let error: string | null = null;
      let failed = false;
      try {
        outcome = await spec.run({
          jobId: next.id,
          signal: controller.signal,
          progress: (p) => {
            next.progress = p;
            this.#changed(next, false);
          },
        });
      } catch (err) {
        failed = true;
        error = readableError(err);
      }
      const aborted = controller.signal.aborted;
      next.status = outcome?.status ?? (aborted ? 'cancelled' : failed ? 'failed' : 'done');
      next.error = outcome?.error !== undefined ? outcome.error : next.status === 'failed' ? error : null;
      if (outcome?.label !== undefined)
        next.progress = { ...(next.progress ?? { done: 1, total: 1 }), label: outcome.label };
      if (outcome?.result !== undefined && next.status === 'done') next.result = outcome.result;
      this.#controllers.delete(next.id);
      this.#specs.delete(next.id);
      this.#runningByLane.delete(lane);
      this.#changed(next, true);
      this.#settled.delete(next.id);
      this.#pump(lane);
    })();
    this.#settled.set(next.id, settled);
  }

  #changed(job: Job, persist: boolean): void {
    try {
      this.opts.onUpdate({ ...job });
    } catch (err) {
      this.opts.log?.(`jobs: an update listener failed: ${(err as Error).message}`);
    }
    if (persist) this.#persist();
  }

  #persist(): void {
    const file = this.opts.file;
    if (!file) return;
    const keep = this.opts.keep ?? 200;
    const finished = this.#jobs.filter((j) => j.status !== 'queued' && j.status !== 'running');
    const drop = new Set(finished.slice(0, Math.max(0, finished.length - keep)).map((j) => j.id));
    this.#jobs = this.#jobs.filter((j) => !drop.has(j.id));
    const snapshot = { schemaVersion: 1, jobs: this.#jobs.map((j) => ({ ...j })) };
    this.#writes = this.#writes
      .then(() => (this.opts.write ?? atomicWriteJson)(file, snapshot))
      .then(
        () => {
          this.#writeError = null;
        },
        (err) => {
          this.#writeError = `cannot write ${file}: ${readableError(err)}`;
          this.opts.log?.(`jobs: ${this.#writeError}`);
        },
      );
  }
}

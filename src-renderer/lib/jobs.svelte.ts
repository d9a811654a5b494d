/**
 * Background jobs (train, evaluate, generate, export, download), kept current from `job.updated`.
 * Services follow their own job with `track(jobId, fn)`; it also replays an update that arrived
 * before the call that created the job returned (a fast job can finish first).
 *
 * The queue (`jobs.queue`: its mode, waiting counts, the workers and their heartbeats) is read only
 * while someone watches it (the open Jobs panel: `watchQueue`): every QUEUE_POLL_MS, and soon after
 * a job changes (at most one read per QUEUE_THROTTLE_MS). A server older than `jobs.queue` answers
 * not_found: `queueMissing`, and it is not asked again.
 */
import { ApiError, type ApiClient, type Job, type QueueStatus } from '../../src-main/api/contract.ts';
import type { EventHub } from './events.ts';
import type { Notifier } from './notifier.svelte.ts';

export const ACTIVE = new Set<Job['status']>(['queued', 'running']);
export const isFinished = (j: Job) => !ACTIVE.has(j.status);
/** How often the open Jobs panel reads `jobs.queue`. */
export const QUEUE_POLL_MS = 3000;
/** The least time from a `job.updated` to the queue read it causes (a burst of updates: one read). */
export const QUEUE_THROTTLE_MS = 1000;

export class JobsService {
  jobs = $state<Job[]>([]);
  active = $derived(this.jobs.filter((j) => ACTIVE.has(j.status)));
  /** `jobs.queue`'s last answer; null before the first one and on a server without it. */
  queue = $state<QueueStatus | null>(null);
  /** When `queue` was read (ms since the epoch): how long ago a silent worker was seen is counted from it. */
  queueReadAt = $state(0);
  /** The server has no `jobs.queue` (older than the queue contract): the panel shows no queue section. */
  queueMissing = $state(false);
  /** Why the last read failed, shown in the panel (not toasted: it would come back every poll). */
  queueError = $state<string | null>(null);
  readonly #trackers = new Map<string, Set<(j: Job) => void>>();
  #watchers = 0;
  #poll: ReturnType<typeof setInterval> | null = null;
  #soon: ReturnType<typeof setTimeout> | null = null;
  #reading = false;

  constructor(
    private readonly api: ApiClient,
    hub: EventHub,
    private readonly notify: Notifier,
  ) {
    hub.on('job.updated', (job) => {
      this.#upsert(job);
      this.#readQueueSoon();
    });
  }

  async refresh(): Promise<void> {
    const jobs = await this.notify.guard('List jobs', () => this.api['jobs.list']({}));
    if (jobs) for (const j of jobs) this.#upsert(j);
  }

  async cancel(jobId: string): Promise<void> {
    const r = await this.notify.guard('Cancel job', () => this.api['jobs.cancel']({ jobId }));
    if (r && !r.cancelled) this.notify.info('The job had already finished.');
  }

  /** Reads the queue now, then every QUEUE_POLL_MS and after job updates, until the returned function is called. */
  watchQueue(): () => void {
    if (this.#watchers++ === 0) {
      void this.readQueue();
      this.#poll = setInterval(() => void this.readQueue(), QUEUE_POLL_MS);
    }
    let watching = true;
    return () => {
      if (!watching) return;
      watching = false;
      if (--this.#watchers === 0) this.#stopQueueReads();
    };
  }

  async readQueue(): Promise<void> {
    if (this.queueMissing || this.#reading) return;
    this.#reading = true;
    try {
      this.queue = await this.api['jobs.queue']({});
      this.queueReadAt = Date.now();
      this.queueError = null;
    } catch (err) {
      if (err instanceof ApiError && err.code === 'not_found') {
        this.queueMissing = true;
        this.queue = null;
        this.#stopQueueReads();
      } else this.queueError = err instanceof Error ? err.message : String(err);
    } finally {
      this.#reading = false;
    }
  }

  #readQueueSoon(): void {
    if (this.#watchers === 0 || this.queueMissing || this.#soon) return;
    this.#soon = setTimeout(() => {
      this.#soon = null;
      void this.readQueue();
    }, QUEUE_THROTTLE_MS);
  }

  #stopQueueReads(): void {
    if (this.#poll) clearInterval(this.#poll);
    if (this.#soon) clearTimeout(this.#soon);
    this.#poll = this.#soon = null;
  }

  get(jobId: string): Job | undefined {
    return this.jobs.find((j) => j.id === jobId);
  }

  /**
   * Calls `fn` with every update of `jobId` (at once, if it is known) until the job finishes;
   * returns the function that stops early.
   */
  track(jobId: string, fn: (job: Job) => void): () => void {
    const known = this.get(jobId);
    if (known) {
      fn(known);
      if (isFinished(known)) return () => {};
    }
    let set = this.#trackers.get(jobId);
    if (!set) this.#trackers.set(jobId, (set = new Set()));
    set.add(fn);
    return () => this.#untrack(jobId, fn);
  }

  #untrack(jobId: string, fn: (job: Job) => void): void {
    const set = this.#trackers.get(jobId);
    set?.delete(fn);
    if (set && !set.size) this.#trackers.delete(jobId);
  }

  #upsert(job: Job): void {
    const i = this.jobs.findIndex((j) => j.id === job.id);
    if (i === -1) this.jobs = [job, ...this.jobs].slice(0, 100);
    else this.jobs[i] = job;
    for (const fn of [...(this.#trackers.get(job.id) ?? [])]) {
      fn(job);
      if (isFinished(job)) this.#untrack(job.id, fn);
    }
  }
}

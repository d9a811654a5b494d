/**
 * Background jobs (train, evaluate, generate, export, download), kept current from `job.updated`.
 * Services follow their own job with `track(jobId, fn)`; it also replays an update that arrived
 * before the call that created the job returned (a fast job can finish first).
 */
import type { ApiClient, Job } from '../../src-main/api/contract.ts';
import type { EventHub } from './events.ts';
import type { Notifier } from './notifier.svelte.ts';

export const ACTIVE = new Set<Job['status']>(['queued', 'running']);
export const isFinished = (j: Job) => !ACTIVE.has(j.status);

export class JobsService {
  jobs = $state<Job[]>([]);
  active = $derived(this.jobs.filter((j) => ACTIVE.has(j.status)));
  readonly #trackers = new Map<string, Set<(j: Job) => void>>();

  constructor(
    private readonly api: ApiClient,
    hub: EventHub,
    private readonly notify: Notifier,
  ) {
    hub.on('job.updated', (job) => this.#upsert(job));
  }

  async refresh(): Promise<void> {
    const jobs = await this.notify.guard('List jobs', () => this.api['jobs.list']({}));
    if (jobs) for (const j of jobs) this.#upsert(j);
  }

  async cancel(jobId: string): Promise<void> {
    const r = await this.notify.guard('Cancel job', () => this.api['jobs.cancel']({ jobId }));
    if (r && !r.cancelled) this.notify.info('The job had already finished.');
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

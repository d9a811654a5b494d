/**
 * The job queue, as the service sees it (issue 29). Two implementations:
 *
 *   | mode     | class                      | where jobs run                         | job records            |
 *   | -------- | -------------------------- | -------------------------------------- | ---------------------- |
 *   | embedded | JobRunner (jobs.ts)        | this process's one engine, lane by lane | memory + jobs.json     |
 *   | redis    | RedisJobQueue (redisQueue.ts) | `singlora worker`s, queue by capability | BullMQ's job state     |
 *
 * Both take jobs as data (jobData.ts) and run them through one handler registry (jobHandlers.ts).
 * Reads may answer at once (embedded) or after a Redis round trip: callers await them.
 */
import type { Job, QueueStatus } from '../api/contract.ts';
import type { JobData } from './jobData.ts';

export type Awaitable<T> = T | Promise<T>;

export interface JobFilter {
  projectId?: string;
  runId?: string;
  kind?: Job['kind'];
}

export interface JobQueue {
  readonly mode: QueueStatus['mode'];
  /** Records the job (jobs.json, or Redis) and queues it; throws, saying why, when it cannot be recorded. */
  submitJob(data: JobData): Promise<Job>;
  list(): Awaitable<Job[]>;
  get(jobId: string): Awaitable<Job | undefined>;
  /** Queued or running jobs matching the filter. */
  active(filter?: JobFilter): Awaitable<Job[]>;
  /**
   * A queued job is withdrawn at once, a running one is signalled wherever it runs ('pause' pauses
   * training). False when the job had already finished; undefined when there is no such job.
   */
  cancel(jobId: string, reason?: 'cancel' | 'pause'): Awaitable<boolean | undefined>;
  /** Waits for one job to finish and returns it. */
  wait(jobId: string): Promise<Job>;
  queueStatus(): Awaitable<QueueStatus>;
  close(): Promise<void>;
}

/** Whether a job matches a filter (queued or running is checked by the caller). */
export function matches(j: Job, filter: JobFilter): boolean {
  return (
    (filter.projectId === undefined || j.projectId === filter.projectId) &&
    (filter.runId === undefined || j.runId === filter.runId) &&
    (filter.kind === undefined || j.kind === filter.kind)
  );
}

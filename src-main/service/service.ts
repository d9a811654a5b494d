/**
 * The service: every method of the contract (api/contract.ts), one module per namespace
 * (`methods/*.ts`) over a small shared context (context.ts: projects on disk, jobs, the engine
 * process, events, the path policy, the per-project lock). The Electron main process, the
 * headless server and the CLI all call it; it never loads the ML engine itself.
 *
 *   call(method, params)   validate params (ApiError 'invalid_params' naming fields) -> handler ->
 *                          check the result against the contract -> result   (errors.ts)
 *   on(listener)           the contract's events: job.updated, train.event, generation.*,
 *                          evaluation.progress, engine.status
 *
 * File URLs are `/files/<projectId>/<path in the project>`: the server adds its token, the
 * Electron shell maps them to its own protocol (both through gateway/files.ts).
 */
import { mkdir, stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { ApiError, type ApiHandlers, type EventData, type EventName } from '../api/contract.ts';
import type { AdapterInspection } from '../engine/adapters/exportAdapter.ts';
import { defaultModelsDir } from '../engine/paths.ts';
import { defaultBase, nativeResolutionOf, type ServiceContext, type ServiceOptions } from './context.ts';
import { acquireLock, jobsFileOf, lockOwner, projectsDirOf, resolveDataDir } from './dataDir.ts';
import { EngineHost } from './engineHost.ts';
import { callHandler } from './errors.ts';
import { cancelQueuedJob, runJob } from './jobHandlers.ts';
import type { JobData } from './jobData.ts';
import type { JobQueue } from './jobQueue.ts';
import { JobRunner, type JobContext, type JobOutcome } from './jobs.ts';
import { adaptersHandlers } from './methods/adapters.ts';
import { desktopHandlers } from './methods/desktop.ts';
import { evaluationHandlers } from './methods/evaluation.ts';
import { generationHandlers } from './methods/generation.ts';
import { jobsHandlers } from './methods/jobs.ts';
import { modelsHandlers } from './methods/models.ts';
import { photosHandlers } from './methods/photos.ts';
import { projectsHandlers } from './methods/projects.ts';
import { systemHandlers } from './methods/system.ts';
import { trainingHandlers } from './methods/training.ts';
import { MAX_PHOTO_BYTES, PathPolicy } from './pathPolicy.ts';
import { ProjectStore } from './projects.ts';
import { recoverRuns } from './runs.ts';
import { settingsHandlers } from './methods/settings.ts';
import { safeResolve } from './safePath.ts';

export type { ServiceOptions } from './context.ts';
export { toApiError } from './errors.ts';
export { MAX_PHOTO_BYTES } from './pathPolicy.ts';

export type ServiceListener = (event: EventName, data: unknown) => void;

export class Service {
  readonly dataDir: string;
  readonly projectsDir: string;
  readonly modelsDir: string;
  readonly store: ProjectStore;
  readonly engine: EngineHost;
  readonly handlers: ApiHandlers;
  readonly #listeners = new Set<ServiceListener>();
  readonly #log: (line: string) => void;
  readonly #ctx: ServiceContext;
  #jobs: JobRunner | null = null;
  #queue!: JobQueue;
  #releaseLock: (() => Promise<void>) | null = null;
  #closed = false;

  private constructor(opts: ServiceOptions) {
    this.dataDir = resolveDataDir(opts.dataDir);
    this.projectsDir = projectsDirOf(this.dataDir);
    this.modelsDir = resolve(opts.modelsDir ?? defaultModelsDir());
    this.#log = opts.log ?? ((line) => process.stderr.write(`${line}\n`));
    const resolutions = new Map<string, Promise<number | null>>();
    const nativeResolution = (baseModel: string | null) =>
      nativeResolutionOf(resolutions, baseModel ?? defaultBase({ opts, modelsDir: this.modelsDir }));
    this.store = new ProjectStore(this.projectsDir, { nativeResolution, modelsDir: this.modelsDir });
    this.engine = new EngineHost({
      spawn: opts.spawnEngine,
      env: opts.engineEnv,
      backend: opts.backend,
      onStatus: (s) => this.#emit('engine.status', s),
      log: (text) => this.#log(text.replace(/\n$/, '').replace(/^/gm, 'engine: ')),
    });
    const self = this;
    this.#ctx = {
      opts,
      dataDir: this.dataDir,
      projectsDir: this.projectsDir,
      modelsDir: this.modelsDir,
      store: this.store,
      engine: this.engine,
      get jobs() {
        return self.#queue;
      },
      paths: new PathPolicy(opts.hostPaths ?? 'allow', opts.maxPhotoBytes ?? MAX_PHOTO_BYTES, this.modelsDir),
      emit: (event, data) => this.#emit(event, data),
      log: (line) => this.#log(line),
      inspections: new Map<string, { key: string; info: AdapterInspection }>(),
      nativeResolution,
    };
    const c = this.#ctx;
    this.handlers = {
      ...systemHandlers(c),
      ...settingsHandlers(c),
      ...projectsHandlers(c),
      ...photosHandlers(c),
      ...trainingHandlers(c),
      ...evaluationHandlers(c),
      ...generationHandlers(c),
      ...adaptersHandlers(c),
      ...modelsHandlers(c),
      ...jobsHandlers(c),
      ...desktopHandlers(),
    };
  }

  /**
   * Opens the data folder: lock, job list, and (when exclusive) the recovery of interrupted work.
   * With a Redis queue (`opts.queue`): no lock file and no jobs.json (several servers and workers
   * share the folder), the project locks in Redis, and no recovery here (a dead worker's job is
   * handed to another worker, which resumes it).
   */
  static async open(opts: ServiceOptions = {}): Promise<Service> {
    const s = new Service(opts);
    await mkdir(s.projectsDir, { recursive: true });
    if (opts.queue) {
      await refuseEmbeddedOwner(s.dataDir);
      await s.#openRedisQueue(opts.queue);
      return s;
    }
    const exclusive = opts.exclusive ?? true;
    if (exclusive) s.#releaseLock = await acquireLock(s.dataDir);
    try {
      const c = s.#ctx;
      const { runner, interrupted } = await JobRunner.open({
        file: exclusive ? jobsFileOf(s.dataDir) : null,
        onUpdate: (j) => s.#emit('job.updated', j),
        log: s.#log,
        // A job's work runs outside any lock its submitter held: it takes locks anew.
        handlers: {
          run: (data, ctx) => s.runJob(data, ctx),
          cancelQueued: (data) => cancelQueuedJob(c, data),
        },
      });
      s.#jobs = runner;
      s.#queue = runner;
      if (exclusive) {
        for (const j of interrupted)
          s.#log(`jobs: ${j.id} (${j.kind}${j.projectId ? ` in ${j.projectId}` : ''}): ${j.error}`);
        await recoverRuns(s.store, s.#log);
      }
    } catch (err) {
      await s.#releaseLock?.();
      throw err;
    }
    return s;
  }

  async #openRedisQueue(url: string): Promise<void> {
    const { RedisJobQueue } = await import('./redisQueue.ts');
    const queue = await RedisJobQueue.open({
      url,
      onUpdate: (j) => this.#emit('job.updated', j),
      onEvent: (event, data) => this.#emit(event, data as EventData<typeof event>),
      cancelQueued: (data) => cancelQueuedJob(this.#ctx, data),
      log: this.#log,
    });
    this.#queue = queue;
    this.store.shareLocks((id, fn) => queue.lock(`project:${id}`).with(fn));
  }

  /** The embedded job runner (tests submit to it directly); a service on a Redis queue has none. */
  get jobs(): JobRunner {
    if (!this.#jobs) throw new Error('this service sends its jobs to a Redis queue: use service.queue');
    return this.#jobs;
  }

  /** Where jobs go: the embedded runner, or the Redis queue. */
  get queue(): JobQueue {
    return this.#queue;
  }

  /** Runs one job's work here (embedded runner, or `singlora worker`), outside any project lock. */
  runJob(data: JobData, ctx: JobContext): Promise<JobOutcome> {
    return this.store.unlocked(() => runJob(this.#ctx, data, ctx));
  }

  on(listener: ServiceListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The transport-neutral entry: validates, runs the handler, checks the result. Throws ApiError only. */
  call(method: string, params: unknown): Promise<unknown> {
    return callHandler(this.handlers, method, params);
  }

  /** The file behind `/files/<projectId>/<rel>` (path-checked); not_found when absent. */
  async resolveFile(projectId: string, rel: string): Promise<string> {
    if (!(await this.store.exists(projectId))) throw new ApiError('not_found', `no project '${projectId}'`);
    const path = await safeResolve(this.store.dir(projectId), rel, 'path');
    const info = await stat(path).catch(() => null);
    if (!info?.isFile()) throw new ApiError('not_found', `project '${projectId}' has no file '${rel}'`);
    return path;
  }

  /**
   * A folder an export wrote (`adapters/<name>`, a merged diffusers pipeline), for a download as
   * one archive; not_found for anything else.
   */
  async resolveExportFolder(projectId: string, rel: string): Promise<string> {
    if (!(await this.store.exists(projectId))) throw new ApiError('not_found', `no project '${projectId}'`);
    if (!/^adapters\/[^/]+$/.test(rel))
      throw new ApiError('not_found', `project '${projectId}' has no export folder '${rel}'`);
    const path = await safeResolve(this.store.dir(projectId), rel, 'path');
    const info = await stat(path).catch(() => null);
    if (!info?.isDirectory()) throw new ApiError('not_found', `project '${projectId}' has no export folder '${rel}'`);
    return path;
  }

  /** Pauses running training (checkpoint kept), cancels queued jobs, stops the engine, releases the lock. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closing = this.#queue?.close();
    await this.engine.close();
    await closing;
    await this.#releaseLock?.();
  }

  #emit<E extends EventName>(event: E, data: EventData<E>): void {
    for (const l of this.#listeners) {
      try {
        l(event, data);
      } catch (err) {
        this.#log(`service: an event listener failed on ${event}: ${(err as Error).message}`);
      }
    }
  }
}

/**
 * A folder served on a Redis queue has no single owner, but it must not also belong to a service
 * that runs jobs itself (its jobs would ignore the queue's locks): refused, naming that service.
 */
export async function refuseEmbeddedOwner(dataDir: string): Promise<void> {
  const owner = await lockOwner(dataDir);
  if (owner)
    throw new Error(
      `a SingLoRA Studio service without a queue (pid ${owner.pid}, started ${owner.startedAt}) is using ${dataDir}; stop it, or start it with --queue too`,
    );
}

/** Opens a service (see ServiceOptions). */
export function openService(opts: ServiceOptions = {}): Promise<Service> {
  return Service.open(opts);
}

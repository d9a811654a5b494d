/**
 * The service: every method of the contract (api/contract.ts), on top of the projects on disk
 * (projects.ts), the job runner (jobs.ts) and the engine process (engineHost.ts). The Electron
 * main process, the headless server and the CLI all call it; it never loads the ML engine itself.
 *
 *   call(method, params)   validate params (ApiError 'invalid_params' naming fields) -> handler ->
 *                          check the result against the contract -> result
 *   on(listener)           the contract's events: job.updated, train.event, generation.*,
 *                          evaluation.progress, engine.status
 *
 * File URLs are `/files/<projectId>/<path in the project>`: the server adds its token, the
 * Electron shell maps them to its own protocol.
 */
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, readFile, rename, stat } from 'node:fs/promises';
import { basename, extname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import {
  api,
  ApiError,
  isMethod,
  parseParams,
  projectFileUrl,
  type AdapterInfo,
  type ApiHandlers,
  type EventData,
  type EventName,
  type GeneratedImageInfo,
  type Job,
  type ParsedParams,
  type Project,
  type RunEvent,
  type RunStatusInfo,
} from '../api/contract.ts';
import { imageSidecarSchema, trainSettingsSchema, type RunManifest, type TrainEvent, type TrainSettings } from '../api/schemas.ts';
import { EVAL_MODELS, listModels, locateDino, modelFilePath, type EvalModelSpec } from '../engine/eval/modelRegistry.ts';
import { quickEvalPrompts } from '../engine/eval/prompts.ts';
import { decodeImage, encodeImage, fitToSize } from '../engine/image/sharp.ts';
import { download } from '../engine/io/download.ts';
import { nativeResolution, openBaseModel } from '../engine/io/modelFiles.ts';
import { appVersion, defaultModelsDir } from '../engine/paths.ts';
import { writeRunManifest } from '../engine/train/runFiles.ts';
import type { AdapterInspection } from '../engine/adapters/exportAdapter.ts';
import { acquireLock, jobsFileOf, lockOwner, projectsDirOf, resolveDataDir } from './dataDir.ts';
import { EngineExitedError, EngineHost, EngineRequestError, EngineStartError, type SpawnEngine } from './engineHost.ts';
import { JobRunner, type JobContext, type JobOutcome } from './jobs.ts';
import { ProjectStore, type PhotoSource } from './projects.ts';
import { markRun, newRunId, pickCheckpoint, readRun, recoverRuns, settleInterruptedRun, writeQueuedRun } from './runs.ts';
import { checkRelative, isInside, safeFileName, safeResolve, uniqueName } from './safePath.ts';

export interface ServiceOptions {
  /** Default: SINGLORA_DATA_DIR, else `<repo>/.data`. */
  dataDir?: string;
  /** Evaluation models and the demo base model (`<modelsDir>/tiny-sd`). Default: paths.ts. */
  modelsDir?: string;
  /** The base model for projects that have none (`serve --base`); default: the demo model when present. */
  defaultBaseModel?: string;
  /** A DINO ONNX file to use instead of `<modelsDir>/dino/model.onnx`. */
  dinoModel?: string;
  /** Sampling steps of evaluation images (default: the engine's, 25). */
  evaluationSteps?: number;
  /** Forces the engine's tensor backend (SINGLORA_BACKEND of the engine process). */
  backend?: string;
  spawnEngine?: SpawnEngine;
  engineEnv?: NodeJS.ProcessEnv;
  /**
   * true (default): this service owns the data folder: it takes the lock, keeps jobs.json and
   * settles interrupted jobs and runs on startup. false: a reader beside it (the `projects` CLI).
   */
  exclusive?: boolean;
  /**
   * Whether clients may name files on this machine outside the projects (photos.add `paths`,
   * adapters.import, adapter `file` refs that are absolute). 'deny' for a server open to the network.
   */
  hostPaths?: 'allow' | 'deny';
  /** Per-photo upload limit after base64 decoding (default 25 MiB). */
  maxPhotoBytes?: number;
  /** The downloadable evaluation models (default: the registry's). */
  evalModels?: readonly EvalModelSpec[];
  log?: (line: string) => void;
}

export type ServiceListener = (event: EventName, data: unknown) => void;

export const MAX_PHOTO_BYTES = 25 * 2 ** 20;
const MIB = 2 ** 20;

export class Service {
  readonly dataDir: string;
  readonly projectsDir: string;
  readonly modelsDir: string;
  readonly store: ProjectStore;
  readonly engine: EngineHost;
  readonly handlers: ApiHandlers;
  readonly #listeners = new Set<ServiceListener>();
  readonly #log: (line: string) => void;
  readonly #inspections = new Map<string, { key: string; info: AdapterInspection }>();
  readonly #serialByProject = new Map<string, Promise<unknown>>();
  readonly #nativeResolutions = new Map<string, Promise<number | null>>();
  #jobs!: JobRunner;
  #releaseLock: (() => Promise<void>) | null = null;
  #closed = false;

  private constructor(private readonly opts: ServiceOptions) {
    this.dataDir = resolveDataDir(opts.dataDir);
    this.projectsDir = projectsDirOf(this.dataDir);
    this.modelsDir = resolve(opts.modelsDir ?? defaultModelsDir());
    this.store = new ProjectStore(this.projectsDir, { nativeResolution: (baseModel) => this.#nativeResolution(baseModel) });
    this.#log = opts.log ?? ((line) => process.stderr.write(`${line}\n`));
    this.engine = new EngineHost({
      spawn: opts.spawnEngine,
      env: opts.engineEnv,
      backend: opts.backend,
      onStatus: (s) => this.#emit('engine.status', s),
      log: (text) => this.#log(text.replace(/\n$/, '').replace(/^/gm, 'engine: ')),
    });
    this.handlers = this.#makeHandlers();
  }

  /** Opens the data folder: lock, job list, and (when exclusive) the recovery of interrupted work. */
  static async open(opts: ServiceOptions = {}): Promise<Service> {
    const s = new Service(opts);
    await mkdir(s.projectsDir, { recursive: true });
    const exclusive = opts.exclusive ?? true;
    if (exclusive) s.#releaseLock = await acquireLock(s.dataDir);
    try {
      const { runner, interrupted } = await JobRunner.open({ file: exclusive ? jobsFileOf(s.dataDir) : null, onUpdate: (j) => s.#emit('job.updated', j), log: s.#log });
      s.#jobs = runner;
      if (exclusive) {
        for (const j of interrupted) s.#log(`jobs: ${j.id} (${j.kind}${j.projectId ? ` in ${j.projectId}` : ''}): ${j.error}`);
        await recoverRuns(s.store, s.#log);
      }
    } catch (err) {
      await s.#releaseLock?.();
      throw err;
    }
    return s;
  }

  get jobs(): JobRunner {
    return this.#jobs;
  }

  on(listener: ServiceListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The transport-neutral entry: validates, runs the handler, checks the result. Throws ApiError only. */
  async call(method: string, params: unknown): Promise<unknown> {
    if (!isMethod(method)) throw new ApiError('not_found', `unknown method '${method}'`);
    const parsed = parseParams(method, params);
    let result: unknown;
    try {
      result = await (this.handlers[method] as (p: unknown) => Promise<unknown>)(parsed);
    } catch (err) {
      throw toApiError(err);
    }
    const r = api[method].result.safeParse(result);
    if (!r.success) {
      const fields = r.error.issues.map((i) => ({ field: i.path.join('.') || '(result)', message: i.message }));
      throw new ApiError('internal', `${method}: the service's result does not match the contract (${fields.map((f) => `${f.field}: ${f.message}`).join('; ')})`, fields);
    }
    return r.data;
  }

  /** `/files/<projectId>/<rel>`: the URL clients use for a project file. */
  fileUrl(projectId: string, rel: string): string {
    return projectFileUrl(projectId, rel);
  }

  /** The file behind `/files/<projectId>/<rel>` (path-checked); not_found when absent. */
  async resolveFile(projectId: string, rel: string): Promise<string> {
    if (!(await this.store.exists(projectId))) throw new ApiError('not_found', `no project '${projectId}'`);
    const path = await safeResolve(this.store.dir(projectId), rel, 'path');
    const info = await stat(path).catch(() => null);
    if (!info?.isFile()) throw new ApiError('not_found', `project '${projectId}' has no file '${rel}'`);
    return path;
  }

  /** Pauses running training (checkpoint kept), cancels queued jobs, stops the engine, releases the lock. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const closing = this.#jobs?.close();
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

  // -----------------------------------------------------------------------------------------------
  // Helpers

  #defaultBase(): string | null {
    if (this.opts.defaultBaseModel) return resolve(this.opts.defaultBaseModel);
    const demo = join(this.modelsDir, 'tiny-sd');
    return existsSync(demo) ? demo : null;
  }

  /** The base model a project trains and generates with. */
  #baseFor(project: Project): string {
    const base = project.baseModel ?? this.#defaultBase();
    if (!base) {
      throw new ApiError(
        'conflict',
        `project '${project.id}' has no base model and there is no default: choose one on the Models screen (models.setBase) or start the server with --base <diffusers folder or .safetensors>; the demo model goes in ${join(this.modelsDir, 'tiny-sd')}`,
      );
    }
    return base;
  }

  /**
   * The native size of a base model (null: the default one), read from its configs without its
   * weights (the engine's `nativeResolution`).
   * Cached per path; null when there is no model or it cannot be opened (not cached: it may
   * appear later).
   */
  #nativeResolution(baseModel: string | null): Promise<number | null> {
    const path = baseModel ?? this.#defaultBase();
    if (!path) return Promise.resolve(null);
    let r = this.#nativeResolutions.get(path);
    if (!r) {
      r = (async () => {
        const m = await openBaseModel(path);
        await m.close();
        return nativeResolution({ unet: m.unet.config, vae: m.vae.config });
      })().catch(() => {
        this.#nativeResolutions.delete(path);
        return null;
      });
      this.#nativeResolutions.set(path, r);
    }
    return r;
  }

  /** Opens a base model's files (no weights are read) to check it; invalid_params naming `field` otherwise. */
  async #checkBase(path: string, field: string): Promise<{ name: string; format: string }> {
    try {
      const m = await openBaseModel(resolve(path));
      await m.close();
      return { name: m.name, format: m.format };
    } catch (err) {
      throw new ApiError('invalid_params', `${field}: ${(err as Error).message}`, [{ field, message: (err as Error).message }]);
    }
  }

  /** A path on this machine named by a client: absolute, and allowed by `hostPaths`. */
  #hostPath(path: string, field: string): string {
    if (path.includes('\0')) throw new ApiError('invalid_params', `${field}: contains a NUL byte`, [{ field, message: 'contains a NUL byte' }]);
    if ((this.opts.hostPaths ?? 'allow') === 'deny') {
      throw new ApiError('invalid_params', `${field}: this server does not read files outside its projects (it is open to the network); upload the file instead`, [{ field, message: 'paths on the server are not allowed' }]);
    }
    if (!isAbsolute(path)) throw new ApiError('invalid_params', `${field}: '${path}' must be an absolute path on the engine machine`, [{ field, message: 'not an absolute path' }]);
    return resolve(path);
  }

  /** A file a client names: inside the project when relative, a host path when absolute. */
  async #clientFile(projectId: string, file: string, field: string): Promise<{ path: string; rel: string | null }> {
    if (isAbsolute(file)) return { path: this.#hostPath(file, field), rel: null };
    const path = await safeResolve(this.store.dir(projectId), file, field);
    return { path, rel: checkRelative(file, field).join('/') };
  }

  /**
   * Runs `fn` after the previous check-then-submit of the same project, so two concurrent
   * `training.start` calls cannot both pass the "already training" check.
   */
  #serial<T>(projectId: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#serialByProject.get(projectId) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => {});
    this.#serialByProject.set(projectId, tail);
    void tail.then(() => {
      if (this.#serialByProject.get(projectId) === tail) this.#serialByProject.delete(projectId);
    });
    return next;
  }

  #assertIdle(projectId: string, runId: string, what: string): void {
    const busy = this.#jobs.active({ projectId, runId });
    if (busy.length) throw new ApiError('conflict', `cannot ${what}: run '${runId}' has a ${busy[0].kind} job ${busy[0].status} (${busy[0].id}); wait for it or cancel it`);
  }

  #assertNoTraining(projectId: string): void {
    const t = this.#jobs.active({ projectId, kind: 'train' });
    if (t.length) throw new ApiError('conflict', `project '${projectId}' is already training (run ${t[0].runId}, job ${t[0].id} ${t[0].status}); cancel it or wait for it to finish`);
  }

  async #usablePhotos(projectId: string): Promise<string[]> {
    const photos = await this.store.usablePhotoFiles(projectId);
    if (!photos.length) throw new ApiError('conflict', `project '${projectId}' has no usable photos; add 3-20 photos of the subject first`);
    return photos;
  }

  async #adapterPath(projectId: string, ref: ParsedParams<'adapters.export'>['adapter'], field: string): Promise<{ path: string; runBase: string | null; label: string }> {
    if ('runId' in ref) {
      const m = await readRun(this.store, projectId, ref.runId);
      const c = pickCheckpoint(m, ref.step, `${field}.step`);
      const path = join(this.store.runDir(projectId, ref.runId), c.adapter);
      if (!existsSync(path)) throw new ApiError('not_found', `${field}: the checkpoint file ${path} is missing`);
      return { path, runBase: m.baseModel.path && existsSync(m.baseModel.path) ? m.baseModel.path : null, label: `${ref.runId}-step${c.step}` };
    }
    const { path } = await this.#clientFile(projectId, ref.file, `${field}.file`);
    const info = await stat(path).catch(() => null);
    if (!info?.isFile()) throw new ApiError('not_found', `${field}.file: ${ref.file} does not exist`);
    return { path, runBase: null, label: basename(path).replace(/\.safetensors$/i, '') };
  }

  /** Inspects adapter files in the engine, cached by path, size and modification time. */
  async #inspect(paths: string[]): Promise<Array<{ ok: true; info: AdapterInspection } | { ok: false; error: string }>> {
    const keys = await Promise.all(paths.map(async (p) => {
      const s = await stat(p).catch(() => null);
      return s ? `${s.size}:${s.mtimeMs}` : 'missing';
    }));
    const todo = paths.filter((p, i) => this.#inspections.get(p)?.key !== keys[i]);
    const fresh = todo.length ? await this.engine.request('inspect', { files: todo }) : [];
    const byPath = new Map(todo.map((p, i) => [p, fresh[i]]));
    return paths.map((p, i) => {
      const f = byPath.get(p);
      if (f?.ok) this.#inspections.set(p, { key: keys[i], info: f.info });
      if (f) return f;
      return { ok: true as const, info: this.#inspections.get(p)!.info };
    });
  }

  #adapterInfo(info: AdapterInspection, file: string): AdapterInfo {
    return { file, method: info.method, rank: info.rank, alpha: info.alpha, targets: info.targets, parameters: info.parameters, bytes: info.bytes, format: info.format, metadata: info.metadata };
  }

  #imageInfo(projectId: string, sidecar: GeneratedImageInfo | Omit<GeneratedImageInfo, 'url'>): GeneratedImageInfo {
    return { ...sidecar, url: this.fileUrl(projectId, `images/${sidecar.file}`) };
  }

  /** A trainer event as clients get it: a sample gets its URL (its file is relative to the run). */
  #runEvent(projectId: string, runId: string, event: TrainEvent): RunEvent {
    return event.event === 'sample' ? { ...event, url: this.fileUrl(projectId, `runs/${runId}/${event.file}`) } : event;
  }

  // -----------------------------------------------------------------------------------------------
  // Jobs

  #submitTraining(o: { projectId: string; runId: string; base: string; photos: string[]; settings: TrainSettings; resume: boolean }): Job {
    const runDir = this.store.runDir(o.projectId, o.runId);
    return this.#jobs.submit({
      kind: 'train',
      projectId: o.projectId,
      runId: o.runId,
      onCancelQueued: async () => {
        if (!o.resume) await markRun(runDir, 'cancelled', 'cancelled before training started', ['queued']);
      },
      run: async (ctx) => this.#runTraining(ctx, { ...o, runDir }),
    });
  }

  async #runTraining(ctx: JobContext, o: { projectId: string; runId: string; runDir: string; base: string; photos: string[]; settings: TrainSettings; resume: boolean }): Promise<JobOutcome> {
    let total = o.settings.steps;
    let done = 0;
    try {
      const r = await this.engine.request(
        'train',
        { base: o.base, photos: o.photos, runDir: o.runDir, settings: o.settings, resume: o.resume },
        {
          signal: ctx.signal,
          onProgress: (event) => {
            this.#emit('train.event', { jobId: ctx.jobId, projectId: o.projectId, runId: o.runId, event: this.#runEvent(o.projectId, o.runId, event) });
            if (event.event === 'step') {
              done = event.step;
              total = event.steps;
              ctx.progress({ done, total, label: `step ${event.step}/${event.steps}, loss ${event.smoothed.toFixed(4)}` });
            } else if (event.event === 'prepare') {
              ctx.progress({ done, total, label: `preparing: ${event.stage}${event.detail ? ` (${event.detail})` : ''}` });
            } else if (event.event === 'checkpoint') {
              ctx.progress({ done, total, label: `checkpoint at step ${event.step}` });
            }
          },
        },
      );
      if (r.status === 'failed') return { status: 'failed', error: r.error ?? 'training failed' };
      if (r.status === 'paused' || r.status === 'cancelled') return { status: 'cancelled', label: `${r.status} at step ${r.step}` };
      return { status: 'done', label: `completed ${r.step} steps` };
    } catch (err) {
      if (err instanceof EngineExitedError) return { status: 'failed', error: await settleInterruptedRun(o.runDir, err.message) };
      // The trainer records its own failures in run.json; a new run that never reached the
      // trainer (cancelled while the engine started, or the engine could not start) is settled here.
      const cancelled = ctx.signal.aborted;
      await markRun(o.runDir, cancelled ? 'cancelled' : 'failed', cancelled ? 'cancelled before training started' : (err as Error).message, ['queued']).catch(() => null);
      throw err;
    }
  }

  // -----------------------------------------------------------------------------------------------
  // Handlers: one per contract method (a missing one is a compile error).

  #makeHandlers(): ApiHandlers {
    return {
      'system.doctor': async () => this.engine.request('doctor', {}),

      'system.info': async () => {
        const base = this.#defaultBase();
        return { version: appVersion(), projectsDir: this.projectsDir, modelsDir: this.modelsDir, defaultBaseModel: base ?? '', demoModel: existsSync(join(this.modelsDir, 'tiny-sd')) };
      },

      'projects.list': async () => this.store.list(this.#log),

      'projects.create': async (p) => this.store.create(p),

      'projects.open': async (p) => this.store.open(p.projectId),

      'projects.update': async (p) => {
        const { projectId, ...patch } = p;
        if (patch.baseModel) patch.baseModel = resolve(patch.baseModel);
        return this.store.update(projectId, patch, (path) => this.#checkBase(path, 'baseModel'));
      },

      'projects.delete': async (p) =>
        this.#serial(p.projectId, async () => {
          if (!(await this.store.exists(p.projectId))) return { deleted: false };
          const busy = this.#jobs.active({ projectId: p.projectId });
          if (busy.length) throw new ApiError('conflict', `project '${p.projectId}' has a ${busy[0].kind} job ${busy[0].status} (${busy[0].id}); cancel it before deleting the project`);
          if (!(this.opts.exclusive ?? true)) {
            const owner = await lockOwner(this.dataDir);
            if (owner) throw new ApiError('conflict', `a SingLoRA Studio service (pid ${owner.pid}) is using ${this.dataDir}; delete the project there (app or server), or stop it first`);
          }
          return { deleted: await this.store.delete(p.projectId) };
        }),

      'photos.add': async (p) => {
        const sources: PhotoSource[] = [];
        for (const [i, path] of (p.paths ?? []).entries()) sources.push({ kind: 'path', path: this.#hostPath(path, `paths.${i}`) });
        const limit = this.opts.maxPhotoBytes ?? MAX_PHOTO_BYTES;
        for (const [i, f] of (p.files ?? []).entries()) {
          const b64 = f.dataBase64.replace(/\s+/g, '');
          if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 === 1) throw new ApiError('invalid_params', `files.${i}.dataBase64: ${f.name} is not base64`, [{ field: `files.${i}.dataBase64`, message: 'not base64' }]);
          const size = Math.floor((b64.length * 3) / 4) - (b64.endsWith('==') ? 2 : b64.endsWith('=') ? 1 : 0);
          if (size > limit) throw new ApiError('too_large', `files.${i}: ${f.name} is ${(size / MIB).toFixed(1)} MiB; the limit is ${(limit / MIB).toFixed(0)} MiB per photo`, [{ field: `files.${i}.dataBase64`, message: 'too large' }]);
          if (size === 0) throw new ApiError('invalid_params', `files.${i}.dataBase64: ${f.name} is empty`, [{ field: `files.${i}.dataBase64`, message: 'empty' }]);
          sources.push({ kind: 'bytes', name: f.name, data: Buffer.from(b64, 'base64') });
        }
        if (!sources.length) throw new ApiError('invalid_params', 'photos.add: give photos in paths or files', [{ field: 'files', message: 'no photos given' }]);
        return this.store.addPhotos(p.projectId, sources);
      },

      'photos.list': async (p) => this.store.photos(p.projectId),

      'photos.remove': async (p) => ({ removed: await this.store.removePhoto(p.projectId, p.photoId) }),

      'photos.cropPreview': async (p) => {
        const path = await this.store.photoPath(p.projectId, p.photoId);
        let img;
        try {
          img = await decodeImage(path, { maxPixels: 64_000_000 });
        } catch (err) {
          throw new ApiError('conflict', `photo '${p.photoId}' cannot be decoded: ${(err as Error).message}`);
        }
        const fitted = await fitToSize(img, p.size, p.size, { crop: p.crop });
        return { pngBase64: (await encodeImage(fitted, 'png')).toString('base64') };
      },

      'training.start': async (p) =>
        this.#serial(p.projectId, async () => {
          const project = await this.store.open(p.projectId);
          this.#assertNoTraining(p.projectId);
          const merged = trainSettingsSchema.safeParse({ ...project.settings, ...p.settings });
          if (!merged.success) {
            const fields = merged.error.issues.map((i) => ({ field: `settings.${i.path.join('.')}`, message: i.message }));
            throw new ApiError('invalid_params', `training.start: ${fields.map((f) => `${f.field}: ${f.message}`).join('; ')}`, fields);
          }
          const base = this.#baseFor(project);
          // The settings the user last chose are the project's (the subject owns token and class word);
          // a new resolution re-checks the photos, so they are listed after saving.
          const saved = Object.keys(p.settings).length ? await this.store.update(p.projectId, { settings: p.settings }) : project;
          const settings = saved.settings;
          const photos = await this.#usablePhotos(p.projectId);
          const runId = newRunId();
          const runDir = this.store.runDir(p.projectId, runId);
          await writeQueuedRun(runDir, { id: runId, settings, base, photos });
          const job = this.#submitTraining({ projectId: p.projectId, runId, base, photos, settings, resume: false });
          return { jobId: job.id, runId };
        }),

      'training.cancel': async (p) => {
        const job = this.#jobs.get(p.jobId);
        if (!job) throw new ApiError('not_found', `no job '${p.jobId}'`);
        if (job.kind !== 'train') throw new ApiError('invalid_params', `jobId: job '${p.jobId}' is a ${job.kind} job, not training; use jobs.cancel`, [{ field: 'jobId', message: 'not a training job' }]);
        return { cancelled: this.#jobs.cancel(p.jobId, 'cancel') === true };
      },

      'training.resume': async (p) =>
        this.#serial(p.projectId, async () => {
          const project = await this.store.open(p.projectId);
          const m = await readRun(this.store, p.projectId, p.runId);
          this.#assertNoTraining(p.projectId);
          this.#assertIdle(p.projectId, p.runId, 'resume');
          if (m.status === 'completed') throw new ApiError('conflict', `run '${p.runId}' already completed ${m.step} steps`);
          if (m.status === 'running' || m.status === 'queued') throw new ApiError('conflict', `run '${p.runId}' is ${m.status}`);
          if (!m.checkpoints.length) throw new ApiError('conflict', `run '${p.runId}' has no checkpoint to resume from; start a new run`);
          const base = m.baseModel.path && existsSync(m.baseModel.path) ? m.baseModel.path : this.#baseFor(project);
          const photos = await this.#usablePhotos(p.projectId);
          const job = this.#submitTraining({ projectId: p.projectId, runId: p.runId, base, photos, settings: m.settings, resume: true });
          return { jobId: job.id, runId: p.runId };
        }),

      'training.runs': async (p) => {
        await this.store.open(p.projectId);
        const out = [];
        for (const runId of (await this.store.runIds(p.projectId)).reverse()) {
          try {
            const m = await readRun(this.store, p.projectId, runId);
            out.push({ id: m.id, createdAt: m.createdAt, updatedAt: m.updatedAt, status: m.status, step: m.step, error: m.error, steps: m.settings.steps, method: m.settings.method, best: m.evaluation?.chosen ?? m.evaluation?.best ?? null });
          } catch (err) {
            this.#log(`runs: skipped ${p.projectId}/${runId}: ${(err as Error).message}`);
          }
        }
        return out;
      },

      'training.status': async (p): Promise<RunStatusInfo> => {
        const m = await readRun(this.store, p.projectId, p.runId);
        return { ...m, samples: m.samples.map((s) => ({ ...s, url: this.fileUrl(p.projectId, `runs/${p.runId}/${s.file}`) })) };
      },

      'evaluation.start': async (p) =>
        this.#serial(p.projectId, async () => {
          const project = await this.store.open(p.projectId);
          const m = await readRun(this.store, p.projectId, p.runId);
          this.#assertIdle(p.projectId, p.runId, 'evaluate');
          if (!m.checkpoints.length) throw new ApiError('conflict', `run '${p.runId}' has no checkpoint to evaluate yet`);
          const photos = await this.#usablePhotos(p.projectId);
          let dinoModel: string;
          try {
            dinoModel = locateDino(this.modelsDir, this.opts.dinoModel);
          } catch (err) {
            throw new ApiError('not_found', `${(err as Error).message} (Models screen: download DINO)`);
          }
          const runDir = this.store.runDir(p.projectId, p.runId);
          // A quick check: one prompt per category, one image each (explicit prompts and counts win).
          const prompts = p.prompts ?? (p.quick ? quickEvalPrompts(project.subject.type, m.settings.triggerToken, m.settings.classWord) : undefined);
          const imagesPerPrompt = p.imagesPerPrompt ?? (p.quick ? 1 : undefined);
          const job = this.#jobs.submit({
            kind: 'evaluate',
            projectId: p.projectId,
            runId: p.runId,
            run: async (ctx) => {
              const ev = await this.engine.request(
                'evaluate',
                { runDir, photos, checkpoints: p.checkpoints, subjectType: project.subject.type, prompts, imagesPerPrompt, steps: this.opts.evaluationSteps, dinoModel, modelsDir: this.modelsDir },
                {
                  signal: ctx.signal,
                  onProgress: ({ done, total, label }) => {
                    this.#emit('evaluation.progress', { jobId: ctx.jobId, done, total, label });
                    ctx.progress({ done, total, label });
                  },
                },
              );
              return { label: ev.best !== null ? `best: step ${ev.best}` : 'evaluated' };
            },
          });
          return { jobId: job.id };
        }),

      'evaluation.get': async (p) => (await readRun(this.store, p.projectId, p.runId)).evaluation,

      'evaluation.choose': async (p) =>
        this.#serial(p.projectId, async () => {
          const m = await readRun(this.store, p.projectId, p.runId);
          this.#assertIdle(p.projectId, p.runId, 'choose a checkpoint');
          if (!m.evaluation) throw new ApiError('conflict', `run '${p.runId}' has not been evaluated yet; evaluate it before choosing a checkpoint`);
          if (!m.checkpoints.some((c) => c.step === p.step)) throw new ApiError('invalid_params', `step: run '${p.runId}' has no checkpoint at step ${p.step} (it has ${m.checkpoints.map((c) => c.step).join(', ')})`, [{ field: 'step', message: `no checkpoint at step ${p.step}` }]);
          const evaluation = { ...m.evaluation, chosen: p.step };
          await writeRunManifest(this.store.runDir(p.projectId, p.runId), { ...m, evaluation } satisfies RunManifest);
          return evaluation;
        }),

      'generation.start': async (p) => {
        const project = await this.store.open(p.projectId);
        const adapters: Array<{ path: string; strength: number }> = [];
        for (const [i, a] of p.adapters.entries()) adapters.push({ path: (await this.#adapterPath(p.projectId, a, `adapters.${i}`)).path, strength: a.strength });
        const base = this.#baseFor(project);
        const outDir = join(this.store.dir(p.projectId), 'images');
        const job = this.#jobs.submit({
          kind: 'generate',
          projectId: p.projectId,
          runId: null,
          run: async (ctx) => {
            const r = await this.engine.request(
              'generate',
              { base, settings: p.settings, adapters, outDir },
              {
                signal: ctx.signal,
                onProgress: (g) => {
                  if (g.type === 'step') {
                    const e = { jobId: ctx.jobId, image: g.image + 1, images: g.images, step: g.step, steps: g.steps };
                    this.#emit('generation.step', e);
                    ctx.progress({ done: g.image * g.steps + g.step, total: g.images * g.steps, label: `image ${e.image}/${g.images}, step ${g.step}/${g.steps}` });
                  } else if (g.type === 'image') {
                    this.#emit('generation.image', { jobId: ctx.jobId, projectId: p.projectId, image: this.#imageInfo(p.projectId, g.sidecar) });
                  }
                },
              },
            );
            return { label: `${r.files.length} image${r.files.length === 1 ? '' : 's'} in images/` };
          },
        });
        return { jobId: job.id };
      },

      'generation.list': async (p) => {
        const dir = join(this.store.dir(p.projectId), 'images');
        await this.store.open(p.projectId);
        const names = (await readdir(dir).catch(() => [] as string[])).filter((n) => n.endsWith('.json') && !n.startsWith('.'));
        const out: GeneratedImageInfo[] = [];
        for (const n of names) {
          try {
            const r = imageSidecarSchema.safeParse(JSON.parse(await readFile(join(dir, n), 'utf8')));
            if (r.success && existsSync(join(dir, r.data.file))) out.push(this.#imageInfo(p.projectId, r.data));
            else if (!r.success) this.#log(`images: skipped ${join(dir, n)}: ${r.error.issues[0]?.message}`);
          } catch (err) {
            this.#log(`images: skipped ${join(dir, n)}: ${(err as Error).message}`);
          }
        }
        return out.sort((a, b) => b.createdAt.localeCompare(a.createdAt));
      },

      'adapters.list': async (p) => {
        await this.store.open(p.projectId);
        const dir = join(this.store.dir(p.projectId), 'adapters');
        const names = (await readdir(dir, { withFileTypes: true }).catch(() => [])).filter((d) => d.isFile() && !d.name.startsWith('.') && extname(d.name).toLowerCase() === '.safetensors').map((d) => d.name).sort();
        if (!names.length) return [];
        const results = await this.#inspect(names.map((n) => join(dir, n)));
        const out: AdapterInfo[] = [];
        results.forEach((r, i) => {
          // Merged checkpoints also live here; only files with adapter targets are adapters.
          if (r.ok && r.info.targets > 0) out.push(this.#adapterInfo(r.info, `adapters/${names[i]}`));
          else if (!r.ok) this.#log(`adapters: ${names[i]}: ${r.error}`);
        });
        return out;
      },

      'adapters.export': async (p) => {
        const project = await this.store.open(p.projectId);
        const adapter = await this.#adapterPath(p.projectId, p.adapter, 'adapter');
        const merged = p.format === 'merged-diffusers' || p.format === 'merged-single-file';
        const base = merged ? (adapter.runBase ?? this.#baseFor(project)) : undefined;
        const adaptersDir = join(this.store.dir(p.projectId), 'adapters');
        await mkdir(adaptersDir, { recursive: true });
        let out: string;
        if (p.outPath !== undefined) {
          out = await safeResolve(this.store.dir(p.projectId), p.outPath, 'outPath');
          if (!isInside(adaptersDir, out) || out === adaptersDir) throw new ApiError('invalid_params', `outPath: '${p.outPath}' must be inside the project's adapters/ folder (e.g. adapters/${p.format}.safetensors)`, [{ field: 'outPath', message: 'must be inside adapters/' }]);
          if (!merged && extname(out).toLowerCase() !== '.safetensors') throw new ApiError('invalid_params', `outPath: '${p.outPath}' must end in .safetensors`, [{ field: 'outPath', message: 'must end in .safetensors' }]);
          if (existsSync(out)) throw new ApiError('conflict', `outPath: '${p.outPath}' already exists; choose another name or delete it first`);
        } else {
          const taken = new Set(await readdir(adaptersDir).catch(() => [] as string[]));
          const stem = safeFileName(`${project.id}-${adapter.label}-${p.format}`, 'adapter');
          out = join(adaptersDir, uniqueName(p.format === 'merged-diffusers' ? stem : `${stem}.safetensors`, taken));
        }
        const rel = relative(this.store.dir(p.projectId), out).split(sep).join('/');
        const job = this.#jobs.submit({
          kind: 'export',
          projectId: p.projectId,
          runId: 'runId' in p.adapter ? p.adapter.runId : null,
          run: async (ctx) => {
            await this.engine.request('export', { adapter: adapter.path, format: p.format, out, base }, { signal: ctx.signal, onProgress: ({ done, total }) => ctx.progress({ done, total, label: `writing ${rel}` }) });
            // A merged diffusers export is a folder: it has a path but no URL to fetch.
            return { label: rel, result: { path: rel, ...(p.format === 'merged-diffusers' ? {} : { url: this.fileUrl(p.projectId, rel) }) } };
          },
        });
        return { jobId: job.id };
      },

      'adapters.import': async (p) => {
        await this.store.open(p.projectId);
        const { path } = await this.#clientFile(p.projectId, p.path, 'path');
        const info = await stat(path).catch(() => null);
        if (!info?.isFile()) throw new ApiError('not_found', `path: ${p.path} is not a file`);
        if (extname(path).toLowerCase() !== '.safetensors') throw new ApiError('invalid_params', `path: ${p.path} is not a .safetensors file (pickled .ckpt/.pt/.bin files are refused: they can run code)`, [{ field: 'path', message: 'not a .safetensors file' }]);
        const [r] = await this.#inspect([path]);
        if (!r.ok) throw new ApiError('invalid_params', `path: ${r.error}`, [{ field: 'path', message: r.error }]);
        if (r.info.targets === 0) throw new ApiError('invalid_params', `path: ${p.path} holds no LoRA/SingLoRA tensors (format ${r.info.format}); is it a full checkpoint? Use it as a base model instead`, [{ field: 'path', message: 'not an adapter' }]);
        const dir = join(this.store.dir(p.projectId), 'adapters');
        await mkdir(dir, { recursive: true });
        const name = uniqueName(safeFileName(basename(path), 'adapter'), new Set(await readdir(dir)));
        const tmp = join(dir, `.${name}.importing`);
        await copyFile(path, tmp);
        await rename(tmp, join(dir, name));
        return this.#adapterInfo(r.info, `adapters/${name}`);
      },

      'adapters.inspect': async (p) => {
        await this.store.open(p.projectId);
        const { path, rel } = await this.#clientFile(p.projectId, p.file, 'file');
        if (!existsSync(path)) throw new ApiError('not_found', `file: ${p.file} does not exist`);
        const [r] = await this.#inspect([path]);
        if (!r.ok) throw new ApiError('invalid_params', `file: ${r.error}`, [{ field: 'file', message: r.error }]);
        return this.#adapterInfo(r.info, rel ?? path);
      },

      'models.list': async () => {
        const rows = [];
        const base = this.#defaultBase();
        const demo = join(this.modelsDir, 'tiny-sd');
        const basePath = base ?? demo;
        rows.push({
          name: basename(basePath),
          kind: 'base',
          present: existsSync(basePath),
          path: basePath,
          bytes: null,
          verified: null,
          hint: existsSync(basePath) ? null : `no default base model: choose one per project (models.setBase), start the server with --base, or build the demo model into ${demo}`,
        });
        for (const m of await listModels(this.modelsDir)) {
          const present = m.files.filter((f) => f.present);
          const verified = m.files.some((f) => f.verified === false) ? false : m.files.length && m.files.every((f) => f.verified === true) ? true : null;
          rows.push({
            name: m.id,
            kind: m.required ? 'evaluation' : 'evaluation (optional)',
            present: m.present,
            path: join(this.modelsDir, m.id),
            bytes: present.length ? present.reduce((n, f) => n + (f.bytes ?? 0), 0) : null,
            verified,
            // One line for the Models screen (the registry's per-file notes, with every URL, are for the CLI).
            hint: m.present
              ? verified === false
                ? m.files.filter((f) => f.verified === false).map((f) => f.note).join('; ')
                : null
              : `missing ${m.files.filter((f) => !f.present).map((f) => f.file).join(', ')} in ${join(this.modelsDir, m.id)}: download (singlora models download ${m.id}) or place the files there`,
          });
        }
        return rows;
      },

      'models.setBase': async (p) => {
        await this.store.open(p.projectId);
        const checked = await this.#checkBase(p.path, 'path');
        await this.store.update(p.projectId, { baseModel: resolve(p.path) });
        return checked;
      },

      'models.download': async (p) => {
        const spec = (this.opts.evalModels ?? EVAL_MODELS).find((m) => m.id === p.name);
        if (!spec) throw new ApiError('not_found', `no downloadable model '${p.name}'`);
        const busy = this.#jobs.active({ kind: 'download' });
        if (busy.length) throw new ApiError('conflict', `a download is already ${busy[0].status} (${busy[0].id})`);
        const job = this.#jobs.submit({
          kind: 'download',
          projectId: null,
          runId: null,
          lane: 'io',
          run: async (ctx) => {
            const files = spec.files.filter((f) => !existsSync(modelFilePath(this.modelsDir, spec.id, f.file)));
            const known = files.reduce((n, f) => n + (f.approxBytes ?? 0), 0);
            let finished = 0;
            for (const [i, f] of files.entries()) {
              await download(f.url, modelFilePath(this.modelsDir, spec.id, f.file), {
                sha256: f.sha256,
                signal: ctx.signal,
                onProgress: (pr) => ctx.progress({ done: finished + pr.bytes, total: Math.max(known, finished + (pr.total ?? pr.bytes)), label: `${spec.id}/${f.file} (${i + 1}/${files.length})` }),
              });
              finished += (await stat(modelFilePath(this.modelsDir, spec.id, f.file))).size;
            }
            return { label: files.length ? `${spec.id}: ${files.length} file${files.length === 1 ? '' : 's'} in ${join(this.modelsDir, spec.id)}` : `${spec.id}: already present` };
          },
        });
        return { jobId: job.id };
      },

      'jobs.list': async () => this.#jobs.list(),

      'jobs.cancel': async (p) => {
        const r = this.#jobs.cancel(p.jobId, 'cancel');
        if (r === undefined) throw new ApiError('not_found', `no job '${p.jobId}'`);
        return { cancelled: r };
      },
    };
  }
}

/** Any error as the contract's ApiError. */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof EngineExitedError) return new ApiError('engine_crashed', err.message);
  if (err instanceof EngineRequestError || err instanceof EngineStartError) return new ApiError('engine_error', err.message);
  return new ApiError('internal', (err as Error)?.message ?? String(err));
}

/** Opens a service (see ServiceOptions). */
export function openService(opts: ServiceOptions = {}): Promise<Service> {
  return Service.open(opts);
}

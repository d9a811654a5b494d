/**
 * What every namespace of the service works with: the projects on disk, the job runner, the
 * engine process, the event stream, the path policy, and the one per-project lock
 * (`store.withLock`). The handlers in `methods/*.ts` take this context and nothing else.
 */
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import {
  ApiError,
  projectFileUrl,
  type AdapterInfo,
  type Job,
  type EventData,
  type EventName,
  type GeneratedImageInfo,
  type ParsedParams,
  type Project,
  type RunEvent,
} from '../api/contract.ts';
import type { TrainEvent, TrainSettings } from '../api/schemas.ts';
import type { AdapterInspection } from '../engine/adapters/exportAdapter.ts';
import type { EvalModelSpec } from '../engine/eval/modelRegistry.ts';
import { readModelDefaults } from '../engine/io/modelDefaults.ts';
import { writeRoot, type WriteRoot } from '../engine/io/atomic.ts';
import { nativeResolution, openBaseModel } from '../engine/io/modelFiles.ts';
import type { EngineHost, SpawnEngine } from './engineHost.ts';
import type { JobData } from './jobData.ts';
import type { JobQueue } from './jobQueue.ts';
import type { HostAccess, PathPolicy } from './pathPolicy.ts';
import type { ProjectStore } from './projects.ts';
import { existingRunBase, pickCheckpoint, readRun } from './runs.ts';

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
   * Which paths on this machine clients may name (pathPolicy.ts): 'deny' for a server open to the
   * network, 'allow' (default) on loopback, 'desktop' in the Electron app (the user also picks
   * folders such as the class-image folder).
   */
  hostPaths?: HostAccess;
  /**
   * A Redis queue (`serve --queue redis://host:port`, `SINGLORA_QUEUE`): jobs go to BullMQ and
   * `singlora worker`s run them; the project locks live in Redis; no lock file, no jobs.json.
   * Default: the embedded queue and this service's own engine process.
   */
  queue?: string;
  /** Per-photo limit (uploads after base64 decoding, and path imports); default 25 MiB. */
  maxPhotoBytes?: number;
  /** The Hugging Face hub cache searched for base models (default: HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub). */
  hfCacheDir?: string;
  /** The downloadable evaluation models (default: the registry's). */
  evalModels?: readonly EvalModelSpec[];
  log?: (line: string) => void;
}

export interface ServiceContext {
  readonly opts: ServiceOptions;
  readonly dataDir: string;
  readonly projectsDir: string;
  readonly modelsDir: string;
  readonly store: ProjectStore;
  readonly engine: EngineHost;
  readonly jobs: JobQueue;
  readonly paths: PathPolicy;
  emit<E extends EventName>(event: E, data: EventData<E>): void;
  log(line: string): void;
  /** The adapter inspections cache (path -> size:mtime key and result). */
  readonly inspections: Map<string, { key: string; info: AdapterInspection }>;
  /** The native resolution of a base model (null: the default one); see nativeResolutionOf. */
  nativeResolution(baseModel: string | null): Promise<number | null>;
}

/** `/files/<projectId>/<rel>`: the URL clients use for a project file. */
export const fileUrl = projectFileUrl;

/**
 * The demo base model in the models folder: `toy-sd` (the toy model, trained: it draws pictures)
 * when present, else `tiny-sd` (random weights, for tests); the toy model's place when neither is.
 */
export function demoModelDir(modelsDir: string): string {
  return (
    [join(modelsDir, 'toy-sd'), join(modelsDir, 'tiny-sd')].find((d) => existsSync(d)) ?? join(modelsDir, 'toy-sd')
  );
}

/** The base model for projects that have none: `--base`, else the demo model when present. */
export function defaultBase(c: Pick<ServiceContext, 'opts' | 'modelsDir'>): string | null {
  if (c.opts.defaultBaseModel) return resolve(c.opts.defaultBaseModel);
  const demo = demoModelDir(c.modelsDir);
  return existsSync(demo) ? demo : null;
}

/**
 * The training settings a base model recommends (its singlora-defaults.json), or undefined when
 * it has none; a bad file is an invalid_params error on `field` naming the file and the setting.
 */
export function modelTrainingDefaults(base: string, field: string): Partial<TrainSettings> | undefined {
  try {
    return (readModelDefaults(base)?.training ?? undefined) as Partial<TrainSettings> | undefined;
  } catch (err) {
    throw new ApiError('invalid_params', `${field}: ${(err as Error).message}`, [
      { field, message: (err as Error).message },
    ]);
  }
}

/** The base model a project trains and generates with. */
export function baseFor(c: ServiceContext, project: Project): string {
  const base = project.baseModel ?? defaultBase(c);
  if (!base) {
    throw new ApiError(
      'conflict',
      `project '${project.id}' has no base model and there is no default: choose one on the Models screen (models.setBase) or start the server with --base <diffusers folder or .safetensors>; the demo model goes in ${demoModelDir(c.modelsDir)} (npm run build:toy-model)`,
    );
  }
  return base;
}

/**
 * The native size of a base model, read from its configs without its weights (the engine's
 * `nativeResolution`). Cached per path; null when it cannot be opened (not cached: it may appear later).
 */
export function nativeResolutionOf(
  cache: Map<string, Promise<number | null>>,
  path: string | null,
): Promise<number | null> {
  if (!path) return Promise.resolve(null);
  let r = cache.get(path);
  if (!r) {
    r = (async () => {
      const m = await openBaseModel(path);
      await m.close();
      return nativeResolution({ unet: m.unet.config, vae: m.vae.config });
    })().catch(() => {
      cache.delete(path);
      return null;
    });
    cache.set(path, r);
  }
  return r;
}

/** A base model a client names: allowed by the path policy, and readable as a model (no weights read). */
export async function checkBase(
  c: ServiceContext,
  path: string,
  field: string,
): Promise<{ path: string; name: string; format: string }> {
  const abs = await c.paths.hostPath(path, field, 'base-model');
  try {
    const m = await openBaseModel(abs);
    await m.close();
    return { path: abs, name: m.name, format: m.format };
  } catch (err) {
    throw new ApiError('invalid_params', `${field}: ${(err as Error).message}`, [
      { field, message: (err as Error).message },
    ]);
  }
}

/**
 * The folders a project job may write under, with their real paths now (io/atomic.ts): the
 * project, and any extra folder the job was allowed (a class-image folder the user picked).
 * Taken when the job runs, right after its paths were checked.
 */
export async function projectWriteRoots(
  c: ServiceContext,
  projectId: string,
  ...extra: string[]
): Promise<WriteRoot[]> {
  return Promise.all([c.store.dir(projectId), ...extra].map((dir) => writeRoot(dir)));
}

/**
 * Submits a job (as data: jobData.ts) once it is recorded (jobs.json, or Redis): when that fails
 * (a full disk, Redis gone), the job is withdrawn and the caller told.
 */
export async function submitJob(c: ServiceContext, data: JobData): Promise<Job> {
  try {
    return await c.jobs.submitJob(data);
  } catch (err) {
    throw new ApiError('internal', `cannot start the ${data.kind} job: ${(err as Error).message}`);
  }
}

export async function assertIdle(c: ServiceContext, projectId: string, runId: string, what: string): Promise<void> {
  const busy = await c.jobs.active({ projectId, runId });
  if (busy.length)
    throw new ApiError(
      'conflict',
      `cannot ${what}: run '${runId}' has a ${busy[0].kind} job ${busy[0].status} (${busy[0].id}); wait for it or cancel it`,
    );
}

export async function assertNoTraining(c: ServiceContext, projectId: string): Promise<void> {
  const t = await c.jobs.active({ projectId, kind: 'train' });
  if (t.length)
    throw new ApiError(
      'conflict',
      `project '${projectId}' is already training (run ${t[0].runId}, job ${t[0].id} ${t[0].status}); cancel it or wait for it to finish`,
    );
}

export async function usablePhotos(c: ServiceContext, projectId: string): Promise<string[]> {
  const photos = await c.store.usablePhotoFiles(projectId);
  if (!photos.length) {
    // People read this: name the project as they named it, not by its folder id.
    const name = (await c.store.open(projectId).catch(() => null))?.name ?? projectId;
    throw new ApiError('conflict', `the project "${name}" has no usable photos; add 3-20 photos of the subject first`);
  }
  return photos;
}

/** The adapter file an adapter reference means: a run's checkpoint, or a file (project or host). */
export async function adapterPath(
  c: ServiceContext,
  projectId: string,
  ref: ParsedParams<'adapters.export'>['adapter'],
  field: string,
): Promise<{ path: string; runBase: string | null; label: string }> {
  if ('runId' in ref) {
    const m = await readRun(c.store, projectId, ref.runId);
    const cp = pickCheckpoint(m, ref.step, `${field}.step`);
    const path = join(c.store.runDir(projectId, ref.runId), cp.adapter);
    if (!existsSync(path)) throw new ApiError('not_found', `${field}: the checkpoint file ${path} is missing`);
    return {
      path,
      runBase: existingRunBase(m, c.modelsDir),
      label: `${ref.runId}-step${cp.step}`,
    };
  }
  const { path } = await c.paths.clientFile(c.store.dir(projectId), ref.file, `${field}.file`, 'adapter');
  const info = await stat(path).catch(() => null);
  if (!info?.isFile()) throw new ApiError('not_found', `${field}.file: ${ref.file} does not exist`);
  return { path, runBase: null, label: basename(path).replace(/\.safetensors$/i, '') };
}

/** Inspects adapter files in the engine, cached by path, size and modification time. */
export async function inspect(
  c: ServiceContext,
  paths: string[],
): Promise<Array<{ ok: true; info: AdapterInspection } | { ok: false; error: string }>> {
  const keys = await Promise.all(
    paths.map(async (p) => {
      const s = await stat(p).catch(() => null);
      return s ? `${s.size}:${s.mtimeMs}` : 'missing';
    }),
  );
  const todo = paths.filter((p, i) => c.inspections.get(p)?.key !== keys[i]);
  const fresh = todo.length ? await c.engine.request('inspect', { files: todo }) : [];
  const byPath = new Map(todo.map((p, i) => [p, fresh[i]]));
  return paths.map((p, i) => {
    const f = byPath.get(p);
    if (f?.ok) c.inspections.set(p, { key: keys[i], info: f.info });
    if (f) return f;
    return { ok: true as const, info: c.inspections.get(p)!.info };
  });
}

export function adapterInfo(info: AdapterInspection, file: string): AdapterInfo {
  return {
    file,
    method: info.method,
    rank: info.rank,
    alpha: info.alpha,
    targets: info.targets,
    parameters: info.parameters,
    bytes: info.bytes,
    format: info.format,
    metadata: info.metadata,
  };
}

export function imageInfo(
  projectId: string,
  sidecar: GeneratedImageInfo | Omit<GeneratedImageInfo, 'url'>,
): GeneratedImageInfo {
  return { ...sidecar, url: fileUrl(projectId, `images/${sidecar.file}`) };
}

/** A trainer event as clients get it: a sample gets its URL (its file is relative to the run). */
export function runEvent(projectId: string, runId: string, event: TrainEvent): RunEvent {
  return event.event === 'sample' ? { ...event, url: fileUrl(projectId, `runs/${runId}/${event.file}`) } : event;
}

/**
 * The messages between the engine host (service process) and the engine worker (the one process
 * that loads TensorFlow.js, the models and onnxruntime). Structured-clone-able plain objects over
 * `child_process.fork` IPC or Electron's `utilityProcess` port.
 *
 *   host -> worker   { type: 'request', id, kind, params,      start a request (see EngineRequests);
 *                      writeRoots? }                            its writes held inside these folders (io/atomic.ts)
 *                    { type: 'cancel', id, reason }             abort it ('pause' pauses training)
 *                    { type: 'shutdown' }                        pause running work, then exit 0
 *   worker -> host   { type: 'ready', backend }                  the backend started; requests may flow
 *                    { type: 'startup-failed', message }          the backend cannot start (then exit 1)
 *                    { type: 'progress', id, data }               progress of request `id`
 *                    { type: 'result', id, result }               request `id` finished
 *                    { type: 'error', id, message }               request `id` failed
 *
 * The type map below is the whole vocabulary: a kind's params, progress and result. Types only
 * (`import type`), so the host never loads engine code.
 */
import type {
  ComputeSettings,
  Evaluation,
  GenerateSettingsInput,
  ImageSidecar,
  RunStatus,
  TrainEvent,
  TrainSettingsInput,
} from '../api/schemas.ts';
import type { AdapterInspection, ExportFormat } from '../engine/adapters/exportAdapter.ts';
import type { BackendStatus } from '../engine/backend/tf.ts';
import type { WriteRoot } from '../engine/io/atomic.ts';
import type { SubjectKind } from '../engine/eval/prompts.ts';

export interface TrainRequest {
  base: string;
  photos: string[];
  runDir: string;
  settings: TrainSettingsInput;
  resume: boolean;
  /** settings.classImagesDir resolved by the service (settings keep the project-relative value). */
  classImagesDir?: string;
  classImagesCacheDir?: string;
  /** The models folder of this machine: run.json records a base model inside it relative to it. */
  modelsDir?: string;
  /** What trains (and samples the previews): the app's settings or the request's own (appSettings.ts). */
  compute: ComputeSettings;
}

export interface GenerateRequest {
  base: string;
  settings: GenerateSettingsInput;
  adapters: Array<{ path: string; strength: number }>;
  outDir: string;
  /** What generates: the app's settings or the request's own. */
  compute: ComputeSettings;
}

export type GenerateProgress =
  | { type: 'step'; image: number; images: number; step: number; steps: number }
  | { type: 'image'; file: string; sidecar: ImageSidecar }
  | { type: 'adapters'; summaries: string[] };

export interface EvaluateRequest {
  runDir: string;
  photos: string[];
  checkpoints: 'all' | 'latest';
  subjectType: SubjectKind;
  prompts?: string[];
  imagesPerPrompt?: number;
  /** Sampling steps of the evaluation images (default: the engine's). */
  steps?: number;
  dinoModel?: string;
  /** 'toy': score with the toy world's pixel score instead of DINO (the toy model without DINO). */
  scorer?: 'dino' | 'toy';
  modelsDir?: string;
  /** What generates the evaluation images: the app's settings. */
  compute: ComputeSettings;
}

export interface ExportRequest {
  adapter: string;
  format: ExportFormat;
  out: string;
  base?: string;
}

export interface DoctorResult {
  node: string;
  platform: string;
  /** ONNX Runtime execution providers: whether each starts (inference) and can run a training step. */
  providers: Array<{ name: string; available: boolean; detail: string; training: { ok: boolean; detail: string } }>;
  backends: BackendStatus[];
  selected: { name: string; device?: string } | { error: string };
  memory: Record<string, unknown>;
}

export interface EngineRequests {
  train: {
    params: TrainRequest;
    progress: TrainEvent;
    result: { status: RunStatus; step: number; error: string | null; fixedLoss: { start: number; end: number } | null };
  };
  generate: { params: GenerateRequest; progress: GenerateProgress; result: { files: string[] } };
  evaluate: { params: EvaluateRequest; progress: { done: number; total: number; label: string }; result: Evaluation };
  export: {
    params: ExportRequest;
    progress: { done: number; total: number };
    result: { format: string; path: string; tensors: number };
  };
  /** One result per file, in order: the inspection, or why it is not a readable adapter. */
  inspect: {
    params: { files: string[] };
    progress: never;
    result: Array<{ ok: true; info: AdapterInspection } | { ok: false; error: string }>;
  };
  doctor: { params: Record<string, never>; progress: never; result: DoctorResult };
}
/** What one request kind declares. */
export interface RequestShape {
  params: unknown;
  progress: unknown;
  result: unknown;
}
/** Any map of request kinds (the engine's, or a test worker's). */
export type RequestMap<R> = { [K in keyof R]: RequestShape };
export type EngineKind = keyof EngineRequests;
export type EngineParams<K extends EngineKind> = EngineRequests[K]['params'];
export type EngineProgress<K extends EngineKind> = EngineRequests[K]['progress'];
export type EngineResult<K extends EngineKind> = EngineRequests[K]['result'];

export type HostMessage =
  | { type: 'request'; id: number; kind: string; params: unknown; writeRoots?: WriteRoot[] }
  | { type: 'cancel'; id: number; reason: 'cancel' | 'pause' }
  | { type: 'shutdown' };

export type WorkerMessage =
  | { type: 'ready'; backend: { name: string; device?: string }; pid: number }
  | { type: 'startup-failed'; message: string }
  | { type: 'progress'; id: number; data: unknown }
  | { type: 'result'; id: number; result: unknown }
  | { type: 'error'; id: number; message: string };

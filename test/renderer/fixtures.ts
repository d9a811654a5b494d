/** Contract-valid objects for renderer tests (the studio validates every result against the contract). */
import type {
  BaseModelInfo,
  GeneratedImageInfo,
  Job,
  Photo,
  Project,
  ProjectSummary,
  QueueStatus,
  Result,
  RunStatusInfo,
} from '../../src-main/api/contract.ts';
import { trainSettingsSchema, type Evaluation, type TrainEvent } from '../../src-main/api/schemas.ts';

const T = '2025-01-01T00:00:00.000Z';

export function project(over: Partial<Project> = {}): Project {
  return {
    schemaVersion: 1,
    id: 'p1',
    name: 'My dog',
    createdAt: T,
    updatedAt: T,
    subject: { triggerToken: 'sks', classWord: 'dog', type: 'live' },
    baseModel: null,
    settings: trainSettingsSchema.parse({}),
    ...over,
  };
}

export function projectSummary(p: Project): ProjectSummary {
  return {
    id: p.id,
    name: p.name,
    createdAt: p.createdAt,
    updatedAt: p.updatedAt,
    subject: p.subject,
    photos: 0,
    runs: 0,
  };
}

/** A photo of project p1; its URL follows its file unless given. */
export function photo(over: Partial<Photo> = {}): Photo {
  const file = over.file ?? 'photos/0001.jpg';
  return {
    id: 'ph1',
    file,
    originalName: 'dog1.jpg',
    status: 'ok',
    reason: null,
    width: 1024,
    height: 768,
    bytes: 210_000,
    url: `/files/p1/${file}`,
    ...over,
  };
}

export type RunSummary = Result<'training.runs'>[number];
export function run(over: Partial<RunSummary> = {}): RunSummary {
  return {
    id: 'r1',
    createdAt: T,
    updatedAt: T,
    status: 'completed',
    step: 800,
    error: null,
    steps: 800,
    method: 'singlora',
    best: null,
    ...over,
  };
}

/** A run as `training.status` returns it (samples carry their URLs). */
export function manifest(over: Partial<RunStatusInfo> = {}): RunStatusInfo {
  return {
    schemaVersion: 1,
    id: 'r1',
    createdAt: T,
    updatedAt: T,
    status: 'completed',
    error: null,
    settings: trainSettingsSchema.parse({}),
    baseModel: { path: '/models/sd15', name: 'sd15', unetSha256: 'abc' },
    backend: 'tensorflow',
    images: { used: ['photos/0001.jpg'], rejected: [] },
    step: 800,
    checkpoints: [],
    losses: [],
    samples: [],
    evaluation: null,
    timing: { startedAt: T, msPerStep: 500, totalMs: 400_000 },
    ...over,
  };
}

export function stepEvent(
  step: number,
  steps: number,
  over: Partial<Extract<TrainEvent, { event: 'step' }>> = {},
): Extract<TrainEvent, { event: 'step' }> {
  return {
    event: 'step',
    step,
    steps,
    loss: 0.12,
    smoothed: 0.11,
    lr: 1e-4,
    u: 1,
    its: 2.5,
    eta_s: 95,
    memory: { rssMb: 900, tensors: 100, tensorMb: 300 },
    ...over,
  };
}

export function evaluation(over: Partial<Evaluation> = {}): Evaluation {
  return {
    createdAt: T,
    prompts: ['a photo of sks dog'],
    imagesPerPrompt: 4,
    seeds: [1, 2, 3, 4],
    baseline: { step: null, dino: 0.21, clipT: 0.3, images: 4 },
    rows: [
      { step: 200, dino: 0.41, clipT: 0.29, images: 4 },
      { step: 400, dino: 0.58, clipT: 0.28, images: 4 },
      { step: 600, dino: 0.63, clipT: 0.27, images: 4 },
    ],
    best: 600,
    rule: 'highest DINO among checkpoints whose CLIP-T stays within 0.05 of the base model',
    chosen: null,
    ...over,
  };
}

export function generatedImage(over: Partial<GeneratedImageInfo> = {}): GeneratedImageInfo {
  return {
    schemaVersion: 1,
    file: 'images/0001.png',
    createdAt: T,
    settings: {
      prompt: 'a photo of sks dog on a beach',
      negativePrompt: '',
      steps: 25,
      guidanceScale: 7.5,
      scheduler: 'dpmpp-2m-karras',
      seed: 1234,
      width: 512,
      height: 512,
      count: 1,
      clipSkip: 0,
      negativePadding: 'empty-chunks',
    },
    baseModel: { path: '/models/sd15', name: 'sd15', unetSha256: 'abc' },
    adapters: [{ file: 'runs/r1/checkpoints/step-000600/adapter.safetensors', sha256: 'def', strength: 1 }],
    parameters:
      'a photo of sks dog on a beach\nSteps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1234, Size: 512x512',
    engine: 'onnx',
    provider: 'webgpu+cpu',
    dtype: 'float16',
    ms: 4200,
    url: '/files/p1/images/0001.png',
    ...over,
  };
}

export function job(over: Partial<Job> = {}): Job {
  return {
    id: 'j1',
    kind: 'train',
    projectId: 'p1',
    runId: null,
    status: 'running',
    createdAt: T,
    error: null,
    progress: null,
    ...over,
  };
}

/** `jobs.queue` as the embedded queue answers it: its lanes, and this process as the one worker. */
export function queueStatus(over: Partial<QueueStatus> = {}): QueueStatus {
  return {
    mode: 'embedded',
    queues: [
      { name: 'engine', waiting: 0, active: 0 },
      { name: 'io', waiting: 0, active: 0 },
    ],
    workers: [{ name: 'studio-host:4242', queues: ['engine', 'io'], lastSeen: T, alive: true, jobId: null }],
    ...over,
  };
}

export function info(): Result<'system.info'> {
  return {
    version: '0.1.0',
    projectsDir: '/home/u/SingLoRA/projects',
    modelsDir: '/home/u/SingLoRA/models',
    defaultBaseModel: '/home/u/SingLoRA/models/sd15',
    demoModel: false,
  };
}

export function doctor(selected: string): Result<'system.doctor'> {
  return {
    node: 'v20.20.2',
    platform: 'linux-x64',
    providers: [
      { name: 'cpu', available: true, detail: 'MLAS, all cores', training: { ok: true, detail: 'trains (float32)' } },
      {
        name: 'cuda',
        available: selected === 'tensorflow',
        detail: selected === 'tensorflow' ? 'started' : 'not in this onnxruntime-node build',
        training:
          selected === 'tensorflow'
            ? { ok: true, detail: 'runs the training ops without CPU fallback' }
            : { ok: false, detail: 'cannot train: the provider does not start' },
      },
    ],
    backends: [
      {
        name: 'tensorflow',
        available: selected === 'tensorflow',
        reason: selected === 'tensorflow' ? undefined : 'libcudnn.so.8 not found',
        device: selected === 'tensorflow' ? 'NVIDIA RTX 4090' : undefined,
      },
      { name: 'webgpu', available: false, reason: 'no adapter' },
      { name: 'wasm', available: true, device: 'WebAssembly' },
      { name: 'cpu', available: true, device: 'JavaScript' },
    ],
    selected: { name: selected },
    memory: {},
  };
}

/** A base model the engine machine has: SD 1.5 in the models folder, the server's default. */
export function base(over: Partial<BaseModelInfo> = {}): BaseModelInfo {
  return { path: '/models/sd15', name: 'sd15', source: 'models folder', isDefault: true, native: 512, ...over };
}

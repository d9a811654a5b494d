/**
 * The data shapes shared by the engine, the CLI, the server, the Electron shell and the renderer:
 * training settings, the run manifest (`run.json`), projects, photos, images. Pure zod: no Node
 * or TensorFlow imports, so the renderer can use it as-is.
 *
 * Each schema validates at a boundary (a file read from disk, a request from a client) and fills
 * defaults; inside, code works with the inferred, fully-populated types.
 */
import { z } from 'zod';

export const SCHEMA_VERSION = 1;

export const METHODS = ['singlora', 'lora'] as const;
export const CROP_MODES = ['center', 'attention', 'none'] as const;
export const LR_SCHEDULES = ['constant', 'constant_with_warmup', 'cosine'] as const;
export const SCHEDULERS = ['pndm', 'ddim', 'euler', 'euler-a', 'dpmpp-2m', 'dpmpp-2m-karras'] as const;
/** The samplers as A1111 names them (PNG `parameters` metadata, the UI); DDPM only trains. */
export const SAMPLER_DISPLAY_NAMES: Readonly<Record<(typeof SCHEDULERS)[number] | 'ddpm', string>> = {
  pndm: 'PNDM',
  ddim: 'DDIM',
  euler: 'Euler',
  'euler-a': 'Euler a',
  'dpmpp-2m': 'DPM++ 2M',
  'dpmpp-2m-karras': 'DPM++ 2M Karras',
  ddpm: 'DDPM',
};
export const SUBJECT_TYPES = ['object', 'live'] as const;
/** A project's subject type when none is given (it chooses the evaluation prompts). */
export const DEFAULT_SUBJECT_TYPE: (typeof SUBJECT_TYPES)[number] = 'live';
/**
 * What runs training and inference: `onnx` (ONNX Runtime, the default) or `tfjs` (TensorFlow.js, the
 * reference executor). The engine, the CLI (`--engine`), the API and the Settings screen read this list.
 */
export const ENGINES = ['onnx', 'tfjs'] as const;
export type EngineChoice = (typeof ENGINES)[number];
/** The engine that runs when none is chosen (Settings, the API and the CLI's --engine). */
export const DEFAULT_ENGINE: EngineChoice = 'onnx';
/** TensorFlow.js backends (engine/backend/tf.ts starts them; the CLI's `--backend`, SINGLORA_BACKEND). */
export const TENSOR_BACKENDS = ['tensorflow', 'webgpu', 'wasm', 'cpu'] as const;
/** Compute types of ONNX Runtime (an image's sidecar, the benchmarks' `--dtype`). */
export const COMPUTE_DTYPES = ['float32', 'float16'] as const;
/** Float types a weights file is written in (adapter export, the toy build, `bench unet --file-dtype`). */
export const WEIGHT_FILE_DTYPES = ['F32', 'F16'] as const;
export type WeightFileDtype = (typeof WEIGHT_FILE_DTYPES)[number];
/**
 * How the ONNX training graph reads a frozen Linear weight: `matmul` (a transposed copy) or `gemm`
 * (no copy). `bench train --linear-layout`; the default is gemm on the CPU, matmul on GPU providers.
 */
export const LINEAR_LAYOUTS = ['matmul', 'gemm'] as const;
export type LinearLayout = (typeof LINEAR_LAYOUTS)[number];
/** TensorFlow.js attention kernels: `memory-efficient` (training) or `plain` (inference, `bench train --attention`). */
export const ATTENTION_MODES = ['memory-efficient', 'plain'] as const;
export type AttentionMode = (typeof ATTENTION_MODES)[number];
/** Which checkpoints of a run an evaluation scores (`evaluation.start`, `singlora eval --checkpoints`). */
export const EVAL_CHECKPOINTS = ['all', 'latest'] as const;
/**
 * ONNX Runtime execution providers a user can ask for (engine/onnx/providers.ts says where each
 * exists). `auto`: the first GPU provider that starts on this machine (CUDA, DirectML or CoreML, then
 * a hardware WebGPU adapter), else the CPU.
 */
export const PROVIDERS = ['auto', 'cpu', 'webgpu', 'cuda', 'dml', 'coreml'] as const;
export type ProviderChoice = (typeof PROVIDERS)[number];
/** Adapter export formats (adapters.export, `singlora adapters export --format`, the engine's exporter). */
export const EXPORT_FORMATS = ['singlora', 'kohya', 'diffusers', 'merged-diffusers', 'merged-single-file'] as const;
/** Photo files the app takes (the engine decodes them with sharp); the UI and photos.add use this list. */
export const IMAGE_EXTENSIONS = ['.jpg', '.jpeg', '.png', '.webp', '.avif', '.tif', '.tiff', '.heic', '.heif'] as const;
/** True for an extension (with its dot, any case) in IMAGE_EXTENSIONS. */
export function isImageExtension(ext: string): boolean {
  return (IMAGE_EXTENSIONS as readonly string[]).includes(ext.toLowerCase());
}

/**
 * Every bound in one place: the schemas below, the service, the CLI flags and the UI read them.
 * A prompt is at most 4,000 characters (CLIP reads 77 tokens; the rest is kept for the record).
 */
export const LIMITS = {
  promptChars: 4000,
  prompts: 64,
  wordChars: 64,
  nameChars: 120,
  pathChars: 4096,
  steps: 100_000,
  rank: 256,
  alpha: 1024,
  batchSize: 64,
  gradientAccumulation: 128,
  maxGradNorm: 1e4,
  minSnrGamma: 1000,
  priorLossWeight: 100,
  numClassImages: 10_000,
  targets: 64,
  targetChars: 200,
  resolution: { min: 64, max: 2048, multiple: 64 },
  generation: { steps: 200, size: 2048, sizeMultiple: 8, count: 100, guidance: 50, clipSkip: 11 },
  /** An adapter's strength at generation lies in [-adapterStrength, adapterStrength]. */
  adapterStrength: 4,
  sampleSteps: 200,
} as const;

const positiveInt = (max: number) => z.number().int().min(1).max(max);
/** A free text field: at most `max` characters. */
const text = (max: number = LIMITS.promptChars) => z.string().max(max);
/** A word the tokenizer sees (trigger token, class word): not blank, at most 64 characters. */
export const wordSchema = z.string().trim().min(1).max(LIMITS.wordChars);
/** A step count or interval in steps (0 allowed where it means "off"). */
const stepCount = (min = 0) => z.number().int().min(min).max(LIMITS.steps);

/** Every training option, with the defaults a user of kohya_ss or diffusers' DreamBooth script would expect. */
export const trainSettingsSchema = z
  .object({
    method: z.enum(METHODS).default('singlora').describe('adapter type'),
    steps: positiveInt(LIMITS.steps).default(800).describe('optimizer steps'),
    rank: positiveInt(LIMITS.rank).default(8).describe('adapter rank'),
    alpha: z.number().positive().max(LIMITS.alpha).default(8).describe('alpha (the adapter scale is alpha/rank)'),
    /** SingLoRA's ramp length T in steps (0: no ramp). */
    rampSteps: stepCount().default(100).describe('SingLoRA ramp length in steps, u(t) = min(t/T, 1) (0: no ramp)'),
    initStd: z.number().positive().max(1).default(0.01).describe("std of SingLoRA's initial A"),
    targets: z
      .array(z.string().min(1).max(LIMITS.targetChars))
      .min(1)
      .max(LIMITS.targets)
      .optional()
      .describe('adapter target patterns (default: attn1/attn2 to_q/to_k/to_v/to_out.0)'),
    learningRate: z.number().positive().max(1).default(1e-4).describe('learning rate'),
    lrSchedule: z.enum(LR_SCHEDULES).default('constant').describe('learning-rate schedule'),
    warmupSteps: stepCount().default(0).describe('learning-rate warm-up steps'),
    weightDecay: z.number().min(0).max(1).default(1e-2).describe('AdamW weight decay'),
    /** Training image size; null: the base model's native size (512 for SD 1.5). */
    resolution: z
      .number()
      .int()
      .min(LIMITS.resolution.min)
      .max(LIMITS.resolution.max)
      .multipleOf(LIMITS.resolution.multiple, `resolution must be a multiple of ${LIMITS.resolution.multiple}`)
      .nullable()
      .default(null)
      .describe('training image size in pixels (default: the base model native size, 512 for SD 1.5)'),
    batchSize: positiveInt(LIMITS.batchSize).default(1).describe('batch size'),
    gradientAccumulation: positiveInt(LIMITS.gradientAccumulation).default(1).describe('gradient accumulation steps'),
    /** Max global gradient norm (0: no clipping). */
    maxGradNorm: z
      .number()
      .min(0)
      .max(LIMITS.maxGradNorm)
      .default(1)
      .describe('gradient clipping: max global norm (0: off)'),
    noiseOffset: z.number().min(0).max(1).default(0).describe('noise offset'),
    /** Min-SNR-gamma loss weighting (Hang et al. 2023); null: off. */
    minSnrGamma: z
      .number()
      .positive()
      .max(LIMITS.minSnrGamma)
      .nullable()
      .default(null)
      .describe('min-SNR-gamma loss weighting (default: off)'),
    triggerToken: wordSchema.default('sks').describe('trigger token'),
    classWord: wordSchema.default('person').describe('class word (e.g. dog, person)'),
    /** Default: "a photo of <token> <class>". A caption .txt beside a photo overrides it. */
    instancePrompt: text().optional().describe('caption (default "a photo of <token> <class>")'),
    /**
     * Toy world (issue 26): each photo without a caption .txt is captioned "<instance prompt> on a
     * <colour> background", the colour read off its border (eval/toyFidelity.ts), so the adapter
     * learns the subject and leaves the background to the words the base model knows. The toy
     * model's singlora-defaults.json turns it on; it means nothing for real photos.
     */
    captionBackground: z
      .boolean()
      .default(false)
      .describe('toy world: caption each photo with its background colour read off its border'),
    crop: z.enum(CROP_MODES).default('center').describe('how photos are cropped to a square'),
    flip: z.boolean().default(false).describe('add horizontally flipped copies'),
    priorPreservation: z.boolean().default(false).describe('add the prior-preservation loss on generated class images'),
    priorLossWeight: z.number().min(0).max(LIMITS.priorLossWeight).default(1).describe('lambda of the prior loss'),
    numClassImages: positiveInt(LIMITS.numClassImages).default(100).describe('class images to use'),
    /** Default: "a photo of <class>". */
    classPrompt: text().optional().describe('class prompt (default "a photo of <class>")'),
    /**
     * Where class images are made and read: a folder inside the project (`class-images/...`);
     * an absolute folder only when the desktop app's user picked it. Default: a cache per model.
     */
    classImagesDir: z
      .string()
      .min(1)
      .max(LIMITS.pathChars)
      .optional()
      .describe('folder of class images (generated there if too few)'),
    checkpointEvery: stepCount(1).default(100).describe('steps between checkpoints'),
    sampleEvery: stepCount().default(100).describe('steps between preview images (0: none)'),
    samplePrompts: z.array(text()).max(LIMITS.prompts).optional().describe('preview prompts'),
    sampleSteps: positiveInt(LIMITS.sampleSteps).default(20).describe('sampling steps of each preview image'),
    seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(42).describe('seed'),
    gradientCheckpointing: z
      .boolean()
      .default(false)
      .describe(
        'recompute UNet blocks in the backward pass (less memory; on ONNX Runtime the low-resolution ones keep theirs)',
      ),
    /** Mixed-precision is not offered: TensorFlow.js trains in float32. */
  })
  .strict();
export type TrainSettings = z.infer<typeof trainSettingsSchema>;
export type TrainSettingsInput = z.input<typeof trainSettingsSchema>;

/**
 * A partial update of settings: only the fields given, with no defaults filled in
 * (`trainSettingsSchema.partial()` would fill every default and overwrite the saved values).
 */
type WithoutDefaults<S extends z.ZodRawShape> = {
  [K in keyof S]: z.ZodOptional<S[K] extends z.ZodDefault<infer I> ? I : S[K]>;
};
export function patchOf<S extends z.ZodRawShape>(
  schema: z.ZodObject<S>,
): z.ZodObject<WithoutDefaults<S>, z.core.$strict> {
  const shape = Object.fromEntries(
    Object.entries(schema.shape).map(([k, s]) => [
      k,
      ((s instanceof z.ZodDefault ? s.unwrap() : s) as z.ZodType).optional(),
    ]),
  );
  return z.object(shape).strict() as unknown as z.ZodObject<WithoutDefaults<S>, z.core.$strict>;
}

export const RUN_STATUSES = ['queued', 'running', 'paused', 'cancelled', 'completed', 'failed'] as const;
export type RunStatus = (typeof RUN_STATUSES)[number];

export const checkpointSchema = z.object({
  step: z.number().int().min(0),
  /** Folder relative to the run directory, e.g. `checkpoints/step-000100`. */
  dir: z.string(),
  /** The native adapter file, relative to the run directory. */
  adapter: z.string(),
  createdAt: z.string(),
  loss: z.number().nullable(),
});
export type CheckpointEntry = z.infer<typeof checkpointSchema>;

export const scoreRowSchema = z.object({
  /** null for the base model (no adapter). */
  step: z.number().int().nullable(),
  /** Subject fidelity: DINO, or the toy score when the evaluation's `metric` is 'toy'. */
  dino: z.number(),
  clipT: z.number().nullable(),
  images: z.number().int(),
  /** With the toy metric: the share of images with the background the prompt asked for (0..1). */
  prompt: z.number().min(0).max(1).optional(),
});
export type ScoreRow = z.infer<typeof scoreRowSchema>;

export const evaluationSchema = z.object({
  createdAt: z.string(),
  /**
   * What `dino` holds: DINO similarity (absent or 'dino'), or 'toy', the toy world's pixel score
   * (eval/toyFidelity.ts), used for the toy model when no DINO is installed.
   */
  metric: z.enum(['dino', 'toy']).optional(),
  prompts: z.array(z.string()),
  imagesPerPrompt: z.number().int(),
  seeds: z.array(z.number().int()),
  baseline: scoreRowSchema,
  rows: z.array(scoreRowSchema),
  /**
   * How far above the base model's score a checkpoint must be to count as better than it: twice
   * the standard error of the base model's mean over its images (measured, evaluateRun.ts
   * `noiseBand`). null: too few images to measure it; absent in evaluations made before it existed.
   */
  noiseBand: z.number().min(0).nullable().optional(),
  /**
   * The rule's pick: highest DINO (among checkpoints whose CLIP-T stays within the margin of the
   * baseline, when CLIP is present), and only when it beats the base model by more than the noise
   * band; null when none does (then `reason` says why and `suggestion` what to change).
   */
  best: z.number().int().nullable(),
  reason: z.string().nullable().optional(),
  suggestion: z.string().nullable().optional(),
  rule: z.string(),
  /** The user's override, if any. */
  chosen: z.number().int().nullable().default(null),
});
export type Evaluation = z.infer<typeof evaluationSchema>;

export const runManifestSchema = z.object({
  schemaVersion: z.literal(SCHEMA_VERSION),
  id: z.string(),
  createdAt: z.string(),
  updatedAt: z.string(),
  status: z.enum(RUN_STATUSES),
  error: z.string().nullable().default(null),
  settings: trainSettingsSchema,
  baseModel: z.object({ path: z.string(), name: z.string(), unetSha256: z.string() }),
  backend: z.string(),
  /**
   * Where the steps ran: ONNX Runtime's execution provider ('cpu', 'webgpu', ...; on tfjs the
   * TensorFlow.js backend) and the compute type. Absent until the first step, and in runs written
   * before they were recorded.
   */
  provider: z.string().optional(),
  dtype: z.enum(COMPUTE_DTYPES).optional(),
  images: z.object({
    used: z.array(z.string()),
    rejected: z.array(z.object({ file: z.string(), reason: z.string() })),
  }),
  step: z.number().int().min(0),
  checkpoints: z.array(checkpointSchema),
  losses: z.array(z.object({ step: z.number().int(), loss: z.number(), smoothed: z.number() })),
  samples: z.array(z.object({ step: z.number().int(), file: z.string(), prompt: z.string(), seed: z.number().int() })),
  evaluation: evaluationSchema.nullable().default(null),
  timing: z.object({ startedAt: z.string().nullable(), msPerStep: z.number().nullable(), totalMs: z.number() }),
});
export type RunManifest = z.infer<typeof runManifestSchema>;

/** The one constructor of a new run.json: nothing trained yet (the service's queued run, the trainer's first write). */
export function newRunManifest(o: {
  id: string;
  status: 'queued' | 'running';
  settings: TrainSettings;
  baseModel: RunManifest['baseModel'];
  backend: string;
  usedPhotos?: string[];
  now?: string;
}): RunManifest {
  const now = o.now ?? new Date().toISOString();
  return {
    schemaVersion: SCHEMA_VERSION,
    id: o.id,
    createdAt: now,
    updatedAt: now,
    status: o.status,
    error: null,
    settings: o.settings,
    baseModel: o.baseModel,
    backend: o.backend,
    images: { used: o.usedPhotos ?? [], rejected: [] },
    step: 0,
    checkpoints: [],
    losses: [],
    samples: [],
    evaluation: null,
    timing: { startedAt: o.status === 'running' ? now : null, msPerStep: null, totalMs: 0 },
  };
}

/**
 * Training progress events, one schema per kind. `trainEventSchema` (their union) is what the
 * trainer emits and the CLI prints as `--json` lines; the contract's `runEventSchema` is the same
 * union with a sample's `/files/` URL added, as the server and IPC send it.
 */
export const trainEventKinds = {
  prepare: z.object({ event: z.literal('prepare'), stage: z.string(), detail: z.string().optional() }),
  step: z.object({
    event: z.literal('step'),
    step: z.number().int(),
    steps: z.number().int(),
    loss: z.number(),
    smoothed: z.number(),
    lr: z.number(),
    u: z.number(),
    its: z.number(),
    eta_s: z.number(),
    memory: z.object({ rssMb: z.number(), tensors: z.number().int(), tensorMb: z.number() }),
  }),
  checkpoint: z.object({ event: z.literal('checkpoint'), step: z.number().int(), dir: z.string() }),
  /** `file` is relative to the run folder (`samples/step-000100-0.png`). */
  sample: z.object({ event: z.literal('sample'), step: z.number().int(), file: z.string(), prompt: z.string() }),
  warning: z.object({ event: z.literal('warning'), message: z.string() }),
  done: z.object({
    event: z.literal('done'),
    status: z.enum(RUN_STATUSES),
    step: z.number().int(),
    error: z.string().nullable(),
  }),
} as const;

export const trainEventSchema = z.discriminatedUnion('event', [
  trainEventKinds.prepare,
  trainEventKinds.step,
  trainEventKinds.checkpoint,
  trainEventKinds.sample,
  trainEventKinds.warning,
  trainEventKinds.done,
]);
export type TrainEvent = z.infer<typeof trainEventSchema>;

function imageSide(name: string) {
  const { sizeMultiple: m, size } = LIMITS.generation;
  return z.number().int().min(m).max(size).multipleOf(m, `${name} must be a multiple of ${m}`);
}

/** How a prompt and a negative prompt of different chunk counts meet in one guidance step. */
export const NEGATIVE_PADDING = ['empty-chunks', 'none'] as const;

export const generateSettingsSchema = z
  .object({
    prompt: text().describe('prompt (any length: 75-token chunks as in A1111; (word:1.2) and [word] weights)'),
    negativePrompt: text().default('').describe('negative prompt'),
    steps: positiveInt(LIMITS.generation.steps).default(25).describe('sampling steps'),
    guidanceScale: z
      .number()
      .min(0)
      .max(LIMITS.generation.guidance)
      .default(7.5)
      .describe('classifier-free guidance scale'),
    scheduler: z.enum(SCHEDULERS).default('dpmpp-2m-karras').describe('sampler'),
    /** -1: a random seed, reported back. */
    seed: z.number().int().min(-1).max(Number.MAX_SAFE_INTEGER).default(-1).describe('seed (-1: a random one)'),
    width: imageSide('width').default(512).describe('image width in pixels'),
    height: imageSide('height').default(512).describe('image height in pixels'),
    count: positiveInt(LIMITS.generation.count).default(1).describe('number of images'),
    clipSkip: z
      .number()
      .int()
      .min(0)
      .max(LIMITS.generation.clipSkip)
      .default(0)
      .describe("diffusers clip_skip (A1111's 'Clip skip' minus 1)"),
    /**
     * When the prompt and the negative prompt have different numbers of 75-token chunks:
     * 'empty-chunks' pads the shorter with the empty prompt's chunks and runs both in one UNet batch
     * (A1111 with its "Pad prompt/negative prompt" option on); 'none' runs them as two UNet passes
     * of their own lengths (A1111's default).
     */
    negativePadding: z
      .enum(NEGATIVE_PADDING)
      .default('empty-chunks')
      .describe(
        "prompt and negative prompt of different 75-token chunk counts: empty-chunks pads the shorter with empty-prompt chunks, one UNet batch (A1111's 'Pad prompt/negative prompt' option); none runs two UNet passes (A1111's default)",
      ),
  })
  .strict();
export type GenerateSettings = z.infer<typeof generateSettingsSchema>;
export type GenerateSettingsInput = z.input<typeof generateSettingsSchema>;

/**
 * `singlora-defaults.json` in a base model's folder: the training and sampling settings that suit
 * that model (engine/io/modelDefaults.ts reads it). The same field names as the API's settings,
 * each optional; the app, the CLI and the demo start from them, and what the user sets wins.
 */
export const MODEL_DEFAULTS_FILE = 'singlora-defaults.json';
export const modelDefaultsSchema = z
  .object({
    training: patchOf(trainSettingsSchema).optional(),
    sampling: patchOf(generateSettingsSchema).omit({ prompt: true }).optional(),
  })
  .strict();
export type ModelDefaults = z.infer<typeof modelDefaultsSchema>;

export const imageSidecarSchema = z.object({
  schemaVersion: z.literal(SCHEMA_VERSION),
  file: z.string(),
  createdAt: z.string(),
  settings: generateSettingsSchema.extend({ seed: z.number().int().min(0) }),
  baseModel: z.object({ path: z.string(), name: z.string(), unetSha256: z.string() }),
  adapters: z.array(z.object({ file: z.string(), sha256: z.string(), strength: z.number() })),
  parameters: z.string(),
  /**
   * What computed the image: the inference engine, its provider (ONNX Runtime execution providers
   * such as 'cpu' or 'webgpu+cpu'; on tfjs the TensorFlow.js backend) and the compute type. Absent in
   * sidecars written before they were recorded (those carried a `backend` field, the process's
   * TensorFlow.js backend, which it still reported for ONNX Runtime images).
   */
  engine: z.enum(ENGINES).optional(),
  provider: z.string().optional(),
  dtype: z.enum(COMPUTE_DTYPES).optional(),
  ms: z.number(),
});
export type ImageSidecar = z.infer<typeof imageSidecarSchema>;

/**
 * The app's compute settings (`<dataDir>/settings.json`, `settings.get` / `settings.set`): what
 * trains and generates for every project. `provider` is ONNX Runtime's; the tfjs engine ignores it.
 */
export const computeSettingsSchema = z
  .object({
    engine: z.enum(ENGINES).default(DEFAULT_ENGINE),
    provider: z.enum(PROVIDERS).default('auto'),
  })
  .strict();
export type ComputeSettings = z.infer<typeof computeSettingsSchema>;

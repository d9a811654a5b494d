/**
 * Text-to-image sampling, as diffusers' `StableDiffusionPipeline.__call__` does it:
 *
 *   1. apply adapters (weight patches on the UNet / text encoder, restored afterwards)
 *   2. encode [negative, prompt] once: [2, 77, C] (classifier-free guidance when scale > 1)
 *   3. per image i: latents ~ N(0, 1) from Rng(seed + i), times the scheduler's init_noise_sigma
 *   4. per timestep t: eps = unet([x, x], t, [uncond, cond]);  eps = eps_u + g (eps_c - eps_u);
 *      x = scheduler.step(eps, t, x)
 *   5. image = clamp(vae.decode(x / scaling_factor) / 2 + 0.5, 0, 1), then round(255 * image)
 *
 * Seeds: noise comes from this project's Philox generator (engine/random.ts), so a seed gives
 * the same image on the same backend, but not the image PyTorch would give for that seed.
 * Latents are NHWC Float32Arrays: the schedulers step on plain arrays, and only the model calls
 * cross into the engine's tensors.
 */
import type { Tensor } from '../backend/tf.ts';
import type { AdapterPlan } from '../adapters/import.ts';
import { Rng } from '../random.ts';
import type { HostArray, InferenceExecutor, TextContext } from './inferenceExecutor.ts';
import { createScheduler, isSchedulerChoice, SCHEDULER_CHOICES, type SchedulerChoice } from '../schedulers/index.ts';
import type { StableDiffusion } from './stableDiffusion.ts';

export interface AdapterUse {
  path: string;
  strength: number;
  /** Apply the tensors that fit even when some of the file's cannot be (default: such a file is an error). */
  allowPartial?: boolean;
}

export interface TextToImageRequest {
  prompt: string;
  negativePrompt?: string;
  steps: number;
  guidanceScale: number;
  scheduler: SchedulerChoice;
  /** DDIM eta (0: deterministic). */
  eta?: number;
  /** Seed of the first image; image i uses seed + i. */
  seed: number;
  width: number;
  height: number;
  count?: number;
  /** diffusers' clip_skip (A1111's "Clip skip" minus one). */
  clipSkip?: number;
  /**
   * Prompt and negative prompt of different chunk counts: 'empty-chunks' (default) pads the shorter
   * with the empty prompt's chunks, one UNet batch of 2; 'none' runs two UNet passes, each at its own
   * length (A1111's default; its "Pad prompt/negative prompt" option gives 'empty-chunks').
   */
  negativePadding?: 'empty-chunks' | 'none';
  adapters?: readonly AdapterUse[];
  /** Initial latents NHWC [1, h, w, c] (row-major) instead of seeded noise (parity tests, img2img later). */
  latents?: Float32Array;
  /** Also return the float image in [0, 1] (parity tests). */
  returnFloat?: boolean;
  /**
   * Precomputed prompt embeddings [2, 77, C] = [negative, prompt] (borrowed, not disposed): the
   * text encoder is then not needed (training previews, with the encoder out of memory).
   */
  promptEmbeds?: Tensor;
}

export interface StepInfo {
  image: number;
  images: number;
  step: number;
  steps: number;
  timestep: number;
}

export interface TextToImageHooks {
  /** Called after every step with the new latents NHWC (borrowed: do not change them). */
  onStep?: (info: StepInfo, latents: Float32Array) => void | Promise<void>;
  /** Called once adapters are planned, with what each one applied. */
  onAdapters?: (reports: AdapterPlan['report'][]) => void;
  /** Called as each image is decoded, before the next one starts. */
  onImage?: (image: GeneratedImage) => void | Promise<void>;
  signal?: AbortSignal;
}

export interface GeneratedImage {
  index: number;
  seed: number;
  width: number;
  height: number;
  /** RGB, row-major, height x width x 3. */
  pixels: Uint8Array;
  /** [height, width, 3] in [0, 1], when `returnFloat`. */
  float?: Float32Array;
}

export class GenerationCancelled extends Error {
  constructor() {
    super('generation cancelled');
    this.name = 'AbortError';
  }
}

/** Checks a request; every message names the field and what is expected. */
export function validateRequest(req: TextToImageRequest, vaeScaleFactor: number): void {
  const fail = (field: string, msg: string) => {
    throw new Error(`invalid generation request: ${field} ${msg}`);
  };
  if (typeof req.prompt !== 'string') fail('prompt', 'must be a string');
  if (!Number.isInteger(req.steps) || req.steps < 1 || req.steps > 1000)
    fail('steps', `must be an integer from 1 to 1000, got ${req.steps}`);
  if (!Number.isFinite(req.guidanceScale) || req.guidanceScale < 0 || req.guidanceScale > 50)
    fail('guidance', `must be a number from 0 to 50, got ${req.guidanceScale}`);
  const mult = Math.max(8, vaeScaleFactor);
  for (const [field, v] of [
    ['width', req.width],
    ['height', req.height],
  ] as const) {
    if (!Number.isInteger(v) || v < mult || v % mult !== 0)
      fail(field, `must be a positive multiple of ${mult}, got ${v}`);
    if (v > 4096) fail(field, `must be at most 4096, got ${v}`);
  }
  if (!Number.isSafeInteger(req.seed) || req.seed < 0) fail('seed', `must be an integer >= 0, got ${req.seed}`);
  const count = req.count ?? 1;
  if (!Number.isInteger(count) || count < 1 || count > 100)
    fail('count', `must be an integer from 1 to 100, got ${count}`);
  if (!isSchedulerChoice(req.scheduler))
    fail('scheduler', `'${req.scheduler}' is unknown; valid: ${SCHEDULER_CHOICES.join(', ')}`);
  if (req.clipSkip !== undefined && (!Number.isInteger(req.clipSkip) || req.clipSkip < 0))
    fail('clipSkip', `must be an integer >= 0, got ${req.clipSkip}`);
  for (const a of req.adapters ?? [])
    if (!Number.isFinite(a.strength)) fail('adapter strength', `must be a number, got ${a.strength} for ${a.path}`);
}

export async function textToImage(
  sd: StableDiffusion,
  req: TextToImageRequest,
  hooks: TextToImageHooks = {},
): Promise<GeneratedImage[]> {
  validateRequest(req, sd.vaeScaleFactor);
  if (req.promptEmbeds && req.adapters?.length)
    throw new Error('invalid generation request: adapters cannot be applied to precomputed prompt embeddings');
  const count = req.count ?? 1;
  const h = req.height / sd.vaeScaleFactor;
  const w = req.width / sd.vaeScaleFactor;
  const c = sd.latentChannels;
  if (req.latents && req.latents.length !== h * w * c) {
    throw new Error(
      `invalid generation request: latents must be [1, ${h}, ${w}, ${c}] (${h * w * c} values) for ${req.width}x${req.height}, got ${req.latents.length} values`,
    );
  }

  const executor = sd.executor;
  const shape = [1, h, w, c]; // NHWC
  let held: HeldContexts | null = null;
  try {
    // 1. Adapters (none with precomputed embeddings: training previews run the adapter being trained).
    // (Not `hooks.onAdapters?.(await sd.setAdapters(...))`: optional chaining skips the argument
    // too, so a caller without the hook got no adapters at all.)
    if (!req.promptEmbeds) {
      const reports = await executor.setAdapters(req.adapters ?? []);
      hooks.onAdapters?.(reports);
    }
    // 2. Prompt embeddings, held by the executor for every step of every image.
    held = await holdPrompts(executor, req);

    const images: GeneratedImage[] = [];
    for (let i = 0; i < count; i++) {
      const seed = req.seed + i;
      const x = await denoise(
        sd,
        req,
        held,
        shape,
        new Rng(seed),
        (s, steps, t, latents) => hooks.onStep?.({ image: i, images: count, step: s, steps, timestep: t }, latents),
        hooks.signal,
      );
      // 5. Decode.
      const decoded = await decodeLatents(sd, x, shape, req.returnFloat);
      const image: GeneratedImage = { index: i, seed, width: req.width, height: req.height, ...decoded };
      images.push(image);
      await hooks.onImage?.(image);
    }
    return images;
  } finally {
    held?.joint?.dispose();
    held?.apart?.uncond.dispose();
    held?.apart?.cond.dispose();
    if (!req.promptEmbeds) executor.clearAdapters();
  }
}

/**
 * The UNet contexts of a request, held by the executor: [uncond, cond] with guidance (or the two
 * apart, with negativePadding 'none' and different lengths), [cond] without.
 */
interface HeldContexts {
  readonly guided: boolean;
  readonly joint: TextContext | null;
  readonly apart: { uncond: TextContext; cond: TextContext } | null;
}

async function holdPrompts(executor: InferenceExecutor, req: TextToImageRequest): Promise<HeldContexts> {
  const guided = req.guidanceScale > 1;
  const joint = (e: HostArray) => ({ guided, joint: executor.holdContext(e), apart: null });
  if (req.promptEmbeds) {
    const e = { data: (await req.promptEmbeds.data()) as Float32Array, dims: req.promptEmbeds.shape };
    return joint(guided ? e : batchItem(e, 1));
  }
  if (guided && req.negativePadding === 'none') {
    const uncond = await executor.encodeText([req.negativePrompt ?? ''], req.clipSkip);
    const cond = await executor.encodeText([req.prompt], req.clipSkip);
    if (uncond.dims[1] === cond.dims[1]) return joint(stack(uncond, cond));
    return { guided, joint: null, apart: { uncond: executor.holdContext(uncond), cond: executor.holdContext(cond) } };
  }
  const prompts = guided ? [req.negativePrompt ?? '', req.prompt] : [req.prompt];
  return joint(await executor.encodeText(prompts, req.clipSkip));
}

/** Steps 3-4 for one image: seeded (or given) latents, then every timestep of the scheduler. */
async function denoise(
  sd: StableDiffusion,
  req: TextToImageRequest,
  held: HeldContexts,
  shape: readonly number[],
  rng: Rng,
  onStep: (step: number, steps: number, t: number, latents: Float32Array) => void | Promise<void>,
  signal: AbortSignal | undefined,
): Promise<Float32Array> {
  const options = req.scheduler === 'ddim' && req.eta ? { eta: req.eta } : {};
  const scheduler = createScheduler(req.scheduler, sd.schedulerConfig, options);
  try {
    scheduler.setTimesteps(req.steps);
    // 3. Initial latents.
    const initSigma = scheduler.initNoiseSigma;
    let x: Float32Array = (req.latents ?? rng.normal(shape)).map((v) => v * initSigma);
    const steps = scheduler.timesteps.length;
    for (let s = 0; s < steps; s++) {
      if (signal?.aborted) throw new GenerationCancelled();
      const t = scheduler.timesteps[s];
      // 4. One denoising step.
      const noise = scheduler.needsNoise ? rng.normal(shape) : undefined;
      const out = await predictGuided(sd.executor, scheduler.scaleModelInput(x, t), shape, t, held);
      x = scheduler.step(held.guided ? guide(out, req.guidanceScale) : out, t, x, noise);
      await onStep(s + 1, steps, t, x);
      await new Promise((r) => setImmediate(r)); // let cancellation and progress through
    }
    return x;
  } finally {
    scheduler.reset();
  }
}

/** ε = ε_u + g (ε_c − ε_u) from the stacked [ε_u, ε_c] (two halves of `out`). */
function guide(out: Float32Array, scale: number): Float32Array {
  const n = out.length / 2;
  const eps = new Float32Array(n);
  for (let i = 0; i < n; i++) eps[i] = out[i] + (out[n + i] - out[i]) * scale;
  return eps;
}

/**
 * The UNet's noise prediction for one step: [uncond, cond] stacked [2, h, w, c] with guidance (one
 * batch over `context`, or two passes over `apart` when the two embeddings differ in length),
 * [1, h, w, c] without. `xIn` is the scaled model input [1, h, w, c].
 */
async function predictGuided(
  executor: InferenceExecutor,
  xIn: Float32Array,
  shape: readonly number[],
  t: number,
  held: HeldContexts,
): Promise<Float32Array> {
  const sample = (batch: number): HostArray => {
    const data = batch === 1 ? xIn : new Float32Array(xIn.length * 2);
    if (batch === 2) data.set(xIn), data.set(xIn, xIn.length); // [2, h, w, c]
    return { data, dims: [batch, ...shape.slice(1)] };
  };
  if (held.apart) {
    const epsU = await executor.predictNoise(sample(1), t, held.apart.uncond);
    const epsC = await executor.predictNoise(sample(1), t, held.apart.cond);
    return stack(epsU, epsC).data;
  }
  return (await executor.predictNoise(sample(held.guided ? 2 : 1), t, held.joint!)).data;
}

/** [a; b] along the batch axis (the same dims after it). */
function stack(a: HostArray, b: HostArray): HostArray {
  const data = new Float32Array(a.data.length + b.data.length);
  data.set(a.data);
  data.set(b.data, a.data.length);
  return { data, dims: [a.dims[0] + b.dims[0], ...a.dims.slice(1)] };
}

/** Batch item i of x [B, ...] as [1, ...]. */
function batchItem(x: HostArray, i: number): HostArray {
  const per = x.data.length / x.dims[0];
  return { data: x.data.slice(i * per, (i + 1) * per), dims: [1, ...x.dims.slice(1)] };
}

/** Latents NHWC [1, h, w, c] (scaled) -> RGB uint8 pixels (and the float image when asked). */
export async function decodeLatents(
  sd: StableDiffusion,
  latents: Float32Array,
  shape: readonly number[],
  returnFloat = false,
): Promise<{ pixels: Uint8Array; float?: Float32Array }> {
  const factor = sd.scalingFactor;
  const decoded = await sd.executor.decodeLatents({ data: latents.map((v) => v / factor), dims: shape }); // [1, H, W, 3]
  // image = clamp(decoded / 2 + 0.5, 0, 1), as float32
  const float = decoded.data.map((v) => Math.min(1, Math.max(0, v / 2 + 0.5)));
  const pixels = new Uint8Array(float.length);
  for (let i = 0; i < float.length; i++) pixels[i] = Math.round(float[i] * 255);
  return returnFloat ? { pixels, float } : { pixels };
}

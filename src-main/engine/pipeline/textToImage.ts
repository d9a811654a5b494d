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
import { tf, type Tensor } from '../backend/tf.ts';
import type { AdapterPlan } from '../adapters/import.ts';
import { Rng } from '../random.ts';
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

  let context: Tensor | null = null;
  /** With negativePadding 'none' and different lengths: the negative and the prompt embeddings apart. */
  let apart: { uncond: Tensor; cond: Tensor } | null = null;
  try {
    // 1. Adapters (none with precomputed embeddings: training previews run the adapter being trained).
    // (Not `hooks.onAdapters?.(await sd.setAdapters(...))`: optional chaining skips the argument
    // too, so a caller without the hook got no adapters at all.)
    if (!req.promptEmbeds) {
      const reports = await sd.setAdapters(req.adapters ?? []);
      hooks.onAdapters?.(reports);
    }

    // 2. Prompt embeddings: [uncond, cond] with guidance, [cond] without.
    const cfg = req.guidanceScale > 1;
    if (req.promptEmbeds) {
      const e = req.promptEmbeds;
      context = cfg ? tf.clone(e) : tf.tidy(() => e.slice([1, 0, 0], [1, e.shape[1] as number, e.shape[2] as number]));
    } else if (cfg && req.negativePadding === 'none') {
      const uncond = await sd.encodeText([req.negativePrompt ?? ''], req.clipSkip);
      const cond = await sd.encodeText([req.prompt], req.clipSkip);
      if (uncond.shape[1] === cond.shape[1]) {
        context = tf.concat([uncond, cond], 0);
        tf.dispose([uncond, cond]);
      } else apart = { uncond, cond };
    } else {
      context = await sd.encodeText(cfg ? [req.negativePrompt ?? '', req.prompt] : [req.prompt], req.clipSkip);
    }

    const images: GeneratedImage[] = [];
    for (let i = 0; i < count; i++) {
      const seed = req.seed + i;
      const rng = new Rng(seed);
      const scheduler = createScheduler(
        req.scheduler,
        sd.schedulerConfig,
        req.scheduler === 'ddim' && req.eta ? { eta: req.eta } : {},
      );
      scheduler.setTimesteps(req.steps);
      // 3. Initial latents.
      const initSigma = scheduler.initNoiseSigma;
      let x: Float32Array = (req.latents ?? rng.normal([1, h, w, c])).map((v) => v * initSigma);
      try {
        const steps = scheduler.timesteps.length;
        for (let s = 0; s < steps; s++) {
          if (hooks.signal?.aborted) throw new GenerationCancelled();
          const t = scheduler.timesteps[s];
          // 4. One denoising step.
          const noise = scheduler.needsNoise ? rng.normal([1, h, w, c]) : undefined;
          const xIn = scheduler.scaleModelInput(x, t);
          const out = await predictGuided(sd, xIn, [1, h, w, c], t, cfg, context, apart);
          x = scheduler.step(cfg ? guide(out, req.guidanceScale) : out, t, x, noise);
          await hooks.onStep?.({ image: i, images: count, step: s + 1, steps, timestep: t }, x);
          await new Promise((r) => setImmediate(r)); // let cancellation and progress through
        }
        scheduler.reset();
        // 5. Decode.
        const image: GeneratedImage = {
          index: i,
          seed,
          width: req.width,
          height: req.height,
          ...(await decodeLatents(sd, x, [1, h, w, c], req.returnFloat)),
        };
        images.push(image);
        await hooks.onImage?.(image);
      } finally {
        scheduler.reset();
      }
    }
    return images;
  } finally {
    context?.dispose();
    if (apart) tf.dispose([apart.uncond, apart.cond]);
    if (!req.promptEmbeds) sd.clearAdapters();
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
  sd: StableDiffusion,
  xIn: Float32Array,
  shape: readonly number[],
  t: number,
  cfg: boolean,
  context: Tensor | null,
  apart: { uncond: Tensor; cond: Tensor } | null,
): Promise<Float32Array> {
  const run = async (batch: number, ctx: Tensor): Promise<Float32Array> => {
    const data = batch === 1 ? xIn : new Float32Array(xIn.length * 2);
    if (batch === 2) data.set(xIn), data.set(xIn, xIn.length); // [2, h, w, c]
    const sample = tf.tensor(data, [batch, ...shape.slice(1)], 'float32');
    try {
      const out = await sd.predictNoise(sample, t, ctx);
      try {
        return (await out.data()) as Float32Array;
      } finally {
        out.dispose();
      }
    } finally {
      sample.dispose();
    }
  };
  if (apart) {
    const epsU = await run(1, apart.uncond);
    const epsC = await run(1, apart.cond);
    const out = new Float32Array(epsU.length * 2);
    out.set(epsU);
    out.set(epsC, epsU.length);
    return out;
  }
  return run(cfg ? 2 : 1, context!);
}

/** Latents NHWC [1, h, w, c] (scaled) -> RGB uint8 pixels (and the float image when asked). */
export async function decodeLatents(
  sd: StableDiffusion,
  latents: Float32Array,
  shape: readonly number[],
  returnFloat = false,
): Promise<{ pixels: Uint8Array; float?: Float32Array }> {
  const factor = sd.scalingFactor;
  const unscaled = tf.tensor(
    latents.map((v) => v / factor),
    [...shape],
    'float32',
  );
  const decoded = await sd.decodeLatents(unscaled); // [1, H, W, 3]
  unscaled.dispose();
  const image = tf.tidy(() => tf.clipByValue(tf.add(tf.div(decoded, 2), 0.5), 0, 1));
  decoded.dispose();
  try {
    const float = (await image.data()) as Float32Array;
    const pixels = new Uint8Array(float.length);
    for (let i = 0; i < float.length; i++) pixels[i] = Math.round(float[i] * 255);
    return returnFloat ? { pixels, float } : { pixels };
  } finally {
    image.dispose();
  }
}

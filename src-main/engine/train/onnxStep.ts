/**
 * One optimizer step of adapter training on ONNX Runtime: the same step as `trainStep` (step.ts,
 * whose table and numbered steps this follows), with the forward and backward passes run by one
 * emitted graph (onnx/trainStepGraph.ts) and everything else on plain Float32Arrays: the noising,
 * the loss weights, the chain from the side factors to the adapter tensors, clipping and AdamW.
 *
 * | code            | DreamBooth / DDPM / SingLoRA                 | shape              |
 * | --------------- | -------------------------------------------- | ------------------ |
 * | `latents`       | z_0                                          | [n, h, w, c] NHWC  |
 * | `noise`         | epsilon                                      | [n, h, w, c]       |
 * | `timesteps`     | t_i                                          | n integers         |
 * | `context`       | c                                            | [n, tokens, d]     |
 * | `instances`     | B (the rest are class images)                |                    |
 * | `s`             | (alpha / r) * u(step) (SingLoRA), alpha / r  |                    |
 * | `A`             | SingLoRA's A                                 | [max(out, in), r]  |
 * | `loraA`, `loraB`| LoRA's A (down), B (up)                      | [r, in], [out, r]  |
 *
 * For each micro-batch k:
 *   1. z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, target = eps, v or z_0    (float32, as diffusers)
 *   2. c_i = w(t_i) / (B E) for an instance, lambda w(t_i) / ((n - B) E) for a class image
 *      (E = h w c elements; w: min-SNR weight or 1), so L_k = sum_i c_i sum (pred_i - target_i)^2
 *   3. the graph, at loss scale S (lossScale.ts; 1 in float32): L_k and dL_k/d down, dL_k/d up for
 *      every side path (backward seeded with S dL/dpred, divided by S), where
 *        SingLoRA  down = A[:in],     up = s A[:out]^T
 *        LoRA      down = loraA^T,    up = s loraB^T
 *      and back to the adapter tensors:
 *        SingLoRA  dA[:in] += d down, dA[:out] += s (d up)^T     (the two row slices overlap)
 *        LoRA      d loraA = (d down)^T,  d loraB = s (d up)^T
 * Then, over the K micro-batches:
 *   4. g = (1/K) sum_k g_k,  L = (1/K) sum_k L_k
 *   5. ||g||; g <- g * min(1, maxNorm / (||g|| + 1e-6))                 (torch clip_grad_norm_)
 *   6. AdamW (`AdamWArrays`, the math of adamw.ts)
 * A non-finite loss skips 5 and 6 and leaves the adapters untouched. Finite loss, non-finite
 * gradients at a dynamic scale (float16 overflow): the scale is halved and 3-4 run again; at a
 * fixed scale (float32) they skip 5 and 6 as well.
 */
import type { SessionTensor } from '../backend/onnxRuntime.ts';
import type { OnnxSession } from '../backend/onnxRuntime.ts';
import type { AdapterMethod } from '../adapters/adapterLinear.ts';
import type { AdapterSet } from '../adapters/adapterSet.ts';
import { ramp } from '../adapters/ramp.ts';
import { sidePathInputs } from '../onnx/onnxOps.ts';
import { sideGradOutputs, type StepShape } from '../onnx/trainStepGraph.ts';
import type { DDPMScheduler } from '../schedulers/ddpmScheduler.ts';
import { f32, sqrt32 } from '../schedulers/float32.ts';
import type { AdamWConfig, AdamWState } from './adamw.ts';
import { DEFAULT_ADAMW } from './adamw.ts';
import { allFinite, LossScale } from './lossScale.ts';
import { lossWeight } from './step.ts';

/** A float32 row-major array with its dims. */
export interface HostTensor {
  readonly data: Float32Array;
  readonly dims: readonly number[];
}

/** One micro-batch, as arrays (NHWC latents, as the tfjs step takes them). */
export interface OnnxMicroBatch {
  readonly latents: HostTensor;
  readonly noise: HostTensor;
  readonly timesteps: readonly number[];
  readonly context: HostTensor;
  /** The first `instances` samples are the subject's; the rest class images. Default: all n. */
  readonly instances?: number;
}

/** The step graph's sizes for a micro-batch (one graph per shape, see trainStepGraph.ts). */
export function stepShapeOf(b: OnnxMicroBatch): StepShape {
  const [batch, height, width] = b.latents.dims;
  return { batch, height, width, tokens: b.context.dims[1] };
}

/** One adapted Linear: where it is, its shape and hyper-parameters. */
export interface AdapterLayerSpec {
  readonly path: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
}

export interface AdapterHyperSpec {
  readonly method: AdapterMethod;
  readonly rank: number;
  readonly alpha: number;
  /** SingLoRA's ramp length T (0: no ramp); LoRA ignores it. */
  readonly rampSteps: number;
}

/**
 * The adapter tensors of every layer as Float32Arrays, in `AdapterSet.variables()` order
 * (SingLoRA: `A` per layer; LoRA: `lora_A`, `lora_B` per layer), PyTorch layout.
 */
export class AdapterArrays {
  constructor(
    readonly hyper: AdapterHyperSpec,
    readonly layers: readonly AdapterLayerSpec[],
    readonly params: Float32Array[],
  ) {
    const per = hyper.method === 'singlora' ? 1 : 2;
    if (params.length !== layers.length * per)
      throw new Error(`AdapterArrays: ${params.length} tensors for ${layers.length} ${hyper.method} layers`);
    layers.forEach((l, i) => {
      const r = hyper.rank;
      const want =
        hyper.method === 'singlora'
          ? [Math.max(l.inFeatures, l.outFeatures) * r]
          : [r * l.inFeatures, l.outFeatures * r];
      want.forEach((n, j) => {
        if (params[i * per + j].length !== n)
          throw new Error(
            `AdapterArrays: ${l.path} tensor ${j} has ${params[i * per + j].length} values, expected ${n} (${hyper.method}, rank ${r})`,
          );
      });
    });
  }

  /** s: (alpha / r) * u(step) for SingLoRA, alpha / r for LoRA (strength 1, as in training). */
  scale(step: number): number {
    const { method, alpha, rank, rampSteps } = this.hyper;
    return (alpha / rank) * (method === 'singlora' ? ramp(step, rampSteps) : 1);
  }

  /** The side-path feeds at `step`: down [in, r] and up [r, out] per layer (step 3). */
  sideFeeds(step: number): Record<string, SessionTensor> {
    const s = this.scale(step);
    const r = this.hyper.rank;
    const feeds: Record<string, SessionTensor> = {};
    this.layers.forEach((l, i) => {
      const { inFeatures: nIn, outFeatures: nOut } = l;
      let down: Float32Array;
      let up: Float32Array;
      if (this.hyper.method === 'singlora') {
        const A = this.params[i]; // [rows, r]
        down = A.slice(0, nIn * r); // A[:in], [in, r]
        up = transposeScaled(A, nOut, r, s); // s A[:out]^T, [r, out]
      } else {
        down = transposeScaled(this.params[2 * i], r, nIn, 1); // loraA^T, [in, r]
        up = transposeScaled(this.params[2 * i + 1], nOut, r, s); // s loraB^T, [r, out]
      }
      const names = sidePathInputs(l.path);
      feeds[names.down] = { type: 'float32', data: down, dims: [nIn, r] };
      feeds[names.up] = { type: 'float32', data: up, dims: [r, nOut] };
    });
    return feeds;
  }

  /** The side factors' gradients (graph outputs) -> one gradient per adapter tensor (step 3). */
  chain(step: number, out: Readonly<Record<string, SessionTensor>>): Float32Array[] {
    const s = this.scale(step);
    const r = this.hyper.rank;
    const grads: Float32Array[] = [];
    this.layers.forEach((l) => {
      const { inFeatures: nIn, outFeatures: nOut } = l;
      const names = sideGradOutputs(l.path);
      const dDown = floatOutput(out, names.down, nIn * r); // [in, r]
      const dUp = floatOutput(out, names.up, r * nOut); // [r, out]
      if (this.hyper.method === 'singlora') {
        const dA = new Float32Array(Math.max(nIn, nOut) * r);
        dA.set(dDown); // rows :in
        for (let o = 0; o < nOut; o++) for (let k = 0; k < r; k++) dA[o * r + k] += s * dUp[k * nOut + o]; // rows :out
        grads.push(dA);
      } else {
        grads.push(transposeScaled(dDown, nIn, r, 1)); // [r, in]
        grads.push(transposeScaled(dUp, r, nOut, s)); // [out, r]
      }
    });
    return grads;
  }
}

/**
 * The tensors of an injected AdapterSet (its initial values, or a checkpoint's) as arrays; the
 * set stays the owner of the adapter file format (`saveAdapter`) and of previews.
 */
export async function adapterArraysOf(set: AdapterSet): Promise<AdapterArrays> {
  const { method, rank, alpha, rampSteps } = set.spec;
  const params: Float32Array[] = [];
  for (const v of set.variables()) params.push(((await v.data()) as Float32Array).slice());
  return new AdapterArrays(
    { method, rank, alpha, rampSteps },
    set.adapters.map((a) => ({ path: a.path, inFeatures: a.layer.inFeatures, outFeatures: a.layer.outFeatures })),
    params,
  );
}

/** The arrays keyed as `set.namedTensors()` (for `AdapterSet.assign`): the same order as `variables()`. */
export function adapterValuesFor(arrays: AdapterArrays, set: AdapterSet): Map<string, Float32Array> {
  const names = set.namedTensors().map(([n]) => n);
  if (names.length !== arrays.params.length)
    throw new Error(`adapterValuesFor: ${arrays.params.length} arrays for ${names.length} adapter tensors`);
  return new Map(names.map((n, i) => [n, arrays.params[i]]));
}

/** s * X^T of a row-major [rows, cols] matrix: [cols, rows]. */
function transposeScaled(x: Float32Array, rows: number, cols: number, s: number): Float32Array {
  const t = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = s * x[i * cols + j];
  return t;
}

function floatOutput(out: Readonly<Record<string, SessionTensor>>, name: string, size: number): Float32Array {
  const t = out[name];
  if (t?.type !== 'float32' || t.data.length !== size)
    throw new Error(
      `training step graph: output '${name}' is ${t ? `${t.type} [${t.dims}]` : 'missing'}; expected ${size} float32 values`,
    );
  return t.data;
}

/**
 * Steps 1 and 2 for one micro-batch: the graph's data feeds (z_t, t, c, target, loss weights).
 * Float32 as diffusers computes add_noise: each product rounded, then the sum.
 */
export function dataFeeds(
  scheduler: DDPMScheduler,
  b: OnnxMicroBatch,
  o: { readonly minSnrGamma: number | null; readonly priorLossWeight: number },
): Record<string, SessionTensor> {
  const n = b.timesteps.length;
  const B = b.instances ?? n;
  const [, h, w, c] = b.latents.dims;
  const E = h * w * c;
  if (b.latents.dims.length !== 4 || b.latents.dims[0] !== n || b.noise.data.length !== b.latents.data.length)
    throw new Error(
      `onnx training step: ${n} timesteps for latents [${b.latents.dims}] and noise [${b.noise.dims}]; give one timestep per sample, latents and noise of one shape`,
    );
  if (b.context.dims[0] !== n)
    throw new Error(`onnx training step: context [${b.context.dims}] must have one row per sample (${n})`);
  if (!(B >= 1 && B <= n)) throw new Error(`onnx training step: instances must be in [1, ${n}], got ${B}`);
  const T = scheduler.alphasCumprod.length;
  const vPrediction = scheduler.config.predictionType === 'v_prediction';
  const sample = new Float32Array(b.latents.data.length);
  const target = new Float32Array(b.latents.data.length);
  const weights = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const t = b.timesteps[i];
    if (!Number.isInteger(t) || t < 0 || t >= T)
      throw new Error(`onnx training step: timestep ${t} (sample ${i}) is not an integer in [0, ${T})`);
    const abar = scheduler.alphasCumprod[t];
    const a = sqrt32(abar);
    const s = sqrt32(f32(1 - abar));
    for (let j = i * E; j < (i + 1) * E; j++) {
      const x0 = b.latents.data[j];
      const eps = b.noise.data[j];
      sample[j] = f32(a * x0) + f32(s * eps);
      target[j] = vPrediction ? f32(a * eps) - f32(s * x0) : scheduler.config.predictionType === 'sample' ? x0 : eps;
    }
    const wt = lossWeight(abar, o.minSnrGamma, vPrediction);
    weights[i] = i < B ? wt / (B * E) : (o.priorLossWeight * wt) / ((n - B) * E);
  }
  return {
    sample: { type: 'float32', data: sample, dims: b.latents.dims },
    timestep: { type: 'float32', data: Float32Array.from(b.timesteps), dims: [n] },
    encoder_hidden_states: { type: 'float32', data: b.context.data, dims: b.context.dims },
    target: { type: 'float32', data: target, dims: b.latents.dims },
    loss_weight: { type: 'float32', data: weights, dims: [n] },
  };
}

/**
 * AdamW on Float32Arrays, the math of adamw.ts (torch.optim.AdamW, decoupled weight decay), with
 * the same checkpointable state. Each element is computed in double and stored in float32.
 */
export class AdamWArrays {
  private m: Float32Array[];
  private v: Float32Array[];
  private t = 0;

  constructor(
    readonly params: readonly Float32Array[],
    readonly config: AdamWConfig = DEFAULT_ADAMW,
  ) {
    this.m = params.map((p) => new Float32Array(p.length));
    this.v = params.map((p) => new Float32Array(p.length));
  }

  get step(): number {
    return this.t;
  }

  /** One update with `grads` (one per param, same order) at learning rate `lr`; params change in place. */
  apply(grads: readonly Float32Array[], lr: number): void {
    if (grads.length !== this.params.length)
      throw new Error(`AdamWArrays.apply: ${grads.length} gradients for ${this.params.length} parameters`);
    this.t += 1;
    const { beta1, beta2, eps, weightDecay } = this.config;
    const bc1 = 1 - beta1 ** this.t;
    const bc2 = 1 - beta2 ** this.t;
    const decay = 1 - lr * weightDecay;
    this.params.forEach((p, i) => {
      const g = grads[i];
      const m = this.m[i];
      const v = this.v[i];
      for (let j = 0; j < p.length; j++) {
        m[j] = beta1 * m[j] + (1 - beta1) * g[j];
        v[j] = beta2 * v[j] + (1 - beta2) * g[j] * g[j];
        p[j] = p[j] * decay - (lr * (m[j] / bc1)) / (Math.sqrt(v[j] / bc2) + eps);
      }
    });
  }

  state(): AdamWState {
    return { step: this.t, m: this.m.map((x) => x.slice()), v: this.v.map((x) => x.slice()) };
  }

  load(state: AdamWState): void {
    if (state.m.length !== this.params.length || state.v.length !== this.params.length)
      throw new Error(
        `AdamWArrays.load: state has ${state.m.length} moments for ${this.params.length} parameters (different adapter?)`,
      );
    state.m.forEach((m, i) => {
      if (m.length !== this.params[i].length || state.v[i].length !== this.params[i].length)
        throw new Error(
          `AdamWArrays.load: moment ${i} has ${m.length} values for a parameter of ${this.params[i].length}`,
        );
    });
    this.t = state.step;
    this.m = state.m.map((x) => Float32Array.from(x));
    this.v = state.v.map((x) => Float32Array.from(x));
  }
}

/** sqrt(sum_i ||g_i||^2), in double. */
export function globalNormArrays(grads: readonly Float32Array[]): number {
  let sum = 0;
  for (const g of grads) for (let j = 0; j < g.length; j++) sum += g[j] * g[j];
  return Math.sqrt(sum);
}

/**
 * Steps 5 and 6: clips `grads` in place to a global norm of `maxGradNorm` (0: no clipping), as
 * torch's clip_grad_norm_ (g * min(1, maxNorm / (||g|| + 1e-6))), and takes one AdamW step.
 * Returns ||g|| before clipping.
 */
export function applyGradientArrays(
  optimizer: AdamWArrays,
  grads: readonly Float32Array[],
  o: { readonly lr: number; readonly maxGradNorm: number },
): number {
  const norm = globalNormArrays(grads);
  if (o.maxGradNorm > 0) {
    const factor = Math.min(1, o.maxGradNorm / (norm + 1e-6));
    if (factor < 1) for (const g of grads) for (let j = 0; j < g.length; j++) g[j] *= factor;
  }
  optimizer.apply(grads, o.lr);
  return norm;
}

export interface OnnxStepOptions {
  readonly step: number;
  readonly lr: number;
  readonly maxGradNorm: number;
  readonly minSnrGamma: number | null;
  readonly priorLossWeight: number;
  /** Also return g (step 4, before clipping), one per adapter tensor. */
  readonly returnGrads?: boolean;
}

export interface OnnxStepResult {
  readonly loss: number;
  /** ||g|| before clipping; NaN when the step was not applied. */
  readonly gradNorm: number;
  readonly applied: boolean;
  readonly grads?: Float32Array[];
}

/** What the step runs: the session over the step's graph, the scheduler, the adapters and AdamW. */
export interface OnnxStepModel {
  readonly session: OnnxSession;
  readonly scheduler: DDPMScheduler;
  readonly adapters: AdapterArrays;
  readonly optimizer: AdamWArrays;
  /** The loss scale (float16 graphs: `LossScale.dynamic()`); absent: 1, as `LossScale.fixed()`. */
  readonly lossScale?: LossScale;
}

/** The loss of one micro-batch (the graph's first output), without the backward outputs. */
export async function onnxLoss(
  model: Pick<OnnxStepModel, 'session' | 'scheduler' | 'adapters'>,
  batch: OnnxMicroBatch,
  o: Pick<OnnxStepOptions, 'step' | 'minSnrGamma' | 'priorLossWeight'>,
): Promise<number> {
  const feeds = { ...dataFeeds(model.scheduler, batch, o), ...model.adapters.sideFeeds(o.step) };
  const out = await model.session.run(feeds, ['loss']);
  return floatOutput(out, 'loss', 1)[0];
}

/** One optimizer step over `batches` (gradient accumulation), updating the adapters in place. */
export async function onnxTrainStep(
  model: OnnxStepModel,
  batches: readonly OnnxMicroBatch[],
  o: OnnxStepOptions,
): Promise<OnnxStepResult> {
  if (!batches.length) throw new Error('onnxTrainStep: no micro-batch given');
  const { optimizer } = model;
  const scale = model.lossScale ?? LossScale.fixed();
  for (;;) {
    const { loss, grads } = await accumulate(model, batches, o, scale.scale);
    if (!Number.isFinite(loss)) return { loss, gradNorm: NaN, applied: false };
    if (!allFinite(grads)) {
      // Overflow at this scale: halve it and run the micro-batches again; at a fixed scale
      // (float32) or the floor, the step is not applied.
      if (scale.overflowed()) continue;
      return { loss, gradNorm: NaN, applied: false };
    }
    scale.applied();
    // 4. The mean gradient.
    const K = batches.length;
    if (K > 1) for (const g of grads) for (let j = 0; j < g.length; j++) g[j] /= K;
    const returned = o.returnGrads ? grads.map((g) => g.slice()) : undefined;
    const gradNorm = applyGradientArrays(optimizer, grads, o);
    return { loss, gradNorm, applied: true, grads: returned };
  }
}

/** Steps 1-3 over every micro-batch at loss scale `scale`: the mean loss and the summed gradients. */
async function accumulate(
  model: OnnxStepModel,
  batches: readonly OnnxMicroBatch[],
  o: OnnxStepOptions,
  scale: number,
): Promise<{ loss: number; grads: Float32Array[] }> {
  const { session, scheduler, adapters } = model;
  const side = adapters.sideFeeds(o.step);
  const lossScale: SessionTensor = { type: 'float32', data: Float32Array.of(scale), dims: [] };
  let lossSum = 0;
  let acc: Float32Array[] | null = null;
  for (const batch of batches) {
    const out = await session.run({ ...dataFeeds(scheduler, batch, o), loss_scale: lossScale, ...side });
    lossSum += floatOutput(out, 'loss', 1)[0];
    const grads = adapters.chain(o.step, out);
    if (!acc) acc = grads;
    else acc.forEach((a, i) => addInto(a, grads[i]));
  }
  return { loss: lossSum / batches.length, grads: acc! };
}

function addInto(a: Float32Array, b: Float32Array): void {
  for (let j = 0; j < a.length; j++) a[j] += b[j];
}

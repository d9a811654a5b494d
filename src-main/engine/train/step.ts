/**
 * One optimizer step of adapter training: the step `singlora train` repeats, `bench train` times
 * and the training-step parity test checks against PyTorch. Everything random (which images,
 * latent samples, noise, timesteps) is drawn by the caller and passed in, so the step itself is
 * deterministic.
 *
 * | code            | DreamBooth / DDPM                      | shape            |
 * | --------------- | -------------------------------------- | ---------------- |
 * | `latents`       | z_0 (scaled VAE latents)               | [n, h, w, c]     |
 * | `noise`         | epsilon                                | [n, h, w, c]     |
 * | `timesteps`     | t_i in {0, ..., T-1}                   | n integers       |
 * | `context`       | c (text encoder states)                | [n, tokens, d]   |
 * | `instances`     | B (the rest are class images)          |                  |
 * | `step`          | the 0-based optimizer step t: u(t)     |                  |
 *
 * For each micro-batch k:
 *   1. z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps                (scheduler.addNoise)
 *   2. L_k = mean_i<B w(t_i) mean (unet(z_t, t, c) - target)^2      target: eps, v or z_0
 *            (+ lambda * the same mean over the class images)       w: min-SNR weight, or 1
 *   3. g_k = dL_k / dtheta over the adapter tensors theta
 * Then, over the K micro-batches:
 *   4. g = (1/K) sum_k g_k,  L = (1/K) sum_k L_k
 *   5. ||g|| (global L2 norm); g <- g * min(1, maxNorm / (||g|| + 1e-6))  (torch clip_grad_norm_)
 *   6. AdamW step at learning rate `lr`                              (adamw.ts)
 * A non-finite loss skips 5 and 6 and leaves the adapters untouched.
 */
import { tf, type Tensor, type Variable } from '../backend/tf.ts';
import type { AdapterSet } from '../adapters/adapterSet.ts';
import type { BlockRunner, UNet2DConditionModel } from '../models/unet2dCondition.ts';
import type { DDPMScheduler } from '../schedulers/ddpmScheduler.ts';
import { type AdamW, clipByGlobalNorm, globalNorm } from './adamw.ts';
import { blockOf, checkpointingRunner } from './gradientCheckpointing.ts';
import { withAttentionMode, type AttentionMode } from '../models/ops/tfAttention.ts';

/** One micro-batch. The caller owns the tensors (the step neither keeps nor frees them). */
export interface MicroBatch {
  /** z_0, [n, h, w, c]. */
  readonly latents: Tensor;
  /** eps, [n, h, w, c]. */
  readonly noise: Tensor;
  /** One integer DDPM timestep per sample. */
  readonly timesteps: readonly number[];
  /**
   * Text states, [n, tokens, d]; or a function computing them inside the gradient, so that
   * full-parameter training (train/fullTrain.ts) also trains the text encoder.
   */
  readonly context: Tensor | (() => Tensor);
  /** The first `instances` samples are the subject's; the rest class images. Default: all n. */
  readonly instances?: number;
}

/** What the step trains and with what. `optimizer.params` are the adapter tensors, in order. */
export interface TrainStepModel {
  readonly unet: UNet2DConditionModel;
  readonly scheduler: DDPMScheduler;
  /** The adapters being trained (their u(t) reads the step); absent in full-parameter training. */
  readonly adapters?: AdapterSet;
  readonly optimizer: AdamW;
  /** Gradient checkpointing (see `adapterBlockRunner`); undefined runs blocks directly. */
  readonly runBlock?: BlockRunner;
}

export interface TrainStepOptions {
  /** The 0-based optimizer step being taken (SingLoRA's u(t) reads it). */
  readonly step: number;
  readonly lr: number;
  /** Clip the global gradient norm to this; 0 turns clipping off. */
  readonly maxGradNorm: number;
  readonly minSnrGamma: number | null;
  /** lambda, the weight of the class-image loss (prior preservation). */
  readonly priorLossWeight: number;
  /** Also return g (step 4, before clipping) as arrays, one per `optimizer.params`. */
  readonly returnGrads?: boolean;
  /** Attention in the UNet: memory-efficient (default: its backward recomputes scores slice by slice) or plain. */
  readonly attention?: AttentionMode;
}

export interface TrainStepResult {
  /** L, the mean of the micro-batch losses. */
  readonly loss: number;
  /** ||g|| before clipping; NaN when the step was not applied. */
  readonly gradNorm: number;
  /** False when the loss was not finite: no update was made. */
  readonly applied: boolean;
  readonly grads?: Float32Array[];
}

/**
 * One optimizer step over `batches` (gradient accumulation: one micro-batch each). Updates the
 * adapter tensors and the optimizer's moments in place; returns only numbers, so every tensor it
 * creates is freed before it returns.
 */
export async function trainStep(
  model: TrainStepModel,
  batches: readonly MicroBatch[],
  o: TrainStepOptions,
): Promise<TrainStepResult> {
  if (!batches.length) throw new Error('trainStep: no micro-batch given');
  const { unet, scheduler, adapters, optimizer, runBlock } = model;
  const vars = optimizer.params as Variable[];
  adapters?.setStep(o.step);

  let lossSum = 0;
  let acc: Tensor[] | null = null;
  for (const batch of batches) {
    const { loss, grads } = microBatchGrads(unet, scheduler, vars, batch, o, runBlock);
    lossSum += (await loss.data())[0];
    loss.dispose();
    if (!acc) acc = grads;
    else {
      const next: Tensor[] = acc.map((a, i) => tf.add(a, grads[i]));
      tf.dispose([...acc, ...grads]);
      acc = next;
    }
  }
  const loss = lossSum / batches.length;
  if (!Number.isFinite(loss)) {
    tf.dispose(acc!);
    return { loss, gradNorm: NaN, applied: false };
  }

  // 4. The mean gradient.
  const K = batches.length;
  const grads = K > 1 ? tf.tidy(() => acc!.map((g) => tf.div(g, K))) : acc!;
  if (K > 1) tf.dispose(acc!);
  const returned = o.returnGrads
    ? await Promise.all(grads.map(async (g) => (await g.data()) as Float32Array))
    : undefined;
  try {
    const gradNorm = await applyGradients(optimizer, grads, o);
    return { loss, gradNorm, applied: true, grads: returned };
  } finally {
    tf.dispose(grads);
  }
}

/**
 * Steps 5 and 6: clips `grads` (one per `optimizer.params`, not consumed) to a global norm of
 * `maxGradNorm` (0: no clipping) and takes one AdamW step at `lr`. Returns ||g|| before clipping.
 */
export async function applyGradients(
  optimizer: AdamW,
  grads: readonly Tensor[],
  o: { readonly lr: number; readonly maxGradNorm: number },
): Promise<number> {
  let norm: Tensor;
  let update: readonly Tensor[] = grads;
  if (o.maxGradNorm > 0) {
    const clipped = clipByGlobalNorm(grads, o.maxGradNorm);
    norm = clipped.norm;
    update = clipped.grads;
  } else {
    norm = globalNorm(grads);
  }
  try {
    const gradNorm = (await norm.data())[0];
    optimizer.apply(update, o.lr);
    return gradNorm;
  } finally {
    norm.dispose();
    if (update !== grads) tf.dispose(update as Tensor[]);
  }
}

/** Steps 1-3 for one micro-batch: the loss and dL/dvars. The caller owns both. */
function microBatchGrads(
  unet: UNet2DConditionModel,
  scheduler: DDPMScheduler,
  vars: Variable[],
  b: MicroBatch,
  o: TrainStepOptions,
  runBlock: BlockRunner | undefined,
): { loss: Tensor; grads: Tensor[] } {
  const n = b.timesteps.length;
  const B = b.instances ?? n;
  const ctxShape = typeof b.context === 'function' ? null : b.context.shape;
  if (b.latents.shape[0] !== n || b.noise.shape[0] !== n || (ctxShape && ctxShape[0] !== n)) {
    throw new Error(
      `trainStep: ${n} timesteps for latents [${b.latents.shape}], noise [${b.noise.shape}] and context [${ctxShape ?? 'computed'}]; give one timestep per sample`,
    );
  }
  if (!(B >= 1 && B <= n)) throw new Error(`trainStep: instances must be in [1, ${n}], got ${B}`);
  const vPrediction = scheduler.config.predictionType === 'v_prediction';
  return tf.tidy(() => {
    const zt = scheduler.addNoise(b.latents, b.noise, b.timesteps); // [n, h, w, c]
    const target = scheduler.target(b.latents, b.noise, b.timesteps);
    const weights =
      o.minSnrGamma === null
        ? null
        : tf.tensor1d(b.timesteps.map((t) => lossWeight(scheduler.alphasCumprod[t], o.minSnrGamma, vPrediction)));
    const { value, grads } = withAttentionMode(o.attention ?? 'memory-efficient', () =>
      tf.variableGrads(() => {
        const context = typeof b.context === 'function' ? b.context() : b.context;
        const pred = unet.forward(zt, b.timesteps, context, { runBlock });
        const mse = tf.mean(tf.squaredDifference(pred, target), [1, 2, 3]); // [n]
        const perSample = weights ? tf.mul(mse, weights) : mse;
        const inst = tf.mean(B < n ? perSample.slice([0], [B]) : perSample);
        return (
          B < n ? tf.add(inst, tf.mul(tf.mean(perSample.slice([B], [n - B])), o.priorLossWeight)) : inst
        ) as tf.Scalar;
      }, vars),
    );
    return { loss: value, grads: vars.map((v) => grads[v.name]) };
  });
}

/**
 * The min-SNR-gamma weight (Hang et al., 2023): min(SNR, gamma) / SNR for epsilon targets,
 * min(SNR, gamma) / (SNR + 1) for v-prediction; 1 when gamma is null.
 */
export function lossWeight(alphaBar: number, gamma: number | null, vPrediction: boolean): number {
  if (gamma === null) return 1;
  const snr = alphaBar / (1 - alphaBar);
  return Math.min(snr, gamma) / (vPrediction ? snr + 1 : snr);
}

/** Gradient checkpointing per UNet block, recomputing each block's adapter tensors. */
export function adapterBlockRunner(adapters: AdapterSet): BlockRunner {
  const byBlock = new Map<string, Variable[]>();
  for (const a of adapters.adapters)
    byBlock.set(blockOf(a.path), [...(byBlock.get(blockOf(a.path)) ?? []), ...a.layer.variables()]);
  return checkpointingRunner((name) => byBlock.get(name) ?? []);
}

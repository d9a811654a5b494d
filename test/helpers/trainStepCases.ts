/**
 * The training-step cases (fixtures README, "Training-step cases"): their metadata, keys, layouts
 * and the bounds both training-step parity tests (TensorFlow.js and ONNX Runtime) check them with.
 *
 * Layouts: the case's SingLoRA `A` is [max(d_out, d_in), r], as ours (`singlora_A`); its LoRA
 * `lora_down` [r, d_in] is our `lora_A`, `lora_up` [d_out, r] our `lora_B`. Latents and noise
 * are NCHW there, NHWC here.
 */
import { readFileSync } from 'node:fs';
import type { AdapterMethod } from '../../src-main/engine/adapters/adapterLinear.ts';
import type { Cases } from './fixtures.ts';

export const LOSS_REL = 1e-5;
export const GRAD_REL_TO_MAX = 1e-4;
export const NORM_REL = 1e-5;
export const PARAM_ABS = 1e-6;

/** Case parameter name -> ours, per method. */
export const PARAMS: Record<AdapterMethod, Array<[string, string]>> = {
  singlora: [['A', 'singlora_A']],
  lora: [
    ['lora_down', 'lora_A'],
    ['lora_up', 'lora_B'],
  ],
};

export interface StepMeta {
  rank: number;
  alpha: number;
  ramp_T: number;
  step: number;
  u: number;
  timestep: number;
  prediction: string;
  loss: string;
  clip_grad_norm: number;
  adamw: { lr: number; betas: [number, number]; eps: number; weight_decay: number; step: number };
  layers: string[];
}

/** The case metadata, each field checked, so a changed fixture fails naming the field. */
export function readMeta(path: string): StepMeta {
  const m = (JSON.parse(readFileSync(path, 'utf8')) as { metadata?: Record<string, unknown> }).metadata;
  if (!m) throw new Error(`${path}: no 'metadata'`);
  const num = (k: string, v: unknown = m[k]): number => {
    if (typeof v !== 'number' || !Number.isFinite(v))
      throw new Error(`${path}: metadata.${k} must be a number, got ${JSON.stringify(v)}`);
    return v;
  };
  const a = m.adamw as Record<string, unknown> | undefined;
  if (!a || !Array.isArray(a.betas) || a.betas.length !== 2)
    throw new Error(`${path}: metadata.adamw must hold lr, betas [b1, b2], eps, weight_decay, step`);
  if (!Array.isArray(m.layers) || !m.layers.length)
    throw new Error(`${path}: metadata.layers must list the adapted layers`);
  const meta: StepMeta = {
    rank: num('rank'),
    alpha: num('alpha'),
    ramp_T: num('ramp_T'),
    step: num('step'),
    u: num('u'),
    timestep: num('timestep'),
    prediction: String(m.prediction),
    loss: String(m.loss),
    clip_grad_norm: num('clip_grad_norm'),
    adamw: {
      lr: num('adamw.lr', a.lr),
      betas: [num('adamw.betas[0]', a.betas[0]), num('adamw.betas[1]', a.betas[1])],
      eps: num('adamw.eps', a.eps),
      weight_decay: num('adamw.weight_decay', a.weight_decay),
      step: num('adamw.step', a.step),
    },
    layers: m.layers as string[],
  };
  // What this test assumes of the reference step; anything else needs a different test.
  if (meta.prediction !== 'epsilon')
    throw new Error(
      `${path}: metadata.prediction is '${meta.prediction}'; this test reproduces an epsilon-target step`,
    );
  if (!/mean squared error/.test(meta.loss))
    throw new Error(`${path}: metadata.loss is '${meta.loss}'; this test reproduces the MSE mean`);
  if (meta.adamw.step !== 1)
    throw new Error(
      `${path}: metadata.adamw.step is ${meta.adamw.step}; this test takes one AdamW step from zero moments`,
    );
  // u(t) = min(t / T, 1), computed here, not by the code under test.
  if (Math.min(meta.step / meta.ramp_T, 1) !== meta.u)
    throw new Error(
      `${path}: metadata.u ${meta.u} is not min(step / ramp_T, 1) = ${Math.min(meta.step / meta.ramp_T, 1)}`,
    );
  return meta;
}

/** The reference's AdamW settings, as our optimizers (AdamW, AdamWArrays) take them. */
export function adamWOptions(meta: StepMeta): { beta1: number; beta2: number; eps: number; weightDecay: number } {
  const [beta1, beta2] = meta.adamw.betas;
  return { beta1, beta2, eps: meta.adamw.eps, weightDecay: meta.adamw.weight_decay };
}

/** The reference's step, as our training steps (trainStep, onnxTrainStep) take it, returning the gradients. */
export function stepOptions(meta: StepMeta) {
  return {
    step: meta.step,
    lr: meta.adamw.lr,
    maxGradNorm: meta.clip_grad_norm,
    minSnrGamma: null,
    priorLossWeight: 1,
    returnGrads: true,
  };
}

/** Every key one method's case needs. */
export function caseKeys(method: AdapterMethod, layers: readonly string[]): string[] {
  const keys = [
    'inputs.latents',
    'inputs.noise',
    'inputs.encoder_hidden_states',
    'inputs.timestep',
    `${method}.loss`,
    `${method}.grad_norm`,
  ];
  for (const layer of layers)
    for (const [p] of PARAMS[method])
      keys.push(`${method}.init.${layer}.${p}`, `${method}.grad.${layer}.${p}`, `${method}.after_adamw.${layer}.${p}`);
  return keys;
}

/**
 * The recorded `.grad` tensors are p.grad as the reference left it: after clip_grad_norm_, which
 * scales p.grad in place (measured: ref = dL/dp * c for every tensor of both methods).
 * c = min(1, max_norm / (norm + 1e-6)) as torch computes it, from the reference's own norm.
 */
export function clipFactorOf(meta: StepMeta, refNorm: number): number {
  return Math.min(1, meta.clip_grad_norm / (refNorm + 1e-6));
}

/** An NCHW [n, c, h, w] case tensor as NHWC values and dims. */
export async function readNhwc(cases: Cases, key: string): Promise<{ data: Float32Array; dims: number[] }> {
  const { shape, data } = await cases.get(key);
  if (shape.length !== 4) throw new Error(`train_step_cases: '${key}' must be [n, c, h, w], got [${shape}]`);
  const [n, c, h, w] = shape;
  const out = new Float32Array(data.length);
  for (let b = 0; b < n; b++)
    for (let k = 0; k < c; k++)
      for (let y = 0; y < h; y++)
        for (let x = 0; x < w; x++) out[((b * h + y) * w + x) * c + k] = data[((b * c + k) * h + y) * w + x];
  return { data: out, dims: [n, h, w, c] };
}

/**
 * The bound on one parameter after the step. AdamW's first step moves an element by
 * lr * g / (|g| + eps): where the clipped |g| is below 10 eps, float32 noise in g (a few 1e-6 of
 * max|g|) moves the result by more than 1e-6, so there the bound is the one the gradient
 * difference implies (mean value theorem on g -> g / (|g| + eps), whose slope is
 * eps / (|g| + eps)^2), plus the same 1e-6. `g` is ours (clipped), `ref` the reference's.
 */
export function paramBound(meta: StepMeta, g: number, ref: number): { bound: number; illConditioned: boolean } {
  const { lr, eps } = meta.adamw;
  if (Math.abs(ref) >= 10 * eps) return { bound: PARAM_ABS, illConditioned: false };
  const m = Math.sign(g) === Math.sign(ref) ? Math.min(Math.abs(g), Math.abs(ref)) : 0;
  return { bound: PARAM_ABS + (lr * eps * Math.abs(g - ref)) / (m + eps) ** 2, illConditioned: true };
}

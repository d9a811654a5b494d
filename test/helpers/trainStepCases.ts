/**
 * The training-step cases (fixtures README, "Training-step cases"): their metadata, keys, layouts
 * and the bounds both training-step parity tests (TensorFlow.js and ONNX Runtime) check them with.
 *
 * Layouts: the case's SingLoRA `A` is [max(d_out, d_in), r], as ours (`singlora_A`); its LoRA
 * `lora_down` [r, d_in] is our `lora_A`, `lora_up` [d_out, r] our `lora_B`. Latents and noise
 * are NCHW there, NHWC here.
 */
import { readFileSync } from 'node:fs';
import { expect } from 'vitest';
import type { AdapterMethod } from '../../src-main/engine/adapters/adapterLinear.ts';
import { maxAbsDiff } from './backend.ts';
import { type Cases, skipNote } from './fixtures.ts';

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

/** Skips the test, naming the first keys, when the case file lacks some of this method's tensors. */
export function skipIfMissing(
  ctx: { skip: (note?: string) => never },
  cases: Cases,
  folder: string,
  meta: StepMeta,
  method: AdapterMethod,
): void {
  const missing = caseKeys(method, meta.layers).filter((k) => !cases.has(k));
  if (missing.length)
    ctx.skip(
      skipNote(
        folder,
        `${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ` (and ${missing.length - 3} more)` : ''} in train_step_cases.safetensors`,
      ),
    );
}

/** One training step's outcome; `grads` (before clipping) and `after` in case order: layer by layer, PARAMS[method]. */
export interface StepOutcome {
  loss: number;
  gradNorm: number;
  grads: readonly Float32Array[];
  after: readonly Float32Array[];
}

/**
 * Checks one step against the case with the bounds above: loss, every gradient (ours scaled by
 * the reference's clip factor), grad norm, every parameter after the update (`paramBound`).
 * `log` gets the summary line (tagged `tag`) before the assertions run.
 */
export async function checkStep(
  cases: Cases,
  meta: StepMeta,
  method: AdapterMethod,
  step: StepOutcome,
  tag: string,
  log: (line: string) => void,
): Promise<void> {
  const refLoss = (await cases.get(`${method}.loss`)).data[0];
  const refNorm = (await cases.get(`${method}.grad_norm`)).data[0];
  const lossRel = Math.abs(step.loss - refLoss) / Math.abs(refLoss);
  const normRel = Math.abs(step.gradNorm - refNorm) / Math.abs(refNorm);
  expect(refNorm, 'the reference clips (grad_norm > clip_grad_norm)').toBeGreaterThan(meta.clip_grad_norm);
  const c = clipFactorOf(meta, refNorm);

  let worstGrad = { rel: 0, name: '' };
  let worstParam = { abs: 0, name: '' };
  let illConditioned = 0;
  let worstWellConditioned = 0;
  const gradFailures: string[] = [];
  const paramFailures: string[] = [];
  let k = 0;
  for (const layer of meta.layers) {
    for (const [p, ours] of PARAMS[method]) {
      const name = `${layer}.${ours}`;
      const gradRef = (await cases.get(`${method}.grad.${layer}.${p}`)).data;
      const g = step.grads[k].map((x) => x * c); // clipped, as the reference
      const gd = maxAbsDiff(g, gradRef);
      if (gd.rel > worstGrad.rel) worstGrad = { rel: gd.rel, name };
      if (!(gd.maxAbs <= GRAD_REL_TO_MAX * gd.maxRef)) gradFailures.push(`${name}: ${gd.rel.toExponential(2)}`);
      const afterRef = (await cases.get(`${method}.after_adamw.${layer}.${p}`)).data;
      const got = step.after[k++];
      expect(got.length).toBe(afterRef.length);
      for (let i = 0; i < got.length; i++) {
        const d = Math.abs(got[i] - afterRef[i]);
        const { bound, illConditioned: ill } = paramBound(meta, g[i], gradRef[i]);
        if (ill) illConditioned++;
        else worstWellConditioned = Math.max(worstWellConditioned, d);
        if (d > worstParam.abs) worstParam = { abs: d, name: `${name}[${i}]` };
        if (!(d <= bound)) paramFailures.push(`${name}[${i}]: ${d.toExponential(2)} > ${bound.toExponential(2)}`);
      }
    }
  }
  log(
    `${tag}: loss ${step.loss.toPrecision(8)} (ref ${refLoss.toPrecision(8)}, rel ${lossRel.toExponential(2)}); ` +
      `worst grad max|diff|/max|ref| ${worstGrad.rel.toExponential(2)} (${worstGrad.name}); ` +
      `grad norm ${step.gradNorm.toExponential(6)} (rel ${normRel.toExponential(2)}); ` +
      `worst param after the step max|diff| ${worstParam.abs.toExponential(2)} (${worstParam.name}); ${worstWellConditioned.toExponential(2)} where |g| >= 10 eps (${illConditioned} elements have |g| < 10 eps)`,
  );
  expect(lossRel, `${method}.loss relative error`).toBeLessThanOrEqual(LOSS_REL);
  expect(gradFailures, `gradients beyond ${GRAD_REL_TO_MAX}·max|ref|`).toEqual([]);
  expect(normRel, `${method}.grad_norm relative error`).toBeLessThanOrEqual(NORM_REL);
  expect(
    paramFailures.slice(0, 20),
    `parameters after the step beyond ${PARAM_ABS} (+ the gradient's share where |g| < 10 eps)`,
  ).toEqual([]);
}

/**
 * The inputs of the update alone, in case order: the initial values, the reference's gradient
 * unclipped (recorded clipped: divided by c here), the parameters after its AdamW step, and its norm.
 */
export async function updateCase(
  cases: Cases,
  meta: StepMeta,
  method: AdapterMethod,
): Promise<{
  refNorm: number;
  init: Array<{ data: Float32Array; shape: number[] }>;
  grads: Array<{ data: Float32Array; shape: number[] }>;
  refs: Array<{ name: string; data: Float32Array }>;
}> {
  const refNorm = (await cases.get(`${method}.grad_norm`)).data[0];
  const c = clipFactorOf(meta, refNorm);
  const init: Array<{ data: Float32Array; shape: number[] }> = [];
  const grads: Array<{ data: Float32Array; shape: number[] }> = [];
  const refs: Array<{ name: string; data: Float32Array }> = [];
  for (const layer of meta.layers) {
    for (const [p] of PARAMS[method]) {
      const i = await cases.get(`${method}.init.${layer}.${p}`);
      init.push({ data: i.data.slice(), shape: i.shape });
      const g = await cases.get(`${method}.grad.${layer}.${p}`);
      grads.push({ data: g.data.map((x) => x / c), shape: g.shape });
      const name = `${method}.after_adamw.${layer}.${p}`;
      refs.push({ name, data: (await cases.get(name)).data });
    }
  }
  return { refNorm, init, grads, refs };
}

/** The update alone against the reference: its norm, then every parameter within PARAM_ABS (summary to `log` first). */
export function checkUpdate(
  update: { refNorm: number; refs: ReadonlyArray<{ name: string; data: Float32Array }> },
  norm: number,
  after: readonly Float32Array[],
  tag: string,
  log: (line: string) => void,
): void {
  expect(
    Math.abs(norm - update.refNorm) / update.refNorm,
    'norm of the reference gradient vs grad_norm',
  ).toBeLessThanOrEqual(NORM_REL);
  let worst = { abs: 0, name: '' };
  for (const [i, p] of after.entries()) {
    const d = maxAbsDiff(p, update.refs[i].data);
    if (d.maxAbs > worst.abs) worst = { abs: d.maxAbs, name: update.refs[i].name };
  }
  log(`${tag} from the reference gradient: worst param max|diff| ${worst.abs.toExponential(2)} (${worst.name})`);
  expect(worst.abs, `worst parameter after clip + AdamW (${worst.name})`).toBeLessThanOrEqual(PARAM_ABS);
}

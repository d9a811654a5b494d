/**
 * The checks both training-step parity tests (TensorFlow.js and ONNX Runtime) make of a case, with
 * the bounds of trainStepCases.ts. They use vitest's `expect`, so they live apart from that file,
 * which onnxTrainStepChild.ts loads outside vitest.
 */
import { expect } from 'vitest';
import type { AdapterMethod } from '../../src-main/engine/adapters/adapterLinear.ts';
import { maxAbsDiff } from './backend.ts';
import { type Cases, skipNote } from './fixtures.ts';
import {
  caseKeys,
  clipFactorOf,
  GRAD_REL_TO_MAX,
  LOSS_REL,
  NORM_REL,
  PARAM_ABS,
  PARAMS,
  paramBound,
  type StepMeta,
} from './trainStepCases.ts';

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

/**
 * AdamW and global-norm clipping against torch.optim.AdamW and torch.nn.utils.clip_grad_norm_,
 * computed here in float64 as torch's code computes them (torch/optim/adamw.py, `_single_tensor_adamw`),
 * not with the code under test:
 *
 *   param.mul_(1 - lr * weight_decay)
 *   exp_avg.lerp_(grad, 1 - beta1)                     m = beta1 m + (1 - beta1) g
 *   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
 *   bias_correction1 = 1 - beta1 ** step;  bias_correction2 = 1 - beta2 ** step
 *   step_size = lr / bias_correction1
 *   denom = exp_avg_sq.sqrt() / sqrt(bias_correction2) + eps
 *   param.addcdiv_(exp_avg, denom, value=-step_size)
 *
 *   clip_coef = max_norm / (total_norm + 1e-6); grads *= min(clip_coef, 1)
 */
import { describe, expect, it } from 'vitest';
import { tf } from '../../src-main/engine/backend/tf.ts';
import { AdamW, clipByGlobalNorm, globalNorm } from '../../src-main/engine/train/adamw.ts';
import { expectNoLeak, maxAbsDiff, useBackend } from '../helpers/backend.ts';

useBackend('wasm');

interface TorchAdamWConfig {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

/** torch.optim.AdamW on plain float64 arrays: one call is one optimizer.step(). */
class TorchAdamW {
  readonly m: number[][];
  readonly v: number[][];
  step = 0;
  constructor(
    readonly params: number[][],
    readonly c: TorchAdamWConfig,
  ) {
    this.m = params.map((p) => p.map(() => 0));
    this.v = params.map((p) => p.map(() => 0));
  }
  apply(grads: number[][], lr: number): void {
    this.step += 1;
    const { beta1, beta2, eps, weightDecay } = this.c;
    const bc1 = 1 - beta1 ** this.step;
    const bc2 = 1 - beta2 ** this.step;
    const stepSize = lr / bc1;
    this.params.forEach((p, k) => {
      for (let i = 0; i < p.length; i++) {
        const g = grads[k][i];
        p[i] *= 1 - lr * weightDecay;
        this.m[k][i] = beta1 * this.m[k][i] + (1 - beta1) * g;
        this.v[k][i] = beta2 * this.v[k][i] + (1 - beta2) * g * g;
        const denom = Math.sqrt(this.v[k][i]) / Math.sqrt(bc2) + eps;
        p[i] -= (stepSize * this.m[k][i]) / denom;
      }
    });
  }
}

/** Deterministic values in [-scale, scale] (a plain LCG; no code under test). */
function values(n: number, seed: number, scale = 1): number[] {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32 - 0.5) * 2 * scale;
  });
}

const SHAPES: number[][] = [[6, 3], [5], [2, 2, 2]];
const size = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

describe('AdamW (torch.optim.AdamW formulas)', () => {
  it('five steps with weight decay, bias correction and a changing learning rate match torch within float32 noise', async () => {
    const config = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };
    const init = SHAPES.map((s, k) => values(size(s), 10 + k));
    const ref = new TorchAdamW(
      init.map((p) => [...p]),
      config,
    );
    const params = SHAPES.map((s, k) => tf.variable(tf.tensor(init[k], s, 'float32'), true));
    const opt = new AdamW(params, config);
    const lrs = [1e-2, 2e-2, 5e-2, 5e-2, 1e-3];
    try {
      for (const [t, lr] of lrs.entries()) {
        const grads = SHAPES.map((s, k) => values(size(s), 100 * t + k, 0.5 + t));
        const g = SHAPES.map((s, k) => tf.tensor(grads[k], s, 'float32'));
        await expectNoLeak(() => opt.apply(g, lr));
        tf.dispose(g);
        ref.apply(grads, lr);
        expect(opt.step).toBe(t + 1);
        for (const [k, p] of params.entries()) {
          const { maxAbs } = maxAbsDiff(await p.data(), ref.params[k]);
          expect(maxAbs, `param ${k} after step ${t + 1}`).toBeLessThanOrEqual(2e-7);
        }
      }
      // The moments too (the checkpointed state).
      const state = await opt.state();
      expect(state.step).toBe(lrs.length);
      for (let k = 0; k < SHAPES.length; k++) {
        expect(maxAbsDiff(state.m[k], ref.m[k]).maxAbs, `m[${k}]`).toBeLessThanOrEqual(1e-6);
        expect(maxAbsDiff(state.v[k], ref.v[k]).maxAbs, `v[${k}]`).toBeLessThanOrEqual(1e-6);
      }
    } finally {
      opt.dispose();
      tf.dispose(params);
    }
  });

  it('bias correction: the first step moves every element by lr * g / (|g| + eps), i.e. about lr against the sign of g', async () => {
    // m_1 / (1 - beta1) = g and sqrt(v_1 / (1 - beta2)) = |g|, whatever the betas.
    const g = [0.3, -2, 1e-3, -5e-5];
    const p = tf.variable(tf.tensor1d([1, 1, 1, 1]), true);
    const opt = new AdamW([p], { beta1: 0.8, beta2: 0.99, eps: 1e-8, weightDecay: 0 });
    const grad = tf.tensor1d(g);
    opt.apply([grad], 0.01);
    const got = await p.data();
    g.forEach((gi, i) => expect(got[i], `element ${i}`).toBeCloseTo(1 - (0.01 * gi) / (Math.abs(gi) + 1e-8), 6));
    tf.dispose([p, grad]);
    opt.dispose();
  });

  it('weight decay is decoupled: a zero gradient only shrinks the parameter by (1 - lr * lambda) per step', async () => {
    const p = tf.variable(tf.tensor1d([2, -4]), true);
    const opt = new AdamW([p], { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.5 });
    const zero = tf.zeros([2]);
    for (let t = 0; t < 3; t++) opt.apply([zero], 0.1);
    const got = await p.data();
    expect(got[0]).toBeCloseTo(2 * 0.95 ** 3, 6);
    expect(got[1]).toBeCloseTo(-4 * 0.95 ** 3, 6);
    tf.dispose([p, zero]);
    opt.dispose();
  });

  it('state() and load() resume exactly: 2 + 2 steps equal 4 straight steps', async () => {
    const config = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };
    const grads = [0, 1, 2, 3].map((t) => values(8, 50 + t));
    const run = async (split: boolean): Promise<Float32Array> => {
      let p = tf.variable(tf.tensor1d(values(8, 7)), true);
      let opt = new AdamW([p], config);
      for (let t = 0; t < 4; t++) {
        if (split && t === 2) {
          const state = await opt.state();
          const saved = (await p.data()) as Float32Array;
          opt.dispose();
          p.dispose();
          p = tf.variable(tf.tensor1d(saved), true);
          opt = new AdamW([p], config);
          opt.load(state);
        }
        const g = tf.tensor1d(grads[t]);
        opt.apply([g], 1e-2);
        g.dispose();
      }
      const out = (await p.data()) as Float32Array;
      opt.dispose();
      p.dispose();
      return out;
    };
    expect(Array.from(await run(true))).toEqual(Array.from(await run(false)));
  });

  it('names the mismatch when gradients or a loaded state do not fit the parameters', () => {
    const p = tf.variable(tf.zeros([3]), true);
    const opt = new AdamW([p]);
    expect(() => opt.apply([], 1e-3)).toThrow(/AdamW.apply: 0 gradients for 1 parameters/);
    expect(() => opt.load({ step: 1, m: [new Float32Array(2)], v: [new Float32Array(2)] })).toThrow(
      /AdamW.load: moment 0 has 2 values for a parameter of 3/,
    );
    opt.dispose();
    p.dispose();
  });
});

describe('clipByGlobalNorm (torch clip_grad_norm_)', () => {
  const a = [3, 4]; // ||a||^2 = 25
  const b = [12]; // ||b||^2 = 144: the global norm is 13

  it('returns the norm before clipping and scales by max_norm / (norm + 1e-6)', async () => {
    const g = [tf.tensor1d(a), tf.tensor1d(b)];
    const before = tf.memory().numTensors;
    const { grads, norm } = clipByGlobalNorm(g, 1);
    expect(tf.memory().numTensors - before, 'the clipped grads and the norm, nothing else').toBe(3);
    expect((await norm.data())[0]).toBeCloseTo(13, 5);
    const c = 1 / (13 + 1e-6);
    expect(
      maxAbsDiff(
        await grads[0].data(),
        a.map((x) => x * c),
      ).maxAbs,
    ).toBeLessThanOrEqual(1e-7);
    expect(
      maxAbsDiff(
        await grads[1].data(),
        b.map((x) => x * c),
      ).maxAbs,
    ).toBeLessThanOrEqual(1e-7);
    tf.dispose([...g, ...grads, norm]);
  });

  it('leaves gradients below the limit unchanged (the factor is capped at 1)', async () => {
    const g = [tf.tensor1d(a), tf.tensor1d(b)];
    const { grads, norm } = clipByGlobalNorm(g, 100);
    expect(Array.from(await grads[0].data())).toEqual(a);
    expect(Array.from(await grads[1].data())).toEqual(b);
    const n = globalNorm(g);
    expect((await n.data())[0]).toBeCloseTo(13, 5);
    tf.dispose([...g, ...grads, norm, n]);
  });
});

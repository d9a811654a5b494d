/**
 * AdamW (Loshchilov & Hutter, 2019), as `torch.optim.AdamW` computes it, written against
 * TensorFlow.js so its state is ours to checkpoint.
 *
 * | code          | paper      |
 * | ------------- | ---------- |
 * | `m`, `v`      | m_t, v_t   |
 * | `beta1/2`     | beta_1/2   |
 * | `lr`          | eta * alpha_t (from the schedule, per step) |
 * | `weightDecay` | lambda     |
 *
 * Per step t (1-based), for each parameter p with gradient g:
 *   1. p <- p * (1 - lr * lambda)                    (decoupled weight decay)
 *   2. m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2
 *   3. p <- p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
 */
import { tf, type Tensor, type Variable } from '../backend/tf.ts';
import type { LossScaleState } from './lossScale.ts';

export interface AdamWConfig {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export const DEFAULT_ADAMW: AdamWConfig = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 1e-2 };

export interface AdamWState {
  step: number;
  m: Float32Array[];
  v: Float32Array[];
  /** The float16 loss scale beside the optimizer (ONNX engine, train/lossScale.ts); absent in float32. */
  lossScale?: LossScaleState;
}

export class AdamW {
  private m: Variable[];
  private v: Variable[];
  private t = 0;

  constructor(
    readonly params: readonly Variable[],
    readonly config: AdamWConfig = DEFAULT_ADAMW,
  ) {
    // tf.variable shares the initial tensor's data; tidy frees the temporary handles.
    this.m = tf.tidy(() => params.map((p) => tf.variable(tf.zerosLike(p), false)));
    this.v = tf.tidy(() => params.map((p) => tf.variable(tf.zerosLike(p), false)));
  }

  get step(): number {
    return this.t;
  }

  /** Applies one update with `grads` (one per param, same order) at learning rate `lr`. */
  apply(grads: readonly Tensor[], lr: number): void {
    if (grads.length !== this.params.length)
      throw new Error(`AdamW.apply: ${grads.length} gradients for ${this.params.length} parameters`);
    this.t += 1;
    const { beta1, beta2, eps, weightDecay } = this.config;
    const bc1 = 1 - beta1 ** this.t;
    const bc2 = 1 - beta2 ** this.t;
    tf.tidy(() => {
      this.params.forEach((p, i) => {
        const g = grads[i];
        const m = tf.add(tf.mul(this.m[i], beta1), tf.mul(g, 1 - beta1));
        const v = tf.add(tf.mul(this.v[i], beta2), tf.mul(tf.square(g), 1 - beta2));
        this.m[i].assign(m);
        this.v[i].assign(v);
        const decayed = weightDecay ? tf.mul(p, 1 - lr * weightDecay) : p;
        const update = tf.div(tf.div(m, bc1), tf.add(tf.sqrt(tf.div(v, bc2)), eps));
        p.assign(tf.sub(decayed, tf.mul(update, lr)));
      });
    });
  }

  async state(): Promise<AdamWState> {
    return {
      step: this.t,
      m: await Promise.all(this.m.map(async (x) => (await x.data()) as Float32Array)),
      v: await Promise.all(this.v.map(async (x) => (await x.data()) as Float32Array)),
    };
  }

  load(state: AdamWState): void {
    if (state.m.length !== this.params.length || state.v.length !== this.params.length) {
      throw new Error(
        `AdamW.load: state has ${state.m.length} moments for ${this.params.length} parameters (different adapter?)`,
      );
    }
    this.t = state.step;
    tf.tidy(() => {
      this.params.forEach((p, i) => {
        if (state.m[i].length !== p.size || state.v[i].length !== p.size)
          throw new Error(`AdamW.load: moment ${i} has ${state.m[i].length} values for a parameter of ${p.size}`);
        this.m[i].assign(tf.tensor(state.m[i], p.shape));
        this.v[i].assign(tf.tensor(state.v[i], p.shape));
      });
    });
  }

  dispose(): void {
    tf.dispose([...this.m, ...this.v]);
  }
}

/** The global L2 norm sqrt(sum_i ||g_i||^2) of `grads`, a scalar the caller owns. */
export function globalNorm(grads: readonly Tensor[]): Tensor {
  return tf.tidy(() => tf.sqrt(tf.addN(grads.map((g) => tf.sum(tf.square(g))))));
}

/**
 * Scales `grads` so their global L2 norm is at most `maxNorm`, as torch's clip_grad_norm_:
 * g * min(1, maxNorm / (||g|| + 1e-6)). Returns new tensors and the norm before clipping.
 */
export function clipByGlobalNorm(grads: readonly Tensor[], maxNorm: number): { grads: Tensor[]; norm: Tensor } {
  return tf.tidy(() => {
    const norm = globalNorm(grads);
    const factor = tf.minimum(tf.div(maxNorm, tf.add(norm, 1e-6)), 1);
    return { grads: grads.map((g) => tf.mul(g, factor)), norm };
  });
}

/**
 * SingLoRA: low-rank adaptation with a single matrix (Bensaïd et al., 2025, arXiv:2507.05566).
 *
 *   W = W0 + (alpha / r) * u(t) * A* A^T
 *
 * | code          | paper            | shape                   |
 * | ------------- | ---------------- | ----------------------- |
 * | `A`           | A                | [max(d_out, d_in), r]   |
 * | `A[:d_out]`   | A*               | [d_out, r]              |
 * | `A[:d_in]`    | (A^T uses these) | [d_in, r]               |
 * | `ramp(t, T)`  | u(t) = min(t/T,1)|                         |
 *
 * For a square layer A* = A. For a non-square one (SD 1.5's cross-attention to_k/to_v map
 * 768 -> 320/640/1280) the paper's extension truncates A to the rows each side needs. It is
 * exactly a standard LoRA with up = A[:d_out] and down = A[:d_in]^T, which is how it exports.
 *
 * A cannot start at zero: the gradient of A A^T is zero there. It starts as a small Gaussian
 * (`initStd`, see docs/singlora-init.md for the measurement behind the default), and the ramp
 * u(t) makes the initial update vanish regardless.
 */
import { tf, type Tensor, type Variable } from '../backend/tf.ts';
import type { Linear } from '../models/layers/linear.ts';
import { AdapterLinear, type AdapterHyper } from './adapterLinear.ts';
import { ramp } from './ramp.ts';
import { adapterScale } from './scale.ts';

export class SingLoRALinear extends AdapterLinear {
  readonly method = 'singlora' as const;
  /** A, [max(d_out, d_in), r]. */
  readonly A: Variable;

  /** `init` holds A's values ([max(d_out, d_in), r], row-major), e.g. from the Rng or a file. */
  constructor(base: Linear, hyper: AdapterHyper, init: Float32Array, name = 'singlora_A') {
    super(base, hyper);
    const rows = Math.max(base.outFeatures, base.inFeatures);
    if (init.length !== rows * hyper.rank)
      throw new Error(
        `SingLoRA A for a ${base.inFeatures}->${base.outFeatures} layer needs ${rows}x${hyper.rank} values, got ${init.length}`,
      );
    // tf.variable shares the initial tensor's data; tidy frees the temporary handle.
    this.A = tf.tidy(() => tf.variable(tf.tensor2d(init, [rows, hyper.rank]), true, `${name}_${nextId()}`));
  }

  scale(step: number): number {
    return adapterScale(this.hyper.alpha, this.hyper.rank, ramp(step, this.hyper.rampSteps), this.strength);
  }

  /** A[:d_out], [d_out, r]. */
  up(): Tensor {
    return this.A.slice([0, 0], [this.outFeatures, this.hyper.rank]);
  }

  /** A[:d_in], [d_in, r] (its transpose is the LoRA "down" matrix). */
  downT(): Tensor {
    return this.A.slice([0, 0], [this.inFeatures, this.hyper.rank]);
  }

  deltaWeight(step: number): Tensor {
    return singloraDelta(this.A, this.outFeatures, this.inFeatures, this.scale(step));
  }

  factors(): { down: Tensor; up: Tensor } {
    return tf.tidy(() => ({ down: this.downT(), up: tf.transpose(this.up()) }));
  }

  protected update(x2d: Tensor): Tensor {
    // A* (A^T x): [N, d_in] @ [d_in, r] -> [N, r]; then @ [r, d_out] -> [N, d_out]
    return tf.matMul(tf.matMul(x2d, this.downT()), tf.transpose(this.up()));
  }

  variables(): Variable[] {
    return [this.A];
  }

  namedTensors(): Array<[string, Variable]> {
    return [['singlora_A', this.A]];
  }
}

/**
 * dW = scale * A[:d_out] A[:d_in]^T, [d_out, d_in]: the one place SingLoRA's update is computed
 * (the layer's `deltaWeight` and the file importers both call it). The caller owns the result.
 */
export function singloraDelta(A: Tensor, dOut: number, dIn: number, scale: number): Tensor {
  return tf.tidy(() => {
    const r = A.shape[1] as number;
    const up = A.slice([0, 0], [dOut, r]); // [d_out, r]
    const downT = A.slice([0, 0], [dIn, r]); // [d_in, r]
    return tf.mul(tf.matMul(up, tf.transpose(downT)), scale); // [d_out, d_in]
  });
}

let counter = 0;
function nextId(): number {
  return ++counter;
}

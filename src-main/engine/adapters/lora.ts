/**
 * Classic LoRA (Hu et al., 2021, arXiv:2106.09685), beside SingLoRA with the same interface so
 * the two can be trained and compared side by side.
 *
 *   W = W0 + (alpha / r) * B A
 *
 * | code | paper | PEFT name        | shape        |
 * | ---- | ----- | ---------------- | ------------ |
 * | `A`  | A     | lora_A (down)    | [r, d_in]    |
 * | `B`  | B     | lora_B (up)      | [d_out, r]   |
 *
 * B starts at zero (so W = W0 at step 0) and A as PEFT initialises it (kaiming-uniform with
 * a = sqrt(5), i.e. U(-1/sqrt(d_in), 1/sqrt(d_in))). No ramp.
 */
import { tf, type Tensor, type Variable } from '../backend/tf.ts';
import type { Linear } from '../models/layers/linear.ts';
import { AdapterLinear, type AdapterHyper } from './adapterLinear.ts';
import { adapterScale } from './scale.ts';

export class LoRALinear extends AdapterLinear {
  readonly method = 'lora' as const;
  /** A (down), [r, d_in]. */
  readonly A: Variable;
  /** B (up), [d_out, r]. */
  readonly B: Variable;

  constructor(base: Linear, hyper: AdapterHyper, initA: Float32Array, initB?: Float32Array) {
    super(base, hyper);
    const r = hyper.rank;
    if (initA.length !== r * base.inFeatures)
      throw new Error(
        `LoRA A for a ${base.inFeatures}->${base.outFeatures} layer needs ${r}x${base.inFeatures} values, got ${initA.length}`,
      );
    if (initB && initB.length !== base.outFeatures * r)
      throw new Error(
        `LoRA B for a ${base.inFeatures}->${base.outFeatures} layer needs ${base.outFeatures}x${r} values, got ${initB.length}`,
      );
    const id = ++counter;
    // tf.variable shares the initial tensor's data; tidy frees the temporary handles.
    this.A = tf.tidy(() => tf.variable(tf.tensor2d(initA, [r, base.inFeatures]), true, `lora_A_${id}`));
    this.B = tf.tidy(() =>
      tf.variable(
        initB ? tf.tensor2d(initB, [base.outFeatures, r]) : tf.zeros([base.outFeatures, r]),
        true,
        `lora_B_${id}`,
      ),
    );
  }

  scale(_step: number): number {
    return adapterScale(this.hyper.alpha, this.hyper.rank, 1, this.strength);
  }

  deltaWeight(step: number): Tensor {
    return loraDelta(this.B, this.A, this.scale(step));
  }

  factors(): { down: Tensor; up: Tensor } {
    return tf.tidy(() => ({ down: tf.transpose(this.A), up: tf.transpose(this.B) }));
  }

  protected update(x2d: Tensor): Tensor {
    // B (A x): [N, d_in] @ [d_in, r] -> [N, r]; then @ [r, d_out] -> [N, d_out]
    return tf.matMul(tf.matMul(x2d, tf.transpose(this.A)), tf.transpose(this.B));
  }

  variables(): Variable[] {
    return [this.A, this.B];
  }

  namedTensors(): Array<[string, Variable]> {
    return [
      ['lora_A', this.A],
      ['lora_B', this.B],
    ];
  }
}

/**
 * dW = scale * B A, [d_out, d_in]: the one place LoRA's update is computed (the layer's
 * `deltaWeight` and the kohya/PEFT importers both call it). B [d_out, r], A [r, d_in]; for a
 * convolution LoRA, A may be [r, d_in, kh, kw] and B [d_out, r, 1, 1], and dW is
 * [d_out, d_in, kh, kw]. The caller owns the result.
 */
export function loraDelta(B: Tensor, A: Tensor, scale: number): Tensor {
  return tf.tidy(() => {
    const r = A.shape[0] as number;
    const dOut = B.shape[0] as number;
    const a2 = A.reshape([r, -1]); // [r, d_in * kh * kw]
    const b2 = B.reshape([dOut, r]); // [d_out, r]
    const d = tf.mul(tf.matMul(b2, a2), scale); // [d_out, d_in * kh * kw]
    return A.rank === 4 ? d.reshape([dOut, ...(A.shape.slice(1) as number[])]) : d;
  });
}

let counter = 0;

/**
 * Linear layer, `y = x W^T + b` as in `torch.nn.Linear`.
 * Weight stored [in, out] (see module.ts); x is [..., in], y is [..., out].
 */
import { tf, type Tensor } from '../../backend/tf.ts';
import { Module, Param, type Wrapper } from './module.ts';

/** Anything that maps [..., in] to [..., out]: a Linear, or an adapter wrapping one. */
export interface LinearLike {
  readonly inFeatures: number;
  readonly outFeatures: number;
  apply(x: Tensor): Tensor;
}

/** A Linear, or a wrapper standing in for one at the same checkpoint path. */
export type LinearSlot = Linear | (LinearLike & Wrapper);

export class Linear extends Module implements LinearLike {
  weight: Param;
  bias?: Param;

  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    bias = true,
  ) {
    super();
    this.weight = new Param([outFeatures, inFeatures], 'linear');
    if (bias) this.bias = new Param([outFeatures]);
  }

  apply(x: Tensor): Tensor {
    return linear(x, this.weight.value, this.bias?.value);
  }
}

/** `x @ w + b` over the last axis; w is [in, out]. */
export function linear(x: Tensor, w: Tensor, b?: Tensor): Tensor {
  return tf.tidy(() => {
    const [inF, outF] = w.shape as number[];
    if (x.shape[x.shape.length - 1] !== inF) {
      throw new Error(`linear: input's last dim is ${x.shape[x.shape.length - 1]} but the weight expects ${inF} (input shape [${x.shape}])`);
    }
    const lead = x.shape.slice(0, -1);
    const x2 = x.reshape([-1, inF]); // [N, in]
    let y = tf.matMul(x2, w); // [N, out]
    if (b) y = tf.add(y, b);
    return y.reshape([...lead, outF]);
  });
}

/**
 * GroupNorm (`torch.nn.GroupNorm`, on NHWC) and LayerNorm (`torch.nn.LayerNorm`, last axis).
 * Both use the biased variance, as PyTorch does.
 */
import { tf, type Tensor } from '../../backend/tf.ts';
import { Module, Param } from './module.ts';

export class GroupNorm extends Module {
  weight: Param;
  bias: Param;

  constructor(
    readonly numGroups: number,
    readonly numChannels: number,
    readonly eps = 1e-5,
  ) {
    super();
    if (numChannels % numGroups !== 0) throw new Error(`GroupNorm: ${numChannels} channels do not split into ${numGroups} groups`);
    this.weight = new Param([numChannels]);
    this.bias = new Param([numChannels]);
  }

  /** x [N, H, W, C] (or [N, L, C]) -> same shape. */
  apply(x: Tensor): Tensor {
    return tf.tidy(() => {
      const shape = x.shape;
      const c = shape[shape.length - 1];
      if (c !== this.numChannels) throw new Error(`GroupNorm(${this.numGroups}, ${this.numChannels}): input has ${c} channels (shape [${shape}])`);
      const g = this.numGroups;
      const xg = x.reshape([shape[0], -1, g, c / g]); // [N, HW, G, C/G]
      const { mean, variance } = tf.moments(xg, [1, 3], true);
      const normed = tf.mul(tf.sub(xg, mean), tf.rsqrt(tf.add(variance, this.eps)));
      return tf.add(tf.mul(normed.reshape(shape), this.weight.value), this.bias.value);
    });
  }
}

export class LayerNorm extends Module {
  weight: Param;
  bias: Param;

  constructor(
    readonly dim: number,
    readonly eps = 1e-5,
  ) {
    super();
    this.weight = new Param([dim]);
    this.bias = new Param([dim]);
  }

  apply(x: Tensor): Tensor {
    return tf.tidy(() => {
      const { mean, variance } = tf.moments(x, -1, true);
      const normed = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, this.eps)));
      return tf.add(tf.mul(normed, this.weight.value), this.bias.value);
    });
  }
}

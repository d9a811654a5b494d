/** Activations used by the SD 1.x components, each as PyTorch defines it. */
import { tf, type Tensor } from '../../backend/tf.ts';

/** SiLU / swish: x * sigmoid(x). */
export function silu(x: Tensor): Tensor {
  return tf.tidy(() => tf.mul(x, tf.sigmoid(x)));
}

/** Exact GELU (`F.gelu`, approximate='none'): 0.5 x (1 + erf(x / sqrt 2)). */
export function gelu(x: Tensor): Tensor {
  return tf.tidy(() => tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)));
}

/** CLIP's quick_gelu: x * sigmoid(1.702 x). */
export function quickGelu(x: Tensor): Tensor {
  return tf.tidy(() => tf.mul(x, tf.sigmoid(tf.mul(x, 1.702))));
}

export function activation(name: string): (x: Tensor) => Tensor {
  switch (name) {
    case 'silu':
    case 'swish':
      return silu;
    case 'gelu':
      return gelu;
    case 'quick_gelu':
      return quickGelu;
    default:
      throw new Error(`unsupported activation '${name}' (supported: silu, gelu, quick_gelu)`);
  }
}

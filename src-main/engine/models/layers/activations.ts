/** Activations used by the SD 1.x components, each as PyTorch defines it, on any executor. */
import type { Ops } from '../ops/ops.ts';

/** SiLU / swish: x * sigmoid(x). */
export function silu<T>(o: Ops<T>, x: T): T {
  return o.scope(() => o.mul(x, o.sigmoid(x)));
}

/** Exact GELU (`F.gelu`, approximate='none'): 0.5 x (1 + erf(x / sqrt 2)). */
export function gelu<T>(o: Ops<T>, x: T): T {
  return o.scope(() => o.mul(o.mul(x, 0.5), o.add(o.erf(o.mul(x, Math.SQRT1_2)), 1)));
}

/** CLIP's quick_gelu: x * sigmoid(1.702 x). */
export function quickGelu<T>(o: Ops<T>, x: T): T {
  return o.scope(() => o.mul(x, o.sigmoid(o.mul(x, 1.702))));
}

export type Activation = <T>(o: Ops<T>, x: T) => T;

export function activation(name: string): Activation {
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

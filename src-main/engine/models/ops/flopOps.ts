/**
 * A third executor of the op interface: it computes nothing, it follows shapes and counts the
 * floating-point operations of the products that dominate a diffusion model:
 *
 *   linear      2 · rows · in · out
 *   conv2d      2 · B · H' · W' · out · in · k²
 *   attention   4 · B · Sq · Sk · inner          (Q Kᵀ and P V)
 *
 * (a multiply-add counts as 2; norms, activations and softmax are left out, a few percent).
 * Benchmarks divide this by their time for the achieved GFLOP/s. Images are NHWC here.
 */
import type { Conv2d } from '../layers/conv2d.ts';
import type { Linear } from '../layers/linear.ts';
import type { Param } from '../layers/module.ts';
import type { Ops, Pad2d } from './ops.ts';

/** A tensor as this executor sees it: its shape only. */
export interface Shaped {
  readonly shape: readonly number[];
}

const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
const sh = (shape: readonly number[]): Shaped => ({ shape });
const axisOf = (x: Shaped, axis: number) => (axis < 0 ? x.shape.length + axis : axis);

export class FlopCounter implements Ops<Shaped> {
  readonly executor = 'flops' as const;
  /** FLOPs counted so far. */
  flops = 0;

  scope<R>(fn: () => R): R {
    return fn();
  }

  linear(x: Shaped, layer: Linear): Shaped {
    const lead = x.shape.slice(0, -1);
    this.flops += 2 * prod(lead) * layer.inFeatures * layer.outFeatures;
    return sh([...lead, layer.outFeatures]);
  }

  conv2d(x: Shaped, layer: Conv2d, pad?: Pad2d): Shaped {
    const [b, h, w] = x.shape;
    const p = pad ?? [
      [layer.padding, layer.padding],
      [layer.padding, layer.padding],
    ];
    const k = layer.kernelSize;
    const ho = Math.floor((h + p[0][0] + p[0][1] - k) / layer.stride) + 1;
    const wo = Math.floor((w + p[1][0] + p[1][1] - k) / layer.stride) + 1;
    this.flops += 2 * b * ho * wo * layer.outChannels * layer.inChannels * k * k;
    return sh([b, ho, wo, layer.outChannels]);
  }

  groupNorm(x: Shaped): Shaped {
    return x;
  }
  layerNorm(x: Shaped): Shaped {
    return x;
  }
  embedding(ids: Shaped, table: Param): Shaped {
    return sh([...ids.shape, table.shape[1]]);
  }
  tableRows(table: Param, n: number): Shaped {
    return sh([n, table.shape[1]]);
  }

  private broadcast(a: Shaped, b: Shaped | number): Shaped {
    if (typeof b === 'number') return a;
    return prod(a.shape) >= prod(b.shape) ? a : b;
  }
  add(a: Shaped, b: Shaped | number): Shaped {
    return this.broadcast(a, b);
  }
  sub(a: Shaped, b: Shaped | number): Shaped {
    return this.broadcast(a, b);
  }
  mul(a: Shaped, b: Shaped | number): Shaped {
    return this.broadcast(a, b);
  }
  div(a: Shaped, b: Shaped | number): Shaped {
    return this.broadcast(a, b);
  }
  sigmoid = (x: Shaped) => x;
  erf = (x: Shaped) => x;
  exp = (x: Shaped) => x;
  sin = (x: Shaped) => x;
  cos = (x: Shaped) => x;
  clip = (x: Shaped) => x;

  constant(_data: Float32Array, shape: readonly number[]): Shaped {
    return sh(shape);
  }
  reshape(x: Shaped, shape: readonly number[]): Shaped {
    const out = shape.map((d, i) => (d === 0 ? x.shape[i] : d));
    const known = prod(out.filter((d) => d !== -1));
    return sh(out.map((d) => (d === -1 ? prod(x.shape) / known : d)));
  }
  concat(xs: readonly Shaped[], axis: number): Shaped {
    const a = axisOf(xs[0], axis);
    const out = [...xs[0].shape];
    out[a] = xs.reduce((n, x) => n + x.shape[a], 0);
    return sh(out);
  }
  split(x: Shaped, n: number, axis: number): Shaped[] {
    const a = axisOf(x, axis);
    const out = [...x.shape];
    out[a] = x.shape[a] / n;
    return Array.from({ length: n }, () => sh(out));
  }
  argMax(x: Shaped, axis: number): Shaped {
    return sh(x.shape.filter((_, i) => i !== axisOf(x, axis)));
  }
  equalTo = (x: Shaped) => x;
  rowAt(x: Shaped): Shaped {
    return sh([x.shape[0], x.shape[2]]);
  }

  concatChannels(xs: readonly Shaped[]): Shaped {
    return this.concat(xs, 3);
  }
  splitChannels(x: Shaped, n: number): Shaped[] {
    return this.split(x, n, 3);
  }
  perChannel(v: Shaped): Shaped {
    return sh([v.shape[0], 1, 1, v.shape[1]]);
  }
  toTokens(x: Shaped): Shaped {
    return sh([x.shape[0], x.shape[1] * x.shape[2], x.shape[3]]);
  }
  fromTokens(h: Shaped, like: Shaped): Shaped {
    return sh([h.shape[0], like.shape[1], like.shape[2], h.shape[2]]);
  }
  upsampleNearest(x: Shaped, like?: Shaped): Shaped {
    return sh(
      like
        ? [x.shape[0], like.shape[1], like.shape[2], x.shape[3]]
        : [x.shape[0], x.shape[1] * 2, x.shape[2] * 2, x.shape[3]],
    );
  }

  attention(q: Shaped, k: Shaped): Shaped {
    const [b, sq, inner] = q.shape;
    this.flops += 4 * b * sq * k.shape[1] * inner;
    return q;
  }
}

/** FLOPs of one UNet forward (NHWC latent [batch, h, w]) with `tokens` context tokens. */
export function unetForwardFlops(
  unet: {
    denoise<T>(o: Ops<T>, sample: T, t: T, ctx: T): T;
    config: { inChannels: number; crossAttentionDim: readonly number[] };
  },
  batch: number,
  h: number,
  w: number,
  tokens = 77,
): number {
  const counter = new FlopCounter();
  unet.denoise(
    counter,
    sh([batch, h, w, unet.config.inChannels]),
    sh([batch]),
    sh([batch, tokens, unet.config.crossAttentionDim[0]]),
  );
  return counter.flops;
}

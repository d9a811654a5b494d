/**
 * diffusers `Transformer2DModel` (continuous input, `norm_type="layer_norm"`), its
 * `BasicTransformerBlock`, `FeedForward` and `GEGLU` (transformer_2d.py, attention.py,
 * activations.py, v0.27), as the SD 1.x UNet uses them. Feature maps are NHWC.
 *
 *   Transformer2DModel(x [B, H, W, C], context [B, S, Cctx]):
 *     1. h = proj_in(GroupNorm(x; eps 1e-6))          1x1 conv, or Linear with use_linear_projection
 *     2. h: [B, H*W, inner]; each BasicTransformerBlock:
 *          h = h + attn1(norm1(h))                     self-attention
 *          h = h + attn2(norm2(h), context)            cross-attention
 *          h = h + ff(norm3(h))                        ff.net.0 = GEGLU, ff.net.2 = Linear
 *     3. out = proj_out(h) + x
 *
 * In NHWC a 1x1 conv and a Linear over channels are the same computation; they differ only in the
 * checkpoint shape of the weight ([out, in, 1, 1] vs [out, in]).
 * `attn1`/`attn2` are the shared `Attention` module, whose to_q/to_k/to_v/to_out.0 slots adapters
 * replace by composition.
 */
import { tf, type Tensor } from '../../backend/tf.ts';
import { Module } from './module.ts';
import { Linear } from './linear.ts';
import { Conv2d } from './conv2d.ts';
import { GroupNorm, LayerNorm } from './norm.ts';
import { Attention } from './attention.ts';
import { gelu } from './activations.ts';

/** diffusers `GEGLU`: proj to 2*inner, split into (h, gate), h * gelu(gate) (exact GELU). */
export class GEGLU extends Module {
  proj: Linear;

  constructor(
    dimIn: number,
    readonly dimOut: number,
  ) {
    super();
    this.proj = new Linear(dimIn, dimOut * 2);
  }

  apply(x: Tensor): Tensor {
    return tf.tidy(() => {
      const [h, gate] = tf.split(this.proj.apply(x), 2, -1); // each [..., dimOut]
      return tf.mul(h, gelu(gate));
    });
  }
}

/** diffusers `FeedForward` with activation "geglu": net = [GEGLU, Dropout, Linear]. */
export class FeedForward extends Module {
  /** Index 1 is the dropout (no weights), so the checkpoint keys are `net.0.*` and `net.2.*`. */
  net: [GEGLU, null, Linear];

  constructor(dim: number, mult = 4) {
    super();
    const inner = dim * mult;
    this.net = [new GEGLU(dim, inner), null, new Linear(inner, dim)];
  }

  apply(x: Tensor): Tensor {
    return tf.tidy(() => this.net[2].apply(this.net[0].apply(x)));
  }
}

export class BasicTransformerBlock extends Module {
  norm1: LayerNorm;
  attn1: Attention;
  norm2: LayerNorm;
  attn2: Attention;
  norm3: LayerNorm;
  ff: FeedForward;

  constructor(dim: number, heads: number, headDim: number, crossAttentionDim: number) {
    super();
    this.norm1 = new LayerNorm(dim, 1e-5);
    this.attn1 = new Attention(dim, heads, headDim);
    this.norm2 = new LayerNorm(dim, 1e-5);
    this.attn2 = new Attention(dim, heads, headDim, crossAttentionDim);
    this.norm3 = new LayerNorm(dim, 1e-5);
    this.ff = new FeedForward(dim);
  }

  /** h [B, S, dim], context [B, Sctx, crossAttentionDim] -> [B, S, dim]. */
  apply(h: Tensor, context: Tensor): Tensor {
    return tf.tidy(() => {
      let x = tf.add(this.attn1.apply(this.norm1.apply(h)), h);
      x = tf.add(this.attn2.apply(this.norm2.apply(x), context), x);
      return tf.add(this.ff.apply(this.norm3.apply(x)), x);
    });
  }
}

export interface Transformer2DOptions {
  channels: number;
  heads: number;
  crossAttentionDim: number;
  groups: number;
  layers: number;
  useLinearProjection: boolean;
}

export class Transformer2DModel extends Module {
  norm: GroupNorm;
  proj_in: Conv2d | Linear;
  transformer_blocks: BasicTransformerBlock[];
  proj_out: Conv2d | Linear;

  constructor(readonly options: Transformer2DOptions) {
    super();
    const { channels, heads, crossAttentionDim, groups, layers, useLinearProjection } = options;
    if (channels % heads !== 0) throw new Error(`Transformer2DModel: ${channels} channels do not split into ${heads} attention heads`);
    const headDim = channels / heads;
    const inner = heads * headDim;
    this.norm = new GroupNorm(groups, channels, 1e-6);
    this.proj_in = useLinearProjection ? new Linear(channels, inner) : new Conv2d(channels, inner, 1);
    this.transformer_blocks = Array.from({ length: layers }, () => new BasicTransformerBlock(inner, heads, headDim, crossAttentionDim));
    this.proj_out = useLinearProjection ? new Linear(inner, channels) : new Conv2d(inner, channels, 1);
  }

  /** x [B, H, W, C], context [B, S, crossAttentionDim] -> [B, H, W, C]. */
  apply(x: Tensor, context: Tensor): Tensor {
    return tf.tidy(() => {
      const [b, hgt, wid, c] = x.shape as [number, number, number, number];
      const normed = this.norm.apply(x);
      // Both projections act on the channel axis; in NHWC a 1x1 conv is that same matmul.
      let h = this.proj_in.apply(normed);
      const inner = h.shape[3] as number;
      h = h.reshape([b, hgt * wid, inner]); // [B, HW, inner]
      for (const block of this.transformer_blocks) h = block.apply(h, context);
      h = h.reshape([b, hgt, wid, inner]); // [B, H, W, inner]
      const out = this.proj_out.apply(h);
      if (out.shape[3] !== c) throw new Error(`Transformer2DModel: proj_out gave ${out.shape[3]} channels, expected ${c}`);
      return tf.add(out, x);
    });
  }
}

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
 * A 1x1 conv and a Linear over channels are the same computation; they differ only in the
 * checkpoint shape of the weight ([out, in, 1, 1] vs [out, in]) and in where they sit (before or
 * after the image becomes tokens).
 * `attn1`/`attn2` are the shared `Attention` module, whose to_q/to_k/to_v/to_out.0 slots adapters
 * replace by composition.
 */
import type { Ops } from '../ops/ops.ts';
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

  forward<T>(o: Ops<T>, x: T): T {
    return o.scope(() => {
      const [h, gate] = o.split(this.proj.forward(o, x), 2, -1); // each [..., dimOut]
      return o.mul(h, gelu(o, gate));
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

  forward<T>(o: Ops<T>, x: T): T {
    return o.scope(() => this.net[2].forward(o, this.net[0].forward(o, x)));
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
  forward<T>(o: Ops<T>, h: T, context: T): T {
    return o.scope(() => {
      let x = o.add(this.attn1.forward(o, this.norm1.forward(o, h)), h);
      x = o.add(this.attn2.forward(o, this.norm2.forward(o, x), context), x);
      return o.add(this.ff.forward(o, this.norm3.forward(o, x)), x);
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
    if (channels % heads !== 0)
      throw new Error(`Transformer2DModel: ${channels} channels do not split into ${heads} attention heads`);
    const headDim = channels / heads;
    const inner = heads * headDim;
    this.norm = new GroupNorm(groups, channels, 1e-6);
    this.proj_in = useLinearProjection ? new Linear(channels, inner) : new Conv2d(channels, inner, 1);
    this.transformer_blocks = Array.from(
      { length: layers },
      () => new BasicTransformerBlock(inner, heads, headDim, crossAttentionDim),
    );
    this.proj_out = useLinearProjection ? new Linear(inner, channels) : new Conv2d(inner, channels, 1);
  }

  /** x: an image with C channels, context [B, S, crossAttentionDim] -> the same shape as x. */
  forward<T>(o: Ops<T>, x: T, context: T): T {
    return o.scope(() => {
      const normed = this.norm.forward(o, x);
      // A 1x1 conv projects the image; a Linear projects the tokens.
      let h =
        this.proj_in instanceof Conv2d
          ? o.toTokens(this.proj_in.forward(o, normed))
          : this.proj_in.forward(o, o.toTokens(normed)); // [B, HW, inner]
      for (const block of this.transformer_blocks) h = block.forward(o, h, context);
      const out =
        this.proj_out instanceof Conv2d
          ? this.proj_out.forward(o, o.fromTokens(h, x))
          : o.fromTokens(this.proj_out.forward(o, h), x);
      return o.add(out, x);
    });
  }
}

/**
 * diffusers `ResnetBlock2D` (resnet.py, v0.27) with `time_embedding_norm="default"`, no up/down
 * sampling inside the block, SiLU, as the SD 1.x UNet and VAE use it. NHWC.
 *
 *   h = conv1(silu(norm1(x)))
 *   h = h + time_emb_proj(silu(temb))[:, None, None, :]      (UNet only; the VAE has no temb)
 *   h = conv2(silu(norm2(h)))                                (dropout is identity at inference)
 *   out = (shortcut(x) + h) / outputScaleFactor              (shortcut: 1x1 conv when in != out)
 */
import type { Ops } from '../ops/ops.ts';
import { Module } from './module.ts';
import { Conv2d } from './conv2d.ts';
import { GroupNorm } from './norm.ts';
import { Linear } from './linear.ts';
import { silu } from './activations.ts';

export interface ResnetBlock2DOptions {
  inChannels: number;
  outChannels: number;
  /** Width of the time embedding; null for the VAE's blocks (no `time_emb_proj`). */
  tembChannels: number | null;
  groups: number;
  eps: number;
  outputScaleFactor?: number;
}

export class ResnetBlock2D extends Module {
  norm1: GroupNorm;
  conv1: Conv2d;
  time_emb_proj?: Linear;
  norm2: GroupNorm;
  conv2: Conv2d;
  conv_shortcut?: Conv2d;
  readonly outputScaleFactor: number;

  constructor(readonly options: ResnetBlock2DOptions) {
    super();
    const { inChannels, outChannels, tembChannels, groups, eps } = options;
    this.outputScaleFactor = options.outputScaleFactor ?? 1;
    this.norm1 = new GroupNorm(groups, inChannels, eps);
    this.conv1 = new Conv2d(inChannels, outChannels, 3, 1, 1);
    if (tembChannels !== null) this.time_emb_proj = new Linear(tembChannels, outChannels);
    this.norm2 = new GroupNorm(groups, outChannels, eps);
    this.conv2 = new Conv2d(outChannels, outChannels, 3, 1, 1);
    if (inChannels !== outChannels) this.conv_shortcut = new Conv2d(inChannels, outChannels, 1, 1, 0);
  }

  /** x: an image with `in` channels, temb [B, tembChannels] (UNet) -> an image with `out` channels. */
  forward<T>(o: Ops<T>, x: T, temb?: T): T {
    return o.scope(() => {
      let h = this.conv1.forward(o, silu(o, this.norm1.forward(o, x)));
      if (this.time_emb_proj) {
        if (!temb) throw new Error('ResnetBlock2D: this block has time_emb_proj but no time embedding was passed');
        h = o.add(h, o.perChannel(this.time_emb_proj.forward(o, silu(o, temb)))); // + [B, out] over H, W
      }
      h = this.conv2.forward(o, silu(o, this.norm2.forward(o, h)));
      const shortcut = this.conv_shortcut ? this.conv_shortcut.forward(o, x) : x;
      const out = o.add(shortcut, h);
      return this.outputScaleFactor === 1 ? out : o.div(out, this.outputScaleFactor);
    });
  }
}

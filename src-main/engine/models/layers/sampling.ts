/**
 * diffusers `Downsample2D` and `Upsample2D` (resnet.py / downsampling.py / upsampling.py, v0.27),
 * the `use_conv=True` variants SD 1.x uses.
 *
 * Downsample2D: a stride-2 3x3 conv. With `padding` 0 (the VAE encoder) diffusers first pads
 * asymmetrically, (0, 1) on the bottom and right, then convolves with no padding; with `padding`
 * 1 (the UNet) it is a plain symmetric padding.
 *
 * Upsample2D: nearest-neighbour interpolation, then a 3x3 conv. The output size defaults to 2x;
 * the UNet passes the skip connection's size when a latent side is not a multiple of
 * 2^upsamplers (e.g. 3 -> 2 on the way down, so 2 -> 3 on the way up). Nearest interpolation picks
 * source index floor(dst * in / out), as both `F.interpolate(mode="nearest")` and TensorFlow's
 * `resizeNearestNeighbor` (no align-corners, no half-pixel centres) do. That op has a gradient on
 * every backend here (ResizeNearestNeighborGrad is registered on wasm, cpu, webgpu, tensorflow).
 */
import type { Ops } from '../ops/ops.ts';
import { Module } from './module.ts';
import { Conv2d } from './conv2d.ts';

export class Downsample2D extends Module {
  conv: Conv2d;

  constructor(
    channels: number,
    outChannels = channels,
    readonly padding = 1,
  ) {
    super();
    this.conv = new Conv2d(channels, outChannels, 3, 2, padding);
  }

  /** H' = floor((H + 2p - 3) / 2) + 1 (p = 0: pad (0,1) bottom and right first). */
  forward<T>(o: Ops<T>, x: T): T {
    return this.padding === 0
      ? this.conv.forward(o, x, [
          [0, 1],
          [0, 1],
        ])
      : this.conv.forward(o, x);
  }
}

export class Upsample2D extends Module {
  conv: Conv2d;

  constructor(channels: number, outChannels = channels) {
    super();
    this.conv = new Conv2d(channels, outChannels, 3, 1, 1);
  }

  /** Nearest 2x (or to the spatial size of `like`), then the 3x3 conv. */
  forward<T>(o: Ops<T>, x: T, like?: T): T {
    return o.scope(() => this.conv.forward(o, o.upsampleNearest(x, like)));
  }
}

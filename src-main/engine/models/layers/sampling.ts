/**
 * diffusers `Downsample2D` and `Upsample2D` (resnet.py / downsampling.py / upsampling.py, v0.27),
 * the `use_conv=True` variants SD 1.x uses. NHWC.
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
import { tf, type Tensor, type Tensor4D } from '../../backend/tf.ts';
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

  /** [B, H, W, C] -> [B, H', W', out], H' = floor((H + 2p - 3) / 2) + 1 (p = 0: pad (0,1) first). */
  apply(x: Tensor): Tensor {
    return this.padding === 0 ? this.conv.apply(x, [[0, 1], [0, 1]]) : this.conv.apply(x);
  }
}

export class Upsample2D extends Module {
  conv: Conv2d;

  constructor(channels: number, outChannels = channels) {
    super();
    this.conv = new Conv2d(channels, outChannels, 3, 1, 1);
  }

  /** [B, H, W, C] -> [B, outH, outW, out]; `size` defaults to [2H, 2W]. */
  apply(x: Tensor, size?: readonly [number, number]): Tensor {
    const [, h, w] = x.shape as number[];
    return tf.tidy(() => this.conv.apply(upsampleNearest(x, size ?? [h * 2, w * 2])));
  }
}

/** Nearest-neighbour resize of NHWC `x` to `size` ([outH, outW]), as `F.interpolate(size=...)`. */
export function upsampleNearest(x: Tensor, size: readonly [number, number]): Tensor {
  if (x.rank !== 4) throw new Error(`upsampleNearest: expected NHWC input, got shape [${x.shape}]`);
  const [outH, outW] = size;
  if (!(Number.isInteger(outH) && Number.isInteger(outW) && outH > 0 && outW > 0)) {
    throw new Error(`upsampleNearest: output size [${size}] must be positive integers`);
  }
  if (outH === x.shape[1] && outW === x.shape[2]) return x.clone();
  return tf.image.resizeNearestNeighbor(x as Tensor4D, [outH, outW], false, false);
}

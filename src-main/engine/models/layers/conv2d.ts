/**
 * 2-D convolution as `torch.nn.Conv2d`. Padding is explicit and symmetric, as PyTorch pads
 * (TensorFlow's 'same' pads stride-2 convolutions asymmetrically, which would not match); a
 * caller may pass an asymmetric `pad` (the VAE's downsampler).
 */
import type { Ops, Pad2d } from '../ops/ops.ts';
import { Module, Param } from './module.ts';

export class Conv2d extends Module {
  weight: Param;
  bias?: Param;

  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    readonly kernelSize: number,
    readonly stride = 1,
    readonly padding = 0,
    bias = true,
  ) {
    super();
    this.weight = new Param([outChannels, inChannels, kernelSize, kernelSize], 'conv');
    if (bias) this.bias = new Param([outChannels]);
  }

  forward<T>(o: Ops<T>, x: T, pad?: Pad2d): T {
    return o.conv2d(x, this, pad);
  }
}

/**
 * 2-D convolution as `torch.nn.Conv2d`, on NHWC tensors.
 * Weight stored [kh, kw, in, out]; padding is explicit and symmetric, as PyTorch pads
 * (TensorFlow's 'same' pads stride-2 convolutions asymmetrically, which would not match).
 */
import { tf, type Tensor, type Tensor4D } from '../../backend/tf.ts';
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

  /** x [N, H, W, in] -> [N, H', W', out]. `pad` overrides the symmetric padding (e.g. [[0,1],[0,1]]). */
  apply(x: Tensor, pad?: [[number, number], [number, number]]): Tensor {
    return tf.tidy(() => {
      if (x.rank !== 4 || x.shape[3] !== this.inChannels) {
        throw new Error(`Conv2d(${this.inChannels}->${this.outChannels}): expected NHWC input with ${this.inChannels} channels, got [${x.shape}]`);
      }
      const p = pad ?? [[this.padding, this.padding], [this.padding, this.padding]];
      const w = this.weight.value as Tensor4D;
      let y: Tensor;
      if (this.kernelSize === 1 && this.stride === 1 && p.every(([a, b]) => a === 0 && b === 0)) {
        // A 1x1 convolution is a matmul over channels.
        const [n, h, wd] = x.shape;
        y = tf.matMul(x.reshape([-1, this.inChannels]), w.reshape([this.inChannels, this.outChannels])).reshape([n, h, wd, this.outChannels]);
      } else {
        const explicit = p.every(([a, b]) => a === 0 && b === 0) ? 'valid' : ([[0, 0], p[0], p[1], [0, 0]] as [[number, number], [number, number], [number, number], [number, number]]);
        y = tf.conv2d(x as Tensor4D, w, this.stride, explicit);
      }
      return this.bias ? tf.add(y, this.bias.value) : y;
    });
  }
}

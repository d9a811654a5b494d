/**
 * The TensorFlow.js executor of the model op interface (ops.ts): eager, differentiable, NHWC.
 * Training runs here; so does inference with `--engine tfjs`.
 *
 * Weights are read in TensorFlow.js's compute layout (Linear [in, out], conv [kh, kw, in, out];
 * see layers/module.ts). Every op returns a new tensor; callers own it (the usual tf rules).
 */
import { tf, type Tensor, type Tensor4D } from '../../backend/tf.ts';
import { attend, attentionOptions } from './tfAttention.ts';
import { conv2dTrainable, type ExplicitPad } from './conv2dTrainable.ts';
import { memoryEfficientAttend } from './memoryEfficientAttention.ts';
import type { Conv2d } from '../layers/conv2d.ts';
import type { GroupNorm, LayerNorm } from '../layers/norm.ts';
import type { Ops, Pad2d } from './ops.ts';

/** `x @ w + b` over the last axis; w is [in, out]. */
export function linearTf(x: Tensor, w: Tensor, b?: Tensor): Tensor {
  return tf.tidy(() => {
    const [inF, outF] = w.shape as number[];
    if (x.shape[x.shape.length - 1] !== inF) {
      throw new Error(
        `linear: input's last dim is ${x.shape[x.shape.length - 1]} but the weight expects ${inF} (input shape [${x.shape}])`,
      );
    }
    const lead = x.shape.slice(0, -1);
    let y = tf.matMul(x.reshape([-1, inF]), w); // [N, out]
    if (b) y = tf.add(y, b);
    return y.reshape([...lead, outF]);
  });
}

function conv2dTf(x: Tensor, layer: Conv2d, pad?: Pad2d): Tensor {
  return tf.tidy(() => {
    const { inChannels, outChannels, kernelSize, stride, padding } = layer;
    if (x.rank !== 4 || x.shape[3] !== inChannels) {
      throw new Error(
        `Conv2d(${inChannels}->${outChannels}): expected NHWC input with ${inChannels} channels, got [${x.shape}]`,
      );
    }
    const p = pad ?? [
      [padding, padding],
      [padding, padding],
    ];
    const w = layer.weight.value as Tensor4D;
    const noPad = p.every(([a, b]) => a === 0 && b === 0);
    let y: Tensor;
    if (kernelSize === 1 && stride === 1 && noPad) {
      // A 1x1 convolution is a matmul over channels.
      const [n, h, wd] = x.shape;
      y = tf.matMul(x.reshape([-1, inChannels]), w.reshape([inChannels, outChannels])).reshape([n, h, wd, outChannels]);
    } else {
      const explicit = noPad
        ? 'valid'
        : ([[0, 0], [...p[0]], [...p[1]], [0, 0]] as [
            [number, number],
            [number, number],
            [number, number],
            [number, number],
          ]);
      // A trainable weight (full-parameter training) takes the im2col filter gradient.
      y =
        w instanceof tf.Variable && w.trainable
          ? conv2dTrainable(x as Tensor4D, w, stride, p as ExplicitPad)
          : tf.conv2d(x as Tensor4D, w, stride, explicit);
    }
    return layer.bias ? tf.add(y, layer.bias.value) : y;
  });
}

/** ids [..] int32, table [V, H] -> [.., H] as a one-hot matMul (differentiable on every backend). */
function embedTrainable(ids: Tensor, table: Tensor): Tensor {
  return tf.tidy(() => {
    const [v, h] = table.shape;
    const oneHot = tf.oneHot(ids.reshape([-1]) as tf.Tensor1D, v); // [n, V]
    return tf.matMul(tf.cast(oneHot, 'float32'), table).reshape([...ids.shape, h]);
  });
}

function groupNormTf(x: Tensor, layer: GroupNorm): Tensor {
  return tf.tidy(() => {
    const shape = x.shape;
    const c = shape[shape.length - 1];
    if (c !== layer.numChannels)
      throw new Error(
        `GroupNorm(${layer.numGroups}, ${layer.numChannels}): input has ${c} channels (shape [${shape}])`,
      );
    const g = layer.numGroups;
    const xg = x.reshape([shape[0], -1, g, c / g]); // [N, HW, G, C/G]
    const { mean, variance } = tf.moments(xg, [1, 3], true);
    const normed = tf.mul(tf.sub(xg, mean), tf.rsqrt(tf.add(variance, layer.eps)));
    return tf.add(tf.mul(normed.reshape(shape), layer.weight.value), layer.bias.value);
  });
}

function layerNormTf(x: Tensor, layer: LayerNorm): Tensor {
  return tf.tidy(() => {
    const { mean, variance } = tf.moments(x, -1, true);
    const normed = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, layer.eps)));
    return tf.add(tf.mul(normed, layer.weight.value), layer.bias.value);
  });
}

/**
 * Nearest-neighbour resize of NHWC `x` to [outH, outW], as `F.interpolate(size=..., mode="nearest")`:
 * source index floor(dst * in / out).
 */
export function resizeNearest(x: Tensor, size: readonly [number, number]): Tensor {
  const [outH, outW] = size;
  if (x.rank !== 4) throw new Error(`upsampleNearest: expected NHWC input, got shape [${x.shape}]`);
  if (!(Number.isInteger(outH) && Number.isInteger(outW) && outH > 0 && outW > 0)) {
    throw new Error(`upsampleNearest: output size [${size}] must be positive integers`);
  }
  if (outH === x.shape[1] && outW === x.shape[2]) return x.clone();
  return tf.image.resizeNearestNeighbor(x as Tensor4D, [outH, outW], false, false);
}

/** ONNX Reshape semantics on a TensorFlow.js tensor (0 keeps the input's dim). */
function reshapeTf(x: Tensor, shape: readonly number[]): Tensor {
  return x.reshape(shape.map((d, i) => (d === 0 ? x.shape[i] : d)));
}

function axisOf(x: Tensor, axis: number): number {
  return axis < 0 ? x.rank + axis : axis;
}

export const tfOps: Ops<Tensor> = {
  executor: 'tfjs',
  scope: (fn) => tf.tidy(fn as () => never),

  linear: (x, layer) => linearTf(x, layer.weight.value, layer.bias?.value),
  conv2d: conv2dTf,
  groupNorm: groupNormTf,
  layerNorm: layerNormTf,
  // A trainable table (full-parameter training) is read as oneHot(ids) @ table: the gather's
  // gradient needs UnsortedSegmentSum, which the wasm backend does not register.
  embedding: (ids, table) =>
    table.value instanceof tf.Variable && table.value.trainable
      ? embedTrainable(ids, table.value)
      : tf.gather(table.value, ids),
  tableRows: (table, n) => tf.slice(table.value, [0, 0], [n, table.shape[1]]),

  add: (a, b) => tf.add(a, b),
  sub: (a, b) => tf.sub(a, b),
  mul: (a, b) => tf.mul(a, b),
  div: (a, b) => tf.div(a, b),
  sigmoid: (x) => tf.sigmoid(x),
  erf: (x) => tf.erf(x),
  exp: (x) => tf.exp(x),
  sin: (x) => tf.sin(x),
  cos: (x) => tf.cos(x),
  clip: (x, min, max) => tf.clipByValue(x, min, max),

  constant: (data, shape) => tf.tensor(data, [...shape], 'float32'),
  reshape: reshapeTf,
  concat: (xs, axis) => (xs.length === 1 ? xs[0].clone() : tf.concat([...xs], axis)),
  // tf.split, not slice: a split's gradient is a concat, each slice's would be padded to full size.
  split: (x, n, axis) => tf.split(x, n, axisOf(x, axis)),
  argMax: (x, axis) => tf.cast(tf.argMax(x, axisOf(x, axis)), 'int32'),
  equalTo: (x, value) => tf.cast(tf.equal(x, value), 'int32'),
  rowAt: (x, index) =>
    tf.tidy(() => {
      const [b, s, c] = x.shape as number[];
      const rows = tf.add(tf.mul(tf.range(0, b, 1, 'int32'), tf.scalar(s, 'int32')), index); // [B] into [B*S]
      return tf.gather(x.reshape([b * s, c]), rows);
    }),

  concatChannels: (xs) => tf.concat([...xs], 3),
  splitChannels: (x, n) => tf.split(x, n, 3),
  perChannel: (v) => v.reshape([v.shape[0] as number, 1, 1, v.shape[1] as number]), // [B, 1, 1, C]
  toTokens: (x) => x.reshape([x.shape[0] as number, -1, x.shape[3] as number]), // [B, H*W, C]
  fromTokens: (h, like) => h.reshape([h.shape[0], like.shape[1], like.shape[2], h.shape[2]] as number[]), // [B, H, W, C]
  upsampleNearest: (x, like) => {
    const [, h, w] = (like ?? x).shape as number[];
    return resizeNearest(x, like ? [h, w] : [h * 2, w * 2]);
  },

  attention: (q, k, v, heads, mask) => {
    // Training sets the memory-efficient mode (tfAttention.ts: withAttentionMode): its backward
    // recomputes one scores slice at a time instead of keeping them all on the tape.
    const scores = (q.shape[0] as number) * heads * (q.shape[1] as number) * (k.shape[1] as number);
    const efficient =
      !mask && attentionOptions.mode === 'memory-efficient' && scores >= attentionOptions.memoryEfficientMinScores;
    return efficient
      ? memoryEfficientAttend(q, k, v, heads, undefined, attentionOptions.maxScoreElements)
      : attend(q, k, v, heads, mask);
  },
};

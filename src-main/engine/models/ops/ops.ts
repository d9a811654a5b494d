/**
 * The op interface every model in `engine/models` is written against: one model definition,
 * two executors (as ggml and tinygrad do it).
 *
 *   executor          T (a tensor handle)            runs
 *   tfOps             a TensorFlow.js Tensor          eagerly, differentiable (training, fallback)
 *   FlopCounter       a shape                         nothing: it counts FLOPs (flopOps.ts)
 *   OnnxOps           a value in an ONNX graph        nothing: it records nodes; ONNX Runtime runs
 *                                                     the graph (inference)
 *
 * A module's `forward(o, ...)` calls only these ops, so the same code computes a UNet step on
 * TensorFlow.js and emits the UNet's ONNX graph. Ops that touch weights take the layer itself
 * (`linear(x, layer)`), so each executor reads the weight in its own layout and may attach
 * more (the ONNX executor adds adapter side paths whose factors are graph inputs).
 *
 * Layout is the executor's business: "image" tensors are NHWC on TensorFlow.js and NCHW in
 * ONNX, so the image ops (`conv2d`, `groupNorm`, `concatChannels`, `toTokens`, ...) say what
 * they mean instead of naming axes. Sequence tensors are [B, S, C] in both, and plain axis
 * arguments (`split`, `concat`, `reshape`) only ever address sequence or vector tensors.
 *
 * Shapes: `reshape` takes ONNX semantics (0 copies the input's dim, -1 is inferred), so model
 * code never needs the run-time size of a dynamic dim (batch, latent height and width).
 */
import type { Conv2d } from '../layers/conv2d.ts';
import type { Linear } from '../layers/linear.ts';
import type { Param } from '../layers/module.ts';
import type { GroupNorm, LayerNorm } from '../layers/norm.ts';

/** Padding of a 2-D convolution: [[top, bottom], [left, right]]. */
export type Pad2d = readonly [readonly [number, number], readonly [number, number]];

export interface Ops<T> {
  readonly executor: 'tfjs' | 'onnx' | 'flops';

  /** Runs `fn` in a scope that frees its intermediates (tf.tidy); a plain call when emitting. */
  scope<R>(fn: () => R): R;

  // -- layers with weights --------------------------------------------------------------------
  /** `x W^T + b` over the last axis: [..., in] -> [..., out]. */
  linear(x: T, layer: Linear): T;
  /** `torch.nn.Conv2d` on an image; `pad` overrides the layer's symmetric padding. */
  conv2d(x: T, layer: Conv2d, pad?: Pad2d): T;
  /** GroupNorm over an image (biased variance, per-channel affine). */
  groupNorm(x: T, layer: GroupNorm): T;
  /** LayerNorm over the last axis. */
  layerNorm(x: T, layer: LayerNorm): T;
  /** Rows of a [num, dim] table by integer ids: ids [...] -> [..., dim]. */
  embedding(ids: T, table: Param): T;
  /** The first `n` rows of a [num, dim] table: [n, dim]. */
  tableRows(table: Param, n: number): T;

  // -- elementwise (numbers broadcast as scalars) ---------------------------------------------
  add(a: T, b: T | number): T;
  sub(a: T, b: T | number): T;
  mul(a: T, b: T | number): T;
  div(a: T, b: T | number): T;
  sigmoid(x: T): T;
  erf(x: T): T;
  exp(x: T): T;
  sin(x: T): T;
  cos(x: T): T;
  clip(x: T, min: number, max: number): T;

  // -- structure ------------------------------------------------------------------------------
  /** A float32 constant. */
  constant(data: Float32Array, shape: readonly number[]): T;
  /** ONNX Reshape semantics: 0 keeps the input's dim at that axis, -1 is inferred. */
  reshape(x: T, shape: readonly number[]): T;
  concat(xs: readonly T[], axis: number): T;
  /** `n` equal parts along `axis`. */
  split(x: T, n: number, axis: number): T[];
  /** Index of the largest value along `axis` (the first on ties), int32. */
  argMax(x: T, axis: number): T;
  /** 1 where x == value, else 0 (int32). */
  equalTo(x: T, value: number): T;
  /** x [B, S, C], index [B] -> [B, C]: row index[b] of each batch item. */
  rowAt(x: T, index: T): T;

  // -- images ---------------------------------------------------------------------------------
  concatChannels(xs: readonly T[]): T;
  splitChannels(x: T, n: number): T[];
  /** [B, C] -> a tensor that broadcasts over an image's spatial axes. */
  perChannel(v: T): T;
  /** Image -> tokens [B, H*W, C]. */
  toTokens(x: T): T;
  /** Tokens [B, H*W, C] -> an image with the spatial size of `like`. */
  fromTokens(h: T, like: T): T;
  /** Nearest-neighbour upsampling to twice the size, or to the spatial size of `like`. */
  upsampleNearest(x: T, like?: T): T;

  // -- attention ------------------------------------------------------------------------------
  /**
   * softmax(Q K^T / sqrt(d) + mask) V per head. q [B, Sq, heads*d], k and v [B, Sk, heads*d],
   * mask (optional) adds to the scores and broadcasts to [B*heads, Sq, Sk] -> [B, Sq, heads*d].
   */
  attention(q: T, k: T, v: T, heads: number, mask?: T): T;
}

/**
 * The ONNX executor of the model op interface (models/ops/ops.ts): each op records ONNX nodes,
 * so running a model's `forward` with it emits the model's graph. Images are NCHW here, as ONNX
 * convolutions want them; sequences are [B, S, C].
 *
 * Weights are initializers in checkpoint layout (Linear [out, in], conv [out, in, kh, kw]), the
 * layouts ONNX reads directly, so they can stay in the user's files (`weights.ts`).
 *
 * Precision: `dtype` is the compute type. float32 constants and inputs (timesteps, the sinusoid
 * frequencies) stay float32 until they meet a compute-type value, then they are cast; so a
 * float16 graph still computes the timestep sinusoid in float32.
 *
 * Adapters: every Linear in `sidePaths` gets a low-rank side path whose factors are graph inputs,
 *   y = x W^T + b + (x · down) · up,    down [in, r], up [r, out]   (r may be 0)
 * so switching adapters, or their strength, only changes what is fed.
 */
import type { Conv2d } from '../models/layers/conv2d.ts';
import type { Linear } from '../models/layers/linear.ts';
import type { Param } from '../models/layers/module.ts';
import type { GroupNorm, LayerNorm } from '../models/layers/norm.ts';
import type { Ops, Pad2d } from '../models/ops/ops.ts';
import type { GraphBuilder, Value, ElemType } from './graphBuilder.ts';

export type ComputeType = 'float32' | 'float16';

/** Names of a side path's factor inputs. */
export function sidePathInputs(path: string): { down: string; up: string } {
  return { down: `adapter.${path}.down`, up: `adapter.${path}.up` };
}

export interface OnnxOpsOptions {
  readonly builder: GraphBuilder;
  readonly dtype: ComputeType;
  /** The initializer of a parameter, in its checkpoint layout and any float type. */
  readonly weight: (p: Param) => Value;
  /** Linears that get a side path, by their module path. */
  readonly sidePaths?: ReadonlyMap<Linear, string>;
  /**
   * `fused` (default): ONNX Runtime's com.microsoft MultiHeadAttention, which the CPU, CUDA,
   * DirectML and WebGPU providers run without materialising all scores at once (measured on the
   * CPU at 2 x 8 heads x 4096 tokens: 1.1 s and 213 MiB peak against 11.7 s and 2.4 GiB).
   * `plain`: MatMul, Softmax, MatMul in standard ops, for any runtime.
   */
  readonly attention?: 'fused' | 'plain';
  /**
   * float32 Sin and Cos: `native` (default), ONNX Runtime's ops; `series`, the argument reduced to
   * [-pi/2, pi/2] and a Taylor series in Mul and Add (within 1.4e-7 of sin for arguments up to
   * 1000), for providers that compute Sin and Cos with relaxed precision: WebGPU's on SwiftShader
   * were off by 1.9e-4 even on [-pi, pi] (Vulkan allows 2^-11), against 7e-8 for the CPU's.
   */
  readonly sinCos?: 'native' | 'series';
}

const isFloat = (t: ElemType) => t === 'float32' || t === 'float16' || t === 'bfloat16';

export class OnnxOps implements Ops<Value> {
  readonly executor = 'onnx' as const;
  protected readonly g: GraphBuilder;
  protected readonly dtype: ComputeType;
  /** Static channel counts (last dim) where an op knows them (linear outputs), for attention. */
  private readonly lastDim = new WeakMap<Value, number>();
  private readonly sidePaths: ReadonlyMap<Linear, string>;
  /** Side-path inputs made so far: path -> [in, out]. */
  readonly sideInputs = new Map<string, { inFeatures: number; outFeatures: number }>();

  constructor(protected readonly options: OnnxOpsOptions) {
    this.g = options.builder;
    this.dtype = options.dtype;
    this.sidePaths = options.sidePaths ?? new Map();
  }

  scope<R>(fn: () => R): R {
    return fn();
  }

  // -- helpers ----------------------------------------------------------------------------------

  /** `v` in the compute type (a Cast when it is another float type). */
  compute(v: Value): Value {
    return v.type === this.dtype || !isFloat(v.type)
      ? v
      : this.g.op('Cast', [v], { to: castTo(this.dtype) }, { type: this.dtype });
  }

  /** `v` as float32 (graph outputs). */
  float32(v: Value): Value {
    return v.type === 'float32' ? v : this.g.op('Cast', [v], { to: castTo('float32') }, { type: 'float32' });
  }

  protected param(p: Param): Value {
    return this.compute(this.options.weight(p));
  }

  protected scalar(like: Value, n: number): Value {
    return this.g.constant([n], [], like.type);
  }

  /** Both operands in one type: float32 only when both are float32, else the compute type. */
  private pair(a: Value, b: Value | number): [Value, Value] {
    if (typeof b === 'number') return [a, this.scalar(a, b)];
    if (a.type === b.type) return [a, b];
    return [this.compute(a), this.compute(b)];
  }

  private binary(op: string, a: Value, b: Value | number): Value {
    const [x, y] = this.pair(a, b);
    return this.g.op(op, [x, y], {}, { rank: Math.max(x.rank, y.rank) });
  }

  private shapeSlice(x: Value, start: number, end: number): Value {
    const shape = this.g.op('Shape', [x], {}, { type: 'int64', rank: 1 });
    return this.g.op(
      'Slice',
      [shape, this.g.ints([start]), this.g.ints([end]), this.g.ints([0])],
      {},
      { type: 'int64', rank: 1 },
    );
  }

  // -- layers with weights ----------------------------------------------------------------------

  linear(x: Value, layer: Linear): Value {
    const xin = this.compute(x);
    const wT = this.g.op('Transpose', [this.param(layer.weight)], { perm: [1, 0] }); // [in, out]
    let y = this.g.op('MatMul', [xin, wT], {}, { rank: xin.rank });
    if (layer.bias) y = this.g.op('Add', [y, this.param(layer.bias)]);
    const path = this.sidePaths.get(layer);
    if (path !== undefined) {
      const names = sidePathInputs(path);
      this.sideInputs.set(path, { inFeatures: layer.inFeatures, outFeatures: layer.outFeatures });
      const down = this.compute(
        this.g.input(names.down, 'float32', [layer.inFeatures, `rank_${this.sideInputs.size - 1}`]),
      );
      const up = this.compute(
        this.g.input(names.up, 'float32', [`rank_${this.sideInputs.size - 1}`, layer.outFeatures]),
      );
      const low = this.g.op(
        'MatMul',
        [this.g.op('MatMul', [xin, down], {}, { rank: xin.rank }), up],
        {},
        { rank: xin.rank },
      );
      y = this.g.op('Add', [y, low]);
    }
    this.lastDim.set(y, layer.outFeatures);
    return y;
  }

  conv2d(x: Value, layer: Conv2d, pad?: Pad2d): Value {
    const p = pad ?? [
      [layer.padding, layer.padding],
      [layer.padding, layer.padding],
    ];
    const inputs = [this.compute(x), this.param(layer.weight)];
    if (layer.bias) inputs.push(this.param(layer.bias));
    return this.g.op('Conv', inputs, {
      kernel_shape: [layer.kernelSize, layer.kernelSize],
      strides: [layer.stride, layer.stride],
      pads: [p[0][0], p[1][0], p[0][1], p[1][1]], // [top, left, bottom, right]
    });
  }

  groupNorm(x: Value, layer: GroupNorm): Value {
    // Normalise each group as one "instance": [B, C, H, W] -> [B, G, C/G*H*W].
    const xc = this.compute(x);
    const grouped = this.g.op('Reshape', [xc, this.g.ints([0, layer.numGroups, -1])], {}, { rank: 3 });
    const ones = this.g.constant(new Float32Array(layer.numGroups).fill(1), [layer.numGroups], this.dtype);
    const zeros = this.g.constant(new Float32Array(layer.numGroups), [layer.numGroups], this.dtype);
    const normed = this.g.op('InstanceNormalization', [grouped, ones, zeros], { epsilon: { float: layer.eps } });
    const back = this.g.op(
      'Reshape',
      [normed, this.g.op('Shape', [xc], {}, { type: 'int64', rank: 1 })],
      {},
      { rank: xc.rank },
    );
    const perChannel = (p: Param) => this.g.op('Reshape', [this.param(p), this.g.ints([-1, 1, 1])], {}, { rank: 3 }); // [C, 1, 1]
    return this.g.op('Add', [this.g.op('Mul', [back, perChannel(layer.weight)]), perChannel(layer.bias)]);
  }

  layerNorm(x: Value, layer: LayerNorm): Value {
    return this.g.op('LayerNormalization', [this.compute(x), this.param(layer.weight), this.param(layer.bias)], {
      axis: -1,
      epsilon: { float: layer.eps },
    });
  }

  embedding(ids: Value, table: Param): Value {
    return this.g.op('Gather', [this.param(table), ids], { axis: 0 }, { type: this.dtype, rank: ids.rank + 1 });
  }

  tableRows(table: Param, n: number): Value {
    return this.g.op('Slice', [this.param(table), this.g.ints([0]), this.g.ints([n]), this.g.ints([0])]);
  }

  // -- elementwise ------------------------------------------------------------------------------

  add(a: Value, b: Value | number): Value {
    return this.binary('Add', a, b);
  }
  sub(a: Value, b: Value | number): Value {
    return this.binary('Sub', a, b);
  }
  mul(a: Value, b: Value | number): Value {
    return this.binary('Mul', a, b);
  }
  div(a: Value, b: Value | number): Value {
    return this.binary('Div', a, b);
  }
  sigmoid(x: Value): Value {
    return this.g.op('Sigmoid', [x]);
  }
  erf(x: Value): Value {
    return this.g.op('Erf', [x]);
  }
  exp(x: Value): Value {
    return this.g.op('Exp', [x]);
  }
  sin(x: Value): Value {
    if (x.type !== 'float32' || this.options.sinCos !== 'series') return this.g.op('Sin', [x]);
    // r in [-pi, pi]; sin r = sin(pi - r) = sin(-pi - r) folds it onto [-pi/2, pi/2].
    const r = this.reducedAngle(x);
    const folded = this.g.op('Max', [
      this.g.op('Min', [r, this.minus(Math.PI, r)]),
      this.g.op('Neg', [this.minus(Math.PI, this.g.op('Neg', [r]))]),
    ]);
    return this.sinSeries(folded);
  }
  cos(x: Value): Value {
    if (x.type !== 'float32' || this.options.sinCos !== 'series') return this.g.op('Cos', [x]);
    // cos r = sin(pi/2 - |r|), with pi/2 - |r| in [-pi/2, pi/2].
    return this.sinSeries(this.minus(Math.PI / 2, this.g.op('Abs', [this.reducedAngle(x)])));
  }

  /**
   * x - 2 pi k, k = round(x / 2 pi), in about [-pi, pi] (Cody-Waite: 2 pi = C1 + C2 with C1 =
   * 6.28125, 8 significant bits, so k C1 and x - k C1 are exact in float32 for |k| < 2^16).
   */
  private reducedAngle(x: Value): Value {
    const C1 = 6.28125;
    // floor(x / 2 pi + 1/2): ONNX Runtime's WebGPU provider has Floor, not Round.
    const half = this.g.op('Add', [this.g.op('Mul', [x, this.scalar(x, 1 / (2 * Math.PI))]), this.scalar(x, 0.5)]);
    const k = this.g.op('Floor', [half]);
    const hi = this.g.op('Sub', [x, this.g.op('Mul', [k, this.scalar(x, C1)])]);
    return this.g.op('Sub', [hi, this.g.op('Mul', [k, this.scalar(x, 2 * Math.PI - C1)])]);
  }

  /** c - r for a constant c near r, as (c1 - r) + (c - c1), c1 = c rounded to 8 bits: exact to float32 rounding. */
  private minus(c: number, r: Value): Value {
    const c1 = Math.round(c * 64) / 64;
    return this.g.op('Add', [this.g.op('Sub', [this.scalar(r, c1), r]), this.scalar(r, c - c1)]);
  }

  /**
   * sin r for r in [-pi/2, pi/2], its Taylor series to r^15 (truncation below 1e-11), Horner in r^2
   * with Mul and Add (`sinCos: 'series'`). The sinusoidal time embedding feeds every block: with
   * WebGPU's own Sin and Cos the training step's gradients were 21x further from PyTorch's than the
   * CPU provider's (docs/onnx-gradients.md).
   */
  private sinSeries(r: Value): Value {
    const coefficients = Array.from({ length: 8 }, (_, j) => {
      let factorial = 1;
      for (let i = 2; i <= 2 * j + 1; i++) factorial *= i;
      return (j % 2 ? -1 : 1) / factorial;
    });
    const r2 = this.g.op('Mul', [r, r]);
    let acc = this.scalar(r, coefficients[coefficients.length - 1]);
    for (let j = coefficients.length - 2; j >= 0; j--)
      acc = this.g.op('Add', [this.g.op('Mul', [acc, r2]), this.scalar(r, coefficients[j])]);
    return this.g.op('Mul', [acc, r]);
  }
  clip(x: Value, min: number, max: number): Value {
    return this.g.op('Clip', [x, this.scalar(x, min), this.scalar(x, max)]);
  }

  // -- structure --------------------------------------------------------------------------------

  constant(data: Float32Array, shape: readonly number[]): Value {
    return this.g.constant(data, shape, 'float32');
  }

  reshape(x: Value, shape: readonly number[]): Value {
    return this.g.op('Reshape', [x, this.g.ints(shape)], {}, { rank: shape.length });
  }

  concat(xs: readonly Value[], axis: number): Value {
    const same = xs.every((v) => v.type === xs[0].type);
    return this.g.op('Concat', same ? xs : xs.map((v) => this.compute(v)), { axis });
  }

  split(x: Value, n: number, axis: number): Value[] {
    return this.g.node('Split', [x], { axis }, { count: n });
  }

  argMax(x: Value, axis: number): Value {
    return this.g.op('ArgMax', [x], { axis, keepdims: 0 }, { type: 'int64', rank: x.rank - 1 });
  }

  equalTo(x: Value, value: number): Value {
    const eq = this.g.op('Equal', [x, this.g.constant([value], [], x.type)], {}, { type: 'int32' });
    return this.g.op('Cast', [eq], { to: castTo('int32') }, { type: 'int32' });
  }

  rowAt(x: Value, index: Value): Value {
    const idx = index.type === 'int64' ? index : this.g.op('Cast', [index], { to: castTo('int64') }, { type: 'int64' });
    const col = this.g.op('Unsqueeze', [idx, this.g.ints([1])], {}, { rank: 2 }); // [B, 1]
    return this.g.op('GatherND', [x, col], { batch_dims: 1 }, { type: x.type, rank: 2 }); // [B, C]
  }

  // -- images (NCHW) ----------------------------------------------------------------------------

  concatChannels(xs: readonly Value[]): Value {
    return this.concat(xs, 1);
  }

  splitChannels(x: Value, n: number): Value[] {
    return this.split(x, n, 1);
  }

  perChannel(v: Value): Value {
    return this.g.op('Unsqueeze', [v, this.g.ints([2, 3])], {}, { rank: 4 }); // [B, C, 1, 1]
  }

  toTokens(x: Value): Value {
    const flat = this.g.op('Reshape', [x, this.g.ints([0, 0, -1])], {}, { rank: 3 }); // [B, C, HW]
    return this.g.op('Transpose', [flat], { perm: [0, 2, 1] }); // [B, HW, C]
  }

  fromTokens(h: Value, like: Value): Value {
    const chw = this.g.op('Transpose', [h], { perm: [0, 2, 1] }); // [B, C, HW]
    const shape = this.g.op(
      'Concat',
      [this.g.ints([0, 0]), this.shapeSlice(like, 2, 4)],
      { axis: 0 },
      { type: 'int64', rank: 1 },
    ); // [0, 0, H, W]
    return this.g.op('Reshape', [chw, shape], {}, { rank: 4 });
  }

  upsampleNearest(x: Value, like?: Value): Value {
    const attrs = { mode: 'nearest', coordinate_transformation_mode: 'asymmetric', nearest_mode: 'floor' };
    if (!like) return this.g.op('Resize', [x, null, this.g.constant([1, 1, 2, 2], [4], 'float32')], attrs);
    const sizes = this.g.op(
      'Concat',
      [this.shapeSlice(x, 0, 2), this.shapeSlice(like, 2, 4)],
      { axis: 0 },
      { type: 'int64', rank: 1 },
    );
    return this.g.op('Resize', [x, null, null, sizes], attrs);
  }

  // -- attention --------------------------------------------------------------------------------

  attention(q: Value, k: Value, v: Value, heads: number, mask?: Value): Value {
    const inner = this.lastDim.get(q);
    if (inner === undefined)
      throw new Error('OnnxOps.attention: q must come from a Linear (its width is needed for the head size)');
    const d = inner / heads;
    if ((this.options.attention ?? 'fused') === 'fused') return this.fusedAttention(q, k, v, heads, mask);
    const split = (t: Value, perm: number[]) =>
      this.g.op('Transpose', [this.g.op('Reshape', [t, this.g.ints([0, 0, heads, d])], {}, { rank: 4 })], { perm });
    const qh = split(q, [0, 2, 1, 3]); // [B, heads, Sq, d]
    const kT = split(k, [0, 2, 3, 1]); // [B, heads, d, Sk]
    const vh = split(v, [0, 2, 1, 3]); // [B, heads, Sk, d]
    let scores = this.g.op('Mul', [this.g.op('MatMul', [qh, kT]), this.scalar(qh, 1 / Math.sqrt(d))]); // [B, heads, Sq, Sk]
    if (mask) scores = this.g.op('Add', [scores, this.compute(mask)]);
    const out = this.g.op('MatMul', [this.g.op('Softmax', [scores], { axis: -1 }), vh]); // [B, heads, Sq, d]
    const merged = this.g.op(
      'Reshape',
      [this.g.op('Transpose', [out], { perm: [0, 2, 1, 3] }), this.g.ints([0, 0, inner])],
      {},
      { rank: 3 },
    ); // [B, Sq, inner]
    return merged;
  }

  /**
   * ONNX Runtime's fused com.microsoft MultiHeadAttention(query, key, value, bias,
   * key_padding_mask, attention_bias) on q, k, v [B, S, heads * d]: no scores tensor is
   * materialised. Its scale defaults to 1/sqrt(head size); the mask [1, Sq, Sk] becomes
   * attention_bias [1, 1, Sq, Sk].
   */
  protected fusedAttention(q: Value, k: Value, v: Value, heads: number, mask?: Value): Value {
    const bias = mask ? this.g.op('Unsqueeze', [this.compute(mask), this.g.ints([0])], {}, { rank: 4 }) : null;
    const inputs = bias
      ? [this.compute(q), this.compute(k), this.compute(v), null, null, bias]
      : [this.compute(q), this.compute(k), this.compute(v)];
    return this.g.node('MultiHeadAttention', inputs, { num_heads: heads }, { domain: 'com.microsoft', rank: 3 })[0];
  }
}

/** The ONNX TensorProto data type number for a Cast's `to`. */
function castTo(t: ElemType): number {
  return ({ float32: 1, float16: 10, bfloat16: 16, int32: 6, int64: 7 } as const)[t];
}

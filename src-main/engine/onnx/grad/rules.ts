/**
 * Reverse-mode rules of the gradient executor (gradOps.ts), one per op of the model op interface
 * (models/ops/ops.ts), in one table, as JAX's `ad.defjvp` / `deflinear` and tinygrad's
 * `gradient.py` write them. Each rule emits, in standard ONNX ops, the vector-Jacobian product
 * of its op: given dL/dy for the op's outputs, dL/dx for the inputs that need one.
 *
 * Conventions: images are NCHW, sequences [B, S, C] (as OnnxOps emits them); gradients are in
 * the compute type and are cast back to each input's type. Base weights are frozen: no rule
 * emits a weight gradient; only the adapter side path of `linear` has trainable inputs.
 *
 *   op               forward                         vector-Jacobian product
 *   linear           y = x W^T + b + (x D) U         dx = dy W + (dy U^T) D^T
 *                                                    dD = x^T (dy U^T),  dU = (x D)^T dy
 *                                                    (summed over every leading axis)
 *   conv2d           Conv(x, W)                      dx = ConvTranspose(dy, W), cropped to x; or, at
 *                                                    stride 1, Conv(dy, W transposed and flipped)
 *   groupNorm        x^ = (x - mu) r, y = x^ g + b   dx = r (dx^ - mean(dx^) - x^ mean(dx^ x^)),
 *   layerNorm          r = 1/sqrt(var + eps)           dx^ = dy g; means over the group / last axis
 *   sigmoid, exp     s, e                            dy s (1 - s), dy e
 *   erf              erf(x)                          dy 2/sqrt(pi) exp(-x^2)
 *   sin, cos                                         dy cos x, -dy sin x
 *   clip             clamp(x, lo, hi)                dy where lo <= x <= hi, else 0
 *   add, sub, mul,   a op b (broadcast)              each operand's partial, summed back over
 *   div                                              the axes it was broadcast along
 *   attention        softmax(q k^T / sqrt(d)) v       per head group, from recomputed scores; small heads
 *                                                    with a fused forward: two fused attentions
 *                                                    (fusedAttentionBackward.ts)
 *   structure ops    reshape, concat, split, ...     the adjoint data movement
 *   upsampleNearest  Resize nearest                  each source pixel sums its copies
 */
import type { Value } from '../graphBuilder.ts';
import type { OpName, Rule, RuleContext, TapeEntry } from './tape.ts';
import { fusedAttentionBackward, useFusedAttention } from './fusedAttentionBackward.ts';
import { isStatic } from './shapes.ts';

type Rules = { [K in OpName]: Rule<K> };

const none = (): null[] => [];

/** Rank-2 view [N, last] of a [..., last] value. */
function rows(c: RuleContext, v: Value): Value {
  return v.rank === 2 ? v : c.g.op('Flatten', [v], { axis: v.rank - 1 }, { rank: 2 });
}

/** Elementwise rule of a one-input op: dx = dy * f'(x, y). */
function unary<K extends 'sigmoid' | 'erf' | 'exp' | 'sin' | 'cos'>(
  dfdx: (c: RuleContext, x: Value, y: Value) => Value,
): Rule<K> {
  return (c, e, [dy], need) => {
    if (!dy || !need[0]) return [null];
    return [c.castLike(c.g.op('Mul', [dy, dfdx(c, e.inputs[0], e.outputs[0])]), e.inputs[0])];
  };
}

/**
 * The rule of a binary elementwise op: `da(dy, a, b, y)` and `db(...)` give each operand's
 * gradient at the output's shape; it is then summed back over the operand's broadcast axes.
 */
function binary<K extends 'add' | 'sub' | 'mul' | 'div'>(
  da: (c: RuleContext, dy: Value, a: Value, b: Value, y: Value) => Value,
  db: (c: RuleContext, dy: Value, a: Value, b: Value, y: Value) => Value,
): Rule<K> {
  return (c, e, [dy], need) => {
    if (!dy) return [null, null];
    const a = e.inputs[0];
    const b = e.inputs.length > 1 ? e.inputs[1] : c.scalar(e.args.b ?? 0, dy);
    const y = e.outputs[0];
    const ca = c.castLike(a, dy);
    const cb = c.castLike(b, dy);
    return [
      need[0] ? c.castLike(c.unbroadcast(da(c, dy, ca, cb, y), a, y), a) : null,
      need[1] ? c.castLike(c.unbroadcast(db(c, dy, ca, cb, y), b, y), b) : null,
    ];
  };
}

const mul = (c: RuleContext, p: Value, q: Value) => c.g.op('Mul', [p, q]);

/** The sizes of `xs` along `axis`, static when known, else at run time (int64 [n]). */
function sizesAlong(c: RuleContext, xs: readonly Value[], axis: number): Value {
  const dims = xs.map((x) => c.shape(x)[axis < 0 ? x.rank + axis : axis]);
  if (isStatic(dims)) return c.g.ints(dims);
  const a = axis < 0 ? xs[0].rank + axis : axis;
  return c.g.op(
    'Concat',
    xs.map((x) => c.runtimeShape(x, a, a + 1)),
    { axis: 0 },
    { type: 'int64', rank: 1 },
  );
}

function concatRule<K extends 'concat' | 'concatChannels'>(axisOf: (e: TapeEntry<K>) => number): Rule<K> {
  return (c, e, [dy], need) => {
    if (!dy) return e.inputs.map(() => null);
    if (e.inputs.length === 1) return [c.castLike(dy, e.inputs[0])];
    const axis = axisOf(e);
    const parts = c.g.node('Split', [dy, sizesAlong(c, e.inputs, axis)], { axis }, { count: e.inputs.length });
    return parts.map((p, i) => (need[i] ? c.castLike(p, e.inputs[i]) : null));
  };
}

function splitRule<K extends 'split' | 'splitChannels'>(axisOf: (e: TapeEntry<K>) => number): Rule<K> {
  return (c, e, dy, need) => {
    if (!need[0] || dy.every((d) => d === null)) return [null];
    const parts = dy.map((d, i) => d ?? c.zerosLike(e.outputs[i]));
    const whole = parts.length === 1 ? parts[0] : c.g.op('Concat', parts, { axis: axisOf(e) });
    return [c.castLike(whole, e.inputs[0])];
  };
}

/** Gradient of a normalisation over the last axis of `grouped`, given dx^ in the same layout. */
function normBackward(c: RuleContext, grouped: Value, dxhat: Value, eps: number): Value {
  const g = c.g;
  const axes = [grouped.rank - 1];
  const mean = g.op('ReduceMean', [grouped], { axes, keepdims: 1 });
  const centred = g.op('Sub', [grouped, mean]);
  const variance = g.op('ReduceMean', [g.op('Mul', [centred, centred])], { axes, keepdims: 1 });
  const r = g.op('Reciprocal', [g.op('Sqrt', [g.op('Add', [variance, c.scalar(eps, grouped)])])]);
  const xhat = g.op('Mul', [centred, r]);
  const meanD = g.op('ReduceMean', [dxhat], { axes, keepdims: 1 });
  const meanDX = g.op('ReduceMean', [g.op('Mul', [dxhat, xhat])], { axes, keepdims: 1 });
  return g.op('Mul', [g.op('Sub', [g.op('Sub', [dxhat, meanD]), g.op('Mul', [xhat, meanDX])]), r]);
}

export const RULES: Rules = {
  linear: (c, e, [dy], need) => {
    if (!dy) return [null, null, null];
    const g = c.g;
    const { layer, side } = e.args;
    const [x, down, up] = e.inputs;
    const xin = c.castLike(x, dy);
    let dx = need[0] ? g.op('MatMul', [dy, c.param(layer.weight)], {}, { rank: dy.rank }) : null; // [..., in]
    if (!side) return [dx && c.castLike(dx, x)];
    const d = c.castLike(down, dy);
    const u = c.castLike(up, dy);
    const dLow = g.op('MatMul', [dy, g.op('Transpose', [u], { perm: [1, 0] })], {}, { rank: dy.rank }); // [..., r]
    if (dx) dx = g.op('Add', [dx, g.op('MatMul', [dLow, g.op('Transpose', [d], { perm: [1, 0] })])]);
    // Summed over every leading axis: Gemm with A transposed on the [N, *] views.
    const dDown = need[1]
      ? g.op('Gemm', [rows(c, xin), rows(c, dLow)], { transA: 1 }, { rank: 2 }) // [in, r]
      : null;
    const xd = g.op('MatMul', [xin, d], {}, { rank: xin.rank }); // [..., r]
    const dUp = need[2]
      ? g.op('Gemm', [rows(c, xd), rows(c, dy)], { transA: 1 }, { rank: 2 }) // [r, out]
      : null;
    return [dx && c.castLike(dx, x), dDown && c.castLike(dDown, down), dUp && c.castLike(dUp, up)];
  },

  conv2d: (c, e, [dy], need) => {
    if (!dy || !need[0]) return [null];
    const { layer, pad } = e.args;
    const s = layer.stride;
    const k = layer.kernelSize;
    const [h, w] = c.shape(e.inputs[0]).slice(2);
    if (s === 1 && typeof h === 'number' && typeof w === 'number' && h * w >= c.flippedFilterMinPixels) {
      // Conv on the filter transposed and flipped: ONNX Runtime folds it into a copy of the
      // filter when the session is created; on the CPU about twice as fast as ConvTranspose.
      const g = c.g;
      const wT = g.op('Transpose', [c.param(layer.weight)], { perm: [1, 0, 2, 3] }); // [in, out, k, k]
      const flipped = g.op('Slice', [wT, g.ints([-1, -1]), g.ints([-k - 1, -k - 1]), g.ints([2, 3]), g.ints([-1, -1])]);
      const dx = g.op('Conv', [dy, flipped], {
        kernel_shape: [k, k],
        pads: [k - 1 - pad[0][0], k - 1 - pad[1][0], k - 1 - pad[0][1], k - 1 - pad[1][1]],
      });
      return [c.castLike(dx, e.inputs[0])];
    }
    // Stride 1 gives back x's size exactly; stride s may fall one short, so output_padding s-1
    // makes it at least x's size, and the extra bottom/right rows (padding) are cropped.
    let dx = c.g.op('ConvTranspose', [dy, c.param(layer.weight)], {
      kernel_shape: [k, k],
      strides: [s, s],
      pads: [pad[0][0], pad[1][0], pad[0][1], pad[1][1]],
      output_padding: [s - 1, s - 1],
    });
    if (s > 1) {
      const x = e.inputs[0];
      const hw = c.shape(x).slice(2);
      const ends = isStatic(hw) ? c.g.ints(hw) : c.runtimeShape(x, 2, 4);
      dx = c.g.op('Slice', [dx, c.g.ints([0, 0]), ends, c.g.ints([2, 3])]);
    }
    return [c.castLike(dx, e.inputs[0])];
  },

  groupNorm: (c, e, [dy], need) => {
    if (!dy || !need[0]) return [null];
    const g = c.g;
    const { layer } = e.args;
    const x = c.castLike(e.inputs[0], dy);
    const gamma = g.op('Reshape', [c.param(layer.weight), g.ints([-1, 1, 1])], {}, { rank: 3 }); // [C, 1, 1]
    const group = (v: Value) => g.op('Reshape', [v, g.ints([0, layer.numGroups, -1])], {}, { rank: 3 }); // [B, G, C/G*H*W]
    const dxg = normBackward(c, group(x), group(g.op('Mul', [dy, gamma])), layer.eps);
    return [c.castLike(g.op('Reshape', [dxg, c.runtimeShape(x)], {}, { rank: x.rank }), e.inputs[0])];
  },

  layerNorm: (c, e, [dy], need) => {
    if (!dy || !need[0]) return [null];
    const x = c.castLike(e.inputs[0], dy);
    const dxhat = c.g.op('Mul', [dy, c.param(e.args.layer.weight)]);
    return [c.castLike(normBackward(c, x, dxhat, e.args.layer.eps), e.inputs[0])];
  },

  embedding: none,
  tableRows: none,
  constant: none,
  argMax: none,
  equalTo: none,

  add: binary(
    (_c, dy) => dy,
    (_c, dy) => dy,
  ),
  sub: binary(
    (_c, dy) => dy,
    (c, dy) => c.g.op('Neg', [dy]),
  ),
  mul: binary(
    (c, dy, _a, b) => mul(c, dy, b),
    (c, dy, a) => mul(c, dy, a),
  ),
  div: binary(
    (c, dy, _a, b) => c.g.op('Div', [dy, b]),
    (c, dy, _a, b, y) => c.g.op('Neg', [c.g.op('Div', [mul(c, dy, c.castLike(y, dy)), b])]), // -dy y / b
  ),

  sigmoid: unary((c, _x, s) => mul(c, s, c.g.op('Sub', [c.scalar(1, s), s]))),
  erf: unary((c, x) => mul(c, c.scalar(2 / Math.sqrt(Math.PI), x), c.g.op('Exp', [c.g.op('Neg', [mul(c, x, x)])]))),
  exp: unary((_c, _x, y) => y),
  sin: unary((c, x) => c.g.op('Cos', [x])),
  cos: unary((c, x) => c.g.op('Neg', [c.g.op('Sin', [x])])),
  clip: (c, e, [dy], need) => {
    if (!dy || !need[0]) return [null];
    const x = e.inputs[0];
    const g = c.g;
    const inside = g.op(
      'And',
      [
        g.op('GreaterOrEqual', [x, c.scalar(e.args.min, x)], {}, { type: 'int32' }),
        g.op('LessOrEqual', [x, c.scalar(e.args.max, x)], {}, { type: 'int32' }),
      ],
      {},
      { type: 'int32' },
    ); // bool
    return [c.castLike(g.op('Where', [inside, dy, c.scalar(0, dy)], {}, { type: dy.type, rank: dy.rank }), x)];
  },

  reshape: (c, e, [dy], need) => {
    if (!dy || !need[0]) return [null];
    const x = e.inputs[0];
    const s = c.shape(x);
    const to = isStatic(s) ? c.g.ints(s) : c.runtimeShape(x);
    return [c.castLike(c.g.op('Reshape', [dy, to], {}, { rank: x.rank }), x)];
  },
  concat: concatRule((e) => e.args.axis),
  split: splitRule((e) => e.args.axis),
  concatChannels: concatRule(() => 1),
  splitChannels: splitRule(() => 1),

  rowAt: (c, e, [dy], need) => {
    if (!dy || !need[0]) return [null, null];
    // dx[b, s, :] = dy[b, :] where s == index[b]: a one-hot [B, S, 1] times dy [B, 1, C].
    const g = c.g;
    const [x, index] = e.inputs;
    const idx = index.type === 'int64' ? index : g.op('Cast', [index], { to: 7 }, { type: 'int64' });
    const s = g.op('Squeeze', [c.runtimeShape(x, 1, 2), g.ints([0])], {}, { type: 'int64', rank: 0 });
    const range = g.op('Range', [g.constant([0], [], 'int64'), s, g.constant([1], [], 'int64')], {}, { rank: 1 }); // [S]
    const hot = g.op('Equal', [g.op('Unsqueeze', [idx, g.ints([1])], {}, { rank: 2 }), range], {}, { rank: 2 }); // [B, S]
    const hot3 = g.op('Unsqueeze', [g.op('Cast', [hot], { to: 1 }, { type: 'float32' }), g.ints([2])], {}, { rank: 3 });
    const dy3 = g.op('Unsqueeze', [dy, g.ints([1])], {}, { rank: 3 }); // [B, 1, C]
    return [c.castLike(g.op('Mul', [c.castLike(hot3, dy), dy3]), x), null];
  },

  perChannel: (c, e, [dy], need) => {
    if (!dy || !need[0]) return [null];
    return [c.castLike(c.g.op('ReduceSum', [dy, c.g.ints([2, 3])], { keepdims: 0 }, { rank: 2 }), e.inputs[0])];
  },
  toTokens: (c, e, [dy], need) => {
    if (!dy || !need[0]) return [null];
    const x = e.inputs[0];
    const chw = c.g.op('Transpose', [dy], { perm: [0, 2, 1] }); // [B, C, HW]
    return [c.castLike(c.g.op('Reshape', [chw, c.runtimeShape(x)], {}, { rank: 4 }), x)];
  },
  fromTokens: (c, e, [dy], need) => {
    if (!dy || !need[0]) return [null, null];
    const flat = c.g.op('Reshape', [dy, c.g.ints([0, 0, -1])], {}, { rank: 3 }); // [B, C, HW]
    return [c.castLike(c.g.op('Transpose', [flat], { perm: [0, 2, 1] }), e.inputs[0]), null]; // [B, HW, C]
  },
  upsampleNearest: (c, e, [dy], need) => {
    if (!dy || !need[0]) return e.inputs.map(() => null);
    const x = e.inputs[0];
    if (!e.args.like) {
      // 2x: each source pixel was copied to a 2x2 block. Average then times 4 is the block sum
      // exactly (scaling by a power of two is exact).
      const avg = c.g.op('AveragePool', [dy], { kernel_shape: [2, 2], strides: [2, 2] });
      return [c.castLike(mul(c, avg, c.scalar(4, avg)), x)];
    }
    // To `like`'s size: source index floor(dst / (out / in)) per axis, as ONNX Runtime's Resize
    // computes it; dx = Uh^T dy Uw with the one-hot selection matrices U [out, in].
    const uh = selection(c, c.runtimeShape(x, 2, 3), c.runtimeShape(e.inputs[1], 2, 3), dy);
    const uw = selection(c, c.runtimeShape(x, 3, 4), c.runtimeShape(e.inputs[1], 3, 4), dy);
    const rowsSummed = c.g.op('MatMul', [c.g.op('Transpose', [uh], { perm: [1, 0] }), dy], {}, { rank: 4 }); // [B, C, inH, outW]
    return [c.castLike(c.g.op('MatMul', [rowsSummed, uw], {}, { rank: 4 }), x), null];
  },

  attention: (c, e, [dy], need) => {
    if (!dy) return e.inputs.map(() => null);
    const shapes = e.inputs.map((t) => c.shape(t));
    return useFusedAttention(c.fusedAttention, shapes, e.args.heads, e.args.mask)
      ? fusedAttentionBackward(c, e, dy, c.attentionStats(e.outputs[0]))
      : attentionBackward(c, e, dy, need);
  },

  reduceSum: (c, e, [dy], need) => (dy && need[0] ? [c.castLike(expandBack(c, e, dy), e.inputs[0])] : [null]),
  reduceMean: (c, e, [dy], need) => {
    if (!dy || !need[0]) return [null];
    const g = c.g;
    const count = g.op(
      'Cast',
      [
        g.op('Div', [
          g.op('Size', [e.inputs[0]], {}, { type: 'int64', rank: 0 }),
          g.op('Size', [e.outputs[0]], {}, { type: 'int64', rank: 0 }),
        ]),
      ],
      { to: 1 },
      { type: 'float32', rank: 0 },
    );
    return [c.castLike(g.op('Div', [expandBack(c, e, dy), c.castLike(count, dy)]), e.inputs[0])];
  },
};

/** A reduction's dy broadcast back to its input's shape. */
function expandBack(c: RuleContext, e: TapeEntry<'reduceSum' | 'reduceMean'>, dy: Value): Value {
  const x = e.inputs[0];
  const { axes, keepdims } = e.args;
  const kept =
    keepdims || axes === undefined
      ? dy
      : c.g.op('Unsqueeze', [dy, c.g.ints(axes.map((a) => (a < 0 ? a + x.rank : a)))], {}, { rank: x.rank });
  return c.g.op('Expand', [kept, c.runtimeShape(x)], {}, { rank: x.rank });
}

/** The one-hot [out, in] matrix of nearest resizing along one axis (sizes int64 [1]). */
function selection(c: RuleContext, inSize: Value, outSize: Value, like: Value): Value {
  const g = c.g;
  const f32 = (v: Value) => g.op('Cast', [v], { to: 1 }, { type: 'float32' });
  const scalar = (v: Value) => g.op('Squeeze', [v, g.ints([0])], {}, { rank: 0 });
  const zero = g.constant([0], [], 'int64');
  const one = g.constant([1], [], 'int64');
  const dst = f32(g.op('Range', [zero, scalar(outSize), one], {}, { type: 'int64', rank: 1 })); // [out]
  const src = g.op('Floor', [g.op('Div', [dst, g.op('Div', [f32(outSize), f32(inSize)])])]); // [out]
  const srcIdx = g.op('Cast', [g.op('Unsqueeze', [src, g.ints([1])], {}, { rank: 2 })], { to: 7 }, { type: 'int64' }); // [out, 1]
  const all = g.op('Range', [zero, scalar(inSize), one], {}, { type: 'int64', rank: 1 }); // [in]
  const hot = g.op('Equal', [srcIdx, all], {}, { rank: 2 }); // [out, in]
  return c.castLike(g.op('Cast', [hot], { to: 1 }, { type: 'float32', rank: 2 }), like);
}

/**
 * Attention's backward, one head group at a time, from scores recomputed with MatMul and Softmax
 * (FlashAttention's backward, Dao et al. 2022, without the tiling of the rows):
 *
 *   per group, [B, G, S, d] layout; Qs = Q / sqrt(d)
 *   1. P  = softmax(Qs K^T + M)            recomputed, [B, G, Sq, Sk], from Q gated on dO
 *   2. D  = rowsum(dO * O)                 [B, G, Sq, 1] (from the forward output, all heads at once)
 *   3. dV = P^T dO
 *   4. dS = P * (dO V^T - D)              one MatMul: [dO, -D] [V, 1]^T
 *   5. dQ = dS K / sqrt(d);  dK = dS^T Qs
 *
 * Only one group's scores exist at a time (the group size is the forward's slicing, gradOps.ts).
 */
function attentionBackward(
  c: RuleContext,
  e: TapeEntry<'attention'>,
  dO: Value,
  need: readonly boolean[],
): (Value | null)[] {
  const g = c.g;
  const [q, k, v] = e.inputs.map((t) => c.castLike(t, dO));
  const mask = e.args.mask ? c.castLike(e.inputs[3], dO) : null;
  const heads = e.args.heads;
  const inner = c.shape(e.inputs[0])[2] as number;
  const d = inner / heads;
  const groups = headGroups(heads, c.attentionGroup(e.inputs[0], e.inputs[1], heads));
  const toHeads = (t: Value) =>
    g.op('Transpose', [g.op('Reshape', [t, g.ints([0, 0, heads, d])], {}, { rank: 4 })], { perm: [0, 2, 1, 3] }); // [B, heads, S, d]
  const O = c.castLike(e.outputs[0], dO);
  const dRow = g.op(
    'ReduceSum',
    [g.op('Reshape', [g.op('Mul', [dO, O]), g.ints([0, 0, heads, d])], {}, { rank: 4 }), g.ints([3])],
    { keepdims: 1 },
  ); // [B, Sq, heads, 1]
  const D = g.op('Transpose', [dRow], { perm: [0, 2, 1, 3] }); // [B, heads, Sq, 1]
  const parts = (t: Value) => splitHeads(g, t, groups);
  const [qs, ks, vs, dOs, Ds] = [toHeads(q), toHeads(k), toHeads(v), toHeads(dO), D].map(parts);
  const scale = c.scalar(1 / Math.sqrt(d), dO);
  const dq: Value[] = [];
  const dk: Value[] = [];
  const dv: Value[] = [];
  groups.forEach((_, i) => {
    // The recomputation reads q + 0 * sum(dO): the same values, but it cannot start before dO
    // exists, nor can common-subexpression elimination merge it with the forward's scores (which
    // would keep every head's scores alive until the backward pass).
    const gate = g.op('Mul', [c.sumAll(dOs[i]), c.scalar(0, dO)]);
    const qsc = g.op('Mul', [g.op('Add', [qs[i], gate]), scale]);
    const kT = g.op('Transpose', [ks[i]], { perm: [0, 1, 3, 2] }); // [B, G, d, Sk]
    let s = g.op('MatMul', [qsc, kT]); // [B, G, Sq, Sk]
    if (mask) s = g.op('Add', [s, mask]);
    const p = g.op('Softmax', [s], { axis: -1 });
    if (need[2]) dv.push(g.op('MatMul', [g.op('Transpose', [p], { perm: [0, 1, 3, 2] }), dOs[i]])); // [B, G, Sk, d]
    if (!need[0] && !need[1]) return;
    // dP - D as one product, [dO, -D] [V, 1]^T: a scores-sized tensor and a pass over one fewer
    // than dO V^T - D (each fresh scores-sized tensor also costs its page faults on the CPU).
    const ones = g.op(
      'Expand',
      [
        c.scalar(1, dO),
        g.op('Concat', [c.runtimeShape(vs[i], 0, 3), g.ints([1])], { axis: 0 }, { type: 'int64', rank: 1 }),
      ],
      {},
      { rank: 4 },
    ); // [B, G, Sk, 1]
    const dOD = g.op('Concat', [dOs[i], g.op('Neg', [Ds[i]])], { axis: 3 }); // [B, G, Sq, d + 1]
    const v1T = g.op('Transpose', [g.op('Concat', [vs[i], ones], { axis: 3 })], { perm: [0, 1, 3, 2] }); // [B, G, d + 1, Sk]
    const dS = g.op('Mul', [p, g.op('MatMul', [dOD, v1T])]); // P * (dO V^T - D), [B, G, Sq, Sk]
    if (need[0]) dq.push(g.op('Mul', [g.op('MatMul', [dS, ks[i]]), scale])); // [B, G, Sq, d]
    if (need[1]) dk.push(g.op('MatMul', [g.op('Transpose', [dS], { perm: [0, 1, 3, 2] }), qsc])); // [B, G, Sk, d]
  });
  const merge = (ts: Value[], like: Value) => {
    const all = ts.length === 1 ? ts[0] : g.op('Concat', ts, { axis: 1 }); // [B, heads, S, d]
    const back = g.op(
      'Reshape',
      [g.op('Transpose', [all], { perm: [0, 2, 1, 3] }), g.ints([0, 0, inner])],
      {},
      { rank: 3 },
    );
    return c.castLike(back, like);
  };
  return [
    need[0] ? merge(dq, e.inputs[0]) : null,
    need[1] ? merge(dk, e.inputs[1]) : null,
    need[2] ? merge(dv, e.inputs[2]) : null,
    ...(e.args.mask ? [null] : []),
  ];
}

/** Sizes of the head groups: `perGroup` heads each (the last may be smaller). */
export function headGroups(heads: number, perGroup: number): number[] {
  const size = Math.max(1, Math.min(heads, Math.floor(perGroup)));
  const out: number[] = [];
  for (let h = 0; h < heads; h += size) out.push(Math.min(size, heads - h));
  return out;
}

/** [B, heads, ...] -> one value per head group along axis 1. */
export function splitHeads(g: RuleContext['g'], t: Value, groups: readonly number[]): Value[] {
  return groups.length === 1 ? [t] : g.node('Split', [t, g.ints(groups)], { axis: 1 }, { count: groups.length });
}

/**
 * The gradient executor (design note: docs/onnx-gradients.md): OnnxOps (onnxOps.ts) that also
 * records a tape, so that running a module's `forward` with it emits the forward graph and
 * `backward` then emits the backward graph, in standard ONNX ops, from the same one model
 * definition. ONNX Runtime builds carry no gradient kernels; we need none, because the base
 * weights are frozen and only the adapters' low-rank factors get gradients.
 *
 *   forward    every op call records a tape entry (op, Value inputs and outputs, arguments)
 *   backward   walks the tape in reverse from a scalar loss (seed 1) and emits each entry's
 *              vector-Jacobian product from the rule table (grad/rules.ts); only entries on a
 *              path to a `wrt` value are differentiated
 *   checkpoint a segment's intermediates are not kept for the backward: the backward emits the
 *              segment's forward again (Chen et al. 2016), its inputs made to depend on the
 *              incoming gradient, so ONNX Runtime cannot run the recomputation early. Its
 *              recomputed nodes read other inputs than the forward's, so common-subexpression
 *              elimination cannot merge them back (test/engine/onnxGrad.test.ts checks the
 *              optimized model).
 *
 * Adapter side paths: a Linear in `sidePaths` computes y = x W^T + b + (x · down) · up, with
 * (down, up) from `sideFactors(path, layer)` (or, without it, graph inputs named as OnnxOps
 * names them). Their gradients come from `backward` with the factor Values in `wrt`
 * (`sideWrt()` lists them by `${path}.down` / `${path}.up`).
 *
 * Attention: the forward is computed per group of heads with MatMul and Softmax, and so is the
 * backward, which recomputes each group's scores: no more than one group's [B, G, Sq, Sk] scores
 * exist at a time, and every provider runs it. The group size is `attentionHeadsPerSlice`, or by
 * default as many heads as keep a group under 2^24 scores (64 MiB in float32, the budget of the
 * TensorFlow.js attention) when B, Sq and Sk are known numbers, else one head. With
 * `attention: 'fused'` the forward is ONNX Runtime's com.microsoft MultiHeadAttention instead
 * (as OnnxOps emits it for inference: no scores tensor, 2.2-2.6x less CPU time than the plain
 * ops on the CPU provider); the backward still recomputes the scores with plain ops, so the
 * rule is the same either way.
 *
 * Shapes: Values carry only a rank; GradOps keeps a symbolic shape per value (grad/shapes.ts)
 * so rules know broadcast axes and static sizes. Declare graph inputs with `input()` (or
 * `declare()`); a value it knows nothing about gets fresh symbols, and rules then fall back to
 * run-time Shape ops.
 */
import type { Conv2d } from '../models/layers/conv2d.ts';
import type { Linear } from '../models/layers/linear.ts';
import type { Param } from '../models/layers/module.ts';
import type { GroupNorm, LayerNorm } from '../models/layers/norm.ts';
import type { Pad2d } from '../models/ops/ops.ts';
import type { BlockRunner } from '../models/unet2dCondition.ts';
import type { ElemType, GraphBuilder, GraphDim, Value } from './graphBuilder.ts';
import { OnnxOps, sidePathInputs, type OnnxOpsOptions } from './onnxOps.ts';
import { type FusedAttentionStats, fusedAttentionForward, useFusedAttention } from './grad/fusedAttentionBackward.ts';
import { headGroups, RULES, splitHeads } from './grad/rules.ts';
import {
  broadcastAxes,
  broadcastShapes,
  convDim,
  type Dim,
  divDims,
  mulDims,
  reshapeShape,
  Symbols,
} from './grad/shapes.ts';
import type { OpArgs, OpName, Rule, RuleContext, TapeEntry } from './grad/tape.ts';
import type { LinearLayout } from '../../api/schemas.ts';

/**
 * Bumped whenever the graphs GradOps emits change (a rule, the attention slicing, the gates), so
 * that cached training graphs are rebuilt (trainStepGraph.ts puts it in its cache key).
 */
export const GRAD_VERSION = 9;

/** A side path's factors: down [in, r], up [r, out] (any float type; cast to the compute type). */
export interface SideFactors {
  readonly down: Value;
  readonly up: Value;
}

export interface GradOpsOptions extends OnnxOpsOptions {
  /** Supplies a side path's factors (instead of graph inputs named by `sidePathInputs`). */
  readonly sideFactors?: (path: string, layer: Linear) => SideFactors;
  /**
   * Heads per attention slice, forward and backward. Default: as many as keep a slice's scores
   * under 2^24 elements when the sizes are static, else 1 (one head's scores at a time). Fewer,
   * bigger slices mean fewer nodes (faster session creation) and less per-op overhead.
   */
  readonly attentionHeadsPerSlice?: number;
  /**
   * How a frozen Linear's forward reads its [out, in] weight. 'matmul' (default, as OnnxOps):
   * MatMul with the transposed weight, which ONNX Runtime folds into a transposed copy of every
   * weight. 'gemm': Gemm with transB on the rows of x, no copy. The backward reads the weight as
   * it is either way (dx = dy W). Measured on the 2-core machine, 8 Linears 1280 -> 5120 (200 MiB
   * of weights), forward and backward of 64 rows: 'matmul' 523 ms and +494 MiB RSS, 'gemm'
   * 905 ms and +319 MiB (scripts run once each; the CPU was shared).
   */
  readonly linearLayout?: LinearLayout;
  /**
   * Attention's backward when the forward is fused (float32): 'auto' (default) makes forward and
   * backward two fused attentions for small heads (grad/fusedAttentionBackward.ts: tiny-b's step, head
   * size 4, took 26% less CPU time; at head size 8 it gained nothing) and keeps the plain rule
   * otherwise; 'fused' takes the fused one for any head size (tests); 'plain' always the plain rule.
   */
  readonly attentionBackward?: 'auto' | 'fused' | 'plain';
  /**
   * Stride-1 convolutions whose input has at least this many pixels get their input gradient from
   * Conv on the filter transposed and flipped, which ONNX Runtime folds into a second copy of that
   * filter (default: none, ConvTranspose on the filter as it is).
   */
  readonly flippedFilterMinPixels?: number;
}

/** The default budget of one attention slice's scores (64 MiB in float32). */
const MAX_SCORES_PER_SLICE = 2 ** 24;

/** Ops whose outputs never carry a gradient (integer results, frozen tables, constants). */
const NON_DIFFERENTIABLE: ReadonlySet<OpName> = new Set(['embedding', 'tableRows', 'constant', 'argMax', 'equalTo']);

const isFloat = (t: ElemType) => t === 'float32' || t === 'float16' || t === 'bfloat16';

export class GradOps extends OnnxOps {
  private readonly tape: TapeEntry[] = [];
  private readonly shapes = new Map<string, readonly Dim[]>();
  private readonly sym = new Symbols();
  private readonly ownSidePaths: ReadonlyMap<Linear, string>;
  private readonly factors = new Map<string, SideFactors>();
  private readonly headsPerSlice: number | undefined;
  /** What fused-backward attentions' forwards kept, by output name. */
  private readonly attentionStats = new Map<string, FusedAttentionStats>();
  /** > 0 while an op emits (its nested op calls are not recorded) or a segment is replayed. */
  private depth = 0;
  private segment: number | undefined;
  private segments = 0;

  constructor(private readonly gradOptions: GradOpsOptions) {
    super({ ...gradOptions, sidePaths: undefined, attention: 'plain' });
    this.ownSidePaths = gradOptions.sidePaths ?? new Map();
    this.headsPerSlice = gradOptions.attentionHeadsPerSlice;
  }

  // -- shapes -----------------------------------------------------------------------------------

  /** A graph input whose dims (numbers, or names that stand for the same size wherever used) are known. */
  input(name: string, type: ElemType, dims: readonly GraphDim[]): Value {
    return this.declare(this.g.input(name, type, dims), dims);
  }

  /** Tells GradOps the shape of a value made outside it (named dims are symbols). */
  declare(v: Value, dims: readonly GraphDim[]): Value {
    if (dims.length !== v.rank)
      throw new Error(`GradOps.declare: '${v.name}' has rank ${v.rank}, but ${dims.length} dims were given`);
    this.shapes.set(
      v.name,
      dims.map((d) => (typeof d === 'number' ? d : Symbols.named(d))),
    );
    return v;
  }

  /** The symbolic shape of `v` (fresh symbols for a value nobody described). */
  shapeOf(v: Value): readonly Dim[] {
    let s = this.shapes.get(v.name);
    if (!s) {
      s = Array.from({ length: v.rank }, () => this.sym.fresh());
      this.shapes.set(v.name, s);
    }
    return s;
  }

  // -- recording --------------------------------------------------------------------------------

  private record<K extends OpName>(
    op: K,
    inputs: readonly Value[],
    args: OpArgs[K],
    emit: (ins: readonly Value[]) => Value[],
    shapes: (s: (readonly Dim[])[]) => (readonly Dim[])[],
  ): Value[] {
    if (this.depth > 0) return emit(inputs);
    this.depth++;
    let outputs: Value[];
    try {
      outputs = emit(inputs);
    } finally {
      this.depth--;
    }
    const outShapes = shapes(inputs.map((v) => this.shapeOf(v)));
    outputs.forEach((o, i) => {
      this.shapes.set(o.name, outShapes[i] ?? outShapes[0]);
    });
    this.tape.push({ op, inputs, outputs, args, emit, segment: this.segment } as TapeEntry);
    return outputs;
  }

  private one<K extends OpName>(
    op: K,
    inputs: readonly Value[],
    args: OpArgs[K],
    emit: (ins: readonly Value[]) => Value,
    shape: (s: (readonly Dim[])[]) => readonly Dim[],
  ): Value {
    return this.record(
      op,
      inputs,
      args,
      (ins) => [emit(ins)],
      (s) => [shape(s)],
    )[0];
  }

  // -- layers with weights ----------------------------------------------------------------------

  /** The side factors of `path` (made once, by `sideFactors` or as graph inputs). */
  private factorsFor(path: string, layer: Linear): SideFactors {
    let f = this.factors.get(path);
    if (f) return f;
    if (this.gradOptions.sideFactors) f = this.gradOptions.sideFactors(path, layer);
    else {
      const names = sidePathInputs(path);
      const rank = `rank_${this.sideInputs.size}`;
      f = {
        down: this.input(names.down, 'float32', [layer.inFeatures, rank]),
        up: this.input(names.up, 'float32', [rank, layer.outFeatures]),
      };
    }
    this.sideInputs.set(path, { inFeatures: layer.inFeatures, outFeatures: layer.outFeatures });
    this.factors.set(path, f);
    return f;
  }

  /** Every side factor made so far, by `${path}.down` and `${path}.up` (the keys of `backward`'s wrt). */
  sideWrt(): Map<string, Value> {
    const out = new Map<string, Value>();
    for (const [path, f] of this.factors) {
      out.set(`${path}.down`, f.down);
      out.set(`${path}.up`, f.up);
    }
    return out;
  }

  override linear(x: Value, layer: Linear): Value {
    const path = this.ownSidePaths.get(layer);
    const f = path === undefined ? null : this.factorsFor(path, layer);
    return this.one(
      'linear',
      f ? [x, f.down, f.up] : [x],
      { layer, side: f !== null },
      (ins) => {
        const y = this.frozenLinear(ins[0], layer);
        if (ins.length === 1) return y;
        const xin = this.compute(ins[0]);
        const low = this.g.op(
          'MatMul',
          [this.g.op('MatMul', [xin, this.compute(ins[1])], {}, { rank: xin.rank }), this.compute(ins[2])],
          {},
          { rank: xin.rank },
        ); // [..., out]
        return this.g.op('Add', [y, low]);
      },
      ([s]) => [...s.slice(0, -1), layer.outFeatures],
    );
  }

  /** x W^T + b with the frozen weight, in the layout `linearLayout` asks for. */
  private frozenLinear(x: Value, layer: Linear): Value {
    if ((this.gradOptions.linearLayout ?? 'matmul') === 'matmul') return super.linear(x, layer);
    const g = this.g;
    const xin = this.compute(x);
    const rows = xin.rank === 2 ? xin : g.op('Flatten', [xin], { axis: xin.rank - 1 }, { rank: 2 }); // [N, in]
    const inputs = [rows, this.param(layer.weight), ...(layer.bias ? [this.param(layer.bias)] : [])];
    const y = g.op('Gemm', inputs, { transB: 1 }, { rank: 2 }); // [N, out]
    if (xin.rank === 2) return y;
    const lead = this.runtimeShape(xin, 0, xin.rank - 1);
    const shape = g.op('Concat', [lead, g.ints([layer.outFeatures])], { axis: 0 }, { type: 'int64', rank: 1 });
    return g.op('Reshape', [y, shape], {}, { rank: xin.rank }); // [..., out]
  }

  override conv2d(x: Value, layer: Conv2d, pad?: Pad2d): Value {
    const p: Pad2d = pad ?? [
      [layer.padding, layer.padding],
      [layer.padding, layer.padding],
    ];
    const { kernelSize: k, stride: st } = layer;
    return this.one(
      'conv2d',
      [x],
      { layer, pad: p },
      (ins) => super.conv2d(ins[0], layer, p),
      ([s]) => [
        s[0],
        layer.outChannels,
        convDim(s[2], k, st, p[0][0], p[0][1], this.sym),
        convDim(s[3], k, st, p[1][0], p[1][1], this.sym),
      ],
    );
  }

  override groupNorm(x: Value, layer: GroupNorm): Value {
    return this.one(
      'groupNorm',
      [x],
      { layer },
      (ins) => super.groupNorm(ins[0], layer),
      ([s]) => s,
    );
  }

  override layerNorm(x: Value, layer: LayerNorm): Value {
    return this.one(
      'layerNorm',
      [x],
      { layer },
      (ins) => super.layerNorm(ins[0], layer),
      ([s]) => s,
    );
  }

  override embedding(ids: Value, table: Param): Value {
    return this.one(
      'embedding',
      [ids],
      { table },
      (ins) => super.embedding(ins[0], table),
      ([s]) => [...s, table.shape[1]],
    );
  }

  override tableRows(table: Param, n: number): Value {
    return this.one(
      'tableRows',
      [],
      { table, n },
      () => super.tableRows(table, n),
      () => [n, table.shape[1]],
    );
  }

  // -- elementwise ------------------------------------------------------------------------------

  private binaryOp(op: 'add' | 'sub' | 'mul' | 'div', a: Value, b: Value | number): Value {
    const emit = {
      add: (p: Value, q: Value | number) => super.add(p, q),
      sub: (p: Value, q: Value | number) => super.sub(p, q),
      mul: (p: Value, q: Value | number) => super.mul(p, q),
      div: (p: Value, q: Value | number) => super.div(p, q),
    }[op];
    if (typeof b === 'number')
      return this.one(
        op,
        [a],
        { b },
        (ins) => emit(ins[0], b),
        ([s]) => s,
      );
    return this.one(
      op,
      [a, b],
      {},
      (ins) => emit(ins[0], ins[1]),
      ([sa, sb]) => broadcastShapes(sa, sb, this.sym),
    );
  }

  override add(a: Value, b: Value | number): Value {
    return this.binaryOp('add', a, b);
  }
  override sub(a: Value, b: Value | number): Value {
    return this.binaryOp('sub', a, b);
  }
  override mul(a: Value, b: Value | number): Value {
    return this.binaryOp('mul', a, b);
  }
  override div(a: Value, b: Value | number): Value {
    return this.binaryOp('div', a, b);
  }
  override sigmoid(x: Value): Value {
    return this.one(
      'sigmoid',
      [x],
      {},
      (ins) => super.sigmoid(ins[0]),
      ([s]) => s,
    );
  }
  override erf(x: Value): Value {
    return this.one(
      'erf',
      [x],
      {},
      (ins) => super.erf(ins[0]),
      ([s]) => s,
    );
  }
  override exp(x: Value): Value {
    return this.one(
      'exp',
      [x],
      {},
      (ins) => super.exp(ins[0]),
      ([s]) => s,
    );
  }
  override sin(x: Value): Value {
    return this.one(
      'sin',
      [x],
      {},
      (ins) => super.sin(ins[0]),
      ([s]) => s,
    );
  }
  override cos(x: Value): Value {
    return this.one(
      'cos',
      [x],
      {},
      (ins) => super.cos(ins[0]),
      ([s]) => s,
    );
  }
  override clip(x: Value, min: number, max: number): Value {
    return this.one(
      'clip',
      [x],
      { min, max },
      (ins) => super.clip(ins[0], min, max),
      ([s]) => s,
    );
  }

  // -- structure --------------------------------------------------------------------------------

  override constant(data: Float32Array, shape: readonly number[]): Value {
    return this.one(
      'constant',
      [],
      { data, shape },
      () => super.constant(data, shape),
      () => shape,
    );
  }

  override reshape(x: Value, shape: readonly number[]): Value {
    return this.one(
      'reshape',
      [x],
      { shape },
      (ins) => super.reshape(ins[0], shape),
      ([s]) => reshapeShape(s, shape, this.sym),
    );
  }

  override concat(xs: readonly Value[], axis: number): Value {
    return this.one(
      'concat',
      xs,
      { axis },
      (ins) => super.concat(ins, axis),
      (s) => this.concatShape(s, axis),
    );
  }

  private concatShape(s: (readonly Dim[])[], axis: number): Dim[] {
    const a = axis < 0 ? s[0].length + axis : axis;
    const out = [...s[0]];
    const along = s.map((d) => d[a]);
    out[a] = along.every((d) => typeof d === 'number')
      ? (along as number[]).reduce((p, q) => p + q, 0)
      : this.sym.intern(`concat(${along.join(',')})`);
    return out;
  }

  private splitShape(s: readonly Dim[], n: number, axis: number): Dim[][] {
    const a = axis < 0 ? s.length + axis : axis;
    const part = [...s];
    part[a] = divDims(s[a], n) ?? this.sym.intern(`split(${s[a]},${n})`);
    return Array.from({ length: n }, () => part);
  }

  override split(x: Value, n: number, axis: number): Value[] {
    return this.record(
      'split',
      [x],
      { n, axis },
      (ins) => super.split(ins[0], n, axis),
      ([s]) => this.splitShape(s, n, axis),
    );
  }

  override argMax(x: Value, axis: number): Value {
    const a = axis < 0 ? x.rank + axis : axis;
    return this.one(
      'argMax',
      [x],
      { axis },
      (ins) => super.argMax(ins[0], axis),
      ([s]) => s.filter((_, i) => i !== a),
    );
  }

  override equalTo(x: Value, value: number): Value {
    return this.one(
      'equalTo',
      [x],
      { value },
      (ins) => super.equalTo(ins[0], value),
      ([s]) => s,
    );
  }

  override rowAt(x: Value, index: Value): Value {
    return this.one(
      'rowAt',
      [x, index],
      {},
      (ins) => super.rowAt(ins[0], ins[1]),
      ([s]) => [s[0], s[2]],
    );
  }

  // -- images -----------------------------------------------------------------------------------

  override concatChannels(xs: readonly Value[]): Value {
    return this.one(
      'concatChannels',
      xs,
      {},
      (ins) => super.concatChannels(ins),
      (s) => this.concatShape(s, 1),
    );
  }

  override splitChannels(x: Value, n: number): Value[] {
    return this.record(
      'splitChannels',
      [x],
      { n },
      (ins) => super.splitChannels(ins[0], n),
      ([s]) => this.splitShape(s, n, 1),
    );
  }

  override perChannel(v: Value): Value {
    return this.one(
      'perChannel',
      [v],
      {},
      (ins) => super.perChannel(ins[0]),
      ([s]) => [s[0], s[1], 1, 1],
    );
  }

  override toTokens(x: Value): Value {
    return this.one(
      'toTokens',
      [x],
      {},
      (ins) => super.toTokens(ins[0]),
      ([s]) => [s[0], mulDims(s[2], s[3]), s[1]],
    );
  }

  override fromTokens(h: Value, like: Value): Value {
    return this.one(
      'fromTokens',
      [h, like],
      {},
      (ins) => super.fromTokens(ins[0], ins[1]),
      ([sh, sl]) => [sh[0], sh[2], sl[2], sl[3]],
    );
  }

  override upsampleNearest(x: Value, like?: Value): Value {
    return this.one(
      'upsampleNearest',
      like ? [x, like] : [x],
      { like: like !== undefined },
      (ins) => super.upsampleNearest(ins[0], ins[1]),
      ([s, sl]) => (sl ? [s[0], s[1], sl[2], sl[3]] : [s[0], s[1], mulDims(s[2], 2), mulDims(s[3], 2)]),
    );
  }

  // -- attention --------------------------------------------------------------------------------

  override attention(q: Value, k: Value, v: Value, heads: number, mask?: Value): Value {
    return this.one(
      'attention',
      mask ? [q, k, v, mask] : [q, k, v],
      { heads, mask: mask !== undefined },
      (ins) => {
        if (this.gradOptions.attention !== 'fused') return this.slicedAttention(ins[0], ins[1], ins[2], heads, ins[3]);
        const c = this.ruleContext();
        if (
          !useFusedAttention(
            c.fusedAttention,
            [q, k, v].map((t) => this.shapeOf(t)),
            heads,
            mask !== undefined,
          )
        )
          return this.fusedAttention(ins[0], ins[1], ins[2], heads, ins[3]);
        // The forward its backward reuses (grad/fusedAttentionBackward.ts), also when a checkpoint replays it.
        const [qc, kc, vc] = ins.slice(0, 3).map((t) => this.compute(t));
        const { out, ...stats } = fusedAttentionForward(c, qc, kc, vc, heads);
        this.attentionStats.set(out.name, stats);
        return out;
      },
      ([s]) => s,
    );
  }

  /** Heads per attention slice for q [B, Sq, *] and k [B, Sk, *] (see `attentionHeadsPerSlice`). */
  private attentionGroup(q: Value, k: Value, heads: number): number {
    if (this.headsPerSlice !== undefined) return this.headsPerSlice;
    const [b, sq] = this.shapeOf(q);
    const sk = this.shapeOf(k)[1];
    if (typeof b !== 'number' || typeof sq !== 'number' || typeof sk !== 'number') return 1;
    return Math.max(1, Math.min(heads, Math.floor(MAX_SCORES_PER_SLICE / (b * sq * sk))));
  }

  /** softmax(Q K^T / sqrt(d) + M) V per group of heads (grad/rules.ts: attentionBackward). */
  private slicedAttention(q: Value, k: Value, v: Value, heads: number, mask?: Value): Value {
    const g = this.g;
    const inner = this.shapeOf(q)[2];
    if (typeof inner !== 'number' || inner % heads !== 0)
      throw new Error(
        `GradOps.attention: q's last dim must be a known multiple of ${heads} heads (q [${this.shapeOf(q)}])`,
      );
    const d = inner / heads;
    const groups = headGroups(heads, this.attentionGroup(q, k, heads));
    const toHeads = (t: Value) =>
      g.op('Transpose', [g.op('Reshape', [this.compute(t), g.ints([0, 0, heads, d])], {}, { rank: 4 })], {
        perm: [0, 2, 1, 3],
      }); // [B, heads, S, d]
    const [qs, ks, vs] = [q, k, v].map((t) => splitHeads(g, toHeads(t), groups));
    const scale = this.scalar(qs[0], 1 / Math.sqrt(d));
    const outs = groups.map((_, i) => {
      const kT = g.op('Transpose', [ks[i]], { perm: [0, 1, 3, 2] }); // [B, G, d, Sk]
      let s = g.op('MatMul', [g.op('Mul', [qs[i], scale]), kT]); // [B, G, Sq, Sk]
      if (mask) s = g.op('Add', [s, this.compute(mask)]);
      return g.op('MatMul', [g.op('Softmax', [s], { axis: -1 }), vs[i]]); // [B, G, Sq, d]
    });
    const all = outs.length === 1 ? outs[0] : g.op('Concat', outs, { axis: 1 }); // [B, heads, Sq, d]
    return g.op('Reshape', [g.op('Transpose', [all], { perm: [0, 2, 1, 3] }), g.ints([0, 0, inner])], {}, { rank: 3 }); // [B, Sq, inner]
  }

  // -- reductions (for losses) ------------------------------------------------------------------

  /** Sum over `axes` (all when omitted). */
  reduceSum(x: Value, axes?: readonly number[], keepdims = false): Value {
    return this.one(
      'reduceSum',
      [x],
      { axes, keepdims },
      (ins) =>
        this.g.op(
          'ReduceSum',
          axes ? [ins[0], this.g.ints(axes)] : [ins[0]],
          { keepdims: keepdims ? 1 : 0 },
          {
            rank: reducedRank(x.rank, axes, keepdims),
          },
        ),
      ([s]) => reducedShape(s, axes, keepdims),
    );
  }

  /** Mean over `axes` (all when omitted). */
  reduceMean(x: Value, axes?: readonly number[], keepdims = false): Value {
    return this.one(
      'reduceMean',
      [x],
      { axes, keepdims },
      (ins) =>
        this.g.op(
          'ReduceMean',
          [ins[0]],
          axes ? { axes: [...axes], keepdims: keepdims ? 1 : 0 } : { keepdims: keepdims ? 1 : 0 },
          {
            rank: reducedRank(x.rank, axes, keepdims),
          },
        ),
      ([s]) => reducedShape(s, axes, keepdims),
    );
  }

  // -- checkpointing and the backward pass ------------------------------------------------------

  /**
   * Runs `fn`; the backward pass emits its forward again instead of reading its intermediates.
   * A checkpoint inside a checkpoint is part of the outer one.
   */
  checkpoint<R extends Value | Value[]>(fn: () => R): R {
    if (this.segment !== undefined || this.depth > 0) return fn();
    this.segment = this.segments++;
    try {
      return fn();
    } finally {
      this.segment = undefined;
    }
  }

  /**
   * A UNet BlockRunner (unet2dCondition.ts) that checkpoints every block whose first input holds at
   * least `minElements` values per sample (C H W; every block by default, and any block whose size
   * is not known). Low-resolution blocks hold little per value of arithmetic, so keeping their
   * activations costs little memory and saves their recomputation.
   */
  checkpointBlocks(minElements = 0): BlockRunner<Value> {
    return (_name, fn, inputs) => {
      const perSample = this.shapeOf(inputs[0]).slice(1);
      const size = perSample.every((d) => typeof d === 'number')
        ? (perSample as number[]).reduce((a, b) => a * b, 1)
        : Number.POSITIVE_INFINITY;
      return size >= minElements ? this.checkpoint(() => fn(inputs)) : fn(inputs);
    };
  }

  /** d(loss)/d(v) for each wrt value, from the scalar `loss` (seed 1). */
  backward(loss: Value, wrt: ReadonlyMap<string, Value>): Map<string, Value> {
    const one = this.g.op('Expand', [this.g.constant([1], [], loss.type), this.runtimeShape(loss)]);
    return this.vjp([[loss, one]], wrt);
  }

  /** The vector-Jacobian product: the gradients of `wrt` given seeds [value, d(value)]. */
  vjp(seeds: ReadonlyArray<readonly [Value, Value]>, wrt: ReadonlyMap<string, Value>): Map<string, Value> {
    if (this.segment !== undefined) throw new Error('GradOps.backward: called inside checkpoint()');
    const dependent = dependents(this.tape, new Set([...wrt.values()].map((v) => v.name)));
    const adj = new Map<string, Value>();
    for (const [v, dv] of seeds) this.accumulate(adj, v, dv);
    this.walk(this.tape, adj, dependent);
    const out = new Map<string, Value>();
    for (const [key, v] of wrt) {
      const gv = adj.get(v.name);
      out.set(key, gv ? this.castLike(gv, v) : this.zerosLike(v));
    }
    return out;
  }

  private accumulate(adj: Map<string, Value>, v: Value, dv: Value): void {
    const prev = adj.get(v.name);
    adj.set(v.name, prev ? this.g.op('Add', [prev, dv]) : dv);
  }

  private walk(entries: readonly TapeEntry[], adj: Map<string, Value>, dependent: ReadonlySet<string>): void {
    const c = this.ruleContext();
    for (let i = entries.length - 1; i >= 0; i--) {
      const e = entries[i];
      if (e.segment !== undefined) {
        let start = i;
        while (start > 0 && entries[start - 1].segment === e.segment) start--;
        this.replaySegment(entries.slice(start, i + 1), adj, dependent);
        i = start;
        continue;
      }
      if (NON_DIFFERENTIABLE.has(e.op)) continue;
      const dy = e.outputs.map((o) => adj.get(o.name) ?? null);
      if (dy.every((d) => d === null)) continue;
      const need = e.inputs.map((v) => dependent.has(v.name));
      if (!need.some(Boolean)) continue;
      const dx = (RULES[e.op] as Rule<OpName>)(c, e, dy, need);
      e.inputs.forEach((v, j) => {
        const d = dx[j];
        if (need[j] && d) this.accumulate(adj, v, d);
      });
    }
  }

  /**
   * The backward of a checkpointed segment: its forward emitted again on inputs gated by the
   * incoming gradient (x + 0 * sum(dy): same values, but ONNX Runtime must wait for dy), then
   * that copy differentiated; the gradients of the segment's inputs go back to the outer walk.
   */
  private replaySegment(seg: readonly TapeEntry[], adj: Map<string, Value>, dependent: ReadonlySet<string>): void {
    const g = this.g;
    const produced = new Set(seg.flatMap((e) => e.outputs.map((o) => o.name)));
    const outs = [...produced].filter((n) => adj.has(n));
    if (outs.length === 0 || !seg.some((e) => e.inputs.some((v) => dependent.has(v.name)))) return;
    const first = adj.get(outs[0]) as Value;
    const token = g.op('Mul', [sumAll(g, first), this.scalar(first, 0)]); // 0, after dy
    const map = new Map<string, Value>();
    const free: Value[] = [];
    for (const e of seg)
      for (const v of e.inputs)
        if (!produced.has(v.name) && !map.has(v.name)) {
          free.push(v);
          map.set(v.name, isFloat(v.type) ? g.op('Add', [v, this.castLike(token, v)]) : v);
          this.shapes.set((map.get(v.name) as Value).name, this.shapeOf(v));
        }
    const copy: TapeEntry[] = [];
    this.depth++;
    try {
      for (const e of seg) {
        const inputs = e.inputs.map((v) => map.get(v.name) ?? v);
        const outputs = e.emit(inputs);
        outputs.forEach((o, i) => {
          map.set(e.outputs[i].name, o);
          this.shapes.set(o.name, this.shapeOf(e.outputs[i]));
        });
        copy.push({ ...e, inputs, outputs, segment: undefined });
      }
    } finally {
      this.depth--;
    }
    const subAdj = new Map<string, Value>();
    for (const n of outs) subAdj.set((map.get(n) as Value).name, adj.get(n) as Value);
    const roots = free.filter((v) => dependent.has(v.name)).map((v) => (map.get(v.name) as Value).name);
    this.walk(copy, subAdj, dependents(copy, new Set(roots)));
    for (const v of free) {
      const d = subAdj.get((map.get(v.name) as Value).name);
      if (d && dependent.has(v.name)) this.accumulate(adj, v, d);
    }
  }

  // -- what rules use ---------------------------------------------------------------------------

  private castLike(v: Value, like: Value): Value {
    if (v.type === like.type) return v;
    return this.g.op('Cast', [v], { to: CAST_TO[like.type] }, { type: like.type });
  }

  private runtimeShape(v: Value, from?: number, to?: number): Value {
    const attrs: Record<string, number> = {};
    if (from !== undefined) attrs.start = from;
    if (to !== undefined) attrs.end = to;
    return this.g.op('Shape', [v], attrs, { type: 'int64', rank: 1 });
  }

  private zerosLike(v: Value): Value {
    const zeros = this.g.op('ConstantOfShape', [this.runtimeShape(v)], {}, { type: 'float32', rank: v.rank });
    return this.castLike(zeros, v);
  }

  private unbroadcast(dy: Value, operand: Value, out: Value): Value {
    const g = this.g;
    const { lead, unit, unknown } = broadcastAxes(this.shapeOf(operand), this.shapeOf(out));
    let r = dy;
    if (lead.length > 0) r = g.op('ReduceSum', [r, g.ints(lead)], { keepdims: 0 }, { rank: operand.rank });
    if (unknown) {
      // Some axis may or may not have been broadcast: sum over the operand's size-1 axes, found
      // at run time (summing an axis of size 1 on both sides changes nothing).
      const ones = g.op('Equal', [this.runtimeShape(operand), g.ints([1])], {}, { type: 'int64' });
      const axes = g.op(
        'Reshape',
        [g.op('NonZero', [ones], {}, { type: 'int64', rank: 2 }), g.ints([-1])],
        {},
        { rank: 1 },
      );
      const summed = g.op('ReduceSum', [r, axes], { keepdims: 1, noop_with_empty_axes: 1 });
      // Reshaped to the operand's shape: ONNX shape inference loses the rank of a reduction over
      // run-time axes, and a later Resize whose sizes derive from it would fail to load.
      return g.op('Reshape', [summed, this.runtimeShape(operand)], {}, { rank: operand.rank });
    }
    if (unit.length > 0) r = g.op('ReduceSum', [r, g.ints(unit)], { keepdims: 1 });
    return r;
  }

  private ruleContext(): RuleContext {
    return {
      g: this.g,
      dtype: this.dtype,
      attentionGroup: (q, k, heads) => this.attentionGroup(q, k, heads),
      fusedAttention:
        this.gradOptions.attention !== 'fused' ||
        this.dtype !== 'float32' ||
        this.gradOptions.attentionBackward === 'plain'
          ? 'off'
          : this.gradOptions.attentionBackward === 'fused'
            ? 'always'
            : 'small',
      shape: (v) => this.shapeOf(v),
      param: (p) => this.param(p),
      castLike: (v, like) => this.castLike(v, like),
      runtimeShape: (v, from, to) => this.runtimeShape(v, from, to),
      unbroadcast: (dy, operand, out) => this.unbroadcast(dy, operand, out),
      zerosLike: (v) => this.zerosLike(v),
      sumAll: (v) => sumAll(this.g, v),
      scalar: (n, like) => this.scalar(like, n),
      attentionStats: (out) => this.attentionStats.get(out.name),
      flippedFilterMinPixels: this.gradOptions.flippedFilterMinPixels ?? Number.POSITIVE_INFINITY,
    };
  }
}

/**
 * The sum of all of `v`'s elements, as a scalar whose rank ONNX shape inference knows even when
 * it does not know `v`'s (a plain ReduceSum's output rank follows its input's).
 */
export function sumAll(g: GraphBuilder, v: Value): Value {
  const flat = g.op('Reshape', [v, g.ints([-1])], {}, { rank: 1 });
  return g.op('ReduceSum', [flat], { keepdims: 0 }, { rank: 0 });
}

/** Values that depend on `roots` through the entries (in tape order). */
function dependents(entries: readonly TapeEntry[], roots: ReadonlySet<string>): Set<string> {
  const out = new Set(roots);
  for (const e of entries) {
    if (NON_DIFFERENTIABLE.has(e.op)) continue;
    if (e.inputs.some((v) => out.has(v.name))) for (const o of e.outputs) out.add(o.name);
  }
  return out;
}

function reducedRank(rank: number, axes: readonly number[] | undefined, keepdims: boolean): number {
  if (keepdims) return rank;
  return axes ? rank - axes.length : 0;
}

function reducedShape(s: readonly Dim[], axes: readonly number[] | undefined, keepdims: boolean): Dim[] {
  const all = axes ? axes.map((a) => (a < 0 ? a + s.length : a)) : s.map((_, i) => i);
  return keepdims ? s.map((d, i) => (all.includes(i) ? 1 : d)) : s.filter((_, i) => !all.includes(i));
}

/** ONNX TensorProto data type numbers for Cast. */
const CAST_TO: Record<ElemType, number> = { float32: 1, float16: 10, bfloat16: 16, int32: 6, int64: 7 };

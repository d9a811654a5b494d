/**
 * The tape of the gradient executor (gradOps.ts): one entry per op call of the model op interface
 * (models/ops/ops.ts), plus the reductions a loss needs. An entry keeps the op's Value inputs
 * and outputs, its other arguments, and a function that emits the op's forward again on other
 * inputs (gradient checkpointing replays a segment with it).
 */
import type { Conv2d } from '../../models/layers/conv2d.ts';
import type { Linear } from '../../models/layers/linear.ts';
import type { Param } from '../../models/layers/module.ts';
import type { GroupNorm, LayerNorm } from '../../models/layers/norm.ts';
import type { Pad2d } from '../../models/ops/ops.ts';
import type { ComputeType } from '../onnxOps.ts';
import type { GraphBuilder, Value } from '../graphBuilder.ts';
import type { FusedAttentionStats } from './fusedAttentionBackward.ts';
import type { Dim } from './shapes.ts';

/** Each op's non-Value arguments; the comment lists its Value inputs, in order. */
export interface OpArgs {
  linear: { layer: Linear; side: boolean }; // x, then down and up when `side`
  conv2d: { layer: Conv2d; pad: Pad2d }; // x
  groupNorm: { layer: GroupNorm }; // x
  layerNorm: { layer: LayerNorm }; // x
  embedding: { table: Param }; // ids
  tableRows: { table: Param; n: number }; // -
  add: { b?: number }; // a, and b unless it is the number `b`
  sub: { b?: number };
  mul: { b?: number };
  div: { b?: number };
  sigmoid: Record<string, never>; // x
  erf: Record<string, never>;
  exp: Record<string, never>;
  sin: Record<string, never>;
  cos: Record<string, never>;
  clip: { min: number; max: number }; // x
  constant: { data: Float32Array; shape: readonly number[] }; // -
  reshape: { shape: readonly number[] }; // x
  concat: { axis: number }; // xs
  split: { n: number; axis: number }; // x
  argMax: { axis: number }; // x
  equalTo: { value: number }; // x
  rowAt: Record<string, never>; // x, index
  concatChannels: Record<string, never>; // xs
  splitChannels: { n: number }; // x
  perChannel: Record<string, never>; // v
  toTokens: Record<string, never>; // x
  fromTokens: Record<string, never>; // h, like
  upsampleNearest: { like: boolean }; // x, and like when `like`
  attention: { heads: number; mask: boolean }; // q, k, v, and mask when `mask`
  reduceSum: { axes?: readonly number[]; keepdims: boolean }; // x
  reduceMean: { axes?: readonly number[]; keepdims: boolean }; // x
}

export type OpName = keyof OpArgs;

export interface TapeEntry<K extends OpName = OpName> {
  readonly op: K;
  readonly inputs: readonly Value[];
  readonly outputs: readonly Value[];
  readonly args: OpArgs[K];
  /** Emits this op's forward on `inputs` (same arity), unrecorded; returns its outputs. */
  readonly emit: (inputs: readonly Value[]) => Value[];
  /** The checkpoint segment the call was made in, if any. */
  readonly segment?: number;
}

/** What a rule may use besides the graph builder. */
export interface RuleContext {
  readonly g: GraphBuilder;
  readonly dtype: ComputeType;
  /** Heads per attention slice for these q and k (the forward's slicing; gradOps.ts). */
  attentionGroup(q: Value, k: Value, heads: number): number;
  /**
   * Where attention's backward uses ONNX Runtime's com.microsoft MultiHeadAttention
   * (grad/fusedAttentionBackward.ts; only when the forward does, in float32): 'off', for 'small'
   * heads, or wherever it can ('always', for tests of the rule on larger heads).
   */
  readonly fusedAttention: 'off' | 'small' | 'always';
  /**
   * Stride-1 convolutions whose input has at least this many pixels (H W) get their input gradient
   * from Conv on a transposed, flipped filter, which ONNX Runtime folds into a copy (GradOps'
   * `flippedFilterMinPixels`); the others from ConvTranspose.
   */
  readonly flippedFilterMinPixels: number;
  /** The statistics a fused-backward attention's forward kept for its output `out`, if it did. */
  attentionStats(out: Value): FusedAttentionStats | undefined;
  /** The symbolic shape of a value GradOps made or was told about. */
  shape(v: Value): readonly Dim[];
  /** A frozen parameter's initializer, in the compute type. */
  param(p: Param): Value;
  /** `v` cast to `like`'s element type (no node when it already is). */
  castLike(v: Value, like: Value): Value;
  /** The run-time shape of `v` (int64 [rank]), or dims `from`..`to` of it. */
  runtimeShape(v: Value, from?: number, to?: number): Value;
  /** `dy` summed back to the shape of `operand` after broadcasting to `out`. */
  unbroadcast(dy: Value, operand: Value, out: Value): Value;
  /** Zeros with the shape and type of `v`. */
  zerosLike(v: Value): Value;
  /** The sum of all elements of `v`, a scalar (its rank known to ONNX shape inference). */
  sumAll(v: Value): Value;
  /** A scalar constant of `v`'s type. */
  scalar(n: number, like: Value): Value;
}

/**
 * A vector-Jacobian rule: the gradients of an entry's inputs given its outputs' gradients
 * (`dy`, null for an output nothing downstream used). `need[i]` says whether input i leads to a
 * value the caller differentiates for; a rule may skip the others (return null).
 */
export type Rule<K extends OpName> = (
  c: RuleContext,
  e: TapeEntry<K>,
  dy: readonly (Value | null)[],
  need: readonly boolean[],
) => (Value | null)[];

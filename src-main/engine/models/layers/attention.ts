/**
 * diffusers `Attention`: the module (its projections, at their checkpoint paths) and its forward
 * over the executor's op interface; the attention itself is each executor's `attention` op
 * (TensorFlow.js: ops/tfAttention.ts; ONNX: the graph emitter).
 */
import { Module } from './module.ts';
import { Linear, type LinearSlot } from './linear.ts';
import type { Ops } from '../ops/ops.ts';

/**
 * diffusers `Attention` with the default processor: `to_q`, `to_k`, `to_v`, `to_out.0`.
 * Self-attention when no context is given. Input and output are [B, S, queryDim].
 */
export class Attention extends Module {
  to_q: LinearSlot;
  to_k: LinearSlot;
  to_v: LinearSlot;
  to_out: [LinearSlot];

  constructor(
    readonly queryDim: number,
    readonly heads: number,
    readonly headDim: number,
    contextDim: number = queryDim,
    qkvBias = false,
  ) {
    super();
    const inner = heads * headDim;
    this.to_q = new Linear(queryDim, inner, qkvBias);
    this.to_k = new Linear(contextDim, inner, qkvBias);
    this.to_v = new Linear(contextDim, inner, qkvBias);
    this.to_out = [new Linear(inner, queryDim, true)];
  }

  forward<T>(o: Ops<T>, x: T, context?: T): T {
    return o.scope(() => {
      const ctx = context ?? x;
      const q = this.to_q.forward(o, x);
      const k = this.to_k.forward(o, ctx);
      const v = this.to_v.forward(o, ctx);
      return this.to_out[0].forward(o, o.attention(q, k, v, this.heads));
    });
  }
}

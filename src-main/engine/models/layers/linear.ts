/**
 * Linear layer, `y = x W^T + b` as in `torch.nn.Linear`; x is [..., in], y is [..., out].
 * The weight's layout is the executor's choice (see ops/ops.ts).
 */
import type { Ops } from '../ops/ops.ts';
import { Module, Param, type Wrapper } from './module.ts';

/** Anything that maps [..., in] to [..., out]: a Linear, or an adapter wrapping one. */
export interface LinearLike {
  readonly inFeatures: number;
  readonly outFeatures: number;
  forward<T>(o: Ops<T>, x: T): T;
}

/** A Linear, or a wrapper standing in for one at the same checkpoint path. */
export type LinearSlot = Linear | (LinearLike & Wrapper);

export class Linear extends Module implements LinearLike {
  weight: Param;
  bias?: Param;

  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    bias = true,
  ) {
    super();
    this.weight = new Param([outFeatures, inFeatures], 'linear');
    if (bias) this.bias = new Param([outFeatures]);
  }

  forward<T>(o: Ops<T>, x: T): T {
    return o.linear(x, this);
  }
}

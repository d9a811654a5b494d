/**
 * GroupNorm (`torch.nn.GroupNorm`, over an image) and LayerNorm (`torch.nn.LayerNorm`, last
 * axis). Both use the biased variance, as PyTorch does; the math is in each executor.
 */
import type { Ops } from '../ops/ops.ts';
import { Module, Param } from './module.ts';

export class GroupNorm extends Module {
  weight: Param;
  bias: Param;

  constructor(
    readonly numGroups: number,
    readonly numChannels: number,
    readonly eps = 1e-5,
  ) {
    super();
    if (numChannels % numGroups !== 0)
      throw new Error(`GroupNorm: ${numChannels} channels do not split into ${numGroups} groups`);
    this.weight = new Param([numChannels]);
    this.bias = new Param([numChannels]);
  }

  forward<T>(o: Ops<T>, x: T): T {
    return o.groupNorm(x, this);
  }
}

export class LayerNorm extends Module {
  weight: Param;
  bias: Param;

  constructor(
    readonly dim: number,
    readonly eps = 1e-5,
  ) {
    super();
    this.weight = new Param([dim]);
    this.bias = new Param([dim]);
  }

  forward<T>(o: Ops<T>, x: T): T {
    return o.layerNorm(x, this);
  }
}

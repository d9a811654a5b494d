/**
 * The adapter contract shared by SingLoRA and LoRA, in the manner of PEFT's `LoraLayer`:
 * an adapter wraps its base Linear by composition and stands in for it at the same checkpoint
 * path (so the base weights keep their names).
 *
 *   unmerged   y = W0 x + b + s * update(x)     (training; swapping adapters is free)
 *   merged     y = (W0 + dW) x + b              (generation; dW folded into the base weight)
 *   disabled   y = W0 x + b                     (the base model, even while merged)
 *
 * `deltaWeight(step)` is the only place dW is computed. `merge` folds it in and keeps the
 * original weight; `unmerge` puts the original back, so the two are exact inverses.
 *
 * The step is an explicit input: `AdapterSet.setStep(t)` assigns it before a forward, and
 * merge/deltaWeight take it as an argument. Nothing here counts steps on its own.
 */
import { tf, type Tensor, type Variable } from '../backend/tf.ts';
import type { Linear, LinearLike } from '../models/layers/linear.ts';
import type { Wrapper } from '../models/layers/module.ts';
import type { Ops } from '../models/ops/ops.ts';
import { linearTf, tfOps } from '../models/ops/tfOps.ts';

export type AdapterMethod = 'singlora' | 'lora';

export interface AdapterHyper {
  readonly rank: number;
  readonly alpha: number;
  /** SingLoRA ramp length T (0 = no ramp). LoRA has no ramp and ignores it. */
  readonly rampSteps: number;
}

export abstract class AdapterLinear implements LinearLike, Wrapper {
  readonly isWrapper = true as const;
  abstract readonly method: AdapterMethod;

  /** The training step the unmerged forward uses for u(t); assigned by AdapterSet.setStep. */
  step = 0;
  /** Multiplier on the update (generation strength); 1 in training. */
  strength = 1;
  disabled = false;

  private original: Tensor | null = null;
  private mergedAt: { step: number; strength: number } | null = null;

  constructor(
    readonly base: Linear,
    readonly hyper: AdapterHyper,
  ) {
    if (!Number.isInteger(hyper.rank) || hyper.rank < 1)
      throw new Error(`adapter rank must be an integer >= 1, got ${hyper.rank}`);
    if (!Number.isFinite(hyper.alpha)) throw new Error(`adapter alpha must be a finite number, got ${hyper.alpha}`);
  }

  get inFeatures(): number {
    return this.base.inFeatures;
  }

  get outFeatures(): number {
    return this.base.outFeatures;
  }

  get merged(): boolean {
    return this.mergedAt !== null;
  }

  /** The factor in front of the update at `step`: (alpha / r) * u(step) * strength (scale.ts). */
  abstract scale(step: number): number;

  /** dW in PyTorch layout [out, in] at `step` (scale included). The caller owns the result. */
  abstract deltaWeight(step: number): Tensor;

  /** The unscaled factors of the update: down [in, r] and up [r, out]. The caller owns both. */
  abstract factors(): { down: Tensor; up: Tensor };

  /** The factors at the current step and strength, scale folded into `up`, as arrays (ONNX side paths). */
  async lowRankFactors(): Promise<{ down: Float32Array; up: Float32Array }> {
    const { down, up } = this.factors();
    const scaled = tf.mul(up, this.scale(this.step));
    try {
      return { down: (await down.data()) as Float32Array, up: (await scaled.data()) as Float32Array };
    } finally {
      tf.dispose([down, up, scaled]);
    }
  }

  /** The unscaled low-rank update for x2d [N, in] -> [N, out]. */
  protected abstract update(x2d: Tensor): Tensor;

  /** Trainable tensors, in a fixed order. */
  abstract variables(): Variable[];

  /** Named adapter tensors in PyTorch layout, suffixes as in the native file (e.g. `singlora_A`). */
  abstract namedTensors(): Array<[string, Variable]>;

  /** Number of trainable scalars. */
  parameterCount(): number {
    return this.variables().reduce((n, v) => n + v.size, 0);
  }

  /** Adapters train and run on TensorFlow.js; ONNX graphs take adapters as side-path inputs instead. */
  forward<T>(o: Ops<T>, x: T): T {
    if (o.executor !== 'tfjs')
      throw new Error(
        'AdapterLinear: an injected adapter only runs on TensorFlow.js; ONNX graphs take adapter factors as inputs (see engine/onnx)',
      );
    return this.apply(x as Tensor) as T;
  }

  apply(x: Tensor): Tensor {
    return tf.tidy(() => {
      if (this.disabled) {
        // The base model: while merged, the original weight is still kept.
        return this.original ? linearTf(x, this.original, this.base.bias?.value) : this.base.forward(tfOps, x);
      }
      if (this.merged) return this.base.forward(tfOps, x);
      const s = this.scale(this.step);
      const y = this.base.forward(tfOps, x);
      // No shortcut at s = 0 (u(0) = 0): training still needs the branch on the tape, and
      // y + 0 * update is exactly y.
      const lead = x.shape.slice(0, -1);
      const u = this.update(x.reshape([-1, this.inFeatures])).reshape([...lead, this.outFeatures]);
      return tf.add(y, tf.mul(u, s));
    });
  }

  /**
   * Folds dW(step) into the base weight. Merging again at the same step and strength is a no-op;
   * at a different one it is refused (unmerge first), so merges never stack silently.
   */
  merge(step: number): void {
    if (this.mergedAt) {
      if (this.mergedAt.step === step && this.mergedAt.strength === this.strength) return;
      throw new Error(
        `adapter already merged at step ${this.mergedAt.step} (strength ${this.mergedAt.strength}); unmerge before merging at step ${step} (strength ${this.strength})`,
      );
    }
    const mergedWeight = tf.tidy(() => {
      const deltaT = tf.transpose(this.deltaWeight(step)); // [in, out], the compute layout
      return tf.add(this.base.weight.value, deltaT);
    });
    this.original = this.base.weight.swapValue(mergedWeight);
    this.mergedAt = { step, strength: this.strength };
  }

  /** Restores the exact original base weight. A no-op when not merged. */
  unmerge(): void {
    if (!this.mergedAt || !this.original) return;
    const mergedWeight = this.base.weight.swapValue(this.original);
    mergedWeight?.dispose();
    this.original = null;
    this.mergedAt = null;
  }

  /** Unmerges and frees the adapter's own tensors; the base Linear stays intact. */
  dispose(): void {
    this.unmerge();
    for (const v of this.variables()) v.dispose();
  }
}

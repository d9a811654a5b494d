/**
 * Dynamic loss scaling for float16 training steps (issue 25): the loss gradient that seeds the
 * backward pass is multiplied by `scale`, so that the float16 activation gradients stay above
 * float16's underflow (normal values from 6.1e-5, subnormals to 6e-8: dL/dpred is about 2 / E for
 * E latent elements, 5e-4 at 64 x 64 x 4, and it shrinks layer by layer); the graph divides the
 * adapter gradients by the same scale in float32 (onnx/trainStepGraph.ts). Measured on the tiny-a
 * training step on WebGPU in float16: without scaling the worst gradient was 9.3e-2 of max|ref|
 * off float32's, with it 3.4e-2 (docs/onnx-gradients.md).
 *
 * The rule is PyTorch's GradScaler (init 2^16, growth 2 after 2,000 steps without overflow,
 * backoff 0.5), with one difference: a step whose gradients overflow is run again at the halved
 * scale on the same micro-batches instead of being skipped, so the data stream and the step count
 * stay those of a float32 run. float32 steps use `LossScale.fixed()`: scale 1, never retried.
 */

/** The scaler's checkpointed state. */
export interface LossScaleState {
  readonly scale: number;
  /** Steps since the last overflow or growth. */
  readonly goodSteps: number;
}

export const LOSS_SCALE_DEFAULTS = { init: 2 ** 16, growthInterval: 2000, minScale: 2 ** -24 } as const;

export class LossScale {
  #scale: number;
  #good = 0;

  private constructor(
    scale: number,
    /** false: the scale stays (float32). */
    readonly dynamic: boolean,
    readonly growthInterval: number,
  ) {
    this.#scale = scale;
  }

  /** The float16 scaler, GradScaler's defaults. */
  static dynamic(
    init: number = LOSS_SCALE_DEFAULTS.init,
    growthInterval: number = LOSS_SCALE_DEFAULTS.growthInterval,
  ): LossScale {
    if (!(init > 0) || !Number.isInteger(Math.log2(init)))
      throw new Error(
        `loss scale: the initial scale must be a power of two (exact in float16 and float32), got ${init}`,
      );
    if (!(growthInterval >= 1)) throw new Error(`loss scale: growthInterval must be at least 1, got ${growthInterval}`);
    return new LossScale(init, true, growthInterval);
  }

  /** Scale 1, no retries: float32 steps. */
  static fixed(): LossScale {
    return new LossScale(1, false, Number.POSITIVE_INFINITY);
  }

  get scale(): number {
    return this.#scale;
  }

  /**
   * The gradients at the current scale were not finite: true when the step should be run again
   * (the scale was halved), false when it cannot help (a fixed scale, or the floor reached).
   */
  overflowed(): boolean {
    if (!this.dynamic || this.#scale / 2 < LOSS_SCALE_DEFAULTS.minScale) return false;
    this.#scale /= 2;
    this.#good = 0;
    return true;
  }

  /** A step was applied at the current scale; after `growthInterval` of them the scale doubles. */
  applied(): void {
    if (!this.dynamic) return;
    this.#good += 1;
    if (this.#good >= this.growthInterval) {
      this.#scale *= 2;
      this.#good = 0;
    }
  }

  state(): LossScaleState {
    return { scale: this.#scale, goodSteps: this.#good };
  }

  /** Restores a checkpoint's state (a fixed scaler ignores it: a float32 run resumed stays float32). */
  load(state: LossScaleState): void {
    if (!this.dynamic) return;
    if (!(state.scale > 0) || !Number.isInteger(Math.log2(state.scale)) || !(state.goodSteps >= 0))
      throw new Error(
        `loss scale state: expected a power-of-two scale and goodSteps >= 0, got ${JSON.stringify(state)}`,
      );
    this.#scale = state.scale;
    this.#good = state.goodSteps;
  }
}

/** True when every value of every array is finite. */
export function allFinite(arrays: readonly Float32Array[]): boolean {
  for (const a of arrays) for (let j = 0; j < a.length; j++) if (!Number.isFinite(a[j])) return false;
  return true;
}

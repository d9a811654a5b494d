/**
 * DDPM: the training forward process, and ancestral sampling.
 *
 * Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models" (2020), arXiv:2006.11239;
 * v-prediction: Salimans & Ho, "Progressive Distillation" (2022), arXiv:2202.00512, §4.
 * Reproduces diffusers v0.27.2 `DDPMScheduler` (`add_noise`, `get_velocity`, `step` with
 * `variance_type` fixed_small / fixed_large).
 *
 * Training uses only the forward process:
 *   x_t = √ᾱ_t · x₀ + √(1-ᾱ_t) · ε                    (`addNoise`, eq. 4)
 *   v_t = √ᾱ_t · ε − √(1-ᾱ_t) · x₀                    (`getVelocity`)
 * and `target` picks what the UNet learns to predict from `prediction_type`. The forward process
 * runs on the caller's TensorFlow.js tensors through their own methods (`x.mul`), so this file loads
 * no TensorFlow.js; sampling (`step`) runs on Float32Arrays as every scheduler here.
 */
import type { Tensor } from '../backend/tf.ts';
import { f32, sqrt32 } from './float32.ts';
import { stepRatioFor } from './noiseSchedule.ts';
import { BaseScheduler, checkNoise, checkOutput, type Scheduler } from './scheduler.ts';
import {
  boolField,
  type ConfigOf,
  enumField,
  implemented,
  numberField,
  RESCALE_BETAS_FIELDS,
  samplingFields,
  THRESHOLDING_FIELDS,
} from './schedulerConfig.ts';
import { axpby, clip, originalFromOutput } from './stepMath.ts';

type VarianceType = 'fixed_small' | 'fixed_small_log' | 'fixed_large' | 'fixed_large_log' | 'learned' | 'learned_range';
const VARIANCE_TYPES: readonly VarianceType[] = [
  'fixed_small',
  'fixed_small_log',
  'fixed_large',
  'fixed_large_log',
  'learned',
  'learned_range',
];

/** `DDPMScheduler.__init__` (diffusers 0.27.2), a row per argument: code name, JSON key, default. */
export type DDPMConfig = ConfigOf<typeof DDPM_CONFIG>;
export const DDPM_CONFIG = {
  ...samplingFields('leading'),
  varianceType: implemented(
    enumField<VarianceType>('variance_type', 'fixed_small', VARIANCE_TYPES),
    (v) => v === 'fixed_small' || v === 'fixed_large',
    'use fixed_small (the default) or fixed_large',
  ),
  clipSample: boolField('clip_sample', true),
  ...THRESHOLDING_FIELDS,
  clipSampleRange: numberField('clip_sample_range', 1.0),
  ...RESCALE_BETAS_FIELDS,
};

export class DDPMScheduler extends BaseScheduler<DDPMConfig> implements Scheduler {
  static readonly spec = { className: 'DDPMScheduler', schema: DDPM_CONFIG };
  readonly name = 'ddpm' as const;
  readonly needsNoise = true;

  // ---- training forward process ------------------------------------------------------------

  /**
   * x_t = √ᾱ_t · x₀ + √(1-ᾱ_t) · ε, one timestep per batch item.
   * x0, noise: [B, ...]; timesteps: B integers in [0, num_train_timesteps). Returns a new [B, ...].
   */
  addNoise(x0: Tensor, noise: Tensor, timesteps: ArrayLike<number>): Tensor {
    const [sqrtA, sqrt1mA] = this.forwardCoefficients('addNoise', x0, noise, timesteps);
    return combine(sqrtA, x0, sqrt1mA, noise);
  }

  /** v_t = √ᾱ_t · ε − √(1-ᾱ_t) · x₀ (same shapes and ownership as `addNoise`). */
  getVelocity(x0: Tensor, noise: Tensor, timesteps: ArrayLike<number>): Tensor {
    const [sqrtA, sqrt1mA] = this.forwardCoefficients('getVelocity', x0, noise, timesteps);
    return combine(
      sqrtA,
      noise,
      sqrt1mA.map((v) => -v),
      x0,
    );
  }

  /** What the UNet is trained to predict for `prediction_type`: ε, v, or x₀. Caller owns the result. */
  target(x0: Tensor, noise: Tensor, timesteps: ArrayLike<number>): Tensor {
    switch (this.config.predictionType) {
      case 'epsilon':
        return noise.clone();
      case 'v_prediction':
        return this.getVelocity(x0, noise, timesteps);
      case 'sample':
        return x0.clone();
    }
  }

  /** [√ᾱ_t, √(1-ᾱ_t)] per batch item. Float32 as diffusers: `ᾱ[t] ** 0.5`, `(1 - ᾱ[t]) ** 0.5`. */
  private forwardCoefficients(
    op: string,
    x0: Tensor,
    noise: Tensor,
    timesteps: ArrayLike<number>,
  ): [Float32Array, Float32Array] {
    const who = `${this.className}.${op}`;
    const B = x0.shape[0];
    if (noise.shape.length !== x0.shape.length || noise.shape.some((d, i) => d !== x0.shape[i])) {
      throw new Error(
        `${who}: noise [${noise.shape.join(', ')}] and x0 [${x0.shape.join(', ')}] must have the same shape`,
      );
    }
    if (timesteps.length !== B) {
      throw new Error(
        `${who}: got ${timesteps.length} timesteps for a batch of ${B}; pass one timestep per batch item`,
      );
    }
    const T = this.config.numTrainTimesteps;
    const a = new Float32Array(B);
    const b = new Float32Array(B);
    for (let i = 0; i < B; i++) {
      const t = timesteps[i];
      if (!Number.isInteger(t) || t < 0 || t >= T)
        throw new Error(`${who}: timestep ${t} (batch item ${i}) is not an integer in [0, ${T})`);
      a[i] = sqrt32(this.alphasCumprod[t]);
      b[i] = sqrt32(f32(1 - this.alphasCumprod[t]));
    }
    return [a, b];
  }

  // ---- sampling ------------------------------------------------------------------------------

  /**
   * One ancestral step x_t -> x_{t-1} (eq. 6-7).
   *
   * | code                        | paper                    |
   * | --------------------------- | ------------------------ |
   * | sample                      | x_t                      |
   * | modelOutput                 | ε_θ(x_t, t) (or v, or x₀)|
   * | alphaProdT, alphaProdTPrev  | ᾱ_t, ᾱ_{t'} (t' = t - T/N; ᾱ = 1 before step 0) |
   * | currentAlphaT, currentBetaT | α_t = ᾱ_t/ᾱ_{t'}, β_t = 1 - α_t |
   * | predOriginalSample          | x̂₀                       |
   * | variance                    | σ_t² = (1-ᾱ_{t'})/(1-ᾱ_t)·β_t (fixed_small) or β_t (fixed_large) |
   * | noise                       | z ~ N(0, I), used when t > 0 |
   */
  step(modelOutput: Float32Array, t: number, sample: Float32Array, noise?: Float32Array): Float32Array {
    const who = this.className;
    const c = this.config;
    checkOutput(who, modelOutput, sample);
    const stepRatio = stepRatioFor(this.numInferenceSteps, t, c.numTrainTimesteps, who);
    if (t > 0) checkNoise(who, noise, sample, 'ancestral sampling at t > 0');

    // 1. ᾱ_t, ᾱ_{t'}, α_t, β_t (float32 scalars, as diffusers' 0-dim tensors)
    const prevT = t - stepRatio;
    const alphaProdT = this.alphasCumprod[t];
    const alphaProdTPrev = prevT >= 0 ? this.alphasCumprod[prevT] : 1.0;
    const betaProdT = f32(1 - alphaProdT);
    const betaProdTPrev = f32(1 - alphaProdTPrev);
    const currentAlphaT = f32(alphaProdT / alphaProdTPrev);
    const currentBetaT = f32(1 - currentAlphaT);

    // 2. x̂₀ from the model output (eq. 15)
    let predOriginalSample = originalFromOutput(c.predictionType, modelOutput, sample, alphaProdT);
    // 3. clip x̂₀
    if (c.clipSample) predOriginalSample = clip(predOriginalSample, c.clipSampleRange);

    // 4. posterior mean coefficients (eq. 7): μ̃ = √ᾱ_{t'} β_t/(1-ᾱ_t) · x̂₀ + √α_t (1-ᾱ_{t'})/(1-ᾱ_t) · x_t
    const predOriginalSampleCoeff = f32(f32(sqrt32(alphaProdTPrev) * currentBetaT) / betaProdT);
    const currentSampleCoeff = f32(f32(sqrt32(currentAlphaT) * betaProdTPrev) / betaProdT);

    // 5. μ̃_t
    const predPrevSample = axpby(predOriginalSampleCoeff, predOriginalSample, currentSampleCoeff, sample);
    if (t === 0) return predPrevSample;

    // 6. add σ_t z
    let variance =
      c.varianceType === 'fixed_small'
        ? f32(f32(f32(1 - alphaProdTPrev) / f32(1 - alphaProdT)) * currentBetaT)
        : currentBetaT;
    variance = Math.max(variance, f32(1e-20));
    return axpby(1, predPrevSample, sqrt32(variance), noise!);
  }

  reset(): void {
    // DDPM keeps no history.
  }
}

/**
 * a·x + b·y for tensors x, y [B, ...] and one coefficient per batch item, through the tensors' own
 * methods. The coefficients go in as nested arrays shaped [B, 1, …, 1]. Caller owns the result.
 */
function combine(a: Float32Array, x: Tensor, b: Float32Array, y: Tensor): Tensor {
  const column = (v: Float32Array) => Array.from(v, (c) => x.shape.slice(1).reduce<unknown>((n) => [n], c));
  const ax = x.mul(column(a) as number[]);
  const by = y.mul(column(b) as number[]);
  const out = ax.add(by);
  ax.dispose();
  by.dispose();
  return out;
}

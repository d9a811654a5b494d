/**
 * DDIM: denoising diffusion implicit models.
 *
 * Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (2021), arXiv:2010.02502, eq. 12 and 16.
 * Reproduces diffusers v0.27.2 `DDIMScheduler` (`step(..., eta)`, `use_clipped_model_output=False`).
 *
 * η = 0 is deterministic. η > 0 adds σ_t(η)·z, with the noise z supplied by the caller at every
 * step (`needsNoise` is true), so a run is reproducible from the project's own RNG.
 */
import { f32, sqrt32 } from './float32.ts';
import { stepRatioFor } from './noiseSchedule.ts';
import { BaseScheduler, checkNoise, checkOutput, type Scheduler } from './scheduler.ts';
import { boolField, type ConfigOf, numberField, RESCALE_BETAS_FIELDS, samplingFields } from './schedulerConfig.ts';
import { type RawSchedulerConfig, THRESHOLDING_FIELDS } from './schedulerConfig.ts';
import { axpby, clip, epsilonFromOutput, originalFromOutput, scale } from './stepMath.ts';

/** `DDIMScheduler.__init__` (diffusers 0.27.2), a row per argument: code name, JSON key, default. */
export type DDIMConfig = ConfigOf<typeof DDIM_CONFIG>;
export const DDIM_CONFIG = {
  ...samplingFields('leading'),
  clipSample: boolField('clip_sample', true),
  setAlphaToOne: boolField('set_alpha_to_one', true),
  ...THRESHOLDING_FIELDS,
  clipSampleRange: numberField('clip_sample_range', 1.0),
  ...RESCALE_BETAS_FIELDS,
};

/** Sampling options that are `step()` arguments in diffusers rather than config. */
export interface DDIMOptions {
  /** η in eq. 16: 0 = deterministic DDIM, 1 = DDPM-like ancestral noise. */
  readonly eta?: number;
}

export class DDIMScheduler extends BaseScheduler<DDIMConfig> implements Scheduler {
  static readonly spec = { className: 'DDIMScheduler', schema: DDIM_CONFIG };
  readonly name = 'ddim' as const;
  readonly eta: number;
  /** ᾱ used for the step after the last one: 1, or ᾱ_0 when `set_alpha_to_one` is false (SD-1.5). */
  readonly finalAlphaCumprod = this.config.setAlphaToOne ? 1.0 : this.alphasCumprod[0];

  /** As every scheduler's (`BaseScheduler`), with DDIM's η. */
  constructor(config: Partial<DDIMConfig> = {}, file: RawSchedulerConfig | null = null, options: DDIMOptions = {}) {
    super(config, file);
    const eta = options.eta ?? 0;
    if (!(eta >= 0) || !Number.isFinite(eta))
      throw new Error(`${this.className}: eta must be a finite number >= 0, got ${eta}`);
    this.eta = eta;
  }

  get needsNoise(): boolean {
    return this.eta > 0;
  }

  /**
   * One DDIM step x_t -> x_{t-1} (eq. 12).
   *
   * | code                   | paper                                                  |
   * | ---------------------- | ------------------------------------------------------ |
   * | sample                 | x_t                                                    |
   * | modelOutput            | ε_θ(x_t) (or v, or x₀ per prediction_type)             |
   * | alphaProdT             | α_t (the paper's α is diffusers' ᾱ, alphas_cumprod)    |
   * | alphaProdTPrev         | α_{t-1}, at prev t = t - T/N (finalAlphaCumprod below 0) |
   * | predOriginalSample     | "predicted x₀" = (x_t − √(1−α_t) ε_θ) / √α_t           |
   * | stdDevT                | σ_t(η) = η √((1−α_{t-1})/(1−α_t)) √(1−α_t/α_{t-1})      |
   * | predSampleDirection    | "direction pointing to x_t" = √(1−α_{t-1}−σ_t²) ε_θ    |
   * | noise                  | ε_t ~ N(0, I), only when η > 0                          |
   */
  step(modelOutput: Float32Array, t: number, sample: Float32Array, noise?: Float32Array): Float32Array {
    const who = this.className;
    const c = this.config;
    const stepRatio = stepRatioFor(this.numInferenceSteps, t, c.numTrainTimesteps, who);
    checkOutput(who, modelOutput, sample);
    if (this.eta > 0) checkNoise(who, noise, sample, `eta=${this.eta}`);

    // 1. previous step: t - T/N
    const prevT = t - stepRatio;

    // 2. α_t, α_{t-1}, 1 - α_t (float32 scalars, as diffusers' 0-dim tensors)
    const alphaProdT = this.alphasCumprod[t];
    const alphaProdTPrev = prevT >= 0 ? this.alphasCumprod[prevT] : this.finalAlphaCumprod;
    const betaProdT = f32(1 - alphaProdT);

    // 3. σ_t(η) (eq. 16), from the variance (1-α_{t-1})/(1-α_t) · (1 - α_t/α_{t-1})
    const variance = f32(f32(f32(1 - alphaProdTPrev) / betaProdT) * f32(1 - f32(alphaProdT / alphaProdTPrev)));
    const stdDevT = f32(f32(this.eta) * sqrt32(variance));
    //    and the direction coefficient √(1 − α_{t-1} − σ_t²)
    const directionCoeff = sqrt32(f32(f32(1 - alphaProdTPrev) - f32(stdDevT * stdDevT)));

    // 4. predicted x₀ and ε
    let predOriginalSample = originalFromOutput(c.predictionType, modelOutput, sample, alphaProdT);
    const predEpsilon = epsilonFromOutput(c.predictionType, modelOutput, sample, predOriginalSample, alphaProdT);

    // 5. clip x₀
    if (c.clipSample) predOriginalSample = clip(predOriginalSample, c.clipSampleRange);

    // 6. direction pointing to x_t
    const predSampleDirection = scale(directionCoeff, predEpsilon);

    // 7. x_{t-1} without noise: √α_{t-1} x̂₀ + direction
    const prevSample = axpby(sqrt32(alphaProdTPrev), predOriginalSample, 1, predSampleDirection);

    // 8. + σ_t ε_t
    return this.eta > 0 ? axpby(1, prevSample, stdDevT, noise!) : prevSample;
  }

  reset(): void {
    // DDIM keeps no history.
  }
}

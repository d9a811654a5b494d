/**
 * Euler ancestral ("Euler a" in A1111; k-diffusion `sample_euler_ancestral`).
 *
 * Each step goes down to σ_down with an Euler step and adds fresh noise of size σ_up, so that
 * σ_down² + σ_up² = σ_{i+1}² (the ancestral split of Ho et al. 2020 written in σ-space by
 * Karras et al. 2022, arXiv:2206.00364, and Crowson's k-diffusion).
 * Reproduces diffusers v0.27.2 `EulerAncestralDiscreteScheduler`.
 *
 * The noise is an argument of `step` (`needsNoise` is true): one N(0, I) draw per step,
 * including the last (where σ_up = 0 and it has no effect), as diffusers draws it.
 */
import { tf, type Tensor } from '../backend/tf.ts';
import { f32, sqrt32 } from './float32.ts';
import {
  alphasCumprodOf,
  betasFor,
  checkInferenceSteps,
  eulerInitNoiseSigma,
  indexForTimestep,
  sigmasAtTimesteps,
  spacedTimesteps,
  trainingSigmas,
} from './noiseSchedule.ts';
import { checkNoise, DISPLAY_NAMES, type Scheduler } from './scheduler.ts';
import {
  boolField,
  enumField,
  intField,
  NOISE_SCHEDULE_FIELDS,
  PREDICTION_TYPES,
  resolveConfig,
  TIMESTEP_SPACINGS,
  unsupported,
  type ConfigOf,
  type PredictionType,
  type RawSchedulerConfig,
  type TimestepSpacing,
} from './schedulerConfig.ts';

/** `EulerAncestralDiscreteScheduler.__init__` (diffusers 0.27.2): keys and defaults. */
export const EULER_ANCESTRAL_CONFIG = {
  ...NOISE_SCHEDULE_FIELDS,
  prediction_type: enumField<PredictionType>('epsilon', PREDICTION_TYPES),
  timestep_spacing: enumField<TimestepSpacing>('linspace', TIMESTEP_SPACINGS),
  steps_offset: intField(0),
  rescale_betas_zero_snr: boolField(false),
} as const;
export type EulerAncestralDiscreteConfig = ConfigOf<typeof EULER_ANCESTRAL_CONFIG>;

export class EulerAncestralDiscreteScheduler implements Scheduler {
  static readonly className = 'EulerAncestralDiscreteScheduler';
  readonly name = 'euler-a' as const;
  readonly displayName = DISPLAY_NAMES['euler-a'];
  readonly className = EulerAncestralDiscreteScheduler.className;
  readonly config: EulerAncestralDiscreteConfig;
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  readonly order = 1;
  readonly needsNoise = true;
  private readonly trainSigmas: Float32Array;
  private _timesteps: number[] = [];
  /** σ for each timestep, then a final 0 (float32 values). */
  private _sigmas: number[];
  private stepIndex: number | null = null;

  constructor(config: Partial<EulerAncestralDiscreteConfig> = {}) {
    this.config = resolveConfig(EulerAncestralDiscreteScheduler.className, EULER_ANCESTRAL_CONFIG, config);
    const c = this.config;
    if (c.rescale_betas_zero_snr) unsupported(this.className, 'rescale_betas_zero_snr', true, 'set it false');
    if (c.prediction_type === 'sample')
      unsupported(
        this.className,
        'prediction_type',
        'sample',
        'diffusers does not implement it either; use epsilon or v_prediction',
      );
    this.betas = betasFor(c);
    this.alphasCumprod = alphasCumprodOf(this.betas);
    this.trainSigmas = trainingSigmas(this.alphasCumprod);
    this._sigmas = [...this.trainSigmas].reverse().concat(0);
  }

  static fromConfig(
    raw: RawSchedulerConfig,
    overrides: Partial<EulerAncestralDiscreteConfig> = {},
  ): EulerAncestralDiscreteScheduler {
    return new EulerAncestralDiscreteScheduler(
      resolveConfig(
        EulerAncestralDiscreteScheduler.className,
        EULER_ANCESTRAL_CONFIG,
        raw.values,
        overrides,
        raw.source,
      ),
    );
  }

  get timesteps(): readonly number[] {
    return this._timesteps;
  }

  get sigmas(): readonly number[] {
    return this._sigmas;
  }

  /** σ_max for linspace/trailing spacing; √(σ_max² + 1) for leading (float32). */
  get initNoiseSigma(): number {
    return eulerInitNoiseSigma(this._sigmas, this.config.timestep_spacing);
  }

  /** As `EulerDiscreteScheduler.setTimesteps` with linear interpolation and no Karras option. */
  setTimesteps(numInferenceSteps: number): void {
    const c = this.config;
    const T = c.num_train_timesteps;
    checkInferenceSteps(this.className, numInferenceSteps, T);
    const timesteps = spacedTimesteps(c.timestep_spacing, T, numInferenceSteps, c.steps_offset, 'float32');
    this._sigmas = sigmasAtTimesteps(timesteps, this.trainSigmas).map(f32).concat(0);
    this._timesteps = timesteps.map(f32);
    this.stepIndex = null;
  }

  /** x / √(σ² + 1), σ of this timestep. Caller owns the result. */
  scaleModelInput(sample: Tensor, t: number): Tensor {
    this.stepIndex ??= indexForTimestep(this._timesteps, t, this.className);
    const sigma = this._sigmas[this.stepIndex];
    return tf.div(sample, sqrt32(f32(f32(sigma * sigma) + 1)));
  }

  /**
   * One ancestral Euler step.
   *
   * | code                | symbol                                            |
   * | ------------------- | ------------------------------------------------- |
   * | sample              | x_i                                               |
   * | sigmaFrom, sigmaTo  | σ_i, σ_{i+1}                                      |
   * | sigmaUp             | σ_up = √(σ_{i+1}² (σ_i² − σ_{i+1}²) / σ_i²)        |
   * | sigmaDown           | σ_down = √(σ_{i+1}² − σ_up²)                      |
   * | predOriginalSample  | D_θ(x_i; σ_i) = x_i − σ_i ε                        |
   * | derivative          | d_i = (x_i − D_θ) / σ_i                            |
   * | noise               | z ~ N(0, I), from the caller                      |
   * | result              | x_{i+1} = x_i + (σ_down − σ_i) d_i + σ_up z         |
   */
  step(modelOutput: Tensor, t: number, sample: Tensor, noise?: Tensor): Tensor {
    const who = this.className;
    if (this._timesteps.length === 0) throw new Error(`${who}.step: call setTimesteps(n) before stepping`);
    checkNoise(who, noise, sample, 'ancestral sampling');
    this.stepIndex ??= indexForTimestep(this._timesteps, t, who);
    if (this.stepIndex >= this._timesteps.length) {
      throw new Error(
        `${who}.step: the ${this._timesteps.length} timesteps of this run are done; call setTimesteps(n) to start another`,
      );
    }
    // 1. σ_i, σ_{i+1} and the split σ_{i+1}² = σ_down² + σ_up² (float32, in diffusers' order)
    const sigma = this._sigmas[this.stepIndex];
    const sigmaFrom = sigma;
    const sigmaTo = this._sigmas[this.stepIndex + 1];
    const from2 = f32(sigmaFrom * sigmaFrom);
    const to2 = f32(sigmaTo * sigmaTo);
    const sigmaUp = sqrt32(f32(f32(to2 * f32(from2 - to2)) / from2));
    const sigmaDown = sqrt32(f32(to2 - f32(sigmaUp * sigmaUp)));
    const dt = f32(sigmaDown - sigma);

    const prevSample = tf.tidy(() => {
      // 2. D_θ: the predicted x₀
      let predOriginalSample: Tensor;
      if (this.config.prediction_type === 'epsilon') {
        predOriginalSample = tf.sub(sample, tf.mul(sigma, modelOutput));
      } else {
        const s2p1 = f32(from2 + 1);
        predOriginalSample = tf.add(tf.mul(modelOutput, f32(-sigma / sqrt32(s2p1))), tf.div(sample, s2p1));
      }
      // 3. d_i = (x − D) / σ
      const derivative = tf.div(tf.sub(sample, predOriginalSample), sigma);
      // 4. Euler step down to σ_down
      const down = tf.add(sample, tf.mul(derivative, dt));
      // 5. + σ_up z
      return tf.add(down, tf.mul(noise!, sigmaUp));
    });
    this.stepIndex += 1;
    return prevSample;
  }

  /** Rewinds to the first timestep (no tensor history). */
  reset(): void {
    this.stepIndex = null;
  }
}

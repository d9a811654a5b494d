/**
 * Euler: the first-order ODE sampler in σ-space ("Euler" in A1111 / k-diffusion `sample_euler`).
 *
 * Karras, Aittala, Aila & Laine, "Elucidating the Design Space of Diffusion-Based Generative
 * Models" (2022), arXiv:2206.00364, Algorithm 2 with S_churn = 0 (no churn, as diffusers' defaults).
 * Reproduces diffusers v0.27.2 `EulerDiscreteScheduler` (`interpolation_type` linear / log_linear,
 * `use_karras_sigmas`, `timestep_type` discrete).
 *
 * The model sees x / √(σ²+1) (`scaleModelInput`) and is evaluated at a fractional training
 * timestep: with `linspace` spacing (SD-1.5 swapped from PNDM), 999, 946.42108…, …, 0.
 * `initNoiseSigma` is σ_max for linspace/trailing spacing and √(σ_max²+1) for leading, as in 0.27.2.
 */
import { tf, type Tensor } from '../backend/tf.ts';
import { f32, sqrt32, torchLinspaceF32 } from './float32.ts';
import {
  alphasCumprodOf,
  betasFor,
  checkInferenceSteps,
  eulerInitNoiseSigma,
  indexForTimestep,
  karrasSigmas,
  logSigmasOf,
  sigmasAtTimesteps,
  sigmaToT,
  spacedTimesteps,
  trainingSigmas,
} from './noiseSchedule.ts';
import { DISPLAY_NAMES, type Scheduler } from './scheduler.ts';
import {
  boolField,
  enumField,
  intField,
  NOISE_SCHEDULE_FIELDS,
  nullable,
  numberField,
  PREDICTION_TYPES,
  resolveConfig,
  TIMESTEP_SPACINGS,
  unsupported,
  type ConfigOf,
  type PredictionType,
  type RawSchedulerConfig,
  type TimestepSpacing,
} from './schedulerConfig.ts';

/** `EulerDiscreteScheduler.__init__` (diffusers 0.27.2): keys and defaults. */
export const EULER_CONFIG = {
  ...NOISE_SCHEDULE_FIELDS,
  prediction_type: enumField<PredictionType>('epsilon', PREDICTION_TYPES),
  interpolation_type: enumField<'linear' | 'log_linear'>('linear', ['linear', 'log_linear']),
  use_karras_sigmas: boolField(false),
  sigma_min: nullable(numberField(0)),
  sigma_max: nullable(numberField(0)),
  timestep_spacing: enumField<TimestepSpacing>('linspace', TIMESTEP_SPACINGS),
  timestep_type: enumField<'discrete' | 'continuous'>('discrete', ['discrete', 'continuous']),
  steps_offset: intField(0),
  rescale_betas_zero_snr: boolField(false),
} as const;
export type EulerDiscreteConfig = ConfigOf<typeof EULER_CONFIG>;

export class EulerDiscreteScheduler implements Scheduler {
  static readonly className = 'EulerDiscreteScheduler';
  readonly name = 'euler' as const;
  readonly displayName = DISPLAY_NAMES.euler;
  readonly className = EulerDiscreteScheduler.className;
  readonly config: EulerDiscreteConfig;
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  readonly order = 1;
  readonly needsNoise = false;
  private readonly trainSigmas: Float32Array;
  private readonly logSigmas: Float32Array;
  private _timesteps: number[] = [];
  /** σ for each timestep, then a final 0 (float32 values). */
  private _sigmas: number[];
  private stepIndex: number | null = null;

  constructor(config: Partial<EulerDiscreteConfig> = {}) {
    this.config = resolveConfig(EulerDiscreteScheduler.className, EULER_CONFIG, config);
    const c = this.config;
    if (c.rescale_betas_zero_snr) unsupported(this.className, 'rescale_betas_zero_snr', true, 'set it false');
    if (c.timestep_type !== 'discrete') unsupported(this.className, 'timestep_type', c.timestep_type, 'use discrete');
    this.betas = betasFor(c);
    this.alphasCumprod = alphasCumprodOf(this.betas);
    this.trainSigmas = trainingSigmas(this.alphasCumprod);
    this.logSigmas = logSigmasOf(this.trainSigmas);
    // Before setTimesteps, diffusers holds the full training σ table (descending) + 0.
    this._sigmas = [...this.trainSigmas].reverse().concat(0);
  }

  static fromConfig(raw: RawSchedulerConfig, overrides: Partial<EulerDiscreteConfig> = {}): EulerDiscreteScheduler {
    return new EulerDiscreteScheduler(
      resolveConfig(EulerDiscreteScheduler.className, EULER_CONFIG, raw.values, overrides, raw.source),
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

  /**
   * N float32 timesteps (descending) and N+1 sigmas:
   *   linspace  linspace(0, T-1, N) as float32, reversed            (999, 946.42108, …, 0)
   *   leading   round(arange(N) · T//N) + steps_offset, reversed
   *   trailing  round(arange(T, 0, -T/N)) - 1
   *   σ_i = interp(t_i, 0…T-1, σ_train) (linear), or exp(linspace(log σ_max, log σ_min, N+1)) (log_linear);
   *   Karras: σ from `karrasSigmas(σ_last, σ_first)`, t_i = sigmaToT(σ_i); then a final σ = 0.
   */
  setTimesteps(numInferenceSteps: number): void {
    const c = this.config;
    const T = c.num_train_timesteps;
    checkInferenceSteps(this.className, numInferenceSteps, T);
    let timesteps = spacedTimesteps(c.timestep_spacing, T, numInferenceSteps, c.steps_offset, 'float32');

    let sigmas: number[];
    if (c.interpolation_type === 'linear') {
      sigmas = sigmasAtTimesteps(timesteps, this.trainSigmas);
    } else {
      // torch.linspace(log σ_max, log σ_min, N + 1).exp(): diffusers 0.27.2 builds N+1 sigmas here
      // and then appends 0, so the last step ends at σ_min, not 0. Reproduced as is.
      const logMax = this.logSigmas[T - 1];
      const logMin = this.logSigmas[0];
      sigmas = [...torchLinspaceF32(logMax, logMin, numInferenceSteps + 1)].map((x) => f32(Math.exp(x)));
    }
    if (c.use_karras_sigmas) {
      sigmas = karrasSigmas(c.sigma_min ?? sigmas[sigmas.length - 1], c.sigma_max ?? sigmas[0], numInferenceSteps);
      timesteps = sigmas.map((s) => sigmaToT(s, this.logSigmas));
    }
    this._sigmas = sigmas.map(f32).concat(0);
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
   * One Euler step in σ (Algorithm 2, S_churn = 0, so σ̂ = σ).
   *
   * | code                | paper                                  |
   * | ------------------- | -------------------------------------- |
   * | sample              | x_i                                    |
   * | sigma, sigmaNext    | σ_i (= t̂_i), σ_{i+1}                  |
   * | modelOutput         | ε_θ(x_i / √(σ²+1), t_i)                |
   * | predOriginalSample  | D_θ(x_i; σ_i) = x_i − σ_i ε             |
   * | derivative          | d_i = (x_i − D_θ) / σ_i                 |
   * | dt                  | σ_{i+1} − σ_i                           |
   * | result              | x_{i+1} = x_i + (σ_{i+1} − σ_i) d_i     |
   */
  step(modelOutput: Tensor, t: number, sample: Tensor, _noise?: Tensor): Tensor {
    const who = this.className;
    if (this._timesteps.length === 0) throw new Error(`${who}.step: call setTimesteps(n) before stepping`);
    this.stepIndex ??= indexForTimestep(this._timesteps, t, who);
    if (this.stepIndex >= this._timesteps.length) {
      throw new Error(
        `${who}.step: the ${this._timesteps.length} timesteps of this run are done; call setTimesteps(n) to start another`,
      );
    }
    // 1. σ_i, σ_{i+1}
    const sigma = this._sigmas[this.stepIndex];
    const sigmaNext = this._sigmas[this.stepIndex + 1];
    const dt = f32(sigmaNext - sigma);

    const prevSample = tf.tidy(() => {
      // 2. D_θ: the predicted x₀
      let predOriginalSample: Tensor;
      if (this.config.prediction_type === 'epsilon') {
        predOriginalSample = tf.sub(sample, tf.mul(sigma, modelOutput));
      } else if (this.config.prediction_type === 'sample') {
        predOriginalSample = modelOutput;
      } else {
        // v: D = −σ/√(σ²+1) · v + x/(σ²+1)
        const s2p1 = f32(f32(sigma * sigma) + 1);
        predOriginalSample = tf.add(tf.mul(modelOutput, f32(-sigma / sqrt32(s2p1))), tf.div(sample, s2p1));
      }
      // 3. d_i = (x − D) / σ
      const derivative = tf.div(tf.sub(sample, predOriginalSample), sigma);
      // 4. x_{i+1} = x_i + d_i · (σ_{i+1} − σ_i)
      return tf.add(sample, tf.mul(derivative, dt));
    });
    this.stepIndex += 1;
    return prevSample;
  }

  /** Rewinds to the first timestep (Euler keeps no tensor history). */
  reset(): void {
    this.stepIndex = null;
  }
}

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
import { f32, torchLinspaceF32 } from './float32.ts';
import {
  inferenceTimesteps,
  karrasSigmas,
  logSigmasOf,
  sigmasAtTimesteps,
  sigmaToT,
  stepIndexFor,
} from './noiseSchedule.ts';
import { checkOutput, type Scheduler, SigmaScheduler } from './scheduler.ts';
import {
  boolField,
  type ConfigOf,
  enumField,
  implemented,
  nullable,
  numberField,
  RESCALE_BETAS_FIELDS,
  samplingFields,
} from './schedulerConfig.ts';
import { denoisedFromOutput, eulerUpdate } from './stepMath.ts';

/** `EulerDiscreteScheduler.__init__` (diffusers 0.27.2), a row per argument: code name, JSON key, default. */
export type EulerDiscreteConfig = ConfigOf<typeof EULER_CONFIG>;
export const EULER_CONFIG = {
  ...samplingFields('linspace'),
  interpolationType: enumField<'linear' | 'log_linear'>('interpolation_type', 'linear', ['linear', 'log_linear']),
  useKarrasSigmas: boolField('use_karras_sigmas', false),
  sigmaMin: nullable(numberField('sigma_min', 0)),
  sigmaMax: nullable(numberField('sigma_max', 0)),
  timestepType: implemented(
    enumField<'discrete' | 'continuous'>('timestep_type', 'discrete', ['discrete', 'continuous']),
    (v) => v === 'discrete',
    'use discrete',
  ),
  ...RESCALE_BETAS_FIELDS,
};

export class EulerDiscreteScheduler extends SigmaScheduler<EulerDiscreteConfig> implements Scheduler {
  static readonly spec = { className: 'EulerDiscreteScheduler', schema: EULER_CONFIG };
  readonly name = 'euler' as const;
  readonly needsNoise = false;
  private readonly logSigmas = logSigmasOf(this.trainSigmas);

  /**
   * N float32 timesteps (descending) and N+1 sigmas:
   *   linspace  linspace(0, T-1, N) as float32, reversed            (999, 946.42108, …, 0)
   *   leading   round(arange(N) · T//N) + steps_offset, reversed
   *   trailing  round(arange(T, 0, -T/N)) - 1
   *   σ_i = interp(t_i, 0…T-1, σ_train) (linear), or exp(linspace(log σ_max, log σ_min, N+1)) (log_linear);
   *   Karras: σ from `karrasSigmas(σ_last, σ_first)`, t_i = sigmaToT(σ_i); then a final σ = 0.
   */
  override setTimesteps(numInferenceSteps: number): void {
    const c = this.config;
    const T = c.numTrainTimesteps;
    let timesteps = inferenceTimesteps(this.className, c, numInferenceSteps, 'float32');

    let sigmas: number[];
    if (c.interpolationType === 'linear') {
      sigmas = sigmasAtTimesteps(timesteps, this.trainSigmas);
    } else {
      // torch.linspace(log σ_max, log σ_min, N + 1).exp(): diffusers 0.27.2 builds N+1 sigmas here
      // and then appends 0, so the last step ends at σ_min, not 0. Reproduced as is.
      const logMax = this.logSigmas[T - 1];
      const logMin = this.logSigmas[0];
      sigmas = [...torchLinspaceF32(logMax, logMin, numInferenceSteps + 1)].map((x) => f32(Math.exp(x)));
    }
    if (c.useKarrasSigmas) {
      sigmas = karrasSigmas(c.sigmaMin ?? sigmas[sigmas.length - 1], c.sigmaMax ?? sigmas[0], numInferenceSteps);
      timesteps = sigmas.map((s) => sigmaToT(s, this.logSigmas));
    }
    this.startRun(timesteps, sigmas);
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
  step(modelOutput: Float32Array, t: number, sample: Float32Array, _noise?: Float32Array): Float32Array {
    checkOutput(this.className, modelOutput, sample);
    this.stepIndex = stepIndexFor(this._timesteps, this.stepIndex, t, this.className);
    // 1. σ_i, σ_{i+1}
    const sigma = this._sigmas[this.stepIndex];
    const sigmaNext = this._sigmas[this.stepIndex + 1];
    const dt = f32(sigmaNext - sigma);

    // 2. D_θ: the predicted x₀
    const predOriginalSample = denoisedFromOutput(this.config.predictionType, modelOutput, sample, sigma);
    // 3-4. d_i = (x − D) / σ; x_{i+1} = x_i + d_i · (σ_{i+1} − σ_i)
    const prevSample = eulerUpdate(sample, predOriginalSample, sigma, dt);
    this.stepIndex += 1;
    return prevSample;
  }
}

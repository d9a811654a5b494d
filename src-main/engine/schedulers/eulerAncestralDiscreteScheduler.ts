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
import { f32, sqrt32 } from './float32.ts';
import { inferenceTimesteps, sigmasAtTimesteps, stepIndexFor } from './noiseSchedule.ts';
import { checkNoise, checkOutput, type Scheduler, SigmaScheduler } from './scheduler.ts';
import { type ConfigOf, EPSILON_OR_V_FIELD, RESCALE_BETAS_FIELDS, samplingFields } from './schedulerConfig.ts';
import { axpby, denoisedFromOutput, eulerUpdate } from './stepMath.ts';

/** `EulerAncestralDiscreteScheduler.__init__` (diffusers 0.27.2), a row per argument: code name, JSON key, default. */
export type EulerAncestralDiscreteConfig = ConfigOf<typeof EULER_ANCESTRAL_CONFIG>;
export const EULER_ANCESTRAL_CONFIG = {
  ...samplingFields('linspace'),
  predictionType: EPSILON_OR_V_FIELD,
  ...RESCALE_BETAS_FIELDS,
};

export class EulerAncestralDiscreteScheduler extends SigmaScheduler<EulerAncestralDiscreteConfig> implements Scheduler {
  static readonly spec = { className: 'EulerAncestralDiscreteScheduler', schema: EULER_ANCESTRAL_CONFIG };
  readonly name = 'euler-a' as const;
  readonly needsNoise = true;

  /** As `EulerDiscreteScheduler.setTimesteps` with linear interpolation and no Karras option. */
  override setTimesteps(numInferenceSteps: number): void {
    const timesteps = inferenceTimesteps(this.className, this.config, numInferenceSteps, 'float32');
    this.startRun(timesteps, sigmasAtTimesteps(timesteps, this.trainSigmas));
  }

  /**
   * One ancestral Euler step.
   *
   * | code                | symbol                                            |
   * | ------------------- | ------------------------------------------------- |
   * | sample              | x_i                                               |
   * | sigma, sigmaTo      | σ_i, σ_{i+1}                                      |
   * | sigmaUp             | σ_up = √(σ_{i+1}² (σ_i² − σ_{i+1}²) / σ_i²)        |
   * | sigmaDown           | σ_down = √(σ_{i+1}² − σ_up²)                      |
   * | predOriginalSample  | D_θ(x_i; σ_i) = x_i − σ_i ε                        |
   * | derivative          | d_i = (x_i − D_θ) / σ_i                            |
   * | noise               | z ~ N(0, I), from the caller                      |
   * | result              | x_{i+1} = x_i + (σ_down − σ_i) d_i + σ_up z         |
   */
  step(modelOutput: Float32Array, t: number, sample: Float32Array, noise?: Float32Array): Float32Array {
    const who = this.className;
    checkOutput(who, modelOutput, sample);
    if (this._timesteps.length > 0) checkNoise(who, noise, sample, 'ancestral sampling');
    this.stepIndex = stepIndexFor(this._timesteps, this.stepIndex, t, who);
    // 1. σ_i, σ_{i+1} and the split σ_{i+1}² = σ_down² + σ_up² (float32, in diffusers' order)
    const sigma = this._sigmas[this.stepIndex];
    const sigmaTo = this._sigmas[this.stepIndex + 1];
    const from2 = f32(sigma * sigma);
    const to2 = f32(sigmaTo * sigmaTo);
    const sigmaUp = sqrt32(f32(f32(to2 * f32(from2 - to2)) / from2));
    const sigmaDown = sqrt32(f32(to2 - f32(sigmaUp * sigmaUp)));
    const dt = f32(sigmaDown - sigma);

    // 2. D_θ: the predicted x₀
    const predOriginalSample = denoisedFromOutput(this.config.predictionType, modelOutput, sample, sigma);
    // 3-4. d_i = (x − D) / σ; an Euler step down to σ_down
    const down = eulerUpdate(sample, predOriginalSample, sigma, dt);
    // 5. + σ_up z
    this.stepIndex += 1;
    return axpby(1, down, sigmaUp, noise!);
  }
}

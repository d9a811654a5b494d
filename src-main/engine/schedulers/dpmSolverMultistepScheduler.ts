/**
 * DPM-Solver++(2M): the multistep second-order solver of the diffusion ODE in data (x₀) prediction
 * ("DPM++ 2M" in A1111; with Karras sigmas, "DPM++ 2M Karras").
 *
 * Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
 * Probabilistic Models" (2022), arXiv:2211.01095, Algorithm 2; Karras sigmas: Karras et al. (2022)
 * eq. 5. Reproduces diffusers v0.27.2 `DPMSolverMultistepScheduler` with
 * `algorithm_type="dpmsolver++"`, `solver_order` 1 or 2, `solver_type` midpoint or heun,
 * `lower_order_final`, `euler_at_final`, `final_sigmas_type` zero / sigma_min, `use_karras_sigmas`.
 *
 * State for one run: `modelOutputs`, the last `solver_order` x̂₀ predictions (kept tensors), and
 * `lowerOrderNums`, the warm-up count. Reset by `setTimesteps`/`reset`, released after the last step.
 */
import { exp32, f32, log32, npArange, npLinspace, roundHalfEven, sqrt32 } from './float32.ts';
import {
  checkInferenceSteps,
  karrasSigmas,
  logSigmasOf,
  sigmasAtTimesteps,
  sigmaToT,
  stepIndexFor,
  trainingSigmas,
} from './noiseSchedule.ts';
import { BaseScheduler, checkOutput, type Scheduler } from './scheduler.ts';
import {
  boolField,
  type ConfigOf,
  enumField,
  implemented,
  intField,
  nullable,
  numberField,
  RESCALE_BETAS_FIELDS,
  samplingFields,
  THRESHOLDING_FIELDS,
} from './schedulerConfig.ts';
import { axpby } from './stepMath.ts';

type AlgorithmType = 'dpmsolver' | 'dpmsolver++' | 'sde-dpmsolver' | 'sde-dpmsolver++';
const ALGORITHM_TYPES: readonly AlgorithmType[] = ['dpmsolver', 'dpmsolver++', 'sde-dpmsolver', 'sde-dpmsolver++'];

/** `DPMSolverMultistepScheduler.__init__` (diffusers 0.27.2), a row per argument: code name, JSON key, default. */
export type DPMSolverMultistepConfig = ConfigOf<typeof DPM_SOLVER_MULTISTEP_CONFIG>;
export const DPM_SOLVER_MULTISTEP_CONFIG = {
  ...samplingFields('linspace'),
  solverOrder: implemented(intField('solver_order', 2, 1), (v) => v <= 2, 'use 1 or 2 (DPM++ 2M)'),
  ...THRESHOLDING_FIELDS,
  algorithmType: implemented(
    enumField<AlgorithmType>('algorithm_type', 'dpmsolver++', ALGORITHM_TYPES),
    (v) => v === 'dpmsolver++',
    'only dpmsolver++ is implemented',
  ),
  solverType: enumField<'midpoint' | 'heun'>('solver_type', 'midpoint', ['midpoint', 'heun']),
  lowerOrderFinal: boolField('lower_order_final', true),
  eulerAtFinal: boolField('euler_at_final', false),
  useKarrasSigmas: nullable(boolField('use_karras_sigmas', false), false),
  useLuLambdas: implemented(nullable(boolField('use_lu_lambdas', false), false), (v) => !v, 'set it false'),
  finalSigmasType: nullable(
    enumField<'zero' | 'sigma_min'>('final_sigmas_type', 'zero', ['zero', 'sigma_min']),
    'zero',
  ),
  lambdaMinClipped: numberField('lambda_min_clipped', -Infinity),
  varianceType: implemented(
    nullable(enumField<'learned' | 'learned_range'>('variance_type', 'learned', ['learned', 'learned_range'])),
    (v) => v === null,
    'set it null (learned-variance UNets are not supported)',
  ),
  ...RESCALE_BETAS_FIELDS,
};

export class DPMSolverMultistepScheduler extends BaseScheduler<DPMSolverMultistepConfig> implements Scheduler {
  static readonly spec = { className: 'DPMSolverMultistepScheduler', schema: DPM_SOLVER_MULTISTEP_CONFIG };
  readonly name: 'dpmpp-2m' | 'dpmpp-2m-karras' = this.config.useKarrasSigmas ? 'dpmpp-2m-karras' : 'dpmpp-2m';
  readonly needsNoise = false;
  private readonly trainSigmas = trainingSigmas(this.alphasCumprod);
  private readonly logSigmas = logSigmasOf(this.trainSigmas);
  /** λ_t = log α_t − log σ_t per training step (float32), for `lambda_min_clipped`. */
  private readonly lambdaT = this.alphasCumprod.map((a) => f32(log32(sqrt32(a)) - log32(sqrt32(f32(1 - a)))));
  /** σ for each timestep, then the final σ (0 or σ_min), float32 values. */
  private _sigmas: number[] = [];
  private stepIndex: number | null = null;
  /** x̂₀ of the last `solver_order` steps, oldest first (null until filled). */
  private modelOutputs = new Array<Float32Array | null>(this.config.solverOrder).fill(null);
  private lowerOrderNums = 0;

  get sigmas(): readonly number[] {
    return this._sigmas;
  }

  /**
   * N integer timesteps and N+1 sigmas.
   *   last = T − (number of λ_t below lambda_min_clipped)           (T unless clipping is set)
   *   linspace  round(linspace(0, last-1, N+1)) reversed, without the final 0   (999, 949, …, 50 for N=20)
   *   leading   round(arange(N+1) · last//(N+1)) reversed without the last, + steps_offset
   *   trailing  round(arange(last, 0, −T/N)) − 1
   *   σ_i = σ_train[t_i]; Karras: σ = karrasSigmas(σ_train[0], σ_train[T−1], N) and
   *   t_i = round(sigmaToT(σ_i)), which can repeat (…, 1, 1, 0 for N=50). Then the final σ:
   *   0 (`final_sigmas_type` zero) or σ_train[0] (sigma_min).
   */
  override setTimesteps(numInferenceSteps: number): void {
    const c = this.config;
    const T = c.numTrainTimesteps;
    checkInferenceSteps(this.className, numInferenceSteps, T);
    this.reset();
    const clip = f32(c.lambdaMinClipped);
    const clippedIdx = this.lambdaT.filter((l) => l < clip).length; // searchsorted(flip(λ), clip)
    const last = T - clippedIdx;
    let timesteps: number[];
    if (c.timestepSpacing === 'linspace') {
      timesteps = npLinspace(0, last - 1, numInferenceSteps + 1)
        .map(roundHalfEven)
        .reverse()
        .slice(0, -1);
    } else if (c.timestepSpacing === 'leading') {
      const stepRatio = Math.floor(last / (numInferenceSteps + 1));
      timesteps = Array.from({ length: numInferenceSteps + 1 }, (_, i) => i * stepRatio)
        .reverse()
        .slice(0, -1)
        .map((t) => t + c.stepsOffset);
    } else {
      timesteps = npArange(last, 0, -T / numInferenceSteps).map((x) => roundHalfEven(x) - 1);
    }

    let sigmas: number[];
    if (c.useKarrasSigmas) {
      sigmas = karrasSigmas(this.trainSigmas[0], this.trainSigmas[T - 1], numInferenceSteps);
      timesteps = sigmas.map((s) => roundHalfEven(sigmaToT(s, this.logSigmas)));
    } else {
      sigmas = sigmasAtTimesteps(timesteps, this.trainSigmas);
    }
    const sigmaLast = c.finalSigmasType === 'sigma_min' ? this.trainSigmas[0] : 0;
    this._sigmas = sigmas.concat(sigmaLast).map(f32);
    this._timesteps = timesteps;
  }

  /**
   * One DPM-Solver++ step from σ_i to σ_{i+1}.
   *
   * | code                  | paper (Algorithm 2)                                          |
   * | --------------------- | ------------------------------------------------------------ |
   * | sample                | x̃_{t_{i-1}} (the current latent)                             |
   * | x0Pred                | x_θ(x̃_{t_{i-1}}, t_{i-1}) = (x − σ_t ε) / α_t  (data prediction) |
   * | alphaT, sigmaT        | α_t = 1/√(σ²+1), σ_t = σ α_t  (VP from the VE σ of the schedule) |
   * | lambdaT               | λ_t = log α_t − log σ_t                                       |
   * | h, h0, r0             | h_i = λ_{t_i} − λ_{t_{i-1}}, r_i = h_{i-1} / h_i             |
   * | D0, D1                | D_i = x_θ(t_{i-1}),  (1/r_i)(x_θ(t_{i-1}) − x_θ(t_{i-2}))      |
   * | result (2nd order)    | x̃_{t_i} = (σ_{t_i}/σ_{t_{i-1}}) x̃ − α_{t_i}(e^{−h_i} − 1)(D0 + ½ D1) |
   *
   * First order (DPM-Solver++ 1 = DDIM) at the first step, at the last step when
   * `final_sigmas_type` is zero (or `euler_at_final`, or `lower_order_final` with < 15 steps).
   */
  step(modelOutput: Float32Array, t: number, sample: Float32Array, _noise?: Float32Array): Float32Array {
    checkOutput(this.className, modelOutput, sample);
    const i = stepIndexFor(this._timesteps, this.stepIndex, t, this.className);
    const n = this._timesteps.length;
    const c = this.config;

    // 1. which order this step runs at
    //    (diffusers' `lower_order_second` only lowers a third-order step, which solver_order <= 2 never takes)
    const lowerOrderFinal =
      i === n - 1 && (c.eulerAtFinal || (c.lowerOrderFinal && n < 15) || c.finalSigmasType === 'zero');

    // 2. x̂₀ = convert_model_output(ε), pushed into the history (the oldest drops out)
    const x0Pred = this.convertModelOutput(modelOutput, sample, this._sigmas[i]);
    this.modelOutputs.shift();
    this.modelOutputs.push(x0Pred);

    // 3. the update
    let prevSample: Float32Array;
    if (c.solverOrder === 1 || this.lowerOrderNums < 1 || lowerOrderFinal) {
      prevSample = this.firstOrderUpdate(x0Pred, sample, i);
    } else {
      prevSample = this.secondOrderUpdate(sample, i);
    }
    if (this.lowerOrderNums < c.solverOrder) this.lowerOrderNums += 1;

    // 4. advance; the history is not needed after the last step
    this.stepIndex = i + 1;
    if (this.stepIndex === n) this.releaseHistory();
    return prevSample;
  }

  /** α_t = 1/√(σ²+1), σ_t = σ·α_t (float32, `_sigma_to_alpha_sigma_t`). */
  private alphaSigma(sigma: number): { alpha: number; sigma: number } {
    const alpha = f32(1 / sqrt32(f32(f32(sigma * sigma) + 1)));
    return { alpha, sigma: f32(sigma * alpha) };
  }

  /** λ = log α − log σ (float32; +∞ at σ = 0). */
  private lambda(s: { alpha: number; sigma: number }): number {
    return f32(log32(s.alpha) - log32(s.sigma));
  }

  /** x̂₀ from the model output for `prediction_type`, a new array. */
  private convertModelOutput(modelOutput: Float32Array, sample: Float32Array, sigma: number): Float32Array {
    const { alpha, sigma: sigmaT } = this.alphaSigma(sigma);
    switch (this.config.predictionType) {
      case 'epsilon':
        return axpby(1 / alpha, sample, -sigmaT / alpha, modelOutput);
      case 'sample':
        return modelOutput.slice();
      case 'v_prediction':
        return axpby(alpha, sample, -sigmaT, modelOutput);
    }
  }

  /** DPM-Solver++(1): x_t = (σ_t/σ_s) x − α_t (e^{−h} − 1) x̂₀. */
  private firstOrderUpdate(x0Pred: Float32Array, sample: Float32Array, i: number): Float32Array {
    const t = this.alphaSigma(this._sigmas[i + 1]);
    const s = this.alphaSigma(this._sigmas[i]);
    const h = f32(this.lambda(t) - this.lambda(s));
    const ratio = f32(t.sigma / s.sigma);
    const coeff = f32(t.alpha * f32(exp32(-h) - 1));
    return axpby(ratio, sample, -coeff, x0Pred);
  }

  /** DPM-Solver++(2M), midpoint or heun (`multistep_dpm_solver_second_order_update`). */
  private secondOrderUpdate(sample: Float32Array, i: number): Float32Array {
    const t = this.alphaSigma(this._sigmas[i + 1]);
    const s0 = this.alphaSigma(this._sigmas[i]);
    const s1 = this.alphaSigma(this._sigmas[i - 1]);
    const lambdaT = this.lambda(t);
    const lambdaS0 = this.lambda(s0);
    const lambdaS1 = this.lambda(s1);
    const m0 = this.modelOutputs[this.modelOutputs.length - 1]!;
    const m1 = this.modelOutputs[this.modelOutputs.length - 2]!;
    const h = f32(lambdaT - lambdaS0);
    const h0 = f32(lambdaS0 - lambdaS1);
    const r0 = f32(h0 / h);
    const ratio = f32(t.sigma / s0.sigma);
    const expm1 = f32(exp32(-h) - 1);
    const c0 = f32(t.alpha * expm1);
    // D0 = m0, D1 = (m0 − m1) / r0; x = ratio·x − c0·D0 + k·D1 (midpoint k = −c0/2, heun α_t (e^{−h}−1)/h + α_t)
    const k = this.config.solverType === 'midpoint' ? -f32(0.5 * c0) : f32(t.alpha * f32(f32(expm1 / h) + 1));
    const invR0 = f32(1 / r0);
    const out = new Float32Array(sample.length);
    for (let j = 0; j < out.length; j++) out[j] = ratio * sample[j] - c0 * m0[j] + k * invR0 * (m0[j] - m1[j]);
    return out;
  }

  /** Drops the history and rewinds to the first timestep. */
  reset(): void {
    this.releaseHistory();
    this.stepIndex = null;
  }

  private releaseHistory(): void {
    this.modelOutputs = new Array<Float32Array | null>(this.config.solverOrder).fill(null);
    this.lowerOrderNums = 0;
  }
}

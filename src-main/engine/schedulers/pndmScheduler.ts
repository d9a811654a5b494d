/**
 * PNDM / PLMS: pseudo linear multistep sampling, the SD-1.5 default scheduler.
 *
 * Liu, Ren, Lin & Zhao, "Pseudo Numerical Methods for Diffusion Models on Manifolds" (2022),
 * arXiv:2202.09778: the transfer part φ is eq. 9, the linear multistep (Adams–Bashforth) ε
 * combination is eq. 12. Reproduces diffusers v0.27.2 `PNDMScheduler` with `skip_prk_steps=True`
 * (Stable Diffusion's setting): no Runge–Kutta warm-up; the first step is taken twice instead.
 *
 * With N steps there are N+1 timesteps, the second one repeated (951, 901, 901, 851, … for N=20):
 *   counter 0 at t₀:  ε₀ = model(x, t₀); x' = φ(x, ε₀, t₀ → t₁)        (a plain Euler guess)
 *   counter 1 at t₁:  ε₁ = model(x', t₁); redo t₀ → t₁ from x with (ε₀ + ε₁)/2  (Heun / 2nd order)
 *   counter ≥ 2:      Adams–Bashforth of order 2, 3, then 4 over the stored ε history.
 *
 * State for one run (reset by `setTimesteps`/`reset`, released after the last step): `ets`, the
 * last ≤ 4 model outputs, and `curSample`, x at t₀ kept for counter 1. Both are kept clones.
 */
import { f32, sqrt32 } from './float32.ts';
import { inferenceTimesteps, stepRatioFor } from './noiseSchedule.ts';
import { BaseScheduler, checkOutput, type Scheduler } from './scheduler.ts';
import { boolField, type ConfigOf, implemented, EPSILON_OR_V_FIELD, samplingFields } from './schedulerConfig.ts';
import { axpby } from './stepMath.ts';

/** `PNDMScheduler.__init__` (diffusers 0.27.2), a row per argument: code name, JSON key, default. */
export type PNDMConfig = ConfigOf<typeof PNDM_CONFIG>;
export const PNDM_CONFIG = {
  ...samplingFields('leading'),
  predictionType: EPSILON_OR_V_FIELD,
  skipPrkSteps: implemented(
    boolField('skip_prk_steps', false),
    (v) => v,
    'only the PLMS path (skip_prk_steps true, as in Stable Diffusion) is implemented; set it true or choose ddim / dpmpp-2m',
  ),
  setAlphaToOne: boolField('set_alpha_to_one', false),
};

export class PNDMScheduler extends BaseScheduler<PNDMConfig> implements Scheduler {
  static readonly spec = { className: 'PNDMScheduler', schema: PNDM_CONFIG };
  readonly name = 'pndm' as const;
  readonly needsNoise = false;
  /** ᾱ used below step 0: 1, or ᾱ_0 when `set_alpha_to_one` is false (SD-1.5). */
  readonly finalAlphaCumprod = this.config.setAlphaToOne ? 1.0 : this.alphasCumprod[0];
  /** Number of `step` calls in this run. */
  private counter = 0;
  /** Past model outputs ε (copies), oldest first, at most 4. */
  private ets: Float32Array[] = [];
  /** x at the first timestep (a copy), needed again by the second call. */
  private curSample: Float32Array | null = null;

  /**
   * The N timesteps of `timestep_spacing` (as DDIM's), then the PLMS order: the second one
   * repeated. Leading, T=1000, N=20: 951, 901, 901, 851, …, 1.
   */
  override setTimesteps(numInferenceSteps: number): void {
    const base = inferenceTimesteps(this.className, this.config, numInferenceSteps, 'round'); // descending
    this.reset();
    this.numInferenceSteps = numInferenceSteps;
    this._timesteps = [base[0], ...base.slice(1, 2), ...base.slice(1)];
  }

  /**
   * One PLMS step (`step_plms`).
   *
   * | code              | paper (eq. 9, 12)                                             |
   * | ----------------- | ------------------------------------------------------------- |
   * | sample            | x_t                                                           |
   * | modelOutput       | ε_θ(x_t, t), the newest e_t                                   |
   * | ets[-1..-4]       | e_t, e_{t-δ}, e_{t-2δ}, e_{t-3δ}                               |
   * | epsPrime          | e'_t = (55 e_t − 59 e_{t-δ} + 37 e_{t-2δ} − 9 e_{t-3δ}) / 24 (lower orders at the start) |
   * | alphaProdT(Prev)  | ᾱ_t, ᾱ_{t-δ}, δ = T/N (finalAlphaCumprod below step 0)         |
   * | result            | x_{t-δ} = φ(x_t, e'_t, t, t-δ)                                  |
   */
  step(modelOutput: Float32Array, t: number, sample: Float32Array, _noise?: Float32Array): Float32Array {
    const who = this.className;
    checkOutput(who, modelOutput, sample);
    const delta = stepRatioFor(this.numInferenceSteps, t, this.config.numTrainTimesteps, who);
    if (this.counter >= this._timesteps.length) {
      throw new Error(
        `${who}.step: the ${this._timesteps.length} timesteps of this run are done; call setTimesteps(n) to start another`,
      );
    }

    // 1. the step t -> prevT; the second call redoes the first step, from t₀ to t₁.
    let prevT = t - delta;
    if (this.counter !== 1) {
      // 2. push e_t, keeping the last 4
      while (this.ets.length > 3) this.ets.shift();
      this.ets.push(modelOutput.slice());
    } else {
      prevT = t;
      t = t + delta;
    }

    // 3. e'_t from the history (Adams–Bashforth of the available order)
    const ets = this.ets;
    const n = ets.length;
    let x = sample;
    let epsPrime: Float32Array;
    if (n === 1 && this.counter === 0) {
      epsPrime = modelOutput;
      this.curSample = sample.slice();
    } else if (n === 1 && this.counter === 1) {
      epsPrime = axpby(0.5, modelOutput, 0.5, ets[0]);
      x = this.curSample!;
    } else if (n === 2) {
      epsPrime = axpby(3 / 2, ets[1], -1 / 2, ets[0]);
    } else if (n === 3) {
      epsPrime = ets[2].map((e2, i) => (23 * e2 - 16 * ets[1][i] + 5 * ets[0][i]) / 12);
    } else {
      epsPrime = ets[3].map((e3, i) => f32(1 / 24) * (55 * e3 - 59 * ets[2][i] + 37 * ets[1][i] - 9 * ets[0][i]));
    }
    // 4. x_{t-δ} = φ(x_t, e'_t, t, t-δ)
    const prevSample = this.transfer(x, t, prevT, epsPrime);
    if (this.counter === 1) this.curSample = null;

    // 5. advance; the history is not needed after the last step
    this.counter += 1;
    if (this.counter === this._timesteps.length) this.releaseHistory();
    return prevSample;
  }

  /**
   * φ, the transfer part of eq. 9 (`_get_prev_sample`):
   *   x_{t-δ} = √(ᾱ_{t-δ}/ᾱ_t) x_t − (ᾱ_{t-δ} − ᾱ_t) e / (ᾱ_t √(1−ᾱ_{t-δ}) + √(ᾱ_t (1−ᾱ_t) ᾱ_{t-δ}))
   */
  private transfer(sample: Float32Array, t: number, prevT: number, modelOutput: Float32Array): Float32Array {
    const alphaProdT = this.alphasCumprod[t];
    const alphaProdTPrev = prevT >= 0 ? this.alphasCumprod[prevT] : this.finalAlphaCumprod;
    const betaProdT = f32(1 - alphaProdT);
    const betaProdTPrev = f32(1 - alphaProdTPrev);
    let e = modelOutput;
    if (this.config.predictionType === 'v_prediction')
      e = axpby(sqrt32(alphaProdT), modelOutput, sqrt32(betaProdT), sample);
    const sampleCoeff = sqrt32(f32(alphaProdTPrev / alphaProdT));
    const denom = f32(
      f32(alphaProdT * sqrt32(betaProdTPrev)) + sqrt32(f32(f32(alphaProdT * betaProdT) * alphaProdTPrev)),
    );
    return axpby(sampleCoeff, sample, -f32(alphaProdTPrev - alphaProdT) / denom, e);
  }

  /** Drops the history and rewinds to the first timestep of the current schedule. */
  reset(): void {
    this.releaseHistory();
    this.counter = 0;
  }

  private releaseHistory(): void {
    this.ets = [];
    this.curSample = null;
  }
}

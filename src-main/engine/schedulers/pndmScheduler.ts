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
import { tf, type Tensor } from '../backend/tf.ts';
import { f32, npArange, npLinspace, roundHalfEven, sqrt32 } from './float32.ts';
import { checkInferenceSteps, stepRatioFor } from './noiseSchedule.ts';
import { BaseScheduler, type Scheduler } from './scheduler.ts';
import { boolField, resolveConfig, samplingFields } from './schedulerConfig.ts';
import type { ConfigOf, RawSchedulerConfig } from './schedulerConfig.ts';

/** `PNDMScheduler.__init__` (diffusers 0.27.2): keys and defaults. */
export const PNDM_CONFIG = {
  ...samplingFields('leading'),
  skip_prk_steps: boolField(false),
  set_alpha_to_one: boolField(false),
} as const;
export type PNDMConfig = ConfigOf<typeof PNDM_CONFIG>;

export class PNDMScheduler extends BaseScheduler<PNDMConfig> implements Scheduler {
  static readonly className = 'PNDMScheduler';
  readonly name = 'pndm' as const;
  readonly finalAlphaCumprod: number;
  readonly initNoiseSigma = 1.0;
  readonly needsNoise = false;
  /** Number of `step` calls in this run. */
  private counter = 0;
  /** Past model outputs ε (kept clones), oldest first, at most 4. */
  private ets: Tensor[] = [];
  /** x at the first timestep (kept clone), needed again by the second call. */
  private curSample: Tensor | null = null;

  constructor(config: Partial<PNDMConfig> = {}) {
    super(PNDMScheduler.className, PNDM_CONFIG, config);
    const c = this.config;
    if (!c.skip_prk_steps) {
      this.refuse(
        'skip_prk_steps',
        false,
        'only the PLMS path (skip_prk_steps true, as in Stable Diffusion) is implemented; set it true or choose ddim / dpmpp-2m',
      );
    }
    if (c.prediction_type === 'sample')
      this.refuse('prediction_type', 'sample', 'diffusers supports only epsilon and v_prediction for PNDM');
    this.finalAlphaCumprod = c.set_alpha_to_one ? 1.0 : this.alphasCumprod[0];
  }

  static fromConfig(raw: RawSchedulerConfig, overrides: Partial<PNDMConfig> = {}): PNDMScheduler {
    return new PNDMScheduler(resolveConfig(PNDMScheduler.className, PNDM_CONFIG, raw.values, overrides, raw.source));
  }

  /**
   * The N base timesteps (ascending) by `timestep_spacing`, then the PLMS order: all but the last,
   * the second-to-last again, the last; reversed. Leading, T=1000, N=20: 951, 901, 901, 851, …, 1.
   */
  override setTimesteps(numInferenceSteps: number): void {
    const { num_train_timesteps: T, timestep_spacing, steps_offset } = this.config;
    checkInferenceSteps(this.className, numInferenceSteps, T);
    this.reset();
    this.numInferenceSteps = numInferenceSteps;
    let base: number[]; // ascending
    if (timestep_spacing === 'linspace') {
      base = npLinspace(0, T - 1, numInferenceSteps).map(roundHalfEven);
    } else if (timestep_spacing === 'leading') {
      const stepRatio = Math.floor(T / numInferenceSteps);
      base = Array.from({ length: numInferenceSteps }, (_, i) => i * stepRatio + steps_offset);
    } else {
      base = npArange(T, 0, -T / numInferenceSteps)
        .map((x) => roundHalfEven(x) - 1)
        .reverse();
    }
    this._timesteps = [...base.slice(0, -1), ...base.slice(-2, -1), ...base.slice(-1)].reverse();
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
  step(modelOutput: Tensor, t: number, sample: Tensor, _noise?: Tensor): Tensor {
    const who = this.className;
    const delta = stepRatioFor(this.numInferenceSteps, t, this.config.num_train_timesteps, who);
    if (this.counter >= this._timesteps.length) {
      throw new Error(
        `${who}.step: the ${this._timesteps.length} timesteps of this run are done; call setTimesteps(n) to start another`,
      );
    }

    // 1. the step t -> prevT; the second call redoes the first step, from t₀ to t₁.
    let prevT = t - delta;
    if (this.counter !== 1) {
      // 2. push e_t, keeping the last 4
      while (this.ets.length > 3) this.ets.shift()!.dispose();
      this.ets.push(tf.keep(tf.clone(modelOutput)));
    } else {
      prevT = t;
      t = t + delta;
    }

    const ets = this.ets;
    const prevSample = tf.tidy(() => {
      // 3. e'_t from the history (Adams–Bashforth of the available order)
      let epsPrime: Tensor;
      let x = sample;
      const n = ets.length;
      if (n === 1 && this.counter === 0) {
        epsPrime = modelOutput;
        this.curSample = tf.keep(tf.clone(sample));
      } else if (n === 1 && this.counter === 1) {
        epsPrime = tf.div(tf.add(modelOutput, ets[0]), 2);
        x = this.curSample!;
      } else if (n === 2) {
        epsPrime = tf.div(tf.sub(tf.mul(3, ets[1]), ets[0]), 2);
      } else if (n === 3) {
        epsPrime = tf.div(tf.add(tf.sub(tf.mul(23, ets[2]), tf.mul(16, ets[1])), tf.mul(5, ets[0])), 12);
      } else {
        const sum = tf.sub(
          tf.add(tf.sub(tf.mul(55, ets[3]), tf.mul(59, ets[2])), tf.mul(37, ets[1])),
          tf.mul(9, ets[0]),
        );
        epsPrime = tf.mul(f32(1 / 24), sum);
      }
      // 4. x_{t-δ} = φ(x_t, e'_t, t, t-δ)
      return this.transfer(x, t, prevT, epsPrime);
    });
    if (this.counter === 1 && this.curSample) {
      this.curSample.dispose();
      this.curSample = null;
    }

    // 5. advance; the history is not needed after the last step
    this.counter += 1;
    if (this.counter === this._timesteps.length) this.releaseHistory();
    return prevSample;
  }

  /**
   * φ, the transfer part of eq. 9 (`_get_prev_sample`):
   *   x_{t-δ} = √(ᾱ_{t-δ}/ᾱ_t) x_t − (ᾱ_{t-δ} − ᾱ_t) e / (ᾱ_t √(1−ᾱ_{t-δ}) + √(ᾱ_t (1−ᾱ_t) ᾱ_{t-δ}))
   * Call inside a tidy.
   */
  private transfer(sample: Tensor, t: number, prevT: number, modelOutput: Tensor): Tensor {
    const alphaProdT = this.alphasCumprod[t];
    const alphaProdTPrev = prevT >= 0 ? this.alphasCumprod[prevT] : this.finalAlphaCumprod;
    const betaProdT = f32(1 - alphaProdT);
    const betaProdTPrev = f32(1 - alphaProdTPrev);
    let e = modelOutput;
    if (this.config.prediction_type === 'v_prediction') {
      e = tf.add(tf.mul(sqrt32(alphaProdT), modelOutput), tf.mul(sqrt32(betaProdT), sample));
    }
    const sampleCoeff = sqrt32(f32(alphaProdTPrev / alphaProdT));
    const denom = f32(
      f32(alphaProdT * sqrt32(betaProdTPrev)) + sqrt32(f32(f32(alphaProdT * betaProdT) * alphaProdTPrev)),
    );
    return tf.sub(tf.mul(sampleCoeff, sample), tf.div(tf.mul(f32(alphaProdTPrev - alphaProdT), e), denom));
  }

  /** Disposes the history and rewinds to the first timestep of the current schedule. */
  reset(): void {
    this.releaseHistory();
    this.counter = 0;
  }

  private releaseHistory(): void {
    for (const e of this.ets) e.dispose();
    this.ets = [];
    this.curSample?.dispose();
    this.curSample = null;
  }
}

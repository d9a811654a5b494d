/**
 * The step math several schedulers share, each written once, on plain Float32Arrays: the
 * prediction x̂₀ (and ε) from the model output in ᾱ form (DDPM, DDIM) and in σ form (Euler,
 * Euler a), the Euler update in σ, and the elementwise `axpby` every update is made of. Each
 * scheduler file keeps its own algorithm and calls these. Every function returns a new array of
 * the inputs' length (the caller owns it) and leaves its arguments unchanged; each element is
 * computed in double and rounded once to float32 when stored.
 *
 * | code        | symbol                                                     |
 * | ----------- | ---------------------------------------------------------- |
 * | alphaProdT  | ᾱ_t (diffusers' alphas_cumprod[t]); betaProdT = 1 − ᾱ_t     |
 * | sigma       | σ = √((1 − ᾱ)/ᾱ), the VE noise level of Karras et al.       |
 * | modelOutput | ε_θ, or v (v_prediction), or x₀ (sample)                    |
 */
import { f32, sqrt32 } from './float32.ts';
import type { PredictionType } from './schedulerConfig.ts';

/** a·x + b·y, elementwise (x and y of one length). */
export function axpby(a: number, x: Float32Array, b: number, y: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = a * x[i] + b * y[i];
  return out;
}

/** a·x, elementwise. */
export function scale(a: number, x: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = a * x[i];
  return out;
}

/** x clipped to [−r, r]. */
export function clip(x: Float32Array, r: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = Math.min(r, Math.max(-r, x[i]));
  return out;
}

/** x̂₀ = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t; v: √ᾱ_t x_t − √(1−ᾱ_t) v; sample: the output itself (a copy). */
export function originalFromOutput(
  type: PredictionType,
  modelOutput: Float32Array,
  sample: Float32Array,
  alphaProdT: number,
): Float32Array {
  const betaProdT = f32(1 - alphaProdT);
  if (type === 'epsilon')
    return axpby(1 / sqrt32(alphaProdT), sample, -sqrt32(betaProdT) / sqrt32(alphaProdT), modelOutput);
  if (type === 'sample') return modelOutput.slice();
  return axpby(sqrt32(alphaProdT), sample, -sqrt32(betaProdT), modelOutput);
}

/** ε̂ = the output (a copy); sample: (x_t − √ᾱ_t x̂₀) / √(1−ᾱ_t); v: √ᾱ_t v + √(1−ᾱ_t) x_t. */
export function epsilonFromOutput(
  type: PredictionType,
  modelOutput: Float32Array,
  sample: Float32Array,
  original: Float32Array,
  alphaProdT: number,
): Float32Array {
  const betaProdT = f32(1 - alphaProdT);
  if (type === 'epsilon') return modelOutput.slice();
  if (type === 'sample') return axpby(1 / sqrt32(betaProdT), sample, -sqrt32(alphaProdT) / sqrt32(betaProdT), original);
  return axpby(sqrt32(alphaProdT), modelOutput, sqrt32(betaProdT), sample);
}

/** D_θ(x; σ) = x − σ ε; v: −σ/√(σ²+1) · v + x/(σ²+1); sample: the output itself (a copy). */
export function denoisedFromOutput(
  type: PredictionType,
  modelOutput: Float32Array,
  sample: Float32Array,
  sigma: number,
): Float32Array {
  if (type === 'epsilon') return axpby(1, sample, -sigma, modelOutput);
  if (type === 'sample') return modelOutput.slice();
  const s2p1 = f32(f32(sigma * sigma) + 1);
  return axpby(f32(-sigma / sqrt32(s2p1)), modelOutput, 1 / s2p1, sample);
}

/** One Euler step of dx/dσ = d, d = (x − D_θ) / σ: x + d · dt. */
export function eulerUpdate(sample: Float32Array, denoised: Float32Array, sigma: number, dt: number): Float32Array {
  const out = new Float32Array(sample.length);
  for (let i = 0; i < sample.length; i++) out[i] = sample[i] + ((sample[i] - denoised[i]) / sigma) * dt;
  return out;
}

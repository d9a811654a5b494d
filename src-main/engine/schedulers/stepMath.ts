/**
 * The step math several schedulers share, each written once: the prediction x̂₀ (and ε) from the
 * model output in ᾱ form (DDPM, DDIM) and in σ form (Euler, Euler a), and the Euler update in σ.
 * Each scheduler file keeps its own algorithm and calls these; call them inside a `tf.tidy`.
 *
 * | code        | symbol                                                     |
 * | ----------- | ---------------------------------------------------------- |
 * | alphaProdT  | ᾱ_t (diffusers' alphas_cumprod[t]); betaProdT = 1 − ᾱ_t     |
 * | sigma       | σ = √((1 − ᾱ)/ᾱ), the VE noise level of Karras et al.       |
 * | modelOutput | ε_θ, or v (v_prediction), or x₀ (sample)                    |
 */
import { tf, type Tensor } from '../backend/tf.ts';
import { f32, sqrt32 } from './float32.ts';
import type { PredictionType } from './schedulerConfig.ts';

/** x̂₀ = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t; v: √ᾱ_t x_t − √(1−ᾱ_t) v; sample: the output itself. */
export function originalFromOutput(type: PredictionType, modelOutput: Tensor, sample: Tensor, alphaProdT: number) {
  const betaProdT = f32(1 - alphaProdT);
  if (type === 'epsilon') return tf.div(tf.sub(sample, tf.mul(sqrt32(betaProdT), modelOutput)), sqrt32(alphaProdT));
  if (type === 'sample') return modelOutput;
  return tf.sub(tf.mul(sqrt32(alphaProdT), sample), tf.mul(sqrt32(betaProdT), modelOutput));
}

/** ε̂ = the output; sample: (x_t − √ᾱ_t x̂₀) / √(1−ᾱ_t); v: √ᾱ_t v + √(1−ᾱ_t) x_t. */
export function epsilonFromOutput(
  type: PredictionType,
  modelOutput: Tensor,
  sample: Tensor,
  original: Tensor,
  alphaProdT: number,
) {
  const betaProdT = f32(1 - alphaProdT);
  if (type === 'epsilon') return modelOutput;
  if (type === 'sample') return tf.div(tf.sub(sample, tf.mul(sqrt32(alphaProdT), original)), sqrt32(betaProdT));
  return tf.add(tf.mul(sqrt32(alphaProdT), modelOutput), tf.mul(sqrt32(betaProdT), sample));
}

/** D_θ(x; σ) = x − σ ε; v: −σ/√(σ²+1) · v + x/(σ²+1); sample: the output itself. */
export function denoisedFromOutput(type: PredictionType, modelOutput: Tensor, sample: Tensor, sigma: number) {
  if (type === 'epsilon') return tf.sub(sample, tf.mul(sigma, modelOutput));
  if (type === 'sample') return modelOutput;
  const s2p1 = f32(f32(sigma * sigma) + 1);
  return tf.add(tf.mul(modelOutput, f32(-sigma / sqrt32(s2p1))), tf.div(sample, s2p1));
}

/** One Euler step of dx/dσ = d, d = (x − D_θ) / σ: x + d · dt. */
export function eulerUpdate(sample: Tensor, denoised: Tensor, sigma: number, dt: number): Tensor {
  const derivative = tf.div(tf.sub(sample, denoised), sigma);
  return tf.add(sample, tf.mul(derivative, dt));
}

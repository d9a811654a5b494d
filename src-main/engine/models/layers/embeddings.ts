/**
 * Timestep embeddings, as diffusers `embeddings.py` defines them (v0.27):
 * `get_timestep_embedding` / `Timesteps` (the sinusoid) and `TimestepEmbedding` (the MLP).
 *
 *   code name              symbol
 *   half                   D/2, half the embedding width
 *   freqShift              s (`downscale_freq_shift`)
 *   freqs[i]               w_i = exp(-ln(maxPeriod) * i / (D/2 - s)),  i = 0 .. D/2-1
 *   emb                    [sin(t w), cos(t w)]  (or [cos, sin] with flip_sin_to_cos)
 *
 * diffusers computes the sinusoid in float32 (`torch.arange(..., dtype=float32)`, then f32 mul,
 * div, exp, and `timesteps.float()`), so the frequencies here are rounded to float32 at each of
 * those steps. Timesteps may be fractional (Euler schedulers pass e.g. 500.5).
 */
import { tf, type Tensor } from '../../backend/tf.ts';
import { Module } from './module.ts';
import { Linear } from './linear.ts';
import { silu } from './activations.ts';

/** Float32 frequencies w_i, computed step by step as torch does in float32. */
export function sinusoidFrequencies(dim: number, freqShift = 0, maxPeriod = 10000): Float32Array {
  const half = Math.floor(dim / 2);
  const denom = half - freqShift;
  if (!(denom > 0)) throw new Error(`timestep embedding: dim ${dim} with freq_shift ${freqShift} leaves no frequencies (need dim/2 - freq_shift > 0)`);
  const negLog = Math.fround(-Math.log(maxPeriod));
  const freqs = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    const exponent = Math.fround(Math.fround(negLog * i) / denom);
    freqs[i] = Math.exp(exponent); // stored as float32
  }
  return freqs;
}

/**
 * Sinusoidal embedding of timesteps t [B] -> [B, dim] (diffusers `get_timestep_embedding`,
 * `scale` 1). An odd `dim` gets a zero column at the end, as diffusers pads it.
 */
export function timestepSinusoid(timesteps: Tensor, dim: number, flipSinToCos: boolean, freqShift: number, maxPeriod = 10000): Tensor {
  return tf.tidy(() => {
    if (timesteps.rank !== 1) throw new Error(`timestep embedding: timesteps must be 1-D [B], got shape [${timesteps.shape}]`);
    const freqs = sinusoidFrequencies(dim, freqShift, maxPeriod);
    const half = freqs.length;
    const t = timesteps.cast('float32').reshape([-1, 1]); // [B, 1]
    const args = tf.mul(t, tf.tensor(freqs, [1, half], 'float32')); // [B, half]
    const sin = tf.sin(args);
    const cos = tf.cos(args);
    let emb = flipSinToCos ? tf.concat([cos, sin], 1) : tf.concat([sin, cos], 1); // [B, 2*half]
    if (dim % 2 === 1) emb = tf.pad(emb, [[0, 0], [0, 1]]);
    return emb;
  });
}

/** diffusers `TimestepEmbedding`: linear_1 -> SiLU -> linear_2 (no cond projection, no post-act). */
export class TimestepEmbedding extends Module {
  linear_1: Linear;
  linear_2: Linear;

  constructor(inChannels: number, timeEmbedDim: number) {
    super();
    this.linear_1 = new Linear(inChannels, timeEmbedDim);
    this.linear_2 = new Linear(timeEmbedDim, timeEmbedDim);
  }

  /** [B, in] -> [B, timeEmbedDim]. */
  apply(x: Tensor): Tensor {
    return tf.tidy(() => this.linear_2.apply(silu(this.linear_1.apply(x))));
  }
}

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
import type { Ops } from '../ops/ops.ts';
import { Module } from './module.ts';
import { Linear } from './linear.ts';
import { silu } from './activations.ts';

/** Float32 frequencies w_i, computed step by step as torch does in float32. */
export function sinusoidFrequencies(dim: number, freqShift = 0, maxPeriod = 10000): Float32Array {
  const half = Math.floor(dim / 2);
  const denom = half - freqShift;
  if (!(denom > 0))
    throw new Error(
      `timestep embedding: dim ${dim} with freq_shift ${freqShift} leaves no frequencies (need dim/2 - freq_shift > 0)`,
    );
  const negLog = Math.fround(-Math.log(maxPeriod));
  const freqs = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    const exponent = Math.fround(Math.fround(negLog * i) / denom);
    freqs[i] = Math.exp(exponent); // stored as float32
  }
  return freqs;
}

/**
 * Sinusoidal embedding of timesteps t [B] (float32) -> [B, dim] (diffusers
 * `get_timestep_embedding`, `scale` 1). An odd `dim` gets a zero column at the end, as diffusers
 * pads it.
 */
export function timestepSinusoid<T>(
  o: Ops<T>,
  timesteps: T,
  dim: number,
  flipSinToCos: boolean,
  freqShift: number,
  maxPeriod = 10000,
): T {
  return o.scope(() => {
    const freqs = sinusoidFrequencies(dim, freqShift, maxPeriod);
    const half = freqs.length;
    const args = o.mul(o.reshape(timesteps, [-1, 1]), o.constant(freqs, [1, half])); // [B, half]
    const parts = flipSinToCos ? [o.cos(args), o.sin(args)] : [o.sin(args), o.cos(args)];
    if (dim % 2 === 1) parts.push(o.mul(o.reshape(timesteps, [-1, 1]), 0)); // [B, 1] of zeros
    return o.concat(parts, 1); // [B, dim]
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
  forward<T>(o: Ops<T>, x: T): T {
    return o.scope(() => this.linear_2.forward(o, silu(o, this.linear_1.forward(o, x))));
  }
}

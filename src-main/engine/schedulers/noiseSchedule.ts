/**
 * The training noise schedule shared by every scheduler, and the σ-space helpers the Euler and
 * DPM-Solver schedulers share (diffusers v0.27.2, reproduced to the float32 bit).
 *
 * | code            | symbol        | meaning                                                  |
 * | --------------- | ------------- | -------------------------------------------------------- |
 * | betas[t]        | β_t           | per-step noise variance, t = 0 … T-1                     |
 * | alphasCumprod[t]| ᾱ_t = ∏(1-β)  | signal fraction kept at step t: x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε |
 * | sigmas[t]       | σ_t           | √((1-ᾱ_t)/ᾱ_t), the variance-exploding noise level       |
 *
 * Where diffusers computes in float32 torch and where in float64 numpy is stated per function.
 */
import { f32, interpAtIndex, log32, npArange, npLinspace, roundHalfEven, sqrt32, torchLinspaceF32 } from './float32.ts';
import type { NoiseScheduleConfig, SamplingScheduleConfig } from './schedulerConfig.ts';

/**
 * β_t as float32, as each diffusers scheduler's constructor builds `self.betas`:
 *   linear             torch.linspace(β_start, β_end, T, float32)
 *   scaled_linear      torch.linspace(√β_start, √β_end, T, float32) ** 2   (SD 1.x)
 *   squaredcos_cap_v2  betas_for_alpha_bar: min(1 - ᾱ(t+1/T)/ᾱ(t/T), 0.999), ᾱ(s) = cos²((s+0.008)/1.008·π/2), float64 then float32
 *   trained_betas      the given values, as float32
 */
export function betasFor(config: NoiseScheduleConfig): Float32Array {
  const T = config.numTrainTimesteps;
  if (config.trainedBetas) return Float32Array.from(config.trainedBetas);
  switch (config.betaSchedule) {
    case 'linear':
      return torchLinspaceF32(config.betaStart, config.betaEnd, T);
    case 'scaled_linear': {
      const roots = torchLinspaceF32(Math.sqrt(config.betaStart), Math.sqrt(config.betaEnd), T);
      return roots.map((r) => f32(r * r));
    }
    case 'squaredcos_cap_v2': {
      const alphaBar = (s: number) => Math.cos((((s + 0.008) / 1.008) * Math.PI) / 2) ** 2;
      const betas = new Float32Array(T);
      for (let i = 0; i < T; i++) betas[i] = Math.min(1 - alphaBar((i + 1) / T) / alphaBar(i / T), 0.999);
      return betas;
    }
  }
}

/**
 * ᾱ_t = `torch.cumprod(1.0 - betas, dim=0)` in float32. 1 - β is a float32 op; torch's CPU cumprod
 * accumulates in double (`acc_type<float>`) and rounds each output to float32.
 */
export function alphasCumprodOf(betas: Float32Array): Float32Array {
  const out = new Float32Array(betas.length);
  let acc = 1;
  for (let i = 0; i < betas.length; i++) {
    acc *= f32(1 - betas[i]);
    out[i] = acc;
  }
  return out;
}

/** σ_t = `((1 - ᾱ) / ᾱ) ** 0.5` on the float32 tensor ᾱ, for every training step t (ascending t). */
export function trainingSigmas(alphasCumprod: Float32Array): Float32Array {
  return alphasCumprod.map((a) => sqrt32(f32(f32(1 - a) / a)));
}

/** `np.log(sigmas)` of the float32 training sigmas. */
export function logSigmasOf(sigmas: Float32Array): Float32Array {
  return sigmas.map((s) => log32(s));
}

/** `np.interp(timesteps, np.arange(len(sigmas)), sigmas)`: σ at (possibly fractional) training steps, float64. */
export function sigmasAtTimesteps(timesteps: readonly number[], sigmas: Float32Array): number[] {
  return timesteps.map((t) => interpAtIndex(t, sigmas));
}

/**
 * Karras et al. (2022) eq. 5, `_convert_to_karras`, in float64:
 *   σ_i = (σ_max^(1/ρ) + i/(n-1) · (σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ,  ρ = 7.
 */
export function karrasSigmas(sigmaMin: number, sigmaMax: number, n: number): number[] {
  const rho = 7.0;
  const minInvRho = sigmaMin ** (1 / rho);
  const maxInvRho = sigmaMax ** (1 / rho);
  return npLinspace(0, 1, n).map((ramp) => (maxInvRho + ramp * (minInvRho - maxInvRho)) ** rho);
}

/**
 * `_sigma_to_t`: the fractional training step whose σ is `sigma`, by linear interpolation in
 * log σ between the two neighbouring training sigmas (float64, with the float32 table as numpy
 * mixes them: `low - high` is a float32 difference).
 */
export function sigmaToT(sigma: number, logSigmas: Float32Array): number {
  const logSigma = Math.log(Math.max(sigma, 1e-10));
  // low_idx = the last index whose log σ is <= log_sigma (0 if none), at most len - 2.
  let lowIdx = 0;
  for (let i = 0; i < logSigmas.length; i++) if (logSigma - logSigmas[i] >= 0) lowIdx = i;
  lowIdx = Math.min(lowIdx, logSigmas.length - 2);
  const low = logSigmas[lowIdx];
  const high = logSigmas[lowIdx + 1];
  let w = (low - logSigma) / f32(low - high);
  w = Math.min(Math.max(w, 0), 1);
  return (1 - w) * lowIdx + w * (lowIdx + 1);
}

/**
 * diffusers' `index_for_timestep`: the position of `t` in the schedule. With duplicates (Karras
 * rounding), the *second* match is taken, so a run that starts mid-schedule does not skip a σ.
 */
export function indexForTimestep(timesteps: readonly number[], t: number, who: string): number {
  const matches: number[] = [];
  timesteps.forEach((s, i) => {
    if (s === f32(t)) matches.push(i);
  });
  if (matches.length === 0) {
    throw new Error(
      `${who}: timestep ${t} is not in the schedule (${timesteps.length} timesteps from ${timesteps[0]} to ${timesteps[timesteps.length - 1]}); pass the values of scheduler.timesteps`,
    );
  }
  return matches.length > 1 ? matches[1] : matches[0];
}

/**
 * The position of this `step` in a run over σ (Euler, Euler a, DPM-Solver): `current` once the run
 * has started, else found from `t`; an error before `setTimesteps` and after the last step.
 */
export function stepIndexFor(timesteps: readonly number[], current: number | null, t: number, who: string): number {
  if (timesteps.length === 0) throw new Error(`${who}.step: call setTimesteps(n) before stepping`);
  const i = current ?? indexForTimestep(timesteps, t, who);
  if (i >= timesteps.length)
    throw new Error(
      `${who}.step: the ${timesteps.length} timesteps of this run are done; call setTimesteps(n) to start another`,
    );
  return i;
}

/**
 * The step ratio T // N of a run over integer timesteps (DDPM, DDIM, PNDM): an error before
 * `setTimesteps` or when `t` is not a training timestep.
 */
export function stepRatioFor(numInferenceSteps: number | null, t: number, T: number, who: string): number {
  if (numInferenceSteps === null) throw new Error(`${who}.step: call setTimesteps(n) before stepping`);
  if (!Number.isInteger(t) || t < 0 || t >= T)
    throw new Error(`${who}.step: timestep ${t} is not an integer in [0, ${T})`);
  return Math.floor(T / numInferenceSteps);
}

/** Checks that `setTimesteps(n)` got a usable n. */
export function checkInferenceSteps(who: string, n: number, numTrainTimesteps: number): void {
  if (!Number.isInteger(n) || n < 1 || n > numTrainTimesteps) {
    throw new Error(
      `${who}.setTimesteps: num_inference_steps must be an integer in [1, ${numTrainTimesteps}] (num_train_timesteps), got ${n}`,
    );
  }
}

/**
 * The N inference timesteps of diffusers' `timestep_spacing`, descending:
 *   linspace  linspace(0, T-1, N), rounded (DDPM/DDIM) or kept as float32 values (Euler)
 *   leading   arange(N) * (T // N) + steps_offset
 *   trailing  round(arange(T, 0, -T/N)) - 1
 */
export function spacedTimesteps(
  spacing: 'linspace' | 'leading' | 'trailing',
  T: number,
  n: number,
  stepsOffset: number,
  linspace: 'round' | 'float32',
): number[] {
  if (spacing === 'linspace')
    return npLinspace(0, T - 1, n)
      .map(linspace === 'round' ? roundHalfEven : f32)
      .reverse();
  if (spacing === 'leading') {
    const stepRatio = Math.floor(T / n);
    return Array.from({ length: n }, (_, i) => i * stepRatio + stepsOffset).reverse();
  }
  return npArange(T, 0, -T / n).map((x) => roundHalfEven(x) - 1);
}

/** The N inference timesteps of a run (`spacedTimesteps` by the config), after checking N. */
export function inferenceTimesteps(
  who: string,
  c: SamplingScheduleConfig,
  n: number,
  linspace: 'round' | 'float32',
): number[] {
  checkInferenceSteps(who, n, c.numTrainTimesteps);
  return spacedTimesteps(c.timestepSpacing, c.numTrainTimesteps, n, c.stepsOffset, linspace);
}

/** Euler's init_noise_sigma in diffusers 0.27: sigma_max for linspace/trailing, sqrt(sigma_max^2 + 1) for leading (float32). */
export function eulerInitNoiseSigma(sigmas: readonly number[], spacing: string): number {
  const maxSigma = Math.max(...sigmas);
  if (spacing === 'linspace' || spacing === 'trailing') return maxSigma;
  return sqrt32(f32(f32(maxSigma * maxSigma) + 1));
}

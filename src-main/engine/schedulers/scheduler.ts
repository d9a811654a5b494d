/**
 * The contract every sampling scheduler in this folder implements.
 *
 * One sampling run:
 *
 *   scheduler.setTimesteps(steps);                       // also clears any multistep history
 *   let x = initial noise × scheduler.initNoiseSigma;
 *   for (const t of scheduler.timesteps) {
 *     const xIn = scheduler.scaleModelInput(x, t);       // new tensor, caller disposes
 *     const eps = unet(xIn, t);
 *     const noise = scheduler.needsNoise ? randn(rng, x.shape) : undefined;
 *     const next = scheduler.step(eps, t, x, noise);     // new tensor, caller owns it
 *     dispose(xIn, eps, noise, x);
 *     x = next;
 *   }
 *
 * Tensor ownership:
 *   - `scaleModelInput` and `step` never take ownership of their arguments and always return a
 *     new tensor handle owned by the caller (an identity `scaleModelInput` returns a clone).
 *   - Multistep history (PNDM's past ε, DPM-Solver's past x̂₀) lives inside the scheduler as its
 *     own kept clones. The scheduler disposes each one when it drops out of the history, when the
 *     last step of the schedule has run, and on `reset()` / `setTimesteps()`.
 *   - Safe inside a caller's `tf.tidy`: history tensors are `tf.keep`-ed.
 *
 * Timesteps are numbers holding float32 values: integers for DDPM/DDIM/PNDM/DPM-Solver, fractions
 * for Euler's `linspace` spacing (999, 946.42108…). Pass them to the model and back to `step`
 * exactly as read from `timesteps`.
 */
import type { Tensor } from '../backend/tf.ts';
import { SAMPLER_DISPLAY_NAMES, SCHEDULERS } from '../../api/schemas.ts';
import type { SamplingScheduleConfig } from './schedulerConfig.ts';

/** The samplers of the contract (`SCHEDULERS`) and DDPM, which only trains. */
export const SCHEDULER_NAMES = [...SCHEDULERS, 'ddpm'] as const;
export type SchedulerName = (typeof SCHEDULER_NAMES)[number];

/** A1111-style sampler names, as written to PNG `parameters` metadata ("Sampler: Euler a"). */
export const DISPLAY_NAMES: Readonly<Record<SchedulerName, string>> = SAMPLER_DISPLAY_NAMES;

export interface Scheduler {
  /** The project's name for this sampler (CLI `--scheduler`). */
  readonly name: SchedulerName;
  /** A1111-style display name for image metadata. */
  readonly displayName: string;
  /** The diffusers class this reproduces, e.g. `DPMSolverMultistepScheduler`. */
  readonly className: string;
  readonly config: SamplingScheduleConfig;
  /** ᾱ_t for t = 0 … num_train_timesteps-1, float32 (shared with training). */
  readonly alphasCumprod: Float32Array;
  /** The timesteps of the current run, in the order `step` expects them. Empty before `setTimesteps`. */
  readonly timesteps: readonly number[];
  /** Standard deviation of the initial latent noise: multiply N(0, 1) latents by this. */
  readonly initNoiseSigma: number;
  /** Model evaluations per entry of `timesteps` (1 for every scheduler here). */
  readonly order: number;
  /** True when `step` needs a fresh N(0, 1) noise tensor shaped like the sample. */
  readonly needsNoise: boolean;
  /** Builds the schedule for `numInferenceSteps` and clears the multistep history. */
  setTimesteps(numInferenceSteps: number): void;
  /** The model input for timestep t (Euler: x / √(σ²+1); others: a clone of x). Caller owns the result. */
  scaleModelInput(sample: Tensor, t: number): Tensor;
  /** One reverse step from x_t to x_{t-1}. Caller owns the result; the arguments are not consumed. */
  step(modelOutput: Tensor, t: number, sample: Tensor, noise?: Tensor): Tensor;
  /** Disposes the multistep history and rewinds to the start of the current schedule. */
  reset(): void;
}

/** Checks that a supplied noise tensor fits the sample; throws a message naming the scheduler. */
export function checkNoise(who: string, noise: Tensor | undefined, sample: Tensor, why: string): Tensor {
  if (!noise) {
    throw new Error(
      `${who}.step: ${why} needs a noise tensor shaped like the sample [${sample.shape.join(', ')}] (draw it with randn(rng, shape) from engine/random.ts)`,
    );
  }
  if (noise.shape.length !== sample.shape.length || noise.shape.some((d, i) => d !== sample.shape[i])) {
    throw new Error(
      `${who}.step: noise has shape [${noise.shape.join(', ')}] but the sample has shape [${sample.shape.join(', ')}]`,
    );
  }
  return noise;
}

/**
 * The contract every sampling scheduler in this folder implements.
 *
 * One sampling run, on plain Float32Arrays (the latents, row-major in any layout: the step math is
 * elementwise), so that a scheduler runs beside any executor without loading TensorFlow.js:
 *
 *   scheduler.setTimesteps(steps);                       // also clears any multistep history
 *   let x = initial noise × scheduler.initNoiseSigma;
 *   for (const t of scheduler.timesteps) {
 *     const xIn = scheduler.scaleModelInput(x, t);       // a new array
 *     const eps = unet(xIn, t);
 *     const noise = scheduler.needsNoise ? randn(rng, shape) : undefined;
 *     x = scheduler.step(eps, t, x, noise);              // a new array
 *   }
 *
 * Ownership: `scaleModelInput` and `step` never change their arguments and always return a new
 * array (an identity `scaleModelInput` returns a copy). Multistep history (PNDM's past ε,
 * DPM-Solver's past x̂₀) is the scheduler's own copies, dropped when they leave the history, after
 * the last step of the schedule, and on `reset()` / `setTimesteps()`.
 *
 * Timesteps are numbers holding float32 values: integers for DDPM/DDIM/PNDM/DPM-Solver, fractions
 * for Euler's `linspace` spacing (999, 946.42108…). Pass them to the model and back to `step`
 * exactly as read from `timesteps`.
 */
import { SAMPLER_DISPLAY_NAMES, SCHEDULERS } from '../../api/schemas.ts';
import { f32, sqrt32 } from './float32.ts';
import {
  alphasCumprodOf,
  betasFor,
  eulerInitNoiseSigma,
  indexForTimestep,
  inferenceTimesteps,
  trainingSigmas,
} from './noiseSchedule.ts';
import {
  fileConfigOf,
  type RawSchedulerConfig,
  resolveConfig,
  type SamplingScheduleConfig,
  type Schema,
} from './schedulerConfig.ts';

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
  /** The config as `scheduler_config.json` spells it (`num_train_timesteps`, ...): diffusers' `scheduler.config`. */
  fileConfig(): Record<string, unknown>;
  /** ᾱ_t for t = 0 … num_train_timesteps-1, float32 (shared with training). */
  readonly alphasCumprod: Float32Array;
  /** The timesteps of the current run, in the order `step` expects them. Empty before `setTimesteps`. */
  readonly timesteps: readonly number[];
  /** Standard deviation of the initial latent noise: multiply N(0, 1) latents by this. */
  readonly initNoiseSigma: number;
  /** Model evaluations per entry of `timesteps` (1 for every scheduler here). */
  readonly order: number;
  /** True when `step` needs fresh N(0, 1) noise of the sample's length. */
  readonly needsNoise: boolean;
  /** Builds the schedule for `numInferenceSteps` and clears the multistep history. */
  setTimesteps(numInferenceSteps: number): void;
  /** The model input for timestep t (Euler: x / √(σ²+1); others: a copy of x), a new array. */
  scaleModelInput(sample: Float32Array, t: number): Float32Array;
  /** One reverse step from x_t to x_{t-1}, a new array; the arguments are not changed. */
  step(modelOutput: Float32Array, t: number, sample: Float32Array, noise?: Float32Array): Float32Array;
  /** Drops the multistep history and rewinds to the start of the current schedule. */
  reset(): void;
}

/** Checks that supplied noise fits the sample; throws a message naming the scheduler. */
export function checkNoise(
  who: string,
  noise: Float32Array | undefined,
  sample: Float32Array,
  why: string,
): Float32Array {
  if (!noise) {
    throw new Error(
      `${who}.step: ${why} needs noise of the sample's ${sample.length} values (draw it with rng.normal(shape) from engine/random.ts)`,
    );
  }
  if (noise.length !== sample.length)
    throw new Error(`${who}.step: noise has ${noise.length} values but the sample has ${sample.length}`);
  return noise;
}

/** Checks that the model output fits the sample; throws a message naming the scheduler. */
export function checkOutput(who: string, modelOutput: Float32Array, sample: Float32Array): void {
  if (modelOutput.length !== sample.length)
    throw new Error(
      `${who}.step: the model output has ${modelOutput.length} values but the sample has ${sample.length}`,
    );
}

/** What a scheduler class declares (as its static `spec`): the diffusers class it reproduces and its config schema. */
export interface SchedulerSpec<C> {
  readonly className: string;
  readonly schema: Schema<C>;
}

/**
 * What every scheduler here holds besides its algorithm: the config, resolved from the class's
 * schema (its static `spec`); the training noise schedule β and ᾱ built from it; the names; the
 * current timesteps. A subclass declares `static spec` and `name`, and adds `setTimesteps`,
 * `scaleModelInput`, `step` and `reset` where it differs.
 */
export abstract class BaseScheduler<C extends SamplingScheduleConfig> {
  abstract readonly name: SchedulerName;
  private readonly spec: SchedulerSpec<C>;
  readonly className: string;
  readonly config: Readonly<C>;
  /** β_t for t = 0 … num_train_timesteps-1, float32. */
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  readonly order = 1;
  protected _timesteps: number[] = [];
  /** N of the current run (null before `setTimesteps`). */
  protected numInferenceSteps: number | null = null;

  /**
   * The scheduler of the class's `spec`: `config` (camelCase, given in code) over the values of
   * the model's JSON `file` over the class's defaults (`resolveConfig`).
   */
  constructor(config: Partial<C> = {}, file: RawSchedulerConfig | null = null) {
    const { spec } = new.target as unknown as { spec?: SchedulerSpec<C> };
    if (!spec) throw new Error(`${new.target.name}: a scheduler class must declare its static spec`);
    this.spec = spec;
    this.className = spec.className;
    this.config = resolveConfig(spec.className, spec.schema, file, config);
    this.betas = betasFor(this.config);
    this.alphasCumprod = alphasCumprodOf(this.betas);
  }

  /**
   * diffusers' `X.from_config(model.scheduler.config, **overrides)`: this class from a model's
   * scheduler JSON, every key the file lacks at this class's default, `overrides` (camelCase) winning.
   */
  static fromConfig<C extends SamplingScheduleConfig, S>(
    this: { readonly spec: SchedulerSpec<C>; new (config?: Partial<C>, file?: RawSchedulerConfig | null): S },
    file: RawSchedulerConfig | null,
    overrides: Partial<C> = {},
  ): S {
    return new this(overrides, file);
  }

  fileConfig(): Record<string, unknown> {
    return fileConfigOf(this.spec.schema, this.config);
  }

  /** Standard deviation of the initial latent noise: 1 (the σ schedulers override it). */
  get initNoiseSigma(): number {
    return 1;
  }

  get displayName(): string {
    return DISPLAY_NAMES[this.name];
  }

  get timesteps(): readonly number[] {
    return this._timesteps;
  }

  /**
   * N integer timesteps, descending (DDPM, DDIM; the others override this):
   *   linspace  round(linspace(0, T-1, N)) reversed
   *   leading   (0, T//N, 2·T//N, …) + steps_offset, reversed       (SD-1.5: 951, 901, …, 1 for N=20)
   *   trailing  round(arange(T, 0, -T/N)) - 1
   */
  setTimesteps(numInferenceSteps: number): void {
    this._timesteps = inferenceTimesteps(this.className, this.config, numInferenceSteps, 'round');
    this.numInferenceSteps = numInferenceSteps;
  }

  /** The model input: x itself, as a copy (Euler's scale it by σ instead). */
  scaleModelInput(sample: Float32Array, _t: number): Float32Array {
    return sample.slice();
  }
}

/**
 * A scheduler over σ = √((1−ᾱ)/ᾱ), the noise level of Karras et al. (Euler, Euler a): σ for each
 * timestep and a final 0, the position of the step in the run, and the model input x / √(σ²+1).
 */
export abstract class SigmaScheduler<C extends SamplingScheduleConfig> extends BaseScheduler<C> {
  protected readonly trainSigmas = trainingSigmas(this.alphasCumprod);
  /** σ for each timestep, then a final 0 (float32 values); before setTimesteps, as diffusers, the training σ (descending) + 0. */
  protected _sigmas: number[] = [...this.trainSigmas].reverse().concat(0);
  protected stepIndex: number | null = null;

  get sigmas(): readonly number[] {
    return this._sigmas;
  }

  /** σ_max for linspace/trailing spacing; √(σ_max² + 1) for leading (float32). */
  override get initNoiseSigma(): number {
    return eulerInitNoiseSigma(this._sigmas, this.config.timestepSpacing);
  }

  /** x / √(σ² + 1), σ of this timestep, a new array. */
  override scaleModelInput(sample: Float32Array, t: number): Float32Array {
    this.stepIndex ??= indexForTimestep(this._timesteps, t, this.className);
    const sigma = this._sigmas[this.stepIndex];
    const d = sqrt32(f32(f32(sigma * sigma) + 1));
    return sample.map((v) => v / d);
  }

  /** Rewinds to the first timestep (no history). */
  reset(): void {
    this.stepIndex = null;
  }

  /** Starts a run over these timesteps and sigmas (a final σ = 0 is appended), as float32 values. */
  protected startRun(timesteps: readonly number[], sigmas: readonly number[]): void {
    this._sigmas = sigmas.map(f32).concat(0);
    this._timesteps = timesteps.map(f32);
    this.stepIndex = null;
  }
}

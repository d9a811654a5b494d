/**
 * Schedulers: one diffusers algorithm per file, and `createScheduler`, the one place a sampler is
 * picked by name.
 *
 * Design note. A user swaps samplers the way diffusers users do,
 * `EulerDiscreteScheduler.from_config(pipe.scheduler.config)`: the model's
 * `scheduler/scheduler_config.json` (SD-1.5: PNDM, scaled_linear 0.00085 → 0.012, steps_offset 1)
 * supplies the noise schedule, and every key the file does not have falls back to *the chosen
 * class's own default*. That is why SD-1.5 with Euler or DPM++ uses `linspace` timesteps (999,
 * 946.42, …) while PNDM and DDIM use `leading` (951, 901, …): see `schedulerConfig.ts`.
 *
 * | name              | class (file)                                       | display (PNG metadata) |
 * | ----------------- | -------------------------------------------------- | ---------------------- |
 * | `pndm`            | PNDMScheduler (pndmScheduler.ts), PLMS path         | PNDM                   |
 * | `ddim`            | DDIMScheduler (ddimScheduler.ts), η option          | DDIM                   |
 * | `euler`           | EulerDiscreteScheduler (eulerDiscreteScheduler.ts)  | Euler                  |
 * | `euler-a`         | EulerAncestralDiscreteScheduler (…Ancestral…)       | Euler a                |
 * | `dpmpp-2m`        | DPMSolverMultistepScheduler, dpmsolver++, order 2   | DPM++ 2M               |
 * | `dpmpp-2m-karras` | the same with `use_karras_sigmas`                   | DPM++ 2M Karras        |
 * | `ddpm`            | DDPMScheduler (ddpmScheduler.ts); training noise    | DDPM                   |
 * | `from-model`      | whatever `_class_name` the model's JSON names       |                        |
 */
import { DDIMScheduler } from './ddimScheduler.ts';
import { DDPMScheduler } from './ddpmScheduler.ts';
import { DPMSolverMultistepScheduler } from './dpmSolverMultistepScheduler.ts';
import { EulerAncestralDiscreteScheduler } from './eulerAncestralDiscreteScheduler.ts';
import { EulerDiscreteScheduler } from './eulerDiscreteScheduler.ts';
import { PNDMScheduler } from './pndmScheduler.ts';
import { DISPLAY_NAMES, SCHEDULER_NAMES, type Scheduler, type SchedulerName } from './scheduler.ts';
import type { RawSchedulerConfig } from './schedulerConfig.ts';

export {
  DDIMScheduler,
  DDPMScheduler,
  DPMSolverMultistepScheduler,
  EulerAncestralDiscreteScheduler,
  EulerDiscreteScheduler,
  PNDMScheduler,
};
export { DISPLAY_NAMES, SCHEDULER_NAMES, type Scheduler, type SchedulerName } from './scheduler.ts';
export { fileConfigOf, parseSchedulerConfig, readSchedulerConfig, type RawSchedulerConfig } from './schedulerConfig.ts';

export type SchedulerChoice = SchedulerName | 'from-model';
export const SCHEDULER_CHOICES: readonly SchedulerChoice[] = ['from-model', ...SCHEDULER_NAMES];

export interface CreateSchedulerOptions {
  /** DDIM's η (0 = deterministic, the default). Only `ddim` (or a DDIM model config) accepts it. */
  readonly eta?: number;
}

export function isSchedulerChoice(s: string): s is SchedulerChoice {
  return (SCHEDULER_CHOICES as readonly string[]).includes(s);
}

/** The A1111-style name for PNG metadata, e.g. `Euler a`, `DPM++ 2M Karras`. */
export function schedulerDisplayName(name: SchedulerName): string {
  return DISPLAY_NAMES[name];
}

/** diffusers class name in a model's JSON -> how to build it from that JSON. */
const FROM_MODEL: Readonly<Record<string, (model: RawSchedulerConfig, options: CreateSchedulerOptions) => Scheduler>> =
  {
    PNDMScheduler: (m) => PNDMScheduler.fromConfig(m),
    DDIMScheduler: (m, o) => new DDIMScheduler({}, m, o),
    EulerDiscreteScheduler: (m) => EulerDiscreteScheduler.fromConfig(m),
    EulerAncestralDiscreteScheduler: (m) => EulerAncestralDiscreteScheduler.fromConfig(m),
    DPMSolverMultistepScheduler: (m) => DPMSolverMultistepScheduler.fromConfig(m),
    DDPMScheduler: (m) => DDPMScheduler.fromConfig(m),
  };

/**
 * Builds the sampler `name` from a model's scheduler config, as diffusers'
 * `X.from_config(model_scheduler.config, **overrides)`:
 *   dpmpp-2m         DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=False)
 *                    (in code: { algorithmType: 'dpmsolver++', solverOrder: 2, useKarrasSigmas: false })
 *   dpmpp-2m-karras  the same with use_karras_sigmas=True
 *   from-model       the class named by `_class_name`, with the file's settings unchanged.
 */
export function createScheduler(
  name: 'ddpm',
  model: RawSchedulerConfig,
  options?: CreateSchedulerOptions,
): DDPMScheduler;
export function createScheduler(name: string, model: RawSchedulerConfig, options?: CreateSchedulerOptions): Scheduler;
export function createScheduler(
  name: string,
  model: RawSchedulerConfig,
  options: CreateSchedulerOptions = {},
): Scheduler {
  if (!isSchedulerChoice(name)) {
    throw new Error(`unknown scheduler '${name}'; valid names: ${SCHEDULER_CHOICES.join(', ')}`);
  }
  if (
    options.eta !== undefined &&
    options.eta !== 0 &&
    name !== 'ddim' &&
    !(name === 'from-model' && model.values._class_name === 'DDIMScheduler')
  ) {
    throw new Error(`scheduler '${name}' has no eta; eta=${options.eta} applies to ddim only`);
  }
  const dpm = { algorithmType: 'dpmsolver++', solverOrder: 2 } as const;
  switch (name) {
    case 'pndm':
      return PNDMScheduler.fromConfig(model);
    case 'ddim':
      return new DDIMScheduler({}, model, options);
    case 'euler':
      return EulerDiscreteScheduler.fromConfig(model);
    case 'euler-a':
      return EulerAncestralDiscreteScheduler.fromConfig(model);
    case 'dpmpp-2m':
      return DPMSolverMultistepScheduler.fromConfig(model, { ...dpm, useKarrasSigmas: false });
    case 'dpmpp-2m-karras':
      return DPMSolverMultistepScheduler.fromConfig(model, { ...dpm, useKarrasSigmas: true });
    case 'ddpm':
      return DDPMScheduler.fromConfig(model);
    case 'from-model': {
      const cls = model.values._class_name;
      const build = typeof cls === 'string' ? FROM_MODEL[cls] : undefined;
      if (!build) {
        throw new Error(
          `${model.source}: _class_name ${JSON.stringify(cls)} is not a scheduler this project implements (${Object.keys(FROM_MODEL).join(', ')}); pick one by name instead: ${SCHEDULER_NAMES.join(', ')}`,
        );
      }
      return build(model, options);
    }
  }
}

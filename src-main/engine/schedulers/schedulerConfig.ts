/**
 * Scheduler configuration: a model's `scheduler/scheduler_config.json`, and the typed, readonly,
 * validated config each scheduler class builds from it.
 *
 * Each scheduler file declares its config schema as a table `{ key: field(default, check) }`
 * whose keys and defaults are diffusers v0.27.2's `__init__` arguments for that class (snake_case,
 * exactly the JSON keys). `resolveConfig` fills a config from that table the way diffusers'
 * `X.from_config(other.config)` does:
 *
 *   - a key present in the JSON file and accepted by X takes the file's value;
 *   - a key absent from the file takes X's own default (diffusers records the defaults the source
 *     scheduler filled in under `_use_default_values` and drops them, so e.g. SD-1.5's PNDM JSON,
 *     which has no `timestep_spacing`, gives Euler/DPM `linspace` and PNDM/DDIM `leading`);
 *   - keys X does not accept are ignored (diffusers keeps them as hidden config);
 *   - explicit overrides (`from_config(cfg, algorithm_type=...)`) win over both.
 *
 * Every value is checked once, here; an error names the file, the class, the key, the value and
 * what is allowed.
 */
import { readFile } from 'node:fs/promises';

export type BetaSchedule = 'linear' | 'scaled_linear' | 'squaredcos_cap_v2';
export type PredictionType = 'epsilon' | 'v_prediction' | 'sample';
export type TimestepSpacing = 'linspace' | 'leading' | 'trailing';

export const BETA_SCHEDULES: readonly BetaSchedule[] = ['linear', 'scaled_linear', 'squaredcos_cap_v2'];
export const PREDICTION_TYPES: readonly PredictionType[] = ['epsilon', 'v_prediction', 'sample'];
export const TIMESTEP_SPACINGS: readonly TimestepSpacing[] = ['linspace', 'leading', 'trailing'];

/** A scheduler_config.json as read: its keys exactly as the file has them, and where it came from. */
export interface RawSchedulerConfig {
  readonly source: string;
  readonly values: Readonly<Record<string, unknown>>;
}

/** The noise-schedule fields every scheduler shares (the first five `__init__` arguments). */
export interface NoiseScheduleConfig {
  readonly num_train_timesteps: number;
  readonly beta_start: number;
  readonly beta_end: number;
  readonly beta_schedule: BetaSchedule;
  readonly trained_betas: readonly number[] | null;
}

/** Fields shared by every sampling scheduler in this folder. */
export interface SamplingScheduleConfig extends NoiseScheduleConfig {
  readonly prediction_type: PredictionType;
  readonly timestep_spacing: TimestepSpacing;
  readonly steps_offset: number;
}

/** Parses JSON text of a scheduler config (diffusers writes `-Infinity`/`NaN` bare, as Python does). */
export function parseSchedulerConfig(text: string, source: string): RawSchedulerConfig {
  let values: unknown;
  try {
    values = JSON.parse(text.replace(/:\s*(-?Infinity|NaN)\b/g, ': "__float__$1"'), (_k, v: unknown) =>
      typeof v === 'string' && v.startsWith('__float__') ? Number(v.slice('__float__'.length)) : v,
    );
  } catch (err) {
    throw new Error(`${source}: scheduler config is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof values !== 'object' || values === null || Array.isArray(values)) {
    throw new Error(
      `${source}: scheduler config must be a JSON object, got ${Array.isArray(values) ? 'an array' : typeof values}`,
    );
  }
  return { source, values: Object.freeze({ ...(values as Record<string, unknown>) }) };
}

/** Reads `<model>/scheduler/scheduler_config.json` (or any scheduler config file). */
export async function readSchedulerConfig(path: string): Promise<RawSchedulerConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read scheduler config ${path}: ${(err as Error).message}`);
  }
  return parseSchedulerConfig(text, path);
}

/** One config field: its default and its check (returns the typed value or a description of what is allowed). */
export interface Field<T> {
  readonly default: T;
  readonly check: (value: unknown) => { ok: true; value: T } | { ok: false; expected: string };
}

export type Schema<C> = { readonly [K in keyof C]: Field<C[K]> };
export type ConfigOf<S> = { readonly [K in keyof S]: S[K] extends Field<infer T> ? T : never };

const ok = <T>(value: T) => ({ ok: true as const, value });
const bad = (expected: string) => ({ ok: false as const, expected });

export function intField(def: number, min = 0): Field<number> {
  return {
    default: def,
    check: (v) => (typeof v === 'number' && Number.isInteger(v) && v >= min ? ok(v) : bad(`an integer >= ${min}`)),
  };
}

export function numberField(def: number): Field<number> {
  return { default: def, check: (v) => (typeof v === 'number' && !Number.isNaN(v) ? ok(v) : bad('a number')) };
}

export function boolField(def: boolean): Field<boolean> {
  return { default: def, check: (v) => (typeof v === 'boolean' ? ok(v) : bad('true or false')) };
}

export function enumField<T extends string>(def: T, values: readonly T[]): Field<T> {
  return {
    default: def,
    check: (v) => ((values as readonly unknown[]).includes(v) ? ok(v as T) : bad(`one of ${values.join(', ')}`)),
  };
}

/** A field that may also be null (diffusers' `Optional[...] = None`). */
export function nullable<T>(inner: Field<T>, def: T | null = null): Field<T | null> {
  return {
    default: def,
    check: (v) => {
      if (v === null) return ok(null);
      const r = inner.check(v);
      return r.ok ? r : bad(`null or ${r.expected}`);
    },
  };
}

export function betasField(): Field<readonly number[] | null> {
  return {
    default: null,
    check: (v) =>
      v === null
        ? ok(null)
        : Array.isArray(v) && v.every((b) => typeof b === 'number' && b >= 0 && b < 1)
          ? ok(Object.freeze([...v]) as readonly number[])
          : bad('null or an array of betas in [0, 1)'),
  };
}

/** The shared part of every schema, with diffusers' defaults (identical in all six classes). */
export const NOISE_SCHEDULE_FIELDS = {
  num_train_timesteps: intField(1000, 1),
  beta_start: numberField(0.0001),
  beta_end: numberField(0.02),
  beta_schedule: enumField<BetaSchedule>('linear', BETA_SCHEDULES),
  trained_betas: betasField(),
} as const;

/**
 * The fields of every sampling scheduler here (`SamplingScheduleConfig`): the noise schedule, then
 * `prediction_type` (epsilon by default in every class), `timestep_spacing` (each class's own
 * default) and `steps_offset`.
 */
export function samplingFields(spacing: TimestepSpacing) {
  return {
    ...NOISE_SCHEDULE_FIELDS,
    prediction_type: enumField<PredictionType>('epsilon', PREDICTION_TYPES),
    timestep_spacing: enumField<TimestepSpacing>(spacing, TIMESTEP_SPACINGS),
    steps_offset: intField(0),
  } as const;
}

/** Imagen's dynamic thresholding (DDPM, DDIM, DPM-Solver): its keys are accepted; `thresholding` must stay false. */
export const THRESHOLDING_FIELDS = {
  thresholding: boolField(false),
  dynamic_thresholding_ratio: numberField(0.995),
  sample_max_value: numberField(1.0),
} as const;

/**
 * Builds a readonly config for `className` from its schema: overrides, then values present in
 * `raw` (the model's JSON, or a constructor argument), then the schema's defaults.
 */
export function resolveConfig<C>(
  className: string,
  schema: Schema<C>,
  raw: Readonly<Record<string, unknown>> = {},
  overrides: Readonly<Record<string, unknown>> = {},
  source = 'config',
): Readonly<C> {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(overrides)) {
    if (!(key in schema)) {
      throw new Error(
        `${className}: unknown config key '${key}' (${className} accepts ${Object.keys(schema).join(', ')})`,
      );
    }
  }
  for (const [key, field] of Object.entries(schema) as [string, Field<unknown>][]) {
    const fromOverride = key in overrides && overrides[key] !== undefined;
    const present = fromOverride || (key in raw && raw[key] !== undefined);
    if (!present) {
      out[key] = field.default;
      continue;
    }
    const value = fromOverride ? overrides[key] : raw[key];
    const r = field.check(value);
    if (!r.ok) {
      const where = fromOverride ? 'override' : source;
      throw new Error(`${where}: ${className}.${key} is ${JSON.stringify(value)}; expected ${r.expected}`);
    }
    out[key] = r.value;
  }
  const cfg = out as unknown as NoiseScheduleConfig;
  if (cfg.trained_betas && cfg.trained_betas.length !== cfg.num_train_timesteps) {
    throw new Error(
      `${source}: ${className}.trained_betas has ${cfg.trained_betas.length} values but num_train_timesteps is ${cfg.num_train_timesteps}; they must agree`,
    );
  }
  return Object.freeze(out) as Readonly<C>;
}

/** Throws the standard error for a config value this implementation does not support. */
export function unsupported(className: string, key: string, value: unknown, fix: string): never {
  throw new Error(`${className}: ${key}=${JSON.stringify(value)} is not supported by this implementation; ${fix}`);
}

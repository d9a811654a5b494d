/**
 * Scheduler configuration: a model's `scheduler/scheduler_config.json`, and the typed, readonly,
 * validated config each scheduler class builds from it.
 *
 * Each scheduler file declares its config schema as a table `{ name: field(key, default, check) }`:
 * one row per diffusers v0.27.2 `__init__` argument of that class, named in camelCase in code, with
 * `key` the argument's name as the JSON file spells it (`numTrainTimesteps` <-> `num_train_timesteps`)
 * and diffusers' default. A row may also say which values this implementation runs (`implemented`).
 * `resolveConfig` is the one place the file's keys are read; it fills a config from that table the
 * way diffusers' `X.from_config(other.config)` does:
 *
 *   - a key present in the JSON file and accepted by X takes the file's value;
 *   - a key absent from the file takes X's own default (diffusers records the defaults the source
 *     scheduler filled in under `_use_default_values` and drops them, so e.g. SD-1.5's PNDM JSON,
 *     which has no `timestep_spacing`, gives Euler/DPM `linspace` and PNDM/DDIM `leading`);
 *   - keys X does not accept are ignored (diffusers keeps them as hidden config);
 *   - values given in code (`from_config(cfg, algorithm_type=...)`, here `{ algorithmType: ... }`)
 *     win over both.
 *
 * Every value is checked once, here; an error names the file, the class, the file's key (or the
 * code name of a value given in code), the value and what is allowed; a value diffusers accepts
 * but this implementation does not run is refused with what to change.
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
  readonly numTrainTimesteps: number;
  readonly betaStart: number;
  readonly betaEnd: number;
  readonly betaSchedule: BetaSchedule;
  readonly trainedBetas: readonly number[] | null;
}

/** Fields shared by every sampling scheduler in this folder. */
export interface SamplingScheduleConfig extends NoiseScheduleConfig {
  readonly predictionType: PredictionType;
  readonly timestepSpacing: TimestepSpacing;
  readonly stepsOffset: number;
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

/** One config field: its key in the JSON file, its default, its check (the typed value or what is allowed). */
export interface Field<T> {
  readonly key: string;
  readonly default: T;
  readonly check: (value: unknown) => { ok: true; value: T } | { ok: false; expected: string };
  /** The values this implementation runs (all when absent), and what to change otherwise. */
  readonly implemented?: { readonly accepts: (value: T) => boolean; readonly fix: string };
}

export type Schema<C> = { readonly [K in keyof C]: Field<C[K]> };
export type ConfigOf<S> = { readonly [K in keyof S]: S[K] extends Field<infer T> ? T : never };

const ok = <T>(value: T) => ({ ok: true as const, value });
const bad = (expected: string) => ({ ok: false as const, expected });

export function intField(key: string, def: number, min = 0): Field<number> {
  return {
    key,
    default: def,
    check: (v) => (typeof v === 'number' && Number.isInteger(v) && v >= min ? ok(v) : bad(`an integer >= ${min}`)),
  };
}

export function numberField(key: string, def: number): Field<number> {
  return { key, default: def, check: (v) => (typeof v === 'number' && !Number.isNaN(v) ? ok(v) : bad('a number')) };
}

export function boolField(key: string, def: boolean): Field<boolean> {
  return { key, default: def, check: (v) => (typeof v === 'boolean' ? ok(v) : bad('true or false')) };
}

export function enumField<T extends string>(key: string, def: T, values: readonly T[]): Field<T> {
  return {
    key,
    default: def,
    check: (v) => ((values as readonly unknown[]).includes(v) ? ok(v as T) : bad(`one of ${values.join(', ')}`)),
  };
}

/** A field that may also be null (diffusers' `Optional[...] = None`). */
export function nullable<T>(inner: Field<T>, def: T | null = null): Field<T | null> {
  return {
    key: inner.key,
    default: def,
    check: (v) => {
      if (v === null) return ok(null);
      const r = inner.check(v);
      return r.ok ? r : bad(`null or ${r.expected}`);
    },
  };
}

export function betasField(key: string): Field<readonly number[] | null> {
  return {
    key,
    default: null,
    check: (v) =>
      v === null
        ? ok(null)
        : Array.isArray(v) && v.every((b) => typeof b === 'number' && b >= 0 && b < 1)
          ? ok(Object.freeze([...v]) as readonly number[])
          : bad('null or an array of betas in [0, 1)'),
  };
}

/** `field`, of which this implementation runs only the values `accepts` takes; `fix` says what to change. */
export function implemented<T>(field: Field<T>, accepts: (value: T) => boolean, fix: string): Field<T> {
  return { ...field, implemented: { accepts, fix } };
}

/** A boolean option this implementation does not run (thresholding, zero-SNR rescaling): accepted only false. */
export function unimplementedFlag(key: string): Field<boolean> {
  return implemented(boolField(key, false), (v) => !v, 'set it false');
}

/** The shared part of every schema, with diffusers' defaults (identical in all six classes). */
export const NOISE_SCHEDULE_FIELDS = {
  numTrainTimesteps: intField('num_train_timesteps', 1000, 1),
  betaStart: numberField('beta_start', 0.0001),
  betaEnd: numberField('beta_end', 0.02),
  betaSchedule: enumField<BetaSchedule>('beta_schedule', 'linear', BETA_SCHEDULES),
  trainedBetas: betasField('trained_betas'),
} as const;

/** `prediction_type`: epsilon by default in every class. */
export const PREDICTION_TYPE_FIELD = enumField<PredictionType>('prediction_type', 'epsilon', PREDICTION_TYPES);

/** `prediction_type` of the classes diffusers implements only for ε and v (PNDM, Euler a). */
export const EPSILON_OR_V_FIELD = implemented(
  PREDICTION_TYPE_FIELD,
  (v) => v !== 'sample',
  'diffusers implements only epsilon and v_prediction for this class; use one of them',
);

/**
 * The fields of every sampling scheduler here (`SamplingScheduleConfig`): the noise schedule, then
 * `prediction_type`, `timestep_spacing` (each class's own default) and `steps_offset`.
 */
export function samplingFields(spacing: TimestepSpacing) {
  return {
    ...NOISE_SCHEDULE_FIELDS,
    predictionType: PREDICTION_TYPE_FIELD,
    timestepSpacing: enumField<TimestepSpacing>('timestep_spacing', spacing, TIMESTEP_SPACINGS),
    stepsOffset: intField('steps_offset', 0),
  } as const;
}

/** Imagen's dynamic thresholding (DDPM, DDIM, DPM-Solver): its keys are accepted; `thresholding` must stay false. */
export const THRESHOLDING_FIELDS = {
  thresholding: unimplementedFlag('thresholding'),
  dynamicThresholdingRatio: numberField('dynamic_thresholding_ratio', 0.995),
  sampleMaxValue: numberField('sample_max_value', 1.0),
} as const;

/** `rescale_betas_zero_snr` (Lin et al. 2023), accepted only false. */
export const RESCALE_BETAS_FIELDS = { rescaleBetasZeroSnr: unimplementedFlag('rescale_betas_zero_snr') } as const;

/**
 * Builds a readonly config for `className` from its schema: values given in `code` (camelCase
 * names), then the values of the JSON `file` (its own keys), then the schema's defaults; then
 * refuses a value this implementation does not run.
 */
export function resolveConfig<C>(
  className: string,
  schema: Schema<C>,
  file: RawSchedulerConfig | null,
  code: Partial<C> = {},
): Readonly<C> {
  const fields = Object.entries(schema) as [string, Field<unknown>][];
  const given = code as Readonly<Record<string, unknown>>;
  for (const name of Object.keys(given)) {
    if (!(name in schema))
      throw new Error(
        `${className}: unknown config field '${name}' (${className} has ${Object.keys(schema).join(', ')})`,
      );
  }
  const out: Record<string, unknown> = {};
  for (const [name, field] of fields) {
    const inCode = given[name] !== undefined;
    const value = inCode ? given[name] : file?.values[field.key];
    if (value === undefined) {
      out[name] = field.default;
      continue;
    }
    const r = field.check(value);
    if (!r.ok) {
      const where = inCode ? `${className}.${name} (given in code)` : `${file?.source}: ${className}.${field.key}`;
      throw new Error(`${where} is ${JSON.stringify(value)}; expected ${r.expected}`);
    }
    out[name] = r.value;
  }
  for (const [name, field] of fields) {
    if (field.implemented && !field.implemented.accepts(out[name]))
      unsupported(className, field.key, out[name], field.implemented.fix);
  }
  const cfg = out as unknown as NoiseScheduleConfig;
  if (cfg.trainedBetas && cfg.trainedBetas.length !== cfg.numTrainTimesteps) {
    throw new Error(
      `${file?.source ?? className}: ${className}.trained_betas has ${cfg.trainedBetas.length} values but num_train_timesteps is ${cfg.numTrainTimesteps}; they must agree`,
    );
  }
  return Object.freeze(out) as Readonly<C>;
}

/** The config as its JSON file spells it (`{ num_train_timesteps: 1000, ... }`), e.g. to compare with diffusers'. */
export function fileConfigOf<C>(schema: Schema<C>, config: Readonly<C>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, field] of Object.entries(schema) as [string, Field<unknown>][])
    out[field.key] = (config as Record<string, unknown>)[name];
  return out;
}

/** Throws the standard error for a config value this implementation does not support. */
export function unsupported(className: string, key: string, value: unknown, fix: string): never {
  throw new Error(`${className}: ${key}=${JSON.stringify(value)} is not supported by this implementation; ${fix}`);
}

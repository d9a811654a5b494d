/**
 * Command-line options made from a settings schema (api/schemas.ts): each field of the schema is one
 * option, with its choices, bounds, default and help text read from the field itself, so a setting
 * added to the schema is a flag of every command that takes the schema. The CLI adds only how it
 * spells a field (`learningRate` is `--lr <lr>`, the names users' scripts already use), in one table
 * per command; a field the table does not name gets the kebab-case of its name (`weightDecay`:
 * `--weight-decay <x>`).
 *
 * Values are checked twice: each option's parser refuses a value out of the field's bounds or
 * choices (commander names the option), then `settingsOf` checks the whole against the schema and
 * names the flag of each field it refuses.
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import { z } from 'zod';
import { MODEL_DEFAULTS_FILE } from '../api/schemas.ts';
import { parse, SEED_MAX, UsageError } from './common.ts';

/** How the CLI spells one field, where it differs from the kebab-case of its name. */
export interface FlagSpelling {
  /** The flag and its value placeholder, e.g. `--lr <lr>` (a boolean field: the flag alone). */
  flag?: string;
  /** What only the command line says about it (e.g. what it means with --resume). */
  note?: string;
  /** The option takes no default on the command line: the engine picks it (this text says how). */
  defaultHelp?: string;
}

/** What a field accepts, read from its schema. */
interface FieldKind {
  type: 'integer' | 'number' | 'enum' | 'boolean' | 'string';
  repeatable: boolean;
  min: number;
  max: number;
  /** The lower bound excludes `min` (`positive()`). */
  above: boolean;
  multipleOf?: number;
  choices?: readonly string[];
  default?: unknown;
  required: boolean;
  description: string;
}

/** A field's schema without its default / optional / nullable wrappers, and what they said. */
function unwrap(schema: z.ZodType): { inner: z.ZodType; default?: unknown; required: boolean } {
  let s = schema;
  let def: unknown;
  let required = true;
  for (;;) {
    if (s instanceof z.ZodDefault) {
      def = s._zod.def.defaultValue;
      required = false;
      s = s.unwrap() as z.ZodType;
    } else if (s instanceof z.ZodOptional) {
      required = false;
      s = s.unwrap() as z.ZodType;
    } else if (s instanceof z.ZodNullable) s = s.unwrap() as z.ZodType;
    else return { inner: s, default: def, required };
  }
}

/** The bounds a number schema's checks set (an integer without bounds: the safe integers). */
function numberBounds(s: z.ZodNumber): Pick<FieldKind, 'type' | 'min' | 'max' | 'above' | 'multipleOf'> {
  const b: Pick<FieldKind, 'type' | 'min' | 'max' | 'above' | 'multipleOf'> = {
    type: 'number',
    min: -Infinity,
    max: Infinity,
    above: false,
  };
  for (const check of s._zod.def.checks ?? []) {
    const c = check._zod.def as { check: string; value?: number; inclusive?: boolean; format?: string };
    if (c.check === 'number_format' && /int/.test(c.format ?? '')) {
      b.type = 'integer';
      b.min = Math.max(b.min, -SEED_MAX);
      b.max = Math.min(b.max, SEED_MAX);
    } else if (c.check === 'greater_than') {
      b.min = c.value!;
      b.above = !c.inclusive;
    } else if (c.check === 'less_than') b.max = c.value!;
    else if (c.check === 'multiple_of') b.multipleOf = c.value;
  }
  return b;
}

/** What `field` accepts; `name` is the field's name, for the error when its type has no flag. */
export function fieldKind(name: string, schema: z.ZodType): FieldKind {
  const { inner, default: def, required } = unwrap(schema);
  const base = { default: def, required, description: schema.description ?? name, repeatable: false };
  const bounds = { min: -Infinity, max: Infinity, above: false };
  let s = inner;
  if (s instanceof z.ZodArray) {
    s = unwrap(s.element as z.ZodType).inner;
    base.repeatable = true;
  }
  if (s instanceof z.ZodNumber) return { ...base, ...numberBounds(s) };
  if (s instanceof z.ZodEnum) return { ...base, ...bounds, type: 'enum', choices: s.options as string[] };
  if (s instanceof z.ZodBoolean) return { ...base, ...bounds, type: 'boolean' };
  if (s instanceof z.ZodString) return { ...base, ...bounds, type: 'string' };
  throw new Error(`schemaOptions: the setting '${name}' (${s._zod.def.type}) has no command-line form`);
}

/** `weightDecay` -> `weight-decay`. */
const kebab = (name: string) => name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** The range a number field takes, in words ("an integer from 1 to 256", "a number > 0 and <= 1"). */
export function rangeText(k: FieldKind): string {
  if (k.type === 'integer') {
    const max = k.max === SEED_MAX ? `${SEED_MAX} (2^53 - 1)` : String(k.max);
    return k.multipleOf
      ? `a multiple of ${k.multipleOf} from ${k.min} to ${max}`
      : `an integer from ${k.min} to ${max}`;
  }
  const range = [
    k.min !== -Infinity ? `${k.above ? '>' : '>='} ${k.min}` : '',
    k.max !== Infinity ? `<= ${k.max}` : '',
  ].filter(Boolean);
  return `a number${range.length ? ` ${range.join(' and ')}` : ''}`;
}

/** The commander parser of one value: refuses what the field's bounds refuse, naming them. */
function valueParser(k: FieldKind): ((v: string, prev?: unknown) => unknown) | undefined {
  let one: ((v: string) => unknown) | undefined;
  if (k.type === 'integer') {
    const int = k.max === SEED_MAX ? parse.seed(k.min) : parse.int(k.min, k.max);
    const multiple = k.multipleOf;
    one = multiple
      ? (v) => {
          const n = Number(v);
          if (v.trim() === '' || !Number.isInteger(n) || n < k.min || n > k.max || n % multiple !== 0)
            throw new InvalidArgumentError(`expected ${rangeText(k)}`);
          return n;
        }
      : int;
  } else if (k.type === 'number') one = parse.number(k.min, k.max, { above: k.above });
  if (!k.repeatable) return one;
  return (v: string, prev?: unknown) => [...((prev as unknown[] | undefined) ?? []), one ? one(v) : v];
}

/** The placeholder of a field's value when the spelling table names none. */
const PLACEHOLDER: Record<FieldKind['type'], string> = {
  integer: '<n>',
  number: '<x>',
  enum: '<name>',
  boolean: '',
  string: '<text>',
};

function optionOf(name: string, k: FieldKind, spelling: FlagSpelling = {}): Option {
  const flag = spelling.flag ?? `--${kebab(name)}${k.type === 'boolean' ? '' : ` ${PLACEHOLDER[k.type]}`}`;
  const help = [
    k.description,
    k.type === 'integer' || k.type === 'number' ? rangeText(k) : '',
    k.repeatable ? 'repeatable' : '',
    spelling.note ?? '',
    spelling.defaultHelp ? `default: ${spelling.defaultHelp}` : '',
  ]
    .filter(Boolean)
    .join('; ');
  const option = new Option(flag, help);
  if (k.choices) option.choices(k.choices);
  const parser = valueParser(k);
  if (parser) option.argParser(parser);
  const shown = k.default !== undefined && k.default !== null && k.default !== false && !spelling.defaultHelp;
  if (shown) option.default(k.default);
  if (k.required) option.makeOptionMandatory();
  return option;
}

/** The options of a settings schema, and the way back from parsed options to settings. */
export interface SchemaOptions {
  /** One option per field (in the schema's order). */
  readonly options: readonly Option[];
  /** The option of one field. */
  option(field: string): Option;
  /** The long flag of a field (`learningRate` -> `--lr`). */
  flagOf(field: string): string;
  /** Adds every option to `cmd`. */
  addTo(cmd: Command): Command;
  /** The settings the parsed options hold (defaults included), checked against the schema. */
  settingsOf(opts: Record<string, unknown>): Record<string, unknown>;
  /** True when the field's flag was given on the command line (not a default). */
  given(cmd: Command, field: string): boolean;
}

/**
 * The options of `schema`'s fields (all, or `pick`), spelled as `spelling` says. Throws when a field
 * has no command-line form, so a schema change that needs one is caught by the CLI's tests.
 */
export function schemaOptions<S extends z.ZodRawShape>(
  schema: z.ZodObject<S>,
  spelling: Partial<Record<keyof S & string, FlagSpelling>> = {},
  pick?: ReadonlyArray<keyof S & string>,
): SchemaOptions {
  const fields = (pick ?? Object.keys(schema.shape)) as string[];
  for (const f of Object.keys(spelling))
    if (!(f in schema.shape)) throw new Error(`schemaOptions: '${f}' is not a setting of the schema`);
  const byField = new Map(
    fields.map((f) => [
      f,
      optionOf(f, fieldKind(f, schema.shape[f] as z.ZodType), (spelling as Record<string, FlagSpelling>)[f]),
    ]),
  );
  const flagOf = (field: string) => byField.get(field)?.long ?? field;
  return {
    options: [...byField.values()],
    option(field) {
      const o = byField.get(field);
      if (!o) throw new Error(`schemaOptions: no option for '${field}'`);
      return o;
    },
    flagOf,
    addTo(cmd) {
      for (const o of byField.values()) cmd.addOption(o);
      return cmd;
    },
    settingsOf(opts) {
      const settings: Record<string, unknown> = {};
      for (const [f, o] of byField) if (opts[o.attributeName()] !== undefined) settings[f] = opts[o.attributeName()];
      const r = schema.pick(Object.fromEntries(fields.map((f) => [f, true])) as never).safeParse(settings);
      if (!r.success)
        throw new UsageError(
          r.error.issues.map((i) => `${i.path.length ? flagOf(String(i.path[0])) : ''}: ${i.message}`).join('; '),
        );
      return settings;
    },
    given: (cmd, field) => {
      const o = byField.get(field);
      return o !== undefined && cmd.getOptionValueSource(o.attributeName()) === 'cli';
    },
  };
}

/** Help shown after the options of a command whose defaults a base model's defaults file replaces. */
export const MODEL_DEFAULTS_HELP = `
Defaults: the values shown are the app's. A base model's ${MODEL_DEFAULTS_FILE} (in its folder) replaces
them at run time with the values that suit that model; a flag given on the command line wins over both.`;

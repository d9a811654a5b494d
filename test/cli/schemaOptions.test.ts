// The CLI's settings options are made from the schemas (cli/schemaOptions.ts): every setting has a
// flag with the schema's choices, bounds and default; a bad value is refused with a message naming
// the flag and what the schema allows; the flags users' scripts already use still parse; help says
// that a base model's singlora-defaults.json replaces the defaults.
import { Command, CommanderError } from 'commander';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  generateSettingsSchema,
  LIMITS,
  MODEL_DEFAULTS_FILE,
  trainSettingsSchema,
} from '../../src-main/api/schemas.ts';
import { SAMPLING_OPTIONS } from '../../src-main/cli/generate.ts';
import { fieldKind, rangeText, type SchemaOptions, schemaOptions } from '../../src-main/cli/schemaOptions.ts';
import { TRAIN_OPTIONS } from '../../src-main/cli/train.ts';
import { runCli } from './run.ts';

/** Parses `args` with only `options`' flags; a refusal comes back as commander's message. */
function parseFlags(options: SchemaOptions, args: string[]): { opts: Record<string, unknown>; error?: string } {
  const cmd = options.addTo(
    new Command('t').exitOverride().configureOutput({ writeErr: () => {}, writeOut: () => {} }),
  );
  try {
    cmd.parse(args, { from: 'user' });
  } catch (err) {
    if (!(err instanceof CommanderError)) throw err;
    return { opts: {}, error: err.message };
  }
  return { opts: cmd.opts() };
}

const SCHEMAS = [
  ['train', trainSettingsSchema, TRAIN_OPTIONS],
  ['generate', generateSettingsSchema, SAMPLING_OPTIONS],
] as const;

describe.each(SCHEMAS)('%s: one option per setting, read from the schema', (_name, schema, options) => {
  const fields = Object.keys(schema.shape);

  it('every setting has a flag, and no two share one', () => {
    expect(options.options).toHaveLength(fields.length);
    const flags = fields.map((f) => options.flagOf(f));
    expect(flags.every((f) => /^--[a-z][a-z0-9-]*$/.test(f))).toBe(true);
    expect(new Set(flags).size).toBe(flags.length);
  });

  it("each option's choices and default are the schema's", () => {
    for (const f of fields) {
      const o = options.option(f);
      const k = fieldKind(f, schema.shape[f as keyof typeof schema.shape] as z.ZodType);
      expect(o.argChoices, f).toEqual(k.choices);
      const d = (schema.shape[f as keyof typeof schema.shape] as z.ZodType).safeParse(undefined);
      const schemaDefault = d.success ? d.data : undefined;
      if (o.defaultValue !== undefined) expect(o.defaultValue, f).toEqual(schemaDefault);
      else if (![undefined, null, false].includes(schemaDefault as never))
        expect(o.description, f).toMatch(/default: /); // left to the model (width, height): the help says so
      expect(o.description, f).toContain(k.description);
    }
  });

  it('a number above its bound or off its choices is refused, naming the flag and what is allowed', () => {
    for (const f of fields) {
      const k = fieldKind(f, schema.shape[f as keyof typeof schema.shape] as z.ZodType);
      const flag = options.flagOf(f);
      if (k.type === 'integer' || k.type === 'number') {
        const { error } = parseFlags(options, [flag, String(k.max * 2 + 1)]);
        expect(error, f).toContain(`option '${options.option(f).flags}' argument`);
        expect(error, f).toContain(`expected ${rangeText(k)}`);
      } else if (k.type === 'enum') {
        const { error } = parseFlags(options, [flag, 'not-a-choice']);
        expect(error, f).toContain(`Allowed choices are ${k.choices!.join(', ')}`);
      }
    }
  });

  it('with no flags, the settings are the schema defaults (width and height: left to the model)', () => {
    const given = fields.includes('prompt') ? ['--prompt', 'x'] : [];
    const settings = options.settingsOf(parseFlags(options, given).opts);
    const full = schema.parse(settings) as Record<string, unknown>;
    expect(full).toEqual(schema.parse(fields.includes('prompt') ? { prompt: 'x' } : {}));
  });
});

describe('train: the flags users already use', () => {
  // The spellings of scripts written before the options came from the schema: each still parses.
  const LEGACY: Array<[string, string | null, string, unknown]> = [
    ['--method', 'lora', 'method', 'lora'],
    ['--steps', '10', 'steps', 10],
    ['--rank', '4', 'rank', 4],
    ['--alpha', '2', 'alpha', 2],
    ['--ramp', '5', 'rampSteps', 5],
    ['--init-std', '0.02', 'initStd', 0.02],
    ['--lr', '0.001', 'learningRate', 0.001],
    ['--lr-schedule', 'cosine', 'lrSchedule', 'cosine'],
    ['--warmup', '3', 'warmupSteps', 3],
    ['--resolution', '256', 'resolution', 256],
    ['--batch', '2', 'batchSize', 2],
    ['--grad-accum', '2', 'gradientAccumulation', 2],
    ['--max-grad-norm', '0.5', 'maxGradNorm', 0.5],
    ['--noise-offset', '0.1', 'noiseOffset', 0.1],
    ['--min-snr-gamma', '5', 'minSnrGamma', 5],
    ['--token', 'zwx', 'triggerToken', 'zwx'],
    ['--class', 'dog', 'classWord', 'dog'],
    ['--instance-prompt', 'a zwx dog', 'instancePrompt', 'a zwx dog'],
    ['--crop', 'none', 'crop', 'none'],
    ['--flip', null, 'flip', true],
    ['--prior-preservation', null, 'priorPreservation', true],
    ['--class-images', 'cls', 'classImagesDir', 'cls'],
    ['--class-prompt', 'a dog', 'classPrompt', 'a dog'],
    ['--num-class-images', '7', 'numClassImages', 7],
    ['--prior-loss-weight', '0.5', 'priorLossWeight', 0.5],
    ['--checkpoint-every', '5', 'checkpointEvery', 5],
    ['--sample-every', '0', 'sampleEvery', 0],
    ['--sample-prompt', 'p', 'samplePrompts', ['p']],
    ['--seed', '7', 'seed', 7],
    ['--gradient-checkpointing', null, 'gradientCheckpointing', true],
    ['--target', 'to_q', 'targets', ['to_q']],
  ];

  it.each(LEGACY)('%s %s sets %s', (flag, value, field, expected) => {
    const { opts, error } = parseFlags(TRAIN_OPTIONS, value === null ? [flag] : [flag, value]);
    expect(error).toBeUndefined();
    expect(TRAIN_OPTIONS.settingsOf(opts)[field]).toEqual(expected);
  });

  it('repeatable flags collect every value', () => {
    const { opts } = parseFlags(TRAIN_OPTIONS, ['--target', 'to_q', '--target', 'to_v']);
    expect(TRAIN_OPTIONS.settingsOf(opts).targets).toEqual(['to_q', 'to_v']);
  });

  it('what only the whole schema checks is refused naming the flag', () => {
    const long = 'x'.repeat(LIMITS.wordChars + 1);
    expect(() => TRAIN_OPTIONS.settingsOf(parseFlags(TRAIN_OPTIONS, ['--token', long]).opts)).toThrow(/^--token: /);
    expect(parseFlags(TRAIN_OPTIONS, ['--resolution', '100']).error).toContain(
      `expected a multiple of ${LIMITS.resolution.multiple} from ${LIMITS.resolution.min} to ${LIMITS.resolution.max}`,
    );
  });
});

describe('a setting added to a schema', () => {
  it('gets a kebab-case flag with its bounds, default and help', () => {
    const schema = z.object({ fooBar: z.number().int().min(1).max(3).default(2).describe('the foo') }).strict();
    const options = schemaOptions(schema);
    const o = options.option('fooBar');
    expect(o.flags).toBe('--foo-bar <n>');
    expect(o.defaultValue).toBe(2);
    expect(o.description).toBe('the foo; an integer from 1 to 3');
    expect(parseFlags(options, ['--foo-bar', '4']).error).toMatch(/expected an integer from 1 to 3/);
  });

  it('of a type the CLI cannot spell is refused when the options are made, naming it', () => {
    const schema = z.object({ pairs: z.record(z.string(), z.number()) });
    expect(() => schemaOptions(schema)).toThrow(/'pairs'/);
    expect(() => schemaOptions(trainSettingsSchema, { nope: { flag: '--nope' } } as never)).toThrow(/'nope'/);
  });
});

describe('help', () => {
  it.each(['train', 'generate'])(
    `%s --help lists every setting and says that ${MODEL_DEFAULTS_FILE} overrides the defaults`,
    async (command) => {
      const r = await runCli([command, '--help']);
      expect(r.code).toBe(0);
      const options = command === 'train' ? TRAIN_OPTIONS : SAMPLING_OPTIONS;
      for (const o of options.options) expect(r.stdout).toContain(o.flags);
      expect(r.stdout.replace(/\s+/g, ' ')).toContain(
        `A base model's ${MODEL_DEFAULTS_FILE} (in its folder) replaces them at run time`,
      );
    },
  );
});

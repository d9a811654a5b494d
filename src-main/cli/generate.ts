/** `singlora generate`: text-to-image with optional adapters, PNGs with A1111 parameters + JSON sidecars. */
import { type Command, InvalidArgumentError } from 'commander';
import { existsSync, statSync } from 'node:fs';
import { type GenerateSettingsInput, generateSettingsSchema, LIMITS, type ModelDefaults } from '../api/schemas.ts';
import { readModelDefaults, withModelDefaults } from '../engine/io/modelDefaults.ts';
import type { GenerateHooks } from '../engine/pipeline/generate.ts';
import {
  action,
  emitJsonLine,
  printResult,
  progressBar,
  requireExists,
  requireFolder,
  requireNotFile,
  startBackend,
  UsageError,
  withCommon,
  type GlobalOptions,
  inferenceOptions,
  withInference,
  type InferenceCliOptions,
} from './common.ts';
import { SAMPLING_FLAGS } from './flags.ts';
import { MODEL_DEFAULTS_HELP, schemaOptions } from './schemaOptions.ts';

interface GenerateCliOptions extends GlobalOptions, InferenceCliOptions {
  base: string;
  configDir?: string;
  adapter?: Array<{ path: string; strength: number }>;
  strict?: boolean;
  allowPartial?: boolean;
  out: string;
  /** The sampling settings, under the attribute names of SAMPLING_OPTIONS. */
  [setting: string]: unknown;
}

/** The sampling settings' options (exported for the test that holds them to the schema). */
export const SAMPLING_OPTIONS = schemaOptions(generateSettingsSchema, SAMPLING_FLAGS);

/**
 * `file[:strength]` -> {path, strength}. A suffix after the last ':' is a strength when it is a
 * number; a Windows drive letter (`C:\...`) is not a strength; a file whose name itself has a
 * ':' is taken whole when it exists.
 */
export function parseAdapterArg(v: string): { path: string; strength: number } {
  const i = v.lastIndexOf(':');
  const suffix = i > 0 ? v.slice(i + 1) : '';
  const driveLetter = i === 1 && /^[\\/]/.test(suffix);
  if (i > 0 && !driveLetter && !/[\\/]/.test(suffix) && !existsSync(v)) {
    const strength = suffix.trim() === '' ? NaN : Number(suffix);
    if (!Number.isFinite(strength))
      throw new Error(`'${suffix}' is not a strength: expected file[:number], e.g. rex.safetensors:0.8`);
    return { path: v.slice(0, i), strength };
  }
  return { path: v, strength: 1 };
}

/** Adapter strengths the CLI accepts: what the API accepts for a generation (api/schemas.ts LIMITS). */
const STRENGTH_RANGE = { min: -LIMITS.adapterStrength, max: LIMITS.adapterStrength } as const;

/** commander parser for the repeatable --adapter: the strength is a number within STRENGTH_RANGE and the file exists. */
function adapterOption(v: string, prev: Array<{ path: string; strength: number }> = []) {
  let a: { path: string; strength: number };
  try {
    a = parseAdapterArg(v);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
  if (a.strength < STRENGTH_RANGE.min || a.strength > STRENGTH_RANGE.max)
    throw new InvalidArgumentError(
      `strength ${a.strength} is out of range: expected a number from ${STRENGTH_RANGE.min} to ${STRENGTH_RANGE.max} (file[:strength], e.g. rex.safetensors:0.8)`,
    );
  if (!existsSync(a.path)) throw new InvalidArgumentError(`the adapter file ${a.path} does not exist`);
  if (statSync(a.path).isDirectory())
    throw new InvalidArgumentError(`${a.path} is a folder; expected an adapter .safetensors file`);
  return [...prev, a];
}

export function register(program: Command): void {
  const cmd = program
    .command('generate')
    .description(
      'generate images from a prompt, optionally with adapters (A1111 prompt syntax: long prompts, (word:1.2), [word], BREAK)',
    )
    .requiredOption('--base <model>', 'base model: a diffusers folder or a single-file .safetensors')
    .option(
      '--config-dir <dir>',
      'for a single-file checkpoint: a diffusers SD 1.5 folder to take configs, tokenizer and scheduler from',
    );
  SAMPLING_OPTIONS.addTo(cmd)
    .option(
      '--adapter <file[:strength]>',
      `adapter file (native, kohya, diffusers, PEFT or ComfyUI LoRA) and strength from ${STRENGTH_RANGE.min} to ${STRENGTH_RANGE.max} (default 1); repeatable`,
      adapterOption,
    )
    .option('--strict', 'refuse an adapter made for another base model (default: warn)')
    .option(
      '--allow-partial',
      'apply an adapter file even when some of its tensors cannot be used (they are listed); default: such a file is an error',
    )
    .requiredOption('--out <dir>', 'output folder')
    .addHelpText('after', MODEL_DEFAULTS_HELP);
  withInference(withCommon(cmd)).action(action(runGenerateCommand));
}

async function runGenerateCommand(o: GenerateCliOptions, cmd: Command): Promise<void> {
  requireExists(o.base, '--base');
  if (o.configDir) requireFolder(o.configDir, '--config-dir');
  requireNotFile(o.out, '--out');
  const settings = samplingFromModelDefaults(o, cmd);
  const { promptWarnings } = await import('../engine/pipeline/prompts.ts');
  const { generateImages } = await import('../engine/pipeline/generate.ts');
  for (const [which, text] of [
    ['--prompt', settings.prompt],
    ['--negative', settings.negativePrompt ?? ''],
  ] as const) {
    for (const w of promptWarnings(text)) {
      if (o.json) emitJsonLine(o, { event: 'warning', option: which, message: w });
      else process.stderr.write(`warning: ${which}: ${w}\n`);
    }
  }
  await startBackend(o);
  const progress: { bar: ReturnType<typeof progressBar> | null } = { bar: null };
  try {
    const files = await generateImages(
      {
        base: o.base,
        baseOptions: o.configDir ? { configDir: o.configDir } : undefined,
        settings,
        adapters: (o.adapter ?? []).map((a) => ({ ...a, allowPartial: o.allowPartial })),
        outDir: o.out,
        strict: o.strict,
        inference: inferenceOptions(o),
      },
      await generateHooks(o, progress),
    );
    progress.bar?.stop();
    printResult(
      o,
      { event: 'result', files: files.map((f) => f.file), seeds: files.map((f) => f.sidecar.settings.seed) },
      () =>
        files
          .map(
            (f) =>
              `${f.file}  (seed ${f.sidecar.settings.seed}, ${f.sidecar.settings.width}x${f.sidecar.settings.height})`,
          )
          .join('\n'),
    );
  } finally {
    progress.bar?.stop();
  }
}

/** What `generate` prints as the engine works: adapter checks, a progress bar (or JSON lines), each image. */
async function generateHooks(
  o: GenerateCliOptions,
  progress: { bar: ReturnType<typeof progressBar> | null },
): Promise<GenerateHooks> {
  const { formatAdapterCheck } = await import('../engine/adapters/import.ts');
  return {
    onAdapterChecks: (checks) => {
      for (const c of checks) {
        if (o.json)
          emitJsonLine(o, {
            event: 'adapter',
            summary: c.summary,
            file: c.file,
            appliedTensors: c.appliedTensors,
            totalTensors: c.totalTensors,
            baseMismatch: c.baseMismatch,
            unapplied: c.unapplied,
          });
        else for (const l of formatAdapterCheck(c)) process.stderr.write(`${l}\n`);
      }
    },
    onStep: (i) => {
      emitJsonLine(o, { event: 'step', image: i.image, images: i.images, step: i.step, steps: i.steps });
      progress.bar ??= progressBar(o, 'step', i.images * i.steps);
      progress.bar.update(i.image * i.steps + i.step);
    },
    onImage: (img) =>
      emitJsonLine(o, {
        event: 'image',
        file: img.file,
        seed: img.sidecar.settings.seed,
        width: img.sidecar.settings.width,
        height: img.sidecar.settings.height,
      }),
  };
}

/**
 * The sampling settings: the flags on top of the base model's singlora-defaults.json `sampling`
 * (engine/io/modelDefaults.ts); a flag given on the command line wins.
 */
function samplingFromModelDefaults(o: GenerateCliOptions, cmd: Command): GenerateSettingsInput {
  const flags = SAMPLING_OPTIONS.settingsOf(o) as GenerateSettingsInput;
  let defaults: ModelDefaults | null;
  try {
    defaults = readModelDefaults(o.base);
  } catch (err) {
    throw new UsageError(`--base: ${(err as Error).message}`);
  }
  const given = (field: string) => SAMPLING_OPTIONS.given(cmd, field);
  return withModelDefaults(flags, defaults?.sampling as Partial<typeof flags> | undefined, given).settings;
}

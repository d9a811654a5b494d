/** `singlora generate`: text-to-image with optional adapters, PNGs with A1111 parameters + JSON sidecars. */
import { type Command, InvalidArgumentError, Option } from 'commander';
import { existsSync, statSync } from 'node:fs';
import { type GenerateSettingsInput, type ModelDefaults, NEGATIVE_PADDING, SCHEDULERS } from '../api/schemas.ts';
import { readModelDefaults, withModelDefaults } from '../engine/io/modelDefaults.ts';
import {
  action,
  emitJsonLine,
  parse,
  printResult,
  progressBar,
  requireExists,
  requireFolder,
  requireNotFile,
  SEED_MAX,
  startBackend,
  UsageError,
  withCommon,
  type GlobalOptions,
  inferenceOptions,
  withInference,
  type InferenceCliOptions,
} from './common.ts';

interface GenerateCliOptions extends GlobalOptions, InferenceCliOptions {
  base: string;
  configDir?: string;
  prompt: string;
  negative?: string;
  steps: number;
  scheduler: (typeof SCHEDULERS)[number];
  guidance: number;
  seed: number;
  width?: number;
  height?: number;
  count: number;
  clipSkip?: number;
  negativePadding: (typeof NEGATIVE_PADDING)[number];
  adapter?: Array<{ path: string; strength: number }>;
  strict?: boolean;
  allowPartial?: boolean;
  out: string;
}

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

/**
 * Adapter strengths the CLI accepts: what the API accepts for a generation (api/contract.ts,
 * generation.start: -4 to 4). Beyond them an image is noise, not a stronger subject.
 */
export const STRENGTH_RANGE = { min: -4, max: 4 } as const;

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

const multipleOf8 = (v: string) => {
  const n = parse.int(8, 2048)(v);
  if (n % 8 !== 0) throw new InvalidArgumentError('expected a multiple of 8 from 8 to 2048');
  return n;
};

export function register(program: Command): void {
  withInference(
    withCommon(
      program
        .command('generate')
        .description(
          'generate images from a prompt, optionally with adapters (A1111 prompt syntax: long prompts, (word:1.2), [word], BREAK)',
        )
        .requiredOption('--base <model>', 'base model: a diffusers folder or a single-file .safetensors')
        .option(
          '--config-dir <dir>',
          'for a single-file checkpoint: a diffusers SD 1.5 folder to take configs, tokenizer and scheduler from',
        )
        .requiredOption(
          '--prompt <text>',
          'prompt (any length: 75-token chunks as in A1111; (word:1.2) and [word] weights)',
        )
        .option('--negative <text>', 'negative prompt', '')
        .option('--steps <n>', 'sampling steps', parse.int(1, 200), 25)
        .addOption(new Option('--scheduler <name>', 'sampler').choices([...SCHEDULERS]).default('dpmpp-2m-karras'))
        .option('--guidance <g>', 'classifier-free guidance scale', parse.number(0, 50), 7.5)
        .option(
          '--seed <n>',
          `seed, an integer from 0 to ${SEED_MAX} (2^53 - 1), or -1 for a random one; image i uses seed + i`,
          parse.seed(-1),
          -1,
        )
        .option('--width <px>', 'width, a multiple of 8 (default: the model native size, 512 for SD 1.5)', multipleOf8)
        .option('--height <px>', 'height, a multiple of 8 (default: the model native size)', multipleOf8)
        .option('--count <n>', 'number of images', parse.int(1, 100), 1)
        .option('--clip-skip <n>', "diffusers clip_skip (A1111's 'Clip skip' minus 1)", parse.int(0, 11))
        .addOption(
          new Option(
            '--negative-padding <mode>',
            "prompt and negative prompt of different 75-token chunk counts: empty-chunks pads the shorter with empty-prompt chunks, one UNet batch (A1111's 'Pad prompt/negative prompt' option); none runs two UNet passes (A1111's default)",
          )
            .choices([...NEGATIVE_PADDING])
            .default('empty-chunks'),
        )
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
        .requiredOption('--out <dir>', 'output folder'),
    ),
  ).action(
    action(async (o: GenerateCliOptions, cmd: Command) => {
      requireExists(o.base, '--base');
      if (o.configDir) requireFolder(o.configDir, '--config-dir');
      requireNotFile(o.out, '--out');
      const { promptWarnings } = await import('../engine/pipeline/prompts.ts');
      const { formatAdapterCheck } = await import('../engine/adapters/import.ts');
      const { generateImages } = await import('../engine/pipeline/generate.ts');
      for (const [which, text] of [
        ['--prompt', o.prompt],
        ['--negative', o.negative ?? ''],
      ] as const) {
        for (const w of promptWarnings(text)) {
          if (o.json) emitJsonLine(o, { event: 'warning', option: which, message: w });
          else process.stderr.write(`warning: ${which}: ${w}\n`);
        }
      }
      await startBackend(o);
      let bar: ReturnType<typeof progressBar> | null = null;
      try {
        const files = await generateImages(
          {
            base: o.base,
            baseOptions: o.configDir ? { configDir: o.configDir } : undefined,
            settings: { ...samplingFromModelDefaults(o, cmd), negativePadding: o.negativePadding },
            adapters: (o.adapter ?? []).map((a) => ({ ...a, allowPartial: o.allowPartial })),
            outDir: o.out,
            strict: o.strict,
            inference: inferenceOptions(o),
          },
          {
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
              bar ??= progressBar(o, 'step', i.images * i.steps);
              bar.update(i.image * i.steps + i.step);
            },
            onImage: (img) =>
              emitJsonLine(o, {
                event: 'image',
                file: img.file,
                seed: img.sidecar.settings.seed,
                width: img.sidecar.settings.width,
                height: img.sidecar.settings.height,
              }),
          },
        );
        (bar as ReturnType<typeof progressBar> | null)?.stop();
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
        (bar as ReturnType<typeof progressBar> | null)?.stop();
      }
    }),
  );
}

/** Each sampling setting's flag (the commander attribute), for the model defaults. */
const FLAG_OF: Record<string, string> = {
  negativePrompt: 'negative',
  steps: 'steps',
  scheduler: 'scheduler',
  guidanceScale: 'guidance',
  seed: 'seed',
  width: 'width',
  height: 'height',
  count: 'count',
  clipSkip: 'clipSkip',
};

/**
 * The sampling settings: the flags on top of the base model's singlora-defaults.json `sampling`
 * (engine/io/modelDefaults.ts); a flag given on the command line wins.
 */
function samplingFromModelDefaults(o: GenerateCliOptions, cmd: Command): GenerateSettingsInput {
  const flags = {
    prompt: o.prompt,
    negativePrompt: o.negative ?? '',
    steps: o.steps,
    scheduler: o.scheduler,
    guidanceScale: o.guidance,
    seed: o.seed,
    width: o.width,
    height: o.height,
    count: o.count,
    clipSkip: o.clipSkip ?? 0,
  };
  let defaults: ModelDefaults | null;
  try {
    defaults = readModelDefaults(o.base);
  } catch (err) {
    throw new UsageError(`--base: ${(err as Error).message}`);
  }
  const given = (field: string) => FLAG_OF[field] !== undefined && cmd.getOptionValueSource(FLAG_OF[field]) === 'cli';
  return withModelDefaults(flags, defaults?.sampling as Partial<typeof flags> | undefined, given).settings;
}

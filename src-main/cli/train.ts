/**
 * `singlora train`: DreamBooth training of a SingLoRA (or LoRA) adapter, with a progress bar on
 * a terminal and one JSON object per event with --json. The run folder's run.json is what the
 * app reads too.
 */
import { type Command, Option } from 'commander';
import { existsSync, readdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import {
  type ModelDefaults,
  trainSettingsSchema,
  type RunManifest,
  type TrainEvent,
  type TrainSettingsInput,
} from '../api/schemas.ts';
import { modelDefaultsPath, readModelDefaults, withModelDefaults } from '../engine/io/modelDefaults.ts';
import { readRunManifest, RUN_MANIFEST } from '../engine/train/runFiles.ts';
import { listImageFiles } from './eval.ts';
import {
  action,
  CANCELLED_EXIT_CODE,
  type CancelReason,
  onCancel,
  reportError,
  requireUsablePhotos,
  SEED_MAX,
  emitJsonLine,
  parse,
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

interface TrainCliOptions extends GlobalOptions, InferenceCliOptions {
  base?: string;
  configDir?: string;
  images?: string;
  out: string;
  token?: string;
  class?: string;
  method?: 'singlora' | 'lora';
  rank?: number;
  alpha?: number;
  ramp?: number;
  initStd?: number;
  lr?: number;
  lrSchedule?: string;
  warmup?: number;
  steps?: number;
  resolution?: number;
  batch?: number;
  gradAccum?: number;
  maxGradNorm?: number;
  noiseOffset?: number;
  minSnrGamma?: number;
  crop?: string;
  flip?: boolean;
  instancePrompt?: string;
  priorPreservation?: boolean;
  classImages?: string;
  classPrompt?: string;
  numClassImages?: number;
  priorLossWeight?: number;
  checkpointEvery?: number;
  sampleEvery?: number;
  samplePrompt?: string[];
  seed?: number;
  gradientCheckpointing?: boolean;
  target?: string[];
  resume?: boolean;
}

/** The command-line flag of each training setting, for messages. */
const OPTION_OF: Record<string, string> = {
  method: '--method',
  steps: '--steps',
  rank: '--rank',
  alpha: '--alpha',
  rampSteps: '--ramp',
  initStd: '--init-std',
  learningRate: '--lr',
  lrSchedule: '--lr-schedule',
  warmupSteps: '--warmup',
  resolution: '--resolution',
  batchSize: '--batch',
  gradientAccumulation: '--grad-accum',
  maxGradNorm: '--max-grad-norm',
  noiseOffset: '--noise-offset',
  minSnrGamma: '--min-snr-gamma',
  triggerToken: '--token',
  classWord: '--class',
  instancePrompt: '--instance-prompt',
  crop: '--crop',
  flip: '--flip',
  priorPreservation: '--prior-preservation',
  classImagesDir: '--class-images',
  classPrompt: '--class-prompt',
  numClassImages: '--num-class-images',
  priorLossWeight: '--prior-loss-weight',
  checkpointEvery: '--checkpoint-every',
  sampleEvery: '--sample-every',
  samplePrompts: '--sample-prompt',
  seed: '--seed',
  gradientCheckpointing: '--gradient-checkpointing',
  targets: '--target',
};

export function settingsFromOptions(o: TrainCliOptions): TrainSettingsInput {
  const s: Record<string, unknown> = {
    method: o.method,
    steps: o.steps,
    rank: o.rank,
    alpha: o.alpha,
    rampSteps: o.ramp,
    initStd: o.initStd,
    learningRate: o.lr,
    lrSchedule: o.lrSchedule,
    warmupSteps: o.warmup,
    resolution: o.resolution,
    batchSize: o.batch,
    gradientAccumulation: o.gradAccum,
    maxGradNorm: o.maxGradNorm,
    noiseOffset: o.noiseOffset,
    minSnrGamma: o.minSnrGamma,
    triggerToken: o.token,
    classWord: o.class,
    instancePrompt: o.instancePrompt,
    crop: o.crop,
    flip: o.flip,
    priorPreservation: o.priorPreservation,
    classImagesDir: o.classImages,
    classPrompt: o.classPrompt,
    numClassImages: o.numClassImages,
    priorLossWeight: o.priorLossWeight,
    checkpointEvery: o.checkpointEvery,
    sampleEvery: o.sampleEvery,
    samplePrompts: o.samplePrompt,
    seed: o.seed,
    gradientCheckpointing: o.gradientCheckpointing,
    targets: o.target,
  };
  for (const k of Object.keys(s)) if (s[k] === undefined) delete s[k];
  const r = trainSettingsSchema.safeParse(s);
  if (!r.success)
    throw new UsageError(
      r.error.issues.map((i) => `${OPTION_OF[String(i.path[0])] ?? i.path.join('.')}: ${i.message}`).join('; '),
    );
  return s as TrainSettingsInput;
}

export function register(program: Command): void {
  withInference(
    withCommon(
      program
        .command('train')
        .description(
          'train a SingLoRA (or LoRA) adapter on photos of a subject (DreamBooth); --engine also chooses what trains (onnx: ONNX Runtime on --provider; tfjs: TensorFlow.js)',
        )
        .option(
          '--base <model>',
          'base model: a diffusers folder or a single-file .safetensors (with --resume: the one in run.json)',
        )
        .option(
          '--config-dir <dir>',
          'for a single-file checkpoint: a diffusers SD 1.5 folder to take configs, tokenizer and scheduler from',
        )
        .option(
          '--images <dir>',
          'folder of 3-20 subject photos (JPEG, PNG, WebP, AVIF, TIFF); with --resume: the ones in run.json',
        )
        .requiredOption(
          '--out <run dir>',
          'run folder: run.json, checkpoints/, samples/ (a new folder, or an existing run with --resume)',
        )
        .option('--token <word>', 'trigger token', 'sks')
        .option('--class <word>', 'class word (e.g. dog, person)', 'person')
        .addOption(new Option('--method <m>', 'adapter type').choices(['singlora', 'lora']).default('singlora'))
        .option('--rank <r>', 'rank (1-256)', parse.int(1, 256), 8)
        .option('--alpha <a>', 'alpha (scale alpha/r)', parse.number(0, 1024, { above: true }), 8)
        .option('--ramp <T>', 'SingLoRA ramp length in steps, u(t) = min(t/T, 1)', parse.int(0), 100)
        .option('--init-std <s>', "std of SingLoRA's initial A", parse.number(0, 1, { above: true }))
        .option('--lr <lr>', 'learning rate', parse.number(0, 1, { above: true }), 1e-4)
        .addOption(
          new Option('--lr-schedule <s>', 'learning-rate schedule').choices([
            'constant',
            'constant_with_warmup',
            'cosine',
          ]),
        )
        .option('--warmup <steps>', 'warm-up steps', parse.int(0))
        .option(
          '--steps <n>',
          'optimizer steps (with --resume: the new total, to extend a run)',
          parse.int(1, 100_000),
          800,
        )
        .option(
          '--resolution <px>',
          'training resolution, multiple of 64 (default: the model native size)',
          parse.int(64, 2048),
        )
        .option('--batch <n>', 'batch size', parse.int(1, 64), 1)
        .option('--grad-accum <n>', 'gradient accumulation steps', parse.int(1, 128))
        .option('--max-grad-norm <n>', 'gradient clipping (0: off)', parse.number(0))
        .option('--noise-offset <x>', 'noise offset', parse.number(0, 1))
        .option('--min-snr-gamma <g>', 'min-SNR-gamma loss weighting', parse.number(0, Infinity, { above: true }))
        .addOption(
          new Option('--crop <mode>', 'how photos are cropped to a square').choices(['center', 'attention', 'none']),
        )
        .option('--flip', 'add horizontally flipped copies')
        .option('--instance-prompt <text>', 'caption (default "a photo of <token> <class>")')
        .option('--prior-preservation', 'add the prior-preservation loss on generated class images')
        .option('--class-images <dir>', 'folder of class images (generated there if too few)')
        .option('--class-prompt <text>', 'class prompt (default "a photo of <class>")')
        .option('--num-class-images <n>', 'class images to use', parse.int(1, 10_000), 100)
        .option('--prior-loss-weight <w>', 'lambda of the prior loss', parse.number(0))
        .option('--checkpoint-every <n>', 'steps between checkpoints', parse.int(1), 100)
        .option('--sample-every <n>', 'steps between preview images (0: none)', parse.int(0), 100)
        .option('--sample-prompt <text>', 'preview prompt (repeatable)', parse.collect)
        .option('--seed <n>', `seed, an integer from 0 to ${SEED_MAX} (2^53 - 1)`, parse.seed(0), 42)
        .option('--gradient-checkpointing', 'recompute each UNet block in the backward pass (less memory)')
        .option(
          '--target <pattern>',
          'adapter target pattern (repeatable; default: attn1/attn2 to_q/to_k/to_v/to_out.0)',
          parse.collect,
        )
        .option(
          '--resume',
          'continue the run in --out from its last checkpoint (base, photos and settings come from its run.json; --steps N extends it)',
        ),
    ),
  ).action(
    action(async (o: TrainCliOptions, cmd: Command) => {
      const plan = await planTrain(o, cmd);
      const settings = plan.settings;
      const { train } = await import('../engine/train/trainer.ts');
      const backend = await startBackend(o);
      emitJsonLine(o, { event: 'backend', name: backend.name, device: backend.device ?? null });
      if (!o.json)
        process.stderr.write(
          `backend: ${backend.name}${backend.name === 'wasm' || backend.name === 'cpu' ? ' (no GPU backend: training will be slow; see `singlora doctor`)' : ''}\n`,
        );
      const state: { bar: ReturnType<typeof progressBar> | null } = { bar: null };
      const controller = new AbortController();
      // Ctrl-C, SIGTERM, or a closed stdout (`--json | head -1`): stop after the step and keep a
      // checkpoint, so the run folder is a resumable run, never an empty one.
      const cancel: { by: CancelReason | null } = { by: null };
      const offCancel = onCancel((reason) => {
        cancel.by = reason;
        if (!o.json) process.stderr.write('\nstopping after the current step (a checkpoint is kept)...\n');
        controller.abort('cancel');
      });
      let result: Awaited<ReturnType<typeof train>>;
      try {
        result = await train(
          {
            base: plan.base,
            baseOptions: { ...(o.configDir ? { configDir: o.configDir } : {}), ...inferenceOptions(o) },
            photos: plan.photos,
            runDir: o.out,
            settings,
            resume: o.resume,
            resumeSteps: plan.resumeSteps,
            // --engine chooses the training engine as well as the inference one (default: DEFAULT_TRAIN_ENGINE).
            ...(o.engine ? { engine: o.engine } : {}),
            ...(o.provider ? { provider: o.provider } : {}),
          },
          {
            signal: controller.signal,
            onEvent: (e: TrainEvent) => {
              emitJsonLine(o, e as Record<string, unknown>);
              if (o.json) return;
              if (e.event === 'step') {
                state.bar ??= progressBar(o, 'step', e.steps);
                state.bar.update(e.step, { loss: e.smoothed.toFixed(4), u: e.u.toFixed(2) }, e.its);
              } else if (e.event === 'warning') process.stderr.write(`warning: ${e.message}\n`);
              else if (e.event === 'prepare') process.stderr.write(`${e.stage}${e.detail ? `: ${e.detail}` : ''}\n`);
            },
          },
        );
      } catch (err) {
        state.bar?.stop();
        await removeIfCreated(plan);
        if (!cancel.by) throw err;
        if (cancel.by !== 'EPIPE') reportError(err);
        process.exitCode = CANCELLED_EXIT_CODE[cancel.by];
        return;
      } finally {
        offCancel();
        state.bar?.stop();
      }
      const m = result.manifest;
      if (m.status === 'failed') throw new Error(m.error ?? 'training failed');
      const last = m.checkpoints[m.checkpoints.length - 1];
      const its = m.timing.msPerStep ? 1000 / m.timing.msPerStep : null;
      printResult(
        o,
        {
          event: 'result',
          status: m.status,
          step: m.step,
          runDir: o.out,
          adapter: last ? join(o.out, last.adapter) : null,
          fixedLoss: result.fixedLoss,
          msPerStep: m.timing.msPerStep,
        },
        () =>
          [
            `${m.status}: ${m.step}/${m.settings.steps} steps in ${o.out}`,
            last ? `adapter: ${join(o.out, last.adapter)}` : 'no checkpoint yet',
            result.fixedLoss
              ? `fixed-noise loss: ${result.fixedLoss.start.toFixed(4)} -> ${result.fixedLoss.end.toFixed(4)}`
              : '',
            its ? `average speed: ${its.toFixed(2)} steps/s over this session (previews and checkpoints included)` : '',
          ]
            .filter(Boolean)
            .join('\n'),
      );
      // Cancelled: the result above says where the run stopped; the status says it was cancelled.
      if (cancel.by) process.exitCode = CANCELLED_EXIT_CODE[cancel.by];
    }),
  );
}

interface TrainPlan {
  base: string;
  photos: string | readonly string[];
  settings: TrainSettingsInput;
  resumeSteps?: number;
  /** The run folder did not exist before this command: remove it if training fails before a checkpoint. */
  createdOut: boolean;
  out: string;
}

/**
 * Checks the whole command line against the disk before anything is written: a new run needs
 * --base and --images and a new (or empty) --out; --resume reads base, photos and settings from
 * the run's run.json, and --steps N (N above the steps done) extends it.
 */
export async function planTrain(o: TrainCliOptions, cmd: Command): Promise<TrainPlan> {
  const out = resolve(o.out);
  requireNotFile(out, '--out');
  if (o.configDir) requireFolder(o.configDir, '--config-dir');
  const settings = settingsFromOptions(o);
  if (o.resume) {
    if (!existsSync(join(out, RUN_MANIFEST)))
      throw new UsageError(
        `--resume: ${o.out} has no ${RUN_MANIFEST}; it is not a run folder (start a new run without --resume)`,
      );
    let manifest: RunManifest;
    try {
      manifest = await readRunManifest(out);
    } catch (err) {
      throw new UsageError(`--resume: ${(err as Error).message}`);
    }
    const base = o.base ?? manifest.baseModel.path;
    requireExists(base, o.base ? '--base' : `--resume (the base model recorded in ${RUN_MANIFEST})`);
    let photos: string | readonly string[];
    if (o.images) {
      requireFolder(o.images, '--images');
      await requireUsablePhotos(o.images, '--images', o.resolution);
      photos = o.images;
    } else {
      photos = manifest.images.used;
      const missing = photos.filter((f) => !existsSync(f));
      if (!photos.length) throw new UsageError(`--resume: ${RUN_MANIFEST} lists no photos; pass --images <dir>`);
      if (missing.length)
        throw new UsageError(
          `--resume: ${missing.length} of the run's photos are gone (${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ', ...' : ''}); pass --images <dir>`,
        );
    }
    const stepsGiven = cmd.getOptionValueSource('steps') === 'cli';
    if (stepsGiven && o.steps! <= manifest.step)
      throw new UsageError(
        `--steps: the run already has ${manifest.step} steps; to extend it, ask for more (e.g. --steps ${manifest.step + 100})`,
      );
    if (!stepsGiven && manifest.status === 'completed')
      throw new UsageError(
        `--resume: the run in ${o.out} already completed ${manifest.step} steps; add --steps N (N > ${manifest.step}) to train it further`,
      );
    return { base, photos, settings, resumeSteps: stepsGiven ? o.steps : undefined, createdOut: false, out };
  }
  if (!o.base)
    throw new UsageError("required option '--base <model>' not specified (or --resume to continue the run in --out)");
  requireExists(o.base, '--base');
  if (!o.images)
    throw new UsageError("required option '--images <dir>' not specified (or --resume to continue the run in --out)");
  requireFolder(o.images, '--images');
  try {
    listImageFiles(o.images);
  } catch (err) {
    throw new UsageError(`--images: ${(err as Error).message}`);
  }
  await requireUsablePhotos(o.images, '--images', o.resolution);
  const exists = existsSync(out);
  if (exists && readdirSync(out).length) {
    throw new UsageError(
      existsSync(join(out, RUN_MANIFEST))
        ? `--out: ${o.out} already holds a run; add --resume to continue it (--resume --steps N to extend it), or choose a new --out folder`
        : `--out: ${o.out} is not empty; choose a new or empty folder for the run`,
    );
  }
  return {
    base: o.base,
    photos: o.images,
    settings: startFromModelDefaults(o, cmd, settings),
    createdOut: !exists,
    out,
  };
}

/**
 * The settings on top of the base model's singlora-defaults.json (engine/io/modelDefaults.ts):
 * a flag given on the command line wins; every other field the file names takes its value.
 */
function startFromModelDefaults(o: TrainCliOptions, cmd: Command, settings: TrainSettingsInput): TrainSettingsInput {
  let defaults: ModelDefaults | null;
  try {
    defaults = readModelDefaults(o.base!);
  } catch (err) {
    throw new UsageError(`--base: ${(err as Error).message}`);
  }
  const given = (field: string) => {
    const flag = OPTION_OF[field];
    if (!flag) return false;
    const attr = flag.slice(2).replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());
    return cmd.getOptionValueSource(attr) === 'cli';
  };
  const r = withModelDefaults(settings as Record<string, unknown>, defaults?.training, given);
  if (r.fromModel.length && !o.json)
    process.stderr.write(
      `settings from ${modelDefaultsPath(o.base!)}: ${r.fromModel.map((k) => `${OPTION_OF[k] ?? k} ${JSON.stringify(r.settings[k])}`).join(', ')} (flags win)\n`,
    );
  return r.settings as TrainSettingsInput;
}

/** Removes a run folder this command created, when training failed before writing a checkpoint. */
async function removeIfCreated(plan: TrainPlan): Promise<void> {
  if (!plan.createdOut) return;
  const hasCheckpoint =
    existsSync(join(plan.out, 'checkpoints')) &&
    readdirSync(join(plan.out, 'checkpoints')).some((n) => n.startsWith('step-'));
  if (!hasCheckpoint) await rm(plan.out, { recursive: true, force: true });
}

/**
 * `singlora train`: DreamBooth training of a SingLoRA (or LoRA) adapter, with a progress bar on
 * a terminal and one JSON object per event with --json. The run folder's run.json is what the
 * app reads too.
 */
import type { Command } from 'commander';
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
import { defaultModelsDir } from '../engine/paths.ts';
import { readRunManifest, RUN_MANIFEST, runBasePath, runPhotoPaths } from '../engine/train/runFiles.ts';
import { listImageFiles } from './eval.ts';
import {
  action,
  CANCELLED_EXIT_CODE,
  type CancelReason,
  onCancel,
  reportError,
  requireUsablePhotos,
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
import { TRAIN_FLAGS } from './flags.ts';
import { MODEL_DEFAULTS_HELP, schemaOptions } from './schemaOptions.ts';

interface TrainCliOptions extends GlobalOptions, InferenceCliOptions {
  base?: string;
  configDir?: string;
  images?: string;
  out: string;
  resume?: boolean;
  /** The training settings, under the attribute names of TRAIN_OPTIONS. */
  [setting: string]: unknown;
}

/** The training settings' options (exported for the test that holds them to the schema). */
export const TRAIN_OPTIONS = schemaOptions(trainSettingsSchema, TRAIN_FLAGS);

/** The training settings the command line gives (defaults included), checked against the schema. */
export function settingsFromOptions(o: TrainCliOptions): TrainSettingsInput {
  return TRAIN_OPTIONS.settingsOf(o) as TrainSettingsInput;
}

export function register(program: Command): void {
  const cmd = program
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
    );
  TRAIN_OPTIONS.addTo(cmd)
    .option(
      '--resume',
      'continue the run in --out from its last checkpoint (base, photos and settings come from its run.json; --steps N extends it)',
    )
    .addHelpText('after', MODEL_DEFAULTS_HELP);
  withInference(withCommon(cmd)).action(action(runTrainCommand));
}

async function runTrainCommand(o: TrainCliOptions, cmd: Command): Promise<void> {
  const plan = await planTrain(o, cmd);
  const backend = await startBackend(o);
  emitJsonLine(o, { event: 'backend', name: backend.name, device: backend.device ?? null });
  if (!o.json)
    process.stderr.write(
      `backend: ${backend.name}${backend.name === 'wasm' || backend.name === 'cpu' ? ' (no GPU backend: training will be slow; see `singlora doctor`)' : ''}\n`,
    );
  const { result, cancelledBy } = await trainWithProgress(o, plan);
  if (!result) return;
  printTrainResult(o, result);
  // Cancelled: the result above says where the run stopped; the status says it was cancelled.
  if (cancelledBy) process.exitCode = CANCELLED_EXIT_CODE[cancelledBy];
}

type TrainResult = Awaited<ReturnType<typeof import('../engine/train/trainer.ts').train>>;

/**
 * Trains with a progress bar (or JSON lines). Ctrl-C, SIGTERM, or a closed stdout (`--json | head -1`):
 * stop after the step and keep a checkpoint, so the run folder is a resumable run, never an empty one.
 * `result` is null when training was cancelled before it returned (the exit status is then set).
 */
async function trainWithProgress(
  o: TrainCliOptions,
  plan: TrainPlan,
): Promise<{ result: TrainResult | null; cancelledBy: CancelReason | null }> {
  const { train } = await import('../engine/train/trainer.ts');
  let bar: ReturnType<typeof progressBar> | null = null;
  const controller = new AbortController();
  let cancelledBy: CancelReason | null = null;
  const offCancel = onCancel((reason) => {
    cancelledBy = reason;
    if (!o.json) process.stderr.write('\nstopping after the current step (a checkpoint is kept)...\n');
    controller.abort('cancel');
  });
  const onEvent = (e: TrainEvent) => {
    emitJsonLine(o, e as Record<string, unknown>);
    if (o.json) return;
    if (e.event === 'step') {
      bar ??= progressBar(o, 'step', e.steps);
      bar.update(e.step, { loss: e.smoothed.toFixed(4), u: e.u.toFixed(2) }, e.its);
    } else if (e.event === 'warning') process.stderr.write(`warning: ${e.message}\n`);
    else if (e.event === 'prepare') process.stderr.write(`${e.stage}${e.detail ? `: ${e.detail}` : ''}\n`);
  };
  try {
    const result = await train(
      {
        base: plan.base,
        baseOptions: { ...(o.configDir ? { configDir: o.configDir } : {}), ...inferenceOptions(o) },
        photos: plan.photos,
        runDir: o.out,
        settings: plan.settings,
        resume: o.resume,
        resumeSteps: plan.resumeSteps,
        // --engine chooses the training engine as well as the inference one (default: DEFAULT_TRAIN_ENGINE).
        ...(o.engine ? { engine: o.engine } : {}),
        ...(o.provider ? { provider: o.provider } : {}),
      },
      { signal: controller.signal, onEvent },
    );
    return { result, cancelledBy };
  } catch (err) {
    (bar as ReturnType<typeof progressBar> | null)?.stop();
    await removeIfCreated(plan);
    if (!cancelledBy) throw err;
    if (cancelledBy !== 'EPIPE') reportError(err);
    process.exitCode = CANCELLED_EXIT_CODE[cancelledBy as CancelReason];
    return { result: null, cancelledBy };
  } finally {
    offCancel();
    (bar as ReturnType<typeof progressBar> | null)?.stop();
  }
}

function printTrainResult(o: TrainCliOptions, result: TrainResult): void {
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
      engine: m.backend,
      provider: m.provider ?? null,
      dtype: m.dtype ?? null,
    },
    () =>
      [
        `${m.status}: ${m.step}/${m.settings.steps} steps in ${o.out}`,
        m.provider ? `trained on: ${m.backend} ${m.provider} (${m.dtype})` : '',
        last ? `adapter: ${join(o.out, last.adapter)}` : 'no checkpoint yet',
        result.fixedLoss
          ? `fixed-noise loss: ${result.fixedLoss.start.toFixed(4)} -> ${result.fixedLoss.end.toFixed(4)}`
          : '',
        its ? `average speed: ${its.toFixed(2)} steps/s over this session (previews and checkpoints included)` : '',
      ]
        .filter(Boolean)
        .join('\n'),
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
    const base = o.base ?? runBasePath(manifest, defaultModelsDir());
    requireExists(base, o.base ? '--base' : `--resume (the base model recorded in ${RUN_MANIFEST})`);
    let photos: string | readonly string[];
    if (o.images) {
      requireFolder(o.images, '--images');
      await requireUsablePhotos(o.images, '--images', settings.resolution ?? undefined);
      photos = o.images;
    } else {
      photos = runPhotoPaths(out, manifest);
      const missing = photos.filter((f) => !existsSync(f));
      if (!photos.length) throw new UsageError(`--resume: ${RUN_MANIFEST} lists no photos; pass --images <dir>`);
      if (missing.length)
        throw new UsageError(
          `--resume: ${missing.length} of the run's photos are gone (${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ', ...' : ''}); pass --images <dir>`,
        );
    }
    const stepsGiven = TRAIN_OPTIONS.given(cmd, 'steps');
    if (stepsGiven && settings.steps! <= manifest.step)
      throw new UsageError(
        `--steps: the run already has ${manifest.step} steps; to extend it, ask for more (e.g. --steps ${manifest.step + 100})`,
      );
    if (!stepsGiven && manifest.status === 'completed')
      throw new UsageError(
        `--resume: the run in ${o.out} already completed ${manifest.step} steps; add --steps N (N > ${manifest.step}) to train it further`,
      );
    return { base, photos, settings, resumeSteps: stepsGiven ? settings.steps : undefined, createdOut: false, out };
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
  await requireUsablePhotos(o.images, '--images', settings.resolution ?? undefined);
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
  const given = (field: string) => TRAIN_OPTIONS.given(cmd, field);
  const r = withModelDefaults(settings as Record<string, unknown>, defaults?.training, given);
  if (r.fromModel.length && !o.json)
    process.stderr.write(
      `settings from ${modelDefaultsPath(o.base!)}: ${r.fromModel.map((k) => `${TRAIN_OPTIONS.flagOf(k)} ${JSON.stringify(r.settings[k])}`).join(', ')} (flags win)\n`,
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

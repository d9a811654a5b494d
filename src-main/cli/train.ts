/**
 * `singlora train`: DreamBooth training of a SingLoRA (or LoRA) adapter, with a progress bar on
 * a terminal and one JSON object per event with --json. The run folder's run.json is what the
 * app reads too.
 */
import { Command, Option } from 'commander';
import { join } from 'node:path';
import { LR_SCHEDULES, trainSettingsSchema, type TrainEvent, type TrainSettingsInput } from '../api/schemas.ts';
import { train } from '../engine/train/trainer.ts';
import { action, emitJsonLine, printResult, progressBar, startBackend, withCommon, type GlobalOptions, inferenceOptions, withInference, type InferenceCliOptions } from './common.ts';

interface TrainCliOptions extends GlobalOptions, InferenceCliOptions {
  base: string;
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

const num = (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`expected a number, got '${v}'`);
  return n;
};
const collect = (v: string, prev: string[] = []) => [...prev, v];

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
  if (!r.success) throw new Error(`invalid training option: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return s as TrainSettingsInput;
}

export function register(program: Command): void {
  withCommon(
    program
      .command('train')
      .description('train a SingLoRA (or LoRA) adapter on photos of a subject (DreamBooth)')
      .requiredOption('--base <model>', 'base model: a diffusers folder or a single-file .safetensors')
      .option('--images <dir>', 'folder of 3-20 subject photos (JPEG, PNG, WebP, AVIF, TIFF)')
      .requiredOption('--out <run dir>', 'run folder: run.json, checkpoints/, samples/')
      .option('--token <word>', 'trigger token', 'sks')
      .option('--class <word>', 'class word (e.g. dog, person)', 'person')
      .addOption(new Option('--method <m>', 'adapter type').choices(['singlora', 'lora']).default('singlora'))
      .option('--rank <r>', 'rank', num, 8)
      .option('--alpha <a>', 'alpha (scale alpha/r)', num, 8)
      .option('--ramp <T>', "SingLoRA ramp length in steps, u(t) = min(t/T, 1)", num, 100)
      .option('--init-std <s>', "std of SingLoRA's initial A", num)
      .option('--lr <lr>', 'learning rate', num, 1e-4)
      .addOption(new Option('--lr-schedule <s>', 'learning-rate schedule').choices([...LR_SCHEDULES]))
      .option('--warmup <steps>', 'warm-up steps', num)
      .option('--steps <n>', 'optimizer steps', num, 800)
      .option('--resolution <px>', 'training resolution, multiple of 64 (default: the model native size)', num)
      .option('--batch <n>', 'batch size', num, 1)
      .option('--grad-accum <n>', 'gradient accumulation steps', num)
      .option('--max-grad-norm <n>', 'gradient clipping (0: off)', num)
      .option('--noise-offset <x>', 'noise offset', num)
      .option('--min-snr-gamma <g>', 'min-SNR-gamma loss weighting', num)
      .addOption(new Option('--crop <mode>', 'how photos are cropped to a square').choices(['center', 'attention', 'none']))
      .option('--flip', 'add horizontally flipped copies')
      .option('--instance-prompt <text>', 'caption (default "a photo of <token> <class>")')
      .option('--prior-preservation', 'add the prior-preservation loss on generated class images')
      .option('--class-images <dir>', 'folder of class images (generated there if too few)')
      .option('--class-prompt <text>', 'class prompt (default "a photo of <class>")')
      .option('--num-class-images <n>', 'class images to use', num, 100)
      .option('--prior-loss-weight <w>', 'lambda of the prior loss', num)
      .option('--checkpoint-every <n>', 'steps between checkpoints', num, 100)
      .option('--sample-every <n>', 'steps between preview images (0: none)', num, 100)
      .option('--sample-prompt <text>', 'preview prompt (repeatable)', collect)
      .option('--seed <n>', 'seed', num, 42)
      .option('--gradient-checkpointing', 'recompute each UNet block in the backward pass (less memory)')
      .option('--target <pattern>', 'adapter target pattern (repeatable; default: attn1/attn2 to_q/to_k/to_v/to_out.0)', collect)
      .option('--resume', 'continue the run in --out from its last checkpoint'),
  );
  withInference(program.commands.find((c) => c.name() === 'train')!).action(
    action(async (o: TrainCliOptions) => {
      if (!o.resume && !o.images) throw new Error('--images <dir> is required (or --resume to continue a run)');
      const settings = settingsFromOptions(o);
      const backend = await startBackend(o);
      emitJsonLine(o, { event: 'backend', name: backend.name, device: backend.device ?? null });
      if (!o.json) process.stderr.write(`backend: ${backend.name}${backend.name === 'wasm' || backend.name === 'cpu' ? ' (no GPU backend: training will be slow; see `singlora doctor`)' : ''}\n`);
      const state: { bar: ReturnType<typeof progressBar> | null } = { bar: null };
      const controller = new AbortController();
      const onSignal = () => {
        if (!o.json) process.stderr.write('\nstopping after the current step (a checkpoint is kept)...\n');
        controller.abort('cancel');
      };
      process.once('SIGINT', onSignal);
      try {
        const images = o.images ?? '';
        const result = await train(
          { base: o.base, photos: images, runDir: o.out, settings, resume: o.resume, baseOptions: inferenceOptions(o) },
          {
            signal: controller.signal,
            onEvent: (e: TrainEvent) => {
              emitJsonLine(o, e as Record<string, unknown>);
              if (o.json) return;
              if (e.event === 'step') {
                state.bar ??= progressBar(o, 'step', e.steps);
                state.bar.update(e.step, { loss: e.smoothed.toFixed(4), u: e.u.toFixed(2) });
              } else if (e.event === 'warning') process.stderr.write(`warning: ${e.message}\n`);
              else if (e.event === 'prepare') process.stderr.write(`${e.stage}${e.detail ? `: ${e.detail}` : ''}\n`);
            },
          },
        );
        state.bar?.stop();
        const m = result.manifest;
        if (m.status === 'failed') throw new Error(m.error ?? 'training failed');
        const last = m.checkpoints[m.checkpoints.length - 1];
        printResult(o, { event: 'result', status: m.status, step: m.step, runDir: o.out, adapter: last ? join(o.out, last.adapter) : null, fixedLoss: result.fixedLoss, msPerStep: m.timing.msPerStep }, () =>
          [
            `${m.status}: ${m.step}/${m.settings.steps} steps in ${o.out}`,
            last ? `adapter: ${join(o.out, last.adapter)}` : 'no checkpoint yet',
            result.fixedLoss ? `fixed-noise loss: ${result.fixedLoss.start.toFixed(4)} -> ${result.fixedLoss.end.toFixed(4)}` : '',
            m.timing.msPerStep ? `${(1000 / m.timing.msPerStep).toFixed(2)} it/s` : '',
          ]
            .filter(Boolean)
            .join('\n'),
        );
      } finally {
        process.off('SIGINT', onSignal);
        state.bar?.stop();
      }
    }),
  );
}

/**
 * `singlora demo` (= `npm run demo`): the whole product on the bundled toy model, with nothing
 * but the repository: the toy model (`models/toy-sd/`, trained from scratch by this project on a
 * synthetic world of coloured shapes, scripts/build-toy-model.ts) has never seen the subject, a
 * two-colour "sks ball" (`models/toy-sd-subject/`, six photos). The demo trains a SingLoRA
 * adapter on those photos with checkpoints, scores the base model and each checkpoint in new
 * contexts ("a photo of sks ball on a green background") with the toy fidelity scores
 * (eval/toyFidelity.ts; also real DINO when `models/dino/` is installed), saves a before/after
 * grid (same seeds), generates with the best checkpoint, exports kohya and native files, and
 * prints a summary.
 *
 * `--base <SD 1.5 folder or .safetensors>` runs the same steps on real weights (with real photos
 * from `--photos`, and the real DINO model from `singlora models download dino`).
 */
import type { Command } from 'commander';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { REPO_ROOT } from '../engine/paths.ts';
import type { Pick } from '../engine/eval/pickBest.ts';
import type { ToyScore } from '../engine/eval/toyEvaluate.ts';
import { LIMITS, type RunManifest, type TrainSettingsInput } from '../api/schemas.ts';
import { modelDefaultsPath, readModelDefaults } from '../engine/io/modelDefaults.ts';
import { isToyModel, TOY_DEMO, TOY_MODEL_DIR, TOY_SUBJECT_DIR } from '../engine/toy/toyModel.ts';
import { listImageFiles } from './eval.ts';
import {
  action,
  emitJsonLine,
  parse,
  printResult,
  progressBar,
  requireExists,
  requireFile,
  requireFolder,
  requireUsablePhotos,
  requireNotFile,
  startBackend,
  UsageError,
  withCommon,
  type GlobalOptions,
} from './common.ts';

/** The demo's training settings when the base model has no singlora-defaults.json (SD 1.5). */
const FALLBACK = { method: 'singlora', steps: 40, rank: 8, alpha: 8, learningRate: 1e-4, sampleSteps: 25 } as const;

/**
 * The demo's training settings: the base model's defaults (singlora-defaults.json; a rebuilt toy
 * model without one takes the committed toy model's), else FALLBACK; --steps wins, and then the
 * ramp and the checkpoints follow it (a quarter of the steps).
 */
export function demoTraining(
  base: string,
  toy: boolean,
  resolution: number,
  stepsFlag: number | undefined,
): { settings: TrainSettingsInput & { steps: number }; from: string | null } {
  const own = readModelDefaults(base);
  const md = own ?? (toy ? readModelDefaults(TOY_MODEL_DIR) : null);
  const steps = stepsFlag ?? md?.training?.steps ?? FALLBACK.steps;
  const quarter = Math.max(1, Math.floor(steps / 4));
  const settings = {
    ...FALLBACK,
    resolution,
    ...md?.training,
    steps,
    rampSteps: stepsFlag === undefined ? (md?.training?.rampSteps ?? quarter) : quarter,
    checkpointEvery: stepsFlag === undefined ? (md?.training?.checkpointEvery ?? quarter) : quarter,
    sampleEvery: toy ? 0 : steps,
    triggerToken: 'sks',
    classWord: 'ball',
    seed: 42,
  };
  const from = md ? `settings from ${modelDefaultsPath(own ? base : TOY_MODEL_DIR)}` : null;
  return { settings, from };
}

interface DemoOptions extends GlobalOptions {
  base?: string;
  configDir?: string;
  photos?: string;
  out: string;
  steps?: number;
  dinoModel?: string;
  force?: boolean;
}

const REAL_DINO = join(REPO_ROOT, 'models/dino/model.onnx');

/** Marks a folder the demo made: only then does a later demo replace what is in it. */
const DEMO_MARKER = '.singlora-demo';
/** What the demo writes in --out, and so what it replaces on the next run. */
const DEMO_OUTPUTS = [
  'run',
  'images',
  'photos',
  'before-after.png',
  'sks-ball.kohya.safetensors',
  'sks-ball.singlora.safetensors',
];

/** The training loss as the demo reports it (issue 27 item 29). */
export interface LossSummary {
  /** The fixed-noise loss (same images, timesteps and noise) before the first and after the last step. */
  fixedNoiseStart: number | null;
  fixedNoiseEnd: number | null;
  /** The per-step loss's moving average (the progress bar's) after the last step. */
  smoothedLast: number | null;
}

/**
 * Two single-step losses do not compare: each step draws its own timestep and noise, so the loss
 * of one step ranges over an order of magnitude ("0.0267 -> 0.1271" read as if training made it
 * worse). The fixed-noise loss evaluates the same batch before and after training; the moving
 * average shows the trend of the steps.
 */
export function lossSummary(
  losses: ReadonlyArray<{ loss: number; smoothed: number }>,
  fixedLoss: { start: number; end: number } | null,
): LossSummary {
  return {
    fixedNoiseStart: fixedLoss?.start ?? null,
    fixedNoiseEnd: fixedLoss?.end ?? null,
    smoothedLast: losses.length ? losses[losses.length - 1].smoothed : null,
  };
}

/** "fixed-noise loss 0.0900 -> 0.0700 (same images, timesteps and noise); moving average 0.0512 at the end". */
export function lossLine(l: LossSummary): string {
  const parts: string[] = [];
  if (l.fixedNoiseStart !== null && l.fixedNoiseEnd !== null)
    parts.push(
      `fixed-noise loss ${l.fixedNoiseStart.toFixed(4)} -> ${l.fixedNoiseEnd.toFixed(4)} (same images, timesteps and noise)`,
    );
  if (l.smoothedLast !== null) parts.push(`moving-average step loss ${l.smoothedLast.toFixed(4)} at the end`);
  return parts.join('; ') || 'no loss recorded';
}

/**
 * Checks every option before anything is written, and makes --out ready: a new folder, an
 * earlier demo's folder (its own outputs are replaced), or, with --force, any folder (the
 * demo's outputs in it are replaced; nothing else is touched).
 */
export async function prepareDemoOut(o: DemoOptions): Promise<string> {
  const out = resolve(o.out);
  requireNotFile(out, '--out');
  if (o.base) requireExists(o.base, '--base');
  if (o.configDir) requireFolder(o.configDir, '--config-dir');
  if (o.photos) {
    requireFolder(o.photos, '--photos');
    try {
      listImageFiles(o.photos);
    } catch (err) {
      throw new UsageError(`--photos: ${(err as Error).message}`);
    }
    await requireUsablePhotos(o.photos, '--photos');
  }
  if (o.dinoModel) requireFile(o.dinoModel, '--dino-model', 'an .onnx file');
  const entries = existsSync(out) ? readdirSync(out) : [];
  const ours = entries.includes(DEMO_MARKER);
  if (entries.length && !ours && !o.force) {
    throw new UsageError(
      `--out: ${o.out} is not empty and was not made by the demo; choose a new folder, or add --force to write the demo's outputs (${DEMO_OUTPUTS.join(', ')}) into it`,
    );
  }
  if (o.photos && resolve(o.photos) === join(out, 'photos'))
    throw new UsageError(
      `--photos: ${o.photos} is inside --out, where the demo writes its own photos; choose another --out`,
    );
  for (const name of DEMO_OUTPUTS) {
    // Only what the demo writes; synthetic photos only when the demo makes them.
    if (name === 'photos' && o.photos) continue;
    if (entries.includes(name)) await rm(join(out, name), { recursive: true, force: true });
  }
  await mkdir(out, { recursive: true });
  await writeFile(
    join(out, DEMO_MARKER),
    'made by `singlora demo`: a later demo replaces the outputs in this folder\n',
  );
  return out;
}

export function register(program: Command): void {
  withCommon(
    program
      .command('demo')
      .description('train, score, generate and export on the bundled toy model (or on --base) in a few minutes')
      .option('--base <model>', 'run on this base model instead of the bundled toy one')
      .option(
        '--config-dir <dir>',
        'for a single-file --base: a diffusers SD 1.5 folder to take configs, tokenizer and scheduler from',
      )
      .option('--photos <dir>', 'subject photos (default: the toy subject, models/toy-sd-subject)')
      .option(
        '--out <dir>',
        'output folder: new, or one an earlier demo made (its outputs are replaced)',
        join(REPO_ROOT, 'demo-output'),
      )
      .option(
        '--force',
        "write into a non-empty --out the demo did not make (only the demo's own outputs in it are replaced)",
      )
      .option(
        '--steps <n>',
        `training steps (default: the base model's singlora-defaults.json, else ${FALLBACK.steps})`,
        parse.int(2, LIMITS.steps),
      )
      .option('--dino-model <file.onnx>', 'DINO model (default: models/dino when installed)'),
  ).action(action(runDemo));
}

/** What every stage of one demo run reads: the options, where it writes, and how it reports. */
interface DemoRun {
  o: DemoOptions;
  out: string;
  runDir: string;
  /** The toy model (the bundled one, or a rebuilt copy: npm run build:toy-model --out elsewhere). */
  toy: boolean;
  base: string;
  photos: string;
  resolution: number;
  baseOptions: { configDir: string } | undefined;
  say(msg: string): void;
  /** Runs one stage and records its milliseconds under `name`. */
  timed<T>(name: string, stage: () => Promise<T>): Promise<T>;
  timesMs: Record<string, number>;
}

/** The demo's stages, in order: train, score (DINO and/or the toy scores), generate, export, summary. */
async function runDemo(o: DemoOptions): Promise<void> {
  const t0 = performance.now();
  const run = await startDemo(o);
  const plan = demoTraining(run.base, run.toy, run.resolution, o.steps);
  run.say(
    `training ${plan.settings.method === 'lora' ? 'LoRA' : 'SingLoRA'} (rank ${plan.settings.rank}, learning rate ${plan.settings.learningRate}) for ${plan.settings.steps} steps${plan.from ? ` (${plan.from})` : ''}`,
  );
  const result = await run.timed('train', () => trainDemo(run, plan.settings));
  const m = result.manifest;
  if (m.status !== 'completed') throw new Error(`training ended ${m.status}: ${m.error}`);
  // The toy probes: the run's token and class word on backgrounds none of the photos show.
  const { readToyPhotos, toyProbes } = await import('../engine/eval/toyEvaluate.ts');
  const refs = run.toy ? await readToyPhotos(listImageFiles(run.photos)) : [];
  const probes = run.toy ? toyProbes('sks', 'ball', refs) : [];
  const dino = await scoreWithDino(run, probes);
  const toyScores = run.toy ? await run.timed('evaluate', () => scoreToy(run, m.checkpoints, refs, probes)) : null;
  const best = toyScores?.best ?? m.checkpoints[m.checkpoints.length - 1];
  const picked = !toyScores || toyScores.pick.best !== null;
  run.say(
    `generating with the ${run.toy && picked ? 'best' : 'last'} checkpoint (step ${best.step})${picked ? '' : ': no checkpoint beats the base model'}`,
  );
  const images = await run.timed('generate', () => generateDemoImages(run, join(run.runDir, best.adapter), probes));
  run.say('exporting kohya (A1111 / ComfyUI) and native SingLoRA files');
  const exports = await run.timed('export', () => exportDemo(run, join(run.runDir, best.adapter)));
  const summary = {
    event: 'summary',
    // What trained: run.json's backend ('onnx' for ONNX Runtime, else the TensorFlow.js backend).
    backend: m.backend,
    base: run.base,
    toyModel: run.toy,
    run: run.runDir,
    steps: m.step,
    loss: lossSummary(m.losses, result.fixedLoss),
    msPerStep: m.timing.msPerStep,
    toyFidelity: toyScores ? toyFidelitySummary(toyScores) : null,
    dino,
    images: images.map((i) => i.file),
    exports: { kohya: exports.kohya.path, native: exports.native.path },
    timingsMs: { ...run.timesMs, total: Math.round(performance.now() - t0) },
  };
  printResult(o, summary, () => summaryText(run, summary, toyScores, probes));
}

/** Checks the options, makes --out ready, starts the backend and says what the toy model is. */
async function startDemo(o: DemoOptions): Promise<DemoRun> {
  const out = await prepareDemoOut(o);
  const toy = !o.base || isToyModel(o.base);
  const timesMs: Record<string, number> = {};
  const run: DemoRun = {
    o,
    out,
    runDir: join(out, 'run'),
    toy,
    base: o.base ?? TOY_MODEL_DIR,
    photos: o.photos ?? TOY_SUBJECT_DIR,
    resolution: toy ? 64 : 512,
    baseOptions: o.configDir ? { configDir: o.configDir } : undefined,
    say: (msg) => (o.json ? emitJsonLine(o, { event: 'stage', message: msg }) : process.stderr.write(`\n== ${msg}\n`)),
    timed: async (name, stage) => {
      const t = performance.now();
      const r = await stage();
      timesMs[name] = Math.round(performance.now() - t);
      return r;
    },
    timesMs,
  };
  await startBackend(o); // the TensorFlow.js backend, for the parts that still use it
  if (!o.base && !existsSync(join(TOY_MODEL_DIR, 'unet/diffusion_pytorch_model.safetensors'))) {
    throw new UsageError(
      `the toy model is missing from ${TOY_MODEL_DIR}; it is committed to the repository (restore it with git checkout -- models/toy-sd), or rebuild it with npm run build:toy-model`,
    );
  }
  if (toy) {
    run.say(
      `${o.base ? `a toy model (${o.base})` : 'the bundled toy model'}: Stable-Diffusion-1.x-shaped (VAE, UNet, CLIP text encoder), trained from scratch by this project on 64x64 pictures of coloured shapes. It has never seen the subject: a ball, red on top and yellow below. Use --base <SD 1.5 folder or .safetensors> for real weights.`,
    );
  }
  return run;
}

async function trainDemo(run: DemoRun, settings: TrainSettingsInput) {
  const { train } = await import('../engine/train/trainer.ts');
  const progress: { bar: ReturnType<typeof progressBar> | null } = { bar: null };
  try {
    return await train(
      { base: run.base, baseOptions: run.baseOptions, photos: run.photos, runDir: run.runDir, settings },
      {
        onEvent: (e) => {
          emitJsonLine(run.o, e as Record<string, unknown>);
          if (e.event === 'step' && !run.o.json) {
            progress.bar ??= progressBar(run.o, 'step', e.steps);
            progress.bar.update(e.step, { loss: e.smoothed.toFixed(4) }, e.its);
          }
        },
      },
    );
  } finally {
    progress.bar?.stop();
  }
}

type ToyProbes = Awaited<ReturnType<typeof import('../engine/eval/toyEvaluate.ts').toyProbes>>;
type ToyPhotos = Awaited<ReturnType<typeof import('../engine/eval/toyEvaluate.ts').readToyPhotos>>;

/** The base model and each checkpoint scored with DINO, when a DINO model is given or installed. */
async function scoreWithDino(
  run: DemoRun,
  probes: ToyProbes,
): Promise<{ baseline: number; rows: { step: number; dino: number }[] } | null> {
  const dinoModel = run.o.dinoModel ?? (existsSync(REAL_DINO) ? REAL_DINO : undefined);
  if (!dinoModel) return null;
  run.say(`scoring the base model and each checkpoint with DINO (${dinoModel})`);
  return run.timed('dino', async () => {
    const { evaluateRun } = await import('../engine/eval/evaluateRun.ts');
    const { TOY_SAMPLING } = await import('../engine/eval/toyEvaluate.ts');
    const evaluation = await evaluateRun({
      runDir: run.runDir,
      photos: run.photos,
      checkpoints: 'all',
      prompts: run.toy ? probes.map((p) => p.prompt) : undefined,
      imagesPerPrompt: run.toy ? 2 : 4,
      steps: run.toy ? TOY_SAMPLING.steps : 25,
      subjectType: 'object',
      dinoModel,
      baseOptions: run.baseOptions,
    });
    return {
      baseline: evaluation.baseline.dino,
      rows: evaluation.rows.map((r) => ({ step: r.step ?? 0, dino: r.dino })),
    };
  });
}

interface ToyScores {
  base: ToyScore;
  rows: { step: number; score: ToyScore }[];
  grid: string;
  pick: Pick;
  band: number | null;
  /** The picked checkpoint, else the last. */
  best: RunManifest['checkpoints'][number];
}

/**
 * The base model and each checkpoint in new contexts (toy subject and prompt fidelity, same seeds),
 * the evaluation's pick (the best checkpoint only when it beats the base model by more than the
 * noise), and the before/after grid.
 */
async function scoreToy(
  run: DemoRun,
  checkpoints: RunManifest['checkpoints'],
  refs: ToyPhotos,
  probes: ToyProbes,
): Promise<ToyScores> {
  run.say('scoring the base model and each checkpoint in new contexts (toy subject and prompt fidelity, same seeds)');
  const { scoreToyModel } = await import('../engine/eval/toyEvaluate.ts');
  const { noiseBand, pickBest } = await import('../engine/eval/pickBest.ts');
  const { StableDiffusion } = await import('../engine/pipeline/stableDiffusion.ts');
  const sd = await StableDiffusion.load(run.base);
  try {
    const score = (adapter?: string) => scoreToyModel(sd, { photos: refs, probes, adapter, seeds: TOY_DEMO.seeds });
    const baseScore = await score();
    const rows: { step: number; score: ToyScore }[] = [];
    for (const c of checkpoints) rows.push({ step: c.step, score: await score(join(run.runDir, c.adapter)) });
    const band = noiseBand(baseScore.scores);
    const asRow = (step: number | null, sc: ToyScore) => ({
      step,
      dino: sc.subject,
      clipT: null,
      images: sc.scores.length,
      prompt: sc.prompt,
    });
    const pick = pickBest(
      asRow(null, baseScore),
      rows.map((r) => asRow(r.step, r.score)),
      { noiseBand: band, metric: 'toy' },
    );
    const top = rows.find((r) => r.step === pick.best) ?? rows[rows.length - 1];
    const grid = await writeBeforeAfter(join(run.out, 'before-after.png'), refs, baseScore, top);
    return { base: baseScore, rows, grid, pick, band, best: checkpoints.find((c) => c.step === top.step)! };
  } finally {
    sd.dispose();
  }
}

/** The grid's rows: the training photos, the base model, the adapter (same prompts and seeds). */
async function writeBeforeAfter(
  file: string,
  refs: ToyPhotos,
  baseScore: ToyScore,
  top: { step: number; score: ToyScore },
): Promise<string> {
  const { imageGrid } = await import('../engine/image/grid.ts');
  const { encodeImage, labelGrid } = await import('../engine/image/sharp.ts');
  const { atomicWriteFile } = await import('../engine/io/atomic.ts');
  const cells = [
    ...refs.slice(0, top.score.images.length),
    ...baseScore.images.map((i) => i.image),
    ...top.score.images.map((i) => i.image),
  ];
  const cols = baseScore.images.length;
  const used = cells.slice(0, Math.floor(cells.length / cols) * cols);
  const gap = 2;
  const cellSide = used[0].height * 2;
  const labelled = await labelGrid(imageGrid(used, cols, { scale: 2, gap }), {
    rows: ['training photos', 'base model', `adapter, step ${top.step}`].slice(-(used.length / cols)),
    cols: baseScore.images.map((i) => `on ${i.probe.background}, seed ${i.seed}`),
    rowHeight: cellSide + gap,
    colWidth: used[0].width * 2 + gap,
    offset: gap,
  });
  await atomicWriteFile(file, await encodeImage(labelled, 'png'));
  return file;
}

async function generateDemoImages(run: DemoRun, adapter: string, probes: ToyProbes) {
  const { generateImages } = await import('../engine/pipeline/generate.ts');
  const { TOY_SAMPLING } = await import('../engine/eval/toyEvaluate.ts');
  return generateImages({
    base: run.base,
    baseOptions: run.baseOptions,
    settings: run.toy
      ? {
          prompt: probes[0].prompt,
          negativePrompt: '',
          steps: TOY_SAMPLING.steps,
          guidanceScale: TOY_SAMPLING.guidanceScale,
          scheduler: TOY_SAMPLING.scheduler,
          seed: 1234,
          width: 64,
          height: 64,
          count: 2,
        }
      : {
          prompt: 'a photo of sks ball on a wooden table',
          negativePrompt: 'blurry',
          steps: 25,
          scheduler: 'dpmpp-2m-karras',
          seed: 1234,
          width: run.resolution,
          height: run.resolution,
          count: 2,
        },
    adapters: [{ path: adapter, strength: 1 }],
    outDir: join(run.out, 'images'),
  });
}

async function exportDemo(run: DemoRun, adapter: string) {
  const { exportAdapter } = await import('../engine/adapters/exportAdapter.ts');
  const kohya = await exportAdapter({ adapter, format: 'kohya', out: join(run.out, 'sks-ball.kohya.safetensors') });
  const native = await exportAdapter({
    adapter,
    format: 'singlora',
    out: join(run.out, 'sks-ball.singlora.safetensors'),
  });
  return { kohya, native };
}

function toyFidelitySummary(t: ToyScores) {
  return {
    base: { subject: t.base.subject, prompt: t.base.prompt },
    rows: t.rows.map((r) => ({ step: r.step, subject: r.score.subject, prompt: r.score.prompt })),
    best: t.pick.best,
    noiseBand: t.band,
    reason: t.pick.reason,
    suggestion: t.pick.suggestion,
    grid: t.grid,
  };
}

interface DemoSummary {
  backend: string;
  steps: number;
  loss: LossSummary;
  msPerStep: number | null;
  dino: { baseline: number; rows: { step: number; dino: number }[] } | null;
  images: string[];
  exports: { kohya: string; native: string };
  timingsMs: Record<string, number>;
}

/** The summary as a person reads it. */
function summaryText(run: DemoRun, s: DemoSummary, toyScores: ToyScores | null, probes: ToyProbes): string {
  const fmt = (t: ToyScore) => `subject ${t.subject.toFixed(3)}, background right ${(100 * t.prompt).toFixed(0)}%`;
  const toyLines = toyScores
    ? [
        `  toy fidelity     base: ${fmt(toyScores.base)}`,
        ...toyScores.rows.map(
          (r) =>
            `                   step ${r.step}: ${fmt(r.score)}${r.step === toyScores.pick.best ? '  <- best' : ''}`,
        ),
        `  noise band       ${toyScores.band === null ? 'not measured' : toyScores.band.toFixed(3)} (twice the standard error of the base model's mean)`,
        ...(toyScores.pick.best === null
          ? [
              `  no pick          ${toyScores.pick.reason}`,
              `                   try: ${toyScores.pick.suggestion}; the images and exports below use the last checkpoint`,
            ]
          : []),
        `  before/after     ${toyScores.grid}  (rows: training photos, base model, adapter; same prompts and seeds: ${probes.map((p) => `"${p.prompt}"`).join(', ')})`,
      ]
    : [];
  const dinoLines = s.dino
    ? [
        `  DINO scores      base ${s.dino.baseline.toFixed(4)}; ${s.dino.rows.map((r) => `step ${r.step}: ${r.dino.toFixed(4)}`).join(', ')}`,
      ]
    : run.toy
      ? [
          '  DINO             not installed (singlora models download dino); the toy scores above read colours, their layout and the shape off the pixels, see docs/experiments.md',
        ]
      : [];
  return [
    '',
    `SingLoRA Studio demo finished in ${(s.timingsMs.total / 1000).toFixed(1)} s, trained on ${s.backend === 'onnx' ? 'ONNX Runtime' : s.backend}`,
    `  base model       ${run.base}${run.toy ? '  (toy model: 64x64 coloured shapes, trained from scratch by npm run build:toy-model)' : ''}`,
    `  training         ${s.steps} steps, ${s.msPerStep ? (1000 / s.msPerStep).toFixed(2) : '?'} it/s; ${lossLine(s.loss)}`,
    `  run folder       ${run.runDir}`,
    ...toyLines,
    ...dinoLines,
    `  images           ${s.images.join(', ')}`,
    `  kohya LoRA       ${s.exports.kohya}  (A1111/Forge: models/Lora, prompt <lora:sks-ball.kohya:1>; ComfyUI: LoraLoader)`,
    `  native SingLoRA  ${s.exports.native}`,
    `  timings (ms)     ${Object.entries(s.timingsMs)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
    '',
    run.toy
      ? 'Next: real weights. Put SD 1.5 (diffusers folder or v1-5-pruned-emaonly.safetensors) somewhere and run\n  npm run demo -- --base <path> --photos <your photos>\nsee models/README.md.'
      : '',
  ].join('\n');
}

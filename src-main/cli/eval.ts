/**
 * `singlora eval --photos <dir> --generated <dir>`: subject fidelity of a folder of generated images
 * against a folder of subject photos (DreamBooth's DINO metric: mean CLS cosine over all pairs),
 * plus CLIP-I / CLIP-T with `--clip` when the CLIP models are installed.
 *
 * `singlora eval --run <dir>` scores the base model and each checkpoint of a training run on the
 * fixed prompt set and stores the table and the pick in the run's run.json.
 */
import { Option, type Command } from 'commander';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { extname, join } from 'node:path';
import type { ClipModels, ClipScores } from '../engine/eval/clip.ts';
import { locateClip, locateDino, scorerFor } from '../engine/eval/modelRegistry.ts';
import type { SubjectFidelity } from '../engine/eval/similarity.ts';
import { getPngText } from '../engine/image/pngText.ts';
import { defaultModelsDir } from '../engine/paths.ts';
import { evalJobs, IMAGES_PER_PROMPT } from '../engine/eval/prompts.ts';
import { readRunManifest, RUN_MANIFEST, runBasePath, runPhotoPaths } from '../engine/train/runFiles.ts';
import {
  DEFAULT_SUBJECT_TYPE,
  EVAL_CHECKPOINTS,
  type Evaluation,
  IMAGE_EXTENSIONS,
  isImageExtension,
  LIMITS,
  type RunManifest,
  type ScoreRow,
  SUBJECT_TYPES,
} from '../api/schemas.ts';
import {
  action,
  emitJsonLine,
  formatDuration,
  parse,
  printResult,
  progressBar,
  requireFile,
  requireFolder,
  startBackend,
  UsageError,
  withCommon,
  type GlobalOptions,
  inferenceOptions,
  withInference,
  type InferenceCliOptions,
} from './common.ts';

interface EvalOptions extends GlobalOptions, InferenceCliOptions {
  photos?: string;
  generated?: string;
  run?: string;
  dinoModel?: string;
  modelsDir?: string;
  batchSize?: number;
  clip?: boolean;
  prompt?: string;
  checkpoints?: 'all' | 'latest';
  prompts?: string;
  imagesPerPrompt?: number;
  steps?: number;
  subject?: (typeof SUBJECT_TYPES)[number];
  configDir?: string;
}

/** Sampling steps per evaluation image when --steps is not given. */
const EVAL_STEPS = 25;

export { IMAGE_EXTENSIONS };

/** Image files directly in `dir` (not recursive, no hidden files), sorted by name. */
export function listImageFiles(dir: string): string[] {
  let names: string[];
  try {
    if (!statSync(dir).isDirectory()) throw new Error(`${dir} is not a folder`);
    names = readdirSync(dir);
  } catch (err) {
    throw new Error(`cannot read the folder ${dir}: ${(err as Error).message}`);
  }
  const files = names.filter((n) => !n.startsWith('.') && isImageExtension(extname(n))).sort();
  if (!files.length) throw new Error(`no images in ${dir} (looked for ${IMAGE_EXTENSIONS.join(', ')})`);
  return files.map((n) => join(dir, n));
}

/** The prompt of an A1111-style `parameters` PNG chunk: the text before "Negative prompt:" / "Steps:". */
export function promptFromParameters(parameters: string): string {
  const lines = parameters.split('\n');
  const end = lines.findIndex((l) => /^(Negative prompt:|Steps:)/.test(l));
  return lines
    .slice(0, end < 0 ? lines.length : end)
    .join('\n')
    .trim();
}

function promptOf(file: string): string | undefined {
  if (extname(file).toLowerCase() !== '.png') return undefined;
  try {
    const p = getPngText(readFileSync(file), 'parameters');
    return p ? promptFromParameters(p) || undefined : undefined;
  } catch {
    return undefined;
  }
}

export interface EvalFoldersResult extends SubjectFidelity {
  readonly photos: number;
  readonly generated: number;
  readonly model: string;
  readonly msPerImage: number;
  readonly clip?: ClipScores | { skipped: string };
}

export async function evalFolders(
  opts: EvalOptions,
  onProgress?: (done: number, total: number) => void,
): Promise<EvalFoldersResult> {
  if (!opts.photos || !opts.generated)
    throw new Error('eval needs --photos <dir> and --generated <dir> (or --run <dir>)');
  const photos = listImageFiles(opts.photos);
  const generated = listImageFiles(opts.generated);
  const modelsDir = opts.modelsDir ?? defaultModelsDir();
  const model = locateDino(modelsDir, opts.dinoModel);
  const batchSize = opts.batchSize;
  const { DinoEmbedder } = await import('../engine/eval/dino.ts');
  const { clipScores, ClipModels } = await import('../engine/eval/clip.ts');
  const { scoreSubjectFidelity } = await import('../engine/eval/similarity.ts');
  const embedder = await DinoEmbedder.load(model, { batchSize });
  const t0 = performance.now();
  let fidelity: SubjectFidelity;
  try {
    fidelity = await scoreSubjectFidelity(embedder, generated, photos, onProgress);
  } finally {
    await embedder.release();
  }
  const msPerImage = (performance.now() - t0) / (photos.length + generated.length);
  const result: EvalFoldersResult = {
    ...fidelity,
    photos: photos.length,
    generated: generated.length,
    model,
    msPerImage,
  };
  if (!opts.clip) return result;

  const located = locateClip(modelsDir);
  if ('missing' in located) return { ...result, clip: { skipped: located.missing } };
  let clip: ClipModels;
  try {
    clip = await ClipModels.load(located.files, { batchSize });
  } catch (err) {
    return { ...result, clip: { skipped: (err as Error).message } };
  }
  try {
    const withPrompts = generated.map((file) => ({ file, prompt: opts.prompt ?? promptOf(file) }));
    return { ...result, clip: await clipScores(clip, withPrompts, photos) };
  } finally {
    await clip.release();
  }
}

/** Seconds per image and the time left, from the images generated so far. */
export interface EvalEstimate {
  secondsPerImage: number;
  remainingSeconds: number;
  remainingImages: number;
}

/**
 * The evaluation's time, from inference speed measured as it runs (a training run's speed says
 * nothing about it: inference runs on ONNX Runtime, training on TensorFlow.js, and they differ
 * tens of times). The first image also opens the model and compiles its graphs, so the speed is
 * measured from the first image on; `image(done, total)` answers once, at the second image.
 */
export function inferenceEstimate(now: () => number = () => performance.now()): {
  image(done: number, total: number): EvalEstimate | null;
} {
  let first: { done: number; at: number } | null = null;
  let told = false;
  return {
    image(done, total) {
      const at = now();
      if (!first) {
        first = { done, at };
        return null;
      }
      if (told || done <= first.done) return null;
      told = true;
      const secondsPerImage = (at - first.at) / 1000 / (done - first.done);
      return { secondsPerImage, remainingSeconds: secondsPerImage * (total - done), remainingImages: total - done };
    },
  };
}

function reportEstimate(opts: EvalOptions, e: EvalEstimate): void {
  if (opts.json) {
    emitJsonLine(opts, { event: 'estimate', ...e });
    return;
  }
  if (e.remainingImages === 0) return;
  process.stderr.write(
    `estimate: ${e.secondsPerImage.toFixed(1)} s per image here; about ${formatDuration(e.remainingSeconds)} for the ${e.remainingImages} images left\n`,
  );
  if (e.remainingSeconds > 1800)
    process.stderr.write('  for a quicker look: --checkpoints latest --images-per-prompt 1 --steps 15\n');
}

/** How many prompts `eval --run` scores: the file's, the toy probes, or the fixed set's for the subject type. */
async function evalPromptCount(
  opts: EvalOptions,
  manifest: RunManifest,
  prompts: string[] | undefined,
  toyEval: typeof import('../engine/eval/toyEvaluate.ts') | null,
): Promise<number> {
  return (
    prompts?.length ??
    (toyEval
      ? toyEval.toyProbes(
          manifest.settings.triggerToken,
          manifest.settings.classWord,
          await toyEval.readToyPhotos(
            opts.photos
              ? listImageFiles(opts.photos)
              : runPhotoPaths(opts.run!, manifest).filter((f) => !f.includes('#')),
          ),
        ).length
      : undefined) ??
    new Set(
      evalJobs(opts.subject ?? DEFAULT_SUBJECT_TYPE, manifest.settings.triggerToken, manifest.settings.classWord).map(
        (j) => j.prompt,
      ),
    ).size
  );
}

/** `singlora eval --run <dir>`: scores the base model and every checkpoint (or the latest) on the fixed prompt set. */
async function evalRun(opts: EvalOptions): Promise<void> {
  const runDir = opts.run!;
  requireFolder(runDir, '--run');
  if (!existsSync(`${runDir}/${RUN_MANIFEST}`))
    throw new UsageError(`--run: ${runDir} has no ${RUN_MANIFEST}; it is not a training run folder`);
  if (opts.photos) requireFolder(opts.photos, '--photos');
  if (opts.configDir) requireFolder(opts.configDir, '--config-dir');
  if (opts.dinoModel) requireFile(opts.dinoModel, '--dino-model', 'an .onnx file');
  const prompts = opts.prompts && opts.prompts !== 'default' ? readPromptFile(opts.prompts) : undefined;
  const manifest = await readRunManifest(runDir);
  if (!manifest.checkpoints.length) throw new Error(`${runDir}: the run has no checkpoints to evaluate yet`);
  // DINO; for the toy model without DINO, the toy world's pixel score (evaluateRun.ts).
  const modelsDir = opts.modelsDir ?? defaultModelsDir();
  const scorer = scorerFor(runBasePath(manifest, modelsDir), modelsDir, opts.dinoModel);
  const toy = scorer.kind === 'toy';
  const toyEval = toy ? await import('../engine/eval/toyEvaluate.ts') : null;
  if (toy && !opts.json)
    process.stderr.write(
      "DINO is not installed: scoring the toy model with the toy world's own subject fidelity (colours, their layout and the shape; docs/experiments.md)\n",
    );

  // The plan, before anything loads: how many images, and roughly how long.
  const checkpoints = opts.checkpoints === 'latest' ? 1 : manifest.checkpoints.length;
  const promptCount = await evalPromptCount(opts, manifest, prompts, toyEval);
  const perPrompt = opts.imagesPerPrompt ?? IMAGES_PER_PROMPT;
  const steps = opts.steps ?? toyEval?.TOY_SAMPLING.steps ?? EVAL_STEPS;
  const images = (1 + checkpoints) * promptCount * perPrompt;
  const plan = {
    event: 'plan',
    checkpoints: 1 + checkpoints,
    prompts: promptCount,
    imagesPerPrompt: perPrompt,
    steps,
    images,
  };
  if (opts.json) emitJsonLine(opts, plan);
  else
    process.stderr.write(
      `plan: the base model and ${checkpoints} checkpoint(s) x ${promptCount} prompts x ${perPrompt} images = ${images} images at ${steps} steps (the time it takes follows the second image, from the inference speed measured here)\n`,
    );

  await startBackend(opts);
  const { evaluateRun } = await import('../engine/eval/evaluateRun.ts');
  const estimate = inferenceEstimate();
  let bar: ReturnType<typeof progressBar> | null = null;
  const evaluation = await evaluateRun(
    {
      runDir,
      photos: opts.photos,
      checkpoints: opts.checkpoints === 'latest' ? 'latest' : 'all',
      prompts,
      imagesPerPrompt: opts.imagesPerPrompt,
      steps,
      subjectType: opts.subject ?? DEFAULT_SUBJECT_TYPE,
      dinoModel: opts.dinoModel,
      scorer: scorer.kind,
      modelsDir: opts.modelsDir,
      clip: opts.clip !== false,
      baseOptions: opts.configDir ? { configDir: opts.configDir } : undefined,
      inference: inferenceOptions(opts),
    },
    {
      onProgress: (done, total, label) => {
        const eta = estimate.image(done, total);
        if (eta) reportEstimate(opts, eta);
        bar ??= progressBar(opts, 'image', total);
        bar.update(done, { at: label });
        emitJsonLine(opts, { event: 'progress', stage: 'generate', done, total, label });
      },
    },
  );
  (bar as ReturnType<typeof progressBar> | null)?.stop();
  printResult(opts, { event: 'result', ...evaluation }, () => formatEvaluation(runDir, evaluation));
}

/** The text of `singlora eval --run`: the table (with the toy metric, the background share), the band, the pick or why none. */
export function formatEvaluation(runDir: string, e: Evaluation): string {
  const toy = e.metric === 'toy';
  const pct = (x: number | undefined) => (x === undefined ? '   n/a' : `${(100 * x).toFixed(0).padStart(5)}%`);
  const row = (label: string, r: ScoreRow, mark = '') =>
    `  ${label.padEnd(12)} ${r.dino.toFixed(4)}   ${r.clipT === null ? '   n/a' : r.clipT.toFixed(4)}${toy ? `   ${pct(r.prompt)}` : ''}   ${String(r.images).padStart(4)}${mark}`;
  const band = e.noiseBand ?? null;
  return [
    `evaluation of ${runDir}: ${e.prompts.length} prompts x ${e.imagesPerPrompt} images`,
    `  checkpoint   ${toy ? 'TOY ' : 'DINO'}     CLIP-T${toy ? '   backgr.' : ''}   images`,
    row('base', e.baseline),
    ...e.rows.map((r) => row(`step ${r.step}`, r, r.step === e.best ? '   <- best' : '')),
    band === null
      ? 'noise band: not measured (one image of the base model)'
      : `noise band: ${band.toFixed(4)} (twice the standard error of the base model's mean over its ${e.baseline.images} images): a checkpoint must score above ${(e.baseline.dino + band).toFixed(4)}`,
    toy ? 'backgr.: share of images with the background the prompt asked for' : '',
    `rule: ${e.rule}`,
    e.best === null && e.rows.length ? `no pick: ${e.reason ?? 'no checkpoint beats the base model'}` : '',
    e.best === null && e.suggestion ? `try: ${e.suggestion}` : '',
  ]
    .filter(Boolean)
    .join('\n');
}

function readPromptFile(file: string): string[] {
  requireFile(file, '--prompts', "a text file (or 'default')");
  const lines = readFileSync(file, 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  if (!lines.length) throw new Error(`${file}: no prompts (one per line; # starts a comment)`);
  return lines;
}

export function register(program: Command): void {
  withInference(
    withCommon(
      program
        .command('eval')
        .description(
          'score generated images against subject photos (DINO subject fidelity; CLIP-I/CLIP-T with --clip)',
        ),
    ),
  )
    .option('--photos <dir>', 'folder of subject photos')
    .option('--generated <dir>', 'folder of generated images')
    .option('--run <dir>', 'score the base model and every checkpoint of a training run on the fixed prompt set')
    .addOption(
      new Option('--checkpoints <which>', 'with --run: which checkpoints').choices(EVAL_CHECKPOINTS).default('all'),
    )
    .option(
      '--prompts <default|file>',
      'with --run: the fixed prompt set, or a file with one prompt per line',
      'default',
    )
    .option('--images-per-prompt <n>', `with --run: images per prompt (default ${IMAGES_PER_PROMPT})`, parse.int(1, 16))
    .option(
      '--steps <n>',
      `with --run: sampling steps per image (default ${EVAL_STEPS})`,
      parse.int(1, LIMITS.generation.steps),
    )
    .addOption(
      new Option('--subject <type>', 'with --run: the subject type (chooses the prompt set)')
        .choices([...SUBJECT_TYPES])
        .default(DEFAULT_SUBJECT_TYPE),
    )
    .option(
      '--config-dir <dir>',
      "with --run, when the run's base is a single-file checkpoint: a diffusers SD 1.5 folder for configs and tokenizer",
    )
    .option('--dino-model <file.onnx>', 'DINO ONNX model (default: <models-dir>/dino/model.onnx)')
    .option('--models-dir <dir>', 'models folder (default: SINGLORA_MODELS_DIR or <repo>/models)')
    .option('--batch-size <n>', 'images per model run (default 8)', parse.int(1, 256))
    .option('--clip', 'also compute CLIP-I and CLIP-T (skipped with a message when the CLIP models are not installed)')
    .option('--prompt <text>', "prompt of every generated image, for CLIP-T (default: each PNG's `parameters` chunk)")
    .action(
      action(async (opts: EvalOptions) => {
        if (opts.run) return evalRun(opts);
        if (!opts.photos || !opts.generated)
          throw new UsageError('eval needs --photos <dir> and --generated <dir>, or --run <dir>');
        requireFolder(opts.photos, '--photos');
        requireFolder(opts.generated, '--generated');
        if (opts.dinoModel) requireFile(opts.dinoModel, '--dino-model', 'an .onnx file');
        let bar: ReturnType<typeof progressBar> | null = null;
        const result = await evalFolders(opts, (done, total) => {
          bar ??= progressBar(opts, 'image', total);
          bar.update(done);
          emitJsonLine(opts, { event: 'progress', stage: 'embed', done, total });
        });
        (bar as ReturnType<typeof progressBar> | null)?.stop();
        printResult(opts, result, () => formatResult(result));
      }),
    );
}

function formatResult(r: EvalFoldersResult): string {
  const lines = [
    `DINO subject fidelity: ${r.dino.toFixed(4)} (mean cosine over ${r.pairs} pairs: ${r.generated} generated × ${r.photos} photos)`,
    `model: ${r.model}, ${r.msPerImage.toFixed(1)} ms/image`,
    '',
    'per generated image (mean cosine to the photos):',
    ...r.perImage.map((p) => `  ${p.meanCosine.toFixed(4)}  ${p.file}`),
  ];
  if (r.clip && 'skipped' in r.clip) lines.push('', `CLIP: skipped: ${r.clip.skipped}`);
  else if (r.clip)
    lines.push(
      '',
      `CLIP-I: ${r.clip.clipI.toFixed(4)}`,
      `CLIP-T: ${r.clip.clipT === null ? 'n/a (no prompts: pass --prompt or use PNGs with a parameters chunk)' : r.clip.clipT.toFixed(4)}`,
    );
  return lines.join('\n');
}

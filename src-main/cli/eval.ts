/**
 * `singlora eval --photos <dir> --generated <dir>`: subject fidelity of a folder of generated images
 * against a folder of subject photos (DreamBooth's DINO metric: mean CLS cosine over all pairs),
 * plus CLIP-I / CLIP-T with `--clip` when the CLIP models are installed.
 *
 * `singlora eval --run <dir>` scores the base model and each checkpoint of a training run on the
 * fixed prompt set and stores the table and the pick in the run's run.json.
 */
import type { Command } from 'commander';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { extname, join } from 'node:path';
import { clipScores, ClipModels, type ClipScores } from '../engine/eval/clip.ts';
import { DinoEmbedder } from '../engine/eval/dino.ts';
import { locateClip, locateDino } from '../engine/eval/modelRegistry.ts';
import { scoreSubjectFidelity, type SubjectFidelity } from '../engine/eval/similarity.ts';
import { getPngText } from '../engine/image/pngText.ts';
import { defaultModelsDir } from '../engine/paths.ts';
import { evaluateRun } from '../engine/eval/evaluateRun.ts';
import { action, emitJsonLine, printResult, progressBar, startBackend, withCommon, type GlobalOptions, inferenceOptions, withInference, type InferenceCliOptions } from './common.ts';

interface EvalOptions extends GlobalOptions, InferenceCliOptions {
  photos?: string;
  generated?: string;
  run?: string;
  dinoModel?: string;
  modelsDir?: string;
  batchSize?: string;
  clip?: boolean;
  prompt?: string;
  checkpoints?: string;
  prompts?: string;
  imagesPerPrompt?: string;
  steps?: string;
  subject?: string;
}

import { IMAGE_EXTENSIONS, isImageExtension } from '../api/schemas.ts';

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
  return lines.slice(0, end < 0 ? lines.length : end).join('\n').trim();
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

export async function evalFolders(opts: EvalOptions, onProgress?: (done: number, total: number) => void): Promise<EvalFoldersResult> {
  if (!opts.photos || !opts.generated) throw new Error('eval needs --photos <dir> and --generated <dir> (or --run <dir>)');
  const photos = listImageFiles(opts.photos);
  const generated = listImageFiles(opts.generated);
  const modelsDir = opts.modelsDir ?? defaultModelsDir();
  const model = locateDino(modelsDir, opts.dinoModel);
  const batchSize = opts.batchSize ? Number(opts.batchSize) : undefined;
  const embedder = await DinoEmbedder.load(model, { batchSize });
  const t0 = performance.now();
  let fidelity: SubjectFidelity;
  try {
    fidelity = await scoreSubjectFidelity(embedder, generated, photos, onProgress);
  } finally {
    await embedder.release();
  }
  const msPerImage = (performance.now() - t0) / (photos.length + generated.length);
  const result: EvalFoldersResult = { ...fidelity, photos: photos.length, generated: generated.length, model, msPerImage };
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

/** `singlora eval --run <dir>`: scores the base model and every checkpoint (or the latest) on the fixed prompt set. */
async function evalRun(opts: EvalOptions): Promise<void> {
  await startBackend(opts);
  let bar: ReturnType<typeof progressBar> | null = null;
  const prompts = opts.prompts && opts.prompts !== 'default' ? readPromptFile(opts.prompts) : undefined;
  const evaluation = await evaluateRun(
    {
      runDir: opts.run!,
      photos: opts.photos,
      checkpoints: opts.checkpoints === 'latest' ? 'latest' : 'all',
      prompts,
      imagesPerPrompt: opts.imagesPerPrompt ? Number(opts.imagesPerPrompt) : undefined,
      steps: opts.steps ? Number(opts.steps) : undefined,
      subjectType: opts.subject === 'object' ? 'object' : 'live',
      dinoModel: opts.dinoModel,
      modelsDir: opts.modelsDir,
      clip: opts.clip !== false,
      inference: inferenceOptions(opts),
    },
    {
      onProgress: (done, total, label) => {
        bar ??= progressBar(opts, 'image', total);
        bar.update(done, { at: label });
        emitJsonLine(opts, { event: 'progress', stage: 'generate', done, total, label });
      },
    },
  );
  (bar as ReturnType<typeof progressBar> | null)?.stop();
  printResult(opts, { event: 'result', ...evaluation }, () => {
    const row = (label: string, r: { dino: number; clipT: number | null; images: number }, mark = '') => `  ${label.padEnd(12)} ${r.dino.toFixed(4)}   ${r.clipT === null ? '   n/a' : r.clipT.toFixed(4)}   ${String(r.images).padStart(4)}${mark}`;
    return [
      `evaluation of ${opts.run}: ${evaluation.prompts.length} prompts x ${evaluation.imagesPerPrompt} images`,
      '  checkpoint   DINO     CLIP-T   images',
      row('base', evaluation.baseline),
      ...evaluation.rows.map((r) => row(`step ${r.step}`, r, r.step === evaluation.best ? '   <- best' : '')),
      `rule: ${evaluation.rule}`,
    ].join('\n');
  });
}

function readPromptFile(file: string): string[] {
  const lines = readFileSync(file, 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  if (!lines.length) throw new Error(`${file}: no prompts (one per line; # starts a comment)`);
  return lines;
}

export function register(program: Command): void {
  withInference(withCommon(program.command('eval').description('score generated images against subject photos (DINO subject fidelity; CLIP-I/CLIP-T with --clip)')))
    .option('--photos <dir>', 'folder of subject photos')
    .option('--generated <dir>', 'folder of generated images')
    .option('--run <dir>', 'score the base model and every checkpoint of a training run on the fixed prompt set')
    .option('--checkpoints <which>', 'with --run: all | latest', 'all')
    .option('--prompts <default|file>', 'with --run: the fixed prompt set, or a file with one prompt per line', 'default')
    .option('--images-per-prompt <n>', 'with --run: images per prompt (default 4)')
    .option('--steps <n>', 'with --run: sampling steps per image (default 25)')
    .option('--subject <type>', 'with --run: object | live (chooses the prompt set)', 'live')
    .option('--dino-model <file.onnx>', 'DINO ONNX model (default: <models-dir>/dino/model.onnx)')
    .option('--models-dir <dir>', 'models folder (default: SINGLORA_MODELS_DIR or <repo>/models)')
    .option('--batch-size <n>', 'images per model run (default 8)')
    .option('--clip', 'also compute CLIP-I and CLIP-T (skipped with a message when the CLIP models are not installed)')
    .option('--prompt <text>', "prompt of every generated image, for CLIP-T (default: each PNG's `parameters` chunk)")
    .action(
      action(async (opts: EvalOptions) => {
        if (opts.run) return evalRun(opts);
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
  else if (r.clip) lines.push('', `CLIP-I: ${r.clip.clipI.toFixed(4)}`, `CLIP-T: ${r.clip.clipT === null ? 'n/a (no prompts: pass --prompt or use PNGs with a parameters chunk)' : r.clip.clipT.toFixed(4)}`);
  return lines.join('\n');
}

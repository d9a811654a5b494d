/**
 * `singlora eval --photos <dir> --generated <dir>`: subject fidelity of a folder of generated images
 * against a folder of subject photos (DreamBooth's DINO metric: mean CLS cosine over all pairs),
 * plus CLIP-I / CLIP-T with `--clip` when the CLIP models are installed.
 *
 * `singlora eval --run <dir>` (score every checkpoint of a training run on the fixed prompt set)
 * needs the generator; it is a marked entry point that says so.
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
import { action, emitJsonLine, printResult, progressBar, withCommon, type GlobalOptions } from './common.ts';

interface EvalOptions extends GlobalOptions {
  photos?: string;
  generated?: string;
  run?: string;
  dinoModel?: string;
  modelsDir?: string;
  batchSize?: string;
  clip?: boolean;
  prompt?: string;
}

export const IMAGE_EXTENSIONS = ['.png', '.jpg', '.jpeg', '.webp', '.avif', '.tif', '.tiff', '.gif', '.heic', '.heif'];

/** Image files directly in `dir` (not recursive, no hidden files), sorted by name. */
export function listImageFiles(dir: string): string[] {
  let names: string[];
  try {
    if (!statSync(dir).isDirectory()) throw new Error(`${dir} is not a folder`);
    names = readdirSync(dir);
  } catch (err) {
    throw new Error(`cannot read the folder ${dir}: ${(err as Error).message}`);
  }
  const files = names.filter((n) => !n.startsWith('.') && IMAGE_EXTENSIONS.includes(extname(n).toLowerCase())).sort();
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

/**
 * TODO(lead): `singlora eval --run <dir>`: for each checkpoint of the run, generate the fixed prompt
 * set (eval/prompts.ts: evalJobs, EVAL_SEEDS) with the adapter applied, then score with
 * scoreSubjectFidelity against the run's subject photos. Needs the generator.
 */
export async function evalRun(runDir: string): Promise<never> {
  throw new Error(`eval --run ${runDir}: not implemented yet (needs the image generator); score folders with --photos <dir> --generated <dir>`);
}

export function register(program: Command): void {
  withCommon(program.command('eval').description('score generated images against subject photos (DINO subject fidelity; CLIP-I/CLIP-T with --clip)'))
    .option('--photos <dir>', 'folder of subject photos')
    .option('--generated <dir>', 'folder of generated images')
    .option('--run <dir>', 'score every checkpoint of a training run (not implemented yet)')
    .option('--dino-model <file.onnx>', 'DINO ONNX model (default: <models-dir>/dino/model.onnx)')
    .option('--models-dir <dir>', 'models folder (default: SINGLORA_MODELS_DIR or <repo>/models)')
    .option('--batch-size <n>', 'images per model run (default 8)')
    .option('--clip', 'also compute CLIP-I and CLIP-T (skipped with a message when the CLIP models are not installed)')
    .option('--prompt <text>', "prompt of every generated image, for CLIP-T (default: each PNG's `parameters` chunk)")
    .action(
      action(async (opts: EvalOptions) => {
        if (opts.run) await evalRun(opts.run);
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

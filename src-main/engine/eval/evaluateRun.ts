/**
 * Scoring a training run's checkpoints, as the DreamBooth paper evaluates subject fidelity:
 *
 *   1. a fixed prompt set for the subject type (eval/prompts.ts), fixed images per prompt and
 *      fixed seeds, generated with the base model (the baseline) and with each checkpoint
 *   2. DINO = mean cosine between the CLS embeddings of every generated image and every subject
 *      photo; CLIP-T (mean image-prompt cosine) when the CLIP models are installed
 *   3. the pick: the highest DINO; with CLIP-T, only among checkpoints whose CLIP-T stays within
 *      `clipMargin` of the baseline's, so an overfit adapter that ignores the prompt loses
 *
 * The table goes into run.json (`evaluation`), where the CLI and the app read it; a user's own
 * choice is kept in `evaluation.chosen`. Generated images stay under `<run>/eval/<label>/`.
 *
 * `scorer: 'toy'` (the toy model, models/toy-sd, when no DINO is installed) keeps the same steps
 * with the toy world's pixel score (toyFidelity.ts) in DINO's place (`metric: 'toy'`), its probe
 * prompts ("a photo of sks ball on a green background") and its sampling (toyEvaluate.ts).
 */
import { join } from 'node:path';
import { ensureDir } from '../io/atomic.ts';
import type { Evaluation, ScoreRow } from '../../api/schemas.ts';
import { listPhotos } from '../train/dataset.ts';
import { readRunManifest, writeRunManifest } from '../train/runFiles.ts';
import type { OpenBaseModelOptions } from '../io/modelFiles.ts';
import { StableDiffusion, type InferenceOptions } from '../pipeline/stableDiffusion.ts';
import { generateImages } from '../pipeline/generate.ts';
import { defaultModelsDir } from '../paths.ts';
import { ClipModels, clipScores } from './clip.ts';
import { DinoEmbedder } from './dino.ts';
import { locateClip, locateDino } from './modelRegistry.ts';
import { EVAL_PROMPT_SET_VERSION, EVAL_SEEDS, evalJobs, IMAGES_PER_PROMPT, type SubjectKind } from './prompts.ts';
import { subjectFidelity } from './similarity.ts';
import { readToyPhotos, TOY_PROBES, TOY_SAMPLING } from './toyEvaluate.ts';
import { subjectFidelity as toySubjectFidelity } from './toyFidelity.ts';

/** How far below the baseline's CLIP-T a checkpoint may fall and still be picked. */
export const DEFAULT_CLIP_MARGIN = 0.02;

export interface EvaluateRunOptions {
  runDir: string;
  /** Subject photos (folder or files); default: the photos the run used. */
  photos?: string | readonly string[];
  /** Base model; default: the one in run.json. */
  base?: string;
  /** How to open a single-file base (its `configDir`). */
  baseOptions?: OpenBaseModelOptions;
  checkpoints?: 'all' | 'latest';
  subjectType?: SubjectKind;
  /** Prompts (with the trigger already filled in); default: the fixed set for the subject type. */
  prompts?: readonly string[];
  imagesPerPrompt?: number;
  /** Sampling for the evaluation images. */
  steps?: number;
  scheduler?: 'ddim' | 'dpmpp-2m' | 'dpmpp-2m-karras' | 'euler-a' | 'euler' | 'pndm';
  dinoModel?: string;
  /** 'dino' (default), or 'toy': the toy world's pixel score, for the toy model (see above). */
  scorer?: 'dino' | 'toy';
  modelsDir?: string;
  /** Use CLIP-T when the CLIP models are present (default true). */
  clip?: boolean;
  clipMargin?: number;
  /** Engine and provider for the evaluation images (default: ONNX Runtime, auto provider). */
  inference?: InferenceOptions;
}

export interface EvaluateHooks {
  onProgress?: (done: number, total: number, label: string) => void;
  signal?: AbortSignal;
}

export async function evaluateRun(o: EvaluateRunOptions, hooks: EvaluateHooks = {}): Promise<Evaluation> {
  const manifest = await readRunManifest(o.runDir);
  const ckpts = manifest.checkpoints.slice().sort((a, b) => a.step - b.step);
  if (!ckpts.length) throw new Error(`${o.runDir}: the run has no checkpoints to evaluate yet`);
  const chosen = o.checkpoints === 'latest' ? [ckpts[ckpts.length - 1]] : ckpts;
  const s = manifest.settings;
  const resolution = s.resolution;
  const perPrompt = o.imagesPerPrompt ?? IMAGES_PER_PROMPT;
  if (!Number.isInteger(perPrompt) || perPrompt < 1 || perPrompt > EVAL_SEEDS.length * 4)
    throw new Error(`imagesPerPrompt must be an integer from 1 to ${EVAL_SEEDS.length * 4}, got ${perPrompt}`);
  const toy = o.scorer === 'toy';
  const prompts = o.prompts?.length
    ? [...o.prompts]
    : toy
      ? TOY_PROBES.map((p) => p.prompt.replace('sks ball', `${s.triggerToken} ${s.classWord}`))
      : [...new Set(evalJobs(o.subjectType ?? 'live', s.triggerToken, s.classWord).map((j) => j.prompt))];
  const seeds = Array.from(
    { length: perPrompt },
    (_, i) => EVAL_SEEDS[i % EVAL_SEEDS.length] + Math.floor(i / EVAL_SEEDS.length),
  );
  const photos = o.photos ? await listPhotos(o.photos) : manifest.images.used.filter((f) => !f.includes('#'));
  if (!photos.length) throw new Error(`${o.runDir}: no subject photos to compare with (pass --photos)`);

  const modelsDir = o.modelsDir ?? defaultModelsDir();
  const dino = toy ? null : await DinoEmbedder.load(locateDino(modelsDir, o.dinoModel));
  let clip: ClipModels | null = null;
  if (o.clip !== false && !toy) {
    const located = locateClip(modelsDir);
    if ('files' in located) clip = await ClipModels.load(located.files);
  }

  const sd = await StableDiffusion.load(o.base ?? manifest.baseModel.path, { ...o.baseOptions, ...o.inference });
  const labels = ['base', ...chosen.map((c) => `step-${String(c.step).padStart(6, '0')}`)];
  const total = labels.length * prompts.length * perPrompt;
  let done = 0;
  try {
    const subjectEmbeddings = dino ? await dino.embed(photos) : [];
    const subject = photos.map((file, i) => ({ file, embedding: subjectEmbeddings[i] }));
    const toyPhotos = toy ? await readToyPhotos(photos) : [];
    const sampling = toy
      ? {
          steps: o.steps ?? TOY_SAMPLING.steps,
          scheduler: o.scheduler ?? TOY_SAMPLING.scheduler,
          guidanceScale: TOY_SAMPLING.guidanceScale,
        }
      : { steps: o.steps ?? 25, scheduler: o.scheduler ?? 'dpmpp-2m', guidanceScale: 7.5 };
    const rows: ScoreRow[] = [];
    for (let k = 0; k < labels.length; k++) {
      const ckpt = k === 0 ? null : chosen[k - 1];
      const outDir = join(o.runDir, 'eval', labels[k]);
      await ensureDir(outDir);
      const generated: Array<{ file: string; prompt: string }> = [];
      for (const prompt of prompts) {
        for (const seed of seeds) {
          if (hooks.signal?.aborted) throw new Error('evaluation cancelled');
          const [img] = await generateImages(
            {
              base: sd.path,
              sd,
              settings: {
                prompt,
                seed,
                ...sampling,
                width: resolution ?? sd.defaultResolution,
                height: resolution ?? sd.defaultResolution,
              },
              adapters: ckpt ? [{ path: join(o.runDir, ckpt.adapter), strength: 1 }] : [],
              outDir,
            },
            { signal: hooks.signal },
          );
          generated.push({ file: img.file, prompt });
          hooks.onProgress?.(++done, total, labels[k]);
        }
      }
      let score: number;
      if (dino) {
        const emb = await dino.embed(generated.map((g) => g.file));
        score = subjectFidelity(
          generated.map((g, i) => ({ file: g.file, embedding: emb[i] })),
          subject,
        ).dino;
      } else {
        score = toySubjectFidelity(await readToyPhotos(generated.map((g) => g.file)), toyPhotos);
      }
      const clipT = clip ? (await clipScores(clip, generated, photos)).clipT : null;
      rows.push({ step: ckpt ? ckpt.step : null, dino: score, clipT, images: generated.length });
    }
    const baseline = rows[0];
    const scored = rows.slice(1);
    const picked = pickBest(baseline, scored, o.clipMargin ?? DEFAULT_CLIP_MARGIN);
    const { best } = picked;
    const rule = toy
      ? "highest toy subject fidelity (no DINO installed: the toy world's score of colours and their layout, docs/experiments.md)"
      : picked.rule;
    const fresh = await readRunManifest(o.runDir);
    const previousChoice = fresh.evaluation?.chosen ?? null;
    const evaluation: Evaluation = {
      createdAt: new Date().toISOString(),
      ...(toy ? { metric: 'toy' as const } : {}),
      prompts,
      imagesPerPrompt: perPrompt,
      seeds,
      baseline,
      // Earlier rows only when they were scored the same way.
      rows: mergeRows(
        o.checkpoints === 'latest' && (fresh.evaluation?.metric ?? 'dino') === (toy ? 'toy' : 'dino')
          ? (fresh.evaluation?.rows ?? [])
          : [],
        scored,
      ),
      best,
      rule: `${rule}; ${o.prompts?.length ? `${prompts.length} prompts given by the caller` : toy ? `the ${prompts.length} toy probe prompts` : `prompt set v${EVAL_PROMPT_SET_VERSION}`}`,
      chosen: previousChoice !== null && scored.some((r) => r.step === previousChoice) ? previousChoice : null,
    };
    await writeRunManifest(o.runDir, { ...fresh, evaluation });
    return evaluation;
  } finally {
    sd.dispose();
    await clip?.release();
    await dino?.release();
  }
}

/**
 * The rule: the highest DINO; when CLIP-T was measured, only among checkpoints whose CLIP-T is at
 * least the baseline's minus `margin` (when none is, all of them compete).
 */
export function pickBest(
  baseline: ScoreRow,
  rows: readonly ScoreRow[],
  margin = DEFAULT_CLIP_MARGIN,
): { best: number | null; rule: string } {
  if (!rows.length) return { best: null, rule: 'no checkpoints scored' };
  const withClip = baseline.clipT !== null && rows.some((r) => r.clipT !== null);
  const eligible = withClip ? rows.filter((r) => r.clipT !== null && r.clipT >= baseline.clipT! - margin) : rows;
  const pool = eligible.length ? eligible : rows;
  const best = pool.reduce((a, b) => (b.dino > a.dino ? b : a)).step;
  const rule = withClip
    ? `highest DINO among checkpoints whose CLIP-T is within ${margin} of the base model's (${baseline.clipT!.toFixed(4)})${eligible.length ? '' : '; none was, so all competed'}`
    : 'highest DINO (CLIP models not installed, so prompt fidelity is not checked)';
  return { best, rule };
}

/** Keeps earlier rows for checkpoints not re-scored (a `latest` evaluation adds one row). */
function mergeRows(previous: readonly ScoreRow[], fresh: readonly ScoreRow[]): ScoreRow[] {
  const byStep = new Map(previous.map((r) => [r.step, r]));
  for (const r of fresh) byStep.set(r.step, r);
  return [...byStep.values()].sort((a, b) => (a.step ?? -1) - (b.step ?? -1));
}

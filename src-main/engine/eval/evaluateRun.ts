/**
 * Scoring a training run's checkpoints, as the DreamBooth paper evaluates subject fidelity:
 *
 *   1. a fixed prompt set for the subject type (eval/prompts.ts), fixed images per prompt and
 *      fixed seeds, generated with the base model (the baseline) and with each checkpoint
 *   2. DINO = mean cosine between the CLS embeddings of every generated image and every subject
 *      photo; CLIP-T (mean image-prompt cosine) when the CLIP models are installed
 *   3. the noise band, measured: twice the standard error of the base model's mean score over its
 *      images (`noiseBand`); a checkpoint counts as better than the base model only above it
 *   4. the pick: the highest DINO; with CLIP-T, only among checkpoints whose CLIP-T stays within
 *      `clipMargin` of the baseline's, so an overfit adapter that ignores the prompt loses; and
 *      only when it beats the base model by more than the noise band. Otherwise none (`best: null`)
 *      with a `reason` and a `suggestion`: an adapter that learned nothing is never the pick.
 *
 * The table goes into run.json (`evaluation`), where the CLI and the app read it; a user's own
 * choice is kept in `evaluation.chosen`. Generated images stay under `<run>/eval/<label>/`.
 *
 * `scorer: 'toy'` (the toy model, models/toy-sd, when no DINO is installed) keeps the same steps
 * with the toy world's pixel score (toyFidelity.ts) in DINO's place (`metric: 'toy'`), probes made
 * from the run ("a photo of <token> <class> on a <colour> background", on backgrounds none of the
 * photos show; toyEvaluate.ts `toyProbes`), its sampling, and each row's `prompt`: the share of
 * images with the background the prompt asked for.
 */
import { join } from 'node:path';
import { ensureDir } from '../io/atomic.ts';
import type { Evaluation, ScoreRow } from '../../api/schemas.ts';
import { listPhotos } from '../train/dataset.ts';
import { checkpointName, readRunManifest, runBasePath, runPhotoPaths, writeRunManifest } from '../train/runFiles.ts';
import type { OpenBaseModelOptions } from '../io/modelFiles.ts';
import { StableDiffusion, type InferenceOptions } from '../pipeline/stableDiffusion.ts';
import { generateImages } from '../pipeline/generate.ts';
import { defaultModelsDir } from '../paths.ts';
import type { ColourName, ToyImage } from '../toy/toyWorld.ts';
import { ClipModels, clipScores } from './clip.ts';
import { DinoEmbedder } from './dino.ts';
import { locateClip, locateDino } from './modelRegistry.ts';
import { DEFAULT_CLIP_MARGIN, noiseBand, pickBest } from './pickBest.ts';
import { EVAL_PROMPT_SET_VERSION, EVAL_SEEDS, evalJobs, IMAGES_PER_PROMPT, type SubjectKind } from './prompts.ts';
import { type EmbeddedImage, subjectFidelity } from './similarity.ts';
import { readToyPhotos, requestedBackground, TOY_SAMPLING, toyProbes } from './toyEvaluate.ts';
import { promptFidelity, subjectScores as toySubjectScores } from './toyFidelity.ts';

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
  const plan = await planEvaluation(o);
  const { dino, clip } = await loadScorers(o, plan.toy);
  const { manifest } = plan;
  const base = o.base ?? runBasePath(manifest, o.modelsDir ?? defaultModelsDir());
  const sd = await StableDiffusion.load(base, { ...o.baseOptions, ...o.inference });
  const progress = { done: 0, total: plan.labels.length * plan.prompts.length * plan.seeds.length };
  try {
    const subjectEmbeddings = dino ? await dino.embed(plan.photos) : [];
    const subject = plan.photos.map((file, i) => ({ file, embedding: subjectEmbeddings[i] }));
    const rows: ScoreRow[] = [];
    let baseScores: number[] = [];
    for (let k = 0; k < plan.labels.length; k++) {
      const ckpt = k === 0 ? null : plan.chosen[k - 1];
      const generated = await generateFor(o, plan, sd, k, progress, hooks);
      const scored = await scoreImages(generated, dino ? { dino, subject } : { toyPhotos: plan.toyPhotos });
      const clipT = clip ? (await clipScores(clip, generated, plan.photos)).clipT : null;
      if (k === 0) baseScores = scored.perImage;
      rows.push({
        step: ckpt ? ckpt.step : null,
        dino: scored.score,
        clipT,
        images: generated.length,
        ...(scored.prompt !== null ? { prompt: scored.prompt } : {}),
      });
    }
    return await recordEvaluation(o, plan, rows, baseScores);
  } finally {
    sd.dispose();
    await clip?.release();
    await dino?.release();
  }
}

type RunManifest = Awaited<ReturnType<typeof readRunManifest>>;
type Checkpoint = RunManifest['checkpoints'][number];

/** What an evaluation generates and scores: checkpoints, labels, seeds, photos, prompts, sampling. */
interface EvaluationPlan {
  manifest: RunManifest;
  chosen: Checkpoint[];
  labels: string[];
  seeds: number[];
  photos: string[];
  toy: boolean;
  toyPhotos: ToyImage[];
  prompts: string[];
  sampling: { steps: number; scheduler: NonNullable<EvaluateRunOptions['scheduler']>; guidanceScale: number };
}

async function planEvaluation(o: EvaluateRunOptions): Promise<EvaluationPlan> {
  const manifest = await readRunManifest(o.runDir);
  const ckpts = manifest.checkpoints.slice().sort((a, b) => a.step - b.step);
  if (!ckpts.length) throw new Error(`${o.runDir}: the run has no checkpoints to evaluate yet`);
  const chosen = o.checkpoints === 'latest' ? [ckpts[ckpts.length - 1]] : ckpts;
  const s = manifest.settings;
  const perPrompt = o.imagesPerPrompt ?? IMAGES_PER_PROMPT;
  if (!Number.isInteger(perPrompt) || perPrompt < 1 || perPrompt > EVAL_SEEDS.length * 4)
    throw new Error(`imagesPerPrompt must be an integer from 1 to ${EVAL_SEEDS.length * 4}, got ${perPrompt}`);
  const toy = o.scorer === 'toy';
  const seeds = Array.from(
    { length: perPrompt },
    (_, i) => EVAL_SEEDS[i % EVAL_SEEDS.length] + Math.floor(i / EVAL_SEEDS.length),
  );
  const photos = o.photos
    ? await listPhotos(o.photos)
    : runPhotoPaths(o.runDir, manifest).filter((f) => !f.includes('#'));
  if (!photos.length) throw new Error(`${o.runDir}: no subject photos to compare with (pass --photos)`);
  const toyPhotos = toy ? await readToyPhotos(photos) : [];
  const prompts = o.prompts?.length
    ? [...o.prompts]
    : toy
      ? toyProbes(s.triggerToken, s.classWord, toyPhotos).map((p) => p.prompt)
      : [...new Set(evalJobs(o.subjectType ?? 'live', s.triggerToken, s.classWord).map((j) => j.prompt))];
  const sampling = toy
    ? {
        steps: o.steps ?? TOY_SAMPLING.steps,
        scheduler: o.scheduler ?? TOY_SAMPLING.scheduler,
        guidanceScale: TOY_SAMPLING.guidanceScale,
      }
    : { steps: o.steps ?? 25, scheduler: o.scheduler ?? 'dpmpp-2m', guidanceScale: 7.5 };
  const labels = ['base', ...chosen.map((c) => checkpointName(c.step))];
  return { manifest, chosen, labels, seeds, photos, toy, toyPhotos, prompts, sampling };
}

/** DINO (unless the toy score is used) and CLIP-T (when asked for and installed). */
async function loadScorers(o: EvaluateRunOptions, toy: boolean) {
  const modelsDir = o.modelsDir ?? defaultModelsDir();
  const dino = toy ? null : await DinoEmbedder.load(locateDino(modelsDir, o.dinoModel));
  let clip: ClipModels | null = null;
  if (o.clip !== false && !toy) {
    const located = locateClip(modelsDir);
    if ('files' in located) clip = await ClipModels.load(located.files);
  }
  return { dino, clip };
}

/** The images of one label (k = 0: the base model; else checkpoint k - 1), every prompt and seed. */
async function generateFor(
  o: EvaluateRunOptions,
  plan: EvaluationPlan,
  sd: StableDiffusion,
  k: number,
  progress: { done: number; total: number },
  hooks: EvaluateHooks,
): Promise<Array<{ file: string; prompt: string }>> {
  const ckpt = k === 0 ? null : plan.chosen[k - 1];
  const outDir = join(o.runDir, 'eval', plan.labels[k]);
  await ensureDir(outDir);
  const size = plan.manifest.settings.resolution ?? sd.defaultResolution;
  const generated: Array<{ file: string; prompt: string }> = [];
  for (const prompt of plan.prompts) {
    for (const seed of plan.seeds) {
      if (hooks.signal?.aborted) throw new Error('evaluation cancelled');
      const [img] = await generateImages(
        {
          base: sd.path,
          sd,
          settings: { prompt, seed, ...plan.sampling, width: size, height: size },
          adapters: ckpt ? [{ path: join(o.runDir, ckpt.adapter), strength: 1 }] : [],
          outDir,
        },
        { signal: hooks.signal },
      );
      generated.push({ file: img.file, prompt });
      hooks.onProgress?.(++progress.done, progress.total, plan.labels[k]);
    }
  }
  return generated;
}

/** The pick over the scored rows, written into run.json (`evaluation`), a user's earlier choice kept. */
async function recordEvaluation(
  o: EvaluateRunOptions,
  plan: EvaluationPlan,
  rows: ScoreRow[],
  baseScores: number[],
): Promise<Evaluation> {
  const { toy, prompts } = plan;
  const baseline = rows[0];
  const scored = rows.slice(1);
  const band = noiseBand(baseScores);
  const picked = pickBest(baseline, scored, {
    noiseBand: band,
    clipMargin: o.clipMargin ?? DEFAULT_CLIP_MARGIN,
    metric: toy ? 'toy' : 'dino',
  });
  const fresh = await readRunManifest(o.runDir);
  const previousChoice = fresh.evaluation?.chosen ?? null;
  const sameMetric = (fresh.evaluation?.metric ?? 'dino') === (toy ? 'toy' : 'dino');
  const promptSet = o.prompts?.length
    ? `${prompts.length} prompts given by the caller`
    : toy
      ? `the ${prompts.length} toy probe prompts`
      : `prompt set v${EVAL_PROMPT_SET_VERSION}`;
  const evaluation: Evaluation = {
    createdAt: new Date().toISOString(),
    ...(toy ? { metric: 'toy' as const } : {}),
    prompts,
    imagesPerPrompt: plan.seeds.length,
    seeds: plan.seeds,
    baseline,
    // Earlier rows only when they were scored the same way.
    rows: mergeRows(o.checkpoints === 'latest' && sameMetric ? (fresh.evaluation?.rows ?? []) : [], scored),
    noiseBand: band,
    best: picked.best,
    reason: picked.reason,
    suggestion: picked.suggestion,
    rule: `${picked.rule}; ${promptSet}`,
    chosen: previousChoice !== null && scored.some((r) => r.step === previousChoice) ? previousChoice : null,
  };
  await writeRunManifest(o.runDir, { ...fresh, evaluation });
  return evaluation;
}

/** One checkpoint's images scored: the mean, each image's score, and (toy) the share with the requested background. */
async function scoreImages(
  generated: ReadonlyArray<{ file: string; prompt: string }>,
  by: { dino: DinoEmbedder; subject: EmbeddedImage[] } | { toyPhotos: ToyImage[] },
): Promise<{ score: number; perImage: number[]; prompt: number | null }> {
  if ('dino' in by) {
    const emb = await by.dino.embed(generated.map((g) => g.file));
    const f = subjectFidelity(
      generated.map((g, i) => ({ file: g.file, embedding: emb[i] })),
      by.subject,
    );
    return { score: f.dino, perImage: f.perImage.map((p) => p.meanCosine), prompt: null };
  }
  const images = await readToyPhotos(generated.map((g) => g.file));
  const perImage = toySubjectScores(images, by.toyPhotos);
  const asked = generated
    .map((g, i) => ({ image: images[i], background: requestedBackground(g.prompt) }))
    .filter((g): g is { image: ToyImage; background: ColourName } => g.background !== null);
  return {
    score: perImage.reduce((a, b) => a + b, 0) / perImage.length,
    perImage,
    prompt: asked.length ? promptFidelity(asked) : null,
  };
}

/** Keeps earlier rows for checkpoints not re-scored (a `latest` evaluation adds one row). */
function mergeRows(previous: readonly ScoreRow[], fresh: readonly ScoreRow[]): ScoreRow[] {
  const byStep = new Map(previous.map((r) => [r.step, r]));
  for (const r of fresh) byStep.set(r.step, r);
  return [...byStep.values()].sort((a, b) => (a.step ?? -1) - (b.step ?? -1));
}

export { DEFAULT_CLIP_MARGIN, noiseBand, pickBest, type Pick } from './pickBest.ts';

/**
 * `npm run experiment`: SingLoRA vs LoRA on the toy model (models/toy-sd), the measurement the
 * SingLoRA paper makes on SD 1.5 DreamBooth, in a world a laptop CPU can train in.
 *
 * For each subject (the demo's sks ball, models/toy-sd-subject; the qrv triangle and others of
 * scripts/toy-subjects.ts) x method (singlora, lora) x rank (4, 8) x learning rate x training
 * seed, trains an adapter with the toy model's own defaults (models/toy-sd/singlora-defaults.json:
 * steps, ramp, background captions, checkpoint interval, alpha / rank) but for the swept fields,
 * and scores every checkpoint as `singlora eval` does with the toy metric: subject fidelity (the
 * colour score x the shape IoU, eval/toyFidelity.ts) and the share of images with the requested
 * background, on the probes of eval/toyEvaluate.ts at the defaults' sampling. Per run it keeps the
 * best checkpoint (eval/pickBest.ts: the highest score among checkpoints that keep the background)
 * and the final one; per setting, their mean and spread over the training seeds; then which
 * differences are larger than the seed noise (experimentStats.ts).
 *
 * Writes docs/experiments/results.json after every run (a rerun with the same configuration skips
 * the runs it holds; --fresh starts over), then the plot docs/experiments/fidelity-vs-lr.png and
 * the tables between the results markers of docs/experiments.md.
 *
 *   nice -n 5 npx tsx scripts/experiment.ts [--subjects sks-ball,qrv-triangle] [--methods singlora,lora]
 *     [--ranks 4,8] [--lrs 5e-4,1e-3,2e-3,4e-3] [--train-seeds 1,2,3] [--seeds 1001,2002,...]
 *     [--steps N] [--every N] [--fresh] [--report-only]
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ScoreRow } from '../src-main/api/schemas.ts';
import { readAdapterFile } from '../src-main/engine/adapters/adapterFile.ts';
import { initBackend } from '../src-main/engine/backend/tf.ts';
import { noiseBand, pickBest, TOY_PROMPT_FLOOR } from '../src-main/engine/eval/pickBest.ts';
import { readToyPhotos, scoreToyModel, toyProbes, type ToyProbe } from '../src-main/engine/eval/toyEvaluate.ts';
import { atomicWriteJson } from '../src-main/engine/io/atomic.ts';
import { readModelDefaults } from '../src-main/engine/io/modelDefaults.ts';
import { REPO_ROOT } from '../src-main/engine/paths.ts';
import { StableDiffusion } from '../src-main/engine/pipeline/stableDiffusion.ts';
import { TOY_MODEL_DIR, TOY_SUBJECT_DIR } from '../src-main/engine/toy/toyModel.ts';
import type { ToyImage } from '../src-main/engine/toy/toyWorld.ts';
import { train } from '../src-main/engine/train/trainer.ts';
import { listImageFiles } from '../src-main/cli/eval.ts';
import { writePlot, writeTable } from './experimentReport.ts';
import type { Base, Checkpoint, Results, Run } from './experimentStats.ts';
import { writeSubjectPhotos } from './toy-subjects.ts';

const OUT = join(REPO_ROOT, 'docs/experiments');
const RESULTS = join(OUT, 'results.json');

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
const list = (name: string, fallback: string) => arg(name, fallback).split(',');

/** The toy model's defaults, read at run start: the experiment's settings but for the swept fields. */
function toyDefaults() {
  const d = readModelDefaults(TOY_MODEL_DIR);
  if (!d?.training || !d.sampling)
    throw new Error(`experiment: ${TOY_MODEL_DIR}/singlora-defaults.json must have "training" and "sampling"`);
  const t = d.training;
  for (const k of ['steps', 'rank', 'alpha', 'checkpointEvery'] as const)
    if (typeof t[k] !== 'number')
      throw new Error(`experiment: ${TOY_MODEL_DIR}/singlora-defaults.json training.${k} must be a number`);
  return d;
}

function makeConfig() {
  const defaults = toyDefaults();
  return {
    defaults,
    subjects: list('--subjects', 'sks-ball,qrv-triangle'),
    methods: list('--methods', 'singlora,lora') as Array<'singlora' | 'lora'>,
    ranks: list('--ranks', '4,8').map(Number),
    lrs: list('--lrs', '5e-4,1e-3,2e-3,4e-3').map(Number),
    /** Training seeds (initialisation, photo order, noise, timesteps): every setting trains once per seed. */
    trainSeeds: list('--train-seeds', '1,2,3').map(Number),
    /** Evaluation seeds, one image per probe and seed: those of `singlora eval --images-per-prompt 6`. */
    seeds: list('--seeds', '1001,2002,3003,4004,1002,2003').map(Number),
    steps: Number(arg('--steps', String(defaults.training!.steps))),
    every: Number(arg('--every', String(defaults.training!.checkpointEvery))),
    /** alpha / rank as in the defaults (alpha follows the swept rank). */
    alphaPerRank: defaults.training!.alpha! / defaults.training!.rank!,
  };
}
type Config = ReturnType<typeof makeConfig>;

/** A subject: its token and class word, its photos' folder and pixels, and its probes. */
interface Subject {
  name: string;
  token: string;
  classWord: string;
  dir: string;
  photos: ToyImage[];
  probes: ToyProbe[];
}

async function loadSubjects(names: readonly string[], work: string): Promise<Subject[]> {
  const others = names.filter((n) => n !== 'sks-ball');
  const dirs = { 'sks-ball': TOY_SUBJECT_DIR, ...(await writeSubjectPhotos(join(work, 'photos'), others)) };
  return Promise.all(
    names.map(async (name) => {
      const [token, classWord] = name.split('-');
      const dir = dirs[name as keyof typeof dirs];
      const photos = await readToyPhotos(listImageFiles(dir));
      return { name, token, classWord, dir, photos, probes: toyProbes(token, classWord, photos) };
    }),
  );
}

/** The base model's score on a subject's probes, with its noise band (pickBest.ts `noiseBand`). */
async function scoreBase(sd: StableDiffusion, s: Subject, config: Config): Promise<Base> {
  const b = await scoreToyModel(sd, { photos: s.photos, probes: s.probes, seeds: config.seeds, ...sampling(config) });
  return {
    subject: b.subject,
    prompt: b.prompt,
    noiseBand: noiseBand(b.scores),
    probes: s.probes.map((p) => p.prompt),
  };
}

const sampling = (config: Config) => ({
  steps: config.defaults.sampling!.steps,
  guidanceScale: config.defaults.sampling!.guidanceScale,
});

/** Trains one run and scores its checkpoints. */
async function oneRun(
  sd: StableDiffusion,
  s: Subject,
  base: Base,
  key: Omit<Run, 'params' | 'checkpoints' | 'best' | 'pick' | 'finalLoss' | 'seconds' | 'subject'>,
  config: Config,
  work: string,
): Promise<Run> {
  const t = performance.now();
  const runDir = join(work, `${s.name}-${key.method}-r${key.rank}-lr${key.lr}-seed${key.seed}`);
  const { manifest } = await train({
    base: TOY_MODEL_DIR,
    photos: s.dir,
    runDir,
    settings: {
      ...config.defaults.training,
      method: key.method,
      rank: key.rank,
      alpha: key.rank * config.alphaPerRank,
      learningRate: key.lr,
      steps: config.steps,
      checkpointEvery: config.every,
      triggerToken: s.token,
      classWord: s.classWord,
      sampleEvery: 0,
      seed: key.seed,
    },
  });
  if (manifest.status !== 'completed')
    throw new Error(`${runDir}: training ended ${manifest.status}: ${manifest.error}`);
  const file = await readAdapterFile(join(runDir, manifest.checkpoints[0].adapter));
  let params = 0;
  for (const tensors of file.targets.values()) for (const v of Object.values(tensors)) params += v.data.length;
  const checkpoints: Checkpoint[] = [];
  for (const c of manifest.checkpoints) {
    const r = await scoreToyModel(sd, {
      photos: s.photos,
      probes: s.probes,
      seeds: config.seeds,
      adapter: join(runDir, c.adapter),
      ...sampling(config),
    });
    checkpoints.push({ step: c.step, subject: r.subject, prompt: r.prompt });
  }
  await rm(runDir, { recursive: true, force: true });
  const { best, pick } = bestCheckpoint(base, checkpoints);
  return {
    subject: s.name,
    ...key,
    params,
    checkpoints,
    best,
    pick,
    finalLoss: manifest.losses[manifest.losses.length - 1].smoothed,
    seconds: (performance.now() - t) / 1000,
  };
}

/**
 * The run's best checkpoint: the highest subject score among the checkpoints that keep the
 * requested background in at least min(TOY_PROMPT_FLOOR, the base model's share) of their images
 * (the pick rule of eval/pickBest.ts without its noise band; the highest of all when none keeps
 * it), and the rule's pick itself (null: no checkpoint beats the base model by more than its band).
 */
function bestCheckpoint(base: Base, checkpoints: Checkpoint[]): { best: number; pick: number | null } {
  const floor = Math.min(TOY_PROMPT_FLOOR, base.prompt);
  const kept = checkpoints.filter((c) => c.prompt >= floor);
  const pool = kept.length ? kept : checkpoints;
  const best = pool.reduce((a, b) => (b.subject > a.subject ? b : a)).step;
  const row = (c: { step: number | null; subject: number; prompt: number }): ScoreRow => ({
    step: c.step,
    dino: c.subject,
    clipT: null,
    images: 0,
    prompt: c.prompt,
  });
  const pick = pickBest(row({ ...base, step: null }), checkpoints.map(row), {
    noiseBand: base.noiseBand,
    metric: 'toy',
  }).best;
  return { best, pick };
}

/** The results of an earlier run with the same configuration (to skip its runs), or none. */
function earlierResults(config: Config): Results | null {
  if (process.argv.includes('--fresh') || !existsSync(RESULTS)) return null;
  const r = JSON.parse(readFileSync(RESULTS, 'utf8')) as Results;
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  const fixed = (c: Config) => [c.defaults, c.seeds, c.steps, c.every, c.alphaPerRank];
  if (!r.config || !same(fixed(r.config as Config), fixed(config))) {
    console.log(`experiment: ${RESULTS} was made with another configuration; starting over`);
    return null;
  }
  return r;
}

async function main(): Promise<void> {
  const config = makeConfig();
  const earlier = earlierResults(config);
  if (process.argv.includes('--report-only')) {
    if (!earlier) throw new Error(`experiment: --report-only needs ${RESULTS} made with this configuration`);
    // --train-seeds narrows the report to those seeds' runs (e.g. whole seeds of a run cut short).
    const seeds = process.argv.includes('--train-seeds') ? config.trainSeeds : earlier.config.trainSeeds;
    const runs = earlier.runs.filter((r) => seeds.includes(r.seed));
    return report({ ...earlier, config: { ...earlier.config, trainSeeds: seeds }, runs });
  }
  if (!existsSync(join(TOY_MODEL_DIR, 'unet/diffusion_pytorch_model.safetensors')))
    throw new Error(`experiment: the toy model is missing from ${TOY_MODEL_DIR}; run npm run build:toy-model`);
  const backend = await initBackend();
  const t0 = performance.now();
  console.log(
    `experiment: backend ${backend.name}; load ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
  );
  console.log(`experiment: the toy model's defaults ${JSON.stringify(config.defaults)}`);
  console.log(`experiment: config ${JSON.stringify({ ...config, defaults: undefined })}`);
  const work = join(tmpdir(), `singlora-experiment-${process.pid}`);
  await mkdir(OUT, { recursive: true });
  const subjects = await loadSubjects(config.subjects, work);
  const results: Results = {
    command: `npx tsx scripts/experiment.ts ${process.argv.slice(2).join(' ')}`.trim(),
    config,
    backend: backend.name,
    seconds: earlier?.seconds ?? 0,
    load: { start: loadavg(), end: [] },
    base: earlier?.base ?? {},
    runs: earlier?.runs ?? [],
  };
  const sd = await StableDiffusion.load(TOY_MODEL_DIR);
  try {
    const prior = results.seconds;
    const clock = () => prior + (performance.now() - t0) / 1000;
    await runAll(sd, subjects, config, results, work, clock);
  } finally {
    sd.dispose();
    await rm(work, { recursive: true, force: true });
  }
  results.load.end = loadavg();
  await atomicWriteJson(RESULTS, results);
  await report(results);
  console.log(`experiment done in ${((performance.now() - t0) / 1000).toFixed(0)} s; results in ${OUT}`);
}

/**
 * Every run, seed by seed (a run cut short leaves whole seeds of every setting), skipping the runs
 * `results` already holds; saves after each run.
 */
async function runAll(
  sd: StableDiffusion,
  subjects: Subject[],
  config: Config,
  results: Results,
  work: string,
  clock: () => number,
): Promise<void> {
  for (const s of subjects) {
    results.base[s.name] ??= await scoreBase(sd, s, config);
    const b = results.base[s.name];
    console.log(
      `${s.name}: base subject ${b.subject.toFixed(3)}, background ${b.prompt.toFixed(2)}, band ${b.noiseBand?.toFixed(3)}; probes ${b.probes.join(' | ')}`,
    );
  }
  for (const seed of config.trainSeeds)
    for (const s of subjects)
      for (const method of config.methods)
        for (const rank of config.ranks)
          for (const lr of config.lrs) {
            const key = { method, rank, lr, seed };
            const done = results.runs.some(
              (r) => r.subject === s.name && r.method === method && r.rank === rank && r.lr === lr && r.seed === seed,
            );
            if (done) continue;
            const base = results.base[s.name];
            const run = await oneRun(sd, s, base, key, config, work);
            results.runs.push(run);
            results.seconds = clock();
            await atomicWriteJson(RESULTS, results);
            const best = run.checkpoints.find((c) => c.step === run.best)!;
            const last = run.checkpoints[run.checkpoints.length - 1];
            console.log(
              `${s.name} ${method} r${rank} lr ${lr} seed ${seed}: ${run.checkpoints.map((c) => `${c.subject.toFixed(3)} (${c.prompt.toFixed(2)})`).join(' / ')}; best step ${run.best} +${(best.subject - base.subject).toFixed(3)}, final +${(last.subject - base.subject).toFixed(3)}; pick ${run.pick}; ${run.seconds.toFixed(0)} s, load ${loadavg()[0].toFixed(2)}`,
            );
          }
}

async function report(results: Results): Promise<void> {
  await writePlot(results, join(OUT, 'fidelity-vs-lr.png'));
  await writeTable(results, join(REPO_ROOT, 'docs/experiments.md'));
}

await main();

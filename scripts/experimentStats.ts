/**
 * The experiment's numbers (scripts/experiment.ts): per setting (subject, method, rank, learning
 * rate) the mean and spread over training seeds of the best and the final checkpoint's gain over
 * the base model and background share; and differences between settings against the seed noise.
 *
 * The rule (docs/experiments.md): a difference of two settings' means, d = m_a - m_b, has the
 * standard error se = sqrt(s_a^2 / n_a + s_b^2 / n_b) from the seed-to-seed sample standard
 * deviations s; a difference averaged over k pairs of settings (e.g. SingLoRA - LoRA over both
 * ranks and every learning rate) has se = sqrt(sum se_i^2) / k. It is "beyond the seed noise"
 * when |d| > 2 se.
 */
import { sampleStats } from '../src-main/engine/eval/pickBest.ts';

export interface Checkpoint {
  step: number;
  /** Subject fidelity: mean toy score (colour x shape IoU) over the probe images. */
  subject: number;
  /** Share of the images with the requested background. */
  prompt: number;
}

export interface Base {
  subject: number;
  prompt: number;
  /** Two standard errors of the base model's mean score (pickBest.ts `noiseBand`). */
  noiseBand: number | null;
  probes: string[];
}

export interface Run {
  subject: string;
  method: 'singlora' | 'lora';
  rank: number;
  lr: number;
  seed: number;
  params: number;
  checkpoints: Checkpoint[];
  /** Step of the best checkpoint (experiment.ts `bestCheckpoint`). */
  best: number;
  /** The evaluation rule's pick (null: none beats the base model by more than the noise band). */
  pick: number | null;
  finalLoss: number;
  seconds: number;
}

export interface Results {
  /** The command line of the last session that added runs. */
  command: string;
  config: {
    subjects: string[];
    methods: Array<'singlora' | 'lora'>;
    ranks: number[];
    lrs: number[];
    trainSeeds: number[];
    seeds: number[];
    steps: number;
    every: number;
    defaults: unknown;
    alphaPerRank: number;
  };
  backend: string;
  /** Wall time of the runs, summed over resumed sessions. */
  seconds: number;
  load: { start: number[]; end: number[] };
  base: Record<string, Base>;
  runs: Run[];
}

export interface Stat {
  mean: number;
  /** Sample standard deviation over the seeds (0 with one seed). */
  sd: number;
  n: number;
}

export const METRICS = ['bestGain', 'bestBg', 'finalGain', 'finalBg'] as const;
export type Metric = (typeof METRICS)[number];

export interface Setting {
  subject: string;
  method: Run['method'];
  rank: number;
  lr: number;
  params: number;
  stats: Record<Metric, Stat>;
  /** How many seeds' runs the evaluation rule picks a checkpoint of. */
  picks: number;
  bestSteps: number[];
}

export function stat(xs: readonly number[]): Stat {
  const { mean, sd, n } = sampleStats(xs);
  return { mean, sd, n };
}

/** The four per-run numbers: best and final checkpoint's gain over the base model and background share. */
function runMetrics(r: Run, base: Base): Record<Metric, number> {
  const best = r.checkpoints.find((c) => c.step === r.best)!;
  const last = r.checkpoints[r.checkpoints.length - 1];
  return {
    bestGain: best.subject - base.subject,
    bestBg: best.prompt,
    finalGain: last.subject - base.subject,
    finalBg: last.prompt,
  };
}

/** The settings of `results`, in the configuration's order, each over the seeds it has runs of. */
export function settingsOf(results: Results): Setting[] {
  const c = results.config;
  const out: Setting[] = [];
  for (const subject of c.subjects)
    for (const method of c.methods)
      for (const rank of c.ranks)
        for (const lr of c.lrs) {
          const runs = results.runs.filter(
            (r) => r.subject === subject && r.method === method && r.rank === rank && r.lr === lr,
          );
          if (!runs.length) continue;
          const m = runs.map((r) => runMetrics(r, results.base[subject]));
          const stats = Object.fromEntries(METRICS.map((k) => [k, stat(m.map((x) => x[k]))])) as Setting['stats'];
          out.push({
            subject,
            method,
            rank,
            lr,
            params: runs[0].params,
            stats,
            picks: runs.filter((r) => r.pick !== null).length,
            bestSteps: runs.map((r) => r.best),
          });
        }
  return out;
}

export interface Difference {
  d: number;
  se: number;
  /** |d| > 2 se. */
  beyond: boolean;
}

/** a - b against the seed noise of both. */
export function difference(a: Stat, b: Stat): Difference {
  const se = Math.sqrt((a.n > 0 ? a.sd ** 2 / a.n : 0) + (b.n > 0 ? b.sd ** 2 / b.n : 0));
  const d = a.mean - b.mean;
  return { d, se, beyond: Math.abs(d) > 2 * se };
}

/** The mean of `ds` (differences of independent pairs of settings), with its standard error. */
export function pooled(ds: readonly Difference[]): Difference {
  const k = ds.length;
  const d = ds.reduce((a, x) => a + x.d, 0) / k;
  const se = Math.sqrt(ds.reduce((a, x) => a + x.se ** 2, 0)) / k;
  return { d, se, beyond: Math.abs(d) > 2 * se };
}

/**
 * A comparison: pairs of settings (a, b) that differ only in one field, e.g. SingLoRA vs LoRA at
 * the same subject, rank and learning rate. `pairsOf` finds, for each setting matching `isA`, its
 * partner `partner(a)`.
 */
export function pairsOf(
  settings: readonly Setting[],
  isA: (s: Setting) => boolean,
  partner: (a: Setting) => Partial<Setting>,
): Array<[Setting, Setting]> {
  const out: Array<[Setting, Setting]> = [];
  for (const a of settings.filter(isA)) {
    const want = { subject: a.subject, method: a.method, rank: a.rank, lr: a.lr, ...partner(a) };
    const b = settings.find(
      (s) => s.subject === want.subject && s.method === want.method && s.rank === want.rank && s.lr === want.lr,
    );
    if (b) out.push([a, b]);
  }
  return out;
}

/**
 * Which checkpoint an evaluation picks, and when it picks none (issue 26: evaluation that admits
 * failure). Pure functions of the score rows, shared by evaluateRun.ts, the demo and the CLI.
 *
 *   noise band = 2 * sd(base per-image scores) / sqrt(n)     (two standard errors of the base mean)
 *   pick       = argmax score over the eligible checkpoints, if score - base > noise band; else none
 *
 * Eligible: with CLIP-T, the checkpoints that keep the base model's CLIP-T (within a margin); with
 * the toy score, those that keep the requested background in at least min(TOY_PROMPT_FLOOR, the
 * base model's share) of their images. A toy checkpoint that loses the background is never
 * picked, however high its subject score (an adapter that paints the photos' backgrounds).
 */
import type { ScoreRow } from '../../api/schemas.ts';

/** How far below the baseline's CLIP-T a checkpoint may fall and still be picked. */
export const DEFAULT_CLIP_MARGIN = 0.02;

/**
 * The noise band of a score that is a mean over images: twice the standard error of the base
 * model's mean, from the spread of its per-image scores over the evaluation prompts and seeds
 * (sample standard deviation / sqrt(n)). null below two images: one image measures no spread.
 */
export function noiseBand(baseScores: readonly number[]): number | null {
  const { variance, n } = sampleStats(baseScores);
  return n < 2 ? null : 2 * Math.sqrt(variance / n);
}

/** The mean, the sample variance and standard deviation (n - 1; 0 below two values) and the count of `xs`. */
export function sampleStats(xs: readonly number[]): { mean: number; variance: number; sd: number; n: number } {
  const n = xs.length;
  const mean = xs.reduce((a, b) => a + b, 0) / n;
  const variance = n > 1 ? xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1) : 0;
  return { mean, variance, sd: Math.sqrt(variance), n };
}

/** The share of images with the requested background a toy checkpoint must keep (issue 26's goal). */
export const TOY_PROMPT_FLOOR = 0.8;

/** What to change when no checkpoint beats the base model. */
export const NO_PICK_SUGGESTION =
  'train more steps or with a higher learning rate, or use more or better photos (the subject sharp, large in the frame, in varied settings)';

export interface Pick {
  best: number | null;
  rule: string;
  /** Why nothing was picked (null when a checkpoint was). */
  reason: string | null;
  suggestion: string | null;
}

/**
 * The rule: the highest DINO; when CLIP-T was measured, only among checkpoints whose CLIP-T is at
 * least the baseline's minus `clipMargin` (when none is, all of them compete). The winner is the
 * pick only when its DINO beats the baseline's by more than `noiseBand`; else the pick is none.
 */
export function pickBest(
  baseline: ScoreRow,
  rows: readonly ScoreRow[],
  o: { noiseBand: number | null; clipMargin?: number; metric?: 'dino' | 'toy' },
): Pick {
  const margin = o.clipMargin ?? DEFAULT_CLIP_MARGIN;
  if (!rows.length)
    return { best: null, rule: 'no checkpoints scored', reason: 'no checkpoints scored', suggestion: null };
  if (o.metric === 'toy' && baseline.prompt !== undefined) return pickToy(baseline, rows, o.noiseBand);
  const withClip = baseline.clipT !== null && rows.some((r) => r.clipT !== null);
  const eligible = withClip ? rows.filter((r) => r.clipT !== null && r.clipT >= baseline.clipT! - margin) : rows;
  const pool = eligible.length ? eligible : rows;
  const top = pool.reduce((a, b) => (b.dino > a.dino ? b : a));
  const band = o.noiseBand;
  const rule = `${
    withClip
      ? `highest DINO among checkpoints whose CLIP-T is within ${margin} of the base model's (${baseline.clipT!.toFixed(4)})${eligible.length ? '' : '; none was, so all competed'}`
      : o.metric === 'toy'
        ? "highest toy subject fidelity (no DINO installed: the toy world's score of colours, their layout and the shape, docs/experiments.md)"
        : 'highest DINO (CLIP models not installed, so prompt fidelity is not checked)'
  }, if above the base model's by more than the noise band${band === null ? '' : ` (${band.toFixed(4)})`}`;
  const gain = top.dino - baseline.dino;
  if (band === null) return noBand(rule);
  if (gain <= band)
    return {
      best: null,
      rule,
      reason: `no checkpoint beats the base model by more than the noise: the best, step ${top.step}, scores ${top.dino.toFixed(4)} against the base model's ${baseline.dino.toFixed(4)} (${gain >= 0 ? '+' : '-'}${Math.abs(gain).toFixed(4)}; noise band ${band.toFixed(4)})`,
      suggestion: NO_PICK_SUGGESTION,
    };
  return { best: top.step, rule, reason: null, suggestion: null };
}

/** No pick: one image of the base model gives no spread to measure the noise band from. */
function noBand(rule: string): Pick {
  return {
    best: null,
    rule,
    reason: 'the noise band cannot be measured from one image of the base model: evaluate with more images',
    suggestion: 'evaluate with more prompts or images per prompt',
  };
}

/** The toy metric's rule: among the checkpoints that keep the requested background, the top one beyond the noise. */
function pickToy(baseline: ScoreRow, rows: readonly ScoreRow[], band: number | null): Pick {
  const floor = Math.min(TOY_PROMPT_FLOOR, baseline.prompt ?? 0);
  const pct = (x: number) => `${(100 * x).toFixed(0)}%`;
  const rule = `highest toy subject fidelity (the toy world's score of colours, their layout and the shape, docs/experiments.md) among checkpoints that keep the requested background in at least ${pct(floor)} of their images, if above the base model's by more than the noise band${band === null ? '' : ` (${band.toFixed(4)})`}`;
  if (band === null) return noBand(rule);
  const kept = rows.filter((r) => (r.prompt ?? 0) >= floor);
  const beats = (r: ScoreRow) => r.dino - baseline.dino > band;
  const top = kept.length ? kept.reduce((a, b) => (b.dino > a.dino ? b : a)) : null;
  if (top && beats(top)) return { best: top.step, rule, reason: null, suggestion: null };
  const lost = rows.filter((r) => beats(r) && !kept.includes(r));
  if (lost.length) {
    const l = lost.reduce((a, b) => (b.dino > a.dino ? b : a));
    return {
      best: null,
      rule,
      reason: `no checkpoint beats the base model and keeps the requested background: the best, step ${l.step}, scores ${l.dino.toFixed(4)} against the base model's ${baseline.dino.toFixed(4)} (noise band ${band.toFixed(4)}) but keeps the background in ${pct(l.prompt ?? 0)} of its images (at least ${pct(floor)} needed)`,
      suggestion: `${NO_PICK_SUGGESTION}; or a lower learning rate or fewer steps, so the adapter does not learn the photos' backgrounds`,
    };
  }
  const best = top ?? rows.reduce((a, b) => (b.dino > a.dino ? b : a));
  const gain = best.dino - baseline.dino;
  return {
    best: null,
    rule,
    reason: `no checkpoint beats the base model by more than the noise: the best, step ${best.step}, scores ${best.dino.toFixed(4)} against the base model's ${baseline.dino.toFixed(4)} (${gain >= 0 ? '+' : '-'}${Math.abs(gain).toFixed(4)}; noise band ${band.toFixed(4)})`,
    suggestion: NO_PICK_SUGGESTION,
  };
}

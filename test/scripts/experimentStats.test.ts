/**
 * The experiment's statistics (scripts/experimentStats.ts): the seed spread, the rule that says
 * whether a difference is beyond the seed noise, and the per-setting summaries of the runs.
 */
import { describe, expect, it } from 'vitest';
import {
  difference,
  pairsOf,
  pooled,
  type Results,
  type Run,
  settingsOf,
  stat,
} from '../../scripts/experimentStats.ts';

/** A run whose checkpoints score `subjects` (steps 50, 100, ...) with backgrounds `prompts`. */
function run(o: Partial<Run> & { subjects: number[]; prompts: number[]; best: number }): Run {
  return {
    subject: 'sks-ball',
    method: 'singlora',
    rank: 4,
    lr: 1e-3,
    seed: 1,
    params: 10,
    pick: null,
    finalLoss: 0,
    seconds: 0,
    ...o,
    checkpoints: o.subjects.map((s, i) => ({ step: 50 * (i + 1), subject: s, prompt: o.prompts[i] })),
  };
}

function results(runs: Run[]): Results {
  return {
    command: 'test',
    config: {
      subjects: ['sks-ball'],
      methods: ['singlora', 'lora'],
      ranks: [4],
      lrs: [1e-3],
      trainSeeds: [1, 2],
      seeds: [1],
      steps: 100,
      every: 50,
      defaults: {},
      alphaPerRank: 1,
    },
    backend: 'cpu',
    seconds: 0,
    load: { start: [], end: [] },
    base: { 'sks-ball': { subject: 0.2, prompt: 0.5, noiseBand: 0.1, probes: [] } },
    runs,
  };
}

describe('experiment statistics', () => {
  it('stat: the mean and the sample standard deviation over seeds; 0 spread from one seed', () => {
    const s = stat([1, 2, 3]);
    expect(s.mean).toBeCloseTo(2, 12);
    expect(s.sd).toBeCloseTo(1, 12);
    expect(stat([0.4]).sd).toBe(0);
  });

  it('difference: beyond the noise only when |d| > 2 standard errors of the two means', () => {
    // se = sqrt(0.3^2 / 3 + 0.4^2 / 3) = 0.2887; 2 se = 0.577
    const near = difference({ mean: 1, sd: 0.3, n: 3 }, { mean: 0.5, sd: 0.4, n: 3 });
    expect(near.d).toBeCloseTo(0.5, 12);
    expect(near.se).toBeCloseTo(Math.sqrt(0.25 / 3), 12);
    expect(near.beyond).toBe(false);
    expect(difference({ mean: 1.1, sd: 0.3, n: 3 }, { mean: 0.5, sd: 0.4, n: 3 }).beyond).toBe(true);
  });

  it('pooled: the mean of k independent differences has 1/sqrt(k) of their standard error', () => {
    const one = { d: 0.1, se: 0.06, beyond: false };
    const p = pooled([one, one, one, one]);
    expect(p.d).toBeCloseTo(0.1, 12);
    expect(p.se).toBeCloseTo(0.03, 12);
    expect(p.beyond).toBe(true);
  });

  it('settingsOf: gains over the base model at the best and the final checkpoint, picks counted, pairs found', () => {
    const r = results([
      run({ seed: 1, subjects: [0.5, 0.3], prompts: [1, 0.5], best: 50, pick: 50 }),
      run({ seed: 2, subjects: [0.3, 0.4], prompts: [1, 1], best: 100 }),
      run({ method: 'lora', seed: 1, subjects: [0.2, 0.2], prompts: [1, 1], best: 50 }),
    ]);
    const [sing, lora] = settingsOf(r);
    expect(sing.stats.bestGain.mean).toBeCloseTo((0.3 + 0.2) / 2, 12);
    expect(sing.stats.finalGain.mean).toBeCloseTo((0.1 + 0.2) / 2, 12);
    expect(sing.stats.finalBg.mean).toBeCloseTo(0.75, 12);
    expect(sing.picks).toBe(1);
    expect(sing.bestSteps).toEqual([50, 100]);
    expect(lora.stats.bestGain.n).toBe(1);
    const pairs = pairsOf(
      settingsOf(r),
      (s) => s.method === 'singlora',
      () => ({ method: 'lora' }),
    );
    expect(pairs.map(([a, b]) => [a.method, b.method])).toEqual([['singlora', 'lora']]);
  });
});

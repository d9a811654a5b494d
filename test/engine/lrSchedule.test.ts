/**
 * Learning-rate schedules, against values worked out by hand from the formulas in lrSchedule.ts's
 * header (t is the 0-based optimizer step being taken, W the warm-up steps, N the total):
 *
 *   constant               lr
 *   constant_with_warmup   lr * min(1, (t + 1) / W)
 *   cosine                 the warm-up above, then lr * 0.5 (1 + cos(pi * (t - W) / (N - W)))
 */
import { describe, expect, it } from 'vitest';
import { learningRate, LR_SCHEDULES, type LrSchedule } from '../../src-main/engine/train/lrSchedule.ts';

const sched = (name: LrSchedule['name'], warmupSteps: number, totalSteps = 10, lr = 2e-4): LrSchedule => ({
  name,
  lr,
  warmupSteps,
  totalSteps,
});
const at = (s: LrSchedule, steps: number[]) => steps.map((t) => learningRate(s, t));

function expectValues(got: number[], want: number[]): void {
  expect(got).toHaveLength(want.length);
  got.forEach((g, i) => expect(g, `step ${i}`).toBeCloseTo(want[i], 12));
}

describe('learningRate', () => {
  it('offers the diffusers names', () => {
    expect([...LR_SCHEDULES]).toEqual(['constant', 'constant_with_warmup', 'cosine']);
  });

  it('constant: lr at every step, warm-up ignored', () => {
    expectValues(at(sched('constant', 3), [0, 1, 5, 9, 20]), [2e-4, 2e-4, 2e-4, 2e-4, 2e-4]);
  });

  it('constant_with_warmup: (t + 1) / W of lr during the W warm-up steps, then lr', () => {
    // W = 4: 1/4, 2/4, 3/4, then 1 from step 3 on.
    expectValues(at(sched('constant_with_warmup', 4), [0, 1, 2, 3, 4, 9]), [0.5e-4, 1e-4, 1.5e-4, 2e-4, 2e-4, 2e-4]);
    // No warm-up: lr from the first step.
    expectValues(at(sched('constant_with_warmup', 0), [0, 1, 9]), [2e-4, 2e-4, 2e-4]);
  });

  it('cosine: warm-up, then half a cosine from lr at step W down to 0 at step N', () => {
    // W = 2, N = 10, lr = 1: the cosine spans 8 steps; cos(pi/4) = 0.70710678118654752.
    const s = sched('cosine', 2, 10, 1);
    const c = 0.7071067811865475;
    expectValues(at(s, [0, 1, 2, 4, 6, 8, 10, 12]), [0.5, 1, 1, 0.5 * (1 + c), 0.5, 0.5 * (1 - c), 0, 0]);
    // Without warm-up the first step takes the full lr; step 5 of 10 is half-way.
    expectValues(at(sched('cosine', 0, 10, 1), [0, 5, 10]), [1, 0.5, 0]);
  });

  it('is a pure function of the step: the same step gives the same rate in any order', () => {
    const s = sched('cosine', 3, 50);
    const forward = at(s, [0, 1, 2, 3, 10, 30, 49]);
    const backward = at(s, [49, 30, 10, 3, 2, 1, 0]).reverse();
    expect(backward).toEqual(forward);
  });
});

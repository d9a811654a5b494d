/**
 * Learning-rate schedules as pure functions of the step (diffusers' `get_scheduler` names):
 *
 *   constant               lr
 *   constant_with_warmup   lr * min(1, (t + 1) / W)            (W = warmup steps)
 *   cosine                 warmup as above, then lr * 0.5 (1 + cos(pi * (t - W) / (N - W)))
 *
 * `t` is the 0-based optimizer step being taken, N the total number of steps.
 */
import { LR_SCHEDULES } from '../../api/schemas.ts';

export { LR_SCHEDULES };
export type LrScheduleName = (typeof LR_SCHEDULES)[number];

export interface LrSchedule {
  readonly name: LrScheduleName;
  readonly lr: number;
  readonly warmupSteps: number;
  readonly totalSteps: number;
}

export function learningRate(s: LrSchedule, step: number): number {
  const warm = s.warmupSteps > 0 ? Math.min(1, (step + 1) / s.warmupSteps) : 1;
  switch (s.name) {
    case 'constant':
      return s.lr;
    case 'constant_with_warmup':
      return s.lr * warm;
    case 'cosine': {
      if (step < s.warmupSteps) return s.lr * warm;
      const span = Math.max(1, s.totalSteps - s.warmupSteps);
      const progress = Math.min(1, (step - s.warmupSteps) / span);
      return s.lr * 0.5 * (1 + Math.cos(Math.PI * progress));
    }
  }
}

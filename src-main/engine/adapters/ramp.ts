/**
 * SingLoRA's ramp (Bensaïd et al., 2025, eq. 3): the update is faded in over the first T steps,
 *
 *   u(t) = min(t / T, 1),   T = 0 means no ramp (u = 1 from the start).
 *
 * A pure function of the step passed in: no counter lives inside a layer (see STYLE.md,
 * "Time is an argument"). The learning-rate schedule takes the same step.
 */
export function ramp(step: number, rampSteps: number): number {
  if (!Number.isFinite(step) || step < 0) throw new Error(`ramp: step must be a finite number >= 0, got ${step}`);
  if (!Number.isFinite(rampSteps) || rampSteps < 0)
    throw new Error(`ramp: T must be a finite number >= 0, got ${rampSteps}`);
  if (rampSteps === 0) return 1;
  return Math.min(step / rampSteps, 1);
}

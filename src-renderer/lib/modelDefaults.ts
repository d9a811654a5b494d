/**
 * What the Train screen says beside a setting the base model recommends a value for (its
 * singlora-defaults.json, engine/io/modelDefaults.ts), and when the "No GPU" banner is worth showing.
 */
import type { ModelDefaults } from '../../src-main/api/schemas.ts';
import type { BackendAdvice } from './advice.ts';

type Defaults = NonNullable<ModelDefaults['training']> | NonNullable<ModelDefaults['sampling']>;

/**
 * The hint for `field`: "default for this model" when the value is the model's default, "<v> is
 * the default for this model" when the user changed it ("On"/"Off" for a switch), else `fallback`
 * (the model names none).
 */
export function modelDefaultHint(
  defaults: Defaults | null | undefined,
  field: string,
  value: unknown,
  fallback?: string,
): string | undefined {
  const v = (defaults as Record<string, unknown> | null | undefined)?.[field];
  if (v === undefined || v === null) return fallback;
  if (value === v) return 'default for this model';
  return `${typeof v === 'boolean' ? (v ? 'On' : 'Off') : String(v)} is the default for this model`;
}

/** Above this many seconds a training run counts as long (the banner's "very slow"). */
export const LONG_TRAINING_S = 10 * 60;

/**
 * The backend advice, only where it matters for this training: a warning about a CPU backend is
 * shown when the estimate is long, or, with no estimate yet, when the model is not a small one
 * (native size above 128: SD 1.5, not the toy or tiny demo models). Errors always show.
 */
export function slowTrainingAdvice(
  advice: BackendAdvice | null,
  estimateS: number | null,
  native: number | null,
): BackendAdvice | null {
  if (!advice || advice.level === 'error') return advice;
  if (estimateS !== null) return estimateS > LONG_TRAINING_S ? advice : null;
  return native !== null && native <= 128 ? null : advice;
}

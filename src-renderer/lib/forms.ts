/** Field-level errors for forms, from a local zod check or from the engine's 'invalid_params'. */
import { ApiError } from '../../src-main/api/contract.ts';
import type { z } from 'zod';

/** field path (e.g. `learningRate`) -> the first message for it. */
export type FieldErrors = Record<string, string>;

/** Makes zod's wording readable next to a form field. */
function friendly(message: string): string {
  if (/expected number, received (null|NaN|undefined)/i.test(message)) return 'Enter a number';
  if (/expected string, received undefined/i.test(message)) return 'Required';
  return message;
}

export function fieldErrorsFromZod(error: z.ZodError, prefix = ''): FieldErrors {
  const out: FieldErrors = {};
  for (const issue of error.issues) {
    const key = prefix + (issue.path.map(String).join('.') || '(form)');
    out[key] ??= friendly(issue.message);
  }
  return out;
}

/**
 * The field errors in an ApiError('invalid_params') whose details are `[{field, message}]`, with
 * `stripPrefix` removed (e.g. 'settings.' for the training form); null for any other error.
 */
export function fieldErrorsFromApi(err: unknown, stripPrefix = ''): FieldErrors | null {
  if (!(err instanceof ApiError) || err.code !== 'invalid_params' || !Array.isArray(err.details)) return null;
  const out: FieldErrors = {};
  for (const d of err.details as Array<{ field?: unknown; message?: unknown }>) {
    if (typeof d?.field !== 'string' || typeof d.message !== 'string') continue;
    const key = d.field.startsWith(stripPrefix) ? d.field.slice(stripPrefix.length) : d.field;
    out[key] ??= friendly(d.message);
  }
  return Object.keys(out).length ? out : null;
}

/** The form value an error key names: its first path segment (`samplePrompts.0` -> `samplePrompts`). */
const fieldOf = (key: string) => key.split('.')[0];

/**
 * The errors that still hold after an edit. An error whose field changed since the error was shown
 * (`shownWith`: the form's values then) is checked again: it takes the form's own message for the
 * new value (`local`), or goes when the new value passes. Errors of unchanged fields stay: the
 * server may know more than the local check (a missing file, a busy project).
 */
export function recheck(
  errors: FieldErrors,
  shownWith: Record<string, unknown>,
  now: Record<string, unknown>,
  local: FieldErrors,
): FieldErrors {
  const out: FieldErrors = {};
  for (const [key, message] of Object.entries(errors)) {
    const f = fieldOf(key);
    const changed = JSON.stringify(shownWith[f]) !== JSON.stringify(now[f]);
    if (!changed) out[key] = message;
    else if (local[key]) out[key] = local[key];
  }
  return out;
}

/** Validates a form draft; `{ok: true, data}` or the field errors. */
export function check<S extends z.ZodType>(
  schema: S,
  draft: unknown,
): { ok: true; data: z.infer<S> } | { ok: false; errors: FieldErrors } {
  const r = schema.safeParse(draft);
  return r.success ? { ok: true, data: r.data } : { ok: false, errors: fieldErrorsFromZod(r.error) };
}

/** Field-level errors for forms, from a local zod check or from the engine's 'invalid_params'. */
import { ApiError } from '../../src-main/api/contract.ts';
import type { z } from 'zod';

/** field path (e.g. `learningRate`) -> the first message for it. */
export type FieldErrors = Record<string, string>;

/** A bound as people write it: 100000 -> "100,000"; past 1e12 (no real limit) null. */
function bound(text: string): string | null {
  const n = Number(text);
  return Number.isFinite(n) && Math.abs(n) < 1e12 ? n.toLocaleString('en-US', { maximumFractionDigits: 10 }) : null;
}

/**
 * zod's messages (from this page's check or the server's) as what to do next to the field:
 * "Too small: expected number to be >=1" -> "Enter 1 or more", "width must be a multiple of 8" ->
 * "Enter a multiple of 8" (the field's label names the field). Other messages stay as written.
 */
const HUMAN: ReadonlyArray<[RegExp, (m: RegExpExecArray) => string]> = [
  [/expected (?:number|int), received (?:NaN|null|undefined|string)/, () => 'Enter a number'],
  [/expected int, received number/, () => 'Enter a whole number'],
  [/expected string, received (?:undefined|null)/, () => 'Fill this in'],
  [/expected string to have >=1 characters?/, () => 'Fill this in: it cannot be empty'],
  [/expected string to have >=(\d+) characters/, (m) => `Use at least ${m[1]} characters`],
  [/expected string to have <=(\d+) characters/, (m) => `Shorten it to ${bound(m[1])} characters or fewer`],
  [/expected (?:number|int) to be >=(\S+)/, (m) => `Enter ${bound(m[1])} or more`],
  [/expected (?:number|int) to be >(\S+)/, (m) => `Enter a number above ${bound(m[1])}`],
  [
    /expected (?:number|int) to be <=(\S+)/,
    (m) => (bound(m[1]) ? `Enter ${bound(m[1])} or less` : 'Enter a smaller number'),
  ],
  [/expected (?:number|int) to be <(\S+)/, (m) => `Enter a number below ${bound(m[1])}`],
  [/expected array to have >=(\d+) items?/, (m) => `Add at least ${m[1]}`],
  [/expected array to have <=(\d+) items?/, (m) => `Keep at most ${m[1]}`],
  [/Invalid option: expected one of (.+)$/, (m) => `Choose one of: ${m[1].replaceAll('"', '').split('|').join(', ')}`],
  [/^\w+ must be a multiple of (\d+)$/, (m) => `Enter a multiple of ${m[1]}`],
];

export function humanMessage(message: string): string {
  for (const [re, say] of HUMAN) {
    const m = re.exec(message);
    if (m) return say(m);
  }
  return message;
}

export function fieldErrorsFromZod(error: z.ZodError, prefix = ''): FieldErrors {
  const out: FieldErrors = {};
  for (const issue of error.issues) {
    const key = prefix + (issue.path.map(String).join('.') || '(form)');
    out[key] ??= humanMessage(issue.message);
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
    out[key] ??= humanMessage(d.message);
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

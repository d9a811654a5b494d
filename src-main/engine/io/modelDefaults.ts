/**
 * A base model's recommended settings: `singlora-defaults.json` in its diffusers folder
 * (`{"training": {...}, "sampling": {...}}`, the API's field names; api/schemas.ts
 * `modelDefaultsSchema`). The toy model carries one (models/toy-sd); SD 1.5 folders have none and
 * keep the schema's defaults. Light on purpose (no TensorFlow.js or ONNX Runtime import): the CLI
 * and the service read it at startup.
 *
 * Applied as the bottom layer: schema defaults < the model's defaults < what the user set.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { MODEL_DEFAULTS_FILE, type ModelDefaults, modelDefaultsSchema } from '../../api/schemas.ts';

/** Where a base model's defaults file would be: inside a folder; none for a single-file checkpoint. */
export function modelDefaultsPath(baseModel: string): string | null {
  try {
    return statSync(baseModel).isDirectory() ? join(baseModel, MODEL_DEFAULTS_FILE) : null;
  } catch {
    return null;
  }
}

/**
 * The defaults of `baseModel`, or null when it has none. A file that is not JSON or does not
 * match the schema is an error naming the file and the field.
 */
export function readModelDefaults(baseModel: string): ModelDefaults | null {
  const file = modelDefaultsPath(baseModel);
  if (!file || !existsSync(file)) return null;
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`${file}: not valid JSON (${(err as Error).message})`);
  }
  const r = modelDefaultsSchema.safeParse(raw);
  if (!r.success)
    throw new Error(
      `${file}: ${r.error.issues
        .map((i) => `${i.path.join('.') || '(top level)'}: ${i.message}`)
        .join('; ')} (expected {"training": {...}, "sampling": {...}} with the API's setting names)`,
    );
  return r.data;
}

/**
 * `settings` on top of the model's `defaults`: a field the user gave (`given(field)`) keeps its
 * value; every other field the defaults name takes the default. Returns the merged settings and
 * the fields taken from the model.
 */
export function withModelDefaults<T extends Record<string, unknown>>(
  settings: T,
  defaults: Partial<T> | undefined,
  given: (field: string) => boolean,
): { settings: T; fromModel: string[] } {
  const out: Record<string, unknown> = { ...settings };
  const fromModel: string[] = [];
  for (const [k, v] of Object.entries(defaults ?? {})) {
    if (v === undefined || given(k)) continue;
    out[k] = v;
    fromModel.push(k);
  }
  return { settings: out as T, fromModel };
}

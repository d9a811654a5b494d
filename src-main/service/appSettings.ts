/**
 * The app's own settings, for every project: `<dataDir>/settings.json` (`settings.get` /
 * `settings.set`). Today: the compute settings (api/schemas.ts `computeSettingsSchema`), which
 * engine trains and generates and on which ONNX Runtime provider. A missing file is the defaults;
 * a file that is not valid is reported (naming the file and the field) rather than silently reset.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ApiError, issueFields } from '../api/contract.ts';
import { computeSettingsSchema, type ComputeSettings } from '../api/schemas.ts';
import { atomicWriteFile } from '../engine/io/atomic.ts';

export const settingsFileOf = (dataDir: string) => join(dataDir, 'settings.json');

/** The settings in `dataDir` (defaults where the file or a field is missing). */
export async function readAppSettings(dataDir: string): Promise<ComputeSettings> {
  const file = settingsFileOf(dataDir);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return computeSettingsSchema.parse({});
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new ApiError('internal', `${file}: not valid JSON; fix or delete it (the defaults then apply)`);
  }
  const r = computeSettingsSchema.safeParse(json);
  if (!r.success) {
    const fields = issueFields(r.error.issues);
    throw new ApiError(
      'internal',
      `${file}: ${fields.map((f) => `${f.field}: ${f.message}`).join('; ')}; fix or delete it (the defaults then apply)`,
      fields,
    );
  }
  return r.data;
}

/** Applies `patch` (already validated by the contract) and writes the file atomically. */
export async function writeAppSettings(dataDir: string, patch: Partial<ComputeSettings>): Promise<ComputeSettings> {
  const current = await readAppSettings(dataDir).catch(() => computeSettingsSchema.parse({}));
  const next = computeSettingsSchema.parse({ ...current, ...patch });
  await atomicWriteFile(settingsFileOf(dataDir), `${JSON.stringify(next, null, 2)}\n`);
  return next;
}

/** The engine and provider for one request: its own choice where it made one, else the app's settings. */
export async function computeFor(
  dataDir: string,
  override: { readonly engine?: ComputeSettings['engine']; readonly provider?: ComputeSettings['provider'] } = {},
): Promise<ComputeSettings> {
  const saved = await readAppSettings(dataDir);
  return { engine: override.engine ?? saved.engine, provider: override.provider ?? saved.provider };
}

/**
 * The app's own settings, for every project: `<dataDir>/settings.json` (`settings.get` /
 * `settings.set`). Today: the compute settings (api/schemas.ts `computeSettingsSchema`), which
 * engine trains and generates and on which ONNX Runtime provider. A field the file does not set
 * takes `SINGLORA_ENGINE` / `SINGLORA_PROVIDER` of the engine's environment, else onnx / auto; a
 * file that is not valid is reported (naming the file and the field) rather than silently reset.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ApiError, issueFields } from '../api/contract.ts';
import { computeSettingsSchema, patchOf, type ComputeSettings } from '../api/schemas.ts';
import { atomicWriteFile } from '../engine/io/atomic.ts';

export const settingsFileOf = (dataDir: string) => join(dataDir, 'settings.json');

const savedSchema = patchOf(computeSettingsSchema);
const ENV_NAMES: Record<keyof ComputeSettings, string> = { engine: 'SINGLORA_ENGINE', provider: 'SINGLORA_PROVIDER' };

function invalid(where: string, issues: Parameters<typeof issueFields>[0], rename = (f: string) => f): ApiError {
  const fields = issueFields(issues).map((f) => ({ ...f, field: rename(f.field) }));
  return new ApiError('internal', `${where}: ${fields.map((f) => `${f.field}: ${f.message}`).join('; ')}`, fields);
}

/** The settings where settings.json sets nothing: the engine environment's variables, else onnx / auto. */
export function defaultComputeSettings(env: NodeJS.ProcessEnv = process.env): ComputeSettings {
  const r = computeSettingsSchema.safeParse({
    engine: env.SINGLORA_ENGINE?.trim() || undefined,
    provider: env.SINGLORA_PROVIDER?.trim() || undefined,
  });
  if (!r.success) throw invalid('the environment', r.error.issues, (f) => ENV_NAMES[f as keyof ComputeSettings] ?? f);
  return r.data;
}

/** What settings.json sets (nothing when it does not exist). */
async function readSaved(dataDir: string): Promise<Partial<ComputeSettings>> {
  const file = settingsFileOf(dataDir);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new ApiError('internal', `${file}: not valid JSON; fix it, delete it or save the settings again`);
  }
  const r = savedSchema.safeParse(json);
  if (!r.success) {
    const e = invalid(file, r.error.issues);
    throw new ApiError(e.code, `${e.message}; fix it, delete it or save the settings again`, e.details);
  }
  return r.data;
}

/** The settings in force: settings.json over the defaults. */
export async function readAppSettings(dataDir: string, env?: NodeJS.ProcessEnv): Promise<ComputeSettings> {
  return { ...defaultComputeSettings(env), ...(await readSaved(dataDir)) };
}

/**
 * Applies `patch` (validated by the contract) over what settings.json sets (a broken file is
 * replaced: saving is how the user repairs it) and writes the file atomically.
 */
export async function writeAppSettings(
  dataDir: string,
  patch: Partial<ComputeSettings>,
  env?: NodeJS.ProcessEnv,
): Promise<ComputeSettings> {
  const saved = await readSaved(dataDir).catch(() => ({}));
  const next = savedSchema.parse({ ...saved, ...patch });
  await atomicWriteFile(settingsFileOf(dataDir), `${JSON.stringify(next, null, 2)}\n`);
  return { ...defaultComputeSettings(env), ...next };
}

/** The engine and provider for one request: its own choice where it made one, else the app's settings. */
export async function computeFor(
  dataDir: string,
  override: { readonly engine?: ComputeSettings['engine']; readonly provider?: ComputeSettings['provider'] } = {},
  env?: NodeJS.ProcessEnv,
): Promise<ComputeSettings> {
  const saved = await readAppSettings(dataDir, env);
  return { engine: override.engine ?? saved.engine, provider: override.provider ?? saved.provider };
}

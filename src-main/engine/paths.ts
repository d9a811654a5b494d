/**
 * Where the app keeps its files. One place decides, so the CLI, the Electron main process and the
 * tests agree.
 *
 * | folder     | default              | override              |
 * | ---------- | -------------------- | --------------------- |
 * | repo root  | two levels above this file's folder (`src-main/engine/..`) | none |
 * | models     | `<repo>/models`      | `SINGLORA_MODELS_DIR` |
 *
 * The models folder holds the evaluation models (`dino/model.onnx`, `clip/...`); see
 * `eval/modelRegistry.ts` for the layout.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

/** The repository (or unpacked app) root: the folder that holds `src-main/`. */
export const REPO_ROOT = resolve(import.meta.dirname, '../..');

/** `SINGLORA_MODELS_DIR` when set and non-empty (resolved against the working directory), else `<repo>/models`. */
export function defaultModelsDir(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.SINGLORA_MODELS_DIR?.trim();
  return fromEnv ? resolve(fromEnv) : resolve(REPO_ROOT, 'models');
}

/** Caches (generated class images): `SINGLORA_CACHE_DIR`, else `<repo>/.cache`. */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.SINGLORA_CACHE_DIR?.trim();
  return fromEnv ? resolve(fromEnv) : resolve(REPO_ROOT, '.cache');
}

let version: string | null = null;
/** The app version from package.json. */
export function appVersion(): string {
  version ??= (JSON.parse(readFileSync(resolve(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  return version;
}

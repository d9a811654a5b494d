/**
 * Where the toy model and its subject live, and the demo's seeds for them. Light on purpose:
 * the CLI reads it at startup (no TensorFlow.js or ONNX Runtime import).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../paths.ts';

/** `_name_or_path` in the toy model's model_index.json: how a copy of it is recognised anywhere. */
export const TOY_MODEL_NAME = 'singlora-studio/toy-sd';

/** Whether `baseModel` is a diffusers folder of the toy model (its model_index.json says so). */
export function isToyModel(baseModel: string): boolean {
  try {
    const index = JSON.parse(readFileSync(join(baseModel, 'model_index.json'), 'utf8')) as { _name_or_path?: unknown };
    return index._name_or_path === TOY_MODEL_NAME;
  } catch {
    return false;
  }
}

/** The committed toy model (a diffusers folder), built by scripts/build-toy-model.ts. */
export const TOY_MODEL_DIR = join(REPO_ROOT, 'models/toy-sd');
/** Six photos of the subject the toy model never saw (a ball, red on top, yellow below). */
export const TOY_SUBJECT_DIR = join(REPO_ROOT, 'models/toy-sd-subject');

/**
 * `npm run demo` on the toy model. Its training settings are the toy model's own defaults
 * (models/toy-sd/singlora-defaults.json, read by engine/io/modelDefaults.ts), not constants here.
 */
export const TOY_DEMO = {
  /** Seeds of the before/after grid and of the fidelity scores (one image per probe and seed). */
  seeds: [101, 102, 103],
} as const;

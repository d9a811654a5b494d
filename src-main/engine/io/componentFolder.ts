/**
 * Loading one diffusers/transformers component folder (`config.json` + a safetensors weight file),
 * for the models' `static load(folder)`. Whole pipelines (folders and single files) go through
 * modelFiles.ts instead.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { loadParams, type Module } from '../models/layers/module.ts';
import { SafetensorsFile } from './safetensors.ts';
import { safetensorsSource } from './weightSource.ts';

export const DIFFUSERS_WEIGHT_FILES = [
  'diffusion_pytorch_model.safetensors',
  'diffusion_pytorch_model.fp16.safetensors',
];
export const TRANSFORMERS_WEIGHT_FILES = ['model.safetensors', 'model.fp16.safetensors'];

/** The parsed `config.json` of a component folder; errors name the file. */
export async function readComponentConfig(folder: string, className: string): Promise<unknown> {
  const path = join(folder, 'config.json');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new Error(
      `${className}: cannot read ${path} (${(err as Error).message}); expected a component folder with config.json`,
    );
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${className}: ${path} is not valid JSON (${(err as Error).message})`);
  }
}

/**
 * Loads `model`'s weights from the first of `weightFiles` in `folder`, strictly; disposes the
 * model and names what was expected on failure. `ignore` skips known extra keys.
 */
export async function loadComponentWeights(
  model: Module,
  folder: string,
  component: string,
  weightFiles: readonly string[],
  ignore?: (key: string) => boolean,
): Promise<void> {
  const name = weightFiles.find((f) => existsSync(join(folder, f)));
  if (!name) {
    const pickles = ['diffusion_pytorch_model.bin', 'pytorch_model.bin'].filter((f) => existsSync(join(folder, f)));
    const pickle = pickles.length
      ? ` (found ${pickles[0]}: pickles can run code and are never loaded; convert it to .safetensors with a tool you trust)`
      : '';
    model.dispose();
    throw new Error(`${component}: no ${weightFiles.join(' or ')} in ${folder}${pickle}`);
  }
  let file: SafetensorsFile | null = null;
  try {
    file = await SafetensorsFile.open(join(folder, name));
    await loadParams(model, safetensorsSource(file), component, ignore);
  } catch (err) {
    model.dispose();
    throw err;
  } finally {
    await file?.close();
  }
}

/**
 * Reading one diffusers/transformers component folder (`config.json` + a safetensors weight file)
 * for the models' `static load(folder)`, which loads it with `loadComponentWeights`
 * (models/layers/module.ts). Whole pipelines (folders and single files) go through modelFiles.ts.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SafetensorsFile } from './safetensors.ts';

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
 * Opens the first of `weightFiles` in `folder`. The error names what was expected, and says why a
 * PyTorch pickle beside it is not loaded.
 */
export async function openComponentWeights(
  folder: string,
  component: string,
  weightFiles: readonly string[],
): Promise<SafetensorsFile> {
  const name = weightFiles.find((f) => existsSync(join(folder, f)));
  if (!name) {
    const pickles = ['diffusion_pytorch_model.bin', 'pytorch_model.bin'].filter((f) => existsSync(join(folder, f)));
    const pickle = pickles.length
      ? ` (found ${pickles[0]}: pickles can run code and are never loaded; convert it to .safetensors with a tool you trust)`
      : '';
    throw new Error(`${component}: no ${weightFiles.join(' or ')} in ${folder}${pickle}`);
  }
  return SafetensorsFile.open(join(folder, name));
}

/**
 * Exports of a native adapter file to the formats other tools load.
 *
 * SingLoRA is exactly a standard LoRA with
 *
 *   up   = A[:d_out]        [d_out, r]
 *   down = A[:d_in]^T       [r, d_in]
 *   dW   = (alpha * u / r) * up @ down
 *
 * | format    | tensors per target                                         | scale                       |
 * | --------- | ---------------------------------------------------------- | --------------------------- |
 * | kohya     | lora_unet_<path>.lora_down.weight / .lora_up.weight / .alpha | `.alpha` = alpha * u (kohya divides by r) |
 * | diffusers | unet.<path>.lora_A.weight / .lora_B.weight (PEFT names)    | folded into lora_B (no alpha in these files) |
 *
 * A LoRA-method adapter exports the same way with up = B, down = A (u = 1).
 * Every copy here is exact (slices and transposes of float32 data); only the diffusers export
 * multiplies by the scale, in float32.
 */
import { basename } from 'node:path';
import type { AtomicOptions } from '../io/atomic.ts';
import { writeSafetensors, type TensorToWrite } from '../io/safetensors.ts';
import { kohyaName, peftName } from '../io/keyMap.ts';
import type { NativeAdapterFile } from './adapterFile.ts';
import type { WeightFileDtype } from '../../api/schemas.ts';

export type ExportDtype = WeightFileDtype;

/** up [d_out, r] and down [r, d_in] of one target, as plain float32 data. */
export function upDown(
  file: NativeAdapterFile,
  path: string,
): { up: Float32Array; down: Float32Array; dOut: number; dIn: number } {
  const entry = file.targets.get(path);
  if (!entry) throw new Error(`${file.path}: no adapter for '${path}'`);
  const [dOut, dIn] = file.meta.target_shapes[path];
  const r = file.meta.rank;
  if (file.meta.method === 'lora') return { up: entry.lora_B.data, down: entry.lora_A.data, dOut, dIn };
  const A = entry.singlora_A.data; // [max(d_out, d_in), r], row-major
  const up = A.slice(0, dOut * r); // A[:d_out]
  const down = new Float32Array(r * dIn); // A[:d_in]^T
  for (let i = 0; i < dIn; i++) for (let j = 0; j < r; j++) down[j * dIn + i] = A[i * r + j];
  return { up, down, dOut, dIn };
}

/** alpha * u: the `alpha` a LoRA tool needs so that alpha / r reproduces SingLoRA's scale. */
export function effectiveAlpha(file: NativeAdapterFile): number {
  return file.meta.method === 'singlora' ? file.meta.alpha * file.meta.effective_u : file.meta.alpha;
}

export function kohyaTensors(file: NativeAdapterFile, dtype: ExportDtype = 'F32'): Map<string, TensorToWrite> {
  const out = new Map<string, TensorToWrite>();
  const r = file.meta.rank;
  const alpha = Float32Array.of(effectiveAlpha(file));
  for (const path of file.targets.keys()) {
    const { up, down, dOut, dIn } = upDown(file, path);
    const name = kohyaName('unet', path);
    out.set(`${name}.lora_down.weight`, { dtype, shape: [r, dIn], data: down });
    out.set(`${name}.lora_up.weight`, { dtype, shape: [dOut, r], data: up });
    out.set(`${name}.alpha`, { dtype, shape: [], data: alpha });
  }
  return out;
}

/**
 * The `ss_*` and `modelspec.*` metadata A1111, ComfyUI and kohya's tools read, with the ModelSpec
 * fields as sd-scripts writes them for an SD 1 LoRA (library/sai_model_spec.py, build_metadata):
 * implementation 'diffusers' (its IMPL_DIFFUSERS for a LoRA that is not SDXL), resolution
 * '<w>x<h>' of the training images (512x512, its SD 1 default, for a file that does not record
 * them), prediction_type 'epsilon' (SD 1.x predicts the noise).
 */
export function kohyaMetadata(file: NativeAdapterFile, outPath: string): Record<string, string> {
  const m = file.meta;
  const title = basename(outPath).replace(/\.safetensors$/, '');
  const side = m.resolution ?? 512;
  return {
    ss_network_module: 'networks.lora',
    ss_network_dim: String(m.rank),
    ss_network_alpha: String(effectiveAlpha(file)),
    ss_network_args: JSON.stringify({
      source: m.method === 'singlora' ? 'SingLoRA (up = A[:d_out], down = A[:d_in]^T, alpha = alpha * u)' : 'LoRA',
    }),
    ss_base_model_version: 'sd_v1',
    ss_v2: 'False',
    ss_sd_model_name: m.base_model_name,
    ss_new_sd_model_hash: m.base_model_unet_sha256,
    ss_output_name: title,
    ss_steps: String(m.trained_steps),
    ss_resolution: `(${side}, ${side})`,
    ss_training_comment:
      `trained with SingLoRA Studio (${m.method}); trigger: "${m.trigger_token} ${m.class_word}"`.trim(),
    'modelspec.sai_model_spec': '1.0.1',
    'modelspec.architecture': 'stable-diffusion-v1/lora',
    'modelspec.implementation': 'diffusers',
    'modelspec.resolution': `${side}x${side}`,
    'modelspec.prediction_type': 'epsilon',
    'modelspec.title': title,
    'modelspec.date': m.created_at,
    'modelspec.trigger_phrase': `${m.trigger_token} ${m.class_word}`.trim(),
  };
}

export function peftTensors(file: NativeAdapterFile, dtype: ExportDtype = 'F32'): Map<string, TensorToWrite> {
  const out = new Map<string, TensorToWrite>();
  const r = file.meta.rank;
  const scale = Math.fround(effectiveAlpha(file) / r);
  for (const path of file.targets.keys()) {
    const { up, down, dOut, dIn } = upDown(file, path);
    const scaledUp = new Float32Array(up.length);
    for (let i = 0; i < up.length; i++) scaledUp[i] = up[i] * scale;
    const name = peftName('unet', path);
    out.set(`${name}.lora_A.weight`, { dtype, shape: [r, dIn], data: down });
    out.set(`${name}.lora_B.weight`, { dtype, shape: [dOut, r], data: scaledUp });
  }
  return out;
}

export async function exportKohya(
  file: NativeAdapterFile,
  outPath: string,
  dtype: ExportDtype = 'F32',
  o: AtomicOptions = {},
): Promise<{ tensors: number }> {
  const tensors = kohyaTensors(file, dtype);
  await writeSafetensors(outPath, tensors, kohyaMetadata(file, outPath), o);
  return { tensors: tensors.size };
}

export async function exportPeft(
  file: NativeAdapterFile,
  outPath: string,
  dtype: ExportDtype = 'F32',
  o: AtomicOptions = {},
): Promise<{ tensors: number }> {
  const tensors = peftTensors(file, dtype);
  await writeSafetensors(
    outPath,
    tensors,
    { format: 'pt', source: 'singlora-studio', method: file.meta.method, rank: String(file.meta.rank) },
    o,
  );
  return { tensors: tensors.size };
}

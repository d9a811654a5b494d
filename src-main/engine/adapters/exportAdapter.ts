/**
 * `singlora export` and the app's Export screen: one native adapter file to the format a tool
 * loads, and `inspect` for what a file holds.
 *
 * | format               | writes                                                   | loads in |
 * | -------------------- | -------------------------------------------------------- | -------- |
 * | singlora             | a copy of the native file                                | SingLoRA Studio |
 * | kohya                | kohya LoRA (.safetensors)                                | A1111 / Forge, ComfyUI, InvokeAI, kohya's tools, diffusers `load_lora_weights` |
 * | diffusers            | PEFT-named LoRA (.safetensors, scale folded in)          | diffusers `load_lora_weights`, PEFT |
 * | merged-diffusers     | from a diffusers base: the whole pipeline folder (unet/ merged, every other file copied); from a single-file base: `<out>/unet/` only | diffusers `StableDiffusionPipeline.from_pretrained(out)` (single-file base: `UNet2DConditionModel.from_pretrained(out/unet)`) |
 * | merged-single-file   | an original-layout SD 1.x checkpoint (UNet merged, VAE and text encoder copied) | A1111, ComfyUI, any SD 1.5 checkpoint loader |
 *
 * Merged exports stream the base weights one tensor at a time, adding dW to the targets.
 *
 * Every file goes through io/atomic.ts, so an export never follows a symbolic link planted at its
 * destination or on the way there. The destination must be new unless `overwrite` is given: a
 * file is linked into place only if the name is free, a folder is made only if it does not exist.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { atomicCopyFile, atomicWriteJson, ensureDir, makeNewDir, type AtomicOptions } from '../io/atomic.ts';
import { COMPONENTS, originalShape, singleFileKeyMap, toSingleFileName, type ComponentName } from '../io/keyMap.ts';
import { openBaseModel, type OpenBaseModelOptions } from '../io/modelFiles.ts';
import { SafetensorsFile, writeSafetensors, type TensorToWrite } from '../io/safetensors.ts';
import { ADAPTER_FORMAT, adapterBytes, readAdapterFile, type NativeAdapterFile } from './adapterFile.ts';
import { exportKohya, exportPeft } from './export.ts';
import { nativeDelta } from './import.ts';

import { EXPORT_FORMATS, type WeightFileDtype } from '../../api/schemas.ts';

export { EXPORT_FORMATS };
export type ExportFormat = (typeof EXPORT_FORMATS)[number];

export interface ExportOptions {
  adapter: string;
  format: ExportFormat;
  /** Output file (or folder for merged-diffusers). */
  out: string;
  /** Base model, needed by the merged formats. */
  base?: string;
  baseOptions?: OpenBaseModelOptions;
  dtype?: WeightFileDtype;
  /** Replace an existing `out` (default: refuse, naming it). */
  overwrite?: boolean;
  onProgress?: (done: number, total: number) => void;
}

export interface ExportResult {
  format: ExportFormat;
  path: string;
  tensors: number;
}

export async function exportAdapter(o: ExportOptions): Promise<ExportResult> {
  if (!(EXPORT_FORMATS as readonly string[]).includes(o.format))
    throw new Error(`unknown export format '${o.format}'; choose one of ${EXPORT_FORMATS.join(', ')}`);
  const file = await readNativeAdapter(o.adapter);
  const dtype = o.dtype ?? 'F32';
  const write: AtomicOptions = { exclusive: !o.overwrite };
  switch (o.format) {
    case 'singlora':
      await atomicCopyFile(o.adapter, o.out, write);
      return {
        format: o.format,
        path: o.out,
        tensors: [...file.targets.values()].reduce((n, e) => n + Object.keys(e).length, 0),
      };
    case 'kohya':
      return { format: o.format, path: o.out, ...(await exportKohya(file, o.out, dtype, write)) };
    case 'diffusers':
      return { format: o.format, path: o.out, ...(await exportPeft(file, o.out, dtype, write)) };
    case 'merged-diffusers':
    case 'merged-single-file':
      if (!o.base)
        throw new Error(`--base is required for the ${o.format} export (the model the adapter is folded into)`);
      return exportMerged(file, o as ExportOptions & { base: string });
  }
}

const FOREIGN: Record<AdapterInspection['format'], string> = {
  native: 'a SingLoRA Studio adapter',
  kohya: 'a kohya LoRA (A1111, ComfyUI and kohya load it as it is)',
  peft: 'a PEFT / diffusers LoRA (diffusers loads it as it is)',
  'diffusers-procs': 'a diffusers attention-processor LoRA (diffusers loads it as it is)',
  mixed: 'a LoRA file of another tool',
  unknown: 'not an adapter file',
};

/**
 * The native adapter `path` holds. A file of another tool is named for what it is, not answered
 * with the native schema's complaints ("format_version: expected number, received NaN").
 */
export async function readNativeAdapter(path: string): Promise<NativeAdapterFile> {
  const what = await inspectAdapter(path);
  if (what.format !== 'native')
    throw new Error(
      `${path} is ${FOREIGN[what.format]}, not an adapter trained here: export converts SingLoRA Studio adapters (a run's checkpoints/step-N/adapter.safetensors, or a singlora export)`,
    );
  return readAdapterFile(path);
}

async function exportMerged(file: NativeAdapterFile, o: ExportOptions & { base: string }): Promise<ExportResult> {
  const base = await openBaseModel(o.base, o.baseOptions);
  try {
    const targets = new Set([...file.targets.keys()].map((p) => `${p}.weight`));
    const missing = [...targets].filter((k) => !base.unet.weights.shape(k));
    if (missing.length)
      throw new Error(
        `${file.path} does not fit ${o.base}: the UNet has no ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', ...' : ''}`,
      );
    let done = 0;
    const total =
      [...base.unet.weights.keys()].length +
      (o.format === 'merged-single-file'
        ? [...base.vae.weights.keys()].length + [...base.textEncoder.weights.keys()].length
        : 0);
    const readMerged = (component: ComponentName, key: string) => async (): Promise<Float32Array> => {
      const w =
        component === 'unet' ? base.unet.weights : component === 'vae' ? base.vae.weights : base.textEncoder.weights;
      const data = await w.read(key);
      if (component === 'unet' && targets.has(key)) {
        const delta = nativeDelta(file, key.slice(0, -'.weight'.length));
        const d = (await delta.data()) as Float32Array;
        delta.dispose();
        if (d.length !== data.length)
          throw new Error(`${key}: delta has ${d.length} values for a weight of ${data.length}`);
        for (let i = 0; i < data.length; i++) data[i] += d[i];
      }
      o.onProgress?.(++done, total);
      return data;
    };
    const dtype = o.dtype ?? 'F32';
    if (o.format === 'merged-diffusers') {
      const out = new Map<string, TensorToWrite>();
      for (const key of base.unet.weights.keys())
        out.set(key, { dtype, shape: base.unet.weights.shape(key)!, read: readMerged('unet', key) });
      if (o.overwrite) await ensureDir(o.out);
      else await makeNewDir(o.out);
      await atomicWriteJson(join(o.out, 'unet', 'config.json'), base.unet.config);
      await writeSafetensors(
        join(o.out, 'unet', 'diffusion_pytorch_model.safetensors'),
        out,
        await mergeMeta(file, base.name),
      );
      if (base.format !== 'diffusers') return { format: o.format, path: join(o.out, 'unet'), tensors: out.size };
      // A complete pipeline: model_index.json and every other component it names (VAE, text
      // encoder, tokenizer, scheduler) are the base's, copied as is (links followed). Nothing
      // else of the base folder (a README, the toy model's BUILD.md) is part of the pipeline.
      for (const entry of ['model_index.json', ...(await pipelineComponents(o.base))]) {
        if (entry === 'unet' || !existsSync(join(o.base, entry))) continue;
        await copyTree(join(o.base, entry), join(o.out, entry));
      }
      return { format: o.format, path: o.out, tensors: out.size };
    }
    const map = singleFileKeyMap({
      unet: base.unet.config,
      vae: base.vae.config,
      textEncoder: base.textEncoder.config,
    });
    const out = new Map<string, TensorToWrite>();
    for (const component of COMPONENTS) {
      const w =
        component === 'unet' ? base.unet.weights : component === 'vae' ? base.vae.weights : base.textEncoder.weights;
      for (const key of w.keys()) {
        if (key.endsWith('position_ids')) continue;
        const original = toSingleFileName(component, key, map);
        const pair = map.byOriginal.get(original)!;
        out.set(original, { dtype, shape: originalShape(pair, w.shape(key)!), read: readMerged(component, key) });
      }
    }
    await writeSafetensors(o.out, out, await mergeMeta(file, base.name), { exclusive: !o.overwrite });
    return { format: o.format, path: o.out, tensors: out.size };
  } finally {
    await base.close();
  }
}

/** The component folders a diffusers model_index.json names (`"vae": ["diffusers", "AutoencoderKL"]`). */
async function pipelineComponents(base: string): Promise<string[]> {
  const index = JSON.parse(await readFile(join(base, 'model_index.json'), 'utf8')) as Record<string, unknown>;
  return Object.entries(index)
    .filter(([k, v]) => !k.startsWith('_') && Array.isArray(v) && typeof v[0] === 'string' && !/[\\/]|^\.\.?$/.test(k))
    .map(([k]) => k);
}

/** `src` (a file or folder, links followed; hidden entries skipped) copied to `dest`, file by file. */
async function copyTree(src: string, dest: string): Promise<void> {
  const info = await stat(src);
  if (info.isFile()) return atomicCopyFile(src, dest);
  if (!info.isDirectory()) return;
  await ensureDir(dest);
  for (const entry of await readdir(src))
    if (!entry.startsWith('.')) await copyTree(join(src, entry), join(dest, entry));
}

/**
 * What a merged checkpoint records of the adapter in it. Its file name says nothing (every run's
 * checkpoints are adapter.safetensors), so the adapter is named by its content's sha256, its
 * steps and when it was made.
 */
async function mergeMeta(file: NativeAdapterFile, baseName: string): Promise<Record<string, string>> {
  return {
    format: 'pt',
    merged_adapter: `sha256:${createHash('sha256')
      .update(await readFile(file.path))
      .digest('hex')}`,
    merged_adapter_steps: String(file.meta.trained_steps),
    merged_adapter_created_at: file.meta.created_at,
    merged_method: file.meta.method,
    merged_rank: String(file.meta.rank),
    merged_effective_alpha: String(file.meta.alpha * (file.meta.method === 'singlora' ? file.meta.effective_u : 1)),
    base_model: baseName,
    trigger: `${file.meta.trigger_token} ${file.meta.class_word}`.trim(),
  };
}

export interface AdapterInspection {
  file: string;
  format: 'native' | 'kohya' | 'peft' | 'diffusers-procs' | 'mixed' | 'unknown';
  method: string;
  rank: number;
  alpha: number;
  targets: number;
  parameters: number;
  bytes: number;
  metadata: Record<string, string>;
}

/** What an adapter file holds: native files in full, other LoRA files by their tensor names. */
export async function inspectAdapter(path: string): Promise<AdapterInspection> {
  const f = await SafetensorsFile.open(path);
  try {
    const meta = { ...f.metadata };
    if (meta.format === ADAPTER_FORMAT) {
      const native = await readAdapterFile(path);
      return {
        file: path,
        format: 'native',
        method: native.meta.method,
        rank: native.meta.rank,
        alpha: native.meta.alpha,
        targets: native.targets.size,
        parameters: adapterBytes(native) / 4,
        bytes: adapterBytes(native),
        metadata: meta,
      };
    }
    const keys = f.keys();
    let params = 0;
    let bytes = 0;
    const modules = new Set<string>();
    let rank = 0;
    const kinds = new Set<string>();
    for (const k of keys) {
      const info = f.info(k);
      params += info.shape.reduce((a, b) => a * b, 1);
      bytes += info.end - info.begin;
      const m = /^(.*?)\.(lora_down|lora_A|lora_up|lora_B|alpha|processor|lora_linear_layer)/.exec(k);
      if (m) modules.add(m[1]);
      if (/lora_down\.weight$|lora_A\.weight$/.test(k)) rank = Math.max(rank, info.shape[0]);
      kinds.add(
        k.startsWith('lora_')
          ? 'kohya'
          : /\.lora_[AB]\.weight$/.test(k)
            ? 'peft'
            : /_lora\.(down|up)\.weight$|lora_linear_layer/.test(k)
              ? 'diffusers-procs'
              : 'unknown',
      );
    }
    const format = kinds.size === 1 ? ([...kinds][0] as AdapterInspection['format']) : 'mixed';
    const alpha = Number(meta.ss_network_alpha ?? rank);
    return {
      file: path,
      format,
      method: 'lora',
      rank,
      alpha,
      targets: modules.size,
      parameters: params,
      bytes,
      metadata: meta,
    };
  } finally {
    await f.close();
  }
}

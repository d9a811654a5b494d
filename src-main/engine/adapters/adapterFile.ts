/**
 * The native adapter file: `.safetensors`, one tensor per target named after its module path,
 *
 *   unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.singlora_A   [max(d_out,d_in), r]
 *   unet.<path>.lora_A [r, d_in]  and  unet.<path>.lora_B [d_out, r]               (method lora)
 *
 * and `__metadata__` (all strings, as safetensors requires) described by `AdapterMetadata`.
 * Loading validates the metadata and checks every tensor against the base model, listing
 * exactly what does not fit.
 */
import { z } from 'zod';
import { readAllFloat32, writeSafetensors, type TensorToWrite } from '../io/safetensors.ts';
import { Linear } from '../models/layers/linear.ts';
import { isWrapper, type Module } from '../models/layers/module.ts';
import { AdapterSet, type AdapterSpec } from './adapterSet.ts';
import { ramp } from './ramp.ts';

export const ADAPTER_FORMAT = 'singlora-studio-adapter';
export const ADAPTER_FORMAT_VERSION = 1;

const int = z.coerce.number().int();
const num = z.coerce.number().refine(Number.isFinite, 'must be a finite number');

/** The metadata schema; values are stored as strings and parsed back with this. */
export const adapterMetadataSchema = z.object({
  format: z.literal(ADAPTER_FORMAT, { message: `format must be '${ADAPTER_FORMAT}'` }),
  format_version: int.min(1).max(ADAPTER_FORMAT_VERSION, {
    message: `format_version is newer than this app reads (${ADAPTER_FORMAT_VERSION}); update SingLoRA Studio`,
  }),
  method: z.enum(['singlora', 'lora']),
  rank: int.min(1),
  alpha: num,
  ramp_steps: int.min(0),
  trained_steps: int.min(0),
  effective_u: num,
  init_std: num,
  targets: z.string().transform((s, ctx) => {
    try {
      const v = JSON.parse(s);
      if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v as string[];
    } catch {
      /* fall through */
    }
    ctx.addIssue({ code: 'custom', message: 'targets must be a JSON list of strings' });
    return z.NEVER;
  }),
  /** Per target path, [d_out, d_in] of the wrapped layer, so the file converts without the base model. */
  target_shapes: z.string().transform((s, ctx) => {
    try {
      const v = JSON.parse(s) as unknown;
      if (
        v &&
        typeof v === 'object' &&
        Object.values(v).every(
          (d) => Array.isArray(d) && d.length === 2 && d.every((x) => Number.isInteger(x) && x > 0),
        )
      )
        return v as Record<string, [number, number]>;
    } catch {
      /* fall through */
    }
    ctx.addIssue({ code: 'custom', message: 'target_shapes must be a JSON object of [d_out, d_in] pairs' });
    return z.NEVER;
  }),
  trigger_token: z.string(),
  class_word: z.string(),
  base_model_name: z.string(),
  base_model_unet_sha256: z.string(),
  created_at: z.string(),
  /** The side of the square training images, in pixels (absent in files written before it was recorded). */
  resolution: int.min(1).optional(),
});
export type AdapterMetadata = z.infer<typeof adapterMetadataSchema>;

export interface AdapterProvenance {
  trainedSteps: number;
  triggerToken: string;
  classWord: string;
  baseModelName: string;
  baseModelUnetSha256: string;
  createdAt?: Date;
  /** The training resolution (square side, px). */
  resolution?: number;
}

/** Writes the adapters of `set` (injected into the UNet) to a native file, atomically. */
export async function saveAdapter(path: string, set: AdapterSet, prov: AdapterProvenance): Promise<AdapterMetadata> {
  const spec = set.spec;
  const meta: AdapterMetadata = {
    format: ADAPTER_FORMAT,
    format_version: ADAPTER_FORMAT_VERSION,
    method: spec.method,
    rank: spec.rank,
    alpha: spec.alpha,
    ramp_steps: spec.rampSteps,
    trained_steps: prov.trainedSteps,
    effective_u: spec.method === 'singlora' ? ramp(prov.trainedSteps, spec.rampSteps) : 1,
    init_std: spec.initStd,
    targets: [...spec.targets],
    target_shapes: Object.fromEntries(
      set.adapters.map((a) => [a.path, [a.layer.outFeatures, a.layer.inFeatures] as [number, number]]),
    ),
    trigger_token: prov.triggerToken,
    class_word: prov.classWord,
    base_model_name: prov.baseModelName,
    base_model_unet_sha256: prov.baseModelUnetSha256,
    created_at: (prov.createdAt ?? new Date()).toISOString(),
    ...(prov.resolution ? { resolution: prov.resolution } : {}),
  };
  const tensors = new Map<string, TensorToWrite>();
  for (const [name, v] of set.namedTensors()) {
    tensors.set(`unet.${name}`, { shape: v.shape, data: (await v.data()) as Float32Array });
  }
  await writeSafetensors(path, tensors, metadataToStrings(meta));
  return meta;
}

export function metadataToStrings(meta: AdapterMetadata): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(meta)) out[k] = typeof v === 'object' ? JSON.stringify(v) : String(v);
  return out;
}

export interface NativeAdapterFile {
  readonly path: string;
  readonly meta: AdapterMetadata;
  /** Per target path (inside the UNet), the adapter's tensors by name (`singlora_A`, `lora_A`, ...). */
  readonly targets: ReadonlyMap<string, Record<string, { shape: number[]; data: Float32Array }>>;
}

/** Reads and validates a native adapter file (metadata and tensor names; not yet shapes). */
export async function readAdapterFile(path: string): Promise<NativeAdapterFile> {
  const { tensors, metadata } = await readAllFloat32(path);
  const parsed = adapterMetadataSchema.safeParse(metadata);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join('.') || '(metadata)'}: ${i.message}`);
    throw new Error(`${path}: not a SingLoRA Studio adapter file, or a damaged one:\n  ${problems.join('\n  ')}`);
  }
  const meta = parsed.data;
  const names = meta.method === 'singlora' ? ['singlora_A'] : ['lora_A', 'lora_B'];
  const targets = new Map<string, Record<string, { shape: number[]; data: Float32Array }>>();
  const bad: string[] = [];
  for (const [key, t] of tensors) {
    const m = /^unet\.(.+)\.([A-Za-z_]+)$/.exec(key);
    if (!m || !names.includes(m[2])) {
      bad.push(`${key}: expected 'unet.<module path>.${names.join("' or '.")}' for a ${meta.method} adapter`);
      continue;
    }
    const entry = targets.get(m[1]) ?? {};
    entry[m[2]] = t;
    targets.set(m[1], entry);
  }
  for (const [p, entry] of targets) {
    for (const n of names) if (!entry[n]) bad.push(`unet.${p}: missing '${n}'`);
    const dims = meta.target_shapes[p];
    if (!dims) {
      bad.push(`unet.${p}: no entry in target_shapes`);
      continue;
    }
    const [dOut, dIn] = dims;
    const want: Record<string, number[]> =
      meta.method === 'singlora'
        ? { singlora_A: [Math.max(dOut, dIn), meta.rank] }
        : { lora_A: [meta.rank, dIn], lora_B: [dOut, meta.rank] };
    for (const [n, shape] of Object.entries(want)) {
      const got = entry[n]?.shape;
      if (got && (got.length !== 2 || got[0] !== shape[0] || got[1] !== shape[1]))
        bad.push(`unet.${p}.${n}: shape [${got}] but a ${dIn}->${dOut} layer at rank ${meta.rank} needs [${shape}]`);
    }
  }
  if (bad.length) throw new Error(`${path}: unexpected adapter tensors:\n  ${bad.join('\n  ')}`);
  if (!targets.size) throw new Error(`${path}: the adapter file holds no tensors`);
  return { path, meta, targets };
}

/**
 * Every way `file` does not fit `unet`: targets that are not Linear layers in the model, and
 * shapes that do not match the layer's (d_in, d_out). Empty when it fits.
 */
export function checkFits(file: NativeAdapterFile, unet: Module): string[] {
  const linears = new Map<string, Linear>();
  for (const [modPath, mod] of unet.namedModules()) {
    for (const [key, value] of mod.entries()) {
      const layer =
        value instanceof Linear ? value : isWrapper(value) && value.base instanceof Linear ? value.base : null;
      if (layer) linears.set(modPath ? `${modPath}.${key}` : key, layer);
    }
  }
  const problems: string[] = [];
  const r = file.meta.rank;
  for (const [path, entry] of file.targets) {
    const lin = linears.get(path);
    if (!lin) {
      problems.push(`unet.${path}: the base model has no Linear layer at this path`);
      continue;
    }
    const want: Record<string, number[]> =
      file.meta.method === 'singlora'
        ? { singlora_A: [Math.max(lin.inFeatures, lin.outFeatures), r] }
        : { lora_A: [r, lin.inFeatures], lora_B: [lin.outFeatures, r] };
    for (const [name, shape] of Object.entries(want)) {
      const got = entry[name].shape;
      if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) {
        problems.push(
          `unet.${path}.${name}: shape [${got}] but the base model's ${lin.inFeatures}->${lin.outFeatures} layer at rank ${r} needs [${shape}]`,
        );
      }
    }
  }
  return problems;
}

/**
 * Injects the adapters stored in `file` into `unet` (unmerged, ready to train on or merge).
 * Throws with the full list of problems when the file does not fit the model.
 */
export function injectFromFile(unet: Module, file: NativeAdapterFile): AdapterSet {
  const problems = checkFits(file, unet);
  if (problems.length) {
    throw new Error(
      `${file.path} does not fit this base model (made for '${file.meta.base_model_name}'):\n  ${problems.slice(0, 20).join('\n  ')}${problems.length > 20 ? `\n  ... and ${problems.length - 20} more` : ''}`,
    );
  }
  const spec: AdapterSpec = {
    method: file.meta.method,
    rank: file.meta.rank,
    alpha: file.meta.alpha,
    rampSteps: file.meta.ramp_steps,
    targets: file.meta.targets,
    initStd: file.meta.init_std,
  };
  const values = new Map<string, Record<string, Float32Array>>();
  for (const [p, entry] of file.targets)
    values.set(p, Object.fromEntries(Object.entries(entry).map(([n, t]) => [n, t.data])));
  const set = AdapterSet.inject(unet, spec, { values });
  set.setStep(file.meta.trained_steps);
  return set;
}

/** Keeps tfjs out of callers that only need sizes: bytes of an adapter's float32 tensors. */
export function adapterBytes(file: NativeAdapterFile): number {
  let n = 0;
  for (const entry of file.targets.values()) for (const t of Object.values(entry)) n += t.data.length * 4;
  return n;
}

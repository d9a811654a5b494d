/**
 * Applying adapter files made by this app or by other tools, for generation.
 *
 * Reads a native SingLoRA Studio file, a kohya LoRA/LoCon file, or a diffusers/PEFT LoRA file;
 * computes each module's dW with the same `singloraDelta` / `loraDelta` the layers use; and
 * reports what it applied ("applied x of y tensors") and every tensor it did not, with why,
 * as stable-diffusion.cpp's LoRA loader does.
 */
import { basename } from 'node:path';
import { tf, type Tensor } from '../backend/tf.ts';
import { readAllFloat32 } from '../io/safetensors.ts';
import { kohyaLookup, parseLoraKey, type LoraComponent, type ParsedLoraKey } from '../io/keyMap.ts';
import type { Module } from '../models/layers/module.ts';
import { ADAPTER_FORMAT, readAdapterFile, type NativeAdapterFile } from './adapterFile.ts';
import { loraDelta } from './lora.ts';
import { findWeight, moduleIndex, type WeightPatcher } from './patch.ts';
import { singloraDelta } from './singlora.ts';
import { Linear } from '../models/layers/linear.ts';
import type { SideFactors } from '../onnx/onnxDiffusion.ts';

export interface AdapterTargets {
  unet: Module;
  textEncoder?: Module;
}

export interface PlannedDelta {
  component: LoraComponent;
  path: string;
  /** Checkpoint layout, strength included. Owned by the plan until `dispose()`. */
  delta: Tensor;
  /** The file's tensors this delta comes from. */
  keys: string[];
  /**
   * The same update as low-rank factors, y += (x · down) · up with every scale in `up`, for a
   * Linear target (ONNX graphs take these as inputs); absent for a convolution.
   */
  factors?: SideFactors;
}

export interface ImportReport {
  file: string;
  format: 'native' | 'kohya' | 'peft' | 'diffusers-procs' | 'mixed';
  appliedTensors: number;
  totalTensors: number;
  modules: number;
  unapplied: Array<{ key: string; reason: string }>;
  /** "applied x of y tensors" */
  summary: string;
  /** The base model the file records it was trained on (native files), else null. */
  recordedBase: { name: string; unetSha256: string } | null;
}

/** A report checked against the loaded base model: what a user should be warned about. */
export interface AdapterCheck extends ImportReport {
  /** Why the adapter may not suit this base model (recorded hash differs), else null. */
  baseMismatch: string | null;
}

/**
 * Compares what an adapter file records about its base model with the loaded one
 * (`unetSha256` of the base's UNet, as training records it).
 */
export function checkAdapterBase(report: ImportReport, base: { name: string; unetSha256: string }): AdapterCheck {
  const r = report.recordedBase;
  const baseMismatch =
    r?.unetSha256 && r.unetSha256 !== base.unetSha256
      ? `${basename(report.file)} was trained on '${r.name}' (UNet sha256 ${r.unetSha256.slice(0, 12)}), not on this base model '${base.name}' (${base.unetSha256.slice(0, 12)}); it may give poor images`
      : null;
  return { ...report, baseMismatch };
}

/** The lines a user sees for one adapter: the summary, the mismatch, and every unused tensor with why. */
export function formatAdapterCheck(c: AdapterCheck): string[] {
  const lines = [c.summary];
  if (c.baseMismatch) lines.push(`warning: ${c.baseMismatch}`);
  if (c.unapplied.length) {
    lines.push(`warning: ${c.unapplied.length} tensor(s) of ${basename(c.file)} not used:`);
    for (const u of c.unapplied) lines.push(`  ${u.key}: ${u.reason}`);
  }
  return lines;
}

/** Why `--strict` refuses an adapter, or null when it fits. */
export function strictProblem(c: AdapterCheck): string | null {
  const unused = c.unapplied.length
    ? `${basename(c.file)}: ${c.unapplied.length} of ${c.totalTensors} tensors cannot be used (first: ${c.unapplied[0].key}: ${c.unapplied[0].reason})`
    : null;
  const problems = [c.baseMismatch, unused].filter((p) => p !== null);
  return problems.length ? problems.join('; ') : null;
}

export class AdapterPlan {
  constructor(
    readonly report: ImportReport,
    readonly deltas: PlannedDelta[],
  ) {}

  /** Adds every delta into the models' weights through `patcher`. */
  applyTo(targets: AdapterTargets, patcher: WeightPatcher): void {
    for (const d of this.deltas) {
      const model = d.component === 'unet' ? targets.unet : targets.textEncoder;
      const param = model && findWeight(model, d.path);
      if (!param) throw new Error(`${this.report.file}: ${d.component}.${d.path} vanished from the model`);
      patcher.add(param, d.delta);
    }
  }

  dispose(): void {
    for (const d of this.deltas) d.delta.dispose();
  }
}

interface Group {
  component: LoraComponent;
  path: string | null;
  rawName: string;
  format: ParsedLoraKey['format'];
  tensors: Partial<
    Record<'down' | 'up' | 'alpha' | 'singlora_A', { key: string; shape: number[]; data: Float32Array }>
  >;
}

/** "<file>: applied x of y tensors to m modules", the one line every report starts with. */
export function adapterSummary(file: string, applied: number, total: number, modules: number): string {
  return `${basename(file)}: applied ${applied} of ${total} tensors to ${modules} modules`;
}

/**
 * Reads `file` and computes the deltas it makes on `targets` at `strength`. Nothing is applied
 * yet: call `plan.applyTo(...)`, and `plan.dispose()` when done.
 */
export async function planAdapter(file: string, targets: AdapterTargets, strength = 1): Promise<AdapterPlan> {
  if (!Number.isFinite(strength)) throw new Error(`adapter strength must be a number, got ${strength}`);
  const { tensors, metadata } = await readAllFloat32(file);
  if (metadata.format === ADAPTER_FORMAT) return planNative(file, targets, strength);

  const unapplied: Array<{ key: string; reason: string }> = [];
  const groups = new Map<string, Group>();
  const lookups = new Map<LoraComponent, Map<string, string>>();
  const lookup = (c: LoraComponent): Map<string, string> => {
    let m = lookups.get(c);
    if (!m) {
      const model = c === 'unet' ? targets.unet : targets.textEncoder;
      m = model ? kohyaLookup(moduleIndex(model).keys()) : new Map();
      lookups.set(c, m);
    }
    return m;
  };
  for (const [key, t] of tensors) {
    const parsed = parseLoraKey(key);
    if ('unsupported' in parsed) {
      unapplied.push({ key, reason: parsed.unsupported });
      continue;
    }
    const model = parsed.component === 'unet' ? targets.unet : targets.textEncoder;
    let path: string | null = parsed.module;
    if (!model) path = null;
    else if (parsed.underscored) path = lookup(parsed.component).get(parsed.module) ?? null;
    else if (!moduleIndex(model).has(parsed.module)) path = null;
    const gkey = `${parsed.component}:${parsed.module}`;
    const g = groups.get(gkey) ?? {
      component: parsed.component,
      path,
      rawName: parsed.module,
      format: parsed.format,
      tensors: {},
    };
    g.tensors[parsed.role] = { key, shape: t.shape, data: t.data };
    groups.set(gkey, g);
  }

  const deltas: PlannedDelta[] = [];
  const formats = new Set<string>();
  let applied = 0;
  try {
    for (const g of groups.values()) {
      const keys = Object.values(g.tensors).map((t) => t!.key);
      const reject = (reason: string) => keys.forEach((key) => unapplied.push({ key, reason }));
      if (!g.path) {
        const where =
          g.component === 'text_encoder' && !targets.textEncoder
            ? 'no text encoder was given'
            : `no Linear or Conv2d named '${g.rawName}' in the ${g.component}`;
        reject(where);
        continue;
      }
      const { down, up, alpha } = g.tensors;
      if (!down || !up) {
        reject(`incomplete pair: ${down ? 'lora_up/lora_B' : 'lora_down/lora_A'} is missing`);
        continue;
      }
      const rank = down.shape[0];
      const model = g.component === 'unet' ? targets.unet : targets.textEncoder!;
      const param = findWeight(model, g.path)!;
      const upOk =
        up.shape[1] === rank &&
        up.shape[0] === param.shape[0] &&
        (up.shape.length === 2 || (up.shape[2] === 1 && up.shape[3] === 1));
      const downIn = down.shape.slice(1);
      const paramIn = param.shape.slice(1);
      const downOk =
        downIn[0] === paramIn[0] &&
        (paramIn.length === 1 ||
          (downIn.length === 1
            ? paramIn[1] === 1 && paramIn[2] === 1
            : downIn[1] === paramIn[1] && downIn[2] === paramIn[2]));
      if (!upOk || !downOk) {
        reject(`shapes down [${down.shape}] / up [${up.shape}] do not fit ${g.component}.${g.path} [${param.shape}]`);
        continue;
      }
      // kohya: scale = alpha / rank (alpha defaults to rank); diffusers/PEFT: scale folded in.
      const alphaValue = alpha ? alpha.data[0] : rank;
      const scale = (alphaValue / rank) * strength;
      const delta = tf.tidy(() => loraDelta(tf.tensor(up.data, up.shape), tf.tensor(down.data, down.shape), scale));
      const factors =
        moduleIndex(model).get(g.path) instanceof Linear
          ? loraFactors(g.component, g.path, up.data, down.data, rank, param.shape[0], param.shape[1], scale)
          : undefined;
      deltas.push({ component: g.component, path: g.path, delta, keys, ...(factors ? { factors } : {}) });
      applied += keys.length;
      formats.add(g.format);
    }
  } catch (err) {
    for (const d of deltas) d.delta.dispose();
    throw err;
  }
  const total = tensors.size;
  const format =
    formats.size === 1 ? ([...formats][0] as ImportReport['format']) : formats.size === 0 ? 'kohya' : 'mixed';
  return new AdapterPlan(
    {
      file,
      format,
      appliedTensors: applied,
      totalTensors: total,
      modules: deltas.length,
      unapplied,
      summary: adapterSummary(file, applied, total, deltas.length),
      recordedBase: null,
    },
    deltas,
  );
}

async function planNative(file: string, targets: AdapterTargets, strength: number): Promise<AdapterPlan> {
  const f = await readAdapterFile(file);
  const deltas: PlannedDelta[] = [];
  const unapplied: Array<{ key: string; reason: string }> = [];
  let applied = 0;
  let total = 0;
  for (const [path, entry] of f.targets) {
    const names = Object.keys(entry);
    total += names.length;
    const param = findWeight(targets.unet, path);
    const [dOut, dIn] = f.meta.target_shapes[path];
    if (!param || param.shape[0] !== dOut || param.shape[1] !== dIn) {
      for (const n of names)
        unapplied.push({
          key: `unet.${path}.${n}`,
          reason: param
            ? `made for a ${dIn}->${dOut} layer; the model's is [${param.shape}]`
            : 'no such Linear in the UNet',
        });
      continue;
    }
    deltas.push({
      component: 'unet',
      path,
      delta: nativeDelta(f, path, strength),
      keys: names.map((n) => `unet.${path}.${n}`),
      factors: nativeFactors(f, path, strength),
    });
    applied += names.length;
  }
  const recordedBase = { name: f.meta.base_model_name, unetSha256: f.meta.base_model_unet_sha256 };
  return new AdapterPlan(
    {
      file,
      format: 'native',
      appliedTensors: applied,
      totalTensors: total,
      modules: deltas.length,
      unapplied,
      summary: adapterSummary(file, applied, total, deltas.length),
      recordedBase,
    },
    deltas,
  );
}

/**
 * dW of one target of a native adapter file, [d_out, d_in], at its trained step and `strength`.
 * The caller owns the tensor.
 */
export function nativeDelta(f: NativeAdapterFile, path: string, strength = 1): Tensor {
  const entry = f.targets.get(path);
  if (!entry) throw new Error(`${f.path}: no adapter for '${path}'`);
  const { method, rank, alpha, effective_u: u } = f.meta;
  const scale = (alpha / rank) * (method === 'singlora' ? u : 1) * strength;
  const [dOut, dIn] = f.meta.target_shapes[path];
  return method === 'singlora'
    ? tf.tidy(() => singloraDelta(tf.tensor(entry.singlora_A.data, entry.singlora_A.shape), dOut, dIn, scale))
    : tf.tidy(() =>
        loraDelta(
          tf.tensor(entry.lora_B.data, entry.lora_B.shape),
          tf.tensor(entry.lora_A.data, entry.lora_A.shape),
          scale,
        ),
      );
}

/**
 * LoRA factors in side-path layout from up [out, r] and down [r, in] (row-major):
 * down' = down^T [in, r], up' = scale * up^T [r, out].
 */
function loraFactors(
  component: LoraComponent,
  path: string,
  up: Float32Array,
  down: Float32Array,
  rank: number,
  dOut: number,
  dIn: number,
  scale: number,
): SideFactors {
  const d = new Float32Array(dIn * rank);
  const u = new Float32Array(rank * dOut);
  for (let r = 0; r < rank; r++) {
    for (let i = 0; i < dIn; i++) d[i * rank + r] = down[r * dIn + i];
    for (let o = 0; o < dOut; o++) u[r * dOut + o] = scale * up[o * rank + r];
  }
  return { component: component === 'unet' ? 'unet' : 'text_encoder', path, down: d, up: u, rank };
}

/**
 * Side-path factors of one target of a native file, at its trained step and `strength`:
 * SingLoRA down = A[:d_in] [d_in, r], up = s * A[:d_out]^T [r, d_out]; LoRA as `loraFactors`.
 */
export function nativeFactors(f: NativeAdapterFile, path: string, strength = 1): SideFactors {
  const entry = f.targets.get(path);
  if (!entry) throw new Error(`${f.path}: no adapter for '${path}'`);
  const { method, rank, alpha, effective_u: u } = f.meta;
  const scale = (alpha / rank) * (method === 'singlora' ? u : 1) * strength;
  const [dOut, dIn] = f.meta.target_shapes[path];
  if (method !== 'singlora')
    return loraFactors('unet', path, entry.lora_B.data, entry.lora_A.data, rank, dOut, dIn, scale);
  const A = entry.singlora_A.data; // [max(d_out, d_in), r]
  const down = A.slice(0, dIn * rank);
  const up = new Float32Array(rank * dOut);
  for (let o = 0; o < dOut; o++) for (let r = 0; r < rank; r++) up[r * dOut + o] = scale * A[o * rank + r];
  return { component: 'unet', path, down, up, rank };
}

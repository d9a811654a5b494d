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
import {
  kohyaLookup,
  parseLoraKey,
  unetOriginalModules,
  type LoraComponent,
  type ParsedLoraKey,
} from '../io/keyMap.ts';
import type { Module } from '../models/layers/module.ts';
import { ADAPTER_FORMAT, readAdapterFile, type NativeAdapterFile } from './adapterFile.ts';
import { loraDelta } from './lora.ts';
import { findWeight, moduleIndex, type WeightPatcher } from './patch.ts';
import { singloraDelta } from './singlora.ts';
import { Linear } from '../models/layers/linear.ts';
import { UNet2DConditionModel } from '../models/unet2dCondition.ts';
import type { SideFactors } from '../onnx/onnxDiffusion.ts';

export interface AdapterTargets {
  unet: Module;
  textEncoder?: Module;
}

/**
 * One module's update. `delta` (dW in checkpoint layout, strength included) is computed with
 * TensorFlow.js on first read, for weight patching; the ONNX Runtime engine reads only `factors`,
 * so it never computes dense deltas nor loads TensorFlow.js. The plan owns dW until `dispose()`.
 */
export class PlannedDelta {
  private dense: Tensor | null = null;

  constructor(
    readonly component: LoraComponent,
    readonly path: string,
    /** The file's tensors this delta comes from. */
    readonly keys: string[],
    private readonly computeDelta: () => Tensor,
    /**
     * The same update as low-rank factors, y += (x · down) · up with every scale in `up`, for a
     * Linear target (ONNX graphs take these as inputs); absent for a convolution.
     */
    readonly factors?: SideFactors,
  ) {}

  get delta(): Tensor {
    this.dense ??= this.computeDelta();
    return this.dense;
  }

  dispose(): void {
    this.dense?.dispose();
    this.dense = null;
  }
}

export interface ImportReport {
  file: string;
  format: ParsedLoraKey['format'] | 'mixed';
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
    for (const d of this.deltas) d.dispose();
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

export interface PlanOptions {
  /**
   * Use a file even when some of its tensors cannot be applied (they are listed in the report).
   * Without it such a file is an error: a LoRA applied in part is a different LoRA.
   */
  allowPartial?: boolean;
}

/** The error for a file only partly applicable, naming what cannot be used and how to use it anyway. */
export class PartialAdapterError extends Error {
  constructor(readonly report: ImportReport) {
    const shown = report.unapplied.slice(0, 5).map((u) => `${u.key}: ${u.reason}`);
    const more = report.unapplied.length > shown.length ? `; and ${report.unapplied.length - shown.length} more` : '';
    super(
      `${basename(report.file)}: only ${report.appliedTensors} of ${report.totalTensors} tensors can be applied (${shown.join('; ')}${more}); ` +
        'a LoRA applied in part changes the image differently from the whole one. Use a file made for SD 1.x, ' +
        'or ask for partial use (--allow-partial on the command line) to apply the rest anyway',
    );
    this.name = 'PartialAdapterError';
  }
}

/**
 * Reads `file` and computes the deltas it makes on `targets` at `strength`. Nothing is applied
 * yet: call `plan.applyTo(...)`, and `plan.dispose()` when done. A file with tensors that cannot be
 * applied is a `PartialAdapterError` unless `options.allowPartial`.
 */
export async function planAdapter(
  file: string,
  targets: AdapterTargets,
  strength = 1,
  options: PlanOptions = {},
): Promise<AdapterPlan> {
  if (!Number.isFinite(strength)) throw new Error(`adapter strength must be a number, got ${strength}`);
  const { tensors, metadata } = await readAllFloat32(file);
  const plan =
    metadata.format === ADAPTER_FORMAT
      ? await planNative(file, targets, strength)
      : planForeign(file, tensors, targets, strength);
  if (plan.report.unapplied.length && !options.allowPartial) {
    plan.dispose();
    throw new PartialAdapterError(plan.report);
  }
  return plan;
}

type FloatTensors = Awaited<ReturnType<typeof readAllFloat32>>['tensors'];

/** kohya's underscored names -> module paths of one component (with the UNet's original-layout names). */
function kohyaLookups(targets: AdapterTargets): (c: LoraComponent) => Map<string, string> {
  const lookups = new Map<LoraComponent, Map<string, string>>();
  return (c) => {
    let m = lookups.get(c);
    if (!m) {
      const model = c === 'unet' ? targets.unet : targets.textEncoder;
      m = model ? kohyaLookup(moduleIndex(model).keys(), originalModules(model)) : new Map();
      lookups.set(c, m);
    }
    return m;
  };
}

const originalsCache = new WeakMap<Module, Map<string, string>>();

/** Original-layout (LDM) module path -> diffusers path, for a UNet; empty for other models. */
function originalModules(model: Module): Map<string, string> {
  let map = originalsCache.get(model);
  if (!map) {
    map = model instanceof UNet2DConditionModel ? unetOriginalModulesOf(model) : new Map<string, string>();
    originalsCache.set(model, map);
  }
  return map;
}

function unetOriginalModulesOf(model: UNet2DConditionModel): Map<string, string> {
  const c = model.config;
  return unetOriginalModules({
    down_block_types: c.downBlockTypes,
    up_block_types: c.upBlockTypes,
    block_out_channels: c.blockOutChannels,
    layers_per_block: c.layersPerBlock,
    transformer_layers_per_block: c.transformerLayersPerBlock,
  });
}

/** The module a parsed key names inside `targets`, or null when there is none. */
function resolveModule(
  parsed: ParsedLoraKey,
  targets: AdapterTargets,
  kohya: (c: LoraComponent) => Map<string, string>,
): string | null {
  const model = parsed.component === 'unet' ? targets.unet : targets.textEncoder;
  if (!model) return null;
  if (parsed.underscored) return kohya(parsed.component).get(parsed.module) ?? null;
  const path = parsed.original ? (originalModules(model).get(parsed.module) ?? null) : parsed.module;
  return path !== null && moduleIndex(model).has(path) ? path : null;
}

/** Groups a foreign LoRA file's tensors by the module they adapt; keys that are not LoRA tensors go to `unapplied`. */
function groupTensors(
  tensors: FloatTensors,
  targets: AdapterTargets,
  unapplied: Array<{ key: string; reason: string }>,
): Map<string, Group> {
  const groups = new Map<string, Group>();
  const kohya = kohyaLookups(targets);
  for (const [key, t] of tensors) {
    const parsed = parseLoraKey(key);
    if ('unsupported' in parsed) {
      unapplied.push({ key, reason: parsed.unsupported });
      continue;
    }
    const path = resolveModule(parsed, targets, kohya);
    const gkey = `${parsed.component}:${path ?? parsed.module}`;
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
  return groups;
}

function planForeign(file: string, tensors: FloatTensors, targets: AdapterTargets, strength: number): AdapterPlan {
  const unapplied: Array<{ key: string; reason: string }> = [];
  const groups = groupTensors(tensors, targets, unapplied);
  const deltas: PlannedDelta[] = [];
  const formats = new Set<ParsedLoraKey['format']>();
  let applied = 0;
  try {
    for (const g of groups.values()) {
      const keys = Object.values(g.tensors).map((t) => t!.key);
      const planned = planGroup(g, targets, strength);
      if ('reason' in planned) {
        for (const key of keys) unapplied.push({ key, reason: planned.reason });
        continue;
      }
      deltas.push(new PlannedDelta(planned.component, planned.path, keys, planned.delta, planned.factors));
      applied += keys.length;
      formats.add(g.format);
    }
  } catch (err) {
    for (const d of deltas) d.dispose();
    throw err;
  }
  const total = tensors.size;
  const format = formats.size === 1 ? [...formats][0] : formats.size === 0 ? 'kohya' : 'mixed';
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

/** One module's delta (and side-path factors for a Linear) from its down/up pair, or why it cannot be made. */
function planGroup(
  g: Group,
  targets: AdapterTargets,
  strength: number,
): { component: LoraComponent; path: string; delta: () => Tensor; factors?: SideFactors } | { reason: string } {
  if (!g.path) {
    const noTextEncoder = g.component === 'text_encoder' && !targets.textEncoder;
    return {
      reason: noTextEncoder
        ? 'no text encoder was given'
        : `no Linear or Conv2d named '${g.rawName}' in the ${g.component}`,
    };
  }
  const { down, up, alpha } = g.tensors;
  if (!down || !up) return { reason: `incomplete pair: ${down ? 'lora_up/lora_B' : 'lora_down/lora_A'} is missing` };
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
  if (!upOk || !downOk)
    return {
      reason: `shapes down [${down.shape}] / up [${up.shape}] do not fit ${g.component}.${g.path} [${param.shape}]`,
    };
  // kohya: scale = alpha / rank (alpha defaults to rank); diffusers/PEFT: scale folded in.
  const alphaValue = alpha ? alpha.data[0] : rank;
  const scale = (alphaValue / rank) * strength;
  const delta = () => tf.tidy(() => loraDelta(tf.tensor(up.data, up.shape), tf.tensor(down.data, down.shape), scale));
  const factors =
    moduleIndex(model).get(g.path) instanceof Linear
      ? loraFactors(g.component, g.path, up.data, down.data, rank, param.shape[0], param.shape[1], scale)
      : undefined;
  return { component: g.component, path: g.path, delta, ...(factors ? { factors } : {}) };
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
    deltas.push(
      new PlannedDelta(
        'unet',
        path,
        names.map((n) => `unet.${path}.${n}`),
        () => nativeDelta(f, path, strength),
        nativeFactors(f, path, strength),
      ),
    );
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

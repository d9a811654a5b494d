/**
 * A minimal module tree whose property paths mirror checkpoint keys.
 *
 * A model is built from its config as a tree of `Module`s holding `Param` slots with their
 * PyTorch shapes; weights are then loaded by one straight walk (`loadParams`) that checks every
 * key and shape and lists what is missing or unexpected. Property names are the checkpoint's own
 * (`down_blocks`, `to_q`, `to_out`), so `unet.down_blocks[0].attentions[0]` is the key prefix
 * `down_blocks.0.attentions.0`.
 *
 * Layout: a Param stores its tensor in the layout TensorFlow.js computes with, converted once at
 * load time. `linear` weights are stored [in, out] (PyTorch [out, in]; an explicit transpose
 * because wasm's matMul with transposeB is ~10x slower) and `conv` weights [kh, kw, in, out]
 * (PyTorch [out, in, kh, kw]).
 *
 * Ownership: a Module owns its Params' tensors; `dispose()` frees them.
 */
import { tf, type Tensor } from '../../backend/tf.ts';
import { openComponentWeights } from '../../io/componentFolder.ts';
import type { SafetensorsFile } from '../../io/safetensors.ts';
import { safetensorsSource, type WeightSource } from '../../io/weightSource.ts';

// WeightSource (where weights come from) is io's; re-exported here, where loadParams walks it.
export type { TensorLocation, WeightSource } from '../../io/weightSource.ts';

export type ParamLayout = 'plain' | 'linear' | 'conv';

export class Param {
  private tensor: Tensor | null = null;
  constructor(
    /** The PyTorch (checkpoint) shape. */
    readonly shape: readonly number[],
    readonly layout: ParamLayout = 'plain',
  ) {}

  get loaded(): boolean {
    return this.tensor !== null;
  }

  /** The tensor in compute layout. Throws if the weights were never loaded. */
  get value(): Tensor {
    if (!this.tensor) throw new Error(`parameter of shape [${this.shape}] used before its weights were loaded`);
    return this.tensor;
  }

  /** Takes ownership of a tensor already in compute layout (disposes the old one). */
  setValue(t: Tensor): void {
    const want = computeShape(this.shape, this.layout);
    if (!sameShape(t.shape, want))
      throw new Error(`Param.setValue: expected compute shape [${want}], got [${t.shape}]`);
    if (this.tensor && this.tensor !== t) this.tensor.dispose();
    this.tensor = t;
  }

  /**
   * Puts `t` in place and hands the previous tensor back to the caller, undisposed (used by
   * merge/unmerge, which keep the original weight to restore it exactly).
   */
  swapValue(t: Tensor): Tensor | null {
    const want = computeShape(this.shape, this.layout);
    if (!sameShape(t.shape, want))
      throw new Error(`Param.swapValue: expected compute shape [${want}], got [${t.shape}]`);
    const prev = this.tensor;
    this.tensor = t;
    return prev;
  }

  /** Sets the value from checkpoint-layout float32 data. */
  setFromCheckpoint(data: Float32Array): void {
    this.setValue(tf.tidy(() => toComputeLayout(tf.tensor(data, [...this.shape], 'float32'), this.layout)));
  }

  /** A new tensor in checkpoint (PyTorch) layout; the caller owns it. */
  checkpointValue(): Tensor {
    return tf.tidy(() => toCheckpointLayout(this.value, this.layout));
  }

  dispose(): void {
    this.tensor?.dispose();
    this.tensor = null;
  }
}

export function computeShape(shape: readonly number[], layout: ParamLayout): number[] {
  if (layout === 'linear') return [shape[1], shape[0]];
  if (layout === 'conv') return [shape[2], shape[3], shape[1], shape[0]];
  return [...shape];
}

export function toComputeLayout(t: Tensor, layout: ParamLayout): Tensor {
  if (layout === 'linear') return tf.transpose(t, [1, 0]);
  if (layout === 'conv') return tf.transpose(t, [2, 3, 1, 0]);
  return t;
}

export function toCheckpointLayout(t: Tensor, layout: ParamLayout): Tensor {
  if (layout === 'linear') return tf.transpose(t, [1, 0]);
  if (layout === 'conv') return tf.transpose(t, [3, 2, 0, 1]);
  return tf.clone(t);
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/**
 * Something that stands in for a base module at the same checkpoint path (an adapter wrapping a
 * Linear). The walk descends into `base` without adding a path segment, so the base weights keep
 * their checkpoint names.
 */
export interface Wrapper {
  readonly base: Module;
  readonly isWrapper: true;
}

export function isWrapper(v: unknown): v is Wrapper {
  return typeof v === 'object' && v !== null && (v as Wrapper).isWrapper === true;
}

export abstract class Module {
  /** Children and params by checkpoint path segment, in declaration order. */
  *entries(): Iterable<[string, Module | Param | Wrapper]> {
    for (const [key, value] of Object.entries(this)) {
      if (value instanceof Param || value instanceof Module || isWrapper(value)) yield [key, value];
      else if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) {
          const item: unknown = value[i];
          if (item instanceof Param || item instanceof Module || isWrapper(item)) yield [`${key}.${i}`, item];
        }
      }
    }
  }

  /** Every base parameter with its full checkpoint key. */
  *namedParams(prefix = ''): Iterable<[string, Param]> {
    for (const [key, value] of this.entries()) {
      const path = prefix ? `${prefix}.${key}` : key;
      if (value instanceof Param) yield [path, value];
      else if (value instanceof Module) yield* value.namedParams(path);
      else yield* value.base.namedParams(path);
    }
  }

  /** Every module (including wrappers' bases) with its path; the root is ''. */
  *namedModules(prefix = ''): Iterable<[string, Module]> {
    yield [prefix, this];
    for (const [key, value] of this.entries()) {
      const path = prefix ? `${prefix}.${key}` : key;
      if (value instanceof Module) yield* value.namedModules(path);
      else if (isWrapper(value)) yield* value.base.namedModules(path);
    }
  }

  /** Every wrapper (adapter) in the tree with the path of the module it wraps. */
  *namedWrappers(prefix = ''): Iterable<[string, Wrapper, Module]> {
    for (const [key, value] of this.entries()) {
      const path = prefix ? `${prefix}.${key}` : key;
      if (value instanceof Module) yield* value.namedWrappers(path);
      else if (isWrapper(value)) yield [path, value, this];
    }
  }

  /**
   * Replaces the child at `key` (a property name, or `name.i` for an array item) with `next`.
   * Used to inject and remove adapters by composition.
   */
  replaceChild(key: string, next: Module | Wrapper): void {
    const [prop, index] = key.split('.');
    const self = this as unknown as Record<string, unknown>;
    if (index === undefined) {
      if (!(prop in self)) throw new Error(`replaceChild: no child '${key}' on ${this.constructor.name}`);
      self[prop] = next;
    } else {
      const arr = self[prop];
      if (!Array.isArray(arr) || Number(index) >= arr.length)
        throw new Error(`replaceChild: no child '${key}' on ${this.constructor.name}`);
      arr[Number(index)] = next;
    }
  }

  parameterCount(): number {
    let n = 0;
    for (const [, p] of this.namedParams()) n += p.shape.reduce((a, b) => a * b, 1);
    return n;
  }

  dispose(): void {
    for (const [, p] of this.namedParams()) p.dispose();
  }
}

export class WeightLoadError extends Error {
  constructor(
    readonly component: string,
    readonly missing: string[],
    readonly unexpected: string[],
    readonly mismatched: string[],
  ) {
    const lines = [`${component}: the weights do not fit the model built from its config`];
    const list = (title: string, items: string[]) => {
      if (!items.length) return;
      lines.push(`  ${title} (${items.length}):`);
      for (const item of items.slice(0, 20)) lines.push(`    ${item}`);
      if (items.length > 20) lines.push(`    ... and ${items.length - 20} more`);
    };
    list('missing keys', missing);
    list('unexpected keys', unexpected);
    list('shape mismatches', mismatched);
    super(lines.join('\n'));
    this.name = 'WeightLoadError';
  }
}

/**
 * Loads every Param of `model` from `source`: one straight walk, strict. Missing, unexpected and
 * mis-shaped keys are all collected and reported together before any weight is read.
 * `ignore` filters source keys that are known extras (e.g. `position_ids`).
 */
export async function loadParams(
  model: Module,
  source: WeightSource,
  component: string,
  ignore: (key: string) => boolean = () => false,
): Promise<void> {
  const params = checkParams(model, source, component, ignore);
  for (const [key, p] of params) {
    p.setFromCheckpoint(await source.read(key));
  }
}

/**
 * Loads `model`'s weights from the first of `weightFiles` in a component folder, strictly
 * (io/componentFolder.ts finds and opens the file); disposes the model on failure. `ignore` skips
 * known extra keys.
 */
export async function loadComponentWeights(
  model: Module,
  folder: string,
  component: string,
  weightFiles: readonly string[],
  ignore?: (key: string) => boolean,
): Promise<void> {
  let file: SafetensorsFile | null = null;
  try {
    file = await openComponentWeights(folder, component, weightFiles);
    await loadParams(model, safetensorsSource(file), component, ignore);
  } catch (err) {
    model.dispose();
    throw err;
  } finally {
    await file?.close();
  }
}

/**
 * The strict key and shape check of `loadParams`, without reading anything: every Param of
 * `model` by its key, or a WeightLoadError listing what does not fit.
 */
export function checkParams(
  model: Module,
  source: WeightSource,
  component: string,
  ignore: (key: string) => boolean = () => false,
): Map<string, Param> {
  const params = new Map(model.namedParams());
  const sourceKeys = new Set([...source.keys()].filter((k) => !ignore(k)));
  const missing: string[] = [];
  const mismatched: string[] = [];
  for (const [key, p] of params) {
    const shape = source.shape(key);
    if (!shape) missing.push(key);
    else if (!sameShape(squeezeConv1x1(shape, p.shape), p.shape))
      mismatched.push(`${key}: file has [${shape}], model expects [${p.shape}]`);
  }
  const unexpected = [...sourceKeys].filter((k) => !params.has(k));
  if (missing.length || unexpected.length || mismatched.length)
    throw new WeightLoadError(`${component} (${source.description})`, missing, unexpected, mismatched);
  return params;
}

/**
 * A Linear stored as a 1x1 conv ([out, in, 1, 1], e.g. SD 1.x `proj_in` or the original VAE
 * attention) has the same values as the [out, in] Linear, so shapes that differ only by trailing
 * 1x1 dims compare equal.
 */
function squeezeConv1x1(file: readonly number[], want: readonly number[]): readonly number[] {
  if (file.length === 4 && want.length === 2 && file[2] === 1 && file[3] === 1) return [file[0], file[1]];
  if (file.length === 2 && want.length === 4 && want[2] === 1 && want[3] === 1) return [file[0], file[1], 1, 1];
  return file;
}

/** A seeded source of random weights in the fixtures' scheme, for benchmarks and tests without files. */
export function randomSource(model: Module, seed = 0, description = 'random weights'): WeightSource {
  const shapes = new Map([...model.namedParams()].map(([k, p]) => [k, p.shape] as const));
  return {
    description,
    keys: () => shapes.keys(),
    shape: (k) => shapes.get(k),
    read: async (k) => {
      const shape = shapes.get(k)!;
      const n = shape.reduce((a, b) => a * b, 1);
      const rng = mulberry32(hashString(k) ^ seed);
      const out = new Float32Array(n);
      const isNormWeight = /norm[^.]*\.weight$/.test(k) && shape.length === 1;
      const isBias = k.endsWith('.bias');
      const fanIn = shape.length > 1 ? n / shape[0] : 1;
      const std = isBias ? 0.05 : isNormWeight ? 0.1 : shape.length > 1 ? 1 / Math.sqrt(fanIn) : 0.1;
      for (let i = 0; i < n; i++) out[i] = (isNormWeight ? 1 : 0) + std * gaussian(rng);
      return out;
    },
  };
}

export function hashString(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 16777619);
  }
  return h >>> 0;
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function gaussian(rng: () => number): number {
  const u = Math.max(rng(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng());
}

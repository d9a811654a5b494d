/**
 * Weight patching for generation: adds adapter deltas straight into base weights (as A1111 and
 * ComfyUI apply LoRA files), keeping each original tensor so `restore()` is exact.
 * Several adapters may patch the same weight; their deltas add up.
 */
import { tf, type Tensor } from '../backend/tf.ts';
import { Conv2d } from '../models/layers/conv2d.ts';
import { Linear } from '../models/layers/linear.ts';
import { toComputeLayout, type Module, type Param } from '../models/layers/module.ts';

/** The weight Param of the Linear or Conv2d at `path` inside `model`, or null. */
export function findWeight(model: Module, path: string): Param | null {
  const mods = moduleIndex(model);
  const mod = mods.get(path);
  return mod instanceof Linear || mod instanceof Conv2d ? mod.weight : null;
}

const indexCache = new WeakMap<Module, Map<string, Module>>();

/** Paths of every Linear and Conv2d in `model` (adapter wrappers resolve to their base). */
export function moduleIndex(model: Module): Map<string, Module> {
  let idx = indexCache.get(model);
  if (!idx) {
    idx = new Map();
    for (const [p, m] of model.namedModules()) if (m instanceof Linear || m instanceof Conv2d) idx.set(p, m);
    indexCache.set(model, idx);
  }
  return idx;
}

export class WeightPatcher {
  private readonly originals = new Map<Param, Tensor>();

  /**
   * Adds `delta` (checkpoint layout: [out, in] for a Linear, [out, in, kh, kw] for a conv; a
   * [out, in] delta also fits a 1x1 conv) to `param`. Does not take ownership of `delta`.
   */
  add(param: Param, delta: Tensor): void {
    const want = param.shape;
    const fits =
      delta.shape.length === want.length
        ? delta.shape.every((d, i) => d === want[i])
        : want.length === 4 &&
          delta.rank === 2 &&
          want[2] === 1 &&
          want[3] === 1 &&
          delta.shape[0] === want[0] &&
          delta.shape[1] === want[1];
    if (!fits) throw new Error(`WeightPatcher: delta [${delta.shape}] does not fit weight [${want}]`);
    const next = tf.tidy(() => tf.add(param.value, toComputeLayout(delta.reshape([...want]), param.layout)));
    const prev = param.swapValue(next)!;
    if (this.originals.has(param)) prev.dispose();
    else this.originals.set(param, prev);
  }

  get patchedCount(): number {
    return this.originals.size;
  }

  /** Puts every original weight back, exactly. */
  restore(): void {
    for (const [param, original] of this.originals) param.swapValue(original)?.dispose();
    this.originals.clear();
  }
}

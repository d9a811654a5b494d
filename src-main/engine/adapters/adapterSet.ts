/**
 * Injecting adapters into a model, by composition: every target Linear is replaced in its parent
 * by an adapter that wraps it (PEFT's `inject_adapter`), and `remove()` puts the Linears back.
 *
 * Targets are name patterns matched against module paths (targets.ts).
 */
import { tf, type Tensor, type Variable } from '../backend/tf.ts';
import type { Module } from '../models/layers/module.ts';
import type { AdapterLinear, AdapterMethod } from './adapterLinear.ts';
import type { SideFactors } from '../onnx/onnxDiffusion.ts';
import { LoRALinear } from './lora.ts';
import { SingLoRALinear } from './singlora.ts';
import { DEFAULT_TARGETS, findTargets } from './targets.ts';

// The targets moved to targets.ts (the ONNX executor reads them without the adapters); re-exported.
export { DEFAULT_TARGETS, findTargets, matchesTarget } from './targets.ts';

/**
 * Default std of SingLoRA's initial A. docs/singlora-init.md gives the measurement: at full ramp
 * (alpha = r) it puts ||dW|| / ||W0|| near 1e-2 on SD-1.5-sized layers, small enough not to
 * disturb the base model, large enough that the gradient of A A^T (linear in A) is not tiny.
 */
export const DEFAULT_SINGLORA_INIT_STD = 0.01;

export interface AdapterSpec {
  readonly method: AdapterMethod;
  readonly rank: number;
  readonly alpha: number;
  /** SingLoRA ramp length T in steps (0: no ramp). Ignored by LoRA. */
  readonly rampSteps: number;
  readonly targets: readonly string[];
  /** SingLoRA: std of A's Gaussian init. LoRA ignores it (PEFT's kaiming-uniform A, zero B). */
  readonly initStd: number;
}

export function defaultAdapterSpec(overrides: Partial<AdapterSpec> = {}): AdapterSpec {
  return {
    method: 'singlora',
    rank: 8,
    alpha: 8,
    rampSteps: 100,
    targets: DEFAULT_TARGETS,
    initStd: DEFAULT_SINGLORA_INIT_STD,
    ...overrides,
  };
}

/** The random source the initialisation draws from (the project's Rng satisfies it). */
export interface InitRng {
  normal(n: number): Float32Array;
  uniform(): number;
}

export interface InjectedAdapter {
  /** Module path of the wrapped Linear inside the model, e.g. `down_blocks.0....attn1.to_q`. */
  readonly path: string;
  readonly layer: AdapterLinear;
  readonly parent: Module;
  readonly key: string;
}

export class AdapterSet {
  private constructor(
    readonly spec: AdapterSpec,
    readonly adapters: readonly InjectedAdapter[],
  ) {}

  /**
   * Wraps every target Linear of `model`. `init` gives each adapter's initial values by path
   * (loading a file) or, when absent, they are drawn from `rng` in walk order.
   */
  static inject(
    model: Module,
    spec: AdapterSpec,
    source: { rng: InitRng } | { values: ReadonlyMap<string, Record<string, Float32Array>> },
  ): AdapterSet {
    // Values from a file name their exact paths; otherwise the spec's patterns choose.
    const found =
      'values' in source
        ? findTargets(
            model,
            [...source.values.keys()].map((p) => `^${p}`),
          )
        : findTargets(model, spec.targets);
    if ('values' in source && found.length !== source.values.size) {
      const have = new Set(found.map((f) => f.path));
      const missing = [...source.values.keys()].filter((p) => !have.has(p));
      throw new Error(
        `adapter targets not found as Linear layers in the model: ${missing.slice(0, 10).join(', ')}${missing.length > 10 ? ', ...' : ''}`,
      );
    }
    if (!found.length)
      throw new Error(
        `adapter targets ${JSON.stringify(spec.targets)} match no Linear layer in the model (already injected, or wrong patterns?)`,
      );
    const hyper = { rank: spec.rank, alpha: spec.alpha, rampSteps: spec.method === 'singlora' ? spec.rampSteps : 0 };
    const adapters: InjectedAdapter[] = [];
    try {
      for (const { path, parent, key, linear } of found) {
        const given = 'values' in source ? source.values.get(path) : undefined;
        if ('values' in source && !given) throw new Error(`no adapter values for target '${path}'`);
        let layer: AdapterLinear;
        if (spec.method === 'singlora') {
          const rows = Math.max(linear.inFeatures, linear.outFeatures);
          const init =
            given?.singlora_A ?? scaled((source as { rng: InitRng }).rng.normal(rows * spec.rank), spec.initStd);
          layer = new SingLoRALinear(linear, hyper, init);
        } else {
          let initA = given?.lora_A;
          if (!initA) {
            const rng = (source as { rng: InitRng }).rng;
            const bound = 1 / Math.sqrt(linear.inFeatures);
            initA = new Float32Array(spec.rank * linear.inFeatures);
            for (let i = 0; i < initA.length; i++) initA[i] = (2 * rng.uniform() - 1) * bound;
          }
          layer = new LoRALinear(linear, hyper, initA, given?.lora_B);
        }
        parent.replaceChild(key, layer);
        adapters.push({ path, layer, parent, key });
      }
    } catch (err) {
      new AdapterSet(spec, adapters).remove();
      throw err;
    }
    return new AdapterSet(spec, adapters);
  }

  get size(): number {
    return this.adapters.length;
  }

  /** The step the unmerged forward uses for u(t). */
  setStep(step: number): void {
    for (const a of this.adapters) a.layer.step = step;
  }

  setStrength(strength: number): void {
    for (const a of this.adapters) a.layer.strength = strength;
  }

  setDisabled(disabled: boolean): void {
    for (const a of this.adapters) a.layer.disabled = disabled;
  }

  merge(step: number): void {
    for (const a of this.adapters) a.layer.merge(step);
  }

  unmerge(): void {
    for (const a of this.adapters) a.layer.unmerge();
  }

  variables(): Variable[] {
    return this.adapters.flatMap((a) => a.layer.variables());
  }

  parameterCount(): number {
    return this.adapters.reduce((n, a) => n + a.layer.parameterCount(), 0);
  }

  /** Adapter tensors by `<path>.<name>` (e.g. `...attn1.to_q.singlora_A`), PyTorch layout. */
  namedTensors(): Array<[string, Variable]> {
    return this.adapters.flatMap((a) =>
      a.layer.namedTensors().map(([n, v]) => [`${a.path}.${n}`, v] as [string, Variable]),
    );
  }

  /**
   * Every adapter as low-rank side-path factors at its current step and strength (for an ONNX
   * graph): y += (x · down) · up, down [in, r], up [r, out].
   */
  async sideFactors(): Promise<SideFactors[]> {
    const out: SideFactors[] = [];
    for (const a of this.adapters)
      out.push({ component: 'unet', path: a.path, rank: a.layer.hyper.rank, ...(await a.layer.lowRankFactors()) });
    return out;
  }

  /** dW for every adapter at `step`, PyTorch layout [out, in]. The caller owns the tensors. */
  deltaWeights(step: number): Array<{ path: string; delta: Tensor }> {
    return this.adapters.map((a) => ({ path: a.path, delta: a.layer.deltaWeight(step) }));
  }

  /** Sets every adapter tensor from values keyed like `namedTensors()`. */
  assign(values: ReadonlyMap<string, Float32Array>): void {
    for (const [name, v] of this.namedTensors()) {
      const data = values.get(name);
      if (!data) throw new Error(`AdapterSet.assign: no value for '${name}'`);
      if (data.length !== v.size)
        throw new Error(`AdapterSet.assign: '${name}' needs ${v.size} values, got ${data.length}`);
      tf.tidy(() => v.assign(tf.tensor(data, v.shape)));
    }
  }

  /** Puts the base Linears back into the model and frees the adapter tensors. */
  remove(): void {
    for (const a of this.adapters) {
      a.layer.dispose();
      a.parent.replaceChild(a.key, a.layer.base);
    }
  }
}

function scaled(x: Float32Array, s: number): Float32Array {
  for (let i = 0; i < x.length; i++) x[i] *= s;
  return x;
}

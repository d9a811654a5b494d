/**
 * Stable Diffusion inference on ONNX Runtime: one session per component (UNet, VAE encoder and
 * decoder, text encoder), created on first use over graphs emitted from `engine/models`, with the
 * weights read in place from the base model's files.
 *
 * Adapters are run-time inputs: `setAdapters` takes low-rank factors per module path and feeds
 * them to the side paths of the graphs (several adapters on one path are concatenated along the
 * rank). Switching adapters or their strength needs no new session; a module the current graph
 * has no side path for makes a new graph that has one (cached like any other).
 */
import type { ExecutionProvider } from '../backend/onnxRuntime.ts';
import type { SessionTensor } from '../backend/onnxRuntime.ts';
import { openBaseModel, type BaseModel, type ComponentFiles, type OpenBaseModelOptions } from '../io/modelFiles.ts';
import { DEFAULT_TARGETS, findTargets } from '../adapters/targets.ts';
import { AutoencoderKL } from '../models/autoencoderKL.ts';
import { ClipTextModel, checkClipSkip, parseClipTextConfig } from '../models/clipTextModel.ts';
import type { Module } from '../models/layers/module.ts';
import { UNet2DConditionModel } from '../models/unet2dCondition.ts';
import {
  emitTextEncoder,
  emitUNet,
  emitVaeDecoder,
  emitVaeEncoder,
  type EmittedGraph,
  type GraphKind,
} from './componentGraphs.ts';
import { openGraph, type GraphMeta, type OpenedGraph } from './graphSessions.ts';
import { sidePathInputs, type ComputeType } from './onnxOps.ts';
import { defaultComputeType, providerCandidates, type ProviderChoice } from './providers.ts';

/** Low-rank factors of one module: y += (x · down) · up, strength and scales folded into `up`. */
export interface SideFactors {
  readonly component: 'unet' | 'text_encoder';
  readonly path: string;
  /** [in, r] row-major */
  readonly down: Float32Array;
  /** [r, out] row-major */
  readonly up: Float32Array;
  readonly rank: number;
}

export interface OnnxDiffusionOptions extends OpenBaseModelOptions {
  readonly provider?: ProviderChoice;
  /** Default: float16 on GPU providers, float32 on the CPU. */
  readonly dtype?: ComputeType;
  readonly cacheDir?: string;
  /** Hand weights to ONNX Runtime in memory instead of linking the files (measurements). */
  readonly inMemory?: boolean;
  /** Attention as fused MultiHeadAttention (default) or plain ops. */
  readonly attention?: 'fused' | 'plain';
}

/** A float32 NHWC (or any row-major) array with its dims. */
export interface HostTensor {
  readonly data: Float32Array;
  readonly dims: readonly number[];
}

interface Slot {
  opened: OpenedGraph;
  side: readonly string[];
}

export class OnnxDiffusion {
  private providers: ExecutionProvider[] | null = null;
  private dtype: ComputeType | null = null;
  private readonly slots = new Map<GraphKind, Slot>();
  private factors: SideFactors[] = [];
  /** Every session created, for reports and tests. */
  readonly opened: Array<{
    kind: GraphKind;
    providers: string;
    dtype: ComputeType;
    weights: OpenedGraph['weights'];
    emitted: boolean;
    ms: number;
  }> = [];

  private constructor(
    readonly path: string,
    private readonly options: OnnxDiffusionOptions,
    readonly configs: {
      unet: Record<string, unknown>;
      vae: Record<string, unknown>;
      textEncoder: Record<string, unknown>;
      textEncoderSource: string;
    },
  ) {}

  /** Opens the base model at `path` to read its component configs (scripts and tests). */
  static async open(path: string, options: OnnxDiffusionOptions = {}): Promise<OnnxDiffusion> {
    const base = await openBaseModel(path, options);
    try {
      return OnnxDiffusion.fromConfigs(path, options, {
        unet: base.unet.config,
        vae: base.vae.config,
        textEncoder: base.textEncoder.config,
        textEncoderSource: base.textEncoder.configSource,
      });
    } finally {
      await base.close();
    }
  }

  /**
   * Sessions over the base model at `path` from component configs already read (`StableDiffusion`
   * has them): nothing is opened until a component first runs.
   */
  static fromConfigs(path: string, options: OnnxDiffusionOptions, configs: OnnxDiffusion['configs']): OnnxDiffusion {
    return new OnnxDiffusion(path, options, configs);
  }

  /** The providers sessions run on (after the first session), e.g. ['cpu']. */
  get activeProviders(): readonly ExecutionProvider[] | null {
    return this.providers;
  }

  get computeType(): ComputeType | null {
    return this.dtype;
  }

  /** Replaces the adapters fed to the graphs. */
  setAdapters(factors: readonly SideFactors[]): void {
    this.factors = [...factors];
  }

  /** sample [B, H, W, C] NHWC, one timestep per item, context [B, S, D] -> noise prediction NHWC. */
  async predictNoise(sample: HostTensor, timesteps: readonly number[], context: HostTensor): Promise<HostTensor> {
    const slot = await this.slot('unet');
    const feeds: Record<string, SessionTensor> = {
      sample: f32(sample),
      timestep: { type: 'float32', data: Float32Array.from(timesteps), dims: [timesteps.length] },
      encoder_hidden_states: f32(context),
      ...this.sideFeeds(slot, 'unet'),
    };
    const out = await slot.opened.session.run(feeds, ['noise_pred']);
    return host(out.noise_pred);
  }

  /** ids [B, 77] -> prompt embeddings [B, 77, H] (diffusers' clip_skip), plus the raw outputs. */
  async encodeText(
    ids: readonly (readonly number[])[],
    clipSkip?: number,
  ): Promise<{ promptEmbeds: HostTensor; lastHiddenState: HostTensor; pooler: HostTensor; hiddenStates: HostTensor }> {
    const cfg = parseClipTextConfig(this.configs.textEncoder, this.configs.textEncoderSource);
    const skip = checkClipSkip(clipSkip, cfg.numHiddenLayers);
    const slot = await this.slot('text_encoder');
    const seq = ids[0]?.length ?? 0;
    const flat = new Int32Array(ids.length * seq);
    ids.forEach((row, i) => flat.set(row, i * seq));
    const out = await slot.opened.session.run({
      input_ids: { type: 'int32', data: flat, dims: [ids.length, seq] },
      skip_index: { type: 'int64', data: BigInt64Array.from([BigInt(cfg.numHiddenLayers - skip)]), dims: [] },
      ...this.sideFeeds(slot, 'text_encoder'),
    });
    return {
      promptEmbeds: host(out.prompt_embeds),
      lastHiddenState: host(out.last_hidden_state),
      pooler: host(out.pooler_output),
      hiddenStates: host(out.hidden_states),
    };
  }

  /** Unscaled latents NHWC -> image NHWC (not clamped). */
  async decode(latent: HostTensor): Promise<HostTensor> {
    const slot = await this.slot('vae_decoder');
    return host((await slot.opened.session.run({ latent: f32(latent) })).image);
  }

  /** Image NHWC in [-1, 1] -> the unscaled latent distribution. */
  async encode(image: HostTensor): Promise<{ mean: HostTensor; logvar: HostTensor; std: HostTensor }> {
    const slot = await this.slot('vae_encoder');
    const out = await slot.opened.session.run({ image: f32(image) });
    return { mean: host(out.mean), logvar: host(out.logvar), std: host(out.std) };
  }

  /** Frees one component's session (e.g. the UNet's after training previews), or all of them. */
  async release(kind?: GraphKind): Promise<void> {
    for (const [k, slot] of [...this.slots]) {
      if (kind && k !== kind) continue;
      await slot.opened.session.release();
      this.slots.delete(k);
    }
  }

  // ---------------------------------------------------------------------------------------------

  /** The side paths a component's graph needs now: the defaults plus every Linear an adapter touches. */
  private wantedSide(kind: GraphKind): string[] {
    const component = kind === 'unet' ? 'unet' : kind === 'text_encoder' ? 'text_encoder' : null;
    if (!component) return [];
    const set = new Set(component === 'unet' ? this.defaultUNetSide() : []);
    for (const f of this.factors) if (f.component === component) set.add(f.path);
    return [...set].sort();
  }

  private unetDefaults: string[] | null = null;
  private defaultUNetSide(): string[] {
    this.unetDefaults ??= findTargets(UNet2DConditionModel.fromConfig(this.configs.unet), DEFAULT_TARGETS).map(
      (t) => t.path,
    );
    return this.unetDefaults;
  }

  private async slot(kind: GraphKind): Promise<Slot> {
    const side = this.wantedSide(kind);
    const have = this.slots.get(kind);
    if (have && side.every((p) => have.side.includes(p))) return have;
    if (have) await this.release(kind);
    const base = await openBaseModel(this.path, this.options);
    try {
      const opened = await this.openWithProviders(kind, base, side);
      const slot = { opened, side };
      this.slots.set(kind, slot);
      return slot;
    } finally {
      await base.close();
    }
  }

  private async openWithProviders(kind: GraphKind, base: BaseModel, side: readonly string[]): Promise<OpenedGraph> {
    const lists = this.providers ? [this.providers] : await providerCandidates(this.options.provider ?? 'auto');
    const errors: string[] = [];
    for (const providers of lists) {
      // float16 by default on a GPU provider; float32 when the device has no float16 shaders.
      const dtypes: ComputeType[] = this.dtype
        ? [this.dtype]
        : this.options.dtype
          ? [this.options.dtype]
          : [...new Set([defaultComputeType(providers), 'float32' as const])];
      for (const dtype of dtypes) {
        const t0 = performance.now();
        try {
          const opened = await openGraph(
            graphRequest(kind, base, dtype, side, this.options.attention ?? defaultAttention(providers)),
            { providers, cacheDir: this.options.cacheDir, inMemory: this.options.inMemory },
          );
          this.providers = providers;
          this.dtype = dtype;
          this.opened.push({
            kind,
            providers: providers.join('+'),
            dtype,
            weights: opened.weights,
            emitted: opened.emitted,
            ms: performance.now() - t0,
          });
          return opened;
        } catch (err) {
          errors.push(`${providers[0]} (${dtype}): ${(err as Error).message}`);
        }
      }
      if (this.providers) break;
    }
    throw new Error(
      `ONNX Runtime could not start the ${kind} on any provider (${this.options.provider ?? 'auto'}):\n  ${errors.join('\n  ')}`,
    );
  }

  private sideFeeds(slot: Slot, component: 'unet' | 'text_encoder'): Record<string, SessionTensor> {
    return sidePathFeeds(
      slot.opened.meta.sidePaths,
      this.factors.filter((f) => f.component === component),
      this.providers ?? ['cpu'],
    );
  }
}

/**
 * The feeds of a graph's side paths: the factors on each path concatenated along the rank; a path
 * without any gets rank 0 on the CPU provider (empty tensors are a CPU-provider certainty only),
 * a zero rank-1 pair elsewhere.
 */
export function sidePathFeeds(
  sidePaths: GraphMeta['sidePaths'],
  factors: readonly SideFactors[],
  providers: readonly ExecutionProvider[],
): Record<string, SessionTensor> {
  const feeds: Record<string, SessionTensor> = {};
  const minRank = providers[0] === 'cpu' ? 0 : 1;
  for (const [path, { inFeatures, outFeatures }] of sidePaths) {
    const mine = factors.filter((f) => f.path === path);
    const rank = Math.max(
      minRank,
      mine.reduce((n, f) => n + f.rank, 0),
    );
    const down = new Float32Array(inFeatures * rank);
    const up = new Float32Array(rank * outFeatures);
    let r0 = 0;
    for (const f of mine) {
      // down [in, r]: columns r0..r0+r; up [r, out]: rows r0..r0+r.
      for (let i = 0; i < inFeatures; i++)
        for (let j = 0; j < f.rank; j++) down[i * rank + r0 + j] = f.down[i * f.rank + j];
      up.set(f.up, r0 * outFeatures);
      r0 += f.rank;
    }
    const names = sidePathInputs(path);
    feeds[names.down] = { type: 'float32', data: down, dims: [inFeatures, rank] };
    feeds[names.up] = { type: 'float32', data: up, dims: [rank, outFeatures] };
  }
  return feeds;
}

function graphRequest(
  kind: GraphKind,
  base: BaseModel,
  dtype: ComputeType,
  side: readonly string[],
  attention: 'fused' | 'plain',
) {
  const files: ComponentFiles = kind === 'unet' ? base.unet : kind === 'text_encoder' ? base.textEncoder : base.vae;
  const build = (): { model: Module; emit: () => EmittedGraph } => {
    if (kind === 'unet') {
      const m = UNet2DConditionModel.fromConfig(files.config);
      return { model: m, emit: () => emitUNet(m, files.weights, { dtype, sidePaths: side, attention }) };
    }
    if (kind === 'text_encoder') {
      const m = new ClipTextModel(parseClipTextConfig(files.config, files.configSource));
      return { model: m, emit: () => emitTextEncoder(m, files.weights, { dtype, sidePaths: side, attention }) };
    }
    const m = AutoencoderKL.fromConfig(files.config);
    return {
      model: m,
      emit: () =>
        kind === 'vae_encoder'
          ? emitVaeEncoder(m, files.weights, { dtype, attention })
          : emitVaeDecoder(m, files.weights, { dtype, attention }),
    };
  };
  return {
    kind,
    dtype,
    sidePaths: side,
    attention,
    config: files.config,
    files: files.files,
    emit: () => build().emit(),
  };
}

function f32(t: HostTensor): SessionTensor {
  return { type: 'float32', data: t.data, dims: t.dims };
}

function host(t: SessionTensor): HostTensor {
  if (t.type !== 'float32') throw new Error(`expected a float32 output, got ${t.type}`);
  return { data: t.data, dims: t.dims };
}

/**
 * Fused MultiHeadAttention where it was checked against the references (the CPU provider: same
 * errors as plain ops; CUDA runs the same contrib op in its own kernels); plain ops elsewhere: the
 * WebGPU provider's MultiHeadAttention measured 3e-2 of max|ref| on tiny-a's UNet (SwiftShader),
 * its plain ops 2e-5.
 */
export function defaultAttention(providers: readonly ExecutionProvider[]): 'fused' | 'plain' {
  return providers[0] === 'cpu' || providers[0] === 'cuda' ? 'fused' : 'plain';
}

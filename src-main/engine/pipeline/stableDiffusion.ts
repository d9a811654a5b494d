/**
 * The Stable Diffusion 1.x components, loaded from one base model (a diffusers folder or a
 * single-file checkpoint), with each component loadable and freeable on its own: training keeps
 * only the UNet in memory once latents and prompt embeddings are cached.
 *
 * Text-to-image sampling lives in textToImage.ts; this file only owns the models.
 *
 * Two inference engines run them, each behind the one `InferenceExecutor` interface
 * (inferenceExecutor.ts): ONNX Runtime (`onnx`, the default: graphs emitted from the same model
 * definitions, weights read in place, any provider; onnxExecutor.ts) and TensorFlow.js (`tfjs`,
 * the engine training uses; tfjsExecutor.ts). `executor` is the one chosen; sampling uses it on
 * plain arrays. The tensor methods here (`encodeText`, `predictNoise`, `decodeLatents`,
 * `encodeImage`) wrap it for training and tests, and the TensorFlow.js modules (`unet`, `vae`,
 * `textEncoder`) stay available for training.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { tf, type Tensor } from '../backend/tf.ts';
import type { ImportReport } from '../adapters/import.ts';
import type { LatentDistribution } from '../models/autoencoderKL.ts';
import { OnnxDiffusion } from '../onnx/onnxDiffusion.ts';
import type { ComputeType } from '../onnx/onnxOps.ts';
import { isProviderChoice, PROVIDER_CHOICES, type ProviderChoice } from '../onnx/providers.ts';
import {
  nativeResolution,
  openBaseModel,
  unetSha256,
  vaeScaleFactor,
  type BaseModel,
  type OpenBaseModelOptions,
} from '../io/modelFiles.ts';
import type { RawConfig } from '../io/keyMap.ts';
import { AutoencoderKL, parseVaeConfig } from '../models/autoencoderKL.ts';
import { ClipTextModel, parseClipTextConfig } from '../models/clipTextModel.ts';
import { ClipTokenizer } from '../models/clipTokenizer.ts';
import { loadParams, type Module } from '../models/layers/module.ts';
import { parseUNetConfig, UNet2DConditionModel } from '../models/unet2dCondition.ts';
import type { RawSchedulerConfig } from '../schedulers/index.ts';
import { defaultModelsDir } from '../paths.ts';
import {
  INFERENCE_ENGINES,
  type AdapterRequest,
  type ComponentKind,
  type ExecutionInfo,
  type HostArray,
  type InferenceEngine,
  type InferenceExecutor,
} from './inferenceExecutor.ts';
import { OnnxExecutor } from './onnxExecutor.ts';
import { encodeWeightedPrompts } from './prompts.ts';
import { TfjsExecutor } from './tfjsExecutor.ts';

export { INFERENCE_ENGINES, type ComponentKind, type InferenceEngine };

/**
 * Stable Diffusion 1.5's `scheduler/scheduler_config.json`, used for single-file checkpoints,
 * which carry none.
 */
export const SD15_SCHEDULER_CONFIG: RawConfig = Object.freeze({
  _class_name: 'PNDMScheduler',
  _diffusers_version: '0.6.0',
  beta_end: 0.012,
  beta_schedule: 'scaled_linear',
  beta_start: 0.00085,
  num_train_timesteps: 1000,
  set_alpha_to_one: false,
  skip_prk_steps: true,
  steps_offset: 1,
  trained_betas: null,
  clip_sample: false,
});

export interface InferenceOptions {
  /** Default 'onnx'. */
  engine?: InferenceEngine;
  /** ONNX Runtime provider (default 'auto'). */
  provider?: ProviderChoice;
  /** ONNX compute type (default: float16 on GPU providers, float32 on the CPU). */
  dtype?: ComputeType;
}

export interface LoadOptions extends OpenBaseModelOptions, InferenceOptions {
  /** TensorFlow.js components to load now (default: all three with the tfjs engine, none with onnx). */
  components?: readonly ComponentKind[];
}

export class StableDiffusion {
  private unetModel: UNet2DConditionModel | null = null;
  private vaeModel: AutoencoderKL | null = null;
  private textModel: ClipTextModel | null = null;
  private sha: Promise<string> | null = null;
  private onnxSessions: OnnxDiffusion | null = null;
  /** What runs inference: the chosen engine behind one interface. */
  readonly executor: InferenceExecutor;

  private constructor(
    readonly path: string,
    readonly name: string,
    readonly format: BaseModel['format'],
    readonly tokenizer: ClipTokenizer,
    readonly schedulerConfig: RawSchedulerConfig,
    private readonly openOptions: OpenBaseModelOptions,
    readonly inference: Required<Pick<InferenceOptions, 'engine' | 'provider'>> & Pick<InferenceOptions, 'dtype'>,
    /** Configs of the three components, for building models and for config-driven key maps. */
    readonly configs: Readonly<Record<ComponentKind, RawConfig>>,
    /** The text encoder config's file, for messages. */
    private readonly textEncoderSource: string,
  ) {
    this.executor =
      inference.engine === 'tfjs'
        ? new TfjsExecutor(this)
        : new OnnxExecutor({
            tokenizer,
            configs,
            sessions: async () => this.onnx(),
            openedSessions: () => this.onnxSessions,
            provider: inference.provider,
            dtype: inference.dtype,
          });
  }

  /**
   * Opens the base model at `path` and loads the requested components. A single-file
   * checkpoint needs a tokenizer: the one beside it (`--config-dir`), or the SD 1.5 tokenizer
   * placed in `<models>/sd15-tokenizer/` (see models/README.md).
   */
  static async load(path: string, options: LoadOptions = {}): Promise<StableDiffusion> {
    const base = await openBaseModel(path, options);
    try {
      const tokenizerDir = base.tokenizerDir ?? sd15TokenizerDir();
      const tokenizer = await ClipTokenizer.load(tokenizerDir);
      const schedulerConfig: RawSchedulerConfig = base.schedulerConfig
        ? { source: join(base.path, 'scheduler', 'scheduler_config.json'), values: base.schedulerConfig }
        : { source: 'the built-in SD 1.5 scheduler config', values: SD15_SCHEDULER_CONFIG };
      const inference = {
        engine: options.engine ?? envEngine(),
        provider: options.provider ?? envProvider(),
        dtype: options.dtype,
      } as const;
      const sd = new StableDiffusion(
        base.path,
        base.name,
        base.format,
        tokenizer,
        schedulerConfig,
        options,
        inference,
        {
          unet: base.unet.config,
          vae: base.vae.config,
          textEncoder: base.textEncoder.config,
        },
        base.textEncoder.configSource,
      );
      for (const kind of options.components ??
        (inference.engine === 'tfjs' ? (['unet', 'vae', 'textEncoder'] as const) : []))
        await sd.loadFrom(base, kind);
      return sd;
    } finally {
      await base.close();
    }
  }

  get unet(): UNet2DConditionModel {
    if (!this.unetModel) throw new Error('the UNet is not loaded (call ensure("unet"))');
    return this.unetModel;
  }

  get vae(): AutoencoderKL {
    if (!this.vaeModel) throw new Error('the VAE is not loaded (call ensure("vae"))');
    return this.vaeModel;
  }

  get textEncoder(): ClipTextModel {
    if (!this.textModel) throw new Error('the text encoder is not loaded (call ensure("textEncoder"))');
    return this.textModel;
  }

  isLoaded(kind: ComponentKind): boolean {
    return (kind === 'unet' ? this.unetModel : kind === 'vae' ? this.vaeModel : this.textModel) !== null;
  }

  /** Loads the components that are not in memory. */
  async ensure(...kinds: ComponentKind[]): Promise<void> {
    const missing = kinds.filter((k) => !this.isLoaded(k));
    if (!missing.length) return;
    const base = await openBaseModel(this.path, this.openOptions);
    try {
      for (const kind of missing) await this.loadFrom(base, kind);
    } finally {
      await base.close();
    }
  }

  /** Frees a component's weights (e.g. the VAE and text encoder during UNet training). */
  unload(kind: ComponentKind): void {
    if (kind === 'unet') this.unetModel?.dispose(), (this.unetModel = null);
    if (kind === 'vae') this.vaeModel?.dispose(), (this.vaeModel = null);
    if (kind === 'textEncoder') this.textModel?.dispose(), (this.textModel = null);
  }

  /** SHA-256 of the UNet weights (the whole file for a single-file checkpoint); computed once. */
  unetSha256(): Promise<string> {
    this.sha ??= openBaseModel(this.path, this.openOptions).then(async (base) => {
      try {
        return await unetSha256(base);
      } finally {
        await base.close();
      }
    });
    return this.sha;
  }

  /** Spatial factor between image and latent (8 for SD 1.x). */
  get vaeScaleFactor(): number {
    return vaeScaleFactor(this.configs.vae);
  }

  /** The VAE config's scaling factor (0.18215 when the file has none). */
  get scalingFactor(): number {
    return parseVaeConfig(this.configs.vae).scalingFactor;
  }

  /** The UNet config's input channels (4 when the file has none). */
  get latentChannels(): number {
    return parseUNetConfig(this.configs.unet).inChannels;
  }

  /** The native training/generation size: UNet sample_size x VAE factor (512 for SD 1.5). */
  get defaultResolution(): number {
    return nativeResolution(this.configs);
  }

  get hiddenSize(): number {
    return parseClipTextConfig(this.configs.textEncoder).hiddenSize;
  }

  /** Token ids for prompts, padded/truncated to 77. */
  tokenize(prompts: readonly string[]): number[][] {
    return this.tokenizer.call(prompts);
  }

  /**
   * Prompt embeddings [B, chunks * 77, hidden] (`clipSkip` as diffusers defines it), read as
   * A1111 reads prompts: 75-token chunks and (word:1.2) emphasis (prompts.ts). A prompt of at
   * most 75 tokens without emphasis gives [1, 77, hidden], as before. The caller owns the result.
   */
  encodePrompts(prompts: readonly string[], clipSkip?: number): Promise<Tensor> {
    return encodeWeightedPrompts(
      this.tokenizer,
      (ids) => this.textEncoder.encodePrompt(ids, clipSkip || undefined),
      prompts,
    );
  }

  /** Frees the TensorFlow.js models and the ONNX sessions. */
  dispose(): void {
    this.executor.dispose();
    if (this.onnxSessions) void this.onnxSessions.release();
    this.unload('unet');
    this.unload('vae');
    this.unload('textEncoder');
  }

  // -------------------------------------------------------------------------------------------
  // Inference on the chosen engine (the executor); tensor wrappers for training and tests

  get engine(): InferenceEngine {
    return this.inference.engine;
  }

  /**
   * What computes the images: the engine, its provider (the ONNX Runtime execution providers the
   * UNet session runs on, e.g. 'cpu' or 'webgpu+cpu'; on tfjs the TensorFlow.js backend) and the
   * compute type. On onnx, known once the UNet has run (before, the requested provider).
   */
  execution(): Promise<ExecutionInfo> {
    return this.executor.describe();
  }

  /**
   * The ONNX Runtime sessions (each opened on first use), over the configs this model already
   * read: the base model is not opened again for them.
   */
  async onnx(): Promise<OnnxDiffusion> {
    this.onnxSessions ??= OnnxDiffusion.fromConfigs(
      this.path,
      { ...this.openOptions, provider: this.inference.provider, dtype: this.inference.dtype },
      { ...this.configs, textEncoderSource: this.textEncoderSource },
    );
    return this.onnxSessions;
  }

  /** Frees the ONNX sessions (all, or one component's); they reopen on next use. */
  async release(kind?: ComponentKind): Promise<void> {
    if (!this.onnxSessions) return;
    if (!kind) await this.onnxSessions.release();
    else if (kind === 'unet') await this.onnxSessions.release('unet');
    else if (kind === 'textEncoder') await this.onnxSessions.release('text_encoder');
    else await Promise.all([this.onnxSessions.release('vae_encoder'), this.onnxSessions.release('vae_decoder')]);
  }

  /**
   * Applies adapter files (replacing any applied before): weight patches on the tfjs engine,
   * side-path inputs on the onnx engine. Returns what each file applied.
   */
  setAdapters(uses: readonly AdapterRequest[]): Promise<ImportReport[]> {
    return this.executor.setAdapters(uses);
  }

  /** Removes every applied adapter (restores patched weights exactly). */
  clearAdapters(): void {
    this.executor.clearAdapters();
  }

  /** Prompt embeddings [B, 77, hidden] (diffusers' clip_skip) on the chosen engine. The caller owns the tensor. */
  async encodeText(prompts: readonly string[], clipSkip?: number): Promise<Tensor> {
    return toTensor(await this.executor.encodeText(prompts, clipSkip));
  }

  /** The UNet's noise prediction for NHWC latents at timestep t. The caller owns the tensor. */
  async predictNoise(sample: Tensor, t: number, context: Tensor): Promise<Tensor> {
    const held = this.executor.holdContext(await fromTensor(context));
    try {
      return toTensor(await this.executor.predictNoise(await fromTensor(sample), t, held));
    } finally {
      held.dispose();
    }
  }

  /** Unscaled latents NHWC -> the VAE's image NHWC (not clamped). The caller owns the tensor. */
  async decodeLatents(z: Tensor): Promise<Tensor> {
    return toTensor(await this.executor.decodeLatents(await fromTensor(z)));
  }

  /** Image NHWC in [-1, 1] -> the unscaled latent distribution. The caller owns the tensors. */
  async encodeImage(x: Tensor): Promise<LatentDistribution> {
    const { mean, logvar, std } = await this.executor.encodeImage(await fromTensor(x));
    return { mean: toTensor(mean), logvar: toTensor(logvar), std: toTensor(std) };
  }

  private async loadFrom(base: BaseModel, kind: ComponentKind): Promise<void> {
    const files = base[kind];
    let model: Module;
    if (kind === 'unet') model = UNet2DConditionModel.fromConfig(files.config);
    else if (kind === 'vae') model = AutoencoderKL.fromConfig(files.config);
    else model = new ClipTextModel(parseClipTextConfig(files.config, files.configSource));
    try {
      await loadParams(model, files.weights, kind === 'textEncoder' ? 'text_encoder' : kind, (key) =>
        key.endsWith('position_ids'),
      );
    } catch (err) {
      model.dispose();
      throw err;
    }
    if (kind === 'unet') this.unetModel = model as UNet2DConditionModel;
    else if (kind === 'vae') this.vaeModel = model as AutoencoderKL;
    else this.textModel = model as ClipTextModel;
  }
}

/** `SINGLORA_ENGINE` (onnx | tfjs), else onnx (the service passes the app settings, service/appSettings.ts, which default to it). */
function envEngine(): InferenceEngine {
  const v = process.env.SINGLORA_ENGINE?.trim();
  if (!v) return 'onnx';
  if (!(INFERENCE_ENGINES as readonly string[]).includes(v))
    throw new Error(`SINGLORA_ENGINE='${v}': expected one of ${INFERENCE_ENGINES.join(', ')}`);
  return v as InferenceEngine;
}

/** `SINGLORA_PROVIDER` (auto | cpu | webgpu | cuda | dml | coreml), else auto. */
function envProvider(): ProviderChoice {
  const v = process.env.SINGLORA_PROVIDER?.trim();
  if (!v) return 'auto';
  if (!isProviderChoice(v)) throw new Error(`SINGLORA_PROVIDER='${v}': expected one of ${PROVIDER_CHOICES.join(', ')}`);
  return v;
}

async function fromTensor(t: Tensor): Promise<HostArray> {
  return { data: (await t.data()) as Float32Array, dims: t.shape };
}

function toTensor(h: HostArray): Tensor {
  return tf.tensor(h.data, [...h.dims], 'float32');
}

/** Where a single-file checkpoint's tokenizer comes from when none sits beside it. */
export function sd15TokenizerDir(): string {
  const dir = join(defaultModelsDir(), 'sd15-tokenizer');
  if (!existsSync(join(dir, 'vocab.json')) || !existsSync(join(dir, 'merges.txt'))) {
    throw new Error(
      `a single-file checkpoint carries no tokenizer: place vocab.json and merges.txt of openai/clip-vit-large-patch14 (the SD 1.5 tokenizer) in ${dir}, or pass --config-dir <a diffusers SD 1.5 folder>`,
    );
  }
  return dir;
}

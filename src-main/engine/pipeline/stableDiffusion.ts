/**
 * The Stable Diffusion 1.x components, loaded from one base model (a diffusers folder or a
 * single-file checkpoint), with each component loadable and freeable on its own: training keeps
 * only the UNet in memory once latents and prompt embeddings are cached.
 *
 * Text-to-image sampling lives in textToImage.ts; this file only owns the models.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Tensor } from '../backend/tf.ts';
import { nativeResolution, openBaseModel, unetSha256, vaeScaleFactor, type BaseModel, type OpenBaseModelOptions } from '../io/modelFiles.ts';
import type { RawConfig } from '../io/keyMap.ts';
import { AutoencoderKL } from '../models/autoencoderKL.ts';
import { ClipTextModel, parseClipTextConfig } from '../models/clipTextModel.ts';
import { ClipTokenizer } from '../models/clipTokenizer.ts';
import { loadParams, type Module } from '../models/layers/module.ts';
import { UNet2DConditionModel } from '../models/unet2dCondition.ts';
import type { RawSchedulerConfig } from '../schedulers/index.ts';
import { defaultModelsDir } from '../paths.ts';
import { encodeWeightedPrompts } from './prompts.ts';

export type ComponentKind = 'unet' | 'vae' | 'textEncoder';

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

export interface LoadOptions extends OpenBaseModelOptions {
  /** Components to load now (default all three). Others load on first use. */
  components?: readonly ComponentKind[];
}

export class StableDiffusion {
  private unetModel: UNet2DConditionModel | null = null;
  private vaeModel: AutoencoderKL | null = null;
  private textModel: ClipTextModel | null = null;
  private sha: Promise<string> | null = null;

  private constructor(
    readonly path: string,
    readonly name: string,
    readonly format: BaseModel['format'],
    readonly tokenizer: ClipTokenizer,
    readonly schedulerConfig: RawSchedulerConfig,
    private readonly openOptions: OpenBaseModelOptions,
    /** Configs of the three components, for building models and for config-driven key maps. */
    readonly configs: Readonly<Record<ComponentKind, RawConfig>>,
  ) {}

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
      const sd = new StableDiffusion(base.path, base.name, base.format, tokenizer, schedulerConfig, options, {
        unet: base.unet.config,
        vae: base.vae.config,
        textEncoder: base.textEncoder.config,
      });
      for (const kind of options.components ?? (['unet', 'vae', 'textEncoder'] as const)) await sd.loadFrom(base, kind);
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

  get scalingFactor(): number {
    const s = this.configs.vae.scaling_factor;
    return typeof s === 'number' ? s : 0.18215;
  }

  get latentChannels(): number {
    const c = this.configs.unet.in_channels;
    return typeof c === 'number' ? c : 4;
  }

  /** The native training/generation size: UNet sample_size x VAE factor (512 for SD 1.5). */
  get defaultResolution(): number {
    return nativeResolution(this.configs);
  }

  get hiddenSize(): number {
    return parseClipTextConfig(this.configs.textEncoder).hidden_size;
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
  encodePrompts(prompts: readonly string[], clipSkip?: number): Tensor {
    return encodeWeightedPrompts(this.tokenizer, (ids) => this.textEncoder.encodePrompt(ids, clipSkip || undefined), prompts);
  }

  dispose(): void {
    this.unload('unet');
    this.unload('vae');
    this.unload('textEncoder');
  }

  private async loadFrom(base: BaseModel, kind: ComponentKind): Promise<void> {
    const files = base[kind];
    let model: Module;
    if (kind === 'unet') model = UNet2DConditionModel.fromConfig(files.config);
    else if (kind === 'vae') model = AutoencoderKL.fromConfig(files.config);
    else model = new ClipTextModel(parseClipTextConfig(files.config, files.configSource));
    try {
      await loadParams(model, files.weights, kind === 'textEncoder' ? 'text_encoder' : kind, (key) => key.endsWith('position_ids'));
    } catch (err) {
      model.dispose();
      throw err;
    }
    if (kind === 'unet') this.unetModel = model as UNet2DConditionModel;
    else if (kind === 'vae') this.vaeModel = model as AutoencoderKL;
    else this.textModel = model as ClipTextModel;
  }
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


/**
 * The SD 1.x VAE: diffusers `AutoencoderKL` (autoencoders/autoencoder_kl.py, v0.27) with its
 * `Encoder`, `Decoder` and `DiagonalGaussianDistribution` (autoencoders/vae.py), and the blocks
 * `DownEncoderBlock2D`, `UpDecoderBlock2D`, `UNetMidBlock2D` (unets/unet_2d_blocks.py), written
 * against the op interface (ops/ops.ts); `encode`/`decode` are the TensorFlow.js entry points (NHWC).
 *
 *   encode(x [B, H, W, 3]):
 *     1. h = encoder(x): conv_in, down blocks (resnets, then pad (0,1,0,1) + stride-2 conv),
 *        mid block (resnet, single-head attention, resnet), GroupNorm, SiLU, conv_out -> 2*latent
 *     2. moments = quant_conv(h); mean, logvar = split(moments) on channels
 *     3. logvar = clamp(logvar, -30, 20); std = exp(logvar / 2)
 *   decode(z [B, h, w, latent]):
 *     1. h = post_quant_conv(z)
 *     2. decoder: conv_in, mid block, up blocks (resnets, then nearest 2x + conv), GroupNorm,
 *        SiLU, conv_out
 *
 * Latents here are the *unscaled* ones: the diffusion latent is `mean * scaling_factor` (0.18215
 * for SD 1.x), and a pipeline decodes `latent / scaling_factor`. Every norm in the VAE uses
 * eps 1e-6. Property names are the diffusers state-dict names.
 */
import { DIFFUSERS_WEIGHT_FILES, readComponentConfig } from '../io/componentFolder.ts';
import { tf, type Tensor } from '../backend/tf.ts';
import { Module, loadComponentWeights } from './layers/module.ts';
import { Conv2d } from './layers/conv2d.ts';
import { GroupNorm } from './layers/norm.ts';
import { Attention } from './layers/attention.ts';
import type { Ops } from './ops/ops.ts';
import { tfOps } from './ops/tfOps.ts';
import { silu } from './layers/activations.ts';
import { ResnetBlock2D } from './layers/resnetBlock.ts';
import { Downsample2D, Upsample2D } from './layers/sampling.ts';

const VAE_EPS = 1e-6;

// ---------------------------------------------------------------------------------------------
// Config

export interface AutoencoderKLConfig {
  readonly inChannels: number;
  readonly outChannels: number;
  /** One entry per resolution level; SD 1.x: (128, 256, 512, 512). */
  readonly blockOutChannels: readonly number[];
  readonly layersPerBlock: number;
  readonly latentChannels: number;
  readonly normNumGroups: number;
  readonly sampleSize: number | readonly [number, number];
  /** diffusion latent = VAE latent * scalingFactor (SD 1.x: 0.18215). */
  readonly scalingFactor: number;
  /** Subtracted before scaling by newer VAEs (SD3); null for SD 1.x. Applied by the pipeline, not here. */
  readonly shiftFactor: number | null;
  readonly latentsMean: readonly number[] | null;
  readonly latentsStd: readonly number[] | null;
  /** fp16 behaviour in diffusers; everything here runs in float32. */
  readonly forceUpcast: boolean;
  readonly midBlockAddAttention: boolean;
  readonly useQuantConv: boolean;
  readonly usePostQuantConv: boolean;
}

const VAE_KEYS = new Set([
  'in_channels',
  'out_channels',
  'down_block_types',
  'up_block_types',
  'block_out_channels',
  'layers_per_block',
  'act_fn',
  'latent_channels',
  'norm_num_groups',
  'sample_size',
  'scaling_factor',
  'shift_factor',
  'latents_mean',
  'latents_std',
  'force_upcast',
  'mid_block_add_attention',
  'use_quant_conv',
  'use_post_quant_conv',
]);

/** Validates a raw AutoencoderKL `config.json` (hub format) and fills diffusers' defaults. */
export function parseVaeConfig(raw: unknown): AutoencoderKLConfig {
  const what = 'AutoencoderKL config';
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error(`${what}: expected a JSON object`);
  const r = raw as Record<string, unknown>;
  if (r._class_name !== undefined && r._class_name !== 'AutoencoderKL')
    throw new Error(`${what}: _class_name is ${JSON.stringify(r._class_name)}, expected "AutoencoderKL"`);
  const unknown = Object.keys(r).filter((k) => !k.startsWith('_') && !VAE_KEYS.has(k));
  if (unknown.length)
    throw new Error(`${what}: unknown keys ${unknown.join(', ')} (not an SD 1.x AutoencoderKL option)`);

  const fail = (key: string, expected: string): never => {
    throw new Error(`${what}: ${key} is ${JSON.stringify(r[key])}; expected ${expected}`);
  };
  const int = (key: string, dflt: number): number => {
    const v = r[key] ?? dflt;
    return Number.isInteger(v) && (v as number) > 0 ? (v as number) : fail(key, 'a positive integer');
  };
  const bool = (key: string, dflt: boolean): boolean => {
    const v = r[key] ?? dflt;
    return typeof v === 'boolean' ? v : fail(key, 'true or false');
  };
  const numOrNull = (key: string): number | null => {
    const v = r[key] ?? null;
    return v === null || (typeof v === 'number' && Number.isFinite(v))
      ? (v as number | null)
      : fail(key, 'a number or null');
  };
  const listOrNull = (key: string): number[] | null => {
    const v = r[key] ?? null;
    return v === null || (Array.isArray(v) && v.every((x) => typeof x === 'number'))
      ? (v as number[] | null)
      : fail(key, 'a list of numbers or null');
  };

  const blockOutChannels = (r.block_out_channels ?? [64]) as unknown;
  if (
    !Array.isArray(blockOutChannels) ||
    !blockOutChannels.length ||
    !blockOutChannels.every((c) => Number.isInteger(c) && c > 0)
  )
    fail('block_out_channels', 'a non-empty list of positive integers');
  const levels = (blockOutChannels as number[]).length;
  const checkTypes = (key: string, want: string) => {
    const v = r[key] ?? [want];
    if (!Array.isArray(v) || v.length !== levels || !v.every((t) => t === want))
      fail(key, `${levels} x "${want}" (one per block_out_channels entry; other block types are not supported)`);
  };
  checkTypes('down_block_types', 'DownEncoderBlock2D');
  checkTypes('up_block_types', 'UpDecoderBlock2D');
  const act = r.act_fn ?? 'silu';
  if (act !== 'silu' && act !== 'swish') fail('act_fn', '"silu" (SD 1.x)');

  const sampleSize = r.sample_size ?? 32;
  if (
    !(Number.isInteger(sampleSize) && (sampleSize as number) > 0) &&
    !(Array.isArray(sampleSize) && sampleSize.length === 2 && sampleSize.every((d) => Number.isInteger(d) && d > 0))
  ) {
    fail('sample_size', 'a positive integer or [height, width]');
  }
  const scalingFactor = r.scaling_factor ?? 0.18215;
  if (typeof scalingFactor !== 'number' || !(scalingFactor > 0)) fail('scaling_factor', 'a positive number');

  const config: AutoencoderKLConfig = {
    inChannels: int('in_channels', 3),
    outChannels: int('out_channels', 3),
    blockOutChannels: blockOutChannels as number[],
    layersPerBlock: int('layers_per_block', 1),
    latentChannels: int('latent_channels', 4),
    normNumGroups: int('norm_num_groups', 32),
    sampleSize: sampleSize as number | [number, number],
    scalingFactor: scalingFactor as number,
    shiftFactor: numOrNull('shift_factor'),
    latentsMean: listOrNull('latents_mean'),
    latentsStd: listOrNull('latents_std'),
    forceUpcast: bool('force_upcast', true),
    midBlockAddAttention: bool('mid_block_add_attention', true),
    useQuantConv: bool('use_quant_conv', true),
    usePostQuantConv: bool('use_post_quant_conv', true),
  };
  for (const [i, ch] of config.blockOutChannels.entries()) {
    if (ch % config.normNumGroups !== 0)
      throw new Error(
        `${what}: block_out_channels[${i}] = ${ch} does not split into norm_num_groups = ${config.normNumGroups}`,
      );
  }
  return config;
}

// ---------------------------------------------------------------------------------------------
// Blocks

/**
 * diffusers `Attention` as the VAE mid block builds it: one head over all channels, q/k/v biases,
 * a GroupNorm first, a residual connection, on a [B, H, W, C] feature map.
 */
export class VaeAttention extends Attention {
  group_norm: GroupNorm;

  constructor(channels: number, groups: number) {
    super(channels, 1, channels, channels, true);
    this.group_norm = new GroupNorm(groups, channels, VAE_EPS);
  }

  /** x (image) -> x + to_out(attention(group_norm(x))). */
  forwardImage<T>(o: Ops<T>, x: T): T {
    return o.scope(() => {
      const tokens = o.toTokens(this.group_norm.forward(o, x)); // [B, HW, C]
      return o.add(o.fromTokens(this.forward(o, tokens), x), x);
    });
  }
}

/** `UNetMidBlock2D` without time embedding: resnet, (attention, resnet). */
export class UNetMidBlock2D extends Module {
  /** `[null]` when mid_block_add_attention is false (no weights, as diffusers appends None). */
  attentions: (VaeAttention | null)[];
  resnets: ResnetBlock2D[];

  constructor(channels: number, groups: number, addAttention: boolean) {
    super();
    const resnet = () =>
      new ResnetBlock2D({ inChannels: channels, outChannels: channels, tembChannels: null, groups, eps: VAE_EPS });
    this.attentions = [addAttention ? new VaeAttention(channels, groups) : null];
    this.resnets = [resnet(), resnet()];
  }

  forward<T>(o: Ops<T>, h: T): T {
    return o.scope(() => {
      h = this.resnets[0].forward(o, h);
      this.attentions.forEach((attention, i) => {
        if (attention) h = attention.forwardImage(o, h);
        h = this.resnets[i + 1].forward(o, h);
      });
      return h;
    });
  }
}

export class DownEncoderBlock2D extends Module {
  resnets: ResnetBlock2D[];
  downsamplers?: [Downsample2D];

  constructor(inChannels: number, outChannels: number, layers: number, groups: number, addDownsample: boolean) {
    super();
    this.resnets = Array.from(
      { length: layers },
      (_, i) =>
        new ResnetBlock2D({
          inChannels: i === 0 ? inChannels : outChannels,
          outChannels,
          tembChannels: null,
          groups,
          eps: VAE_EPS,
        }),
    );
    // padding 0: diffusers pads (0, 1, 0, 1) and convolves with no padding.
    if (addDownsample) this.downsamplers = [new Downsample2D(outChannels, outChannels, 0)];
  }

  forward<T>(o: Ops<T>, h: T): T {
    return o.scope(() => {
      for (const resnet of this.resnets) h = resnet.forward(o, h);
      return this.downsamplers ? this.downsamplers[0].forward(o, h) : h;
    });
  }
}

export class UpDecoderBlock2D extends Module {
  resnets: ResnetBlock2D[];
  upsamplers?: [Upsample2D];

  constructor(inChannels: number, outChannels: number, layers: number, groups: number, addUpsample: boolean) {
    super();
    this.resnets = Array.from(
      { length: layers },
      (_, i) =>
        new ResnetBlock2D({
          inChannels: i === 0 ? inChannels : outChannels,
          outChannels,
          tembChannels: null,
          groups,
          eps: VAE_EPS,
        }),
    );
    if (addUpsample) this.upsamplers = [new Upsample2D(outChannels, outChannels)];
  }

  forward<T>(o: Ops<T>, h: T): T {
    return o.scope(() => {
      for (const resnet of this.resnets) h = resnet.forward(o, h);
      return this.upsamplers ? this.upsamplers[0].forward(o, h) : h;
    });
  }
}

export class Encoder extends Module {
  conv_in: Conv2d;
  down_blocks: DownEncoderBlock2D[];
  mid_block: UNetMidBlock2D;
  conv_norm_out: GroupNorm;
  conv_out: Conv2d;

  constructor(cfg: AutoencoderKLConfig) {
    super();
    const ch = cfg.blockOutChannels;
    const groups = cfg.normNumGroups;
    this.conv_in = new Conv2d(cfg.inChannels, ch[0], 3, 1, 1);
    this.down_blocks = ch.map(
      (out, i) =>
        new DownEncoderBlock2D(i === 0 ? ch[0] : ch[i - 1], out, cfg.layersPerBlock, groups, i < ch.length - 1),
    );
    const last = ch[ch.length - 1];
    this.mid_block = new UNetMidBlock2D(last, groups, cfg.midBlockAddAttention);
    this.conv_norm_out = new GroupNorm(groups, last, VAE_EPS);
    this.conv_out = new Conv2d(last, 2 * cfg.latentChannels, 3, 1, 1); // double_z: mean and logvar
  }

  forward<T>(o: Ops<T>, x: T): T {
    return o.scope(() => {
      let h = this.conv_in.forward(o, x);
      for (const block of this.down_blocks) h = block.forward(o, h);
      h = this.mid_block.forward(o, h);
      return this.conv_out.forward(o, silu(o, this.conv_norm_out.forward(o, h)));
    });
  }
}

export class Decoder extends Module {
  conv_in: Conv2d;
  mid_block: UNetMidBlock2D;
  up_blocks: UpDecoderBlock2D[];
  conv_norm_out: GroupNorm;
  conv_out: Conv2d;

  constructor(cfg: AutoencoderKLConfig) {
    super();
    const reversed = [...cfg.blockOutChannels].reverse();
    const groups = cfg.normNumGroups;
    this.conv_in = new Conv2d(cfg.latentChannels, reversed[0], 3, 1, 1);
    this.mid_block = new UNetMidBlock2D(reversed[0], groups, cfg.midBlockAddAttention);
    this.up_blocks = reversed.map(
      (out, i) =>
        new UpDecoderBlock2D(
          i === 0 ? reversed[0] : reversed[i - 1],
          out,
          cfg.layersPerBlock + 1,
          groups,
          i < reversed.length - 1,
        ),
    );
    const first = cfg.blockOutChannels[0];
    this.conv_norm_out = new GroupNorm(groups, first, VAE_EPS);
    this.conv_out = new Conv2d(first, cfg.outChannels, 3, 1, 1);
  }

  forward<T>(o: Ops<T>, z: T): T {
    return o.scope(() => {
      let h = this.conv_in.forward(o, z);
      h = this.mid_block.forward(o, h);
      for (const block of this.up_blocks) h = block.forward(o, h);
      return this.conv_out.forward(o, silu(o, this.conv_norm_out.forward(o, h)));
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Model

/** `DiagonalGaussianDistribution` parameters; the caller owns all three tensors. */
export interface LatentDistribution {
  /** [B, h, w, latent] */
  mean: Tensor;
  /** log variance, clamped to [-30, 20] */
  logvar: Tensor;
  /** exp(logvar / 2) */
  std: Tensor;
}

export class AutoencoderKL extends Module {
  encoder: Encoder;
  decoder: Decoder;
  quant_conv?: Conv2d;
  post_quant_conv?: Conv2d;

  constructor(readonly config: AutoencoderKLConfig) {
    super();
    this.encoder = new Encoder(config);
    this.decoder = new Decoder(config);
    const z = config.latentChannels;
    if (config.useQuantConv) this.quant_conv = new Conv2d(2 * z, 2 * z, 1);
    if (config.usePostQuantConv) this.post_quant_conv = new Conv2d(z, z, 1);
  }

  /** Spatial downsampling factor, 2^(levels - 1) (8 for SD 1.x). */
  get downsampleFactor(): number {
    return 2 ** (this.config.blockOutChannels.length - 1);
  }

  static fromConfig(raw: unknown): AutoencoderKL {
    return new AutoencoderKL(parseVaeConfig(raw));
  }

  /** Loads a diffusers `vae/` folder (config.json + diffusion_pytorch_model.safetensors), strictly. */
  static async load(folder: string): Promise<AutoencoderKL> {
    const model = AutoencoderKL.fromConfig(await readComponentConfig(folder, 'AutoencoderKL'));
    await loadComponentWeights(model, folder, 'vae', DIFFUSERS_WEIGHT_FILES);
    return model;
  }

  /** x [B, H, W, in_channels] in [-1, 1] (any H, W) -> the unscaled latent distribution (TensorFlow.js). */
  encode(x: Tensor): LatentDistribution {
    const cfg = this.config;
    if (x.rank !== 4 || x.shape[3] !== cfg.inChannels)
      throw new Error(`AutoencoderKL.encode: expected NHWC [B, H, W, ${cfg.inChannels}], got [${x.shape}]`);
    return tf.tidy(() => this.encodeWith(tfOps, x));
  }

  /** The encoder on any executor: image in [-1, 1] -> { mean, logvar, std } (each an image of latent channels). */
  encodeWith<T>(o: Ops<T>, x: T): { mean: T; logvar: T; std: T } {
    return o.scope(() => {
      const h = this.encoder.forward(o, x);
      const moments = this.quant_conv ? this.quant_conv.forward(o, h) : h; // 2*latent channels
      const [mean, rawLogvar] = o.splitChannels(moments, 2);
      const logvar = o.clip(rawLogvar, -30, 20);
      const std = o.exp(o.mul(logvar, 0.5));
      return { mean, logvar, std };
    });
  }

  /** z [B, h, w, latent] (unscaled) -> image [B, 2^(levels-1) h, 2^(levels-1) w, out_channels], not clamped (TensorFlow.js). */
  decode(z: Tensor): Tensor {
    const cfg = this.config;
    if (z.rank !== 4 || z.shape[3] !== cfg.latentChannels)
      throw new Error(`AutoencoderKL.decode: expected NHWC [B, h, w, ${cfg.latentChannels}], got [${z.shape}]`);
    return tf.tidy(() => this.decodeWith(tfOps, z));
  }

  /** The decoder on any executor: unscaled latent -> image, not clamped. */
  decodeWith<T>(o: Ops<T>, z: T): T {
    return o.scope(() => this.decoder.forward(o, this.post_quant_conv ? this.post_quant_conv.forward(o, z) : z));
  }
}

/**
 * The SD 1.x denoiser: diffusers `UNet2DConditionModel` (unets/unet_2d_condition.py, v0.27) with
 * its blocks `CrossAttnDownBlock2D`, `DownBlock2D`, `UNetMidBlock2DCrossAttn`,
 * `CrossAttnUpBlock2D`, `UpBlock2D` (unets/unet_2d_blocks.py). Written against the op interface
 * (ops/ops.ts): `denoise(o, ...)` runs on TensorFlow.js or emits the ONNX graph; `forward` is the
 * TensorFlow.js entry point (NHWC).
 *
 *   code name         diffusers                          shape
 *   sample            sample (noisy latent x_t)          [B, H, W, in_channels]
 *   timestep          timestep t (float ok, e.g. 500.5)  number | number[] | [B] | []
 *   context           encoder_hidden_states              [B, S, cross_attention_dim]
 *   temb              emb (time embedding)               [B, 4 * block_out_channels[0]]
 *   skips             down_block_res_samples
 *
 * forward:
 *   1. temb = time_embedding(sinusoid(t))
 *   2. h = conv_in(sample); skips = [h]
 *   3. each down block: skips += its outputs (one per resnet, plus the downsampled map); h = last
 *   4. h = mid_block(h)
 *   5. each up block pops (layers + 1) skips, concatenates one per resnet, and upsamples to the
 *      size of the next skip (explicit `upsample_size`, so odd latent sides round-trip: 3->2->3)
 *   6. out = conv_out(silu(conv_norm_out(h)))
 *
 * Property names are the diffusers state-dict names, so `loadParams(unet, source, 'unet')` reads
 * `diffusion_pytorch_model.safetensors` directly. Sizes all come from the config.
 *
 * Gradient checkpointing hook: `forward(..., { runBlock })` calls every down block, the mid block
 * and every up block through `runBlock(name, fn, inputs)`, where `fn(inputs)` computes the block
 * from `inputs` alone (plus the model's own parameters) and `name` is the block's checkpoint prefix
 * (`down_blocks.1`, `mid_block`, `up_blocks.0`). The default runs `fn(inputs)` directly. A trainer
 * can pass a runner that keeps only the inputs and recomputes the block in the backward pass
 * (e.g. with `tf.customGrad`); it must add any trainable variables the block reads itself.
 */
import { DIFFUSERS_WEIGHT_FILES, readComponentConfig } from '../io/componentFolder.ts';
import { tf, type Tensor } from '../backend/tf.ts';
import type { Ops } from './ops/ops.ts';
import { tfOps } from './ops/tfOps.ts';
import { Module, loadComponentWeights } from './layers/module.ts';
import { Conv2d } from './layers/conv2d.ts';
import { GroupNorm } from './layers/norm.ts';
import { silu } from './layers/activations.ts';
import { ResnetBlock2D } from './layers/resnetBlock.ts';
import { Transformer2DModel } from './layers/transformer2d.ts';
import { Downsample2D, Upsample2D } from './layers/sampling.ts';
import { TimestepEmbedding, timestepSinusoid } from './layers/embeddings.ts';

// ---------------------------------------------------------------------------------------------
// Config

export type DownBlockType = 'CrossAttnDownBlock2D' | 'DownBlock2D';
export type UpBlockType = 'CrossAttnUpBlock2D' | 'UpBlock2D';

/** The SD 1.x subset of diffusers' `UNet2DConditionModel` config, validated, defaults filled. */
export interface UNet2DConditionConfig {
  /** Latent side the model was trained at (informational; any size runs). */
  readonly sampleSize: number | readonly [number, number] | null;
  readonly inChannels: number;
  readonly outChannels: number;
  readonly centerInputSample: boolean;
  readonly flipSinToCos: boolean;
  readonly freqShift: number;
  readonly downBlockTypes: readonly DownBlockType[];
  readonly upBlockTypes: readonly UpBlockType[];
  readonly blockOutChannels: readonly number[];
  /** Per down block (up blocks use the reverse, plus one resnet). */
  readonly layersPerBlock: readonly number[];
  /** Per down block. */
  readonly transformerLayersPerBlock: readonly number[];
  readonly downsamplePadding: number;
  readonly midBlockScaleFactor: number;
  readonly normNumGroups: number;
  readonly normEps: number;
  /** Per down block. */
  readonly crossAttentionDim: readonly number[];
  /** Heads per down block: diffusers' `num_attention_heads or attention_head_dim` (8 in SD 1.x). */
  readonly numAttentionHeads: readonly number[];
  readonly useLinearProjection: boolean;
  /** Upcasts attention to float32 in fp16 runs; a no-op here (everything is float32). */
  readonly upcastAttention: boolean;
  /** Width of the time embedding (`time_embedding_dim`, default 4 * block_out_channels[0]). */
  readonly timeEmbedDim: number;
  readonly convInKernel: number;
  readonly convOutKernel: number;
}

/**
 * Keys diffusers accepts that do not change the SD 1.x block types (they configure Simple*
 * blocks, class or addition embeddings that are rejected below, or fp16 behaviour).
 */
const IGNORED_KEYS = new Set([
  'resnet_out_scale_factor', // only ResnetDownsampleBlock2D / Simple* blocks read it
  'resnet_skip_time_act', // only Simple* blocks
  'cross_attention_norm', // only Simple* blocks
  'mid_block_only_cross_attention', // only UNetMidBlock2DSimpleCrossAttn
  'addition_embed_type_num_heads', // only with addition_embed_type
  'addition_time_embed_dim', // only with addition_embed_type
  'class_embeddings_concat', // only with class_embed_type
  'projection_class_embeddings_input_dim', // only with class_embed_type
]);

const KNOWN_KEYS = new Set([
  ...IGNORED_KEYS,
  'sample_size',
  'in_channels',
  'out_channels',
  'center_input_sample',
  'flip_sin_to_cos',
  'freq_shift',
  'down_block_types',
  'mid_block_type',
  'up_block_types',
  'only_cross_attention',
  'block_out_channels',
  'layers_per_block',
  'downsample_padding',
  'mid_block_scale_factor',
  'dropout',
  'act_fn',
  'norm_num_groups',
  'norm_eps',
  'cross_attention_dim',
  'transformer_layers_per_block',
  'reverse_transformer_layers_per_block',
  'encoder_hid_dim',
  'encoder_hid_dim_type',
  'attention_head_dim',
  'num_attention_heads',
  'dual_cross_attention',
  'use_linear_projection',
  'class_embed_type',
  'addition_embed_type',
  'num_class_embeds',
  'upcast_attention',
  'resnet_time_scale_shift',
  'time_embedding_type',
  'time_embedding_dim',
  'time_embedding_act_fn',
  'timestep_post_act',
  'time_cond_proj_dim',
  'conv_in_kernel',
  'conv_out_kernel',
  'attention_type',
]);

/**
 * Validates a raw `config.json` object (hub format: keys may be missing) and fills the defaults
 * of diffusers' constructor. Options outside SD 1.x are errors that name the field.
 */
export function parseUNetConfig(raw: unknown): UNet2DConditionConfig {
  const c = new ConfigReader('UNet2DConditionModel config', raw);
  const className = c.raw._class_name;
  if (className !== undefined && className !== 'UNet2DConditionModel') {
    throw new Error(
      `UNet2DConditionModel config: _class_name is ${JSON.stringify(className)}, expected "UNet2DConditionModel"`,
    );
  }
  const unknown = Object.keys(c.raw).filter((k) => !k.startsWith('_') && !KNOWN_KEYS.has(k));
  if (unknown.length)
    throw new Error(
      `UNet2DConditionModel config: unknown keys ${unknown.join(', ')} (written by a newer diffusers? this loader supports the v0.27 SD 1.x options)`,
    );

  // Options SD 1.x does not use: each must sit at its default.
  c.mustBe('class_embed_type', null, 'class embeddings are not supported');
  c.mustBe('num_class_embeds', null, 'class embeddings are not supported');
  c.mustBe('addition_embed_type', null, 'addition embeddings (SDXL-style text_time etc.) are not supported');
  c.mustBe('encoder_hid_dim', null, 'an encoder_hid_proj is not supported');
  c.mustBe('encoder_hid_dim_type', null, 'an encoder_hid_proj is not supported');
  c.mustBe('time_cond_proj_dim', null, 'timestep conditioning projections (LCM-style) are not supported');
  c.mustBe('time_embedding_type', 'positional', 'only the positional (sinusoidal) time embedding is supported');
  c.mustBe('time_embedding_act_fn', null, 'an activation after the time embedding is not supported');
  c.mustBe('timestep_post_act', null, 'a post-activation in TimestepEmbedding is not supported');
  c.mustBe('attention_type', 'default', 'only the default attention type is supported (no gated/GLIGEN attention)');
  c.mustBe('dual_cross_attention', false, 'dual cross-attention is not supported');
  c.mustBe('resnet_time_scale_shift', 'default', 'only the "default" ResnetBlock2D time embedding norm is supported');
  c.mustBe('reverse_transformer_layers_per_block', null, 'per-up-block transformer depths are not supported');
  c.mustBe('mid_block_type', 'UNetMidBlock2DCrossAttn', 'only the UNetMidBlock2DCrossAttn mid block is supported');
  c.mustBe(
    'num_attention_heads',
    null,
    'diffusers itself rejects it for UNet2DConditionModel; set attention_head_dim (SD 1.x: the number of heads)',
  );
  c.mustBe('dropout', 0, 'dropout is not implemented (this forward is inference-style)');
  const actFn = c.str('act_fn', 'silu');
  if (actFn !== 'silu' && actFn !== 'swish')
    throw new Error(`UNet2DConditionModel config: act_fn "${actFn}" is not supported (SD 1.x uses "silu")`);

  const downBlockTypes = c
    .strList('down_block_types', [
      'CrossAttnDownBlock2D',
      'CrossAttnDownBlock2D',
      'CrossAttnDownBlock2D',
      'DownBlock2D',
    ])
    .map((t, i) => {
      const name = t.startsWith('UNetRes') ? t.slice(7) : t;
      if (name !== 'CrossAttnDownBlock2D' && name !== 'DownBlock2D')
        throw new Error(
          `UNet2DConditionModel config: down_block_types[${i}] "${t}" is not supported (expected CrossAttnDownBlock2D or DownBlock2D)`,
        );
      return name as DownBlockType;
    });
  const upBlockTypes = c
    .strList('up_block_types', ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'])
    .map((t, i) => {
      const name = t.startsWith('UNetRes') ? t.slice(7) : t;
      if (name !== 'CrossAttnUpBlock2D' && name !== 'UpBlock2D')
        throw new Error(
          `UNet2DConditionModel config: up_block_types[${i}] "${t}" is not supported (expected CrossAttnUpBlock2D or UpBlock2D)`,
        );
      return name as UpBlockType;
    });
  const n = downBlockTypes.length;
  if (upBlockTypes.length !== n)
    throw new Error(
      `UNet2DConditionModel config: ${n} down_block_types but ${upBlockTypes.length} up_block_types; they must match`,
    );
  const blockOutChannels = c.intList('block_out_channels', [320, 640, 1280, 1280]);
  if (blockOutChannels.length !== n)
    throw new Error(
      `UNet2DConditionModel config: block_out_channels has ${blockOutChannels.length} entries for ${n} down blocks`,
    );

  const onlyCross = c.raw.only_cross_attention ?? false;
  if (onlyCross !== false && !(Array.isArray(onlyCross) && onlyCross.every((v) => v === false))) {
    throw new Error(
      `UNet2DConditionModel config: only_cross_attention ${JSON.stringify(onlyCross)} is not supported (must be false)`,
    );
  }

  const normNumGroups = c.int('norm_num_groups', 32);
  const timeEmbedDim = c.raw.time_embedding_dim == null ? blockOutChannels[0] * 4 : c.int('time_embedding_dim', 0);
  const config: UNet2DConditionConfig = {
    sampleSize: c.sampleSize('sample_size'),
    inChannels: c.int('in_channels', 4),
    outChannels: c.int('out_channels', 4),
    centerInputSample: c.bool('center_input_sample', false),
    flipSinToCos: c.bool('flip_sin_to_cos', true),
    freqShift: c.num('freq_shift', 0),
    downBlockTypes,
    upBlockTypes,
    blockOutChannels,
    layersPerBlock: c.perBlock('layers_per_block', 2, n),
    transformerLayersPerBlock: c.perBlock('transformer_layers_per_block', 1, n),
    downsamplePadding: c.int('downsample_padding', 1),
    midBlockScaleFactor: c.num('mid_block_scale_factor', 1),
    normNumGroups,
    normEps: c.num('norm_eps', 1e-5),
    crossAttentionDim: c.perBlock('cross_attention_dim', 1280, n),
    numAttentionHeads: c.perBlock('attention_head_dim', 8, n),
    useLinearProjection: c.bool('use_linear_projection', false),
    upcastAttention: c.bool('upcast_attention', false),
    timeEmbedDim,
    convInKernel: c.oddKernel('conv_in_kernel', 3),
    convOutKernel: c.oddKernel('conv_out_kernel', 3),
  };
  for (const [i, ch] of blockOutChannels.entries()) {
    if (ch % normNumGroups !== 0)
      throw new Error(
        `UNet2DConditionModel config: block_out_channels[${i}] = ${ch} does not split into norm_num_groups = ${normNumGroups}`,
      );
    if (ch % config.numAttentionHeads[i] !== 0)
      throw new Error(
        `UNet2DConditionModel config: block_out_channels[${i}] = ${ch} does not split into ${config.numAttentionHeads[i]} heads (attention_head_dim)`,
      );
  }
  return config;
}

/** Reads typed fields from a raw JSON object; every error names the field and the value. */
class ConfigReader {
  readonly raw: Record<string, unknown>;

  constructor(
    private readonly what: string,
    raw: unknown,
  ) {
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
      throw new Error(`${what}: expected a JSON object`);
    this.raw = raw as Record<string, unknown>;
  }

  private fail(key: string, expected: string): never {
    throw new Error(`${this.what}: ${key} is ${JSON.stringify(this.raw[key])}; expected ${expected}`);
  }

  mustBe(key: string, value: unknown, why: string): void {
    const v = this.raw[key];
    if (v === undefined || v === value) return;
    throw new Error(
      `${this.what}: ${key} = ${JSON.stringify(v)} is not supported: ${why} (expected ${JSON.stringify(value)})`,
    );
  }

  int(key: string, dflt: number): number {
    const v = this.raw[key] ?? dflt;
    if (!Number.isInteger(v) || (v as number) < 0) this.fail(key, 'a non-negative integer');
    return v as number;
  }

  num(key: string, dflt: number): number {
    const v = this.raw[key] ?? dflt;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(key, 'a finite number');
    return v;
  }

  bool(key: string, dflt: boolean): boolean {
    const v = this.raw[key] ?? dflt;
    if (typeof v !== 'boolean') this.fail(key, 'true or false');
    return v;
  }

  str(key: string, dflt: string): string {
    const v = this.raw[key] ?? dflt;
    if (typeof v !== 'string') this.fail(key, 'a string');
    return v;
  }

  strList(key: string, dflt: string[]): string[] {
    const v = this.raw[key] ?? dflt;
    if (!Array.isArray(v) || v.length === 0 || !v.every((s) => typeof s === 'string'))
      this.fail(key, 'a non-empty list of strings');
    return v as string[];
  }

  intList(key: string, dflt: number[]): number[] {
    const v = this.raw[key] ?? dflt;
    if (!Array.isArray(v) || v.length === 0 || !v.every((d) => Number.isInteger(d) && d > 0))
      this.fail(key, 'a non-empty list of positive integers');
    return v as number[];
  }

  /** An int for every block, or a list with one int per down block. */
  perBlock(key: string, dflt: number, n: number): number[] {
    const v = this.raw[key] ?? dflt;
    if (Number.isInteger(v) && (v as number) > 0) return Array.from({ length: n }, () => v as number);
    if (Array.isArray(v) && v.length === n && v.every((d) => Number.isInteger(d) && d > 0)) return v as number[];
    return this.fail(key, `a positive integer or a list of ${n} positive integers (one per down block)`);
  }

  oddKernel(key: string, dflt: number): number {
    const k = this.int(key, dflt);
    if (k % 2 !== 1) this.fail(key, 'an odd kernel size');
    return k;
  }

  sampleSize(key: string): number | readonly [number, number] | null {
    const v = this.raw[key] ?? null;
    if (v === null || (Number.isInteger(v) && (v as number) > 0)) return v as number | null;
    if (Array.isArray(v) && v.length === 2 && v.every((d) => Number.isInteger(d) && d > 0)) return [v[0], v[1]];
    return this.fail(key, 'a positive integer, [height, width], or null');
  }
}

// ---------------------------------------------------------------------------------------------
// Blocks

interface BlockOptions {
  inChannels: number;
  outChannels: number;
  tembChannels: number;
  layers: number;
  groups: number;
  eps: number;
}

interface AttentionOptions {
  heads: number;
  crossAttentionDim: number;
  transformerLayers: number;
  useLinearProjection: boolean;
}

/** `DownBlock2D` / `CrossAttnDownBlock2D`: resnets (each followed by a transformer), then a stride-2 conv. */
export class DownBlock extends Module {
  resnets: ResnetBlock2D[];
  /** Present only in CrossAttnDownBlock2D. */
  attentions?: Transformer2DModel[];
  downsamplers?: [Downsample2D];

  constructor(
    readonly type: DownBlockType,
    o: BlockOptions & { addDownsample: boolean; downsamplePadding: number },
    attn: AttentionOptions,
  ) {
    super();
    this.resnets = Array.from(
      { length: o.layers },
      (_, i) =>
        new ResnetBlock2D({
          inChannels: i === 0 ? o.inChannels : o.outChannels,
          outChannels: o.outChannels,
          tembChannels: o.tembChannels,
          groups: o.groups,
          eps: o.eps,
        }),
    );
    if (type === 'CrossAttnDownBlock2D')
      this.attentions = this.resnets.map(() => transformer(o.outChannels, o.groups, attn));
    if (o.addDownsample) this.downsamplers = [new Downsample2D(o.outChannels, o.outChannels, o.downsamplePadding)];
  }

  /** h (image, `in` channels) -> the block's skip outputs; the last one is the block's output. */
  forward<T>(o: Ops<T>, h: T, temb: T, context: T): T[] {
    return o.scope(() => {
      const outputs: T[] = [];
      this.resnets.forEach((resnet, i) => {
        h = resnet.forward(o, h, temb);
        if (this.attentions) h = this.attentions[i].forward(o, h, context);
        outputs.push(h);
      });
      if (this.downsamplers) outputs.push(this.downsamplers[0].forward(o, h));
      return outputs;
    });
  }
}

/** `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) per layer (1 in SD 1.x). */
export class UNetMidBlock2DCrossAttn extends Module {
  attentions: Transformer2DModel[];
  resnets: ResnetBlock2D[];

  constructor(
    channels: number,
    tembChannels: number,
    groups: number,
    eps: number,
    outputScaleFactor: number,
    attn: AttentionOptions,
    layers = 1,
  ) {
    super();
    const resnet = () =>
      new ResnetBlock2D({ inChannels: channels, outChannels: channels, tembChannels, groups, eps, outputScaleFactor });
    this.resnets = [resnet(), ...Array.from({ length: layers }, resnet)];
    this.attentions = Array.from({ length: layers }, () => transformer(channels, groups, attn));
  }

  forward<T>(o: Ops<T>, h: T, temb: T, context: T): T {
    return o.scope(() => {
      h = this.resnets[0].forward(o, h, temb);
      this.attentions.forEach((attention, i) => {
        h = attention.forward(o, h, context);
        h = this.resnets[i + 1].forward(o, h, temb);
      });
      return h;
    });
  }
}

/** `UpBlock2D` / `CrossAttnUpBlock2D`: per resnet, concat one skip on channels; then upsample. */
export class UpBlock extends Module {
  resnets: ResnetBlock2D[];
  /** Present only in CrossAttnUpBlock2D. */
  attentions?: Transformer2DModel[];
  upsamplers?: [Upsample2D];

  constructor(
    readonly type: UpBlockType,
    o: BlockOptions & { prevOutputChannels: number; addUpsample: boolean },
    attn: AttentionOptions,
  ) {
    super();
    this.resnets = Array.from({ length: o.layers }, (_, i) => {
      const skipChannels = i === o.layers - 1 ? o.inChannels : o.outChannels;
      const inChannels = (i === 0 ? o.prevOutputChannels : o.outChannels) + skipChannels;
      return new ResnetBlock2D({
        inChannels,
        outChannels: o.outChannels,
        tembChannels: o.tembChannels,
        groups: o.groups,
        eps: o.eps,
      });
    });
    if (type === 'CrossAttnUpBlock2D')
      this.attentions = this.resnets.map(() => transformer(o.outChannels, o.groups, attn));
    if (o.addUpsample) this.upsamplers = [new Upsample2D(o.outChannels, o.outChannels)];
  }

  /**
   * h (image), skips: this block's skip tensors in down-path order (consumed from the end),
   * upsampleTo: the next skip, whose spatial size the upsampler matches (2x when omitted).
   */
  forward<T>(o: Ops<T>, h: T, skips: readonly T[], temb: T, context: T, upsampleTo?: T): T {
    return o.scope(() => {
      if (skips.length !== this.resnets.length)
        throw new Error(`${this.type}: got ${skips.length} skip tensors for ${this.resnets.length} resnets`);
      this.resnets.forEach((resnet, i) => {
        const skip = skips[skips.length - 1 - i];
        h = resnet.forward(o, o.concatChannels([h, skip]), temb); // C + Cskip channels
        if (this.attentions) h = this.attentions[i].forward(o, h, context);
      });
      if (this.upsamplers) h = this.upsamplers[0].forward(o, h, upsampleTo);
      return h;
    });
  }
}

function transformer(channels: number, groups: number, attn: AttentionOptions): Transformer2DModel {
  return new Transformer2DModel({
    channels,
    heads: attn.heads,
    crossAttentionDim: attn.crossAttentionDim,
    groups,
    layers: attn.transformerLayers,
    useLinearProjection: attn.useLinearProjection,
  });
}

// ---------------------------------------------------------------------------------------------
// Model

/** Runs one UNet block (see the file comment); the default runs it directly. */
export type BlockRunner<T = Tensor> = (name: string, fn: (inputs: T[]) => T[], inputs: T[]) => T[];
export function runBlockDirectly<T>(_name: string, fn: (inputs: T[]) => T[], inputs: T[]): T[] {
  return fn(inputs);
}

export interface UNetForwardOptions {
  /** Wraps each down/mid/up block call, e.g. for gradient checkpointing. */
  runBlock?: BlockRunner;
}

export class UNet2DConditionModel extends Module {
  conv_in: Conv2d;
  time_embedding: TimestepEmbedding;
  down_blocks: DownBlock[];
  mid_block: UNetMidBlock2DCrossAttn;
  up_blocks: UpBlock[];
  conv_norm_out: GroupNorm;
  conv_out: Conv2d;

  constructor(readonly config: UNet2DConditionConfig) {
    super();
    const cfg = config;
    const n = cfg.blockOutChannels.length;
    const groups = cfg.normNumGroups;
    const eps = cfg.normEps;
    const temb = cfg.timeEmbedDim;
    const ch0 = cfg.blockOutChannels[0];
    this.conv_in = new Conv2d(cfg.inChannels, ch0, cfg.convInKernel, 1, (cfg.convInKernel - 1) / 2);
    this.time_embedding = new TimestepEmbedding(ch0, temb);

    const attnFor = (i: number): AttentionOptions => ({
      heads: cfg.numAttentionHeads[i],
      crossAttentionDim: cfg.crossAttentionDim[i],
      transformerLayers: cfg.transformerLayersPerBlock[i],
      useLinearProjection: cfg.useLinearProjection,
    });

    let outCh = ch0;
    this.down_blocks = cfg.downBlockTypes.map((type, i) => {
      const inCh = outCh;
      outCh = cfg.blockOutChannels[i];
      return new DownBlock(
        type,
        {
          inChannels: inCh,
          outChannels: outCh,
          tembChannels: temb,
          layers: cfg.layersPerBlock[i],
          groups,
          eps,
          addDownsample: i < n - 1,
          downsamplePadding: cfg.downsamplePadding,
        },
        attnFor(i),
      );
    });

    this.mid_block = new UNetMidBlock2DCrossAttn(
      cfg.blockOutChannels[n - 1],
      temb,
      groups,
      eps,
      cfg.midBlockScaleFactor,
      attnFor(n - 1),
    );

    // Up blocks mirror the down blocks: up block i uses down block (n-1-i)'s settings.
    const reversed = [...cfg.blockOutChannels].reverse();
    outCh = reversed[0];
    this.up_blocks = cfg.upBlockTypes.map((type, i) => {
      const prevOutputChannels = outCh;
      outCh = reversed[i];
      const inCh = reversed[Math.min(i + 1, n - 1)];
      return new UpBlock(
        type,
        {
          inChannels: inCh,
          outChannels: outCh,
          prevOutputChannels,
          tembChannels: temb,
          layers: cfg.layersPerBlock[n - 1 - i] + 1,
          groups,
          eps,
          addUpsample: i < n - 1,
        },
        attnFor(n - 1 - i),
      );
    });

    this.conv_norm_out = new GroupNorm(groups, ch0, eps);
    this.conv_out = new Conv2d(ch0, cfg.outChannels, cfg.convOutKernel, 1, (cfg.convOutKernel - 1) / 2);
  }

  /** Builds the module tree from a raw config object (weights not loaded). */
  static fromConfig(raw: unknown): UNet2DConditionModel {
    return new UNet2DConditionModel(parseUNetConfig(raw));
  }

  /**
   * Loads a diffusers `unet/` folder: `config.json` + `diffusion_pytorch_model.safetensors`
   * (or its `.fp16` variant), strictly. The file is closed before this returns.
   */
  static async load(folder: string): Promise<UNet2DConditionModel> {
    const model = UNet2DConditionModel.fromConfig(await readComponentConfig(folder, 'UNet2DConditionModel'));
    await loadComponentWeights(model, folder, 'unet', DIFFUSERS_WEIGHT_FILES);
    return model;
  }

  /**
   * sample [B, H, W, in_channels] (NHWC), timestep (one for all, or one per batch item),
   * encoderHiddenStates [B, S, cross_attention_dim] -> noise prediction [B, H, W, out_channels],
   * on TensorFlow.js. The result is a new tensor owned by the caller; nothing else is left behind.
   */
  forward(
    sample: Tensor,
    timestep: number | readonly number[] | Tensor,
    encoderHiddenStates: Tensor,
    options: UNetForwardOptions = {},
  ): Tensor {
    const cfg = this.config;
    if (sample.rank !== 4 || sample.shape[3] !== cfg.inChannels) {
      throw new Error(
        `UNet2DConditionModel.forward: sample must be NHWC [B, H, W, ${cfg.inChannels}], got [${sample.shape}]`,
      );
    }
    const batch = sample.shape[0];
    const context = encoderHiddenStates;
    if (context.rank !== 3 || context.shape[0] !== batch) {
      throw new Error(
        `UNet2DConditionModel.forward: encoderHiddenStates must be [${batch}, S, C] to match the sample batch, got [${context.shape}]`,
      );
    }
    const badDim = cfg.crossAttentionDim.find((d) => d !== context.shape[2]);
    if (badDim !== undefined)
      throw new Error(
        `UNet2DConditionModel.forward: encoderHiddenStates has ${context.shape[2]} channels but cross_attention_dim is ${badDim}`,
      );
    return tf.tidy(() => this.denoise(tfOps, sample, timestepBatch(timestep, batch), context, options.runBlock));
  }

  /**
   * The forward pass on any executor: sample (image, in_channels), timesteps [B] float32,
   * context [B, S, cross_attention_dim] -> noise prediction (image, out_channels).
   */
  denoise<T>(o: Ops<T>, sample: T, timesteps: T, context: T, runBlock: BlockRunner<T> = runBlockDirectly): T {
    const cfg = this.config;
    return o.scope(() => {
      // 1. Time embedding.
      const temb = this.time_embedding.forward(
        o,
        timestepSinusoid(o, timesteps, cfg.blockOutChannels[0], cfg.flipSinToCos, cfg.freqShift),
      ); // [B, timeEmbedDim]

      // 2. conv_in.
      const x = cfg.centerInputSample ? o.sub(o.mul(sample, 2), 1) : sample;
      let h = this.conv_in.forward(o, x);
      const skips: T[] = [h];

      // 3. Down path.
      this.down_blocks.forEach((block, i) => {
        const outputs = runBlock(`down_blocks.${i}`, ([hIn, te, ctx]) => block.forward(o, hIn, te, ctx), [
          h,
          temb,
          context,
        ]);
        skips.push(...outputs);
        h = outputs[outputs.length - 1];
      });

      // 4. Mid block.
      h = runBlock('mid_block', ([hIn, te, ctx]) => [this.mid_block.forward(o, hIn, te, ctx)], [h, temb, context])[0];

      // 5. Up path: each block takes its skips from the end and upsamples to the next skip's size.
      this.up_blocks.forEach((block, i) => {
        const mine = skips.splice(skips.length - block.resnets.length);
        // The next skip only lends its spatial size to the upsampler, so it is not a block input.
        const next = block.upsamplers ? skips[skips.length - 1] : undefined;
        h = runBlock(`up_blocks.${i}`, ([hIn, te, ctx, ...res]) => [block.forward(o, hIn, res, te, ctx, next)], [
          h,
          temb,
          context,
          ...mine,
        ])[0];
      });

      // 6. Output.
      return this.conv_out.forward(o, silu(o, this.conv_norm_out.forward(o, h)));
    });
  }
}

/** The timesteps as a float32 [B] tensor: a scalar or a length-1 input is used for every item. */
function timestepBatch(timestep: number | readonly number[] | Tensor, batch: number): Tensor {
  if (typeof timestep === 'number') return tf.fill([batch], timestep, 'float32');
  if (timestep instanceof tf.Tensor) {
    if (timestep.rank > 1 || (timestep.size !== 1 && timestep.size !== batch)) {
      throw new Error(
        `UNet2DConditionModel.forward: timestep tensor must be a scalar or [${batch}], got [${timestep.shape}]`,
      );
    }
    const t = timestep.cast('float32').reshape([-1]); // [1] or [B]
    return timestep.size === batch ? t : tf.tile(t, [batch]);
  }
  const list = timestep as readonly number[];
  if (list.length !== 1 && list.length !== batch)
    throw new Error(`UNet2DConditionModel.forward: ${list.length} timesteps for a batch of ${batch}`);
  if (!list.every(Number.isFinite))
    throw new Error(`UNet2DConditionModel.forward: timesteps [${list}] must be finite numbers`);
  return tf.tensor1d(list.length === batch ? [...list] : Array.from({ length: batch }, () => list[0]), 'float32');
}

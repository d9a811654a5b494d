/**
 * keyMap: every translation between foreign tensor-name formats and this project's names, in one
 * module of pure, table-driven functions with one entry point, `convertTensorName` (after
 * stable-diffusion.cpp's `convert_tensor_name`, model.cpp).
 *
 * Canonical names are the diffusers / transformers state-dict keys of each component (`unet`,
 * `vae`, `textEncoder`): the names the module trees in `engine/models` use.
 *
 * References for the original (CompVis LDM) single-file layout:
 *   - diffusers v0.27.2 `scripts/convert_diffusers_to_original_stable_diffusion.py` and
 *     `convert_ldm_unet_checkpoint` / `convert_ldm_vae_checkpoint` (single_file_utils.py);
 *   - CompVis `ldm/modules/diffusionmodules/openaimodel.py` (UNetModel: input_blocks,
 *     middle_block, output_blocks) and `.../model.py` (Encoder/Decoder: down, mid, up).
 *
 * Unlike the official conversion script, which hard-codes SD-1.x block indices, the tables here are
 * generated from the component configs (block types, layers_per_block, number of levels), so they
 * also hold for other topologies (test/fixtures/tiny-a, tiny-b).
 *
 * Sections:
 *   1. Names, formats and the entry point `convertTensorName`
 *   2. Original LDM single-file layout <-> diffusers: module tables and the compiled key map
 *   3. Known extras (tensors real checkpoints carry that no model here uses)
 *   4. Config inference from single-file shapes: configInference.ts
 *   5. Checkpoint-kind detection (clear errors for SD 2.x / SDXL / LoRA / component files)
 *   6. LoRA names (kohya, diffusers / PEFT, native adapter files)
 */

// =============================================================================================
// 1. Names, formats and the entry point

export type ComponentName = 'unet' | 'vae' | 'textEncoder';
export const COMPONENTS: readonly ComponentName[] = ['unet', 'vae', 'textEncoder'];

/** A component config as JSON (diffusers `config.json`, transformers `config.json`, or inferred). */
export type RawConfig = Readonly<Record<string, unknown>>;

export interface ComponentConfigs {
  readonly unet: RawConfig;
  readonly vae: RawConfig;
  readonly textEncoder: RawConfig;
}

/** One tensor, named in both layouts. */
export interface KeyPair {
  readonly component: ComponentName;
  /** Full key in an original single-file checkpoint (`model.diffusion_model.out.2.weight`). */
  readonly original: string;
  /** Key in the component's diffusers / transformers state dict (`conv_out.weight`). */
  readonly diffusers: string;
  /** Present only for some channel counts (a resnet's conv_shortcut exists iff in != out). */
  readonly optional: boolean;
  /** The original stores a 1x1 conv [C, C, 1, 1] where diffusers has a Linear [C, C] (VAE attention). Same values. */
  readonly conv1x1: boolean;
}

/** The compiled single-file <-> diffusers table for one set of component configs. */
export interface SingleFileKeyMap {
  readonly pairs: readonly KeyPair[];
  readonly byOriginal: ReadonlyMap<string, KeyPair>;
  readonly byDiffusers: Readonly<Record<ComponentName, ReadonlyMap<string, KeyPair>>>;
}

/**
 * Where a tensor name comes from. LoRA formats (section 6) join this union as
 * `{ format: 'kohya-lora' | 'peft-lora' | ... }`.
 */
export type KeySource =
  /** A component file of a diffusers folder: names are already canonical. */
  | { readonly format: 'diffusers'; readonly component: ComponentName }
  /** An original-layout single-file checkpoint. */
  | { readonly format: 'single-file'; readonly map: SingleFileKeyMap };

export type Translation =
  | { readonly kind: 'tensor'; readonly component: ComponentName; readonly key: string; readonly pair?: KeyPair }
  /** A known extra, deliberately not loaded. */
  | { readonly kind: 'ignored'; readonly reason: string }
  /** Not a name this format defines: callers list these in their error. */
  | { readonly kind: 'unknown' };

export class KeyMapError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KeyMapError';
  }
}

/**
 * The entry point: translates one tensor name from `source`'s format to the canonical
 * `{component, key}`, or says it is a known extra, or unknown.
 */
export function convertTensorName(name: string, source: KeySource): Translation {
  const extra = knownExtra(name);
  if (extra !== null) return { kind: 'ignored', reason: extra };
  switch (source.format) {
    case 'diffusers':
      return { kind: 'tensor', component: source.component, key: name };
    case 'single-file': {
      const pair = source.map.byOriginal.get(canonicalOriginalName(name));
      return pair ? { kind: 'tensor', component: pair.component, key: pair.diffusers, pair } : { kind: 'unknown' };
    }
  }
}

/** The inverse: the original single-file key of a canonical component key. */
export function toSingleFileName(component: ComponentName, key: string, map: SingleFileKeyMap): string {
  const pair = map.byDiffusers[component].get(key);
  if (!pair)
    throw new KeyMapError(
      `keyMap: ${component} key '${key}' has no original single-file name under this config (is it a key of this model?)`,
    );
  return pair.original;
}

/** Original single-file prefixes of the three components. */
export const SINGLE_FILE_PREFIX: Readonly<Record<ComponentName, string>> = {
  unet: 'model.diffusion_model.',
  vae: 'first_stage_model.',
  textEncoder: 'cond_stage_model.transformer.text_model.',
};

/**
 * Some early SD-1.x checkpoints (saved with an old transformers CLIPTextModel) lack the
 * `text_model.` level: `cond_stage_model.transformer.encoder.layers.0...`. Read them as the
 * canonical form; the inverse always writes the canonical form.
 */
export function canonicalOriginalName(name: string): string {
  const old = 'cond_stage_model.transformer.';
  if (
    name.startsWith(old) &&
    !name.startsWith(SINGLE_FILE_PREFIX.textEncoder) &&
    /^(embeddings|encoder|final_layer_norm)\./.test(name.slice(old.length))
  ) {
    return SINGLE_FILE_PREFIX.textEncoder + name.slice(old.length);
  }
  return name;
}

// =============================================================================================
// 2. Original LDM single-file layout <-> diffusers
//
// A table is a list of rules `original module prefix <-> diffusers module prefix`, each with a
// module table that lists the module's parameters under both names. The rules are generated from
// the configs, then compiled into two dictionaries (original -> pair, diffusers -> pair), so every
// lookup is exact and the mapping is a bijection by construction.

type ParamName = 'weight' | 'bias';
const WB: readonly ParamName[] = ['weight', 'bias'];
const W: readonly ParamName[] = ['weight'];

interface Sub {
  readonly original: string;
  readonly diffusers: string;
  readonly params: readonly ParamName[];
  readonly optional?: boolean;
  readonly conv1x1?: boolean;
}
type ModuleTable = readonly Sub[];

interface Rule {
  readonly original: string;
  readonly diffusers: string;
  readonly table: ModuleTable;
}

const rule = (original: string, diffusers: string, table: ModuleTable): Rule => ({ original, diffusers, table });
const same = (name: string, params: readonly ParamName[] = WB): Sub => ({ original: name, diffusers: name, params });

/** A single layer (conv, linear, norm with weight and bias): the rule's prefix names the layer. */
const LAYER: ModuleTable = [same('')];

/** UNet `ResBlock` (openaimodel.py) <-> diffusers `ResnetBlock2D`. */
const UNET_RESNET: ModuleTable = [
  { original: 'in_layers.0', diffusers: 'norm1', params: WB },
  { original: 'in_layers.2', diffusers: 'conv1', params: WB },
  { original: 'emb_layers.1', diffusers: 'time_emb_proj', params: WB },
  { original: 'out_layers.0', diffusers: 'norm2', params: WB },
  { original: 'out_layers.3', diffusers: 'conv2', params: WB },
  { original: 'skip_connection', diffusers: 'conv_shortcut', params: WB, optional: true },
];

/** `SpatialTransformer` <-> `Transformer2DModel`: identical names on both sides. */
function transformerTable(depth: number): ModuleTable {
  const rows: Sub[] = [same('norm'), same('proj_in'), same('proj_out')];
  for (let t = 0; t < depth; t++) {
    const b = `transformer_blocks.${t}`;
    rows.push(same(`${b}.norm1`), same(`${b}.norm2`), same(`${b}.norm3`));
    for (const attn of ['attn1', 'attn2']) {
      rows.push(
        same(`${b}.${attn}.to_q`, W),
        same(`${b}.${attn}.to_k`, W),
        same(`${b}.${attn}.to_v`, W),
        same(`${b}.${attn}.to_out.0`),
      );
    }
    rows.push(same(`${b}.ff.net.0.proj`), same(`${b}.ff.net.2`));
  }
  return rows;
}

/** VAE `ResnetBlock` (model.py) <-> diffusers `ResnetBlock2D` (no time embedding). */
const VAE_RESNET: ModuleTable = [
  same('norm1'),
  same('conv1'),
  same('norm2'),
  same('conv2'),
  { original: 'nin_shortcut', diffusers: 'conv_shortcut', params: WB, optional: true },
];

/** VAE `AttnBlock` (1x1 convs) <-> diffusers `Attention` (Linear). */
const VAE_ATTENTION: ModuleTable = [
  { original: 'norm', diffusers: 'group_norm', params: WB },
  { original: 'q', diffusers: 'to_q', params: WB, conv1x1: true },
  { original: 'k', diffusers: 'to_k', params: WB, conv1x1: true },
  { original: 'v', diffusers: 'to_v', params: WB, conv1x1: true },
  { original: 'proj_out', diffusers: 'to_out.0', params: WB, conv1x1: true },
];

/** transformers `CLIPTextTransformer`: identical names below `text_model`. */
function clipTextTable(layers: number): ModuleTable {
  const rows: Sub[] = [same('embeddings.token_embedding', W), same('embeddings.position_embedding', W)];
  for (let i = 0; i < layers; i++) {
    const l = `encoder.layers.${i}`;
    for (const p of [
      'self_attn.q_proj',
      'self_attn.k_proj',
      'self_attn.v_proj',
      'self_attn.out_proj',
      'layer_norm1',
      'mlp.fc1',
      'mlp.fc2',
      'layer_norm2',
    ])
      rows.push(same(`${l}.${p}`));
  }
  rows.push(same('final_layer_norm'));
  return rows;
}

// --- Structure read from the configs (with the diffusers / transformers defaults) -------------

const UNET_DOWN_TYPES: Readonly<Record<string, boolean>> = { CrossAttnDownBlock2D: true, DownBlock2D: false };
const UNET_UP_TYPES: Readonly<Record<string, boolean>> = { CrossAttnUpBlock2D: true, UpBlock2D: false };

interface UnetLayout {
  /** Per level, in diffusers down order: has cross-attention. */
  readonly downAttention: readonly boolean[];
  /** Per up block (diffusers up order, deepest level first): has cross-attention. */
  readonly upAttention: readonly boolean[];
  /** Resnets per down block, per level. */
  readonly layers: readonly number[];
  /** Transformer blocks per attention, per level (down order). */
  readonly transformerDepth: readonly number[];
}

function unetLayout(config: RawConfig): UnetLayout {
  const down = stringList(config, 'unet', 'down_block_types', [
    'CrossAttnDownBlock2D',
    'CrossAttnDownBlock2D',
    'CrossAttnDownBlock2D',
    'DownBlock2D',
  ]);
  const up = stringList(config, 'unet', 'up_block_types', [
    'UpBlock2D',
    'CrossAttnUpBlock2D',
    'CrossAttnUpBlock2D',
    'CrossAttnUpBlock2D',
  ]);
  const n = down.length;
  if (up.length !== n)
    throw new KeyMapError(
      `keyMap: unet config has ${n} down_block_types but ${up.length} up_block_types; they must match`,
    );
  const channels = config.block_out_channels;
  if (Array.isArray(channels) && channels.length !== n)
    throw new KeyMapError(
      `keyMap: unet config has ${n} down_block_types but ${channels.length} block_out_channels; they must match`,
    );
  const mid = config.mid_block_type ?? 'UNetMidBlock2DCrossAttn';
  if (mid !== 'UNetMidBlock2DCrossAttn')
    throw new KeyMapError(
      `keyMap: unet config mid_block_type ${JSON.stringify(mid)} has no original-layout mapping (supported: UNetMidBlock2DCrossAttn)`,
    );
  const blockType = (types: Readonly<Record<string, boolean>>, field: string) => (t: string, i: number) => {
    if (!(t in types))
      throw new KeyMapError(
        `keyMap: unet config ${field}[${i}] = '${t}' has no original-layout mapping (supported: ${Object.keys(types).join(', ')})`,
      );
    return types[t];
  };
  return {
    downAttention: down.map(blockType(UNET_DOWN_TYPES, 'down_block_types')),
    upAttention: up.map(blockType(UNET_UP_TYPES, 'up_block_types')),
    layers: perLevel(config, 'unet', 'layers_per_block', n, 2),
    transformerDepth: perLevel(config, 'unet', 'transformer_layers_per_block', n, 1),
  };
}

function vaeLayout(config: RawConfig): {
  levels: number;
  layers: number;
  midAttention: boolean;
  quantConv: boolean;
  postQuantConv: boolean;
} {
  const down = stringList(config, 'vae', 'down_block_types', ['DownEncoderBlock2D']);
  const up = stringList(config, 'vae', 'up_block_types', ['UpDecoderBlock2D']);
  down.forEach((t, i) => {
    if (t !== 'DownEncoderBlock2D')
      throw new KeyMapError(
        `keyMap: vae config down_block_types[${i}] = '${t}' has no original-layout mapping (supported: DownEncoderBlock2D)`,
      );
  });
  up.forEach((t, i) => {
    if (t !== 'UpDecoderBlock2D')
      throw new KeyMapError(
        `keyMap: vae config up_block_types[${i}] = '${t}' has no original-layout mapping (supported: UpDecoderBlock2D)`,
      );
  });
  if (up.length !== down.length)
    throw new KeyMapError(
      `keyMap: vae config has ${down.length} down_block_types but ${up.length} up_block_types; they must match`,
    );
  return {
    levels: down.length,
    layers: positiveInt(config, 'vae', 'layers_per_block', 1),
    midAttention: config.mid_block_add_attention !== false,
    quantConv: config.use_quant_conv !== false,
    postQuantConv: config.use_post_quant_conv !== false,
  };
}

// --- Rules ---------------------------------------------------------------------------------------

/**
 * UNet rules. The original numbers blocks sequentially:
 *   input_blocks:  [conv_in] then, per level, `layers` x [resnet, attention?], then a downsampler
 *                  (`.0.op`) on every level but the last;
 *   middle_block:  [resnet, attention, resnet];
 *   output_blocks: per up block (deepest level first), `layers + 1` x [resnet, attention?], with an
 *                  upsampler (`.{1 or 2}.conv`) after the last one on every up block but the last.
 */
function unetRules(config: RawConfig): Rule[] {
  const { downAttention, upAttention, layers, transformerDepth } = unetLayout(config);
  const n = layers.length;
  const rules: Rule[] = [
    rule('time_embed.0', 'time_embedding.linear_1', LAYER),
    rule('time_embed.2', 'time_embedding.linear_2', LAYER),
    rule('input_blocks.0.0', 'conv_in', LAYER),
  ];
  // Step 1: down path.
  let input = 1;
  for (let level = 0; level < n; level++) {
    for (let j = 0; j < layers[level]; j++, input++) {
      rules.push(rule(`input_blocks.${input}.0`, `down_blocks.${level}.resnets.${j}`, UNET_RESNET));
      if (downAttention[level])
        rules.push(
          rule(
            `input_blocks.${input}.1`,
            `down_blocks.${level}.attentions.${j}`,
            transformerTable(transformerDepth[level]),
          ),
        );
    }
    if (level < n - 1)
      rules.push(rule(`input_blocks.${input++}.0.op`, `down_blocks.${level}.downsamplers.0.conv`, LAYER));
  }
  // Step 2: middle.
  rules.push(
    rule('middle_block.0', 'mid_block.resnets.0', UNET_RESNET),
    rule('middle_block.1', 'mid_block.attentions.0', transformerTable(transformerDepth[n - 1])),
    rule('middle_block.2', 'mid_block.resnets.1', UNET_RESNET),
  );
  // Step 3: up path; up block i is level n-1-i.
  let output = 0;
  for (let i = 0; i < n; i++) {
    const level = n - 1 - i;
    const count = layers[level] + 1;
    for (let j = 0; j < count; j++, output++) {
      let sub = 0;
      rules.push(rule(`output_blocks.${output}.${sub++}`, `up_blocks.${i}.resnets.${j}`, UNET_RESNET));
      if (upAttention[i])
        rules.push(
          rule(
            `output_blocks.${output}.${sub++}`,
            `up_blocks.${i}.attentions.${j}`,
            transformerTable(transformerDepth[level]),
          ),
        );
      if (i < n - 1 && j === count - 1)
        rules.push(rule(`output_blocks.${output}.${sub}.conv`, `up_blocks.${i}.upsamplers.0.conv`, LAYER));
    }
  }
  rules.push(rule('out.0', 'conv_norm_out', LAYER), rule('out.2', 'conv_out', LAYER));
  return rules;
}

/**
 * VAE rules. Encoder `down.i` is diffusers `down_blocks.i`; decoder `up.{n-1-i}` is
 * `up_blocks.i` (the original numbers decoder levels by resolution, diffusers by execution order).
 */
function vaeRules(config: RawConfig): Rule[] {
  const { levels: n, layers, midAttention, quantConv, postQuantConv } = vaeLayout(config);
  const rules: Rule[] = [];
  const mid = (part: 'encoder' | 'decoder') => {
    rules.push(rule(`${part}.mid.block_1`, `${part}.mid_block.resnets.0`, VAE_RESNET));
    if (midAttention) rules.push(rule(`${part}.mid.attn_1`, `${part}.mid_block.attentions.0`, VAE_ATTENTION));
    rules.push(rule(`${part}.mid.block_2`, `${part}.mid_block.resnets.1`, VAE_RESNET));
  };
  rules.push(rule('encoder.conv_in', 'encoder.conv_in', LAYER));
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < layers; j++)
      rules.push(rule(`encoder.down.${i}.block.${j}`, `encoder.down_blocks.${i}.resnets.${j}`, VAE_RESNET));
    if (i < n - 1)
      rules.push(rule(`encoder.down.${i}.downsample.conv`, `encoder.down_blocks.${i}.downsamplers.0.conv`, LAYER));
  }
  mid('encoder');
  rules.push(
    rule('encoder.norm_out', 'encoder.conv_norm_out', LAYER),
    rule('encoder.conv_out', 'encoder.conv_out', LAYER),
  );
  if (quantConv) rules.push(rule('quant_conv', 'quant_conv', LAYER));
  if (postQuantConv) rules.push(rule('post_quant_conv', 'post_quant_conv', LAYER));
  rules.push(rule('decoder.conv_in', 'decoder.conv_in', LAYER));
  mid('decoder');
  for (let i = 0; i < n; i++) {
    const level = n - 1 - i;
    for (let j = 0; j < layers + 1; j++)
      rules.push(rule(`decoder.up.${level}.block.${j}`, `decoder.up_blocks.${i}.resnets.${j}`, VAE_RESNET));
    if (i < n - 1)
      rules.push(rule(`decoder.up.${level}.upsample.conv`, `decoder.up_blocks.${i}.upsamplers.0.conv`, LAYER));
  }
  rules.push(
    rule('decoder.norm_out', 'decoder.conv_norm_out', LAYER),
    rule('decoder.conv_out', 'decoder.conv_out', LAYER),
  );
  return rules;
}

function textEncoderRules(config: RawConfig): Rule[] {
  return [rule('text_model', 'text_model', clipTextTable(positiveInt(config, 'textEncoder', 'num_hidden_layers', 12)))];
}

/** What each component's original keys start with, before the rule's own prefix. */
const ORIGINAL_ROOT: Readonly<Record<ComponentName, string>> = {
  unet: 'model.diffusion_model.',
  vae: 'first_stage_model.',
  textEncoder: 'cond_stage_model.transformer.',
};

/** Compiles the single-file <-> diffusers key map for these configs. */
export function singleFileKeyMap(configs: ComponentConfigs): SingleFileKeyMap {
  const pairs: KeyPair[] = [];
  const byOriginal = new Map<string, KeyPair>();
  const byDiffusers: Record<ComponentName, Map<string, KeyPair>> = {
    unet: new Map(),
    vae: new Map(),
    textEncoder: new Map(),
  };
  const rules: Record<ComponentName, Rule[]> = {
    unet: unetRules(configs.unet),
    vae: vaeRules(configs.vae),
    textEncoder: textEncoderRules(configs.textEncoder),
  };
  for (const component of COMPONENTS) {
    for (const r of rules[component]) {
      for (const sub of r.table) {
        for (const param of sub.params) {
          const pair: KeyPair = {
            component,
            original: ORIGINAL_ROOT[component] + join(r.original, sub.original, param),
            diffusers: join(r.diffusers, sub.diffusers, param),
            optional: sub.optional ?? false,
            conv1x1: (sub.conv1x1 ?? false) && param === 'weight',
          };
          if (byOriginal.has(pair.original) || byDiffusers[component].has(pair.diffusers)) {
            throw new KeyMapError(
              `keyMap: internal error, '${pair.original}' <-> '${pair.diffusers}' is generated twice`,
            );
          }
          pairs.push(pair);
          byOriginal.set(pair.original, pair);
          byDiffusers[component].set(pair.diffusers, pair);
        }
      }
    }
  }
  return { pairs, byOriginal, byDiffusers };
}

const join = (...parts: string[]) => parts.filter((p) => p !== '').join('.');

/** The original single-file shape of a tensor with diffusers shape `shape`. */
export function originalShape(pair: KeyPair, shape: readonly number[]): number[] {
  return pair.conv1x1 && shape.length === 2 ? [shape[0], shape[1], 1, 1] : [...shape];
}

/** The diffusers shape of a tensor with original single-file shape `shape`. */
export function diffusersShape(pair: KeyPair, shape: readonly number[]): number[] {
  return pair.conv1x1 && shape.length === 4 && shape[2] === 1 && shape[3] === 1 ? [shape[0], shape[1]] : [...shape];
}

// =============================================================================================
// 3. Known extras: tensors real checkpoints carry that no model here uses.

const EXTRAS: readonly { readonly pattern: RegExp; readonly reason: string }[] = [
  { pattern: /^model_ema\./, reason: 'EMA copy of the UNet (model_ema.*); the main weights are loaded' },
  {
    pattern:
      /^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod|posterior_variance|posterior_log_variance_clipped|posterior_mean_coef1|posterior_mean_coef2)$/,
    reason: 'LDM noise-schedule buffer; the scheduler config defines the schedule',
  },
  { pattern: /^logvar$/, reason: 'LDM learned-variance buffer, unused for sampling and training here' },
  { pattern: /(^|\.)position_ids$/, reason: 'CLIP position-id buffer (0..76), recomputed' },
  { pattern: /^embedding_manager\./, reason: 'textual-inversion training state (embedding_manager.*)' },
  { pattern: /^denoiser\.sigmas$/, reason: 'k-diffusion sigma table; the scheduler config defines the schedule' },
];

/** Why `name` is a known extra that loaders skip, or null if it is not one. */
export function knownExtra(name: string): string | null {
  for (const e of EXTRAS) if (e.pattern.test(name)) return e.reason;
  return null;
}

// --- Config field readers ---------------------------------------------------------------------

function stringList(
  config: RawConfig,
  component: string,
  field: string,
  fallback: readonly string[],
): readonly string[] {
  const v = config[field] ?? fallback;
  if (!Array.isArray(v) || v.length === 0 || !v.every((t) => typeof t === 'string')) {
    throw new KeyMapError(
      `keyMap: ${component} config ${field} must be a non-empty list of block type names, found ${JSON.stringify(v)}`,
    );
  }
  return v as string[];
}

function positiveInt(config: RawConfig, component: string, field: string, fallback: number): number {
  const v = config[field] ?? fallback;
  if (!Number.isInteger(v) || (v as number) < 1)
    throw new KeyMapError(
      `keyMap: ${component} config ${field} must be a positive integer, found ${JSON.stringify(v)}`,
    );
  return v as number;
}

/** A field that may be one integer for every level or a list with one per level. */
function perLevel(config: RawConfig, component: string, field: string, levels: number, fallback: number): number[] {
  const v = config[field] ?? fallback;
  const list = Array.isArray(v) ? v : Array.from({ length: levels }, () => v);
  if (list.length !== levels || !list.every((x) => Number.isInteger(x) && x >= 1)) {
    throw new KeyMapError(
      `keyMap: ${component} config ${field} must be a positive integer or a list of ${levels} of them, found ${JSON.stringify(v)}`,
    );
  }
  return list as number[];
}

// =============================================================================================
// 4. Config inference from single-file shapes: configInference.ts (it builds on this module)

// =============================================================================================
// 5. Checkpoint-kind detection: what a file is, from its key names, so loaders can say why a
//    file that is not an SD-1.x base model is refused.

export type CheckpointKind =
  | 'sd1-single-file'
  | 'sd2-single-file'
  | 'sdxl-single-file'
  | 'lora'
  | 'diffusers-component'
  | 'unknown';

export function detectCheckpointKind(keys: Iterable<string>): CheckpointKind {
  let sd1 = false;
  let openClip = false;
  let sdxl = false;
  let lora = false;
  let component = false;
  for (const k of keys) {
    if (k.startsWith('conditioner.embedders.')) sdxl = true;
    else if (k.startsWith('cond_stage_model.model.')) openClip = true;
    else if (
      k.startsWith('cond_stage_model.transformer.') ||
      k.startsWith(SINGLE_FILE_PREFIX.unet) ||
      k.startsWith(SINGLE_FILE_PREFIX.vae)
    )
      sd1 = true;
    if (
      /^lora_(unet|te\d?)_/.test(k) ||
      /\.(lora_[AB]|lora_up|lora_down|lora\.(up|down))\./.test(k) ||
      /\.lora_[AB]\.weight$/.test(k)
    )
      lora = true;
    if (/^(down_blocks|up_blocks|mid_block|conv_in|encoder\.down_blocks|decoder\.up_blocks|text_model)\./.test(k))
      component = true;
  }
  if (lora) return 'lora';
  if (sdxl) return 'sdxl-single-file';
  if (openClip) return 'sd2-single-file';
  if (sd1) return 'sd1-single-file';
  if (component) return 'diffusers-component';
  return 'unknown';
}

// =============================================================================================
// 6. LoRA names (kohya, diffusers / PEFT, SingLoRA Studio native)
//
// LoRA tensor names of other tools, translated to (component, module path, role).
//
// | format                | example key                                                                  |
// | --------------------- | ---------------------------------------------------------------------------- |
// | kohya (sd-scripts)    | lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight |
// |                       | lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight, `.alpha` |
// | kohya, as diffusers'  | lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight         |
// | convert_state_dict_to_kohya names the SD 1.x text encoder (`lora_te1_`; `lora_te2_` is SDXL's second) |
// | kohya, original names | lora_unet_input_blocks_1_1_proj_in.lora_down.weight (LDM layout, underscored)  |
// | diffusers / PEFT      | unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight |
// |                       | text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight       |
// | diffusers 0.27 train  | unet.<...>.attn1.to_q.lora.down.weight (convert_state_dict_to_diffusers of a  |
// | scripts               | PEFT state dict: to_q/k/v/out.0 `lora_A` -> `lora.down`, `lora_B` -> `lora.up`) |
// |                       | text_encoder.<...>.q_proj.lora_linear_layer.down.weight                       |
// | diffusers (old procs) | unet.<...>.attn1.processor.to_q_lora.down.weight  (to_out_lora -> to_out.0)    |
// | PEFT raw              | base_model.model.<path>.lora_A.weight                                         |
// | ComfyUI (LoraSave)    | diffusion_model.input_blocks.1.1.proj_in.lora_up.weight (LDM layout, dotted)  |
// |                       | text_encoders.clip_l.transformer.text_model.<...>.q_proj.lora_down.weight     |
// | SingLoRA Studio       | unet.<path>.singlora_A, unet.<path>.lora_A / lora_B (no `.weight`)             |
//
// kohya names are the module path with dots replaced by underscores; since module names contain
// underscores themselves (`to_q`, `transformer_blocks`), they are resolved against the model's
// real module paths (`kohyaLookup`). Original-layout (LDM) UNet names, kohya's underscored and
// ComfyUI's dotted, are resolved through the UNet's single-file map (`unetOriginalModules`).

//
// Entry point for adapter files: `parseLoraKey` (its own, because a LoRA key names a module and a
// role, not a model tensor).

export type LoraComponent = 'unet' | 'text_encoder';
export type LoraRole = 'down' | 'up' | 'alpha' | 'singlora_A';

export interface ParsedLoraKey {
  format: 'kohya' | 'peft' | 'diffusers' | 'diffusers-procs' | 'comfyui' | 'native';
  component: LoraComponent;
  /** Dotted module path, or (kohya) the underscored name still to be resolved. */
  module: string;
  underscored: boolean;
  /** The module is named in the original LDM layout (`input_blocks.1.1.proj_in`), not diffusers'. */
  original: boolean;
  role: LoraRole;
}

/** Why a key is not a LoRA tensor this app applies (null: it is one). */
export type KeyVerdict = ParsedLoraKey | { unsupported: string };

const KOHYA = /^lora_(unet|te\d?)_(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$/;
const SDXL_TEXT_ENCODER_2 = "SDXL's second text encoder (lora_te2_); this app targets SD 1.x";
const KOHYA_OTHER =
  /^lora_(unet|te\d?)_(.+)\.(hada_\w+|lokr_\w+|dora_scale|diff|diff_b|lora_mid\.weight|on_input|w_norm|b_norm)$/;
const PEFT = /^(?:(unet|text_encoder)\.|base_model\.model\.)(.+)\.lora_(A|B)\.weight$/;
const DIFFUSERS_DOT = /^(unet|text_encoder)\.(.+)\.lora\.(down|up)\.weight$/;
const PROCS =
  /^(unet|text_encoder)\.(.+?)\.(?:processor\.)?(to_q|to_k|to_v|to_out|q_proj|k_proj|v_proj|out_proj)_lora\.(down|up)\.weight$/;
const PROCS_LINEAR = /^(unet|text_encoder)\.(.+)\.lora_linear_layer\.(down|up)\.weight$/;
const COMFY = /^(diffusion_model|text_encoders\.clip_l\.transformer)\.(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$/;
const COMFY_OTHER = /^(diffusion_model|text_encoders)\.(.+)\.(diff|diff_b|dora_scale|lora_mid\.weight)$/;
const NATIVE = /^(unet|text_encoder)\.(.+)\.(singlora_A|lora_A|lora_B)$/;

const roleOf = (suffix: string): LoraRole =>
  suffix === 'alpha' ? 'alpha' : /^(lora_down|down|A)\b/.test(suffix) ? 'down' : 'up';

/** One pattern per layout, tried in order; each returns the parsed key or a reason it is refused. */
const LORA_LAYOUTS: ReadonlyArray<{ pattern: RegExp; parse: (m: RegExpExecArray) => KeyVerdict }> = [
  {
    pattern: KOHYA,
    parse: (m) =>
      /^te[02-9]$/.test(m[1])
        ? { unsupported: m[1] === 'te2' ? SDXL_TEXT_ENCODER_2 : `lora_${m[1]}_: no such text encoder in SD 1.x` }
        : {
            format: 'kohya',
            component: m[1] === 'unet' ? 'unet' : 'text_encoder',
            module: m[2],
            underscored: true,
            original: false,
            role: roleOf(m[3]),
          },
  },
  {
    pattern: KOHYA_OTHER,
    parse: (m) =>
      m[1] === 'te2'
        ? { unsupported: SDXL_TEXT_ENCODER_2 }
        : {
            unsupported: `${m[3].replace(/\.weight$/, '')} tensors (LoHa/LoKr/DoRA/full-diff networks) are not supported; only LoRA/LoCon down/up pairs`,
          },
  },
  {
    pattern: PEFT,
    parse: (m) => ({
      format: 'peft',
      component: m[1] === 'text_encoder' ? 'text_encoder' : 'unet',
      module: m[2],
      underscored: false,
      original: false,
      role: roleOf(m[3]),
    }),
  },
  {
    pattern: DIFFUSERS_DOT,
    parse: (m) => ({
      format: 'diffusers',
      component: m[1] as LoraComponent,
      module: m[2],
      underscored: false,
      original: false,
      role: roleOf(m[3]),
    }),
  },
  {
    pattern: PROCS,
    parse: (m) => ({
      format: 'diffusers-procs',
      component: m[1] as LoraComponent,
      module: `${m[2]}.${m[3] === 'to_out' ? 'to_out.0' : m[3]}`,
      underscored: false,
      original: false,
      role: roleOf(m[4]),
    }),
  },
  {
    pattern: PROCS_LINEAR,
    parse: (m) => ({
      format: 'diffusers-procs',
      component: m[1] as LoraComponent,
      module: m[2],
      underscored: false,
      original: false,
      role: roleOf(m[3]),
    }),
  },
  {
    pattern: COMFY,
    parse: (m) => ({
      format: 'comfyui',
      component: m[1] === 'diffusion_model' ? 'unet' : 'text_encoder',
      module: m[2],
      underscored: false,
      original: m[1] === 'diffusion_model',
      role: roleOf(m[3]),
    }),
  },
  {
    pattern: COMFY_OTHER,
    parse: (m) => ({
      unsupported: `${m[3].replace(/\.weight$/, '')} tensors (ComfyUI's full weight/bias differences, LoHa or DoRA) are not supported; only LoRA down/up pairs (ComfyUI's LoraSave with bias_diff off)`,
    }),
  },
  {
    pattern: NATIVE,
    parse: (m) => ({
      format: 'native',
      component: m[1] as LoraComponent,
      module: m[2],
      underscored: false,
      original: false,
      role: m[3] === 'singlora_A' ? 'singlora_A' : m[3] === 'lora_A' ? 'down' : 'up',
    }),
  },
];

export function parseLoraKey(key: string): KeyVerdict {
  for (const layout of LORA_LAYOUTS) {
    const m = layout.pattern.exec(key);
    if (m) return layout.parse(m);
  }
  return {
    unsupported: 'not a LoRA tensor name this app recognises (kohya, diffusers, PEFT, ComfyUI or SingLoRA Studio)',
  };
}

/**
 * The UNet's original-layout (LDM) module paths, `input_blocks.1.1.proj_in`, mapped to the
 * diffusers paths, `down_blocks.0.attentions.0.proj_in`, from the same rules as the single-file map.
 */
export function unetOriginalModules(config: RawConfig): Map<string, string> {
  const map = new Map<string, string>();
  for (const r of unetRules(config))
    for (const sub of r.table)
      if (sub.params.includes('weight')) map.set(join(r.original, sub.original), join(r.diffusers, sub.diffusers));
  return map;
}

/** kohya's name for a module: `lora_unet_<path with underscores>` / `lora_te_<...>`. */
export function kohyaName(component: LoraComponent, path: string): string {
  return `lora_${component === 'unet' ? 'unet' : 'te'}_${path.replace(/\./g, '_')}`;
}

/** diffusers / PEFT key prefix for a module: `unet.<path>` / `text_encoder.<path>`. */
export function peftName(component: LoraComponent, path: string): string {
  return `${component}.${path}`;
}

/**
 * Maps kohya's underscored names back to dotted module paths; with `originals` (original-layout
 * path -> diffusers path, `unetOriginalModules`), also the underscored original-layout names.
 */
export function kohyaLookup(
  modulePaths: Iterable<string>,
  originals: ReadonlyMap<string, string> = new Map(),
): Map<string, string> {
  const map = new Map<string, string>();
  for (const p of modulePaths) map.set(p.replace(/\./g, '_'), p);
  for (const [original, p] of originals) if (map.has(p.replace(/\./g, '_'))) map.set(original.replace(/\./g, '_'), p);
  return map;
}

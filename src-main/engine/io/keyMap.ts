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
 *   4. Config inference from single-file shapes
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
  if (!pair) throw new KeyMapError(`keyMap: ${component} key '${key}' has no original single-file name under this config (is it a key of this model?)`);
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
function canonicalOriginalName(name: string): string {
  const old = 'cond_stage_model.transformer.';
  if (name.startsWith(old) && !name.startsWith(SINGLE_FILE_PREFIX.textEncoder) && /^(embeddings|encoder|final_layer_norm)\./.test(name.slice(old.length))) {
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
      rows.push(same(`${b}.${attn}.to_q`, W), same(`${b}.${attn}.to_k`, W), same(`${b}.${attn}.to_v`, W), same(`${b}.${attn}.to_out.0`));
    }
    rows.push(same(`${b}.ff.net.0.proj`), same(`${b}.ff.net.2`));
  }
  return rows;
}

/** VAE `ResnetBlock` (model.py) <-> diffusers `ResnetBlock2D` (no time embedding). */
const VAE_RESNET: ModuleTable = [same('norm1'), same('conv1'), same('norm2'), same('conv2'), { original: 'nin_shortcut', diffusers: 'conv_shortcut', params: WB, optional: true }];

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
    for (const p of ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.out_proj', 'layer_norm1', 'mlp.fc1', 'mlp.fc2', 'layer_norm2']) rows.push(same(`${l}.${p}`));
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
  const down = stringList(config, 'unet', 'down_block_types', ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D']);
  const up = stringList(config, 'unet', 'up_block_types', ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D']);
  const n = down.length;
  if (up.length !== n) throw new KeyMapError(`keyMap: unet config has ${n} down_block_types but ${up.length} up_block_types; they must match`);
  const channels = config.block_out_channels;
  if (Array.isArray(channels) && channels.length !== n) throw new KeyMapError(`keyMap: unet config has ${n} down_block_types but ${channels.length} block_out_channels; they must match`);
  const mid = config.mid_block_type ?? 'UNetMidBlock2DCrossAttn';
  if (mid !== 'UNetMidBlock2DCrossAttn') throw new KeyMapError(`keyMap: unet config mid_block_type ${JSON.stringify(mid)} has no original-layout mapping (supported: UNetMidBlock2DCrossAttn)`);
  const blockType = (types: Readonly<Record<string, boolean>>, field: string) => (t: string, i: number) => {
    if (!(t in types)) throw new KeyMapError(`keyMap: unet config ${field}[${i}] = '${t}' has no original-layout mapping (supported: ${Object.keys(types).join(', ')})`);
    return types[t];
  };
  return {
    downAttention: down.map(blockType(UNET_DOWN_TYPES, 'down_block_types')),
    upAttention: up.map(blockType(UNET_UP_TYPES, 'up_block_types')),
    layers: perLevel(config, 'unet', 'layers_per_block', n, 2),
    transformerDepth: perLevel(config, 'unet', 'transformer_layers_per_block', n, 1),
  };
}

function vaeLayout(config: RawConfig): { levels: number; layers: number; midAttention: boolean; quantConv: boolean; postQuantConv: boolean } {
  const down = stringList(config, 'vae', 'down_block_types', ['DownEncoderBlock2D']);
  const up = stringList(config, 'vae', 'up_block_types', ['UpDecoderBlock2D']);
  down.forEach((t, i) => {
    if (t !== 'DownEncoderBlock2D') throw new KeyMapError(`keyMap: vae config down_block_types[${i}] = '${t}' has no original-layout mapping (supported: DownEncoderBlock2D)`);
  });
  up.forEach((t, i) => {
    if (t !== 'UpDecoderBlock2D') throw new KeyMapError(`keyMap: vae config up_block_types[${i}] = '${t}' has no original-layout mapping (supported: UpDecoderBlock2D)`);
  });
  if (up.length !== down.length) throw new KeyMapError(`keyMap: vae config has ${down.length} down_block_types but ${up.length} up_block_types; they must match`);
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
      if (downAttention[level]) rules.push(rule(`input_blocks.${input}.1`, `down_blocks.${level}.attentions.${j}`, transformerTable(transformerDepth[level])));
    }
    if (level < n - 1) rules.push(rule(`input_blocks.${input++}.0.op`, `down_blocks.${level}.downsamplers.0.conv`, LAYER));
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
      if (upAttention[i]) rules.push(rule(`output_blocks.${output}.${sub++}`, `up_blocks.${i}.attentions.${j}`, transformerTable(transformerDepth[level])));
      if (i < n - 1 && j === count - 1) rules.push(rule(`output_blocks.${output}.${sub}.conv`, `up_blocks.${i}.upsamplers.0.conv`, LAYER));
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
    for (let j = 0; j < layers; j++) rules.push(rule(`encoder.down.${i}.block.${j}`, `encoder.down_blocks.${i}.resnets.${j}`, VAE_RESNET));
    if (i < n - 1) rules.push(rule(`encoder.down.${i}.downsample.conv`, `encoder.down_blocks.${i}.downsamplers.0.conv`, LAYER));
  }
  mid('encoder');
  rules.push(rule('encoder.norm_out', 'encoder.conv_norm_out', LAYER), rule('encoder.conv_out', 'encoder.conv_out', LAYER));
  if (quantConv) rules.push(rule('quant_conv', 'quant_conv', LAYER));
  if (postQuantConv) rules.push(rule('post_quant_conv', 'post_quant_conv', LAYER));
  rules.push(rule('decoder.conv_in', 'decoder.conv_in', LAYER));
  mid('decoder');
  for (let i = 0; i < n; i++) {
    const level = n - 1 - i;
    for (let j = 0; j < layers + 1; j++) rules.push(rule(`decoder.up.${level}.block.${j}`, `decoder.up_blocks.${i}.resnets.${j}`, VAE_RESNET));
    if (i < n - 1) rules.push(rule(`decoder.up.${level}.upsample.conv`, `decoder.up_blocks.${i}.upsamplers.0.conv`, LAYER));
  }
  rules.push(rule('decoder.norm_out', 'decoder.conv_norm_out', LAYER), rule('decoder.conv_out', 'decoder.conv_out', LAYER));
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
  const byDiffusers: Record<ComponentName, Map<string, KeyPair>> = { unet: new Map(), vae: new Map(), textEncoder: new Map() };
  const rules: Record<ComponentName, Rule[]> = { unet: unetRules(configs.unet), vae: vaeRules(configs.vae), textEncoder: textEncoderRules(configs.textEncoder) };
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
            throw new KeyMapError(`keyMap: internal error, '${pair.original}' <-> '${pair.diffusers}' is generated twice`);
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
    pattern: /^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod|posterior_variance|posterior_log_variance_clipped|posterior_mean_coef1|posterior_mean_coef2)$/,
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

// =============================================================================================
// 4. Config inference from single-file shapes
//
// A single file carries no config. The structure (levels, layers, block types, channels, in/out
// channels, cross-attention width, vocabulary) is read from tensor shapes. What shapes cannot
// tell is taken from SD-1.5 and can be overridden per component:
//   unet: attention_head_dim (8: SD-1.x's "8 heads"), norm_num_groups (32), sample_size (64), ...
//   vae: norm_num_groups (32), sample_size (512), scaling_factor (0.18215)
//   textEncoder: num_attention_heads (hidden_size / 64), hidden_act (quick_gelu), ...

export type Shapes = ReadonlyMap<string, readonly number[]>;

export interface ConfigOverrides {
  readonly unet?: RawConfig;
  readonly vae?: RawConfig;
  readonly textEncoder?: RawConfig;
}

export function inferSingleFileConfigs(shapes: Shapes, overrides: ConfigOverrides = {}): ComponentConfigs {
  return {
    unet: inferUnetConfig(shapes, overrides.unet),
    vae: inferVaeConfig(shapes, overrides.vae),
    textEncoder: inferTextEncoderConfig(shapes, overrides.textEncoder),
  };
}

/** A view of one component's shapes under its original prefix, with errors that name the key. */
function shapeReader(shapes: Shapes, component: ComponentName) {
  const prefix = component === 'textEncoder' ? 'cond_stage_model.transformer.text_model.' : SINGLE_FILE_PREFIX[component];
  const title = { unet: 'UNet', vae: 'VAE', textEncoder: 'text encoder' }[component];
  const local = new Map<string, readonly number[]>();
  for (const [k, s] of shapes) {
    const name = canonicalOriginalName(k);
    if (name.startsWith(prefix)) local.set(name.slice(prefix.length), s);
  }
  return {
    local,
    get: (k: string) => local.get(k),
    /** Whether any tensor lies under `prefix` (a module, not one parameter, so one missing tensor does not change the topology). */
    has: (prefix: string) => [...local.keys()].some((k) => k.startsWith(prefix)),
    need(k: string, rank?: number): readonly number[] {
      const s = local.get(k);
      if (!s) throw new KeyMapError(`cannot infer the ${title} config: the checkpoint has no '${prefix}${k}'`);
      if (rank !== undefined && s.length !== rank) throw new KeyMapError(`cannot infer the ${title} config: '${prefix}${k}' has shape [${s}], expected rank ${rank}`);
      return s;
    },
    /** The distinct integers captured by `pattern`'s first group over all local keys, sorted. */
    indices(pattern: RegExp): number[] {
      const set = new Set<number>();
      for (const k of local.keys()) {
        const m = pattern.exec(k);
        if (m) set.add(Number(m[1]));
      }
      return [...set].sort((a, b) => a - b);
    },
    fail(message: string): never {
      throw new KeyMapError(`cannot infer the ${title} config: ${message}`);
    },
  };
}

export function inferUnetConfig(shapes: Shapes, overrides: RawConfig = {}): RawConfig {
  const r = shapeReader(shapes, 'unet');
  const convIn = r.need('input_blocks.0.0.weight', 4); // [C0, in, 3, 3]
  const out = r.need('out.2.weight', 4); // [out, C0, 3, 3]
  const timeEmbed = r.need('time_embed.0.weight', 2); // [4*C0, C0]

  // Step 1: walk input_blocks: resnets (.0.in_layers.2) until a downsampler (.0.op) ends the level.
  const inputs = r.indices(/^input_blocks\.(\d+)\./).filter((i) => i > 0);
  const layers: number[] = [];
  const firstOfLevel: number[] = [];
  let count = 0;
  for (const i of inputs) {
    if (r.get(`input_blocks.${i}.0.op.weight`)) {
      if (count === 0) r.fail(`input_blocks.${i} is a downsampler with no resnet before it`);
      layers.push(count);
      count = 0;
    } else if (r.get(`input_blocks.${i}.0.in_layers.2.weight`)) {
      if (count === 0) firstOfLevel.push(i);
      count++;
    } else r.fail(`input_blocks.${i} is neither a resnet (in_layers.2) nor a downsampler (op)`);
  }
  if (count === 0) r.fail('the last level of input_blocks has no resnet');
  layers.push(count);
  const n = layers.length;
  const expectedInputs = layers.reduce((a, b) => a + b, 0) + n - 1;
  if (inputs.length !== expectedInputs || inputs[inputs.length - 1] !== expectedInputs) r.fail(`input_blocks are numbered 1..${inputs[inputs.length - 1]} with gaps`);

  // Step 2: per level, channels and attention.
  const blockOut = firstOfLevel.map((i) => r.need(`input_blocks.${i}.0.out_layers.3.weight`, 4)[0]);
  const depthOf = (prefix: string) => r.indices(new RegExp(`^${prefix.replace(/\./g, '\\.')}\\.transformer_blocks\\.(\\d+)\\.`)).length;
  const downAttention = firstOfLevel.map((i) => r.has(`input_blocks.${i}.1.`));
  const depths = firstOfLevel.map((i, level) => (downAttention[level] ? depthOf(`input_blocks.${i}.1`) : 1));

  // Step 3: up blocks (deepest level first), each with layers + 1 resnets.
  const upAttention: boolean[] = [];
  let output = 0;
  for (let i = 0; i < n; i++) {
    // The first entry of an up block never has an upsampler, so a `.1` there is an attention.
    upAttention.push(r.has(`output_blocks.${output}.1.`) && !r.has(`output_blocks.${output}.1.conv.`));
    output += layers[n - 1 - i] + 1;
  }
  const outputs = r.indices(/^output_blocks\.(\d+)\./);
  if (outputs.length !== output) r.fail(`found ${outputs.length} output_blocks, but ${n} levels with layers_per_block ${JSON.stringify(layers)} need ${output}`);

  // Step 4: attention details.
  if (!r.has('middle_block.1.')) r.fail("no mid-block attention ('middle_block.1.*'); only UNetMidBlock2DCrossAttn UNets are supported");
  const projIn = [...r.local.entries()].find(([k]) => k.endsWith('.proj_in.weight'))?.[1];
  const attn2 = [...r.local.keys()].find((k) => k.endsWith('.attn2.to_k.weight'));
  const crossAttentionDim = attn2 ? r.local.get(attn2)![1] : 768;
  const depth = uniform(depths);

  const inferred: Record<string, unknown> = {
    _class_name: 'UNet2DConditionModel',
    act_fn: 'silu',
    attention_head_dim: 8,
    block_out_channels: blockOut,
    center_input_sample: false,
    cross_attention_dim: crossAttentionDim,
    down_block_types: downAttention.map((a) => (a ? 'CrossAttnDownBlock2D' : 'DownBlock2D')),
    downsample_padding: 1,
    flip_sin_to_cos: true,
    freq_shift: 0,
    in_channels: convIn[1],
    layers_per_block: uniform(layers),
    mid_block_scale_factor: 1,
    mid_block_type: 'UNetMidBlock2DCrossAttn',
    norm_eps: 1e-5,
    norm_num_groups: 32,
    out_channels: out[0],
    sample_size: 64,
    transformer_layers_per_block: depth,
    up_block_types: upAttention.map((a) => (a ? 'CrossAttnUpBlock2D' : 'UpBlock2D')),
    use_linear_projection: projIn?.length === 2, // Linear [C, C] (SD 2.x) rather than a 1x1 conv
  };
  // diffusers uses 4 * block_out_channels[0] unless time_embedding_dim says otherwise.
  if (timeEmbed[0] !== 4 * convIn[0]) inferred.time_embedding_dim = timeEmbed[0];
  return { ...inferred, ...overrides };
}

export function inferVaeConfig(shapes: Shapes, overrides: RawConfig = {}): RawConfig {
  const r = shapeReader(shapes, 'vae');
  const convIn = r.need('encoder.conv_in.weight', 4); // [C0, in, 3, 3]
  const encOut = r.need('encoder.conv_out.weight', 4); // [2 * latent, C_last, 3, 3]
  const decIn = r.need('decoder.conv_in.weight', 4); // [C_last, latent, 3, 3]
  const decOut = r.need('decoder.conv_out.weight', 4); // [out, C0, 3, 3]
  const levels = r.indices(/^encoder\.down\.(\d+)\./);
  if (levels.length === 0 || levels[levels.length - 1] !== levels.length - 1) r.fail(`encoder.down levels are numbered ${JSON.stringify(levels)}; expected 0..n-1`);
  const layerCounts = levels.map((i) => r.indices(new RegExp(`^encoder\\.down\\.${i}\\.block\\.(\\d+)\\.`)).length);
  const layers = uniform(layerCounts);
  if (typeof layers !== 'number') r.fail(`encoder levels have different block counts ${JSON.stringify(layerCounts)}; AutoencoderKL needs one layers_per_block`);
  const latent = decIn[1];
  if (encOut[0] !== 2 * latent) r.fail(`encoder.conv_out has ${encOut[0]} channels, expected 2 x latent_channels = ${2 * latent}`);
  const types = (t: string) => levels.map(() => t);
  return {
    _class_name: 'AutoencoderKL',
    act_fn: 'silu',
    block_out_channels: levels.map((i) => r.need(`encoder.down.${i}.block.0.conv2.weight`, 4)[0]),
    down_block_types: types('DownEncoderBlock2D'),
    in_channels: convIn[1],
    latent_channels: latent,
    layers_per_block: layers,
    // Options diffusers added later; written only when they differ from the default (true).
    ...(r.get('encoder.mid.attn_1.q.weight') ? {} : { mid_block_add_attention: false }),
    ...(r.get('quant_conv.weight') ? {} : { use_quant_conv: false }),
    ...(r.get('post_quant_conv.weight') ? {} : { use_post_quant_conv: false }),
    norm_num_groups: 32,
    out_channels: decOut[0],
    sample_size: 512,
    scaling_factor: 0.18215,
    up_block_types: types('UpDecoderBlock2D'),
    ...overrides,
  };
}

export function inferTextEncoderConfig(shapes: Shapes, overrides: RawConfig = {}): RawConfig {
  const r = shapeReader(shapes, 'textEncoder');
  const [vocab, hidden] = r.need('embeddings.token_embedding.weight', 2);
  const [positions] = r.need('embeddings.position_embedding.weight', 2);
  const layers = r.indices(/^encoder\.layers\.(\d+)\./);
  if (layers.length === 0) r.fail("no 'encoder.layers.*' tensors");
  const [intermediate] = r.need('encoder.layers.0.mlp.fc1.weight', 2);
  // Head count is not in any shape; CLIP uses 64-wide heads (ViT-L/14: 768 / 64 = 12).
  let heads = overrides.num_attention_heads;
  if (heads === undefined) {
    if (hidden % 64 !== 0) r.fail(`num_attention_heads is not in the weights and hidden_size ${hidden} is not a multiple of 64; pass --config-dir <a diffusers folder with the model's configs> (in code: overrides.textEncoder.num_attention_heads)`);
    heads = hidden / 64;
  }
  return {
    architectures: ['CLIPTextModel'],
    attention_dropout: 0,
    bos_token_id: 0,
    dropout: 0,
    eos_token_id: 2,
    hidden_act: 'quick_gelu',
    hidden_size: hidden,
    initializer_factor: 1,
    initializer_range: 0.02,
    intermediate_size: intermediate,
    layer_norm_eps: 1e-5,
    max_position_embeddings: positions,
    model_type: 'clip_text_model',
    num_attention_heads: heads,
    num_hidden_layers: layers.length,
    pad_token_id: 1,
    projection_dim: hidden,
    vocab_size: vocab,
    ...overrides,
  };
}

/** A number when every level agrees (what configs normally hold), else the per-level list. */
function uniform(values: readonly number[]): number | number[] {
  return values.every((v) => v === values[0]) ? values[0] : [...values];
}

// --- Config field readers ---------------------------------------------------------------------

function stringList(config: RawConfig, component: string, field: string, fallback: readonly string[]): readonly string[] {
  const v = config[field] ?? fallback;
  if (!Array.isArray(v) || v.length === 0 || !v.every((t) => typeof t === 'string')) {
    throw new KeyMapError(`keyMap: ${component} config ${field} must be a non-empty list of block type names, found ${JSON.stringify(v)}`);
  }
  return v as string[];
}

function positiveInt(config: RawConfig, component: string, field: string, fallback: number): number {
  const v = config[field] ?? fallback;
  if (!Number.isInteger(v) || (v as number) < 1) throw new KeyMapError(`keyMap: ${component} config ${field} must be a positive integer, found ${JSON.stringify(v)}`);
  return v as number;
}

/** A field that may be one integer for every level or a list with one per level. */
function perLevel(config: RawConfig, component: string, field: string, levels: number, fallback: number): number[] {
  const v = config[field] ?? fallback;
  const list = Array.isArray(v) ? v : Array.from({ length: levels }, () => v);
  if (list.length !== levels || !list.every((x) => Number.isInteger(x) && x >= 1)) {
    throw new KeyMapError(`keyMap: ${component} config ${field} must be a positive integer or a list of ${levels} of them, found ${JSON.stringify(v)}`);
  }
  return list as number[];
}

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
    else if (k.startsWith('cond_stage_model.transformer.') || k.startsWith(SINGLE_FILE_PREFIX.unet) || k.startsWith(SINGLE_FILE_PREFIX.vae)) sd1 = true;
    if (/^lora_(unet|te\d?)_/.test(k) || /\.(lora_[AB]|lora_up|lora_down|lora\.(up|down))\./.test(k) || /\.lora_[AB]\.weight$/.test(k)) lora = true;
    if (/^(down_blocks|up_blocks|mid_block|conv_in|encoder\.down_blocks|decoder\.up_blocks|text_model)\./.test(k)) component = true;
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
// | diffusers / PEFT      | unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight |
// |                       | text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight       |
// | diffusers (old procs) | unet.<...>.attn1.processor.to_q_lora.down.weight  (to_out_lora -> to_out.0)    |
// | PEFT raw              | base_model.model.<path>.lora_A.weight                                         |
// | SingLoRA Studio       | unet.<path>.singlora_A, unet.<path>.lora_A / lora_B (no `.weight`)             |
//
// kohya names are the module path with dots replaced by underscores; since module names contain
// underscores themselves (`to_q`, `transformer_blocks`), they are resolved against the model's
// real module paths (`kohyaLookup`).
 
//
// Entry point for adapter files: `parseLoraKey` (its own, because a LoRA key names a module and a
// role, not a model tensor). Not yet handled: kohya's original-layout names
// (`lora_unet_input_blocks_1_1_proj_in`), which would come from the single-file map above.

export type LoraComponent = 'unet' | 'text_encoder';
export type LoraRole = 'down' | 'up' | 'alpha' | 'singlora_A';

export interface ParsedLoraKey {
  format: 'kohya' | 'peft' | 'diffusers-procs' | 'native';
  component: LoraComponent;
  /** Dotted module path, or (kohya) the underscored name still to be resolved. */
  module: string;
  underscored: boolean;
  role: LoraRole;
}

/** Why a key is not a LoRA tensor this app applies (null: it is one). */
export type KeyVerdict = ParsedLoraKey | { unsupported: string };

const KOHYA = /^lora_(unet|te)_(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$/;
const KOHYA_OTHER = /^lora_(unet|te\d?)_(.+)\.(hada_\w+|lokr_\w+|dora_scale|diff|diff_b|lora_mid\.weight|on_input|w_norm|b_norm)$/;
const PEFT = /^(?:(unet|text_encoder)\.|base_model\.model\.)(.+)\.lora_(A|B)\.weight$/;
const PROCS = /^(unet|text_encoder)\.(.+?)\.(?:processor\.)?(to_q|to_k|to_v|to_out|q_proj|k_proj|v_proj|out_proj)_lora\.(down|up)\.weight$/;
const PROCS_LINEAR = /^(unet|text_encoder)\.(.+)\.lora_linear_layer\.(down|up)\.weight$/;
const NATIVE = /^(unet|text_encoder)\.(.+)\.(singlora_A|lora_A|lora_B)$/;

export function parseLoraKey(key: string): KeyVerdict {
  let m = KOHYA.exec(key);
  if (m) {
    const role: LoraRole = m[3] === 'alpha' ? 'alpha' : m[3].startsWith('lora_down') ? 'down' : 'up';
    return { format: 'kohya', component: m[1] === 'unet' ? 'unet' : 'text_encoder', module: m[2], underscored: true, role };
  }
  m = KOHYA_OTHER.exec(key);
  if (m) {
    if (m[1] === 'te1' || m[1] === 'te2') return { unsupported: 'SDXL text encoder (this app targets SD 1.x)' };
    return { unsupported: `${m[3].replace(/\.weight$/, '')} tensors (LoHa/LoKr/DoRA/full-diff networks) are not supported; only LoRA/LoCon down/up pairs` };
  }
  m = PEFT.exec(key);
  if (m) return { format: 'peft', component: m[1] === 'text_encoder' ? 'text_encoder' : 'unet', module: m[2], underscored: false, role: m[3] === 'A' ? 'down' : 'up' };
  m = PROCS.exec(key);
  if (m) {
    const proj = m[3] === 'to_out' ? 'to_out.0' : m[3];
    return { format: 'diffusers-procs', component: m[1] as LoraComponent, module: `${m[2]}.${proj}`, underscored: false, role: m[4] === 'down' ? 'down' : 'up' };
  }
  m = PROCS_LINEAR.exec(key);
  if (m) return { format: 'diffusers-procs', component: m[1] as LoraComponent, module: m[2], underscored: false, role: m[3] === 'down' ? 'down' : 'up' };
  m = NATIVE.exec(key);
  if (m) {
    const role: LoraRole = m[3] === 'singlora_A' ? 'singlora_A' : m[3] === 'lora_A' ? 'down' : 'up';
    return { format: 'native', component: m[1] as LoraComponent, module: m[2], underscored: false, role };
  }
  return { unsupported: 'not a LoRA tensor name this app recognises (kohya, diffusers/PEFT or SingLoRA Studio)' };
}

/** kohya's name for a module: `lora_unet_<path with underscores>` / `lora_te_<...>`. */
export function kohyaName(component: LoraComponent, path: string): string {
  return `lora_${component === 'unet' ? 'unet' : 'te'}_${path.replace(/\./g, '_')}`;
}

/** diffusers / PEFT key prefix for a module: `unet.<path>` / `text_encoder.<path>`. */
export function peftName(component: LoraComponent, path: string): string {
  return `${component}.${path}`;
}

/** Maps kohya's underscored names back to dotted module paths. */
export function kohyaLookup(modulePaths: Iterable<string>): Map<string, string> {
  const map = new Map<string, string>();
  for (const p of modulePaths) map.set(p.replace(/\./g, '_'), p);
  return map;
}

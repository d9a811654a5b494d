/**
 * Config inference: a single-file checkpoint carries no config, so the component configs are read
 * from its tensor shapes (section 4 of keyMap.ts's plan, apart from the name tables, which stay in
 * keyMap.ts: the one module that translates key names).
 */
import {
  KeyMapError,
  SINGLE_FILE_PREFIX,
  canonicalOriginalName,
  type ComponentConfigs,
  type ComponentName,
  type RawConfig,
} from './keyMap.ts';

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
  const prefix =
    component === 'textEncoder' ? 'cond_stage_model.transformer.text_model.' : SINGLE_FILE_PREFIX[component];
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
      if (rank !== undefined && s.length !== rank)
        throw new KeyMapError(
          `cannot infer the ${title} config: '${prefix}${k}' has shape [${s}], expected rank ${rank}`,
        );
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
  if (inputs.length !== expectedInputs || inputs[inputs.length - 1] !== expectedInputs)
    r.fail(`input_blocks are numbered 1..${inputs[inputs.length - 1]} with gaps`);

  // Step 2: per level, channels and attention.
  const blockOut = firstOfLevel.map((i) => r.need(`input_blocks.${i}.0.out_layers.3.weight`, 4)[0]);
  const depthOf = (prefix: string) =>
    r.indices(new RegExp(`^${prefix.replace(/\./g, '\\.')}\\.transformer_blocks\\.(\\d+)\\.`)).length;
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
  if (outputs.length !== output)
    r.fail(
      `found ${outputs.length} output_blocks, but ${n} levels with layers_per_block ${JSON.stringify(layers)} need ${output}`,
    );

  // Step 4: attention details.
  if (!r.has('middle_block.1.'))
    r.fail("no mid-block attention ('middle_block.1.*'); only UNetMidBlock2DCrossAttn UNets are supported");
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
  if (levels.length === 0 || levels[levels.length - 1] !== levels.length - 1)
    r.fail(`encoder.down levels are numbered ${JSON.stringify(levels)}; expected 0..n-1`);
  const layerCounts = levels.map((i) => r.indices(new RegExp(`^encoder\\.down\\.${i}\\.block\\.(\\d+)\\.`)).length);
  const layers = uniform(layerCounts);
  if (typeof layers !== 'number')
    r.fail(
      `encoder levels have different block counts ${JSON.stringify(layerCounts)}; AutoencoderKL needs one layers_per_block`,
    );
  const latent = decIn[1];
  if (encOut[0] !== 2 * latent)
    r.fail(`encoder.conv_out has ${encOut[0]} channels, expected 2 x latent_channels = ${2 * latent}`);
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
    if (hidden % 64 !== 0)
      r.fail(
        `num_attention_heads is not in the weights and hidden_size ${hidden} is not a multiple of 64; pass --config-dir <a diffusers folder with the model's configs> (in code: overrides.textEncoder.num_attention_heads)`,
      );
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

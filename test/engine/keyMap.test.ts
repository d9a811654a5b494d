/**
 * keyMap: original single-file names <-> diffusers names, checked against the reference manifests
 * (test/fixtures/REFERENCE.md, "Single-file checkpoints" and "SD-1.5 shape manifest") and the
 * tiny fixtures' real files, plus config inference from shapes.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  convertTensorName,
  detectCheckpointKind,
  diffusersShape,
  knownExtra,
  originalShape,
  singleFileKeyMap,
  kohyaLookup,
  parseLoraKey,
  toSingleFileName,
  unetOriginalModules,
  type ComponentConfigs,
  type ComponentName,
  type RawConfig,
  type SingleFileKeyMap,
} from '../../src-main/engine/io/keyMap.ts';
import {
  inferSingleFileConfigs,
  inferTextEncoderConfig,
  inferUnetConfig,
} from '../../src-main/engine/io/configInference.ts';
import { SafetensorsFile } from '../../src-main/engine/io/safetensors.ts';
import { FIXTURES } from '../helpers/fixtures.ts';

const readJson = (path: string) => JSON.parse(readFileSync(join(FIXTURES, path), 'utf8'));
const FOLDER: Record<ComponentName, string> = { unet: 'unet', vae: 'vae', textEncoder: 'text_encoder' };
const COMPONENTS: ComponentName[] = ['unet', 'vae', 'textEncoder'];

const sd15Single = readJson('sd15_single_file_shapes.json') as {
  num_tensors: number;
  tensors: Record<string, { shape: number[]; dtype: string }>;
};
const sd15 = readJson('sd15_shapes.json') as Record<'unet' | 'vae' | 'text_encoder', Record<string, number[]>>;
const configsOf = (dir: string): ComponentConfigs => ({
  unet: readJson(`${dir}/unet/config.json`),
  vae: readJson(`${dir}/vae/config.json`),
  textEncoder: readJson(`${dir}/text_encoder/config.json`),
});
const sd15Configs = configsOf('sd15_configs');
const sd15SingleShapes = new Map(Object.entries(sd15Single.tensors).map(([k, v]) => [k, v.shape]));

/** Key -> shape of one safetensors file (header only). */
async function headerShapes(path: string): Promise<Map<string, readonly number[]>> {
  const f = await SafetensorsFile.open(path);
  try {
    return new Map(f.keys().map((k) => [k, f.info(k).shape] as const));
  } finally {
    await f.close();
  }
}

async function folderShapes(model: string): Promise<Record<ComponentName, Map<string, readonly number[]>>> {
  return {
    unet: await headerShapes(join(FIXTURES, model, 'unet/diffusion_pytorch_model.safetensors')),
    vae: await headerShapes(join(FIXTURES, model, 'vae/diffusion_pytorch_model.safetensors')),
    textEncoder: await headerShapes(join(FIXTURES, model, 'text_encoder/model.safetensors')),
  };
}

/** The VAE mid-block attention projections: 1x1 convs in the original, Linear in diffusers. */
const VAE_ATTENTION_LINEAR = /^(encoder|decoder)\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$/;

describe('SD-1.5: original single-file names <-> diffusers names', () => {
  const map = singleFileKeyMap(sd15Configs);
  const source = { format: 'single-file', map } as const;

  it('maps every single-file key to a diffusers key of the same shape, one to one and onto sd15_shapes', () => {
    expect(Object.keys(sd15Single.tensors).length).toBe(1130);
    const reached: Record<ComponentName, Set<string>> = { unet: new Set(), vae: new Set(), textEncoder: new Set() };
    const problems: string[] = [];
    for (const [key, { shape }] of Object.entries(sd15Single.tensors)) {
      const t = convertTensorName(key, source);
      if (t.kind !== 'tensor') {
        problems.push(`${key}: ${t.kind}`);
        continue;
      }
      const want = sd15[FOLDER[t.component] as keyof typeof sd15][t.key];
      if (!want) {
        problems.push(`${key} -> ${t.component} '${t.key}', which sd15_shapes does not have`);
        continue;
      }
      const linearAsConv = t.component === 'vae' && VAE_ATTENTION_LINEAR.test(t.key);
      expect(t.pair!.conv1x1, `${key}: conv1x1 flag`).toBe(linearAsConv);
      const expected = linearAsConv ? [...want, 1, 1] : want;
      if (JSON.stringify(shape) !== JSON.stringify(expected))
        problems.push(`${key}: [${shape}] but ${t.key} is [${want}]`);
      if (JSON.stringify(diffusersShape(t.pair!, shape)) !== JSON.stringify(want))
        problems.push(`${key}: diffusersShape gives [${diffusersShape(t.pair!, shape)}]`);
      if (reached[t.component].has(t.key)) problems.push(`${key}: second key mapping to ${t.component} '${t.key}'`);
      reached[t.component].add(t.key);
    }
    expect(problems).toEqual([]);
    expect([reached.unet.size, reached.vae.size, reached.textEncoder.size]).toEqual([686, 248, 196]);
    expect([...reached.unet].sort()).toEqual(Object.keys(sd15.unet).sort());
    expect([...reached.vae].sort()).toEqual(Object.keys(sd15.vae).sort());
    expect([...reached.textEncoder].sort()).toEqual(Object.keys(sd15.text_encoder).sort());
  });

  it('inverts: every diffusers key goes back to its single-file key with the original shape', () => {
    const problems: string[] = [];
    for (const component of COMPONENTS) {
      for (const [key, shape] of Object.entries(sd15[FOLDER[component] as keyof typeof sd15])) {
        const original = toSingleFileName(component, key, map);
        const entry = sd15Single.tensors[original];
        if (!entry) {
          problems.push(`${component} ${key} -> '${original}', not in the single file`);
          continue;
        }
        const pair = map.byDiffusers[component].get(key)!;
        if (JSON.stringify(originalShape(pair, shape)) !== JSON.stringify(entry.shape))
          problems.push(`${original}: originalShape [${originalShape(pair, shape)}] != [${entry.shape}]`);
        const back = convertTensorName(original, source);
        if (back.kind !== 'tensor' || back.component !== component || back.key !== key)
          problems.push(`${original} does not map back to ${component} ${key}`);
      }
    }
    expect(problems).toEqual([]);
  });

  it('expects no tensor SD-1.5 lacks (only the optional conv_shortcuts of same-width resnets are absent)', () => {
    const absent = map.pairs.filter((p) => !(p.original in sd15Single.tensors));
    expect(absent.filter((p) => !p.optional).map((p) => p.original)).toEqual([]);
    expect(absent.every((p) => /\.(skip_connection|nin_shortcut)\.(weight|bias)$/.test(p.original))).toBe(true);
  });

  it('unetOriginalModules names every UNet Linear and conv of the single file by its diffusers module (LoRA original names)', () => {
    const modules = unetOriginalModules(sd15Configs.unet);
    const problems: string[] = [];
    let matrices = 0;
    for (const [key, { shape }] of Object.entries(sd15Single.tensors)) {
      const m = /^model\.diffusion_model\.(.+)\.weight$/.exec(key);
      if (!m || shape.length < 2) continue;
      matrices++;
      const path = modules.get(m[1]);
      const want = path && sd15.unet[`${path}.weight`];
      if (!want || JSON.stringify(want) !== JSON.stringify(shape)) problems.push(`${m[1]} -> ${path}`);
    }
    expect(problems).toEqual([]);
    expect(matrices).toBeGreaterThan(250);
    expect(modules.get('input_blocks.1.1.proj_in')).toBe('down_blocks.0.attentions.0.proj_in');
    expect(modules.get('output_blocks.11.1.transformer_blocks.0.attn2.to_out.0')).toBe(
      'up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0',
    );
  });

  it("resolves every module of an SD-1.5 kohya LoRA (sd-scripts' targets), text encoder as lora_te_ or lora_te1_, UNet by diffusers or original names", () => {
    // sd-scripts networks/lora.py: Linear and 1x1 Conv2d modules inside Transformer2DModel (UNet),
    // CLIPAttention and CLIPMLP (text encoder); name = prefix + module path with '.' as '_'.
    const matrices = (shapes: Record<string, number[]>) =>
      Object.entries(shapes)
        .filter(([k, shape]) => k.endsWith('.weight') && shape.length >= 2)
        .map(([k]) => k.slice(0, -'.weight'.length));
    const unetModules = matrices(sd15.unet).filter((p) => p.includes('.attentions.') && !p.endsWith('.norm'));
    const teModules = matrices(sd15.text_encoder).filter((p) => /\.(self_attn|mlp)\./.test(p));
    expect([unetModules.length, teModules.length]).toEqual([16 * 12, 12 * 6]);
    const originals = unetOriginalModules(sd15Configs.unet);
    const lookups = {
      unet: kohyaLookup(matrices(sd15.unet), originals),
      text_encoder: kohyaLookup(matrices(sd15.text_encoder)),
    };
    const originalOf = new Map([...originals].map(([o, d]) => [d, o]));
    const problems: string[] = [];
    const check = (key: string, want: string) => {
      const parsed = parseLoraKey(key);
      if ('unsupported' in parsed) return problems.push(`${key}: ${parsed.unsupported}`);
      const got = lookups[parsed.component].get(parsed.module);
      if (got !== want) problems.push(`${key} -> ${got}, want ${want}`);
    };
    for (const p of unetModules) {
      check(`lora_unet_${p.replace(/\./g, '_')}.lora_down.weight`, p);
      check(`lora_unet_${originalOf.get(p)!.replace(/\./g, '_')}.lora_up.weight`, p);
    }
    for (const p of teModules)
      for (const prefix of ['lora_te_', 'lora_te1_']) check(`${prefix}${p.replace(/\./g, '_')}.alpha`, p);
    expect(problems).toEqual([]);
    expect(parseLoraKey('lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight')).toEqual({
      unsupported: "SDXL's second text encoder (lora_te2_); this app targets SD 1.x",
    });
  });

  it('toSingleFileName names the component and key it cannot translate', () => {
    expect(() => toSingleFileName('unet', 'down_blocks.9.resnets.0.conv1.weight', map)).toThrow(
      /unet key 'down_blocks\.9\.resnets\.0\.conv1\.weight'/,
    );
  });

  it('infers the SD-1.5 configs from the single-file shapes', () => {
    const inferred = inferSingleFileConfigs(sd15SingleShapes);
    const provenance = new Set(['_diffusers_version', '_name_or_path', 'transformers_version', 'torch_dtype']);
    for (const component of COMPONENTS) {
      const reference = sd15Configs[component];
      for (const [key, value] of Object.entries(reference)) {
        if (provenance.has(key)) continue;
        expect(inferred[component][key], `${component}.${key}`).toEqual(value);
      }
    }
    // Fields the hub configs leave to defaults, inferred from shapes.
    expect(inferred.unet.use_linear_projection).toBe(false);
    expect(inferred.unet.transformer_layers_per_block).toBe(1);
    expect(inferred.unet.mid_block_type).toBe('UNetMidBlock2DCrossAttn');
  });

  it('reads SD 2.x-style linear projections from the rank of proj_in', () => {
    const shapes = new Map(sd15SingleShapes);
    for (const [k, s] of shapes) if (/\.proj_(in|out)\.weight$/.test(k) && s.length === 4) shapes.set(k, [s[0], s[1]]);
    expect(inferUnetConfig(shapes).use_linear_projection).toBe(true);
  });
});

describe('tiny-b (SD-1.5 topology, other widths): config-driven mapping', () => {
  it('maps the keys of single_file.safetensors exactly onto the keys and shapes of tiny-b/model', async () => {
    const map = singleFileKeyMap(configsOf('tiny-b/model'));
    const single = await headerShapes(join(FIXTURES, 'tiny-b/single_file.safetensors'));
    const folder = await folderShapes('tiny-b/model');
    expect(single.size).toBe(980);
    const mapped: Record<ComponentName, Map<string, readonly number[]>> = {
      unet: new Map(),
      vae: new Map(),
      textEncoder: new Map(),
    };
    const problems: string[] = [];
    for (const [key, shape] of single) {
      const t = convertTensorName(key, { format: 'single-file', map });
      if (t.kind !== 'tensor') problems.push(`${key}: ${t.kind}`);
      else mapped[t.component].set(t.key, diffusersShape(t.pair!, shape));
    }
    expect(problems).toEqual([]);
    for (const component of COMPONENTS) {
      expect([...mapped[component].keys()].sort(), component).toEqual([...folder[component].keys()].sort());
      for (const [key, shape] of folder[component])
        expect(mapped[component].get(key), `${component} ${key}`).toEqual(shape);
    }
    expect([folder.unet.size, folder.vae.size, folder.textEncoder.size]).toEqual([684, 244, 52]);
  });

  it('infers the structural config of tiny-b given the group and head counts shapes cannot tell', async () => {
    const single = await headerShapes(join(FIXTURES, 'tiny-b/single_file.safetensors'));
    const reference = configsOf('tiny-b/model');
    const overrides = {
      unet: { norm_num_groups: 8 },
      vae: { norm_num_groups: 8 },
      textEncoder: { num_attention_heads: 6 },
    };
    const inferred = inferSingleFileConfigs(single, overrides);
    for (const component of COMPONENTS) {
      for (const [key, value] of Object.entries(inferred[component])) {
        if (key === 'sample_size') continue; // not in the weights; SD-1.5's default
        // transformers 4.38 no longer writes `dropout` (SD-1.5's hub config has it, 0.0).
        if (component === 'textEncoder' && key === 'dropout' && !('dropout' in reference.textEncoder)) continue;
        expect(value, `${component}.${key}`).toEqual(reference[component][key]);
      }
    }
    // Without overrides the SD-1.5 defaults apply, and the head count cannot be guessed for width 48.
    const defaults = { ...overrides, unet: {}, vae: {} };
    expect(inferSingleFileConfigs(single, defaults).unet.norm_num_groups).toBe(32);
    expect(() => inferSingleFileConfigs(single)).toThrow(
      /num_attention_heads.*hidden_size 48.*overrides\.textEncoder\.num_attention_heads/,
    );
  });
});

describe('tiny-a (attention in up block 0, 2-level VAE with 1 layer): config-driven mapping', () => {
  const configs = configsOf('tiny-a/model');
  const map = singleFileKeyMap(configs);

  it('is a bijection onto the keys of tiny-a/model', async () => {
    const folder = await folderShapes('tiny-a/model');
    for (const component of COMPONENTS) {
      const keys = folder[component];
      const unmapped = [...keys.keys()].filter((k) => !map.byDiffusers[component].has(k));
      const absent = [...map.byDiffusers[component].values()]
        .filter((p) => !p.optional && !keys.has(p.diffusers))
        .map((p) => p.diffusers);
      expect(unmapped, `${component}: file keys without an original name`).toEqual([]);
      expect(absent, `${component}: required keys the file lacks`).toEqual([]);
      for (const key of keys.keys()) {
        const t = convertTensorName(toSingleFileName(component, key, map), { format: 'single-file', map });
        expect(t.kind === 'tensor' && t.component === component && t.key === key, key).toBe(true);
      }
    }
  });

  it('numbers blocks from the config, not from SD-1.5 indices', () => {
    const name = (c: ComponentName, k: string) => toSingleFileName(c, k, map);
    expect(name('unet', 'down_blocks.0.resnets.1.conv1.weight')).toBe(
      'model.diffusion_model.input_blocks.2.0.in_layers.2.weight',
    );
    expect(name('unet', 'down_blocks.0.downsamplers.0.conv.weight')).toBe(
      'model.diffusion_model.input_blocks.3.0.op.weight',
    );
    expect(name('unet', 'down_blocks.1.attentions.0.proj_in.weight')).toBe(
      'model.diffusion_model.input_blocks.4.1.proj_in.weight',
    );
    // Up block 0 has attention, so its upsampler is the third entry of output_blocks.2.
    expect(name('unet', 'up_blocks.0.attentions.0.proj_in.weight')).toBe(
      'model.diffusion_model.output_blocks.0.1.proj_in.weight',
    );
    expect(name('unet', 'up_blocks.0.upsamplers.0.conv.weight')).toBe(
      'model.diffusion_model.output_blocks.2.2.conv.weight',
    );
    expect(name('unet', 'up_blocks.1.resnets.2.conv_shortcut.weight')).toBe(
      'model.diffusion_model.output_blocks.5.0.skip_connection.weight',
    );
    // Two VAE levels: decoder up_blocks.0 is up.1.
    expect(name('vae', 'decoder.up_blocks.0.resnets.1.norm1.weight')).toBe(
      'first_stage_model.decoder.up.1.block.1.norm1.weight',
    );
    expect(name('vae', 'decoder.up_blocks.0.upsamplers.0.conv.bias')).toBe(
      'first_stage_model.decoder.up.1.upsample.conv.bias',
    );
    expect(name('vae', 'decoder.up_blocks.1.resnets.0.conv_shortcut.weight')).toBe(
      'first_stage_model.decoder.up.0.block.0.nin_shortcut.weight',
    );
  });

  it('infers the tiny-a configs back from original-layout shapes', async () => {
    const folder = await folderShapes('tiny-a/model');
    const shapes = new Map<string, readonly number[]>();
    for (const component of COMPONENTS) {
      for (const [key, shape] of folder[component])
        shapes.set(toSingleFileName(component, key, map), originalShape(map.byDiffusers[component].get(key)!, shape));
    }
    const inferred = inferSingleFileConfigs(shapes, { textEncoder: { num_attention_heads: 4 } });
    const structural: Record<ComponentName, string[]> = {
      unet: [
        'block_out_channels',
        'layers_per_block',
        'down_block_types',
        'up_block_types',
        'cross_attention_dim',
        'in_channels',
        'out_channels',
        'attention_head_dim',
        'use_linear_projection',
        'transformer_layers_per_block',
        'mid_block_type',
        'norm_num_groups',
      ],
      vae: [
        'block_out_channels',
        'layers_per_block',
        'latent_channels',
        'in_channels',
        'out_channels',
        'down_block_types',
        'up_block_types',
        'norm_num_groups',
      ],
      textEncoder: [
        'hidden_size',
        'intermediate_size',
        'num_hidden_layers',
        'vocab_size',
        'max_position_embeddings',
        'num_attention_heads',
        'hidden_act',
      ],
    };
    for (const component of COMPONENTS) {
      for (const field of structural[component])
        expect(inferred[component][field], `${component}.${field}`).toEqual(configs[component][field]);
    }
  });
});

describe('per-level layers_per_block', () => {
  const unet: RawConfig = {
    down_block_types: ['DownBlock2D', 'CrossAttnDownBlock2D'],
    up_block_types: ['CrossAttnUpBlock2D', 'UpBlock2D'],
    block_out_channels: [8, 16],
    layers_per_block: [1, 2],
  };
  const configs: ComponentConfigs = {
    unet,
    vae: { down_block_types: ['DownEncoderBlock2D'], up_block_types: ['UpDecoderBlock2D'] },
    textEncoder: { num_hidden_layers: 1 },
  };
  const map = singleFileKeyMap(configs);

  it('numbers input and output blocks level by level', () => {
    const name = (k: string) => toSingleFileName('unet', k, map);
    expect(name('down_blocks.0.resnets.0.conv1.weight')).toBe(
      'model.diffusion_model.input_blocks.1.0.in_layers.2.weight',
    );
    expect(name('down_blocks.0.downsamplers.0.conv.weight')).toBe('model.diffusion_model.input_blocks.2.0.op.weight');
    expect(name('down_blocks.1.resnets.1.conv1.weight')).toBe(
      'model.diffusion_model.input_blocks.4.0.in_layers.2.weight',
    );
    expect(name('down_blocks.1.attentions.1.proj_in.weight')).toBe(
      'model.diffusion_model.input_blocks.4.1.proj_in.weight',
    );
    // Up block 0 is level 1 (2 layers -> 3 resnets), up block 1 is level 0 (1 layer -> 2 resnets).
    expect(name('up_blocks.0.resnets.2.conv1.weight')).toBe(
      'model.diffusion_model.output_blocks.2.0.in_layers.2.weight',
    );
    expect(name('up_blocks.0.upsamplers.0.conv.weight')).toBe('model.diffusion_model.output_blocks.2.2.conv.weight');
    expect(name('up_blocks.1.resnets.1.conv1.weight')).toBe(
      'model.diffusion_model.output_blocks.4.0.in_layers.2.weight',
    );
    expect(map.byDiffusers.unet.has('up_blocks.1.resnets.2.conv1.weight')).toBe(false);
  });

  it('infers the per-level list back', () => {
    const shapes = new Map<string, readonly number[]>();
    for (const p of map.pairs) {
      if (p.component !== 'unet') continue;
      const shape = p.original.endsWith('time_embed.0.weight')
        ? [32, 8]
        : p.original.endsWith('attn2.to_k.weight')
          ? [16, 12]
          : p.original.endsWith('.bias')
            ? [16]
            : [16, 4, 3, 3];
      shapes.set(p.original, shape);
    }
    const inferred = inferUnetConfig(shapes);
    expect(inferred.layers_per_block).toEqual([1, 2]);
    expect(inferred.down_block_types).toEqual(unet.down_block_types);
    expect(inferred.up_block_types).toEqual(unet.up_block_types);
    expect(inferred.cross_attention_dim).toBe(12);
  });
});

describe('extras, unknown names and other formats', () => {
  const map: SingleFileKeyMap = singleFileKeyMap(sd15Configs);
  const source = { format: 'single-file', map } as const;

  it('ignores what released SD-1.5 checkpoints carry besides the weights', () => {
    const extras = [
      'model_ema.decay',
      'model_ema.num_updates',
      'model_ema.diffusion_modelinput_blocks00weight',
      'betas',
      'alphas_cumprod',
      'alphas_cumprod_prev',
      'sqrt_alphas_cumprod',
      'sqrt_one_minus_alphas_cumprod',
      'log_one_minus_alphas_cumprod',
      'sqrt_recip_alphas_cumprod',
      'sqrt_recipm1_alphas_cumprod',
      'posterior_variance',
      'posterior_log_variance_clipped',
      'posterior_mean_coef1',
      'posterior_mean_coef2',
      'logvar',
      'cond_stage_model.transformer.text_model.embeddings.position_ids',
    ];
    for (const name of extras) {
      const t = convertTensorName(name, source);
      expect(t.kind, name).toBe('ignored');
      expect(knownExtra(name), name).not.toBeNull();
    }
  });

  it('reports names that are neither weights nor extras as unknown', () => {
    for (const name of [
      'model.diffusion_model.label_emb.0.0.weight',
      'model.diffusion_model.input_blocks.1.0.in_layers.1.weight',
      'betas_extra',
      'first_stage_model.loss.logvar',
      'model.diffusion_model.input_blocks.1.1.transformer_blocks.1.norm1.weight',
    ]) {
      expect(convertTensorName(name, source).kind, name).toBe('unknown');
    }
  });

  it('reads the old text-encoder layout without the text_model level', () => {
    const t = convertTensorName('cond_stage_model.transformer.encoder.layers.3.mlp.fc1.weight', source);
    expect(t).toMatchObject({
      kind: 'tensor',
      component: 'textEncoder',
      key: 'text_model.encoder.layers.3.mlp.fc1.weight',
    });
  });

  it('passes diffusers names through, skipping position_ids', () => {
    expect(
      convertTensorName('down_blocks.0.resnets.0.conv1.weight', { format: 'diffusers', component: 'unet' }),
    ).toEqual({ kind: 'tensor', component: 'unet', key: 'down_blocks.0.resnets.0.conv1.weight' });
    expect(
      convertTensorName('text_model.embeddings.position_ids', { format: 'diffusers', component: 'textEncoder' }).kind,
    ).toBe('ignored');
  });

  it('refuses configs it has no original layout for, naming the field', () => {
    const bad = (unet: RawConfig) => () => singleFileKeyMap({ ...sd15Configs, unet: { ...sd15Configs.unet, ...unet } });
    expect(
      bad({ down_block_types: ['SimpleCrossAttnDownBlock2D', 'DownBlock2D', 'DownBlock2D', 'DownBlock2D'] }),
    ).toThrow(/down_block_types\[0\] = 'SimpleCrossAttnDownBlock2D'/);
    expect(bad({ up_block_types: ['UpBlock2D'] })).toThrow(/4 down_block_types but 1 up_block_types/);
    expect(bad({ mid_block_type: 'UNetMidBlock2DSimpleCrossAttn' })).toThrow(
      /mid_block_type "UNetMidBlock2DSimpleCrossAttn"/,
    );
    expect(bad({ layers_per_block: [2, 2] })).toThrow(/layers_per_block must be a positive integer or a list of 4/);
  });

  it('names the tensor config inference needs but cannot find', () => {
    const shapes = new Map(sd15SingleShapes);
    shapes.delete('cond_stage_model.transformer.text_model.embeddings.token_embedding.weight');
    expect(() => inferTextEncoderConfig(shapes)).toThrow(
      /text encoder config: the checkpoint has no 'cond_stage_model\.transformer\.text_model\.embeddings\.token_embedding\.weight'/,
    );
  });

  it('tells SD-1.x single files from other checkpoint kinds', () => {
    expect(detectCheckpointKind(Object.keys(sd15Single.tensors))).toBe('sd1-single-file');
    expect(
      detectCheckpointKind([
        'conditioner.embedders.0.transformer.text_model.final_layer_norm.weight',
        'model.diffusion_model.out.2.weight',
      ]),
    ).toBe('sdxl-single-file');
    expect(detectCheckpointKind(['cond_stage_model.model.ln_final.weight', 'model.diffusion_model.out.2.weight'])).toBe(
      'sd2-single-file',
    );
    expect(detectCheckpointKind(['lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight'])).toBe('lora');
    expect(detectCheckpointKind(['unet.down_blocks.0.attentions.0.proj_in.lora_A.weight'])).toBe('lora');
    expect(detectCheckpointKind(['down_blocks.0.resnets.0.conv1.weight'])).toBe('diffusers-component');
    expect(detectCheckpointKind(['something.else'])).toBe('unknown');
  });
});

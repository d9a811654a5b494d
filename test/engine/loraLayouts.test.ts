/**
 * LoRA files as other tools name their tensors, on tiny-a's UNet and text encoder: each layout is
 * written by that tool's naming rule (below, with the source it follows), and must load whole, each
 * module's dW equal to scale * up @ down computed here in float64. A file only partly applicable is
 * an error unless partial use is asked for.
 *
 * Naming rules, from the tools' code:
 *   - diffusers 0.27 training scripts (train_dreambooth_lora.py): `get_peft_model_state_dict` then
 *     `convert_state_dict_to_diffusers` (utils/state_dict_utils.py, PEFT_TO_DIFFUSERS: the first
 *     pattern that matches is replaced), saved under `unet.` / `text_encoder.`; UNet targets to_q,
 *     to_k, to_v, to_out.0; text encoder q/k/v/out_proj.
 *   - PEFT (diffusers >= 0.28 `save_lora_weights`): `unet.<path>.lora_A.weight` / `lora_B`;
 *     raw PEFT: `base_model.model.<path>.lora_A.weight`.
 *   - kohya sd-scripts (networks/lora.py): `lora_unet_` / `lora_te_` + the module path with every
 *     `.` as `_`, `.lora_down.weight`, `.lora_up.weight`, `.alpha`.
 *   - diffusers `convert_state_dict_to_kohya`: PEFT keys with `text_encoder.` -> `lora_te1.`,
 *     `unet` -> `lora_unet`, every `.` but the last two as `_`, `lora_A` -> `lora_down`, alpha = rank.
 *   - ComfyUI LoraSave (comfy_extras/nodes_lora_extract.py): every weight of 2+ dims of the model's
 *     state dict, `diffusion_model.<original LDM key>` (UNet) and
 *     `text_encoders.clip_l.transformer.<key>` (text encoder), with `.lora_up.weight` /
 *     `.lora_down.weight`; with bias_diff on (its default) also `.diff` (1-D weights) and `.diff_b`.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PartialAdapterError, planAdapter } from '../../src-main/engine/adapters/import.ts';
import { moduleIndex } from '../../src-main/engine/adapters/patch.ts';
import { unetOriginalModules } from '../../src-main/engine/io/keyMap.ts';
import { writeSafetensors } from '../../src-main/engine/io/safetensors.ts';
import { ClipTextModel } from '../../src-main/engine/models/clipTextModel.ts';
import { Linear } from '../../src-main/engine/models/layers/linear.ts';
import { UNet2DConditionModel } from '../../src-main/engine/models/unet2dCondition.ts';
import { Rng } from '../../src-main/engine/random.ts';
import { useBackend } from '../helpers/backend.ts';
import { FIXTURES } from '../helpers/fixtures.ts';
import { tempDir } from '../helpers/tempDir.ts';

useBackend('wasm');
const base = join(FIXTURES, 'tiny-a/model');
const dir = tempDir('lora-layouts');
let unet: UNet2DConditionModel;
let textEncoder: ClipTextModel;

type Component = 'unet' | 'text_encoder';
interface Factors {
  component: Component;
  path: string;
  down: { shape: number[]; data: Float32Array };
  up: { shape: number[]; data: Float32Array };
  alpha: number;
}
type Tensors = Record<string, { shape: number[]; data: Float32Array }>;

beforeAll(async () => {
  unet = await UNet2DConditionModel.load(join(base, 'unet'));
  textEncoder = await ClipTextModel.load(join(base, 'text_encoder'));
});
afterAll(() => {
  unet.dispose();
  textEncoder.dispose();
});

/** Random rank-2 factors for every module of `component` whose path `pick` accepts. */
function factorsFor(component: Component, pick: (path: string) => boolean, rng: Rng, alpha = 2): Factors[] {
  const model = component === 'unet' ? unet : textEncoder;
  const out: Factors[] = [];
  for (const [path, mod] of moduleIndex(model)) {
    if (!pick(path)) continue;
    const w = (mod as Linear).weight.shape;
    const rank = 2;
    const downShape = [rank, ...w.slice(1)];
    const upShape = mod instanceof Linear ? [w[0], rank] : [w[0], rank, 1, 1];
    const t = (shape: number[]) => ({
      shape,
      data: rng.normal(shape.reduce((a, b) => a * b, 1)).map((v) => v * 0.1),
    });
    out.push({ component, path, down: t(downShape), up: t(upShape), alpha });
  }
  expect(out.length, `no ${component} module picked`).toBeGreaterThan(0);
  return out;
}

/** scale * up @ down in float64, flattened [out, in * kh * kw]. */
function expectedDelta(f: Factors, strength: number): Float64Array {
  const rank = f.down.shape[0];
  const dOut = f.up.shape[0];
  const dIn = f.down.data.length / rank;
  const scale = (f.alpha / rank) * strength;
  const d = new Float64Array(dOut * dIn);
  for (let o = 0; o < dOut; o++)
    for (let i = 0; i < dIn; i++) {
      let s = 0;
      for (let r = 0; r < rank; r++) s += f.up.data[o * rank + r] * f.down.data[r * dIn + i];
      d[o * dIn + i] = s * scale;
    }
  return d;
}

/** Writes `tensors`, plans the file on tiny-a and checks it applies whole, each dW as expected. */
async function expectWhole(name: string, tensors: Tensors, factors: Factors[], strength = 0.7): Promise<void> {
  const file = join(dir, `${name}.safetensors`);
  await writeSafetensors(file, tensors);
  const plan = await planAdapter(file, { unet, textEncoder }, strength);
  try {
    expect(plan.report.unapplied).toEqual([]);
    expect(plan.report.appliedTensors).toBe(Object.keys(tensors).length);
    expect(plan.deltas.length).toBe(factors.length);
    const byPath = new Map(plan.deltas.map((d) => [`${d.component}:${d.path}`, d]));
    for (const f of factors) {
      const d = byPath.get(`${f.component}:${f.path}`);
      expect(d, `${name}: no delta for ${f.component}.${f.path}`).toBeDefined();
      const got = d!.delta.dataSync();
      const want = expectedDelta(f, strength);
      let maxErr = 0;
      let maxRef = 0;
      for (let i = 0; i < want.length; i++) {
        maxErr = Math.max(maxErr, Math.abs(got[i] - want[i]));
        maxRef = Math.max(maxRef, Math.abs(want[i]));
      }
      // float32 products and a rank-2 sum: a few ulps of the largest term.
      expect(maxErr, `${name}: ${f.component}.${f.path}`).toBeLessThanOrEqual(maxRef * 4 * 2 ** -23);
    }
  } finally {
    plan.dispose();
  }
}

const ATTENTION_PROJ = /\.(to_q|to_k|to_v|to_out\.0)$/;
const TE_ATTENTION_PROJ = /\.self_attn\.(q|k|v|out)_proj$/;

/** diffusers' PEFT_TO_DIFFUSERS, in its order: the first pattern found in a key is replaced. */
const PEFT_TO_DIFFUSERS: ReadonlyArray<[string, string]> = [
  ['.q_proj.lora_B', '.q_proj.lora_linear_layer.up'],
  ['.q_proj.lora_A', '.q_proj.lora_linear_layer.down'],
  ['.k_proj.lora_B', '.k_proj.lora_linear_layer.up'],
  ['.k_proj.lora_A', '.k_proj.lora_linear_layer.down'],
  ['.v_proj.lora_B', '.v_proj.lora_linear_layer.up'],
  ['.v_proj.lora_A', '.v_proj.lora_linear_layer.down'],
  ['.out_proj.lora_B', '.out_proj.lora_linear_layer.up'],
  ['.out_proj.lora_A', '.out_proj.lora_linear_layer.down'],
  ['to_k.lora_A', 'to_k.lora.down'],
  ['to_k.lora_B', 'to_k.lora.up'],
  ['to_q.lora_A', 'to_q.lora.down'],
  ['to_q.lora_B', 'to_q.lora.up'],
  ['to_v.lora_A', 'to_v.lora.down'],
  ['to_v.lora_B', 'to_v.lora.up'],
  ['to_out.0.lora_A', 'to_out.0.lora.down'],
  ['to_out.0.lora_B', 'to_out.0.lora.up'],
];
const convertStateDictToDiffusers = (key: string): string => {
  for (const [from, to] of PEFT_TO_DIFFUSERS) if (key.includes(from)) return key.replace(from, to);
  return key;
};

/** PEFT state dict (diffusers' `save_lora_weights` prefixes): `<component>.<path>.lora_A.weight`. */
function peftTensors(factors: Factors[], prefix: (f: Factors) => string = (f) => `${f.component}.`): Tensors {
  const t: Tensors = {};
  for (const f of factors) {
    t[`${prefix(f)}${f.path}.lora_A.weight`] = f.down;
    t[`${prefix(f)}${f.path}.lora_B.weight`] = f.up;
  }
  return t;
}

/** PEFT folds no alpha into the file: its factors carry scale 1, i.e. alpha = rank. */
const rankAlpha = (fs: Factors[]) => fs.map((f) => ({ ...f, alpha: f.down.shape[0] }));

/** Scale-1 factors on every attention projection of the UNet and the text encoder, as diffusers' scripts train. */
const attentionFactors = (rng: Rng) =>
  rankAlpha([
    ...factorsFor('unet', (p) => ATTENTION_PROJ.test(p), rng),
    ...factorsFor('text_encoder', (p) => TE_ATTENTION_PROJ.test(p), rng),
  ]);

describe('LoRA layouts other tools write load whole on tiny-a', () => {
  it("diffusers 0.27 training scripts: unet.<module>.to_q.lora.down.weight and the text encoder's lora_linear_layer", async () => {
    const factors = attentionFactors(new Rng(1));
    const tensors: Tensors = {};
    for (const [k, v] of Object.entries(peftTensors(factors))) tensors[convertStateDictToDiffusers(k)] = v;
    expect(Object.keys(tensors).some((k) => /^unet\..*\.to_q\.lora\.down\.weight$/.test(k))).toBe(true);
    expect(Object.keys(tensors).some((k) => /\.q_proj\.lora_linear_layer\.up\.weight$/.test(k))).toBe(true);
    await expectWhole('diffusers-0.27', tensors, factors);
  });

  it('PEFT as diffusers saves it (unet. / text_encoder. + lora_A / lora_B), and raw PEFT (base_model.model.)', async () => {
    const rng = new Rng(2);
    const all = () => true;
    const factors = rankAlpha([...factorsFor('unet', all, rng), ...factorsFor('text_encoder', all, rng)]);
    await expectWhole('peft', peftTensors(factors), factors);
    const unetOnly = factors.filter((f) => f.component === 'unet');
    await expectWhole(
      'peft-raw',
      peftTensors(unetOnly, () => 'base_model.model.'),
      unetOnly,
    );
  });

  it('kohya sd-scripts: lora_unet_ / lora_te_ with alpha, LoCon convs included', async () => {
    const rng = new Rng(3);
    const factors = [
      ...factorsFor('unet', (p) => p.includes('.attentions.') || p.includes('.resnets.'), rng, 1.5),
      ...factorsFor('text_encoder', (p) => /\.(self_attn|mlp)\./.test(p), rng, 1.5),
    ];
    const tensors: Tensors = {};
    for (const f of factors) {
      const name = `lora_${f.component === 'unet' ? 'unet' : 'te'}_${f.path.replace(/\./g, '_')}`;
      tensors[`${name}.lora_down.weight`] = f.down;
      tensors[`${name}.lora_up.weight`] = f.up;
      tensors[`${name}.alpha`] = { shape: [], data: Float32Array.of(f.alpha) };
    }
    await expectWhole('kohya', tensors, factors);
  });

  it("kohya as diffusers' convert_state_dict_to_kohya names it: lora_te1_ for the SD 1.x text encoder", async () => {
    const factors = attentionFactors(new Rng(4));
    const tensors: Tensors = {};
    for (const [key, v] of Object.entries(peftTensors(factors))) {
      let k = key.replace('lora_A', 'lora_down').replace('lora_B', 'lora_up');
      k = k.startsWith('text_encoder.') ? k.replace('text_encoder.', 'lora_te1.') : k.replace('unet', 'lora_unet');
      const dots = k.split('.').length - 1;
      for (let i = 0; i < dots - 2; i++) k = k.replace('.', '_');
      tensors[k] = v;
      if (k.includes('lora_down')) tensors[`${k.split('.')[0]}.alpha`] = { shape: [], data: Float32Array.of(2) };
    }
    expect(Object.keys(tensors).some((k) => k.startsWith('lora_te1_text_model_encoder_layers_0_'))).toBe(true);
    await expectWhole('kohya-te1', tensors, factors);
  });

  it('kohya with original-layout UNet names (lora_unet_input_blocks_1_1_proj_in)', async () => {
    const rng = new Rng(5);
    const factors = factorsFor('unet', (p) => p.includes('.attentions.'), rng, 1);
    const originalOf = invert(unetOriginalModules(rawUnetConfig()));
    const tensors: Tensors = {};
    for (const f of factors) {
      const name = `lora_unet_${originalOf.get(f.path)!.replace(/\./g, '_')}`;
      tensors[`${name}.lora_down.weight`] = f.down;
      tensors[`${name}.lora_up.weight`] = f.up;
      tensors[`${name}.alpha`] = { shape: [], data: Float32Array.of(f.alpha) };
    }
    expect(Object.keys(tensors).some((k) => k.startsWith('lora_unet_input_blocks_'))).toBe(true);
    await expectWhole('kohya-original', tensors, factors);
  });

  it('ComfyUI LoraSave: diffusion_model.<original key> and text_encoders.clip_l.transformer.<key>; its bias diffs are refused unless partial use is asked for', async () => {
    const rng = new Rng(6);
    const all = () => true;
    const factors = rankAlpha([
      ...factorsFor('unet', all, rng),
      ...factorsFor('text_encoder', (p) => /\.(self_attn|mlp)\./.test(p), rng),
    ]);
    const originalOf = invert(unetOriginalModules(rawUnetConfig()));
    const tensors: Tensors = {};
    for (const f of factors) {
      const name =
        f.component === 'unet'
          ? `diffusion_model.${originalOf.get(f.path)}`
          : `text_encoders.clip_l.transformer.${f.path}`;
      tensors[`${name}.lora_up.weight`] = f.up;
      tensors[`${name}.lora_down.weight`] = f.down;
    }
    expect(Object.keys(tensors).some((k) => k.startsWith('diffusion_model.output_blocks.'))).toBe(true);
    await expectWhole('comfyui', tensors, factors);

    const withBias = { ...tensors, 'diffusion_model.out.2.diff_b': { shape: [4], data: new Float32Array(4) } };
    const file = join(dir, 'comfyui-bias.safetensors');
    await writeSafetensors(file, withBias);
    const refused = planAdapter(file, { unet, textEncoder });
    await expect(refused).rejects.toThrow(PartialAdapterError);
    await expect(refused).rejects.toThrow(
      /comfyui-bias\.safetensors: only \d+ of \d+ tensors can be applied \(diffusion_model\.out\.2\.diff_b: .*--allow-partial/,
    );
    const plan = await planAdapter(file, { unet, textEncoder }, 1, { allowPartial: true });
    expect(plan.report.unapplied.map((u) => u.key)).toEqual(['diffusion_model.out.2.diff_b']);
    expect(plan.report.appliedTensors).toBe(Object.keys(tensors).length);
    plan.dispose();
  });
});

describe('a file only partly applicable', () => {
  it('is an error naming the tensors it cannot use, unless partial use is asked for', async () => {
    const rng = new Rng(7);
    const factors = factorsFor('unet', (p) => ATTENTION_PROJ.test(p), rng);
    const tensors = peftTensors(factors);
    tensors['unet.no_such_block.to_q.lora_A.weight'] = factors[0].down;
    tensors['unet.no_such_block.to_q.lora_B.weight'] = factors[0].up;
    const file = join(dir, 'partial.safetensors');
    await writeSafetensors(file, tensors);
    await expect(planAdapter(file, { unet })).rejects.toThrow(
      /partial\.safetensors: only \d+ of \d+ tensors can be applied \(unet\.no_such_block\.to_q\.lora_A\.weight: no Linear or Conv2d named 'no_such_block\.to_q' in the unet/,
    );
    // The text encoder's absence makes its tensors unusable too.
    const te = join(dir, 'te-only.safetensors');
    await writeSafetensors(te, peftTensors(factorsFor('text_encoder', (p) => TE_ATTENTION_PROJ.test(p), rng)));
    await expect(planAdapter(te, { unet })).rejects.toThrow(/no text encoder was given/);
    const plan = await planAdapter(file, { unet }, 1, { allowPartial: true });
    expect(plan.report.unapplied.length).toBe(2);
    expect(plan.report.appliedTensors).toBe(2 * factors.length);
    plan.dispose();
  });
});

/** tiny-a's UNet config in the raw form `unetOriginalModules` reads. */
function rawUnetConfig(): Record<string, unknown> {
  const c = unet.config;
  return {
    down_block_types: c.downBlockTypes,
    up_block_types: c.upBlockTypes,
    block_out_channels: c.blockOutChannels,
    layers_per_block: c.layersPerBlock,
    transformer_layers_per_block: c.transformerLayersPerBlock,
  };
}

const invert = (m: Map<string, string>) => new Map([...m].map(([a, b]) => [b, a]));

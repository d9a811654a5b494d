/**
 * Adapters on the ONNX engine are run-time inputs of the UNet and text-encoder graphs:
 * - a native SingLoRA file and a kohya LoRA file fed as side-path factors give what the
 *   TensorFlow.js engine gives with the same files merged into the weights (1e-4 * max|ref|);
 * - switching adapters (and strength) inside one session gives exactly what a fresh session gives;
 * - no adapter (rank-0 factors) is exactly the base model;
 * - a LoCon (convolution) target is listed as not applied on this engine, with the reason.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { saveAdapter } from '../../src-main/engine/adapters/adapterFile.ts';
import { AdapterSet, defaultAdapterSpec } from '../../src-main/engine/adapters/adapterSet.ts';
import { tf } from '../../src-main/engine/backend/tf.ts';
import { writeSafetensors } from '../../src-main/engine/io/safetensors.ts';
import { UNet2DConditionModel } from '../../src-main/engine/models/unet2dCondition.ts';
import { StableDiffusion } from '../../src-main/engine/pipeline/stableDiffusion.ts';
import { Rng } from '../../src-main/engine/random.ts';
import { maxAbsDiff, useBackend } from '../helpers/backend.ts';
import { FIXTURES } from '../helpers/fixtures.ts';

useBackend('wasm');
const base = join(FIXTURES, 'tiny-a/model');
const dir = mkdtempSync(join(tmpdir(), 'onnx-adapters-'));
const cacheDir = join(dir, 'cache');
const native = join(dir, 'singlora.safetensors');
const kohya = join(dir, 'kohya.safetensors');
const locon = join(dir, 'locon.safetensors');

let onnx: StableDiffusion;
let tfjs: StableDiffusion;
const sample = tf.randomNormal([2, 8, 8, 4], 0, 1, 'float32', 5);
const ctxT = tf.randomNormal([2, 77, 32], 0, 1, 'float32', 6);

beforeAll(async () => {
  process.env.SINGLORA_CACHE_DIR = cacheDir;
  const unet = await UNet2DConditionModel.load(join(base, 'unet'));
  const set = AdapterSet.inject(unet, defaultAdapterSpec({ rank: 4, alpha: 6, rampSteps: 10, initStd: 0.2 }), {
    rng: new Rng(11),
  });
  await saveAdapter(native, set, {
    trainedSteps: 5,
    triggerToken: 'sks',
    classWord: 'dog',
    baseModelName: 'tiny-a',
    baseModelUnetSha256: '0'.repeat(64),
  });
  set.remove();
  unet.dispose();
  const rng = new Rng(4);
  const t = (shape: number[]) => ({ shape, data: rng.normal(shape.reduce((a, b) => a * b, 1)).map((v) => v * 0.1) });
  await writeSafetensors(kohya, {
    'lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight': t([3, 32]),
    'lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight': t([64, 3]),
    'lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.alpha': {
      shape: [],
      data: Float32Array.of(2),
    },
    // a Linear outside the default targets: the graph gets a side path for it
    'lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_ff_net_2.lora_down.weight': t([2, 256]),
    'lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_ff_net_2.lora_up.weight': t([64, 2]),
    'lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight': t([2, 32]),
    'lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight': t([32, 2]),
  });
  await writeSafetensors(locon, {
    'lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight': t([2, 32, 3, 3]),
    'lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight': t([32, 2, 1, 1]),
  });
  onnx = await StableDiffusion.load(base, { engine: 'onnx', provider: 'cpu' });
  tfjs = await StableDiffusion.load(base, { engine: 'tfjs' });
});
afterAll(async () => {
  await onnx?.release();
  tfjs?.dispose();
  tf.dispose([sample, ctxT]);
  delete process.env.SINGLORA_CACHE_DIR;
  rmSync(dir, { recursive: true, force: true });
});

async function noise(sd: StableDiffusion): Promise<Float32Array> {
  const out = await sd.predictNoise(sample, 500, ctxT);
  const data = (await out.data()) as Float32Array;
  out.dispose();
  return data;
}

async function text(sd: StableDiffusion): Promise<Float32Array> {
  const out = await sd.encodeText(['a photo of sks dog', '']);
  const data = (await out.data()) as Float32Array;
  out.dispose();
  return data;
}

describe('adapters on the ONNX engine', () => {
  it('side-path inputs equal the TensorFlow.js merged weights (native SingLoRA, kohya LoRA incl. text encoder and a non-default Linear)', async () => {
    for (const uses of [
      [{ path: native, strength: 1 }],
      [{ path: kohya, strength: 0.7 }],
      [
        { path: native, strength: 0.5 },
        { path: kohya, strength: 1 },
      ],
    ]) {
      const [ro] = await onnx.setAdapters(uses);
      const [rt] = await tfjs.setAdapters(uses);
      expect(ro.summary).toBe(rt.summary);
      const a = await noise(onnx);
      const b = await noise(tfjs);
      const d = maxAbsDiff(a, b);
      console.log(
        `[onnx adapters] ${uses.map((u) => `${u.path.split('/').pop()}@${u.strength}`).join(' + ')}: unet max|diff| ${d.maxAbs.toExponential(2)} of max|ref| ${d.maxRef.toFixed(3)}`,
      );
      expect(d.maxAbs).toBeLessThanOrEqual(1e-4 * d.maxRef);
      const te = maxAbsDiff(await text(onnx), await text(tfjs));
      expect(te.maxAbs).toBeLessThanOrEqual(1e-4 * te.maxRef);
    }
    onnx.clearAdapters();
    tfjs.clearAdapters();
  });

  it('switching adapters in one session gives exactly what a fresh session gives; no adapter is the base model', async () => {
    onnx.clearAdapters();
    const baseOut = await noise(onnx);
    await onnx.setAdapters([{ path: native, strength: 1 }]);
    const withNative = await noise(onnx);
    expect(maxAbsDiff(withNative, baseOut).maxAbs).toBeGreaterThan(1e-6);
    await onnx.setAdapters([{ path: native, strength: 0.25 }]);
    const quarter = await noise(onnx);
    onnx.clearAdapters();
    expect(await noise(onnx)).toEqual(baseOut);

    const fresh = await StableDiffusion.load(base, { engine: 'onnx', provider: 'cpu' });
    try {
      await fresh.setAdapters([{ path: native, strength: 0.25 }]);
      expect(await noise(fresh)).toEqual(quarter);
      fresh.clearAdapters();
      expect(await noise(fresh)).toEqual(baseOut);
    } finally {
      await fresh.release();
    }
  });

  it('a LoCon (convolution) target is an error on onnx, or listed as not applied with the reason under partial use', async () => {
    await expect(onnx.setAdapters([{ path: locon, strength: 1 }])).rejects.toThrow(
      /only 0 of 2 tensors can be applied .*convolution \(LoCon\).*--engine tfjs/,
    );
    const [r] = await onnx.setAdapters([{ path: locon, strength: 1, allowPartial: true }]);
    expect(r.summary).toMatch(/applied 0 of 2 tensors to 0 modules/);
    expect(r.unapplied.map((u) => u.reason).join('\n')).toMatch(/convolution \(LoCon\).*--engine tfjs/);
    onnx.clearAdapters();
  });

  it('long prompts (75-token chunks) and (word:1.2) emphasis encode on the onnx engine as on tfjs', async () => {
    const long = `${Array.from({ length: 40 }, () => 'a photo of a dog').join(', ')}, (sks:1.3) [castle]`;
    const a = await onnx.encodeText([long, 'blurry']);
    const b = await tfjs.encodeText([long, 'blurry']);
    try {
      expect(a.shape).toEqual(b.shape);
      expect(a.shape[1]).toBeGreaterThan(77);
      const d = maxAbsDiff((await a.data()) as Float32Array, (await b.data()) as Float32Array);
      console.log(
        `[onnx prompts] ${a.shape[1]} tokens: max|diff| ${d.maxAbs.toExponential(2)} of max|ref| ${d.maxRef.toFixed(3)}`,
      );
      expect(d.maxAbs).toBeLessThanOrEqual(1e-4 * d.maxRef);
      const eps = await onnx.predictNoise(sample, 500, a.slice([0, 0, 0], [2, a.shape[1] as number, 32]));
      expect(eps.shape).toEqual(sample.shape);
      eps.dispose();
    } finally {
      tf.dispose([a, b]);
    }
  });
});

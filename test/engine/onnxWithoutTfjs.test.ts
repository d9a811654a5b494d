/**
 * ONNX Runtime inference loads no TensorFlow.js (issue 28): a fresh Node process generates an
 * image of tiny-a on the onnx engine, with a kohya LoRA file applied (UNet and text encoder),
 * through the same `StableDiffusion` / `textToImage` the CLI and the server use, then reports every
 * `@tensorflow` file in Node's module cache and whether engine/backend/tf.ts was asked for `tf`.
 * Both must be empty / false. A fresh process, because this test runner has loaded TensorFlow.js
 * for other suites long before.
 */
import { execFileSync } from 'node:child_process';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { writeSafetensors } from '../../src-main/engine/io/safetensors.ts';
import { Rng } from '../../src-main/engine/random.ts';
import { FIXTURES } from '../helpers/fixtures.ts';
import { tempDir } from '../helpers/tempDir.ts';

const REPO = resolve(import.meta.dirname, '../..');
const src = (p: string) => pathToFileURL(join(REPO, 'src-main/engine', p)).href;
const lora = join(tempDir('no-tfjs'), 'kohya.safetensors');

beforeAll(async () => {
  const rng = new Rng(4);
  const t = (shape: number[]) => ({ shape, data: rng.normal(shape.reduce((a, b) => a * b, 1)).map((v) => v * 0.1) });
  await writeSafetensors(lora, {
    'lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight': t([3, 32]),
    'lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight': t([64, 3]),
    'lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight': t([2, 32]),
    'lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight': t([32, 2]),
  });
});

/** The child: one 2-step image with guidance and the LoRA on the onnx engine, then what it loaded. */
const child = () => `
import { createRequire } from 'node:module';
import { register } from 'tsx/esm/api';
register();
const { StableDiffusion } = await import(${JSON.stringify(src('pipeline/stableDiffusion.ts'))});
const { textToImage } = await import(${JSON.stringify(src('pipeline/textToImage.ts'))});
const { tfjsLoaded } = await import(${JSON.stringify(src('backend/tf.ts'))});
const sd = await StableDiffusion.load(${JSON.stringify(join(FIXTURES, 'tiny-a/model'))}, { engine: 'onnx', provider: 'cpu' });
let applied = 0;
const [img] = await textToImage(sd, {
  prompt: 'a photo of sks dog', negativePrompt: 'blurry', steps: 2, guidanceScale: 7.5,
  scheduler: 'euler-a', seed: 1, width: 64, height: 64,
  adapters: [{ path: ${JSON.stringify(lora)}, strength: 0.8 }],
}, { onAdapters: (r) => { applied = r[0].appliedTensors; } });
sd.dispose();
const cache = Object.keys(createRequire(import.meta.url).cache);
console.log(JSON.stringify({
  pixels: img.pixels.length,
  applied,
  tfjsLoaded: tfjsLoaded(),
  tensorflowFiles: cache.filter((f) => f.includes('@tensorflow')),
  onnxruntimeFiles: cache.filter((f) => f.includes('onnxruntime')).length,
}));
`;

describe('ONNX Runtime inference', () => {
  it('generates an image with a LoRA in a fresh process without loading TensorFlow.js', () => {
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', child()], {
      cwd: REPO,
      encoding: 'utf8',
      env: { ...process.env, SINGLORA_ENGINE: '', SINGLORA_PROVIDER: '' },
    });
    const report = JSON.parse(out.trim().split('\n').at(-1)!);
    expect(report.pixels).toBe(64 * 64 * 3);
    expect(report.applied).toBe(4);
    // The check can see what it looks for: ONNX Runtime itself shows up in the same cache.
    expect(report.onnxruntimeFiles).toBeGreaterThan(0);
    expect(report.tensorflowFiles).toEqual([]);
    expect(report.tfjsLoaded).toBe(false);
  }, 120_000);
});

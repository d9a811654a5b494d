/**
 * A prompt and a negative prompt of different 75-token chunk counts (issue 27 item 38): padded with
 * the empty prompt's chunks into one UNet batch ('empty-chunks', A1111's "Pad prompt/negative prompt"
 * option), or two UNet passes at their own lengths ('none', A1111's default). On tiny-a with the
 * default engine (ONNX Runtime, CPU).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import type { HostArray, TextContext } from '../../src-main/engine/pipeline/inferenceExecutor.ts';
import { StableDiffusion } from '../../src-main/engine/pipeline/stableDiffusion.ts';
import { textToImage, type TextToImageRequest } from '../../src-main/engine/pipeline/textToImage.ts';
import { useBackend } from '../helpers/backend.ts';
import { FIXTURES } from '../helpers/fixtures.ts';

useBackend('wasm');
const base = join(FIXTURES, 'tiny-a/model');
let sd: StableDiffusion;
beforeAll(async () => {
  sd = await StableDiffusion.load(base);
});
afterAll(() => sd.dispose());

/** Runs one image and records the [batch, tokens] of every UNet context. */
async function run(req: Partial<TextToImageRequest>): Promise<{ pixels: Uint8Array; contexts: number[][] }> {
  const contexts: number[][] = [];
  const executor = sd.executor;
  const predict = executor.predictNoise.bind(executor);
  executor.predictNoise = (sample: HostArray, t: number, context: TextContext) => {
    contexts.push(context.dims.slice(0, 2));
    return predict(sample, t, context);
  };
  try {
    const [img] = await textToImage(sd, {
      prompt: 'a photo of sks dog',
      negativePrompt: '',
      steps: 2,
      guidanceScale: 7.5,
      scheduler: 'ddim',
      seed: 5,
      width: 64,
      height: 64,
      ...req,
    });
    return { pixels: img.pixels, contexts };
  } finally {
    executor.predictNoise = predict;
  }
}

const long = Array.from({ length: 30 }, (_, i) => `a red ball number ${i}`).join(', '); // > 75 tokens

describe('negative-prompt padding', () => {
  it("'empty-chunks' pads the short negative prompt and runs one batch of 2; 'none' runs two passes at their own lengths", async () => {
    const padded = await run({ prompt: long, negativePadding: 'empty-chunks' });
    const apart = await run({ prompt: long, negativePadding: 'none' });
    const chunks = padded.contexts[0][1] / 77;
    expect(chunks).toBeGreaterThan(1);
    expect(padded.contexts).toEqual([
      [2, 77 * chunks],
      [2, 77 * chunks],
    ]);
    expect(apart.contexts).toEqual([
      [1, 77],
      [1, 77 * chunks],
      [1, 77],
      [1, 77 * chunks],
    ]);
    // The negative prompt attends over its own chunk, not also over empty-prompt chunks: another image.
    expect(apart.pixels).not.toEqual(padded.pixels);
  });

  it('prompts of the same chunk count give the same image either way', async () => {
    const padded = await run({ negativePrompt: 'blurry', negativePadding: 'empty-chunks' });
    const apart = await run({ negativePrompt: 'blurry', negativePadding: 'none' });
    expect(apart.contexts).toEqual(padded.contexts);
    expect(apart.pixels).toEqual(padded.pixels);
  });
});

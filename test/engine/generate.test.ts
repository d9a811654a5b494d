/**
 * Generation to files: the PNG `parameters` chunk round-trips through sharp's metadata and our
 * reader, sidecars validate, seeds are reproducible, bad requests get clear errors, and twenty
 * generations leak no tensor.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { imageSidecarSchema } from '../../src-main/api/schemas.ts';
import { tf } from '../../src-main/engine/backend/tf.ts';
import { readImageMetadata } from '../../src-main/engine/image/sharp.ts';
import { getPngText } from '../../src-main/engine/image/pngText.ts';
import { generateImages } from '../../src-main/engine/pipeline/generate.ts';
import { parseA1111Parameters } from '../../src-main/engine/pipeline/generationParams.ts';
import { StableDiffusion } from '../../src-main/engine/pipeline/stableDiffusion.ts';
import { textToImage } from '../../src-main/engine/pipeline/textToImage.ts';
import { useBackend } from '../helpers/backend.ts';
import { FIXTURES } from '../helpers/fixtures.ts';
import { tempDir } from '../helpers/tempDir.ts';

useBackend('wasm');
const base = join(FIXTURES, 'tiny-a/model');
const out = tempDir('gen');
let sd: StableDiffusion;
beforeAll(async () => {
  sd = await StableDiffusion.load(base);
});
afterAll(() => sd.dispose());

describe('generation to files', () => {
  it('writes PNGs whose A1111 parameters round-trip through sharp and our reader, plus a valid sidecar', async () => {
    const files = await generateImages({
      base,
      sd,
      settings: {
        prompt: 'a photo of sks dog, best quality',
        negativePrompt: 'blurry: bad',
        steps: 3,
        scheduler: 'euler-a',
        seed: 42,
        width: 64,
        height: 48,
        count: 2,
        clipSkip: 1,
      },
      outDir: out,
    });
    expect(files.map((f) => f.file.split('/').pop())).toEqual(['00000-42.png', '00001-43.png']);
    const png = readFileSync(files[0].file);
    const ours = getPngText(png, 'parameters')!;
    const meta = await readImageMetadata(png);
    expect(meta.width).toBe(64);
    expect(meta.height).toBe(48);
    expect(meta.pngText.find((e) => e.keyword === 'parameters')?.text).toBe(ours);
    const parsed = parseA1111Parameters(ours);
    expect(parsed.prompt).toBe('a photo of sks dog, best quality');
    expect(parsed.negativePrompt).toBe('blurry: bad');
    expect(parsed.fields).toMatchObject({
      Steps: '3',
      Sampler: 'Euler a',
      'CFG scale': '7.5',
      Seed: '42',
      Size: '64x48',
      'Clip skip': '2',
      Model: 'model',
    });
    expect(parsed.fields['Model hash']).toMatch(/^[0-9a-f]{10}$/);
    const sidecar = imageSidecarSchema.parse(
      JSON.parse(readFileSync(files[1].file.replace(/\.png$/, '.json'), 'utf8')),
    );
    expect(sidecar.settings.seed).toBe(43);
    // What computed it: ONNX Runtime (the default engine) on the CPU provider here, not the
    // process's TensorFlow.js backend (issue 27 item 32).
    expect({ engine: sidecar.engine, provider: sidecar.provider, dtype: sidecar.dtype }).toEqual({
      engine: 'onnx',
      provider: 'cpu',
      dtype: 'float32',
    });
    expect(JSON.parse(readFileSync(files[1].file.replace(/\.png$/, '.json'), 'utf8'))).not.toHaveProperty('backend');
    expect(sidecar.parameters).toBe(getPngText(readFileSync(files[1].file), 'parameters'));
  });

  it('the same seed gives the same image; another seed does not', async () => {
    const req = {
      prompt: 'a castle',
      steps: 3,
      guidanceScale: 7.5,
      scheduler: 'dpmpp-2m-karras' as const,
      width: 64,
      height: 64,
    };
    const [a] = await textToImage(sd, { ...req, seed: 5 });
    const [b] = await textToImage(sd, { ...req, seed: 5 });
    const [c] = await textToImage(sd, { ...req, seed: 6 });
    expect(b.pixels).toEqual(a.pixels);
    expect(c.pixels).not.toEqual(a.pixels);
  });

  it.each([
    [{ width: 60 }, /width must be a positive multiple of 8, got 60/],
    [{ steps: 0 }, /steps must be an integer from 1 to 1000, got 0/],
    [{ scheduler: 'lms' }, /scheduler 'lms' is unknown; valid: from-model, pndm, ddim/],
    [{ seed: -3 }, /seed must be an integer >= 0/],
  ])('rejects %o with a clear error', async (bad, message) => {
    await expect(
      textToImage(sd, {
        prompt: 'x',
        steps: 2,
        guidanceScale: 7.5,
        scheduler: 'ddim',
        seed: 1,
        width: 64,
        height: 64,
        ...(bad as object),
      } as never),
    ).rejects.toThrow(message);
  });

  it('names a missing model and a bad settings field', async () => {
    await expect(
      generateImages({ base: join(out, 'nope'), settings: { prompt: 'x', width: 64, height: 64 }, outDir: out }),
    ).rejects.toThrow(/nope/);
    await expect(
      generateImages({ base, sd, settings: { prompt: 'x', width: 65, height: 64 }, outDir: out }),
    ).rejects.toThrow(/width: width must be a multiple of 8/);
  });

  it('leaks no tensor across 20 generations', async () => {
    const before = tf.memory().numTensors;
    for (let i = 0; i < 20; i++) {
      await textToImage(sd, {
        prompt: `image ${i}`,
        negativePrompt: i % 2 ? 'bad' : undefined,
        steps: 2,
        guidanceScale: i % 3 ? 7.5 : 1,
        scheduler: (['ddim', 'euler-a', 'dpmpp-2m', 'pndm'] as const)[i % 4],
        seed: i,
        width: 64,
        height: 64,
      });
    }
    expect(tf.memory().numTensors).toBe(before);
  });
});

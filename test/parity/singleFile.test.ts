/**
 * Components built from tiny-b's single-file (original LDM layout) checkpoint compute exactly
 * what the ones built from its diffusers folder compute: the same tensors, the same outputs.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf, type Tensor } from '../../src-main/engine/backend/tf.ts';
import { StableDiffusion } from '../../src-main/engine/pipeline/stableDiffusion.ts';
import { Rng, randn } from '../../src-main/engine/random.ts';
import { useBackend } from '../helpers/backend.ts';
import { FIXTURES } from '../helpers/fixtures.ts';

useBackend('wasm');

describe('single-file checkpoint vs diffusers folder (tiny-b)', () => {
  let folder: StableDiffusion;
  let single: StableDiffusion;
  beforeAll(async () => {
    folder = await StableDiffusion.load(join(FIXTURES, 'tiny-b/model'), { engine: 'tfjs' });
    // The configs come from the folder (groups and heads cannot be inferred from shapes);
    // every weight comes from the single file.
    single = await StableDiffusion.load(join(FIXTURES, 'tiny-b/single_file.safetensors'), {
      configDir: join(FIXTURES, 'tiny-b/model'),
      engine: 'tfjs',
    });
  });
  afterAll(() => {
    folder.dispose();
    single.dispose();
  });

  async function same(a: Tensor, b: Tensor): Promise<void> {
    expect(b.shape).toEqual(a.shape);
    const [x, y] = await Promise.all([a.data(), b.data()]);
    let diff = 0;
    for (let i = 0; i < x.length; i++) diff = Math.max(diff, Math.abs(x[i] - y[i]));
    expect(diff).toBe(0);
    tf.dispose([a, b]);
  }

  it('text encoder, UNet and VAE outputs are identical', async () => {
    const rng = new Rng(3);
    await same(
      await folder.encodePrompts(['a photo of sks dog', '']),
      await single.encodePrompts(['a photo of sks dog', '']),
    );
    const x = randn(rng, [2, 16, 12, 4]);
    const ctx = randn(rng, [2, 77, 48]);
    await same(folder.unet.forward(x, [999, 10], ctx), single.unet.forward(x, [999, 10], ctx));
    const img = randn(rng, [1, 64, 48, 3]);
    const a = folder.vae.encode(img);
    const b = single.vae.encode(img);
    await same(a.mean, b.mean);
    await same(a.logvar, b.logvar);
    tf.dispose([a.std, b.std]);
    const z = randn(rng, [1, 8, 6, 4]);
    await same(folder.vae.decode(z), single.vae.decode(z));
    tf.dispose([x, ctx, img, z]);
  });

  it('every weight is element-exact', async () => {
    for (const kind of ['unet', 'vae', 'textEncoder'] as const) {
      const fa = new Map(
        kind === 'unet'
          ? folder.unet.namedParams()
          : kind === 'vae'
            ? folder.vae.namedParams()
            : folder.textEncoder.namedParams(),
      );
      const fb = new Map(
        kind === 'unet'
          ? single.unet.namedParams()
          : kind === 'vae'
            ? single.vae.namedParams()
            : single.textEncoder.namedParams(),
      );
      expect([...fb.keys()].sort()).toEqual([...fa.keys()].sort());
      for (const [k, p] of fa) expect(await fb.get(k)!.value.data(), `${kind}.${k}`).toEqual(await p.value.data());
    }
  });

  it('on the onnx engine, graphs reading the single file in place compute exactly what the folder graphs compute', async () => {
    const a = await StableDiffusion.load(join(FIXTURES, 'tiny-b/model'), { engine: 'onnx', provider: 'cpu' });
    const b = await StableDiffusion.load(join(FIXTURES, 'tiny-b/single_file.safetensors'), {
      configDir: join(FIXTURES, 'tiny-b/model'),
      engine: 'onnx',
      provider: 'cpu',
    });
    try {
      const rng = new Rng(3);
      await same(await a.encodeText(['a photo of sks dog', '']), await b.encodeText(['a photo of sks dog', '']));
      const x = randn(rng, [2, 16, 12, 4]);
      const ctx = randn(rng, [2, 77, 48]);
      await same(await a.predictNoise(x, 999, ctx), await b.predictNoise(x, 999, ctx));
      const img = randn(rng, [1, 64, 48, 3]);
      const ea = await a.encodeImage(img);
      const eb = await b.encodeImage(img);
      await same(ea.mean, eb.mean);
      tf.dispose([ea.logvar, ea.std, eb.logvar, eb.std]);
      const z = randn(rng, [1, 8, 6, 4]);
      await same(await a.decodeLatents(z), await b.decodeLatents(z));
      tf.dispose([x, ctx, img, z]);
    } finally {
      await a.release();
      await b.release();
    }
  });
});

/**
 * The same UNet and VAE parity checks on the plain-JS cpu backend (one backend per process, so a
 * file of its own): `unet.out` and `vae.decode.out` within 1e-4 * max|ref|. The cpu backend is
 * ~10x slower than wasm, so only these two outputs run here.
 */
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf, type Tensor } from '../../src-main/engine/backend/tf.ts';
import { UNet2DConditionModel } from '../../src-main/engine/models/unet2dCondition.ts';
import { AutoencoderKL } from '../../src-main/engine/models/autoencoderKL.ts';
import { Cases, parityFolders, skipNote } from '../helpers/fixtures.ts';
import { maxAbsDiff, useBackend } from '../helpers/backend.ts';

useBackend('cpu');

const TOL = 1e-4;

async function load(cases: Cases, key: string, nchw: boolean): Promise<Tensor> {
  const { shape, data } = await cases.get(key);
  return tf.tidy(() => {
    const t = tf.tensor(data, shape, 'float32');
    return nchw ? tf.transpose(t, [0, 2, 3, 1]) : t;
  });
}

async function compare(label: string, out: Tensor, cases: Cases, key: string): Promise<void> {
  const ref = await cases.get(key);
  expect([...out.shape]).toEqual([ref.shape[0], ref.shape[2], ref.shape[3], ref.shape[1]]);
  const got = tf.tidy(() => tf.transpose(out, [0, 3, 1, 2]).dataSync());
  const { maxAbs, maxRef, rel } = maxAbsDiff(got, ref.data);
  console.log(
    `[parity cpu] ${label} ${key}: max|diff| ${maxAbs.toExponential(3)}, max|ref| ${maxRef.toFixed(4)}, diff/max|ref| ${rel.toExponential(3)}`,
  );
  expect(maxAbs).toBeLessThanOrEqual(TOL * maxRef);
}

for (const folder of parityFolders()) {
  const label = basename(folder);
  describe(`UNet + VAE parity on cpu (${label})`, () => {
    let cases: Cases;
    beforeAll(async () => {
      cases = await Cases.open(folder);
    });
    afterAll(async () => {
      await cases?.close();
    });

    it('unet.out', async (ctx) => {
      const modelDir = join(folder, 'model', 'unet');
      if (!cases.has('unet.out') || !existsSync(modelDir))
        return ctx.skip(skipNote(folder, 'unet.out case or model/unet'));
      const unet = await UNet2DConditionModel.load(modelDir);
      const sample = await load(cases, 'unet.sample', true);
      const context = await load(cases, 'unet.encoder_hidden_states', false);
      const timestep = await load(cases, 'unet.timestep', false);
      const before = tf.memory().numTensors;
      const out = unet.forward(sample, timestep, context);
      await compare(label, out, cases, 'unet.out');
      out.dispose();
      expect(tf.memory().numTensors, 'tensors left behind by the forward').toBe(before);
      tf.dispose([sample, context, timestep]);
      unet.dispose();
    });

    it('vae.decode.out', async (ctx) => {
      const modelDir = join(folder, 'model', 'vae');
      if (!cases.has('vae.decode.out') || !existsSync(modelDir))
        return ctx.skip(skipNote(folder, 'vae.decode case or model/vae'));
      const vae = await AutoencoderKL.load(modelDir);
      const z = await load(cases, 'vae.decode.in', true);
      const out = vae.decode(z);
      await compare(label, out, cases, 'vae.decode.out');
      tf.dispose([out, z]);
      vae.dispose();
    });
  });
}

/**
 * AutoencoderKL against diffusers 0.27.2 reference activations, on wasm, for every
 * PARITY_FIXTURES folder: `vae.encode.mean` / `logvar` / `std` from `vae.encode.in` (a non-square
 * image) and `vae.decode.out` from `vae.decode.in`, within 1e-4 * max|ref|. Leak checks too.
 */
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf, type Tensor } from '../../src-main/engine/backend/tf.ts';
import { AutoencoderKL } from '../../src-main/engine/models/autoencoderKL.ts';
import { Cases, parityFolders, skipNote } from '../helpers/fixtures.ts';
import { expectNoLeak, maxAbsDiff, useBackend } from '../helpers/backend.ts';

useBackend('wasm');

const TOL = 1e-4;

async function loadNHWC(cases: Cases, key: string): Promise<Tensor> {
  const { shape, data } = await cases.get(key);
  return tf.tidy(() => tf.transpose(tf.tensor(data, shape, 'float32'), [0, 2, 3, 1]));
}

async function compare(label: string, out: Tensor, cases: Cases, key: string): Promise<void> {
  const ref = await cases.get(key);
  expect([...out.shape]).toEqual([ref.shape[0], ref.shape[2], ref.shape[3], ref.shape[1]]);
  const got = tf.tidy(() => tf.transpose(out, [0, 3, 1, 2]).dataSync());
  const { maxAbs, maxRef, rel } = maxAbsDiff(got, ref.data);
  console.log(
    `[parity wasm] ${label} ${key}: max|diff| ${maxAbs.toExponential(3)}, max|ref| ${maxRef.toFixed(4)}, diff/max|ref| ${rel.toExponential(3)}`,
  );
  expect(maxAbs).toBeLessThanOrEqual(TOL * maxRef);
}

for (const folder of parityFolders()) {
  const label = basename(folder);
  describe(`AutoencoderKL parity (${label})`, () => {
    let cases: Cases;
    let vae: AutoencoderKL | null = null;

    beforeAll(async () => {
      cases = await Cases.open(folder);
      const modelDir = join(folder, 'model', 'vae');
      if (cases.has('vae.encode.in') || cases.has('vae.decode.in')) {
        if (existsSync(modelDir)) vae = await AutoencoderKL.load(modelDir);
      }
    });
    afterAll(async () => {
      vae?.dispose();
      await cases?.close();
    });

    it('vae.encode.mean / logvar / std (non-square input)', async (ctx) => {
      const keys = ['vae.encode.in', 'vae.encode.mean', 'vae.encode.logvar', 'vae.encode.std'];
      if (!vae || !keys.every((k) => cases.has(k)))
        return ctx.skip(
          skipNote(folder, `${keys.filter((k) => !cases.has(k)).join(', ') || 'model/vae'} (vae.encode case)`),
        );
      const x = await loadNHWC(cases, 'vae.encode.in');
      const { mean, logvar, std } = vae.encode(x);
      await compare(label, mean, cases, 'vae.encode.mean');
      await compare(label, logvar, cases, 'vae.encode.logvar');
      await compare(label, std, cases, 'vae.encode.std');
      tf.dispose([x, mean, logvar, std]);
    });

    it('vae.decode.out', async (ctx) => {
      if (!vae || !cases.has('vae.decode.in') || !cases.has('vae.decode.out'))
        return ctx.skip(skipNote(folder, 'vae.decode case or model/vae'));
      const z = await loadNHWC(cases, 'vae.decode.in');
      const out = vae.decode(z);
      await compare(label, out, cases, 'vae.decode.out');
      tf.dispose([z, out]);
    });

    it('encode and decode leak no tensors', async (ctx) => {
      if (!vae) return ctx.skip(skipNote(folder, 'vae case or model/vae'));
      const x = tf.randomNormal([1, 24, 40, 3], 0, 1, 'float32', 11);
      const z = tf.randomNormal([1, 3, 5, 4], 0, 1, 'float32', 12);
      await expectNoLeak(() => {
        const d = vae!.encode(x);
        tf.dispose([d.mean, d.logvar, d.std]);
        vae!.decode(z).dispose();
      });
      tf.dispose([x, z]);
    });
  });
}

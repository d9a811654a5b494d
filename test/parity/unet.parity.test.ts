/**
 * UNet2DConditionModel against diffusers 0.27.2 reference activations (cases.safetensors), on
 * wasm, for every PARITY_FIXTURES folder. Tolerance: max|out - ref| <= 1e-4 * max|ref|
 * (REFERENCE.md; torch's own float32-vs-float64 noise is ~8e-7 of max|ref|).
 * Also: attention slicing on/off give the same output, and a forward leaks no tensors.
 */
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf, type Tensor } from '../../src-main/engine/backend/tf.ts';
import { UNet2DConditionModel } from '../../src-main/engine/models/unet2dCondition.ts';
import { attentionOptions } from '../../src-main/engine/models/ops/tfAttention.ts';
import { Cases, parityFolders, skipNote } from '../helpers/fixtures.ts';
import { expectNoLeak, maxAbsDiff, useBackend } from '../helpers/backend.ts';

useBackend('wasm');

const TOL = 1e-4;

/** A fixture tensor; NCHW images/latents become NHWC. */
async function load(cases: Cases, key: string, nchw = false): Promise<Tensor> {
  const { shape, data } = await cases.get(key);
  const t = tf.tensor(data, shape, 'float32');
  if (!nchw) return t;
  const out = tf.transpose(t, [0, 2, 3, 1]);
  t.dispose();
  return out;
}

/** NHWC output vs an NCHW reference. */
async function compare(label: string, out: Tensor, cases: Cases, key: string): Promise<void> {
  const ref = await cases.get(key);
  const got = tf.tidy(() => tf.transpose(out, [0, 3, 1, 2]).dataSync());
  expect([...out.shape]).toEqual([ref.shape[0], ref.shape[2], ref.shape[3], ref.shape[1]]);
  const { maxAbs, maxRef, rel } = maxAbsDiff(got, ref.data);
  console.log(
    `[parity wasm] ${label} ${key}: max|diff| ${maxAbs.toExponential(3)}, max|ref| ${maxRef.toFixed(4)}, diff/max|ref| ${rel.toExponential(3)}`,
  );
  expect(maxAbs).toBeLessThanOrEqual(TOL * maxRef);
}

for (const folder of parityFolders()) {
  const label = basename(folder);
  describe(`UNet2DConditionModel parity (${label})`, () => {
    let cases: Cases;
    let unet: UNet2DConditionModel | null = null;
    let sample: Tensor;
    let context: Tensor;
    let ready = false;

    beforeAll(async () => {
      cases = await Cases.open(folder);
      const modelDir = join(folder, 'model', 'unet');
      if (!cases.has('unet.sample') || !existsSync(modelDir)) return;
      unet = await UNet2DConditionModel.load(modelDir);
      sample = await load(cases, 'unet.sample', true);
      context = await load(cases, 'unet.encoder_hidden_states');
      ready = true;
    });
    afterAll(async () => {
      unet?.dispose();
      if (ready) tf.dispose([sample, context]);
      await cases?.close();
    });

    it('unet.out (integer timesteps 999, 10)', async (ctx) => {
      if (!ready || !cases.has('unet.out')) return ctx.skip(skipNote(folder, 'unet.out case or model/unet'));
      const timestep = await load(cases, 'unet.timestep');
      const out = unet!.forward(sample, timestep, context);
      await compare(label, out, cases, 'unet.out');
      tf.dispose([out, timestep]);
    });

    it('unet.out_frac (float timesteps 500.5, 1.25)', async (ctx) => {
      if (!ready || !cases.has('unet.out_frac') || !cases.has('unet.timestep_frac'))
        return ctx.skip(skipNote(folder, 'unet.out_frac / unet.timestep_frac case'));
      const t = await cases.get('unet.timestep_frac');
      const out = unet!.forward(sample, Array.from(t.data), context);
      await compare(label, out, cases, 'unet.out_frac');
      out.dispose();
    });

    it('attention slicing on (tiny budget) and off give the same output', async (ctx) => {
      if (!ready) return ctx.skip(skipNote(folder, 'unet case or model/unet'));
      const saved = attentionOptions.maxScoreElements;
      try {
        attentionOptions.maxScoreElements = Infinity;
        const whole = unet!.forward(sample, [999, 10], context);
        attentionOptions.maxScoreElements = 4096; // forces row slices at every resolution
        const sliced = unet!.forward(sample, [999, 10], context);
        const { maxAbs, maxRef } = maxAbsDiff(sliced.dataSync(), whole.dataSync());
        console.log(
          `[parity wasm] ${label} slicing on vs off: max|diff| ${maxAbs.toExponential(3)} (max|ref| ${maxRef.toFixed(4)})`,
        );
        expect(maxAbs).toBeLessThanOrEqual(1e-5 * maxRef);
        tf.dispose([whole, sliced]);
      } finally {
        attentionOptions.maxScoreElements = saved;
      }
    });

    it('a forward leaks no tensors', async (ctx) => {
      if (!ready) return ctx.skip(skipNote(folder, 'unet case or model/unet'));
      await expectNoLeak(() => unet!.forward(sample, 500, context).dispose());
    });
  });
}

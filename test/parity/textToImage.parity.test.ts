/**
 * Text-to-image parity with diffusers' StableDiffusionPipeline: DDIM 10 steps, CFG 7.5, the
 * fixture prompts and `t2i.latents` passed in. Per-step latents within 1e-4 * max|ref|, the image
 * within atol 1e-3; the no-negative-prompt run too.
 */
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StableDiffusion } from '../../src-main/engine/pipeline/stableDiffusion.ts';
import { textToImage } from '../../src-main/engine/pipeline/textToImage.ts';
import { expectNoLeak, maxAbsDiff, useBackend } from '../helpers/backend.ts';
import { Cases, parityFolders, skipNote } from '../helpers/fixtures.ts';

useBackend('wasm');

/** NCHW [n, c, h, w] data -> NHWC data. */
function toNhwc(data: Float32Array, [n, c, h, w]: number[]): Float32Array {
  const out = new Float32Array(data.length);
  for (let b = 0; b < n; b++)
    for (let ci = 0; ci < c; ci++)
      for (let y = 0; y < h; y++)
        for (let x = 0; x < w; x++) out[((b * h + y) * w + x) * c + ci] = data[((b * c + ci) * h + y) * w + x];
  return out;
}

for (const folder of parityFolders())
  for (const engine of ['onnx', 'tfjs'] as const) {
    describe(`text-to-image parity (${engine}, ${basename(folder)}): ${folder}`, () => {
      let cases: Cases;
      let sd: StableDiffusion | null = null;
      beforeAll(async () => {
        cases = await Cases.open(folder);
        if (cases.has('t2i.latents'))
          sd = await StableDiffusion.load(join(folder, 'model'), { engine, provider: 'cpu' });
      });
      afterAll(async () => {
        sd?.dispose();
        await sd?.release();
        await cases.close();
      });

      for (const variant of ['negative', 'no_negative'] as const) {
        it(`DDIM 10 steps, CFG 7.5 (${variant === 'negative' ? 'with' : 'without'} a negative prompt)`, async (ctx) => {
          if (!sd) return ctx.skip(skipNote(folder, 't2i.* cases'));
          const meta = cases.metadata;
          const lat = await cases.get('t2i.latents');
          const latents = toNhwc(lat.data, lat.shape); // [1, h, w, c]
          const stepRef = variant === 'negative' ? await cases.get('t2i.step_latents') : null;
          const finalRef = await cases.get(
            variant === 'negative' ? 't2i.final_latents' : 't2i.no_negative.final_latents',
          );
          const imageRef = await cases.get(variant === 'negative' ? 't2i.image' : 't2i.no_negative.image');
          const timestepsRef = [...(await cases.getInt('t2i.timesteps')).data];
          const per = finalRef.data.length; // values per step
          const seen: number[] = [];
          let worstStep = 0;
          let lastLatents: Float32Array | null = null;
          const images = await expectNoLeak(() =>
            textToImage(
              sd!,
              {
                prompt: meta['t2i.prompt'],
                negativePrompt: variant === 'negative' ? meta['t2i.negative_prompt'] : undefined,
                steps: Number(meta['t2i.num_inference_steps']),
                guidanceScale: Number(meta['t2i.guidance_scale']),
                scheduler: 'ddim',
                seed: 0,
                width: Number(meta['t2i.width']),
                height: Number(meta['t2i.height']),
                latents,
                returnFloat: true,
              },
              {
                onStep: async (info, x) => {
                  seen.push(info.timestep);
                  const got = x.slice();
                  lastLatents = got;
                  if (stepRef) {
                    const ref = toNhwc(stepRef.data.subarray((info.step - 1) * per, info.step * per), [
                      1,
                      ...stepRef.shape.slice(2),
                    ]);
                    const d = maxAbsDiff(got, ref);
                    worstStep = Math.max(worstStep, d.rel);
                  }
                },
              },
            ),
          );
          expect(seen).toEqual(timestepsRef);
          const fin = maxAbsDiff(lastLatents!, toNhwc(finalRef.data, finalRef.shape));
          const img = maxAbsDiff(images[0].float!, imageRef.data);
          console.log(
            `[parity ${engine}] ${folder} t2i ${variant}: worst step latents ${stepRef ? worstStep.toExponential(2) : 'n/a (no per-step reference)'} of max|ref|, final latents ${fin.rel.toExponential(2)} (max|ref| ${fin.maxRef.toFixed(1)}), image max abs ${img.maxAbs.toExponential(2)}`,
          );
          expect(worstStep).toBeLessThanOrEqual(1e-4);
          expect(fin.rel).toBeLessThanOrEqual(1e-4);
          expect(img.maxAbs).toBeLessThanOrEqual(1e-3);
        });
      }
    });
  }

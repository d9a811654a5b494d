/**
 * The ONNX engine (graphs emitted from engine/models, weights read in place from the fixture
 * folder's safetensors files) against the diffusers/transformers reference activations, on ONNX
 * Runtime's CPU provider, for every PARITY_FIXTURES folder. Tolerance: max|out - ref| <=
 * 1e-4 * max|ref| for single forwards (REFERENCE.md). A missing case is reported as skipped.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OnnxDiffusion, type HostTensor } from '../../src-main/engine/onnx/onnxDiffusion.ts';
import { Cases, parityFolders, skipNote } from '../helpers/fixtures.ts';
import { maxAbsDiff } from '../helpers/backend.ts';

const TOL = 1e-4;

/** NCHW fixture -> NHWC host tensor (rank-4), other ranks as they are. */
function nhwc(t: { shape: number[]; data: Float32Array }): HostTensor {
  if (t.shape.length !== 4) return { data: t.data, dims: t.shape };
  const [n, c, h, w] = t.shape;
  const out = new Float32Array(t.data.length);
  for (let a = 0; a < n; a++)
    for (let ci = 0; ci < c; ci++)
      for (let y = 0; y < h; y++)
        for (let x = 0; x < w; x++) out[((a * h + y) * w + x) * c + ci] = t.data[((a * c + ci) * h + y) * w + x];
  return { data: out, dims: [n, h, w, c] };
}

function check(label: string, key: string, got: HostTensor, ref: { shape: number[]; data: Float32Array }): void {
  const want = key.startsWith('text.') ? { data: ref.data, dims: ref.shape } : nhwc(ref);
  expect([...got.dims]).toEqual([...want.dims]);
  const { maxAbs, maxRef, rel } = maxAbsDiff(got.data, want.data);
  console.log(
    `[parity onnx cpu] ${label} ${key}: max|diff| ${maxAbs.toExponential(3)}, max|ref| ${maxRef.toFixed(4)}, diff/max|ref| ${rel.toExponential(3)}`,
  );
  expect(maxAbs).toBeLessThanOrEqual(TOL * maxRef);
}

for (const folder of parityFolders()) {
  const label = basename(folder);
  describe(`ONNX engine parity, cpu provider (${label})`, () => {
    let cases: Cases;
    let engine: OnnxDiffusion;
    const cacheDir = mkdtempSync(join(tmpdir(), 'singlora-onnx-parity-'));

    beforeAll(async () => {
      cases = await Cases.open(folder);
      engine = await OnnxDiffusion.open(join(folder, 'model'), { provider: 'cpu', cacheDir });
    });
    afterAll(async () => {
      await engine?.release();
      await cases?.close();
      rmSync(cacheDir, { recursive: true, force: true });
    });

    it(`onnx ${label}: text encoder (last_hidden_state, pooler, hidden states, clip skip 1 and 2)`, async (ctx) => {
      if (!cases.has('text.input_ids') || !cases.has('text.last_hidden_state'))
        return ctx.skip(skipNote(folder, 'text.* cases'));
      const ids = await cases.getInt('text.input_ids');
      const [b, s] = ids.shape;
      const rows = Array.from({ length: b }, (_, i) => Array.from(ids.data.subarray(i * s, (i + 1) * s)));
      const out = await engine.encodeText(rows);
      check(label, 'text.last_hidden_state', out.lastHiddenState, await cases.get('text.last_hidden_state'));
      check(
        label,
        'text.last_hidden_state (prompt_embeds, no skip)',
        out.promptEmbeds,
        await cases.get('text.last_hidden_state'),
      );
      if (cases.has('text.pooler_output'))
        check(label, 'text.pooler_output', out.pooler, await cases.get('text.pooler_output'));
      if (cases.has('text.hidden_states'))
        check(label, 'text.hidden_states', out.hiddenStates, await cases.get('text.hidden_states'));
      for (const skip of [1, 2]) {
        const key = `text.encode_prompt.clip_skip${skip}`;
        if (!cases.has(key)) continue;
        check(label, key, (await engine.encodeText(rows, skip)).promptEmbeds, await cases.get(key));
      }
    });

    for (const [key, tkey] of [
      ['unet.out', 'unet.timestep'],
      ['unet.out_frac', 'unet.timestep_frac'],
    ] as const) {
      it(`onnx ${label}: ${key}`, async (ctx) => {
        if (!cases.has(key) || !cases.has(tkey) || !cases.has('unet.sample'))
          return ctx.skip(skipNote(folder, `${key} / ${tkey} case`));
        const t = await cases.get(tkey);
        const sample = nhwc(await cases.get('unet.sample'));
        const out = await engine.predictNoise(
          sample,
          Array.from(t.data),
          nhwc(await cases.get('unet.encoder_hidden_states')),
        );
        check(label, key, out, await cases.get(key));
      });
    }

    it(`onnx ${label}: unet.out with plain-op attention (MatMul/Softmax/MatMul) as well as the fused MultiHeadAttention`, async (ctx) => {
      if (!cases.has('unet.out') || !cases.has('unet.sample')) return ctx.skip(skipNote(folder, 'unet.out case'));
      const plain = await OnnxDiffusion.open(join(folder, 'model'), { provider: 'cpu', cacheDir, attention: 'plain' });
      try {
        const t = await cases.get('unet.timestep');
        const out = await plain.predictNoise(
          nhwc(await cases.get('unet.sample')),
          Array.from(t.data),
          nhwc(await cases.get('unet.encoder_hidden_states')),
        );
        check(label, 'unet.out (plain attention)', out, await cases.get('unet.out'));
      } finally {
        await plain.release();
      }
    });

    it(`onnx ${label}: vae encode (mean, logvar, std) and decode`, async (ctx) => {
      if (!cases.has('vae.encode.in') || !cases.has('vae.decode.in')) return ctx.skip(skipNote(folder, 'vae.* cases'));
      const enc = await engine.encode(nhwc(await cases.get('vae.encode.in')));
      check(label, 'vae.encode.mean', enc.mean, await cases.get('vae.encode.mean'));
      check(label, 'vae.encode.logvar', enc.logvar, await cases.get('vae.encode.logvar'));
      check(label, 'vae.encode.std', enc.std, await cases.get('vae.encode.std'));
      check(
        label,
        'vae.decode.out',
        await engine.decode(nhwc(await cases.get('vae.decode.in'))),
        await cases.get('vae.decode.out'),
      );
    });
  });
}

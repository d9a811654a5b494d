/**
 * Adapters on a real UNet (tiny-a): exports are exact by the formulas, a kohya file written by
 * the exporter goes through the kohya importer to the same merged weights, merged exports hold
 * W0 + dW, other tools' files report what they could not apply, and generation with an adapter
 * changes the image and restores the base weights.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readAdapterFile, saveAdapter } from '../../src-main/engine/adapters/adapterFile.ts';
import { AdapterSet, defaultAdapterSpec } from '../../src-main/engine/adapters/adapterSet.ts';
import { kohyaMetadata } from '../../src-main/engine/adapters/export.ts';
import { exportAdapter, inspectAdapter } from '../../src-main/engine/adapters/exportAdapter.ts';
import { planAdapter } from '../../src-main/engine/adapters/import.ts';
import { WeightPatcher } from '../../src-main/engine/adapters/patch.ts';
import { readAllFloat32, writeSafetensors } from '../../src-main/engine/io/safetensors.ts';
import { openBaseModel } from '../../src-main/engine/io/modelFiles.ts';
import { UNet2DConditionModel } from '../../src-main/engine/models/unet2dCondition.ts';
import { StableDiffusion } from '../../src-main/engine/pipeline/stableDiffusion.ts';
import { textToImage } from '../../src-main/engine/pipeline/textToImage.ts';
import { Rng } from '../../src-main/engine/random.ts';
import { useBackend } from '../helpers/backend.ts';
import { FIXTURES } from '../helpers/fixtures.ts';
import { tempDir } from '../helpers/tempDir.ts';

useBackend('wasm');
const base = join(FIXTURES, 'tiny-a/model');
const dir = tempDir('tinya-adapters');
const native = join(dir, 'adapter.safetensors');
let unet: UNet2DConditionModel;
let merged: Map<string, Float32Array>;

async function weights(): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [k, p] of unet.namedParams()) out.set(k, (await p.checkpointValue().data()) as Float32Array);
  return out;
}

beforeAll(async () => {
  unet = await UNet2DConditionModel.load(join(base, 'unet'));
  const set = AdapterSet.inject(unet, defaultAdapterSpec({ rank: 4, alpha: 6, rampSteps: 10, initStd: 0.2 }), {
    rng: new Rng(11),
  });
  await saveAdapter(native, set, {
    trainedSteps: 5,
    triggerToken: 'sks',
    classWord: 'dog',
    baseModelName: 'tiny-a',
    baseModelUnetSha256: '0'.repeat(64),
    resolution: 64,
  });
  set.merge(5);
  merged = await weights();
  set.remove();
});
afterAll(() => unet.dispose());

describe('exports of a random adapter on tiny-a', () => {
  it('kohya: down = A[:d_in]^T, up = A[:d_out], alpha = alpha * u, exactly', async () => {
    const f = await readAdapterFile(native);
    expect(f.meta.effective_u).toBe(0.5);
    const out = join(dir, 'kohya.safetensors');
    await exportAdapter({ adapter: native, format: 'kohya', out });
    const { tensors, metadata } = await readAllFloat32(out);
    expect(metadata).toMatchObject({
      ss_network_module: 'networks.lora',
      ss_network_dim: '4',
      ss_network_alpha: '3',
      ss_base_model_version: 'sd_v1',
      ss_resolution: '(64, 64)',
      // ModelSpec as kohya's sd-scripts writes it for an SD 1 LoRA (issue 27 item 39)
      'modelspec.sai_model_spec': '1.0.1',
      'modelspec.architecture': 'stable-diffusion-v1/lora',
      'modelspec.implementation': 'diffusers',
      'modelspec.resolution': '64x64',
      'modelspec.prediction_type': 'epsilon',
    });
    // A file that does not record its resolution gets kohya's SD 1 default.
    expect(kohyaMetadata({ ...f, meta: { ...f.meta, resolution: undefined } }, out)['modelspec.resolution']).toBe(
      '512x512',
    );
    expect(tensors.size).toBe(48 * 3);
    for (const [path, entry] of f.targets) {
      const [dOut, dIn] = f.meta.target_shapes[path];
      const A = entry.singlora_A.data;
      const name = `lora_unet_${path.replace(/\./g, '_')}`;
      const down = tensors.get(`${name}.lora_down.weight`)!;
      const up = tensors.get(`${name}.lora_up.weight`)!;
      expect(down.shape).toEqual([4, dIn]);
      expect(up.shape).toEqual([dOut, 4]);
      for (let i = 0; i < dIn; i++) for (let j = 0; j < 4; j++) expect(down.data[j * dIn + i]).toBe(A[i * 4 + j]);
      expect(up.data).toEqual(A.slice(0, dOut * 4));
      expect(tensors.get(`${name}.alpha`)!.data[0]).toBe(3);
    }
  });

  it('kohya and diffusers exports import to the merged weights (1e-6 relative); the native file too', async () => {
    for (const format of ['kohya', 'diffusers', 'singlora'] as const) {
      const out = join(dir, `rt-${format}.safetensors`);
      await exportAdapter({ adapter: native, format, out });
      const plan = await planAdapter(out, { unet });
      expect(plan.report.appliedTensors).toBe(plan.report.totalTensors);
      expect(plan.report.summary).toMatch(/applied \d+ of \d+ tensors to 48 modules/);
      const patcher = new WeightPatcher();
      plan.applyTo({ unet }, patcher);
      const got = await weights();
      let worst = 0;
      for (const [k, v] of merged) {
        const g = got.get(k)!;
        let maxAbs = 0;
        let maxRef = 0;
        for (let i = 0; i < v.length; i++) {
          maxAbs = Math.max(maxAbs, Math.abs(g[i] - v[i]));
          maxRef = Math.max(maxRef, Math.abs(v[i]));
        }
        worst = Math.max(worst, maxAbs / maxRef);
      }
      expect(worst, format).toBeLessThan(1e-6);
      patcher.restore();
      plan.dispose();
    }
  });

  it('merged exports hold W0 + dW: a complete diffusers pipeline folder and a single-file checkpoint', async () => {
    const r0 = await exportAdapter({ adapter: native, format: 'merged-diffusers', base, out: join(dir, 'merged') });
    expect(r0.path).toBe(join(dir, 'merged'));
    // The whole pipeline loads: unet/ merged, the rest the base's.
    const pipeline = await openBaseModel(join(dir, 'merged'));
    expect(pipeline.format).toBe('diffusers');
    await pipeline.close();
    expect(readdirSync(join(dir, 'merged')).sort()).toEqual(readdirSync(base).sort());
    expect(readFileSync(join(dir, 'merged/vae/diffusion_pytorch_model.safetensors'))).toEqual(
      readFileSync(join(base, 'vae/diffusion_pytorch_model.safetensors')),
    );
    const folderUnet = await UNet2DConditionModel.load(join(dir, 'merged/unet'));
    for (const [k, p] of folderUnet.namedParams())
      expect((await p.checkpointValue().data()) as Float32Array, k).toEqual(merged.get(k));
    folderUnet.dispose();
    const single = join(dir, 'merged.safetensors');
    const r = await exportAdapter({ adapter: native, format: 'merged-single-file', base, out: single });
    expect(r.tensors).toBeGreaterThan(300);
    const { tensors } = await readAllFloat32(single);
    expect([...tensors.keys()].some((k) => k.startsWith('first_stage_model.'))).toBe(true);
    expect([...tensors.keys()].some((k) => k.startsWith('cond_stage_model.transformer.text_model.'))).toBe(true);
    expect(tensors.get('model.diffusion_model.out.2.weight')!.data).toEqual(merged.get('conv_out.weight'));
  });

  it('issue 27 item 31: an existing out is refused (overwrite replaces it), a kohya file is named for what it is, a merged pipeline copies only its components, and names its adapter by sha256', async () => {
    const out = join(dir, 'taken.safetensors');
    writeFileSync(out, 'mine');
    await expect(exportAdapter({ adapter: native, format: 'kohya', out })).rejects.toThrow(
      /taken\.safetensors already exists; choose another name or delete it first/,
    );
    expect(readFileSync(out, 'utf8')).toBe('mine');
    await exportAdapter({ adapter: native, format: 'kohya', out, overwrite: true });
    expect((await readAllFloat32(out)).tensors.size).toBe(48 * 3);

    const foreign = exportAdapter({ adapter: out, format: 'singlora', out: join(dir, 'from-kohya.safetensors') });
    await expect(foreign).rejects.toThrow(
      /taken\.safetensors is a kohya LoRA \(A1111, ComfyUI and kohya load it as it is\), not an adapter trained here/,
    );
    await expect(foreign).rejects.not.toThrow(/format_version/);

    // A base folder with more than its pipeline (the toy model ships a BUILD.md).
    const noted = join(dir, 'noted-base');
    mkdirSync(noted);
    for (const e of readdirSync(base)) symlinkSync(join(base, e), join(noted, e));
    writeFileSync(join(noted, 'BUILD.md'), 'how this model was made');
    const merged = join(dir, 'merged-noted');
    await exportAdapter({ adapter: native, format: 'merged-diffusers', base: noted, out: merged });
    expect(readdirSync(merged).sort()).toEqual(readdirSync(base).sort());
    const { metadata } = await readAllFloat32(join(merged, 'unet', 'diffusion_pytorch_model.safetensors'));
    const sha = createHash('sha256').update(readFileSync(native)).digest('hex');
    expect(metadata).toMatchObject({ merged_adapter: `sha256:${sha}`, merged_adapter_steps: '5' });
  });

  it('inspect describes native and kohya files', async () => {
    const n = await inspectAdapter(native);
    expect(n).toMatchObject({ format: 'native', method: 'singlora', rank: 4, targets: 48 });
    const k = await inspectAdapter(join(dir, 'kohya.safetensors'));
    expect(k).toMatchObject({ format: 'kohya', rank: 4, targets: 48, alpha: 3 });
  });
});

describe('LoRA files from other tools', () => {
  it('applies kohya text-encoder and LoCon tensors, and lists what it could not apply (tfjs engine)', async () => {
    const sd = await StableDiffusion.load(base, { engine: 'tfjs' });
    try {
      const rng = new Rng(4);
      const t = (shape: number[]) => ({
        shape,
        data: rng.normal(shape.reduce((a, b) => a * b, 1)).map((v) => v * 0.05),
      });
      const file = join(dir, 'other-tool.safetensors');
      await writeSafetensors(file, {
        'lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight': t([2, 32]),
        'lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight': t([32, 2]),
        'lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha': { shape: [], data: Float32Array.of(1) },
        'lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight': t([2, 32, 3, 3]),
        'lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight': t([32, 2, 1, 1]),
        'lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.hada_w1_a': t([2, 2]),
        'lora_unet_not_a_module.lora_down.weight': t([2, 8]),
        'lora_unet_not_a_module.lora_up.weight': t([8, 2]),
      });
      const before = await (await sd.encodePrompts(['a photo of sks dog'])).data();
      const [img0] = await textToImage(sd, {
        prompt: 'a photo of sks dog',
        steps: 2,
        guidanceScale: 7.5,
        scheduler: 'ddim',
        seed: 3,
        width: 64,
        height: 64,
      });
      const request = {
        prompt: 'a photo of sks dog',
        steps: 2,
        guidanceScale: 7.5,
        scheduler: 'ddim' as const,
        seed: 3,
        width: 64,
        height: 64,
      };
      // Three of its tensors cannot be used: an error unless partial use is asked for.
      await expect(textToImage(sd, { ...request, adapters: [{ path: file, strength: 1 }] })).rejects.toThrow(
        /other-tool\.safetensors: only 5 of 8 tensors can be applied/,
      );
      const reports: string[] = [];
      const [img1] = await textToImage(
        sd,
        {
          prompt: 'a photo of sks dog',
          steps: 2,
          guidanceScale: 7.5,
          scheduler: 'ddim',
          seed: 3,
          width: 64,
          height: 64,
          adapters: [{ path: file, strength: 1, allowPartial: true }],
        },
        {
          onAdapters: (r) =>
            reports.push(
              ...r.map((x) => `${x.summary}\n${x.unapplied.map((u) => `${u.key}: ${u.reason}`).join('\n')}`),
            ),
        },
      );
      expect(reports[0]).toMatch(/applied 5 of 8 tensors to 2 modules/);
      expect(reports[0]).toMatch(/hada_w1_a: .*LoHa/);
      expect(reports[0]).toMatch(
        /lora_unet_not_a_module\.lora_down\.weight: no Linear or Conv2d named 'not_a_module' in the unet/,
      );
      expect(img1.pixels).not.toEqual(img0.pixels);
      // and the base weights are restored afterwards
      expect(await (await sd.encodePrompts(['a photo of sks dog'])).data()).toEqual(before);
      const [img2] = await textToImage(sd, {
        prompt: 'a photo of sks dog',
        steps: 2,
        guidanceScale: 7.5,
        scheduler: 'ddim',
        seed: 3,
        width: 64,
        height: 64,
      });
      expect(img2.pixels).toEqual(img0.pixels);
    } finally {
      sd.dispose();
    }
  });
});

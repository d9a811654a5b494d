/**
 * Training guards and options (wasm): the NaN guard, gradient checkpointing, prior preservation,
 * bad photos, min-SNR weighting.
 */
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { makeSubjectPhotos } from '../../scripts/make-tiny-model.ts';
import { readAllFloat32, writeSafetensors } from '../../src-main/engine/io/safetensors.ts';
import { loadDataset } from '../../src-main/engine/train/dataset.ts';
import { readRunManifest } from '../../src-main/engine/train/runFiles.ts';
import { lossWeight, train } from '../../src-main/engine/train/trainer.ts';
import type { TrainEvent } from '../../src-main/api/schemas.ts';
import { useBackend } from '../helpers/backend.ts';
import { adapterValues, fast, TINY_A, trainingSandbox } from '../helpers/training.ts';

useBackend('wasm');

const { root, photos, makePhotos, newRun } = trainingSandbox('train-guards');
beforeAll(makePhotos);

describe('training', () => {
  it('a VAE that yields NaN (as SD 1.5 VAE does in float16) stops the run and keeps the last good checkpoint', async () => {
    const model = join(root, 'nan-model');
    cpSync(TINY_A, model, { recursive: true });
    const runDir = newRun();
    const controller = new AbortController();
    const first = await train(
      { base: model, photos, runDir, settings: fast({ steps: 6, checkpointEvery: 1 }) },
      { signal: controller.signal, onEvent: (e) => e.event === 'step' && e.step === 2 && controller.abort('pause') },
    );
    expect(first.manifest.checkpoints.map((c) => c.step)).toEqual([1, 2]);
    // Now the VAE goes bad: one NaN in its first convolution.
    const vaeFile = join(model, 'vae/diffusion_pytorch_model.safetensors');
    const { tensors, metadata } = await readAllFloat32(vaeFile);
    tensors.get('encoder.conv_in.weight')!.data[0] = NaN;
    await writeSafetensors(vaeFile, tensors, metadata);
    const resumed = await train({ base: model, photos, runDir, settings: {}, resume: true });
    expect(resumed.manifest.status).toBe('failed');
    expect(resumed.manifest.error).toMatch(/loss became NaN at step 3.*last good checkpoint \(step 2\) is kept/);
    const m = await readRunManifest(runDir);
    expect(m.status).toBe('failed');
    expect(m.checkpoints.map((c) => c.step)).toEqual([1, 2]);
    expect((await adapterValues(runDir, 2)).size).toBeGreaterThan(0);
    expect(existsSync(join(runDir, 'checkpoints/step-000003'))).toBe(false);
  });

  it('a run that throws ends with a done event saying failed, at the step it stands at, before the error is thrown on', async () => {
    const model = join(root, 'changed-model');
    cpSync(TINY_A, model, { recursive: true });
    const runDir = newRun();
    const controller = new AbortController();
    await train(
      { base: model, photos, runDir, settings: fast({ steps: 6, checkpointEvery: 1 }) },
      { signal: controller.signal, onEvent: (e) => e.event === 'step' && e.step === 2 && controller.abort('pause') },
    );
    // Another UNet under the same path: resuming must refuse, and say so to its listener.
    const unetFile = join(model, 'unet/diffusion_pytorch_model.safetensors');
    const { tensors, metadata } = await readAllFloat32(unetFile);
    tensors.get('conv_in.bias')!.data[0] += 1;
    await writeSafetensors(unetFile, tensors, metadata);
    const events: TrainEvent[] = [];
    const error = await train(
      { base: model, photos, runDir, settings: {}, resume: true },
      { onEvent: (e) => events.push(e) },
    ).then(
      () => null,
      (err: Error) => err.message,
    );
    expect(error).toMatch(/resume with the same base model/);
    expect(events[0]).toMatchObject({ event: 'prepare', stage: 'load-model' });
    expect(events[events.length - 1]).toEqual({ event: 'done', status: 'failed', step: 2, error });
    expect(events.filter((e) => e.event === 'done')).toHaveLength(1);
  });

  it('gradient checkpointing trains to the same adapter within float noise', async () => {
    const plain = newRun();
    const ckpt = newRun();
    await train({ base: TINY_A, photos, runDir: plain, settings: fast({ steps: 3 }) });
    await train({ base: TINY_A, photos, runDir: ckpt, settings: fast({ steps: 3, gradientCheckpointing: true }) });
    const a = await adapterValues(plain, 3);
    const b = await adapterValues(ckpt, 3);
    let worst = 0;
    for (const [k, v] of a) {
      const w = b.get(k)!;
      for (let i = 0; i < v.length; i++) worst = Math.max(worst, Math.abs(v[i] - w[i]));
    }
    // The bound, from what AdamW does with float noise: a step moves each parameter by
    // lr * m_hat / (sqrt(v_hat) + eps), at most about lr. Recomputing the forward in the backward
    // sums the same float32 terms in another order, which perturbs each gradient component by a
    // relative delta; Adam's normalisation passes that on as about lr * delta per step (more
    // than the gradient's own relative error, since small components are divided by their own
    // size). With delta up to 1e-3 for sums of ~10^4 float32 terms with cancellation, three
    // steps differ by at most 3 * lr * 1e-3 (lr = 1e-2: 3e-5); a real defect in the recomputation
    // (a wrong block, a stale activation) moves parameters by the order of lr itself.
    const steps = 3;
    const lr = fast().learningRate as number;
    console.log(
      `gradient checkpointing vs plain after ${steps} steps: max |diff| ${worst.toExponential(2)} (bound ${(steps * lr * 1e-3).toExponential(1)})`,
    );
    expect(worst).toBeLessThan(steps * lr * 1e-3);
  });

  it('prior preservation generates class images once and reuses them', async () => {
    const cache = join(root, 'class-cache');
    const settings = fast({ steps: 2, checkpointEvery: 2, priorPreservation: true, numClassImages: 2 });
    const r1 = await train({ base: TINY_A, photos, runDir: newRun(), settings, classImagesCacheDir: cache });
    expect(r1.manifest.status).toBe('completed');
    const [key] = readdirSync(cache);
    const files = readdirSync(join(cache, key)).sort();
    expect(files).toEqual(['class-00000.png', 'class-00001.png']);
    const mtimes = files.map((f) => statSync(join(cache, key, f)).mtimeMs);
    const stages: string[] = [];
    const r2 = await train(
      { base: TINY_A, photos, runDir: newRun(), settings, classImagesCacheDir: cache },
      { onEvent: (e) => e.event === 'prepare' && e.detail && stages.push(e.detail) },
    );
    expect(r2.manifest.status).toBe('completed');
    expect(files.map((f) => statSync(join(cache, key, f)).mtimeMs)).toEqual(mtimes);
    expect(stages.some((s) => /^\d+\/\d+$/.test(s))).toBe(false); // nothing was generated the second time
  });
});

describe('subject photos', () => {
  it('rejects bad files with a reason each and keeps the good ones', async () => {
    const dir = join(root, 'mixed');
    mkdirSync(dir);
    await makeSubjectPhotos(dir, 3);
    copyFileSync(join(dir, 'subject-1.png'), join(dir, 'subject-copy.png'));
    writeFileSync(join(dir, 'notes.png'), 'this is not an image');
    writeFileSync(
      join(dir, 'phone.heic'),
      Buffer.concat([Buffer.from([0, 0, 0, 0x18]), Buffer.from('ftypheic'), Buffer.alloc(32)]),
    );
    const { encodeImage } = await import('../../src-main/engine/image/sharp.ts');
    writeFileSync(
      join(dir, 'tiny.png'),
      await encodeImage({ data: new Uint8Array(20 * 20 * 3).fill(128), width: 20, height: 20 }, 'png'),
    );
    writeFileSync(
      join(dir, 'small.png'),
      await encodeImage({ data: new Uint8Array(40 * 50 * 3).fill(90), width: 40, height: 50 }, 'png'),
    );
    writeFileSync(join(dir, 'subject-2.txt'), 'a photo of sks ball on grass');

    const ds = await loadDataset(dir, {
      resolution: 64,
      crop: 'center',
      flip: true,
      instancePrompt: 'a photo of sks ball',
    });
    const byName = Object.fromEntries(ds.checks.map((c) => [c.file.split('/').pop(), c]));
    expect(byName['notes.png'].status).toBe('rejected');
    expect(byName['notes.png'].reason).toMatch(/not a readable image/);
    expect(byName['phone.heic'].reason).toMatch(/HEIC/);
    expect(byName['tiny.png'].reason).toMatch(/too small: 20x20.*at least 32/);
    expect(byName['small.png'].status).toBe('warning');
    expect(byName['small.png'].reason).toMatch(/upscaled/);
    expect(byName['subject-copy.png'].reason).toBe('exact duplicate of subject-1.png');
    expect(byName['subject-1.png'].status).toBe('ok');
    expect(ds.images).toHaveLength(4 * 2); // 3 subjects + small, each with its flip
    expect(ds.images.every((i) => i.image.width === 64 && i.image.height === 64)).toBe(true);
    expect(ds.images.find((i) => i.file.endsWith('subject-2.png'))!.caption).toBe('a photo of sks ball on grass');
    expect(ds.images.find((i) => i.file.endsWith('subject-1.png'))!.caption).toBe('a photo of sks ball');
  });

  it('fails clearly when no photo is usable, and warns under 3', async () => {
    const dir = join(root, 'bad-only');
    mkdirSync(dir);
    writeFileSync(join(dir, 'a.jpg'), 'nope');
    await expect(
      loadDataset(dir, { resolution: 64, crop: 'center', flip: false, instancePrompt: 'x' }),
    ).rejects.toThrow(/no usable subject photos[\s\S]*a\.jpg: not a readable image/);
    const two = join(root, 'two');
    await makeSubjectPhotos(two, 2);
    const ds = await loadDataset(two, { resolution: 64, crop: 'attention', flip: false, instancePrompt: 'x' });
    expect(ds.warnings.join(' ')).toMatch(/only 2 usable photos/);
  });
});

describe('min-SNR weighting', () => {
  it('is min(SNR, gamma) / SNR for epsilon and / (SNR + 1) for v-prediction', () => {
    expect(lossWeight(0.5, null, false)).toBe(1);
    expect(lossWeight(0.5, 5, false)).toBe(1); // SNR 1 < 5
    expect(lossWeight(0.99, 5, false)).toBeCloseTo(5 / 99, 10);
    expect(lossWeight(0.99, 5, true)).toBeCloseTo(5 / 100, 10);
  });
});

/**
 * `train` on the ONNX Runtime training engine (CPU provider): a run checkpoints adapters in the
 * same file format, samples previews with the trained adapter, resumes exactly (2 + resume + 2 steps give the adapter of 4 straight steps,
 * the optimizer moments and the random stream restored), and stays close to the TensorFlow.js
 * engine over the same steps (same initial adapters, same random draws).
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readRunManifest } from '../../src-main/engine/train/runFiles.ts';
import { train } from '../../src-main/engine/train/trainer.ts';
import { useBackend } from '../helpers/backend.ts';
import { adapterValues, expectSameRun, fast, TINY_A, trainingSandbox } from '../helpers/training.ts';

useBackend('wasm');

const { photos, makePhotos, newRun } = trainingSandbox('train-onnx');
const onnxCacheDir = mkdtempSync(join(tmpdir(), 'train-onnx-cache-'));
beforeAll(makePhotos);
afterAll(() => rmSync(onnxCacheDir, { recursive: true, force: true }));

const settings = fast({ steps: 4, checkpointEvery: 2, learningRate: 1e-3 });
const onnx = {
  engine: 'onnx' as const,
  provider: 'cpu' as const,
  onnxCacheDir,
  baseOptions: { engine: 'onnx' as const },
};

describe('training on ONNX Runtime', () => {
  it('resumes exactly: 2 + resume + 2 steps give the adapter of 4 straight steps', async () => {
    const straight = newRun();
    const full = await train({ base: TINY_A, photos, runDir: straight, settings, ...onnx });
    expect(full.manifest.status).toBe('completed');
    expect(full.fixedLoss?.start).toBeGreaterThan(0);
    const split = newRun();
    const controller = new AbortController();
    const first = await train(
      { base: TINY_A, photos, runDir: split, settings, ...onnx },
      { signal: controller.signal, onEvent: (e) => e.event === 'step' && e.step === 2 && controller.abort('pause') },
    );
    expect(first.manifest.status).toBe('paused');
    const resumed = await train({ base: TINY_A, photos, runDir: split, settings: {}, resume: true, ...onnx });
    expect(resumed.manifest.step).toBe(4);
    const m1 = await expectSameRun(straight, split, 4);
    expect(m1.backend).toBe('onnx');
  });

  it('follows the TensorFlow.js engine: the same losses and adapters within float noise', async () => {
    const viaOnnx = newRun();
    const viaTfjs = newRun();
    // With a preview at the last step (the training session released, the inference UNet sampling with the synced adapter).
    await train({
      base: TINY_A,
      photos,
      runDir: viaOnnx,
      settings: { ...settings, sampleEvery: 4, sampleSteps: 2 },
      ...onnx,
    });
    const samples = (await readRunManifest(viaOnnx)).samples;
    expect(samples.map((x) => x.step)).toEqual([4, 4]);
    for (const x of samples) expect(existsSync(join(viaOnnx, x.file)), x.file).toBe(true);
    await train({ base: TINY_A, photos, runDir: viaTfjs, settings, engine: 'tfjs', baseOptions: { engine: 'onnx' } });
    const l1 = (await readRunManifest(viaOnnx)).losses.map((l) => l.loss);
    const l2 = (await readRunManifest(viaTfjs)).losses.map((l) => l.loss);
    l1.forEach((l, i) => expect(Math.abs(l - l2[i]) / l2[i], `loss at step ${i + 1}`).toBeLessThanOrEqual(1e-4));
    // AdamW moves each element by about lr per step whatever the gradient's size, so float noise in
    // a tiny gradient can flip an element's step: the bound is steps * lr * 1e-3 (train.guards.test.ts).
    const a = await adapterValues(viaOnnx, 4);
    const b = await adapterValues(viaTfjs, 4);
    let worst = 0;
    for (const [k, v] of a) for (let i = 0; i < v.length; i++) worst = Math.max(worst, Math.abs(v[i] - b.get(k)![i]));
    const lossRel = Math.max(...l1.map((l, i) => Math.abs(l - l2[i]) / l2[i]));
    console.log(
      `[train onnx vs tfjs] worst loss rel ${lossRel.toExponential(2)}, worst adapter |diff| ${worst.toExponential(2)}`,
    );
    expect(worst).toBeLessThanOrEqual(4 * 1e-3 * 1e-3 * 10);
  });
});

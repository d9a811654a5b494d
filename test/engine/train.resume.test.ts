/**
 * Training runs that stop and continue (wasm): exact resume, determinism, cancel, no leaks.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { TrainEvent } from '../../src-main/api/schemas.ts';
import { tf } from '../../src-main/engine/backend/tf.ts';
import { readRunManifest } from '../../src-main/engine/train/runFiles.ts';
import { train } from '../../src-main/engine/train/trainer.ts';
import { useBackend } from '../helpers/backend.ts';
import { adapterValues, expectSameRun, fast, TINY_A, trainingSandbox } from '../helpers/training.ts';

useBackend('wasm');

const { photos, makePhotos, newRun } = trainingSandbox('train-resume');
beforeAll(makePhotos);

describe('training', () => {
  it('resumes exactly: 3 + resume + 3 steps give the adapter of 6 straight steps', async () => {
    const straight = newRun();
    await train({ base: TINY_A, photos, runDir: straight, settings: fast() });
    const split = newRun();
    const controller = new AbortController();
    const first = await train(
      { base: TINY_A, photos, runDir: split, settings: fast() },
      { signal: controller.signal, onEvent: (e) => e.event === 'step' && e.step === 3 && controller.abort('pause') },
    );
    expect(first.manifest.status).toBe('paused');
    expect(first.manifest.checkpoints.map((c) => c.step)).toEqual([3]);
    const resumed = await train({ base: TINY_A, photos, runDir: split, settings: {}, resume: true });
    expect(resumed.manifest.status).toBe('completed');
    expect(resumed.manifest.step).toBe(6);
    await expectSameRun(straight, split, 6);
  });

  it('the same seed, data and backend give the same adapter', async () => {
    const r1 = newRun();
    const r2 = newRun();
    await train({ base: TINY_A, photos, runDir: r1, settings: fast({ steps: 3 }) });
    await train({ base: TINY_A, photos, runDir: r2, settings: fast({ steps: 3 }) });
    expect(await adapterValues(r2, 3)).toEqual(await adapterValues(r1, 3));
  });

  it('cancel stops after the current step and keeps a checkpoint; nothing leaks', async () => {
    const runDir = newRun();
    const controller = new AbortController();
    const tensors: number[] = [];
    const before = tf.memory().numTensors;
    const { manifest } = await train(
      { base: TINY_A, photos, runDir, settings: fast({ steps: 20, checkpointEvery: 10 }) },
      {
        signal: controller.signal,
        onEvent: (e: TrainEvent) => {
          if (e.event !== 'step') return;
          tensors.push(e.memory.tensors);
          if (e.step === 4) controller.abort('cancel');
        },
      },
    );
    expect(tf.memory().numTensors).toBe(before);
    expect(new Set(tensors).size).toBe(1); // no tensor count growth from step to step
    expect(manifest.status).toBe('cancelled');
    expect(manifest.step).toBe(4);
    expect(manifest.checkpoints.map((c) => c.step)).toEqual([4]);
    expect((await readRunManifest(runDir)).status).toBe('cancelled');
  });
});

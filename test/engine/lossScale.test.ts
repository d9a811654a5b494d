/**
 * The float16 loss scale (train/lossScale.ts) and the ONNX step's retry on overflow
 * (`onnxTrainStep`, train/onnxStep.ts), on a stand-in session whose gradients overflow above a
 * chosen scale: what a float16 graph does when S dL/dpred exceeds float16's range.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { OnnxSession, SessionTensor } from '../../src-main/engine/backend/onnxRuntime.ts';
import { sideGradOutputs } from '../../src-main/engine/onnx/trainStepGraph.ts';
import { Rng } from '../../src-main/engine/random.ts';
import type { DDPMScheduler } from '../../src-main/engine/schedulers/ddpmScheduler.ts';
import { allFinite, LOSS_SCALE_DEFAULTS, LossScale } from '../../src-main/engine/train/lossScale.ts';
import { AdamWArrays, AdapterArrays, onnxTrainStep } from '../../src-main/engine/train/onnxStep.ts';
import { readCheckpoint, writeCheckpoint } from '../../src-main/engine/train/runFiles.ts';

describe('LossScale', () => {
  it("dynamic: PyTorch GradScaler's rule (halve on overflow, double after growthInterval applied steps)", () => {
    const s = LossScale.dynamic(2 ** 4, 3);
    expect(s.scale).toBe(16);
    expect(s.overflowed()).toBe(true);
    expect(s.scale).toBe(8);
    s.applied();
    s.applied();
    expect(s.scale).toBe(8);
    expect(s.overflowed()).toBe(true); // resets the count of good steps
    expect(s.state()).toEqual({ scale: 4, goodSteps: 0 });
    s.applied();
    s.applied();
    s.applied();
    expect(s.state()).toEqual({ scale: 8, goodSteps: 0 });
    const resumed = LossScale.dynamic();
    resumed.load({ scale: 8, goodSteps: 2 });
    resumed.applied();
    expect(resumed.state()).toEqual({ scale: 8, goodSteps: 3 });
  });

  it('fixed (float32): scale 1, never retried, ignores a checkpoint; the dynamic scale has a floor', () => {
    const f = LossScale.fixed();
    expect(f.overflowed()).toBe(false);
    f.applied();
    f.load({ scale: 1024, goodSteps: 5 });
    expect(f.state()).toEqual({ scale: 1, goodSteps: 0 });
    const d = LossScale.dynamic(LOSS_SCALE_DEFAULTS.minScale * 2);
    expect(d.overflowed()).toBe(true);
    expect(d.overflowed()).toBe(false);
    expect(d.scale).toBe(LOSS_SCALE_DEFAULTS.minScale);
  });

  it('rejects a scale that is not a power of two, naming it', () => {
    expect(() => LossScale.dynamic(1000)).toThrow(/power of two.*1000/);
    expect(() => LossScale.dynamic().load({ scale: 3, goodSteps: 0 })).toThrow(/power-of-two.*"scale":3/);
  });

  it('allFinite', () => {
    expect(allFinite([Float32Array.of(1, 2), Float32Array.of(-3)])).toBe(true);
    expect(allFinite([Float32Array.of(1), Float32Array.of(0, Number.POSITIVE_INFINITY)])).toBe(false);
    expect(allFinite([Float32Array.of(Number.NaN)])).toBe(false);
  });
});

/**
 * A stand-in for the step's session: one 3 -> 2 side path, loss 0.5, gradients `dDown`, `dUp`
 * (as the graph returns them: already divided by S), infinite when S exceeds `overflowAbove`.
 */
function fakeSession(dDown: Float32Array, dUp: Float32Array, overflowAbove: number) {
  const scales: number[] = [];
  const names = sideGradOutputs('l');
  const session = {
    run: async (feeds: Readonly<Record<string, SessionTensor>>) => {
      const S = feeds.loss_scale.data[0] as number;
      scales.push(S);
      const g = (x: Float32Array) => (S > overflowAbove ? x.map(() => Number.POSITIVE_INFINITY) : x.slice());
      return {
        loss: { type: 'float32', data: Float32Array.of(0.5), dims: [] },
        [names.down]: { type: 'float32', data: g(dDown), dims: [3, 1] },
        [names.up]: { type: 'float32', data: g(dUp), dims: [1, 2] },
      } as Record<string, SessionTensor>;
    },
  };
  return { session: session as unknown as OnnxSession, scales };
}

/** A DDPM schedule of 10 steps: enough for `dataFeeds`. */
const SCHEDULER = {
  alphasCumprod: Float32Array.from({ length: 10 }, (_, i) => 1 - 0.05 * (i + 1)),
  config: { predictionType: 'epsilon' },
} as unknown as DDPMScheduler;

const BATCH = {
  latents: { data: new Float32Array(4), dims: [1, 1, 2, 2] },
  noise: { data: new Float32Array(4).fill(1), dims: [1, 1, 2, 2] },
  timesteps: [3],
  context: { data: new Float32Array(2), dims: [1, 1, 2] },
};
const OPTIONS = { step: 0, lr: 1e-3, maxGradNorm: 0, minSnrGamma: null, priorLossWeight: 1, returnGrads: true };

function arrays(): AdapterArrays {
  const rng = new Rng(3, 1);
  return new AdapterArrays(
    { method: 'lora', rank: 1, alpha: 1, rampSteps: 0 },
    [{ path: 'l', inFeatures: 3, outFeatures: 2 }],
    [rng.normal(3), rng.normal(2)],
  );
}

describe('onnxTrainStep with a loss scale', () => {
  const dDown = Float32Array.of(0.25, -0.5, 1);
  const dUp = Float32Array.of(2, -4);

  it('float16: an overflowing step is run again at half the scale until it fits, then applied once', async () => {
    const { session, scales } = fakeSession(dDown, dUp, 1024);
    const adapters = arrays();
    const optimizer = new AdamWArrays(adapters.params);
    const lossScale = LossScale.dynamic();
    const r = await onnxTrainStep({ session, scheduler: SCHEDULER, adapters, optimizer, lossScale }, [BATCH], OPTIONS);
    expect(scales).toEqual([65536, 32768, 16384, 8192, 4096, 2048, 1024]);
    expect(r.applied).toBe(true);
    expect(optimizer.step).toBe(1);
    expect(lossScale.state()).toEqual({ scale: 1024, goodSteps: 1 });
    // LoRA's chain: d loraA = (d down)^T, d loraB = s (d up)^T with s = alpha / r = 1.
    expect(r.grads).toEqual([dDown, dUp]);
  });

  it('float32 (no scaler): non-finite gradients with a finite loss are not applied', async () => {
    const { session, scales } = fakeSession(dDown, dUp, 0);
    const adapters = arrays();
    const before = adapters.params.map((p) => p.slice());
    const optimizer = new AdamWArrays(adapters.params);
    const r = await onnxTrainStep({ session, scheduler: SCHEDULER, adapters, optimizer }, [BATCH], OPTIONS);
    expect(scales).toEqual([1]);
    expect(r.applied).toBe(false);
    expect(r.loss).toBe(0.5);
    expect(optimizer.step).toBe(0);
    adapters.params.forEach((p, i) => expect(p).toEqual(before[i]));
  });
});

describe('checkpoints keep the loss scale', () => {
  it("writeCheckpoint / readCheckpoint: AdamW's moments with the float16 loss scale, and without one (float32)", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'loss-scale-ckpt-'));
    try {
      for (const lossScale of [{ scale: 512, goodSteps: 7 }, undefined]) {
        const optimizer = { step: 4, m: [Float32Array.of(1, 2)], v: [Float32Array.of(3, 4)], lossScale };
        const entry = await writeCheckpoint(
          dir,
          { step: 4, rng: new Rng(1, 1).state(), optimizer, smoothedLoss: 0.25 },
          async (path) => writeFileSync(path, 'adapter'),
          0.25,
        );
        const back = await readCheckpoint(dir, entry);
        expect(back.optimizer).toEqual(optimizer);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

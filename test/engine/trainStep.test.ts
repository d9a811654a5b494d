/**
 * trainStep (train/step.ts) on tiny-a's UNet: gradient accumulation averages, the class-image
 * loss is weighted by lambda, min-SNR weights the loss by min(SNR, gamma) / SNR, and a non-finite
 * loss leaves the adapters alone. Expected values come from separate single-sample steps or from
 * the SNR formula evaluated here, not from the step's own arithmetic. Nothing leaks.
 * (Parity with PyTorch: test/parity/trainStep.parity.test.ts.)
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf, type Tensor } from '../../src-main/engine/backend/tf.ts';
import { AdapterSet, defaultAdapterSpec } from '../../src-main/engine/adapters/adapterSet.ts';
import { UNet2DConditionModel } from '../../src-main/engine/models/unet2dCondition.ts';
import { Rng, randn } from '../../src-main/engine/random.ts';
import { createScheduler, readSchedulerConfig } from '../../src-main/engine/schedulers/index.ts';
import type { DDPMScheduler } from '../../src-main/engine/schedulers/ddpmScheduler.ts';
import { AdamW } from '../../src-main/engine/train/adamw.ts';
import { trainStep, type MicroBatch, type TrainStepOptions } from '../../src-main/engine/train/step.ts';
import { useBackend } from '../helpers/backend.ts';
import { TINY_A } from '../helpers/training.ts';

useBackend('wasm');

const OPTIONS: TrainStepOptions = { step: 3, lr: 1e-3, maxGradNorm: 1, minSnrGamma: null, priorLossWeight: 1 };

describe('trainStep (tiny-a)', () => {
  let unet: UNet2DConditionModel;
  let scheduler: DDPMScheduler;
  let adapters: AdapterSet;
  let initial: Map<string, Float32Array>;
  const owned: Tensor[] = [];
  let a: MicroBatch; // sample 0
  let b: MicroBatch; // sample 1
  let ab: MicroBatch; // both: sample 0 an instance image, sample 1 a class image

  beforeAll(async () => {
    unet = await UNet2DConditionModel.load(join(TINY_A, 'unet'));
    scheduler = createScheduler('ddpm', await readSchedulerConfig(join(TINY_A, 'scheduler', 'scheduler_config.json')));
    adapters = AdapterSet.inject(unet, defaultAdapterSpec({ rank: 4, alpha: 4, rampSteps: 10 }), {
      rng: new Rng(1, 1),
    });
    initial = new Map(
      await Promise.all(adapters.namedTensors().map(async ([n, v]) => [n, (await v.data()) as Float32Array] as const)),
    );
    const rng = new Rng(2);
    const latents = randn(rng, [2, 8, 8, 4]);
    const noise = randn(rng, [2, 8, 8, 4]);
    const context = randn(rng, [2, 77, 32]);
    const one = (i: number) => tf.tidy(() => [latents, noise, context].map((t) => t.slice([i], [1])));
    const [la, na, ca] = one(0);
    const [lb, nb, cb] = one(1);
    owned.push(latents, noise, context, la, na, ca, lb, nb, cb);
    a = { latents: la, noise: na, context: ca, timesteps: [100] };
    b = { latents: lb, noise: nb, context: cb, timesteps: [700] };
    ab = { latents, noise, context, timesteps: [100, 700], instances: 1 };
  });
  afterAll(() => {
    adapters?.remove();
    unet?.dispose();
    tf.dispose(owned);
  });

  /** One step from the initial adapter values and fresh optimizer moments. */
  async function stepFromStart(batches: MicroBatch[], over: Partial<TrainStepOptions> = {}) {
    adapters.assign(initial);
    const optimizer = new AdamW(adapters.variables());
    try {
      const before = tf.memory().numTensors;
      const result = await trainStep({ unet, scheduler, adapters, optimizer }, batches, {
        ...OPTIONS,
        ...over,
        returnGrads: true,
      });
      expect(tf.memory().numTensors, 'tensors left behind by trainStep').toBe(before);
      const after = await Promise.all(adapters.variables().map(async (v) => (await v.data()) as Float32Array));
      return { ...result, after };
    } finally {
      optimizer.dispose();
    }
  }

  it('two identical micro-batches give the one-micro-batch step (accumulation averages)', async () => {
    const once = await stepFromStart([a]);
    const twice = await stepFromStart([a, a]);
    expect(once.applied).toBe(true);
    expect(twice.loss).toBeCloseTo(once.loss, 6);
    expect(twice.gradNorm).toBeCloseTo(once.gradNorm, 9);
    for (const [i, p] of once.after.entries())
      expect(Array.from(twice.after[i]), `adapter tensor ${i}`).toEqual(Array.from(p));
  });

  it('with class images: loss = instance loss + lambda * class loss', async () => {
    const inst = await stepFromStart([a]);
    const cls = await stepFromStart([b]);
    for (const lambda of [0, 1, 0.25]) {
      const both = await stepFromStart([ab], { priorLossWeight: lambda });
      expect(both.loss, `lambda ${lambda}`).toBeCloseTo(inst.loss + lambda * cls.loss, 5);
    }
  });

  it('min-SNR-gamma scales the loss by min(SNR, gamma) / SNR, SNR = abar / (1 - abar)', async () => {
    const plain = await stepFromStart([b]);
    const abar = scheduler.alphasCumprod[700];
    const snr = abar / (1 - abar);
    const gamma = snr / 2; // min(SNR, gamma) / SNR = 1/2
    const weighted = await stepFromStart([b], { minSnrGamma: gamma });
    expect(weighted.loss).toBeCloseTo(plain.loss / 2, 6);
    expect(weighted.gradNorm / plain.gradNorm).toBeCloseTo(0.5, 5);
  });

  it('a non-finite loss makes no update and leaks nothing', async () => {
    const bad = tf.fill([1, 8, 8, 4], NaN);
    try {
      const r = await stepFromStart([{ ...a, latents: bad }]);
      expect(r.applied).toBe(false);
      expect(Number.isNaN(r.loss)).toBe(true);
      const names = adapters.namedTensors().map(([n]) => n);
      for (const [i, p] of r.after.entries())
        expect(Array.from(p), names[i]).toEqual(Array.from(initial.get(names[i])!));
    } finally {
      bad.dispose();
    }
  });

  it('names the mismatch between timesteps and samples', async () => {
    adapters.assign(initial);
    const optimizer = new AdamW(adapters.variables());
    await expect(
      trainStep({ unet, scheduler, adapters, optimizer }, [{ ...a, timesteps: [1, 2] }], OPTIONS),
    ).rejects.toThrow(/trainStep: 2 timesteps for latents \[1,8,8,4\]/);
    await expect(trainStep({ unet, scheduler, adapters, optimizer }, [], OPTIONS)).rejects.toThrow(/no micro-batch/);
    optimizer.dispose();
  });
});

/**
 * The ONNX Runtime training step (train/onnxStep.ts over onnx/trainStepGraph.ts, CPU provider)
 * against the TensorFlow.js step (train/step.ts, wasm) on tiny-a's UNet, where the PyTorch cases
 * do not reach: batch 2 with a class image (prior preservation, lambda 0.7), min-SNR weighting,
 * v-prediction targets and two micro-batches (gradient accumulation), and with gradient
 * checkpointing. Both start from the same adapter values; the bounds are the parity test's
 * (loss 1e-5 relative, each gradient 1e-4 max|ref|, norm 1e-5). Also the small pieces: the chain
 * from side-factor gradients to SingLoRA's A and LoRA's A, B against TensorFlow.js autodiff, and
 * a non-finite loss leaving the adapters untouched.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdapterSet, defaultAdapterSpec } from '../../src-main/engine/adapters/adapterSet.ts';
import { tf, type Tensor } from '../../src-main/engine/backend/tf.ts';
import { openBaseModel, type BaseModel } from '../../src-main/engine/io/modelFiles.ts';
import { UNet2DConditionModel } from '../../src-main/engine/models/unet2dCondition.ts';
import type { OpenedGraph } from '../../src-main/engine/onnx/graphSessions.ts';
import { openTrainStep } from '../../src-main/engine/onnx/trainStepGraph.ts';
import { Rng, randn } from '../../src-main/engine/random.ts';
import type { DDPMScheduler } from '../../src-main/engine/schedulers/ddpmScheduler.ts';
import { createScheduler, readSchedulerConfig } from '../../src-main/engine/schedulers/index.ts';
import { AdamW } from '../../src-main/engine/train/adamw.ts';
import {
  AdamWArrays,
  AdapterArrays,
  adapterArraysOf,
  type OnnxMicroBatch,
  onnxTrainStep,
  stepShapeOf,
} from '../../src-main/engine/train/onnxStep.ts';
import { type MicroBatch, trainStep, type TrainStepOptions } from '../../src-main/engine/train/step.ts';
import { maxAbsDiff, useBackend } from '../helpers/backend.ts';
import { TINY_A } from '../helpers/training.ts';

useBackend('wasm');

const OPTIONS: TrainStepOptions = { step: 3, lr: 1e-3, maxGradNorm: 1, minSnrGamma: 5, priorLossWeight: 0.7 };

describe('onnx training step vs the TensorFlow.js step (tiny-a)', () => {
  let unet: UNet2DConditionModel;
  let scheduler: DDPMScheduler;
  let base: BaseModel;
  let cacheDir: string;
  const owned: Tensor[] = [];
  let batches: MicroBatch[];
  let hostBatches: OnnxMicroBatch[];
  const sessions = new Map<string, Promise<OpenedGraph>>();
  /** The step's session for these side paths (opened once: a session takes seconds to create). */
  const session = (sidePaths: string[], checkpointing: boolean) => {
    const key = `${sidePaths.join(',')}|${checkpointing}`;
    if (!sessions.has(key))
      sessions.set(
        key,
        openTrainStep(base.unet, {
          dtype: 'float32',
          shape: stepShapeOf(hostBatches[0]),
          sidePaths,
          providers: ['cpu'],
          cacheDir,
          gradients: true,
          checkpointing,
        }),
      );
    return sessions.get(key)!;
  };

  beforeAll(async () => {
    unet = await UNet2DConditionModel.load(join(TINY_A, 'unet'));
    const cfg = await readSchedulerConfig(join(TINY_A, 'scheduler', 'scheduler_config.json'));
    scheduler = createScheduler('ddpm', { ...cfg, values: { ...cfg.values, prediction_type: 'v_prediction' } });
    base = await openBaseModel(TINY_A);
    cacheDir = mkdtempSync(join(tmpdir(), 'onnx-step-'));
    const rng = new Rng(2);
    batches = [];
    hostBatches = [];
    for (const timesteps of [
      [100, 700],
      [900, 40],
    ]) {
      const latents = randn(rng, [2, 8, 8, 4]);
      const noise = randn(rng, [2, 8, 8, 4]);
      const context = randn(rng, [2, 77, 32]);
      owned.push(latents, noise, context);
      batches.push({ latents, noise, context, timesteps, instances: 1 });
      const host = async (t: Tensor) => ({ data: (await t.data()) as Float32Array, dims: t.shape });
      hostBatches.push({
        latents: await host(latents),
        noise: await host(noise),
        context: await host(context),
        timesteps,
        instances: 1,
      });
    }
  });
  afterAll(async () => {
    for (const s of sessions.values()) await (await s).session.release();
    unet?.dispose();
    tf.dispose(owned);
    await base?.close();
    if (cacheDir) rmSync(cacheDir, { recursive: true, force: true });
  });

  for (const [method, checkpointing] of [
    ['singlora', false],
    ['lora', false],
    ['singlora', true],
  ] as const) {
    it(`${method}${checkpointing ? ' with gradient checkpointing' : ''}: loss, gradients and norm match (batch 2 with a class image, min-SNR, v-prediction, 2 micro-batches)`, async () => {
      const adapters = AdapterSet.inject(unet, defaultAdapterSpec({ method, rank: 4, alpha: 4, rampSteps: 10 }), {
        rng: new Rng(1, 1),
      });
      // LoRA's B starts at zero, which would leave A without a gradient: give it values.
      if (method === 'lora')
        adapters.assign(
          new Map(
            await Promise.all(
              adapters.namedTensors().map(async ([n, v]) => {
                const d = ((await v.data()) as Float32Array).slice();
                if (n.endsWith('lora_B')) d.set(new Rng(3, 1).normal(d.length).map((x) => 0.01 * x));
                return [n, d] as const;
              }),
            ),
          ),
        );
      const arrays = await adapterArraysOf(adapters);
      const optimizer = new AdamW(adapters.variables());
      let ref: Awaited<ReturnType<typeof trainStep>>;
      try {
        ref = await trainStep({ unet, scheduler, adapters, optimizer }, batches, { ...OPTIONS, returnGrads: true });
      } finally {
        optimizer.dispose();
        adapters.remove();
      }
      const opened = await session(
        arrays.layers.map((l) => l.path),
        checkpointing,
      );
      const got = await onnxTrainStep(
        { session: opened.session, scheduler, adapters: arrays, optimizer: new AdamWArrays(arrays.params) },
        hostBatches,
        { ...OPTIONS, returnGrads: true },
      );
      expect(got.applied).toBe(true);
      expect(Math.abs(got.loss - ref.loss) / ref.loss, `loss ${got.loss} vs ${ref.loss}`).toBeLessThanOrEqual(1e-5);
      expect(Math.abs(got.gradNorm - ref.gradNorm) / ref.gradNorm, 'grad norm').toBeLessThanOrEqual(1e-5);
      const bad: string[] = [];
      got.grads!.forEach((g, i) => {
        const d = maxAbsDiff(g, ref.grads![i]);
        if (!(d.maxAbs <= 1e-4 * d.maxRef))
          bad.push(`${arrays.layers[i >> (method === 'lora' ? 1 : 0)].path} [${i}]: ${d.rel}`);
      });
      expect(bad, 'gradients beyond 1e-4 max|ref|').toEqual([]);
    });
  }

  it('a non-finite loss skips the update and leaves the adapters untouched', async () => {
    const adapters = AdapterSet.inject(unet, defaultAdapterSpec({ rank: 4, alpha: 4, rampSteps: 10 }), {
      rng: new Rng(1, 1),
    });
    const arrays = await adapterArraysOf(adapters);
    adapters.remove();
    const before = arrays.params.map((p) => p.slice());
    const opened = await session(
      arrays.layers.map((l) => l.path),
      false,
    );
    const nan = {
      ...hostBatches[0],
      latents: { ...hostBatches[0].latents, data: hostBatches[0].latents.data.map(() => NaN) },
    };
    const optimizer = new AdamWArrays(arrays.params);
    const r = await onnxTrainStep({ session: opened.session, scheduler, adapters: arrays, optimizer }, [nan], OPTIONS);
    expect(r.applied).toBe(false);
    expect(Number.isNaN(r.loss)).toBe(true);
    expect(optimizer.step).toBe(0);
    arrays.params.forEach((p, i) => expect(p).toEqual(before[i]));
  });
});

describe('AdapterArrays: side factors and the chain back to the adapter tensors', () => {
  for (const method of ['singlora', 'lora'] as const) {
    it(`${method}: the chained gradient equals TensorFlow.js autodiff through down and up`, () => {
      // One 5 -> 3 layer (SingLoRA: A has 5 rows, both slices overlap in the first 3), rank 2, step 4 of a ramp of 8.
      const [nIn, nOut, r] = [5, 3, 2];
      const hyper = { method, rank: r, alpha: 3, rampSteps: 8 };
      const rng = new Rng(7, 1);
      const params =
        method === 'singlora' ? [rng.normal(Math.max(nIn, nOut) * r)] : [rng.normal(r * nIn), rng.normal(nOut * r)];
      const arrays = new AdapterArrays(hyper, [{ path: 'l', inFeatures: nIn, outFeatures: nOut }], params);
      const step = 4;
      const s = arrays.scale(step);
      expect(s).toBeCloseTo(method === 'singlora' ? 1.5 * 0.5 : 1.5, 12);
      // L = sum(dDown * down) + sum(dUp * up) for fixed random dDown, dUp: dL/dparam by autodiff.
      const dDown = rng.normal(nIn * r);
      const dUp = rng.normal(r * nOut);
      const feeds = arrays.sideFeeds(step);
      const vars = params.map((p, i) =>
        tf.variable(tf.tensor(p, method === 'singlora' ? [Math.max(nIn, nOut), r] : i === 0 ? [r, nIn] : [nOut, r])),
      );
      try {
        const { grads } = tf.variableGrads(() => {
          const [down, up] =
            method === 'singlora'
              ? [vars[0].slice([0, 0], [nIn, r]), tf.mul(tf.transpose(vars[0].slice([0, 0], [nOut, r])), s)]
              : [tf.transpose(vars[0]), tf.mul(tf.transpose(vars[1]), s)];
          // The feeds are these factors.
          expect(maxAbsDiff(feeds['adapter.l.down'].data as Float32Array, down.dataSync()).maxAbs).toBeLessThan(1e-7);
          expect(maxAbsDiff(feeds['adapter.l.up'].data as Float32Array, up.dataSync()).maxAbs).toBeLessThan(1e-7);
          return tf.add(
            tf.sum(tf.mul(down, tf.tensor(dDown, [nIn, r]))),
            tf.sum(tf.mul(up, tf.tensor(dUp, [r, nOut]))),
          ) as tf.Scalar;
        }, vars);
        const chained = arrays.chain(step, {
          'grad.l.down': { type: 'float32', data: dDown, dims: [nIn, r] },
          'grad.l.up': { type: 'float32', data: dUp, dims: [r, nOut] },
        });
        vars.forEach((v, i) => expect(maxAbsDiff(chained[i], grads[v.name].dataSync()).maxAbs).toBeLessThan(1e-6));
        tf.dispose(Object.values(grads));
      } finally {
        tf.dispose(vars);
      }
    });
  }
});

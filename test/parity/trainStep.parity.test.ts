/**
 * One DreamBooth training step against PyTorch (diffusers 0.27.2, torch float32 on the CPU), for
 * every PARITY_FIXTURES folder with `train_step_cases.{safetensors,json}` (fixtures README,
 * "Training-step cases"). It runs `trainStep` (train/step.ts), the step `singlora train` takes,
 * with the adapters loaded from the case's initial values, for SingLoRA and for LoRA, and checks:
 *
 *   loss                    |ours - ref| <= 1e-5 * |ref|
 *   every adapter gradient  max|ours - ref| <= 1e-4 * max|ref| of that tensor
 *   global grad norm        |ours - ref| <= 1e-5 * |ref|      (before clipping)
 *   every parameter after clipping + one AdamW step: |ours - ref| <= 1e-6, where the clipped
 *     gradient element is at least 10 eps; below that AdamW's g / (|g| + eps) magnifies float32
 *     gradient noise past 1e-6, and the bound adds the share the gradient difference explains
 *   and, separately, the step's clipping + AdamW (`applyGradients`) fed the reference gradient:
 *     every parameter within 1e-6, no exception.
 *
 * The case's `.grad` tensors hold p.grad after torch's in-place clip_grad_norm_ (the README calls
 * them dL/dparam; every one is dL/dparam times the clip factor c), so ours are scaled by c,
 * computed from the reference's grad_norm, before they are compared.
 *
 * Layouts: the case's SingLoRA `A` is [max(d_out, d_in), r], as ours (`singlora_A`); its LoRA
 * `lora_down` [r, d_in] is our `lora_A`, `lora_up` [d_out, r] our `lora_B`. Latents and noise
 * are NCHW there, NHWC here.
 */
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf, type Tensor, type Variable } from '../../src-main/engine/backend/tf.ts';
import { AdapterSet } from '../../src-main/engine/adapters/adapterSet.ts';
import { UNet2DConditionModel } from '../../src-main/engine/models/unet2dCondition.ts';
import { createScheduler, readSchedulerConfig } from '../../src-main/engine/schedulers/index.ts';
import type { DDPMScheduler } from '../../src-main/engine/schedulers/ddpmScheduler.ts';
import { AdamW } from '../../src-main/engine/train/adamw.ts';
import { applyGradients, trainStep } from '../../src-main/engine/train/step.ts';
import { useBackend } from '../helpers/backend.ts';
import { Cases, parityFolders, skipNote } from '../helpers/fixtures.ts';
import { PARAM_ABS, PARAMS, readMeta, adamWOptions, stepOptions } from '../helpers/trainStepCases.ts';
import { checkStep, checkUpdate, skipIfMissing, updateCase } from '../helpers/trainStepChecks.ts';

useBackend('wasm');

/** NCHW [n, c, h, w] case tensor -> NHWC tensor. */
async function loadNhwc(cases: Cases, key: string): Promise<Tensor> {
  const { shape, data } = await cases.get(key);
  if (shape.length !== 4) throw new Error(`train_step_cases: '${key}' must be [n, c, h, w], got [${shape}]`);
  return tf.tidy(() => tf.transpose(tf.tensor(data, shape, 'float32'), [0, 2, 3, 1]));
}

for (const folder of parityFolders()) {
  const label = basename(folder);
  const tensorsPath = join(folder, 'train_step_cases.safetensors');
  const jsonPath = join(folder, 'train_step_cases.json');

  describe(`training step parity (${label})`, () => {
    if (!existsSync(tensorsPath) || !existsSync(jsonPath)) {
      it.skip(`${label}: training step: ${skipNote(folder, 'train_step_cases.safetensors + train_step_cases.json')}`, () => {});
      return;
    }
    const meta = readMeta(jsonPath);
    let cases: Cases;
    let unet: UNet2DConditionModel;
    let scheduler: DDPMScheduler;
    const errors: string[] = [];

    beforeAll(async () => {
      cases = await Cases.open(folder, 'train_step_cases.safetensors');
      unet = await UNet2DConditionModel.load(join(folder, 'model', 'unet'));
      // DDPMScheduler.from_pretrained(model/scheduler), as the reference noised its latents.
      scheduler = createScheduler(
        'ddpm',
        await readSchedulerConfig(join(folder, 'model', 'scheduler', 'scheduler_config.json')),
      );
      expect(scheduler.config.predictionType, 'model/scheduler prediction_type').toBe('epsilon');
    });
    afterAll(async () => {
      unet?.dispose();
      await cases?.close();
      if (errors.length) console.log(`[parity wasm] ${label} training step:\n  ${errors.join('\n  ')}`);
    });

    for (const method of ['singlora', 'lora'] as const) {
      it(`${label}: one ${method} training step (loss, gradients, grad norm, clipping + AdamW) matches PyTorch`, async (ctx) => {
        skipIfMissing(ctx, cases, folder, meta, method);

        // Inputs, as the reference fed them.
        const latents = await loadNhwc(cases, 'inputs.latents'); // [1, h, w, 4]
        const noise = await loadNhwc(cases, 'inputs.noise');
        const ctxRef = await cases.get('inputs.encoder_hidden_states'); // [1, 77, d]
        const context = tf.tensor(ctxRef.data, ctxRef.shape, 'float32');
        const timesteps = [...(await cases.getInt('inputs.timestep')).data];
        expect(timesteps, 'inputs.timestep vs metadata.timestep').toEqual([meta.timestep]);

        // Adapters from the case's initial values, in our tensor names.
        const values = new Map<string, Record<string, Float32Array>>();
        for (const layer of meta.layers) {
          const entry: Record<string, Float32Array> = {};
          for (const [p, ours] of PARAMS[method]) entry[ours] = (await cases.get(`${method}.init.${layer}.${p}`)).data;
          values.set(layer, entry);
        }
        const adapters = AdapterSet.inject(
          unet,
          { method, rank: meta.rank, alpha: meta.alpha, rampSteps: meta.ramp_T, targets: meta.layers, initStd: 0 },
          { values },
        );
        const optimizer = new AdamW(adapters.variables(), adamWOptions(meta));
        try {
          expect(adapters.size, 'adapted layers').toBe(meta.layers.length);
          const named = new Map(adapters.namedTensors());

          const before = tf.memory().numTensors;
          const result = await trainStep(
            { unet, scheduler, adapters, optimizer },
            [{ latents, noise, timesteps, context }],
            stepOptions(meta),
          );
          expect(tf.memory().numTensors, 'tensors left behind by trainStep').toBe(before);
          expect(result.applied).toBe(true);

          // Our gradients and parameters after the update, in case order (bounds: trainStepCases.ts).
          const grads: Float32Array[] = [];
          const after: Float32Array[] = [];
          for (const layer of meta.layers) {
            for (const [p, ours] of PARAMS[method]) {
              const name = `${layer}.${ours}`;
              const v = named.get(name);
              if (!v) throw new Error(`no adapter tensor '${name}' after injecting ${method} from the case`);
              const gradRef = await cases.get(`${method}.grad.${layer}.${p}`);
              expect([...v.shape], `${name} shape vs ${method}.grad.${layer}.${p}`).toEqual(gradRef.shape);
              grads.push(result.grads![optimizer.params.indexOf(v)]);
              after.push((await v.data()) as Float32Array);
            }
          }
          await checkStep(cases, meta, method, { ...result, grads, after }, method, (line) => errors.push(line));
        } finally {
          optimizer.dispose();
          adapters.remove();
          tf.dispose([latents, noise, context]);
        }
      });

      it(`${label}: ${method} training step's clipping + AdamW, from the reference gradient, matches PyTorch (every parameter within ${PARAM_ABS})`, async (ctx) => {
        skipIfMissing(ctx, cases, folder, meta, method);
        // The update alone: the step's clip + AdamW (applyGradients) on the case's initial values
        // with the reference's unclipped gradient.
        const update = await updateCase(cases, meta, method);
        const params: Variable[] = update.init.map((t) => tf.variable(tf.tensor(t.data, t.shape, 'float32'), true));
        const grads: Tensor[] = update.grads.map((t) => tf.tensor(t.data, t.shape, 'float32'));
        const optimizer = new AdamW(params, adamWOptions(meta));
        try {
          const before = tf.memory().numTensors;
          const norm = await applyGradients(optimizer, grads, { lr: meta.adamw.lr, maxGradNorm: meta.clip_grad_norm });
          expect(tf.memory().numTensors, 'tensors left behind by applyGradients').toBe(before);
          const after = await Promise.all(params.map(async (v) => (await v.data()) as Float32Array));
          checkUpdate(update, norm, after, `${method}: clip + AdamW`, (line) => errors.push(line));
        } finally {
          optimizer.dispose();
          tf.dispose([...params, ...grads]);
        }
      });
    }
  });
}

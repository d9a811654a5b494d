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
import type { AdapterMethod } from '../../src-main/engine/adapters/adapterLinear.ts';
import { UNet2DConditionModel } from '../../src-main/engine/models/unet2dCondition.ts';
import { createScheduler, readSchedulerConfig } from '../../src-main/engine/schedulers/index.ts';
import type { DDPMScheduler } from '../../src-main/engine/schedulers/ddpmScheduler.ts';
import { AdamW } from '../../src-main/engine/train/adamw.ts';
import { applyGradients, trainStep } from '../../src-main/engine/train/step.ts';
import { maxAbsDiff, useBackend } from '../helpers/backend.ts';
import { Cases, parityFolders, skipNote } from '../helpers/fixtures.ts';
import {
  caseKeys,
  clipFactorOf,
  GRAD_REL_TO_MAX,
  LOSS_REL,
  NORM_REL,
  PARAM_ABS,
  PARAMS,
  paramBound,
  readMeta,
} from '../helpers/trainStepCases.ts';

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
      expect(scheduler.config.prediction_type, 'model/scheduler prediction_type').toBe('epsilon');
    });
    afterAll(async () => {
      unet?.dispose();
      await cases?.close();
      if (errors.length) console.log(`[parity wasm] ${label} training step:\n  ${errors.join('\n  ')}`);
    });

    /** Skips, naming the keys, when the case file lacks some of this method's tensors. */
    const skipIfMissing = (ctx: { skip: (note?: string) => never }, method: AdapterMethod) => {
      const missing = caseKeys(method, meta.layers).filter((k) => !cases.has(k));
      if (missing.length)
        ctx.skip(
          skipNote(
            folder,
            `${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ` (and ${missing.length - 3} more)` : ''} in train_step_cases.safetensors`,
          ),
        );
    };

    for (const method of ['singlora', 'lora'] as const) {
      it(`${label}: one ${method} training step (loss, gradients, grad norm, clipping + AdamW) matches PyTorch`, async (ctx) => {
        skipIfMissing(ctx, method);

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
        const [beta1, beta2] = meta.adamw.betas;
        const optimizer = new AdamW(adapters.variables(), {
          beta1,
          beta2,
          eps: meta.adamw.eps,
          weightDecay: meta.adamw.weight_decay,
        });
        try {
          expect(adapters.size, 'adapted layers').toBe(meta.layers.length);
          const named = new Map(adapters.namedTensors());

          const before = tf.memory().numTensors;
          const result = await trainStep(
            { unet, scheduler, adapters, optimizer },
            [{ latents, noise, timesteps, context }],
            {
              step: meta.step,
              lr: meta.adamw.lr,
              maxGradNorm: meta.clip_grad_norm,
              minSnrGamma: null,
              priorLossWeight: 1,
              returnGrads: true,
            },
          );
          expect(tf.memory().numTensors, 'tensors left behind by trainStep').toBe(before);
          expect(result.applied).toBe(true);

          const refLoss = (await cases.get(`${method}.loss`)).data[0];
          const refNorm = (await cases.get(`${method}.grad_norm`)).data[0];
          const lossRel = Math.abs(result.loss - refLoss) / Math.abs(refLoss);
          const normRel = Math.abs(result.gradNorm - refNorm) / Math.abs(refNorm);
          expect(refNorm, 'the reference clips (grad_norm > clip_grad_norm)').toBeGreaterThan(meta.clip_grad_norm);
          const c = clipFactorOf(meta, refNorm);

          // Every gradient, and every parameter after the update (bounds: trainStepCases.ts).
          let worstGrad = { rel: 0, name: '' };
          let worstParam = { abs: 0, name: '' };
          let illConditioned = 0;
          let worstWellConditioned = 0;
          const gradFailures: string[] = [];
          const paramFailures: string[] = [];
          for (const layer of meta.layers) {
            for (const [p, ours] of PARAMS[method]) {
              const name = `${layer}.${ours}`;
              const v = named.get(name);
              if (!v) throw new Error(`no adapter tensor '${name}' after injecting ${method} from the case`);
              const gradRef = await cases.get(`${method}.grad.${layer}.${p}`);
              expect([...v.shape], `${name} shape vs ${method}.grad.${layer}.${p}`).toEqual(gradRef.shape);
              const g = result.grads![optimizer.params.indexOf(v)].map((x) => x * c); // clipped, as the reference
              const gd = maxAbsDiff(g, gradRef.data);
              if (gd.rel > worstGrad.rel) worstGrad = { rel: gd.rel, name };
              if (!(gd.maxAbs <= GRAD_REL_TO_MAX * gd.maxRef)) gradFailures.push(`${name}: ${gd.rel.toExponential(2)}`);

              const afterRef = (await cases.get(`${method}.after_adamw.${layer}.${p}`)).data;
              const got = (await v.data()) as Float32Array;
              expect(got.length).toBe(afterRef.length);
              for (let i = 0; i < got.length; i++) {
                const d = Math.abs(got[i] - afterRef[i]);
                const { bound, illConditioned: ill } = paramBound(meta, g[i], gradRef.data[i]);
                if (ill) illConditioned++;
                else worstWellConditioned = Math.max(worstWellConditioned, d);
                if (d > worstParam.abs) worstParam = { abs: d, name: `${name}[${i}]` };
                if (!(d <= bound))
                  paramFailures.push(`${name}[${i}]: ${d.toExponential(2)} > ${bound.toExponential(2)}`);
              }
            }
          }
          errors.push(
            `${method}: loss ${result.loss.toPrecision(8)} (ref ${refLoss.toPrecision(8)}, rel ${lossRel.toExponential(2)}); ` +
              `worst grad max|diff|/max|ref| ${worstGrad.rel.toExponential(2)} (${worstGrad.name}); ` +
              `grad norm ${result.gradNorm.toExponential(6)} (rel ${normRel.toExponential(2)}); ` +
              `worst param after the step max|diff| ${worstParam.abs.toExponential(2)} (${worstParam.name}); ${worstWellConditioned.toExponential(2)} where |g| >= 10 eps (${illConditioned} elements have |g| < 10 eps)`,
          );
          expect(lossRel, `${method}.loss relative error`).toBeLessThanOrEqual(LOSS_REL);
          expect(gradFailures, `gradients beyond ${GRAD_REL_TO_MAX}·max|ref|`).toEqual([]);
          expect(normRel, `${method}.grad_norm relative error`).toBeLessThanOrEqual(NORM_REL);
          expect(
            paramFailures.slice(0, 20),
            `parameters after the step beyond ${PARAM_ABS} (+ the gradient's share where |g| < 10 eps)`,
          ).toEqual([]);
        } finally {
          optimizer.dispose();
          adapters.remove();
          tf.dispose([latents, noise, context]);
        }
      });

      it(`${label}: ${method} training step's clipping + AdamW, from the reference gradient, matches PyTorch (every parameter within ${PARAM_ABS})`, async (ctx) => {
        skipIfMissing(ctx, method);
        // The update alone: the step's clip + AdamW (applyGradients) on the case's initial values
        // with the reference's unclipped gradient (recorded clipped: divided by c here).
        const refNorm = (await cases.get(`${method}.grad_norm`)).data[0];
        const c = clipFactorOf(meta, refNorm);
        const params: Variable[] = [];
        const grads: Tensor[] = [];
        const refs: Array<{ name: string; data: Float32Array }> = [];
        for (const layer of meta.layers) {
          for (const [p] of PARAMS[method]) {
            const init = await cases.get(`${method}.init.${layer}.${p}`);
            const grad = await cases.get(`${method}.grad.${layer}.${p}`);
            params.push(tf.variable(tf.tensor(init.data, init.shape, 'float32'), true));
            grads.push(
              tf.tensor(
                grad.data.map((x) => x / c),
                grad.shape,
                'float32',
              ),
            );
            refs.push({
              name: `${method}.after_adamw.${layer}.${p}`,
              data: (await cases.get(`${method}.after_adamw.${layer}.${p}`)).data,
            });
          }
        }
        const [beta1, beta2] = meta.adamw.betas;
        const optimizer = new AdamW(params, {
          beta1,
          beta2,
          eps: meta.adamw.eps,
          weightDecay: meta.adamw.weight_decay,
        });
        try {
          const before = tf.memory().numTensors;
          const norm = await applyGradients(optimizer, grads, { lr: meta.adamw.lr, maxGradNorm: meta.clip_grad_norm });
          expect(tf.memory().numTensors, 'tensors left behind by applyGradients').toBe(before);
          expect(Math.abs(norm - refNorm) / refNorm, 'norm of the reference gradient vs grad_norm').toBeLessThanOrEqual(
            NORM_REL,
          );
          let worst = { abs: 0, name: '' };
          for (const [i, v] of params.entries()) {
            const d = maxAbsDiff((await v.data()) as Float32Array, refs[i].data);
            if (d.maxAbs > worst.abs) worst = { abs: d.maxAbs, name: refs[i].name };
          }
          errors.push(
            `${method}: clip + AdamW from the reference gradient: worst param max|diff| ${worst.abs.toExponential(2)} (${worst.name})`,
          );
          expect(worst.abs, `worst parameter after clip + AdamW (${worst.name})`).toBeLessThanOrEqual(PARAM_ABS);
        } finally {
          optimizer.dispose();
          tf.dispose([...params, ...grads]);
        }
      });
    }
  });
}

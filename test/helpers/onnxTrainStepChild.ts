/**
 * One SingLoRA training step of a parity folder's `train_step_cases` on one ONNX Runtime provider,
 * in its own process (a GPU provider such as WebGPU needs its driver settings in the environment
 * from the start: see `webgpuEnv` in ciRequirements.ts). The step is the one the CPU parity test
 * runs (trainStep.onnx.parity.test.ts): the emitted step graph, `onnxTrainStep`, clipping and one
 * AdamW step, from the case's initial factors. The session is created with the training options
 * (no CPU fallback for a GPU provider), and the provider list holds only the one asked for, so a
 * node the provider cannot run fails the session's creation, naming the node.
 *
 *   node --import tsx test/helpers/onnxTrainStepChild.ts <folder> --provider webgpu \
 *     --dtype float32[,float16] --out <file.json> [--loss-scale <float16's initial scale, default 2^16>]
 *
 * Writes { runs: [{ dtype, providers, loss, gradNorm, grads, after, createMs, stepMs, lossScale }] } to the
 * file, one run per dtype in the order given (or { dtype, error } for a dtype that did not run): `grads` is g before clipping (one array per adapter
 * tensor, `AdapterSet.variables()` order), `after` the parameters after clipping + AdamW.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionProvider } from '../../src-main/engine/backend/onnxRuntime.ts';
import { atomicWriteJson } from '../../src-main/engine/io/atomic.ts';
import { openBaseModel, type BaseModel } from '../../src-main/engine/io/modelFiles.ts';
import { Linear } from '../../src-main/engine/models/layers/linear.ts';
import { UNet2DConditionModel } from '../../src-main/engine/models/unet2dCondition.ts';
import type { ComputeType } from '../../src-main/engine/onnx/onnxOps.ts';
import { openTrainStep } from '../../src-main/engine/onnx/trainStepGraph.ts';
import type { DDPMScheduler } from '../../src-main/engine/schedulers/ddpmScheduler.ts';
import { createScheduler, readSchedulerConfig } from '../../src-main/engine/schedulers/index.ts';
import {
  AdamWArrays,
  AdapterArrays,
  onnxTrainStep,
  stepShapeOf,
  type OnnxMicroBatch,
} from '../../src-main/engine/train/onnxStep.ts';
import { LossScale } from '../../src-main/engine/train/lossScale.ts';
import { Cases } from './fixtures.ts';
import { adamWOptions, PARAMS, readMeta, readNhwc, type StepMeta, stepOptions } from './trainStepCases.ts';

/** A dtype that did not run: the session's or the run's error. */
export interface ChildFailure {
  readonly dtype: ComputeType;
  readonly error: string;
}

export type ChildRun = ChildStep | ChildFailure;

export interface ChildStep {
  readonly dtype: ComputeType;
  readonly providers: readonly string[];
  readonly loss: number;
  readonly gradNorm: number;
  readonly grads: number[][];
  readonly after: number[][];
  /** Emitting the graph and creating the session. */
  readonly createMs: number;
  /** The step (one session run, the chain, clipping and AdamW). */
  readonly stepMs: number;
  /** The loss scale the step was applied at (float16: dynamic, halved on overflow; float32: 1). */
  readonly lossScale: number;
}

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};

async function initialAdapters(cases: Cases, meta: StepMeta, config: unknown): Promise<AdapterArrays> {
  const linears = new Map<string, Linear>();
  for (const [p, m] of UNet2DConditionModel.fromConfig(config).namedModules())
    if (m instanceof Linear) linears.set(p, m);
  const params: Float32Array[] = [];
  for (const layer of meta.layers)
    for (const [p] of PARAMS.singlora) params.push((await cases.get(`singlora.init.${layer}.${p}`)).data.slice());
  const layers = meta.layers.map((path) => {
    const l = linears.get(path);
    if (!l) throw new Error(`train_step_cases metadata.layers: no Linear at ${path} in the fixture's UNet`);
    return { path, inFeatures: l.inFeatures, outFeatures: l.outFeatures };
  });
  return new AdapterArrays(
    { method: 'singlora', rank: meta.rank, alpha: meta.alpha, rampSteps: meta.ramp_T },
    layers,
    params,
  );
}

async function main(): Promise<void> {
  const [folder] = process.argv.slice(2);
  const provider = arg('--provider') as ExecutionProvider | undefined;
  const dtypes = (arg('--dtype') ?? 'float32').split(',') as ComputeType[];
  const outFile = arg('--out');
  // float16's initial loss scale (a power of two; 1: no scaling, to measure what it does).
  const initialScale = arg('--loss-scale') === undefined ? undefined : Number(arg('--loss-scale'));
  if (!folder || !provider || !outFile || dtypes.some((d) => d !== 'float32' && d !== 'float16'))
    throw new Error(
      'usage: onnxTrainStepChild.ts <fixture folder> --provider <webgpu|cpu|...> --dtype float32[,float16] --out <file.json>',
    );
  const meta = readMeta(join(folder, 'train_step_cases.json'));
  const cases = await Cases.open(folder, 'train_step_cases.safetensors');
  const base = await openBaseModel(join(folder, 'model'));
  const cacheDir = mkdtempSync(join(tmpdir(), 'onnx-train-step-child-'));
  try {
    const scheduler = createScheduler(
      'ddpm',
      await readSchedulerConfig(join(folder, 'model', 'scheduler', 'scheduler_config.json')),
    ) as DDPMScheduler;
    const ctx = await cases.get('inputs.encoder_hidden_states');
    const batch: OnnxMicroBatch = {
      latents: await readNhwc(cases, 'inputs.latents'),
      noise: await readNhwc(cases, 'inputs.noise'),
      timesteps: [...(await cases.getInt('inputs.timestep')).data],
      context: { data: ctx.data, dims: ctx.shape },
    };
    const runs: ChildRun[] = [];
    for (const dtype of dtypes) {
      try {
        runs.push(await runStep(base, cases, meta, { scheduler, batch, provider, dtype, cacheDir, initialScale }));
      } catch (err) {
        runs.push({ dtype, error: (err as Error).message ?? String(err) });
      }
    }
    await atomicWriteJson(outFile, { runs });
  } finally {
    await cases.close();
    await base.close();
    rmSync(cacheDir, { recursive: true, force: true });
  }
}

/** One step at one dtype, from the case's initial factors. */
async function runStep(
  base: BaseModel,
  cases: Cases,
  meta: StepMeta,
  o: {
    scheduler: DDPMScheduler;
    batch: OnnxMicroBatch;
    provider: ExecutionProvider;
    dtype: ComputeType;
    cacheDir: string;
    initialScale?: number;
  },
): Promise<ChildStep> {
  const { scheduler, batch, provider, dtype, cacheDir } = o;
  const t0 = performance.now();
  const opened = await openTrainStep(base.unet, {
    dtype,
    shape: stepShapeOf(batch),
    sidePaths: meta.layers,
    providers: [provider],
    cacheDir,
    gradients: true,
  });
  const t1 = performance.now();
  const adapters = await initialAdapters(cases, meta, base.unet.config);
  const optimizer = new AdamWArrays(adapters.params, adamWOptions(meta));
  const lossScale = dtype === 'float16' ? LossScale.dynamic(o.initialScale) : LossScale.fixed();
  const r = await onnxTrainStep(
    { session: opened.session, scheduler, adapters, optimizer, lossScale },
    [batch],
    stepOptions(meta),
  );
  const t2 = performance.now();
  await opened.session.release();
  return {
    dtype,
    providers: opened.session.providers,
    loss: r.loss,
    gradNorm: r.gradNorm,
    grads: (r.grads ?? []).map((g) => Array.from(g)),
    after: adapters.params.map((p) => Array.from(p)),
    createMs: Math.round(t1 - t0),
    stepMs: Math.round(t2 - t1),
    lossScale: lossScale.scale,
  };
}

await main();

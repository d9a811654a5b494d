/**
 * Training-step benchmark on ONNX Runtime (`singlora bench train --engine onnx`): the UNet of a
 * config with seeded random weights written to a temporary `.safetensors` first (as `bench unet`
 * does), so what runs is the real path: the step graph emitted from engine/models with the
 * weights read in place (onnx/trainStepGraph.ts), fed and updated by `onnxTrainStep`
 * (train/onnxStep.ts), the step `train --engine onnx` repeats.
 *
 *   load_s          graph emission + session creation (ONNX Runtime reading the weights)
 *   ms_per_step     median of `steps` timed optimizer steps after `warmup` untimed ones
 *   gflop_per_step  2 x F_weights + 3 x F_attention of one forward (models/ops/flopOps.ts), the
 *                   formula of `bench train` on TensorFlow.js (bench/train.ts): input gradients
 *                   only, recomputation not counted
 *   peak_rss_mb     the process's peak resident memory (getrusage maxRSS), MiB
 */
import { rmSync, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { AdapterSet, DEFAULT_TARGETS, defaultAdapterSpec } from '../adapters/adapterSet.ts';
import { initBackend } from '../backend/tf.ts';
import { SafetensorsFile } from '../io/safetensors.ts';
import { safetensorsSource } from '../io/weightSource.ts';
import { FlopCounter, type Shaped } from '../models/ops/flopOps.ts';
import type { UNet2DConditionModel } from '../models/unet2dCondition.ts';
import type { ComputeType } from '../onnx/onnxOps.ts';
import { defaultComputeType, providerCandidates, type ProviderChoice, trainingProviders } from '../onnx/providers.ts';
import { openTrainStep, trainStepArena, trainStepAttention, trainStepWeightLayout } from '../onnx/trainStepGraph.ts';
import { Rng } from '../random.ts';
import { createScheduler } from '../schedulers/index.ts';
import type { DDPMScheduler } from '../schedulers/ddpmScheduler.ts';
import {
  AdamWArrays,
  type AdapterArrays,
  adapterArraysOf,
  onnxTrainStep,
  type OnnxMicroBatch,
} from '../train/onnxStep.ts';
import {
  benchTempDir,
  median,
  type StepTimes,
  type TrainBenchConfig,
  timeSteps,
  writeRandomUnet,
} from './benchSteps.ts';
import { benchTrainSetup, readTrainingSchedulerConfig } from './train.ts';
import { LossScale } from '../train/lossScale.ts';
import type { LinearLayout } from '../../api/schemas.ts';

export interface BenchTrainOnnxOptions {
  /** A diffusers pipeline folder, a `unet/` folder, or a UNet config.json. */
  base: string;
  resolution: number;
  steps?: number;
  warmup?: number;
  rank?: number;
  method?: 'singlora' | 'lora';
  checkpointing?: boolean;
  batch?: number;
  provider?: ProviderChoice;
  dtype?: ComputeType;
  /** How frozen Linears read their weights (trainStepGraph.ts `linearLayout`). */
  linearLayout?: LinearLayout;
  /** ONNX Runtime's weight prepacking (default: trainStepGraph.ts `trainStepWeightLayout`). */
  prepacking?: boolean;
  /** More ONNX Runtime graph optimizers to turn off (trainStepGraph.ts `disableOptimizers`). */
  disableOptimizers?: readonly string[];
  seed?: number;
  log?: (line: string) => void;
}

export interface BenchTrainOnnxReport {
  bench: 'train';
  engine: 'onnx';
  provider: string;
  dtype: ComputeType;
  config: TrainBenchConfig & {
    steps: number;
    warmup: number;
    threads: number;
    weights: 'linked' | 'in-memory';
    linear_layout: LinearLayout;
    prepacking: boolean;
    disabled_optimizers: readonly string[];
    /** Stride-1 convolutions over at least this many pixels use a flipped filter copy (null: none). */
    flipped_filter_min_pixels: number | null;
    /** The forward's attention (trainStepGraph.ts `trainStepAttention`). */
    attention: 'fused' | 'plain';
    /** ONNX Runtime's CPU arena (trainStepGraph.ts `trainStepArena`, or SINGLORA_ORT_ARENA). */
    cpu_arena: boolean;
  };
  unetParameters: number;
  adapterParameters: number;
  adapterLayers: number;
  graph_nodes: number;
  load_s: number;
  ms_per_step: number | null;
  ms_steps: number[];
  /** Median process CPU time (all ONNX Runtime threads) per step. */
  cpu_ms_per_step: number | null;
  gflop_per_step: number;
  gflops: number | null;
  weight_bytes: number;
  peak_rss_mb: number;
}

/** Forward FLOPs split into weight layers and attention products (flopOps.ts counts). */
class SplitFlopCounter extends FlopCounter {
  attentionFlops = 0;
  override attention(q: Shaped, k: Shaped): Shaped {
    const before = this.flops;
    const out = super.attention(q, k);
    this.attentionFlops += this.flops - before;
    return out;
  }
}

/** 2 x F_weights + 3 x F_attention of one step at [batch, h, w] (see the file comment). */
export function trainStepFlops(unet: UNet2DConditionModel, batch: number, h: number, w: number, tokens = 77): number {
  const c = new SplitFlopCounter();
  const sh = (shape: readonly number[]): Shaped => ({ shape });
  unet.denoise(
    c,
    sh([batch, h, w, unet.config.inChannels]),
    sh([batch]),
    sh([batch, tokens, unet.config.crossAttentionDim[0]]),
  );
  return 2 * (c.flops - c.attentionFlops) + 3 * c.attentionFlops;
}

type OpenedStep = Awaited<ReturnType<typeof openTrainStep>>;
type Setup = ReturnType<typeof benchTrainSetup>;

export async function benchTrainOnnx(o: BenchTrainOnnxOptions): Promise<BenchTrainOnnxReport> {
  const log = o.log ?? (() => {});
  const setup = benchTrainSetup(o);
  const { unet } = setup;
  const tmp = benchTempDir('bench-train-'); // the ONNX cache's file system: weights can be linked
  try {
    // 1. Random weights into a file.
    const { file, configPath } = await writeRandomUnet(tmp, unet, setup.config, { seed: o.seed ?? 0, dtype: 'F32' });
    log(`wrote ${unet.parameterCount().toLocaleString('en-US')} random parameters to ${file}`);
    // 2. Adapters (drawn as `train` draws them; the tensors are small, TensorFlow.js's CPU backend holds them).
    const { adapters, sidePaths } = await drawAdapters(unet, setup, o.seed ?? 0);
    // 3. The step's session, weights read in place.
    const session = await openStepSession(o, setup, { file, configPath, tmp, sidePaths }, log);
    // 4. Timed steps on fixed random inputs.
    const scheduler = createScheduler('ddpm', readTrainingSchedulerConfig(o.base)) as DDPMScheduler;
    const model = {
      session: session.opened.session,
      scheduler,
      adapters,
      optimizer: new AdamWArrays(adapters.params),
      lossScale: session.dtype === 'float16' ? LossScale.dynamic() : LossScale.fixed(),
    };
    const data = fixedMicroBatch(unet, setup.batch, setup.latent, o.seed ?? 0);
    let times: StepTimes;
    try {
      // The training defaults (train settings: maxGradNorm 1, no min-SNR, prior weight 1).
      const options = { lr: 1e-4, maxGradNorm: 1, minSnrGamma: null, priorLossWeight: 1 };
      times = await timeSteps(
        setup.warmup,
        setup.steps,
        (i) => onnxTrainStep(model, [data], { step: i, ...options }).then(() => {}),
        log,
      );
    } finally {
      await session.opened.session.release();
    }
    return trainOnnxReport(o, setup, session, { adapters, times, weightFileBytes: statSync(file).size });
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** The adapters' arrays and side paths, drawn on TensorFlow.js's CPU backend as `train` draws them. */
async function drawAdapters(unet: UNet2DConditionModel, setup: Setup, seed: number) {
  await initBackend('cpu');
  const set = AdapterSet.inject(
    unet,
    defaultAdapterSpec({ method: setup.method, rank: setup.rank, alpha: setup.rank, rampSteps: 0 }),
    {
      rng: new Rng(seed, 1),
    },
  );
  try {
    return { adapters: await adapterArraysOf(set), sidePaths: set.adapters.map((a) => a.path) };
  } finally {
    set.remove();
  }
}

/** The training step's session over the weights file, timed (load_s), with the settings the report names. */
async function openStepSession(
  o: BenchTrainOnnxOptions,
  setup: Setup,
  at: { file: string; configPath: string; tmp: string; sidePaths: string[] },
  log: (line: string) => void,
) {
  // As `train` opens it (onnxEngine.ts): a GPU provider alone.
  const providers = trainingProviders((await providerCandidates(o.provider ?? 'cpu'))[0]);
  const dtype = o.dtype ?? defaultComputeType(providers);
  const layout = trainStepWeightLayout(providers, o);
  const attention = trainStepAttention(providers, dtype);
  const st = await SafetensorsFile.open(at.file);
  const t0 = performance.now();
  let opened: OpenedStep;
  try {
    opened = await openTrainStep(
      { config: setup.config, configSource: at.configPath, weights: safetensorsSource(st), files: [at.file] },
      {
        dtype,
        shape: { batch: setup.batch, height: setup.latent[0], width: setup.latent[1], tokens: 77 },
        sidePaths: at.sidePaths,
        providers,
        checkpointing: o.checkpointing ?? false,
        gradients: true,
        ...layout,
        attention,
        cacheDir: join(at.tmp, 'cache'),
      },
    );
  } finally {
    await st.close();
  }
  const loadS = (performance.now() - t0) / 1000;
  log(
    `session on ${providers.join('+')} (${dtype}, ${opened.meta.nodes} nodes, weights ${opened.weights}) in ${loadS.toFixed(1)} s`,
  );
  return { opened, providers, dtype, layout, attention, loadS };
}

/** Seeded random latents, noise and text context of one micro-batch, at timestep 500. */
function fixedMicroBatch(
  unet: UNet2DConditionModel,
  batch: number,
  [h, w]: [number, number],
  seed: number,
): OnnxMicroBatch {
  const cfg = unet.config;
  const rng = new Rng(seed, 2);
  const size = batch * h * w * cfg.inChannels;
  return {
    latents: { data: rng.normal(size), dims: [batch, h, w, cfg.inChannels] },
    noise: { data: rng.normal(size), dims: [batch, h, w, cfg.inChannels] },
    context: { data: rng.normal(batch * 77 * cfg.crossAttentionDim[0]), dims: [batch, 77, cfg.crossAttentionDim[0]] },
    timesteps: Array<number>(batch).fill(500),
  };
}

function trainOnnxReport(
  o: BenchTrainOnnxOptions,
  setup: Setup,
  s: Awaited<ReturnType<typeof openStepSession>>,
  r: { adapters: AdapterArrays; times: StepTimes; weightFileBytes: number },
): BenchTrainOnnxReport {
  const { unet, latent, batch } = setup;
  const gflop = trainStepFlops(unet, batch, latent[0], latent[1]) / 1e9;
  const msPerStep = median(r.times.ms);
  return {
    bench: 'train',
    engine: 'onnx',
    provider: s.providers.join('+'),
    dtype: s.dtype,
    config: {
      base: o.base,
      resolution: o.resolution,
      latent,
      batch,
      method: setup.method,
      rank: setup.rank,
      targets: DEFAULT_TARGETS,
      checkpointing: o.checkpointing ?? false,
      steps: setup.steps,
      warmup: setup.warmup,
      threads: availableParallelism(),
      weights: s.opened.weights,
      linear_layout: s.layout.linearLayout,
      prepacking: s.layout.prepacking,
      disabled_optimizers: s.layout.disableOptimizers,
      flipped_filter_min_pixels: s.layout.flippedFilterMinPixels ?? null,
      attention: s.attention,
      cpu_arena: trainStepArena(s.providers, r.weightFileBytes) ?? process.env.SINGLORA_ORT_ARENA === '1',
    },
    unetParameters: unet.parameterCount(),
    adapterParameters: r.adapters.params.reduce((n, p) => n + p.length, 0),
    adapterLayers: r.adapters.layers.length,
    graph_nodes: s.opened.meta.nodes,
    load_s: s.loadS,
    ms_per_step: msPerStep,
    ms_steps: r.times.ms,
    cpu_ms_per_step: median(r.times.cpuMs),
    gflop_per_step: gflop,
    gflops: msPerStep ? gflop / (msPerStep / 1000) : null,
    weight_bytes: unet.parameterCount() * 4,
    peak_rss_mb: Math.round(process.resourceUsage().maxRSS / 1024),
  };
}

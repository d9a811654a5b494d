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
import { mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { AdapterSet, DEFAULT_TARGETS, defaultAdapterSpec } from '../adapters/adapterSet.ts';
import { initBackend } from '../backend/tf.ts';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.ts';
import { safetensorsSource } from '../io/weightSource.ts';
import { randomSource } from '../models/layers/module.ts';
import { FlopCounter, type Shaped } from '../models/ops/flopOps.ts';
import type { UNet2DConditionModel } from '../models/unet2dCondition.ts';
import type { ComputeType } from '../onnx/onnxOps.ts';
import { defaultComputeType, providerCandidates, type ProviderChoice } from '../onnx/providers.ts';
import { openTrainStep, trainStepArena, trainStepAttention, trainStepWeightLayout } from '../onnx/trainStepGraph.ts';
import { defaultCacheDir } from '../paths.ts';
import { Rng } from '../random.ts';
import { createScheduler } from '../schedulers/index.ts';
import type { DDPMScheduler } from '../schedulers/ddpmScheduler.ts';
import { AdamWArrays, adapterArraysOf, onnxTrainStep, type OnnxMicroBatch } from '../train/onnxStep.ts';
import { benchTrainSetup, readTrainingSchedulerConfig } from './train.ts';

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
  linearLayout?: 'matmul' | 'gemm';
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
  config: {
    base: string;
    resolution: number;
    latent: [number, number];
    batch: number;
    method: string;
    rank: number;
    targets: readonly string[];
    checkpointing: boolean;
    steps: number;
    warmup: number;
    threads: number;
    weights: 'linked' | 'in-memory';
    linear_layout: 'matmul' | 'gemm';
    prepacking: boolean;
    disabled_optimizers: readonly string[];
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

export async function benchTrainOnnx(o: BenchTrainOnnxOptions): Promise<BenchTrainOnnxReport> {
  const log = o.log ?? (() => {});
  const { config, latent, steps, warmup, batch, rank, method, unet } = benchTrainSetup(o);
  const cfg = unet.config;
  mkdirSync(defaultCacheDir(), { recursive: true });
  const tmp = mkdtempSync(join(defaultCacheDir(), 'bench-train-')); // the ONNX cache's file system: weights can be linked
  let set: AdapterSet | null = null;
  try {
    // 1. Random weights into a file.
    const file = join(tmp, 'unet', 'diffusion_pytorch_model.safetensors');
    await mkdir(join(tmp, 'unet'), { recursive: true });
    await writeFile(join(tmp, 'unet', 'config.json'), JSON.stringify(config));
    const src = randomSource(unet, o.seed ?? 0);
    await writeSafetensors(
      file,
      new Map(
        [...unet.namedParams()].map(
          ([k, p]) => [k, { shape: p.shape, dtype: 'F32', read: () => src.read(k) }] as const,
        ),
      ),
    );
    log(`wrote ${unet.parameterCount().toLocaleString('en-US')} random parameters to ${file}`);

    // 2. Adapters (drawn as `train` draws them; the tensors are small, TensorFlow.js's CPU backend holds them).
    await initBackend('cpu');
    set = AdapterSet.inject(unet, defaultAdapterSpec({ method, rank, alpha: rank, rampSteps: 0 }), {
      rng: new Rng(o.seed ?? 0, 1),
    });
    const adapters = await adapterArraysOf(set);
    const sidePaths = set.adapters.map((a) => a.path);
    set.remove();
    set = null;

    // 3. The step's session, weights read in place.
    const providers = (await providerCandidates(o.provider ?? 'cpu'))[0];
    const dtype = o.dtype ?? defaultComputeType(providers);
    const layout = trainStepWeightLayout(providers, o);
    const attention = trainStepAttention(providers, dtype);
    const st = await SafetensorsFile.open(file);
    const t0 = performance.now();
    let opened: Awaited<ReturnType<typeof openTrainStep>>;
    try {
      opened = await openTrainStep(
        { config, configSource: join(tmp, 'unet', 'config.json'), weights: safetensorsSource(st), files: [file] },
        {
          dtype,
          shape: { batch, height: latent[0], width: latent[1], tokens: 77 },
          sidePaths,
          providers,
          checkpointing: o.checkpointing ?? false,
          gradients: true,
          ...layout,
          attention,
          cacheDir: join(tmp, 'cache'),
        },
      );
    } finally {
      await st.close();
    }
    const loadS = (performance.now() - t0) / 1000;
    log(
      `session on ${providers.join('+')} (${dtype}, ${opened.meta.nodes} nodes, weights ${opened.weights}) in ${loadS.toFixed(1)} s`,
    );

    // 4. Timed steps on fixed random inputs.
    const rng = new Rng(o.seed ?? 0, 2);
    const [h, w] = latent;
    const size = batch * h * w * cfg.inChannels;
    const data: OnnxMicroBatch = {
      latents: { data: rng.normal(size), dims: [batch, h, w, cfg.inChannels] },
      noise: { data: rng.normal(size), dims: [batch, h, w, cfg.inChannels] },
      context: { data: rng.normal(batch * 77 * cfg.crossAttentionDim[0]), dims: [batch, 77, cfg.crossAttentionDim[0]] },
      timesteps: Array<number>(batch).fill(500),
    };
    const scheduler = createScheduler('ddpm', readTrainingSchedulerConfig(o.base)) as DDPMScheduler;
    const model = { session: opened.session, scheduler, adapters, optimizer: new AdamWArrays(adapters.params) };
    const msSteps: number[] = [];
    const cpuSteps: number[] = [];
    try {
      for (let i = 0; i < warmup + steps; i++) {
        const t = performance.now();
        const c0 = process.cpuUsage();
        // The training defaults (train settings: maxGradNorm 1, no min-SNR, prior weight 1).
        await onnxTrainStep(model, [data], {
          step: i,
          lr: 1e-4,
          maxGradNorm: 1,
          minSnrGamma: null,
          priorLossWeight: 1,
        });
        const ms = performance.now() - t;
        const c = process.cpuUsage(c0);
        log(`step ${i + 1}/${warmup + steps}: ${ms.toFixed(0)} ms${i < warmup ? ' (warm-up)' : ''}`);
        if (i >= warmup) {
          msSteps.push(ms);
          cpuSteps.push((c.user + c.system) / 1000);
        }
      }
    } finally {
      await opened.session.release();
    }
    const gflop = trainStepFlops(unet, batch, h, w) / 1e9;
    const msPerStep = median(msSteps);
    return {
      bench: 'train',
      engine: 'onnx',
      provider: providers.join('+'),
      dtype,
      config: {
        base: o.base,
        resolution: o.resolution,
        latent,
        batch,
        method,
        rank,
        targets: DEFAULT_TARGETS,
        checkpointing: o.checkpointing ?? false,
        steps,
        warmup,
        threads: availableParallelism(),
        weights: opened.weights,
        linear_layout: layout.linearLayout,
        prepacking: layout.prepacking,
        disabled_optimizers: layout.disableOptimizers,
        attention,
        cpu_arena: trainStepArena(providers, statSync(file).size) ?? process.env.SINGLORA_ORT_ARENA === '1',
      },
      unetParameters: unet.parameterCount(),
      adapterParameters: adapters.params.reduce((n, p) => n + p.length, 0),
      adapterLayers: adapters.layers.length,
      graph_nodes: opened.meta.nodes,
      load_s: loadS,
      ms_per_step: msPerStep,
      ms_steps: msSteps,
      cpu_ms_per_step: median(cpuSteps),
      gflop_per_step: gflop,
      gflops: msPerStep ? gflop / (msPerStep / 1000) : null,
      weight_bytes: unet.parameterCount() * 4,
      peak_rss_mb: Math.round(process.resourceUsage().maxRSS / 1024),
    };
  } finally {
    set?.remove();
    rmSync(tmp, { recursive: true, force: true });
  }
}

function median(xs: readonly number[]): number | null {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted.length ? sorted[Math.floor((sorted.length - 1) / 2)] : null;
}

/**
 * Training-step benchmark: the UNet of a config (a model folder, a `unet/` folder or a
 * config.json; random weights, so the real SD 1.5 shape needs no file), adapters injected,
 * and full optimizer steps on random latents, noise and text contexts, timed through
 * `trainStep` (train/step.ts), the very step `train` repeats (DDPM noising from the model's
 * scheduler config, or SD 1.5's; epsilon/v loss; backward; clipping; AdamW), without the
 * once-only preparation.
 *
 * Reports the median ms per step after warm-up, the peak tensor bytes of one step (tf.profile),
 * the process RSS, and the configuration, so a figure is never quoted without its setting.
 *
 * Arithmetic per step (`gflop_per_step`), counted from the kernels of one profiled step's forward
 * pass (every kernel before the loss): a matmul or convolution costs 2 x output elements x
 * reduction length (F). The backward pass computes input gradients only (the base weights are
 * frozen; the adapters' weight gradients are under 1% and not counted): one more F for each layer
 * with a weight, two more for the attention matmuls (Q K^T and P V, both operands activations,
 * told apart as the matmuls whose two operands are rank 3). So
 *   GFLOP per step = 2 x F_weights + 3 x F_attention
 * Recomputation (gradient checkpointing, the memory-efficient attention's backward) is not
 * counted: `gflops` is useful arithmetic per second.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { initBackend, memoryCounters, tf, type BackendName } from '../backend/tf.ts';
import { AdapterSet, DEFAULT_TARGETS, defaultAdapterSpec } from '../adapters/adapterSet.ts';
import { vaeScaleFactor } from '../io/modelFiles.ts';
import type { AttentionMode } from '../models/ops/tfAttention.ts';
import { loadParams, randomSource } from '../models/layers/module.ts';
import { UNet2DConditionModel } from '../models/unet2dCondition.ts';
import { SD15_SCHEDULER_CONFIG } from '../pipeline/stableDiffusion.ts';
import { Rng, randn } from '../random.ts';
import { createScheduler, parseSchedulerConfig, type RawSchedulerConfig } from '../schedulers/index.ts';
import { AdamW } from '../train/adamw.ts';
import { adapterBlockRunner, trainStep, type TrainStepOptions } from '../train/step.ts';
import { median, type TrainBenchConfig, timeSteps } from './benchSteps.ts';

export interface BenchTrainOptions {
  /** A diffusers pipeline folder, a `unet/` folder, or a UNet config.json. */
  base: string;
  resolution: number;
  steps?: number;
  warmup?: number;
  rank?: number;
  method?: 'singlora' | 'lora';
  checkpointing?: boolean;
  batch?: number;
  backend?: BackendName | 'auto';
  /** Attention in the training step (default: 'memory-efficient', as `train` uses). */
  attention?: AttentionMode;
  /** Also report the step's kernels by time (tf.profile), largest first. */
  profile?: boolean;
  seed?: number;
  log?: (line: string) => void;
}

export interface BenchTrainReport {
  bench: 'train';
  backend: string;
  device: string | null;
  config: TrainBenchConfig & {
    attention: AttentionMode;
    steps: number;
    warmup: number;
  };
  unetParameters: number;
  adapterParameters: number;
  adapterLayers: number;
  ms_per_step: number | null;
  ms_steps: number[];
  /**
   * Median process CPU time (user + system) per step. The engine runs on one thread, so on an
   * idle machine this is close to ms_per_step; on a shared one it leaves out the time other
   * processes held the core, and is the steadier figure for before/after comparisons.
   */
  cpu_ms_per_step: number | null;
  cpu_ms_steps: number[];
  /**
   * Peak of TensorFlow.js's byte counter during one step, above what was allocated before it.
   * Not the machine's memory: the counter adds a clone's bytes even when the clone shares its
   * buffer (the tape clones every tensor it saves, weights included), and it does not see
   * workspace or fragmentation. peak_rss_mb and, on wasm, wasm_heap_mb (the heap's high-water
   * mark) are what the machine saw.
   */
  peak_step_bytes: number | null;
  /** Bytes held by all tensors (weights included) at the step's peak, by the same counter. */
  peak_tensor_bytes: number | null;
  /**
   * Peak of the bytes in the backend's distinct tensor buffers during one step, above those
   * live before it (counted at the backend: a buffer shared by several tensors counts once).
   * What the step's tensors really hold; `buffer_bytes_before` is the part live before the step
   * (weights, adapters, optimizer state, inputs).
   */
  peak_step_buffer_bytes: number | null;
  buffer_bytes_before: number | null;
  /** Forward + backward arithmetic of one step (see the formula at the top of this file). */
  gflop_per_step: number | null;
  /** gflop_per_step / (ms_per_step / 1000). */
  gflops: number | null;
  /** With `profile`: the step's kernels by total time, largest first (top 20). */
  kernels?: Array<{ name: string; calls: number; ms: number; share: number }>;
  wasm_heap_mb: number | null;
  weight_bytes: number;
  peak_rss_mb: number;
  status: 'ok' | 'did not fit' | 'failed';
  error?: string;
}

/** The UNet config and the VAE factor of `base`. */
export function readUnetConfig(base: string): { config: Record<string, unknown>; vaeFactor: number } {
  const read = (p: string) => JSON.parse(readFileSync(p, 'utf8')) as Record<string, unknown>;
  if (statSync(base).isFile()) return { config: read(base), vaeFactor: vaeScaleFactor(null) };
  if (existsSync(join(base, 'unet', 'config.json'))) {
    const vae = existsSync(join(base, 'vae', 'config.json')) ? read(join(base, 'vae', 'config.json')) : null;
    return { config: read(join(base, 'unet', 'config.json')), vaeFactor: vaeScaleFactor(vae) };
  }
  if (existsSync(join(base, 'config.json')))
    return { config: read(join(base, 'config.json')), vaeFactor: vaeScaleFactor(null) };
  throw new Error(`bench train: ${base} is not a model folder, a unet/ folder or a config.json`);
}

/** The model's scheduler config when `base` is a pipeline folder that has one; SD 1.5's otherwise. */
export function readTrainingSchedulerConfig(base: string): RawSchedulerConfig {
  const folder = statSync(base).isFile() ? dirname(base) : base;
  for (const path of [
    join(folder, 'scheduler', 'scheduler_config.json'),
    join(folder, '..', 'scheduler', 'scheduler_config.json'),
  ]) {
    if (existsSync(path)) return parseSchedulerConfig(readFileSync(path, 'utf8'), path);
  }
  return { source: 'the built-in SD 1.5 scheduler config', values: SD15_SCHEDULER_CONFIG };
}

/** What both engines' training benchmarks start from: the UNet of `base`, the latent size, the defaults. */
export function benchTrainSetup(
  o: Pick<BenchTrainOptions, 'base' | 'resolution' | 'steps' | 'warmup' | 'batch' | 'rank' | 'method'>,
) {
  const { config, vaeFactor } = readUnetConfig(o.base);
  if (o.resolution % vaeFactor !== 0)
    throw new Error(`bench train: resolution ${o.resolution} is not a multiple of the VAE factor ${vaeFactor}`);
  return {
    config,
    latent: [o.resolution / vaeFactor, o.resolution / vaeFactor] as [number, number],
    steps: o.steps ?? 5,
    warmup: o.warmup ?? 1,
    batch: o.batch ?? 1,
    rank: o.rank ?? 8,
    method: o.method ?? 'singlora',
    unet: UNet2DConditionModel.fromConfig(config),
  };
}

type Setup = ReturnType<typeof benchTrainSetup>;

/** What a benchmark run holds and must free, whether or not it finished. */
interface Held {
  set: AdapterSet | null;
  opt: AdamW | null;
  owned: tf.Tensor[];
}

export async function benchTrain(o: BenchTrainOptions): Promise<BenchTrainReport> {
  const log = o.log ?? (() => {});
  const info = await initBackend(o.backend ?? 'auto');
  const setup = benchTrainSetup(o);
  const report = emptyTrainReport(o, info, setup);
  let peakRss = process.memoryUsage().rss;
  const sampleRss = () => (peakRss = Math.max(peakRss, process.memoryUsage().rss));
  const held: Held = { set: null, opt: null, owned: [] };
  try {
    log(`building ${report.unetParameters.toLocaleString('en-US')}-parameter UNet with random weights on ${info.name}`);
    const step = await prepareTrainStep(o, setup, report, held, sampleRss);
    await timeSteps(setup.warmup, setup.steps, step, log, { ms: report.ms_steps, cpuMs: report.cpu_ms_steps });
    report.ms_per_step = median(report.ms_steps);
    report.cpu_ms_per_step = median(report.cpu_ms_steps);
    await profileStep(step, report, o.profile ?? false);
  } catch (err) {
    const msg = (err as Error).message ?? String(err);
    report.status = /memory|allocat|OOM|out of bounds|abort/i.test(msg) ? 'did not fit' : 'failed';
    report.error = msg.split('\n')[0];
  } finally {
    held.opt?.dispose();
    held.set?.remove();
    tf.dispose(held.owned);
    setup.unet.dispose();
  }
  report.peak_rss_mb = Math.round(peakRss / 2 ** 20);
  const heap = memoryCounters().wasmHeapBytes;
  report.wasm_heap_mb = heap ? Math.round(heap / 2 ** 20) : null;
  return report;
}

/** The report before any step: the configuration and the UNet's size, every measurement empty. */
function emptyTrainReport(
  o: BenchTrainOptions,
  info: { name: string; device?: string | null },
  { latent, steps, warmup, batch, rank, method, unet }: Setup,
): BenchTrainReport {
  return {
    bench: 'train',
    backend: info.name,
    device: info.device ?? null,
    config: {
      base: o.base,
      resolution: o.resolution,
      latent,
      batch,
      method,
      rank,
      targets: DEFAULT_TARGETS,
      checkpointing: o.checkpointing ?? false,
      attention: o.attention ?? 'memory-efficient',
      steps,
      warmup,
    },
    unetParameters: unet.parameterCount(),
    adapterParameters: 0,
    adapterLayers: 0,
    ms_per_step: null,
    ms_steps: [],
    cpu_ms_per_step: null,
    cpu_ms_steps: [],
    peak_step_bytes: null,
    peak_tensor_bytes: null,
    peak_step_buffer_bytes: null,
    buffer_bytes_before: null,
    gflop_per_step: null,
    gflops: null,
    wasm_heap_mb: null,
    weight_bytes: unet.parameterCount() * 4,
    peak_rss_mb: 0,
    status: 'ok',
  };
}

/**
 * Random UNet weights, adapters, AdamW and fixed random inputs (all recorded in `held`); returns
 * one training step, which samples the RSS after it.
 */
async function prepareTrainStep(
  o: BenchTrainOptions,
  { latent, batch, rank, method, unet }: Setup,
  report: BenchTrainReport,
  held: Held,
  sampleRss: () => void,
): Promise<() => Promise<void>> {
  await loadParams(unet, randomSource(unet, o.seed ?? 0), 'unet');
  sampleRss();
  const set = AdapterSet.inject(unet, defaultAdapterSpec({ method, rank, alpha: rank, rampSteps: 0 }), {
    rng: new Rng(o.seed ?? 0, 1),
  });
  held.set = set;
  report.adapterParameters = set.parameterCount();
  report.adapterLayers = set.size;
  held.opt = new AdamW(set.variables());
  const cfg = unet.config;
  const rng = new Rng(o.seed ?? 0, 2);
  const latents = randn(rng, [batch, latent[0], latent[1], cfg.inChannels]);
  const noise = randn(rng, [batch, latent[0], latent[1], cfg.outChannels]);
  const context = randn(rng, [batch, 77, cfg.crossAttentionDim[0]]);
  held.owned.push(latents, noise, context);
  const model = {
    unet,
    scheduler: createScheduler('ddpm', readTrainingSchedulerConfig(o.base)),
    adapters: set,
    optimizer: held.opt,
    runBlock: o.checkpointing ? adapterBlockRunner(set) : undefined,
  };
  const batchOf = { latents, noise, context, timesteps: Array<number>(batch).fill(500) };
  // The training defaults (train settings: maxGradNorm 1, no min-SNR, prior weight 1).
  const stepOptions: Omit<TrainStepOptions, 'step'> = {
    lr: 1e-4,
    maxGradNorm: 1,
    minSnrGamma: null,
    priorLossWeight: 1,
  };
  let taken = 0;
  return async () => {
    await trainStep(model, [batchOf], { ...stepOptions, step: taken++, attention: report.config.attention });
    sampleRss();
  };
}

/** One more step under tf.profile: its peak bytes, distinct buffer bytes, FLOP and (with `profile`) kernels. */
async function profileStep(step: () => Promise<void>, report: BenchTrainReport, profile: boolean): Promise<void> {
  const before = tf.memory().numBytes;
  report.buffer_bytes_before = before; // no tape yet, so no clones: each buffer counted once
  const buffers = trackBufferBytes();
  let prof: Awaited<ReturnType<typeof tf.profile>>;
  try {
    prof = await tf.profile(step);
  } finally {
    buffers.stop();
  }
  report.peak_step_buffer_bytes = buffers.peak;
  report.peak_step_bytes = Math.max(0, prof.peakBytes - before);
  report.peak_tensor_bytes = prof.peakBytes;
  report.gflop_per_step = stepFlops(prof.kernels) / 1e9;
  if (report.ms_per_step) report.gflops = report.gflop_per_step / (report.ms_per_step / 1000);
  if (profile) report.kernels = kernelTimes(prof.kernels);
}

type KernelRecord = {
  name: string;
  inputShapes: Array<number[] | null>;
  outputShapes: Array<number[] | null>;
  kernelTimeMs: unknown;
};

const size = (s: number[] | null | undefined) => (s ?? []).reduce((a, b) => a * b, 1);

/** Forward + backward FLOP of a profiled training step (the formula at the top of this file). */
export function stepFlops(kernels: readonly KernelRecord[]): number {
  let weights = 0;
  let attention = 0;
  for (const k of kernels) {
    if (k.name === 'SquaredDifference') break; // the loss: the forward pass ends here
    const out = size(k.outputShapes[0]);
    const [a, b] = k.inputShapes;
    if (!a || !b) continue;
    if (k.name === 'BatchMatMul' || k.name === '_FusedMatMul') {
      // A [..., M, K] x B [..., K, N] (either may be transposed): K^2 = (MK)(KN)/(MN).
      const lead = (s: number[]) => size(s.slice(0, -2));
      const reduction = Math.sqrt(((size(a) / lead(a)) * (size(b) / lead(b))) / (out / lead(k.outputShapes[0]!)));
      const flop = 2 * out * reduction;
      if (a.length === 3 && b.length === 3) attention += flop;
      else weights += flop;
    } else if (k.name === 'Conv2D' || k.name === 'FusedConv2D') {
      weights += 2 * out * b[0] * b[1] * b[2]; // filter [kh, kw, in, out]
    } else if (k.name === 'DepthwiseConv2dNative' || k.name === 'FusedDepthwiseConv2D') {
      weights += 2 * out * b[0] * b[1];
    }
  }
  return 2 * weights + 3 * attention;
}

/** Kernels by total time, largest first; nested (customGrad) wrappers are not kernels and are skipped. */
function kernelTimes(kernels: readonly KernelRecord[]): NonNullable<BenchTrainReport['kernels']> {
  const byName = new Map<string, { calls: number; ms: number }>();
  let total = 0;
  for (const k of kernels) {
    if (!tf.getKernel(k.name, tf.getBackend())) continue;
    const ms = typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0;
    const e = byName.get(k.name) ?? { calls: 0, ms: 0 };
    e.calls++;
    e.ms += ms;
    byName.set(k.name, e);
    total += ms;
  }
  return [...byName]
    .sort((x, y) => y[1].ms - x[1].ms)
    .slice(0, 20)
    .map(([name, e]) => ({
      name,
      calls: e.calls,
      ms: Math.round(e.ms * 10) / 10,
      share: Math.round((e.ms / (total || 1)) * 1000) / 1000,
    }));
}

/**
 * Counts the bytes of the backend's distinct buffers as they are written and freed (wrapping
 * `write` and `disposeData`, which every backend here has), from zero at the call.
 */
function trackBufferBytes(): { readonly peak: number; stop(): void } {
  type Backend = {
    write(values: unknown, shape: number[], dtype: tf.DataType): object;
    disposeData(dataId: object, force?: boolean): boolean;
  };
  const backend = tf.backend() as unknown as Backend;
  const write = backend.write;
  const disposeData = backend.disposeData;
  const live = new Map<object, number>();
  let current = 0;
  const state = { peak: 0 };
  backend.write = function (values, shape, dtype) {
    const dataId = write.call(this, values, shape, dtype);
    const bytes =
      dtype === 'string' ? 0 : shape.reduce((a, b) => a * b, 1) * tf.util.bytesPerElement(dtype as 'float32');
    live.set(dataId, bytes);
    current += bytes;
    state.peak = Math.max(state.peak, current);
    return dataId;
  };
  backend.disposeData = function (dataId, force) {
    const freed = disposeData.call(this, dataId, force);
    if (freed && live.has(dataId)) {
      current -= live.get(dataId)!;
      live.delete(dataId);
    }
    return freed;
  };
  return {
    get peak() {
      return state.peak;
    },
    stop() {
      backend.write = write;
      backend.disposeData = disposeData;
    },
  };
}

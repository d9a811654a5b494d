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
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { initBackend, memoryCounters, tf, type BackendName } from '../backend/tf.ts';
import { AdapterSet, DEFAULT_TARGETS, defaultAdapterSpec } from '../adapters/adapterSet.ts';
import { vaeScaleFactor } from '../io/modelFiles.ts';
import { loadParams, randomSource } from '../models/layers/module.ts';
import { UNet2DConditionModel } from '../models/unet2dCondition.ts';
import { SD15_SCHEDULER_CONFIG } from '../pipeline/stableDiffusion.ts';
import { Rng, randn } from '../random.ts';
import { createScheduler, parseSchedulerConfig, type RawSchedulerConfig } from '../schedulers/index.ts';
import { AdamW } from '../train/adamw.ts';
import { adapterBlockRunner, trainStep, type TrainStepOptions } from '../train/step.ts';

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
  seed?: number;
  log?: (line: string) => void;
}

export interface BenchTrainReport {
  bench: 'train';
  backend: string;
  device: string | null;
  config: { base: string; resolution: number; latent: [number, number]; batch: number; method: string; rank: number; targets: readonly string[]; checkpointing: boolean; steps: number; warmup: number };
  unetParameters: number;
  adapterParameters: number;
  adapterLayers: number;
  ms_per_step: number | null;
  ms_steps: number[];
  /**
   * Peak of TensorFlow.js's byte counter during one step, above what was allocated before it.
   * Not the machine's memory: the counter adds a clone's bytes even when the clone shares its
   * buffer (the tape clones every tensor it saves, weights included), and it does not see
   * workspace or fragmentation. peak_rss_mb and, on wasm, wasm_heap_mb (the heap's high-water
   * mark) are what the machine saw.
   */
  peak_step_bytes: number | null;
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
  if (existsSync(join(base, 'config.json'))) return { config: read(join(base, 'config.json')), vaeFactor: vaeScaleFactor(null) };
  throw new Error(`bench train: ${base} is not a model folder, a unet/ folder or a config.json`);
}

/** The model's scheduler config when `base` is a pipeline folder that has one; SD 1.5's otherwise. */
function readTrainingSchedulerConfig(base: string): RawSchedulerConfig {
  const folder = statSync(base).isFile() ? dirname(base) : base;
  for (const path of [join(folder, 'scheduler', 'scheduler_config.json'), join(folder, '..', 'scheduler', 'scheduler_config.json')]) {
    if (existsSync(path)) return parseSchedulerConfig(readFileSync(path, 'utf8'), path);
  }
  return { source: 'the built-in SD 1.5 scheduler config', values: SD15_SCHEDULER_CONFIG };
}

export async function benchTrain(o: BenchTrainOptions): Promise<BenchTrainReport> {
  const log = o.log ?? (() => {});
  const info = await initBackend(o.backend ?? 'auto');
  const { config, vaeFactor } = readUnetConfig(o.base);
  if (o.resolution % vaeFactor !== 0) throw new Error(`bench train: resolution ${o.resolution} is not a multiple of the VAE factor ${vaeFactor}`);
  const latent: [number, number] = [o.resolution / vaeFactor, o.resolution / vaeFactor];
  const steps = o.steps ?? 5;
  const warmup = o.warmup ?? 1;
  const batch = o.batch ?? 1;
  const rank = o.rank ?? 8;
  const method = o.method ?? 'singlora';
  const unet = UNet2DConditionModel.fromConfig(config);
  const report: BenchTrainReport = {
    bench: 'train',
    backend: info.name,
    device: info.device ?? null,
    config: { base: o.base, resolution: o.resolution, latent, batch, method, rank, targets: DEFAULT_TARGETS, checkpointing: o.checkpointing ?? false, steps, warmup },
    unetParameters: unet.parameterCount(),
    adapterParameters: 0,
    adapterLayers: 0,
    ms_per_step: null,
    ms_steps: [],
    peak_step_bytes: null,
    wasm_heap_mb: null,
    weight_bytes: unet.parameterCount() * 4,
    peak_rss_mb: 0,
    status: 'ok',
  };
  let peakRss = process.memoryUsage().rss;
  const sampleRss = () => (peakRss = Math.max(peakRss, process.memoryUsage().rss));
  let set: AdapterSet | null = null;
  let opt: AdamW | null = null;
  const owned: tf.Tensor[] = [];
  try {
    log(`building ${report.unetParameters.toLocaleString('en-US')}-parameter UNet with random weights on ${info.name}`);
    await loadParams(unet, randomSource(unet, o.seed ?? 0), 'unet');
    sampleRss();
    set = AdapterSet.inject(unet, defaultAdapterSpec({ method, rank, alpha: rank, rampSteps: 0 }), { rng: new Rng(o.seed ?? 0, 1) });
    report.adapterParameters = set.parameterCount();
    report.adapterLayers = set.size;
    opt = new AdamW(set.variables());
    const cfg = unet.config;
    const rng = new Rng(o.seed ?? 0, 2);
    const latents = randn(rng, [batch, latent[0], latent[1], cfg.inChannels]);
    const noise = randn(rng, [batch, latent[0], latent[1], cfg.outChannels]);
    const context = randn(rng, [batch, 77, cfg.crossAttentionDim[0]]);
    owned.push(latents, noise, context);
    const model = { unet, scheduler: createScheduler('ddpm', readTrainingSchedulerConfig(o.base)), adapters: set, optimizer: opt, runBlock: o.checkpointing ? adapterBlockRunner(set) : undefined };
    const batchOf = { latents, noise, context, timesteps: Array<number>(batch).fill(500) };
    // The training defaults (train settings: maxGradNorm 1, no min-SNR, prior weight 1).
    const stepOptions: Omit<TrainStepOptions, 'step'> = { lr: 1e-4, maxGradNorm: 1, minSnrGamma: null, priorLossWeight: 1 };
    let taken = 0;
    const step = async () => {
      await trainStep(model, [batchOf], { ...stepOptions, step: taken++ });
      sampleRss();
    };
    for (let i = 0; i < warmup + steps; i++) {
      const t0 = performance.now();
      await step();
      const ms = performance.now() - t0;
      log(`step ${i + 1}/${warmup + steps}: ${ms.toFixed(0)} ms${i < warmup ? ' (warm-up)' : ''}`);
      if (i >= warmup) report.ms_steps.push(ms);
    }
    const sorted = [...report.ms_steps].sort((a, b) => a - b);
    report.ms_per_step = sorted.length ? sorted[Math.floor((sorted.length - 1) / 2)] : null;
    const before = tf.memory().numBytes;
    const prof = await tf.profile(step);
    report.peak_step_bytes = Math.max(0, prof.peakBytes - before);
  } catch (err) {
    const msg = (err as Error).message ?? String(err);
    report.status = /memory|allocat|OOM|out of bounds|abort/i.test(msg) ? 'did not fit' : 'failed';
    report.error = msg.split('\n')[0];
  } finally {
    opt?.dispose();
    set?.remove();
    tf.dispose(owned);
    unet.dispose();
  }
  report.peak_rss_mb = Math.round(peakRss / 2 ** 20);
  const heap = memoryCounters().wasmHeapBytes;
  report.wasm_heap_mb = heap ? Math.round(heap / 2 ** 20) : null;
  return report;
}

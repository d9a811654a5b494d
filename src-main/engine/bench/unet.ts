/**
 * UNet benchmark (`singlora bench unet`): builds a UNet2DConditionModel from a config with seeded
 * random weights (no checkpoint file needed), then reports its size and how long one forward takes
 * on the active backend at the requested latent sizes.
 *
 *   parameterCount / weightBytes    from the module tree (float32: 4 bytes per parameter)
 *   msPerForward                    mean over `iters` timed forwards after `warmup` untimed ones;
 *                                   each includes reading the output back (so async backends finish)
 *   peakTensorBytes                 live tensor bytes at the peak of one extra forward run under
 *                                   tf.profile (per-kernel byte snapshots), weights excluded
 *   peakRssBytes                    the process's peak resident memory (getrusage maxRSS)
 *   wasmHeapBytes                   the wasm heap size (it only grows; 4 GiB at most)
 *
 * An allocation failure (weights or activations) is reported as "did not fit" rather than thrown.
 * On wasm such a failure aborts the module, so later sizes are reported as skipped. Note that
 * XNNPACK keeps a packed copy of every conv/matmul weight it has run, so on wasm the weights need
 * about twice their size in the 4 GiB heap (the SD 1.5 UNet's 3.3 GB do not fit).
 * The profiled forward runs only after a plain one succeeded: tf.profile times kernels in promises,
 * so a kernel that aborts under it leaves an unhandled rejection that ends the process.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { activeBackend, initBackend, memoryCounters, tf, type BackendName } from '../backend/tf.ts';
import { loadParams, randomSource } from '../models/layers/module.ts';
import { UNet2DConditionModel } from '../models/unet2dCondition.ts';

export interface BenchUnetOptions {
  /** A raw UNet config object, a config.json path, or a diffusers `unet/` folder. */
  config: string | Record<string, unknown>;
  /** Latent sizes to time: a side, or [height, width]. Default: the config's sample_size (else 64). */
  latentSizes?: ReadonlyArray<number | readonly [number, number]>;
  batch?: number;
  /** Text tokens in the cross-attention context (77 for CLIP). */
  tokens?: number;
  warmup?: number;
  iters?: number;
  seed?: number;
  /** Run one more forward under tf.profile for the activation peak (default true). */
  measurePeak?: boolean;
  /** Backend to start if none is active yet (default: auto / SINGLORA_BACKEND). */
  backend?: BackendName | 'auto';
  /** Progress lines. */
  log?: (line: string) => void;
}

export interface BenchUnetSize {
  latent: [number, number];
  batch: number;
  status: 'ok' | 'did not fit' | 'failed' | 'skipped';
  error?: string;
  msPerForward?: number;
  msMin?: number;
  /** The first (warm-up) forward, which includes one-time kernel setup. */
  msFirst?: number;
  peakTensorBytes?: number;
}

export interface BenchUnetReport {
  backend: string;
  device?: string;
  config: string;
  parameterCount: number;
  weightBytes: number;
  /** Time to generate the random weights and upload them to the backend. */
  initMs: number;
  weights: 'ok' | 'did not fit' | 'failed';
  weightsError?: string;
  sizes: BenchUnetSize[];
  peakRssBytes: number;
  wasmHeapBytes?: number;
  /** tf.memory().numBytes with the weights loaded (before they are disposed). */
  tensorBytesWithWeights?: number;
}

export async function benchUnet(options: BenchUnetOptions): Promise<BenchUnetReport> {
  const log = options.log ?? (() => {});
  const batch = options.batch ?? 1;
  const tokens = options.tokens ?? 77;
  const warmup = options.warmup ?? 1;
  const iters = options.iters ?? 3;
  const seed = options.seed ?? 0;
  const measurePeak = options.measurePeak ?? true;
  const info = activeBackend() ?? (await initBackend(options.backend));
  const { raw, description } = await readUNetConfig(options.config);

  const unet = UNet2DConditionModel.fromConfig(raw);
  const cfg = unet.config;
  const parameterCount = unet.parameterCount();
  const report: BenchUnetReport = {
    backend: info.name,
    device: info.device,
    config: description,
    parameterCount,
    weightBytes: parameterCount * 4,
    initMs: 0,
    weights: 'ok',
    sizes: [],
    peakRssBytes: 0,
  };
  log(
    `${description}: ${parameterCount.toLocaleString('en-US')} parameters (${mib(report.weightBytes)}) on ${info.name}`,
  );

  const sizes = (options.latentSizes?.length ? options.latentSizes : [defaultSize(cfg.sampleSize)]).map(toSize);
  const t0 = performance.now();
  try {
    await loadParams(unet, randomSource(unet, seed), 'unet');
    report.initMs = performance.now() - t0;
    report.tensorBytesWithWeights = tf.memory().numBytes;
    log(`random weights ready in ${(report.initMs / 1000).toFixed(1)} s`);
  } catch (err) {
    report.weights = isAllocationFailure(err) ? 'did not fit' : 'failed';
    report.weightsError = message(err);
    report.sizes = sizes.map((latent) => ({ latent, batch, status: 'skipped', error: 'weights not loaded' }));
    log(`weights ${report.weights}: ${report.weightsError}`);
    safeDispose(unet);
    return finish(report);
  }

  let aborted = false;
  for (const latent of sizes) {
    if (aborted) {
      report.sizes.push({ latent, batch, status: 'skipped', error: 'the backend aborted on an earlier size' });
      continue;
    }
    const result = await benchOneSize(unet, latent, {
      batch,
      tokens,
      warmup,
      iters,
      seed,
      measurePeak,
      contextDim: cfg.crossAttentionDim[0],
      inChannels: cfg.inChannels,
    });
    report.sizes.push(result);
    log(formatSize(result));
    if (result.status === 'did not fit' && info.name === 'wasm') aborted = true;
  }
  safeDispose(unet);
  return finish(report);
}

async function benchOneSize(
  unet: UNet2DConditionModel,
  latent: [number, number],
  o: {
    batch: number;
    tokens: number;
    warmup: number;
    iters: number;
    seed: number;
    measurePeak: boolean;
    contextDim: number;
    inChannels: number;
  },
): Promise<BenchUnetSize> {
  const result: BenchUnetSize = { latent, batch: o.batch, status: 'ok' };
  let sample: tf.Tensor | null = null;
  let context: tf.Tensor | null = null;
  try {
    sample = tf.randomNormal([o.batch, latent[0], latent[1], o.inChannels], 0, 1, 'float32', o.seed + 1);
    context = tf.randomNormal([o.batch, o.tokens, o.contextDim], 0, 1, 'float32', o.seed + 2);
    const s = sample;
    const c = context;
    const forward = async () => {
      const out = unet.forward(s, 500, c);
      await out.data();
      out.dispose();
    };
    let ran = false;
    for (let i = 0; i < o.warmup; i++) {
      const start = performance.now();
      await forward();
      if (i === 0) result.msFirst = performance.now() - start;
      ran = true;
    }
    const times: number[] = [];
    for (let i = 0; i < o.iters; i++) {
      const start = performance.now();
      await forward();
      times.push(performance.now() - start);
      ran = true;
    }
    if (times.length) {
      result.msPerForward = times.reduce((a, b) => a + b, 0) / times.length;
      result.msMin = Math.min(...times);
    }
    if (o.measurePeak) {
      if (!ran) await forward(); // never profile a first run (see the file comment)
      const before = tf.memory().numBytes;
      const profile = await tf.profile(forward);
      result.peakTensorBytes = profile.peakBytes - before;
    }
  } catch (err) {
    result.status = isAllocationFailure(err) ? 'did not fit' : 'failed';
    result.error = message(err);
    const heap = memoryCounters().wasmHeapBytes;
    if (heap !== undefined) result.error += ` (wasm heap ${mib(heap)} of 4096 MiB)`;
  } finally {
    for (const t of [sample, context]) safeDispose(t);
  }
  return result;
}

/** A UNet config: inline, a config.json, a `unet/` folder or a model folder (its `unet/config.json`). */
export async function readUNetConfig(
  config: BenchUnetOptions['config'],
): Promise<{ raw: Record<string, unknown>; description: string }> {
  if (typeof config !== 'string')
    return { raw: config, description: String(config._name_or_path ?? 'UNet config (inline)') };
  let path = config;
  if ((await stat(config)).isDirectory()) {
    const candidates = [join(config, 'config.json'), join(config, 'unet', 'config.json')];
    const found = await Promise.all(
      candidates.map((c) =>
        stat(c).then(
          (st) => st.isFile(),
          () => false,
        ),
      ),
    );
    const i = found.indexOf(true);
    if (i < 0)
      throw new Error(
        `${config}: no config.json or unet/config.json in this folder (expected a UNet config, a unet/ folder or a model folder)`,
      );
    path = candidates[i];
  }
  return { raw: JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>, description: path };
}

function defaultSize(sampleSize: number | readonly [number, number] | null): [number, number] {
  if (sampleSize === null) return [64, 64];
  return typeof sampleSize === 'number' ? [sampleSize, sampleSize] : [sampleSize[0], sampleSize[1]];
}

function toSize(s: number | readonly [number, number]): [number, number] {
  const size: [number, number] = typeof s === 'number' ? [s, s] : [s[0], s[1]];
  if (!size.every((d) => Number.isInteger(d) && d > 0))
    throw new Error(`benchUnet: latent size ${JSON.stringify(s)} must be a positive integer or [height, width]`);
  return size;
}

function finish(report: BenchUnetReport): BenchUnetReport {
  report.peakRssBytes = process.resourceUsage().maxRSS * 1024;
  const counters = memoryCounters();
  if (counters.wasmHeapBytes !== undefined) report.wasmHeapBytes = counters.wasmHeapBytes;
  return report;
}

/** wasm heap exhaustion, a JS ArrayBuffer failure, or a GPU out-of-memory. */
function isAllocationFailure(err: unknown): boolean {
  return /memory|alloc|Aborted|OOM|Array buffer|Invalid typed array length|enlarge/i.test(message(err));
}

function message(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0];
}

/** After a wasm abort even dispose can throw; the numbers are what matter then. */
function safeDispose(x: { dispose(): void } | null): void {
  try {
    x?.dispose();
  } catch {
    /* the backend is gone */
  }
}

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

function formatSize(r: BenchUnetSize): string {
  const size = `${r.batch}x${r.latent[0]}x${r.latent[1]} latent`;
  if (r.status !== 'ok') return `${size}: ${r.status}${r.error ? ` (${r.error})` : ''}`;
  const ms =
    r.msPerForward === undefined
      ? 'no timed iterations'
      : `${r.msPerForward.toFixed(1)} ms/forward (min ${r.msMin!.toFixed(1)})`;
  const first = r.msFirst === undefined ? '' : `, first ${r.msFirst.toFixed(1)} ms`;
  const peak = r.peakTensorBytes === undefined ? '' : `, peak activations ${mib(r.peakTensorBytes)}`;
  return `${size}: ${ms}${first}${peak}`;
}

/** A plain-text summary for the CLI. */
export function formatBenchUnet(r: BenchUnetReport): string {
  const lines = [
    `UNet benchmark on ${r.backend}${r.device ? ` (${r.device})` : ''}`,
    `  config:      ${r.config}`,
    `  parameters:  ${r.parameterCount.toLocaleString('en-US')} (${mib(r.weightBytes)} float32)`,
    `  weights:     ${r.weights}${r.weightsError ? ` (${r.weightsError})` : ` in ${(r.initMs / 1000).toFixed(1)} s`}`,
    ...r.sizes.map((s) => `  ${formatSize(s)}`),
    `  peak RSS:    ${mib(r.peakRssBytes)}${r.wasmHeapBytes !== undefined ? `, wasm heap ${mib(r.wasmHeapBytes)}` : ''}`,
  ];
  return lines.join('\n');
}

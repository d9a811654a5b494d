/**
 * UNet benchmark on ONNX Runtime (`singlora bench unet --engine onnx`): seeded random weights in
 * the config's shape are first written to a temporary `.safetensors` file, so that what is timed
 * is the real path (graph emitted from engine/models, weights read in place from the file).
 *
 *   load_s            session creation: graph emission + ONNX Runtime reading the weights
 *   ms_per_forward    mean of `iters` timed forwards after `warmup` untimed ones, per size
 *   gflop             forward FLOPs at that size (models/ops/flopOps.ts: products only)
 *   gflops_per_s      gflop / (ms_per_forward / 1000)
 *   peak_rss_mb       the process's peak resident memory (getrusage maxRSS)
 */
import { rmSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { SessionTensor } from '../backend/onnxRuntime.ts';
import { SafetensorsFile } from '../io/safetensors.ts';
import { safetensorsSource } from '../io/weightSource.ts';
import { DEFAULT_TARGETS, findTargets } from '../adapters/adapterSet.ts';
import { unetForwardFlops } from '../models/ops/flopOps.ts';
import { UNet2DConditionModel } from '../models/unet2dCondition.ts';
import { emitUNet } from '../onnx/componentGraphs.ts';
import { openGraph } from '../onnx/graphSessions.ts';
import { defaultAttention, sidePathFeeds } from '../onnx/onnxDiffusion.ts';
import type { ComputeType } from '../onnx/onnxOps.ts';
import { defaultComputeType, providerCandidates, type ProviderChoice } from '../onnx/providers.ts';
import { benchTempDir, writeRandomUnet } from './benchSteps.ts';
import { readUNetConfig } from './unet.ts';
import type { WeightFileDtype } from '../../api/schemas.ts';

export interface BenchUnetOnnxOptions {
  /** A UNet config.json, a `unet/` folder or a model folder. */
  config: string;
  latentSizes?: ReadonlyArray<readonly [number, number]>;
  batch?: number;
  tokens?: number;
  iters?: number;
  warmup?: number;
  provider?: ProviderChoice;
  /** Default: float16 on GPU providers, float32 on the CPU. */
  dtype?: ComputeType;
  /** Weights written as F16 (default F32). */
  fileDtype?: WeightFileDtype;
  /** Hand the weights to ONNX Runtime in memory instead of linking the file. */
  inMemory?: boolean;
  log?: (line: string) => void;
}

export interface BenchUnetOnnxReport {
  bench: 'unet';
  engine: 'onnx';
  provider: string;
  dtype: ComputeType;
  config: {
    path: string;
    batch: number;
    tokens: number;
    iters: number;
    warmup: number;
    file_dtype: string;
    weights: 'linked' | 'in-memory';
    threads: number;
  };
  parameters: number;
  weight_bytes: number;
  write_s: number;
  load_s: number;
  sizes: Array<{
    latent: [number, number];
    ms_per_forward: number;
    ms_first: number;
    gflop: number;
    gflops_per_s: number;
  }>;
  rss_after_load_mb: number;
  peak_rss_mb: number;
}

type OpenedGraph = Awaited<ReturnType<typeof openGraph>>;

export async function benchUnetOnnx(o: BenchUnetOnnxOptions): Promise<BenchUnetOnnxReport> {
  const log = o.log ?? (() => {});
  const batch = o.batch ?? 2;
  const tokens = o.tokens ?? 77;
  const iters = o.iters ?? 3;
  const warmup = o.warmup ?? 1;
  const { raw, description: configPath } = await readUNetConfig(o.config);
  const unet = UNet2DConditionModel.fromConfig(raw);
  const sizes = o.latentSizes ?? [[64, 64] as const];
  const tmp = benchTempDir('bench-unet-'); // beside the ONNX cache: the same file system, so the weights can be linked
  try {
    // 1. Random weights into a file, one tensor at a time.
    const t0 = performance.now();
    const { file } = await writeRandomUnet(tmp, unet, raw, { seed: 0, dtype: o.fileDtype ?? 'F32' });
    const writeS = (performance.now() - t0) / 1000;
    log(
      `wrote ${unet.parameterCount().toLocaleString()} random parameters (${o.fileDtype ?? 'F32'}) to ${file} in ${writeS.toFixed(1)} s`,
    );
    // 2. The session, weights read in place.
    const s = await openUnetSession(o, unet, raw, { file, tmp }, log);
    // 3. Timed forwards, with no adapter (rank-0 or zero rank-1 side-path factors).
    const results: BenchUnetOnnxReport['sizes'] = [];
    try {
      const sideFeeds = sidePathFeeds(s.opened.meta.sidePaths, [], s.providers);
      for (const [h, w] of sizes) {
        const feeds = { ...forwardFeeds(unet, batch, h, w, tokens), ...sideFeeds };
        const { first, ms } = await timeForwards(s.opened, feeds, warmup, iters);
        const gflop = unetForwardFlops(unet, batch, h, w, tokens) / 1e9;
        results.push({ latent: [h, w], ms_per_forward: ms, ms_first: first, gflop, gflops_per_s: gflop / (ms / 1000) });
        log(
          `latent ${h}x${w}, batch ${batch}: ${ms.toFixed(1)} ms per forward, ${gflop.toFixed(1)} GFLOP, ${(gflop / (ms / 1000)).toFixed(1)} GFLOP/s`,
        );
      }
    } finally {
      await s.opened.session.release();
    }
    return {
      bench: 'unet',
      engine: 'onnx',
      provider: s.providers.join('+'),
      dtype: s.dtype,
      config: {
        path: configPath,
        batch,
        tokens,
        iters,
        warmup,
        file_dtype: o.fileDtype ?? 'F32',
        weights: s.opened.weights,
        threads: availableParallelism(),
      },
      parameters: unet.parameterCount(),
      weight_bytes: (await stat(file)).size,
      write_s: writeS,
      load_s: s.loadS,
      sizes: results,
      rss_after_load_mb: s.rssAfterLoad / 2 ** 20,
      peak_rss_mb: process.resourceUsage().maxRSS / 1024,
    };
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** The UNet's session over the weights file, timed (load_s), and the process RSS right after it. */
async function openUnetSession(
  o: BenchUnetOnnxOptions,
  unet: UNet2DConditionModel,
  raw: Record<string, unknown>,
  at: { file: string; tmp: string },
  log: (line: string) => void,
) {
  const providers = (await providerCandidates(o.provider ?? 'cpu'))[0];
  const dtype = o.dtype ?? defaultComputeType(providers);
  const side = findTargets(unet, DEFAULT_TARGETS).map((t) => t.path);
  const st = await SafetensorsFile.open(at.file);
  const t1 = performance.now();
  let opened: OpenedGraph;
  try {
    opened = await openGraph(
      {
        kind: 'unet',
        dtype,
        sidePaths: side,
        attention: defaultAttention(providers),
        config: raw,
        files: [at.file],
        emit: () =>
          emitUNet(unet, safetensorsSource(st), { dtype, sidePaths: side, attention: defaultAttention(providers) }),
      },
      { providers, cacheDir: join(at.tmp, 'cache'), inMemory: o.inMemory },
    );
  } finally {
    await st.close();
  }
  const loadS = (performance.now() - t1) / 1000;
  const rssAfterLoad = process.memoryUsage().rss;
  log(
    `session on ${providers.join('+')} (${dtype}, weights ${opened.weights}) in ${loadS.toFixed(1)} s; rss ${(rssAfterLoad / 2 ** 20).toFixed(0)} MiB`,
  );
  return { opened, providers, dtype, loadS, rssAfterLoad };
}

/** Deterministic inputs of one forward at latent [h, w] (sin and cos ramps, timestep 500). */
function forwardFeeds(
  unet: UNet2DConditionModel,
  batch: number,
  h: number,
  w: number,
  tokens: number,
): Record<string, SessionTensor> {
  const cfg = unet.config;
  return {
    sample: {
      type: 'float32',
      data: Float32Array.from({ length: batch * h * w * cfg.inChannels }, (_, i) => Math.sin(i)),
      dims: [batch, h, w, cfg.inChannels],
    },
    timestep: { type: 'float32', data: new Float32Array(batch).fill(500), dims: [batch] },
    encoder_hidden_states: {
      type: 'float32',
      data: Float32Array.from({ length: batch * tokens * cfg.crossAttentionDim[0] }, (_, i) => Math.cos(i)),
      dims: [batch, tokens, cfg.crossAttentionDim[0]],
    },
  };
}

/** `warmup` untimed forwards (the first one's ms kept), then the mean ms of `iters` timed ones. */
async function timeForwards(
  opened: OpenedGraph,
  feeds: Record<string, SessionTensor>,
  warmup: number,
  iters: number,
): Promise<{ first: number; ms: number }> {
  let first = 0;
  for (let i = 0; i < warmup; i++) {
    const s = performance.now();
    await opened.session.run(feeds, ['noise_pred']);
    if (i === 0) first = performance.now() - s;
  }
  const s = performance.now();
  for (let i = 0; i < iters; i++) await opened.session.run(feeds, ['noise_pred']);
  return { first, ms: (performance.now() - s) / iters };
}

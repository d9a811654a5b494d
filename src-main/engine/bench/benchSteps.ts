/**
 * Pieces the training and UNet benchmarks share: the temporary folder beside the ONNX cache, the
 * seeded random UNet written to a `.safetensors` file, the timed step loop and the median.
 */
import { mkdirSync, mkdtempSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeSafetensors } from '../io/safetensors.ts';
import { randomSource } from '../models/layers/module.ts';
import type { UNet2DConditionModel } from '../models/unet2dCondition.ts';
import { defaultCacheDir } from '../paths.ts';
import type { WeightFileDtype } from '../../api/schemas.ts';

/** A fresh temporary folder beside the ONNX cache: the same file system, so the weights can be linked. */
export function benchTempDir(prefix: string): string {
  mkdirSync(defaultCacheDir(), { recursive: true });
  return mkdtempSync(join(defaultCacheDir(), prefix));
}

/**
 * Writes `config` and the UNet's seeded random weights, one tensor at a time, as a diffusers
 * `unet/` folder under `dir`; returns the weights file and the config's path.
 */
export async function writeRandomUnet(
  dir: string,
  unet: UNet2DConditionModel,
  config: Record<string, unknown>,
  o: { seed: number; dtype: WeightFileDtype },
): Promise<{ file: string; configPath: string }> {
  const file = join(dir, 'unet', 'diffusion_pytorch_model.safetensors');
  const configPath = join(dir, 'unet', 'config.json');
  await mkdir(join(dir, 'unet'), { recursive: true });
  await writeFile(configPath, JSON.stringify(config));
  const src = randomSource(unet, o.seed);
  const tensors = new Map(
    [...unet.namedParams()].map(([k, p]) => [k, { shape: p.shape, dtype: o.dtype, read: () => src.read(k) }] as const),
  );
  await writeSafetensors(file, tensors);
  return { file, configPath };
}

/** Wall and process CPU milliseconds of the timed steps (the warm-up steps are not kept). */
export interface StepTimes {
  ms: number[];
  cpuMs: number[];
}

/**
 * Runs `warmup + steps` steps, timing each by the wall clock (performance.now) and by the
 * process's CPU time (user + system, all threads), and logs one line per step. The times are
 * pushed into `times` as they come, so a step that throws leaves those before it there.
 */
export async function timeSteps(
  warmup: number,
  steps: number,
  step: (i: number) => Promise<void>,
  log: (line: string) => void,
  times: StepTimes = { ms: [], cpuMs: [] },
): Promise<StepTimes> {
  for (let i = 0; i < warmup + steps; i++) {
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    await step(i);
    const ms = performance.now() - t0;
    const c = process.cpuUsage(c0);
    log(`step ${i + 1}/${warmup + steps}: ${ms.toFixed(0)} ms${i < warmup ? ' (warm-up)' : ''}`);
    if (i >= warmup) {
      times.ms.push(ms);
      times.cpuMs.push((c.user + c.system) / 1000);
    }
  }
  return times;
}

/** The lower median (an element of `xs`), or null for no values. */
export function median(xs: readonly number[]): number | null {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted.length ? sorted[Math.floor((sorted.length - 1) / 2)] : null;
}

/** The configuration both training benchmarks (TensorFlow.js and ONNX Runtime) report. */
export interface TrainBenchConfig {
  base: string;
  resolution: number;
  latent: [number, number];
  batch: number;
  method: string;
  rank: number;
  targets: readonly string[];
  checkpointing: boolean;
}

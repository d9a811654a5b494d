/**
 * The GPU check: on whatever machine it runs, times a short SD 1.5-shape UNet forward on every
 * ONNX Runtime provider and every TensorFlow.js backend that starts here, then an SD 1.5 training
 * step (512 px, batch 1, float16, random weights read in place from a temporary `.safetensors`:
 * engine/bench/trainOnnx.ts) on every GPU provider that starts, with the peak device memory that
 * `nvidia-smi` reports during it. It prints one JSON line per result (and one for each that cannot
 * start or is skipped, with the reason). Run it wherever a GPU machine is available:
 *
 *   npm run gpu-check [-- --sizes 32,64 --batch 2 --iters 3 --config <unet config>
 *                         --train-resolution 512 --train-steps 3 --no-train]
 */
import { spawn } from 'node:child_process';
import type { BenchTrainOnnxReport } from '../src-main/engine/bench/trainOnnx.ts';
import { benchUnet } from '../src-main/engine/bench/unet.ts';
import { benchUnetOnnx } from '../src-main/engine/bench/unetOnnx.ts';
import { probeBackends } from '../src-main/engine/backend/tf.ts';
import { type ProviderChoice, probeProviders } from '../src-main/engine/onnx/providers.ts';
import { runCli } from './runCli.ts';

const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const config = arg('--config', 'test/fixtures/sd15_configs/unet');
const sizes = arg('--sizes', '32')
  .split(',')
  .map((s) => [Number(s), Number(s)] as [number, number]);
const batch = Number(arg('--batch', '2'));
const iters = Number(arg('--iters', '3'));
const trainResolution = Number(arg('--train-resolution', '512'));
const trainSteps = Number(arg('--train-steps', '3'));
const train = !process.argv.includes('--no-train');
const line = (o: Record<string, unknown>) => process.stdout.write(`${JSON.stringify({ check: 'gpu', ...o })}\n`);

line({
  event: 'config',
  node: process.version,
  platform: `${process.platform}-${process.arch}`,
  config,
  sizes,
  batch,
  iters,
  train: train ? { resolution: trainResolution, batch: 1, dtype: 'float16', steps: trainSteps } : false,
});
const providers = await probeProviders();
for (const p of providers) {
  if (!p.available) {
    line({ engine: 'onnx', provider: p.name, status: 'unavailable', reason: p.detail });
    continue;
  }
  for (const dtype of p.name === 'cpu' ? (['float32'] as const) : (['float16', 'float32'] as const)) {
    try {
      const r = await benchUnetOnnx({ config, latentSizes: sizes, batch, iters, warmup: 1, provider: p.name, dtype });
      line({
        engine: 'onnx',
        provider: r.provider,
        dtype: r.dtype,
        status: 'ok',
        load_s: r.load_s,
        peak_rss_mb: r.peak_rss_mb,
        sizes: r.sizes,
      });
    } catch (err) {
      line({
        engine: 'onnx',
        provider: p.name,
        dtype,
        status: 'failed',
        reason: (err as Error).message.split('\n')[0],
      });
    }
  }
}
for (const b of await probeBackends()) {
  if (!b.available) {
    line({ engine: 'tfjs', backend: b.name, status: 'unavailable', reason: b.reason });
    continue;
  }
  if (b.name === 'cpu' || b.name === 'wasm') {
    line({
      engine: 'tfjs',
      backend: b.name,
      status: 'skipped',
      reason:
        b.name === 'wasm'
          ? 'the SD 1.5 UNet does not fit the 4 GiB wasm heap'
          : 'the JavaScript cpu backend takes minutes per SD 1.5 forward',
    });
    continue;
  }
  // One process picks one TensorFlow.js backend; a GPU backend is the one worth timing.
  try {
    const r = await benchUnet({
      config,
      latentSizes: sizes,
      batch,
      iters,
      warmup: 1,
      backend: b.name,
      measurePeak: false,
    });
    line({
      engine: 'tfjs',
      backend: r.backend,
      device: r.device,
      status: r.weights,
      sizes: r.sizes,
      peak_rss_mb: r.peakRssBytes / 2 ** 20,
    });
  } catch (err) {
    line({ engine: 'tfjs', backend: b.name, status: 'failed', reason: (err as Error).message.split('\n')[0] });
  }
  break;
}

/** One SD 1.5 training step per GPU provider that started (the CPU's is `bench train --engine onnx`). */
async function trainChecks(gpuProviders: readonly Exclude<ProviderChoice, 'auto'>[]): Promise<void> {
  if (gpuProviders.length === 0) {
    line({
      event: 'train',
      engine: 'onnx',
      status: 'skipped',
      reason:
        'no GPU provider started here (see the provider lines above); the CPU step is `bench train --engine onnx`',
    });
    return;
  }
  for (const provider of gpuProviders) {
    const memory = DeviceMemory.start();
    try {
      const r = await benchTrainChild(provider);
      line({
        event: 'train',
        engine: 'onnx',
        provider: r.provider,
        dtype: r.dtype,
        status: 'ok',
        resolution: trainResolution,
        batch: 1,
        load_s: r.load_s,
        ms_per_step: r.ms_per_step,
        steps_per_s: r.ms_per_step ? 1000 / r.ms_per_step : null,
        ms_steps: r.ms_steps,
        gflops: r.gflops,
        peak_rss_mb: r.peak_rss_mb,
        ...(await memory.stop()),
      });
    } catch (err) {
      await memory.stop();
      line({ event: 'train', engine: 'onnx', provider, dtype: 'float16', status: 'failed', reason: firstLine(err) });
    }
  }
}

/**
 * `singlora bench train` on `provider` in its own process: the TensorFlow.js backend timed above
 * stays started in this one (one per process), and the bench draws its adapters on TensorFlow.js's
 * CPU backend (a run on lavapipe failed here with "backend already started as 'webgpu'"). Its
 * JSON report, or its error.
 */
async function benchTrainChild(provider: string): Promise<BenchTrainOnnxReport> {
  const args = ['bench', 'train', '--engine', 'onnx', '--provider', provider, '--dtype', 'float16', '--base', config];
  args.push('--resolution', String(trainResolution), '--steps', String(trainSteps), '--warmup', '1', '--json');
  const { code, stdout, stderr } = await runCli(args, { timeoutMs: 30 * 60_000 });
  const last = stdout.trim().split('\n').pop() ?? '';
  if (code !== 0 || !last.startsWith('{'))
    throw new Error(
      `bench train exited ${code}: ${(
        stderr
          .trim()
          .split('\n')
          .filter((l) => !/^Warning:/.test(l))
          .pop() ?? ''
      ).slice(0, 300)}`,
    );
  return JSON.parse(last) as BenchTrainOnnxReport;
}

/**
 * Peak device memory while a check runs, sampled by `nvidia-smi` every 100 ms (ONNX Runtime's node
 * binding reports no device memory). `peak_device_mb` includes whatever else holds the GPU; the
 * baseline is the first sample, before the session exists.
 */
class DeviceMemory {
  private samples: number[] = [];
  private failure: string | null = null;
  private constructor(private readonly child: ReturnType<typeof spawn> | null) {}

  static start(): DeviceMemory {
    let child: ReturnType<typeof spawn> | null = null;
    try {
      child = spawn('nvidia-smi', ['--query-gpu=memory.used', '--format=csv,noheader,nounits', '-lms', '100'], {
        stdio: ['ignore', 'pipe', 'ignore'],
      });
    } catch (err) {
      const m = new DeviceMemory(null);
      m.failure = firstLine(err);
      return m;
    }
    const m = new DeviceMemory(child);
    child.on('error', (err) => {
      m.failure = firstLine(err);
    });
    child.stdout?.on('data', (buf: Buffer) => {
      for (const s of buf.toString().split('\n')) if (s.trim()) m.samples.push(Number(s.split(',')[0]));
    });
    return m;
  }

  async stop(): Promise<Record<string, unknown>> {
    if (this.child && this.child.exitCode === null) {
      const exited = new Promise((resolve) => this.child!.once('exit', resolve));
      this.child.kill();
      await exited;
    }
    const valid = this.samples.filter(Number.isFinite);
    if (valid.length === 0)
      return { peak_device_mb: null, device_memory: `not reported (nvidia-smi: ${this.failure ?? 'no samples'})` };
    return {
      peak_device_mb: Math.max(...valid),
      baseline_device_mb: valid[0],
      device_memory: 'nvidia-smi, all processes',
    };
  }
}

function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0];
}

// Last, after the declarations above: a class is not hoisted, and the first run of this check (on
// lavapipe, 2026-12-08) stopped here with "Cannot access 'DeviceMemory' before initialization".
if (train) await trainChecks(providers.filter((p) => p.available && p.name !== 'cpu').map((p) => p.name));

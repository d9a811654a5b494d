/**
 * The GPU check: on whatever machine it runs, times a short SD 1.5-shape UNet forward on every
 * ONNX Runtime provider and every TensorFlow.js backend that starts here, and prints one JSON
 * line per result (and one for each that cannot start, with the reason). Run it wherever a GPU
 * machine is available:
 *
 *   npm run gpu-check [-- --sizes 32,64 --batch 2 --iters 3 --config <unet config>]
 */
import { benchUnet } from '../src-main/engine/bench/unet.ts';
import { benchUnetOnnx } from '../src-main/engine/bench/unetOnnx.ts';
import { probeBackends } from '../src-main/engine/backend/tf.ts';
import { probeProviders } from '../src-main/engine/onnx/providers.ts';

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
const line = (o: Record<string, unknown>) => process.stdout.write(`${JSON.stringify({ check: 'gpu', ...o })}\n`);

line({
  event: 'config',
  node: process.version,
  platform: `${process.platform}-${process.arch}`,
  config,
  sizes,
  batch,
  iters,
});
for (const p of await probeProviders()) {
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

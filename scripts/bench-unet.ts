/**
 * Measures the UNet until `singlora bench unet` exists:
 *
 *   npx tsx scripts/bench-unet.ts --config test/fixtures/sd15_configs/unet --sizes 32,64 [--backend wasm]
 *                                 [--batch 1] [--warmup 1] [--iters 3] [--seed 0] [--no-peak] [--json]
 *
 * Sizes are sides (32) or HxW (16x12).
 */
import { parseArgs } from 'node:util';
import { benchUnet, formatBenchUnet } from '../src-main/engine/bench/unet.ts';
import { isBackendName, type BackendName } from '../src-main/engine/backend/tf.ts';

const { values } = parseArgs({
  options: {
    config: { type: 'string' },
    sizes: { type: 'string' },
    backend: { type: 'string', default: 'auto' },
    batch: { type: 'string', default: '1' },
    warmup: { type: 'string', default: '1' },
    iters: { type: 'string', default: '3' },
    seed: { type: 'string', default: '0' },
    'no-peak': { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  },
});
if (!values.config) throw new Error('bench-unet: --config <config.json or unet folder> is required');
const backend = values.backend!;
if (backend !== 'auto' && !isBackendName(backend)) throw new Error(`bench-unet: --backend ${backend} is not a backend`);
const latentSizes = values.sizes?.split(',').map((s): [number, number] => {
  const [h, w] = s.split('x').map(Number);
  return [h, w ?? h];
});

const report = await benchUnet({
  config: values.config,
  latentSizes,
  backend: backend as BackendName | 'auto',
  batch: Number(values.batch),
  warmup: Number(values.warmup),
  iters: Number(values.iters),
  seed: Number(values.seed),
  measurePeak: !values['no-peak'],
  log: (line) => console.error(line),
});
console.log(values.json ? JSON.stringify(report, null, 2) : formatBenchUnet(report));

/**
 * The UNet case of a parity folder on the ONNX engine with one provider, in its own process (a
 * GPU provider may need driver settings in the environment from the start). Prints one JSON line:
 * { provider, providers, dtype, rel, maxAbs, maxRef, ms }.
 *
 *   node --import tsx scripts/onnx-unet-parity.ts <fixture folder> --provider webgpu [--dtype float32]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SafetensorsFile } from '../src-main/engine/io/safetensors.ts';
import { OnnxDiffusion } from '../src-main/engine/onnx/onnxDiffusion.ts';
import type { ComputeType } from '../src-main/engine/onnx/onnxOps.ts';
import { isProviderChoice } from '../src-main/engine/onnx/providers.ts';

const [folder] = process.argv.slice(2);
const arg = (name: string) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const provider = arg('--provider') ?? 'cpu';
if (!folder || !isProviderChoice(provider))
  throw new Error(
    'usage: onnx-unet-parity.ts <fixture folder> --provider <cpu|webgpu|cuda|dml|coreml> [--dtype float32|float16]',
  );
const dtype = arg('--dtype') as ComputeType | undefined;

const nhwc = (d: Float32Array, [n, c, h, w]: readonly number[]) => {
  const o = new Float32Array(d.length);
  for (let a = 0; a < n; a++)
    for (let ci = 0; ci < c; ci++)
      for (let y = 0; y < h; y++)
        for (let x = 0; x < w; x++) o[((a * h + y) * w + x) * c + ci] = d[((a * c + ci) * h + y) * w + x];
  return o;
};
const cases = await SafetensorsFile.open(join(folder, 'cases.safetensors'));
const cacheDir = mkdtempSync(join(tmpdir(), 'singlora-unet-parity-'));
try {
  const s = cases.info('unet.sample').shape;
  const ctxShape = cases.info('unet.encoder_hidden_states').shape;
  const engine = await OnnxDiffusion.open(join(folder, 'model'), { provider, dtype, cacheDir });
  const t0 = performance.now();
  const out = await engine.predictNoise(
    { data: nhwc(await cases.readFloat32('unet.sample'), s), dims: [s[0], s[2], s[3], s[1]] },
    Array.from(await cases.readFloat32('unet.timestep')),
    { data: await cases.readFloat32('unet.encoder_hidden_states'), dims: ctxShape },
  );
  const ms = performance.now() - t0;
  const ref = nhwc(await cases.readFloat32('unet.out'), cases.info('unet.out').shape);
  let maxAbs = 0;
  let maxRef = 0;
  for (let i = 0; i < ref.length; i++) {
    maxAbs = Math.max(maxAbs, Math.abs(ref[i] - out.data[i]));
    maxRef = Math.max(maxRef, Math.abs(ref[i]));
  }
  process.stdout.write(
    `${JSON.stringify({
      provider,
      providers: engine.activeProviders,
      dtype: engine.computeType,
      rel: maxAbs / maxRef,
      maxAbs,
      maxRef,
      ms: Math.round(ms),
    })}\n`,
  );
  await engine.release();
} finally {
  await cases.close();
  rmSync(cacheDir, { recursive: true, force: true });
}

/**
 * The PyTorch reference that `scripts/bench-pytorch.py` times (scripts/pytorch/: a plain-torch
 * UNet2DConditionModel and the SingLoRA step) computes what diffusers and our engine compute, so
 * the benchmark's ratio compares the same work:
 *
 *   1. against diffusers 0.27.2 (tiny-a's recorded cases): UNet forward within 1e-4 * max|ref|;
 *      the SingLoRA step's loss within 1e-5 relative and every clipped gradient within
 *      1e-4 * max|ref| (the bounds of the training-step parity tests, test/fixtures/README.md),
 *      without and with gradient checkpointing (torch.utils.checkpoint per resnet and transformer);
 *   2. against our ONNX engine (CPU provider) on tiny-b, seeded inputs at a 32x32 latent, batch 2:
 *      UNet forward within 1e-4 * max|ref|. float32 vs float64 noise of this forward is about
 *      8e-7 * max|ref| (README.md "Tolerances"); two float32 implementations differ by summation
 *      order, about that again, so 1e-4 leaves a 100x margin and still fails on any wrong op.
 *
 * Skipped, with its reason, where no Python with torch is found (SINGLORA_PYTHON, python3,
 * /usr/bin/python3: Debian's python3-torch).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SafetensorsFile } from '../../src-main/engine/io/safetensors.ts';
import { OnnxDiffusion } from '../../src-main/engine/onnx/onnxDiffusion.ts';
import { maxAbsDiff } from '../helpers/backend.ts';
import { FIXTURES } from '../helpers/fixtures.ts';
import { torchPython } from '../helpers/torchPython.ts';

const FORWARD_TOL = 1e-4;
const LOSS_REL = 1e-5;
const GRAD_TOL = 1e-4;
const SCRIPT = join(import.meta.dirname, '..', '..', 'scripts', 'pytorch', 'check_reference.py');

const python = torchPython();

function runReference(args: string[]): Record<string, number> {
  if (!python) throw new Error('no Python with torch');
  const r = spawnSync(python, [SCRIPT, ...args], { encoding: 'utf8', env: { ...process.env, OMP_NUM_THREADS: '1' } });
  if (r.status !== 0) throw new Error(`check_reference.py ${args[0]} failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '{}');
}

/** NCHW -> NHWC. */
function nhwc(data: Float32Array, [n, c, h, w]: readonly number[]): Float32Array {
  const out = new Float32Array(data.length);
  for (let a = 0; a < n; a++)
    for (let ci = 0; ci < c; ci++)
      for (let y = 0; y < h; y++)
        for (let x = 0; x < w; x++) out[((a * h + y) * w + x) * c + ci] = data[((a * c + ci) * h + y) * w + x];
  return out;
}

describe('PyTorch reference of the benchmark (scripts/pytorch)', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'singlora-torchref-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('pytorch reference tiny-a: UNet forward and SingLoRA training step (with and without checkpointing) match diffusers', (ctx) => {
    if (!python) return ctx.skip('no Python with torch (python3-torch); set SINGLORA_PYTHON');
    const r = runReference(['diffusers', join(FIXTURES, 'tiny-a')]);
    console.log(`[pytorch reference] tiny-a vs diffusers: ${JSON.stringify(r)}`);
    expect(r.unet_out_rel).toBeLessThanOrEqual(FORWARD_TOL);
    expect(r.loss_rel).toBeLessThanOrEqual(LOSS_REL);
    expect(r.grad_norm_rel).toBeLessThanOrEqual(LOSS_REL);
    expect(r.grad_rel_worst).toBeLessThanOrEqual(GRAD_TOL);
    expect(r.loss_rel_checkpointing).toBeLessThanOrEqual(LOSS_REL);
    expect(r.grad_rel_worst_checkpointing).toBeLessThanOrEqual(GRAD_TOL);
    expect(r.layers).toBe(48);
  });

  it('pytorch reference tiny-b: UNet forward matches the onnx engine (cpu provider)', async (ctx) => {
    if (!python) return ctx.skip('no Python with torch (python3-torch); set SINGLORA_PYTHON');
    const file = join(tmp, 'forward.safetensors');
    runReference(['forward', join(FIXTURES, 'tiny-b', 'model', 'unet'), file, '--latent', '32', '--batch', '2']);
    const io = await SafetensorsFile.open(file);
    const engine = await OnnxDiffusion.open(join(FIXTURES, 'tiny-b', 'model'), { provider: 'cpu', cacheDir: tmp });
    try {
      const s = io.info('sample').shape;
      const out = await engine.predictNoise(
        { data: nhwc(await io.readFloat32('sample'), s), dims: [s[0], s[2], s[3], s[1]] },
        Array.from(await io.readFloat32('timestep')),
        { data: await io.readFloat32('encoder_hidden_states'), dims: io.info('encoder_hidden_states').shape },
      );
      const ref = nhwc(await io.readFloat32('out'), io.info('out').shape);
      const { maxAbs, maxRef, rel } = maxAbsDiff(out.data, ref);
      console.log(
        `[pytorch reference] tiny-b vs onnx: max|diff| ${maxAbs.toExponential(3)}, rel ${rel.toExponential(3)}`,
      );
      expect(maxRef).toBeGreaterThan(0.1);
      expect(maxAbs).toBeLessThanOrEqual(FORWARD_TOL * maxRef);
    } finally {
      await engine.release();
      await io.close();
    }
  });
});

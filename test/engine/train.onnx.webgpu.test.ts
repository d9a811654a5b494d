/**
 * `singlora train --provider webgpu` end to end in float16, as a GPU user runs it: the CLI in a
 * child process (Dawn needs its Vulkan driver in the environment from the start) on Mesa's lavapipe,
 * whose shaders compute in float16 (see `webgpuF16Env`; SINGLORA_WEBGPU_ENV=native on a GPU box).
 * The toy model and its subject photos, the toy model's defaults, a few steps:
 *
 *   - the run records where it trained (run.json and the result: webgpu, float16);
 *   - checkpoints keep the loss scale beside AdamW's moments (optimizer.safetensors metadata);
 *   - 3 steps, then --resume to 6, give the adapter of 6 straight steps, value for value (the
 *     driver is deterministic; the loss scale, optimizer moments and random stream restored);
 *   - the adapter stays within float16 training noise of the CPU provider's float32 run from the
 *     same seed: every value within 2 lr per step (AdamW moves each value by about lr per step,
 *     at most about 3 lr in the first steps, so this catches NaNs and runaway steps, not float16
 *     rounding: the gradients' float16 error is bounded in trainStep.onnx.webgpu.parity.test.ts).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readAllFloat32 } from '../../src-main/engine/io/safetensors.ts';
import { TOY_MODEL_DIR, TOY_SUBJECT_DIR } from '../../src-main/engine/toy/toyModel.ts';
import { readRunManifest } from '../../src-main/engine/train/runFiles.ts';
import { runCli } from '../cli/run.ts';
import { skipOrFail, webgpuF16Env } from '../helpers/ciRequirements.ts';

const STEPS = 6;
const LR = 2e-3; // the toy model's default (models/toy-sd/singlora-defaults.json), passed so the bound below holds
const TIMEOUT_MS = 180_000;

const dir = mkdtempSync(join(tmpdir(), 'train-webgpu-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Trains into `out` on `provider`; the CLI's JSON result. */
async function train(out: string, provider: string, env: NodeJS.ProcessEnv, extra: string[]) {
  const args = ['train', '--base', TOY_MODEL_DIR, '--images', TOY_SUBJECT_DIR, '--out', out, '--token', 'sks'];
  args.push('--class', 'ball', '--seed', '3', '--lr', String(LR), '--sample-every', '0', '--json');
  const r = await runCli([...args, '--provider', provider, ...extra], {
    env: env as Record<string, string>,
    timeoutMs: TIMEOUT_MS,
  });
  if (r.code !== 0) throw new Error(`singlora train exited ${r.code}: ${(r.stderr || r.stdout).slice(-800)}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as { status: string; provider: string; dtype: string };
}

const adapter = async (run: string, step: number) =>
  (await readAllFloat32(join(run, 'checkpoints', `step-${String(step).padStart(6, '0')}`, 'adapter.safetensors')))
    .tensors;

describe('training on WebGPU in float16 (the CLI, lavapipe)', () => {
  it(
    'records webgpu float16, checkpoints the loss scale, resumes exactly, and stays near the float32 CPU run',
    async (ctx) => {
      const env = webgpuF16Env();
      if (typeof env === 'string') return skipOrFail(ctx, 'lavapipe', env);
      const straight = join(dir, 'straight');
      const result = await train(straight, 'webgpu', env, ['--steps', String(STEPS), '--checkpoint-every', '3']);
      expect(result).toMatchObject({ status: 'completed', provider: 'webgpu', dtype: 'float16' });
      const manifest = await readRunManifest(straight);
      expect([manifest.provider, manifest.dtype]).toEqual(['webgpu', 'float16']);
      const { metadata } = await readAllFloat32(join(straight, 'checkpoints', 'step-000006', 'optimizer.safetensors'));
      const scale = Number(metadata.loss_scale);
      expect(Number.isInteger(Math.log2(scale)) && scale <= 2 ** 16, `loss_scale ${metadata.loss_scale}`).toBe(true);

      const split = join(dir, 'split');
      await train(split, 'webgpu', env, ['--steps', '3', '--checkpoint-every', '3']);
      expect(await train(split, 'webgpu', env, ['--resume', '--steps', String(STEPS)])).toMatchObject({
        provider: 'webgpu',
        dtype: 'float16',
      });
      const [a, b] = [await adapter(straight, STEPS), await adapter(split, STEPS)];
      for (const [name, t] of a) expect(b.get(name)?.data, name).toEqual(t.data);

      const cpu = join(dir, 'cpu');
      expect(await train(cpu, 'cpu', process.env, ['--steps', String(STEPS)])).toMatchObject({ dtype: 'float32' });
      const c = await adapter(cpu, STEPS);
      let worst = 0;
      for (const [name, t] of a)
        t.data.forEach((x, i) => (worst = Math.max(worst, Math.abs(x - c.get(name)!.data[i]))));
      console.log(
        `[train webgpu float16] loss scale ${scale}; worst |adapter - cpu float32 run's| ${worst.toExponential(2)}`,
      );
      expect(worst).toBeLessThanOrEqual(2 * LR * STEPS);
    },
    4 * TIMEOUT_MS,
  );
});

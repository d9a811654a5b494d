/**
 * `npm run gpu-check` end to end on a software GPU: the check is the only source of GPU figures,
 * run once on a lent machine, so it must not stop half way there. Its first run on WebGPU (lavapipe)
 * stopped before the training step with a ReferenceError (a class used before its declaration)
 * that no run without a GPU provider reaches. Here it runs on tiny-a's UNet config (random
 * weights), 8 x 8 latents, and one 64 px float16 training step, on Mesa's lavapipe.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { skipOrFail, webgpuF16Env } from '../helpers/ciRequirements.ts';

const REPO = join(import.meta.dirname, '..', '..');
const TIMEOUT_MS = 240_000;

describe('the GPU check', () => {
  it(
    'runs to its end on WebGPU (lavapipe): forward lines for every provider, and a float16 training step on webgpu',
    async (ctx) => {
      const env = webgpuF16Env();
      if (typeof env === 'string') return skipOrFail(ctx, 'lavapipe', env);
      const args = ['--import', 'tsx', 'scripts/gpu-check.ts', '--config', 'test/fixtures/tiny-a/model/unet'];
      args.push('--sizes', '8', '--batch', '1', '--iters', '1', '--train-resolution', '64', '--train-steps', '1');
      const { stdout } = await promisify(execFile)(process.execPath, args, {
        cwd: REPO,
        env,
        timeout: TIMEOUT_MS,
        maxBuffer: 16 << 20,
      });
      const lines = stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(lines[0]).toMatchObject({ check: 'gpu', event: 'config' });
      expect(lines.filter((l) => l.status === 'failed')).toEqual([]);
      const forward = lines.filter((l) => l.engine === 'onnx' && l.status === 'ok' && l.event === undefined);
      expect(forward.map((l) => `${l.provider} ${l.dtype}`)).toEqual(
        expect.arrayContaining(['cpu float32', 'webgpu+cpu float16', 'webgpu+cpu float32']),
      );
      const train = lines.filter((l) => l.event === 'train');
      expect(train).toHaveLength(1);
      expect(train[0]).toMatchObject({ provider: 'webgpu', dtype: 'float16', status: 'ok', resolution: 64 });
      expect(train[0].ms_per_step).toBeGreaterThan(0);
      // No nvidia-smi here: the device memory is said not to be reported, not made up.
      if (train[0].peak_device_mb === null) expect(String(train[0].device_memory)).toMatch(/^not reported/);
    },
    TIMEOUT_MS + 30_000,
  );
});

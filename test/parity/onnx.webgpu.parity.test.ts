/**
 * The UNet case on ONNX Runtime's WebGPU provider, float32, in a child process (Dawn needs its
 * Vulkan driver in the environment from the start). Here the driver is SwiftShader (software
 * Vulkan, shipped with Debian's chromium); on a GPU box set SINGLORA_WEBGPU_ENV=native to use the
 * real one. Reported as skipped, with the reason tagged `[needs swiftshader]`, when no driver or
 * adapter is found (a failure under CI=true).
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { basename } from 'node:path';
import { describe, expect, it } from 'vitest';
import { skipOrFail, webgpuEnv } from '../helpers/ciRequirements.ts';
import { parityFolders } from '../helpers/fixtures.ts';

for (const folder of parityFolders()) {
  const label = basename(folder);
  describe(`ONNX engine parity, webgpu provider (${label})`, () => {
    const env = webgpuEnv();
    const noCases = existsSync(`${folder}/cases.safetensors`) ? null : `no cases.safetensors in ${folder}`;
    it.skipIf(noCases !== null)(
      `onnx ${label}: unet.out on webgpu (float32) within 1e-4 of max|ref|${noCases ? ` (skipped: ${noCases})` : ''}`,
      (ctx) => {
        if (typeof env === 'string') return skipOrFail(ctx, 'swiftshader', env);
        let out: string;
        try {
          out = execFileSync(
            process.execPath,
            ['--import', 'tsx', 'scripts/onnx-unet-parity.ts', folder, '--provider', 'webgpu', '--dtype', 'float32'],
            { env: env as NodeJS.ProcessEnv, encoding: 'utf8', timeout: 400_000, stdio: ['ignore', 'pipe', 'pipe'] },
          );
        } catch (err) {
          const msg = String((err as { stderr?: string }).stderr ?? err);
          if (/adapter/i.test(msg) && /webgpu/i.test(msg)) {
            const reason = `no WebGPU adapter: ${(msg.split('\n').find((l) => /adapter/i.test(l)) ?? '').trim().slice(0, 200)}`;
            return skipOrFail(ctx, 'swiftshader', reason);
          }
          throw err;
        }
        const r = JSON.parse(out.trim().split('\n').pop()!) as {
          providers: string[];
          dtype: string;
          rel: number;
          maxAbs: number;
          maxRef: number;
          ms: number;
        };
        console.log(
          `[parity onnx webgpu] ${label} unet.out: max|diff| ${r.maxAbs.toExponential(3)}, max|ref| ${r.maxRef.toFixed(4)}, diff/max|ref| ${r.rel.toExponential(3)} (${r.dtype}, ${r.ms} ms)`,
        );
        expect(r.providers[0]).toBe('webgpu');
        expect(r.dtype).toBe('float32');
        expect(r.rel).toBeLessThanOrEqual(1e-4);
      },
      450_000,
    );
  });
}

/**
 * The UNet case on ONNX Runtime's WebGPU provider, float32, in a child process (Dawn needs its
 * Vulkan driver in the environment from the start). Here the driver is SwiftShader (software
 * Vulkan, shipped with Debian's chromium); on a GPU box set SINGLORA_WEBGPU_ENV=native to use the
 * real one. Reported as skipped, with the reason, when no driver or adapter is found.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { basename } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parityFolders } from '../helpers/fixtures.ts';

const SWIFTSHADER = '/usr/lib/chromium/vk_swiftshader_icd.json';

function webgpuEnv(): NodeJS.ProcessEnv | string {
  if (process.env.SINGLORA_WEBGPU_ENV === 'native') return { ...process.env };
  if (!existsSync(SWIFTSHADER))
    return `no SwiftShader Vulkan driver at ${SWIFTSHADER} (apt install chromium) and SINGLORA_WEBGPU_ENV is not 'native'`;
  return {
    ...process.env,
    VK_ICD_FILENAMES: SWIFTSHADER,
    LD_LIBRARY_PATH: ['/usr/lib/chromium', process.env.LD_LIBRARY_PATH].filter(Boolean).join(':'),
  };
}

for (const folder of parityFolders()) {
  const label = basename(folder);
  describe(`ONNX engine parity, webgpu provider (${label})`, () => {
    const env = webgpuEnv();
    const skip =
      typeof env === 'string'
        ? env
        : !existsSync(`${folder}/cases.safetensors`)
          ? `no cases.safetensors in ${folder}`
          : null;
    it.skipIf(skip !== null)(
      `onnx ${label}: unet.out on webgpu (float32) within 1e-4 of max|ref|${skip ? ` (skipped: ${skip})` : ''}`,
      (ctx) => {
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
            console.log(`[parity onnx webgpu] skipped: ${reason}`);
            return ctx.skip(reason);
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

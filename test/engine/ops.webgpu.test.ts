/**
 * The op cases on the webgpu backend. Dawn needs a Vulkan (or Metal/D3D12) driver in the
 * process environment from the start, so the cases run in a child process. Here that driver is
 * SwiftShader (software Vulkan, shipped with Debian's chromium); on a GPU box set
 * SINGLORA_WEBGPU_ENV=native to use the real driver. Reported as skipped, with the reason tagged
 * `[needs swiftshader]`, when no driver or adapter can be found (a failure under CI=true); never as
 * passed.
 */
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { skipOrFail, webgpuEnv } from '../helpers/ciRequirements.ts';
import { compareOpResults, referenceOpCases, type OpResults } from '../helpers/opCases.ts';

describe('ops on webgpu', () => {
  const env = webgpuEnv();
  it('layers, activations and gradients match plain-JavaScript references within 1e-4', (ctx) => {
    if (typeof env === 'string') return skipOrFail(ctx, 'swiftshader', env);
    let out: string;
    try {
      out = execFileSync(process.execPath, ['--import', 'tsx', 'scripts/op-check.ts', '--backend', 'webgpu'], {
        env: env as NodeJS.ProcessEnv,
        encoding: 'utf8',
        timeout: 240_000,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    } catch (err) {
      const msg = String((err as { stderr?: string }).stderr ?? err);
      if (/requested but cannot start/.test(msg)) {
        // No webgpu adapter: reported as skipped, with the reason, never as passed.
        const lines = msg.split('\n');
        const reason = (
          lines.find((l) => /Error: .*cannot start/.test(l)) ??
          lines.find((l) => /cannot start/.test(l)) ??
          'webgpu cannot start'
        ).trim();
        return skipOrFail(ctx, 'swiftshader', reason);
      }
      throw err;
    }
    const { backend, device, results } = JSON.parse(out.trim().split('\n').pop()!) as {
      backend: string;
      device: string;
      results: OpResults;
    };
    expect(backend).toBe('webgpu');
    const worst = compareOpResults(results, referenceOpCases());
    console.log(
      `[ops webgpu on ${device}] worst relative error: ${Object.entries(worst)
        .map(([k, v]) => `${k} ${v.toExponential(1)}`)
        .join(', ')}`,
    );
    for (const [name, w] of Object.entries(worst)) expect(w, name).toBeLessThan(1e-4);
  }, 300_000);
});

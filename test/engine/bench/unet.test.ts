/** benchUnet on the tiny-a config: a complete report, no file needed, nothing left behind. */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tf } from '../../../src-main/engine/backend/tf.ts';
import { benchUnet, formatBenchUnet } from '../../../src-main/engine/bench/unet.ts';
import { FIXTURES } from '../../helpers/fixtures.ts';
import { useBackend } from '../../helpers/backend.ts';

useBackend('wasm');

describe('benchUnet', () => {
  it('reports size, timings and memory for tiny-a at two latent sizes (one odd)', async () => {
    const before = tf.memory().numTensors;
    const report = await benchUnet({
      config: join(FIXTURES, 'tiny-a/model/unet'),
      latentSizes: [8, [6, 5]],
      warmup: 1,
      iters: 1,
    });
    expect(report.backend).toBe('wasm');
    expect(report.parameterCount).toBe(1427012);
    expect(report.weightBytes).toBe(1427012 * 4);
    expect(report.weights).toBe('ok');
    expect(report.sizes.map((s) => [s.latent, s.status])).toEqual([
      [[8, 8], 'ok'],
      [[6, 5], 'ok'],
    ]);
    for (const s of report.sizes) {
      expect(s.msPerForward).toBeGreaterThan(0);
      expect(s.peakTensorBytes).toBeGreaterThan(0);
    }
    expect(report.peakRssBytes).toBeGreaterThan(0);
    expect(report.wasmHeapBytes).toBeGreaterThan(0);
    expect(formatBenchUnet(report)).toContain('1,427,012');
    expect(tf.memory().numTensors).toBe(before);
  });
});

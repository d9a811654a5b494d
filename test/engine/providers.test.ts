// `singlora doctor`'s provider report: which ONNX Runtime providers start and which can train
// (the training probe: the backward pass's op kinds on the provider alone, CPU fallback disabled).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PROVIDERS } from '../../src-main/api/schemas.ts';
import { doctorReport } from '../../src-main/engine/doctor.ts';
import { installedProviders } from '../../src-main/engine/backend/onnxRuntime.ts';
import { probeTraining } from '../../src-main/engine/onnx/providers.ts';

const dir = mkdtempSync(join(tmpdir(), 'singlora-providers-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('doctor: training providers', () => {
  it('lists every provider of the API with whether it starts and whether it trains', async () => {
    const report = await doctorReport('cpu');
    expect(report.providers.map((p) => p.name).sort()).toEqual(PROVIDERS.filter((p) => p !== 'auto').sort());
    const cpu = report.providers.find((p) => p.name === 'cpu')!;
    expect(cpu).toMatchObject({ available: true, training: { ok: true } });
    for (const p of report.providers) {
      expect(p.training.detail).not.toBe('');
      // A provider that does not start cannot train.
      if (!p.available) expect(p.training).toEqual({ ok: false, detail: 'cannot train: the provider does not start' });
    }
  }, 60_000);

  it('the training probe runs on the CPU', async () => {
    expect(await probeTraining(dir, 'cpu')).toEqual({ ok: true, detail: 'trains (float32)' });
  });

  const absent = (['dml', 'coreml', 'cuda'] as const).find(
    (n) => !installedProviders().some((b) => b.name === n && b.present),
  );
  it.skipIf(!absent)(
    `a provider that cannot open the probe is reported as not training, with why (${absent})`,
    async () => {
      const r = await probeTraining(dir, absent!);
      expect(r.ok).toBe(false);
      expect(r.detail).toMatch(/^cannot run the training ops without CPU fallback: ./);
    },
  );
});

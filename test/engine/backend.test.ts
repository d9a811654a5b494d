/**
 * Backend selection: a forced backend that cannot start is an error that says why (never a
 * silent fallback), SINGLORA_BACKEND is validated, the backend is chosen once per process, and
 * `doctor` reports every backend with a reason.
 */
import { describe, expect, it } from 'vitest';
import { activeBackend, initBackend, probeBackends, tf } from '../../src-main/engine/backend/tf.ts';

describe('backend selection', () => {
  it('refuses a forced backend that cannot start, with the reason, and starts nothing', async () => {
    await expect(initBackend('tensorflow')).rejects.toThrow(
      /backend 'tensorflow' was requested but cannot start: .*(not installed|not found|no CUDA GPU)/,
    );
    expect(activeBackend()).toBeNull();
  });

  it('starts wasm when forced, and wasm really is current', async () => {
    const info = await initBackend('wasm');
    expect(info).toMatchObject({ name: 'wasm', forced: true });
    expect(tf.getBackend()).toBe('wasm');
  });

  it('will not switch backends within a process', async () => {
    await expect(initBackend('cpu')).rejects.toThrow(/already started as 'wasm'.*--backend cpu/);
    await expect(initBackend('wasm')).resolves.toMatchObject({ name: 'wasm' });
  });

  it('rejects an unknown SINGLORA_BACKEND, naming the valid ones', async () => {
    process.env.SINGLORA_BACKEND = 'tpu';
    try {
      await expect(initBackend()).rejects.toThrow(
        /SINGLORA_BACKEND=tpu is not a backend; expected one of tensorflow, webgpu, wasm, cpu/,
      );
    } finally {
      delete process.env.SINGLORA_BACKEND;
    }
  });

  it('doctor lists all four backends in preference order, each with a status and a reason when unavailable', async () => {
    const list = await probeBackends();
    expect(list.map((b) => b.name)).toEqual(['tensorflow', 'webgpu', 'wasm', 'cpu']);
    for (const b of list) if (!b.available) expect(b.reason, b.name).toMatch(/\w/);
    expect(list.find((b) => b.name === 'cpu')!.available).toBe(true);
  });
});

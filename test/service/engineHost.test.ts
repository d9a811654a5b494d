/**
 * The engine host against the real engine process (engineWorker.ts under tsx): typed requests,
 * progress, cancellation, a SIGKILL mid-request, the restart, and a backend that cannot start.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import {
  EngineExitedError,
  EngineHost,
  EngineStartError,
  forkWorker,
  type EngineProcess,
  type EngineStatus,
} from '../../src-main/service/engineHost.ts';
import type { TestRequests } from './testWorker.ts';

/** The real message loop and backend start, with a test-only `sleep` request (testWorker.ts). */
const forkEngine = forkWorker(join(import.meta.dirname, 'testWorker.ts'));

const quiet = () => {};

describe('engine host', () => {
  const statuses: EngineStatus[] = [];
  const spawned: EngineProcess[] = [];
  const host = new EngineHost<TestRequests>({
    backend: 'cpu',
    log: quiet,
    onStatus: (s) => statuses.push(s),
    spawn: (o) => {
      const p = forkEngine(o);
      spawned.push(p);
      return p;
    },
  });
  afterAll(() => host.close(5_000));

  it('starts the engine process on the first request and carries progress and results', async () => {
    const progress: number[] = [];
    const r = await host.request('sleep', { ms: 120, every: 30 }, { onProgress: (p) => progress.push(p.elapsed) });
    expect(r.slept).toBeGreaterThanOrEqual(120);
    expect(progress.length).toBeGreaterThanOrEqual(2);
    expect(statuses.map((s) => s.state)).toEqual(['starting', 'ready']);
    expect(statuses[1].message).toMatch(/^backend cpu\b/);
    expect(host.pid).toBe(spawned[0].pid);
    expect(host.pid).not.toBe(process.pid);
    const doctor = await host.request('doctor', {});
    expect(doctor.selected).toMatchObject({ name: 'cpu' });
  });

  it('cancels a request through its AbortSignal', async () => {
    const controller = new AbortController();
    const p = host.request('sleep', { ms: 30_000 }, { signal: controller.signal });
    setTimeout(() => controller.abort('cancel'), 100);
    await expect(p).rejects.toThrow(/sleep cancelled \(cancel\)/);
    expect(spawned.length).toBe(1); // same process
  });

  it('reports a SIGKILL during a request, and restarts on the next one', async () => {
    const pid = host.pid!;
    const p = host.request('sleep', { ms: 30_000 });
    await new Promise((r) => setTimeout(r, 200));
    process.kill(pid, 'SIGKILL');
    const err = await p.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EngineExitedError);
    expect((err as Error).message).toBe("the engine process exited (signal SIGKILL) during a 'sleep' request");
    expect(statuses.at(-1)).toMatchObject({ state: 'crashed' });
    expect(statuses.at(-1)!.message).toContain('signal SIGKILL');

    const r = await host.request('sleep', { ms: 10 });
    expect(r.slept).toBeGreaterThanOrEqual(10);
    expect(spawned.length).toBe(2);
    expect(host.pid).not.toBe(pid);
    expect(statuses.slice(-2).map((s) => s.state)).toEqual(['restarting', 'ready']);
  });

  it('says why when the backend cannot start', async () => {
    const statuses2: EngineStatus[] = [];
    const bad = new EngineHost<TestRequests>({
      env: { ...process.env, SINGLORA_BACKEND: 'quantum' },
      log: quiet,
      onStatus: (s) => statuses2.push(s),
    });
    const err = await bad.request('sleep', { ms: 1 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EngineStartError);
    expect((err as Error).message).toMatch(/the engine cannot start: SINGLORA_BACKEND=quantum is not a backend/);
    expect(statuses2.map((s) => s.state)).toEqual(['starting', 'crashed']);
    await bad.close(1_000);
  });

  it('says so when the process dies before it is ready', async () => {
    const bad = new EngineHost<TestRequests>({
      log: quiet,
      onStatus: () => {},
      spawn: ({ env, onOutput }) => {
        // A process that exits at once, as a missing loader or a broken install would.
        const p = forkEngine({ env: { ...env, NODE_OPTIONS: '--require /nonexistent/preload.cjs' }, onOutput });
        return p;
      },
    });
    await expect(bad.request('sleep', { ms: 1 })).rejects.toThrow(
      /exited \(code 1\) while starting; its last output: .*nonexistent/s,
    );
    await bad.close(1_000);
  });
});

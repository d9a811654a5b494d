/**
 * An engine process for the engine host's tests: the real message loop (workerLoop.ts) and
 * backend start, serving a `sleep` request (cancellable, with progress) and `doctor`. The
 * production engine (engineWorker.ts) has no test hooks.
 */
import { doctorReport } from '../../src-main/engine/doctor.ts';
import type { EngineRequests } from '../../src-main/service/protocol.ts';
import { serveEngine } from '../../src-main/service/workerLoop.ts';

export interface TestRequests {
  /** Waits `ms` (cancellable), reporting progress every `every` ms. */
  sleep: { params: { ms: number; every?: number }; progress: { elapsed: number }; result: { slept: number } };
  doctor: EngineRequests['doctor'];
}

serveEngine<TestRequests>({
  async sleep(p, ctx) {
    const t0 = Date.now();
    while (Date.now() - t0 < p.ms) {
      if (ctx.signal.aborted) throw new Error(`sleep cancelled (${String(ctx.signal.reason)})`);
      await new Promise((r) => setTimeout(r, Math.min(p.every ?? 50, p.ms)));
      ctx.progress({ elapsed: Date.now() - t0 });
    }
    return { slept: Date.now() - t0 };
  },
  async doctor() {
    const r = await doctorReport();
    return {
      node: r.node,
      platform: r.platform,
      providers: r.providers.map((p) => ({ ...p, training: { ...p.training } })),
      backends: r.backends,
      selected: r.selected,
      memory: { ...r.memory },
    };
  },
});

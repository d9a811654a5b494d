/**
 * The engine process's message loop, apart from what it runs: requests in, progress and results
 * out, cancellation, shutdown (pause what runs, then exit), and the backend started once before
 * the first request. engineWorker.ts serves the engine's request kinds with it; a test worker
 * serves its own (test/service/testWorker.ts), so test hooks stay out of the production protocol.
 */
import { withWriteRoots, type WriteRoot } from '../engine/io/atomic.ts';
import type { HostMessage, RequestMap, WorkerMessage } from './protocol.ts';

export interface WorkerContext<P> {
  signal: AbortSignal;
  progress: (data: P) => void;
}
export type WorkerHandlers<R extends RequestMap<R>> = {
  [K in keyof R]: (params: R[K]['params'], ctx: WorkerContext<R[K]['progress']>) => Promise<R[K]['result']>;
};

/** Messages handed to IPC but not yet written (flushed before exiting). */
let unsent = 0;

interface Port {
  post(msg: WorkerMessage): void;
  onMessage(fn: (msg: HostMessage) => void): void;
  onDisconnect(fn: () => void): void;
}

/** Electron's utilityProcess gives `process.parentPort`; child_process.fork gives `process.send`. */
function connect(): Port {
  const parentPort = (
    process as unknown as {
      parentPort?: { postMessage(m: unknown): void; on(e: 'message', fn: (e: { data: unknown }) => void): void };
    }
  ).parentPort;
  if (parentPort) {
    return {
      post: (m) => parentPort.postMessage(m),
      onMessage: (fn) => parentPort.on('message', (e) => fn(e.data as HostMessage)),
      onDisconnect: () => {}, // a utility process ends with its parent
    };
  }
  if (process.send) {
    return {
      post: (m) => {
        if (!process.connected) return;
        unsent++;
        process.send!(m, undefined, undefined, () => unsent--);
      },
      onMessage: (fn) => process.on('message', (m) => fn(m as HostMessage)),
      onDisconnect: (fn) => process.on('disconnect', fn),
    };
  }
  throw new Error(
    'engineWorker: started without an IPC channel; the engine host starts it (child_process.fork or utilityProcess.fork)',
  );
}

export function serveEngine<R extends RequestMap<R>>(
  handlers: WorkerHandlers<R>,
  o: { onShutdown?: () => void } = {},
): void {
  const port = connect();
  const running = new Map<number, { controller: AbortController; done: Promise<void> }>();
  let ready: Promise<boolean>;
  let exiting = false;

  function start(id: number, kind: string, params: unknown, writeRoots?: WriteRoot[]): void {
    const controller = new AbortController();
    const handler = (Object.hasOwn(handlers, kind) ? (handlers as Record<string, unknown>)[kind] : undefined) as
      | ((p: unknown, ctx: WorkerContext<unknown>) => Promise<unknown>)
      | undefined;
    const done = (async () => {
      try {
        if (!handler) throw new Error(`the engine has no request kind '${kind}'`);
        if (!(await ready)) throw new Error('the engine backend did not start');
        const result = await withWriteRoots(writeRoots, () =>
          handler(params, {
            signal: controller.signal,
            progress: (data) => port.post({ type: 'progress', id, data }),
          }),
        );
        port.post({ type: 'result', id, result });
      } catch (err) {
        const e = err as Error;
        port.post({ type: 'error', id, message: e?.message ?? String(err) });
        if (process.env.SINGLORA_DEBUG) process.stderr.write(`engine: ${kind} #${id} failed: ${e?.stack ?? err}\n`);
      } finally {
        running.delete(id);
      }
    })();
    running.set(id, { controller, done });
  }

  /** Pauses whatever runs (training checkpoints and stops after its step), then exits. */
  async function shutdown(code: number): Promise<never> {
    if (!exiting) {
      exiting = true;
      for (const r of running.values()) r.controller.abort('pause');
      const all = Promise.all([...running.values()].map((r) => r.done));
      await Promise.race([all, new Promise((r) => setTimeout(r, 60_000))]);
      o.onShutdown?.();
    }
    for (let i = 0; i < 100 && unsent > 0 && process.connected; i++) await new Promise((r) => setTimeout(r, 10));
    process.exit(code);
  }

  port.onMessage((msg) => {
    if (msg.type === 'request') start(msg.id, msg.kind, msg.params, msg.writeRoots);
    else if (msg.type === 'cancel') running.get(msg.id)?.controller.abort(msg.reason);
    else if (msg.type === 'shutdown') void shutdown(0);
  });
  port.onDisconnect(() => void shutdown(0)); // the host is gone: stop cleanly, leave no orphan

  ready = (async () => {
    try {
      const { initBackend } = await import('../engine/backend/tf.ts');
      const info = await initBackend();
      port.post({
        type: 'ready',
        backend: { name: info.name, ...(info.device ? { device: info.device } : {}) },
        pid: process.pid,
      });
      return true;
    } catch (err) {
      port.post({ type: 'startup-failed', message: (err as Error).message });
      setTimeout(() => process.exit(1), 100);
      return false;
    }
  })();
}

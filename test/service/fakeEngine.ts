/**
 * An engine process in this process: the protocol of service/protocol.ts, with each request kind
 * answered by a function the test gives. No TensorFlow.js, no child process: for tests of the
 * service's own rules (validation, paths, failures), not of the engine.
 */
import { EventEmitter } from 'node:events';
import { withWriteRoots } from '../../src-main/engine/io/atomic.ts';
import type { EngineProcess, SpawnEngine } from '../../src-main/service/engineHost.ts';
import type {
  EngineKind,
  EngineParams,
  HostMessage,
  TrainRequest,
  WorkerMessage,
} from '../../src-main/service/protocol.ts';

export type FakeHandler<K extends EngineKind> = (
  params: EngineParams<K>,
  progress: (data: unknown) => void,
  signal: AbortSignal,
) => Promise<unknown>;
export type FakeHandlers = { [K in EngineKind]?: FakeHandler<K> };

/**
 * The real trainer's input for a train request, as engineWorker.ts passes it, less the compute
 * choice (engine, provider, base options): a test that runs the trainer picks its backend itself.
 */
export function trainInput(p: TrainRequest) {
  return {
    base: p.base,
    photos: p.photos,
    runDir: p.runDir,
    settings: p.settings,
    resume: p.resume,
    classImagesDir: p.classImagesDir,
  };
}

export interface FakeEngine {
  spawn: SpawnEngine;
  /** Every request the engine got, in order. */
  requests: Array<{ kind: EngineKind; params: unknown }>;
}

export function fakeEngine(handlers: FakeHandlers): FakeEngine {
  const requests: FakeEngine['requests'] = [];
  const spawn: SpawnEngine = () => {
    const events = new EventEmitter();
    const controllers = new Map<number, AbortController>();
    const reply = (m: WorkerMessage) => setImmediate(() => events.emit('message', m));
    const proc: EngineProcess = {
      pid: 4242,
      send(msg: HostMessage) {
        if (msg.type === 'shutdown') {
          setImmediate(() => events.emit('exit', 0, null));
        } else if (msg.type === 'cancel') {
          controllers.get(msg.id)?.abort(msg.reason);
        } else {
          requests.push({ kind: msg.kind as EngineKind, params: msg.params });
          const handler = handlers[msg.kind as EngineKind] as FakeHandler<EngineKind> | undefined;
          const controller = new AbortController();
          controllers.set(msg.id, controller);
          void (async () => {
            try {
              if (!handler) throw new Error(`the fake engine has no '${msg.kind}'`);
              // As the worker loop does: the request's writes held inside its write roots.
              const result = await withWriteRoots(msg.writeRoots, () =>
                handler(
                  msg.params as never,
                  (data) => reply({ type: 'progress', id: msg.id, data }),
                  controller.signal,
                ),
              );
              reply({ type: 'result', id: msg.id, result });
            } catch (err) {
              reply({ type: 'error', id: msg.id, message: (err as Error).message });
            } finally {
              controllers.delete(msg.id);
            }
          })();
        }
        return true;
      },
      on(event: string, listener: (...args: never[]) => void) {
        events.on(event, listener as (...args: unknown[]) => void);
        return proc;
      },
      kill() {
        setImmediate(() => events.emit('exit', null, 'SIGTERM'));
        return true;
      },
    } as EngineProcess;
    reply({ type: 'ready', backend: { name: 'fake' }, pid: 4242 });
    return proc;
  };
  return { spawn, requests };
}

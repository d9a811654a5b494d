/**
 * The engine as an Electron utility process: a `SpawnEngine` for the service's engine host.
 *
 *   EngineProcess (engineHost.ts)      UtilityProcess (Electron)
 *   send(msg)                     ->   child.postMessage(msg)     worker: process.parentPort 'message' (e.data)
 *   on('message', fn)             <-   child.on('message', fn)    worker: process.parentPort.postMessage(msg)
 *   on('exit', fn(code, signal))  <-   child.on('exit', fn(code))  signal: always null (Electron reports a code)
 *   kill(signal?)                 ->   child.kill()               Electron picks the signal (SIGTERM on POSIX)
 *   onOutput(text)                <-   child.stdout / child.stderr (stdio: ignore, pipe, pipe)
 *
 * A utility process is a Chromium child with Node inside: off the main thread, and its crash or
 * out-of-memory never takes the window down. The host restarts it on the next request.
 */
import type { ForkOptions, UtilityProcess } from 'electron';
import type { EngineProcess, SpawnEngine } from '../service/engineHost.ts';
import type { HostMessage, WorkerMessage } from '../service/protocol.ts';

export interface UtilityProcessApi {
  fork(modulePath: string, args?: string[], options?: ForkOptions): UtilityProcess;
}

export const ENGINE_SERVICE_NAME = 'SingLoRA engine';

class UtilityEngineProcess implements EngineProcess {
  constructor(private readonly child: UtilityProcess) {}

  get pid(): number | undefined {
    return this.child.pid;
  }

  send(msg: HostMessage): void {
    this.child.postMessage(msg);
  }

  on(event: 'message', listener: (msg: WorkerMessage) => void): this;
  on(event: 'exit', listener: (code: number | null, signal: NodeJS.Signals | null) => void): this;
  on(
    event: 'message' | 'exit',
    listener: ((msg: WorkerMessage) => void) | ((code: number | null, signal: NodeJS.Signals | null) => void),
  ): this {
    if (event === 'message') this.child.on('message', listener as (msg: WorkerMessage) => void);
    else this.child.on('exit', (code: number) => (listener as (code: number | null, signal: null) => void)(code, null));
    return this;
  }

  kill(): boolean {
    return this.child.kill();
  }
}

/** Forks `modulePath` (the bundled engineWorker) as a utility process for each engine start. */
export function utilityEngine(
  utility: UtilityProcessApi,
  modulePath: string,
  serviceName = ENGINE_SERVICE_NAME,
): SpawnEngine {
  return ({ env, onOutput }) => {
    const child = utility.fork(modulePath, [], {
      serviceName,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: env as Record<string, string>,
    });
    child.stdout?.on('data', (b: Buffer | string) => onOutput(b.toString()));
    child.stderr?.on('data', (b: Buffer | string) => onOutput(b.toString()));
    child.on('error', (type: string, location: string) => onOutput(`engine process: ${type} at ${location}\n`));
    return new UtilityEngineProcess(child);
  };
}

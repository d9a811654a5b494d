/**
 * The engine host: starts the engine process (engineWorker.ts), carries typed requests to it
 * (protocol.ts), and survives its death.
 *
 *   stopped --request--> starting --ready--> ready --exit--> crashed --request--> restarting --> ready
 *
 * Each transition is reported as the contract's `engine.status`. When the process dies, every
 * request in flight fails with an `EngineExitedError` that says how it died and during what; the
 * next request starts a fresh process. The process is started through an injectable `spawn`: the
 * default forks Node with tsx as the loader; the Electron shell passes one built on
 * `utilityProcess.fork` (same message/exit shape).
 */
import { fork } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { EventData } from '../api/contract.ts';
import type { WriteRoot } from '../engine/io/atomic.ts';
import type { EngineRequests, HostMessage, RequestMap, WorkerMessage } from './protocol.ts';

/** What the host needs of a process: child_process.ChildProcess has this shape. */
export interface EngineProcess {
  send(msg: HostMessage): unknown;
  on(event: 'message', listener: (msg: WorkerMessage) => void): unknown;
  on(event: 'exit', listener: (code: number | null, signal: NodeJS.Signals | null) => void): unknown;
  kill(signal?: NodeJS.Signals): unknown;
  readonly pid?: number;
}

export interface SpawnOptions {
  env: NodeJS.ProcessEnv;
  /** The process's stdout/stderr text, when the spawner can capture it. */
  onOutput: (text: string) => void;
}
export type SpawnEngine = (opts: SpawnOptions) => EngineProcess;

export const WORKER_PATH = fileURLToPath(new URL('./engineWorker.ts', import.meta.url));

/** `node --import <tsx> <worker>`, with an IPC channel and piped output. */
export function forkWorker(workerPath: string): SpawnEngine {
  return ({ env, onOutput }) => {
    const tsx = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
    const child = fork(workerPath, [], { execArgv: ['--import', tsx], env, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
    child.stdout?.on('data', (b: Buffer) => onOutput(b.toString('utf8')));
    child.stderr?.on('data', (b: Buffer) => onOutput(b.toString('utf8')));
    child.on('error', (err) => onOutput(`engine process error: ${err.message}\n`));
    return child as unknown as EngineProcess;
  };
}

/** The default: the engine worker (engineWorker.ts). */
export const forkEngine: SpawnEngine = forkWorker(WORKER_PATH);

export type EngineStatus = EventData<'engine.status'>;

const DURING: Record<string, string> = {
  train: 'training',
  generate: 'generation',
  evaluate: 'evaluation',
  export: 'the export',
  inspect: 'an adapter inspection',
  doctor: 'the backend check',
};

/** The engine process died while a request ran. */
export class EngineExitedError extends Error {
  constructor(
    readonly code: number | null,
    readonly signal: string | null,
    readonly during: string,
    /** The last lines the process wrote (its own last words: an OOM report, a native crash). */
    readonly output: string,
  ) {
    const how = signal ? `signal ${signal}` : `code ${code}`;
    const oom = /heap out of memory|out of memory|OOM|std::bad_alloc/i.test(output) ? '; it ran out of memory' : '';
    super(`the engine process exited (${how}) during ${duringOf(during)}${oom}`);
    this.name = 'EngineExitedError';
  }
}

/** The engine ran the request and reported an error (a bad model file, a cancelled step, ...). */
export class EngineRequestError extends Error {
  constructor(
    message: string,
    readonly kind: string,
  ) {
    super(message);
    this.name = 'EngineRequestError';
  }
}

/** The engine process could not start (no usable backend, a missing loader, a timeout). */
export class EngineStartError extends Error {
  override name = 'EngineStartError';
}

export interface EngineHostOptions {
  spawn?: SpawnEngine;
  /** Environment of the engine process (default: this process's). */
  env?: NodeJS.ProcessEnv;
  /** Forces the engine's backend (SINGLORA_BACKEND in its environment). */
  backend?: string;
  onStatus?: (s: EngineStatus) => void;
  /** The engine's own output (default: this process's stderr). */
  log?: (text: string) => void;
  readyTimeoutMs?: number;
}

interface Pending {
  kind: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  onProgress?: (data: unknown) => void;
}

const TAIL = 4000;

/** What a request of `kind` is called in messages ("during training"). */
function duringOf(kind: string): string {
  return DURING[kind] ?? `a '${kind}' request`;
}

export class EngineHost<R extends RequestMap<R> = EngineRequests> {
  #proc: EngineProcess | null = null;
  #starting: Promise<EngineProcess> | null = null;
  #ready = false;
  #crashed = false;
  #stopping = false;
  #pid: number | null = null;
  #backend: string | null = null;
  #seq = 0;
  #tail = '';
  readonly #pending = new Map<number, Pending>();

  constructor(private readonly opts: EngineHostOptions = {}) {}

  /** The engine process id once it is ready, else null. */
  get pid(): number | null {
    return this.#ready ? this.#pid : null;
  }

  get backend(): string | null {
    return this.#backend;
  }

  get running(): boolean {
    return this.#proc !== null;
  }

  /** Sends a request (starting the process if needed) and resolves with its result. */
  async request<K extends keyof R & string>(
    kind: K,
    params: R[K]['params'],
    o: {
      onProgress?: (p: R[K]['progress']) => void;
      signal?: AbortSignal;
      /** Folders the service checked: the engine's writes under them must stay inside (io/atomic.ts). */
      writeRoots?: WriteRoot[];
    } = {},
  ): Promise<R[K]['result']> {
    if (this.#stopping) throw new Error('the engine is shutting down');
    if (o.signal?.aborted) throw new Error(`${duringOf(kind)} was cancelled before it started`);
    const proc = await this.#ensure();
    // Cancelled while the process was starting: the abort event has already fired.
    if (o.signal?.aborted) throw new Error(`${duringOf(kind)} was cancelled before it started`);
    const id = ++this.#seq;
    return new Promise<R[K]['result']>((resolve, reject) => {
      const onAbort = () =>
        this.#send(proc, { type: 'cancel', id, reason: o.signal?.reason === 'pause' ? 'pause' : 'cancel' });
      const cleanup = () => o.signal?.removeEventListener('abort', onAbort);
      this.#pending.set(id, {
        kind,
        resolve: (v) => (cleanup(), resolve(v as R[K]['result'])),
        reject: (e) => (cleanup(), reject(e)),
        onProgress: o.onProgress as ((d: unknown) => void) | undefined,
      });
      o.signal?.addEventListener('abort', onAbort, { once: true });
      if (!this.#send(proc, { type: 'request', id, kind, params, writeRoots: o.writeRoots })) {
        this.#pending.delete(id);
        cleanup();
        reject(new Error(`cannot reach the engine process to start ${duringOf(kind)}`));
      }
    });
  }

  /** Asks the process to pause its work and exit; kills it after `graceMs`. */
  async close(graceMs = 30_000): Promise<void> {
    this.#stopping = true;
    const proc = this.#proc ?? (await this.#starting?.catch(() => null)) ?? null;
    if (!proc) return;
    const exited = new Promise<void>((r) => proc.on('exit', () => r()));
    this.#send(proc, { type: 'shutdown' });
    const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  }

  #status(state: EngineStatus['state'], message: string | null): void {
    this.opts.onStatus?.({ state, message });
  }

  #send(proc: EngineProcess, msg: HostMessage): boolean {
    try {
      proc.send(msg);
      return true;
    } catch {
      return false;
    }
  }

  #ensure(): Promise<EngineProcess> {
    if (this.#proc && this.#ready) return Promise.resolve(this.#proc);
    this.#starting ??= this.#spawn().finally(() => (this.#starting = null));
    return this.#starting;
  }

  #spawn(): Promise<EngineProcess> {
    this.#status(this.#crashed ? 'restarting' : 'starting', this.#crashed ? 'starting a new engine process' : null);
    this.#tail = '';
    const env = {
      ...(this.opts.env ?? process.env),
      ...(this.opts.backend ? { SINGLORA_BACKEND: this.opts.backend } : {}),
    };
    const log = this.opts.log ?? ((t: string) => process.stderr.write(t));
    return new Promise<EngineProcess>((resolve, reject) => {
      let settled = false;
      const fail = (message: string) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.#crashed = true;
        this.#status('crashed', message);
        reject(new EngineStartError(message));
      };
      const proc = (this.opts.spawn ?? forkEngine)({
        env,
        onOutput: (text) => {
          this.#tail = (this.#tail + text).slice(-TAIL);
          log(text);
        },
      });
      this.#proc = proc;
      const timeoutMs = this.opts.readyTimeoutMs ?? 120_000;
      const timer = setTimeout(() => {
        fail(`the engine process did not become ready within ${timeoutMs / 1000} s${this.#tailNote()}`);
        proc.kill('SIGKILL');
      }, timeoutMs);
      proc.on('message', (msg) => {
        if (proc !== this.#proc) return;
        if (msg.type === 'ready') {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          this.#ready = true;
          this.#crashed = false;
          this.#pid = msg.pid;
          this.#backend = msg.backend.name;
          this.#status('ready', `backend ${msg.backend.name}${msg.backend.device ? ` (${msg.backend.device})` : ''}`);
          resolve(proc);
        } else if (msg.type === 'startup-failed') {
          fail(`the engine cannot start: ${msg.message}`);
        } else this.#onMessage(msg);
      });
      proc.on('exit', (code, signal) => {
        if (proc !== this.#proc) return;
        this.#proc = null;
        this.#ready = false;
        if (!settled)
          return fail(
            `the engine process exited (${signal ? `signal ${signal}` : `code ${code}`}) while starting${this.#tailNote()}`,
          );
        const pending = [...this.#pending.entries()];
        this.#pending.clear();
        if (this.#stopping) {
          for (const [, p] of pending) p.reject(new Error(`the engine was stopped during ${duringOf(p.kind)}`));
          return;
        }
        this.#crashed = true;
        const how = signal ? `signal ${signal}` : `code ${code}`;
        this.#status(
          'crashed',
          `the engine process exited (${how})${pending.length ? ` during ${DURING[pending[0][1].kind]}` : ''}; it restarts with the next job`,
        );
        for (const [, p] of pending) p.reject(new EngineExitedError(code, signal, p.kind, this.#tail));
      });
    });
  }

  #onMessage(msg: WorkerMessage): void {
    if (msg.type !== 'progress' && msg.type !== 'result' && msg.type !== 'error') return;
    const p = this.#pending.get(msg.id);
    if (!p) return;
    if (msg.type === 'progress') {
      try {
        p.onProgress?.(msg.data);
      } catch (err) {
        (this.opts.log ?? ((t: string) => process.stderr.write(t)))(
          `engine host: a progress listener failed: ${(err as Error).message}\n`,
        );
      }
      return;
    }
    this.#pending.delete(msg.id);
    if (msg.type === 'result') p.resolve(msg.result);
    else p.reject(new EngineRequestError(msg.message, p.kind));
  }

  #tailNote(): string {
    const t = this.#tail.trim();
    return t ? `; its last output: ${t.slice(-800)}` : '';
  }
}

/**
 * Electron, replaced at its boundary. No Electron binary runs in these tests: each fake has the
 * shape of the Electron object it stands for (the parts the app uses), and records what the app
 * did with it.
 *
 *   FakeWebContents     on/once/emit, send (recorded), isDestroyed, setWindowOpenHandler
 *   fakeIpcMain         handle/removeHandler; `invoke(frameUrl, method, params)` plays a renderer
 *   allHandlers         a complete ApiHandlers whose methods fail unless overridden
 *   nodeUtilityProcess  utilityProcess.fork emulated over child_process.fork: the child gets
 *                       `process.parentPort` (as in a utility process), the parent a
 *                       UtilityProcess-shaped object (postMessage / 'message' / 'exit' (code) / kill)
 */
import { fork } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { createRequire } from 'node:module';
import { constants } from 'node:os';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { ForkOptions, IpcMainInvokeEvent, UtilityProcess } from 'electron';
import { vi } from 'vitest';
import { api, type ApiHandlers, type Method } from '../../src-main/api/contract.ts';
import type { UtilityProcessApi } from '../../src-main/app/utilityEngine.ts';

export const REPO = resolve(import.meta.dirname, '../..');
export const PARENT_PORT_SHIM = resolve(import.meta.dirname, 'parentPortShim.cjs');

export class FakeWebContents extends EventEmitter {
  readonly sent: Array<[string, ...unknown[]]> = [];
  destroyed = false;
  openHandler: ((details: { url: string }) => { action: 'allow' | 'deny' }) | null = null;

  send(channel: string, ...args: unknown[]): void {
    this.sent.push([channel, ...args]);
  }

  isDestroyed(): boolean {
    return this.destroyed;
  }

  setWindowOpenHandler(handler: (details: { url: string }) => { action: 'allow' | 'deny' }): void {
    this.openHandler = handler;
  }

  /** Emits an Electron-style cancellable event; returns whether a listener called preventDefault. */
  emitPreventable(name: string, ...args: unknown[]): boolean {
    let prevented = false;
    this.emit(name, { preventDefault: () => (prevented = true) }, ...args);
    return prevented;
  }
}

type InvokeListener = (event: IpcMainInvokeEvent, ...args: unknown[]) => unknown;

export function fakeIpcMain() {
  const handlers = new Map<string, InvokeListener>();
  return {
    handlers,
    handle: vi.fn((channel: string, listener: InvokeListener) => {
      if (handlers.has(channel)) throw new Error(`Attempted to register a second handler for '${channel}'`);
      handlers.set(channel, listener);
    }),
    removeHandler: vi.fn((channel: string) => void handlers.delete(channel)),
    /** What `ipcRenderer.invoke(channel, ...args)` from a frame at `frameUrl` (null: a frame that is gone) would get. */
    async invoke(channel: string, frameUrl: string | null, ...args: unknown[]): Promise<unknown> {
      const h = handlers.get(channel);
      if (!h) throw new Error(`No handler registered for '${channel}'`);
      return h({ senderFrame: frameUrl === null ? null : { url: frameUrl } } as unknown as IpcMainInvokeEvent, ...args);
    },
  };
}

/** Every method present; the ones not overridden fail loudly when called. */
export function allHandlers(overrides: Partial<ApiHandlers> = {}): ApiHandlers {
  const base = Object.fromEntries(
    (Object.keys(api) as Method[]).map((m) => [
      m,
      vi.fn(async () => {
        throw new Error(`${m} was not expected in this test`);
      }),
    ]),
  );
  return { ...base, ...overrides } as ApiHandlers;
}

/** A fake UtilityProcess: what the app sent, and hooks to play the child's side. */
export class FakeUtilityProcess extends EventEmitter {
  readonly posted: unknown[] = [];
  killed = 0;
  pid: number | undefined;
  readonly stdout = new EventEmitter();
  readonly stderr = new EventEmitter();

  constructor(pid: number) {
    super();
    this.pid = pid;
  }

  postMessage(message: unknown): void {
    this.posted.push(message);
  }

  kill(): boolean {
    this.killed++;
    return true;
  }
}

export function fakeUtility(onFork?: (child: FakeUtilityProcess, modulePath: string) => void) {
  const children: FakeUtilityProcess[] = [];
  const forks: Array<{ modulePath: string; args: string[] | undefined; options: ForkOptions | undefined }> = [];
  const utility: UtilityProcessApi = {
    fork: (modulePath, args, options) => {
      forks.push({ modulePath, args, options });
      const child = new FakeUtilityProcess(10_000 + children.length);
      children.push(child);
      onFork?.(child, modulePath);
      return child as unknown as UtilityProcess;
    },
  };
  return { utility, children, forks };
}

/**
 * `utilityProcess.fork` over Node: the module runs in a real child process with
 * `process.parentPort` (parentPortShim.cjs) instead of `process.send`, exactly the API the worker
 * sees in Electron. TypeScript modules run with tsx.
 */
export function nodeUtilityProcess(
  spawned: Array<{ pid?: number; kill(signal?: NodeJS.Signals): boolean }> = [],
): UtilityProcessApi {
  const tsx = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
  return {
    fork(modulePath, args = [], options = {}) {
      const execArgv = ['--require', PARENT_PORT_SHIM, ...(modulePath.endsWith('.ts') ? ['--import', tsx] : [])];
      const stdio = options.stdio;
      if (!Array.isArray(stdio) || stdio[0] !== 'ignore') throw new Error('utilityProcess.fork: stdin must be ignore');
      const child = fork(modulePath, args, {
        execArgv,
        env: options.env as NodeJS.ProcessEnv,
        stdio: [...stdio, 'ipc'] as ['ignore', 'pipe', 'pipe', 'ipc'],
      });
      spawned.push(child);
      const proc = Object.assign(new EventEmitter(), {
        get pid() {
          return child.pid;
        },
        stdout: child.stdout,
        stderr: child.stderr,
        postMessage: (m: unknown) => void child.send(m as object),
        kill: () => child.kill(),
      });
      child.on('message', (m) => proc.emit('message', m));
      // Electron reports only a code; a death by signal becomes 128 + the signal's number, as shells report it.
      child.on('exit', (code, signal) => proc.emit('exit', code ?? 128 + (signal ? constants.signals[signal] : 0)));
      return proc as unknown as UtilityProcess;
    },
  };
}

/**
 * The engine as a utility process (src-main/app/utilityEngine.ts).
 *
 * 1. The adapter alone, over a fake UtilityProcess: what goes to postMessage, what comes back from
 *    'message' and 'exit', kill, and the output streams.
 * 2. A crash and the restart, through the whole main-process path (invoke channel -> service ->
 *    engine host -> adapter), over a scripted fake worker: the crash reaches the window as
 *    engine.status, and the next call runs on a new process.
 * 3. The same with the real engine worker (engineWorker.ts) in a real child process that sees
 *    `process.parentPort`, as it does in Electron (utilityProcess.fork emulated over Node).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { EventData } from '../../src-main/api/contract.ts';
import { EVENT_CHANNEL, INVOKE_CHANNEL } from '../../src-main/app/channels.ts';
import { forwardEvents, handleInvoke } from '../../src-main/app/ipc.ts';
import { ENGINE_SERVICE_NAME, utilityEngine } from '../../src-main/app/utilityEngine.ts';
import { WORKER_PATH, type EngineProcess, type SpawnEngine } from '../../src-main/service/engineHost.ts';
import type { HostMessage, WorkerMessage } from '../../src-main/service/protocol.ts';
import { Service } from '../../src-main/service/service.ts';
import { tempDir } from '../service/helpers.ts';
import { type FakeUtilityProcess, FakeWebContents, fakeIpcMain, fakeUtility, nodeUtilityProcess } from './helpers.ts';

const APP = 'app://studio/index.html';
const doctorResult = (pid: number) => ({
  node: `fake-${pid}`,
  platform: 'test',
  providers: [{ name: 'cpu', available: true, detail: 'MLAS', training: { ok: true, detail: 'trains' } }],
  backends: [{ name: 'cpu', available: true }],
  selected: { name: 'cpu' },
  memory: {},
});

describe('utilityEngine adapter', () => {
  it('forks the worker module as a named utility process with piped output and the given env', () => {
    const { utility, forks } = fakeUtility();
    utilityEngine(
      utility,
      '/app/dist-electron/engineWorker.cjs',
    )({ env: { SINGLORA_BACKEND: 'cpu' }, onOutput: () => {} });
    expect(forks).toEqual([
      {
        modulePath: '/app/dist-electron/engineWorker.cjs',
        args: [],
        options: {
          serviceName: ENGINE_SERVICE_NAME,
          stdio: ['ignore', 'pipe', 'pipe'],
          env: { SINGLORA_BACKEND: 'cpu' },
        },
      },
    ]);
  });

  it('maps send -> postMessage, message -> message, exit(code) -> exit(code, null), kill -> kill, output -> onOutput', () => {
    const { utility, children } = fakeUtility();
    const output: string[] = [];
    const proc: EngineProcess = utilityEngine(utility, 'w.cjs')({ env: {}, onOutput: (t) => output.push(t) });
    const child = children[0];
    expect(proc.pid).toBe(child.pid);

    const request: HostMessage = { type: 'request', id: 7, kind: 'doctor', params: {} };
    proc.send(request);
    expect(child.posted).toEqual([request]);

    const messages: WorkerMessage[] = [];
    proc.on('message', (m) => messages.push(m));
    const ready: WorkerMessage = { type: 'ready', backend: { name: 'cpu' }, pid: 123 };
    child.emit('message', ready);
    expect(messages).toEqual([ready]);

    const exits: Array<[number | null, string | null]> = [];
    proc.on('exit', (code, signal) => exits.push([code, signal]));
    child.emit('exit', 134);
    expect(exits).toEqual([[134, null]]);

    proc.kill('SIGKILL');
    expect(child.killed).toBe(1);

    child.stdout.emit('data', Buffer.from('engine: loaded\n'));
    child.stderr.emit('data', Buffer.from('FATAL: out of memory\n'));
    child.emit('error', 'FatalError', 'v8::ToLocalChecked', 'report');
    expect(output).toEqual([
      'engine: loaded\n',
      'FATAL: out of memory\n',
      'engine process: FatalError at v8::ToLocalChecked\n',
    ]);
  });
});

/** A scripted worker: 'ready' on fork, answers doctor requests, exits on shutdown. */
function scriptedWorker(child: FakeUtilityProcess): void {
  queueMicrotask(() =>
    child.emit('message', { type: 'ready', backend: { name: 'cpu' }, pid: child.pid! } satisfies WorkerMessage),
  );
  const post = child.postMessage.bind(child);
  child.postMessage = (m: unknown) => {
    post(m);
    const msg = m as HostMessage;
    if (msg.type === 'request')
      queueMicrotask(() =>
        child.emit('message', { type: 'result', id: msg.id, result: doctorResult(child.pid!) } satisfies WorkerMessage),
      );
    if (msg.type === 'shutdown') queueMicrotask(() => child.emit('exit', 0));
  };
}

async function mainProcess(spawnEngine: SpawnEngine) {
  const { dir, cleanup } = await tempDir('singlora-app-engine-');
  const service = await Service.open({
    dataDir: join(dir, 'data'),
    modelsDir: join(dir, 'models'),
    spawnEngine,
    backend: 'cpu',
    log: () => {},
  });
  const ipcMain = fakeIpcMain();
  handleInvoke(ipcMain, { handlers: service.handlers });
  const window = new FakeWebContents();
  const events = forwardEvents((l) => service.on(l), window);
  const statuses = () =>
    window.sent
      .filter(([ch, name]) => ch === EVENT_CHANNEL && name === 'engine.status')
      .map(([, , data]) => (data as EventData<'engine.status'>).state);
  const doctor = () =>
    ipcMain.invoke(INVOKE_CHANNEL, APP, 'system.doctor', {}) as Promise<{
      ok: boolean;
      result?: { node: string };
      error?: { code: string; message: string };
    }>;
  return {
    service,
    doctor,
    statuses,
    close: async () => {
      events.stop();
      await service.close();
      await cleanup();
    },
  };
}

describe('engine restart after a crash (scripted worker)', () => {
  let app: Awaited<ReturnType<typeof mainProcess>> | null = null;
  afterEach(async () => {
    await app?.close();
    app = null;
  });

  it('the crash reaches the window as engine.status; the next call runs on a new utility process', async () => {
    const { utility, children } = fakeUtility((child) => scriptedWorker(child));
    app = await mainProcess(utilityEngine(utility, 'engineWorker.cjs'));

    const first = await app.doctor();
    expect(first).toEqual({ ok: true, result: doctorResult(children[0].pid!) });
    expect(app.statuses()).toEqual(['starting', 'ready']);

    children[0].emit('exit', 139); // the utility process dies (a native crash)
    expect(app.statuses()).toEqual(['starting', 'ready', 'crashed']);

    const second = await app.doctor();
    expect(second).toEqual({ ok: true, result: doctorResult(children[1].pid!) });
    expect(children).toHaveLength(2);
    expect(children[1].pid).not.toBe(children[0].pid);
    expect(app.statuses()).toEqual(['starting', 'ready', 'crashed', 'restarting', 'ready']);
  });

  it('a call in flight when the process dies fails with engine_crashed', async () => {
    const { utility, children } = fakeUtility((child) => {
      queueMicrotask(() =>
        child.emit('message', { type: 'ready', backend: { name: 'cpu' }, pid: child.pid! } satisfies WorkerMessage),
      );
    });
    app = await mainProcess(utilityEngine(utility, 'engineWorker.cjs'));
    const pending = app.doctor();
    await sleep(20);
    expect(children[0].posted).toContainEqual(expect.objectContaining({ type: 'request', kind: 'doctor' }));
    children[0].emit('exit', 9);
    expect(await pending).toEqual({
      ok: false,
      error: { code: 'engine_crashed', message: 'the engine process exited (code 9) during the backend check' },
    });
    children[0].removeAllListeners('exit'); // close() must not wait for this dead one
  });
});

describe('engine restart after a crash (the real worker in a process with parentPort)', () => {
  const spawned: Array<{ pid?: number; kill(signal?: NodeJS.Signals): boolean }> = [];
  let app: Awaited<ReturnType<typeof mainProcess>> | null = null;
  afterAll(async () => {
    await app?.close();
    for (const p of spawned) p.kill('SIGKILL');
  });

  it('runs engineWorker.ts through utilityEngine; a killed process is replaced on the next call', async () => {
    app = await mainProcess(utilityEngine(nodeUtilityProcess(spawned), WORKER_PATH));
    const first = await app.doctor();
    expect(first.ok, JSON.stringify(first.error)).toBe(true);
    expect(first.result).toMatchObject({ selected: { name: 'cpu' } });
    expect(spawned).toHaveLength(1);
    const pid = app.service.engine.pid;
    expect(pid).toBe(spawned[0].pid);

    spawned[0].kill('SIGKILL');
    const t0 = Date.now();
    while (!app.statuses().includes('crashed') && Date.now() - t0 < 10_000) await sleep(20);
    expect(app.statuses()).toEqual(['starting', 'ready', 'crashed']);

    const second = await app.doctor();
    expect(second.ok, JSON.stringify(second.error)).toBe(true);
    expect(spawned).toHaveLength(2);
    expect(app.service.engine.pid).toBe(spawned[1].pid);
    expect(app.service.engine.pid).not.toBe(pid);
    expect(app.statuses()).toEqual(['starting', 'ready', 'crashed', 'restarting', 'ready']);
  });
});

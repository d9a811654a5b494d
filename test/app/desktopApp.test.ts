/**
 * The app's lifecycle (src-main/app/desktopApp.ts) over a fake Electron: what happens before
 * `ready`, the single-instance lock, the window, app://, the invoke channel, events, permissions,
 * and quitting. The service is a fake too (its own tests are in test/service).
 */
import { EventEmitter } from 'node:events';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BrowserWindowConstructorOptions } from 'electron';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { ServiceOptions } from '../../src-main/service/service.ts';
import { CSP } from '../../src-main/app/appProtocol.ts';
import { EVENT_CHANNEL, INVOKE_CHANNEL } from '../../src-main/app/channels.ts';
import { appFolders, startApp, type AppService, type ElectronApi } from '../../src-main/app/desktopApp.ts';
import { tempDir } from '../service/helpers.ts';
import { allHandlers, FakeWebContents, fakeIpcMain, fakeUtility } from './helpers.ts';

const PATHS = {
  preload: '/app/dist-electron/preload.cjs',
  engineWorker: '/app/dist-electron/engineWorker.cjs',
  rendererDir: '',
};
let dir: string;
let cleanup: () => Promise<void>;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('singlora-app-lifecycle-'));
  PATHS.rendererDir = join(dir, 'renderer');
  await mkdir(PATHS.rendererDir, { recursive: true });
  await writeFile(join(PATHS.rendererDir, 'index.html'), '<!doctype html><title>SingLoRA Studio</title>');
  await mkdir(join(dir, 'project', 'images'), { recursive: true });
  await writeFile(join(dir, 'project', 'images', 'a.png'), 'png');
});
afterAll(() => cleanup?.());

function fakeElectron(o: { lock?: boolean; packaged?: boolean; dark?: boolean } = {}) {
  const order: string[] = [];
  let ready!: () => void;
  const whenReady = new Promise<void>((r) => (ready = r));
  const app = Object.assign(new EventEmitter(), {
    isPackaged: o.packaged ?? false,
    enableSandbox: vi.fn(() => void order.push('enableSandbox')),
    requestSingleInstanceLock: vi.fn(() => (order.push('requestSingleInstanceLock'), o.lock ?? true)),
    quit: vi.fn(() => void order.push('quit')),
    whenReady: vi.fn(() => whenReady),
    getPath: vi.fn((name: string) => join(dir, `electron-${name}`)),
  });
  const windows: FakeWindow[] = [];
  class FakeWindow extends EventEmitter {
    readonly webContents = new FakeWebContents();
    minimized = true;
    readonly loaded: string[] = [];
    readonly calls: string[] = [];
    background: string;
    constructor(readonly options: BrowserWindowConstructorOptions) {
      super();
      this.background = options.backgroundColor!;
      windows.push(this);
      app.emit('web-contents-created', {}, this.webContents); // as Electron does for every webContents
    }
    loadURL(url: string) {
      this.loaded.push(url);
      return Promise.resolve();
    }
    isMinimized() {
      return this.minimized;
    }
    restore() {
      this.calls.push('restore');
    }
    show() {
      this.calls.push('show');
    }
    focus() {
      this.calls.push('focus');
    }
    setBackgroundColor(c: string) {
      this.background = c;
    }
  }
  const protocol = {
    registerSchemesAsPrivileged: vi.fn(() => void order.push('registerSchemesAsPrivileged')),
    handle: vi.fn(),
  };
  const defaultSession = {
    setPermissionRequestHandler: vi.fn(),
    setPermissionCheckHandler: vi.fn(),
    setDevicePermissionHandler: vi.fn(),
  };
  const nativeTheme = Object.assign(new EventEmitter(), { themeSource: 'light', shouldUseDarkColors: o.dark ?? false });
  const ipcMain = fakeIpcMain();
  const utility = fakeUtility();
  const shell = { openPath: vi.fn(async () => ''), showItemInFolder: vi.fn() };
  const dialog = {
    showErrorBox: vi.fn(),
    showOpenDialog: vi.fn(async () => ({ canceled: false, filePaths: ['/models/sd15'] })),
  };
  const electron = {
    app,
    BrowserWindow: FakeWindow,
    protocol,
    session: { defaultSession },
    nativeTheme,
    ipcMain,
    utilityProcess: utility.utility,
    shell,
    dialog,
  } as unknown as ElectronApi;
  return {
    electron,
    app,
    order,
    ready,
    windows,
    protocol,
    defaultSession,
    nativeTheme,
    ipcMain,
    utility,
    shell,
    dialog,
  };
}

function fakeService() {
  const listeners = new Set<(name: string, data: unknown) => void>();
  let opened: ServiceOptions | null = null;
  const service: AppService = {
    dataDir: '/data',
    handlers: allHandlers({ 'projects.list': async () => [] }),
    on: (l) => {
      const listener = l as (name: string, data: unknown) => void;
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    resolveFile: vi.fn(async (projectId: string, rel: string) => {
      if (projectId !== 'dog' || rel !== 'images/a.png') throw new Error(`unexpected file ${projectId}/${rel}`);
      return join(dir, 'project', 'images', 'a.png');
    }),
    close: vi.fn(async () => {}),
  };
  return {
    service,
    emit: (name: string, data: unknown) => listeners.forEach((l) => l(name, data)),
    openService: vi.fn(async (opts: ServiceOptions) => ((opened = opts), service)),
    opened: () => opened!,
  };
}

async function started(o: Parameters<typeof fakeElectron>[0] = {}) {
  const e = fakeElectron(o);
  const s = fakeService();
  const running = startApp(e.electron, PATHS, {
    openService: s.openService,
    env: {},
    platform: 'linux',
    log: () => {},
  });
  e.ready();
  await running;
  return { ...e, ...s, window: e.windows[0] };
}

describe('before ready', () => {
  it('registers app:// as privileged, enables the sandbox and takes the single-instance lock, before ready', () => {
    const e = fakeElectron();
    const running = startApp(e.electron, PATHS, { openService: fakeService().openService, env: {}, log: () => {} });
    expect(running).toBeInstanceOf(Promise);
    expect(e.order).toEqual(['registerSchemesAsPrivileged', 'enableSandbox', 'requestSingleInstanceLock']);
    expect(e.protocol.registerSchemesAsPrivileged).toHaveBeenCalledWith([
      { scheme: 'app', privileges: { standard: true, secure: true, supportFetchAPI: true, corsEnabled: true } },
    ]);
    expect(e.windows).toHaveLength(0); // nothing else until ready
  });

  it('a second instance quits at once and starts nothing', () => {
    const e = fakeElectron({ lock: false });
    const s = fakeService();
    expect(startApp(e.electron, PATHS, { openService: s.openService, env: {}, log: () => {} })).toBeNull();
    expect(e.app.quit).toHaveBeenCalledTimes(1);
    expect(e.app.whenReady).not.toHaveBeenCalled();
    expect(s.openService).not.toHaveBeenCalled();
  });
});

describe('ready', () => {
  it('opens the service in userData, with the engine as a utility process of the bundled worker', async () => {
    const a = await started();
    const opts = a.opened();
    expect(opts.dataDir).toBe(join(dir, 'electron-userData', 'data'));
    expect(opts.modelsDir).toBeUndefined(); // unpackaged: the repository's models/
    expect(opts.engineEnv).toMatchObject({ SINGLORA_CACHE_DIR: join(dir, 'electron-userData', 'cache') });
    opts.spawnEngine!({ env: {}, onOutput: () => {} });
    expect(a.utility.forks.map((f) => f.modulePath)).toEqual([PATHS.engineWorker]);
  });

  it('opens one secure window on app://studio/index.html, shown once painted', async () => {
    const a = await started({ dark: true });
    expect(a.windows).toHaveLength(1);
    expect(a.window.options.webPreferences).toMatchObject({
      preload: PATHS.preload,
      sandbox: true,
      contextIsolation: true,
      nodeIntegration: false,
      webSecurity: true,
      devTools: true,
    });
    expect(a.window.options).toMatchObject({
      width: 1280,
      height: 800,
      minWidth: 1024,
      minHeight: 700,
      show: false,
      backgroundColor: '#111216',
    });
    expect(a.window.loaded).toEqual(['app://studio/index.html']);
    expect(a.nativeTheme.themeSource).toBe('system');
    expect(a.window.calls).toEqual([]);
    a.window.emit('ready-to-show');
    expect(a.window.calls).toEqual(['show']);
  });

  it('follows the OS theme for the window background', async () => {
    const a = await started({ dark: false });
    expect(a.window.background).toBe('#f5f6f8');
    a.nativeTheme.shouldUseDarkColors = true;
    a.nativeTheme.emit('updated');
    expect(a.window.background).toBe('#111216');
    a.window.emit('closed');
    expect(a.nativeTheme.listenerCount('updated')).toBe(0);
  });

  it('serves app:// (renderer and /files/ through the service) with the CSP', async () => {
    const a = await started();
    expect(a.protocol.handle).toHaveBeenCalledTimes(1);
    const [scheme, handler] = a.protocol.handle.mock.calls[0] as unknown as [string, (r: Request) => Promise<Response>];
    expect(scheme).toBe('app');
    const page = await handler(new Request('app://studio/index.html'));
    expect(await page.text()).toContain('SingLoRA Studio');
    expect(page.headers.get('content-security-policy')).toBe(CSP);
    const image = await handler(new Request('app://studio/files/dog/images/a.png'));
    expect(image.status).toBe(200);
    expect(await image.text()).toBe('png');
    expect(a.service.resolveFile).toHaveBeenCalledWith('dog', 'images/a.png');
  });

  it('wires the one invoke channel to the service handlers, for the app origin only', async () => {
    const a = await started();
    expect([...a.ipcMain.handlers.keys()]).toEqual([INVOKE_CHANNEL]);
    expect(await a.ipcMain.invoke(INVOKE_CHANNEL, 'app://studio/index.html', 'projects.list', {})).toEqual({
      ok: true,
      result: [],
    });
    expect(await a.ipcMain.invoke(INVOKE_CHANNEL, 'https://evil.example/', 'projects.list', {})).toMatchObject({
      ok: false,
      error: { code: 'unauthorized' },
    });
  });

  it("answers desktop.* itself: Show in folder through the service's resolver, the model picker on the window", async () => {
    const a = await started();
    const call = (method: string, params: unknown) =>
      a.ipcMain.invoke(INVOKE_CHANNEL, 'app://studio/index.html', method, params);
    expect(await call('desktop.reveal', { projectId: 'dog', file: 'images/a.png' })).toEqual({
      ok: true,
      result: { revealed: true },
    });
    expect(a.shell.showItemInFolder).toHaveBeenCalledWith(join(dir, 'project', 'images', 'a.png'));
    // A file the service does not resolve is not shown.
    expect(await call('desktop.reveal', { projectId: 'dog', file: '../../etc/passwd' })).toMatchObject({ ok: false });
    expect(a.shell.showItemInFolder).toHaveBeenCalledTimes(1);
    expect(await call('desktop.pickBaseModel', { kind: 'file' })).toEqual({
      ok: true,
      result: { path: '/models/sd15' },
    });
    const [win, options] = a.dialog.showOpenDialog.mock.calls[0] as unknown as [
      unknown,
      { properties: string[]; filters: unknown[] },
    ];
    expect(win).toBe(a.window);
    expect(options.properties).toEqual(['openFile']);
    expect(options.filters).toEqual([{ name: 'safetensors checkpoint', extensions: ['safetensors'] }]);
    a.dialog.showOpenDialog.mockResolvedValueOnce({ canceled: true, filePaths: [] });
    expect(await call('desktop.pickBaseModel', { kind: 'folder' })).toEqual({ ok: true, result: { path: null } });
    expect(await call('desktop.pickBaseModel', { kind: 'anything' })).toMatchObject({
      ok: false,
      error: { code: 'invalid_params' },
    });
  });

  it('forwards service events to the window, replays the engine state after a reload, stops when closed', async () => {
    const a = await started();
    a.emit('engine.status', { state: 'crashed', message: 'the engine process exited (code 139)' });
    a.emit('not.an.event', {});
    expect(a.window.webContents.sent).toEqual([
      [EVENT_CHANNEL, 'engine.status', { state: 'crashed', message: 'the engine process exited (code 139)' }],
    ]);
    a.window.webContents.emit('did-finish-load');
    expect(a.window.webContents.sent).toHaveLength(2);
    a.window.emit('closed');
    a.emit('job.updated', { id: 'j' });
    expect(a.window.webContents.sent).toHaveLength(2);
  });

  it('hardens every webContents and locks permissions', async () => {
    const a = await started();
    const wc = a.window.webContents;
    expect(wc.emitPreventable('will-navigate', 'https://example.com/')).toBe(true);
    expect(wc.openHandler!({ url: 'https://example.com/' })).toEqual({ action: 'deny' });
    expect(a.defaultSession.setPermissionRequestHandler).toHaveBeenCalledTimes(1);
    const request = a.defaultSession.setPermissionRequestHandler.mock.calls[0][0] as (
      wc: unknown,
      p: string,
      cb: (ok: boolean) => void,
      d: { requestingUrl: string },
    ) => void;
    const cb = vi.fn();
    request(null, 'media', cb, { requestingUrl: 'app://studio/index.html' });
    expect(cb).toHaveBeenCalledWith(false);
  });

  it('opens a project image link in the OS viewer (resolved by the service), nothing else', async () => {
    const a = await started();
    const wc = a.window.webContents;
    expect(wc.openHandler!({ url: 'app://studio/files/dog/images/a.png' })).toEqual({ action: 'deny' });
    await vi.waitFor(() => expect(a.shell.openPath).toHaveBeenCalledWith(join(dir, 'project', 'images', 'a.png')));
    wc.openHandler!({ url: 'app://studio/files/dog/run.json' });
    wc.openHandler!({ url: 'https://example.com/a.png' });
    await new Promise((r) => setTimeout(r, 20));
    expect(a.shell.openPath).toHaveBeenCalledTimes(1);
  });

  it('a second launch brings the window back', async () => {
    const a = await started();
    a.app.emit('second-instance');
    expect(a.window.calls).toEqual(['restore', 'show', 'focus']);
  });
});

describe('quit', () => {
  it('closes the service (training pauses at a checkpoint) before quitting, once', async () => {
    const a = await started();
    let release!: () => void;
    (a.service.close as ReturnType<typeof vi.fn>).mockImplementation(() => new Promise<void>((r) => (release = r)));
    const quitEvent = () => {
      const ev = { preventDefault: vi.fn() };
      a.app.emit('before-quit', ev);
      return ev.preventDefault.mock.calls.length > 0;
    };
    expect(quitEvent()).toBe(true);
    expect(quitEvent()).toBe(true); // a second Cmd-Q while closing
    expect(a.service.close).toHaveBeenCalledTimes(1);
    expect(a.app.quit).not.toHaveBeenCalled();
    release();
    await vi.waitFor(() => expect(a.app.quit).toHaveBeenCalledTimes(1));
    expect(quitEvent()).toBe(false); // now the quit goes through
  });

  it('the last window closing quits, except on macOS', async () => {
    const a = await started();
    a.app.emit('window-all-closed');
    expect(a.app.quit).toHaveBeenCalledTimes(1);

    const e = fakeElectron();
    const s = fakeService();
    const running = startApp(e.electron, PATHS, {
      openService: s.openService,
      env: {},
      platform: 'darwin',
      log: () => {},
    });
    e.ready();
    await running;
    e.app.emit('window-all-closed');
    expect(e.app.quit).not.toHaveBeenCalled();
    e.windows[0].emit('closed');
    e.app.emit('activate');
    expect(e.windows).toHaveLength(2);
  });

  it('a service that cannot open: an error box, then quit', async () => {
    const e = fakeElectron();
    const running = startApp(e.electron, PATHS, {
      openService: async () => Promise.reject(new Error('another SingLoRA Studio service (pid 42) is using /data')),
      env: {},
      log: () => {},
    });
    e.ready();
    await expect(running).rejects.toThrow(/pid 42/);
    expect(e.dialog.showErrorBox).toHaveBeenCalledWith(
      'SingLoRA Studio cannot start',
      'another SingLoRA Studio service (pid 42) is using /data',
    );
    expect(e.app.quit).toHaveBeenCalled();
    expect(e.windows).toHaveLength(0);
  });
});

describe('app folders', () => {
  it('userData by default; packaged, models go to userData; SINGLORA_* override', () => {
    expect(appFolders('/u', false, {})).toEqual({ dataDir: '/u/data', modelsDir: undefined, cacheDir: '/u/cache' });
    expect(appFolders('/u', true, {})).toEqual({ dataDir: '/u/data', modelsDir: '/u/models', cacheDir: '/u/cache' });
    expect(
      appFolders('/u', true, { SINGLORA_DATA_DIR: '/d', SINGLORA_MODELS_DIR: '/m', SINGLORA_CACHE_DIR: ' /c ' }),
    ).toEqual({ dataDir: '/d', modelsDir: '/m', cacheDir: '/c' });
  });
});

/**
 * The desktop app's lifecycle, with Electron passed in (main.ts passes the real module; tests a
 * fake), so every decision here runs under a plain Node test.
 *
 *   before ready   app://studio registered as privileged; sandbox for every renderer; the
 *                  single-instance lock (a second launch focuses the first window and quits)
 *   ready          the service (data in userData) with the engine as a utility process;
 *                  permissions locked; app:// served (renderer + /files/); the invoke channel
 *                  (the service's methods, and desktop.* from desktopMethods.ts);
 *                  the window, with the service's events forwarded to it
 *   quit           the service closes first: running training pauses at a checkpoint, the engine
 *                  process exits, the data lock is released
 */
import { join } from 'node:path';
import type * as Electron from 'electron';
import type { BrowserWindow } from 'electron';
import { Service, type ServiceOptions } from '../service/service.ts';
import { resolveProjectFile } from '../gateway/files.ts';
import { APP_ENTRY_URL, APP_SCHEME, APP_SCHEME_PRIVILEGES, createAppProtocolHandler } from './appProtocol.ts';
import { desktopMethods } from './desktopMethods.ts';
import { forwardEvents, handleInvoke } from './ipc.ts';
import { utilityEngine } from './utilityEngine.ts';
import { BACKGROUND, hardenContents, lockPermissions, windowOptions } from './window.ts';

export type ElectronApi = Pick<
  typeof Electron,
  'app' | 'BrowserWindow' | 'dialog' | 'ipcMain' | 'nativeTheme' | 'protocol' | 'session' | 'shell' | 'utilityProcess'
>;

export interface AppPaths {
  /** The bundled preload (CommonJS). */
  preload: string;
  /** The bundled engine worker, forked as a utility process. */
  engineWorker: string;
  /** The built renderer (dist-renderer/). */
  rendererDir: string;
}

export type AppService = Pick<Service, 'handlers' | 'on' | 'resolveFile' | 'close' | 'dataDir'> &
  Partial<Pick<Service, 'resolveExportFolder'>>;

export interface StartOptions {
  env?: NodeJS.ProcessEnv;
  platform?: NodeJS.Platform;
  openService?: (opts: ServiceOptions) => Promise<AppService>;
  log?: (line: string) => void;
}

export interface RunningApp {
  service: AppService;
  window(): BrowserWindow | null;
}

/** Where the app keeps its files; SINGLORA_* variables override, as for the CLI. */
export function appFolders(
  userData: string,
  packaged: boolean,
  env: NodeJS.ProcessEnv,
): { dataDir: string; modelsDir: string | undefined; cacheDir: string } {
  const pick = (v: string | undefined) => v?.trim() || undefined;
  return {
    dataDir: pick(env.SINGLORA_DATA_DIR) ?? join(userData, 'data'),
    // Unpackaged (npm start), the repository's models/ (the demo model lives there); packaged, the
    // app folder is read-only, so downloads go to userData.
    modelsDir: pick(env.SINGLORA_MODELS_DIR) ?? (packaged ? join(userData, 'models') : undefined),
    cacheDir: pick(env.SINGLORA_CACHE_DIR) ?? join(userData, 'cache'),
  };
}

/** What the app's Electron handlers share: the service once booted, the window, and where quitting stands. */
interface AppState {
  service: AppService | null;
  win: BrowserWindow | null;
  quitState: 'running' | 'closing' | 'closed';
}

/** Starts the app; null when another instance already runs (this one quits). */
export function startApp(e: ElectronApi, paths: AppPaths, o: StartOptions = {}): Promise<RunningApp> | null {
  const log = o.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const platform = o.platform ?? process.platform;

  e.protocol.registerSchemesAsPrivileged([APP_SCHEME_PRIVILEGES]);
  e.app.enableSandbox();
  if (!e.app.requestSingleInstanceLock()) {
    e.app.quit();
    return null;
  }

  const state: AppState = { service: null, win: null, quitState: 'running' };
  e.app.on('second-instance', () => focusWindow(state.win));
  e.app.on('web-contents-created', (_event, contents) =>
    hardenContents(contents, { openProjectFile: (url) => openProjectFile(e, state, url, log), log }),
  );
  e.app.on('window-all-closed', () => {
    if (platform !== 'darwin') e.app.quit();
  });
  e.app.on('activate', () => {
    if (state.service && !state.win) createWindow(e, paths, state, state.service, log);
  });
  e.app.on('before-quit', (event) => beforeQuit(e, state, event, log));

  return e.app
    .whenReady()
    .then(() => boot(e, paths, o, state, log))
    .catch((err: Error) => {
      e.dialog.showErrorBox('SingLoRA Studio cannot start', err.message);
      e.app.quit();
      throw err;
    });
}

function focusWindow(win: BrowserWindow | null): void {
  if (!win) return;
  if (win.isMinimized()) win.restore();
  win.show();
  win.focus();
}

/** A link to a project image (the renderer's app: URL) opens in the OS's viewer. */
function openProjectFile(e: ElectronApi, state: AppState, url: string, log: (line: string) => void): void {
  void (async () => {
    if (!state.service) return;
    const svc = state.service;
    const f = await resolveProjectFile((projectId, rel) => svc.resolveFile(projectId, rel), new URL(url).pathname);
    if (!f.type.startsWith('image/')) return;
    const problem = await e.shell.openPath(f.file);
    if (problem) log(`window: cannot open ${f.file}: ${problem}`);
  })().catch((err: Error) => log(`window: cannot open ${url}: ${err.message}`));
}

function createWindow(
  e: ElectronApi,
  paths: AppPaths,
  state: AppState,
  svc: AppService,
  log: (line: string) => void,
): void {
  e.nativeTheme.themeSource = 'system';
  const w = new e.BrowserWindow(
    windowOptions({ preload: paths.preload, dark: e.nativeTheme.shouldUseDarkColors, devTools: !e.app.isPackaged }),
  );
  state.win = w;
  const forwarder = forwardEvents((l) => svc.on(l), w.webContents);
  const onTheme = () => w.setBackgroundColor(e.nativeTheme.shouldUseDarkColors ? BACKGROUND.dark : BACKGROUND.light);
  e.nativeTheme.on('updated', onTheme);
  w.webContents.on('did-finish-load', () => forwarder.replayState());
  w.once('ready-to-show', () => w.show());
  w.on('closed', () => {
    forwarder.stop();
    e.nativeTheme.off('updated', onTheme);
    if (state.win === w) state.win = null;
  });
  w.loadURL(APP_ENTRY_URL).catch((err: Error) => log(`window: cannot load ${APP_ENTRY_URL}: ${err.message}`));
}

/** Quitting waits for the service to close (its engine process, its locks), once. */
function beforeQuit(
  e: ElectronApi,
  state: AppState,
  event: { preventDefault(): void },
  log: (line: string) => void,
): void {
  if (!state.service || state.quitState === 'closed') return;
  event.preventDefault();
  if (state.quitState === 'closing') return;
  state.quitState = 'closing';
  state.service
    .close()
    .catch((err: Error) => log(`app: closing the service failed: ${err.message}`))
    .finally(() => {
      state.quitState = 'closed';
      e.app.quit();
    });
}

/** Opens the service, serves the renderer, answers IPC, and opens the window. */
async function boot(
  e: ElectronApi,
  paths: AppPaths,
  o: StartOptions,
  state: AppState,
  log: (line: string) => void,
): Promise<RunningApp> {
  const env = o.env ?? process.env;
  const folders = appFolders(e.app.getPath('userData'), e.app.isPackaged, env);
  const svc = await (o.openService ?? Service.open)({
    dataDir: folders.dataDir,
    modelsDir: folders.modelsDir,
    // The user picks folders here (a class-image folder) with the desktop's own dialogs.
    hostPaths: 'desktop',
    spawnEngine: utilityEngine(e.utilityProcess, paths.engineWorker),
    engineEnv: {
      ...env,
      SINGLORA_CACHE_DIR: folders.cacheDir,
      ...(folders.modelsDir ? { SINGLORA_MODELS_DIR: folders.modelsDir } : {}),
    },
    log,
  });
  state.service = svc;
  lockPermissions(e.session.defaultSession, log);
  e.protocol.handle(
    APP_SCHEME,
    createAppProtocolHandler({
      rendererDir: paths.rendererDir,
      resolveFile: (p, rel) => svc.resolveFile(p, rel),
      log,
    }),
  );
  // The service's handlers, with the desktop's own (file manager, file dialog) in place of its not_found.
  const desktop = desktopMethods({
    shell: e.shell,
    dialog: e.dialog,
    resolve: (projectId, rel) =>
      svc
        .resolveFile(projectId, rel)
        .catch((err: unknown) =>
          svc.resolveExportFolder ? svc.resolveExportFolder(projectId, rel) : Promise.reject(err),
        ),
    window: () => state.win,
  });
  handleInvoke(e.ipcMain, { handlers: { ...svc.handlers, ...desktop }, log });
  createWindow(e, paths, state, svc, log);
  return { service: svc, window: () => state.win };
}

/**
 * A fake of Electron's main-process API, enough to run the bundled dist-electron/main.js under
 * plain Node (test/app/bundle.test.ts). When the app loads its window, this plays the renderer:
 * it fetches the page through the registered app:// handler, calls the engine through the
 * registered invoke handler (system.info, system.doctor: the engine worker bundle runs in a child
 * process with `process.parentPort`, as in a utility process), prints what it got as one JSON line
 * on stdout, and quits the app.
 */
import { fork } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { constants } from 'node:os';

const SHIM = new URL('../parentPortShim.cjs', import.meta.url).pathname;
const seen = {
  privileged: null,
  sandbox: false,
  protocol: null,
  invoke: null,
  windowOptions: null,
  permissionsLocked: false,
};

export const app = Object.assign(new EventEmitter(), {
  isPackaged: false,
  enableSandbox: () => void (seen.sandbox = true),
  requestSingleInstanceLock: () => true,
  whenReady: () => Promise.resolve(),
  getPath: (name) => `${process.env.FAKE_ELECTRON_USER_DATA}/${name}`,
  quit: () => {
    const ev = {
      defaultPrevented: false,
      preventDefault() {
        this.defaultPrevented = true;
      },
    };
    app.emit('before-quit', ev);
    if (!ev.defaultPrevented) process.exit(0);
  },
});

export const protocol = {
  registerSchemesAsPrivileged: (schemes) => void (seen.privileged = schemes),
  handle: (scheme, handler) => void (seen.protocol = { scheme, handler }),
};

export const ipcMain = {
  handle: (channel, handler) => void (seen.invoke = { channel, handler }),
  removeHandler: () => {},
};

export const session = {
  defaultSession: {
    setPermissionRequestHandler: () => void (seen.permissionsLocked = true),
    setPermissionCheckHandler: () => {},
    setDevicePermissionHandler: () => {},
  },
};

export const nativeTheme = Object.assign(new EventEmitter(), { themeSource: 'system', shouldUseDarkColors: false });
export const shell = { openPath: async () => '' };
export const dialog = { showErrorBox: (title, message) => process.stderr.write(`${title}: ${message}\n`) };

export const utilityProcess = {
  fork(modulePath, args = [], options = {}) {
    const child = fork(modulePath, args, {
      execArgv: ['--require', SHIM],
      env: options.env,
      stdio: [...options.stdio, 'ipc'],
    });
    const proc = Object.assign(new EventEmitter(), {
      get pid() {
        return child.pid;
      },
      stdout: child.stdout,
      stderr: child.stderr,
      postMessage: (m) => void child.send(m),
      kill: () => child.kill(),
    });
    child.on('message', (m) => proc.emit('message', m));
    child.on('exit', (code, signal) => proc.emit('exit', code ?? 128 + (signal ? constants.signals[signal] : 0)));
    return proc;
  },
};

export class BrowserWindow extends EventEmitter {
  constructor(options) {
    super();
    seen.windowOptions = options;
    this.webContents = Object.assign(new EventEmitter(), {
      send: () => {},
      isDestroyed: () => false,
      setWindowOpenHandler: () => {},
    });
    app.emit('web-contents-created', {}, this.webContents);
  }
  async loadURL(url) {
    setImmediate(() => void playRenderer(url));
  }
  setBackgroundColor() {}
}

export const contextBridge = {};
export const ipcRenderer = {};

async function playRenderer(url) {
  const out = {
    url,
    privileged: seen.privileged,
    sandbox: seen.sandbox,
    permissionsLocked: seen.permissionsLocked,
    webPreferences: seen.windowOptions?.webPreferences,
    scheme: seen.protocol?.scheme,
    channel: seen.invoke?.channel,
  };
  try {
    const page = await seen.protocol.handler(new Request(url));
    out.page = {
      status: page.status,
      csp: page.headers.get('content-security-policy'),
      type: page.headers.get('content-type'),
      body: (await page.text()).slice(0, 2000),
    };
    const event = { senderFrame: { url } };
    out.info = await seen.invoke.handler(event, 'system.info', {});
    out.doctor = await seen.invoke.handler(event, 'system.doctor', {});
    out.foreign = await seen.invoke.handler({ senderFrame: { url: 'https://example.com/' } }, 'system.info', {});
  } catch (err) {
    out.error = String(err?.stack ?? err);
  }
  process.stdout.write(`FAKE-ELECTRON ${JSON.stringify(out)}\n`);
  app.quit();
}

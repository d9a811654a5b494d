/**
 * The Electron entry point (bundled to dist-electron/main.js, beside preload.cjs and
 * engineWorker.cjs; the renderer is built to dist-renderer/). Composition only: the lifecycle is
 * in desktopApp.ts, where tests drive it with a fake Electron. See docs/electron.md.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { app, BrowserWindow, dialog, ipcMain, nativeTheme, protocol, session, shell, utilityProcess } from 'electron';
import { startApp } from './desktopApp.ts';

const here = fileURLToPath(new URL('.', import.meta.url));

startApp(
  { app, BrowserWindow, dialog, ipcMain, nativeTheme, protocol, session, shell, utilityProcess },
  {
    preload: join(here, 'preload.cjs'),
    engineWorker: join(here, 'engineWorker.cjs'),
    rendererDir: join(here, '..', 'dist-renderer'),
  },
)?.catch((err: Error) => process.stderr.write(`SingLoRA Studio cannot start: ${err.stack ?? err.message}\n`));

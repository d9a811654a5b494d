/**
 * The window and what its page may do. The renderer is untrusted: it gets a sandboxed,
 * context-isolated page without Node, the preload's two functions, and nothing else.
 *
 *   windowOptions       sandbox, contextIsolation, no nodeIntegration, webSecurity, no <webview>
 *   hardenContents      will-navigate: only within app://studio; new windows: denied (a project
 *                       image link opens in the OS viewer instead); <webview>: refused
 *   lockPermissions     every permission request and check denied, except a sanitized clipboard
 *                       write from the app origin ("Copy parameters" uses navigator.clipboard)
 */
import type { BrowserWindowConstructorOptions, Session, WebContents } from 'electron';
import { isAppUrl } from './appProtocol.ts';

export const WINDOW_SIZE = { width: 1280, height: 800, minWidth: 1024, minHeight: 700 } as const;

/** The page background before the renderer paints (the renderer's --bg, light and dark). */
export const BACKGROUND = { light: '#f5f6f8', dark: '#111216' } as const;

export function windowOptions(o: {
  preload: string;
  dark: boolean;
  devTools: boolean;
}): BrowserWindowConstructorOptions {
  return {
    ...WINDOW_SIZE,
    title: 'SingLoRA Studio',
    show: false,
    backgroundColor: o.dark ? BACKGROUND.dark : BACKGROUND.light,
    webPreferences: {
      preload: o.preload,
      sandbox: true,
      contextIsolation: true,
      nodeIntegration: false,
      nodeIntegrationInWorker: false,
      nodeIntegrationInSubFrames: false,
      webSecurity: true,
      allowRunningInsecureContent: false,
      webviewTag: false,
      navigateOnDragDrop: false,
      safeDialogs: true,
      spellcheck: false,
      devTools: o.devTools,
    },
  };
}

export interface HardenOptions {
  /**
   * A new-window request for a project image (`app://studio/files/...`, the gallery's "open"
   * link): open it in the OS viewer. Other URLs are simply refused.
   */
  openProjectFile?: (url: string) => void;
  log?: (line: string) => void;
}

type Contents = Pick<WebContents, 'on' | 'setWindowOpenHandler'>;

/** Navigation only within the app origin; no new windows; no <webview>. */
export function hardenContents(contents: Contents, o: HardenOptions = {}): void {
  const log = o.log ?? (() => {});
  contents.on('will-navigate', (event, url) => {
    if (isAppUrl(url)) return;
    event.preventDefault();
    log(`window: blocked navigation to ${url}`);
  });
  contents.on('will-redirect', (event, url) => {
    if (isAppUrl(url)) return;
    event.preventDefault();
    log(`window: blocked redirect to ${url}`);
  });
  contents.on('will-attach-webview', (event) => {
    event.preventDefault();
    log('window: refused a <webview>');
  });
  contents.setWindowOpenHandler(({ url }) => {
    if (isAppUrl(url) && new URL(url).pathname.startsWith('/files/') && o.openProjectFile) o.openProjectFile(url);
    else log(`window: refused to open a window for ${url}`);
    return { action: 'deny' };
  });
}

type PermissionSession = Pick<
  Session,
  'setPermissionRequestHandler' | 'setPermissionCheckHandler' | 'setDevicePermissionHandler'
>;

/** The one permission granted: a sanitized clipboard write from the app origin. */
export function isPermissionAllowed(permission: string, url: string | undefined): boolean {
  return permission === 'clipboard-sanitized-write' && isAppUrl(url);
}

export function lockPermissions(session: PermissionSession, log: (line: string) => void = () => {}): void {
  session.setPermissionRequestHandler((_contents, permission, callback, details) => {
    const allowed = isPermissionAllowed(permission, details.requestingUrl);
    if (!allowed) log(`window: denied permission '${permission}' to ${details.requestingUrl}`);
    callback(allowed);
  });
  session.setPermissionCheckHandler((_contents, permission, requestingOrigin, details) =>
    isPermissionAllowed(permission, details.requestingUrl ?? requestingOrigin),
  );
  session.setDevicePermissionHandler(() => false);
}

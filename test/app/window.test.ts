/**
 * The window's options and what its page may do (src-main/app/window.ts), with webContents and
 * the session replaced by fakes.
 */
import type { Session, WebContents } from 'electron';
import { describe, expect, it, vi } from 'vitest';
import { hardenContents, isPermissionAllowed, lockPermissions, windowOptions } from '../../src-main/app/window.ts';
import { FakeWebContents } from './helpers.ts';

describe('window options', () => {
  it('sandboxed, context-isolated, no Node, web security on, the given preload', () => {
    const o = windowOptions({ preload: '/app/dist-electron/preload.cjs', dark: false, devTools: false });
    expect(o.webPreferences).toMatchObject({
      preload: '/app/dist-electron/preload.cjs',
      sandbox: true,
      contextIsolation: true,
      nodeIntegration: false,
      nodeIntegrationInWorker: false,
      nodeIntegrationInSubFrames: false,
      webSecurity: true,
      allowRunningInsecureContent: false,
      webviewTag: false,
      navigateOnDragDrop: false,
      devTools: false,
    });
    expect(o.webPreferences).not.toHaveProperty('enableBlinkFeatures');
    expect(o.webPreferences).not.toHaveProperty('experimentalFeatures');
  });

  it('readable defaults: 1280x800, at least 1024x700, shown when painted, background by theme', () => {
    const light = windowOptions({ preload: 'p', dark: false, devTools: true });
    expect(light).toMatchObject({
      width: 1280,
      height: 800,
      minWidth: 1024,
      minHeight: 700,
      show: false,
      backgroundColor: '#f5f6f8',
    });
    expect(windowOptions({ preload: 'p', dark: true, devTools: true }).backgroundColor).toBe('#111216');
  });
});

describe('navigation and new windows', () => {
  function harden(openProjectFile = vi.fn()) {
    const wc = new FakeWebContents();
    const log = vi.fn();
    hardenContents(wc as unknown as WebContents, { openProjectFile, log });
    return { wc, log, openProjectFile };
  }

  it('blocks navigation away from the app origin', () => {
    const { wc, log } = harden();
    for (const url of [
      'https://example.com/',
      'http://127.0.0.1:7860/',
      'file:///etc/passwd',
      'app://other/index.html',
      'javascript:alert(1)',
      'data:text/html,hi',
    ]) {
      expect(wc.emitPreventable('will-navigate', url), url).toBe(true);
      expect(wc.emitPreventable('will-redirect', url), url).toBe(true);
    }
    expect(log).toHaveBeenCalledWith('window: blocked navigation to https://example.com/');
    expect(wc.emitPreventable('will-navigate', 'app://studio/index.html')).toBe(false);
  });

  it('denies every new window; a project image link opens in the OS viewer instead', () => {
    const { wc, openProjectFile } = harden();
    expect(wc.openHandler).not.toBeNull();
    for (const url of ['https://example.com/', 'app://studio/index.html', 'about:blank', 'app://other/files/p/x.png']) {
      expect(wc.openHandler!({ url }), url).toEqual({ action: 'deny' });
    }
    expect(openProjectFile).not.toHaveBeenCalled();
    expect(wc.openHandler!({ url: 'app://studio/files/dog/images/a.png' })).toEqual({ action: 'deny' });
    expect(openProjectFile).toHaveBeenCalledWith('app://studio/files/dog/images/a.png');
  });

  it('refuses <webview>', () => {
    const { wc } = harden();
    expect(wc.emitPreventable('will-attach-webview', {}, {})).toBe(true);
  });
});

describe('permissions', () => {
  function session() {
    const s = {
      setPermissionRequestHandler: vi.fn(),
      setPermissionCheckHandler: vi.fn(),
      setDevicePermissionHandler: vi.fn(),
    };
    lockPermissions(s as unknown as Session);
    const request = s.setPermissionRequestHandler.mock.calls[0][0] as (
      wc: unknown,
      p: string,
      cb: (ok: boolean) => void,
      d: { requestingUrl: string },
    ) => void;
    const check = s.setPermissionCheckHandler.mock.calls[0][0] as (
      wc: unknown,
      p: string,
      origin: string,
      d: { requestingUrl?: string },
    ) => boolean;
    const device = s.setDevicePermissionHandler.mock.calls[0][0] as () => boolean;
    return { request, check, device };
  }
  const asked = (request: ReturnType<typeof session>['request'], permission: string, url: string) => {
    let answer: boolean | null = null;
    request(null, permission, (ok) => (answer = ok), { requestingUrl: url });
    return answer;
  };

  it('denies every permission request from the app', () => {
    const { request } = session();
    for (const p of [
      'media',
      'geolocation',
      'notifications',
      'clipboard-read',
      'openExternal',
      'fullscreen',
      'hid',
      'serial',
      'usb',
      'fileSystem',
      'unknown',
    ]) {
      expect(asked(request, p, 'app://studio/index.html'), p).toBe(false);
    }
  });

  it('grants only a sanitized clipboard write, and only to the app origin', () => {
    const { request, check, device } = session();
    expect(asked(request, 'clipboard-sanitized-write', 'app://studio/index.html')).toBe(true);
    expect(asked(request, 'clipboard-sanitized-write', 'https://example.com/')).toBe(false);
    expect(check(null, 'clipboard-sanitized-write', 'app://studio', { requestingUrl: 'app://studio/index.html' })).toBe(
      true,
    );
    expect(check(null, 'clipboard-read', 'app://studio', { requestingUrl: 'app://studio/index.html' })).toBe(false);
    expect(check(null, 'media', 'app://studio', {})).toBe(false);
    expect(device()).toBe(false);
    expect(isPermissionAllowed('clipboard-sanitized-write', undefined)).toBe(false);
  });
});

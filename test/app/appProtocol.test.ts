/**
 * The app:// protocol handler (src-main/app/appProtocol.ts) as Electron calls it: a fetch Request
 * in, a Response out. The renderer folder is a temporary one; project files resolve through a real
 * Service (its safe path resolution) over a temporary data folder.
 */
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { APP_SCHEME_PRIVILEGES, createAppProtocolHandler, CSP, isAppUrl } from '../../src-main/app/appProtocol.ts';
import { Service } from '../../src-main/service/service.ts';
import { tempDir } from '../service/helpers.ts';

let dir: string;
let cleanup: () => Promise<void>;
let service: Service;
let handle: (r: Request) => Promise<Response>;
let projectDir: string;
let id: string;
const PNG = Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex');

const get = (path: string, init?: RequestInit) => handle(new Request(`app://studio${path}`, init));

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('singlora-app-protocol-'));
  const renderer = join(dir, 'renderer');
  await mkdir(join(renderer, 'assets'), { recursive: true });
  await writeFile(
    join(renderer, 'index.html'),
    '<!doctype html><script type="module" crossorigin src="./assets/index.js"></script>',
  );
  await writeFile(join(renderer, 'assets', 'index.js'), 'console.log(1)');
  await writeFile(join(dir, 'secret.png'), PNG);
  await writeFile(join(dir, 'secret.txt'), 'the password');
  service = await Service.open({ dataDir: join(dir, 'data'), modelsDir: join(dir, 'models'), log: () => {} });
  const p = await service.call('projects.create', { name: 'Dog' });
  id = (p as { id: string }).id;
  projectDir = service.store.dir(id);
  await mkdir(join(projectDir, 'images'), { recursive: true });
  await writeFile(join(projectDir, 'images', 'a b.png'), PNG);
  await writeFile(join(projectDir, 'images', 'note.html'), '<script>alert(1)</script>');
  await symlink(join(dir, 'secret.png'), join(projectDir, 'images', 'link.png'));
  handle = createAppProtocolHandler({ rendererDir: renderer, resolveFile: (id, rel) => service.resolveFile(id, rel) });
});
afterAll(async () => {
  await service?.close();
  await cleanup?.();
});

describe('app:// protocol', () => {
  it('is registered as a standard, secure origin that supports fetch and CORS, without bypassing CSP', () => {
    expect(APP_SCHEME_PRIVILEGES).toEqual({
      scheme: 'app',
      privileges: { standard: true, secure: true, supportFetchAPI: true, corsEnabled: true },
    });
  });

  it('serves the renderer with the CSP on every response', async () => {
    for (const path of ['/', '/index.html', '/some/route']) {
      const r = await get(path);
      expect(r.status, path).toBe(200);
      expect(r.headers.get('content-type')).toBe('text/html; charset=utf-8');
      expect(r.headers.get('content-security-policy')).toBe(CSP);
      expect(await r.text()).toContain('crossorigin');
    }
    const js = await get('/assets/index.js');
    expect(js.status).toBe(200);
    expect(js.headers.get('content-type')).toBe('text/javascript; charset=utf-8');
    expect(js.headers.get('content-security-policy')).toBe(CSP);
    expect(js.headers.get('x-content-type-options')).toBe('nosniff');
  });

  it('the CSP allows only the app itself: no inline or remote script, no remote connections', () => {
    expect(CSP).toContain("default-src 'self'");
    expect(CSP).toContain("script-src 'self'");
    expect(CSP).toContain("img-src 'self' data: blob:");
    expect(CSP).toContain("style-src 'self' 'unsafe-inline'");
    expect(CSP).toContain("connect-src 'self'");
    expect(CSP).not.toMatch(/unsafe-eval|script-src[^;]*unsafe-inline|https?:|ws:/);
  });

  it('serves a project file under /files/<projectId>/<path>', async () => {
    const r = await get(`/files/${id}/images/a%20b.png`);
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toBe('image/png');
    expect(r.headers.get('content-security-policy')).toBe(CSP);
    expect(Buffer.from(await r.arrayBuffer())).toEqual(PNG);
    const head = await get(`/files/${id}/images/a%20b.png`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe(String(PNG.length));
  });

  it('refuses every way out of the project folder', async () => {
    for (const path of [
      `/files/${id}/..%2F..%2F..%2Fsecret.png`,
      `/files/${id}/images%2F..%2F..%2F..%2Fsecret.png`,
      `/files/${id}/..%5C..%5C..%5Csecret.png`,
      `/files/${id}/${encodeURIComponent(join(dir, 'secret.png'))}`,
      `/files/${id}/images/link.png`,
      `/files/${id}/images/a.png%00.png`,
      '/files/..%2F..%2Fsecret.png/x.png',
    ]) {
      const r = await get(path);
      expect(r.status, path).toBe(400);
      expect(r.headers.get('content-security-policy'), path).toBe(CSP);
      expect(await r.json(), path).toMatchObject({ ok: false, error: { code: 'invalid_params' } });
    }
  });

  it('a ../ (or %2e%2e) that the URL parser resolves lands in the renderer folder, never outside it', async () => {
    for (const path of [
      `/files/${id}/../../../secret.txt`,
      `/files/${id}/images/%2e%2e/%2e%2e/%2e%2e/%2e%2e/secret.png`,
    ]) {
      const r = await get(path);
      expect(r.status, path).toBe(404);
      expect(await r.text(), path).not.toContain('the password');
    }
  });

  it('refuses an encoded ../ out of the renderer folder', async () => {
    for (const path of ['/%2e%2e%2Fsecret.txt', '/assets/..%2F..%2Fsecret.txt', '/..%5Csecret.txt']) {
      const r = await get(path);
      expect(r.status, path).toBe(400);
      expect(await r.text(), path).not.toContain('the password');
    }
  });

  it('serves project files only as images, JSON or text (an .html there would run as the app)', async () => {
    const r = await get(`/files/${id}/images/note.html`);
    expect(r.status).toBe(404);
    expect(await r.text()).not.toContain('<script>');
  });

  it('answers unknown projects, missing files and other methods with errors that carry the CSP', async () => {
    const cases: Array<[string, RequestInit | undefined, number]> = [
      ['/files/cat/images/a.png', undefined, 404],
      [`/files/${id}/images/missing.png`, undefined, 404],
      ['/files/not%20an%20id/a.png', undefined, 400],
      ['/assets/missing.js', undefined, 404],
      ['/index.html', { method: 'POST', body: 'x' }, 405],
    ];
    for (const [path, init, status] of cases) {
      const r = await get(path, init);
      expect(r.status, path).toBe(status);
      expect(r.headers.get('content-security-policy'), path).toBe(CSP);
    }
    const other = await handle(new Request('app://elsewhere/index.html'));
    expect(other.status).toBe(404);
  });

  it('isAppUrl accepts the app origin only', () => {
    expect(isAppUrl('app://studio/index.html#/train')).toBe(true);
    expect(isAppUrl('app://studio/')).toBe(true);
    for (const u of [
      'app://studio.evil/',
      'app://user:pw@studio/',
      'https://studio/',
      'app://other/',
      'studio',
      '',
      undefined,
      null,
    ])
      expect(isAppUrl(u), String(u)).toBe(false);
  });
});

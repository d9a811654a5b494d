/**
 * The headless server: token checks on /api, /files and /ws; loopback-only unless allowed; path
 * escapes on /files and in API params; body limits; security headers; the renderer and its
 * fallback page. None of these need the engine process.
 */
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { isLoopback, startServer, type RunningServer } from '../../src-main/server.ts';
import { Service } from '../../src-main/service/service.ts';
import { shapePng, tempDir } from './helpers.ts';

let dir: string;
let cleanup: () => Promise<void>;
let server: RunningServer;
let bare: RunningServer; // the same service, without a built renderer
let projectId: string;
const SECRET = 'TOP-SECRET-CONTENT';

interface Raw {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** A request with the path sent exactly as written (fetch would normalise `..`). */
function raw(o: {
  path: string;
  method?: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
  chunks?: Buffer[];
  port?: number;
}): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: '127.0.0.1', port: o.port ?? server.port, path: o.path, method: o.method ?? 'GET', headers: o.headers },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts).toString('utf8') }),
        );
      },
    );
    req.on('error', (err: NodeJS.ErrnoException) => {
      // The server may answer (413) and close before a large body is fully written.
      if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') reject(err);
    });
    if (o.chunks) {
      for (const c of o.chunks) req.write(c);
      req.end();
    } else req.end(o.body);
  });
}

const auth = () => ({ Authorization: `Bearer ${server.token}`, 'Content-Type': 'application/json' });
const api = (method: string, params: unknown, headers: Record<string, string> = auth()) =>
  raw({ path: `/api/${method}`, method: 'POST', headers, body: JSON.stringify(params) });

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
  const renderer = join(dir, 'dist-renderer');
  await mkdir(join(renderer, 'assets'), { recursive: true });
  await writeFile(
    join(renderer, 'index.html'),
    '<!doctype html><title>SingLoRA Studio</title><script type="module" src="/assets/app.js"></script>',
  );
  await writeFile(join(renderer, 'assets', 'app.js'), 'console.log("app")');
  await writeFile(join(dir, 'secret.txt'), SECRET);
  const service = await Service.open({ dataDir: join(dir, 'data'), modelsDir: join(dir, 'models'), log: () => {} });
  server = await startServer({ port: 0, service, rendererDir: renderer, log: () => {} });
  bare = await startServer({ port: 0, service, rendererDir: join(dir, 'no-renderer'), log: () => {} });

  // A project with a photo, a JSON file, an HTML file and a link that leads outside.
  const created = JSON.parse((await api('projects.create', { name: 'Served' })).body);
  projectId = created.result.id;
  await api('projects.update', { projectId, settings: { resolution: 64 } });
  await api('photos.add', {
    projectId,
    files: [{ name: 'rex.png', dataBase64: (await shapePng(0)).toString('base64') }],
  });
  const pdir = service.store.dir(projectId);
  await writeFile(join(pdir, 'images', 'page.html'), '<script>alert(1)</script>');
  await writeFile(join(pdir, 'adapters', 'a.safetensors'), 'x');
  await symlink(join(dir, 'secret.txt'), join(pdir, 'images', 'link.png'));
  await symlink(dir, join(pdir, 'images', 'up'));
});

afterAll(async () => {
  await bare?.close();
  await server?.close();
  await server?.service.close();
  await cleanup?.();
});

describe('startServer', () => {
  it('prints a URL with a fresh 32-byte token', () => {
    expect(server.token).toMatch(/^[0-9a-f]{64}$/);
    expect(bare.token).not.toBe(server.token);
    expect(server.url).toBe(`http://127.0.0.1:${server.port}/`);
    expect(server.openUrl).toBe(`${server.url}?token=${server.token}`);
  });

  it('refuses a non-loopback address without allowRemote', async () => {
    await expect(startServer({ host: '0.0.0.0', port: 0, service: server.service })).rejects.toThrow(
      /refusing to listen on 0\.0\.0\.0.*--allow-remote/,
    );
    await expect(startServer({ host: '192.168.1.20', port: 0, service: server.service })).rejects.toThrow(
      /--allow-remote/,
    );
    expect(['127.0.0.1', '127.8.9.1', 'localhost', '::1', '[::1]'].every(isLoopback)).toBe(true);
    expect(['0.0.0.0', '::', '10.0.0.1', 'example.com'].some(isLoopback)).toBe(false);
  });

  it('with allowRemote, serves and refuses client paths outside the projects', async () => {
    const { dir: d2, cleanup: c2 } = await tempDir();
    const remote = await startServer({
      host: '0.0.0.0',
      port: 0,
      allowRemote: true,
      token: 'a-long-enough-test-token',
      serviceOptions: { dataDir: d2, modelsDir: join(d2, 'models'), log: () => {} },
      log: () => {},
    });
    try {
      const h = { Authorization: 'Bearer a-long-enough-test-token', 'Content-Type': 'application/json' };
      const p = JSON.parse(
        (
          await raw({
            port: remote.port,
            path: '/api/projects.create',
            method: 'POST',
            headers: h,
            body: '{"name":"r"}',
          })
        ).body,
      ).result;
      const r = await raw({
        port: remote.port,
        path: '/api/photos.add',
        method: 'POST',
        headers: h,
        body: JSON.stringify({ projectId: p.id, paths: [join(dir, 'secret.txt')] }),
      });
      expect(r.status).toBe(400);
      expect(JSON.parse(r.body).error.message).toContain('does not read files outside its projects');
    } finally {
      await remote.close();
      await c2();
    }
    await expect(startServer({ port: 0, service: server.service, token: 'short' })).rejects.toThrow(/at least 16/);
  });
});

describe('authentication', () => {
  it('/api: 401 without a token, with a wrong one, or in the query string', async () => {
    for (const headers of [
      {} as Record<string, string>,
      { Authorization: `Bearer ${'0'.repeat(64)}` },
      { Authorization: 'Bearer short' },
      { Authorization: `Basic ${server.token}` },
      { Authorization: `Bearer ${bare.token}` },
    ]) {
      const r = await api('projects.list', {}, headers);
      expect(r.status, JSON.stringify(headers)).toBe(401);
      expect(JSON.parse(r.body)).toMatchObject({ ok: false, error: { code: 'unauthorized' } });
      expect(r.headers['www-authenticate']).toBe('Bearer');
    }
    expect((await raw({ path: `/api/projects.list?token=${server.token}`, method: 'POST', body: '{}' })).status).toBe(
      401,
    );
    const ok = await api('projects.list', {});
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body)).toMatchObject({ ok: true, result: [{ id: projectId }] });
  });

  it('/files: 401 without or with a wrong token; the query token or the bearer header work', async () => {
    const path = `/files/${projectId}/photos/rex.png`;
    expect((await raw({ path })).status).toBe(401);
    expect((await raw({ path: `${path}?token=${bare.token}` })).status).toBe(401);
    expect((await raw({ path: `${path}?token=` })).status).toBe(401);
    const q = await raw({ path: `${path}?token=${server.token}` });
    expect(q.status).toBe(200);
    expect(q.headers['content-type']).toBe('image/png');
    expect((await raw({ path, headers: { Authorization: `Bearer ${server.token}` } })).status).toBe(200);
  });

  it('/ws: refused without or with a wrong token; with it, every service event arrives', async () => {
    const refused = (url: string) =>
      new Promise<number>((resolve, reject) => {
        const ws = new WebSocket(url);
        ws.on('unexpected-response', (_req, res) => resolve(res.statusCode!));
        ws.on('open', () => reject(new Error(`${url} opened`)));
        ws.on('error', () => {});
      });
    const base = `ws://127.0.0.1:${server.port}/ws`;
    expect(await refused(base)).toBe(401);
    expect(await refused(`${base}?token=${bare.token}`)).toBe(401);
    expect(await refused(`ws://127.0.0.1:${server.port}/other?token=${server.token}`)).toBe(404);

    const ws = new WebSocket(`${base}?token=${server.token}`);
    const messages: Array<{ event: string; data: { id?: string; status?: string } }> = [];
    ws.on('message', (m) => messages.push(JSON.parse(String(m))));
    await new Promise((r, j) => (ws.once('open', r), ws.once('error', j)));
    const job = server.service.jobs.submit({
      kind: 'export',
      projectId,
      runId: null,
      run: async () => ({ label: 'adapters/x.safetensors' }),
    });
    await server.service.jobs.wait(job.id);
    for (let i = 0; i < 50 && messages.filter((m) => m.data.id === job.id).length < 3; i++)
      await new Promise((r) => setTimeout(r, 20));
    ws.close();
    expect(messages.filter((m) => m.data.id === job.id).map((m) => [m.event, m.data.status])).toEqual([
      ['job.updated', 'queued'],
      ['job.updated', 'running'],
      ['job.updated', 'done'],
    ]);
  });

  it('a page load with the right token sets an HttpOnly SameSite=Strict cookie that /api, /files and /ws accept', async () => {
    // No cookie without the token, or with a wrong one.
    expect((await raw({ path: '/' })).headers['set-cookie']).toBeUndefined();
    expect((await raw({ path: `/?token=${bare.token}` })).headers['set-cookie']).toBeUndefined();
    const page = await raw({ path: `/?token=${server.token}` });
    expect(page.status).toBe(200);
    expect(page.headers['set-cookie']).toEqual([
      `singlora_token_${server.port}=${server.token}; HttpOnly; SameSite=Strict; Path=/`,
    ]);
    const cookie = { Cookie: `other=1; singlora_token_${server.port}=${server.token}` };
    const list = await api('projects.list', {}, { ...cookie, 'Content-Type': 'application/json' });
    expect(list.status).toBe(200);
    expect((await raw({ path: `/files/${projectId}/photos/rex.png`, headers: cookie })).status).toBe(200);
    // A wrong cookie is no better than none.
    expect((await api('projects.list', {}, { Cookie: `singlora_token_${server.port}=${bare.token}` })).status).toBe(
      401,
    );
    expect(
      (await raw({ path: `/files/${projectId}/photos/rex.png`, headers: { Cookie: `singlora_token_${server.port}=` } }))
        .status,
    ).toBe(401);
    // Another server's cookie (another port) is not this one's.
    expect((await api('projects.list', {}, { Cookie: `singlora_token_${bare.port}=${server.token}` })).status).toBe(
      401,
    );
    const ws = new WebSocket(`ws://127.0.0.1:${server.port}/ws`, { headers: cookie });
    await new Promise((r, j) => (ws.once('open', r), ws.once('error', j)));
    ws.close();
    const wrong = new WebSocket(`ws://127.0.0.1:${server.port}/ws`, {
      headers: { Cookie: `singlora_token_${server.port}=${bare.token}` },
    });
    const status = await new Promise<number>((resolve, reject) => {
      wrong.on('unexpected-response', (_req, res) => resolve(res.statusCode!));
      wrong.on('open', () => reject(new Error('opened with a wrong cookie')));
      wrong.on('error', () => {});
    });
    expect(status).toBe(401);
  });

  it("the cookie counts only from the server's own pages: not from another port of 127.0.0.1 (same site)", async () => {
    const cookie = `singlora_token_${server.port}=${server.token}`;
    const own = `http://127.0.0.1:${server.port}`;
    const json = { 'Content-Type': 'application/json' };
    expect(
      (await api('projects.list', {}, { ...json, Cookie: cookie, Origin: own, 'Sec-Fetch-Site': 'same-origin' }))
        .status,
    ).toBe(200);
    expect((await api('projects.list', {}, { ...json, Cookie: cookie, Origin: 'http://127.0.0.1:8080' })).status).toBe(
      401,
    );
    expect((await api('projects.list', {}, { ...json, Cookie: cookie, 'Sec-Fetch-Site': 'same-site' })).status).toBe(
      401,
    );
    expect(
      (await raw({ path: `/files/${projectId}/photos/rex.png`, headers: { Cookie: cookie, 'Sec-Fetch-Site': 'none' } }))
        .status,
    ).toBe(200);
    expect(
      (
        await raw({
          path: `/files/${projectId}/photos/rex.png`,
          headers: { Cookie: cookie, 'Sec-Fetch-Site': 'cross-site' },
        })
      ).status,
    ).toBe(401);
    // The token itself still works from anywhere that holds it.
    expect(
      (
        await api(
          'projects.list',
          {},
          { ...json, Authorization: `Bearer ${server.token}`, Origin: 'http://127.0.0.1:8080' },
        )
      ).status,
    ).toBe(200);
    const opened = (origin: string) =>
      new Promise<number>((resolve) => {
        const ws = new WebSocket(`ws://127.0.0.1:${server.port}/ws`, { headers: { Cookie: cookie }, origin });
        ws.on('open', () => (ws.close(), resolve(101)));
        ws.on('unexpected-response', (_req, res) => resolve(res.statusCode!));
        ws.on('error', () => {});
      });
    expect(await opened(own)).toBe(101);
    expect(await opened('http://127.0.0.1:8080')).toBe(401);
  });

  it('refuses a Host header that is not a loopback name (DNS rebinding)', async () => {
    const r = await raw({ path: '/', headers: { Host: 'evil.example:80' } });
    expect(r.status).toBe(403);
    expect((await raw({ path: '/', headers: { Host: `localhost:${server.port}` } })).status).toBe(200);
  });
});

describe('path escapes', () => {
  const t = () => `token=${server.token}`;

  it.each([
    ['raw ..', (p: string) => `/files/${p}/../../secret.txt`],
    ['raw .. deeper', (p: string) => `/files/${p}/photos/../../../secret.txt`],
    ['encoded %2e%2e', (p: string) => `/files/${p}/%2e%2e/%2e%2e/secret.txt`],
    ['encoded %2e%2e%2f in one segment', (p: string) => `/files/${p}/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt`],
    ['encoded backslashes', (p: string) => `/files/${p}/..%5c..%5c..%5csecret.txt`],
    [
      'absolute after decoding',
      (p: string) => `/files/${p}/%2f${encodeURIComponent(join(dir, 'secret.txt').slice(1))}`,
    ],
    ['NUL byte', (p: string) => `/files/${p}/photos/rex.png%00.txt`],
    ['symlink to a file outside', (p: string) => `/files/${p}/images/link.png`],
    ['symlinked folder outside', (p: string) => `/files/${p}/images/up/secret.txt`],
    ['project id escape', () => `/files/..%2f..%2f/secret.txt`],
    ['project id ..', () => `/files/../secret.txt`],
  ])('/files rejects %s', async (_name, make) => {
    const r = await raw({ path: `${make(projectId)}?${t()}` });
    expect([400, 404]).toContain(r.status);
    expect(r.body).not.toContain(SECRET);
    expect(JSON.parse(r.body).ok).toBe(false);
  });

  it('API path params are checked the same way', async () => {
    const cases: Array<[string, unknown, string]> = [
      ['projects.open', { projectId: '../../secret' }, 'projectId'],
      ['photos.remove', { projectId, photoId: '../project.json' }, 'photoId'],
      ['photos.cropPreview', { projectId, photoId: '../../../secret.txt', crop: 'center' }, 'photoId'],
      ['adapters.inspect', { projectId, file: '../../../secret.txt' }, 'file'],
      ['adapters.inspect', { projectId, file: 'images/up/secret.txt' }, 'file'],
      [
        'adapters.export',
        {
          projectId,
          adapter: { file: 'adapters/a.safetensors' },
          format: 'singlora',
          outPath: '../../../pwned.safetensors',
        },
        'outPath',
      ],
      ['adapters.export', { projectId, adapter: { file: '../../../secret.txt' }, format: 'singlora' }, 'adapter.file'],
      [
        'generation.start',
        { projectId, settings: { prompt: 'x' }, adapters: [{ file: 'adapters/..\\..\\..\\secret.txt' }] },
        'adapters.0.file',
      ],
    ];
    for (const [method, params, field] of cases) {
      const r = await api(method, params);
      expect(r.status, `${method} ${JSON.stringify(params)}`).toBe(400);
      const body = JSON.parse(r.body);
      expect(body.error.code).toBe('invalid_params');
      expect(body.error.message).toContain(field);
    }
  });
});

describe('responses', () => {
  it('maps error codes to HTTP statuses', async () => {
    expect((await api('projects.open', { projectId: 'missing-000000' })).status).toBe(404);
    const invalid = await api('projects.create', { name: '' });
    expect(invalid.status).toBe(400);
    expect(JSON.parse(invalid.body).error.details).toEqual([{ field: 'name', message: expect.any(String) }]);
    expect((await api('training.start', { projectId })).status).toBe(409); // no base model
    expect((await api('no.such.method', {})).status).toBe(404);
    expect((await raw({ path: '/api/projects.list', headers: auth() })).status).toBe(405);
    const notJson = await raw({ path: '/api/projects.list', method: 'POST', headers: auth(), body: '{oops' });
    expect(notJson.status).toBe(400);
    expect(JSON.parse(notJson.body).error.message).toContain('not JSON');
    expect((await raw({ path: '/api/projects.list', method: 'POST', headers: auth(), body: '' })).status).toBe(200);
  });

  it('413 for a body over 64 MiB (declared or streamed) and for a photo over 25 MiB', async () => {
    const big = Buffer.alloc(65 * 2 ** 20, 0x20);
    const declared = await raw({
      path: '/api/photos.add',
      method: 'POST',
      headers: { ...auth(), 'Content-Length': String(big.length) },
      body: big,
    });
    expect(declared.status).toBe(413);
    expect(JSON.parse(declared.body).error).toMatchObject({
      code: 'too_large',
      message: expect.stringContaining('64 MiB'),
    });
    const chunks = Array.from({ length: 66 }, () => Buffer.alloc(2 ** 20, 0x20));
    const streamed = await raw({
      path: '/api/photos.add',
      method: 'POST',
      headers: { ...auth(), 'Transfer-Encoding': 'chunked' },
      chunks,
    });
    expect(streamed.status).toBe(413);
    const photo = Buffer.alloc(26 * 2 ** 20, 1).toString('base64');
    const r = await api('photos.add', { projectId, files: [{ name: 'huge.png', dataBase64: photo }] });
    expect(r.status).toBe(413);
    expect(JSON.parse(r.body).error.message).toBe('files.0: huge.png is 26.0 MiB; the limit is 25 MiB per photo');
    // The server still answers afterwards.
    expect((await api('projects.list', {})).status).toBe(200);
  });

  it('security headers on pages, API answers and files', async () => {
    for (const r of [
      await raw({ path: '/' }),
      await api('projects.list', {}),
      await raw({ path: `/files/${projectId}/photos/rex.png?token=${server.token}` }),
      await api('projects.list', {}, {}),
    ]) {
      const csp = String(r.headers['content-security-policy']);
      for (const d of [
        "default-src 'self'",
        "img-src 'self' data: blob:",
        "style-src 'self' 'unsafe-inline'",
        "connect-src 'self' ws: wss:",
        "script-src 'self'",
      ])
        expect(csp).toContain(d);
      expect(csp).not.toMatch(/script-src[^;]*unsafe-inline/);
      expect(r.headers['x-content-type-options']).toBe('nosniff');
      expect(r.headers['referrer-policy']).toBe('no-referrer');
    }
  });

  it('/files serves with the right types; pages are never served; unknown types download as attachments', async () => {
    const f = (p: string) => raw({ path: `/files/${projectId}/${p}?token=${server.token}` });
    const json = await f('project.json');
    expect(json.headers['content-type']).toBe('application/json; charset=utf-8');
    expect(JSON.parse(json.body).id).toBe(projectId);
    // The one /files/ resolver (gateway/files.ts) refuses pages, as the desktop app always did.
    const html = await f('images/page.html');
    expect(html.status).toBe(404);
    expect(html.body).not.toContain('<');
    expect((await f('adapters/a.safetensors')).headers['content-disposition']).toContain('attachment');
    expect((await f('photos/none.png')).status).toBe(404);
    expect((await raw({ path: `/files/missing-000000/x.png?token=${server.token}` })).status).toBe(404);
  });
});

describe('the renderer', () => {
  it('serves dist-renderer without a token, index.html for app routes, 404 for missing assets', async () => {
    const index = await raw({ path: '/' });
    expect(index.status).toBe(200);
    expect(index.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(index.body).toContain('<title>SingLoRA Studio</title>');
    const js = await raw({ path: '/assets/app.js' });
    expect([js.status, js.headers['content-type']]).toEqual([200, 'text/javascript; charset=utf-8']);
    expect((await raw({ path: '/projects/abc?token=x' })).body).toContain('<title>SingLoRA Studio</title>');
    expect((await raw({ path: '/assets/missing.js' })).status).toBe(404);
    const escaped = await raw({ path: '/../secret.txt' });
    expect(escaped.body).not.toContain(SECRET);
    expect((await raw({ path: '/%2e%2e/secret.txt' })).body).not.toContain(SECRET);
  });

  it('says how to build it when dist-renderer is missing', async () => {
    const r = await raw({ path: '/', port: bare.port });
    expect(r.status).toBe(200);
    expect(r.body).toContain('npx vite build');
    expect(r.body).not.toContain('<script');
  });
});

/**
 * The headless server (`singlora serve`): the service over HTTP and WebSocket, and the built
 * renderer, for a browser on this machine (or, with --allow-remote, the network).
 *
 *   POST /api/<method>          JSON params, `Authorization: Bearer <token>`
 *                               -> 200 {ok: true, result} | 4xx/5xx {ok: false, error: {code, message, details?}}
 *   GET  /ws?token=<token>      WebSocket; every service event as {event, data}
 *   GET  /files/<project>/<path>?token=<token> (or the bearer header)   project files (images, samples, photos)
 *   GET  /files/<project>/adapters/<folder>.tar      an export folder (merged diffusers) as one tar, streamed
 *   GET  /...                   the renderer from dist-renderer/ (index.html for unknown paths); no token needed
 *
 * Security: a random 32-byte token per start (or --token), compared in constant time; 401 for
 * /api, /files and /ws without it. A page load with the right `?token=` also sets it as a cookie
 * (`singlora_token_<port>`, HttpOnly, SameSite=Strict, Path=/), so a second tab or a bookmark of the same
 * browser session keeps working; /api, /files and /ws accept that cookie as well as the header or
 * query token (CLI and API clients); the cookie counts only for requests from the server's own
 * pages (Sec-Fetch-Site and Origin), since other ports of 127.0.0.1 are the same site. Loopback only unless --allow-remote (then a warning, and the
 * service refuses client paths outside its projects). On loopback, the Host header must name a
 * loopback address (DNS-rebinding guard). Every response carries a strict CSP (no inline
 * scripts), nosniff and no-referrer. JSON bodies are limited (64 MiB; photos 25 MiB each) -> 413.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { isIP, type Socket } from 'node:net';
import { basename, extname, join } from 'node:path';
import { WebSocketServer, type WebSocket } from 'ws';
import { ApiError, type ApiErrorBody } from './api/contract.ts';
import { STATIC_TYPES } from './gateway/contentTypes.ts';
import { dispatch } from './gateway/dispatch.ts';
import { attachmentHeader, parseFilesPath, resolveProjectFile } from './gateway/files.ts';
import { tarEntries, tarSize, writeTar } from './gateway/tar.ts';
import { contentSecurityPolicy, securityHeaders, STATUS } from './gateway/http.ts';
import { toApiError } from './service/errors.ts';
import { safeResolve } from './service/safePath.ts';
import { Service, type ServiceOptions } from './service/service.ts';

/** `<repo>/dist-renderer`: the folder beside src-main/ that `vite build` writes. */
const DEFAULT_RENDERER_DIR = join(import.meta.dirname, '..', 'dist-renderer');

export const DEFAULT_PORT = 7860;
export const MAX_BODY_BYTES = 64 * 2 ** 20;

export const CSP = contentSecurityPolicy({ websocket: true });
const SECURITY_HEADERS = securityHeaders(CSP);

export interface ServerOptions {
  host?: string;
  port?: number;
  /** Default: 32 random bytes, hex. */
  token?: string;
  allowRemote?: boolean;
  /** A service to serve (owned by the caller), or the options to open one (owned by the server). */
  service?: Service;
  serviceOptions?: ServiceOptions;
  /** The built renderer (default `<repo>/dist-renderer`, beside src-main/). */
  rendererDir?: string;
  maxBodyBytes?: number;
  log?: (line: string) => void;
}

export interface RunningServer {
  url: string;
  /** The URL with the token, to open in a browser. */
  openUrl: string;
  token: string;
  port: number;
  service: Service;
  close(): Promise<void>;
}

export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return (
    h === 'localhost' ||
    h === '::1' ||
    h === '0:0:0:0:0:0:0:1' ||
    /^127\.\d+\.\d+\.\d+$/.test(h) ||
    h === '::ffff:127.0.0.1'
  );
}

function sameToken(given: string | null | undefined, token: string): boolean {
  if (!given) return false;
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(token).digest();
  return timingSafeEqual(a, b);
}

function bearer(req: IncomingMessage): string | null {
  const h = req.headers.authorization;
  const m = h ? /^Bearer\s+(\S+)\s*$/i.exec(h) : null;
  return m ? m[1] : null;
}

/**
 * The cookie a page load with the right `?token=` sets (HttpOnly: page scripts never see it). Its
 * name carries the port: browsers share cookies across the ports of one host, and two servers on
 * 127.0.0.1 must not overwrite each other's token.
 */
export function tokenCookie(port: number): string {
  return `singlora_token_${port}`;
}

/**
 * The cookie token, only for requests from this server's own pages. SameSite=Strict keeps the cookie
 * off cross-site requests, but every port of 127.0.0.1 is the same site, so a page served by another
 * local program could still send it. The browser says where a request comes from: `Sec-Fetch-Site`
 * (same-origin, or none for a typed address or bookmark) and `Origin` (which must be this host).
 * Header and query tokens are unaffected: a client that holds the token needs no such check.
 */
function cookieToken(req: IncomingMessage, name: string): string | null {
  const header = req.headers.cookie;
  if (!header) return null;
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin' && site !== 'none') return null;
  const origin = req.headers.origin;
  if (origin !== undefined && origin !== `http://${req.headers.host ?? ''}`) return null;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim() || null;
  }
  return null;
}

function splitUrl(raw: string | undefined): { path: string; query: URLSearchParams } {
  const url = raw ?? '/';
  const q = url.indexOf('?');
  return { path: q < 0 ? url : url.slice(0, q), query: new URLSearchParams(q < 0 ? '' : url.slice(q + 1)) };
}

/** What every request handler of one server reads: its service, token, limits and port. */
interface Served {
  readonly service: Service;
  readonly token: string;
  readonly loopback: boolean;
  readonly rendererDir: string;
  readonly maxBody: number;
  readonly log: (line: string) => void;
  /** The port it listens on (known once listening; the token cookie carries it). */
  port: number;
}

/**
 * Starts the server, in named steps: check the address, open the service (with a Redis queue
 * when `serviceOptions.queue` names one: `serve --queue`), route HTTP requests, carry events
 * over WebSocket, listen.
 */
export async function startServer(o: ServerOptions = {}): Promise<RunningServer> {
  const host = o.host ?? '127.0.0.1';
  const loopback = isLoopback(host);
  if (!loopback && !o.allowRemote) {
    throw new Error(
      `refusing to listen on ${host}: it is reachable from other machines; pass --allow-remote to do it anyway (anyone with the token can then use this server)`,
    );
  }
  const log = o.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const token = o.token ?? randomBytes(32).toString('hex');
  if (token.length < 16) throw new Error('--token must be at least 16 characters');
  const ownService = !o.service;
  const service =
    o.service ?? (await Service.open({ hostPaths: loopback ? 'allow' : 'deny', log, ...o.serviceOptions }));
  const served: Served = {
    service,
    token,
    loopback,
    rendererDir: o.rendererDir ?? DEFAULT_RENDERER_DIR,
    maxBody: o.maxBodyBytes ?? MAX_BODY_BYTES,
    log,
    port: o.port ?? DEFAULT_PORT,
  };
  const server = createServer((req, res) => {
    void handle(served, req, res).catch((err) => sendError(served, res, err));
  });
  const events = attachEvents(served, server);
  await listen(server, host, served.port).catch(async (err) => {
    events.close();
    if (ownService) await service.close();
    throw err;
  });
  const addr = server.address();
  if (addr && typeof addr === 'object') served.port = addr.port;
  const url = `http://${isIP(host) === 6 ? `[${host}]` : host}:${served.port}/`;
  let closing: Promise<void> | null = null;
  return {
    url,
    openUrl: `${url}?token=${token}`,
    token,
    port: served.port,
    service,
    close() {
      closing ??= (async () => {
        events.close();
        server.closeAllConnections?.();
        await new Promise<void>((r) => server.close(() => r()));
        if (ownService) await service.close();
      })();
      return closing;
    },
  };
}

function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  }).catch((err) => {
    throw new Error(`cannot listen on ${host}:${port}: ${(err as Error).message}`);
  });
}

function send(res: ServerResponse, status: number, body: string | Buffer, type: string, extra: Headers = {}): void {
  if (res.headersSent) return void res.end();
  res.writeHead(status, {
    ...SECURITY_HEADERS,
    'Content-Type': type,
    'Content-Length': String(Buffer.byteLength(body)),
    ...extra,
  });
  res.end(body);
}

type Headers = Record<string, string>;

function sendJson(res: ServerResponse, status: number, value: unknown, extra: Headers = {}): void {
  send(res, status, JSON.stringify(value), 'application/json; charset=utf-8', {
    'Cache-Control': 'no-store',
    ...extra,
  });
}

function sendErrorBody(s: Served, res: ServerResponse, e: ApiErrorBody, extra: Headers = {}): void {
  if (e.code === 'internal') s.log(`server: ${e.message}`);
  sendJson(res, STATUS[e.code], { ok: false, error: e }, extra);
}

function sendError(s: Served, res: ServerResponse, err: unknown, extra: Headers = {}): void {
  sendErrorBody(s, res, toApiError(err).toBody(), extra);
}

/** On loopback, the Host header must name a loopback address (the DNS-rebinding guard). */
function hostAllowed(s: Served, req: IncomingMessage): boolean {
  if (!s.loopback) return true;
  const h = req.headers.host;
  if (!h) return false;
  const name = h.startsWith('[') ? h.slice(0, h.indexOf(']') + 1) : h.replace(/:\d+$/, '');
  return isLoopback(name);
}

/** The token as a request may carry it: the header (or `?token=` where allowed), else the page's cookie. */
function authorized(s: Served, req: IncomingMessage, given: string | null): boolean {
  return sameToken(given, s.token) || sameToken(cookieToken(req, tokenCookie(s.port)), s.token);
}

async function handle(s: Served, req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (!hostAllowed(s, req))
    return sendJson(res, 403, {
      ok: false,
      error: { code: 'unauthorized', message: `Host '${req.headers.host}' is not this server's loopback address` },
    });
  const { path, query } = splitUrl(req.url);
  if (path.startsWith('/api/')) return handleApi(s, req, res, path.slice('/api/'.length));
  if (path === '/files' || path.startsWith('/files/')) return handleFile(s, req, res, path, query);
  if (path === '/ws')
    return sendJson(res, 426, { ok: false, error: { code: 'invalid_params', message: '/ws is a WebSocket endpoint' } });
  return handleStatic(s, req, res, path, query);
}

async function handleApi(s: Served, req: IncomingMessage, res: ServerResponse, method: string): Promise<void> {
  if (req.method !== 'POST')
    return sendJson(
      res,
      405,
      {
        ok: false,
        error: { code: 'invalid_params', message: `${req.method} /api/${method}: use POST with JSON params` },
      },
      { Allow: 'POST' },
    );
  if (!authorized(s, req, bearer(req))) {
    req.resume();
    return sendError(
      s,
      res,
      new ApiError(
        'unauthorized',
        'missing or wrong token: open the link printed by `singlora serve` (it carries ?token=), or send `Authorization: Bearer <token>`',
      ),
      { 'WWW-Authenticate': 'Bearer' },
    );
  }
  const body = await readBody(s, req, res);
  if (body === null || res.headersSent) return;
  let params: unknown = {};
  const text = body.toString('utf8');
  if (text.trim()) {
    try {
      params = JSON.parse(text);
    } catch (err) {
      return sendError(s, res, new ApiError('invalid_params', `the body is not JSON: ${(err as Error).message}`));
    }
  }
  let decoded: string;
  try {
    decoded = decodeURIComponent(method);
  } catch {
    return sendError(s, res, new ApiError('not_found', `unknown method '${method}'`));
  }
  const answer = await dispatch(s.service.handlers, decoded, params);
  if (answer.ok) sendJson(res, 200, answer);
  else sendErrorBody(s, res, answer.error);
}

/**
 * The request body, or null when it is over the limit: then a 413 is answered at once and the
 * rest of the body drains (bounded in time), so the client reads the answer instead of a reset.
 */
async function readBody(s: Served, req: IncomingMessage, res: ServerResponse): Promise<Buffer | null> {
  const refuseBody = () => {
    res.setHeader('Connection', 'close');
    sendError(
      s,
      res,
      new ApiError(
        'too_large',
        `the request body is over ${(s.maxBody / 2 ** 20).toFixed(0)} MiB; send fewer or smaller photos per request`,
      ),
    );
    req.removeAllListeners('data');
    req.resume();
    const timer = setTimeout(() => req.destroy(), 5_000);
    req.once('close', () => clearTimeout(timer));
  };
  if (Number(req.headers['content-length'] ?? 0) > s.maxBody) {
    refuseBody();
    return null;
  }
  const chunks: Buffer[] = [];
  let size = 0;
  let over = false;
  await new Promise<void>((resolve, reject) => {
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > s.maxBody) {
        over = true;
        chunks.length = 0;
        refuseBody();
        resolve();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve());
    req.on('error', (e) => (over ? resolve() : reject(e)));
    req.on('close', () => resolve());
  });
  return over ? null : Buffer.concat(chunks);
}

/** Files and pages are read-only: anything but GET and HEAD is a 405. */
function refuseMethod(res: ServerResponse): void {
  sendJson(res, 405, { ok: false, error: { code: 'invalid_params', message: 'use GET' } }, { Allow: 'GET, HEAD' });
}

async function handleFile(
  s: Served,
  req: IncomingMessage,
  res: ServerResponse,
  path: string,
  query: URLSearchParams,
): Promise<void> {
  if (req.method !== 'GET' && req.method !== 'HEAD') return refuseMethod(res);
  if (!authorized(s, req, bearer(req) ?? query.get('token')))
    return sendError(
      s,
      res,
      new ApiError('unauthorized', 'missing or wrong token: add ?token=<token> or the bearer header'),
    );
  // An export folder as one download, packed on the fly (gateway/tar.ts).
  if (path.endsWith('.tar')) {
    const { projectId, rel } = parseFilesPath(path);
    const folder = await s.service.resolveExportFolder(projectId, rel.slice(0, -'.tar'.length)).catch(() => null);
    if (folder) return streamTar(s, req, res, folder);
  }
  const f = await resolveProjectFile((projectId, rel) => s.service.resolveFile(projectId, rel), path);
  return streamFile(req, res, f.file, f.type, f.attachment);
}

const NOT_BUILT = `<!doctype html><html><head><meta charset="utf-8"><title>SingLoRA Studio</title></head><body><h1>SingLoRA Studio server is running</h1><p>The user interface is not built yet. Run <code>npx vite build</code> in the repository, then reload this page.</p><p>The API answers at <code>/api/&lt;method&gt;</code>.</p></body></html>`;

async function handleStatic(
  s: Served,
  req: IncomingMessage,
  res: ServerResponse,
  path: string,
  query: URLSearchParams,
): Promise<void> {
  if (req.method !== 'GET' && req.method !== 'HEAD') return refuseMethod(res);
  const index = join(s.rendererDir, 'index.html');
  if (!existsSync(index)) return send(res, 200, NOT_BUILT, 'text/html; charset=utf-8', { 'Cache-Control': 'no-store' });
  let rel: string;
  try {
    rel = decodeURIComponent(path).replace(/^\/+/, '');
  } catch {
    rel = '';
  }
  if (rel && rel !== 'index.html') {
    const file = await safeResolve(s.rendererDir, rel).catch(() => null);
    const info = file ? await stat(file).catch(() => null) : null;
    if (file && info?.isFile())
      return streamFile(
        req,
        res,
        file,
        STATIC_TYPES[extname(file).toLowerCase()] ?? 'application/octet-stream',
        false,
        rel.startsWith('assets/') ? 'public, max-age=31536000, immutable' : 'no-cache',
      );
    if (extname(rel) && extname(rel) !== '.html')
      return sendJson(res, 404, { ok: false, error: { code: 'not_found', message: `no file /${rel}` } });
  }
  // The page with the right token: keep it as a cookie for this browser session (never on a wrong one).
  const cookie: Headers = sameToken(query.get('token'), s.token)
    ? { 'Set-Cookie': `${tokenCookie(s.port)}=${s.token}; HttpOnly; SameSite=Strict; Path=/` }
    : {};
  return streamFile(req, res, index, STATIC_TYPES['.html'], false, 'no-cache', cookie);
}

async function streamTar(s: Served, req: IncomingMessage, res: ServerResponse, folder: string): Promise<void> {
  const name = basename(folder);
  const entries = await tarEntries(folder, name);
  res.writeHead(200, {
    ...SECURITY_HEADERS,
    'Content-Type': 'application/x-tar',
    'Content-Length': String(tarSize(entries)),
    'Cache-Control': 'private, no-cache',
    'Content-Disposition': attachmentHeader(`${name}.tar`),
  });
  if (req.method === 'HEAD') return void res.end();
  try {
    await writeTar(entries, res);
    res.end();
  } catch (err) {
    s.log(`server: ${name}.tar: ${(err as Error).message}`);
    res.destroy();
  }
}

async function streamFile(
  req: IncomingMessage,
  res: ServerResponse,
  file: string,
  type: string,
  attachment: boolean,
  cache = 'private, no-cache',
  extra: Headers = {},
): Promise<void> {
  const info = await stat(file);
  const headers: Headers = {
    ...SECURITY_HEADERS,
    'Content-Type': type,
    'Content-Length': String(info.size),
    'Cache-Control': cache,
    ...extra,
  };
  if (attachment) headers['Content-Disposition'] = attachmentHeader(file);
  res.writeHead(200, headers);
  if (req.method === 'HEAD') return void res.end();
  await new Promise<void>((resolve) => {
    const stream = createReadStream(file);
    stream.on('error', () => {
      res.destroy();
      resolve();
    });
    stream.on('end', () => resolve());
    stream.pipe(res);
  });
}

/**
 * WebSocket: every service event (with a Redis queue: what the workers report, relayed) to every
 * authenticated client. Returns how to stop.
 */
function attachEvents(s: Served, server: Server): { close(): void } {
  const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 });
  const clients = new Set<WebSocket>();
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    const { path, query } = splitUrl(req.url);
    const refuse = (status: string) => {
      socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      socket.destroy();
    };
    if (!hostAllowed(s, req)) return refuse('403 Forbidden');
    if (path !== '/ws') return refuse('404 Not Found');
    if (!authorized(s, req, query.get('token') ?? bearer(req))) return refuse('401 Unauthorized');
    wss.handleUpgrade(req, socket, head, (ws) => {
      clients.add(ws);
      ws.on('close', () => clients.delete(ws));
      ws.on('error', () => clients.delete(ws));
      ws.on('message', () => {}); // the socket only carries events to the client
    });
  });
  const unsubscribe = s.service.on((event, data) => {
    if (!clients.size) return;
    const text = JSON.stringify({ event, data });
    for (const ws of clients) if (ws.readyState === ws.OPEN && ws.bufferedAmount < 16 * 2 ** 20) ws.send(text);
  });
  return {
    close() {
      unsubscribe();
      for (const ws of clients) ws.terminate();
      wss.close();
    },
  };
}

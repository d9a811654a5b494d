/**
 * The app's one origin, `app://studio/`: the built renderer and the project files come from the
 * same privileged scheme, so the page, its module scripts (built with `crossorigin`) and the
 * `/files/...` images it shows are same-origin, and the CSP can simply say `'self'`.
 *
 *   app://studio/<path>                      dist-renderer/<path>; index.html for paths without an extension
 *   app://studio/files/<projectId>/<path>    that project's file, through the service's path check
 *                                            (`Service.resolveFile` -> `safeResolve`: no `..`, no
 *                                            absolute path, no symlink out of the project)
 *
 * Every response, errors included, carries the CSP below, nosniff and no-referrer. GET and HEAD
 * only. Project files are served only as images, JSON or text: an `.html` or `.svg` written into a
 * project would otherwise run as a page of this origin.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { Readable } from 'node:stream';
import type { CustomScheme } from 'electron';
import { ApiError, idSchema, type ErrorCode } from '../api/contract.ts';
import { checkRelative } from '../service/safePath.ts';
import { FILE_TYPES, STATIC_TYPES } from '../service/webContent.ts';

export const APP_SCHEME = 'app';
export const APP_HOST = 'studio';
export const APP_ORIGIN = `${APP_SCHEME}://${APP_HOST}`;
export const APP_ENTRY_URL = `${APP_ORIGIN}/index.html`;

/**
 * Registered before `ready` (protocol.registerSchemesAsPrivileged). standard: a real origin with
 * relative URLs; secure: a secure context (clipboard); supportFetchAPI + corsEnabled: module
 * scripts load with `crossorigin`. Not `bypassCSP`.
 */
export const APP_SCHEME_PRIVILEGES: CustomScheme = {
  scheme: APP_SCHEME,
  privileges: { standard: true, secure: true, supportFetchAPI: true, corsEnabled: true },
};

/** No inline or remote script, no eval, no network but the app origin (the engine is reached over IPC). */
export const CSP = "default-src 'self'; script-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'none'; frame-ancestors 'none'";

const SECURITY_HEADERS: Record<string, string> = {
  'Content-Security-Policy': CSP,
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
};


const STATUS: Partial<Record<ErrorCode, number>> = { invalid_params: 400, not_found: 404, unauthorized: 403 };

/** True for a URL on the app's origin (exact scheme and host; no port, no credentials). */
export function isAppUrl(url: string | null | undefined): boolean {
  if (!url) return false;
  try {
    const u = new URL(url);
    return u.protocol === `${APP_SCHEME}:` && u.host === APP_HOST && !u.username && !u.password;
  } catch {
    return false;
  }
}

/**
 * `/files/<projectId>/<rel>` -> its parts. Split first, then decode each segment once: an encoded
 * '/' or '..' stays inside its segment, where safeResolve refuses it. Throws ApiError.
 */
export function parseFilesPath(pathname: string): { projectId: string; rel: string } {
  let segments: string[];
  try {
    segments = pathname.replace(/^\/files\/?/, '').split('/').map((s) => decodeURIComponent(s));
  } catch {
    throw new ApiError('invalid_params', `${pathname}: not valid percent-encoding`);
  }
  const [projectId, ...rest] = segments;
  if (!idSchema.safeParse(projectId).success) throw new ApiError('invalid_params', `'${projectId ?? ''}' is not a project id`);
  return { projectId, rel: rest.join('/') };
}

/** The Content-Type a project file is served with, or undefined: not served. */
export function projectFileType(rel: string): string | undefined {
  return FILE_TYPES[extname(rel).toLowerCase()];
}

export interface AppProtocolOptions {
  /** The built renderer (dist-renderer/). */
  rendererDir: string;
  /** The file behind `/files/<projectId>/<rel>`; throws ApiError (the service's `resolveFile`). */
  resolveFile(projectId: string, rel: string): Promise<string>;
  log?: (line: string) => void;
}

/** The handler for `protocol.handle(APP_SCHEME, ...)`: a fetch-style Request in, a Response out. */
export function createAppProtocolHandler(o: AppProtocolOptions): (request: Request) => Promise<Response> {
  const log = o.log ?? (() => {});
  return async (request) => {
    try {
      const url = new URL(request.url);
      if (url.protocol !== `${APP_SCHEME}:` || url.host !== APP_HOST) throw new ApiError('not_found', `no such origin: ${url.protocol}//${url.host}`);
      if (request.method !== 'GET' && request.method !== 'HEAD') return errorResponse(405, 'invalid_params', `${request.method} ${url.pathname}: use GET`, { Allow: 'GET, HEAD' });
      const head = request.method === 'HEAD';
      if (url.pathname === '/files' || url.pathname.startsWith('/files/')) return await projectFile(url.pathname, head);
      return await rendererFile(url.pathname, head);
    } catch (err) {
      if (err instanceof ApiError) return errorResponse(STATUS[err.code] ?? 500, err.code, err.message);
      log(`app protocol: ${request.method} ${request.url}: ${(err as Error).message}`);
      return errorResponse(500, 'internal', (err as Error).message);
    }
  };

  async function projectFile(pathname: string, head: boolean): Promise<Response> {
    const { projectId, rel } = parseFilesPath(pathname);
    const type = projectFileType(rel);
    if (!type) throw new ApiError('not_found', `/files/ serves images, JSON and text only, not '${rel}'`);
    const file = await o.resolveFile(projectId, rel);
    return fileResponse(file, type, 'private, no-cache', head);
  }

  async function rendererFile(pathname: string, head: boolean): Promise<Response> {
    let rel: string;
    try {
      rel = decodeURIComponent(pathname).replace(/^\/+/, '');
    } catch {
      throw new ApiError('invalid_params', `${pathname}: not valid percent-encoding`);
    }
    const index = join(o.rendererDir, 'index.html');
    if (rel && rel !== 'index.html') {
      // Lexical check only: the renderer folder is the app's own (inside the asar when packaged).
      const file = join(o.rendererDir, ...checkRelative(rel, 'path'));
      const info = await stat(file).catch(() => null);
      const type = STATIC_TYPES[extname(file).toLowerCase()];
      if (info?.isFile() && type) return fileResponse(file, type, rel.startsWith('assets/') ? 'public, max-age=31536000, immutable' : 'no-cache', head);
      if (extname(rel)) throw new ApiError('not_found', `no file /${rel}`);
    }
    if (!(await stat(index).catch(() => null))?.isFile()) {
      const body = '<!doctype html><meta charset="utf-8"><title>SingLoRA Studio</title><h1>The user interface is not built</h1><p>Run <code>npx vite build</code> (npm run build:renderer), then restart the app.</p>';
      return new Response(head ? null : body, { status: 200, headers: { ...SECURITY_HEADERS, 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' } });
    }
    return fileResponse(index, STATIC_TYPES['.html'], 'no-cache', head);
  }
}

async function fileResponse(file: string, type: string, cache: string, head: boolean): Promise<Response> {
  const info = await stat(file);
  const headers = { ...SECURITY_HEADERS, 'Content-Type': type, 'Content-Length': String(info.size), 'Cache-Control': cache };
  const body = head ? null : (Readable.toWeb(createReadStream(file)) as unknown as ReadableStream<Uint8Array>);
  return new Response(body, { status: 200, headers });
}

function errorResponse(status: number, code: ErrorCode, message: string, extra: Record<string, string> = {}): Response {
  const body = JSON.stringify({ ok: false, error: { code, message } });
  return new Response(body, { status, headers: { ...SECURITY_HEADERS, 'Content-Type': 'application/json; charset=utf-8', 'Cache-Control': 'no-store', ...extra } });
}

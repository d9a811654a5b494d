/**
 * The app's one origin, `app://studio/`: the built renderer and the project files come from the
 * same privileged scheme, so the page, its module scripts (built with `crossorigin`) and the
 * `/files/...` images it shows are same-origin, and the CSP can simply say `'self'`.
 *
 *   app://studio/<path>                      dist-renderer/<path>; index.html for paths without an extension
 *   app://studio/files/<projectId>/<path>    that project's file, through the one `/files/` resolver
 *                                            (gateway/files.ts: the service's path check, and
 *                                            no page or script served from a project)
 *
 * Every response, errors included, carries the gateway's security headers (gateway/http.ts).
 * GET and HEAD only.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { Readable } from 'node:stream';
import type { CustomScheme } from 'electron';
import { ApiError, type ErrorCode } from '../api/contract.ts';
import { STATIC_TYPES } from '../gateway/contentTypes.ts';
import { attachmentHeader, resolveProjectFile } from '../gateway/files.ts';
import { contentSecurityPolicy, errorBody, securityHeaders, STATUS } from '../gateway/http.ts';
import { checkRelative } from '../service/safePath.ts';

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
export const CSP = contentSecurityPolicy({ websocket: false });
const SECURITY_HEADERS = securityHeaders(CSP);

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
      if (url.protocol !== `${APP_SCHEME}:` || url.host !== APP_HOST)
        throw new ApiError('not_found', `no such origin: ${url.protocol}//${url.host}`);
      if (request.method !== 'GET' && request.method !== 'HEAD')
        return errorResponse(405, 'invalid_params', `${request.method} ${url.pathname}: use GET`, {
          Allow: 'GET, HEAD',
        });
      const head = request.method === 'HEAD';
      if (url.pathname === '/files' || url.pathname.startsWith('/files/')) return await projectFile(url.pathname, head);
      return await rendererFile(url.pathname, head);
    } catch (err) {
      if (err instanceof ApiError) return errorResponse(STATUS[err.code], err.code, err.message);
      log(`app protocol: ${request.method} ${request.url}: ${(err as Error).message}`);
      return errorResponse(500, 'internal', (err as Error).message);
    }
  };

  async function projectFile(pathname: string, head: boolean): Promise<Response> {
    const f = await resolveProjectFile(o.resolveFile, pathname);
    return fileResponse(
      f.file,
      f.type,
      'private, no-cache',
      head,
      f.attachment ? { 'Content-Disposition': attachmentHeader(f.file) } : {},
    );
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
      if (info?.isFile() && type)
        return fileResponse(
          file,
          type,
          rel.startsWith('assets/') ? 'public, max-age=31536000, immutable' : 'no-cache',
          head,
        );
      if (extname(rel)) throw new ApiError('not_found', `no file /${rel}`);
    }
    if (!(await stat(index).catch(() => null))?.isFile()) {
      const body =
        '<!doctype html><meta charset="utf-8"><title>SingLoRA Studio</title><h1>The user interface is not built</h1><p>Run <code>npx vite build</code> (npm run build:renderer), then restart the app.</p>';
      return new Response(head ? null : body, {
        status: 200,
        headers: { ...SECURITY_HEADERS, 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' },
      });
    }
    return fileResponse(index, STATIC_TYPES['.html'], 'no-cache', head);
  }
}

async function fileResponse(
  file: string,
  type: string,
  cache: string,
  head: boolean,
  extra: Record<string, string> = {},
): Promise<Response> {
  const info = await stat(file);
  const headers = {
    ...SECURITY_HEADERS,
    'Content-Type': type,
    'Content-Length': String(info.size),
    'Cache-Control': cache,
    ...extra,
  };
  const body = head ? null : (Readable.toWeb(createReadStream(file)) as unknown as ReadableStream<Uint8Array>);
  return new Response(body, { status: 200, headers });
}

function errorResponse(status: number, code: ErrorCode, message: string, extra: Record<string, string> = {}): Response {
  return new Response(errorBody(code, message), {
    status,
    headers: {
      ...SECURITY_HEADERS,
      'Content-Type': 'application/json; charset=utf-8',
      'Cache-Control': 'no-store',
      ...extra,
    },
  });
}

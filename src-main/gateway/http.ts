/**
 * What both front doors (the HTTP server and the Electron app protocol) answer with: one
 * error-to-status table, one set of security headers, one Content-Security-Policy.
 *
 *   | error code                     | status |
 *   | ------------------------------ | ------ |
 *   | invalid_params                 | 400    |
 *   | unauthorized                   | 401    |
 *   | not_found                      | 404    |
 *   | conflict                       | 409    |
 *   | too_large                      | 413    |
 *   | engine_error, engine_crashed, internal | 500 |
 */
import type { ErrorCode } from '../api/contract.ts';

export const STATUS: Readonly<Record<ErrorCode, number>> = {
  invalid_params: 400,
  unauthorized: 401,
  not_found: 404,
  conflict: 409,
  too_large: 413,
  engine_error: 500,
  engine_crashed: 500,
  internal: 500,
};

/**
 * No inline or remote script, no eval, nothing framed. `connect-src` adds WebSocket for the
 * server (events); the desktop app reaches the engine over IPC and connects to nothing.
 */
export function contentSecurityPolicy(o: { websocket: boolean }): string {
  return [
    "default-src 'self'",
    "script-src 'self'",
    "img-src 'self' data: blob:",
    "style-src 'self' 'unsafe-inline'",
    `connect-src 'self'${o.websocket ? ' ws: wss:' : ''}`,
    "object-src 'none'",
    "base-uri 'self'",
    `form-action ${o.websocket ? "'self'" : "'none'"}`,
    "frame-ancestors 'none'",
  ].join('; ');
}

/** The headers on every response, errors included. */
export function securityHeaders(csp: string): Record<string, string> {
  return {
    'Content-Security-Policy': csp,
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer',
    'X-Frame-Options': 'DENY',
    'Cross-Origin-Opener-Policy': 'same-origin',
  };
}

/** A JSON error body as both front doors send it. */
export function errorBody(code: ErrorCode, message: string, details?: unknown): string {
  return JSON.stringify({ ok: false, error: { code, message, ...(details === undefined ? {} : { details }) } });
}

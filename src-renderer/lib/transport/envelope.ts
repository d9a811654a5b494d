/** The `{ok, result} | {ok: false, error}` response envelope shared by both transports. */
import { ApiError, ERROR_CODES, type ErrorCode } from '../../../src-main/api/contract.ts';

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null;

function errorCode(code: unknown): ErrorCode {
  return (ERROR_CODES as readonly unknown[]).includes(code) ? (code as ErrorCode) : 'internal';
}

/** Returns the envelope's result, or throws its error as an `ApiError` (code, message, details kept). */
export function unwrap(method: string, body: unknown): unknown {
  if (isRecord(body) && body.ok === true && 'result' in body) return body.result;
  if (isRecord(body) && body.ok === false && isRecord(body.error)) {
    const { code, message, details } = body.error;
    const text = typeof message === 'string' && message ? message : `${method} failed`;
    // An unknown code is kept visible in the message rather than dropped.
    const known = errorCode(code);
    throw new ApiError(known, known === code || code === undefined ? text : `${String(code)}: ${text}`, details);
  }
  throw new ApiError(
    'internal',
    `${method}: the engine answered with something that is not {ok, result} or {ok: false, error}`,
  );
}

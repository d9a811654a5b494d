/**
 * The one dispatch: a request (method name and params, from HTTP or Electron IPC) to the
 * contract's envelope. Never throws.
 *
 *   1. `method` must name a contract method                 else not_found
 *   2. `params` must match its schema                        else invalid_params, naming the fields
 *   3. the handler runs; its result is checked against the contract
 *   -> {ok: true, result} | {ok: false, error: {code, message, details?}}
 */
import type { ApiErrorBody, ApiHandlers } from '../api/contract.ts';
import { callHandler, toApiError } from '../service/errors.ts';

export type Envelope = { ok: true; result: unknown } | { ok: false; error: ApiErrorBody };

export async function dispatch(handlers: ApiHandlers, method: unknown, params: unknown): Promise<Envelope> {
  try {
    return { ok: true, result: await callHandler(handlers, method, params) };
  } catch (err) {
    return { ok: false, error: toApiError(err).toBody() };
  }
}

/**
 * The contract's call, for any front door: validate the params, run the handler, check the result
 * against the contract (a guard: handlers validate the state they write before writing it), and
 * turn any failure into an ApiError.
 */
import { api, ApiError, issueFields, isMethod, parseParams, type ApiHandlers } from '../api/contract.ts';
import { EngineExitedError, EngineRequestError, EngineStartError } from './engineHost.ts';
import { fsErrorCode, readableError } from './fsErrors.ts';

/** Any error as the contract's ApiError (file-system failures as readable sentences). */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof EngineExitedError) return new ApiError('engine_crashed', err.message);
  if (err instanceof EngineRequestError || err instanceof EngineStartError)
    return new ApiError('engine_error', readableError(err));
  return new ApiError(fsErrorCode(err), readableError(err));
}

/** Validates, runs the handler, checks the result. Throws ApiError only. */
export async function callHandler(handlers: ApiHandlers, method: unknown, params: unknown): Promise<unknown> {
  if (typeof method !== 'string' || !isMethod(method))
    throw new ApiError('not_found', `unknown method '${String(method)}'`);
  const parsed = parseParams(method, params);
  let result: unknown;
  try {
    result = await (handlers[method] as (p: unknown) => Promise<unknown>)(parsed);
  } catch (err) {
    throw toApiError(err);
  }
  const r = api[method].result.safeParse(result);
  if (!r.success) {
    const fields = issueFields(r.error.issues, '(result)');
    throw new ApiError(
      'internal',
      `${method}: the service's result does not match the contract (${fields.map((f) => `${f.field}: ${f.message}`).join('; ')})`,
      fields,
    );
  }
  return r.data;
}

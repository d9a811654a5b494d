/**
 * The typed client: one async function per contract method, over any transport.
 *
 * Params are checked with the contract's schema before anything is sent (an `ApiError`
 * 'invalid_params' with `details: [{field, message}]`, the same shape the server uses), but the
 * caller's params are sent as written: parsing would fill every default, and a partial update such
 * as `projects.update({settings: {steps}})` would then overwrite the other saved settings.
 * Results (and events, in `events.ts`) are checked against the contract when `validate` is on
 * (development and tests), and passed through unchanged so development and production see the
 * same objects.
 */
import { api, ApiError, type ApiClient, type Method } from '../../src-main/api/contract.ts';
import type { z } from 'zod';
import type { Transport } from './transport/types.ts';

export interface FieldIssue {
  field: string;
  message: string;
}

export function issuesOf(error: z.ZodError): FieldIssue[] {
  return error.issues.map((i) => ({ field: i.path.map(String).join('.') || '(params)', message: i.message }));
}

export function createApiClient(transport: Transport, opts: { validate?: boolean } = {}): ApiClient {
  const client: Record<string, (params: unknown) => Promise<unknown>> = {};
  for (const method of Object.keys(api) as Method[]) {
    const schema = api[method];
    client[method] = async (params: unknown) => {
      const checked = schema.params.safeParse(params ?? {});
      if (!checked.success) {
        const fields = issuesOf(checked.error);
        throw new ApiError(
          'invalid_params',
          `${method}: ${fields.map((f) => `${f.field}: ${f.message}`).join('; ')}`,
          fields,
        );
      }
      const result = await transport.request(method, params ?? {});
      if (opts.validate) {
        const r = schema.result.safeParse(result);
        if (!r.success) {
          const fields = issuesOf(r.error);
          throw new ApiError(
            'internal',
            `${method}: the engine's result does not match the contract (${fields.map((f) => `${f.field}: ${f.message}`).join('; ')})`,
            fields,
          );
        }
      }
      return result;
    };
  }
  return client as unknown as ApiClient;
}

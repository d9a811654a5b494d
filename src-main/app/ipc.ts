/**
 * The main-process end of the IPC transport: one invoke channel in, one event channel out.
 *
 *   ipcRenderer.invoke(INVOKE_CHANNEL, method, params)
 *     1. the sending frame must be on the app origin (app://studio); anything else: 'unauthorized'
 *     2. `method` must name a contract method (isMethod);            else 'not_found'
 *     3. `params` must match its schema (parseParams);                else 'invalid_params' + field details
 *     4. the handler runs; its result is checked against the contract
 *     -> {ok: true, result} | {ok: false, error: {code, message, details?}}  (the HTTP envelope)
 *
 *   webContents.send(EVENT_CHANNEL, name, data)   only for names in the contract's `events`
 *
 * The renderer is untrusted: it reaches nothing but these two channels, and every value it sends is
 * validated here. Handlers are typed `ApiHandlers`, so a method without a handler is a compile error.
 */
import type { IpcMain, IpcMainInvokeEvent, WebContents } from 'electron';
import { api, ApiError, events, isMethod, parseParams, type ApiErrorBody, type ApiHandlers, type EventName } from '../api/contract.ts';
import { toApiError } from '../service/service.ts';
import { isAppUrl } from './appProtocol.ts';
import { EVENT_CHANNEL, INVOKE_CHANNEL } from './channels.ts';

export type Envelope = { ok: true; result: unknown } | { ok: false; error: ApiErrorBody };

/** Steps 2-4 above, for a request already known to come from the app. Never throws. */
export async function dispatch(handlers: ApiHandlers, method: unknown, params: unknown): Promise<Envelope> {
  try {
    if (typeof method !== 'string' || !isMethod(method)) throw new ApiError('not_found', `unknown method '${String(method)}'`);
    const parsed = parseParams(method, params);
    const result = await (handlers[method] as (p: unknown) => Promise<unknown>)(parsed);
    const checked = api[method].result.safeParse(result);
    if (!checked.success) {
      const fields = checked.error.issues.map((i) => ({ field: i.path.join('.') || '(result)', message: i.message }));
      throw new ApiError('internal', `${method}: the result does not match the contract (${fields.map((f) => `${f.field}: ${f.message}`).join('; ')})`, fields);
    }
    return { ok: true, result: checked.data };
  } catch (err) {
    return { ok: false, error: toApiError(err).toBody() };
  }
}

export interface InvokeOptions {
  handlers: ApiHandlers;
  log?: (line: string) => void;
}

/** Registers the one invoke handler; returns its removal. */
export function handleInvoke(ipcMain: Pick<IpcMain, 'handle' | 'removeHandler'>, o: InvokeOptions): () => void {
  const log = o.log ?? (() => {});
  ipcMain.handle(INVOKE_CHANNEL, async (event: IpcMainInvokeEvent, method: unknown, params: unknown): Promise<Envelope> => {
    const url = event.senderFrame?.url;
    if (!isAppUrl(url)) {
      log(`ipc: refused ${String(method)} from ${url ?? 'a frame that is gone'} (not the app origin)`);
      return { ok: false, error: new ApiError('unauthorized', 'this frame may not call the SingLoRA engine').toBody() };
    }
    return dispatch(o.handlers, method, params);
  });
  return () => ipcMain.removeHandler(INVOKE_CHANNEL);
}

export const isEventName = (name: string): name is EventName => Object.prototype.hasOwnProperty.call(events, name);

export interface EventForwarder {
  stop(): void;
  /** Sends the latest `engine.status` again (a reloaded page missed it). */
  replayState(): void;
}

/** Forwards the service's events to a window, contract names only. */
export function forwardEvents(subscribe: (listener: (name: string, data: unknown) => void) => () => void, target: Pick<WebContents, 'send' | 'isDestroyed'>): EventForwarder {
  let engineStatus: unknown = null;
  const send = (name: EventName, data: unknown) => {
    if (!target.isDestroyed()) target.send(EVENT_CHANNEL, name, data);
  };
  const stop = subscribe((name, data) => {
    if (!isEventName(name)) return;
    if (name === 'engine.status') engineStatus = data;
    send(name, data);
  });
  return {
    stop,
    replayState: () => {
      if (engineStatus !== null) send('engine.status', engineStatus);
    },
  };
}

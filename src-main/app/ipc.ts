/**
 * The main-process end of the IPC transport: one invoke channel in, one event channel out.
 *
 *   ipcRenderer.invoke(INVOKE_CHANNEL, method, params)
 *     1. the sending frame must be on the app origin (app://studio); anything else: 'unauthorized'
 *     2. the gateway's one dispatch (gateway/dispatch.ts), as for HTTP: method, params, handler,
 *        result checked against the contract
 *     -> {ok: true, result} | {ok: false, error: {code, message, details?}}  (the HTTP envelope)
 *
 *   webContents.send(EVENT_CHANNEL, name, data)   only for names in the contract's `events`
 *
 * The renderer is untrusted: it reaches nothing but these two channels, and every value it sends is
 * validated here. Handlers are typed `ApiHandlers`, so a method without a handler is a compile error.
 */
import type { IpcMain, IpcMainInvokeEvent, WebContents } from 'electron';
import { ApiError, events, type ApiHandlers, type EventName } from '../api/contract.ts';
import { dispatch, type Envelope } from '../gateway/dispatch.ts';
import { isAppUrl } from './appProtocol.ts';
import { EVENT_CHANNEL, INVOKE_CHANNEL } from './channels.ts';

export { dispatch, type Envelope } from '../gateway/dispatch.ts';

export interface InvokeOptions {
  handlers: ApiHandlers;
  log?: (line: string) => void;
}

/** Registers the one invoke handler; returns its removal. */
export function handleInvoke(ipcMain: Pick<IpcMain, 'handle' | 'removeHandler'>, o: InvokeOptions): () => void {
  const log = o.log ?? (() => {});
  ipcMain.handle(
    INVOKE_CHANNEL,
    async (event: IpcMainInvokeEvent, method: unknown, params: unknown): Promise<Envelope> => {
      const url = event.senderFrame?.url;
      if (!isAppUrl(url)) {
        log(`ipc: refused ${String(method)} from ${url ?? 'a frame that is gone'} (not the app origin)`);
        return {
          ok: false,
          error: new ApiError('unauthorized', 'this frame may not call the SingLoRA engine').toBody(),
        };
      }
      return dispatch(o.handlers, method, params);
    },
  );
  return () => ipcMain.removeHandler(INVOKE_CHANNEL);
}

export const isEventName = (name: string): name is EventName => Object.hasOwn(events, name);

export interface EventForwarder {
  stop(): void;
  /** Sends the latest `engine.status` again (a reloaded page missed it). */
  replayState(): void;
}

/** Forwards the service's events to a window, contract names only. */
export function forwardEvents(
  subscribe: (listener: (name: string, data: unknown) => void) => () => void,
  target: Pick<WebContents, 'send' | 'isDestroyed'>,
): EventForwarder {
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

/** Picks the transport for this page: Electron's preload bridge when present, else HTTP + WebSocket. */
import { createElectronTransport, isSingloraBridge } from './electron.ts';
import { createHttpTransport } from './http.ts';
import { takeToken } from './token.ts';
import type { Transport } from './types.ts';

export type { ConnectionState, Transport } from './types.ts';

export function connect(win: Window & { singlora?: unknown }): Transport {
  if (isSingloraBridge(win.singlora)) return createElectronTransport(win.singlora);
  return createHttpTransport({ baseUrl: win.location.origin, token: takeToken(win) });
}

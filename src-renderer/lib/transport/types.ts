/**
 * What a transport carries: requests to the engine, events from it, and the state of the link.
 * Two implementations: `http.ts` (browser against `singlora serve`) and `electron.ts` (the
 * preload's `window.singlora`). Everything above this line is typed by `createApiClient`.
 */
import type { Method } from '../../../src-main/api/contract.ts';

export type ConnectionState =
  | { status: 'connecting' }
  | { status: 'open' }
  /** The event channel dropped; the next attempt is in `retryInMs`. */
  | { status: 'reconnecting'; attempt: number; retryInMs: number }
  | { status: 'closed' }
  /** The server refused the session token (missing, wrong, or from an earlier start): nothing retries. */
  | { status: 'unauthorized' };

export interface Transport {
  readonly kind: 'http' | 'electron';
  /** Sends one request; resolves with its `result` or rejects with an `ApiError`. */
  request(method: Method, params: unknown): Promise<unknown>;
  /** Every event the engine pushes (`{event, data}`); returns the unsubscribe function. */
  onEvent(listener: (name: string, data: unknown) => void): () => void;
  /** The event channel's state, reported now and on every change; returns the unsubscribe function. */
  onConnection(listener: (state: ConnectionState) => void): () => void;
  /** Reconnects at once instead of waiting for the backoff (no-op where there is nothing to reconnect). */
  reconnectNow(): void;
  /** Makes a file URL loadable by <img> (HTTP: unchanged, the session cookie authorises it; Electron: its own mapping). */
  fileUrl(url: string): string;
  close(): void;
}

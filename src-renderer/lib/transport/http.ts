/**
 * Browser transport for `singlora serve`:
 *   request  POST /api/<method>, JSON body = params, `Authorization: Bearer <token>`
 *   response {ok: true, result} | {ok: false, error: {code, message, details?}} (4xx/5xx)
 *   events   WebSocket /ws?token=<token>, each message {event, data}
 *
 * The WebSocket opens on the first subscriber and reconnects with exponential backoff
 * (initialMs * 2^attempt, capped at maxMs, with jitter) until `close()`.
 *
 * The token: the page sends the one it was opened with (`?token=`, kept per tab) as the bearer
 * header; a second tab or a bookmark has none and relies on the HttpOnly cookie the server set on
 * the first load (sent by the browser with same-origin requests, images and downloads from /files
 * included, and the WebSocket). When the server
 * answers 401 (or the socket is refused before it ever opened and a request confirms the 401), the
 * state becomes 'unauthorized' and nothing reconnects: the page shows one screen that says how to
 * get in (open the link `singlora serve` printed).
 */
import { ApiError, type Method } from '../../../src-main/api/contract.ts';
import { unwrap } from './envelope.ts';
import type { ConnectionState, Transport } from './types.ts';

type WebSocketLike = Pick<WebSocket, 'close'> & {
  onopen: ((ev: Event) => void) | null;
  onclose: ((ev: CloseEvent) => void) | null;
  onerror: ((ev: Event) => void) | null;
  onmessage: ((ev: MessageEvent) => void) | null;
};

export interface HttpTransportOptions {
  /** Origin of the server, e.g. `http://127.0.0.1:7860` (the page's own origin in the app). */
  baseUrl: string;
  token: string | null;
  fetch?: typeof globalThis.fetch;
  WebSocket?: new (url: string) => WebSocketLike;
  backoff?: { initialMs: number; maxMs: number };
  /** In [0, 1); the jitter source (tests pass a constant). */
  random?: () => number;
}

export function createHttpTransport(opts: HttpTransportOptions): Transport {
  const base = opts.baseUrl.replace(/\/+$/, '');
  const doFetch = opts.fetch ?? globalThis.fetch.bind(globalThis);
  const Socket = opts.WebSocket ?? (globalThis.WebSocket as unknown as new (url: string) => WebSocketLike);
  const { initialMs, maxMs } = opts.backoff ?? { initialMs: 500, maxMs: 15_000 };
  const random = opts.random ?? Math.random;

  const eventListeners = new Set<(name: string, data: unknown) => void>();
  const stateListeners = new Set<(s: ConnectionState) => void>();
  let state: ConnectionState = { status: 'closed' };
  let socket: WebSocketLike | null = null;
  let attempt = 0;
  let timer: ReturnType<typeof setTimeout> | null = null;
  let closed = false;
  let unauthorized = false;
  let everOpened = false;

  const setState = (s: ConnectionState) => {
    state = s;
    for (const l of stateListeners) l(s);
  };

  function wsUrl(): string {
    const u = new URL(`${base}/ws`);
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    if (opts.token) u.searchParams.set('token', opts.token);
    return u.toString();
  }

  /** Closes the socket and cancels a pending reconnect. */
  function stopSocket() {
    if (timer) clearTimeout(timer);
    timer = null;
    const ws = socket;
    socket = null;
    ws?.close();
  }

  /** The server refused the token: stop the socket and every retry; the page says what to do. */
  function refuse() {
    if (unauthorized) return;
    unauthorized = true;
    stopSocket();
    setState({ status: 'unauthorized' });
  }

  async function post(method: string, params: unknown): Promise<Response> {
    return doFetch(`${base}/api/${method}`, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', ...(opts.token ? { Authorization: `Bearer ${opts.token}` } : {}) },
      body: JSON.stringify(params ?? {}),
    });
  }

  function connect() {
    if (closed || unauthorized || socket) return;
    if (timer) clearTimeout(timer);
    timer = null;
    if (state.status !== 'reconnecting') setState({ status: 'connecting' });
    const ws = new Socket(wsUrl());
    socket = ws;
    ws.onopen = () => {
      attempt = 0;
      everOpened = true;
      setState({ status: 'open' });
    };
    ws.onmessage = (ev) => {
      let msg: unknown;
      try {
        msg = JSON.parse(String(ev.data));
      } catch {
        console.error('singlora: dropped a WebSocket message that is not JSON', ev.data);
        return;
      }
      const m = msg as { event?: unknown; data?: unknown };
      if (typeof m?.event !== 'string') {
        console.error('singlora: dropped a WebSocket message without an event name', msg);
        return;
      }
      for (const l of eventListeners) l(m.event, m.data);
    };
    ws.onerror = () => {
      /* onclose follows and schedules the retry */
    };
    ws.onclose = () => {
      if (socket !== ws) return;
      socket = null;
      if (closed) return setState({ status: 'closed' });
      if (unauthorized) return;
      // Refused before it ever opened: a wrong or missing token looks the same as a server that is
      // down to a WebSocket; one request tells them apart.
      if (!everOpened && attempt === 0) {
        void post('system.info', {})
          .then((res) => {
            if (res.status === 401) refuse();
          })
          .catch(() => {});
      }
      const retryInMs = Math.round(Math.min(maxMs, initialMs * 2 ** attempt) * (0.75 + 0.5 * random()));
      attempt += 1;
      setState({ status: 'reconnecting', attempt, retryInMs });
      timer = setTimeout(connect, retryInMs);
    };
  }

  return {
    kind: 'http',

    async request(method: Method, params: unknown): Promise<unknown> {
      let res: Response;
      try {
        res = await post(method, params);
      } catch (err) {
        throw new ApiError(
          'internal',
          `${method}: cannot reach the SingLoRA server at ${base} (${(err as Error).message}). Is \`singlora serve\` still running?`,
        );
      }
      if (res.status === 401) refuse();
      let body: unknown;
      try {
        body = await res.json();
      } catch {
        throw new ApiError(
          res.status === 401 ? 'unauthorized' : 'internal',
          `${method}: HTTP ${res.status} ${res.statusText} without a JSON body`,
        );
      }
      return unwrap(method, body);
    },

    onEvent(listener) {
      eventListeners.add(listener);
      connect();
      return () => eventListeners.delete(listener);
    },

    onConnection(listener) {
      stateListeners.add(listener);
      listener(state);
      connect();
      return () => stateListeners.delete(listener);
    },

    reconnectNow() {
      if (closed || unauthorized || socket) return;
      attempt = 0;
      connect();
    },

    /**
     * As the API gave it: images and downloads are same-origin requests that carry the HttpOnly
     * cookie the server set when the page loaded with its token, so the token never sits in the
     * page (links, copied addresses, screenshots of devtools).
     */
    fileUrl(url: string): string {
      return url;
    },

    close() {
      closed = true;
      stopSocket();
      setState({ status: 'closed' });
    },
  };
}

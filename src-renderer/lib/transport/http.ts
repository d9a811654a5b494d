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
  const post = (method: string, params: unknown): Promise<Response> =>
    doFetch(`${base}/api/${method}`, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', ...(opts.token ? { Authorization: `Bearer ${opts.token}` } : {}) },
      body: JSON.stringify(params ?? {}),
    });
  const events = new EventChannel(opts, base, post);

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
      if (res.status === 401) events.refuse();
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

    onEvent: (listener) => events.onEvent(listener),
    onConnection: (listener) => events.onConnection(listener),
    reconnectNow: () => events.reconnectNow(),

    /**
     * As the API gave it: images and downloads are same-origin requests that carry the HttpOnly
     * cookie the server set when the page loaded with its token, so the token never sits in the
     * page (links, copied addresses, screenshots of devtools).
     */
    fileUrl(url: string): string {
      return url;
    },

    close: () => events.close(),
  };
}

/** A WebSocket message's `{event, data}`, or null (logged) when it is not one. */
function parseEventMessage(raw: unknown): { event: string; data: unknown } | null {
  let msg: unknown;
  try {
    msg = JSON.parse(String(raw));
  } catch {
    console.error('singlora: dropped a WebSocket message that is not JSON', raw);
    return null;
  }
  const m = msg as { event?: unknown; data?: unknown };
  if (typeof m?.event !== 'string') {
    console.error('singlora: dropped a WebSocket message without an event name', msg);
    return null;
  }
  return { event: m.event, data: m.data };
}

/**
 * The event channel: one WebSocket, opened on the first subscriber, reconnected with backoff until
 * `close()`, or until the server refuses the token (`refuse()`: then nothing retries).
 */
class EventChannel {
  readonly #eventListeners = new Set<(name: string, data: unknown) => void>();
  readonly #stateListeners = new Set<(s: ConnectionState) => void>();
  #state: ConnectionState = { status: 'closed' };
  #socket: WebSocketLike | null = null;
  #attempt = 0;
  #timer: ReturnType<typeof setTimeout> | null = null;
  #closed = false;
  #unauthorized = false;
  #everOpened = false;
  readonly #Socket: new (
    url: string,
  ) => WebSocketLike;
  readonly #backoff: { initialMs: number; maxMs: number };
  readonly #random: () => number;

  constructor(
    private readonly opts: HttpTransportOptions,
    private readonly base: string,
    /** A request, to tell a refused token from a server that is down. */
    private readonly post: (method: string, params: unknown) => Promise<Response>,
  ) {
    this.#Socket = opts.WebSocket ?? (globalThis.WebSocket as unknown as new (url: string) => WebSocketLike);
    this.#backoff = opts.backoff ?? { initialMs: 500, maxMs: 15_000 };
    this.#random = opts.random ?? Math.random;
  }

  onEvent(listener: (name: string, data: unknown) => void): () => void {
    this.#eventListeners.add(listener);
    this.#connect();
    return () => this.#eventListeners.delete(listener);
  }

  onConnection(listener: (state: ConnectionState) => void): () => void {
    this.#stateListeners.add(listener);
    listener(this.#state);
    this.#connect();
    return () => this.#stateListeners.delete(listener);
  }

  reconnectNow(): void {
    if (this.#closed || this.#unauthorized || this.#socket) return;
    this.#attempt = 0;
    this.#connect();
  }

  /** The server refused the token: stop the socket and every retry; the page says what to do. */
  refuse(): void {
    if (this.#unauthorized) return;
    this.#unauthorized = true;
    this.#stopSocket();
    this.#setState({ status: 'unauthorized' });
  }

  close(): void {
    this.#closed = true;
    this.#stopSocket();
    this.#setState({ status: 'closed' });
  }

  #setState(s: ConnectionState): void {
    this.#state = s;
    for (const l of this.#stateListeners) l(s);
  }

  #wsUrl(): string {
    const u = new URL(`${this.base}/ws`);
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    if (this.opts.token) u.searchParams.set('token', this.opts.token);
    return u.toString();
  }

  /** Closes the socket and cancels a pending reconnect. */
  #stopSocket(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    const ws = this.#socket;
    this.#socket = null;
    ws?.close();
  }

  #connect(): void {
    if (this.#closed || this.#unauthorized || this.#socket) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#state.status !== 'reconnecting') this.#setState({ status: 'connecting' });
    const ws = new this.#Socket(this.#wsUrl());
    this.#socket = ws;
    ws.onopen = () => {
      this.#attempt = 0;
      this.#everOpened = true;
      this.#setState({ status: 'open' });
    };
    ws.onmessage = (ev) => {
      const m = parseEventMessage(ev.data);
      if (m) for (const l of this.#eventListeners) l(m.event, m.data);
    };
    ws.onerror = () => {
      /* onclose follows and schedules the retry */
    };
    ws.onclose = () => this.#closedSocket(ws);
  }

  #closedSocket(ws: WebSocketLike): void {
    if (this.#socket !== ws) return;
    this.#socket = null;
    if (this.#closed) {
      this.#setState({ status: 'closed' });
      return;
    }
    if (this.#unauthorized) return;
    // Refused before it ever opened: a wrong or missing token looks the same as a server that is
    // down to a WebSocket; one request tells them apart.
    if (!this.#everOpened && this.#attempt === 0) {
      void this.post('system.info', {})
        .then((res) => {
          if (res.status === 401) this.refuse();
        })
        .catch(() => {});
    }
    const { initialMs, maxMs } = this.#backoff;
    const retryInMs = Math.round(Math.min(maxMs, initialMs * 2 ** this.#attempt) * (0.75 + 0.5 * this.#random()));
    this.#attempt += 1;
    this.#setState({ status: 'reconnecting', attempt: this.#attempt, retryInMs });
    this.#timer = setTimeout(() => this.#connect(), retryInMs);
  }
}

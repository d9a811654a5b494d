// @vitest-environment jsdom
import { afterEach, describe, expect, test, vi } from 'vitest';
import { ApiError } from '../../src-main/api/contract.ts';
import { createApiClient } from '../../src-renderer/lib/client.ts';
import { EventHub } from '../../src-renderer/lib/events.ts';
import { createElectronTransport } from '../../src-renderer/lib/transport/electron.ts';
import { createHttpTransport } from '../../src-renderer/lib/transport/http.ts';
import { connect } from '../../src-renderer/lib/transport/index.ts';
import { takeToken, TOKEN_KEY } from '../../src-renderer/lib/transport/token.ts';
import type { ConnectionState } from '../../src-renderer/lib/transport/types.ts';
import { FakeTransport } from './fakes.ts';
import * as fx from './fixtures.ts';

function jsonResponse(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}

/** A WebSocket double the test drives by hand. */
class FakeSocket {
  static instances: FakeSocket[] = [];
  onopen: ((ev: Event) => void) | null = null;
  onclose: ((ev: CloseEvent) => void) | null = null;
  onerror: ((ev: Event) => void) | null = null;
  onmessage: ((ev: MessageEvent) => void) | null = null;
  closed = false;
  constructor(readonly url: string) {
    FakeSocket.instances.push(this);
  }
  open() {
    this.onopen?.(new Event('open'));
  }
  message(data: unknown) {
    this.onmessage?.(new MessageEvent('message', { data: JSON.stringify(data) }));
  }
  drop() {
    this.onclose?.(new CloseEvent('close'));
  }
  close() {
    this.closed = true;
    this.drop();
  }
}

afterEach(() => {
  FakeSocket.instances = [];
  vi.useRealTimers();
});

describe('HTTP transport', () => {
  test('POSTs /api/<method> with the bearer token and the params as JSON', async () => {
    const fetch = vi.fn(async () => jsonResponse(200, { ok: true, result: [] }));
    const t = createHttpTransport({ baseUrl: 'http://127.0.0.1:7860', token: 'tok123', fetch });
    const result = await t.request('photos.list', { projectId: 'p1' });
    expect(result).toEqual([]);
    expect(fetch).toHaveBeenCalledTimes(1);
    const [url, init] = fetch.mock.calls[0] as unknown as [string, RequestInit];
    expect(url).toBe('http://127.0.0.1:7860/api/photos.list');
    expect(init.method).toBe('POST');
    expect((init.headers as Record<string, string>).Authorization).toBe('Bearer tok123');
    expect(JSON.parse(init.body as string)).toEqual({ projectId: 'p1' });
  });

  test('turns {ok: false} into an ApiError with the code, message and field details', async () => {
    const details = [{ field: 'settings.steps', message: 'Too big' }];
    const fetch = vi.fn(async () =>
      jsonResponse(400, {
        ok: false,
        error: { code: 'invalid_params', message: 'training.start: settings.steps: Too big', details },
      }),
    );
    const t = createHttpTransport({ baseUrl: 'http://x', token: 't', fetch });
    const err = await t.request('training.start', { projectId: 'p1' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).code).toBe('invalid_params');
    expect((err as ApiError).message).toBe('training.start: settings.steps: Too big');
    expect((err as ApiError).details).toEqual(details);
  });

  test('a 401 without a JSON body is "unauthorized"; an unreachable server says so', async () => {
    const t401 = createHttpTransport({
      baseUrl: 'http://x',
      token: 'bad',
      fetch: async () => new Response('nope', { status: 401, statusText: 'Unauthorized' }),
    });
    await expect(t401.request('projects.list', {})).rejects.toMatchObject({ code: 'unauthorized' });
    const down = createHttpTransport({
      baseUrl: 'http://x',
      token: 't',
      fetch: async () => Promise.reject(new TypeError('Failed to fetch')),
    });
    await expect(down.request('projects.list', {})).rejects.toThrow(/cannot reach the SingLoRA server.*singlora serve/);
  });

  test('file URLs never carry the token: the session cookie authorises images and downloads', () => {
    const t = createHttpTransport({ baseUrl: 'http://127.0.0.1:7860', token: 'a b', fetch: vi.fn() });
    expect(t.fileUrl('/files/p1/images/1.png')).toBe('/files/p1/images/1.png');
    expect(t.fileUrl('/files/p1/x.png?size=2')).toBe('/files/p1/x.png?size=2');
    expect(t.fileUrl('http://127.0.0.1:7860/files/p1/x.png')).toBe('http://127.0.0.1:7860/files/p1/x.png');
    expect(t.fileUrl('data:image/png;base64,AAAA')).toBe('data:image/png;base64,AAAA');
  });

  test('events arrive over /ws?token=, and the socket reconnects with growing backoff', async () => {
    vi.useFakeTimers();
    const t = createHttpTransport({
      baseUrl: 'http://127.0.0.1:7860',
      token: 'tok',
      fetch: vi.fn(),
      WebSocket: FakeSocket,
      backoff: { initialMs: 100, maxMs: 1000 },
      random: () => 0.5,
    });
    const states: ConnectionState[] = [];
    const got: Array<[string, unknown]> = [];
    t.onConnection((s) => states.push(s));
    t.onEvent((name, data) => got.push([name, data]));
    expect(FakeSocket.instances).toHaveLength(1);
    expect(FakeSocket.instances[0].url).toBe('ws://127.0.0.1:7860/ws?token=tok');

    FakeSocket.instances[0].open();
    FakeSocket.instances[0].message({ event: 'job.updated', data: { id: 'j1' } });
    expect(got).toEqual([['job.updated', { id: 'j1' }]]);

    FakeSocket.instances[0].drop();
    expect(states.at(-1)).toEqual({ status: 'reconnecting', attempt: 1, retryInMs: 100 });
    vi.advanceTimersByTime(99);
    expect(FakeSocket.instances).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(FakeSocket.instances).toHaveLength(2);
    FakeSocket.instances[1].drop();
    expect(states.at(-1)).toEqual({ status: 'reconnecting', attempt: 2, retryInMs: 200 });
    vi.advanceTimersByTime(200);
    FakeSocket.instances[2].open();
    expect(states.at(-1)).toEqual({ status: 'open' });

    // After a successful open the backoff starts over.
    FakeSocket.instances[2].drop();
    expect(states.at(-1)).toMatchObject({ retryInMs: 100 });
    t.close();
    vi.advanceTimersByTime(10_000);
    expect(FakeSocket.instances).toHaveLength(3);
    expect(states.at(-1)).toEqual({ status: 'closed' });
  });

  test('without a token it relies on the cookie; a socket refused before it opened, then a 401, stops every retry', async () => {
    vi.useFakeTimers();
    const fetch = vi.fn(async () =>
      jsonResponse(401, { ok: false, error: { code: 'unauthorized', message: 'missing or wrong token' } }),
    );
    const t = createHttpTransport({
      baseUrl: 'http://127.0.0.1:7860',
      token: null,
      fetch,
      WebSocket: FakeSocket,
      backoff: { initialMs: 100, maxMs: 1000 },
      random: () => 0.5,
    });
    const states: ConnectionState[] = [];
    t.onConnection((s) => states.push(s));
    expect(FakeSocket.instances[0].url).toBe('ws://127.0.0.1:7860/ws'); // no token in the URL: the cookie goes along
    FakeSocket.instances[0].drop();
    await vi.advanceTimersByTimeAsync(0); // the probe's answer
    const [, init] = fetch.mock.calls[0] as unknown as [string, RequestInit];
    expect(init.credentials).toBe('same-origin');
    expect((init.headers as Record<string, string>).Authorization).toBeUndefined();
    expect(states.at(-1)).toEqual({ status: 'unauthorized' });
    await vi.advanceTimersByTimeAsync(10_000);
    expect(FakeSocket.instances).toHaveLength(1); // no reconnect loop
    t.reconnectNow();
    expect(FakeSocket.instances).toHaveLength(1);
    await expect(t.request('projects.list', {})).rejects.toMatchObject({ code: 'unauthorized' });
    t.close();
  });

  test('a 401 to a request also ends in "unauthorized"; other failures do not', async () => {
    const ok = createHttpTransport({
      baseUrl: 'http://x',
      token: 't',
      fetch: async () => jsonResponse(404, { ok: false, error: { code: 'not_found', message: 'no' } }),
      WebSocket: FakeSocket,
    });
    const seen: ConnectionState[] = [];
    ok.onConnection((s) => seen.push(s));
    await expect(ok.request('projects.open', { projectId: 'x' })).rejects.toMatchObject({ code: 'not_found' });
    expect(seen.some((s) => s.status === 'unauthorized')).toBe(false);
    const bad = createHttpTransport({
      baseUrl: 'http://x',
      token: 'old',
      fetch: async () => jsonResponse(401, { ok: false, error: { code: 'unauthorized', message: 'no' } }),
      WebSocket: FakeSocket,
    });
    const states: ConnectionState[] = [];
    bad.onConnection((s) => states.push(s));
    await expect(bad.request('projects.list', {})).rejects.toMatchObject({ code: 'unauthorized' });
    expect(states.at(-1)).toEqual({ status: 'unauthorized' });
    ok.close();
    bad.close();
  });
});

describe('session token', () => {
  test('is taken from the URL once, kept in sessionStorage and removed from the address bar', () => {
    const replaceState = vi.fn();
    const storage = new Map<string, string>();
    const sessionStorage = {
      getItem: (k: string) => storage.get(k) ?? null,
      setItem: (k: string, v: string) => void storage.set(k, v),
    };
    const token = takeToken({
      location: { href: 'http://127.0.0.1:7860/?token=s3cret&x=1#/train' },
      history: { replaceState, state: null },
      sessionStorage,
    });
    expect(token).toBe('s3cret');
    expect(storage.get(TOKEN_KEY)).toBe('s3cret');
    expect(replaceState).toHaveBeenCalledWith(null, '', '/?x=1#/train');

    const again = takeToken({
      location: { href: 'http://127.0.0.1:7860/#/train' },
      history: { replaceState, state: null },
      sessionStorage,
    });
    expect(again).toBe('s3cret');
    expect(replaceState).toHaveBeenCalledTimes(1);
  });

  test('connect() prefers the Electron bridge when the preload exposed it', () => {
    const bridge = { invoke: vi.fn(), onEvent: vi.fn(() => () => {}) };
    expect(connect(Object.assign(Object.create(window), { singlora: bridge })).kind).toBe('electron');
    sessionStorage.setItem(TOKEN_KEY, 'from-storage');
    expect(connect(window).kind).toBe('http');
  });
});

describe('Electron transport', () => {
  test('unwraps the same envelope and forwards events', async () => {
    let push: ((name: string, data: unknown) => void) | null = null;
    const bridge = {
      invoke: vi.fn(async (method: string) =>
        method === 'projects.list'
          ? { ok: true, result: [] }
          : { ok: false, error: { code: 'not_found', message: 'no such project' } },
      ),
      onEvent: vi.fn((cb: (name: string, data: unknown) => void) => ((push = cb), () => {})),
    };
    const t = createElectronTransport(bridge);
    await expect(t.request('projects.list', {})).resolves.toEqual([]);
    await expect(t.request('projects.open', { projectId: 'zz' })).rejects.toMatchObject({
      code: 'not_found',
      message: 'no such project',
    });
    const seen: string[] = [];
    t.onEvent((n) => seen.push(n));
    push!('engine.status', { state: 'ready', message: null });
    expect(seen).toEqual(['engine.status']);
  });
});

describe('typed client', () => {
  test('rejects bad params with field details before anything is sent', async () => {
    const fake = new FakeTransport({ 'generation.start': () => ({ jobId: 'j' }) });
    const api = createApiClient(fake, { validate: true });
    const err = await api['generation.start']({ projectId: 'p1', settings: { prompt: 'x', width: 500 } }).catch(
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'invalid_params' });
    expect((err as ApiError).details).toEqual([{ field: 'settings.width', message: 'width must be a multiple of 8' }]);
    expect(fake.calls).toHaveLength(0);
  });

  test('sends partial updates as written, not filled with defaults', async () => {
    const fake = new FakeTransport({ 'projects.update': () => fx.project() });
    const api = createApiClient(fake, { validate: true });
    await api['projects.update']({ projectId: 'p1', settings: { steps: 1000 } });
    expect(fake.paramsOf('projects.update')).toEqual([{ projectId: 'p1', settings: { steps: 1000 } }]);
  });

  test('with validation on, a result that breaks the contract is an error naming the field', async () => {
    const fake = new FakeTransport({ 'system.info': () => ({ version: 1 }) as never });
    const api = createApiClient(fake, { validate: true });
    await expect(api['system.info']({})).rejects.toThrow(
      /system.info: the engine's result does not match the contract \(version:/,
    );
  });

  test('the event hub drops events that break the contract and delivers the rest', () => {
    const fake = new FakeTransport();
    const hub = new EventHub(fake, { validate: true });
    hub.start(() => {});
    const got: unknown[] = [];
    hub.on('job.updated', (j) => got.push(j.id));
    const spy = vi.spyOn(console, 'error').mockImplementation(() => {});
    fake.emit('job.updated', { id: 'bad' } as never);
    fake.emit('job.updated', fx.job({ id: 'good' }));
    expect(got).toEqual(['good']);
    expect(spy).toHaveBeenCalledOnce();
    spy.mockRestore();
  });

  test('the hub reports a reconnect only after a drop', () => {
    const fake = new FakeTransport();
    const hub = new EventHub(fake);
    let n = 0;
    hub.onReconnect(() => n++);
    hub.start(() => {});
    fake.setConnection({ status: 'open' });
    expect(n).toBe(0);
    fake.setConnection({ status: 'reconnecting', attempt: 1, retryInMs: 500 });
    fake.setConnection({ status: 'open' });
    expect(n).toBe(1);
  });
});

/**
 * A fake transport for renderer tests: an in-memory engine that records every request, answers
 * with per-method handlers, and pushes events on demand. Everything above it (typed client,
 * contract validation, event hub, services, components) is the real code.
 */
import {
  ApiError,
  type EventData,
  type EventName,
  type Method,
  type Params,
  type Result,
} from '../../src-main/api/contract.ts';
import type { ConnectionState, Transport } from '../../src-renderer/lib/transport/types.ts';
import { createStudio, type StudioOptions } from '../../src-renderer/lib/studio.svelte.ts';
import * as fx from './fixtures.ts';

export type Handlers = { [M in Method]?: (params: Params<M>) => Result<M> | Promise<Result<M>> };

export class FakeTransport implements Transport {
  kind: 'http' | 'electron' = 'http';
  readonly calls: Array<{ method: Method; params: unknown }> = [];
  handlers: Handlers;
  readonly #events = new Set<(name: string, data: unknown) => void>();
  readonly #conn = new Set<(s: ConnectionState) => void>();
  #state: ConnectionState = { status: 'open' };
  reconnects = 0;

  constructor(handlers: Handlers = {}) {
    this.handlers = handlers;
  }

  async request(method: Method, params: unknown): Promise<unknown> {
    // Through JSON, like the wire: state proxies and undefined fields behave as they would for real.
    this.calls.push({ method, params: JSON.parse(JSON.stringify(params)) });
    const h = this.handlers[method] as ((p: unknown) => unknown) | undefined;
    if (!h) throw new ApiError('not_found', `fake engine: no handler for ${method}`);
    return h(JSON.parse(JSON.stringify(params)));
  }

  /** Params of every call to `method`, in order. */
  paramsOf<M extends Method>(method: M): Params<M>[] {
    return this.calls.filter((c) => c.method === method).map((c) => c.params as Params<M>);
  }

  emit<E extends EventName>(name: E, data: EventData<E>): void {
    for (const l of this.#events) l(name, data);
  }

  setConnection(s: ConnectionState): void {
    this.#state = s;
    for (const l of this.#conn) l(s);
  }

  onEvent(l: (name: string, data: unknown) => void) {
    this.#events.add(l);
    return () => this.#events.delete(l);
  }

  onConnection(l: (s: ConnectionState) => void) {
    this.#conn.add(l);
    l(this.#state);
    return () => this.#conn.delete(l);
  }

  reconnectNow() {
    this.reconnects++;
  }

  /** As the HTTP transport: unchanged (the session cookie authorises /files). */
  fileUrl(url: string) {
    return url;
  }

  close() {}
}

/** Handlers for a fresh app with one open project and nothing else; override per test. */
export function baseHandlers(project = fx.project()): Handlers {
  return {
    'projects.list': () => [fx.projectSummary(project)],
    'projects.open': () => project,
    'projects.update': (p) => ({
      ...project,
      ...(p.name ? { name: p.name } : {}),
      subject: { ...project.subject, ...p.subject },
    }),
    'photos.list': () => [],
    'training.runs': () => [],
    'adapters.list': () => [],
    'generation.list': () => [],
    'jobs.list': () => [],
    'jobs.queue': () => fx.queueStatus(),
    'system.info': () => fx.info(),
    'system.doctor': () => fx.doctor('tensorflow'),
    'settings.get': () => ({ engine: 'onnx', provider: 'auto' }),
    'settings.set': (p) => ({ engine: 'onnx', provider: 'auto', ...p }),
    'models.list': () => [],
    'models.bases': () => [fx.base()],
    'evaluation.images': () => [],
    'evaluation.check': () => ({ ready: true, dino: '/models/dino/model.onnx', bundled: false, message: null }),
  };
}

/** A studio over a fake transport, started (project open, first data loaded). */
export async function startStudio(
  handlers: Handlers = {},
  opts: StudioOptions = {},
  kind: FakeTransport['kind'] = 'http',
) {
  const transport = new FakeTransport({ ...baseHandlers(), ...handlers });
  transport.kind = kind;
  const studio = createStudio(transport, { validate: true, toastMs: 0, ...opts });
  await studio.start();
  return { transport, studio };
}

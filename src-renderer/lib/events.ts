/**
 * Typed events on top of a transport: `hub.on('train.event', (data) => ...)` with `data` typed from
 * the contract's `events`. One transport subscription feeds every listener. With `validate` on,
 * an event whose data does not match the contract is reported on the console and not delivered.
 */
import { events, type EventData, type EventName } from '../../src-main/api/contract.ts';
import type { ConnectionState, Transport } from './transport/types.ts';

type Listener = (data: never) => void;

export class EventHub {
  readonly #listeners = new Map<string, Set<Listener>>();
  readonly #reconnectListeners = new Set<() => void>();
  readonly #unsubscribe: Array<() => void> = [];

  constructor(
    private readonly transport: Transport,
    private readonly opts: { validate?: boolean } = {},
  ) {}

  /** Starts listening on the transport (opens the WebSocket). */
  start(onConnection: (s: ConnectionState) => void): void {
    if (this.#unsubscribe.length) return;
    this.#unsubscribe.push(this.transport.onEvent((name, data) => this.#dispatch(name, data)));
    let wasOpen = false;
    let dropped = false;
    this.#unsubscribe.push(
      this.transport.onConnection((s) => {
        onConnection(s);
        if (s.status === 'open') {
          // Events sent while the socket was down are lost: listeners refetch what they show.
          if (wasOpen && dropped) for (const l of this.#reconnectListeners) l();
          wasOpen = true;
          dropped = false;
        } else if (wasOpen) dropped = true;
      }),
    );
  }

  on<E extends EventName>(name: E, fn: (data: EventData<E>) => void): () => void {
    let set = this.#listeners.get(name);
    if (!set) this.#listeners.set(name, (set = new Set()));
    set.add(fn as Listener);
    return () => set.delete(fn as Listener);
  }

  /** Called after the event channel comes back from a drop. */
  onReconnect(fn: () => void): () => void {
    this.#reconnectListeners.add(fn);
    return () => this.#reconnectListeners.delete(fn);
  }

  stop(): void {
    for (const u of this.#unsubscribe.splice(0)) u();
  }

  #dispatch(name: string, data: unknown): void {
    const set = this.#listeners.get(name);
    if (this.opts.validate && Object.hasOwn(events, name)) {
      const r = events[name as EventName].safeParse(data);
      if (!r.success) {
        console.error(`singlora: event ${name} does not match the contract`, r.error.issues, data);
        return;
      }
    }
    if (!set) return;
    for (const fn of set) {
      try {
        (fn as (d: unknown) => void)(data);
      } catch (err) {
        console.error(`singlora: a listener of ${name} failed`, err);
      }
    }
  }
}

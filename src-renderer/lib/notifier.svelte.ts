/**
 * Toasts: every failed call ends here (never swallowed), with a fix where one is known.
 * The same toast again (kind, title and message) is not stacked: the one shown counts it and its
 * timer starts over. Infos go after `autoDismissMs`, errors after `errorDismissMs` (longer: they
 * carry a fix); at most `MAX_TOASTS` are shown. While `muted(err)` says so (the token screen is up)
 * errors are not toasted at all: the page already says what is wrong.
 */
import { hintFor, messageOf } from './advice.ts';

export interface Toast {
  id: number;
  kind: 'error' | 'info' | 'success';
  title: string;
  message: string;
  hint: string | null;
  /** How many times it was reported (1 = once). */
  count: number;
}

const MAX_TOASTS = 3;

export class Notifier {
  items = $state<Toast[]>([]);
  /** Errors for which no toast is shown (set by the studio: an unauthorized page). */
  muted: (err: unknown) => boolean = () => false;
  #next = 1;
  readonly #timers = new Map<number, ReturnType<typeof setTimeout>>();

  constructor(
    private readonly autoDismissMs = 6000,
    private readonly errorDismissMs = 20_000,
  ) {}

  /** Reports a failure of `what` (e.g. "Start training"). */
  error(what: string, err: unknown): void {
    if (this.muted(err)) return;
    this.#push({ kind: 'error', title: what, message: messageOf(err), hint: hintFor(err) }, this.errorDismissMs);
  }

  info(message: string, kind: 'info' | 'success' = 'info'): void {
    this.#push({ kind, title: '', message, hint: null }, this.autoDismissMs);
  }

  dismiss(id: number): void {
    clearTimeout(this.#timers.get(id));
    this.#timers.delete(id);
    this.items = this.items.filter((t) => t.id !== id);
  }

  /** Removes every toast (the page changed under them, e.g. the token screen). */
  clear(): void {
    for (const t of this.items) this.dismiss(t.id);
  }

  /** Runs `fn`; on failure reports it as `what` and returns undefined. */
  async guard<T>(what: string, fn: () => Promise<T>): Promise<T | undefined> {
    try {
      return await fn();
    } catch (err) {
      this.error(what, err);
      return undefined;
    }
  }

  #push(t: Omit<Toast, 'id' | 'count'>, dismissMs: number): void {
    const same = this.items.find((o) => o.kind === t.kind && o.title === t.title && o.message === t.message);
    let id: number;
    if (same) {
      id = same.id;
      this.items = this.items.map((o) => (o.id === id ? { ...o, count: o.count + 1 } : o));
    } else {
      id = this.#next++;
      const kept = this.items.slice(-(MAX_TOASTS - 1));
      for (const gone of this.items.filter((o) => !kept.includes(o))) this.dismiss(gone.id);
      this.items = [...kept, { id, count: 1, ...t }];
    }
    clearTimeout(this.#timers.get(id));
    if (dismissMs > 0)
      this.#timers.set(
        id,
        setTimeout(() => this.dismiss(id), dismissMs),
      );
  }
}

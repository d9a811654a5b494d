/** Toasts: every failed call ends here (never swallowed), with a fix where one is known. */
import { hintFor, messageOf } from './advice.ts';

export interface Toast {
  id: number;
  kind: 'error' | 'info' | 'success';
  title: string;
  message: string;
  hint: string | null;
}

export class Notifier {
  items = $state<Toast[]>([]);
  #next = 1;

  constructor(private readonly autoDismissMs = 6000) {}

  /** Reports a failure of `what` (e.g. "Start training"). Errors stay until dismissed. */
  error(what: string, err: unknown): void {
    this.#push({ kind: 'error', title: what, message: messageOf(err), hint: hintFor(err) });
  }

  info(message: string, kind: 'info' | 'success' = 'info'): void {
    const id = this.#push({ kind, title: '', message, hint: null });
    if (this.autoDismissMs > 0) setTimeout(() => this.dismiss(id), this.autoDismissMs);
  }

  dismiss(id: number): void {
    this.items = this.items.filter((t) => t.id !== id);
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

  #push(t: Omit<Toast, 'id'>): number {
    const id = this.#next++;
    this.items = [...this.items.slice(-5), { id, ...t }];
    return id;
  }
}

/**
 * Screens that show one run (Evaluate) or use one run's checkpoint (Generate, Export) move to a run
 * that completes while the app is open: what was just trained is what the user evaluates and tries
 * next, and "Evaluate again" must not re-score the old run. Runs that had completed before the first
 * look are not news.
 */
import type { RunStatus } from '../../src-main/api/schemas.ts';

export class RunFollower {
  /** The runs seen completed so far; null until the first look at a non-empty list. */
  #completed: Set<string> | null = null;

  /** Forget what was seen (another project opened). */
  reset(): void {
    this.#completed = null;
  }

  /** The newest run that completed since the last call, or null. `runs`: newest first. */
  fresh(runs: ReadonlyArray<{ id: string; status: RunStatus }>): string | null {
    if (!runs.length) return null;
    const completed = runs.filter((r) => r.status === 'completed').map((r) => r.id);
    if (this.#completed === null) {
      this.#completed = new Set(completed);
      return null;
    }
    const seen = this.#completed;
    const news = completed.filter((id) => !seen.has(id));
    for (const id of news) seen.add(id);
    return news[0] ?? null;
  }
}

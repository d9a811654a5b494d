/**
 * Which adapter to use, for Generate and Export: a run's checkpoint (the evaluated choice, else the
 * latest; `{runId, step: null}` in the contract) or an adapter file of the project (`adapters.list`).
 */
import type { AdapterInfo, ApiClient, Project } from '../../src-main/api/contract.ts';
import type { RunStatus } from '../../src-main/api/schemas.ts';
import type { Notifier } from './notifier.svelte.ts';
import { RunFollower } from './runFollower.ts';
import type { RunSummary } from './training.svelte.ts';

/** A run's checkpoint: `step` names one (an image's settings reused), else the chosen or latest. */
export type AdapterChoice =
  | { kind: 'none' }
  | { kind: 'run'; runId: string; step?: number }
  | { kind: 'file'; file: string };
export type AdapterRef = { runId: string; step: number | null } | { file: string };

export interface AdapterOption {
  key: string;
  label: string;
  group: 'Training runs' | 'Adapter files';
  choice: AdapterChoice;
  /** A run's status (null for a file). */
  status: RunStatus | null;
}

export function choiceKey(c: AdapterChoice): string {
  if (c.kind === 'none') return 'none';
  if (c.kind === 'file') return `file:${c.file}`;
  return c.step === undefined ? `run:${c.runId}` : `run:${c.runId}@${c.step}`;
}

export function adapterRef(c: AdapterChoice): AdapterRef | null {
  if (c.kind === 'run') return { runId: c.runId, step: c.step ?? null };
  if (c.kind === 'file') return { file: c.file };
  return null;
}

/** How a choice that is not among the options reads (a checkpoint or file an image was made with). */
export function choiceLabel(c: AdapterChoice): string {
  if (c.kind === 'none') return 'None';
  if (c.kind === 'file') return c.file.split(/[\\/]/).pop() ?? c.file;
  return c.step === undefined ? `Run ${c.runId}` : `Run ${c.runId}: checkpoint at step ${c.step}`;
}

/**
 * The adapter an image was made with, from its sidecar's file (the path on the engine machine): a
 * run's checkpoint (`.../runs/<id>/checkpoints/step-000600/...`), a file of the project's
 * `adapters/` folder, else the path itself.
 */
export function choiceFromFile(file: string): AdapterChoice {
  const run = /(?:^|[\\/])runs[\\/]([^\\/]+)[\\/]checkpoints[\\/]step-0*(\d+)[\\/]/.exec(file);
  if (run) return { kind: 'run', runId: run[1], step: Number(run[2]) };
  const own = /(?:^|[\\/])(adapters[\\/].+)$/.exec(file);
  return { kind: 'file', file: own ? own[1].replaceAll('\\', '/') : file };
}

export function runOptionLabel(r: RunSummary): string {
  const which = r.best != null ? `chosen checkpoint, step ${r.best}` : `latest checkpoint, step ${r.step}`;
  return `Run ${r.id} (${r.method}, ${r.status}): ${which}`;
}

export function adapterOptions(runs: RunSummary[], files: AdapterInfo[]): AdapterOption[] {
  const fromRuns: AdapterOption[] = runs
    .filter((r) => r.step > 0)
    .map((r) => ({
      key: `run:${r.id}`,
      label: runOptionLabel(r),
      group: 'Training runs',
      choice: { kind: 'run', runId: r.id },
      status: r.status,
    }));
  const fromFiles: AdapterOption[] = files.map((f) => ({
    key: `file:${f.file}`,
    label: `${f.file} (${f.method}, rank ${f.rank}, ${f.format})`,
    group: 'Adapter files',
    choice: { kind: 'file', file: f.file },
    status: null,
  }));
  return [...fromRuns, ...fromFiles];
}

/**
 * The adapter a form (Generate, Export) uses until the user picks one: the newest run's checkpoint,
 * else the first file; and, unless the user picked one, a run that has just completed
 * (`follower`). Returns the choice to take, or null to keep the current one.
 */
export function suggestedAdapter(
  options: AdapterOption[],
  current: AdapterChoice,
  chosenByUser: boolean,
  follower: RunFollower,
): AdapterChoice | null {
  const runs = options.flatMap((o) =>
    o.choice.kind === 'run' && o.status ? [{ id: o.choice.runId, status: o.status }] : [],
  );
  const fresh = follower.fresh(runs);
  if (chosenByUser) return null;
  if (fresh) return { kind: 'run', runId: fresh };
  const known = current.kind !== 'none' && options.some((o) => o.key === choiceKey(current));
  if (known) return null;
  return (options.find((o) => o.group === 'Training runs') ?? options[0])?.choice ?? null;
}

/**
 * The adapter a form (Generate, Export) uses: the user's choice once made; until then the
 * suggestion of `suggestedAdapter`, which follows a run that completes while the app is open.
 */
export class AdapterSelection {
  choice = $state<AdapterChoice>({ kind: 'none' });
  #chosenByUser = false;
  readonly #runs = new RunFollower();

  /** Another project: nothing chosen, no run followed. */
  reset(): void {
    this.choice = { kind: 'none' };
    this.#chosenByUser = false;
    this.#runs.reset();
  }

  /** Takes the suggestion among `options`, unless the user has chosen. */
  suggest(options: AdapterOption[]): void {
    const next = suggestedAdapter(options, this.choice, this.#chosenByUser, this.#runs);
    if (next && choiceKey(next) !== choiceKey(this.choice)) this.choice = next;
  }

  /** The user's choice (or one made for them, such as a reused image's adapter): kept from now on. */
  choose(choice: AdapterChoice): void {
    this.#chosenByUser = true;
    this.choice = choice;
  }
}

export class AdaptersService {
  projectId = $state<string | null>(null);
  files = $state<AdapterInfo[]>([]);

  constructor(
    private readonly api: ApiClient,
    private readonly notify: Notifier,
  ) {}

  setProject(p: Project | null): void {
    this.projectId = p?.id ?? null;
    this.files = [];
    if (p) void this.refresh();
  }

  async refresh(): Promise<void> {
    const projectId = this.projectId;
    if (!projectId) return;
    const files = await this.notify.guard('List adapters', () => this.api['adapters.list']({ projectId }));
    if (files && this.projectId === projectId) this.files = files;
  }
}

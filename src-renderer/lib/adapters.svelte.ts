/**
 * Which adapter to use, for Generate and Export: a run's checkpoint (the evaluated choice, else the
 * latest; `{runId, step: null}` in the contract) or an adapter file of the project (`adapters.list`).
 */
import type { AdapterInfo, ApiClient, Project } from '../../src-main/api/contract.ts';
import type { Notifier } from './notifier.svelte.ts';
import type { RunSummary } from './training.svelte.ts';

export type AdapterChoice = { kind: 'none' } | { kind: 'run'; runId: string } | { kind: 'file'; file: string };
export type AdapterRef = { runId: string; step: null } | { file: string };

export interface AdapterOption {
  key: string;
  label: string;
  group: 'Training runs' | 'Adapter files';
  choice: AdapterChoice;
}

export function choiceKey(c: AdapterChoice): string {
  return c.kind === 'none' ? 'none' : c.kind === 'run' ? `run:${c.runId}` : `file:${c.file}`;
}

export function adapterRef(c: AdapterChoice): AdapterRef | null {
  if (c.kind === 'run') return { runId: c.runId, step: null };
  if (c.kind === 'file') return { file: c.file };
  return null;
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
    }));
  const fromFiles: AdapterOption[] = files.map((f) => ({
    key: `file:${f.file}`,
    label: `${f.file} (${f.method}, rank ${f.rank}, ${f.format})`,
    group: 'Adapter files',
    choice: { kind: 'file', file: f.file },
  }));
  return [...fromRuns, ...fromFiles];
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

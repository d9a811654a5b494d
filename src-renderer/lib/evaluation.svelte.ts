/**
 * The Evaluate screen's state: a run's checkpoint scores (`evaluation.get`), an evaluation job
 * followed through `evaluation.progress` and `job.updated`, and the user's choice of checkpoint.
 * `quick`: a quick check (one prompt per category, one image each) instead of the full prompt set.
 */
import type { ApiClient, Job, Project, Result } from '../../src-main/api/contract.ts';
import type { Evaluation } from '../../src-main/api/schemas.ts';
import type { EventHub } from './events.ts';
import type { Files } from './files.ts';
import type { JobsService } from './jobs.svelte.ts';
import type { Notifier } from './notifier.svelte.ts';
import { RunFollower } from './runFollower.ts';
import type { RunSummary } from './training.svelte.ts';

/** The checkpoint in use: the user's choice, else the rule's pick. */
export function effectiveBest(e: Evaluation | null): number | null {
  return e ? (e.chosen ?? e.best) : null;
}

export class EvaluationService {
  projectId = $state<string | null>(null);
  runId = $state<string | null>(null);
  evaluation = $state<Evaluation | null>(null);
  loading = $state(false);
  jobId = $state<string | null>(null);
  progress = $state<{ done: number; total: number; label: string } | null>(null);
  jobError = $state<string | null>(null);
  choosing = $state<number | null>(null);
  /** The next evaluation is a quick check rather than the full prompt set. */
  quick = $state(false);
  /** What an evaluation needs (DINO), checked when the project opens and on "Check again". */
  check = $state<Result<'evaluation.check'> | null>(null);
  /** The images the last evaluation scored, with loadable URLs. */
  images = $state<Array<{ step: number | null; file: string; src: string }>>([]);
  /** Seconds left, from the pace so far (null until an image is done). */
  etaS = $state<number | null>(null);
  cancelling = $state(false);
  #startedAt = 0;
  readonly #runs = new RunFollower();

  best = $derived(effectiveBest(this.evaluation));
  running = $derived(this.jobId !== null);

  constructor(
    private readonly api: ApiClient,
    hub: EventHub,
    private readonly jobs: JobsService,
    private readonly notify: Notifier,
    /** Called after the checkpoint in use changed (a choice, or a new evaluation). */
    private readonly onBestChanged: () => void = () => {},
    private readonly files: Pick<Files, 'url'> = { url: (u) => u },
    private readonly now: () => number = () => Date.now(),
  ) {
    hub.on('evaluation.progress', (p) => {
      if (p.jobId !== this.jobId) return;
      this.progress = { done: p.done, total: p.total, label: p.label };
      const elapsed = (this.now() - this.#startedAt) / 1000;
      this.etaS = p.done > 0 && p.total > p.done ? (elapsed / p.done) * (p.total - p.done) : null;
    });
  }

  /** Asks the service whether an evaluation can run (DINO present, or the demo's bundled one). */
  async recheck(): Promise<void> {
    const projectId = this.projectId;
    if (!projectId) return;
    const r = await this.notify.guard('Check evaluation models', () => this.api['evaluation.check']({ projectId }));
    if (r && this.projectId === projectId) this.check = r;
  }

  async cancel(): Promise<void> {
    const jobId = this.jobId;
    if (!jobId) return;
    this.cancelling = true;
    const r = await this.notify.guard('Cancel evaluation', () => this.api['jobs.cancel']({ jobId }));
    if (!r) this.cancelling = false;
  }

  setProject(p: Project | null): void {
    this.projectId = p?.id ?? null;
    this.check = null;
    this.images = [];
    if (p) void this.recheck();
    this.runId = null;
    this.#runs.reset();
    this.evaluation = null;
    this.jobId = null;
    this.progress = null;
    this.jobError = null;
  }

  /**
   * Which run the screen shows, as the run list changes (`runs`: those with checkpoints, newest
   * first): at first the preferred one (the Train screen's) or the newest; then a run that has just
   * completed, whichever run was shown (not while an evaluation runs: it moves afterwards).
   */
  follow(runs: RunSummary[], preferredRunId: string | null): void {
    if (this.running) return;
    const fresh = this.#runs.fresh(runs);
    const shown = this.runId !== null && runs.some((r) => r.id === this.runId);
    const pick = fresh ?? (shown ? null : (runs.find((r) => r.id === preferredRunId) ?? runs[0])?.id);
    if (pick && pick !== this.runId) void this.selectRun(pick);
  }

  async selectRun(runId: string | null): Promise<void> {
    if (runId === this.runId) return;
    this.runId = runId;
    this.evaluation = null;
    this.images = [];
    this.jobError = null;
    if (runId) await this.load();
  }

  async load(): Promise<void> {
    const { projectId, runId } = this;
    if (!projectId || !runId) return;
    this.loading = true;
    try {
      const [e, images] = await Promise.all([
        this.notify.guard('Load evaluation', () => this.api['evaluation.get']({ projectId, runId })),
        this.notify.guard('Load evaluation images', () => this.api['evaluation.images']({ projectId, runId })),
      ]);
      if (e !== undefined && this.runId === runId) this.evaluation = e;
      if (images && this.runId === runId)
        this.images = images.map((i) => ({ step: i.step, file: i.file, src: this.files.url(i.url) }));
    } finally {
      this.loading = false;
    }
  }

  async start(): Promise<void> {
    const { projectId, runId } = this;
    if (!projectId || !runId) return this.notify.error('Evaluate', 'Choose a run first.');
    this.jobError = null;
    const quick = this.quick;
    const r = await this.notify.guard('Start evaluation', () =>
      this.api['evaluation.start']({ projectId, runId, checkpoints: 'all', ...(quick ? { quick } : {}) }),
    );
    if (!r) return;
    this.jobId = r.jobId;
    this.#startedAt = this.now();
    this.etaS = null;
    this.cancelling = false;
    this.progress = { done: 0, total: 0, label: 'queued' };
    this.jobs.track(r.jobId, (job) => this.#onJob(job, runId));
  }

  async choose(step: number): Promise<void> {
    const { projectId, runId } = this;
    if (!projectId || !runId) return;
    this.choosing = step;
    try {
      const e = await this.notify.guard('Choose checkpoint', () =>
        this.api['evaluation.choose']({ projectId, runId, step }),
      );
      if (e && this.runId === runId) this.evaluation = e;
      if (e) this.onBestChanged();
    } finally {
      this.choosing = null;
    }
  }

  #onJob(job: Job, runId: string): void {
    if (job.progress && (job.status === 'queued' || job.status === 'running')) this.progress ??= job.progress;
    if (job.status === 'queued' || job.status === 'running') return;
    this.jobId = null;
    this.progress = null;
    this.etaS = null;
    this.cancelling = false;
    if (job.status === 'failed') {
      this.jobError = job.error ?? 'the evaluation failed';
      this.notify.error('Evaluation', this.jobError);
    }
    if (job.status === 'done') {
      this.onBestChanged();
      if (this.runId === runId) void this.load();
    }
  }
}

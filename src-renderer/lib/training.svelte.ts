/**
 * The Train screen's state: the settings draft (checked with the contract's schema before
 * sending), the runs, and the selected run followed live from `train.event`:
 *
 *   prepare    -> stage text ("loading model", ...)
 *   step       -> progress (i/N, it/s, ETA) and a loss point
 *   checkpoint -> checkpoint list
 *   sample     -> a preview image
 *   warning    -> shown under the progress
 *   done       -> final status; runs refreshed
 *
 * Selecting a run loads its manifest (`training.status`), so a reload or a resumed run shows its
 * history before live events continue it.
 */
import type { ApiClient, EventData, Project, Result, RunStatusInfo } from '../../src-main/api/contract.ts';
import {
  trainSettingsSchema,
  type RunStatus,
  type TrainEvent,
  type TrainSettings,
} from '../../src-main/api/schemas.ts';
import { hintFor, isOutOfMemory, MEMORY_HINT, messageOf } from './advice.ts';
import type { EventHub } from './events.ts';
import type { Files } from './files.ts';
import { check, fieldErrorsFromApi, recheck, type FieldErrors } from './forms.ts';
import { ACTIVE, type JobsService } from './jobs.svelte.ts';
import { LossSeries } from './lossSeries.svelte.ts';
import type { Notifier } from './notifier.svelte.ts';
import type { ProjectsService } from './projects.svelte.ts';

export type RunSummary = Result<'training.runs'>[number];
export type StepEvent = Extract<TrainEvent, { event: 'step' }>;

/** The form's values: the settings the user edits here (trigger token, class word and crop are the Subject screen's). */
export type TrainDraft = Omit<TrainSettings, 'triggerToken' | 'classWord' | 'crop'>;

export const DEFAULT_SETTINGS: TrainSettings = trainSettingsSchema.parse({});

export function draftFrom(settings: TrainSettings): TrainDraft {
  const { triggerToken: _t, classWord: _c, crop: _crop, ...rest } = settings;
  return $state.snapshot(rest) as TrainDraft;
}

export interface LiveProgress {
  step: number;
  steps: number;
  its: number | null;
  etaS: number | null;
  loss: number | null;
  smoothed: number | null;
  lr: number | null;
}

export interface SamplePreview {
  step: number;
  prompt: string;
  url: string;
}

const RESUMABLE = new Set<RunStatus>(['cancelled', 'paused', 'failed']);
export const canResume = (status: RunStatus) => RESUMABLE.has(status);

export class TrainingService {
  projectId = $state<string | null>(null);
  draft = $state<TrainDraft>(draftFrom(DEFAULT_SETTINGS));
  errors = $state<FieldErrors>({});
  runs = $state<RunSummary[]>([]);
  selectedRunId = $state<string | null>(null);
  /** The selected run's manifest as last loaded. */
  manifest = $state<RunStatusInfo | null>(null);
  status = $state<RunStatus | null>(null);
  progress = $state<LiveProgress | null>(null);
  stage = $state<string | null>(null);
  samples = $state<SamplePreview[]>([]);
  checkpoints = $state<number[]>([]);
  warnings = $state<string[]>([]);
  runError = $state<string | null>(null);
  jobId = $state<string | null>(null);
  busy = $state(false);
  /** Cancel was pressed and the run has not stopped yet (it stops at the next step, after a checkpoint). */
  cancelling = $state(false);
  /** The form holds settings restored from an earlier visit that were never used to start a run. */
  draftRestored = $state(false);
  readonly losses = new LossSeries();
  #starting = false;
  /** The draft when the errors shown were found. */
  #shownWith: Record<string, unknown> = {};

  running = $derived(this.status === 'running' || this.status === 'queued');
  errorHint = $derived(this.runError ? (isOutOfMemory(this.runError) ? MEMORY_HINT : hintFor(this.runError)) : null);

  constructor(
    private readonly api: ApiClient,
    hub: EventHub,
    private readonly jobs: JobsService,
    private readonly projects: ProjectsService,
    private readonly files: Files,
    private readonly notify: Notifier,
    private readonly storage: Pick<Storage, 'getItem' | 'setItem' | 'removeItem'> | null = null,
  ) {
    hub.on('train.event', (e) => this.#onEvent(e));
    // The run list follows its jobs: a run whose job is queued or running says so at once.
    hub.on('job.updated', (j) => {
      if (j.kind !== 'train' || j.projectId !== this.projectId || !j.runId) return;
      if (j.status === 'queued' || j.status === 'running')
        this.#patchRun(j.runId, { status: j.status === 'queued' ? 'queued' : 'running' });
      // A job that ended without the run's `done` event (its engine process died): the card must
      // not keep showing the last stage as if it were still working.
      else if (
        (j.status === 'failed' || j.status === 'cancelled') &&
        j.runId === this.selectedRunId &&
        j.id === this.jobId
      )
        this.#runEnded(j.status, j.error);
    });
  }

  /**
   * The run list, the selected run and live events are one picture: whatever a live event says
   * about a run is written into its row too (status and step), so the card and the list agree.
   */
  #patchRun(runId: string, patch: Partial<Pick<RunSummary, 'status' | 'step' | 'error'>>): void {
    const i = this.runs.findIndex((r) => r.id === runId);
    if (i !== -1) this.runs[i] = { ...this.runs[i], ...patch };
    if (runId === this.selectedRunId && patch.status) this.status = patch.status;
  }

  /**
   * The selected run stopped: from its `done` event (with the step it reached), or from its job
   * when no `done` came (the engine process died; the step shown stays the last one reported).
   */
  #runEnded(status: RunSummary['status'], error: string | null, step?: number): void {
    this.status = status;
    this.stage = null;
    this.jobId = null;
    this.cancelling = false;
    this.runError = error;
    if (this.progress) this.progress = { ...this.progress, step: step ?? this.progress.step, etaS: null };
    if (status === 'completed')
      this.notify.info(
        `Training finished at step ${step ?? this.progress?.step}. Next: Evaluate picks the best checkpoint.`,
        'success',
      );
    else if (status === 'failed') this.notify.error('Training', error ?? 'the run failed');
    void this.loadRuns();
  }

  #draftKey(projectId: string): string {
    return `singlora.trainDraft.${projectId}`;
  }

  /** Keeps the form's unsaved settings across reloads (the screen calls this on every change). */
  keepDraft(): void {
    if (!this.projectId || !this.storage) return;
    const saved =
      this.projects.current?.id === this.projectId ? JSON.stringify(draftFrom(this.projects.current.settings)) : null;
    const now = JSON.stringify(this.draft);
    // Only what differs from the project's saved settings is worth keeping.
    if (now === saved) this.storage.removeItem(this.#draftKey(this.projectId));
    else this.storage.setItem(this.#draftKey(this.projectId), now);
  }

  /** Forgets the kept draft (a run started with it, or the form was reset). */
  #dropDraft(): void {
    if (this.projectId) this.storage?.removeItem(this.#draftKey(this.projectId));
    this.draftRestored = false;
  }

  setProject(p: Project | null): void {
    this.projectId = p?.id ?? null;
    this.draft = draftFrom(p?.settings ?? DEFAULT_SETTINGS);
    this.draftRestored = false;
    const kept = p ? this.storage?.getItem(this.#draftKey(p.id)) : null;
    if (kept) {
      try {
        // A draft kept before the crop moved to the Subject screen may still hold one: not the form's.
        const { crop: _crop, ...restored } = { ...this.draft, ...(JSON.parse(kept) as Partial<TrainSettings>) };
        if (JSON.stringify(restored) !== JSON.stringify(this.draft)) {
          this.draft = restored;
          this.draftRestored = true;
        }
      } catch {
        this.storage?.removeItem(this.#draftKey(p!.id));
      }
    }
    this.errors = {};
    this.runs = [];
    this.#clearRun();
    this.selectedRunId = null;
    if (p) void this.loadRuns(true);
  }

  /** Back to the settings the project saved (the last run's), forgetting the restored draft. */
  discardDraft(): void {
    this.draft = draftFrom(this.projects.current?.settings ?? DEFAULT_SETTINGS);
    this.errors = {};
    this.#dropDraft();
  }

  resetDraft(): void {
    this.draft = draftFrom(DEFAULT_SETTINGS);
    this.errors = {};
    this.#dropDraft();
  }

  /**
   * How long the draft's steps would take at the pace of the selected run (live, else recorded in
   * its run.json), in seconds; null when it has none yet.
   */
  estimateS = $derived.by(() => {
    const its = this.progress?.its ?? (this.manifest?.timing.msPerStep ? 1000 / this.manifest.timing.msPerStep : null);
    return its ? (Number(this.draft.steps) || 0) / its : null;
  });

  /** Copies the selected run's settings into the form. */
  useRunSettings(): void {
    if (this.manifest) this.draft = draftFrom(this.manifest.settings);
  }

  async loadRuns(selectLatest = false): Promise<void> {
    const projectId = this.projectId;
    if (!projectId) return;
    const runs = await this.notify.guard('List runs', () => this.api['training.runs']({ projectId }));
    if (runs) this.projects.setCounts(projectId, { runs: runs.length });
    if (!runs || this.projectId !== projectId) return;
    this.runs = [...runs].sort((a, b) => b.createdAt.localeCompare(a.createdAt));
    const sel = this.runs.find((r) => r.id === this.selectedRunId);
    if (sel) this.status = sel.status;
    if (selectLatest && !this.selectedRunId && this.runs[0]) await this.selectRun(this.runs[0].id);
  }

  async selectRun(runId: string): Promise<void> {
    if (!this.projectId) return;
    this.#clearRun();
    this.selectedRunId = runId;
    await this.#loadManifest(runId);
  }

  async #loadManifest(runId: string): Promise<void> {
    const projectId = this.projectId;
    if (!projectId) return;
    const m = await this.notify.guard('Open run', () => this.api['training.status']({ projectId, runId }));
    if (!m || this.selectedRunId !== runId || this.projectId !== projectId) return;
    this.#applyManifest(m);
  }

  /** Validates the draft and starts a run; field errors appear next to the fields. */
  async start(): Promise<boolean> {
    const project = this.projects.current;
    if (!project) {
      this.notify.error('Start training', 'Open or create a project first.');
      return false;
    }
    const settings = {
      ...this.draft,
      triggerToken: project.subject.triggerToken,
      classWord: project.subject.classWord,
      crop: project.settings.crop,
    };
    const c = check(trainSettingsSchema, settings);
    this.#showErrors(c.ok ? {} : c.errors);
    if (!c.ok) return false;
    this.busy = true;
    try {
      // Until the response names the run, the first event of this project selects it.
      this.#clearRun();
      this.selectedRunId = null;
      this.status = 'queued';
      this.#starting = true;
      const r = await this.api['training.start']({ projectId: project.id, settings });
      this.jobId = r.jobId;
      this.#dropDraft(); // the project keeps the settings a run started with
      if (this.selectedRunId !== r.runId) {
        this.selectedRunId = r.runId;
        this.progress ??= {
          step: 0,
          steps: settings.steps,
          its: null,
          etaS: null,
          loss: null,
          smoothed: null,
          lr: null,
        };
      }
      await this.loadRuns();
      return true;
    } catch (err) {
      this.status = null;
      const fields = fieldErrorsFromApi(err, 'settings.');
      if (fields) this.#showErrors(fields);
      else {
        this.runError = messageOf(err);
        this.notify.error('Start training', err);
      }
      return false;
    } finally {
      this.#starting = false;
      this.busy = false;
    }
  }

  #showErrors(errors: FieldErrors): void {
    this.errors = errors;
    this.#shownWith = $state.snapshot(this.draft);
  }

  /** After an edit: errors of fields that now pass go, the others follow the new values (the screen calls this). */
  revalidate(): void {
    if (!Object.keys(this.errors).length) return;
    const subject = this.projects.current?.subject;
    const c = check(trainSettingsSchema, {
      ...this.draft,
      ...(subject ? { triggerToken: subject.triggerToken, classWord: subject.classWord } : {}),
    });
    this.errors = recheck(this.errors, this.#shownWith, $state.snapshot(this.draft), c.ok ? {} : c.errors);
  }

  async cancel(): Promise<void> {
    const jobId = this.jobId ?? this.#findJob();
    if (!jobId) return this.notify.error('Cancel training', 'No running training job found for this run.');
    this.cancelling = true; // at once: the run stops only at its next step, after a checkpoint
    const r = await this.notify.guard('Cancel training', () => this.api['training.cancel']({ jobId }));
    if (!r?.cancelled) this.cancelling = false;
    if (r && !r.cancelled) this.notify.info('The run had already stopped.');
  }

  async resume(runId: string): Promise<void> {
    const projectId = this.projectId;
    if (!projectId) return;
    this.busy = true;
    try {
      if (this.selectedRunId !== runId) await this.selectRun(runId);
      const r = await this.notify.guard('Resume training', () => this.api['training.resume']({ projectId, runId }));
      if (!r) return;
      this.jobId = r.jobId;
      this.runError = null;
      this.#patchRun(runId, { status: 'queued', error: null }); // no Resume button on a run that resumes
      await this.loadRuns();
    } finally {
      this.busy = false;
    }
  }

  #findJob(): string | null {
    const job = this.jobs.jobs.find(
      (j) => j.kind === 'train' && j.runId === this.selectedRunId && ACTIVE.has(j.status),
    );
    return job?.id ?? null;
  }

  #clearRun(): void {
    this.manifest = null;
    this.status = null;
    this.progress = null;
    this.stage = null;
    this.samples = [];
    this.checkpoints = [];
    this.warnings = [];
    this.runError = null;
    this.jobId = null;
    this.cancelling = false;
    this.losses.reset();
  }

  /** Shows a run's manifest, keeping what live events already brought that is newer than it. */
  #applyManifest(m: RunStatusInfo): void {
    const lastStep = m.losses.at(-1)?.step ?? -1;
    const liveLosses = this.losses.steps
      .map((step, i) => ({ step, loss: this.losses.raw[i], smoothed: this.losses.smoothed[i] }))
      .filter((p) => p.step > lastStep);
    const liveSamples = this.samples.filter((s) => s.step > (m.samples.at(-1)?.step ?? -1));
    const liveProgress = this.progress && this.progress.step > m.step ? this.progress : null;
    this.manifest = m;
    if (!liveProgress) this.status = m.status;
    this.runError = m.error;
    this.losses.reset([...m.losses, ...liveLosses]);
    this.samples = [
      ...m.samples.map((s) => ({ step: s.step, prompt: s.prompt, url: this.files.url(s.url) })),
      ...liveSamples,
    ];
    this.checkpoints = [...new Set([...m.checkpoints.map((c) => c.step), ...this.checkpoints])].sort((a, b) => a - b);
    if (liveProgress) return;
    const last = m.losses.at(-1);
    const its = m.timing.msPerStep ? 1000 / m.timing.msPerStep : null;
    this.progress = {
      step: m.step,
      steps: m.settings.steps,
      its,
      etaS: its && m.status === 'running' ? (m.settings.steps - m.step) / its : null,
      loss: last?.loss ?? null,
      smoothed: last?.smoothed ?? null,
      lr: null,
    };
  }

  #onEvent(e: EventData<'train.event'>): void {
    if (e.projectId !== this.projectId) return;
    if (this.selectedRunId === null) {
      // Follow the run that is reporting; unless it is the one just started, load its history too.
      this.selectedRunId = e.runId;
      if (!this.#starting) void this.#loadManifest(e.runId);
    }
    if (e.event.event === 'step') this.#patchRun(e.runId, { status: 'running', step: e.event.step });
    else if (e.event.event === 'prepare') this.#patchRun(e.runId, { status: 'running' });
    else if (e.event.event === 'done')
      this.#patchRun(e.runId, { status: e.event.status, step: e.event.step, error: e.event.error });
    if (e.runId !== this.selectedRunId) {
      if (e.event.event === 'done') void this.loadRuns();
      return;
    }
    this.jobId = e.jobId;
    const ev = e.event;
    switch (ev.event) {
      case 'prepare':
        this.status = 'running';
        this.stage = ev.detail ? `${ev.stage}: ${ev.detail}` : ev.stage;
        break;
      case 'step':
        this.status = 'running';
        this.stage = null;
        this.progress = {
          step: ev.step,
          steps: ev.steps,
          its: ev.its,
          etaS: ev.eta_s,
          loss: ev.loss,
          smoothed: ev.smoothed,
          lr: ev.lr,
        };
        this.losses.push(ev.step, ev.loss, ev.smoothed);
        break;
      case 'checkpoint':
        if (!this.checkpoints.includes(ev.step)) this.checkpoints = [...this.checkpoints, ev.step];
        break;
      case 'sample':
        this.samples = [...this.samples, { step: ev.step, prompt: ev.prompt, url: this.files.url(ev.url) }];
        break;
      case 'warning':
        this.warnings = [...this.warnings, ev.message];
        break;
      case 'done':
        this.#runEnded(ev.status, ev.error, ev.step);
        break;
    }
  }
}

/**
 * App info, `system.doctor` (backends and the GPU), the compute settings (engine and provider:
 * `settings.get` / `settings.set`), and the evaluation models (DINO, CLIP).
 */
import { ApiError, type ApiClient, type Result } from '../../src-main/api/contract.ts';
import type { ComputeSettings } from '../../src-main/api/schemas.ts';
import { backendAdvice } from './advice.ts';
import { isFinished, type JobsService } from './jobs.svelte.ts';
import type { Notifier } from './notifier.svelte.ts';

export type DoctorReport = Result<'system.doctor'>;
export type AppInfo = Result<'system.info'>;
export type ModelEntry = Result<'models.list'>[number];
export type DownloadName = 'dino' | 'clip';

/** Which download a model row offers, from its name (`dino-vits16` -> dino), or null. */
export function downloadNameOf(modelName: string): DownloadName | null {
  const n = modelName.toLowerCase();
  return n.includes('dino') ? 'dino' : n.includes('clip') ? 'clip' : null;
}

export class SystemService {
  info = $state<AppInfo | null>(null);
  doctor = $state<DoctorReport | null>(null);
  doctorLoading = $state(false);
  /** The engine and provider that train and generate; null until read (or on a server without settings.*). */
  compute = $state<ComputeSettings | null>(null);
  computeSaving = $state(false);
  models = $state<ModelEntry[]>([]);
  /** Download jobs by model name. */
  downloads = $state<
    Partial<Record<DownloadName, { jobId: string; done: number; total: number; status: string; error: string | null }>>
  >({});
  advice = $derived(backendAdvice(this.doctor, this.compute));

  constructor(
    private readonly api: ApiClient,
    private readonly jobs: JobsService,
    private readonly notify: Notifier,
  ) {}

  async refresh(): Promise<void> {
    await Promise.all([this.loadInfo(), this.loadModels(), this.runDoctor(), this.loadCompute()]);
  }

  async loadCompute(): Promise<void> {
    try {
      this.compute = await this.api['settings.get']({});
    } catch (err) {
      // A server older than settings.* has none: the card says so instead of a toast.
      if (!(err instanceof ApiError && err.code === 'not_found')) this.notify.error('Read settings', err);
    }
  }

  /** Saves a change of engine or provider; returns the error to show beside the field, or null. */
  async saveCompute(patch: Partial<ComputeSettings>): Promise<string | null> {
    this.computeSaving = true;
    try {
      this.compute = await this.api['settings.set'](patch);
      return null;
    } catch (err) {
      return err instanceof Error ? err.message : String(err);
    } finally {
      this.computeSaving = false;
    }
  }

  async loadInfo(): Promise<void> {
    this.info = (await this.notify.guard('Read app info', () => this.api['system.info']({}))) ?? this.info;
  }

  async loadModels(): Promise<void> {
    this.models = (await this.notify.guard('List models', () => this.api['models.list']({}))) ?? this.models;
  }

  /**
   * Lists the models again (a file placed by hand, as a failed download's message says to do); a
   * failed download whose model is now present is no longer reported.
   */
  async recheckModels(): Promise<void> {
    await this.loadModels();
    for (const m of this.models) {
      const name = downloadNameOf(m.name);
      if (name && m.present && this.downloads[name]?.error) delete this.downloads[name];
    }
  }

  async runDoctor(): Promise<void> {
    this.doctorLoading = true;
    try {
      this.doctor =
        (await this.notify.guard('Check backends (doctor)', () => this.api['system.doctor']({}))) ?? this.doctor;
    } finally {
      this.doctorLoading = false;
    }
  }

  async download(name: DownloadName): Promise<void> {
    const r = await this.notify.guard(`Download ${name.toUpperCase()}`, () => this.api['models.download']({ name }));
    if (!r) return;
    this.downloads[name] = { jobId: r.jobId, done: 0, total: 0, status: 'queued', error: null };
    this.jobs.track(r.jobId, (job) => {
      this.downloads[name] = {
        jobId: job.id,
        done: job.progress?.done ?? 0,
        total: job.progress?.total ?? 0,
        status: job.status,
        error: job.error,
      };
      if (isFinished(job)) {
        if (job.status === 'failed') this.notify.error(`Download ${name.toUpperCase()}`, job.error ?? 'failed');
        void this.loadModels();
      }
    });
  }
}

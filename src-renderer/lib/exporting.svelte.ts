/**
 * The Export screen's state: adapter, format (the contract's `exportFormats`), optional save
 * location, and the export job followed to its end; the written file is the finished job's
 * `result.path` (relative to the project, `adapters/...`).
 */
import { api, type exportFormats, type ApiClient, type Job, type Project } from '../../src-main/api/contract.ts';
import { AdapterSelection, adapterRef, choiceKey, type AdapterChoice } from './adapters.svelte.ts';
import { check, fieldErrorsFromApi, recheck, type FieldErrors } from './forms.ts';
import type { Files } from './files.ts';
import type { JobsService } from './jobs.svelte.ts';
import type { Notifier } from './notifier.svelte.ts';

export type ExportFormat = (typeof exportFormats)[number];

/** One line per format: what it is, and which tools load it. */
export const FORMAT_INFO: Record<ExportFormat, { label: string; loads: string }> = {
  singlora: {
    label: 'Native SingLoRA (.safetensors)',
    loads: 'SingLoRA Studio and the singlora CLI; keeps the single-matrix form and its metadata for later training.',
  },
  kohya: {
    label: 'kohya LoRA for A1111 / ComfyUI (.safetensors)',
    loads:
      'AUTOMATIC1111, Forge, ComfyUI, InvokeAI: put it in models/Lora and use <lora:name:1> or a LoRA loader node.',
  },
  diffusers: {
    label: 'diffusers / PEFT LoRA',
    loads: 'Python: pipe.load_lora_weights(path) in diffusers, or PeftModel with peft.',
  },
  'merged-diffusers': {
    label: 'Merged checkpoint (diffusers folder)',
    loads:
      "A pipeline folder with the adapter baked into unet/ and the base model's VAE, text encoder, tokenizer and scheduler copied: StableDiffusionPipeline.from_pretrained(folder). From a single-file base model only unet/ is written (UNet2DConditionModel.from_pretrained(folder/unet)). Downloads as one .tar file.",
  },
  'merged-single-file': {
    label: 'Merged checkpoint (single .safetensors)',
    loads:
      'A full SD 1.5 checkpoint (about 2-4 GB) for models/Stable-diffusion in A1111, ComfyUI, DiffusionBee or any SD 1.5 tool.',
  },
};

/** The path of an export's result: the finished job's `result.path`, else what was asked for. */
export function exportResultPath(job: Job, requested: string | null): string {
  return job.result?.path || requested || "the project's adapters/ folder";
}

export class ExportService {
  projectId = $state<string | null>(null);
  /** The adapter: the user's choice, else the suggestion (the newest run's checkpoint, a run that just completed). */
  readonly adapter = new AdapterSelection();
  /** The form's values when the errors shown were found. */
  #shownWith: Record<string, unknown> = {};
  format = $state<ExportFormat>('kohya');
  outPath = $state('');
  errors = $state<FieldErrors>({});
  jobId = $state<string | null>(null);
  progress = $state<{ done: number; total: number; label: string } | null>(null);
  status = $state<'idle' | 'running' | 'done' | 'failed' | 'cancelled'>('idle');
  resultPath = $state<string | null>(null);
  /** A loadable URL of the written file (a download), when the job's result has one. */
  resultUrl = $state<string | null>(null);
  /** The downloaded file's name: the file's, or `<folder>.tar` for a merged diffusers folder. */
  resultName = $state<string | null>(null);
  error = $state<string | null>(null);

  constructor(
    private readonly api: ApiClient,
    private readonly jobs: JobsService,
    private readonly notify: Notifier,
    private readonly onExported: () => void = () => {},
    private readonly files: Pick<Files, 'url'> = { url: (u) => u },
    /** The desktop app: "Show in folder" (`desktop.reveal`). */
    readonly canReveal = false,
  ) {}

  /** Shows the written file (or folder) in the OS file manager (desktop app). */
  async reveal(): Promise<void> {
    const { projectId, resultPath } = this;
    if (!projectId || !resultPath || !this.canReveal) return;
    await this.notify.guard('Show in folder', () => this.api['desktop.reveal']({ projectId, file: resultPath }));
  }

  setProject(p: Project | null): void {
    this.projectId = p?.id ?? null;
    this.adapter.reset();
    this.errors = {};
    this.#reset();
  }

  setAdapter(choice: AdapterChoice): void {
    this.adapter.choose(choice);
    this.#settingsChanged();
  }

  setFormat(format: ExportFormat): void {
    this.format = format;
    this.#settingsChanged();
  }

  setOutPath(path: string): void {
    this.outPath = path;
    this.#settingsChanged();
  }

  /**
   * The last result no longer matches the form: its "Saved… Download" box would fetch a file of
   * another format or adapter, so it goes (a running export keeps its progress).
   */
  #settingsChanged(): void {
    if (this.status !== 'running') this.#reset();
    if (this.projectId && Object.keys(this.errors).length)
      this.errors = recheck(this.errors, this.#shownWith, this.#values(), this.#localErrors(this.projectId));
  }

  #values(): Record<string, unknown> {
    return { adapter: choiceKey(this.adapter.choice), format: this.format, outPath: this.outPath };
  }

  #params(projectId: string) {
    const ref = adapterRef(this.adapter.choice);
    const outPath = this.outPath.trim() || undefined;
    return { projectId, adapter: ref, format: this.format, ...(outPath ? { outPath } : {}) };
  }

  /** The form's own check: an adapter chosen, and the contract's params. */
  #localErrors(projectId: string): FieldErrors {
    const params = this.#params(projectId);
    if (!params.adapter) return { adapter: 'Choose the adapter to export' };
    const c = check(api['adapters.export'].params, params);
    return c.ok ? {} : c.errors;
  }

  #showErrors(errors: FieldErrors): void {
    this.errors = errors;
    this.#shownWith = this.#values();
  }

  async exportNow(): Promise<boolean> {
    const projectId = this.projectId;
    if (!projectId) {
      this.notify.error('Export', 'Open or create a project first.');
      return false;
    }
    const local = this.#localErrors(projectId);
    this.#showErrors(local);
    const { adapter: ref, ...rest } = this.#params(projectId);
    if (!ref || Object.keys(local).length) return false;
    const params = { ...rest, adapter: ref };
    const outPath = rest.outPath;
    this.#reset();
    this.status = 'running';
    try {
      const r = await this.api['adapters.export'](params);
      this.jobId = r.jobId;
      this.jobs.track(r.jobId, (job) => this.#onJob(job, outPath ?? null));
      return true;
    } catch (err) {
      // A field's error shows once, next to its field; anything else under the button.
      const fields = fieldErrorsFromApi(err);
      this.status = fields ? 'idle' : 'failed';
      if (fields) this.#showErrors(fields);
      else {
        this.error = err instanceof Error ? err.message : String(err);
        this.notify.error('Export', err);
      }
      return false;
    }
  }

  #reset(): void {
    this.jobId = null;
    this.progress = null;
    this.status = 'idle';
    this.resultPath = null;
    this.resultUrl = null;
    this.resultName = null;
    this.error = null;
  }

  #onJob(job: Job, requested: string | null): void {
    this.progress = job.progress;
    if (job.status === 'queued' || job.status === 'running') return;
    this.status = job.status;
    if (job.status === 'done') {
      this.resultPath = exportResultPath(job, requested);
      this.resultUrl = job.result?.url ? this.files.url(job.result.url) : null;
      this.resultName = job.result?.url
        ? decodeURIComponent(job.result.url.split('?')[0].split('/').pop() ?? '')
        : null;
      this.notify.info(`Exported to ${this.resultPath}`, 'success');
      this.onExported();
    } else if (job.status === 'failed') {
      this.error = job.error ?? 'the export failed';
      this.notify.error('Export', this.error);
    }
  }
}

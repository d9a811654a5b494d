/**
 * The Generate screen's state: the settings draft (checked with the contract's
 * `generateSettingsSchema` before sending, so a width that is not a multiple of 8 never leaves the
 * page), the adapter and its strength, the job's step progress, and the gallery.
 */
import type { ApiClient, GeneratedImageInfo, Job, Project } from '../../src-main/api/contract.ts';
import { generateSettingsSchema, type GenerateSettingsInput, type ModelDefaults } from '../../src-main/api/schemas.ts';
import { AdapterSelection, adapterRef, choiceFromFile } from './adapters.svelte.ts';
import type { EventHub } from './events.ts';
import type { Files } from './files.ts';
import { check, fieldErrorsFromApi, recheck, type FieldErrors } from './forms.ts';
import type { JobsService } from './jobs.svelte.ts';
import type { Notifier } from './notifier.svelte.ts';

/** A base model's recommended sampling settings (its singlora-defaults.json). */
export type SamplingDefaults = NonNullable<ModelDefaults['sampling']>;

export type GenerateDraft = Required<Omit<GenerateSettingsInput, 'clipSkip'>> & { clipSkip: number };

export function defaultDraft(subject?: Project['subject']): GenerateDraft {
  const d = generateSettingsSchema.parse({
    prompt: subject ? `a photo of ${subject.triggerToken} ${subject.classWord}` : '',
  });
  return { ...d };
}

export const MAX_SEED = 2 ** 32 - 1;

export interface GalleryImage extends GeneratedImageInfo {
  src: string;
}

export class GenerationService {
  projectId = $state<string | null>(null);
  draft = $state<GenerateDraft>(defaultDraft());
  /** The adapter: the user's choice, else the suggestion (the newest run's checkpoint, a run that just completed). */
  readonly adapter = new AdapterSelection();
  strength = $state(1);
  errors = $state<FieldErrors>({});
  images = $state<GalleryImage[]>([]);
  jobId = $state<string | null>(null);
  progress = $state<{ image: number; images: number; step: number; steps: number } | null>(null);
  busy = $state(false);

  running = $derived(this.jobId !== null);
  /** The size and steps last filled in from the model; the user's own values are never replaced. */
  #modelDefaults: Required<
    Pick<SamplingDefaults, 'width' | 'height' | 'steps' | 'scheduler' | 'guidanceScale'>
  > | null = null;
  /** The form's values when the errors shown were found. */
  #shownWith: Record<string, unknown> = {};

  constructor(
    private readonly api: ApiClient,
    hub: EventHub,
    private readonly jobs: JobsService,
    private readonly files: Files,
    private readonly notify: Notifier,
    private readonly clipboard: Pick<Clipboard, 'writeText'> | null = null,
    /** The desktop app: `desktop.reveal` opens the file manager (a browser cannot). */
    private readonly desktop = false,
    private readonly random: () => number = Math.random,
  ) {
    hub.on('generation.step', (s) => {
      if (s.jobId === this.jobId) this.progress = { image: s.image, images: s.images, step: s.step, steps: s.steps };
    });
    hub.on('generation.image', (e) => {
      if (e.projectId === this.projectId) this.#add(e.image);
    });
  }

  /**
   * Fills the size from the base model's native size (and fewer steps for a toy model of 128 px or
   * less, whose images take a few steps), and what its singlora-defaults.json recommends
   * (`sampling`: size, steps, sampler, guidance), unless the user changed them since.
   */
  useModelDefaults(native: number | null, sampling: SamplingDefaults | null = null): void {
    if (!native && !sampling) return;
    const d = this.draft;
    const base = defaultDraft();
    const prev = this.#modelDefaults ?? {
      width: base.width,
      height: base.height,
      steps: base.steps,
      scheduler: base.scheduler,
      guidanceScale: base.guidanceScale,
    };
    const size = native ?? base.width;
    const next = {
      width: sampling?.width ?? size,
      height: sampling?.height ?? size,
      steps: sampling?.steps ?? (size <= 128 ? 10 : base.steps),
      scheduler: sampling?.scheduler ?? base.scheduler,
      guidanceScale: sampling?.guidanceScale ?? base.guidanceScale,
    };
    if (d.width === prev.width && d.height === prev.height) {
      d.width = next.width;
      d.height = next.height;
    }
    if (d.steps === prev.steps) d.steps = next.steps;
    if (d.scheduler === prev.scheduler) d.scheduler = next.scheduler;
    if (d.guidanceScale === prev.guidanceScale) d.guidanceScale = next.guidanceScale;
    this.#modelDefaults = next;
  }

  setProject(p: Project | null): void {
    this.projectId = p?.id ?? null;
    this.#modelDefaults = null;
    this.draft = defaultDraft(p?.subject);
    this.adapter.reset();
    this.errors = {};
    this.images = [];
    this.jobId = null;
    this.progress = null;
    if (p) void this.loadGallery();
  }

  async loadGallery(): Promise<void> {
    const projectId = this.projectId;
    if (!projectId) return;
    const list = await this.notify.guard('Load gallery', () => this.api['generation.list']({ projectId }));
    if (!list || this.projectId !== projectId) return;
    this.images = list.map((i) => this.#withSrc(i)).sort((a, b) => b.createdAt.localeCompare(a.createdAt));
  }

  randomizeSeed(): void {
    this.draft.seed = Math.floor(this.random() * MAX_SEED);
  }

  /** Reuses an image's settings (seed included), its adapter and the adapter's strength in the form. */
  reuse(image: GeneratedImageInfo): void {
    this.draft = { ...this.draft, ...image.settings };
    const [first, ...more] = image.adapters;
    this.adapter.choose(first ? choiceFromFile(first.file) : { kind: 'none' });
    if (first) this.strength = first.strength;
    if (more.length)
      this.notify.info(
        `This image was made with ${image.adapters.length} adapters; the form takes one: the first, at strength ${first.strength}.`,
      );
  }

  async generate(): Promise<boolean> {
    const projectId = this.projectId;
    if (!projectId) {
      this.notify.error('Generate', 'Open or create a project first.');
      return false;
    }
    const c = check(generateSettingsSchema, this.draft);
    const errors = this.#localErrors();
    this.#showErrors(errors);
    if (!c.ok || Object.keys(errors).length) return false;
    const ref = adapterRef(this.adapter.choice);
    this.busy = true;
    try {
      const r = await this.api['generation.start']({
        projectId,
        settings: c.data,
        adapters: ref ? [{ ...ref, strength: this.strength }] : [],
      });
      this.jobId = r.jobId;
      this.progress = null;
      this.jobs.track(r.jobId, (job) => this.#onJob(job));
      return true;
    } catch (err) {
      const fields = fieldErrorsFromApi(err, 'settings.');
      if (fields) this.#showErrors(fields);
      else this.notify.error('Generate', err);
      return false;
    } finally {
      this.busy = false;
    }
  }

  /** The form's own check: the settings and the strength. */
  #localErrors(): FieldErrors {
    const c = check(generateSettingsSchema, this.draft);
    const errors: FieldErrors = c.ok ? {} : { ...c.errors };
    if (!Number.isFinite(this.strength) || this.strength < -4 || this.strength > 4)
      errors.strength = 'Set a strength between -4 and 4';
    return errors;
  }

  #values(): Record<string, unknown> {
    return { ...$state.snapshot(this.draft), strength: this.strength };
  }

  #showErrors(errors: FieldErrors): void {
    this.errors = errors;
    this.#shownWith = this.#values();
  }

  /** After an edit: errors of fields that now pass go, the others follow the new values (the screen calls this). */
  revalidate(): void {
    if (!Object.keys(this.errors).length) return;
    this.errors = recheck(this.errors, this.#shownWith, this.#values(), this.#localErrors());
  }

  async cancel(): Promise<void> {
    if (this.jobId) await this.jobs.cancel(this.jobId);
  }

  /** Copies the A1111 "parameters" text (as in the PNG) to the clipboard. */
  async copyParameters(image: GeneratedImageInfo): Promise<void> {
    if (!this.clipboard)
      return this.notify.error(
        'Copy parameters',
        'The clipboard is not available here (the page needs a secure context: https or localhost).',
      );
    try {
      await this.clipboard.writeText(image.parameters);
      this.notify.info('Parameters copied: paste them into the A1111 prompt box and press the ↙ button.', 'success');
    } catch (err) {
      this.notify.error('Copy parameters', err);
    }
  }

  get canReveal(): boolean {
    return this.desktop;
  }

  async reveal(image: GeneratedImageInfo): Promise<void> {
    const projectId = this.projectId;
    if (!this.desktop || !projectId)
      return this.notify.error('Open in folder', 'Opening folders is not available here.');
    await this.notify.guard('Open in folder', () =>
      this.api['desktop.reveal']({ projectId, file: `images/${image.file}` }),
    );
  }

  #onJob(job: Job): void {
    if (job.status === 'queued' || job.status === 'running') return;
    this.jobId = null;
    this.progress = null;
    if (job.status === 'failed') this.notify.error('Generate', job.error ?? 'generation failed');
  }

  #withSrc(i: GeneratedImageInfo): GalleryImage {
    return { ...i, src: this.files.url(i.url) };
  }

  #add(image: GeneratedImageInfo): void {
    if (this.images.some((i) => i.file === image.file)) return;
    this.images = [this.#withSrc(image), ...this.images];
  }
}

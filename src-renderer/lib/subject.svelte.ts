/**
 * The Subject screen's state: the project's photos, uploads (files read as base64 and sent with
 * `photos.add`, a few per request), crop previews, and the subject's trigger token / class word.
 */
import type { ApiClient, Photo, Project } from '../../src-main/api/contract.ts';
import type { Files } from './files.ts';
import { IMAGE_EXTENSIONS, isImageExtension, trainSettingsSchema } from '../../src-main/api/schemas.ts';
import { CROP_CHOICES, type CropMode, newSubject } from './choices.ts';
import { check, recheck, type FieldErrors } from './forms.ts';
import type { Notifier } from './notifier.svelte.ts';
import type { ProjectsService } from './projects.svelte.ts';

const subjectRules = trainSettingsSchema.pick({ triggerToken: true, classWord: true });

export { CROP_CHOICES, type CropMode };
export const MIN_PHOTOS = 3;
export const MAX_PHOTOS = 20;

/** Per request: the contract allows 50 files; a few MB per request keeps uploads responsive. */
const MAX_FILES_PER_REQUEST = 8;
const MAX_BYTES_PER_REQUEST = 24 * 1024 * 1024;
/** The photos the engine reads: the contract's one extension list (a .bmp or .heic is refused here, not later). */
export function isImageFile(f: Pick<File, 'name' | 'type'>): boolean {
  const dot = f.name.lastIndexOf('.');
  return dot > 0 && isImageExtension(f.name.slice(dot));
}

/** The photo formats the app takes, by name, from the contract's extension list: "JPEG, PNG, ... or HEIC". */
export function photoFormatNames(): string {
  const NAMES: Record<string, string> = {
    jpg: 'JPEG',
    jpeg: 'JPEG',
    tif: 'TIFF',
    tiff: 'TIFF',
    heic: 'HEIC',
    heif: 'HEIC',
    webp: 'WebP',
  };
  const names = [...new Set(IMAGE_EXTENSIONS.map((e) => NAMES[e.slice(1)] ?? e.slice(1).toUpperCase()))];
  return `${names.slice(0, -1).join(', ')} or ${names.at(-1)}`;
}

/** For the file picker's `accept`: exactly the extensions the app takes. */
export const PHOTO_ACCEPT = IMAGE_EXTENSIONS.join(',');

/**
 * What is wrong with a trigger token, or null. It must be one word the tokenizer keeps together in
 * every prompt: letters (any script), digits, `_` and `-`; no spaces, no emoji or other symbols.
 */
export function triggerTokenProblem(token: string): string | null {
  const t = token.trim();
  if (!t) return null; // the schema says "Fill this in"
  if (/\s/.test(t)) return 'Use one word, without spaces (e.g. sks or ohwx)';
  if (!/^[\p{L}\p{N}_-]+$/u.test(t)) return 'Use only letters, digits, _ and -: no emoji or other symbols (e.g. sks)';
  return null;
}

export async function toBase64(file: Blob): Promise<string> {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let binary = '';
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) binary += String.fromCharCode(...bytes.subarray(i, i + chunk));
  return btoa(binary);
}

/** Groups files so each `photos.add` stays under both limits. */
export function batches<T extends { size: number }>(
  files: T[],
  maxFiles = MAX_FILES_PER_REQUEST,
  maxBytes = MAX_BYTES_PER_REQUEST,
): T[][] {
  const out: T[][] = [];
  let cur: T[] = [];
  let bytes = 0;
  for (const f of files) {
    if (cur.length && (cur.length >= maxFiles || bytes + f.size > maxBytes)) {
      out.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(f);
    bytes += f.size;
  }
  if (cur.length) out.push(cur);
  return out;
}

export class SubjectService {
  projectId = $state<string | null>(null);
  photos = $state<Photo[]>([]);
  loading = $state(false);
  /** The open project's photos were listed at least once (until then `usable` means nothing). */
  loaded = $state(false);
  upload = $state<{ done: number; total: number } | null>(null);
  /** `${photoId}:${mode}` -> data URL. */
  crops = $state<Record<string, string>>({});
  /** The subject form (trigger token, class word, type), saved with `saveSubject`. */
  draft = $state<Project['subject']>(newSubject());
  subjectErrors = $state<FieldErrors>({});
  /** The draft when the errors shown were found. */
  #shownWith: Record<string, unknown> = {};
  readonly #previewing = new Set<string>();

  usable = $derived(this.photos.filter((p) => p.status !== 'rejected').length);
  /** The crop training applies to each photo: the project's setting, chosen here (`setCrop`) and only here. */
  get trainingCrop(): CropMode {
    return this.projects.current?.settings.crop ?? 'center';
  }
  guidance = $derived(guidanceFor(this.usable, this.photos.length));
  /**
   * Set while the token typed differs from the saved one and the project has runs: their adapters
   * were trained on the old token and keep answering to it.
   */
  tokenChange = $derived.by(() => {
    const p = this.projects.current;
    const runs = this.projects.list.find((s) => s.id === p?.id)?.runs ?? 0;
    const next = this.draft.triggerToken.trim();
    if (!p || !runs || !next || next === p.subject.triggerToken) return null;
    return { runs, from: p.subject.triggerToken, to: next };
  });

  constructor(
    private readonly api: ApiClient,
    private readonly projects: ProjectsService,
    private readonly files: Files,
    private readonly notify: Notifier,
  ) {}

  setProject(p: Project | null): void {
    this.projectId = p?.id ?? null;
    this.photos = [];
    this.loaded = false;
    this.crops = {};
    this.subjectErrors = {};
    if (p) this.draft = { ...p.subject };
    if (p) void this.load();
  }

  photoUrl(photo: Photo): string {
    return this.files.url(photo.url);
  }

  async load(): Promise<void> {
    const projectId = this.projectId;
    if (!projectId) return;
    this.loading = true;
    try {
      const photos = await this.notify.guard('List photos', () => this.api['photos.list']({ projectId }));
      if (photos && this.projectId === projectId) {
        this.photos = photos;
        this.loaded = true;
      }
      if (photos) this.projects.setCounts(projectId, { photos: photos.length });
    } finally {
      this.loading = false;
    }
  }

  /** Adds dropped or picked files; non-images are skipped with a message. */
  async addFiles(list: FileList | File[]): Promise<void> {
    const projectId = this.projectId;
    if (!projectId) return this.notify.error('Add photos', 'Open or create a project first.');
    const all = [...list];
    const images = all.filter(isImageFile);
    const skipped = all.filter((f) => !isImageFile(f));
    // Not a failure: the photos among them are added; the rest is named, with what is taken.
    if (skipped.length)
      this.notify.info(
        `Not added (not ${photoFormatNames()} photos): ${skipped.map((f) => f.name).join(', ')}` +
          (images.length
            ? `; ${images.length === 1 ? 'the photo is' : `the ${images.length} photos are`} added.`
            : '.'),
      );
    if (!images.length) return;
    this.upload = { done: 0, total: images.length };
    try {
      for (const group of batches(images)) {
        const files = await Promise.all(group.map(async (f) => ({ name: f.name, dataBase64: await toBase64(f) })));
        await this.api['photos.add']({ projectId, files });
        this.upload = { done: this.upload.done + group.length, total: images.length };
      }
    } catch (err) {
      this.notify.error('Add photos', err);
    } finally {
      this.upload = null;
      await this.load();
    }
  }

  async remove(photoId: string): Promise<void> {
    const projectId = this.projectId;
    if (!projectId) return;
    const r = await this.notify.guard('Remove photo', () => this.api['photos.remove']({ projectId, photoId }));
    if (r && this.projectId === projectId) {
      this.photos = this.photos.filter((p) => p.id !== photoId);
      this.projects.setCounts(projectId, { photos: this.photos.length });
    }
  }

  async preview(photoId: string, crop: CropMode): Promise<void> {
    const projectId = this.projectId;
    const key = `${photoId}:${crop}`;
    if (!projectId || this.crops[key] || this.#previewing.has(key)) return;
    this.#previewing.add(key);
    try {
      const r = await this.notify.guard('Crop preview', () =>
        this.api['photos.cropPreview']({ projectId, photoId, crop, size: 256 }),
      );
      if (r && this.projectId === projectId) this.crops[key] = `data:image/png;base64,${r.pngBase64}`;
    } finally {
      this.#previewing.delete(key);
    }
  }

  /** Saves the crop training applies (the project's `settings.crop`). */
  async setCrop(crop: CropMode): Promise<void> {
    if (crop === this.trainingCrop) return;
    const errors = await this.projects.update({ settings: { crop } });
    if (!errors)
      this.notify.info(`Training crops each photo: ${CROP_CHOICES.find((c) => c.value === crop)?.label}.`, 'success');
  }

  /** The subject form's own check: training's rules for both words, and one plain word as the token. */
  #localErrors(): FieldErrors {
    // The project accepts any string; training needs 1-64 characters, so check with its rules now.
    const c = check(subjectRules, { triggerToken: this.draft.triggerToken, classWord: this.draft.classWord });
    const token = triggerTokenProblem(this.draft.triggerToken);
    return { ...(c.ok ? {} : c.errors), ...(token ? { triggerToken: token } : {}) };
  }

  #showErrors(errors: FieldErrors): void {
    this.subjectErrors = errors;
    this.#shownWith = { ...this.draft };
  }

  /** After an edit: an error goes as soon as its field holds a valid value (the screen calls this). */
  revalidate(): void {
    if (!Object.keys(this.subjectErrors).length) return;
    this.subjectErrors = recheck(this.subjectErrors, this.#shownWith, { ...this.draft }, this.#localErrors());
  }

  async saveSubject(): Promise<boolean> {
    const local = this.#localErrors();
    if (Object.keys(local).length) {
      this.#showErrors(local);
      return false;
    }
    const errors = await this.projects.update({ subject: { ...this.draft } });
    this.#showErrors(
      Object.fromEntries(Object.entries(errors ?? {}).map(([k, v]) => [k.replace(/^subject\./, ''), v])),
    );
    if (!errors) this.notify.info('Subject saved.', 'success');
    return !errors;
  }
}

export function guidanceFor(usable: number, total: number): { level: 'ok' | 'warning'; text: string } {
  if (total === 0)
    return {
      level: 'warning',
      text: `Add ${MIN_PHOTOS}-${MAX_PHOTOS} photos of your subject: different angles, backgrounds and lighting.`,
    };
  if (usable < MIN_PHOTOS)
    return {
      level: 'warning',
      text: `${usable} usable photo(s): add at least ${MIN_PHOTOS - usable} more (${MIN_PHOTOS}-${MAX_PHOTOS} works best).`,
    };
  if (usable > MAX_PHOTOS)
    return {
      level: 'warning',
      text: `${usable} usable photos: more than ${MAX_PHOTOS} rarely helps and slows training; keep the best ${MAX_PHOTOS}.`,
    };
  return { level: 'ok', text: `${usable} usable photos: ready to train (${MIN_PHOTOS}-${MAX_PHOTOS} photos).` };
}

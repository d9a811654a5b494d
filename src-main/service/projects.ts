/**
 * Projects on disk: one folder per subject under the projects root.
 *
 *   <projects>/<id>/project.json        the project (api/contract.ts: projectSchema)
 *   <projects>/<id>/photos/             the originals, byte for byte, under safe unique names
 *   <projects>/<id>/photos.json         the photo index: per-photo status and reason (checkPhoto)
 *   <projects>/<id>/runs/<runId>/       run.json, checkpoints/, samples/, eval/ (engine/train/runFiles.ts)
 *   <projects>/<id>/adapters/           exports and imported adapter files
 *   <projects>/<id>/images/             generated images with their JSON sidecars
 *
 * Every write is atomic (engine/io/atomic.ts); writes to one project are serialised. Ids are a
 * slug of the name plus 6 random hex digits (`my-dog-3fa9c1`). A project.json from an older
 * version is migrated through PROJECT_MIGRATIONS and written back; one from a newer version is
 * refused, never guessed at.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdir, readdir, readFile, rm, unlink } from 'node:fs/promises';
import { basename, isAbsolute, join } from 'node:path';
import { z } from 'zod';
import {
  ApiError,
  idSchema,
  photoSchema,
  projectFileUrl,
  projectSchema,
  type Photo,
  type Project,
  type ProjectSummary,
  issueFields,
  type TrainSettingsPatch,
} from '../api/contract.ts';
import { type SUBJECT_TYPES, trainSettingsSchema, type TrainSettings } from '../api/schemas.ts';
import { atomicWriteFile, atomicWriteJson } from '../engine/io/atomic.ts';
import { checkPhoto } from '../engine/train/dataset.ts';
import { portableBasePath } from '../engine/train/runFiles.ts';
import { readableError } from './fsErrors.ts';
import { safeFileName, safeResolve, uniqueName } from './safePath.ts';

export const PROJECT_SCHEMA_VERSION = 1;
export const PROJECT_FILE = 'project.json';
export const PHOTO_INDEX = 'photos.json';
export const PROJECT_FOLDERS = ['photos', 'runs', 'adapters', 'images'] as const;
/**
 * Photos are checked at this size when the settings leave the resolution to the model and the
 * model's native size is not known (SD 1.5: 512).
 */
export const DEFAULT_PHOTO_RESOLUTION = 512;

/**
 * Migrations of project.json: entry `to: N` turns a version N-1 file into version N. A file
 * without `schemaVersion` is version 0 (written before versions were recorded); v1 changed
 * nothing else, so its step is the identity.
 */
export interface Migration {
  readonly to: number;
  readonly up: (p: Record<string, unknown>) => Record<string, unknown>;
}
export const PROJECT_MIGRATIONS: readonly Migration[] = [{ to: 1, up: (p) => ({ ...p }) }];

/** Brings a raw project.json to `current`; throws for a newer file or a missing step. */
export function migrateProject(
  raw: Record<string, unknown>,
  file: string,
  table: readonly Migration[] = PROJECT_MIGRATIONS,
  current = PROJECT_SCHEMA_VERSION,
): { value: Record<string, unknown>; from: number } {
  const from = raw.schemaVersion === undefined ? 0 : raw.schemaVersion;
  if (typeof from !== 'number' || !Number.isInteger(from) || from < 0)
    throw new ApiError(
      'internal',
      `${file}: schemaVersion must be a whole number, got ${JSON.stringify(raw.schemaVersion)}`,
    );
  if (from > current)
    throw new ApiError(
      'conflict',
      `${file}: made by a newer SingLoRA Studio (project schema ${from}, this version reads up to ${current}); update the app to open it`,
    );
  let value = raw;
  for (let v = from + 1; v <= current; v++) {
    const step = table.find((m) => m.to === v);
    if (!step) throw new ApiError('internal', `${file}: no migration from project schema ${v - 1} to ${v}`);
    value = { ...step.up(value), schemaVersion: v };
  }
  return { value, from };
}

/** One photo in photos.json: the contract's Photo without its URL (made per request), plus hash and date. */
const photoEntrySchema = photoSchema.omit({ url: true }).extend({ sha256: z.string(), addedAt: z.string() });
type PhotoEntry = z.infer<typeof photoEntrySchema>;
const photoIndexSchema = z.object({ schemaVersion: z.literal(1), photos: z.array(photoEntrySchema) });

/** A photo to add, already read (host paths are read by the path policy, with the upload limit). */
export type PhotoSource = { kind: 'bytes'; name: string; data: Uint8Array };

export interface NewProject {
  name: string;
  classWord: string;
  triggerToken: string;
  type: (typeof SUBJECT_TYPES)[number];
  /** Already checked (checkBase); absent: none (the app default). */
  baseModel?: string;
  /** The base model's recommended training settings (its singlora-defaults.json), the project's starting point. */
  settings?: Partial<TrainSettings>;
}

export interface ProjectPatch {
  name?: string;
  subject?: Partial<Project['subject']>;
  baseModel?: string | null;
  settings?: TrainSettingsPatch;
}

/** `settings` with `patch` applied: only the fields given; `classImagesDir: null` or '' removes the folder. */
export function patchSettings(settings: TrainSettings, patch: TrainSettingsPatch = {}): Record<string, unknown> {
  const { classImagesDir, ...rest } = patch;
  const out: Record<string, unknown> = { ...settings, ...rest };
  if (classImagesDir === null || classImagesDir === '') delete out.classImagesDir;
  else if (classImagesDir !== undefined) out.classImagesDir = classImagesDir;
  return out;
}

/** Lower-case words joined by '-', ASCII only, at most 40 characters; 'project' when nothing is left. */
export function slugify(name: string): string {
  const slug = name
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '')
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 40)
    .replace(/-+$/g, '');
  return slug || 'project';
}

export interface ProjectStoreOptions {
  /**
   * The native training size of a project's base model (null: the service's default), e.g. 512
   * for SD 1.5 and 64 for the tiny demo model; null when it cannot be read. Photos are checked at
   * it when the settings leave the resolution to the model.
   */
  nativeResolution?: (baseModel: string | null) => Promise<number | null>;
  /**
   * The models folder: project.json records a base model inside it relative to it, so that
   * machines mounting the shared data and models folders at other paths read it (issue 29). The
   * store's callers always see the path on this machine; an absolute path (a model elsewhere, or
   * a project.json written before) is kept as it is.
   */
  modelsDir?: string;
}

const now = () => new Date().toISOString();

/** Why a photo is not used: the same bytes as one already in the project (named as the user named it). */
function duplicateReason(of: PhotoEntry): string {
  return `exact duplicate of ${of.originalName}, which is already in the project (used once)`;
}

export class ProjectStore {
  readonly #locks = new Map<string, Promise<unknown>>();
  readonly #held = new AsyncLocalStorage<ReadonlySet<string>>();
  #sharedLock: (<T>(id: string, fn: () => Promise<T>) => Promise<T>) | null = null;

  constructor(
    readonly root: string,
    private readonly opts: ProjectStoreOptions = {},
  ) {}

  /** The size photos are checked at: the training resolution, else the base model's native size, else 512. */
  async photoResolution(p: Project): Promise<number> {
    if (p.settings.resolution !== null) return p.settings.resolution;
    return (await this.opts.nativeResolution?.(p.baseModel).catch(() => null)) ?? DEFAULT_PHOTO_RESOLUTION;
  }

  /** The project folder; `id` must already be a valid id (the contract's idSchema). */
  dir(id: string): string {
    if (!idSchema.safeParse(id).success)
      throw new ApiError('invalid_params', `projectId: '${id}' is not a project id`, [
        { field: 'projectId', message: 'not a project id' },
      ]);
    return join(this.root, id);
  }

  runDir(id: string, runId: string): string {
    if (!idSchema.safeParse(runId).success)
      throw new ApiError('invalid_params', `runId: '${runId}' is not a run id`, [
        { field: 'runId', message: 'not a run id' },
      ]);
    return join(this.dir(id), 'runs', runId);
  }

  /**
   * The one per-project lock: serialises the mutations of one project (read-modify-write of
   * project.json and photos.json, and the service's check-then-submit of jobs). Re-entrant: code
   * that already holds the project's lock (a handler calling `update`) runs at once.
   */
  withLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const held = this.#held.getStore();
    if (held?.has(id)) return fn();
    const shared = this.#sharedLock;
    const locked = shared ? () => shared(id, fn) : fn;
    const inner = () => this.#held.run(new Set([...(held ?? []), id]), locked);
    const prev = this.#locks.get(id) ?? Promise.resolve();
    const next = prev.then(inner, inner);
    const tail = next.catch(() => {});
    this.#locks.set(id, tail);
    void tail.then(() => {
      if (this.#locks.get(id) === tail) this.#locks.delete(id);
    });
    return next;
  }

  /**
   * Makes the project lock also a lock between processes (a Redis queue: several servers share
   * the projects folder): inside this process's lock, `lock(id, fn)` runs `fn` holding the shared one.
   */
  shareLocks(lock: <T>(id: string, fn: () => Promise<T>) => Promise<T>): void {
    this.#sharedLock = lock;
  }

  /** Runs `fn` as if no lock were held (a job's work, which starts later, must take locks anew). */
  unlocked<T>(fn: () => T): T {
    return this.#held.exit(fn);
  }

  /**
   * Every project, newest first. A folder named like a project that holds no readable project
   * (project.json missing or damaged) is listed too, marked `broken` with the reason, so it can be
   * seen and deleted; each is logged once per service, not on every call.
   */
  async list(log: (line: string) => void = () => {}): Promise<ProjectSummary[]> {
    const names = await readdir(this.root).catch(() => [] as string[]);
    const out: ProjectSummary[] = [];
    for (const name of names.sort()) {
      if (!idSchema.safeParse(name).success) continue;
      const info = await lstat(join(this.root, name)).catch(() => null);
      if (!info?.isDirectory()) continue;
      try {
        const p = await this.open(name);
        const photos = await this.photos(name);
        out.push({
          id: p.id,
          name: p.name,
          createdAt: p.createdAt,
          updatedAt: p.updatedAt,
          subject: p.subject,
          photos: photos.length,
          runs: (await this.runIds(name)).length,
        });
      } catch (err) {
        const reason = existsSync(join(this.root, name, PROJECT_FILE))
          ? (err as Error).message
          : `the folder has no ${PROJECT_FILE} (delete it, or restore the file)`;
        this.logOnce(log, `projects: ${join(this.root, name)} is broken: ${reason}`);
        const at = info.mtime.toISOString();
        out.push({
          id: name,
          name,
          createdAt: at,
          updatedAt: at,
          subject: { triggerToken: 'sks', classWord: 'person', type: 'live' },
          photos: 0,
          runs: (await this.runIds(name)).length,
          broken: reason,
        });
      }
    }
    return out.sort((a, b) => b.updatedAt.localeCompare(a.updatedAt));
  }

  readonly #logged = new Set<string>();

  /** `line`, unless this store has logged it before (broken items are listed on every call). */
  logOnce(log: (line: string) => void, line: string): void {
    if (this.#logged.has(line)) return;
    this.#logged.add(line);
    log(line);
  }

  async create(input: NewProject): Promise<Project> {
    await mkdir(this.root, { recursive: true });
    let id = '';
    for (let i = 0; i < 10 && (!id || existsSync(join(this.root, id))); i++)
      id = `${slugify(input.name)}-${randomBytes(3).toString('hex')}`;
    const dir = this.dir(id);
    const t = now();
    const project: Project = validProject(
      {
        schemaVersion: PROJECT_SCHEMA_VERSION,
        id,
        name: input.name,
        createdAt: t,
        updatedAt: t,
        subject: { triggerToken: input.triggerToken, classWord: input.classWord, type: input.type },
        baseModel: input.baseModel ?? null,
        settings: trainSettingsSchema.parse({
          ...input.settings,
          triggerToken: input.triggerToken,
          classWord: input.classWord,
        }),
      },
      'projects.create',
    );
    try {
      for (const f of PROJECT_FOLDERS) await mkdir(join(dir, f), { recursive: true });
      await atomicWriteJson(join(dir, PHOTO_INDEX), { schemaVersion: 1, photos: [] });
      await this.#writeProject(id, project);
    } catch (err) {
      // A half-created project (a full disk, no permission) is removed, not left as an orphan folder.
      await rm(dir, { recursive: true, force: true }).catch(() => {});
      throw new ApiError('internal', `projects.create: cannot create ${dir}: ${readableError(err)}`);
    }
    return project;
  }

  async exists(id: string): Promise<boolean> {
    return existsSync(join(this.dir(id), PROJECT_FILE));
  }

  /** Whether the project's folder is there, readable project or not (a broken one can be deleted). */
  async hasFolder(id: string): Promise<boolean> {
    return (await lstat(this.dir(id)).catch(() => null))?.isDirectory() ?? false;
  }

  /** Reads project.json (migrating an older one, and writing it back); not_found when the project does not exist. */
  async open(id: string): Promise<Project> {
    const r = await this.#read(id);
    if (r.migrated) {
      await this.withLock(id, async () => {
        const again = await this.#read(id);
        if (again.migrated) await this.#writeProject(id, again.project);
      });
    }
    return r.project;
  }

  async #read(id: string): Promise<{ project: Project; migrated: boolean }> {
    const file = join(this.dir(id), PROJECT_FILE);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      throw new ApiError('not_found', `no project '${id}' (looked for ${file})`);
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new ApiError(
        'internal',
        `${file}: not valid JSON (${(err as Error).message}); restore it from a backup or recreate the project`,
      );
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
      throw new ApiError('internal', `${file}: expected a JSON object`);
    const { value, from } = migrateProject(raw as Record<string, unknown>, file);
    const r = projectSchema.safeParse(value);
    if (!r.success)
      throw new ApiError(
        'internal',
        `${file}: not a valid project: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
      );
    if (r.data.id !== id)
      throw new ApiError(
        'internal',
        `${file}: its id is '${r.data.id}' but its folder is '${id}'; rename one to match`,
      );
    const models = this.opts.modelsDir;
    const base = r.data.baseModel;
    const project = models && base && !isAbsolute(base) ? { ...r.data, baseModel: join(models, base) } : r.data;
    return { project, migrated: from !== PROJECT_SCHEMA_VERSION };
  }

  /** Writes project.json, its base model relative to the models folder when inside it. */
  #writeProject(id: string, p: Project): Promise<void> {
    const models = this.opts.modelsDir;
    const file = models && p.baseModel ? { ...p, baseModel: portableBasePath(p.baseModel, models) } : p;
    return atomicWriteJson(join(this.dir(id), PROJECT_FILE), file);
  }

  async update(id: string, patch: ProjectPatch, validateBase?: (path: string) => Promise<unknown>): Promise<Project> {
    return this.withLock(id, async () => {
      const p = (await this.#read(id)).project;
      const subject = { ...p.subject, ...(patch.subject ?? {}) };
      // settings.triggerToken / classWord are the subject's; a settings patch may set them too.
      if (patch.settings?.triggerToken !== undefined && patch.subject?.triggerToken === undefined)
        subject.triggerToken = patch.settings.triggerToken;
      if (patch.settings?.classWord !== undefined && patch.subject?.classWord === undefined)
        subject.classWord = patch.settings.classWord;
      const merged = trainSettingsSchema.safeParse(patchSettings(p.settings, patch.settings));
      if (!merged.success) {
        const fields = issueFields(merged.error.issues, '').map((f) => ({ ...f, field: `settings.${f.field}` }));
        throw new ApiError(
          'invalid_params',
          `projects.update: ${fields.map((f) => `${f.field}: ${f.message}`).join('; ')}`,
          fields,
        );
      }
      if (patch.baseModel) await validateBase?.(patch.baseModel);
      const next = validProject(
        {
          ...p,
          name: patch.name ?? p.name,
          subject,
          baseModel: patch.baseModel === undefined ? p.baseModel : patch.baseModel,
          settings: merged.data,
          updatedAt: now(),
        },
        'projects.update',
      );
      const [before, after] = [await this.photoResolution(p), await this.photoResolution(next)];
      await this.#writeProject(id, next);
      if (after !== before) await this.#recheck(id, after);
      return next;
    });
  }

  /** Deletes the project folder; false when there was none. */
  /** Removes the project's folder; also a broken one (no readable project.json), as projects.list shows it. */
  async delete(id: string): Promise<boolean> {
    return this.withLock(id, async () => {
      const dir = this.dir(id);
      if (!(await this.hasFolder(id))) return false;
      await rm(dir, { recursive: true, force: true });
      return true;
    });
  }

  // ---------------------------------------------------------------------------------------------
  // Photos

  async photos(id: string): Promise<Photo[]> {
    return (await this.#readIndex(id)).map((p) => publicPhoto(id, p));
  }

  /** Absolute paths of the photos that training can use (status ok or warning). */
  async usablePhotoFiles(id: string): Promise<string[]> {
    return (await this.#readIndex(id)).filter((p) => p.status !== 'rejected').map((p) => join(this.dir(id), p.file));
  }

  /** The photo's file, after the path checks; not_found when the index has no such photo. */
  async photoPath(id: string, photoId: string): Promise<string> {
    const path = await safeResolve(join(this.dir(id), 'photos'), photoId, 'photoId');
    const entry = (await this.#readIndex(id)).find((p) => p.id === photoId);
    if (!entry) throw new ApiError('not_found', `project '${id}' has no photo '${photoId}'`);
    return path;
  }

  /**
   * Copies photos in (originals untouched, under safe unique names) and checks each at the
   * project's resolution.
   */
  async addPhotos(id: string, sources: readonly PhotoSource[]): Promise<Photo[]> {
    return this.withLock(id, async () => {
      const resolution = await this.photoResolution((await this.#read(id)).project);
      const loaded = sources;
      const dir = this.dir(id);
      const index = await this.#readIndex(id);
      const taken = new Set([
        ...index.map((p) => p.id),
        ...(await readdir(join(dir, 'photos')).catch(() => [] as string[])),
      ]);
      const added: PhotoEntry[] = [];
      for (const src of loaded) {
        const name = uniqueName(safeFileName(src.name, 'photo'), taken);
        taken.add(name);
        const file = join(dir, 'photos', name);
        await atomicWriteFile(file, src.data);
        const sha256 = createHash('sha256').update(src.data).digest('hex');
        const { check } = await checkPhoto(file, resolution);
        const dup = [...index, ...added].find((p) => p.sha256 === sha256);
        const entry: PhotoEntry = {
          id: name,
          file: `photos/${name}`,
          originalName: basename(src.name.replace(/\\/g, '/')),
          status: dup ? 'rejected' : check.status,
          reason: dup ? duplicateReason(dup) : (check.reason ?? null),
          width: check.width ?? null,
          height: check.height ?? null,
          bytes: src.data.byteLength,
          sha256,
          addedAt: now(),
        };
        added.push(entry);
      }
      await this.#writeIndex(id, [...index, ...added]);
      return added.map((p) => publicPhoto(id, p));
    });
  }

  async removePhoto(id: string, photoId: string): Promise<boolean> {
    return this.withLock(id, async () => {
      const path = await safeResolve(join(this.dir(id), 'photos'), photoId, 'photoId');
      const index = await this.#readIndex(id);
      if (!index.some((p) => p.id === photoId))
        throw new ApiError('not_found', `project '${id}' has no photo '${photoId}'`);
      await this.#writeIndex(
        id,
        index.filter((p) => p.id !== photoId),
      );
      await unlink(path).catch(() => {});
      return true;
    });
  }

  /** Re-checks every photo (the resolution changed). Runs inside the project's lock. */
  async #recheck(id: string, resolution: number): Promise<void> {
    const index = await this.#readIndex(id);
    const seen = new Map<string, PhotoEntry>();
    const next: PhotoEntry[] = [];
    for (const p of index) {
      const dup = seen.get(p.sha256);
      if (dup) {
        next.push({ ...p, status: 'rejected', reason: duplicateReason(dup) });
        continue;
      }
      seen.set(p.sha256, p);
      const { check } = await checkPhoto(join(this.dir(id), p.file), resolution);
      next.push({
        ...p,
        status: check.status,
        reason: check.reason ?? null,
        width: check.width ?? p.width,
        height: check.height ?? p.height,
      });
    }
    await this.#writeIndex(id, next);
  }

  async #readIndex(id: string): Promise<PhotoEntry[]> {
    const file = join(this.dir(id), PHOTO_INDEX);
    if (!(await this.exists(id))) throw new ApiError('not_found', `no project '${id}'`);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      return []; // a project made before the index existed
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new ApiError('internal', `${file}: not valid JSON (${(err as Error).message})`);
    }
    const version = (raw as { schemaVersion?: unknown })?.schemaVersion;
    if (typeof version === 'number' && version > 1)
      throw new ApiError(
        'conflict',
        `${file}: made by a newer SingLoRA Studio (schema ${version}); update the app to open it`,
      );
    const r = photoIndexSchema.safeParse(raw);
    if (!r.success)
      throw new ApiError(
        'internal',
        `${file}: not a valid photo index: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
      );
    return r.data.photos;
  }

  #writeIndex(id: string, photos: PhotoEntry[]): Promise<void> {
    return atomicWriteJson(
      join(this.dir(id), PHOTO_INDEX),
      validState(photoIndexSchema, { schemaVersion: 1, photos }, PHOTO_INDEX),
    );
  }

  // ---------------------------------------------------------------------------------------------
  // Runs

  /** Run folders that hold a run.json, oldest first (ids sort by time). */
  async runIds(id: string): Promise<string[]> {
    const names = await readdir(join(this.dir(id), 'runs')).catch(() => [] as string[]);
    return names
      .filter((n) => idSchema.safeParse(n).success && existsSync(join(this.dir(id), 'runs', n, 'run.json')))
      .sort();
  }

  /** Every folder in runs/ named like a run, with or without a readable run.json (training.runs lists both). */
  async runFolders(id: string): Promise<string[]> {
    const names = await readdir(join(this.dir(id), 'runs'), { withFileTypes: true }).catch(() => []);
    return names
      .filter((d) => d.isDirectory() && idSchema.safeParse(d.name).success)
      .map((d) => d.name)
      .sort();
  }

  /** Every project id in the root (valid folder names with a project.json). */
  async ids(): Promise<string[]> {
    const names = await readdir(this.root).catch(() => [] as string[]);
    return names.filter((n) => idSchema.safeParse(n).success && existsSync(join(this.root, n, PROJECT_FILE))).sort();
  }
}

/**
 * The subject owns the trigger token and class word; the settings mirror them. Then the whole new
 * state is checked against the contract's projectSchema, before anything is written: a request
 * that would make project.json unreadable is refused (invalid_params naming the fields) and the
 * file on disk stays as it was.
 */
export function validProject(p: Project, method: string): Project {
  const next = {
    ...p,
    settings: { ...p.settings, triggerToken: p.subject.triggerToken, classWord: p.subject.classWord },
  };
  return validState(projectSchema, next, method);
}

/** `value` parsed with `schema`, or invalid_params naming every bad field (the contract's style). */
export function validState<T>(schema: z.ZodType<T>, value: unknown, method: string): T {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const fields = issueFields(r.error.issues, '(value)');
  throw new ApiError(
    'invalid_params',
    `${method}: ${fields.map((f) => `${f.field}: ${f.message}`).join('; ')}`,
    fields,
  );
}

function publicPhoto(projectId: string, p: PhotoEntry): Photo {
  return {
    id: p.id,
    file: p.file,
    originalName: p.originalName,
    status: p.status,
    reason: p.reason,
    width: p.width,
    height: p.height,
    bytes: p.bytes,
    url: projectFileUrl(projectId, p.file),
  };
}

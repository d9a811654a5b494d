/**
 * Projects: the list, the open project, and edits to it (name, subject, base model). Other
 * services follow the open project through `onOpen` (called when a different project opens or the
 * open one closes); edits to the open project only replace `current`.
 */
import {
  api,
  type ApiClient,
  type BaseModelInfo,
  type Params,
  type Project,
  type ProjectSummary,
} from '../../src-main/api/contract.ts';
import type { ModelDefaults } from '../../src-main/api/schemas.ts';
import { check, fieldErrorsFromApi, type FieldErrors } from './forms.ts';
import type { Notifier } from './notifier.svelte.ts';
import { triggerTokenProblem } from './subject.svelte.ts';

const LAST_PROJECT_KEY = 'singlora.lastProject';

export type NewProject = Params<'projects.create'>;
export type ProjectPatch = Omit<Params<'projects.update'>, 'projectId'>;

/** The base model a project trains and generates with, as the page shows it. */
export interface ProjectModel {
  path: string;
  name: string;
  /** Its native size (64 for the tiny demo model, 512 for SD 1.5); null when unknown. */
  native: number | null;
  /** The server's default (the project names none). */
  isDefault: boolean;
  /** The settings it recommends (its singlora-defaults.json); null: none. */
  defaults: ModelDefaults | null;
}

export class ProjectsService {
  list = $state<ProjectSummary[]>([]);
  current = $state<Project | null>(null);
  loading = $state(false);
  /** Base models found on the engine machine (`models.bases`). */
  bases = $state<BaseModelInfo[]>([]);
  /** The open project's base model: its own, else the server's default; null when it has none. */
  model = $derived.by((): ProjectModel | null => {
    const p = this.current;
    if (!p) return null;
    if (p.baseModel) {
      const found = this.bases.find((b) => b.path === p.baseModel);
      return {
        path: p.baseModel,
        name: found?.name ?? p.baseModel.split(/[\\/]/).filter(Boolean).pop() ?? p.baseModel,
        native: found?.native ?? null,
        isDefault: false,
        defaults: found?.defaults ?? null,
      };
    }
    const def = this.bases.find((b) => b.isDefault);
    return def
      ? { path: def.path, name: def.name, native: def.native, isDefault: true, defaults: def.defaults ?? null }
      : null;
  });
  readonly #openListeners = new Set<(p: Project | null) => void>();
  /** Counts opens and creates: a late answer to an older open, or the start-up restore, yields to a newer one. */
  #opened = 0;
  readonly #modelListeners = new Set<() => void>();

  constructor(
    private readonly api: ApiClient,
    private readonly notify: Notifier,
    private readonly storage: Pick<Storage, 'getItem' | 'setItem' | 'removeItem'> | null = null,
    /** The desktop app: a native file dialog picks model paths (`desktop.pickBaseModel`). */
    readonly canPickFiles = false,
  ) {}

  /** The desktop's file dialog for a model folder or .safetensors file; null when cancelled or unavailable. */
  async pickBaseModel(kind: 'folder' | 'file'): Promise<string | null> {
    if (!this.canPickFiles) return null;
    const r = await this.notify.guard('Choose a model', () => this.api['desktop.pickBaseModel']({ kind }));
    return r?.path ?? null;
  }

  onOpen(fn: (p: Project | null) => void): () => void {
    this.#openListeners.add(fn);
    return () => this.#openListeners.delete(fn);
  }

  /** Called after the open project's base model changed (photos are re-checked at its size). */
  onModelChange(fn: () => void): () => void {
    this.#modelListeners.add(fn);
    return () => this.#modelListeners.delete(fn);
  }

  /** Refreshes the base models the engine machine has. */
  async loadBases(): Promise<void> {
    const b = await this.notify.guard('List base models', () => this.api['models.bases']({}));
    if (b) this.bases = b;
  }

  /**
   * Loads the list and reopens the last project (or the most recently updated one), unless the
   * user opened or created one while the list loaded (the select works as soon as it has options).
   */
  async start(): Promise<void> {
    const before = this.#opened;
    await Promise.all([this.refresh(), this.loadBases()]);
    if (this.#opened !== before) return;
    const last = this.storage?.getItem(LAST_PROJECT_KEY);
    const pick =
      this.list.find((p) => p.id === last) ?? [...this.list].sort((a, b) => b.updatedAt.localeCompare(a.updatedAt))[0];
    if (pick) await this.open(pick.id);
  }

  async refresh(): Promise<void> {
    this.loading = true;
    try {
      this.list = (await this.notify.guard('List projects', () => this.api['projects.list']({}))) ?? this.list;
    } finally {
      this.loading = false;
    }
  }

  /** Keeps the list's photo and run counts in step with what the Subject and Train screens loaded. */
  setCounts(projectId: string, counts: Partial<Pick<ProjectSummary, 'photos' | 'runs'>>): void {
    const i = this.list.findIndex((s) => s.id === projectId);
    if (i !== -1) this.list[i] = { ...this.list[i], ...counts };
  }

  /** Opens a project; of several opens in flight, the last one asked for wins, whatever answers last. */
  async open(projectId: string): Promise<void> {
    const ticket = ++this.#opened;
    const p = await this.notify.guard('Open project', () => this.api['projects.open']({ projectId }));
    if (p && ticket === this.#opened) this.#setCurrent(p);
  }

  /** Creates and opens a project; returns field errors, or null on success. */
  async create(input: NewProject): Promise<FieldErrors | null> {
    const c = check(api['projects.create'].params, input);
    const token = input.triggerToken === undefined ? null : triggerTokenProblem(input.triggerToken);
    if (!c.ok || token) return { ...(c.ok ? {} : c.errors), ...(token ? { triggerToken: token } : {}) };
    try {
      const p = await this.api['projects.create'](input);
      this.#opened++; // an open still in flight must not replace the new project
      this.#setCurrent(p);
      await Promise.all([this.refresh(), this.loadBases()]);
      return null;
    } catch (err) {
      const fields = fieldErrorsFromApi(err);
      if (fields) return fields;
      this.notify.error('Create project', err);
      return { '(form)': 'Could not create the project (see the message).' };
    }
  }

  async rename(projectId: string, name: string): Promise<FieldErrors | null> {
    return this.#update('Rename project', { projectId, name });
  }

  /** Saves a change to the open project; returns field errors (keys as in `patch`), or null. */
  async update(patch: ProjectPatch): Promise<FieldErrors | null> {
    if (!this.current) return { '(form)': 'Open a project first.' };
    return this.#update('Save project', { projectId: this.current.id, ...patch });
  }

  async remove(projectId: string): Promise<boolean> {
    const r = await this.notify.guard('Delete project', () => this.api['projects.delete']({ projectId }));
    if (!r) return false;
    if (this.current?.id === projectId) this.#setCurrent(null);
    await this.refresh();
    // Open what is left (the newest) rather than leaving the picker on "Choose a project…".
    const next = [...this.list].sort((a, b) => b.updatedAt.localeCompare(a.updatedAt))[0];
    if (next && !this.current) await this.open(next.id);
    return r.deleted;
  }

  /** Points the open project at a base model (diffusers folder or .safetensors); returns an error text or null. */
  async setBaseModel(path: string): Promise<string | null> {
    if (!this.current) return 'Open a project first.';
    const trimmed = path.trim();
    if (!trimmed) return 'Enter the path of a diffusers folder or a .safetensors file.';
    const projectId = this.current.id;
    try {
      const r = await this.api['models.setBase']({ projectId, path: trimmed });
      this.notify.info(`Base model: ${r.name} (${r.format})`, 'success');
      const p = await this.api['projects.open']({ projectId });
      if (this.current?.id === projectId) this.current = p;
      await this.loadBases();
      for (const fn of this.#modelListeners) fn();
      return null;
    } catch (err) {
      this.notify.error('Set base model', err);
      return err instanceof Error ? err.message : String(err);
    }
  }

  async #update(what: string, params: Params<'projects.update'>): Promise<FieldErrors | null> {
    const c = check(api['projects.update'].params, params);
    if (!c.ok) return c.errors;
    try {
      const p = await this.api['projects.update'](params);
      if (this.current?.id === p.id) this.current = p;
      const i = this.list.findIndex((s) => s.id === p.id);
      if (i !== -1) this.list[i] = { ...this.list[i], name: p.name, subject: p.subject, updatedAt: p.updatedAt };
      return null;
    } catch (err) {
      const fields = fieldErrorsFromApi(err);
      if (fields) return fields;
      this.notify.error(what, err);
      return { '(form)': 'Not saved (see the message).' };
    }
  }

  #setCurrent(p: Project | null): void {
    const changed = this.current?.id !== p?.id;
    this.current = p;
    if (p) this.storage?.setItem(LAST_PROJECT_KEY, p.id);
    else this.storage?.removeItem(LAST_PROJECT_KEY);
    if (changed) for (const fn of this.#openListeners) fn(p);
  }
}

import { existsSync } from 'node:fs';
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { projectSchema } from '../../src-main/api/contract.ts';
import { migrateProject, ProjectStore, slugify } from '../../src-main/service/projects.ts';
import { apiError, shapePng, tempDir } from './helpers.ts';

let root: string;
let cleanup: () => Promise<void>;
let store: ProjectStore;

beforeEach(async () => {
  const t = await tempDir();
  root = t.dir;
  cleanup = t.cleanup;
  store = new ProjectStore(join(root, 'projects'));
});
afterEach(() => cleanup());

const newProject = (name = 'My Dog') => store.create({ name, classWord: 'dog', triggerToken: 'zwx', type: 'live' });

describe('projects on disk', () => {
  it('creates the folder layout with a valid project.json and a slug id', async () => {
    const p = await newProject('Rex the Dög!');
    expect(p.id).toMatch(/^rex-the-dog-[0-9a-f]{6}$/);
    const dir = store.dir(p.id);
    for (const f of ['photos', 'runs', 'adapters', 'images', 'photos.json', 'project.json'])
      expect(existsSync(join(dir, f)), f).toBe(true);
    const onDisk = projectSchema.parse(JSON.parse(await readFile(join(dir, 'project.json'), 'utf8')));
    expect(onDisk).toEqual(p);
    expect(p.settings.triggerToken).toBe('zwx');
    expect(p.settings.classWord).toBe('dog');
    expect(slugify('  ')).toBe('project');
    // Two projects of the same name get different ids.
    expect((await newProject('Rex the Dög!')).id).not.toBe(p.id);
  });

  it('lists, updates (partially) and deletes', async () => {
    const a = await newProject('A');
    await newProject('B');
    expect((await store.list()).map((s) => s.name).sort()).toEqual(['A', 'B']);
    const u1 = await store.update(a.id, { settings: { steps: 42, rank: 4 } });
    const u2 = await store.update(a.id, { settings: { learningRate: 5e-5 } });
    expect([u2.settings.steps, u2.settings.rank, u2.settings.learningRate]).toEqual([42, 4, 5e-5]);
    expect(u1.updatedAt <= u2.updatedAt).toBe(true);
    // The subject owns the trigger token; a settings patch of it moves the subject too.
    const u3 = await store.update(a.id, { settings: { triggerToken: 'ohwx' } });
    expect([u3.subject.triggerToken, u3.settings.triggerToken]).toEqual(['ohwx', 'ohwx']);
    const u4 = await store.update(a.id, { subject: { classWord: 'cat' } });
    expect([u4.subject.classWord, u4.settings.classWord]).toEqual(['cat', 'cat']);
    const bad = await apiError(store.update(a.id, { settings: { steps: 0 } }));
    expect(bad.code).toBe('invalid_params');
    expect(bad.message).toContain('settings.steps');
    expect(await store.delete(a.id)).toBe(true);
    expect(await store.delete(a.id)).toBe(false);
    expect((await apiError(store.open(a.id))).code).toBe('not_found');
  });

  it('migrates an older project.json and writes it back; refuses a newer one', async () => {
    const p = await newProject();
    const file = join(store.dir(p.id), 'project.json');
    const { schemaVersion: _drop, ...v0 } = p;
    await writeFile(file, JSON.stringify(v0));
    const opened = await store.open(p.id);
    expect(opened.schemaVersion).toBe(1);
    expect(JSON.parse(await readFile(file, 'utf8')).schemaVersion).toBe(1);

    await writeFile(file, JSON.stringify({ ...p, schemaVersion: 2 }));
    const e = await apiError(store.open(p.id));
    expect(e.code).toBe('conflict');
    expect(e.message).toMatch(/newer SingLoRA Studio \(project schema 2/);
    expect(e.message).toContain(file);

    await writeFile(file, '{ not json');
    expect((await apiError(store.open(p.id))).message).toContain('not valid JSON');
  });

  it('chains migrations and names a missing step', () => {
    const table = [
      { to: 1, up: (p: Record<string, unknown>) => ({ ...p, a: 1 }) },
      { to: 2, up: (p: Record<string, unknown>) => ({ ...p, b: (p.a as number) + 1 }) },
    ];
    expect(migrateProject({ x: 0 }, 'f', table, 2)).toEqual({ value: { x: 0, a: 1, b: 2, schemaVersion: 2 }, from: 0 });
    expect(migrateProject({ schemaVersion: 1, a: 5 }, 'f', table, 2).value).toEqual({ schemaVersion: 2, a: 5, b: 6 });
    expect(() => migrateProject({ schemaVersion: 0 }, 'f', [table[1]], 2)).toThrow(
      /no migration from project schema 0 to 1/,
    );
  });

  it('copies photos in under safe unique names, keeps the bytes, and checks each one', async () => {
    const p = await newProject();
    await store.update(p.id, { settings: { resolution: 64 } });
    const png = await shapePng(0);
    const other = await shapePng(1);
    const tiny = await shapePng(2, 16);
    const src = join(root, 'from disk.png');
    await writeFile(src, other);
    const added = await store.addPhotos(p.id, [
      { kind: 'bytes', name: '../../evil/../photo.png', data: png },
      { kind: 'bytes', name: 'photo.png', data: png },
      { kind: 'bytes', name: 'from disk.png', data: await readFile(src) },
      { kind: 'bytes', name: 'tiny.png', data: tiny },
      { kind: 'bytes', name: 'notes.png', data: Buffer.from('not an image') },
    ]);
    expect(added.map((x) => x.id)).toEqual(['photo.png', 'photo-2.png', 'from-disk.png', 'tiny.png', 'notes.png']);
    expect(added.map((x) => x.status)).toEqual(['ok', 'rejected', 'ok', 'rejected', 'rejected']);
    expect(added[1].reason).toBe('exact duplicate of photo.png, which is already in the project (used once)');
    expect(added[3].reason).toMatch(/too small: 16x16/);
    expect(added[4].reason).toMatch(/not a readable image/);
    expect(added[0]).toMatchObject({
      file: 'photos/photo.png',
      originalName: 'photo.png',
      width: 96,
      height: 96,
      bytes: png.length,
      url: `/files/${p.id}/photos/photo.png`,
    });
    expect(Buffer.compare(await readFile(join(store.dir(p.id), 'photos', 'from-disk.png')), other)).toBe(0);
    expect(await store.usablePhotoFiles(p.id)).toEqual([
      join(store.dir(p.id), 'photos', 'photo.png'),
      join(store.dir(p.id), 'photos', 'from-disk.png'),
    ]);
    expect((await store.photos(p.id)).length).toBe(5);

    // A larger resolution re-checks every photo: 96 px is below 128, so a warning.
    await store.update(p.id, { settings: { resolution: 128 } });
    const rechecked = await store.photos(p.id);
    expect(rechecked[0].status).toBe('warning');
    expect(rechecked[0].reason).toContain('upscaled');

    expect(await store.removePhoto(p.id, 'photo.png')).toBe(true);
    expect(existsSync(join(store.dir(p.id), 'photos', 'photo.png'))).toBe(false);
    expect((await apiError(store.removePhoto(p.id, 'photo.png'))).code).toBe('not_found');
    expect((await apiError(store.removePhoto(p.id, '../project.json'))).code).toBe('invalid_params');
    expect(existsSync(join(store.dir(p.id), 'project.json'))).toBe(true);
  });

  it("checks photos at the base model's native size when the resolution is left to the model", async () => {
    const asked: Array<string | null> = [];
    const native = new ProjectStore(join(root, 'native'), {
      nativeResolution: async (base) => {
        asked.push(base);
        return base === null ? 64 : base === 'unreadable' ? null : 512;
      },
    });
    const p = await native.create({ name: 'Ball', classWord: 'ball', triggerToken: 'zwx', type: 'object' });
    expect(p.settings.resolution).toBeNull();
    const [ok] = await native.addPhotos(p.id, [{ kind: 'bytes', name: 'ball.png', data: await shapePng(0) }]);
    expect(ok).toMatchObject({ status: 'ok', reason: null }); // 96 px at the default model's 64
    expect(asked).toEqual([null]);
    // Another base model (native 512): 96 px is now too small; an unreadable one falls back to 512.
    await native.update(p.id, { baseModel: '/models/sd15' });
    expect((await native.photos(p.id))[0]).toMatchObject({
      status: 'rejected',
      reason: expect.stringMatching(/too small: 96x96.*train at 512/),
    });
    await native.update(p.id, { baseModel: null });
    expect((await native.photos(p.id))[0].status).toBe('ok');
    await native.update(p.id, { baseModel: 'unreadable' });
    expect((await native.photos(p.id))[0].status).toBe('rejected');
    // An explicit resolution wins over the model's.
    await native.update(p.id, { settings: { resolution: 64 } });
    expect((await native.photos(p.id))[0].status).toBe('ok');
  });

  it('records a base model in the models folder relative to it, read back through another mount path', async () => {
    const share = join(root, 'share');
    const at = (mount: string) =>
      new ProjectStore(join(root, mount, 'projects'), { modelsDir: join(root, mount, 'models') });
    await mkdir(join(share, 'models/toy-sd'), { recursive: true });
    await mkdir(join(share, 'projects'), { recursive: true });
    for (const m of ['mnt-a', 'mnt-b']) await symlink(share, join(root, m), 'dir');
    const [a, b] = [at('mnt-a'), at('mnt-b')];
    const p = await a.create({ name: 'Ball', classWord: 'ball', triggerToken: 'zwx', type: 'object' });
    expect((await a.update(p.id, { baseModel: join(root, 'mnt-a/models/toy-sd') })).baseModel).toBe(
      join(root, 'mnt-a/models/toy-sd'),
    );
    const file = join(share, 'projects', p.id, 'project.json');
    expect(JSON.parse(await readFile(file, 'utf8')).baseModel).toBe('toy-sd');
    expect((await b.open(p.id)).baseModel).toBe(join(root, 'mnt-b/models/toy-sd'));
    // A model outside the models folder, or a project.json written before (absolute), stays as it is.
    await b.update(p.id, { baseModel: join(root, 'elsewhere/sd15') });
    expect(JSON.parse(await readFile(file, 'utf8')).baseModel).toBe(join(root, 'elsewhere/sd15'));
    expect((await a.open(p.id)).baseModel).toBe(join(root, 'elsewhere/sd15'));
  });

  it('serialises concurrent photo additions (no lost index entries)', async () => {
    const p = await newProject();
    await store.update(p.id, { settings: { resolution: 64 } });
    const pngs = await Promise.all([0, 1, 2, 3, 4, 5].map((k) => shapePng(k)));
    await Promise.all(pngs.map((data, k) => store.addPhotos(p.id, [{ kind: 'bytes', name: `p${k}.png`, data }])));
    expect((await store.photos(p.id)).map((x) => x.id).sort()).toEqual([
      'p0.png',
      'p1.png',
      'p2.png',
      'p3.png',
      'p4.png',
      'p5.png',
    ]);
  });
});

/**
 * The service starts a project from its base model's singlora-defaults.json: at creation (the
 * server's default model), when the base model changes, and in models.bases for the UI's hints;
 * a bad file is an invalid_params error naming the file and the field.
 */
import { cpSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Method, Params, Result } from '../../src-main/api/contract.ts';
import { readModelDefaults } from '../../src-main/engine/io/modelDefaults.ts';
import { TOY_MODEL_DIR } from '../../src-main/engine/toy/toyModel.ts';
import { Service } from '../../src-main/service/service.ts';
import { fakeEngine } from './fakeEngine.ts';
import { apiError, tempDir, TINY_MODEL } from './helpers.ts';

const { dir, cleanup } = await tempDir('singlora-model-defaults-');
const service = await Service.open({
  dataDir: join(dir, 'data'),
  modelsDir: join(dir, 'models'),
  defaultBaseModel: TOY_MODEL_DIR,
  log: () => {},
  spawnEngine: fakeEngine({}).spawn,
});
const call = <M extends Method>(m: M, p: Params<M>) => service.call(m, p) as Promise<Result<M>>;
afterAll(async () => {
  await service.close();
  await cleanup();
});

describe('model defaults in the service', () => {
  const toy = readModelDefaults(TOY_MODEL_DIR)!.training!;

  it("a new project on the default (toy) model starts from the toy model's training settings", async () => {
    const p = await call('projects.create', { name: 'Ball', triggerToken: 'zwx', classWord: 'ball' });
    expect(p.settings).toMatchObject({ ...toy, triggerToken: 'zwx', classWord: 'ball' });
    const bases = await call('models.bases', {});
    expect(bases.find((b) => b.path === TOY_MODEL_DIR)?.defaults?.training).toEqual(toy);
  });

  it('a model without the file keeps the schema defaults; a bad file is refused naming the file and the field', async () => {
    const p = await call('projects.create', { name: 'Dog', baseModel: TINY_MODEL });
    expect(p.settings.learningRate).toBe(1e-4);
    const bad = join(dir, 'bad-model');
    cpSync(TINY_MODEL, bad, { recursive: true });
    writeFileSync(join(bad, 'singlora-defaults.json'), JSON.stringify({ training: { rank: 0 } }));
    const e = await apiError(call('models.setBase', { projectId: p.id, path: bad }));
    expect(e.code).toBe('invalid_params');
    expect(e.message).toMatch(/^path: .*bad-model\/singlora-defaults\.json: training\.rank: /);
  });

  it("switching a project to a model with defaults brings that model's settings", async () => {
    const p = await call('projects.create', { name: 'Cup', baseModel: TINY_MODEL });
    await call('models.setBase', { projectId: p.id, path: TOY_MODEL_DIR });
    expect((await call('projects.open', { projectId: p.id })).settings).toMatchObject(toy);
  });
});

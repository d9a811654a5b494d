/**
 * The first hour in the app, on the service side (issue 16), on a fake engine: the base models a
 * new project can pick from, a base model named at creation, the evaluation model a run would use
 * before anything is started, and exports a browser can download.
 */
import { copyFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Method, Params, Result } from '../../src-main/api/contract.ts';
import { BUNDLED_TINY_DINO } from '../../src-main/engine/eval/modelRegistry.ts';
import { isToyModel, TOY_MODEL_DIR } from '../../src-main/engine/toy/toyModel.ts';
import { Service, type ServiceOptions } from '../../src-main/service/service.ts';
import { makeTinyModel, TINY_MODEL_DIR } from '../../scripts/make-tiny-model.ts';
import { fakeEngine, type FakeHandlers } from './fakeEngine.ts';
import { apiError, DINO_TINY, finished, shapePng, tempDir, TINY_MODEL } from './helpers.ts';
import { readRunManifest, writeRunManifest } from '../../src-main/engine/train/runFiles.ts';

let root: string;
let cleanup: () => Promise<void>;
const services: Service[] = [];
let n = 0;

const engine: FakeHandlers = {
  export: async (p) => {
    await writeFile(p.out, 'exported');
    return { format: p.format, path: p.out, tensors: 1 };
  },
};

async function open(opts: Partial<ServiceOptions> = {}) {
  const dir = join(root, `s${n++}`);
  const service = await Service.open({
    dataDir: join(dir, 'data'),
    modelsDir: join(dir, 'models'),
    hfCacheDir: join(dir, 'hub'),
    log: () => {},
    spawnEngine: fakeEngine(engine).spawn,
    ...opts,
  });
  services.push(service);
  return { dir, service, call: <M extends Method>(m: M, p: Params<M>) => service.call(m, p) as Promise<Result<M>> };
}

beforeAll(async () => {
  ({ dir: root, cleanup } = await tempDir('singlora-onboarding-'));
});
afterAll(async () => {
  for (const s of services) await s.close();
  await cleanup?.();
});

describe('models.bases', () => {
  it('finds base models in the models folder, the Hugging Face cache and projects, each with its native size', async () => {
    const { dir, call } = await open();
    const models = join(dir, 'models');
    await mkdir(join(models, 'dino'), { recursive: true });
    await writeFile(join(models, 'dino', 'model.onnx'), 'not a base model');
    await symlink(TINY_MODEL, join(models, 'tiny'), 'dir');
    await writeFile(join(models, 'notes.txt'), 'ignored');
    const snapshot = join(dir, 'hub', 'models--org--tiny-sd', 'snapshots', 'abc123');
    await mkdir(join(dir, 'hub', 'models--org--tiny-sd', 'snapshots'), { recursive: true });
    await symlink(TINY_MODEL, snapshot, 'dir');
    await mkdir(join(dir, 'hub', 'models--org--no-pipeline', 'snapshots', 'x'), { recursive: true });
    // An SDXL pipeline in the cache is not offered: this app trains SD 1.x.
    await mkdir(join(dir, 'hub', 'models--org--sdxl', 'snapshots', 'y'), { recursive: true });
    await writeFile(
      join(dir, 'hub', 'models--org--sdxl', 'snapshots', 'y', 'model_index.json'),
      JSON.stringify({
        _class_name: 'StableDiffusionXLPipeline',
        unet: ['diffusers', 'UNet2DConditionModel'],
        text_encoder_2: ['transformers', 'CLIPTextModelWithProjection'],
      }),
    );

    const bases = await call('models.bases', {});
    expect(bases.map((b) => [b.name, b.source, b.isDefault])).toEqual([
      ['tiny', 'models folder', false],
      ['org/tiny-sd', 'Hugging Face cache', false],
    ]);
    // The tiny fixture: sample_size 32 x VAE factor 2 = 64 px, read from its configs.
    expect(bases.map((b) => b.native)).toEqual([64, 64]);

    // A project's base model elsewhere shows as recent.
    const elsewhere = join(dir, 'elsewhere');
    await symlink(TINY_MODEL, elsewhere, 'dir');
    await call('projects.create', { name: 'Mug', baseModel: elsewhere });
    expect((await call('models.bases', {})).find((b) => b.path === elsewhere)).toMatchObject({
      source: 'recent',
      native: 64,
    });
  });

  it('a server open to the network lists its models folder only, and only what models.setBase accepts', async () => {
    const { dir, call } = await open({ hostPaths: 'deny' });
    await mkdir(join(dir, 'models', 'real'), { recursive: true });
    await copyFile(join(TINY_MODEL, 'model_index.json'), join(dir, 'models', 'real', 'model_index.json'));
    // A link whose real path leaves the models folder: setBase refuses it, so it is not offered
    // (issue 27 item 7; it used to be listed).
    await symlink(TINY_MODEL, join(dir, 'models', 'tiny'), 'dir');
    await mkdir(join(dir, 'hub', 'models--org--x', 'snapshots'), { recursive: true });
    await symlink(TINY_MODEL, join(dir, 'hub', 'models--org--x', 'snapshots', 'r'), 'dir');
    expect((await call('models.bases', {})).map((b) => [b.name, b.source])).toEqual([['real', 'models folder']]);
    const { id } = await call('projects.create', { name: 'Remote' });
    const refused = await apiError(call('models.setBase', { projectId: id, path: join(dir, 'models', 'tiny') }));
    expect(refused.message).toMatch(/only uses base models inside its models folder/);
  });

  it('the default base model is marked', async () => {
    const { call } = await open({ defaultBaseModel: TINY_MODEL });
    expect(await call('models.bases', {})).toEqual([
      { path: TINY_MODEL, name: 'model', source: 'server default', isDefault: true, native: 64, defaults: null },
    ]);
  });
});

describe('projects.create with a base model', () => {
  it('stores the checked path; a path that is not a model is refused naming the field, and nothing is created', async () => {
    const { dir, call } = await open();
    const p = await call('projects.create', { name: 'Ball', baseModel: TINY_MODEL });
    expect(p.baseModel).toBe(TINY_MODEL);
    expect((await call('projects.open', { projectId: p.id })).baseModel).toBe(TINY_MODEL);
    const e = await apiError(call('projects.create', { name: 'Bad', baseModel: join(dir, 'nothing-here') }));
    expect(e.code).toBe('invalid_params');
    expect(e.message).toMatch(/^baseModel: base model not found: .*nothing-here does not exist/);
    expect((await call('projects.list', {})).map((x) => x.name)).toEqual(['Ball']);
    expect((await call('projects.create', { name: 'None' })).baseModel).toBeNull();
  });
});

describe('evaluation.check', () => {
  it('says before any click that DINO is missing and where it goes; a DINO file given to the service makes it ready', async () => {
    const { dir, call } = await open({ defaultBaseModel: TINY_MODEL });
    const p = await call('projects.create', { name: 'Ball' });
    const r = await call('evaluation.check', { projectId: p.id });
    expect(r).toMatchObject({ ready: false, dino: null, bundled: false });
    expect(r.message).toContain(
      `DINO model not found: place model.onnx at ${join(dir, 'models', 'dino', 'model.onnx')}`,
    );
    expect(r.message).toMatch(/Models & Settings/);

    const withDino = await open({ defaultBaseModel: TINY_MODEL, dinoModel: DINO_TINY });
    const q = await withDino.call('projects.create', { name: 'Ball' });
    expect(await withDino.call('evaluation.check', { projectId: q.id })).toEqual({
      ready: true,
      dino: DINO_TINY,
      bundled: false,
      metric: 'dino',
      message: null,
    });
  });

  it('the tiny demo model evaluates offline with the bundled tiny DINO; no other model does', async () => {
    await makeTinyModel();
    const { dir, call } = await open();
    await mkdir(join(dir, 'models'), { recursive: true });
    await symlink(TINY_MODEL_DIR, join(dir, 'models', 'tiny-sd'), 'dir');
    const demo = await call('projects.create', { name: 'Demo', baseModel: join(dir, 'models', 'tiny-sd') });
    expect(await call('evaluation.check', { projectId: demo.id })).toMatchObject({
      ready: true,
      dino: BUNDLED_TINY_DINO,
      bundled: true,
    });
    // The test fixture is a tiny model too, but not the demo one: the bundled DINO means nothing for it.
    const other = await call('projects.create', { name: 'Other', baseModel: TINY_MODEL });
    expect(await call('evaluation.check', { projectId: other.id })).toMatchObject({ ready: false, dino: null });
  });

  it("the toy model evaluates without DINO, with the toy world's score; a DINO, when there is one, wins", async () => {
    const { dir, call } = await open();
    const toy = await call('projects.create', { name: 'Toy', baseModel: TOY_MODEL_DIR });
    const check = await call('evaluation.check', { projectId: toy.id });
    expect(check).toMatchObject({ ready: true, dino: null, bundled: false, metric: 'toy' });
    expect(check.message).toMatch(/toy world's own subject fidelity/);
    // A copy is recognised by its model_index.json, not its path; a model that merely sits in a folder named toy-sd is not.
    const impostor = join(dir, 'models', 'toy-sd');
    await mkdir(impostor, { recursive: true });
    await writeFile(
      join(impostor, 'model_index.json'),
      JSON.stringify({ _class_name: 'StableDiffusionPipeline', _name_or_path: 'someone/else' }),
    );
    expect(isToyModel(impostor)).toBe(false);
    expect(isToyModel(TOY_MODEL_DIR)).toBe(true);

    const withDino = await open({ dinoModel: DINO_TINY });
    const q = await withDino.call('projects.create', { name: 'Toy', baseModel: TOY_MODEL_DIR });
    expect(await withDino.call('evaluation.check', { projectId: q.id })).toMatchObject({
      ready: true,
      dino: DINO_TINY,
      metric: 'dino',
    });
  });

  it('evaluation.start on a toy-model run asks the engine for the toy scorer, and for DINO once one is installed', async () => {
    const handlers: FakeHandlers = {
      // A training that leaves one checkpoint in run.json, as the real trainer does.
      train: async (p) => {
        const m = await readRunManifest(p.runDir);
        await writeRunManifest(p.runDir, {
          ...m,
          status: 'completed',
          step: 2,
          checkpoints: [
            {
              step: 2,
              dir: 'checkpoints/step-000002',
              adapter: 'checkpoints/step-000002/adapter.safetensors',
              createdAt: new Date().toISOString(),
              loss: 0.1,
            },
          ],
        });
        return { status: 'completed', step: 2, error: null, fixedLoss: null };
      },
      evaluate: async () => ({
        createdAt: new Date().toISOString(),
        metric: 'toy',
        prompts: ['p'],
        imagesPerPrompt: 1,
        seeds: [1],
        baseline: { step: null, dino: 0.4, clipT: null, images: 1 },
        rows: [{ step: 2, dino: 0.5, clipT: null, images: 1 }],
        best: 2,
        rule: 'r',
        chosen: null,
      }),
    };
    for (const dinoModel of [undefined, DINO_TINY]) {
      const fake = fakeEngine(handlers);
      const dir = join(root, `s${n++}`);
      const service = await Service.open({
        dataDir: join(dir, 'data'),
        modelsDir: join(dir, 'models'),
        hfCacheDir: join(dir, 'hub'),
        log: () => {},
        spawnEngine: fake.spawn,
        dinoModel,
      });
      services.push(service);
      const call = <M extends Method>(m: M, p: Params<M>) => service.call(m, p) as Promise<Result<M>>;
      const project = await call('projects.create', { name: 'Toy', baseModel: TOY_MODEL_DIR });
      await call('photos.add', {
        projectId: project.id,
        files: await Promise.all(
          [0, 1, 2].map(async (k) => ({ name: `p${k}.png`, dataBase64: (await shapePng(k)).toString('base64') })),
        ),
      });
      const { runId, jobId } = await call('training.start', { projectId: project.id, settings: { steps: 2 } });
      await finished(service, jobId);
      const ev = await call('evaluation.start', { projectId: project.id, runId });
      await finished(service, ev.jobId);
      const request = fake.requests.find((r) => r.kind === 'evaluate')?.params as {
        scorer?: string;
        dinoModel?: string;
      };
      expect(request, dinoModel ?? 'no DINO').toMatchObject(dinoModel ? { dinoModel } : { scorer: 'toy' });
      expect(dinoModel ? request.scorer : request.dinoModel).toBeUndefined();
    }
  });
});

describe('adapters.export: Save to', () => {
  it('a bare file name goes into adapters/ (with .safetensors added when it has no extension); the result has a URL', async () => {
    const { service, call } = await open({ defaultBaseModel: TINY_MODEL });
    const p = await call('projects.create', { name: 'Mug' });
    await writeFile(join(service.store.dir(p.id), 'adapters', 'a.safetensors'), 'adapter');
    for (const [outPath, rel] of [
      ['my-mug.safetensors', 'adapters/my-mug.safetensors'],
      ['my-mug-2', 'adapters/my-mug-2.safetensors'],
      ['adapters/sub.safetensors', 'adapters/sub.safetensors'],
    ]) {
      const { jobId } = await call('adapters.export', {
        projectId: p.id,
        adapter: { file: 'adapters/a.safetensors' },
        format: 'kohya',
        outPath,
      });
      const job = await finished(service, jobId);
      expect(job.status, job.error ?? '').toBe('done');
      expect(job.result).toEqual({ path: rel, url: `/files/${p.id}/${rel}` });
    }
    // Still refused: outside adapters/, or the wrong extension, with the field named.
    expect(
      (
        await apiError(
          call('adapters.export', {
            projectId: p.id,
            adapter: { file: 'adapters/a.safetensors' },
            format: 'kohya',
            outPath: 'photos/x.safetensors',
          }),
        )
      ).message,
    ).toMatch(/^outPath: 'photos\/x.safetensors' must be inside the project's adapters\/ folder/);
    expect(
      (
        await apiError(
          call('adapters.export', {
            projectId: p.id,
            adapter: { file: 'adapters/a.safetensors' },
            format: 'kohya',
            outPath: 'x.txt',
          }),
        )
      ).message,
    ).toMatch(/^outPath: 'adapters\/x.txt' must end in .safetensors/);
  });
});

describe('models.download offline', () => {
  it('a download that cannot connect fails with words and the manual fix, not a raw socket error', async () => {
    const { dir, service, call } = await open({
      evalModels: [
        {
          id: 'dino',
          title: 'test DINO',
          purpose: 'test',
          required: true,
          files: [{ file: 'model.onnx', url: 'http://127.0.0.1:1/model.onnx', sha256: null, approxBytes: 10 }],
        },
      ],
    });
    const { jobId } = await call('models.download', { name: 'dino' });
    const job = await finished(service, jobId);
    expect(job.status).toBe('failed');
    expect(job.error).toBe(
      `cannot reach 127.0.0.1:1 (is this machine offline?). Download http://127.0.0.1:1/model.onnx on a machine with internet and place it at ${join(dir, 'models', 'dino', 'model.onnx')}, then press Check again.`,
    );
  }, 20_000);
});

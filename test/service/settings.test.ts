/**
 * The app's compute settings (settings.get / settings.set, `<dataDir>/settings.json`) and the
 * engine and provider the service passes to the engine for training and generation, on a fake
 * engine (fakeEngine.ts) that records every request.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Method, Params, Result } from '../../src-main/api/contract.ts';
import type { TrainRequest } from '../../src-main/service/protocol.ts';
import { Service } from '../../src-main/service/service.ts';
import { fakeEngine, type FakeHandlers } from './fakeEngine.ts';
import { apiError, finished, shapePng, tempDir, TINY_MODEL } from './helpers.ts';

let root: string;
let cleanup: () => Promise<void>;
const services: Service[] = [];
let n = 0;

const engine: FakeHandlers = {
  train: async () => ({ status: 'completed', step: 1, error: null, fixedLoss: null }),
  generate: async () => ({ files: [] }),
};

async function open(dataDir = join(root, `s${n++}`, 'data'), engineEnv?: NodeJS.ProcessEnv) {
  const fake = fakeEngine(engine);
  const service = await Service.open({
    dataDir,
    modelsDir: join(root, 'models'),
    defaultBaseModel: TINY_MODEL,
    log: () => {},
    spawnEngine: fake.spawn,
    engineEnv,
  });
  services.push(service);
  const call = <M extends Method>(m: M, p: Params<M>) => service.call(m, p) as Promise<Result<M>>;
  return { service, dataDir, requests: fake.requests, call };
}

async function projectWithPhotos(call: Awaited<ReturnType<typeof open>>['call']): Promise<string> {
  const p = await call('projects.create', { name: 'Dog' });
  const files = await Promise.all(
    [0, 1, 2].map(async (k) => ({ name: `p${k}.png`, dataBase64: (await shapePng(k)).toString('base64') })),
  );
  await call('photos.add', { projectId: p.id, files });
  return p.id;
}

beforeAll(async () => ({ dir: root, cleanup } = await tempDir()));
afterAll(async () => {
  for (const s of services) await s.close();
  await cleanup();
});

describe('settings: engine and provider', () => {
  it('defaults to onnx on auto, saves a choice and keeps it across restarts', async () => {
    const a = await open();
    expect(await a.call('settings.get', {})).toEqual({ engine: 'onnx', provider: 'auto' });
    expect(await a.call('settings.set', { provider: 'cuda' })).toEqual({ engine: 'onnx', provider: 'cuda' });
    expect(await a.call('settings.set', { engine: 'tfjs' })).toEqual({ engine: 'tfjs', provider: 'cuda' });
    await a.service.close();
    services.splice(services.indexOf(a.service), 1);
    const b = await open(a.dataDir);
    expect(await b.call('settings.get', {})).toEqual({ engine: 'tfjs', provider: 'cuda' });
  });

  it('refuses a bad value with an error naming the field, and keeps the saved settings', async () => {
    const { call } = await open();
    await call('settings.set', { provider: 'cpu' });
    const bad = await apiError(call('settings.set', { provider: 'metal' } as never));
    expect(bad.code).toBe('invalid_params');
    expect(bad.message).toMatch(/^settings\.set: provider: /);
    const engineErr = await apiError(call('settings.set', { engine: 'torch' } as never));
    expect(engineErr.message).toMatch(/^settings\.set: engine: /);
    const unknown = await apiError(call('settings.set', { device: 'gpu' } as never));
    expect(unknown.message).toMatch(/device/);
    expect(await call('settings.get', {})).toEqual({ engine: 'onnx', provider: 'cpu' });
  });

  it("passes the saved engine and provider to training, and a request's own over them", async () => {
    const { service, call, requests } = await open();
    const projectId = await projectWithPhotos(call);
    await call('settings.set', { engine: 'onnx', provider: 'webgpu' });
    const first = await call('training.start', { projectId, settings: { steps: 2 } });
    await finished(service, first.jobId);
    const second = await call('training.start', { projectId, provider: 'cpu' });
    await finished(service, second.jobId);
    const third = await call('training.start', { projectId, engine: 'tfjs' });
    await finished(service, third.jobId);
    const trains = requests.filter((r) => r.kind === 'train').map((r) => (r.params as TrainRequest).compute);
    expect(trains).toEqual([
      { engine: 'onnx', provider: 'webgpu' },
      { engine: 'onnx', provider: 'cpu' },
      { engine: 'tfjs', provider: 'webgpu' },
    ]);
  });

  it('passes them to generation', async () => {
    const { service, call, requests } = await open();
    const projectId = await projectWithPhotos(call);
    await call('settings.set', { provider: 'dml' });
    const settings = { prompt: 'a dog', steps: 2, width: 64, height: 64 };
    await finished(service, (await call('generation.start', { projectId, settings })).jobId);
    await finished(service, (await call('generation.start', { projectId, settings, provider: 'cpu' })).jobId);
    const gens = requests.filter((r) => r.kind === 'generate').map((r) => (r.params as { compute: unknown }).compute);
    expect(gens).toEqual([
      { engine: 'onnx', provider: 'dml' },
      { engine: 'onnx', provider: 'cpu' },
    ]);
  });

  it('where settings.json sets nothing, SINGLORA_ENGINE / SINGLORA_PROVIDER of the engine environment apply', async () => {
    const { call } = await open(undefined, { SINGLORA_PROVIDER: 'cpu' });
    expect(await call('settings.get', {})).toEqual({ engine: 'onnx', provider: 'cpu' });
    expect(await call('settings.set', { engine: 'tfjs' })).toEqual({ engine: 'tfjs', provider: 'cpu' });
    expect(await call('settings.set', { provider: 'webgpu' })).toEqual({ engine: 'tfjs', provider: 'webgpu' });
    const bad = await open(undefined, { SINGLORA_PROVIDER: 'metal' });
    expect((await apiError(bad.call('settings.get', {}))).message).toMatch(/^the environment: SINGLORA_PROVIDER: /);
  });

  it('a settings.json that is not valid fails the request naming the file and the field', async () => {
    const { dataDir, call, requests } = await open();
    const projectId = await projectWithPhotos(call);
    await writeFile(join(dataDir, 'settings.json'), JSON.stringify({ engine: 'onnx', provider: 'gpu' }));
    const err = await apiError(call('settings.get', {}));
    expect(err.message).toContain(join(dataDir, 'settings.json'));
    expect(err.message).toMatch(/provider: /);
    await apiError(call('training.start', { projectId }));
    expect(requests.filter((r) => r.kind === 'train')).toEqual([]);
    // settings.set repairs it.
    expect(await call('settings.set', { provider: 'cpu' })).toEqual({ engine: 'onnx', provider: 'cpu' });
  });
});

// @vitest-environment jsdom
import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import { describe, expect, test } from 'vitest';
import { ApiError, type Result } from '../../src-main/api/contract.ts';
import SettingsScreen from '../../src-renderer/screens/SettingsScreen.svelte';
import { startStudio, type Handlers } from './fakes.ts';
import * as fx from './fixtures.ts';

const models = [
  {
    name: 'dino-vits16',
    kind: 'onnx',
    present: false,
    path: '/m/dino/model.onnx',
    bytes: null,
    verified: null,
    hint: 'needed for evaluation',
  },
  {
    name: 'clip-vit-b32',
    kind: 'onnx',
    present: true,
    path: '/m/clip',
    bytes: 600_000_000,
    verified: true,
    hint: null,
  },
];

async function renderSettings(handlers: Handlers = {}) {
  const ctx = await startStudio({ 'models.list': () => models, ...handlers });
  const projects = ctx.studio.projects;
  render(SettingsScreen, {
    get system() {
      return ctx.studio.system;
    },
    get project() {
      return projects.current;
    },
    get model() {
      return projects.model;
    },
    get bases() {
      return projects.bases;
    },
    onSetBase: (p: string) => projects.setBaseModel(p),
  });
  return ctx;
}

describe('Models & Settings screen', () => {
  test('downloads a missing model with progress from job.updated', async () => {
    const { transport } = await renderSettings({ 'models.download': () => ({ jobId: 'd1' }) });
    const rows = screen.getAllByTestId('model-row');
    expect(within(rows[1]).queryByRole('button', { name: 'Download' })).toBeNull();
    await fireEvent.click(within(rows[0]).getByTestId('download-dino'));
    await waitFor(() => expect(transport.paramsOf('models.download')).toEqual([{ name: 'dino' }]));
    transport.emit(
      'job.updated',
      fx.job({
        id: 'd1',
        kind: 'download',
        status: 'running',
        progress: { done: 1024 * 1024, total: 4 * 1024 * 1024, label: 'dino' },
      }),
    );
    await waitFor(() =>
      expect(
        within(screen.getAllByTestId('model-row')[0]).getByRole('progressbar').getAttribute('aria-valuetext'),
      ).toBe('1.0 MB / 4.0 MB'),
    );
  });

  test('sets the base model path with models.setBase; an engine error shows beside the field', async () => {
    const { transport } = await renderSettings({
      'models.setBase': (p) => {
        if (p.path.endsWith('.ckpt'))
          throw new ApiError('invalid_params', 'pickle checkpoints (.ckpt) are refused: convert to .safetensors');
        return { name: 'sd15', format: 'single-file' };
      },
    });
    expect(screen.getByTestId('base-model').textContent).toBe('sd15');
    expect(screen.getByText(/the server default\), native size 512 × 512/)).toBeTruthy();
    expect((screen.getByTestId('base-model-path') as HTMLSelectElement).value).toBe('/models/sd15');
    await fireEvent.change(screen.getByTestId('base-model-path'), { target: { value: '(add)' } });
    await fireEvent.input(screen.getByTestId('base-model-path-path'), { target: { value: '/m/model.ckpt' } });
    await fireEvent.click(screen.getByTestId('set-base-model'));
    expect(
      await screen.findByText('pickle checkpoints (.ckpt) are refused: convert to .safetensors', {
        selector: '.error-text',
      }),
    ).toBeTruthy();

    await fireEvent.input(screen.getByTestId('base-model-path-path'), { target: { value: '/m/sd15.safetensors' } });
    await fireEvent.click(screen.getByTestId('set-base-model'));
    await waitFor(() =>
      expect(transport.paramsOf('models.setBase').at(-1)).toEqual({ projectId: 'p1', path: '/m/sd15.safetensors' }),
    );
  });

  test('after the base model changes, the photos are listed again (the service re-checked them at its size)', async () => {
    const { transport, studio } = await renderSettings({
      'models.setBase': () => ({ name: 'tiny', format: 'diffusers' }),
    });
    await waitFor(() => expect(transport.paramsOf('photos.list').length).toBe(1));
    expect(await studio.projects.setBaseModel('/m/tiny')).toBeNull();
    await waitFor(() => expect(transport.paramsOf('photos.list').length).toBe(2));
    expect(transport.paramsOf('models.bases').length).toBeGreaterThan(1); // and the models list (sizes) is fresh
  });

  test('a project without a base model and no server default says so (no "(default)"); base models are not listed as evaluation models', async () => {
    await renderSettings({
      'models.bases': () => [],
      'models.list': () => [
        {
          name: 'tiny-sd',
          kind: 'base',
          present: false,
          path: '/m/tiny-sd',
          bytes: null,
          verified: null,
          hint: 'no default',
        },
        ...models,
      ],
    });
    expect(screen.getByTestId('base-model').textContent).toMatch(/no base model yet, and the server has no default/);
    expect(screen.getAllByTestId('model-row').map((r) => r.textContent)).toEqual([
      expect.stringContaining('dino-vits16'),
      expect.stringContaining('clip-vit-b32'),
    ]);
  });

  test('a failed download\'s "press Check again" has its Check again beside it, which lists the models again', async () => {
    let list: Result<'models.list'> = models;
    const { transport } = await renderSettings({
      'models.list': () => list,
      'models.download': () => ({ jobId: 'd1' }),
    });
    await fireEvent.click(within(screen.getAllByTestId('model-row')[0]).getByTestId('download-dino'));
    await waitFor(() => expect(transport.paramsOf('models.download')).toHaveLength(1));
    const offline =
      'cannot reach example.org (is this machine offline?). Download https://example.org/model.onnx on a machine with internet and place it at /m/dino/model.onnx, then press Check again.';
    transport.emit('job.updated', fx.job({ id: 'd1', kind: 'download', status: 'failed', error: offline }));
    const error = await screen.findByTestId('download-error');
    expect(error.textContent).toBe(offline);
    const recheck = within(error.closest('tr')!).getByRole('button', { name: 'Check again' });
    expect(screen.getAllByRole('button', { name: 'Check again' })).toEqual([recheck]);

    list = [{ ...models[0], present: true, verified: true, bytes: 88_000_000 }, models[1]];
    const before = transport.paramsOf('models.list').length;
    await fireEvent.click(recheck);
    await waitFor(() => expect(transport.paramsOf('models.list').length).toBe(before + 1));
    await waitFor(() => expect(screen.queryByTestId('download-error')).toBeNull());
    expect(within(screen.getAllByTestId('model-row')[0]).getByText('installed')).toBeTruthy();
  });

  test('shows the engine and provider with what doctor found, and saves a change with settings.set', async () => {
    let saved: Result<'settings.get'> = { engine: 'onnx', provider: 'auto' };
    const { transport } = await renderSettings({
      'settings.get': () => saved,
      'settings.set': (p) => (saved = { ...saved, ...p }),
    });
    const engine = (await screen.findByTestId('compute-engine')) as HTMLSelectElement;
    const provider = screen.getByTestId('compute-provider') as HTMLSelectElement;
    expect(engine.value).toBe('onnx');
    expect(provider.value).toBe('auto');
    // Each provider says what doctor found (fx.doctor('tensorflow'): cpu and cuda start and train).
    const label = (v: string) => within(provider).getByRole('option', { name: new RegExp(`^${v} — `) }).textContent;
    expect(label('auto')).toBe('auto — a GPU provider that starts, else the CPU');
    expect(label('cuda')).toBe('cuda — starts, trains');
    expect(label('cpu')).toBe('cpu — starts, trains');
    expect(label('dml')).toBe('dml — not checked yet');
    const rows = screen
      .getAllByTestId('provider-row')
      .map((r) => [...r.querySelectorAll('td')].map((td) => td.textContent));
    expect(rows.map((r) => r.slice(0, 3))).toEqual([
      ['cpu', 'yes', 'yes'],
      ['cuda', 'yes', 'yes'],
    ]);
    expect(screen.getByTestId('compute-card').textContent).toMatch(/auto takes the first GPU provider that starts/);

    const save = screen.getByTestId('compute-save') as HTMLButtonElement;
    expect(save.disabled).toBe(true); // nothing changed yet
    await fireEvent.change(provider, { target: { value: 'cuda' } });
    await fireEvent.click(save);
    await waitFor(() => expect(transport.paramsOf('settings.set')).toEqual([{ engine: 'onnx', provider: 'cuda' }]));
    await waitFor(() => expect(save.disabled).toBe(true));
    expect(provider.value).toBe('cuda');
  });

  test('a provider that does not start says so; TensorFlow.js disables the provider; a refused save shows its error', async () => {
    const { transport } = await renderSettings({
      'system.doctor': () => fx.doctor('wasm'),
      'settings.set': () => {
        throw new ApiError('invalid_params', 'settings.set: provider: expected one of auto, cpu');
      },
    });
    const provider = (await screen.findByTestId('compute-provider')) as HTMLSelectElement;
    await waitFor(() =>
      expect(within(provider).getByRole('option', { name: /^cuda — / }).textContent).toBe('cuda — does not start here'),
    );
    const cuda = screen.getAllByTestId('provider-row')[1];
    expect([...cuda.querySelectorAll('td')].map((td) => td.textContent).slice(0, 3)).toEqual(['cuda', 'no', 'no']);
    await fireEvent.change(screen.getByTestId('compute-engine'), { target: { value: 'tfjs' } });
    expect(provider.disabled).toBe(true);
    await fireEvent.click(screen.getByTestId('compute-save'));
    expect(
      await screen.findByText('settings.set: provider: expected one of auto, cpu', { selector: '.error-text' }),
    ).toBeTruthy();
    expect(transport.paramsOf('settings.set')).toEqual([{ engine: 'tfjs', provider: 'auto' }]);
  });

  test('a server without settings.* says the choice is not offered, without an error toast', async () => {
    const { studio } = await renderSettings({
      'settings.get': () => {
        throw new ApiError('not_found', "unknown method 'settings.get'");
      },
    });
    expect(await screen.findByTestId('compute-unavailable')).toBeTruthy();
    expect(studio.notify.items).toEqual([]);
  });
});

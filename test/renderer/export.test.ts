// @vitest-environment jsdom
import { fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import { describe, expect, test } from 'vitest';
import { ApiError } from '../../src-main/api/contract.ts';
import { adapterOptions } from '../../src-renderer/lib/adapters.svelte.ts';
import ExportScreen from '../../src-renderer/screens/ExportScreen.svelte';
import { startStudio, type Handlers } from './fakes.ts';
import * as fx from './fixtures.ts';

async function renderExport(handlers: Handlers = {}) {
  const ctx = await startStudio({
    'training.runs': () => [fx.run({ id: 'r1', best: 600 })],
    'training.status': () => fx.manifest(),
    ...handlers,
  });
  await waitFor(() => expect(ctx.transport.paramsOf('training.runs').length).toBeGreaterThan(0));
  await new Promise((r) => setTimeout(r, 0)); // let the runs answer land
  render(ExportScreen, {
    exporting: ctx.studio.exporting,
    adapterOptions: adapterOptions(ctx.studio.training.runs, ctx.studio.adapters.files),
  });
  return ctx;
}

describe('Export screen', () => {
  test('sends the chosen adapter, format and location, and shows the resulting path', async () => {
    const { transport } = await renderExport({ 'adapters.export': () => ({ jobId: 'x1' }) });
    await fireEvent.change(screen.getByTestId('export-adapter'), { target: { value: 'run:r1' } });
    await fireEvent.change(screen.getByTestId('export-format'), { target: { value: 'merged-single-file' } });
    expect(screen.getByTestId('export-format-info').textContent).toMatch(/full SD 1.5 checkpoint/);
    await fireEvent.input(screen.getByTestId('export-path'), { target: { value: 'adapters/dog.safetensors' } });
    await fireEvent.click(screen.getByTestId('export-button'));

    await waitFor(() => expect(transport.paramsOf('adapters.export')).toHaveLength(1));
    expect(transport.paramsOf('adapters.export')[0]).toEqual({
      projectId: 'p1',
      adapter: { runId: 'r1', step: null },
      format: 'merged-single-file',
      outPath: 'adapters/dog.safetensors',
    });

    transport.emit(
      'job.updated',
      fx.job({ id: 'x1', kind: 'export', status: 'running', progress: { done: 1, total: 3, label: 'merging unet' } }),
    );
    await waitFor(() => expect(screen.getByTestId('export-progress').textContent).toContain('merging unet'));
    transport.emit(
      'job.updated',
      fx.job({
        id: 'x1',
        kind: 'export',
        status: 'done',
        progress: { done: 3, total: 3, label: 'adapters/dog.safetensors' },
        result: { path: 'adapters/dog.safetensors', url: '/files/p1/adapters/dog.safetensors' },
      }),
    );
    await waitFor(() => expect(screen.getByTestId('export-result-path').textContent).toBe('adapters/dog.safetensors'));
    // The file downloads from the URL the job gave (no token in it: the session cookie authorises it).
    const link = screen.getByTestId('export-download') as HTMLAnchorElement;
    expect(link.getAttribute('href')).toBe('/files/p1/adapters/dog.safetensors');
    expect(link.getAttribute('download')).toBe('dog.safetensors');
  });

  test('kohya is the default format; without a location the default folder is named', async () => {
    const { transport } = await renderExport({ 'adapters.export': () => ({ jobId: 'x2' }) });
    expect((screen.getByTestId('export-format') as HTMLSelectElement).value).toBe('kohya');
    await fireEvent.change(screen.getByTestId('export-adapter'), { target: { value: 'run:r1' } });
    await fireEvent.click(screen.getByTestId('export-button'));
    await waitFor(() =>
      expect(transport.paramsOf('adapters.export')).toEqual([
        { projectId: 'p1', adapter: { runId: 'r1', step: null }, format: 'kohya' },
      ]),
    );
    transport.emit('job.updated', fx.job({ id: 'x2', kind: 'export', status: 'done' }));
    await waitFor(() =>
      expect(screen.getByTestId('export-result-path').textContent).toBe("the project's adapters/ folder"),
    );
    expect(screen.queryByTestId('export-download')).toBeNull(); // no URL, no link
    expect(screen.queryByTestId('export-reveal')).toBeNull(); // a browser cannot open folders
  });

  test('in the desktop app the result has "Show in folder" (desktop.reveal with the written path)', async () => {
    const ctx = await startStudio(
      {
        'training.runs': () => [fx.run({ id: 'r1', best: 600 })],
        'training.status': () => fx.manifest(),
        'adapters.export': () => ({ jobId: 'x5' }),
        'desktop.reveal': () => ({ revealed: true }),
      },
      {},
      'electron',
    );
    await waitFor(() => expect(ctx.transport.paramsOf('training.runs').length).toBeGreaterThan(0));
    await new Promise((r) => setTimeout(r, 0));
    render(ExportScreen, {
      exporting: ctx.studio.exporting,
      adapterOptions: adapterOptions(ctx.studio.training.runs, ctx.studio.adapters.files),
    });
    await fireEvent.change(screen.getByTestId('export-adapter'), { target: { value: 'run:r1' } });
    await fireEvent.click(screen.getByTestId('export-button'));
    await waitFor(() => expect(ctx.transport.paramsOf('adapters.export')).toHaveLength(1));
    ctx.transport.emit(
      'job.updated',
      fx.job({
        id: 'x5',
        kind: 'export',
        status: 'done',
        result: { path: 'adapters/dog.safetensors', url: '/files/p1/adapters/dog.safetensors' },
      }),
    );
    await fireEvent.click(await screen.findByTestId('export-reveal'));
    await waitFor(() =>
      expect(ctx.transport.paramsOf('desktop.reveal')).toEqual([{ projectId: 'p1', file: 'adapters/dog.safetensors' }]),
    );
  });

  test('a merged diffusers folder downloads as one .tar', async () => {
    const { transport } = await renderExport({ 'adapters.export': () => ({ jobId: 'x4' }) });
    await fireEvent.change(screen.getByTestId('export-adapter'), { target: { value: 'run:r1' } });
    await fireEvent.change(screen.getByTestId('export-format'), { target: { value: 'merged-diffusers' } });
    expect(screen.getByTestId('export-format-info').textContent).toMatch(
      /VAE, text encoder, tokenizer and scheduler copied.*Downloads as one \.tar file/,
    );
    await fireEvent.click(screen.getByTestId('export-button'));
    await waitFor(() => expect(transport.paramsOf('adapters.export')).toHaveLength(1));
    transport.emit(
      'job.updated',
      fx.job({
        id: 'x4',
        kind: 'export',
        status: 'done',
        result: { path: 'adapters/p1-r1-merged-diffusers', url: '/files/p1/adapters/p1-r1-merged-diffusers.tar' },
      }),
    );
    const link = (await screen.findByTestId('export-download')) as HTMLAnchorElement;
    expect([link.getAttribute('href'), link.getAttribute('download'), link.textContent]).toEqual([
      '/files/p1/adapters/p1-r1-merged-diffusers.tar',
      'p1-r1-merged-diffusers.tar',
      'Download (.tar)',
    ]);
  });

  test('an export that finished before its call returned still shows its result', async () => {
    let transportRef: import('./fakes.ts').FakeTransport;
    const ctx = await renderExport({
      'adapters.export': () => {
        transportRef.emit(
          'job.updated',
          fx.job({ id: 'x3', kind: 'export', status: 'done', result: { path: 'adapters/a.safetensors' } }),
        );
        return { jobId: 'x3' };
      },
    });
    transportRef = ctx.transport;
    await fireEvent.change(screen.getByTestId('export-adapter'), { target: { value: 'run:r1' } });
    await fireEvent.click(screen.getByTestId('export-button'));
    await waitFor(() => expect(screen.getByTestId('export-result-path').textContent).toBe('adapters/a.safetensors'));
  });

  test('the adapter defaults to the newest run; with nothing to export it asks and sends nothing', async () => {
    await renderExport();
    expect((screen.getByTestId('export-adapter') as HTMLSelectElement).value).toBe('run:r1');
  });

  test('with no run or adapter file it asks for one and sends nothing', async () => {
    const { transport } = await renderExport({ 'training.runs': () => [], 'adapters.export': () => ({ jobId: 'x5' }) });
    await fireEvent.click(screen.getByTestId('export-button'));
    expect(await screen.findByText('Choose the adapter to export')).toBeTruthy();
    expect(transport.paramsOf('adapters.export')).toHaveLength(0);
  });

  test('a failed export job shows its error', async () => {
    const { transport } = await renderExport({ 'adapters.export': () => ({ jobId: 'x4' }) });
    await fireEvent.click(screen.getByTestId('export-button'));
    await waitFor(() => expect(transport.paramsOf('adapters.export')).toHaveLength(1));
    transport.emit('job.updated', fx.job({ id: 'x4', kind: 'export', status: 'failed', error: 'disk full' }));
    await waitFor(() => expect(screen.getByTestId('export-error').textContent).toBe('disk full'));
  });

  test('an export finished in one format loses its "Saved… Download" box when the format or adapter changes', async () => {
    const { transport } = await renderExport({ 'adapters.export': () => ({ jobId: 'x1' }) });
    await fireEvent.click(screen.getByTestId('export-button'));
    await waitFor(() => expect(transport.paramsOf('adapters.export')).toHaveLength(1));
    transport.emit(
      'job.updated',
      fx.job({
        id: 'x1',
        kind: 'export',
        status: 'done',
        result: {
          path: 'adapters/r1-step600-kohya.safetensors',
          url: '/files/p1/adapters/r1-step600-kohya.safetensors',
        },
      }),
    );
    await screen.findByTestId('export-download');
    await fireEvent.change(screen.getByTestId('export-format'), { target: { value: 'diffusers' } });
    expect(screen.queryByTestId('export-download')).toBeNull();
    expect(screen.queryByTestId('export-result-path')).toBeNull();
  });

  /** Exports to '../..', which the service refuses as it does (safePath.ts), and waits for the error. */
  async function exportToRefusedPath(): Promise<void> {
    await renderExport({
      'adapters.export': () => {
        throw new ApiError('invalid_params', "outPath: '../..' resolves outside its folder", [
          { field: 'outPath', message: 'outside the folder' },
        ]);
      },
    });
    await fireEvent.input(screen.getByTestId('export-path'), { target: { value: '../..' } });
    await fireEvent.click(screen.getByTestId('export-button'));
    await screen.findByText('outside the folder');
  }

  test("a refused save location shows one error, next to the field, in the app's words", async () => {
    await exportToRefusedPath();
    expect(screen.getAllByText(/outside/)).toHaveLength(1);
    expect(screen.queryByTestId('export-error')).toBeNull();
    expect(document.body.textContent).not.toContain('outPath');
    expect(screen.getByTestId('export-path').getAttribute('aria-invalid')).toBe('true');
  });

  test('a refused location stays while it is unchanged and goes once it is edited to a valid one', async () => {
    await exportToRefusedPath();
    await fireEvent.change(screen.getByTestId('export-format'), { target: { value: 'diffusers' } });
    expect(screen.getByText('outside the folder')).toBeTruthy();
    await fireEvent.input(screen.getByTestId('export-path'), { target: { value: 'dog.safetensors' } });
    await waitFor(() => expect(screen.queryByText('outside the folder')).toBeNull());
  });
});

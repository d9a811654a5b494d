// @vitest-environment jsdom
import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import { describe, expect, test } from 'vitest';
import { ApiError } from '../../src-main/api/contract.ts';
import type { RunEvent } from '../../src-main/api/contract.ts';
import TrainScreen from '../../src-renderer/screens/TrainScreen.svelte';
import { startStudio, type Handlers } from './fakes.ts';
import * as fx from './fixtures.ts';

async function renderTrain(handlers: Handlers = {}) {
  const ctx = await startStudio(handlers);
  render(TrainScreen, {
    training: ctx.studio.training,
    advice: ctx.studio.system.advice,
    model: ctx.studio.projects.model,
  });
  return ctx;
}

const trainEvent = (event: RunEvent, runId = 'r9') => ({ jobId: 'j9', projectId: 'p1', runId, event });

describe('Train screen', () => {
  test('sends the edited settings (with the subject words) to training.start', async () => {
    const { transport } = await renderTrain({ 'training.start': () => ({ jobId: 'j9', runId: 'r9' }) });
    await fireEvent.input(screen.getByTestId('setting-steps'), { target: { value: '1200' } });
    await fireEvent.input(screen.getByTestId('setting-rank'), { target: { value: '16' } });
    await fireEvent.change(screen.getByLabelText('Resolution'), { target: { value: '384' } });
    await fireEvent.click(screen.getByLabelText('Gradient checkpointing'));
    await fireEvent.click(screen.getByTestId('train-button'));

    await waitFor(() => expect(transport.paramsOf('training.start')).toHaveLength(1));
    const { projectId, settings } = transport.paramsOf('training.start')[0];
    expect(projectId).toBe('p1');
    expect(settings).toMatchObject({
      method: 'singlora',
      steps: 1200,
      rank: 16,
      resolution: 384,
      gradientCheckpointing: true,
      learningRate: 1e-4,
      triggerToken: 'sks',
      classWord: 'dog',
      crop: 'center', // the project's, chosen on Subject: Train has no crop field of its own
    });
    expect(screen.queryByLabelText('Crop')).toBeNull();
    expect(screen.getByTestId('crop-where').textContent).toContain('Subject screen');
  });

  test('renders step i/N, it/s and ETA from train.event, plus loss points and samples', async () => {
    const { transport } = await renderTrain({ 'training.start': () => ({ jobId: 'j9', runId: 'r9' }) });
    await fireEvent.click(screen.getByTestId('train-button'));
    await waitFor(() => expect(transport.paramsOf('training.start')).toHaveLength(1));

    transport.emit('train.event', trainEvent({ event: 'prepare', stage: 'loading model', detail: 'unet' }));
    await waitFor(() => expect(screen.getByTestId('train-stage').textContent).toBe('loading model: unet…'));

    transport.emit('train.event', trainEvent(fx.stepEvent(1, 800, { loss: 0.2, smoothed: 0.2 })));
    transport.emit(
      'train.event',
      trainEvent(fx.stepEvent(40, 800, { loss: 0.1234, smoothed: 0.15, its: 2.5, eta_s: 304 })),
    );
    await waitFor(() =>
      expect(screen.getByTestId('train-progress').textContent).toContain(
        'Step 40/800 · 2.50 it/s · ETA 5 min 04 s · loss 0.1234',
      ),
    );
    const bar = within(screen.getByTestId('train-progress')).getByRole('progressbar');
    expect(bar.getAttribute('aria-valuenow')).toBe('40');
    expect(bar.getAttribute('aria-valuemax')).toBe('800');
    expect(screen.getByTestId('loss-chart').dataset.points).toBe('2');
    expect(screen.queryByTestId('train-stage')).toBeNull();

    // The sample's URL is the service's, used as it is.
    transport.emit(
      'train.event',
      trainEvent({
        event: 'sample',
        step: 100,
        file: 'samples/step-000100-0.png',
        prompt: 'a photo of sks dog',
        url: '/files/p1/runs/r9/samples/step-000100-0.png',
      }),
    );
    await waitFor(() => expect(screen.getAllByTestId('sample-image')).toHaveLength(1));
    expect(screen.getByTestId('sample-image').getAttribute('src')).toBe('/files/p1/runs/r9/samples/step-000100-0.png');

    // Events of another project are not this screen's business.
    transport.emit('train.event', { ...trainEvent(fx.stepEvent(500, 800)), projectId: 'other' });
    await Promise.resolve();
    expect(screen.getByTestId('train-progress').textContent).toContain('Step 40/800');
  });

  test('invalid settings show field errors and nothing is sent', async () => {
    const { transport } = await renderTrain({ 'training.start': () => ({ jobId: 'j', runId: 'r' }) });
    await fireEvent.input(screen.getByTestId('setting-lr'), { target: { value: '' } });
    await fireEvent.input(screen.getByTestId('setting-rank'), { target: { value: '1000' } });
    await fireEvent.click(screen.getByTestId('train-button'));
    await waitFor(() => expect(screen.getByText('Enter a number')).toBeTruthy());
    expect(screen.getByText('Enter 256 or less')).toBeTruthy();
    expect(screen.getByTestId('setting-lr').getAttribute('aria-invalid')).toBe('true');
    expect(transport.paramsOf('training.start')).toHaveLength(0);
    // The first field in error takes the focus (it may be scrolled out of view).
    await waitFor(() => expect(document.activeElement).toBe(screen.getByTestId('setting-rank')));
  });

  test('errors say what to do, not what zod expected; one inside the closed Advanced section is opened and focused', async () => {
    const { transport } = await renderTrain({ 'training.start': () => ({ jobId: 'j', runId: 'r' }) });
    await fireEvent.input(screen.getByTestId('setting-steps'), { target: { value: '12.5' } });
    await fireEvent.click(screen.getByTestId('train-button'));
    await screen.findByText('Enter a whole number');
    await fireEvent.input(screen.getByTestId('setting-steps'), { target: { value: '0' } });
    await waitFor(() => expect(screen.getByText('Enter 1 or more')).toBeTruthy());
    await fireEvent.input(screen.getByTestId('setting-steps'), { target: { value: '100' } });
    await waitFor(() => expect(screen.queryByText('Enter 1 or more')).toBeNull());

    const details = screen.getByText('Advanced').closest('details')!;
    expect(details.open).toBe(false);
    await fireEvent.input(screen.getByLabelText('Alpha'), { target: { value: '0' } });
    await fireEvent.click(screen.getByTestId('train-button'));
    await screen.findByText('Enter a number above 0');
    expect(details.open).toBe(true);
    await waitFor(() => expect(document.activeElement).toBe(screen.getByLabelText('Alpha')));
    expect(document.body.textContent).not.toMatch(/Too small|Too big|Invalid input|expected/);
    expect(transport.paramsOf('training.start')).toHaveLength(0);
  });

  test("the engine's field errors land next to the fields", async () => {
    await renderTrain({
      'training.start': () => {
        throw new ApiError('invalid_params', 'training.start: settings.steps: too many', [
          { field: 'settings.steps', message: 'too many for this demo' },
        ]);
      },
    });
    await fireEvent.click(screen.getByTestId('train-button'));
    await waitFor(() => expect(screen.getByText('too many for this demo')).toBeTruthy());
    expect(screen.getByTestId('setting-steps').getAttribute('aria-describedby')).toBe('t-steps-error');
  });

  test('an out-of-memory failure suggests lower resolution, batch 1 and gradient checkpointing', async () => {
    const { transport } = await renderTrain({ 'training.start': () => ({ jobId: 'j9', runId: 'r9' }) });
    await fireEvent.click(screen.getByTestId('train-button'));
    await waitFor(() => expect(transport.paramsOf('training.start')).toHaveLength(1));
    transport.emit(
      'train.event',
      trainEvent({
        event: 'done',
        status: 'failed',
        step: 12,
        error: 'OOM when allocating tensor with shape [1,320,64,64]',
      }),
    );
    const err = await screen.findByTestId('train-error');
    expect(err.textContent).toContain('OOM when allocating tensor');
    expect(err.textContent).toMatch(/lower the resolution.*batch size 1.*gradient checkpointing/);
    expect(screen.getByTestId('run-status').textContent).toBe('failed');
  });

  test("a job that ends without the run's done event (its engine process died) clears the stage and shows the error", async () => {
    const { transport } = await renderTrain({ 'training.start': () => ({ jobId: 'j9', runId: 'r9' }) });
    await fireEvent.click(screen.getByTestId('train-button'));
    await waitFor(() => expect(transport.paramsOf('training.start')).toHaveLength(1));
    transport.emit('train.event', trainEvent({ event: 'prepare', stage: 'encode' }));
    await waitFor(() => expect(screen.getByTestId('train-stage').textContent).toBe('encode…'));
    transport.emit(
      'job.updated',
      fx.job({
        id: 'j9',
        kind: 'train',
        projectId: 'p1',
        runId: 'r9',
        status: 'failed',
        error: 'the engine process exited (code 134)',
      }),
    );
    const err = await screen.findByTestId('train-error');
    expect(err.textContent).toContain('the engine process exited (code 134)');
    expect(screen.queryByTestId('train-stage')).toBeNull();
    expect(screen.getByTestId('run-status').textContent).toBe('failed');
  });

  test('without a base model Train is disabled and says why; the native resolution names the model and its size', async () => {
    const none = await startStudio({ 'models.bases': () => [] });
    const { unmount } = render(TrainScreen, {
      training: none.studio.training,
      advice: null,
      model: none.studio.projects.model,
    });
    expect((screen.getByTestId('train-button') as HTMLButtonElement).disabled).toBe(true);
    expect(screen.getByTestId('train-blocked').textContent).toBe('Choose a base model first (above).');
    unmount();
    const tiny = await startStudio({
      'models.bases': () => [fx.base({ path: '/m/tiny-sd', name: 'tiny-sd', native: 64 })],
    });
    render(TrainScreen, { training: tiny.studio.training, advice: null, model: tiny.studio.projects.model });
    expect((screen.getByTestId('train-button') as HTMLButtonElement).disabled).toBe(false);
    expect(screen.queryByTestId('train-blocked')).toBeNull();
    // Short enough for the select's width; the hint names the model.
    expect(screen.getByRole('option', { name: 'Native: 64 × 64' })).toBeTruthy();
    expect(screen.getByText("Native is tiny-sd's own size; lower needs less memory")).toBeTruthy();
  });

  test('with the tfjs engine on the wasm or cpu backend it says training will be slow and how to fix it', async () => {
    const { studio } = await startStudio({
      'system.doctor': () => fx.doctor('wasm'),
      'settings.get': () => ({ engine: 'tfjs', provider: 'auto' }),
    });
    render(TrainScreen, { training: studio.training, advice: studio.system.advice });
    const notice = screen.getByTestId('backend-notice');
    expect(notice.textContent).toMatch(/No GPU found.*WebAssembly.*slow/);
    expect(notice.textContent).toMatch(/CUDA 11\.2 \+ cuDNN 8.*Vulkan, Metal or D3D12/);
  });

  test('with the onnx engine it speaks of providers: no GPU provider that trains, or a chosen one that cannot', async () => {
    const { studio } = await startStudio({ 'system.doctor': () => fx.doctor('wasm') });
    render(TrainScreen, {
      training: studio.training,
      get advice() {
        return studio.system.advice;
      },
    });
    const notice = screen.getByTestId('backend-notice');
    expect(notice.textContent).toMatch(/No GPU provider can train here: training runs on ONNX Runtime's CPU provider/);
    expect(notice.textContent).toMatch(/Vulkan \(Linux\), D3D12 \(Windows\) or Metal/);
    await studio.system.saveCompute({ provider: 'cuda' });
    await waitFor(() =>
      expect(screen.getByTestId('backend-notice').textContent).toMatch(
        /The cuda provider chosen in Models & Settings cannot train here: cannot train: the provider does not start/,
      ),
    );
  });

  test('no notice with a GPU backend', async () => {
    await renderTrain();
    expect(screen.queryByTestId('backend-notice')).toBeNull();
  });

  test('cancel sends training.cancel with the job; resume restarts a cancelled run', async () => {
    const runs = [fx.run({ id: 'r9', status: 'running', step: 10 })];
    const { transport } = await renderTrain({
      'training.runs': () => runs,
      'training.status': () =>
        fx.manifest({ id: 'r9', status: 'running', step: 10, losses: [{ step: 10, loss: 0.3, smoothed: 0.3 }] }),
      'training.cancel': () => ((runs[0] = fx.run({ id: 'r9', status: 'cancelled', step: 10 })), { cancelled: true }),
      'training.resume': () => (
        (runs[0] = fx.run({ id: 'r9', status: 'queued', step: 10 })), { jobId: 'j10', runId: 'r9' }
      ),
      'jobs.list': () => [fx.job({ id: 'j9', runId: 'r9' })],
    });
    // The latest run opens with its history from the manifest.
    await waitFor(() => expect(screen.getByTestId('loss-chart').dataset.points).toBe('1'));
    await fireEvent.click(screen.getByTestId('cancel-button'));
    // At once, before the run stops at its next step.
    expect(screen.getByTestId('cancel-button').textContent).toBe('Cancelling…');
    expect((screen.getByTestId('cancel-button') as HTMLButtonElement).disabled).toBe(true);
    await waitFor(() => expect(transport.paramsOf('training.cancel')).toEqual([{ jobId: 'j9' }]));
    transport.emit('train.event', trainEvent({ event: 'done', status: 'cancelled', step: 10, error: null }));

    // Resume is offered where Train is, not only in the run table at the bottom.
    const resume = await screen.findByTestId('resume-selected');
    expect(resume.textContent).toBe('Resume run r9 from step 10');
    expect(resume.closest('form')).toBe(screen.getByTestId('train-button').closest('form'));
    expect(screen.getByTestId('resume-button')).toBeTruthy(); // and still in its row
    await fireEvent.click(resume);
    await waitFor(() => expect(transport.paramsOf('training.resume')).toEqual([{ projectId: 'p1', runId: 'r9' }]));
    expect(screen.getByTestId('run-status').textContent).toBe('queued');
    // The run's row agrees with the card: queued, and no second Resume (that would be a 409).
    await waitFor(() => expect(screen.getByTestId('run-row').dataset.status).toBe('queued'));
    expect(screen.queryByTestId('resume-button')).toBeNull();
    expect(screen.queryByTestId('resume-selected')).toBeNull();
  });

  test("the run list follows live events: a queued run's row says running, with its step", async () => {
    const { transport } = await renderTrain({
      'training.runs': () => [fx.run({ id: 'r9', status: 'queued', step: 0 })],
      'training.status': () => fx.manifest({ id: 'r9', status: 'queued', step: 0, losses: [] }),
    });
    await waitFor(() => expect(screen.getByTestId('run-row').dataset.status).toBe('queued'));
    transport.emit('train.event', trainEvent(fx.stepEvent(28, 800)));
    await waitFor(() => expect(screen.getByTestId('run-row').dataset.status).toBe('running'));
    expect(screen.getByTestId('run-row').textContent).toContain('28 / 800');
    expect(screen.getByTestId('run-status').textContent).toBe('running');
  });

  test("before starting, the duration is estimated at the last run's pace", async () => {
    await renderTrain({
      'training.runs': () => [fx.run({ id: 'r9', status: 'completed', step: 800 })],
      'training.status': () =>
        fx.manifest({
          id: 'r9',
          status: 'completed',
          step: 800,
          timing: { startedAt: null, msPerStep: 500, totalMs: 400_000 },
        }),
    });
    await waitFor(() =>
      expect(screen.getByTestId('train-estimate').textContent).toBe(
        "About 6 min 40 s for 800 steps at the last run's pace",
      ),
    );
    await fireEvent.input(screen.getByTestId('setting-steps'), { target: { value: '100' } });
    await waitFor(() =>
      expect(screen.getByTestId('train-estimate').textContent).toBe("About 50 s for 100 steps at the last run's pace"),
    );
  });

  test('unsaved settings survive a reload, with a notice and a way to discard them; starting a run forgets them', async () => {
    const storage = new Map<string, string>();
    const store = {
      getItem: (k: string) => storage.get(k) ?? null,
      setItem: (k: string, v: string) => void storage.set(k, v),
      removeItem: (k: string) => void storage.delete(k),
    };
    const first = await startStudio({}, { storage: store });
    const { unmount } = render(TrainScreen, {
      training: first.studio.training,
      advice: null,
      model: first.studio.projects.model,
    });
    await fireEvent.input(screen.getByTestId('setting-steps'), { target: { value: '123' } });
    await waitFor(() => expect(JSON.parse(storage.get('singlora.trainDraft.p1')!).steps).toBe(123));
    unmount();
    // "Reload": a new studio over the same storage.
    const again = await startStudio({ 'training.start': () => ({ jobId: 'j1', runId: 'r1' }) }, { storage: store });
    render(TrainScreen, { training: again.studio.training, advice: null, model: again.studio.projects.model });
    expect((screen.getByTestId('setting-steps') as HTMLInputElement).value).toBe('123');
    expect(screen.getByTestId('draft-restored').textContent).toContain('changed on an earlier visit');
    await fireEvent.click(screen.getByTestId('train-button'));
    await waitFor(() => expect(again.transport.paramsOf('training.start')).toHaveLength(1));
    expect(again.transport.paramsOf('training.start')[0].settings).toMatchObject({ steps: 123 });
    await waitFor(() => expect(storage.has('singlora.trainDraft.p1')).toBe(false));
  });

  test('a run picked up from live events (e.g. after a reload) also shows its history', async () => {
    const { transport } = await renderTrain({
      'training.status': () =>
        fx.manifest({
          id: 'r9',
          status: 'running',
          step: 3,
          losses: [1, 2, 3].map((step) => ({ step, loss: 0.3, smoothed: 0.3 })),
          samples: [
            {
              step: 2,
              file: 'samples/step-000002-0.png',
              prompt: 'p',
              seed: 1,
              url: '/files/p1/runs/r9/samples/step-000002-0.png',
            },
          ],
        }),
    });
    transport.emit('train.event', trainEvent(fx.stepEvent(4, 800)));
    await waitFor(() => expect(transport.paramsOf('training.status')).toEqual([{ projectId: 'p1', runId: 'r9' }]));
    await waitFor(() => expect(screen.getByTestId('loss-chart').dataset.points).toBe('4'));
    expect(screen.getAllByTestId('sample-image')).toHaveLength(1);
    expect(screen.getByTestId('sample-image').getAttribute('src')).toBe('/files/p1/runs/r9/samples/step-000002-0.png');
    expect(screen.getByTestId('train-progress').textContent).toContain('Step 4/800');
  });

  test('a run says where it trained (run.json: provider and compute type); older runs say nothing', async () => {
    const { studio } = await renderTrain({
      'training.status': ({ runId }) =>
        runId === 'r9'
          ? fx.manifest({ id: 'r9', status: 'completed', backend: 'onnx', provider: 'webgpu', dtype: 'float16' })
          : fx.manifest({ id: 'r8', status: 'completed', backend: 'onnx' }),
    });
    await studio.training.selectRun('r9');
    await waitFor(() =>
      expect(screen.getByTestId('train-device').textContent).toBe('Trained on WebGPU (ONNX Runtime, float16)'),
    );
    await studio.training.selectRun('r8');
    await waitFor(() => expect(screen.queryByTestId('train-device')).toBeNull());
  });

  test("the Runs table shows each run's learning rate and steps", async () => {
    await renderTrain({
      'training.runs': () => [
        fx.run({ id: 'r2', learningRate: 5e-5, step: 120, steps: 1600, status: 'cancelled' }),
        fx.run({ id: 'r1', learningRate: 1e-4 }),
      ],
    });
    await waitFor(() => expect(screen.getAllByTestId('run-row')).toHaveLength(2));
    const headers = within(screen.getByTestId('run-list'))
      .getAllByRole('columnheader')
      .map((h) => h.textContent);
    expect(headers).toEqual(expect.arrayContaining(['Learning rate', 'Steps (done / planned)']));
    expect(screen.getAllByTestId('run-lr').map((c) => c.textContent)).toEqual(['5e-5', '1e-4']);
    expect(screen.getAllByTestId('run-steps').map((c) => c.textContent)).toEqual(['120 / 1600', '800 / 800']);
  });
});

// @vitest-environment jsdom
import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import { describe, expect, test } from 'vitest';
import { ApiError } from '../../src-main/api/contract.ts';
import App from '../../src-renderer/App.svelte';
import { startStudio } from './fakes.ts';
import * as fx from './fixtures.ts';

describe('App shell', () => {
  test('lists projects, opens the last one, and navigates between screens', async () => {
    const { studio } = await startStudio({
      'photos.list': () => [fx.photo({ status: 'rejected', reason: 'No face found' })],
    });
    render(App, { studio });
    expect((screen.getByTestId('project-select') as HTMLSelectElement).value).toBe('p1');
    await waitFor(() => expect(screen.getByTestId('photo-reason').textContent).toBe('No face found'));

    await fireEvent.click(screen.getByTestId('nav-train'));
    expect(screen.getByTestId('train-button')).toBeTruthy();
    expect(screen.getByTestId('nav-train').getAttribute('aria-current')).toBe('page');
    await fireEvent.click(screen.getByTestId('nav-settings'));
    expect(await screen.findByTestId('app-version')).toBeTruthy();
    expect(screen.getByTestId('selected-backend').textContent).toBe('tensorflow');
  });

  test('a project picked while the app is still starting stays open: the restore of the last one yields, and a late answer to an older open loses', async () => {
    const bare = fx.project({ id: 'p2', name: 'No model yet', baseModel: null });
    let releaseList: () => void = () => {};
    const listed = new Promise<void>((r) => (releaseList = r));
    let releaseP1: () => void = () => {};
    const p1Answer = new Promise<void>((r) => (releaseP1 = r));
    const { transport, studio } = await startStudio();
    transport.handlers['projects.list'] = async () => {
      await listed;
      return [fx.projectSummary(fx.project()), fx.projectSummary(bare)];
    };
    transport.handlers['projects.open'] = async ({ projectId }) => {
      if (projectId === 'p1') await p1Answer;
      return projectId === 'p2' ? bare : fx.project();
    };
    // The restore starts (its list still loading) and the user picks p2 meanwhile.
    const starting = studio.projects.start();
    await studio.projects.open('p2');
    releaseList();
    await starting;
    expect(studio.projects.current?.id).toBe('p2');
    // Two opens in flight: p1 asked first answers last.
    const slow = studio.projects.open('p1');
    await studio.projects.open('p2');
    releaseP1();
    await slow;
    expect(studio.projects.current?.id).toBe('p2');
  });

  test('creating a project validates the name, then creates and opens it', async () => {
    const created = fx.project({
      id: 'p2',
      name: 'Mug',
      subject: { triggerToken: 'zwx', classWord: 'mug', type: 'object' },
    });
    const { studio, transport } = await startStudio({
      'projects.list': () => [],
      'projects.create': () => created,
      'projects.open': () => created,
    });
    render(App, { studio });
    expect(screen.getByText('Welcome')).toBeTruthy();
    await fireEvent.click(screen.getByTestId('project-new'));
    await fireEvent.click(screen.getByTestId('project-create'));
    expect(await screen.findByText('Fill this in: it cannot be empty')).toBeTruthy();
    await waitFor(() => expect(document.activeElement).toBe(screen.getByTestId('project-name')));
    expect(transport.paramsOf('projects.create')).toHaveLength(0);

    await fireEvent.input(screen.getByTestId('project-name'), { target: { value: 'Mug' } });
    await fireEvent.click(screen.getByTestId('project-create'));
    await waitFor(() =>
      expect(transport.paramsOf('projects.create')).toEqual([
        { name: 'Mug', classWord: 'person', triggerToken: 'sks', type: 'live', baseModel: '/models/sd15' },
      ]),
    );
    await waitFor(() => expect(studio.projects.current?.id).toBe('p2'));
    expect(screen.queryByText('Welcome')).toBeNull();
  });

  test("the class word comes from the chosen model's defaults until the user types one (the toy model draws balls, not people)", async () => {
    const created = fx.project({ id: 'p2', name: 'Ball' });
    const toy = fx.base({
      path: '/models/toy-sd',
      name: 'toy-sd',
      isDefault: true,
      defaults: { training: { classWord: 'ball' }, sampling: {} },
    });
    const { studio, transport } = await startStudio({
      'models.bases': () => [toy, fx.base({ path: '/models/sd15', name: 'sd15', isDefault: false })],
      'projects.create': () => created,
      'projects.open': () => created,
    });
    render(App, { studio });
    await fireEvent.click(screen.getByTestId('project-new'));
    await waitFor(() => expect((document.getElementById('np-class') as HTMLInputElement).value).toBe('ball'));
    await fireEvent.input(screen.getByTestId('project-name'), { target: { value: 'Ball' } });
    await fireEvent.click(screen.getByTestId('project-create'));
    await waitFor(() =>
      expect(transport.paramsOf('projects.create')).toEqual([
        { name: 'Ball', classWord: 'ball', triggerToken: 'sks', type: 'object', baseModel: '/models/toy-sd' },
      ]),
    );
  });

  test('a new project opens on its Subject screen, wherever the user was', async () => {
    const created = fx.project({ id: 'p2', name: 'Mug' });
    const { studio } = await startStudio({ 'projects.create': () => created, 'projects.open': () => created });
    render(App, { studio });
    await fireEvent.click(screen.getByTestId('nav-export'));
    await fireEvent.click(screen.getByTestId('project-new'));
    await fireEvent.input(screen.getByTestId('project-name'), { target: { value: 'Mug' } });
    await fireEvent.click(screen.getByTestId('project-create'));
    await waitFor(() => expect(studio.router.current).toBe('subject'));
    expect(studio.projects.current?.id).toBe('p2');
    expect(screen.getByTestId('nav-subject').getAttribute('aria-current')).toBe('page');
    expect(screen.getByTestId('drop-zone')).toBeTruthy();
  });

  test('New project picks a base model from those found, or a path typed after "Add a model…"; none at all is refused before sending', async () => {
    const created = fx.project({ id: 'p2', name: 'Mug', baseModel: '/elsewhere/sd15' });
    const { studio, transport } = await startStudio({
      'projects.list': () => [],
      'models.bases': () => [
        fx.base({ path: '/models/tiny', name: 'tiny', native: 64, isDefault: false, source: 'models folder' }),
        fx.base({ path: '/hf/sd15', name: 'org/sd15', source: 'Hugging Face cache', isDefault: false }),
      ],
      'projects.create': () => created,
      'projects.open': () => created,
    });
    render(App, { studio });
    await fireEvent.click(screen.getByTestId('project-new'));
    const select = screen.getByTestId('project-model') as HTMLSelectElement;
    expect([...select.options].map((o) => o.textContent)).toEqual([
      'tiny (64 px, models folder)',
      'org/sd15 (512 px, Hugging Face cache)',
      'Add a model…',
    ]);
    expect(select.value).toBe('/models/tiny');
    await fireEvent.change(select, { target: { value: '(add)' } });
    await fireEvent.input(screen.getByTestId('project-name'), { target: { value: 'Mug' } });
    await fireEvent.click(screen.getByTestId('project-create'));
    expect(
      await screen.findByText('Choose the Stable Diffusion 1.5 model to train on, or enter its path'),
    ).toBeTruthy();
    expect(transport.paramsOf('projects.create')).toHaveLength(0);
    await fireEvent.input(screen.getByTestId('project-model-path'), { target: { value: ' /elsewhere/sd15 ' } });
    await fireEvent.click(screen.getByTestId('project-create'));
    await waitFor(() =>
      expect(transport.paramsOf('projects.create')).toEqual([
        expect.objectContaining({ name: 'Mug', baseModel: '/elsewhere/sd15' }),
      ]),
    );
  });

  test('shows the connection state and offers a retry while reconnecting; refetches after reconnecting', async () => {
    const { studio, transport } = await startStudio();
    render(App, { studio });
    expect(screen.getByTestId('connection-state').textContent).toContain('Connected');
    transport.setConnection({ status: 'reconnecting', attempt: 2, retryInMs: 4000 });
    await waitFor(() => expect(screen.getByTestId('connection-state').textContent).toContain('Reconnecting in 4 s'));
    await fireEvent.click(screen.getByRole('button', { name: 'Retry now' }));
    expect(transport.reconnects).toBe(1);
    const before = transport.paramsOf('jobs.list').length;
    transport.setConnection({ status: 'open' });
    await waitFor(() => expect(transport.paramsOf('jobs.list').length).toBe(before + 1));
  });

  test('the jobs indicator lists running jobs and cancels them', async () => {
    const { studio, transport } = await startStudio({ 'jobs.cancel': () => ({ cancelled: true }) });
    render(App, { studio });
    transport.emit(
      'job.updated',
      fx.job({ id: 'd1', kind: 'download', status: 'running', progress: { done: 50, total: 200, label: 'dino' } }),
    );
    const indicator = screen.getByTestId('jobs-indicator');
    await waitFor(() => expect(indicator.textContent).toContain('Jobs (1 running)'));
    expect(within(indicator).getByTestId('job-row').textContent).toContain('dino — 25%');
    transport.emit(
      'job.updated',
      fx.job({ id: 't1', kind: 'train', projectId: 'p1', runId: 'r7', status: 'cancelled' }),
    );
    await waitFor(() =>
      expect(
        within(indicator)
          .getAllByTestId('job-owner')
          .map((o) => o.textContent),
      ).toContain(`${fx.project().name} · run r7`),
    );
    await fireEvent.click(within(indicator).getByRole('button', { name: 'Cancel download job d1' }));
    await waitFor(() => expect(transport.paramsOf('jobs.cancel')).toEqual([{ jobId: 'd1' }]));
  });

  test('a failed call shows its message and the fix in a toast', async () => {
    const { studio } = await startStudio({
      'photos.list': () => {
        throw new ApiError('unauthorized', 'token expired');
      },
    });
    render(App, { studio });
    await waitFor(() =>
      expect(screen.getByTestId('toast-error').textContent).toContain('List photos failed: token expired'),
    );
    expect(screen.getByTestId('toast-error').textContent).toContain(
      'open the link that `singlora serve` printed again',
    );
    await fireEvent.click(within(screen.getByTestId('toast-error')).getByRole('button', { name: 'Dismiss' }));
    expect(screen.queryByTestId('toast-error')).toBeNull();
  });

  test('in the desktop app the model path can come from the native file dialog (desktop.pickBaseModel)', async () => {
    const created = fx.project({ id: 'p2', name: 'Mug', baseModel: '/picked/sd15.safetensors' });
    const { studio, transport } = await startStudio(
      {
        'projects.list': () => [],
        'desktop.pickBaseModel': (p) => ({ path: p.kind === 'file' ? '/picked/sd15.safetensors' : null }),
        'projects.create': () => created,
        'projects.open': () => created,
      },
      {},
      'electron',
    );
    render(App, { studio });
    await fireEvent.click(screen.getByTestId('project-new'));
    await fireEvent.input(screen.getByTestId('project-name'), { target: { value: 'Mug' } });
    await fireEvent.click(screen.getByTestId('project-model-browse-file'));
    await waitFor(() =>
      expect((screen.getByTestId('project-model-path') as HTMLInputElement).value).toBe('/picked/sd15.safetensors'),
    );
    await fireEvent.click(screen.getByTestId('project-create'));
    await waitFor(() =>
      expect(transport.paramsOf('projects.create')).toEqual([
        expect.objectContaining({ baseModel: '/picked/sd15.safetensors' }),
      ]),
    );
    expect(transport.paramsOf('desktop.pickBaseModel')).toEqual([{ kind: 'file' }]);
  });

  test('in a browser there is no file dialog button (the path is typed)', async () => {
    const { studio } = await startStudio({ 'projects.list': () => [] });
    render(App, { studio });
    await fireEvent.click(screen.getByTestId('project-new'));
    expect(screen.queryByTestId('project-model-browse-file')).toBeNull();
  });

  test('the same failure twice is one toast with a count; at most three toasts', async () => {
    const { studio } = await startStudio();
    render(App, { studio });
    studio.notify.error('Open project', new Error('gone'));
    studio.notify.error('Open project', new Error('gone'));
    await waitFor(() => expect(screen.getAllByTestId('toast-error')).toHaveLength(1));
    expect(screen.getByTestId('toast-count').textContent).toBe('(×2)');
    for (const m of ['a', 'b', 'c']) studio.notify.error('Other', new Error(m));
    await waitFor(() =>
      expect(screen.getAllByTestId('toast-error').map((t) => t.textContent)).toEqual([
        expect.stringContaining('a'),
        expect.stringContaining('b'),
        expect.stringContaining('c'),
      ]),
    );
  });

  test('a missing or wrong token: one screen that says to open the printed link, no toasts', async () => {
    const { studio, transport } = await startStudio();
    render(App, { studio });
    studio.notify.error('List photos', new ApiError('unauthorized', 'missing or wrong token'));
    transport.setConnection({ status: 'unauthorized' });
    await waitFor(() =>
      expect(screen.getByTestId('token-screen').textContent).toContain('Open the link printed by singlora serve'),
    );
    expect(screen.queryByTestId('toast-error')).toBeNull();
    expect(screen.queryByTestId('project-select')).toBeNull();
    studio.notify.error('List projects', new ApiError('unauthorized', 'missing or wrong token'));
    expect(studio.notify.items).toEqual([]);
  });

  test('a run that completes takes over Evaluate (whose "Evaluate again" re-scored the old run) and Generate', async () => {
    const T2 = '2025-01-02T00:00:00.000Z';
    let runs = [fx.run({ id: 'r1' })];
    const { studio, transport } = await startStudio({
      'training.runs': () => runs,
      'training.status': (p) => fx.manifest({ id: p.runId }),
      'evaluation.get': (p) => (p.runId === 'r1' ? fx.evaluation() : null),
      'evaluation.start': () => ({ jobId: 'e1' }),
    });
    render(App, { studio });
    await fireEvent.click(screen.getByTestId('nav-evaluate'));
    const run = () => (screen.getByTestId('eval-run') as HTMLSelectElement).value;
    await waitFor(() => expect(run()).toBe('r1'));
    await screen.findByText('Evaluate again');

    // r2 trains and completes while the app is open.
    runs = [fx.run({ id: 'r2', createdAt: T2, status: 'running', step: 10 }), ...runs];
    await studio.training.loadRuns();
    expect(run()).toBe('r1'); // still training: nothing to evaluate yet
    runs = [fx.run({ id: 'r2', createdAt: T2 }), fx.run({ id: 'r1' })];
    transport.emit('train.event', {
      jobId: 'j2',
      projectId: 'p1',
      runId: 'r2',
      event: { event: 'done', status: 'completed', step: 800, error: null },
    });
    await waitFor(() => expect(run()).toBe('r2'));
    await fireEvent.click(await screen.findByText('Evaluate checkpoints'));
    await waitFor(() => expect(transport.paramsOf('evaluation.start')).toHaveLength(1));
    expect(transport.paramsOf('evaluation.start')[0].runId).toBe('r2');

    await fireEvent.click(screen.getByTestId('nav-generate'));
    expect((screen.getByTestId('generate-adapter') as HTMLSelectElement).value).toBe('run:r2');
  });

  test("Generate's automatic adapter follows a run that completes; one the user picked stays", async () => {
    const T2 = '2025-01-02T00:00:00.000Z';
    const T3 = '2025-01-03T00:00:00.000Z';
    let runs = [fx.run({ id: 'r1' })];
    const { studio } = await startStudio({ 'training.runs': () => runs });
    render(App, { studio });
    await fireEvent.click(screen.getByTestId('nav-generate'));
    const picker = () => screen.getByTestId('generate-adapter') as HTMLSelectElement;
    await waitFor(() => expect(picker().value).toBe('run:r1'));
    runs = [fx.run({ id: 'r2', createdAt: T2 }), ...runs];
    await studio.training.loadRuns();
    await waitFor(() => expect(picker().value).toBe('run:r2'));

    await fireEvent.change(picker(), { target: { value: 'run:r1' } });
    runs = [fx.run({ id: 'r3', createdAt: T3 }), ...runs];
    await studio.training.loadRuns();
    await waitFor(() => expect(picker().querySelectorAll('option')).toHaveLength(4));
    expect(picker().value).toBe('run:r1');
  });

  test('Train is disabled, with the reason and a way to Subject, while the project has no usable photos', async () => {
    let photos = [fx.photo({ status: 'rejected', reason: 'not an image' })];
    const { studio } = await startStudio({ 'photos.list': () => photos });
    render(App, { studio });
    await fireEvent.click(screen.getByTestId('nav-train'));
    const train = screen.getByTestId('train-button') as HTMLButtonElement;
    await waitFor(() => expect(train.disabled).toBe(true));
    expect(screen.getByTestId('train-blocked').textContent).toBe(
      'This project has no usable photos yet: add 3-20 photos of the subject on the Subject screen.',
    );
    expect(train.getAttribute('aria-describedby')).toBe('train-blocked');
    await fireEvent.click(screen.getByTestId('go-subject'));
    expect(studio.router.current).toBe('subject');

    photos = [fx.photo()];
    await studio.subject.load();
    await fireEvent.click(screen.getByTestId('nav-train'));
    expect((screen.getByTestId('train-button') as HTMLButtonElement).disabled).toBe(false);
    expect(screen.queryByTestId('train-blocked')).toBeNull();
  });

  test("the project list counts the open project's usable photos, not the rejected ones", async () => {
    const photos = [
      fx.photo({ id: 'a' }),
      fx.photo({ id: 'b' }),
      fx.photo({ id: 'c', status: 'rejected', reason: 'too small' }),
    ];
    const { studio } = await startStudio({
      'projects.list': () => [{ ...fx.projectSummary(fx.project()), photos: 3 }],
      'photos.list': () => photos,
    });
    render(App, { studio });
    const option = () => (screen.getByTestId('project-select') as HTMLSelectElement).selectedOptions[0].textContent;
    await waitFor(() => expect(option()).toBe('My dog (2 usable of 3 photos, 0 runs)'));
  });

  test('New project refuses a trigger token with spaces before sending', async () => {
    const { studio, transport } = await startStudio({ 'projects.list': () => [] });
    render(App, { studio });
    await fireEvent.click(screen.getByTestId('project-new'));
    await fireEvent.input(screen.getByTestId('project-name'), { target: { value: 'Ball' } });
    await fireEvent.input(screen.getByLabelText('Trigger token'), { target: { value: 'my ball' } });
    await fireEvent.click(screen.getByTestId('project-create'));
    expect(await screen.findByText('Use one word, without spaces (e.g. sks or ohwx)')).toBeTruthy();
    expect(transport.paramsOf('projects.create')).toHaveLength(0);
  });
});

// @vitest-environment jsdom
import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import { afterEach, describe, expect, test, vi } from 'vitest';
import { ApiError, type QueueStatus } from '../../src-main/api/contract.ts';
import App from '../../src-renderer/App.svelte';
import JobsIndicator from '../../src-renderer/components/JobsIndicator.svelte';
import { QUEUE_POLL_MS, QUEUE_THROTTLE_MS } from '../../src-renderer/lib/jobs.svelte.ts';
import { startStudio } from './fakes.ts';
import * as fx from './fixtures.ts';

/** Opens or closes the Jobs dropdown as a click on its summary does (jsdom does not toggle <details> itself). */
async function setOpen(open: boolean): Promise<HTMLDetailsElement> {
  const details = screen.getByTestId('jobs-indicator') as HTMLDetailsElement;
  details.open = open;
  await fireEvent(details, new Event('toggle'));
  expect(details.open).toBe(open);
  return details;
}

describe('Jobs dropdown', () => {
  test('closes on Escape (focus back on its button) and on a click outside; a click inside keeps it open', async () => {
    render(JobsIndicator, { jobs: [fx.job({ id: 'j1' })], projectNames: { p1: 'My dog' }, onCancel: () => {} });
    const details = screen.getByTestId('jobs-indicator') as HTMLDetailsElement;
    const summary = details.querySelector('summary')!;

    await setOpen(true);
    await fireEvent.keyDown(window, { key: 'Escape' });
    expect(details.open).toBe(false);
    expect(document.activeElement).toBe(summary);

    await setOpen(true);
    await fireEvent.pointerDown(screen.getByTestId('job-owner'));
    expect(details.open).toBe(true);
    await fireEvent.pointerDown(document.body);
    expect(details.open).toBe(false);
  });

  test('a job names the worker that runs or ran it; a queued job says why it waits; an older server’s job shows neither', () => {
    const older = fx.job({ id: 'e1', kind: 'export', status: 'done' });
    render(JobsIndicator, {
      jobs: [
        fx.job({ id: 'g1', kind: 'generate', status: 'running', worker: 'gpu-a:311' }),
        fx.job({
          id: 't1',
          kind: 'train',
          status: 'queued',
          worker: null,
          waiting: 'no connected worker can take training',
        }),
        older,
      ],
      onCancel: () => {},
    });
    const [running, queued, old] = screen.getAllByTestId('job-row');
    expect(within(running).getByTestId('job-worker').textContent).toBe('Worker: gpu-a:311');
    expect(within(running).queryByTestId('job-waiting')).toBeNull();
    expect(within(queued).getByTestId('job-waiting').textContent).toBe(
      'Waiting: no connected worker can take training',
    );
    expect(within(queued).queryByTestId('job-worker')).toBeNull();
    expect('worker' in older).toBe(false);
    expect(within(old).queryByTestId('job-worker')).toBeNull();
    expect(within(old).queryByTestId('job-waiting')).toBeNull();
  });
});

describe('Jobs panel: the queue and its workers (jobs.queue)', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  test('embedded: read only while open (now, every poll, once per burst of job updates), and only the queued count shows', async () => {
    const queue = fx.queueStatus({
      queues: [
        { name: 'engine', waiting: 2, active: 1 },
        { name: 'io', waiting: 1, active: 0 },
      ],
    });
    const { studio, transport } = await startStudio({ 'jobs.queue': () => queue });
    vi.useFakeTimers({ shouldAdvanceTime: true });
    render(App, { studio });
    const reads = () => transport.paramsOf('jobs.queue').length;
    await vi.advanceTimersByTimeAsync(QUEUE_POLL_MS * 2);
    expect(reads(), 'read while the panel is closed').toBe(0);

    await setOpen(true);
    await waitFor(() => expect(screen.getByTestId('queue-counts').textContent?.trim()).toBe('3 queued'));
    expect(reads()).toBe(1);
    // One worker, this server: no worker list, no per-queue lanes.
    expect(screen.queryByTestId('queue-workers')).toBeNull();
    expect(screen.getByTestId('queue-status').textContent).not.toContain('engine');

    await vi.advanceTimersByTimeAsync(QUEUE_POLL_MS);
    expect(reads()).toBe(2);
    for (let done = 1; done <= 5; done++)
      transport.emit(
        'job.updated',
        fx.job({ id: 'g1', kind: 'generate', progress: { done, total: 5, label: 'step' } }),
      );
    await vi.advanceTimersByTimeAsync(QUEUE_THROTTLE_MS);
    expect(reads(), 'five updates in a burst: one read').toBe(3);

    await setOpen(false);
    await vi.advanceTimersByTimeAsync(QUEUE_POLL_MS * 4);
    transport.emit('job.updated', fx.job({ id: 'g1', kind: 'generate', status: 'done' }));
    await vi.advanceTimersByTimeAsync(QUEUE_THROTTLE_MS * 2);
    expect(reads(), 'read after the panel closed').toBe(3);
  });

  test('embedded with nothing waiting: no queue section at all', async () => {
    const { studio, transport } = await startStudio();
    render(App, { studio });
    await setOpen(true);
    await waitFor(() => expect(transport.paramsOf('jobs.queue')).toHaveLength(1));
    await waitFor(() => expect(studio.jobs.queue?.mode).toBe('embedded'));
    expect(screen.queryByTestId('queue-status')).toBeNull();
  });

  test('redis: counts per queue, each worker with what it runs, and a warning for one that stopped heartbeating', async () => {
    const redis: QueueStatus = {
      mode: 'redis',
      queues: [
        { name: 'gpu', waiting: 2, active: 1 },
        { name: 'cpu', waiting: 1, active: 0 },
      ],
      workers: [
        { name: 'gpu-a:311', queues: ['gpu', 'cpu'], lastSeen: '2025-01-01T00:00:58.000Z', alive: true, jobId: 't1' },
        { name: 'gpu-b:97', queues: ['gpu'], lastSeen: '2025-01-01T00:00:15.000Z', alive: false, jobId: 'g9' },
        { name: 'cpu-c:12', queues: ['cpu'], lastSeen: '2025-01-01T00:00:59.000Z', alive: true, jobId: null },
      ],
    };
    const { studio, transport } = await startStudio({ 'jobs.queue': () => redis });
    vi.useFakeTimers({ shouldAdvanceTime: true, now: new Date('2025-01-01T00:01:00.000Z') });
    render(App, { studio });
    transport.emit('job.updated', fx.job({ id: 't1', kind: 'train', runId: 'r7', worker: 'gpu-a:311' }));
    await setOpen(true);

    const counts = await screen.findByTestId('queue-counts');
    expect(counts.textContent?.replace(/\s+/g, ' ').trim()).toBe(
      '3 queued · gpu: 2 waiting, 1 running · cpu: 1 waiting, 0 running',
    );
    const list = screen.getByRole('list', { name: 'Workers' });
    const rows = within(list).getAllByTestId('queue-worker');
    expect(rows.map((r) => [r.dataset.alive, r.querySelector('div')?.textContent?.replace(/\s+/g, ' ')])).toEqual([
      ['true', 'gpu-a:311 running train · My dog · run r7'],
      ['false', 'gpu-b:97 running job g9'],
      ['true', 'cpu-c:12 idle'],
    ]);
    // Only the silent one is flagged, with how long ago it was last heard from.
    expect(within(list).getAllByTestId('worker-gone')).toHaveLength(1);
    expect(within(rows[1]).getByTestId('worker-gone').textContent?.replace(/\s+/g, ' ').trim()).toBe(
      'Stopped heartbeating: last seen 45 s ago. It counts as gone; its job goes to another worker.',
    );
  });

  test('a server without jobs.queue: no queue section, no toast, and it is not asked again', async () => {
    const { studio, transport } = await startStudio({
      'jobs.queue': () => {
        throw new ApiError('not_found', "unknown method 'jobs.queue'"); // what an older server answers
      },
    });
    vi.useFakeTimers({ shouldAdvanceTime: true });
    render(App, { studio });
    transport.emit('job.updated', fx.job({ id: 'g1', kind: 'generate', status: 'done' }));
    await setOpen(true);
    await waitFor(() => expect(studio.jobs.queueMissing).toBe(true));
    await vi.advanceTimersByTimeAsync(QUEUE_POLL_MS * 3);
    transport.emit('job.updated', fx.job({ id: 'g2', kind: 'generate', status: 'done' }));
    await vi.advanceTimersByTimeAsync(QUEUE_THROTTLE_MS * 2);
    await setOpen(false);
    await setOpen(true);
    await vi.advanceTimersByTimeAsync(QUEUE_POLL_MS);

    expect(transport.paramsOf('jobs.queue')).toHaveLength(1);
    expect(screen.queryByTestId('queue-status')).toBeNull();
    expect(screen.queryByTestId('toast-error')).toBeNull();
    expect(screen.getAllByTestId('job-row')).toHaveLength(2); // the jobs themselves still show
  });

  test('a failed read says so in the panel (no toast) and the next poll clears it', async () => {
    let fail = true;
    const { studio, transport } = await startStudio({
      'jobs.queue': () => {
        if (fail) throw new ApiError('engine_error', 'the queue did not answer');
        return fx.queueStatus({ queues: [{ name: 'engine', waiting: 1, active: 1 }] });
      },
    });
    vi.useFakeTimers({ shouldAdvanceTime: true });
    render(App, { studio });
    await setOpen(true);
    expect((await screen.findByTestId('queue-error')).textContent).toBe(
      'Queue status unavailable: the queue did not answer',
    );
    expect(screen.queryByTestId('toast-error')).toBeNull();
    fail = false;
    await vi.advanceTimersByTimeAsync(QUEUE_POLL_MS);
    expect(transport.paramsOf('jobs.queue')).toHaveLength(2);
    await waitFor(() => expect(screen.queryByTestId('queue-error')).toBeNull());
    expect(screen.getByTestId('queue-counts').textContent?.trim()).toBe('1 queued');
  });
});

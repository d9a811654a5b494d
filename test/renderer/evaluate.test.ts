// @vitest-environment jsdom
import { fireEvent, render, screen, waitFor, within } from '@testing-library/svelte';
import { describe, expect, test } from 'vitest';
import { tickLabels } from '../../src-renderer/lib/format.ts';
import EvaluateScreen from '../../src-renderer/screens/EvaluateScreen.svelte';
import { startStudio, type Handlers } from './fakes.ts';
import * as fx from './fixtures.ts';

async function renderEvaluate(handlers: Handlers) {
  const ctx = await startStudio({
    'training.runs': () => [fx.run({ id: 'r1' })],
    'training.status': () => fx.manifest(),
    ...handlers,
  });
  render(EvaluateScreen, { evaluation: ctx.studio.evaluation, runs: ctx.studio.training.runs, preferredRunId: null });
  return ctx;
}

const rowsByStep = () => Object.fromEntries(screen.getAllByTestId('score-row').map((r) => [r.dataset.step, r]));

describe('Evaluate screen', () => {
  test('renders the score table with the baseline, and highlights the best checkpoint', async () => {
    await renderEvaluate({ 'evaluation.get': () => fx.evaluation() });
    await waitFor(() => expect(screen.getAllByTestId('score-row')).toHaveLength(3));
    const rows = rowsByStep();
    expect(rows['600'].dataset.best).toBe('true');
    expect(rows['200'].dataset.best).toBe('false');
    expect(rows['400'].dataset.best).toBe('false');
    const cells = within(rows['400'])
      .getAllByRole('cell')
      .map((c) => c.textContent?.trim());
    expect(cells.slice(0, 4)).toEqual(['Step 400', '0.5800', '0.2800', '4']);
    expect(within(screen.getByTestId('score-baseline')).getAllByRole('cell')[1].textContent).toBe('0.2100');
    expect(screen.getByTestId('eval-rule').textContent).toBe(
      'Rule: highest DINO among checkpoints whose CLIP-T stays within 0.05 of the base model',
    );
    expect(screen.getByTestId('score-chart').textContent).toMatch(/base model.*0\.210.*chosen: step 600/);
  });

  test('a toy-model evaluation names its score (toy fidelity, not DINO), and the check says so before the click', async () => {
    await renderEvaluate({
      'evaluation.get': () => fx.evaluation({ metric: 'toy' }),
      'evaluation.check': () => ({
        ready: true,
        dino: null,
        bundled: false,
        metric: 'toy',
        message: "no DINO installed: the toy model is scored with the toy world's own subject fidelity",
      }),
    });
    await waitFor(() => expect(screen.getAllByTestId('score-row')).toHaveLength(3));
    expect(within(screen.getByTestId('score-table')).getAllByRole('columnheader')[1].textContent).toBe('Toy fidelity');
    expect(screen.getByTestId('score-chart').textContent).toMatch(
      /^\s*Toy fidelity and CLIP-T for each checkpoint.*0\.2100 Toy fidelity\)/s,
    );
    await waitFor(() =>
      expect(screen.getByTestId('eval-toy').textContent).toContain(
        "Offline: no DINO installed: the toy model is scored with the toy world's own subject fidelity",
      ),
    );
    expect((screen.getByTestId('evaluate-button') as HTMLButtonElement).disabled).toBe(false);
  });

  test('choosing another checkpoint calls evaluation.choose and moves the highlight', async () => {
    const { transport } = await renderEvaluate({
      'evaluation.get': () => fx.evaluation(),
      'evaluation.choose': (p) => fx.evaluation({ chosen: p.step }),
    });
    await waitFor(() => screen.getAllByTestId('score-row'));
    await fireEvent.click(screen.getByRole('button', { name: 'Use the checkpoint at step 400' }));
    await waitFor(() => expect(rowsByStep()['400'].dataset.best).toBe('true'));
    expect(rowsByStep()['600'].dataset.best).toBe('false');
    expect(transport.paramsOf('evaluation.choose')).toEqual([{ projectId: 'p1', runId: 'r1', step: 400 }]);
    // The rule's pick stays labelled as such.
    expect(within(rowsByStep()['600']).getByText("rule's pick")).toBeTruthy();
  });

  test('start evaluation: progress from evaluation.progress, then the table when the job is done', async () => {
    let stored: ReturnType<typeof fx.evaluation> | null = null;
    const { transport } = await renderEvaluate({
      'evaluation.get': () => stored,
      'evaluation.start': () => ({ jobId: 'e1' }),
    });
    await screen.findByTestId('eval-empty');
    await fireEvent.click(screen.getByTestId('evaluate-button'));
    await waitFor(() =>
      expect(transport.paramsOf('evaluation.start')).toEqual([{ projectId: 'p1', runId: 'r1', checkpoints: 'all' }]),
    );

    transport.emit('evaluation.progress', { jobId: 'e1', done: 3, total: 12, label: 'checkpoint step 200' });
    await waitFor(() =>
      expect(screen.getByTestId('eval-progress').textContent).toContain('checkpoint step 200 · 3/12'),
    );
    transport.emit('evaluation.progress', { jobId: 'other', done: 11, total: 12, label: 'not ours' });
    expect(screen.getByTestId('eval-progress').textContent).toContain('3/12');

    stored = fx.evaluation();
    transport.emit('job.updated', fx.job({ id: 'e1', kind: 'evaluate', runId: 'r1', status: 'done' }));
    await waitFor(() => expect(screen.getAllByTestId('score-row')).toHaveLength(3));
    expect(screen.queryByTestId('eval-progress')).toBeNull();
  });

  test('says DINO is missing before the click (button disabled, the fix shown); "Check again" asks anew', async () => {
    let ready = false;
    const { transport } = await renderEvaluate({
      'evaluation.get': () => null,
      'evaluation.check': () =>
        ready
          ? { ready: true, dino: '/m/dino/model.onnx', bundled: false, message: null }
          : {
              ready: false,
              dino: null,
              bundled: false,
              message:
                'DINO model not found: place model.onnx at /m/dino/model.onnx or run `singlora models download dino`',
            },
    });
    await waitFor(() =>
      expect(screen.getByTestId('eval-needs').textContent).toContain(
        'DINO is missing. DINO model not found: place model.onnx at /m/dino/model.onnx',
      ),
    );
    expect((screen.getByTestId('evaluate-button') as HTMLButtonElement).disabled).toBe(true);
    ready = true;
    await fireEvent.click(screen.getByTestId('eval-recheck'));
    await waitFor(() => expect(screen.queryByTestId('eval-needs')).toBeNull());
    expect((screen.getByTestId('evaluate-button') as HTMLButtonElement).disabled).toBe(false);
    expect(transport.paramsOf('evaluation.check').length).toBe(2);
  });

  test('shows the evaluation images per checkpoint with download links, and the deltas from the base model', async () => {
    await renderEvaluate({
      'evaluation.get': () => fx.evaluation(),
      'evaluation.images': () => [
        { step: null, file: 'runs/r1/eval/base/a.png', url: '/files/p1/runs/r1/eval/base/a.png' },
        { step: 600, file: 'runs/r1/eval/step-000600/b.png', url: '/files/p1/runs/r1/eval/step-000600/b.png' },
      ],
    });
    await waitFor(() => expect(screen.getAllByTestId('eval-image')).toHaveLength(2));
    const links = screen.getAllByTestId('eval-image-link') as HTMLAnchorElement[];
    expect(links.map((a) => [a.getAttribute('href'), a.getAttribute('download')])).toEqual([
      ['/files/p1/runs/r1/eval/base/a.png', 'a.png'],
      ['/files/p1/runs/r1/eval/step-000600/b.png', 'b.png'],
    ]);
    expect(screen.getByTestId('eval-images').textContent).toMatch(/Base model\s*DINO 0\.2100.*Step 600/s);
    expect(screen.getByTestId('score-deltas').textContent).toMatch(/step 200: \+0\.\d{4}.*step 600: \+0\.\d{4}/);
  });

  test('while it runs: an ETA from the pace so far, and Cancel turns into "Cancelling…" at once', async () => {
    const { transport, studio } = await renderEvaluate({
      'evaluation.get': () => null,
      'evaluation.start': () => ({ jobId: 'e3' }),
      'jobs.cancel': () => ({ cancelled: true }),
    });
    await screen.findByTestId('eval-empty');
    await fireEvent.click(screen.getByTestId('evaluate-button'));
    await waitFor(() => expect(studio.evaluation.running).toBe(true));
    transport.emit('evaluation.progress', { jobId: 'e3', done: 2, total: 6, label: 'step 3' });
    await waitFor(() =>
      expect(screen.getByTestId('eval-progress').textContent).toMatch(/step 3 · 2\/6 images · about \d+ s left/),
    );
    await fireEvent.click(screen.getByTestId('eval-cancel'));
    expect(screen.getByTestId('eval-cancel').textContent).toBe('Cancelling…');
    await waitFor(() => expect(transport.paramsOf('jobs.cancel')).toEqual([{ jobId: 'e3' }]));
  });

  test('a quick check is asked for with quick: true', async () => {
    const { transport } = await renderEvaluate({
      'evaluation.get': () => null,
      'evaluation.start': () => ({ jobId: 'e2' }),
    });
    await screen.findByTestId('eval-empty');
    await fireEvent.change(screen.getByTestId('eval-scope'), { target: { value: 'quick' } });
    await fireEvent.click(screen.getByTestId('evaluate-button'));
    await waitFor(() =>
      expect(transport.paramsOf('evaluation.start')).toEqual([
        { projectId: 'p1', runId: 'r1', checkpoints: 'all', quick: true },
      ]),
    );
    expect((screen.getByTestId('eval-scope') as HTMLSelectElement).disabled).toBe(true); // while it runs
  });

  test('chart ticks keep the decimals their spacing needs (close scores stay apart)', () => {
    expect(tickLabels([0.6661, 0.6662, 0.6663], 0.0001)).toEqual(['0.6661', '0.6662', '0.6663']);
    expect(tickLabels([0.2, 0.25, 0.3], 0.05)).toEqual(['0.20', '0.25', '0.30']);
    expect(tickLabels([0, 100, 200], 100)).toEqual(['0', '100', '200']);
    expect(tickLabels([3, 4, 5], 1)).toEqual(['3', '4', '5']);
  });

  test('a table without CLIP-T has no CLIP-T column', async () => {
    const e = fx.evaluation({
      baseline: { step: null, dino: 0.2, clipT: null, images: 4 },
      rows: [{ step: 100, dino: 0.5, clipT: null, images: 4 }],
      best: 100,
    });
    await renderEvaluate({ 'evaluation.get': () => e });
    await waitFor(() => screen.getAllByTestId('score-row'));
    expect(screen.queryByRole('columnheader', { name: 'CLIP-T' })).toBeNull();
    expect(screen.getByRole('columnheader', { name: 'DINO' })).toBeTruthy();
  });

  test('the images sit in a grid: a row per checkpoint, a column per prompt (and seed), each labelled', async () => {
    const prompts = ['a photo of sks dog', 'sks dog on the moon'];
    const images = (label: string, step: number | null) =>
      [0, 1, 2, 3].map((i) => ({
        step,
        file: `runs/r1/eval/${label}/${i}.png`,
        url: `/files/p1/runs/r1/eval/${label}/${i}.png`,
      }));
    await renderEvaluate({
      'evaluation.get': () => fx.evaluation({ prompts, imagesPerPrompt: 2, seeds: [7, 8] }),
      'evaluation.images': () => [...images('base', null), ...images('step-000600', 600)],
    });
    await waitFor(() => expect(screen.getAllByTestId('eval-image')).toHaveLength(8));
    expect(screen.getAllByTestId('eval-prompt').map((th) => [th.textContent, th.getAttribute('colspan')])).toEqual([
      ['a photo of sks dog', '2'],
      ['sks dog on the moon', '2'],
    ]);
    const rows = screen.getAllByTestId('eval-image-row');
    expect(rows.map((r) => within(r).getAllByTestId('eval-image').length)).toEqual([4, 4]);
    expect(within(rows[1]).getByRole('rowheader').textContent).toMatch(/^Step 600\s*DINO 0\.6300$/);
    expect(
      within(rows[1])
        .getAllByTestId('eval-image')
        .map((img) => img.getAttribute('alt')),
    ).toEqual([
      'Step 600: a photo of sks dog, seed 7',
      'Step 600: a photo of sks dog, seed 8',
      'Step 600: sks dog on the moon, seed 7',
      'Step 600: sks dog on the moon, seed 8',
    ]);
  });

  test('when no checkpoint beats the base model: no row is the pick or in use, the reason and what to try are shown, and the measured band', async () => {
    const e = fx.evaluation({
      metric: 'toy',
      baseline: { step: null, dino: 0.327, clipT: null, images: 8, prompt: 1 },
      rows: [
        { step: 300, dino: 0.323, clipT: null, images: 8, prompt: 1 },
        { step: 600, dino: 0.3283, clipT: null, images: 8, prompt: 0.875 },
      ],
      noiseBand: 0.0412,
      best: null,
      reason: 'no checkpoint beats the base model by more than the noise: the best, step 600, scores 0.3283',
      suggestion: 'train more steps or with a higher learning rate',
    });
    await renderEvaluate({ 'evaluation.get': () => e });
    await waitFor(() => screen.getAllByTestId('score-row'));
    expect(screen.getAllByTestId('score-row').map((r) => r.dataset.best)).toEqual(['false', 'false']);
    expect(screen.queryByText("rule's pick")).toBeNull();
    expect(screen.queryByText('in use')).toBeNull();
    const note = screen.getByTestId('eval-no-pick').textContent ?? '';
    expect(note).toContain(
      'No checkpoint beats the base model. no checkpoint beats the base model by more than the noise',
    );
    expect(note).toContain('Try: train more steps or with a higher learning rate.');
    expect(screen.getByTestId('score-noise').textContent).toMatch(/^Differences up to 0\.0412 are within the noise/);
  });

  test('a pick hides the no-pick note', async () => {
    await renderEvaluate({ 'evaluation.get': () => fx.evaluation({ noiseBand: 0.02 }) });
    await waitFor(() => screen.getAllByTestId('score-row'));
    expect(screen.queryByTestId('eval-no-pick')).toBeNull();
  });
});

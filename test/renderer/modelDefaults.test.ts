// @vitest-environment jsdom
/** The "default for this model" hints, the Generate draft from the model's sampling defaults, and when the "No GPU" banner shows. */
import { fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import { describe, expect, it } from 'vitest';
import TrainScreen from '../../src-renderer/screens/TrainScreen.svelte';
import { startStudio } from './fakes.ts';
import * as fx from './fixtures.ts';
import type { BackendAdvice } from '../../src-renderer/lib/advice.ts';
import { LONG_TRAINING_S, modelDefaultHint, slowTrainingAdvice } from '../../src-renderer/lib/modelDefaults.ts';

describe('modelDefaultHint', () => {
  const toy = { steps: 200, learningRate: 2e-3 };
  it("says 'default for this model' at the model's value, names the default when changed, else the general hint", () => {
    expect(modelDefaultHint(toy, 'learningRate', 2e-3, '1e-4 is a safe start')).toBe('default for this model');
    expect(modelDefaultHint(toy, 'learningRate', 1e-4, '1e-4 is a safe start')).toBe(
      '0.002 is the default for this model',
    );
    expect(modelDefaultHint(toy, 'rank', 8, '4-16')).toBe('4-16');
    expect(modelDefaultHint(null, 'steps', 800, '800 suits 3-20 photos')).toBe('800 suits 3-20 photos');
  });
});

describe('slowTrainingAdvice', () => {
  const warning: BackendAdvice = { level: 'warning', message: 'No GPU found: ... very slow', fix: 'install a driver' };
  const error: BackendAdvice = { level: 'error', message: 'No compute backend could start', fix: 'x' };
  it('shows the CPU warning only when the estimate is long, or with no estimate for a model above 128 px', () => {
    expect(slowTrainingAdvice(warning, 60, 64)).toBeNull();
    expect(slowTrainingAdvice(warning, LONG_TRAINING_S + 1, 64)).toBe(warning);
    expect(slowTrainingAdvice(warning, null, 64)).toBeNull();
    expect(slowTrainingAdvice(warning, null, 512)).toBe(warning);
    expect(slowTrainingAdvice(warning, null, null)).toBe(warning);
    expect(slowTrainingAdvice(error, 10, 64)).toBe(error);
    expect(slowTrainingAdvice(null, 99_999, 512)).toBeNull();
  });
});

describe('the screens with a model that has defaults', () => {
  const toy = fx.base({
    path: '/m/toy-sd',
    name: 'toy-sd',
    native: 64,
    defaults: {
      training: { learningRate: 0.002, steps: 200 },
      sampling: { steps: 20, scheduler: 'ddim', guidanceScale: 7.5, width: 64, height: 64 },
    },
  });

  it("Train: 'default for this model' beside a value at the model's default, and no 'No GPU' banner for a 64 px model", async () => {
    const { studio } = await startStudio({ 'models.bases': () => [toy], 'system.doctor': () => fx.doctor('wasm') });
    render(TrainScreen, { training: studio.training, advice: studio.system.advice, model: studio.projects.model });
    // The fixture project's settings are the schema's (1e-4, 800 steps): the hint names the model's value.
    expect(screen.getByText('0.002 is the default for this model')).toBeTruthy();
    expect(screen.getByText('200 is the default for this model')).toBeTruthy();
    await fireEvent.input(screen.getByTestId('setting-lr'), { target: { value: '0.002' } });
    expect(screen.getByText('default for this model')).toBeTruthy();
    expect(screen.getByText('4-16; higher learns more detail')).toBeTruthy(); // rank: the model names none
    expect(studio.system.advice?.message).toMatch(/No GPU/);
    expect(screen.queryByTestId('backend-notice')).toBeNull();
  });

  it("Train: the background-caption switch says the model's default and reaches training.start", async () => {
    const toyWorld = fx.base({ ...toy, defaults: { training: { captionBackground: true } } });
    const { studio, transport } = await startStudio({
      'models.bases': () => [toyWorld],
      'training.start': () => ({ jobId: 'j9', runId: 'r9' }),
    });
    render(TrainScreen, { training: studio.training, advice: studio.system.advice, model: studio.projects.model });
    const box = screen.getByTestId('setting-caption-background') as HTMLInputElement;
    const hint = () => document.getElementById('t-caption-bg-hint')?.textContent;
    // The fixture project's settings are the schema's (off): the hint names the model's value.
    expect(box.checked).toBe(false);
    expect(hint()).toBe('On is the default for this model');
    await fireEvent.click(box);
    expect(hint()).toBe('default for this model');
    await fireEvent.click(screen.getByTestId('train-button'));
    await waitFor(() => expect(transport.paramsOf('training.start')).toHaveLength(1));
    expect(transport.paramsOf('training.start')[0]?.settings?.captionBackground).toBe(true);
  });

  it("Generate: the draft starts from the model's sampling defaults, never over the user's own values", async () => {
    const { studio } = await startStudio();
    const g = studio.generation;
    g.draft.steps = 33;
    g.useModelDefaults(64, toy.defaults!.sampling!);
    expect([g.draft.width, g.draft.height, g.draft.steps, g.draft.scheduler, g.draft.guidanceScale]).toEqual([
      64,
      64,
      33,
      'ddim',
      7.5,
    ]);
  });
});

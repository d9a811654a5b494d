/** The Train screen's "default for this model" hints and when the "No GPU" banner shows (pure functions). */
import { describe, expect, it } from 'vitest';
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

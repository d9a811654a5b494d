import { describe, expect, it } from 'vitest';
import { trainingSessionExtra } from '../../src-main/engine/onnx/trainStepGraph.ts';

describe('trainingSessionExtra (the ONNX training session options)', () => {
  it('turns off CSE always, and the CPU fallback only on GPU providers', () => {
    expect(trainingSessionExtra(['cpu'])).toEqual({
      optimization: { disable_specified_optimizers: 'CommonSubexpressionElimination' },
    });
    expect(trainingSessionExtra(['webgpu']).session).toEqual({ disable_cpu_ep_fallback: '1' });
  });

  it('adds the optimizers asked for to the comma-separated list, and prepacking off', () => {
    const extra = trainingSessionExtra(['cpu'], { prepacking: false, disableOptimizers: ['NchwcTransformer'] });
    expect(extra.optimization.disable_specified_optimizers).toBe('CommonSubexpressionElimination,NchwcTransformer');
    expect(extra.session).toEqual({ disable_prepacking: '1' });
  });
});

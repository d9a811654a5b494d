import { describe, expect, it } from 'vitest';
import { trainingSessionExtra, trainStepWeightLayout } from '../../src-main/engine/onnx/trainStepGraph.ts';

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

describe('trainStepWeightLayout (how the step holds the frozen weights)', () => {
  it('holds each weight once on the CPU: Gemm, no prepacking, no NCHWc reordering', () => {
    expect(trainStepWeightLayout(['cpu'], {})).toEqual({
      linearLayout: 'gemm',
      prepacking: false,
      disableOptimizers: ['NchwcTransformer'],
    });
  });

  it('keeps MatMul and the runtime defaults on GPU providers, and what the caller asks for anywhere', () => {
    expect(trainStepWeightLayout(['webgpu'], {})).toEqual({
      linearLayout: 'matmul',
      prepacking: true,
      disableOptimizers: [],
    });
    expect(trainStepWeightLayout(['cpu'], { linearLayout: 'matmul', prepacking: true, disableOptimizers: [] })).toEqual(
      {
        linearLayout: 'matmul',
        prepacking: true,
        disableOptimizers: [],
      },
    );
  });
});

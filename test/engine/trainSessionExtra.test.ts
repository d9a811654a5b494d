import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import onnxProto from 'onnx-proto';
import type * as OrtTypes from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { GraphBuilder } from '../../src-main/engine/onnx/graphBuilder.ts';
import {
  SMALL_MODEL_BYTES,
  FLIPPED_FILTER_MIN_PIXELS,
  trainingSessionExtra,
  trainStepArena,
  trainStepMemPattern,
  trainStepWeightLayout,
} from '../../src-main/engine/onnx/trainStepGraph.ts';

// The session check needs a session option OnnxSession does not expose (optimizedModelFilePath).
const ort = createRequire(import.meta.url)('onnxruntime-node') as typeof OrtTypes;

/** The ops (domain:type) of the graph ONNX Runtime runs after its optimizations with `extra`. */
async function optimizedOps(bytes: Uint8Array, extra: Record<string, Record<string, string>>): Promise<string[]> {
  const dir = mkdtempSync(join(tmpdir(), 'train-extra-'));
  const file = join(dir, 'optimized.onnx');
  try {
    const session = await ort.InferenceSession.create(bytes, {
      executionProviders: ['cpu'],
      graphOptimizationLevel: 'all',
      optimizedModelFilePath: file,
      logSeverityLevel: 3,
      extra,
    });
    await session.release();
    return (onnxProto.onnx.ModelProto.decode(readFileSync(file)).graph?.node ?? []).map(
      (n) => `${n.domain ?? ''}:${n.opType}`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('trainingSessionExtra (the ONNX training session options)', () => {
  it('turns off CSE always, the CPU fallback on GPU providers, and spinning threads on the CPU', () => {
    expect(trainingSessionExtra(['cpu'])).toEqual({
      optimization: { disable_specified_optimizers: 'CommonSubexpressionElimination' },
      session: { 'intra_op.allow_spinning': '0' },
    });
    expect(trainingSessionExtra(['webgpu']).session).toEqual({ disable_cpu_ep_fallback: '1' });
  });

  it("adds the optimizers asked for to ONNX Runtime's ';'-separated list, and prepacking off", () => {
    const extra = trainingSessionExtra(['cpu'], { prepacking: false, disableOptimizers: ['NchwcTransformer'] });
    expect(extra.optimization.disable_specified_optimizers).toBe('CommonSubexpressionElimination;NchwcTransformer');
    expect(extra.session).toEqual({ 'intra_op.allow_spinning': '0', disable_prepacking: '1' });
  });

  it('turns every listed optimizer off in ONNX Runtime: CSE and NCHWc reordering both', async () => {
    // Conv -> two identical Relus (CSE merges them) -> Add -> Conv (NCHWc reorders 3x3 filters).
    const g = new GraphBuilder('extra_check');
    const x = g.input('x', 'float32', [1, 16, 8, 8]);
    const w = g.constant(new Array(16 * 16 * 9).fill(0.01), [16, 16, 3, 3], 'float32');
    const y = g.op('Conv', [x, w], { pads: [1, 1, 1, 1] });
    const sum = g.op('Add', [g.op('Relu', [y]), g.op('Relu', [y])]);
    g.output(g.op('Conv', [sum, w], { pads: [1, 1, 1, 1] }), 'y', [1, 16, 8, 8]);
    const bytes = g.toBytes();
    const defaults = await optimizedOps(bytes, {});
    expect(defaults.filter((op) => op.endsWith(':Relu')).length, 'CSE merges the Relus by default').toBeLessThan(2);
    expect(
      defaults.some((op) => op.includes('nchwc')),
      'NCHWc is on by default on x64',
    ).toBe(true);
    const ops = await optimizedOps(bytes, trainingSessionExtra(['cpu'], { disableOptimizers: ['NchwcTransformer'] }));
    expect(ops.filter((op) => op.endsWith(':Relu')).length).toBe(2);
    expect(ops.filter((op) => op.includes('nchwc'))).toEqual([]);
  });
});

describe('trainStepWeightLayout (how the step holds the frozen weights)', () => {
  it('holds each weight once on the CPU (Gemm, no prepacking, no NCHWc reordering) but for flipped copies of the high-resolution filters', () => {
    expect(trainStepWeightLayout(['cpu'], {})).toEqual({
      linearLayout: 'gemm',
      prepacking: false,
      disableOptimizers: ['NchwcTransformer'],
      flippedFilterMinPixels: FLIPPED_FILTER_MIN_PIXELS,
    });
  });

  it('keeps MatMul and the runtime defaults on GPU providers, and what the caller asks for anywhere', () => {
    expect(trainStepWeightLayout(['webgpu'], {})).toEqual({
      linearLayout: 'matmul',
      prepacking: true,
      disableOptimizers: [],
      flippedFilterMinPixels: undefined,
    });
    expect(
      trainStepWeightLayout(['cpu'], {
        linearLayout: 'matmul',
        prepacking: true,
        disableOptimizers: [],
        flippedFilterMinPixels: Number.POSITIVE_INFINITY,
      }),
    ).toEqual({
      linearLayout: 'matmul',
      prepacking: true,
      disableOptimizers: [],
      flippedFilterMinPixels: Number.POSITIVE_INFINITY,
    });
  });
});

describe('trainStepArena (ONNX Runtime CPU arena for the training session)', () => {
  it('is on for a small model on the CPU provider, the process default otherwise', () => {
    expect(trainStepArena(['cpu'], 10e6, {})).toBe(true);
    expect(trainStepArena(['cpu'], SMALL_MODEL_BYTES, {})).toBeUndefined(); // SD 1.5: 3.4 GB
    expect(trainStepArena(['webgpu'], 10e6, {})).toBeUndefined();
  });

  it('leaves the choice to SINGLORA_ORT_ARENA when it is set, either way', () => {
    expect(trainStepArena(['cpu'], 10e6, { SINGLORA_ORT_ARENA: '0' })).toBeUndefined();
    expect(trainStepArena(['cpu'], 4e9, { SINGLORA_ORT_ARENA: '1' })).toBeUndefined();
  });
});

describe('trainStepMemPattern (ONNX Runtime memory pattern for the training session)', () => {
  it('is off on the CPU provider (a planned block over the peak from the second step on), the default elsewhere', () => {
    expect(trainStepMemPattern(['cpu'])).toBe(false);
    expect(trainStepMemPattern(['webgpu', 'cpu'])).toBeUndefined();
  });
});

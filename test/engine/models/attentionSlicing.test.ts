/**
 * Attention slicing bounds memory: a self-attention over a 64x64 latent (4096 tokens, 8 heads, as
 * in SD 1.5's first block; 8 channels per head here instead of 40 to keep the test fast) must
 * never produce a tensor larger than `attentionOptions.maxScoreElements`. Checked with
 * `tf.profile`, which records the output shape of every kernel that runs (so the scores, the
 * scaled scores and the softmax are all seen) and the peak of live tensor bytes.
 * Unsliced, the scores alone would be 8 * 4096 * 4096 floats = 512 MiB.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { tf } from '../../../src-main/engine/backend/tf.ts';
import { Attention } from '../../../src-main/engine/models/layers/attention.ts';
import { attentionOptions } from '../../../src-main/engine/models/ops/tfAttention.ts';
import { tfOps } from '../../../src-main/engine/models/ops/tfOps.ts';
import { loadParams, randomSource } from '../../../src-main/engine/models/layers/module.ts';
import { useBackend } from '../../helpers/backend.ts';

useBackend('wasm');

const TOKENS = 64 * 64;
const HEADS = 8;
const HEAD_DIM = 8;
const DIM = HEADS * HEAD_DIM;
const defaultBudget = attentionOptions.maxScoreElements;

afterEach(() => {
  attentionOptions.maxScoreElements = defaultBudget;
});

async function profiled(attn: Attention, x: tf.Tensor, budget: number) {
  attentionOptions.maxScoreElements = budget;
  const startBytes = tf.memory().numBytes;
  const info = await tf.profile(() => attn.forward(tfOps, x));
  const sizes = info.kernels.map((k) => ({
    name: k.name,
    size: Math.max(0, ...k.outputShapes.map((s) => (s ?? []).reduce((a, b) => a * b, 1))),
  }));
  const largest = sizes.reduce((a, b) => (b.size > a.size ? b : a));
  const largestMatMul = Math.max(...sizes.filter((s) => s.name === 'BatchMatMul').map((s) => s.size));
  return { out: info.result as tf.Tensor, largest, largestMatMul, extraPeakBytes: info.peakBytes - startBytes };
}

describe('attention slicing', () => {
  it('a 64x64-latent self-attention never materialises a scores slice over the budget', async () => {
    const attn = new Attention(DIM, HEADS, HEAD_DIM);
    await loadParams(attn, randomSource(attn, 3), 'attention');
    const x = tf.randomNormal([1, TOKENS, DIM], 0, 1, 'float32', 9);
    const inputBytes = TOKENS * DIM * 4;

    // Row slicing: 2^20 scores = 256 query rows of one head per slice.
    const small = await profiled(attn, x, 2 ** 20);
    // Head slicing: the default 2^24 scores = one head's full 4096 x 4096 per slice.
    const large = await profiled(attn, x, 2 ** 24);
    for (const [budget, r] of [
      [2 ** 20, small],
      [2 ** 24, large],
    ] as const) {
      console.log(
        `[slicing] budget ${budget}: largest kernel output ${r.largest.size} (${r.largest.name}), largest BatchMatMul ${r.largestMatMul}, extra peak ${(r.extraPeakBytes / 2 ** 20).toFixed(1)} MiB`,
      );
      expect(r.largest.size).toBeLessThanOrEqual(budget);
      expect(r.largestMatMul).toBe(budget); // the scores slices are really there, at the budget
      // At most a few score-sized tensors (scores, scaled, softmax) plus input-sized ones are live.
      expect(r.extraPeakBytes).toBeLessThan(4 * budget * 4 + 16 * inputBytes);
    }

    const { maxDiff, maxRef } = tf.tidy(() => ({
      maxDiff: tf.max(tf.abs(tf.sub(small.out, large.out))).dataSync()[0],
      maxRef: tf.max(tf.abs(large.out)).dataSync()[0],
    }));
    expect(maxDiff).toBeLessThanOrEqual(1e-5 * maxRef);
    tf.dispose([small.out, large.out, x]);
    attn.dispose();
    expect(tf.memory().numTensors).toBe(0);
  });
});

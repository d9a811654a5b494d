/**
 * Memory-efficient attention on wasm: the op contract (values and gradients equal the plain
 * path's), the same adapter gradients through a small UNet, and a backward pass that never holds
 * more than one scores slice.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tf, type Tensor } from '../../../src-main/engine/backend/tf.ts';
import { AdapterSet, defaultAdapterSpec } from '../../../src-main/engine/adapters/adapterSet.ts';
import {
  attend,
  attentionOptions,
  withAttentionMode,
  type AttentionMode,
} from '../../../src-main/engine/models/ops/tfAttention.ts';
import { memoryEfficientAttend } from '../../../src-main/engine/models/ops/memoryEfficientAttention.ts';
import { UNet2DConditionModel } from '../../../src-main/engine/models/unet2dCondition.ts';
import { Rng } from '../../../src-main/engine/random.ts';
import { memoryEfficientAttentionSuite } from '../../helpers/attentionCases.ts';
import { expectNoLeak, maxAbsDiff, useBackend } from '../../helpers/backend.ts';
import { FIXTURES } from '../../helpers/fixtures.ts';

useBackend('wasm');
memoryEfficientAttentionSuite();

describe('memory-efficient attention in a model', () => {
  it("gives the same adapter gradients through tiny-a's UNet as the plain attention", async () => {
    const unet = await UNet2DConditionModel.load(join(FIXTURES, 'tiny-a/model/unet'));
    const set = AdapterSet.inject(unet, defaultAdapterSpec({ rank: 4, rampSteps: 0, initStd: 0.1 }), {
      rng: new Rng(3),
    });
    const rng = new Rng(9);
    const x = tf.tensor(rng.normal(2 * 16 * 16 * 4), [2, 16, 16, 4]);
    const ctx = tf.tensor(rng.normal(2 * 77 * 32), [2, 77, 32]);
    const target = tf.tensor(rng.normal(2 * 16 * 16 * 4), [2, 16, 16, 4]);
    const vars = set.variables();
    expect(attentionOptions.memoryEfficientMinScores).toBe(0); // every attention of this small UNet takes the new path
    const gradients = (mode: AttentionMode) =>
      withAttentionMode(mode, async () => {
        const { value, grads } = tf.variableGrads(
          () => tf.losses.meanSquaredError(target, unet.forward(x, [500, 20], ctx)) as tf.Scalar,
          vars,
        );
        const out = {
          loss: (await value.data())[0],
          grads: await Promise.all(vars.map(async (v) => (await grads[v.name].data()) as Float32Array)),
        };
        tf.dispose([value, ...Object.values(grads)]);
        return out;
      });
    const plain = await gradients('plain');
    const efficient = await expectNoLeak(() => gradients('memory-efficient'));
    expect(attentionOptions.mode).toBe('plain'); // withAttentionMode put it back
    expect(efficient.loss).toBeCloseTo(plain.loss, 6);
    let worst = 0;
    let nonzero = 0;
    for (let i = 0; i < plain.grads.length; i++) {
      const d = maxAbsDiff(efficient.grads[i], plain.grads[i]);
      expect(d.maxAbs, `${vars[i].name}: max |diff| ${d.maxAbs}, max |ref| ${d.maxRef}`).toBeLessThanOrEqual(
        1e-5 * d.maxRef,
      );
      if (d.maxRef > 0) nonzero++;
      worst = Math.max(worst, d.rel);
    }
    console.log(
      `[memory-efficient attention, tiny-a UNet] ${vars.length} adapter tensors, worst max |diff| / max |ref| ${worst.toExponential(2)}`,
    );
    expect(nonzero).toBe(vars.length);
    expect(worst, 'identical to the last bit: the memory-efficient path cannot have run').toBeGreaterThan(0);
    tf.dispose([x, ctx, target]);
    set.remove();
    unet.dispose();
  });
});

describe('memory-efficient attention memory', () => {
  it('its backward pass holds one scores slice, where the plain one keeps them all', async () => {
    // 1024 tokens, 4 heads: 4 x 1024 x 1024 scores (16 MiB) in all; the budget is 2^16 scores
    // (64 query rows of one head, 256 KiB).
    const [b, s, heads, d, budget] = [1, 1024, 4, 8, 2 ** 16];
    const rng = new Rng(5);
    const q = tf.tensor3d(rng.normal(b * s * heads * d), [b, s, heads * d]);
    const k = tf.tensor3d(rng.normal(b * s * heads * d), [b, s, heads * d]);
    const v = tf.tensor3d(rng.normal(b * s * heads * d), [b, s, heads * d]);
    const measure = async (fn: typeof attend) => {
      const before = tf.memory().numBytes;
      const info = await tf.profile(() => {
        const g = tf.grads((a: Tensor, bb: Tensor, c: Tensor) => tf.sum(fn(a, bb, c, heads, undefined, budget)));
        return g([q, k, v]);
      });
      const largest = Math.max(
        ...info.kernels.map((kk) => Math.max(0, ...kk.outputShapes.map((sh) => (sh ?? []).reduce((x, y) => x * y, 1)))),
      );
      tf.dispose(info.result as Tensor[]);
      return { extraPeakMiB: (info.peakBytes - before) / 2 ** 20, largest };
    };
    const plain = await measure(attend);
    const efficient = await expectNoLeak(() => measure(memoryEfficientAttend));
    console.log(
      `[memory-efficient attention, backward of 4 x 1024^2 scores, budget 2^16] extra peak: plain ${plain.extraPeakMiB.toFixed(1)} MiB, memory-efficient ${efficient.extraPeakMiB.toFixed(1)} MiB; largest tensor ${plain.largest} vs ${efficient.largest} elements`,
    );
    expect(efficient.largest).toBeLessThanOrEqual(budget);
    // All 4 heads' probabilities (16 MiB) stay on the plain tape. The memory-efficient pass holds
    // a few slices (0.25 MiB each) and q-sized tensors (0.125 MiB each: head layouts, their
    // transposes, group and row pieces, gradients): bounded by 4 slices + 64 of those.
    const inputMiB = (b * s * heads * d * 4) / 2 ** 20;
    expect(plain.extraPeakMiB).toBeGreaterThan(16);
    expect(efficient.extraPeakMiB).toBeLessThan((4 * budget * 4) / 2 ** 20 + 64 * inputMiB);
    expect(efficient.extraPeakMiB).toBeLessThan(plain.extraPeakMiB / 10);
    tf.dispose([q, k, v]);
  });
});

/**
 * Gradient checkpointing per UNet block gives the same adapter gradients as the plain backward
 * pass (within float noise), on tiny-a's UNet with SingLoRA adapters, and leaks nothing.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf, type Tensor } from '../../src-main/engine/backend/tf.ts';
import { AdapterSet, defaultAdapterSpec } from '../../src-main/engine/adapters/adapterSet.ts';
import { UNet2DConditionModel } from '../../src-main/engine/models/unet2dCondition.ts';
import { Rng } from '../../src-main/engine/random.ts';
import { blockOf, checkpointingRunner } from '../../src-main/engine/train/gradientCheckpointing.ts';
import { expectNoLeak, maxAbsDiff, useBackend } from '../helpers/backend.ts';
import { FIXTURES } from '../helpers/fixtures.ts';

useBackend('wasm');

describe('gradient checkpointing', () => {
  let unet: UNet2DConditionModel;
  let set: AdapterSet;
  let x: Tensor;
  let ctx: Tensor;
  let target: Tensor;

  beforeAll(async () => {
    unet = await UNet2DConditionModel.load(join(FIXTURES, 'tiny-a/model/unet'));
    set = AdapterSet.inject(unet, defaultAdapterSpec({ rank: 4, rampSteps: 0, initStd: 0.1 }), { rng: new Rng(3) });
    const rng = new Rng(9);
    x = tf.tensor(rng.normal(2 * 16 * 16 * 4), [2, 16, 16, 4]);
    ctx = tf.tensor(rng.normal(2 * 77 * 32), [2, 77, 32]);
    target = tf.tensor(rng.normal(2 * 16 * 16 * 4), [2, 16, 16, 4]);
  });
  afterAll(() => {
    tf.dispose([x, ctx, target]);
    set.remove();
    unet.dispose();
  });

  async function gradients(checkpointed: boolean): Promise<{ loss: number; grads: Float32Array[] }> {
    const vars = set.variables();
    const byBlock = new Map<string, typeof vars>();
    for (const a of set.adapters) {
      const b = blockOf(a.path);
      byBlock.set(b, [...(byBlock.get(b) ?? []), ...a.layer.variables()]);
    }
    const runBlock = checkpointed ? checkpointingRunner((name) => byBlock.get(name) ?? []) : undefined;
    const { value, grads } = tf.variableGrads(
      () => tf.losses.meanSquaredError(target, unet.forward(x, [500, 20], ctx, { runBlock })) as tf.Scalar,
      vars,
    );
    const out = {
      loss: (await value.data())[0],
      grads: await Promise.all(vars.map(async (v) => (await grads[v.name].data()) as Float32Array)),
    };
    tf.dispose([value, ...Object.values(grads)]);
    return out;
  }

  it('gives the same adapter gradients as the plain backward pass', async () => {
    const plain = await gradients(false);
    const ckpt = await expectNoLeak(() => gradients(true));
    expect(ckpt.loss).toBeCloseTo(plain.loss, 6);
    let worst = 0;
    let nonzero = 0;
    for (let i = 0; i < plain.grads.length; i++) {
      const d = maxAbsDiff(ckpt.grads[i], plain.grads[i]);
      worst = Math.max(worst, d.rel);
      if (d.maxRef > 0) nonzero++;
    }
    console.log(
      `gradient checkpointing: ${plain.grads.length} adapter gradients, worst max|diff|/max|ref| ${worst.toExponential(2)}`,
    );
    expect(nonzero).toBe(plain.grads.length);
    expect(worst).toBeLessThan(1e-5);
  });
});

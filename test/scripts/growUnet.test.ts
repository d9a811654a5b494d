/**
 * The toy build's stage 4 may grow the UNet (scripts/build-toy-model.ts, `growUnet`): more
 * transformer blocks per attention, the new ones starting as identities. The grown UNet must
 * compute exactly what the saved one does (each new block adds three zero residuals), so the
 * stage starts from stage 3's function and only then learns.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { growUnet, TOY_CONFIG, unetArchitecture } from '../../scripts/build-toy-model.ts';
import { initBackend, tf } from '../../src-main/engine/backend/tf.ts';
import { UNet2DConditionModel } from '../../src-main/engine/models/unet2dCondition.ts';
import { Rng } from '../../src-main/engine/random.ts';
import { TOY_MODEL_DIR } from '../../src-main/engine/toy/toyModel.ts';

describe('growUnet', () => {
  it('a UNet grown to 2 transformer blocks per attention computes what the saved one does, and has them', async () => {
    await initBackend();
    const folder = join(TOY_MODEL_DIR, 'unet');
    const saved = await UNet2DConditionModel.load(folder);
    const grown = await growUnet(folder, { ...TOY_CONFIG.unet, transformer_layers_per_block: 2 }, 5);
    const rng = new Rng(3);
    const size = TOY_CONFIG.unet.sample_size;
    const x = tf.tensor4d(rng.normal(2 * size * size * 4), [2, size, size, 4]);
    const context = tf.tensor3d(rng.normal(2 * 77 * 64), [2, 77, 64]);
    const a = await saved.forward(x, [10, 700], context).data();
    const b = await grown.forward(x, [10, 700], context).data();
    expect(Array.from(b)).toEqual(Array.from(a));
    const keys = Array.from(grown.namedParams(), ([k]) => k);
    const second = keys.filter((k) => /\.transformer_blocks\.1\./.test(k));
    expect(second.length, 'the grown UNet has second transformer blocks').toBeGreaterThan(0);
    expect(keys.length).toBe(Array.from(saved.namedParams()).length + second.length);
    // Not identities by accident: the new blocks' other weights are drawn, not zero.
    const q = grown.namedParams();
    for (const [k, p] of q)
      if (k.endsWith('transformer_blocks.1.attn1.to_q.weight'))
        expect((await p.value.abs().max().data())[0]).toBeGreaterThan(0);
    tf.dispose([x, context]);
    saved.dispose();
    grown.dispose();
  });
});

describe('unetArchitecture (--unet-channels, --unet-layers)', () => {
  it('without flags is the toy UNet, key for key, so the one-shot build still gives the committed model', () => {
    expect(JSON.stringify(unetArchitecture(undefined, 1))).toBe(JSON.stringify(TOY_CONFIG.unet));
  });

  it('gives one cross-attention block per width, and names the flag of a width GroupNorm cannot split', () => {
    const wide = unetArchitecture('64,128,128', 2);
    expect(wide.block_out_channels).toEqual([64, 128, 128]);
    expect(wide.down_block_types).toEqual(Array(3).fill('CrossAttnDownBlock2D'));
    expect(wide.up_block_types).toEqual(Array(3).fill('CrossAttnUpBlock2D'));
    expect(wide.layers_per_block).toBe(2);
    expect(() => unetArchitecture('64,100', 1)).toThrow(/--unet-channels: .*multiples of 8.*"64,100"/);
    expect(() => unetArchitecture(undefined, 0)).toThrow(/--unet-layers/);
  });
});

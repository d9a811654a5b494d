/**
 * AutoencoderKL without reference activations: config defaults and errors, the SD 1.5 module tree
 * (no weights), odd image sizes. Reference activations: test/parity/vae.parity.test.ts.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf } from '../../../src-main/engine/backend/tf.ts';
import { AutoencoderKL, parseVaeConfig } from '../../../src-main/engine/models/autoencoderKL.ts';
import { FIXTURES } from '../../helpers/fixtures.ts';
import { expectNoLeak, useBackend } from '../../helpers/backend.ts';

useBackend('wasm');

const readJson = (path: string) => JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
const sd15 = readJson(join(FIXTURES, 'sd15_configs/vae/config.json'));

describe('parseVaeConfig', () => {
  it('fills the defaults a hub config omits (SD 1.5 has no scaling_factor key)', () => {
    const cfg = parseVaeConfig(sd15);
    expect(cfg.blockOutChannels).toEqual([128, 256, 512, 512]);
    expect(cfg.scalingFactor).toBe(0.18215);
    expect(cfg.shiftFactor).toBeNull();
    expect(cfg.useQuantConv).toBe(true);
    expect(cfg.midBlockAddAttention).toBe(true);
  });

  it.each([
    ['down_block_types', ['DownEncoderBlock2D', 'AttnDownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D']],
    ['up_block_types', ['UpDecoderBlock2D']],
    ['act_fn', 'gelu'],
    ['norm_num_groups', 0],
    ['scaling_factor', 'big'],
    ['some_future_option', true],
  ])('rejects %s = %j with an error naming the field', (key, value) => {
    expect(() => parseVaeConfig({ ...sd15, [key]: value })).toThrow(key);
  });
});

describe('SD 1.5 VAE module tree (no weights loaded)', () => {
  it('has 83,653,863 parameters and exactly the diffusers keys and shapes', () => {
    const vae = AutoencoderKL.fromConfig(sd15);
    expect(vae.parameterCount()).toBe(83653863);
    expect(vae.downsampleFactor).toBe(8);
    const want = readJson(join(FIXTURES, 'sd15_shapes.json')).vae as Record<string, number[]>;
    const got = Object.fromEntries([...vae.namedParams()].map(([k, p]) => [k, [...p.shape]]));
    expect(got).toEqual(want);
  });

  it('leaves out the mid-block attention and quant convs when the config says so', () => {
    const vae = AutoencoderKL.fromConfig({
      ...sd15,
      mid_block_add_attention: false,
      use_quant_conv: false,
      use_post_quant_conv: false,
    });
    const keys = [...vae.namedParams()].map(([k]) => k);
    expect(keys.some((k) => k.includes('attentions') || k.includes('quant_conv'))).toBe(false);
  });
});

describe('tiny-b VAE (x8 downsampling)', () => {
  let vae: AutoencoderKL;
  beforeAll(async () => {
    vae = await AutoencoderKL.load(join(FIXTURES, 'tiny-b/model/vae'));
  });
  afterAll(() => vae?.dispose());

  it('encodes odd, non-square images with the (0,1,0,1) pad and decodes back to 8x', async () => {
    const x = tf.randomUniform([1, 37, 50, 3], -1, 1, 'float32', 5);
    await expectNoLeak(() => {
      const { mean, logvar, std } = vae.encode(x);
      // 37 -> 18 -> 9 -> 4 and 50 -> 25 -> 12 -> 6, as floor((n + 1 - 3) / 2) + 1.
      expect(mean.shape).toEqual([1, 4, 6, 4]);
      const img = vae.decode(mean);
      expect(img.shape).toEqual([1, 32, 48, 3]);
      tf.dispose([mean, logvar, std, img]);
    });
    x.dispose();
  });
});

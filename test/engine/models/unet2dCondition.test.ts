/**
 * UNet2DConditionModel without reference activations: config parsing and defaults, the SD 1.5
 * module tree (no weights), odd latent sizes on tiny-b, the per-block hook, gradients, leaks.
 * Reference activations are checked in test/parity/unet.parity.test.ts.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf } from '../../../src-main/engine/backend/tf.ts';
import {
  UNet2DConditionModel,
  parseUNetConfig,
  type BlockRunner,
} from '../../../src-main/engine/models/unet2dCondition.ts';
import type { Linear } from '../../../src-main/engine/models/layers/linear.ts';
import { resizeNearest as upsampleNearest } from '../../../src-main/engine/models/ops/tfOps.ts';
import { sinusoidFrequencies } from '../../../src-main/engine/models/layers/embeddings.ts';
import { FIXTURES } from '../../helpers/fixtures.ts';
import { expectNoLeak, useBackend } from '../../helpers/backend.ts';

useBackend('wasm');

const readJson = (path: string) => JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
const sd15 = readJson(join(FIXTURES, 'sd15_configs/unet/config.json'));
const tinyA = readJson(join(FIXTURES, 'tiny-a/model/unet/config.json'));

describe('parseUNetConfig', () => {
  it('fills the diffusers defaults a hub config omits (SD 1.5)', () => {
    const cfg = parseUNetConfig(sd15);
    expect(cfg.blockOutChannels).toEqual([320, 640, 1280, 1280]);
    expect(cfg.numAttentionHeads).toEqual([8, 8, 8, 8]); // attention_head_dim 8 means 8 heads
    expect(cfg.crossAttentionDim).toEqual([768, 768, 768, 768]);
    expect(cfg.transformerLayersPerBlock).toEqual([1, 1, 1, 1]);
    expect(cfg.layersPerBlock).toEqual([2, 2, 2, 2]);
    expect(cfg.timeEmbedDim).toBe(1280);
    expect(cfg.useLinearProjection).toBe(false);
    expect(cfg.convInKernel).toBe(3);
    expect(cfg.upBlockTypes).toEqual(['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D']);
  });

  it('reads a full diffusers 0.27 config (tiny-a) and an empty one (all defaults)', () => {
    const a = parseUNetConfig(tinyA);
    expect(a.blockOutChannels).toEqual([32, 64]);
    expect(a.downBlockTypes).toEqual(['DownBlock2D', 'CrossAttnDownBlock2D']);
    expect(a.crossAttentionDim).toEqual([32, 32]);
    const d = parseUNetConfig({});
    expect(d.crossAttentionDim).toEqual([1280, 1280, 1280, 1280]); // diffusers' constructor default
    expect(d.sampleSize).toBeNull();
  });

  it.each([
    ['class_embed_type', 'timestep'],
    ['num_class_embeds', 10],
    ['addition_embed_type', 'text_time'],
    ['encoder_hid_dim', 768],
    ['attention_type', 'gated'],
    ['time_embedding_type', 'fourier'],
    ['time_cond_proj_dim', 256],
    ['dual_cross_attention', true],
    ['only_cross_attention', true],
    ['resnet_time_scale_shift', 'scale_shift'],
    ['mid_block_type', 'UNetMidBlock2DSimpleCrossAttn'],
    ['num_attention_heads', 8],
    ['act_fn', 'mish'],
    ['down_block_types', ['SimpleCrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D']],
    ['block_out_channels', [320, 640, 1280]],
    ['cross_attention_dim', [768, 768]],
    ['some_future_option', 1],
  ])('rejects %s = %j with an error naming the field', (key, value) => {
    expect(() => parseUNetConfig({ ...sd15, [key]: value })).toThrow(key);
  });

  it('accepts keys diffusers ignores for these block types', () => {
    expect(() =>
      parseUNetConfig({
        ...tinyA,
        resnet_out_scale_factor: 2,
        resnet_skip_time_act: true,
        cross_attention_norm: 'group_norm',
      }),
    ).not.toThrow();
  });
});

describe('SD 1.5 module tree (no weights loaded)', () => {
  it('has 859,520,964 parameters and exactly the diffusers keys and shapes', () => {
    const unet = UNet2DConditionModel.fromConfig(sd15);
    expect(unet.parameterCount()).toBe(859520964);
    const want = readJson(join(FIXTURES, 'sd15_shapes.json')).unet as Record<string, number[]>;
    const got = Object.fromEntries([...unet.namedParams()].map(([k, p]) => [k, [...p.shape]]));
    expect(Object.keys(got).sort()).toEqual(Object.keys(want).sort());
    expect(got).toEqual(want);
    expect(tf.memory().numTensors).toBe(0); // nothing allocated before loading
  });
});

describe('timestep sinusoid', () => {
  it('computes the frequencies in float32 steps like torch', () => {
    const f = sinusoidFrequencies(320, 0);
    expect(f.length).toBe(160);
    expect(f[0]).toBe(1);
    expect(f[1]).toBe(Math.fround(Math.exp(Math.fround(Math.fround(-Math.log(10000)) / 160))));
  });
});

describe('upsampleNearest', () => {
  it('picks floor(dst * in / out) like F.interpolate(mode="nearest"), including 2 -> 3', () => {
    const x = tf.tensor4d([0, 1, 10, 11], [1, 2, 2, 1]); // rows 0/1, cols 0/1
    const y = upsampleNearest(x, [3, 3]);
    expect(Array.from(y.dataSync())).toEqual([0, 0, 1, 0, 0, 1, 10, 10, 11]);
    const z = upsampleNearest(x, [4, 4]);
    expect(Array.from(z.dataSync()).slice(0, 8)).toEqual([0, 0, 1, 1, 0, 0, 1, 1]);
    tf.dispose([x, y, z]);
  });
});

describe('tiny-b (SD 1.5 topology, 3 downsamplers)', () => {
  let unet: UNet2DConditionModel;
  beforeAll(async () => {
    unet = await UNet2DConditionModel.load(join(FIXTURES, 'tiny-b/model/unet'));
  });
  afterAll(() => unet?.dispose());

  it('loads strictly: 684 tensors, 2,469,316 parameters', () => {
    expect([...unet.namedParams()].length).toBe(684);
    expect(unet.parameterCount()).toBe(2469316);
  });

  it('runs odd latent sides (width 12 -> 6 -> 3 -> 2 -> 3 -> 6 -> 12) without leaking', async () => {
    const sample = tf.randomNormal([1, 16, 12, 4], 0, 1, 'float32', 7);
    const context = tf.randomNormal([1, 77, 48], 0, 1, 'float32', 8);
    await expectNoLeak(() => {
      const out = unet.forward(sample, 999, context);
      expect(out.shape).toEqual([1, 16, 12, 4]);
      expect(Number.isFinite(tf.tidy(() => tf.max(tf.abs(out)).dataSync()[0]))).toBe(true);
      out.dispose();
    });
    tf.dispose([sample, context]);
  });

  it('checks its inputs with errors that name the shapes', () => {
    const sample = tf.zeros([1, 8, 8, 4]);
    const context = tf.zeros([1, 77, 32]);
    expect(() => unet.forward(sample, 1, context)).toThrow(/cross_attention_dim is 48/);
    expect(() => unet.forward(sample, [1, 2, 3], tf.zeros([1, 77, 48]))).toThrow(/3 timesteps for a batch of 1/);
    tf.dispose([sample, context]);
  });
});

describe('tiny-a: block hook and gradients', () => {
  let unet: UNet2DConditionModel;
  beforeAll(async () => {
    unet = await UNet2DConditionModel.load(join(FIXTURES, 'tiny-a/model/unet'));
  });
  afterAll(() => unet?.dispose());

  it('runs every down, mid and up block through runBlock, in order, with the same result', () => {
    const sample = tf.randomNormal([2, 8, 8, 4], 0, 1, 'float32', 1);
    const context = tf.randomNormal([2, 77, 32], 0, 1, 'float32', 2);
    const names: string[] = [];
    const recording: BlockRunner = (name, fn, inputs) => {
      names.push(name);
      return tf.tidy(() => fn(inputs)); // e.g. what a checkpointing runner would wrap
    };
    const plain = unet.forward(sample, [999, 10], context);
    const hooked = unet.forward(sample, tf.tensor1d([999, 10]), context, { runBlock: recording });
    expect(names).toEqual(['down_blocks.0', 'down_blocks.1', 'mid_block', 'up_blocks.0', 'up_blocks.1']);
    expect(tf.tidy(() => tf.max(tf.abs(tf.sub(plain, hooked))).dataSync()[0])).toBe(0);
    tf.dispose([sample, context, plain, hooked]);
  });

  it('is differentiable on wasm w.r.t. the sample and variables inside attention Linears (odd size 6x5)', () => {
    const start = tf.memory().numTensors;
    const block = unet.up_blocks[0].attentions![0].transformer_blocks[0];
    const toQ = block.attn1.to_q as Linear;
    const toK = block.attn2.to_k as Linear;
    // Param.setValue disposes the tensor it replaces, so keep copies to restore afterwards.
    const saved = [toQ.weight.value.clone(), toK.weight.value.clone()];
    const vq = tf.variable(saved[0]); // a variable shares the data of its initial value
    const vk = tf.variable(saved[1]);
    toQ.weight.setValue(vq);
    toK.weight.setValue(vk);
    const sample = tf.randomNormal([1, 6, 5, 4], 0, 1, 'float32', 3);
    const context = tf.randomNormal([1, 77, 32], 0, 1, 'float32', 4);
    const loss = () => tf.mean(tf.square(unet.forward(sample, 500.5, context))) as tf.Scalar;

    const { value, grads } = tf.variableGrads(loss);
    const gq = grads[vq.name];
    const gk = grads[vk.name];
    expect(gq.shape).toEqual([64, 64]);
    expect(gk.shape).toEqual([32, 64]);
    expect(tf.tidy(() => tf.norm(gk).dataSync()[0])).toBeGreaterThan(0);

    // Directional finite difference along a random direction of to_q.
    const base = vq.clone();
    const dir = tf.randomNormal(vq.shape, 0, 1, 'float32', 5);
    const eps = 1e-2;
    const lossAt = (sign: number) =>
      tf.tidy(() => {
        vq.assign(tf.add(base, tf.mul(dir, sign * eps)) as tf.Tensor2D);
        return loss().dataSync()[0];
      });
    const fd = (lossAt(1) - lossAt(-1)) / (2 * eps);
    vq.assign(base as tf.Tensor2D);
    const analytic = tf.tidy(() => tf.sum(tf.mul(gq, dir)).dataSync()[0]);
    console.log(
      `[unet grad] directional derivative: finite difference ${fd.toExponential(4)}, analytic ${analytic.toExponential(4)}`,
    );
    expect(Math.abs(fd - analytic)).toBeLessThan(1e-2 * Math.abs(analytic) + 1e-5);

    const gx = tf.grad((s: tf.Tensor) => tf.mean(tf.square(unet.forward(s, 500.5, context))))(sample);
    expect(gx.shape).toEqual([1, 6, 5, 4]);
    expect(tf.tidy(() => tf.norm(gx).dataSync()[0])).toBeGreaterThan(0);

    tf.dispose([value, gq, gk, base, dir, gx, sample, context]);
    toQ.weight.setValue(saved[0]); // disposes vq
    toK.weight.setValue(saved[1]); // disposes vk
    expect(tf.memory().numTensors).toBe(start);
  });
});

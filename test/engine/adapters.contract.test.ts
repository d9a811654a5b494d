/**
 * The adapter contract, run over SingLoRA and LoRA alike (PEFT style): base equality at the
 * start, merged == unmerged, merge/unmerge exact inverses, disabled == base, only adapter
 * parameters train, save/load and export/import round trips, non-square layers both ways, and no
 * tensor leaks.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf, type Tensor } from '../../src-main/engine/backend/tf.ts';
import {
  AdapterSet,
  DEFAULT_TARGETS,
  defaultAdapterSpec,
  matchesTarget,
  type AdapterSpec,
} from '../../src-main/engine/adapters/adapterSet.ts';
import { checkFits, injectFromFile, readAdapterFile, saveAdapter } from '../../src-main/engine/adapters/adapterFile.ts';
import { exportKohya, exportPeft } from '../../src-main/engine/adapters/export.ts';
import { planAdapter } from '../../src-main/engine/adapters/import.ts';
import { WeightPatcher } from '../../src-main/engine/adapters/patch.ts';
import { SingLoRALinear } from '../../src-main/engine/adapters/singlora.ts';
import { ramp } from '../../src-main/engine/adapters/ramp.ts';
import { adapterScale } from '../../src-main/engine/adapters/scale.ts';
import { Attention } from '../../src-main/engine/models/layers/attention.ts';
import { Linear } from '../../src-main/engine/models/layers/linear.ts';
import { tfOps } from '../../src-main/engine/models/ops/tfOps.ts';
import { loadParams, Module, randomSource } from '../../src-main/engine/models/layers/module.ts';
import { Rng } from '../../src-main/engine/random.ts';
import { expectNoLeak, maxAbsDiff, useBackend } from '../helpers/backend.ts';
import { FIXTURES } from '../helpers/fixtures.ts';
import { tempDir } from '../helpers/tempDir.ts';

useBackend('wasm');

/** Two transformer-like blocks whose attention layers are non-square both ways. */
class Block extends Module {
  attn1: Attention;
  attn2: Attention;
  constructor() {
    super();
    this.attn1 = new Attention(12, 2, 8); // to_q/k/v 12->16 (d_out > d_in), to_out 16->12
    this.attn2 = new Attention(12, 2, 8, 20); // to_k/v 20->16 (d_in > d_out)
  }
  apply(x: Tensor, ctx: Tensor): Tensor {
    return tf.tidy(() => {
      const h = tf.add(x, this.attn1.forward(tfOps, x));
      return tf.add(h, this.attn2.forward(tfOps, h, ctx));
    });
  }
}

class Net extends Module {
  blocks: Block[] = [new Block(), new Block()];
  apply(x: Tensor, ctx: Tensor): Tensor {
    return tf.tidy(() => this.blocks.reduce((h, b) => b.apply(h, ctx), x));
  }
}

async function makeNet(seed = 7): Promise<Net> {
  const net = new Net();
  await loadParams(net, randomSource(net, seed), 'net');
  return net;
}

async function weights(model: Module): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [k, p] of model.namedParams()) out.set(k, (await p.value.data()) as Float32Array);
  return out;
}

const RAMP = 10;
const methods: Array<AdapterSpec['method']> = ['singlora', 'lora'];
let x: Tensor;
let ctx: Tensor;
const dir = tempDir('adapters');

beforeAll(() => {
  x = tf.tensor(new Rng(1).normal(2 * 5 * 12), [2, 5, 12]);
  ctx = tf.tensor(new Rng(2).normal(2 * 7 * 20), [2, 7, 20]);
});
afterAll(() => {
  x.dispose();
  ctx.dispose();
});

/** An injected adapter set with non-trivial values (LoRA's B is randomised too). */
async function injected(net: Net, method: AdapterSpec['method'], seed = 3): Promise<AdapterSet> {
  const set = AdapterSet.inject(net, defaultAdapterSpec({ method, rank: 4, alpha: 6, rampSteps: RAMP, initStd: 0.2 }), {
    rng: new Rng(seed),
  });
  if (method === 'lora') {
    const rng = new Rng(seed + 100);
    const values = new Map<string, Float32Array>();
    for (const [name, v] of set.namedTensors())
      values.set(
        name,
        name.endsWith('lora_B') ? rng.normal(v.size).map((a) => a * 0.2) : ((await v.data()) as Float32Array),
      );
    set.assign(values);
  }
  return set;
}

describe('target patterns', () => {
  it('matches path suffixes at segment boundaries, with * and ^', () => {
    const p = 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q';
    expect(matchesTarget(p, 'attn1.to_q')).toBe(true);
    expect(matchesTarget(p, 'to_q')).toBe(true);
    expect(matchesTarget(p, 'attn2.to_q')).toBe(false);
    expect(matchesTarget(p, 'n1.to_q')).toBe(false);
    expect(matchesTarget(p, 'down_blocks.*.attentions.0.**.to_q')).toBe(true);
    expect(matchesTarget(p, '^attn1.to_q')).toBe(false);
    expect(matchesTarget(p, `^${p}`)).toBe(true);
    expect(matchesTarget('mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0', 'attn2.to_out.0')).toBe(true);
  });

  it('the default targets wrap every attention projection of the test net', async () => {
    const net = await makeNet();
    const set = AdapterSet.inject(net, defaultAdapterSpec(), { rng: new Rng(0) });
    expect(set.size).toBe(2 * 8);
    expect(DEFAULT_TARGETS).toHaveLength(8);
    set.remove();
    net.dispose();
  });
});

describe('ramp u(t)', () => {
  it('is min(t/T, 1), and T = 0 means no ramp', () => {
    expect(ramp(0, 100)).toBe(0);
    expect(ramp(25, 100)).toBe(0.25);
    expect(ramp(100, 100)).toBe(1);
    expect(ramp(1000, 100)).toBe(1);
    expect(ramp(0, 0)).toBe(1);
    expect(() => ramp(-1, 10)).toThrow(/step/);
  });
});

describe('adapter scale (alpha / r) · u · strength', () => {
  it('is computed by adapterScale, and each layer uses it (u = the ramp for SingLoRA, 1 for LoRA)', async () => {
    expect(adapterScale(16, 8, 0.25, 3)).toBe(1.5);
    expect(adapterScale(4, 8, 1, -1)).toBe(-0.5);
    const net = await makeNet();
    for (const method of methods) {
      const set = AdapterSet.inject(net, defaultAdapterSpec({ method, rank: 4, alpha: 6, rampSteps: 10 }), {
        rng: new Rng(3),
      });
      const layer = set.adapters[0].layer;
      layer.strength = 1.5;
      const u = method === 'singlora' ? ramp(4, 10) : 1;
      expect(layer.scale(4), method).toBe(adapterScale(6, 4, u, 1.5));
      expect(layer.scale(4), method).toBeCloseTo(1.5 * u * 1.5, 12);
      set.remove();
    }
    net.dispose();
  });
});

describe.each(methods)('%s adapter contract', (method) => {
  it('starts at exactly the base output (u(0) = 0 for SingLoRA, B = 0 for LoRA)', async () => {
    const net = await makeNet();
    const base = await net.apply(x, ctx).data();
    const set = AdapterSet.inject(net, defaultAdapterSpec({ method, rank: 4, alpha: 4, rampSteps: RAMP }), {
      rng: new Rng(5),
    });
    set.setStep(0);
    const out = await net.apply(x, ctx).data();
    expect(maxAbsDiff(out, base).maxAbs).toBe(0);
    if (method === 'singlora') {
      // ...and the update is real once the ramp has begun.
      set.setStep(RAMP);
      expect(maxAbsDiff(await net.apply(x, ctx).data(), base).maxAbs).toBeGreaterThan(1e-6);
    }
    set.remove();
    net.dispose();
  });

  it('merged output equals unmerged output within float noise', async () => {
    const net = await makeNet();
    const set = await injected(net, method);
    set.setStep(RAMP / 2);
    const unmerged = await net.apply(x, ctx).data();
    set.merge(RAMP / 2);
    const merged = await net.apply(x, ctx).data();
    const d = maxAbsDiff(merged, unmerged);
    console.log(`[${method}] merged vs unmerged: max abs ${d.maxAbs.toExponential(2)}, rel ${d.rel.toExponential(2)}`);
    expect(d.rel).toBeLessThan(1e-5);
    set.remove();
    net.dispose();
  });

  it('merging twice is idempotent at the same step and refused at another; unmerge restores the base weights exactly', async () => {
    const net = await makeNet();
    const before = await weights(net);
    const set = await injected(net, method);
    set.merge(RAMP);
    const once = await weights(net);
    set.merge(RAMP);
    expect(await weights(net)).toEqual(once);
    expect(() => set.merge(RAMP - 1)).toThrow(/already merged/);
    // merging changed the targeted weights...
    const changed = [...once].filter(([k, v]) => maxAbsDiff(v, before.get(k)!).maxAbs > 0).map(([k]) => k);
    expect(changed.length).toBe(16);
    expect(changed.every((k) => /attn[12]\.(to_q|to_k|to_v|to_out\.0)\.weight$/.test(k))).toBe(true);
    // ...and unmerging restores every one of them bit for bit.
    set.unmerge();
    expect(await weights(net)).toEqual(before);
    set.remove();
    net.dispose();
  });

  it('disabled equals the base output, unmerged or merged', async () => {
    const net = await makeNet();
    const base = await net.apply(x, ctx).data();
    const set = await injected(net, method);
    set.setStep(RAMP);
    set.setDisabled(true);
    expect(maxAbsDiff(await net.apply(x, ctx).data(), base).maxAbs).toBe(0);
    set.setDisabled(false);
    set.merge(RAMP);
    set.setDisabled(true);
    expect(maxAbsDiff(await net.apply(x, ctx).data(), base).maxAbs).toBe(0);
    set.setDisabled(false);
    expect(maxAbsDiff(await net.apply(x, ctx).data(), base).maxAbs).toBeGreaterThan(1e-6);
    set.remove();
    net.dispose();
  });

  it('an optimizer step changes only adapter parameters', async () => {
    const net = await makeNet();
    const baseBefore = await weights(net);
    const set = await injected(net, method);
    set.setStep(RAMP);
    const vars = set.variables();
    const adapterBefore = await Promise.all(vars.map((v) => v.data()));
    const opt = tf.train.adam(1e-2);
    const target = tf.randomNormal([2, 5, 12], 0, 1, 'float32', 9);
    opt.minimize(() => tf.losses.meanSquaredError(target, net.apply(x, ctx)) as tf.Scalar, false, vars)?.dispose();
    const adapterAfter = await Promise.all(vars.map((v) => v.data()));
    expect(adapterAfter.every((a, i) => maxAbsDiff(a, adapterBefore[i]).maxAbs > 0)).toBe(true);
    expect(await weights(net)).toEqual(baseBefore);
    opt.dispose();
    target.dispose();
    set.remove();
    net.dispose();
  });

  it('save -> load gives the same outputs', async () => {
    const net = await makeNet();
    const set = await injected(net, method);
    set.setStep(RAMP);
    const out = await net.apply(x, ctx).data();
    const file = join(dir, `${method}.safetensors`);
    const meta = await saveAdapter(file, set, {
      trainedSteps: RAMP,
      triggerToken: 'sks',
      classWord: 'dog',
      baseModelName: 'test-net',
      baseModelUnetSha256: 'abc',
    });
    expect(meta.effective_u).toBe(1);
    set.remove();
    const fresh = await makeNet();
    const loaded = injectFromFile(fresh, await readAdapterFile(file));
    expect(loaded.spec.method).toBe(method);
    expect(maxAbsDiff(await fresh.apply(x, ctx).data(), out).maxAbs).toBe(0);
    loaded.remove();
    fresh.dispose();
    net.dispose();
  });

  it('kohya and diffusers/PEFT exports import to the same merged weights (1e-6 relative)', async () => {
    const net = await makeNet();
    const set = await injected(net, method);
    const file = join(dir, `${method}-export.safetensors`);
    await saveAdapter(file, set, {
      trainedSteps: RAMP / 2,
      triggerToken: 'sks',
      classWord: 'dog',
      baseModelName: 'test-net',
      baseModelUnetSha256: 'abc',
    });
    set.merge(RAMP / 2);
    const merged = await weights(net);
    set.remove(); // unmerges
    const native = await readAdapterFile(file);
    for (const [fmt, exporter] of [
      ['kohya', exportKohya],
      ['peft', exportPeft],
    ] as const) {
      const out = join(dir, `${method}.${fmt}.safetensors`);
      await exporter(native, out);
      const plan = await planAdapter(out, { unet: net });
      expect(plan.report.format).toBe(fmt);
      expect(plan.report.unapplied).toEqual([]);
      expect(plan.report.appliedTensors).toBe(plan.report.totalTensors);
      const patcher = new WeightPatcher();
      plan.applyTo({ unet: net }, patcher);
      const patched = await weights(net);
      let worst = 0;
      for (const [k, v] of merged) worst = Math.max(worst, maxAbsDiff(patched.get(k)!, v).rel);
      console.log(`[${method}] ${fmt} export -> import vs merge: max rel ${worst.toExponential(2)}`);
      expect(worst).toBeLessThan(1e-6);
      patcher.restore();
      plan.dispose();
    }
    net.dispose();
  });

  it('is leak-free across inject, forward, merge, unmerge, deltaWeight and remove', async () => {
    const net = await makeNet();
    const start = tf.memory().numTensors;
    const set = await injected(net, method);
    await expectNoLeak(async () => {
      set.setStep(3);
      tf.dispose(net.apply(x, ctx));
      set.merge(3);
      tf.dispose(net.apply(x, ctx));
      set.setDisabled(true);
      tf.dispose(net.apply(x, ctx));
      set.setDisabled(false);
      set.unmerge();
      tf.dispose(set.deltaWeights(3).map((d) => d.delta));
    });
    set.remove();
    expect(tf.memory().numTensors).toBe(start); // the adapter's variables and their initial values are freed
    net.dispose();
  });
});

describe('SingLoRA exactness on non-square layers', () => {
  it.each([
    [12, 16],
    [20, 16],
    [16, 12],
  ])('dW = (alpha/r) u A[:d_out] A[:d_in]^T for a %i -> %i layer', async (dIn, dOut) => {
    const lin = new Linear(dIn, dOut, false);
    await loadParams(lin, randomSource(lin, 1), 'lin');
    const r = 3;
    const rows = Math.max(dIn, dOut);
    const A = new Rng(11).normal(rows * r);
    const layer = new SingLoRALinear(lin, { rank: r, alpha: 5, rampSteps: 8 }, A);
    const d = layer.deltaWeight(2);
    expect(d.shape).toEqual([dOut, dIn]);
    const got = await d.data();
    const s = (5 / r) * (2 / 8);
    let worst = 0;
    for (let i = 0; i < dOut; i++) {
      for (let j = 0; j < dIn; j++) {
        let acc = 0;
        for (let k = 0; k < r; k++) acc += A[i * r + k] * A[j * r + k];
        worst = Math.max(worst, Math.abs(got[i * dIn + j] - s * acc));
      }
    }
    expect(worst).toBeLessThan(1e-6);
    expect(layer.parameterCount()).toBe(rows * r);
    d.dispose();
    layer.dispose();
    lin.dispose();
  });
});

describe('adapter files', () => {
  it('loading into a model it does not fit says exactly what does not fit', async () => {
    const net = await makeNet();
    const set = await injected(net, 'singlora');
    const file = join(dir, 'fit.safetensors');
    await saveAdapter(file, set, {
      trainedSteps: 1,
      triggerToken: 'sks',
      classWord: 'dog',
      baseModelName: 'test-net',
      baseModelUnetSha256: 'abc',
    });
    set.remove();
    class Other extends Module {
      blocks: Block[] = [new Block()];
    }
    const other = new Other();
    other.blocks[0].attn2 = new Attention(12, 2, 8, 24);
    await loadParams(other, randomSource(other, 1), 'other');
    const f = await readAdapterFile(file);
    const problems = checkFits(f, other);
    expect(problems.some((p) => p.startsWith('unet.blocks.1.') && p.includes('no Linear layer'))).toBe(true);
    expect(problems.some((p) => p.includes('blocks.0.attn2.to_k.singlora_A') && p.includes('24->16'))).toBe(true);
    expect(() => injectFromFile(other, f)).toThrow(/does not fit this base model/);
    other.dispose();
    net.dispose();
  });

  it('rejects a file whose metadata is not an adapter, naming the field', async () => {
    const { writeSafetensors } = await import('../../src-main/engine/io/safetensors.ts');
    const file = join(dir, 'notadapter.safetensors');
    await writeSafetensors(
      file,
      { 'unet.x.singlora_A': { shape: [2, 1], data: new Float32Array(2) } },
      { format: 'something-else' },
    );
    await expect(readAdapterFile(file)).rejects.toThrow(/format/);
    expect(readFileSync(file).length).toBeGreaterThan(8);
  });
});

describe('parameter count on the real SD 1.5 UNet shapes (rank 8)', () => {
  it('SingLoRA needs about half the parameters of LoRA', () => {
    const shapes = JSON.parse(readFileSync(join(FIXTURES, 'sd15_shapes.json'), 'utf8')).unet as Record<
      string,
      number[]
    >;
    let single = 0;
    let lora = 0;
    let layers = 0;
    for (const [key, shape] of Object.entries(shapes)) {
      const path = key.replace(/\.weight$/, '');
      if (!key.endsWith('.weight') || !DEFAULT_TARGETS.some((t) => matchesTarget(path, t))) continue;
      const [dOut, dIn] = shape;
      single += Math.max(dOut, dIn) * 8;
      lora += (dOut + dIn) * 8;
      layers++;
    }
    console.log(
      `SD 1.5 UNet, ${layers} target layers, rank 8: SingLoRA ${single.toLocaleString('en-US')} params, LoRA ${lora.toLocaleString('en-US')} params, ratio ${(single / lora).toFixed(3)}`,
    );
    expect(layers).toBe(128);
    expect(single / lora).toBeGreaterThan(0.45);
    expect(single / lora).toBeLessThan(0.65);
  });
});

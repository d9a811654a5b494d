/**
 * Measures ||dW||_F / ||W0||_F at full ramp for SingLoRA's initial A (docs/singlora-init.md):
 * on tiny-a's UNet (its real fixture weights), and on every SD 1.5 target shape with W0 drawn
 * like PyTorch's default Linear init (kaiming-uniform, std 1/sqrt(3 d_in)) for lack of the real
 * weights offline.
 *
 *   npx tsx scripts/measure-init.ts [--std 0.01] [--rank 8] [--alpha 8]
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { initBackend, tf } from '../src-main/engine/backend/tf.ts';
import { DEFAULT_TARGETS, matchesTarget } from '../src-main/engine/adapters/adapterSet.ts';
import { singloraDelta } from '../src-main/engine/adapters/singlora.ts';
import { UNet2DConditionModel } from '../src-main/engine/models/unet2dCondition.ts';
import { Linear } from '../src-main/engine/models/layers/linear.ts';
import { REPO_ROOT } from '../src-main/engine/paths.ts';
import { Rng } from '../src-main/engine/random.ts';

const arg = (name: string, d: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : d;
};
const std = arg('std', 0.01);
const rank = arg('rank', 8);
const alpha = arg('alpha', 8);
await initBackend('wasm');
const rng = new Rng(0);

function ratio(w0: tf.Tensor, dOut: number, dIn: number): number {
  return tf.tidy(() => {
    const rows = Math.max(dOut, dIn);
    const A = tf.tensor(
      rng.normal(rows * rank).map((v) => v * std),
      [rows, rank],
    );
    const d = singloraDelta(A, dOut, dIn, alpha / rank);
    return tf.norm(d).dataSync()[0] / tf.norm(w0).dataSync()[0];
  });
}

const summarize = (label: string, rs: Array<[string, number]>) => {
  const v = rs.map(([, r]) => r).sort((a, b) => a - b);
  console.log(
    `${label}: ${rs.length} layers, ||dW||/||W0|| min ${v[0].toExponential(2)}, median ${v[Math.floor(v.length / 2)].toExponential(2)}, max ${v[v.length - 1].toExponential(2)}`,
  );
};

console.log(`std ${std}, rank ${rank}, alpha ${alpha} (scale alpha/r = ${alpha / rank}), full ramp (u = 1)`);
const unet = await UNet2DConditionModel.load(join(REPO_ROOT, 'test/fixtures/tiny-a/model/unet'));
const tiny: Array<[string, number]> = [];
for (const [path, mod] of unet.namedModules()) {
  if (mod instanceof Linear && DEFAULT_TARGETS.some((t) => matchesTarget(path, t))) {
    const w = mod.weight.checkpointValue();
    tiny.push([path, ratio(w, mod.outFeatures, mod.inFeatures)]);
    w.dispose();
  }
}
unet.dispose();
summarize('tiny-a (fixture weights)', tiny);

const shapes = JSON.parse(readFileSync(join(REPO_ROOT, 'test/fixtures/sd15_shapes.json'), 'utf8')).unet as Record<
  string,
  number[]
>;
const byShape = new Map<string, Array<[string, number]>>();
const sd: Array<[string, number]> = [];
for (const [key, shape] of Object.entries(shapes)) {
  const path = key.replace(/\.weight$/, '');
  if (!key.endsWith('.weight') || !DEFAULT_TARGETS.some((t) => matchesTarget(path, t))) continue;
  const [dOut, dIn] = shape;
  const bound = 1 / Math.sqrt(dIn);
  const w0 = tf.tidy(() => tf.randomUniform([dOut, dIn], -bound, bound, 'float32', 1));
  const r = ratio(w0, dOut, dIn);
  w0.dispose();
  sd.push([path, r]);
  const k = `${dIn}->${dOut}`;
  byShape.set(k, [...(byShape.get(k) ?? []), [path, r]]);
}
summarize('SD 1.5 shapes (W0 at PyTorch default init)', sd);
for (const [k, rs] of [...byShape].sort())
  console.log(
    `  ${k.padEnd(11)} ${String(rs.length).padStart(3)} layers  mean ${(rs.reduce((a, [, r]) => a + r, 0) / rs.length).toExponential(2)}`,
  );

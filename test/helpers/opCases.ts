/**
 * Op-level cases shared by every backend: the engine's layers and gradients on small random
 * inputs, and the same quantities computed with plain JavaScript loops as the reference.
 * `runOpCases` uses only engine code (no vitest), so a child process can run it on webgpu.
 */
import { tf } from '../../src-main/engine/backend/tf.ts';
import { attend } from '../../src-main/engine/models/ops/tfAttention.ts';
import { Conv2d } from '../../src-main/engine/models/layers/conv2d.ts';
import { gelu, quickGelu, silu } from '../../src-main/engine/models/layers/activations.ts';
import { Linear } from '../../src-main/engine/models/layers/linear.ts';
import { tfOps } from '../../src-main/engine/models/ops/tfOps.ts';
import { GroupNorm, LayerNorm } from '../../src-main/engine/models/layers/norm.ts';
import { Rng } from '../../src-main/engine/random.ts';

export type OpResults = Record<string, number[]>;

function inputs() {
  const r = new Rng(77);
  return {
    x: r.normal(3 * 5), // [3, 5]
    w: r.normal(4 * 5), // [4, 5] PyTorch layout
    b: r.normal(4),
    img: r.normal(1 * 6 * 5 * 3), // NHWC [1, 6, 5, 3]
    k: r.normal(4 * 3 * 3 * 3), // [out 4, in 3, 3, 3] PyTorch layout
    kb: r.normal(4),
    g: r.normal(1 * 6 * 5 * 4), // upstream gradient for the stride-1 conv output [1, 6, 5, 4]
    gn: r.normal(2 * 3 * 2 * 8), // [2, 3, 2, 8]
    gamma: r.normal(8),
    beta: r.normal(8),
    q: r.normal(2 * 7 * 8), // [2, 7, 8], 2 heads of 4
    kk: r.normal(2 * 5 * 8),
    v: r.normal(2 * 5 * 8),
    act: r.normal(16),
    a3: r.normal(2 * 3 * 4), // [2, 3, 4]
    b3: r.normal(2 * 4 * 5), // [2, 4, 5]
  };
}

/** The engine's answers, on whatever backend is active. */
export async function runOpCases(): Promise<OpResults> {
  const d = inputs();
  const out: OpResults = {};
  const read = async (name: string, t: tf.Tensor) => {
    out[name] = Array.from(await t.data());
    t.dispose();
  };

  const lin = new Linear(5, 4);
  lin.weight.setFromCheckpoint(d.w);
  lin.bias!.setFromCheckpoint(d.b);
  const x = tf.tensor(d.x, [3, 5]);
  await read('linear', lin.forward(tfOps, x));

  const conv1 = new Conv2d(3, 4, 3, 1, 1);
  conv1.weight.setFromCheckpoint(d.k);
  conv1.bias!.setFromCheckpoint(d.kb);
  const conv2 = new Conv2d(3, 4, 3, 2, 1);
  conv2.weight.setFromCheckpoint(d.k);
  conv2.bias!.setFromCheckpoint(d.kb);
  const img = tf.tensor(d.img, [1, 6, 5, 3]);
  await read('conv.s1p1', conv1.forward(tfOps, img));
  await read('conv.s2p1', conv2.forward(tfOps, img));
  await read(
    'conv.s2.asym',
    conv2.forward(tfOps, img, [
      [0, 1],
      [0, 1],
    ]),
  );
  const g = tf.tensor(d.g, [1, 6, 5, 4]);
  await read('conv.s1p1.dx', tf.grad((xi: tf.Tensor) => tf.sum(tf.mul(conv1.forward(tfOps, xi), g)))(img));

  const gnorm = new GroupNorm(2, 8, 1e-6);
  gnorm.weight.setFromCheckpoint(d.gamma);
  gnorm.bias.setFromCheckpoint(d.beta);
  const gx = tf.tensor(d.gn, [2, 3, 2, 8]);
  await read('groupnorm', gnorm.forward(tfOps, gx));
  const ln = new LayerNorm(8, 1e-5);
  ln.weight.setFromCheckpoint(d.gamma);
  ln.bias.setFromCheckpoint(d.beta);
  await read('layernorm', ln.forward(tfOps, gx));

  const q = tf.tensor(d.q, [2, 7, 8]);
  const k = tf.tensor(d.kk, [2, 5, 8]);
  const v = tf.tensor(d.v, [2, 5, 8]);
  await read('attention', attend(q, k, v, 2));
  await read('attention.sliced', attend(q, k, v, 2, undefined, 10));

  const a = tf.tensor(d.act, [16]);
  await read('silu', silu(tfOps, a));
  await read('gelu', gelu(tfOps, a));
  await read('quick_gelu', quickGelu(tfOps, a));

  const a3 = tf.tensor(d.a3, [2, 3, 4]);
  const b3 = tf.tensor(d.b3, [2, 4, 5]);
  const [da, db] = tf.grads((p: tf.Tensor, r: tf.Tensor) => tf.sum(tf.square(tf.matMul(p, r))))([a3, b3]);
  await read('matmul.da', da);
  await read('matmul.db', db);

  tf.dispose([x, img, g, gx, q, k, v, a, a3, b3]);
  for (const m of [lin, conv1, conv2, gnorm, ln]) m.dispose();
  return out;
}

/** The same quantities with plain loops (float64), PyTorch's definitions. */
export function referenceOpCases(): OpResults {
  const d = inputs();
  const out: OpResults = {};
  // linear: y[i, o] = sum_j x[i, j] w[o, j] + b[o]
  out.linear = [];
  for (let i = 0; i < 3; i++)
    for (let o = 0; o < 4; o++) {
      let s = d.b[o];
      for (let j = 0; j < 5; j++) s += d.x[i * 5 + j] * d.w[o * 5 + j];
      out.linear.push(s);
    }
  // conv: NHWC input [1, H=6, W=5, C=3], weight [O=4, C=3, 3, 3]
  const conv = (stride: number, pt: number, pb: number, pl: number, pr: number) => {
    const H = 6;
    const W = 5;
    const Ho = Math.floor((H + pt + pb - 3) / stride) + 1;
    const Wo = Math.floor((W + pl + pr - 3) / stride) + 1;
    const r: number[] = [];
    for (let y = 0; y < Ho; y++)
      for (let xo = 0; xo < Wo; xo++)
        for (let o = 0; o < 4; o++) {
          let s = d.kb[o];
          for (let ky = 0; ky < 3; ky++)
            for (let kx = 0; kx < 3; kx++) {
              const iy = y * stride + ky - pt;
              const ix = xo * stride + kx - pl;
              if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
              for (let c = 0; c < 3; c++) s += d.img[(iy * W + ix) * 3 + c] * d.k[((o * 3 + c) * 3 + ky) * 3 + kx];
            }
          r.push(s);
        }
    return r;
  };
  out['conv.s1p1'] = conv(1, 1, 1, 1, 1);
  out['conv.s2p1'] = conv(2, 1, 1, 1, 1);
  out['conv.s2.asym'] = conv(2, 0, 1, 0, 1);
  // d/dx sum(conv(x) * g), stride 1, pad 1
  const dx = new Array(6 * 5 * 3).fill(0);
  for (let y = 0; y < 6; y++)
    for (let xo = 0; xo < 5; xo++)
      for (let o = 0; o < 4; o++) {
        const gv = d.g[(y * 5 + xo) * 4 + o];
        for (let ky = 0; ky < 3; ky++)
          for (let kx = 0; kx < 3; kx++) {
            const iy = y + ky - 1;
            const ix = xo + kx - 1;
            if (iy < 0 || iy >= 6 || ix < 0 || ix >= 5) continue;
            for (let c = 0; c < 3; c++) dx[(iy * 5 + ix) * 3 + c] += gv * d.k[((o * 3 + c) * 3 + ky) * 3 + kx];
          }
      }
  out['conv.s1p1.dx'] = dx;
  // group norm over [N=2, H*W=6, G=2, C/G=4]
  const gnOut = new Array(d.gn.length).fill(0);
  for (let n = 0; n < 2; n++)
    for (let grp = 0; grp < 2; grp++) {
      const idx: number[] = [];
      for (let p = 0; p < 6; p++) for (let c = 0; c < 4; c++) idx.push(n * 48 + p * 8 + grp * 4 + c);
      const mean = idx.reduce((s, i) => s + d.gn[i], 0) / idx.length;
      const vr = idx.reduce((s, i) => s + (d.gn[i] - mean) ** 2, 0) / idx.length;
      for (const i of idx) gnOut[i] = ((d.gn[i] - mean) / Math.sqrt(vr + 1e-6)) * d.gamma[i % 8] + d.beta[i % 8];
    }
  out.groupnorm = gnOut;
  const lnOut: number[] = [];
  for (let row = 0; row < 12; row++) {
    const xs = Array.from(d.gn.subarray(row * 8, row * 8 + 8));
    const mean = xs.reduce((a, b) => a + b, 0) / 8;
    const vr = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / 8;
    xs.forEach((v, c) => lnOut.push(((v - mean) / Math.sqrt(vr + 1e-5)) * d.gamma[c] + d.beta[c]));
  }
  out.layernorm = lnOut;
  // attention: 2 heads of 4
  const att: number[] = new Array(2 * 7 * 8).fill(0);
  for (let bt = 0; bt < 2; bt++)
    for (let h = 0; h < 2; h++)
      for (let i = 0; i < 7; i++) {
        const scores: number[] = [];
        for (let j = 0; j < 5; j++) {
          let s = 0;
          for (let e = 0; e < 4; e++) s += d.q[(bt * 7 + i) * 8 + h * 4 + e] * d.kk[(bt * 5 + j) * 8 + h * 4 + e];
          scores.push(s / 2);
        }
        const m = Math.max(...scores);
        const ex = scores.map((s) => Math.exp(s - m));
        const z = ex.reduce((a, b) => a + b, 0);
        for (let j = 0; j < 5; j++)
          for (let e = 0; e < 4; e++)
            att[(bt * 7 + i) * 8 + h * 4 + e] += (ex[j] / z) * d.v[(bt * 5 + j) * 8 + h * 4 + e];
      }
  out.attention = att;
  out['attention.sliced'] = att;
  const erf = (x: number) => {
    // Abramowitz-Stegun 7.1.26 is too coarse; use a series/continued fraction to 1e-12.
    const t = Math.abs(x);
    let sum = t;
    let term = t;
    for (let n = 1; n < 80; n++) {
      term *= (-t * t) / n;
      sum += term / (2 * n + 1);
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  };
  out.silu = Array.from(d.act, (v) => v / (1 + Math.exp(-v)));
  out.gelu = Array.from(d.act, (v) => 0.5 * v * (1 + erf(v / Math.SQRT2)));
  out.quick_gelu = Array.from(d.act, (v) => v / (1 + Math.exp(-1.702 * v)));
  // L = sum((A B)^2): dA = 2 (A B) B^T, dB = 2 A^T (A B)
  const da: number[] = new Array(24).fill(0);
  const db: number[] = new Array(40).fill(0);
  for (let bt = 0; bt < 2; bt++) {
    const c: number[] = [];
    for (let i = 0; i < 3; i++)
      for (let j = 0; j < 5; j++) {
        let s = 0;
        for (let kk = 0; kk < 4; kk++) s += d.a3[bt * 12 + i * 4 + kk] * d.b3[bt * 20 + kk * 5 + j];
        c.push(s);
      }
    for (let i = 0; i < 3; i++)
      for (let kk = 0; kk < 4; kk++)
        for (let j = 0; j < 5; j++) {
          da[bt * 12 + i * 4 + kk] += 2 * c[i * 5 + j] * d.b3[bt * 20 + kk * 5 + j];
          db[bt * 20 + kk * 5 + j] += 2 * d.a3[bt * 12 + i * 4 + kk] * c[i * 5 + j];
        }
  }
  out['matmul.da'] = da;
  out['matmul.db'] = db;
  return out;
}

/** Worst |a - b| / (1 + |b|) per case. */
export function compareOpResults(got: OpResults, ref: OpResults): Record<string, number> {
  const worst: Record<string, number> = {};
  for (const [name, r] of Object.entries(ref)) {
    const g = got[name];
    if (!g || g.length !== r.length) {
      worst[name] = Infinity;
      continue;
    }
    let w = 0;
    for (let i = 0; i < r.length; i++) {
      const e = Math.abs(g[i] - r[i]) / (1 + Math.abs(r[i]));
      w = Number.isNaN(e) ? Infinity : Math.max(w, e);
    }
    worst[name] = w;
  }
  return worst;
}

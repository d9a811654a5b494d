/**
 * Gradient checks of the ONNX gradient executor (onnx/gradOps.ts) against TensorFlow.js.
 *
 * A case is one function written against the op interface, `run(o, xs)`, so the same code runs
 * on both executors: on TensorFlow.js (NHWC images, tf.grads) and through GradOps into an ONNX
 * graph that ONNX Runtime runs on the CPU provider (NCHW images). The loss is
 * sum(run(xs) * R) with a fixed random R, so its gradient is the vector-Jacobian product with R.
 * Adapter side paths (y += (x down) up on chosen Linears) are differentiated on both sides too.
 */
import { tf, type Tensor } from '../../src-main/engine/backend/tf.ts';
import { OnnxSession, type OnnxTensor } from '../../src-main/engine/backend/onnxRuntime.ts';
import type { Linear } from '../../src-main/engine/models/layers/linear.ts';
import type { Module, Param } from '../../src-main/engine/models/layers/module.ts';
import type { Ops } from '../../src-main/engine/models/ops/ops.ts';
import { linearTf, tfOps } from '../../src-main/engine/models/ops/tfOps.ts';
import { GraphBuilder, type Value } from '../../src-main/engine/onnx/graphBuilder.ts';
import { GradOps, type GradOpsOptions } from '../../src-main/engine/onnx/gradOps.ts';
import { Rng } from '../../src-main/engine/random.ts';

export interface InputSpec {
  /** Shape in TensorFlow.js's layout (images NHWC). */
  readonly shape: readonly number[];
  /** An image: NHWC on TensorFlow.js, NCHW in the graph. */
  readonly image?: boolean;
  /** Integer ids (int32), not differentiated; `max` bounds them. */
  readonly ints?: { max: number };
  /** Differentiate for this input (default: every float input). */
  readonly wrt?: boolean;
  /** Dims the graph declares as symbols (by axis in ONNX layout), so rules use run-time shapes. */
  readonly symbols?: Readonly<Record<number, string>>;
  readonly data?: Float32Array;
}

export interface GradCase {
  readonly inputs: readonly InputSpec[];
  readonly run: <T>(o: Ops<T>, xs: T[]) => T;
  /** The TensorFlow.js side, where tfOps' own op has no gradient on the test's backend. */
  readonly tfRun?: (xs: Tensor[]) => Tensor;
  /** The output is an image (R is drawn NHWC and fed to the graph NCHW). */
  readonly imageOut?: boolean;
  /** Linears that get a side path, with its rank. */
  readonly sides?: ReadonlyArray<{ readonly path: string; readonly layer: Linear; readonly rank: number }>;
  /** Wraps `run` in GradOps.checkpoint (the TensorFlow.js side runs plainly). */
  readonly checkpoint?: boolean;
  readonly options?: Partial<GradOpsOptions>;
  readonly seed?: number;
}

export interface GradResult {
  /** Per differentiated input ('x0', 'x1', ...) and side factor ('path.down'): max |onnx - tf| and max |tf|. */
  readonly errors: Record<string, { maxAbs: number; maxRef: number }>;
  /** The ONNX gradients, by the same keys. */
  readonly grads: Record<string, Float32Array>;
  /** The ONNX graph's bytes (to look at its nodes). */
  readonly bytes: Uint8Array;
  /** The loss on both sides, and the sum of its terms' magnitudes (the scale of its rounding). */
  readonly loss: { onnx: number; tf: number; absSum: number };
}

const toNCHW = (t: Tensor) => (t.rank === 4 ? tf.transpose(t, [0, 3, 1, 2]) : t.clone());

/** Random weights (std 0.3, biases too) for every parameter of `m`. */
export function randomize(m: Module, seed: number): void {
  const rng = new Rng(seed);
  for (const [, p] of m.namedParams()) {
    const n = p.shape.reduce((a, b) => a * b, 1);
    const fanIn = p.shape.length > 1 ? n / p.shape[0] : 1;
    p.setFromCheckpoint(rng.normal(n).map((v) => v / Math.sqrt(fanIn)));
  }
}

/** TensorFlow.js ops whose Linears in `factors` add (x down) up. */
function sideTfOps(factors: ReadonlyMap<Linear, [Tensor, Tensor]>): Ops<Tensor> {
  return {
    ...tfOps,
    linear: (x, layer) => {
      const y = linearTf(x, layer.weight.value, layer.bias?.value);
      const f = factors.get(layer);
      if (!f) return y;
      const lead = x.shape.slice(0, -1);
      const low = tf.matMul(tf.matMul(x.reshape([-1, layer.inFeatures]), f[0]), f[1]);
      return tf.add(y, low.reshape([...lead, layer.outFeatures]));
    },
  };
}

/** Runs `c` on both executors and compares the gradients. */
export async function gradCheck(c: GradCase): Promise<GradResult> {
  const rng = new Rng(c.seed ?? 1);
  const data = c.inputs.map((s) => {
    const n = s.shape.reduce((a, b) => a * b, 1);
    if (s.ints) return Float32Array.from({ length: n }, (_, i) => (i * 7 + 3) % s.ints!.max);
    return s.data ?? rng.normal(n);
  });
  const factorData = (c.sides ?? []).map((s) => ({
    down: rng.normal(s.layer.inFeatures * s.rank).map((v) => v * 0.3),
    up: rng.normal(s.rank * s.layer.outFeatures).map((v) => v * 0.3),
  }));
  const wrtInputs = c.inputs.map((s) => !s.ints && (s.wrt ?? true));

  // 1. TensorFlow.js: loss and gradients.
  const ref = tf.tidy(() => {
    const xs = c.inputs.map((s, i) => tf.tensor(data[i], [...s.shape], s.ints ? 'int32' : 'float32'));
    const fs = (c.sides ?? []).flatMap((s, i) => [
      tf.tensor(factorData[i].down, [s.layer.inFeatures, s.rank]),
      tf.tensor(factorData[i].up, [s.rank, s.layer.outFeatures]),
    ]);
    const diffIdx = xs.map((_, i) => i).filter((i) => wrtInputs[i]);
    const shapeOut = (c.tfRun ? c.tfRun(xs) : c.run(tfOps, xs)).shape;
    const R = tf.tensor(new Rng(99).normal(shapeOut.reduce((a, b) => a * b, 1)), shapeOut);
    const f = (...args: Tensor[]) => {
      const ins = xs.map((x, i) => (wrtInputs[i] ? args[diffIdx.indexOf(i)] : x));
      const fac = new Map<Linear, [Tensor, Tensor]>();
      (c.sides ?? []).forEach((s, i) => {
        fac.set(s.layer, [args[diffIdx.length + 2 * i], args[diffIdx.length + 2 * i + 1]]);
      });
      return tf.sum(tf.mul(c.tfRun ? c.tfRun(ins) : c.run(sideTfOps(fac), ins), R));
    };
    const diffArgs = [...diffIdx.map((i) => xs[i]), ...fs];
    const { value, grads } = tf.valueAndGrads(f)(diffArgs);
    const out = [
      value,
      ...grads.map((g, k) => (k < diffIdx.length && c.inputs[diffIdx[k]].image ? toNCHW(g) : g.clone())),
    ];
    const keys = [
      ...diffIdx.map((i) => `x${i}`),
      ...(c.sides ?? []).flatMap((sd) => [`${sd.path}.down`, `${sd.path}.up`]),
    ];
    const lossAbs = tf.sum(
      tf.abs(
        tf.mul(
          c.tfRun
            ? c.tfRun(xs)
            : c.run(sideTfOps(new Map((c.sides ?? []).map((sd, i) => [sd.layer, [fs[2 * i], fs[2 * i + 1]]]))), xs),
          R,
        ),
      ),
    );
    return { tensors: [...out, lossAbs], R: c.imageOut ? toNCHW(R) : R.clone(), diffIdx, keys };
  });
  const refData = await Promise.all(ref.tensors.map(async (t) => (await t.data()) as Float32Array));
  const refGrads = new Map(ref.keys.map((k, i) => [k, refData[i + 1]]));
  const lossAbsSum = refData[refData.length - 1][0];
  const R = { data: (await ref.R.data()) as Float32Array, dims: ref.R.shape };
  tf.dispose([...ref.tensors, ref.R]);

  // 2. ONNX: the same function through GradOps, run on the CPU provider.
  const g = new GraphBuilder('grad_check');
  const made = new Map<Param, Value>();
  const weight = (p: Param): Value => {
    let v = made.get(p);
    if (!v) {
      const t = p.checkpointValue();
      v = g.constant(t.dataSync() as Float32Array, p.shape);
      t.dispose();
      made.set(p, v);
    }
    return v;
  };
  const sidePaths = new Map((c.sides ?? []).map((s) => [s.layer, s.path] as const));
  const o = new GradOps({ builder: g, dtype: 'float32', weight, sidePaths, ...c.options });
  const onnxShape = (s: InputSpec) => (s.image ? [s.shape[0], s.shape[3], s.shape[1], s.shape[2]] : [...s.shape]);
  const xs = c.inputs.map((s, i) => {
    const dims = onnxShape(s).map((d, a) => s.symbols?.[a] ?? d);
    return o.input(`x${i}`, s.ints ? 'int32' : 'float32', dims);
  });
  const y = c.checkpoint ? o.checkpoint(() => c.run(o, xs)) : c.run(o, xs);
  const rv = o.input('R', 'float32', R.dims);
  const loss = o.reduceSum(o.mul(y, rv));
  const wrt = new Map<string, Value>();
  ref.diffIdx.forEach((i) => {
    wrt.set(`x${i}`, xs[i]);
  });
  for (const [k, v] of o.sideWrt()) wrt.set(k, v);
  const grads = o.backward(loss, wrt);
  g.output(o.float32(loss), 'loss', []);
  const names = [...wrt.keys()];
  for (const k of names)
    g.output(
      grads.get(k) as Value,
      `d.${k}`,
      Array(wrt.get(k)!.rank)
        .fill('?')
        .map((_, j) => `d${j}`),
    );
  const bytes = g.toBytes();
  const session = await OnnxSession.create('grad_check.onnx', { graph: bytes, providers: ['cpu'] });
  const feeds: Record<string, OnnxTensor> = { R: { type: 'float32', data: R.data, dims: R.dims } };
  c.inputs.forEach((s, i) => {
    const dims = onnxShape(s);
    const d = s.image ? tf.tidy(() => toNCHW(tf.tensor(data[i], [...s.shape])).dataSync() as Float32Array) : data[i];
    feeds[`x${i}`] = s.ints ? { type: 'int32', data: Int32Array.from(d), dims } : { type: 'float32', data: d, dims };
  });
  (c.sides ?? []).forEach((s, i) => {
    feeds[`adapter.${s.path}.down`] = { type: 'float32', data: factorData[i].down, dims: [s.layer.inFeatures, s.rank] };
    feeds[`adapter.${s.path}.up`] = { type: 'float32', data: factorData[i].up, dims: [s.rank, s.layer.outFeatures] };
  });
  const out = await session.run(feeds);
  await session.release();

  const abs: Record<string, { maxAbs: number; maxRef: number }> = {};
  names.forEach((k) => {
    const got = out[`d.${k}`].data as Float32Array;
    const want = refGrads.get(k) as Float32Array;
    if (got.length !== want.length) throw new Error(`${k}: onnx gives ${got.length} values, tfjs ${want.length}`);
    let maxAbs = 0;
    let maxRef = 0;
    for (let i = 0; i < got.length; i++) {
      const d = Math.abs(got[i] - want[i]);
      maxAbs = Number.isNaN(d) ? Number.POSITIVE_INFINITY : Math.max(maxAbs, d);
      maxRef = Math.max(maxRef, Math.abs(want[i]));
    }
    abs[k] = { maxAbs, maxRef };
  });
  return {
    errors: abs,
    grads: Object.fromEntries(names.map((k) => [k, out[`d.${k}`].data as Float32Array])),
    bytes,
    loss: { onnx: (out.loss.data as Float32Array)[0], tf: refData[0][0], absSum: lossAbsSum },
  };
}

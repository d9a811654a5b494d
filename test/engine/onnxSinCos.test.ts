import { createRequire } from 'node:module';
import type * as OrtTypes from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { GraphBuilder } from '../../src-main/engine/onnx/graphBuilder.ts';
import { OnnxOps } from '../../src-main/engine/onnx/onnxOps.ts';

const ort = createRequire(import.meta.url)('onnxruntime-node') as typeof OrtTypes;

/** sin and cos of `xs` from a graph OnnxOps emits with `sinCos`, run on the CPU provider. */
async function sinCos(xs: Float32Array, mode: 'native' | 'series'): Promise<[Float32Array, Float32Array]> {
  const g = new GraphBuilder('sin_cos');
  const o = new OnnxOps({
    builder: g,
    dtype: 'float32',
    sinCos: mode,
    weight: () => {
      throw new Error('no weights here');
    },
  });
  const x = g.input('x', 'float32', [xs.length]);
  g.output(o.sin(x), 's', [xs.length]);
  g.output(o.cos(x), 'c', [xs.length]);
  const session = await ort.InferenceSession.create(g.toBytes(), { executionProviders: ['cpu'], logSeverityLevel: 3 });
  try {
    const r = await session.run({ x: new ort.Tensor('float32', xs, [xs.length]) });
    return [r.s.data as Float32Array, r.c.data as Float32Array];
  } finally {
    await session.release();
  }
}

/** max |got - f(x)| over the float32 arguments, f in double. */
const worst = (xs: Float32Array, got: Float32Array, f: (x: number) => number) =>
  xs.reduce((m, x, i) => Math.max(m, Math.abs(got[i] - f(x))), 0);

describe("OnnxOps sinCos: 'series' (Sin and Cos for providers with relaxed precision)", () => {
  it('is within 2e-7 of sin and cos over the time embedding arguments (t f, t up to 999) and across [-pi, pi]', async () => {
    // t f_i with f_i = 10000^(-i/32), as the sinusoidal time embedding; then an even grid of [-pi, pi].
    const xs = new Float32Array(4096);
    for (let j = 0; j < 2048; j++)
      xs[j] = Math.fround((999 - (j % 64) * 15) * Math.fround(Math.exp((-Math.log(10000) * (j >> 6)) / 32)));
    for (let j = 2048; j < 4096; j++) xs[j] = Math.fround(-Math.PI + (2 * Math.PI * (j - 2048)) / 2047);
    const [s, c] = await sinCos(xs, 'series');
    // Float32 rounding of values near 1 is 6e-8; the series adds about one more ulp.
    expect(worst(xs, s, Math.sin)).toBeLessThan(2e-7);
    expect(worst(xs, c, Math.cos)).toBeLessThan(2e-7);
    // 'native' is ONNX Runtime's Sin and Cos, which the CPU provider computes to float32 rounding.
    const [ns, nc] = await sinCos(xs, 'native');
    expect(worst(xs, ns, Math.sin)).toBeLessThan(2e-7);
    expect(worst(xs, nc, Math.cos)).toBeLessThan(2e-7);
  });
});

/**
 * The wasm backend's copy-free Identity, Slice and SplitV (backend/tf.ts): the same values as a
 * plain index walk over every shape and cut, clones that share their buffer, and no leaks.
 */
import { describe, expect, it } from 'vitest';
import { tf } from '../../src-main/engine/backend/tf.ts';
import { expectNoLeak, useBackend } from '../helpers/backend.ts';

useBackend('wasm');

/** x[begin : begin + size] by walking indices, for a row-major array of `shape`. */
function sliceByIndex(values: Float32Array, shape: number[], begin: number[], size: number[]): number[] {
  const out: number[] = [];
  const strides = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
  const walk = (axis: number, offset: number) => {
    if (axis === shape.length) return void out.push(values[offset]);
    for (let i = 0; i < size[axis]; i++) walk(axis + 1, offset + (begin[axis] + i) * strides[axis]);
  };
  walk(0, 0);
  return out;
}

describe('wasm copy-free kernels', () => {
  const cases: Array<{ shape: number[]; begin: number[]; size: number[] }> = [
    { shape: [7], begin: [2], size: [4] },
    { shape: [5, 6], begin: [1, 0], size: [3, 6] }, // contiguous rows
    { shape: [5, 6], begin: [1, 2], size: [3, 3] },
    { shape: [2, 5, 3], begin: [1, 1, 0], size: [1, 3, 3] },
    { shape: [3, 4, 5], begin: [0, 1, 2], size: [3, 2, 3] },
    { shape: [1, 4, 4, 6], begin: [0, 0, 0, 3], size: [1, 4, 4, 3] }, // a concat's gradient: channels
    { shape: [2, 3, 4, 5, 2], begin: [1, 0, 1, 2, 1], size: [1, 3, 2, 3, 1] }, // rank 5
    { shape: [3, 4], begin: [1, 1], size: [0, 2] }, // empty
  ];
  for (const c of cases) {
    it(`slices [${c.shape}] at [${c.begin}] size [${c.size}]`, async () => {
      const n = c.shape.reduce((a, b) => a * b, 1);
      const values = Float32Array.from({ length: n }, (_, i) => i * 0.5 - 3);
      const x = tf.tensor(values, c.shape);
      const got = await expectNoLeak(async () => {
        const s = tf.slice(x, c.begin, c.size);
        const data = Array.from(await s.data());
        s.dispose();
        return data;
      });
      expect(got).toEqual(sliceByIndex(values, c.shape, c.begin, c.size));
      x.dispose();
    });
  }

  it('splits along every axis, with uneven sizes', async () => {
    const shape = [2, 5, 3, 4];
    const n = shape.reduce((a, b) => a * b, 1);
    const values = Float32Array.from({ length: n }, (_, i) => i);
    const x = tf.tensor(values, shape);
    for (let axis = 0; axis < shape.length; axis++) {
      const sizes = shape[axis] === 2 ? [1, 1] : [1, shape[axis] - 1];
      await expectNoLeak(async () => {
        const parts = tf.split(x, sizes, axis);
        let start = 0;
        for (let i = 0; i < parts.length; i++) {
          const begin = shape.map((_, a) => (a === axis ? start : 0));
          const size = shape.map((d, a) => (a === axis ? sizes[i] : d));
          expect(Array.from(await parts[i].data()), `axis ${axis} piece ${i}`).toEqual(
            sliceByIndex(values, shape, begin, size),
          );
          start += sizes[i];
        }
        tf.dispose(parts);
      });
    }
    x.dispose();
  });

  it('clones share the buffer, and outlive the original', async () => {
    const x = tf.tensor([1, 2, 3, 4], [2, 2]);
    // (tf.memory().numBytes counts every tensor's bytes, shared or not; the buffers are counted apart.)
    const buffers = () => tf.engine().backend.numDataIds();
    const before = buffers();
    const y = tf.clone(x);
    expect(buffers()).toBe(before); // no second buffer
    x.dispose();
    expect(Array.from(await y.data())).toEqual([1, 2, 3, 4]);
    y.dispose();
  });
});

/**
 * Test helpers: start a backend once per test file, and check that code does not leak tensors.
 * Engine tests run on wasm unless the file asks for another backend.
 */
import { beforeAll, expect } from 'vitest';
import { initBackend, tf, type BackendName } from '../../src-main/engine/backend/tf.ts';

export function useBackend(name: BackendName = 'wasm'): void {
  beforeAll(async () => {
    const info = await initBackend(name);
    expect(info.name).toBe(name);
    expect(tf.getBackend()).toBe(name);
  });
}

/** Runs `fn` and asserts that tf.memory().numTensors is the same before and after. */
export async function expectNoLeak<T>(fn: () => T | Promise<T>): Promise<T> {
  const before = tf.memory().numTensors;
  const result = await fn();
  const after = tf.memory().numTensors;
  expect(after, `tensor leak: ${after - before} tensors left behind`).toBe(before);
  return result;
}

/** max |a - b| and max |ref| of two float arrays. */
export function maxAbsDiff(
  a: ArrayLike<number>,
  ref: ArrayLike<number>,
): { maxAbs: number; maxRef: number; rel: number } {
  expect(a.length, 'compared arrays differ in length').toBe(ref.length);
  let maxAbs = 0;
  let maxRef = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - ref[i]);
    if (!(d <= maxAbs)) maxAbs = Number.isNaN(d) ? Infinity : d;
    const r = Math.abs(ref[i]);
    if (r > maxRef) maxRef = r;
  }
  return { maxAbs, maxRef, rel: maxAbs / maxRef };
}

/**
 * The ONNX graph cache is keyed by the real paths of the weight files, so one model reached through
 * two paths (a symlink that is gone, then another one) shares a cached graph. The second load must
 * link the weights from where they are now, not from the path the graph was first emitted through
 * (that once left a training job waiting at "encode…" forever in the browser test).
 */
import { cpSync, mkdtempSync, rmSync, symlinkSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tf } from '../../src-main/engine/backend/tf.ts';
import { StableDiffusion } from '../../src-main/engine/pipeline/stableDiffusion.ts';
import { useBackend } from '../helpers/backend.ts';
import { FIXTURES } from '../helpers/fixtures.ts';

useBackend('wasm');
const dir = mkdtempSync(join(tmpdir(), 'onnx-cache-'));
afterAll(() => {
  delete process.env.SINGLORA_CACHE_DIR;
  rmSync(dir, { recursive: true, force: true });
});

async function encode(base: string): Promise<Float32Array> {
  const sd = await StableDiffusion.load(base, { engine: 'onnx', provider: 'cpu' });
  try {
    const out = await sd.encodeText(['a photo of sks dog']);
    const data = (await out.data()) as Float32Array;
    out.dispose();
    return data;
  } finally {
    await sd.release();
  }
}

describe('the ONNX graph cache', () => {
  it('a model reached through a new path after the old one is gone still opens from the cache', async () => {
    process.env.SINGLORA_CACHE_DIR = join(dir, 'cache');
    const real = join(dir, 'model');
    cpSync(join(FIXTURES, 'tiny-a/model'), real, { recursive: true });
    const first = join(dir, 'first');
    symlinkSync(real, first, 'dir');
    const before = tf.memory().numTensors;
    const a = await encode(first);
    unlinkSync(first);
    const second = join(dir, 'second');
    symlinkSync(real, second, 'dir');
    const b = await encode(second);
    expect(b.length).toBeGreaterThan(0);
    expect(Array.from(b)).toEqual(Array.from(a));
    expect(tf.memory().numTensors).toBe(before);
  });
});

/**
 * engine/random.ts: Philox4x32-10 known answers, the documented stream layout, determinism,
 * state round trips, and distribution sanity.
 */
import { describe, expect, it } from 'vitest';
import { tf } from '../../src-main/engine/backend/tf.ts';
import { philox4x32_10, randn, Rng } from '../../src-main/engine/random.ts';
import { expectNoLeak, useBackend } from '../helpers/backend.ts';

useBackend('wasm');

describe('philox4x32_10', () => {
  // Random123's kat_vectors (also in TensorFlow's and JAX's Philox tests).
  const KAT: [number[], number[], number[]][] = [
    [
      [0, 0, 0, 0],
      [0, 0],
      [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
    ],
    [
      [0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff],
      [0xffffffff, 0xffffffff],
      [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
    ],
    [
      [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
      [0xa4093822, 0x299f31d0],
      [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
    ],
  ];
  for (const [ctr, key, want] of KAT) {
    it(`matches Random123 for counter ${ctr.map((x) => x.toString(16)).join(',')}`, () => {
      expect([...philox4x32_10(ctr, key)]).toEqual(want);
    });
  }
});

describe('Rng', () => {
  it('follows the documented layout: words are philox(counter [block, 0, stream, 0], key [seed lo, seed hi])', () => {
    const seed = 2 ** 40 + 12345;
    const rng = new Rng(seed, 7);
    const words = Array.from({ length: 12 }, () => rng.uint32());
    const key = [seed % 2 ** 32, Math.floor(seed / 2 ** 32)];
    const expected = [0, 1, 2].flatMap((b) => [...philox4x32_10([b, 0, 7, 0], key)]);
    expect(words).toEqual(expected);
    expect(rng.position).toBe(12);
  });

  it('is deterministic: the same seed gives the same numbers', () => {
    const a = new Rng(1234);
    const b = new Rng(1234);
    expect([...a.normal(1001)]).toEqual([...b.normal(1001)]);
    expect(a.uniform()).toBe(b.uniform());
    expect(a.int(97)).toBe(b.int(97));
  });

  it('pins the first values of seed 42 (a change here breaks every saved seed)', () => {
    const rng = new Rng(42);
    expect([...rng.normal(6)]).toEqual([
      -0.9701898097991943, 0.19401895999908447, -1.2356207370758057, 1.9239267110824585, -0.07318150997161865,
      0.13913749158382416,
    ]);
    const r2 = new Rng(42);
    expect(r2.uint32()).toBe(2632642643);
  });

  it('different seeds and streams give different numbers', () => {
    const base = [...new Rng(5).normal(64)];
    expect([...new Rng(6).normal(64)]).not.toEqual(base);
    expect([...new Rng(5, 1).normal(64)]).not.toEqual(base);
  });

  it('state() round-trips through JSON and continues the same stream', () => {
    const rng = new Rng(99, 3);
    rng.normal(7); // odd: drops a sine, leaves the position mid-block
    rng.uniform();
    rng.int(1000);
    const saved = JSON.parse(JSON.stringify(rng.state()));
    expect(saved).toEqual({ algorithm: 'philox4x32-10', seed: 99, stream: 3, position: rng.position });
    const resumed = Rng.fromState(saved);
    expect([...resumed.normal(513)]).toEqual([...rng.normal(513)]);
    expect(resumed.uniform()).toBe(rng.uniform());
    expect(resumed.position).toBe(rng.position);
    // a clone is independent of the original
    const c = rng.clone();
    const x = c.uint32();
    expect(rng.uint32()).toBe(x);
  });

  it('normal(n) consumes 2·ceil(n/2) words', () => {
    const rng = new Rng(1);
    rng.normal(5);
    expect(rng.position).toBe(6);
    rng.normal([2, 3]);
    expect(rng.position).toBe(12);
  });

  it('normal: mean ~ 0 and std ~ 1 over 1e5 samples, with plausible tails', () => {
    const z = new Rng(2024).normal(100_000);
    let sum = 0;
    let sq = 0;
    let beyond3 = 0;
    for (const v of z) {
      sum += v;
      sq += v * v;
      if (Math.abs(v) > 3) beyond3++;
    }
    const mean = sum / z.length;
    const std = Math.sqrt(sq / z.length - mean * mean);
    // standard errors: mean 0.0032, std 0.0022; the bounds are ~4 standard errors
    expect(Math.abs(mean)).toBeLessThan(0.013);
    expect(Math.abs(std - 1)).toBeLessThan(0.01);
    // P(|z| > 3) = 0.0027 -> 270 ± 16 expected
    expect(beyond3).toBeGreaterThan(200);
    expect(beyond3).toBeLessThan(340);
  });

  it('uniform in [0, 1) with mean ~ 1/2, int(n) in range and roughly flat', () => {
    const rng = new Rng(7);
    let sum = 0;
    let outside = 0;
    for (let i = 0; i < 100_000; i++) {
      const u = rng.uniform();
      if (!(u >= 0 && u < 1)) outside++;
      sum += u;
    }
    expect(outside).toBe(0);
    expect(Math.abs(sum / 100_000 - 0.5)).toBeLessThan(0.004); // se 0.0009
    const counts = new Array(10).fill(0);
    for (let i = 0; i < 100_000; i++) counts[rng.int(10)]++;
    for (const c of counts) expect(Math.abs(c - 10_000)).toBeLessThan(500); // se 95
  });

  it('rejects bad arguments with messages naming them', () => {
    expect(() => new Rng(-1)).toThrow(/seed/);
    expect(() => new Rng(1.5)).toThrow(/seed/);
    expect(() => new Rng(1, 2 ** 32)).toThrow(/stream/);
    expect(() => new Rng(1).int(0)).toThrow(/Rng.int/);
    expect(() => Rng.fromState({ algorithm: 'mt19937' } as never)).toThrow(/philox4x32-10/);
  });

  it('randn gives a float32 tensor of the requested shape, filled from the stream', async () => {
    const t = randn(new Rng(3), [1, 4, 2, 3]);
    expect(t.shape).toEqual([1, 4, 2, 3]);
    expect(t.dtype).toBe('float32');
    expect([...(await t.data())]).toEqual([...new Rng(3).normal(24)]);
    t.dispose();
    await expectNoLeak(() => tf.tidy(() => randn(new Rng(3), [8]).sum()).dispose());
  });
});

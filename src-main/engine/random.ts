/**
 * The project's deterministic random numbers: Philox4x32-10, a counter-based generator.
 *
 * Salmon, Moraes, Dror & Shaw, "Parallel Random Numbers: As Easy as 1, 2, 3" (SC 2011); the
 * constants and known-answer vectors are Random123's (checked in test/engine/random.test.ts).
 *
 * Stream layout. A generator is (seed, stream):
 *   key      [seed mod 2^32, ⌊seed / 2^32⌋]          seed: an integer in [0, 2^53)
 *   block b  philox4x32_10(counter [b mod 2^32, ⌊b / 2^32⌋, stream, 0], key) -> 4 words
 *   words    block 0's four words, then block 1's, …; `position` counts the words consumed.
 * Because the bijection is keyed by the counter, the whole state is (seed, stream, position):
 * `state()` returns it as JSON-safe numbers and `Rng.fromState` resumes there directly, so a
 * training checkpoint restores the exact stream. Distinct `stream` values give independent streams
 * from one seed (e.g. 0 = initial latents, 1 = training noise).
 *
 * Derived values (every draw consumes whole words, in order):
 *   uint32()    one word.
 *   uniform()   a double in [0, 1) from two words a, b: ((a >>> 5)·2^26 + (b >>> 6)) / 2^53.
 *   int(n)      an integer in [0, n), 1 <= n <= 2^32: words w until w < n·⌊2^32/n⌋ (rejection), then w mod n.
 *   normal(n)   Box–Muller on word pairs (w1, w2): u1 = (w1 + 1)/2^32 ∈ (0, 1], u2 = w2/2^32 ∈ [0, 1),
 *               r = √(−2 ln u1), θ = 2π u2, giving r cos θ then r sin θ, each rounded to float32.
 *               A call uses 2·⌈n/2⌉ words; for odd n the last sine is dropped.
 *
 * Same seed, same numbers on every platform: the words are exact integer arithmetic; Box–Muller
 * uses Math.sqrt (exactly rounded by IEEE 754) and Math.log / Math.cos / Math.sin, which V8 (Node
 * and Electron) implements in software (its fdlibm port), identically on every OS and CPU. Another
 * JavaScript engine could differ in the last bit of a double, which the float32 rounding almost
 * always hides.
 *
 * Seeds do NOT reproduce PyTorch (torch.Generator is MT19937 on CPU and a differently laid out
 * Philox on CUDA, with its own normal transform) or numpy: seed 42 here and seed 42 in diffusers
 * give different images. Parity tests therefore feed recorded reference noise instead.
 */
import { tf, type Tensor } from './backend/tf.ts';

const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;
const TWO_32 = 4294967296;

/** High 32 bits of the 64-bit product of two uint32 (exact, via 16-bit halves). */
function mulhi32(a: number, b: number): number {
  const aLo = a & 0xffff;
  const aHi = a >>> 16;
  const bLo = b & 0xffff;
  const bHi = b >>> 16;
  const lolo = aLo * bLo;
  const hilo = aHi * bLo;
  const lohi = aLo * bHi;
  const cross = (lolo >>> 16) + (hilo & 0xffff) + lohi; // < 2^34, exact in a double
  return (aHi * bHi + (hilo >>> 16) + Math.floor(cross / 65536)) >>> 0;
}

/** The Philox4x32-10 bijection: 10 rounds over a 4-word counter under a 2-word key. */
export function philox4x32_10(
  counter: ArrayLike<number>,
  key: ArrayLike<number>,
  out = new Uint32Array(4),
): Uint32Array {
  let c0 = counter[0] >>> 0;
  let c1 = counter[1] >>> 0;
  let c2 = counter[2] >>> 0;
  let c3 = counter[3] >>> 0;
  let k0 = key[0] >>> 0;
  let k1 = key[1] >>> 0;
  for (let round = 0; round < 10; round++) {
    if (round > 0) {
      k0 = (k0 + W0) >>> 0;
      k1 = (k1 + W1) >>> 0;
    }
    const hi0 = mulhi32(M0, c0);
    const lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi32(M1, c2);
    const lo1 = Math.imul(M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
  return out;
}

/** A generator's complete, serialisable state. */
export interface RngState {
  readonly algorithm: 'philox4x32-10';
  readonly seed: number;
  readonly stream: number;
  /** Words consumed so far. */
  readonly position: number;
}

export class Rng {
  private readonly key: Uint32Array;
  private readonly block = new Uint32Array(4);
  private blockIndex = -1;
  private _position = 0;

  /**
   * @param seed   integer in [0, 2^53)
   * @param stream integer in [0, 2^32): independent sub-streams of one seed
   */
  constructor(
    readonly seed: number,
    readonly stream = 0,
  ) {
    if (!Number.isSafeInteger(seed) || seed < 0)
      throw new Error(`Rng: seed must be an integer in [0, 2^53), got ${seed}`);
    if (!Number.isInteger(stream) || stream < 0 || stream >= TWO_32)
      throw new Error(`Rng: stream must be an integer in [0, 2^32), got ${stream}`);
    this.key = Uint32Array.of(seed % TWO_32, Math.floor(seed / TWO_32));
  }

  /** Words consumed so far. */
  get position(): number {
    return this._position;
  }

  state(): RngState {
    return { algorithm: 'philox4x32-10', seed: this.seed, stream: this.stream, position: this._position };
  }

  /** Resumes a generator exactly where `state()` was taken. */
  static fromState(s: RngState): Rng {
    if (typeof s !== 'object' || s === null || s.algorithm !== 'philox4x32-10') {
      throw new Error(
        `Rng.fromState: expected {algorithm: 'philox4x32-10', seed, stream, position}, got ${JSON.stringify(s)}`,
      );
    }
    if (!Number.isSafeInteger(s.position) || s.position < 0)
      throw new Error(`Rng.fromState: position must be a non-negative integer, got ${s.position}`);
    const rng = new Rng(s.seed, s.stream);
    rng._position = s.position;
    return rng;
  }

  /** An independent copy at the same position. */
  clone(): Rng {
    return Rng.fromState(this.state());
  }

  /** The next 32-bit word. */
  uint32(): number {
    const b = Math.floor(this._position / 4);
    if (b !== this.blockIndex) {
      philox4x32_10([b % TWO_32, Math.floor(b / TWO_32), this.stream, 0], this.key, this.block);
      this.blockIndex = b;
    }
    const w = this.block[this._position % 4];
    this._position += 1;
    return w;
  }

  /** A double in [0, 1) with 53 random bits (two words). */
  uniform(): number {
    const a = this.uint32() >>> 5;
    const b = this.uint32() >>> 6;
    return (a * 67108864 + b) / 9007199254740992;
  }

  /** An integer in [0, n), unbiased (rejection sampling on words). */
  int(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > TWO_32)
      throw new Error(`Rng.int: n must be an integer in [1, 2^32], got ${n}`);
    const limit = Math.floor(TWO_32 / n) * n;
    for (;;) {
      const w = this.uint32();
      if (w < limit) return w % n;
    }
  }

  /** `n` (or shape-product) standard normal samples as float32, Box–Muller (see the file header). */
  normal(shapeOrN: number | readonly number[]): Float32Array {
    const n = typeof shapeOrN === 'number' ? shapeOrN : shapeOrN.reduce((a, b) => a * b, 1);
    if (!Number.isInteger(n) || n < 0)
      throw new Error(`Rng.normal: size must be a non-negative integer, got ${JSON.stringify(shapeOrN)}`);
    const out = new Float32Array(n);
    for (let i = 0; i < n; i += 2) {
      const u1 = (this.uint32() + 1) / TWO_32;
      const u2 = this.uint32() / TWO_32;
      const r = Math.sqrt(-2 * Math.log(u1));
      const theta = 2 * Math.PI * u2;
      out[i] = r * Math.cos(theta);
      if (i + 1 < n) out[i + 1] = r * Math.sin(theta);
    }
    return out;
  }
}

/** A float32 tensor of N(0, 1) samples from `rng`, filled in row-major order. Caller owns it. */
export function randn(rng: Rng, shape: readonly number[]): Tensor {
  return tf.tensor(rng.normal(shape), [...shape], 'float32');
}

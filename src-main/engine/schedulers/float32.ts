/**
 * Float32 arithmetic and the numpy / torch helpers diffusers' schedulers are built from.
 *
 * diffusers v0.27.2 builds every schedule from a mix of float32 torch tensors and float64 numpy
 * arrays, then casts to float32. To get timesteps and sigmas that are *exactly* the reference
 * float32 values (the parity tests compare them with `===`), each helper here states which of
 * the two it reproduces and where the result is rounded:
 *
 *   f32(x)                 rounds a double to float32 (`Math.fround`), i.e. `.to(torch.float32)`
 *   fma32(a, b, c)         a*b + c rounded once to float32 (a fused multiply-add)
 *   torchLinspaceF32(...)  `torch.linspace(start, end, steps, dtype=torch.float32)` on CPU
 *   npLinspace(...)        `np.linspace(start, stop, num)` in float64
 *   npArange(...)          `np.arange(start, stop, step)` in float64
 *   roundHalfEven(x)       `np.round(x)` (ties to even; `Math.round` rounds ties up)
 *   interpAtIndex(x, fp)   `np.interp(x, np.arange(len(fp)), fp)` in float64
 */

export const f32 = Math.fround;

/** `torch.sqrt` / `x ** 0.5` of a float32 value: IEEE sqrt is exact-rounded, so this is bit-exact. */
export function sqrt32(x: number): number {
  return f32(Math.sqrt(x));
}

/** `torch.log` of a float32 value (libm may differ in the last bit; only used where that is harmless). */
export function log32(x: number): number {
  return f32(Math.log(x));
}

/** `torch.exp` of a float32 value (as `log32`). */
export function exp32(x: number): number {
  return f32(Math.exp(x));
}

const f32View = new Float32Array(1);
const u32View = new Uint32Array(f32View.buffer);

/** The float32 next to `x` (a float32 value) in the direction of `dir` (+1 or -1). */
function nextF32(x: number, dir: 1 | -1): number {
  if (x === 0) return dir * 1.401298464324817e-45;
  f32View[0] = x;
  u32View[0] += x > 0 === dir > 0 ? 1 : -1;
  return f32View[0];
}

/**
 * a*b + c with one rounding to float32, as a compiler-contracted `a * b + c` in C++ float code.
 * a and b are float32 values, so a*b is exact in a double; the sum is rounded to a double first,
 * which can only mislead the float32 rounding when that double lands exactly on a float32 tie.
 * That case is detected with the exact error term of the sum (TwoSum) and resolved.
 */
export function fma32(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const bp = s - c;
  const err = p - bp + (c - (s - bp)); // s + err == p + c exactly
  const r = f32(s);
  if (err === 0 || r === s) return r;
  // Is s exactly halfway between r and its neighbour on the other side of s?
  const other = nextF32(r, s > r ? 1 : -1);
  if (Math.abs(other - s) !== Math.abs(r - s)) return r;
  // A tie in the double, but the true value p + c lies on the side of err.
  return err > 0 === other > r ? other : r;
}

/**
 * `torch.linspace(start, end, steps, dtype=torch.float32)` exactly as torch 1.13's CPU kernel
 * (aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp) computes it on an AVX2 build:
 *
 *   step = (end - start) / (steps - 1)                       in float32
 *   i <  steps/2:  start + step * i                           (contracted to an FMA)
 *   i >= steps/2:  end - step * (steps - 1 - i)               (contracted to an FMA)
 *
 * The vectorised loop fills blocks of 2×8 lanes: each 8-lane vector takes its base from the
 * formula at its first index (even when the vector straddles steps/2) and adds k·step for lane k;
 * the tail that does not fill 16 lanes runs the scalar formula. This reproduces the reference
 * `betas` of the SD-1.5 `scaled_linear` schedule bit for bit (the plain formula misses 272 of 1000).
 */
export function torchLinspaceF32(start: number, end: number, steps: number): Float32Array {
  const out = new Float32Array(steps);
  const s = f32(start);
  const e = f32(end);
  if (steps === 1) {
    out[0] = s;
    return out;
  }
  const step = f32(f32(e - s) / (steps - 1));
  const halfway = Math.floor(steps / 2);
  const scalarAt = (i: number): number => (i < halfway ? fma32(step, i, s) : fma32(-step, steps - i - 1, e));
  const LANES = 8;
  const vectorEnd = Math.floor(steps / (2 * LANES)) * 2 * LANES;
  let i = 0;
  for (; i < vectorEnd; i += LANES) {
    const base = scalarAt(i);
    for (let k = 0; k < LANES; k++) out[i + k] = fma32(k, step, base);
  }
  for (; i < steps; i++) out[i] = scalarAt(i);
  return out;
}

/** `np.linspace(start, stop, num)` (endpoint included) in float64: `i * step + start`, last = stop. */
export function npLinspace(start: number, stop: number, num: number): number[] {
  if (num === 1) return [start];
  const step = (stop - start) / (num - 1);
  const out = Array.from({ length: num }, (_, i) => i * step + start);
  out[num - 1] = stop;
  return out;
}

/**
 * `np.arange(start, stop, step)` in float64. numpy sets the first two values and fills the rest as
 * `start + i * delta` with `delta = (start + step) - start`, which is not always `step`.
 */
export function npArange(start: number, stop: number, step: number): number[] {
  const length = Math.max(0, Math.ceil((stop - start) / step));
  if (length === 0) return [];
  const delta = start + step - start;
  return Array.from({ length }, (_, i) => (i === 0 ? start : start + i * delta));
}

/** `np.round(x)`: round half to even. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * `np.interp(x, np.arange(len(fp)), fp)` in float64 (numpy's compiled `arr_interp`): exact table
 * values at integer x and at the right end; otherwise `slope * (x - j) + fp[j]`.
 */
export function interpAtIndex(x: number, fp: ArrayLike<number>): number {
  const n = fp.length;
  if (Number.isNaN(x)) return x;
  if (x <= 0) return fp[0];
  if (x >= n - 1) return fp[n - 1];
  const j = Math.floor(x);
  if (j === x) return fp[j];
  const slope = (fp[j + 1] - fp[j]) / 1;
  return slope * (x - j) + fp[j];
}

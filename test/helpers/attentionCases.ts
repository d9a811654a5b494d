/**
 * The memory-efficient attention's contract, run on each backend that has a test file: the same
 * values and the same gradients (dq, dk, dv) as the plain `attend`, within 1e-5 * max|ref|, with
 * and without masks, over shapes with odd sizes and several slices; and no tensors left behind.
 */
import { describe, expect, it } from 'vitest';
import { tf, type Tensor } from '../../src-main/engine/backend/tf.ts';
import { attend } from '../../src-main/engine/models/ops/tfAttention.ts';
import { memoryEfficientAttend } from '../../src-main/engine/models/ops/memoryEfficientAttention.ts';
import { Rng } from '../../src-main/engine/random.ts';
import { expectNoLeak, maxAbsDiff } from './backend.ts';

export interface AttentionCase {
  name: string;
  b: number;
  sq: number;
  sk: number;
  heads: number;
  d: number;
  /** Shape of an additive mask, or none. */
  mask?: [number, number, number];
  /** Slice budget in scores; small budgets force many group and row slices. */
  budget: number;
}

export const ATTENTION_CASES: AttentionCase[] = [
  { name: 'self-attention, one slice', b: 1, sq: 16, sk: 16, heads: 2, d: 4, budget: 2 ** 24 },
  {
    name: 'odd sizes, 3 heads, batch 2, row slices of 5 with a remainder',
    b: 2,
    sq: 13,
    sk: 11,
    heads: 3,
    d: 5,
    budget: 5 * 11,
  },
  { name: 'cross-attention (77 keys), one row per slice', b: 1, sq: 9, sk: 77, heads: 2, d: 8, budget: 77 },
  {
    name: 'causal mask [1, Sq, Sk], row slices',
    b: 2,
    sq: 12,
    sk: 12,
    heads: 2,
    d: 3,
    mask: [1, 12, 12],
    budget: 4 * 12,
  },
  {
    name: 'per-group key mask [B*heads, 1, Sk], several groups per slice',
    b: 2,
    sq: 7,
    sk: 10,
    heads: 3,
    d: 4,
    mask: [6, 1, 10],
    budget: 2 * 7 * 10,
  },
  {
    name: 'full mask [B*heads, Sq, Sk], row slices',
    b: 1,
    sq: 10,
    sk: 6,
    heads: 2,
    d: 6,
    mask: [2, 10, 6],
    budget: 3 * 6,
  },
];

function maskTensor(shape: [number, number, number], rng: Rng): Tensor {
  const [g, r, c] = shape;
  const values = new Float32Array(g * r * c);
  for (let i = 0; i < values.length; i++) {
    const row = Math.floor(i / c) % r;
    const col = i % c;
    // Causal where it has rows (a row sees keys up to its own index), else random key masking;
    // every row keeps key 0, so no row is fully masked.
    const masked = r > 1 ? col > row : col > 0 && rng.uniform() < 0.4;
    values[i] = masked ? -1e9 : 0;
  }
  return tf.tensor3d(values, shape);
}

/** Values and gradients of sum(attention(q, k, v) * w) for one implementation. */
async function valueAndGrads(
  fn: typeof attend,
  c: AttentionCase,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  w: Tensor,
  mask: Tensor | undefined,
  budget: number,
) {
  const out = fn(q, k, v, c.heads, mask, budget);
  const g = tf.grads((a: Tensor, b: Tensor, cc: Tensor) => tf.sum(tf.mul(fn(a, b, cc, c.heads, mask, budget), w)));
  const grads = g([q, k, v]);
  const data = {
    out: await out.data(),
    dq: await grads[0].data(),
    dk: await grads[1].data(),
    dv: await grads[2].data(),
  };
  tf.dispose([out, ...grads]);
  return data;
}

export function memoryEfficientAttentionSuite(): void {
  describe('memoryEfficientAttend equals attend, values and gradients', () => {
    for (const c of ATTENTION_CASES) {
      it(c.name, async () => {
        const rng = new Rng(11, c.sq * 100 + c.sk);
        const inner = c.heads * c.d;
        const q = tf.tensor3d(rng.normal(c.b * c.sq * inner), [c.b, c.sq, inner]);
        const k = tf.tensor3d(rng.normal(c.b * c.sk * inner), [c.b, c.sk, inner]);
        const v = tf.tensor3d(rng.normal(c.b * c.sk * inner), [c.b, c.sk, inner]);
        const w = tf.tensor3d(rng.normal(c.b * c.sq * inner), [c.b, c.sq, inner]); // the upstream gradient dO
        const mask = c.mask ? maskTensor(c.mask, rng) : undefined;

        const ref = await valueAndGrads(attend, c, q, k, v, w, mask, Infinity);
        const mine = await expectNoLeak(() => valueAndGrads(memoryEfficientAttend, c, q, k, v, w, mask, c.budget));
        const report: string[] = [];
        for (const key of ['out', 'dq', 'dk', 'dv'] as const) {
          const d = maxAbsDiff(mine[key], ref[key]);
          report.push(`${key} ${d.rel.toExponential(2)}`);
          expect(d.maxRef, `${key}: the reference is all zeros, so the comparison would prove nothing`).toBeGreaterThan(
            0,
          );
          expect(d.maxAbs, `${c.name}: ${key} differs by ${d.maxAbs} (max |ref| ${d.maxRef})`).toBeLessThanOrEqual(
            1e-5 * d.maxRef,
          );
        }
        console.log(
          `[memory-efficient attention, ${tf.getBackend()}] ${c.name}: max |diff| / max |ref|: ${report.join(', ')}`,
        );
        tf.dispose([q, k, v, w, ...(mask ? [mask] : [])]);
      });
    }
  });
}

/**
 * Attention for small heads as two of ONNX Runtime's fused MultiHeadAttention calls, forward and
 * backward together (the CPU provider runs them as its flash attention, MLAS): no scores-sized
 * tensor is written. The plain backward rule (rules.ts: attentionBackward) recomputes each head
 * group's [Sq, Sk] scores and makes about ten passes over them (softmax, dS, four products); at head
 * size 4 (tiny-b) those passes are memory-bound and were 57% of the training step (docs/performance.md).
 *
 * Per head, with P = softmax(S), S = s Q K^T, s = 1/sqrt(d), D[q] = dO[q] . O[q]:
 *
 *   O[q]  = sum_k P[q,k] V[k]
 *   dQ[q] = s (R[q] dO[q] - D[q] RK[q])     R[q] = sum_k P[q,k] K[k] V[k]^T,  RK[q] = sum_k P[q,k] K[k]
 *   dK[k] = s (T[k] V[k] - U[k])            T[k] = sum_q P[q,k] Q[q] dO[q]^T, U[k] = sum_q P[q,k] D[q] Q[q]
 *   dV[k] = sum_q P[q,k] dO[q]
 *
 * O, R and RK are one attention over the values [V, K V^T, K] (e + e d + d per key): the forward
 * (`fusedAttentionForward`) computes it and the backward reuses it. T, U and dV weight the queries by
 * the columns of P, an attention of the keys over the queries with the logits S[q,k] - lse[q],
 * lse[q] = log sum_k exp S[q,k], and without its normalisation. Both come from MultiHeadAttention by
 * augmenting the head dims (its scale set to 1, s folded into the inputs):
 *
 *   1. queries [s Q, J], keys [K, 0] and one extra key [0, 1] whose logit is J[q], within ~87 of lse
 *      (`extraLogit`), values [V, K V^T, K, 1, 0] and [0, 0, 0, 0, 1] for the extra key. The outputs
 *      are O, R and RK times a = e^lse / (e^lse + e^J), then a and b = e^J / (e^lse + e^J), so
 *      lse = J + log a - log b.
 *   2. queries [s K, 1], keys [Q, -lse] and one extra key [0, 0] (logit 0, at least every other
 *      logit, which are log P <= 0), values [Q dO^T, D Q, dO, 0] and [0, 0, 0, 1]: the sums times
 *      c = 1 / (1 + sum_q P[q,k]), and c.
 *
 * The value widths grow with e d, so this is for small heads only (`useFusedAttention`).
 */
import type { Value } from '../graphBuilder.ts';
import type { Dim } from './shapes.ts';
import type { RuleContext, TapeEntry } from './tape.ts';

/** The largest e*d (value head size times query head size) the fused backward takes. */
export const FUSED_BACKWARD_MAX_HEAD_PRODUCT = 16;

/**
 * Whether an attention over q, k, v (shapes [B, S, width]) with `heads` heads and no mask goes the
 * fused way in both directions, given the executor's `fusedAttention` mode (tape.ts).
 */
export function useFusedAttention(
  mode: 'off' | 'small' | 'always',
  [q, k, v]: ReadonlyArray<readonly Dim[]>,
  heads: number,
  masked: boolean,
): boolean {
  const inner = q[2];
  if (mode === 'off' || masked || typeof inner !== 'number' || inner % heads !== 0) return false;
  if (v[2] !== inner || typeof k[1] !== 'number') return false;
  const d = inner / heads;
  return mode === 'always' || d * d <= FUSED_BACKWARD_MAX_HEAD_PRODUCT;
}

/** What a forward fused for its backward keeps: the statistics attention and its extra logit. */
export interface FusedAttentionStats {
  /** [B, Sq, H, d + d * d + d + 2]: O, R and RK each times a, then a and b (see the file comment). */
  readonly stats: Value;
  /** The extra key's logit J [B, Sq, H, 1]. */
  readonly extra: Value;
}

/** Emitting helpers for one attention's heads (H heads of size d, values of type `like`'s). */
function kit(c: RuleContext, H: number, d: number, like: Value) {
  const g = c.g;
  const heads4 = (t: Value, w = d) => g.op('Reshape', [t, g.ints([0, 0, H, w])], {}, { rank: 4 }); // [B, S, H, w]
  const cat = (ts: Value[], axis: number) => g.op('Concat', ts, { axis });
  const mul = (x: Value, y: Value) => g.op('Mul', [x, y]);
  const num = (n: number) => c.scalar(n, like);
  return {
    g,
    heads4,
    cat,
    mul,
    num,
    s: 1 / Math.sqrt(d),
    lastAxis: (t: Value, from: number, to: number) => g.op('Slice', [t, g.ints([from]), g.ints([to]), g.ints([3])]),
    /** [B, S, H, 1] of n, S as `of`'s. */
    fill: (of: Value, n: number) =>
      g.op('Expand', [num(n), cat([c.runtimeShape(of, 0, 3), g.ints([1])], 0)], {}, { rank: 4 }),
    /** The extra key or value row [B, 1, H, w]: `last` in its last entry, else 0. */
    extraRow: (of: Value, w: number, last: number) =>
      g.op(
        'Expand',
        [
          c.castLike(g.constant([...new Array(w - 1).fill(0), last], [1, 1, 1, w]), like),
          cat([c.runtimeShape(of, 0, 1), g.ints([1, H, w])], 0),
        ],
        {},
        { rank: 4 },
      ),
    /** Per row and head, the outer product x y^T flattened: [B, S, H, d * d], entry [i, j] = x[i] y[j]. */
    outer: (x: Value, y: Value) =>
      g.op(
        'Reshape',
        [
          mul(
            g.op('Unsqueeze', [x, g.ints([4])], {}, { rank: 5 }),
            g.op('Unsqueeze', [y, g.ints([3])], {}, { rank: 5 }),
          ),
          g.ints([0, 0, H, d * d]),
        ],
        {},
        { rank: 4 },
      ),
    /**
     * m [B, S, H, d * d] read as [d, d] matrices (entry [i, j]) times x [B, S, H, d]: sum_j m[i, j] x[j],
     * a Mul and a ReduceSum over the last axis (a batched MatMul of d x d by d x 1 products, or a
     * sum over another axis, took several times longer).
     */
    timesRow: (m: Value, x: Value) => {
      const mat = g.op('Reshape', [m, g.ints([0, 0, H, d, d])], {}, { rank: 5 });
      const prod = mul(mat, g.op('Unsqueeze', [x, g.ints([3])], {}, { rank: 5 })); // [B, S, H, d, d]
      return g.op('ReduceSum', [prod, g.ints([4])], { keepdims: 0 }, { rank: 4 });
    },
    /** MultiHeadAttention (scale 1) of [B, S, H, *] inputs -> [B, Sq, H, w]. */
    mha: (q: Value, k: Value, v: Value, w: number) => {
      const flat = (t: Value) => g.op('Reshape', [t, g.ints([0, 0, -1])], {}, { rank: 3 });
      const attrs = { num_heads: H, scale: { float: 1 } };
      const out = g.node('MultiHeadAttention', [flat(q), flat(k), flat(v)], attrs, {
        domain: 'com.microsoft',
        rank: 3,
      });
      return heads4(out[0], w);
    },
  };
}

/**
 * Call 1 of the file comment on q, k, v [B, S, H, d], with O among its values: [O, R, RK] times a,
 * then a and b, per query and head.
 */
function statsAttention(c: RuleContext, q: Value, k: Value, v: Value, H: number, d: number, sk: number) {
  const { cat, mul, num, s, fill, extraRow, outer, mha } = kit(c, H, d, q);
  const extra = extraLogit(c, q, k, s, sk);
  const w = d + d * d + d + 2;
  const stats = mha(
    cat([mul(q, num(s)), extra], 3), // [B, Sq, H, d + 1]
    cat([cat([k, fill(k, 0)], 3), extraRow(k, d + 1, 1)], 1), // [B, Sk + 1, H, d + 1]
    cat([cat([v, outer(k, v), k, fill(k, 1), fill(k, 0)], 3), extraRow(k, w, 1)], 1), // [B, Sk + 1, H, w]
    w,
  );
  return { stats, extra };
}

/**
 * The forward of a fused-backward attention (q, k, v [B, S, heads * d], no mask, float32): softmax(s q
 * k^T) v from the statistics attention, which the backward then reuses (its call 1), so the step runs
 * two attentions instead of three.
 */
export function fusedAttentionForward(
  c: RuleContext,
  q: Value,
  k: Value,
  v: Value,
  heads: number,
): { out: Value } & FusedAttentionStats {
  const [inner, sk] = [c.shape(q)[2], c.shape(k)[1]];
  if (typeof inner !== 'number' || typeof sk !== 'number')
    throw new Error('fusedAttentionForward: the width and the key count must be known');
  const d = inner / heads;
  const { g, heads4, lastAxis } = kit(c, heads, d, q);
  const { stats, extra } = statsAttention(c, heads4(q), heads4(k), heads4(v), heads, d, sk);
  const w = d + d * d + d + 2;
  const o = g.op('Div', [lastAxis(stats, 0, d), lastAxis(stats, w - 2, w - 1)]); // [B, Sq, H, d]
  return { out: g.op('Reshape', [o, g.ints([0, 0, inner])], {}, { rank: 3 }), stats, extra };
}

/**
 * dq, dk, dv of `e` (no mask; q, k, v [B, S, heads * d]) from dO, in dO's type (float32: the CPU
 * provider's MultiHeadAttention is float32 there), with the statistics its forward kept (or, without
 * them, computed here from q gated on dO).
 */
export function fusedAttentionBackward(
  c: RuleContext,
  e: TapeEntry<'attention'>,
  dO: Value,
  kept?: FusedAttentionStats,
): [Value, Value, Value] {
  const H = e.args.heads;
  const inner = c.shape(e.inputs[0])[2] as number;
  const d = inner / H;
  const sk = c.shape(e.inputs[1])[1];
  if (typeof sk !== 'number') throw new Error('fusedAttentionBackward: the key count must be known');
  const { g, heads4, cat, mul, num, s, lastAxis, fill, extraRow, outer, timesRow, mha } = kit(c, H, d, dO);
  const [q0, k, v] = e.inputs.slice(0, 3).map((t) => heads4(c.castLike(t, dO)));
  // Recomputed statistics read q + 0 * sum(dO), so they cannot run before dO exists.
  const q = kept ? q0 : g.op('Add', [q0, mul(c.sumAll(dO), num(0))]);
  const { stats, extra } = kept ?? statsAttention(c, q, k, v, H, d, sk);
  const dO4 = heads4(dO);
  const D = g.op('ReduceSum', [mul(dO4, heads4(c.castLike(e.outputs[0], dO))), g.ints([3])], { keepdims: 1 }); // [B, Sq, H, 1]

  // 1. From [O, R, RK] times a, a and b: lse and dQ.
  const w1 = d + d * d + d + 2;
  const a = lastAxis(stats, w1 - 2, w1 - 1);
  const lse = g.op('Add', [extra, g.op('Sub', [g.op('Log', [a]), g.op('Log', [lastAxis(stats, w1 - 1, w1)])])]);
  const R = lastAxis(stats, d, d + d * d);
  const dqa = g.op('Sub', [timesRow(R, dO4), mul(D, lastAxis(stats, d + d * d, d + d * d + d))]);
  const dq = mul(dqa, g.op('Div', [num(s), a]));

  // 2. T, U and dV times c, then c (the keys attend to the queries, logits log P[q, k] and 0).
  const w2 = d * d + 2 * d + 1;
  const o2 = mha(
    cat([mul(k, num(s)), fill(k, 1)], 3), // [B, Sk, H, d + 1]
    cat([cat([q, g.op('Neg', [lse])], 3), extraRow(q, d + 1, 0)], 1), // [B, Sq + 1, H, d + 1]
    cat([cat([outer(q, dO4), mul(D, q), dO4, fill(q, 0)], 3), extraRow(q, w2, 1)], 1), // [B, Sq + 1, H, w2]
    w2,
  );
  const cInv = g.op('Reciprocal', [lastAxis(o2, w2 - 1, w2)]);
  const dka = g.op('Sub', [timesRow(lastAxis(o2, 0, d * d), v), lastAxis(o2, d * d, d * d + d)]);
  const dk = mul(dka, mul(cInv, num(s)));
  const dv = mul(lastAxis(o2, d * d + d, d * d + 2 * d), cInv);
  const back = (t: Value, like: Value) =>
    c.castLike(g.op('Reshape', [t, g.ints([0, 0, inner])], {}, { rank: 3 }), like);
  return [back(dq, e.inputs[0]), back(dk, e.inputs[1]), back(dv, e.inputs[2])];
}

/**
 * The extra key's logit J per query and head [B, Sq, H, 1] (q, k [B, S, H, d]), which must lie
 * within ~87 of lse on either side (float32's exp range) so that neither a nor b underflows:
 * J = max(L, U - 75), with L = log Sk + s q . mean_k k <= lse (Jensen) and U = s |q| max_k |k| >=
 * max_k S (Cauchy-Schwarz), and lse <= max_k S + log Sk. J = L is at most lse and at least
 * U - 75 >= lse - log Sk - 75; J = U - 75 is above L, at least lse - log Sk - 75 and at most max_k S
 * + 87 unless U exceeds max_k S by more than 162: scores of that size, where the bound is that
 * loose, are what this rule cannot take (the plain rule can).
 */
function extraLogit(c: RuleContext, q: Value, k: Value, s: number, sk: number): Value {
  const g = c.g;
  const num = (n: number) => c.scalar(n, q);
  const dot = (x: Value, y: Value) => g.op('ReduceSum', [g.op('Mul', [x, y]), g.ints([3])], { keepdims: 1 });
  const kMean = g.op('ReduceMean', [k], { axes: [1], keepdims: 1 }); // [B, 1, H, d]
  const lower = g.op('Add', [g.op('Mul', [dot(q, kMean), num(s)]), num(Math.log(sk))]);
  const kMax = g.op('ReduceMax', [g.op('Sqrt', [dot(k, k)])], { axes: [1], keepdims: 1 }); // [B, 1, H, 1]
  const upper = g.op('Mul', [g.op('Mul', [g.op('Sqrt', [dot(q, q)]), kMax]), num(s)]);
  return g.op('Max', [lower, g.op('Sub', [upper, num(75)])]);
}

/**
 * Memory-efficient multi-head attention for training: the same function as `attend`
 * (attention.ts), softmax(Q K^T * scale + mask) V per head, with a backward pass that never holds
 * more than one slice of attention scores.
 *
 * References: Rabe & Staats, 2021, "Self-attention Does Not Need O(n^2) Memory" (xformers'
 * memory-efficient attention); Dao et al., 2022/2023, "FlashAttention" 1 and 2 (the backward pass
 * that recomputes the scores from Q and K).
 *
 * Plain TensorFlow.js keeps every scores and softmax tensor ([B*heads, Sq, Sk] each) on the tape
 * until the backward pass reaches it, so training memory grows with tokens^2. Here a
 * `tf.customGrad` node keeps only Q, K, V and the output O, and the backward pass recomputes each
 * slice's scores. A slice always holds whole rows (every key), so its softmax is recomputed
 * exactly with the softmax kernel and needs no saved statistic: FlashAttention saves the rows'
 * logsumexp because its tiles also cut the keys. (On wasm the softmax kernel, XNNPACK's, is also
 * 3x faster than `exp` alone.) The softmax backward's row term D comes from dO and the saved O.
 *
 * Symbols (per (batch*head) group; `rows` = a query chunk):
 *   Q  [Sq, d]   queries, pre-multiplied by scale = 1/sqrt(d)
 *   K  [Sk, d]   keys;  V [Sk, d] values;  M mask (additive, broadcast)
 *   S  = Q K^T + M                 [rows, Sk]  scores
 *   P  = softmax(S)                [rows, Sk]
 *   O  = P V                       [Sq, d]     output (saved)
 *   dO                             [Sq, d]     incoming gradient
 *
 * Backward, one slice at a time:
 *   1. D  = rowsum(dO * O)                         [Sq, 1]  (once, for all rows)
 *   2. P  = softmax(Q K^T + M)                     recomputed
 *   3. dV = P^T dO             computed as dV^T = dO^T P, summed over row slices
 *   4. dP = dO V^T
 *   5. dS = P * (dP - D)                           the softmax backward
 *   6. dQ = dS K * scale;  dK = dS^T Q (Q already scaled), computed as dK^T = Q^T dS
 *
 * How the work is cut: on wasm one (batch*head) group at a time (tfjs-wasm sends only batch-1,
 * untransposed matmuls to XNNPACK; a batched one is a naive loop), elsewhere as many groups as fit
 * in `maxScoreElements`; then query rows, so that no slice holds more than `maxScoreElements`
 * scores. Every matmul is untransposed (wasm's transposeA/transposeB path is ~10x slower) and the
 * transposes are explicit and only ever of [S, d]-sized tensors, never of scores (a 1024 x 1024
 * transpose costs 20 ms on wasm, the softmax 3 ms).
 *
 * Tensor ownership: returns one new tensor; every intermediate is disposed (forward and backward).
 * The mask is treated as a constant (its gradient is reported as zero), as attention masks are.
 */
import { tf, type Tensor } from '../../backend/tf.ts';

/** The default slice budget when the caller gives none: 2^24 scores (64 MiB of float32). */
const DEFAULT_MAX_SCORE_ELEMENTS = 2 ** 24;

interface Cut {
  /** Sizes of the (batch*head) group slices. */
  groups: number[];
  /** Sizes of the query-row slices within a group slice. */
  rows: number[];
}

/**
 * q [B, Sq, heads*d], k and v [B, Sk, heads*d] -> [B, Sq, heads*d], as `attend`.
 * `mask`, if given, is added to the scores and broadcasts to [B*heads, Sq, Sk].
 */
export function memoryEfficientAttend(q: Tensor, k: Tensor, v: Tensor, heads: number, mask?: Tensor, maxScoreElements = DEFAULT_MAX_SCORE_ELEMENTS): Tensor {
  const [b, sq, inner] = q.shape as number[];
  const sk = k.shape[1] as number;
  if (q.rank !== 3 || k.rank !== 3 || v.rank !== 3) throw new Error(`memoryEfficientAttend: q, k, v must be [B, S, channels]; got q [${q.shape}], k [${k.shape}], v [${v.shape}]`);
  if (inner % heads !== 0) throw new Error(`memoryEfficientAttend: ${inner} channels do not split into ${heads} heads`);
  if (k.shape[0] !== b || v.shape[0] !== b || k.shape[2] !== inner || v.shape[2] !== inner || v.shape[1] !== sk) {
    throw new Error(`memoryEfficientAttend: q [${q.shape}], k [${k.shape}], v [${v.shape}] do not agree`);
  }
  const d = inner / heads;
  const bh = b * heads;
  const scale = 1 / Math.sqrt(d);
  if (mask) checkMask(mask, bh, sq, sk);
  const cut = cutWork(bh, sq, sk, maxScoreElements, tf.getBackend() === 'wasm');

  // [B, S, heads*d] -> [B*heads, S, d], and back.
  const toHeads = (t: Tensor, s: number) => t.reshape([b, s, heads, d]).transpose([0, 2, 1, 3]).reshape([bh, s, d]);
  const fromHeads = (t: Tensor) => t.reshape([b, heads, sq, d]).transpose([0, 2, 1, 3]).reshape([b, sq, inner]);
  // [B, Sk, heads*d] -> [B*heads, d, Sk]: keys (and, in the backward pass, values) transposed once.
  const toHeadsT = (t: Tensor) => t.reshape([b, sk, heads, d]).transpose([0, 2, 3, 1]).reshape([bh, d, sk]);

  // customGrad's typing wants a fixed arity; the engine passes (q, k, v[, mask], save). The mask
  // is an input so that the tape keeps it alive until the backward pass.
  const customGrad = tf.customGrad as unknown as (f: (...args: unknown[]) => unknown) => (...args: Tensor[]) => Tensor;
  const run = customGrad((...args: unknown[]) => {
    const save = args.pop() as (ts: Tensor[]) => void;
    const [qIn, kIn, vIn, m3] = args as [Tensor, Tensor, Tensor, Tensor | undefined];
    const out = tf.tidy(() => {
      const qh = tf.mul(toHeads(qIn, sq), scale); // [BH, Sq, d], scaled
      const khT = toHeadsT(kIn); // [BH, d, Sk]
      const vh = toHeads(vIn, sk); // [BH, Sk, d]
      const outs: Tensor[] = [];
      eachGroup(cut, [qh, khT, vh], m3, ([qg, kTg, vg], mg) => {
        const rows = byRows(cut, [[qg, 1]], mg);
        rows.forEach(([[qr], mr]) => {
          outs.push(tf.tidy(() => tf.matMul(tf.softmax(scores(qr, kTg, mr)), vg))); // O = softmax(Q K^T + M) V [G, rows, d]
        });
      });
      return fromHeads(joinSlices(outs, cut)); // [B, Sq, inner]
    });
    save([qIn, kIn, vIn, out, ...(m3 ? [m3] : [])]);
    return {
      value: out,
      gradFunc: (dy: Tensor, saved: Tensor[]) => {
        const [qS, kS, vS, oS, mS] = saved;
        return tf.tidy(() => {
          const qh = tf.mul(toHeads(qS, sq), scale); // [BH, Sq, d], scaled
          const qhT = swapLastTwo(qh); // [BH, d, Sq]
          const khT = toHeadsT(kS); // [BH, d, Sk]
          const kh = toHeads(kS, sk); // [BH, Sk, d]
          const vhT = toHeadsT(vS); // [BH, d, Sk]
          const dOh = toHeads(dy, sq); // [BH, Sq, d]
          const dOhT = swapLastTwo(dOh); // [BH, d, Sq]
          const delta = tf.sum(tf.mul(dOh, toHeads(oS, sq)), -1, true); // 1. D [BH, Sq, 1]
          const dqs: Tensor[] = []; // [G, rows, d] each
          const dks: Tensor[] = []; // [G, Sk, d] each
          const dvs: Tensor[] = [];
          eachGroup(cut, [qh, qhT, khT, kh, vhT, dOh, dOhT, delta], mS, ([qg, qTg, kTg, kg, vTg, dOg, dOTg, Dg], mg) => {
            let dKT: Tensor | null = null; // [G, d, Sk]
            let dVT: Tensor | null = null; // [G, d, Sk]
            // Query rows: q, dO and D split along axis 1, the transposes along axis 2.
            const rows = byRows(cut, [[qg, 1], [qTg, 2], [dOg, 1], [dOTg, 2], [Dg, 1]], mg);
            for (const [[qr, qTr, dOr, dOTr, Dr], mr] of rows) {
              const [dQr, dKTr, dVTr] = tf.tidy(() => {
                const p = tf.softmax(scores(qr, kTg, mr)); // 2. P [G, rows, Sk]
                const dVTr = tf.matMul(dOTr, p); // 3. dV^T = dO^T P [G, d, Sk]
                const dP = tf.matMul(dOr, vTg); // 4. dP = dO V^T [G, rows, Sk]
                const dS = tf.mul(p, tf.sub(dP, Dr)); // 5. dS [G, rows, Sk]
                const dQr = tf.matMul(dS, kg); // 6. dQ / scale = dS K [G, rows, d]
                const dKTr = tf.matMul(qTr, dS); // 6. dK^T = Q^T dS [G, d, Sk]
                return [dQr, dKTr, dVTr];
              });
              dqs.push(dQr);
              dKT = accumulate(dKT, dKTr);
              dVT = accumulate(dVT, dVTr);
            }
            dks.push(swapLastTwo(dKT!)); // [G, Sk, d]
            dvs.push(swapLastTwo(dVT!));
            tf.dispose([dKT!, dVT!]);
          });
          const dq = tf.mul(fromHeads(joinSlices(dqs, cut)), scale); // [B, Sq, inner]
          // [BH, Sk, d] -> [B, heads, Sk, d] -> [B, Sk, heads, d] -> [B, Sk, inner]
          const fromHeadsK = (t: Tensor) => t.reshape([b, heads, sk, d]).transpose([0, 2, 1, 3]).reshape([b, sk, inner]);
          const dk = fromHeadsK(dks.length === 1 ? dks[0] : tf.concat(dks, 0));
          const dv = fromHeadsK(dvs.length === 1 ? dvs[0] : tf.concat(dvs, 0));
          // The mask is a constant (attention masks are): its gradient is reported as zero.
          return mS ? [dq, dk, dv, tf.zerosLike(mS)] : [dq, dk, dv];
        });
      },
    };
  });
  return mask ? run(q, k, v, mask) : run(q, k, v);
}

/** How to cut [BH, Sq, Sk] scores so that no slice exceeds the budget. */
function cutWork(bh: number, sq: number, sk: number, maxScoreElements: number, oneGroupAtATime: boolean): Cut {
  const groupsPerSlice = oneGroupAtATime ? 1 : Math.max(1, Math.min(bh, Math.floor(maxScoreElements / (sq * sk))));
  const rowsPerSlice = groupsPerSlice > 1 ? sq : Math.max(1, Math.min(sq, Math.floor(maxScoreElements / sk)));
  return { groups: chunks(bh, groupsPerSlice), rows: chunks(sq, rowsPerSlice) };
}

/** The mask must be [1 or BH, 1 or Sq, Sk]; anything else is an error that names the shapes. */
function checkMask(mask: Tensor, bh: number, sq: number, sk: number): void {
  const [g, r, c] = mask.shape as number[];
  if (mask.rank !== 3 || (g !== 1 && g !== bh) || (r !== 1 && r !== sq) || c !== sk) {
    throw new Error(`memoryEfficientAttend: mask [${mask.shape}] does not broadcast to the scores [${bh}, ${sq}, ${sk}]; give it as [1 or ${bh}, 1 or ${sq}, ${sk}]`);
  }
}

/** S = Q K^T (+ M) for one slice: [G, rows, Sk]. */
function scores(q: Tensor, kT: Tensor, mask: Tensor | undefined): Tensor {
  const s = tf.matMul(q, kT);
  return mask ? tf.add(s, mask) : s;
}

/** Calls `fn` with each group slice of `ts` (all [BH, ...]) and of the mask. */
function eachGroup(cut: Cut, ts: Tensor[], mask: Tensor | undefined, fn: (ts: Tensor[], m: Tensor | undefined) => void): void {
  const split = (t: Tensor) => (cut.groups.length === 1 ? [t] : tf.split(t, cut.groups, 0));
  const parts = ts.map(split);
  const masks = mask && mask.shape[0] !== 1 ? split(mask) : null;
  cut.groups.forEach((_, g) => {
    fn(parts.map((p) => p[g]), masks ? masks[g] : mask);
  });
  if (cut.groups.length > 1) {
    tf.dispose(parts.flat());
    if (masks) tf.dispose(masks);
  }
}

/** The query-row slices of `ts` (each cut along its own axis) and of the mask (along axis 1). */
function byRows(cut: Cut, ts: Array<[Tensor, number]>, mask: Tensor | undefined): Array<[Tensor[], Tensor | undefined]> {
  if (cut.rows.length === 1) return [[ts.map(([t]) => t), mask]];
  const parts = ts.map(([t, axis]) => tf.split(t, cut.rows, axis));
  const masks = mask && mask.shape[1] !== 1 ? tf.split(mask, cut.rows, 1) : null;
  return cut.rows.map((_, j) => [parts.map((p) => p[j]), masks ? masks[j] : mask]);
}

/** Slices produced group by group, rows within a group, -> [BH, Sq, ...]. */
function joinSlices(pieces: Tensor[], cut: Cut): Tensor {
  if (pieces.length === 1) return pieces[0];
  const perGroup = cut.rows.length;
  const groups: Tensor[] = [];
  for (let i = 0; i < pieces.length; i += perGroup) {
    const rows = pieces.slice(i, i + perGroup);
    groups.push(rows.length === 1 ? rows[0] : tf.concat(rows, 1));
  }
  return groups.length === 1 ? groups[0] : tf.concat(groups, 0);
}

/** acc + x (disposing both), or x when there is no acc yet. */
function accumulate(acc: Tensor | null, x: Tensor): Tensor {
  if (!acc) return x;
  const sum = tf.add(acc, x);
  tf.dispose([acc, x]);
  return sum;
}

function swapLastTwo(t: Tensor): Tensor {
  return tf.transpose(t, [0, 2, 1]);
}

/** Sizes that cut n into pieces of at most `size`. */
function chunks(n: number, size: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i += size) out.push(Math.min(size, n - i));
  return out;
}

/**
 * Memory-efficient multi-head attention for training: the same function as `attend`
 * (attention.ts), softmax(Q K^T * scale + mask) V per head, with a backward pass that never holds
 * more than one slice of attention scores.
 *
 * References: Rabe & Staats, 2021, "Self-attention Does Not Need O(n^2) Memory" (xformers'
 * memory-efficient attention); Dao et al., 2022/2023, "FlashAttention" 1 and 2 (the backward pass
 * that recomputes the scores from Q, K and the softmax statistics).
 *
 * Plain TensorFlow.js keeps every scores and softmax tensor ([B*heads, Sq, Sk] each) on the tape
 * until the backward pass reaches it, so training memory grows with tokens^2. Here a
 * `tf.customGrad` node keeps only Q, K, V, the output O and one number per query row, the log of
 * the softmax denominator (logsumexp, L). The backward pass recomputes each slice's scores.
 *
 * Symbols (per (batch*head) group; rows of a query chunk):
 *   Q  [Sq, d]   queries, pre-multiplied by scale = 1/sqrt(d)
 *   K  [Sk, d]   keys;  V [Sk, d] values;  M mask (additive, broadcast)
 *   S  = Q K^T + M                 [Sq, Sk]  scores
 *   L  = logsumexp_j S             [Sq, 1]   saved softmax statistic
 *   P  = exp(S - L)                [Sq, Sk]  softmax
 *   O  = P V                       [Sq, d]   output (saved)
 *   dO                             [Sq, d]   incoming gradient
 *
 * Backward, one slice at a time, on the transposed scores (see gradFunc for why):
 *   1. D  = rowsum(dO * O)                         [Sq, 1]  (once, for all rows)
 *   2. P^T = exp(K Q^T + M^T - L^T)                recomputed, [Sk, rows]
 *   3. dV = P^T dO                                 summed over row slices
 *   4. dP^T = V dO^T
 *   5. dS^T = P^T * (dP^T - D^T)                   softmax backward
 *   6. dK = dS^T Q (Q already scaled);  dQ = (K^T dS^T)^T * scale
 *
 * How the work is cut: on wasm one (batch*head) group at a time (tfjs-wasm sends only batch-1,
 * untransposed matmuls to XNNPACK; a batched one is a naive loop), elsewhere as many groups as fit
 * in `maxScoreElements`; then query rows, so that no slice holds more than `maxScoreElements`
 * scores. Every matmul is untransposed (wasm's transposeA/transposeB path is ~10x slower); the
 * transposes are explicit and only ever of [S, d]-sized tensors (and of a mask), never of scores.
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
    const { out, lse } = tf.tidy(() => {
      const qh = tf.mul(toHeads(qIn, sq), scale); // [BH, Sq, d], scaled
      const khT = toHeadsT(kIn); // [BH, d, Sk]
      const vh = toHeads(vIn, sk); // [BH, Sk, d]
      const outs: Tensor[] = [];
      const lses: Tensor[] = [];
      eachSlice(cut, qh, khT, vh, m3, (qs, kT, vs, ms) => {
        // 1. S = Q K^T + M;  L = logsumexp(S);  O = exp(S - max) V / sum(exp(S - max))
        const [o, l] = tf.tidy(() => {
          let s = tf.matMul(qs, kT); // [G, rows, Sk]
          if (ms) s = tf.add(s, ms);
          const mx = tf.max(s, -1, true); // [G, rows, 1]
          const e = tf.exp(tf.sub(s, mx)); // [G, rows, Sk]
          const sum = tf.sum(e, -1, true); // [G, rows, 1]
          return [tf.div(tf.matMul(e, vs), sum), tf.add(mx, tf.log(sum))]; // [G, rows, d], [G, rows, 1]
        });
        outs.push(o);
        lses.push(l);
      });
      return { out: fromHeads(joinSlices(outs, cut)), lse: joinSlices(lses, cut) }; // [B, Sq, inner], [BH, Sq, 1]
    });
    save([qIn, kIn, vIn, out, lse, ...(m3 ? [m3] : [])]);
    return {
      value: out,
      gradFunc: (dy: Tensor, saved: Tensor[]) => {
        const [qS, kS, vS, oS, lseS, mS] = saved;
        return tf.tidy(() => {
          // The backward pass works on transposed scores, S^T = K Q^T ([Sk, rows]): then a
          // scores-sized tensor is the left operand of four of its five matmuls (dV, dP^T, dK and
          // S^T itself), which is the fast case on wasm (the right operand is repacked per call).
          const qh = tf.mul(toHeads(qS, sq), scale); // [BH, Sq, d], scaled
          const qhT = swapLastTwo(qh); // [BH, d, Sq]
          const kh = toHeads(kS, sk); // [BH, Sk, d]
          const khT = toHeadsT(kS); // [BH, d, Sk]
          const vh = toHeads(vS, sk); // [BH, Sk, d]
          const dOh = toHeads(dy, sq); // [BH, Sq, d]
          const dOhT = swapLastTwo(dOh); // [BH, d, Sq]
          const deltaT = tf.sum(tf.mul(dOh, toHeads(oS, sq)), -1, true).reshape([bh, 1, sq]); // 1. D^T [BH, 1, Sq]
          const lseT = lseS.reshape([bh, 1, sq]); // L^T [BH, 1, Sq]
          const maskT = mS ? swapLastTwo(mS) : undefined; // [1|BH, Sk, 1|Sq]
          const dqTs: Tensor[] = []; // [G, d, rows] each
          const dks: Tensor[] = []; // [G, Sk, d] each
          const dvs: Tensor[] = [];
          eachGroup(cut, [qh, qhT, kh, khT, vh, dOh, dOhT, deltaT, lseT], maskT, ([qg, qTg, kg, kTg, vg, dOg, dOTg, DTg, LTg], mTg) => {
            let dK: Tensor | null = null;
            let dV: Tensor | null = null;
            // Query rows are columns of S^T: q and dO split along axis 1, their transposes and
            // the row statistics along axis 2.
            const byRows = (t: Tensor, axis: number) => (cut.rows.length === 1 ? [t] : tf.split(t, cut.rows, axis));
            const [qr, qTr, dOr, dOTr, DTr, LTr] = [byRows(qg, 1), byRows(qTg, 2), byRows(dOg, 1), byRows(dOTg, 2), byRows(DTg, 2), byRows(LTg, 2)];
            const mTr = mTg && mTg.shape[2] !== 1 ? byRows(mTg, 2) : null;
            cut.rows.forEach((_, j) => {
              const [dQTj, dKj, dVj] = tf.tidy(() => {
                let sT = tf.matMul(kg, qTr[j]); // 2. S^T = K Q^T [G, Sk, rows]
                if (mTg) sT = tf.add(sT, mTr ? mTr[j] : mTg);
                const pT = tf.exp(tf.sub(sT, LTr[j])); // P^T [G, Sk, rows]
                const dVj = tf.matMul(pT, dOr[j]); // 3. dV = P^T dO [G, Sk, d]
                const dPT = tf.matMul(vg, dOTr[j]); // 4. dP^T = V dO^T [G, Sk, rows]
                const dST = tf.mul(pT, tf.sub(dPT, DTr[j])); // 5. dS^T [G, Sk, rows]
                const dKj = tf.matMul(dST, qr[j]); // 6. dK = dS^T Q (Q scaled) [G, Sk, d]
                const dQTj = tf.matMul(kTg, dST); // 6. dQ^T / scale = K^T dS^T [G, d, rows]
                return [dQTj, dKj, dVj];
              });
              dqTs.push(dQTj);
              dK = accumulate(dK, dKj);
              dV = accumulate(dV, dVj);
            });
            dks.push(dK!);
            dvs.push(dV!);
          });
          // [BH, d, Sq] -> [B, heads, d, Sq] -> [B, Sq, heads, d] -> [B, Sq, inner], times scale
          const dqT = joinSlices(dqTs, cut, 2);
          const dq = tf.mul(dqT.reshape([b, heads, d, sq]).transpose([0, 3, 1, 2]).reshape([b, sq, inner]), scale);
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

/** Calls `fn` for every (group, rows) slice of the forward pass, in order: groups, then rows. */
function eachSlice(cut: Cut, qh: Tensor, khT: Tensor, vh: Tensor, mask: Tensor | undefined, fn: (q: Tensor, kT: Tensor, v: Tensor, m: Tensor | undefined) => void): void {
  eachGroup(cut, [qh, khT, vh], mask, ([qg, kTg, vg], mg) => {
    for (const [[qr], mr] of splitRows([qg], mg, cut.rows)) fn(qr, kTg, vg, mr);
  });
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

/** Row slices ([G, rows, ...] along axis 1) of `ts` and of the mask. */
function splitRows(ts: Tensor[], mask: Tensor | undefined, rows: number[]): Array<[Tensor[], Tensor | undefined]> {
  if (rows.length === 1) return [[ts, mask]];
  const parts = ts.map((t) => tf.split(t, rows, 1));
  const masks = mask && mask.shape[1] !== 1 ? tf.split(mask, rows, 1) : null;
  return rows.map((_, j) => [parts.map((p) => p[j]), masks ? masks[j] : mask]);
}

/** Slices produced group by group, rows within a group (along `rowAxis`), -> [BH, ...]. */
function joinSlices(pieces: Tensor[], cut: Cut, rowAxis = 1): Tensor {
  if (pieces.length === 1) return pieces[0];
  const perGroup = cut.rows.length;
  const groups: Tensor[] = [];
  for (let i = 0; i < pieces.length; i += perGroup) {
    const rows = pieces.slice(i, i + perGroup);
    groups.push(rows.length === 1 ? rows[0] : tf.concat(rows, rowAxis));
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

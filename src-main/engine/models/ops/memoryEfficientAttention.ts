/**
 * Memory-efficient multi-head attention for training: the same function as `attend`
 * (tfAttention.ts), softmax(Q K^T * scale + mask) V per head, with a backward pass that never holds
 * more than one slice of attention scores.
 *
 * References: Rabe & Staats, 2021, "Self-attention Does Not Need O(n^2) Memory" (xformers'
 * memory-efficient attention); Dao et al., 2022/2023, "FlashAttention" 1 and 2 (the backward pass
 * that recomputes the scores from Q, K and the rows' logsumexp).
 *
 * Plain TensorFlow.js keeps every scores and softmax tensor ([B*heads, Sq, Sk] each) on the tape
 * until the backward pass reaches it, so training memory grows with tokens^2. Here a
 * `tf.customGrad` node keeps only Q, K, V, the output O and one number per query row, the
 * logsumexp of its scores (L), and the backward pass recomputes each slice's scores.
 *
 * Symbols (per (batch*head) group; `rows` = a query chunk):
 *   Q  [Sq, d]   queries, pre-multiplied by scale = 1/sqrt(d)
 *   K  [Sk, d]   keys;  V [Sk, d] values;  M mask (additive, broadcast)
 *   S  = Q K^T + M                 [rows, Sk]  scores
 *   P  = softmax(S)                [rows, Sk]
 *   L  = logsumexp(S) = max(S) - log(max(P))   [rows, 1]  (saved)
 *   O  = P V                       [Sq, d]     output (saved)
 *   dO                             [Sq, d]     incoming gradient
 *
 * Backward, one slice at a time, in two passes over the slice's scores:
 *   1. D  = rowsum(dO * O)                         [Sq, 1]  (once, for all rows)
 *   pass 1, scores as they are:
 *   2. P  = softmax(Q K^T + M)
 *   4. dP = dO V^T;  5. dS = P * (dP - D);  6. dQ = dS K * scale
 *   pass 2, transposed scores (S^T = K Q^T, [Sk, rows]):
 *   2. P^T = exp(S^T - L^T)
 *   3. dV = P^T dO;  4. dP^T = V dO^T;  5. dS^T = P^T * (dP^T - D^T);  6. dK = dS^T Q (Q scaled)
 *   dV and dK are summed over the row slices.
 * Why two passes: on wasm a matmul is fast when the scores-sized tensor is its left operand and
 * very slow when it is the right one (XNNPACK repacks the right operand on every call: 4-25 ms
 * for a 1024 x 1024 one, against 1.5 ms) or when a transpose flag is set. dQ needs dS on the
 * left, dK and dV need dS^T and P^T on the left, and a scores-sized transpose costs 10 ms; so
 * each pass computes the layout it needs. The second pass needs L, because its softmax runs
 * down the columns.
 *
 * How the work is cut: on wasm one (batch*head) group at a time (tfjs-wasm sends only batch-1,
 * untransposed matmuls to XNNPACK; a batched one is a naive loop), elsewhere as many groups as fit
 * in `maxScoreElements`; then query rows, so that no slice holds more than `maxScoreElements`
 * scores. Every matmul is untransposed and the transposes are explicit and only ever of
 * [S, d]-sized tensors (and of a mask), never of scores.
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
export function memoryEfficientAttend(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  heads: number,
  mask?: Tensor,
  maxScoreElements = DEFAULT_MAX_SCORE_ELEMENTS,
): Tensor {
  const g = geometry(q, k, v, heads, maxScoreElements);
  if (mask) checkMask(mask, g.bh, g.sq, g.sk);
  // customGrad's typing wants a fixed arity; the engine passes (q, k, v[, mask], save). The mask
  // is an input so that the tape keeps it alive until the backward pass.
  const customGrad = tf.customGrad as unknown as (f: (...args: unknown[]) => unknown) => (...args: Tensor[]) => Tensor;
  const run = customGrad((...args: unknown[]) => {
    const save = args.pop() as (ts: Tensor[]) => void;
    const [qIn, kIn, vIn, m3] = args as [Tensor, Tensor, Tensor, Tensor | undefined];
    const { out, lse } = tf.tidy(() => attendForward(g, qIn, kIn, vIn, m3));
    save([qIn, kIn, vIn, out, lse, ...(m3 ? [m3] : [])]);
    return { value: out, gradFunc: (dy: Tensor, saved: Tensor[]) => tf.tidy(() => attendBackward(g, dy, saved)) };
  });
  return mask ? run(q, k, v, mask) : run(q, k, v);
}

/** The sizes of one call, checked, and how its work is cut. */
interface Geometry {
  b: number;
  sq: number;
  sk: number;
  inner: number;
  heads: number;
  d: number;
  bh: number;
  scale: number;
  cut: Cut;
}

function geometry(q: Tensor, k: Tensor, v: Tensor, heads: number, maxScoreElements: number): Geometry {
  const [b, sq, inner] = q.shape as number[];
  const sk = k.shape[1] as number;
  if (q.rank !== 3 || k.rank !== 3 || v.rank !== 3)
    throw new Error(
      `memoryEfficientAttend: q, k, v must be [B, S, channels]; got q [${q.shape}], k [${k.shape}], v [${v.shape}]`,
    );
  if (inner % heads !== 0) throw new Error(`memoryEfficientAttend: ${inner} channels do not split into ${heads} heads`);
  if (k.shape[0] !== b || v.shape[0] !== b || k.shape[2] !== inner || v.shape[2] !== inner || v.shape[1] !== sk) {
    throw new Error(`memoryEfficientAttend: q [${q.shape}], k [${k.shape}], v [${v.shape}] do not agree`);
  }
  const d = inner / heads;
  const bh = b * heads;
  const cut = cutWork(bh, sq, sk, maxScoreElements, tf.getBackend() === 'wasm');
  return { b, sq, sk, inner, heads, d, bh, scale: 1 / Math.sqrt(d), cut };
}

/** [B, S, heads*d] -> [B*heads, S, d]. */
function toHeads(g: Geometry, t: Tensor, s: number): Tensor {
  return t.reshape([g.b, s, g.heads, g.d]).transpose([0, 2, 1, 3]).reshape([g.bh, s, g.d]);
}

/** [B*heads, S, d] -> [B, S, heads*d]. */
function fromHeads(g: Geometry, t: Tensor, s: number): Tensor {
  return t.reshape([g.b, g.heads, s, g.d]).transpose([0, 2, 1, 3]).reshape([g.b, s, g.inner]);
}

/** [B, Sk, heads*d] -> [B*heads, d, Sk]: keys (and, in the backward pass, values) transposed once. */
function toHeadsT(g: Geometry, t: Tensor): Tensor {
  return t.reshape([g.b, g.sk, g.heads, g.d]).transpose([0, 2, 3, 1]).reshape([g.bh, g.d, g.sk]);
}

/** The forward pass: O [B, Sq, inner] and L^T [BH, 1, Sq], one slice of scores at a time. */
function attendForward(g: Geometry, qIn: Tensor, kIn: Tensor, vIn: Tensor, m3: Tensor | undefined) {
  const { cut } = g;
  const qh = tf.mul(toHeads(g, qIn, g.sq), g.scale); // [BH, Sq, d], scaled
  const khT = toHeadsT(g, kIn); // [BH, d, Sk]
  const vh = toHeads(g, vIn, g.sk); // [BH, Sk, d]
  const outs: Tensor[] = [];
  const lses: Tensor[] = [];
  eachGroup(cut, [qh, khT, vh], [m3], ([qg, kTg, vg], [mg]) => {
    for (const [[qr], mr] of byRows(cut, [[qg, 1]], mg, 1)) {
      const [o, l] = tf.tidy(() => {
        const s = scores(qr, kTg, mr); // S [G, rows, Sk]
        const p = tf.softmax(s); // P
        // L = logsumexp(S) = max(S) - log(max(P)); max(P) >= 1/Sk, so the log is exact enough.
        return [tf.matMul(p, vg), tf.sub(tf.max(s, -1, true), tf.log(tf.max(p, -1, true)))]; // O [G, rows, d], L [G, rows, 1]
      });
      outs.push(o);
      lses.push(l);
    }
  });
  // [B, Sq, inner], L^T [BH, 1, Sq]
  return { out: fromHeads(g, joinSlices(outs, cut), g.sq), lse: joinSlices(lses, cut).reshape([g.bh, 1, g.sq]) };
}

/** The backward pass: [dq, dk, dv] (and a zero gradient for the mask, a constant). */
function attendBackward(g: Geometry, dy: Tensor, saved: Tensor[]): Tensor[] {
  const [qS, kS, vS, oS, lseT, mS] = saved;
  const { cut, sq } = g;
  const qh = tf.mul(toHeads(g, qS, sq), g.scale); // [BH, Sq, d], scaled
  const dOh = toHeads(g, dy, sq); // [BH, Sq, d]
  const delta = tf.sum(tf.mul(dOh, toHeads(g, oS, sq)), -1, true); // 1. D [BH, Sq, 1]
  const maskT = mS ? swapLastTwo(mS) : undefined; // [1|BH, Sk, 1|Sq]
  const dqs: Tensor[] = []; // [G, rows, d] each
  const dks: Tensor[] = []; // [G, Sk, d] each
  const dvs: Tensor[] = [];
  const ts = [
    qh,
    swapLastTwo(qh), // Q^T [BH, d, Sq]
    toHeadsT(g, kS), // K^T [BH, d, Sk]
    toHeads(g, kS, g.sk), // K [BH, Sk, d]
    toHeadsT(g, vS), // V^T [BH, d, Sk]
    toHeads(g, vS, g.sk), // V [BH, Sk, d]
    dOh,
    swapLastTwo(dOh), // dO^T [BH, d, Sq]
    delta,
    delta.reshape([g.bh, 1, sq]), // D^T [BH, 1, Sq]
    lseT,
  ];
  eachGroup(cut, ts, [mS, maskT], (group, masks) => {
    const { dQ, dK, dV } = backwardGroup(cut, group, masks);
    dqs.push(...dQ);
    dks.push(dK);
    dvs.push(dV);
  });
  const dq = tf.mul(fromHeads(g, joinSlices(dqs, cut), sq), g.scale); // [B, Sq, inner]
  const dk = fromHeads(g, dks.length === 1 ? dks[0] : tf.concat(dks, 0), g.sk); // [B, Sk, inner]
  const dv = fromHeads(g, dvs.length === 1 ? dvs[0] : tf.concat(dvs, 0), g.sk);
  // The mask is a constant (attention masks are): its gradient is reported as zero.
  return mS ? [dq, dk, dv, tf.zerosLike(mS)] : [dq, dk, dv];
}

/**
 * One group slice of the backward pass, over its query-row slices: dQ per row slice, and dK and
 * dV summed over them.
 */
function backwardGroup(
  cut: Cut,
  [qg, qTg, kTg, kg, vTg, vg, dOg, dOTg, Dg, DTg, LTg]: Tensor[],
  [mg, mTg]: (Tensor | undefined)[],
): { dQ: Tensor[]; dK: Tensor; dV: Tensor } {
  let dK: Tensor | null = null;
  let dV: Tensor | null = null;
  const dQ: Tensor[] = [];
  // Query rows: [G, Sq, .] tensors split along axis 1, [G, ., Sq] ones along axis 2.
  const rowSlices: [Tensor, number][] = [
    [qg, 1],
    [dOg, 1],
    [Dg, 1],
  ];
  const colSlices: [Tensor, number][] = [
    [qTg, 2],
    [dOTg, 2],
    [DTg, 2],
    [LTg, 2],
  ];
  const rows = byRows(cut, rowSlices, mg, 1);
  const cols = byRows(cut, colSlices, mTg, 2);
  rows.forEach(([[qr, dOr, Dr], mr], j) => {
    const [[qTr, dOTr, DTr, LTr], mTr] = cols[j];
    // Pass 1, scores as they are: dQ.
    dQ.push(
      tf.tidy(() => {
        const p = tf.softmax(scores(qr, kTg, mr)); // 2. P [G, rows, Sk]
        const dP = tf.matMul(dOr, vTg); // 4. dP = dO V^T [G, rows, Sk]
        const dS = tf.mul(p, tf.sub(dP, Dr)); // 5. dS [G, rows, Sk]
        return tf.matMul(dS, kg); // 6. dQ / scale = dS K [G, rows, d]
      }),
    );
    // Pass 2, transposed scores: dK and dV.
    const [dKj, dVj] = tf.tidy(() => {
      const pT = expOfNonPositive(tf.sub(scoresT(kg, qTr, mTr), LTr)); // 2. P^T = exp(S^T - L^T) [G, Sk, rows]
      const dVj = tf.matMul(pT, dOr); // 3. dV = P^T dO [G, Sk, d]
      const dPT = tf.matMul(vg, dOTr); // 4. dP^T = V dO^T [G, Sk, rows]
      const dST = tf.mul(pT, tf.sub(dPT, DTr)); // 5. dS^T [G, Sk, rows]
      return [tf.matMul(dST, qr), dVj]; // 6. dK = dS^T Q (Q scaled) [G, Sk, d]
    });
    dK = accumulate(dK, dKj);
    dV = accumulate(dV, dVj);
  });
  return { dQ, dK: dK!, dV: dV! };
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
    throw new Error(
      `memoryEfficientAttend: mask [${mask.shape}] does not broadcast to the scores [${bh}, ${sq}, ${sk}]; give it as [1 or ${bh}, 1 or ${sq}, ${sk}]`,
    );
  }
}

/** S = Q K^T (+ M) for one slice: [G, rows, Sk]. */
function scores(q: Tensor, kT: Tensor, mask: Tensor | undefined): Tensor {
  const s = tf.matMul(q, kT);
  return mask ? tf.add(s, mask) : s;
}

/** S^T = K Q^T (+ M^T) for one slice: [G, Sk, rows]. */
function scoresT(k: Tensor, qT: Tensor, maskT: Tensor | undefined): Tensor {
  const s = tf.matMul(k, qT);
  return maskT ? tf.add(s, maskT) : s;
}

/**
 * exp(x) for x <= 0, as sigmoid(x) / (1 - sigmoid(x)). On wasm, `exp` is a scalar loop (8 ms per
 * million elements here) and `sigmoid` XNNPACK's vectorised one (1 ms); for x <= 0, sigmoid(x) is
 * in (0, 1/2], so 1 - sigmoid(x) loses nothing to cancellation. Elsewhere, plain exp.
 */
function expOfNonPositive(x: Tensor): Tensor {
  if (tf.getBackend() !== 'wasm') return tf.exp(x);
  const g = tf.sigmoid(x);
  return tf.div(g, tf.sub(1, g));
}

/** Calls `fn` with each group slice of `ts` (all [BH, ...]) and of the masks ([1 or BH, ...]). */
function eachGroup(
  cut: Cut,
  ts: Tensor[],
  masks: Array<Tensor | undefined>,
  fn: (ts: Tensor[], masks: Array<Tensor | undefined>) => void,
): void {
  const split = (t: Tensor) => (cut.groups.length === 1 ? [t] : tf.split(t, cut.groups, 0));
  const parts = ts.map(split);
  const maskParts = masks.map((m) => (m && m.shape[0] !== 1 ? split(m) : null));
  cut.groups.forEach((_, g) => {
    fn(
      parts.map((p) => p[g]),
      masks.map((m, i) => (maskParts[i] ? maskParts[i]![g] : m)),
    );
  });
  if (cut.groups.length > 1) tf.dispose([...parts.flat(), ...maskParts.flatMap((p) => p ?? [])]);
}

/** The query-row slices of `ts` (each cut along its own axis) and of the mask (along `maskAxis`). */
function byRows(
  cut: Cut,
  ts: Array<[Tensor, number]>,
  mask: Tensor | undefined,
  maskAxis: number,
): Array<[Tensor[], Tensor | undefined]> {
  if (cut.rows.length === 1) return [[ts.map(([t]) => t), mask]];
  const parts = ts.map(([t, axis]) => tf.split(t, cut.rows, axis));
  const masks = mask && mask.shape[maskAxis] !== 1 ? tf.split(mask, cut.rows, maskAxis) : null;
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

/**
 * Multi-head scaled dot-product attention on TensorFlow.js: the tfjs executor's `attention` op
 * (tfOps.ts), used by the UNet, the VAE and the CLIP text encoder when they run there.
 *
 *   softmax(Q K^T * scale + mask) V,  per head; scale = 1/sqrt(headDim)
 *
 * Memory-bounded path ("attention slicing" in diffusers): the scores tensor is
 * [batch*heads, Sq, Sk]; for a 64x64 latent's self-attention with CFG that is 2*8*4096*4096
 * floats (1 GiB). `attend` processes (batch*head) groups and query chunks so that no slice holds
 * more than `attentionOptions.maxScoreElements` scores. Slicing only changes how the work is cut,
 * not the sums, so results match the unsliced path to float noise. Training's memory-efficient
 * backward pass is memoryEfficientAttention.ts.
 */
import { tf, type Tensor } from '../../backend/tf.ts';
import type { AttentionMode } from '../../../api/schemas.ts';

export const attentionOptions = {
  /** Largest scores slice (elements); 2^24 floats = 64 MiB. `Infinity` disables slicing. */
  maxScoreElements: 2 ** 24,
  /**
   * 'plain': `attend`, whose backward pass (TensorFlow.js's tape) keeps every scores slice.
   * 'memory-efficient': `memoryEfficientAttend` (memoryEfficientAttention.ts), same values, whose
   * backward pass recomputes one scores slice at a time. Training switches to it (see
   * `withAttentionMode`); inference keeps 'plain'.
   */
  mode: 'plain' as AttentionMode,
  /**
   * In 'memory-efficient' mode, attentions with fewer scores than this (B*heads*Sq*Sk) take the
   * plain path. 0 (the default): all of them. Measured on tiny-b, wasm: with 2^20 the 256 px
   * step's wasm heap was 613 MiB instead of 358 and the 128 px step 248 MiB instead of 100, for
   * no speed difference that stood out of this shared machine's noise.
   */
  memoryEfficientMinScores: 0,
};

export type { AttentionMode };

/**
 * Runs `fn` with `attentionOptions.mode` set to `mode`, and puts the previous mode back when it
 * returns (or, for a promise, when it settles). Set it around the whole gradient computation:
 * gradient checkpointing re-runs the forward pass inside the backward pass.
 */
export function withAttentionMode<T>(mode: AttentionMode, fn: () => T): T {
  const previous = attentionOptions.mode;
  attentionOptions.mode = mode;
  let result: T;
  try {
    result = fn();
  } catch (err) {
    attentionOptions.mode = previous;
    throw err;
  }
  if (result instanceof Promise) {
    return result.finally(() => {
      attentionOptions.mode = previous;
    }) as T;
  }
  attentionOptions.mode = previous;
  return result;
}

/**
 * q [B, Sq, heads*d], k and v [B, Sk, heads*d] -> [B, Sq, heads*d].
 * `mask`, if given, is added to the scores and broadcasts to [B*heads, Sq, Sk] (e.g. [1, Sq, Sk]
 * for CLIP's causal mask).
 */
export function attend(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  heads: number,
  mask?: Tensor,
  maxScoreElements = attentionOptions.maxScoreElements,
): Tensor {
  return tf.tidy(() => {
    const [b, sq, inner] = q.shape as number[];
    const sk = k.shape[1] as number;
    if (inner % heads !== 0) throw new Error(`attend: ${inner} channels do not split into ${heads} heads`);
    if (k.shape[2] !== inner || v.shape[2] !== inner || v.shape[1] !== sk) {
      throw new Error(`attend: q [${q.shape}], k [${k.shape}], v [${v.shape}] do not agree`);
    }
    const d = inner / heads;
    const scale = 1 / Math.sqrt(d);
    const bh = b * heads;
    // [B, S, heads, d] -> [B, heads, S, d] -> [B*heads, S, d]
    const qh = q.reshape([b, sq, heads, d]).transpose([0, 2, 1, 3]).reshape([bh, sq, d]);
    // Keys go straight to [B*heads, d, Sk]: an explicit transpose (wasm's transposeB is slow).
    const khT = k.reshape([b, sk, heads, d]).transpose([0, 2, 3, 1]).reshape([bh, d, sk]);
    const vh = v.reshape([b, sk, heads, d]).transpose([0, 2, 1, 3]).reshape([bh, sk, d]);

    const scoresPerRow = sk;
    const total = bh * sq * scoresPerRow;
    let out: Tensor; // [B*heads, Sq, d]
    if (total <= maxScoreElements) {
      out = attendBlock(qh, khT, vh, scale, mask);
    } else {
      // Cut (batch*head) groups first, then query rows, keeping each piece under the budget.
      // tf.split, not slice: the gradient of a split is a concat, while each slice's gradient
      // would be padded back to the full size.
      const groupsPerSlice = Math.max(1, Math.min(bh, Math.floor(maxScoreElements / (sq * scoresPerRow))));
      const rowsPerSlice = groupsPerSlice > 1 ? sq : Math.max(1, Math.floor(maxScoreElements / scoresPerRow));
      const groupSizes = chunks(bh, groupsPerSlice);
      const rowSizes = chunks(sq, rowsPerSlice);
      const qg = tf.split(qh, groupSizes, 0);
      const kg = tf.split(khT, groupSizes, 0);
      const vg = tf.split(vh, groupSizes, 0);
      const mg = mask && mask.shape[0] !== 1 ? tf.split(mask, groupSizes, 0) : null;
      const pieces = qg.map((qs, i) => {
        const qRows = rowSizes.length > 1 ? tf.split(qs, rowSizes, 1) : [qs];
        const m = mg ? mg[i] : mask;
        const mRows = m && m.shape[1] !== 1 && rowSizes.length > 1 ? tf.split(m, rowSizes, 1) : null;
        const rows = qRows.map((qr, j) => tf.tidy(() => attendBlock(qr, kg[i], vg[i], scale, mRows ? mRows[j] : m)));
        return rows.length === 1 ? rows[0] : tf.concat(rows, 1);
      });
      out = pieces.length === 1 ? pieces[0] : tf.concat(pieces, 0);
    }
    // [B*heads, Sq, d] -> [B, heads, Sq, d] -> [B, Sq, heads, d] -> [B, Sq, inner]
    return out.reshape([b, heads, sq, d]).transpose([0, 2, 1, 3]).reshape([b, sq, inner]);
  });
}

function attendBlock(q: Tensor, kT: Tensor, v: Tensor, scale: number, mask?: Tensor): Tensor {
  const groups = q.shape[0] as number;
  if (groups > 1 && tf.getBackend() === 'wasm') {
    // tfjs-wasm sends only batch-1, untransposed matmuls to XNNPACK; a batched one runs a naive
    // loop (~4x slower for attention). So on wasm each (batch*head) group is attended on its own,
    // which also keeps only one group's scores alive at a time. Same sums, same results.
    const qs = tf.split(q, groups, 0); // G x [1, Sq, d]; split's gradient is a concat (a slice's would pad)
    const ks = tf.split(kT, groups, 0);
    const vs = tf.split(v, groups, 0);
    const ms = mask && mask.shape[0] !== 1 ? tf.split(mask, groups, 0) : null;
    const outs = qs.map((qg, g) => tf.tidy(() => attendBlock(qg, ks[g], vs[g], scale, ms ? ms[g] : mask)));
    return tf.concat(outs, 0); // [G, Sq, d]
  }
  let scores = tf.mul(tf.matMul(q, kT), scale); // [G, Sq, Sk]
  if (mask) scores = tf.add(scores, mask);
  return tf.matMul(tf.softmax(scores), v); // [G, Sq, d]
}

/** Sizes that cut n into pieces of at most `size`. */
function chunks(n: number, size: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i += size) out.push(Math.min(size, n - i));
  return out;
}

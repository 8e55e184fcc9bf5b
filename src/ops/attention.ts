/**
 * Scaled-dot-product attention: the one home of the formula in sdlab,
 *     Attention(Q, K, V) = softmax(Q Kᵀ / √d + mask) V        (d: channels per head)
 * for each of `heads` heads, in the [B, L, heads·d] layout that the projections produce. Every
 * model's attention calls it: the UNet's self- and cross-attention, the VAE's mid-block, the CLIP
 * text encoder (with its causal mask), through nn's Attention module or directly.
 *
 * Two ways to compute the same thing:
 *   - the tfjs composition (any backend; the reference): split heads, Q Kᵀ, softmax, · V. When
 *     the score matrix [B, heads, Lq, Lk] would hold more than `maxScoreElements` numbers (a
 *     64×64 latent has Lq = Lk = 4096: 2·8·4096² = 268 M scores, 1 GiB), it runs in chunks of
 *     query rows: same result, bounded memory.
 *   - one fused kernel (ATTENTION in kernel_names.ts) where the backend has it and no mask is
 *     given: sdlab's native backend walks the keys in tiles with an online softmax, so the
 *     scores never leave the cache (native/src/attention.cc). Its gradient (below) is the
 *     composition's, recomputing the probabilities.
 */
import * as tf from '@tensorflow/tfjs';
import { ATTENTION, type AttentionAttrs } from './kernel_names.ts';
import { useKernel } from './fused.ts';
import { bindingElements } from '../util/device_limits.ts';

/** Score matrices larger than this many elements are computed in query-row chunks (composition only). */
export const attentionSettings = { maxScoreElements: 1 << 26 };

export interface SdpaOptions {
  /** Multiplies q·k (default 1/sqrt(head dim)). */
  scale?: number;
  /** Additive mask broadcastable to [B, heads, Lq, Lk]; given as [Lq, Lk], [B, Lq, Lk] or 4-D. */
  mask?: tf.Tensor;
  /** Overrides attentionSettings.maxScoreElements for this call. */
  maxScoreElements?: number;
}

/**
 * softmax(Q Kᵀ / √D + mask) V for each of `heads` heads:
 * q [B, Lq, heads·D], k [B, Lk, heads·D], v [B, Lk, heads·Dv] → [B, Lq, heads·Dv].
 * (q is scaled before the product, so opts.scale replaces 1/√D.)
 */
export function scaledDotProductAttention(
  q: tf.Tensor3D,
  k: tf.Tensor3D,
  v: tf.Tensor3D,
  heads: number,
  opts: SdpaOptions = {},
): tf.Tensor3D {
  const scale = opts.scale ?? 1 / Math.sqrt(q.shape[2] / heads);
  if (!opts.mask && useKernel(ATTENTION, q, k, v)) {
    const attrs: AttentionAttrs = { heads, scale };
    return tf.engine().runKernel(ATTENTION, { q, k, v }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor3D;
  }
  return tf.tidy(() => {
    const [b, lq, qDim] = q.shape;
    const lk = k.shape[1];
    const d = qDim / heads;
    const qh = splitHeads(tf.mul(q, scale) as tf.Tensor3D, heads);
    const kh = splitHeads(k, heads);
    const vh = splitHeads(v, heads);
    let mask = opts.mask;
    // [Lq, Lk] → [1, 1, Lq, Lk]; [B, Lq, Lk] → [B, 1, Lq, Lk] (shared by all heads).
    if (mask && mask.rank === 2) mask = tf.reshape(mask, [1, 1, ...mask.shape]);
    if (mask && mask.rank === 3) mask = tf.expandDims(mask, 1);

    const attend = (qc: tf.Tensor4D, maskc?: tf.Tensor): tf.Tensor4D => tf.matMul(probabilities(qc, kh, maskc), vh); // [B, H, rows, Dv]

    // (and never more than one binding holds: util/device_limits.ts)
    const limit = Math.min(opts.maxScoreElements ?? attentionSettings.maxScoreElements, bindingElements());
    const rowsPerChunk = Math.max(1, Math.floor(limit / (b * heads * lk)));
    let out: tf.Tensor4D;
    if (rowsPerChunk >= lq) {
      out = attend(qh, mask);
    } else {
      const parts: tf.Tensor4D[] = [];
      for (let start = 0; start < lq; start += rowsPerChunk) {
        const n = Math.min(rowsPerChunk, lq - start);
        parts.push(
          tf.tidy(() => {
            const qc = tf.slice(qh, [0, 0, start, 0], [b, heads, n, d]);
            let mc = mask;
            if (mask && mask.shape[2] !== 1) mc = tf.slice(mask, [0, 0, start, 0], [-1, -1, n, -1]);
            return attend(qc, mc);
          }),
        );
      }
      out = tf.concat(parts, 2);
    }
    return mergeHeads(out);
  });
}

/** P = softmax(Qs Kᵀ + mask) per head, [B, H, rows, Lk], from the scaled queries Qs [B, H, rows, D] and K [B, H, Lk, D]. */
function probabilities(qs: tf.Tensor4D, kh: tf.Tensor4D, mask?: tf.Tensor): tf.Tensor4D {
  const scores = tf.matMul(qs, kh, false, true);
  return tf.softmax(mask ? tf.add(scores, mask) : scores) as tf.Tensor4D;
}

/** [B, L, heads·D] → [B, heads, L, D]. */
function splitHeads(t: tf.Tensor3D, heads: number): tf.Tensor4D {
  const [b, len, c] = t.shape;
  return tf.transpose(tf.reshape(t, [b, len, heads, c / heads]), [0, 2, 1, 3]);
}

/** [B, heads, L, D] → [B, L, heads·D]. */
function mergeHeads(t: tf.Tensor4D): tf.Tensor3D {
  const [b, heads, len, d] = t.shape;
  return tf.reshape(tf.transpose(t, [0, 2, 1, 3]), [b, len, heads * d]);
}

// The fused kernel's gradient, from the saved inputs (the probabilities are recomputed as the
// composition computes them, as FlashAttention's backward does): with Qs = scale·Q,
// P = softmax(Qs Kᵀ), O = P V,
//   dV = Pᵀ dO,   dP = dO Vᵀ,   dS = P ⊙ (dP − rowsum(dP ⊙ P)),   dQ = scale·dS K,   dK = dSᵀ Qs.
tf.registerGradient({
  kernelName: ATTENTION,
  inputsToSave: ['q', 'k', 'v'],
  gradFunc: (dy, saved, attrs) => {
    const [q, k, v] = saved as tf.Tensor3D[];
    const { heads, scale } = attrs as unknown as AttentionAttrs;
    // All three now, in one tidy (tfjs runs each returned closure in its own).
    const [dq, dk, dv] = tf.tidy(() => {
      const qs = splitHeads(tf.mul(q, scale) as tf.Tensor3D, heads), kh = splitHeads(k, heads), vh = splitHeads(v, heads);
      const dO = splitHeads(dy as tf.Tensor3D, heads);
      const p = probabilities(qs, kh);
      const dP = tf.matMul(dO, vh, false, true);
      const dS = tf.mul(p, tf.sub(dP, tf.sum(tf.mul(dP, p), -1, true)));
      return [
        mergeHeads(tf.mul(tf.matMul(dS, kh), scale) as tf.Tensor4D),
        mergeHeads(tf.matMul(dS, qs, true)),
        mergeHeads(tf.matMul(p, dO, true)),
      ];
    });
    return { q: () => dq, k: () => dk, v: () => dv };
  },
});

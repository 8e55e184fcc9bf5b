/**
 * Exercise attention (notebook 4, the UNet): write scaled-dot-product attention, the way the
 * image attends to the text (cross-attention).
 *
 * Each query (an image token: one position of the latent) scores every key (a text token) by a
 * dot product, turns the scores into weights that sum to 1 over the keys, and takes that mix of
 * the values:
 *
 *   Attention(q, k, v) = softmax(q · kᵀ / √d) · v
 *
 * - q [B, Lq, d]   (image tokens),  k [B, Lk, d],  v [B, Lk, dv]   (text tokens)  →  [B, Lq, dv]
 * - d = q.shape[2]: q·k sums d products, so its spread grows like √d; dividing by √d keeps the
 *   softmax from becoming one-hot.
 * - tf.matMul(a, b, false, true) multiplies by bᵀ; tf.softmax works on the last axis.
 *
 * Check it: npx sdlab check-exercise attention notebooks/exercises/attention.ts
 */
import * as tf from '@tensorflow/tfjs';

export function attention(q: tf.Tensor3D, k: tf.Tensor3D, v: tf.Tensor3D): tf.Tensor3D {
  // TODO: scores [B, Lq, Lk], softmax over the keys, then mix v.
  throw new Error('TODO: implement attention (softmax(q·kᵀ/√d)·v)');
}

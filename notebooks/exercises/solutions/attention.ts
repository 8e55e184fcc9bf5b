/** Reference solution of the attention exercise (notebook 4). Check: npx sdlab check-exercise attention notebooks/exercises/solutions/attention.ts */
import * as tf from '@tensorflow/tfjs';

/** softmax(q·kᵀ/√d)·v: every query (image token) takes a weighted mix of the values (text tokens). */
export function attention(q: tf.Tensor3D, k: tf.Tensor3D, v: tf.Tensor3D): tf.Tensor3D {
  return tf.tidy(() => {
    const d = q.shape[2];
    const scores = tf.div(tf.matMul(q, k, false, true), Math.sqrt(d)); // [B, Lq, Lk]
    const weights = tf.softmax(scores); // over the last axis: each query's weights over the keys sum to 1
    return tf.matMul(weights, v); // [B, Lq, dv]
  });
}

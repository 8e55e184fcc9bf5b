/** Reference solution of the add_noise exercise (notebook 1). Check: npx sdlab check-exercise add_noise notebooks/exercises/solutions/add_noise.ts */
import * as tf from '@tensorflow/tfjs';

/** x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, with ᾱ_t = alphasCumprod[t[b]] for batch item b. */
export function addNoise(x0: tf.Tensor, noise: tf.Tensor, alphasCumprod: ArrayLike<number>, t: number[]): tf.Tensor {
  return tf.tidy(() => {
    const perItem = [t.length, ...Array(x0.rank - 1).fill(1)]; // [B, 1, 1, 1]: one ᾱ scales one whole item
    const alphaBar = tf.tensor(t.map((ti) => alphasCumprod[ti]), perItem);
    return tf.add(tf.mul(tf.sqrt(alphaBar), x0), tf.mul(tf.sqrt(tf.sub(1, alphaBar)), noise));
  });
}

/** Reference solution of the guidance exercise (notebook 5). Check: npx sdlab check-exercise guidance notebooks/exercises/solutions/guidance.ts */
import * as tf from '@tensorflow/tfjs';

/** Classifier-free guidance: start from the unconditional prediction, move g times toward the conditional one. */
export function classifierFreeGuidance(uncond: tf.Tensor, cond: tf.Tensor, g: number): tf.Tensor {
  return tf.tidy(() => tf.add(uncond, tf.mul(g, tf.sub(cond, uncond))));
}

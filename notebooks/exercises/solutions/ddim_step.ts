/** Reference solution of the ddim_step exercise (notebook 5). Check: npx sdlab check-exercise ddim_step notebooks/exercises/solutions/ddim_step.ts */
import * as tf from '@tensorflow/tfjs';

/** One deterministic DDIM step (η = 0) from x_t to x_prev, given the predicted noise ε. */
export function ddimStep(noisePred: tf.Tensor, sample: tf.Tensor, alphaProdT: number, alphaProdTPrev: number): tf.Tensor {
  return tf.tidy(() => {
    // The clean sample the prediction implies: undo x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε.
    const x0 = tf.div(tf.sub(sample, tf.mul(Math.sqrt(1 - alphaProdT), noisePred)), Math.sqrt(alphaProdT));
    // Re-noise it to the previous timestep with the same ε.
    return tf.add(tf.mul(Math.sqrt(alphaProdTPrev), x0), tf.mul(Math.sqrt(1 - alphaProdTPrev), noisePred));
  });
}

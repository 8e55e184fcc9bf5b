/** Reference solution of the training_loss exercise (notebook 4). Check: npx sdlab check-exercise training_loss notebooks/exercises/solutions/training_loss.ts */
import * as tf from '@tensorflow/tfjs';
import { addNoise } from './add_noise.ts';

/** One training step's loss: noise x0 to x_t, ask the model for the noise, mean squared error to ε. */
export function noisePredictionLoss(
  predict: (xt: tf.Tensor, t: number[]) => tf.Tensor,
  x0: tf.Tensor,
  noise: tf.Tensor,
  alphasCumprod: ArrayLike<number>,
  t: number[],
): tf.Scalar {
  return tf.tidy(() => {
    const xt = addNoise(x0, noise, alphasCumprod, t);
    return tf.mean(tf.square(tf.sub(predict(xt, t), noise))) as tf.Scalar;
  });
}

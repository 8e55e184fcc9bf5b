/**
 * Exercise training_loss (notebook 4, one training step by hand): write the loss a diffusion
 * model is trained on.
 *
 * One step: take clean images x0, fresh noise ε and a random timestep t per image, jump to the
 * noisy x_t with the forward process (your addNoise from the add_noise exercise does it:
 * `import { addNoise } from './add_noise.ts'`),
 *
 *   x_t  = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε
 *
 * ask the model which noise it sees, and score it by the mean squared error to the real noise:
 *
 *   loss = mean( (predict(x_t, t) − ε)² )          over every value of the batch
 *
 * - predict(xt, t): the model (a UNet in the notebook, a toy in the grader); t is passed as given.
 * - alphasCumprod, t: as in add_noise (ᾱ_t = alphasCumprod[t[b]] for batch item b).
 *
 * Check it: npx sdlab check-exercise training_loss notebooks/exercises/training_loss.ts
 */
import * as tf from '@tensorflow/tfjs';

export function noisePredictionLoss(
  predict: (xt: tf.Tensor, t: number[]) => tf.Tensor,
  x0: tf.Tensor,
  noise: tf.Tensor,
  alphasCumprod: ArrayLike<number>,
  t: number[],
): tf.Scalar {
  // TODO: x_t from the forward process, the model's prediction, the mean squared error to the noise.
  throw new Error('TODO: implement noisePredictionLoss (mean((predict(x_t, t) − ε)²))');
}

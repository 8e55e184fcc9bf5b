/**
 * Exercise guidance (notebook 5, sampling): write classifier-free guidance.
 *
 * At every step the UNet predicts the noise twice: without the prompt (ε_uncond, an empty
 * caption) and with it (ε_cond). Their difference points toward "more like the prompt";
 * guidance starts at the unconditional prediction and goes g times that difference:
 *
 *   ε̂ = ε_uncond + g · (ε_cond − ε_uncond)
 *
 * g = 0 is the unconditional model, g = 1 the conditional one, g > 1 (SD: 7.5, the digits: ~2)
 * exaggerates the prompt.
 *
 * Check it: npx sdlab check-exercise guidance notebooks/exercises/guidance.ts
 */
import * as tf from '@tensorflow/tfjs';

export function classifierFreeGuidance(uncond: tf.Tensor, cond: tf.Tensor, g: number): tf.Tensor {
  // TODO: return uncond + g · (cond − uncond).
  throw new Error('TODO: implement classifierFreeGuidance (ε_uncond + g·(ε_cond − ε_uncond))');
}

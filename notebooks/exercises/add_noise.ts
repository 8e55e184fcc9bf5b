/**
 * Exercise add_noise (notebook 1, forward noising): write the forward process.
 *
 * Diffusion never adds noise one small step at a time during training: with ᾱ_t, the running
 * product of (1 − β_s) for s ≤ t, any timestep is one jump away from the clean image,
 *
 *   x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε,       ε ~ N(0, I)
 *
 * √ᾱ_t shrinks the signal and √(1 − ᾱ_t) grows the noise: at t = 0, x_t is almost x0; at t = T − 1,
 * almost pure noise. (They are square roots so the variance stays ᾱ_t + (1 − ᾱ_t) = 1.)
 *
 * - x0, noise: the same shape [B, …] (e.g. [B, H, W, C]); axis 0 is the batch.
 * - alphasCumprod: ᾱ_t for t = 0 … T − 1 (a Float64Array such as NoiseSchedule.alphasCumprod:
 *   read it in plain JS, e.g. t.map((ti) => alphasCumprod[ti]); tf.tensor() does not take a Float64Array).
 * - t: one timestep per batch item. Shape the coefficients [B, 1, …, 1] so each scales its own item.
 *
 * Check it: npx sdlab check-exercise add_noise notebooks/exercises/add_noise.ts
 */
import * as tf from '@tensorflow/tfjs';

export function addNoise(x0: tf.Tensor, noise: tf.Tensor, alphasCumprod: ArrayLike<number>, t: number[]): tf.Tensor {
  // TODO: look up ᾱ for each item's t, and return √ᾱ_t · x0 + √(1 − ᾱ_t) · noise.
  throw new Error('TODO: implement addNoise (x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε)');
}

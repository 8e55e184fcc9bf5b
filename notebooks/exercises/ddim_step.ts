/**
 * Exercise ddim_step (notebook 5, sampling): write one step of DDIM, the deterministic sampler.
 *
 * The UNet looked at x_t and predicted the noise ε in it (noisePred). DDIM (η = 0) first asks
 * "what clean image does that imply?" by undoing the forward process x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε,
 *
 *   x0     = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t
 *
 * and then re-noises that estimate to the previous (less noisy) timestep with the same ε:
 *
 *   x_prev = √ᾱ_prev · x0 + √(1 − ᾱ_prev) · ε
 *
 * - noisePred (ε), sample (x_t): tensors of the same shape, e.g. latents [B, h, w, 4].
 * - alphaProdT = ᾱ_t, alphaProdTPrev = ᾱ_prev (plain numbers; ᾱ_prev > ᾱ_t: less noise).
 *
 * Check it: npx sdlab check-exercise ddim_step notebooks/exercises/ddim_step.ts
 */
import * as tf from '@tensorflow/tfjs';

export function ddimStep(noisePred: tf.Tensor, sample: tf.Tensor, alphaProdT: number, alphaProdTPrev: number): tf.Tensor {
  // TODO: compute x0 from sample and noisePred, then x_prev.
  throw new Error('TODO: implement ddimStep (x0 from x_t and ε, then x_prev = √ᾱ_prev·x0 + √(1−ᾱ_prev)·ε)');
}

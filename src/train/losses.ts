/**
 * The noise-prediction loss of diffusion training (the UNet trainer's objective):
 *
 *   loss = mean_b w_b · mean((unet(x_t, t, c) − target)²)
 *
 * with x_t and the target (ε, v or x0) from the schedule's forward process
 * (NoiseSchedule.noisedSample, src/schedule/forward.ts) and w_b = 1 or the min-SNR-γ weight of
 * the example's timestep (Hang et al. 2023, arXiv 2303.09556).
 *
 * The other losses live beside their models: CLIP's InfoNCE is `clipLoss` in src/clip/clip.ts,
 * the VAE's KL term `klDivergence` in src/autoencoder/autoencoder.ts.
 */
import * as tf from '@tensorflow/tfjs';
import type { PredictionType } from '../schedule/index.ts';
import type { UNet2DConditionModel } from '../unet/index.ts';
import type { DiffusionBatch } from './diffusion_batch.ts';

/**
 * min-SNR-γ weight of a timestep with ᾱ = alphaCumprod, SNR = ᾱ/(1 − ᾱ): min(SNR, γ)/SNR for ε,
 * min(SNR, γ)/(SNR + 1) for v, min(SNR, γ) for x0. γ = 0: weight 1 (plain MSE).
 */
export function minSnrWeight(alphaCumprod: number, gamma: number, prediction: PredictionType): number {
  if (!(gamma > 0)) return 1;
  const snr = alphaCumprod / (1 - alphaCumprod);
  const clipped = Math.min(snr, gamma);
  if (prediction === 'v_prediction') return clipped / (snr + 1);
  if (prediction === 'epsilon') return snr > 0 ? clipped / snr : 1;
  return clipped; // 'sample' (x0): weight SNR, clipped
}

/** mean((pred − target)²) over each example's values (every axis but the batch axis 0): [B]. */
export function perExampleMse(pred: tf.Tensor, target: tf.Tensor): tf.Tensor1D {
  const axes = Array.from({ length: pred.rank - 1 }, (_, i) => i + 1); // [1, 2, 3] for NHWC
  return tf.mean(tf.squaredDifference(pred, target), axes) as tf.Tensor1D;
}

/** Σ_b w_b · mean((pred − target)²) / B, and the unweighted MSE. */
export function diffusionLoss(unet: UNet2DConditionModel, b: DiffusionBatch): { loss: tf.Scalar; mse: tf.Scalar } {
  const pred = unet.forward(b.noisy, b.timesteps, b.context);
  const perExample = perExampleMse(pred, b.target);
  return { loss: tf.mean(tf.mul(perExample, b.weights)) as tf.Scalar, mse: tf.mean(perExample) as tf.Scalar };
}

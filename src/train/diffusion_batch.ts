/**
 * The UNet trainer's batches: for the examples at `indices`, everything the loss needs, all
 * randomness drawn from one seeded generator in a fixed order (exact resume depends on it):
 *
 *   c    = a fresh caption of each example, or "" with probability captionDropout
 *          (classifier-free guidance), as the frozen text encoder's states (TextCache)
 *   t    ~ U{0, …, T−1} per example,   ε ~ N(0, I)
 *   x0   = scaling_factor · z,   z = VAE posterior mean (or a sample μ + σ·ε')
 *   x_t, target = schedule.noisedSample(x0, ε, t, prediction)     (src/schedule/forward.ts)
 *   w    = min-SNR-γ weight of t (./losses.ts)
 *
 *   const maker = makeBatchMaker(opts, vae.scalingFactor, new TextCache(textEncoder, tokenizer));
 *   const batch = maker.make(trainSet, latents.train, indices, new Random(`...`), 0.1);
 */
import * as tf from '@tensorflow/tfjs';
import { type Dataset, captionOf } from '../data/index.ts';
import { NoiseSchedule } from '../schedule/index.ts';
import type { Random } from '../util/random.ts';
import type { LatentSet } from './latents.ts';
import { minSnrWeight } from './losses.ts';
import type { TextCache } from './text_cache.ts';
import type { UnetTrainOptions } from './unet.ts';

export interface DiffusionBatch {
  /** Noisy latents x_t [B, h, w, c]. */
  noisy: tf.Tensor4D;
  /** Timesteps [B] (float32 holding integers). */
  timesteps: tf.Tensor1D;
  /** Text states [B, L, D]. */
  context: tf.Tensor3D;
  /** ε, v or x0 [B, h, w, c]. */
  target: tf.Tensor4D;
  /** Per-example loss weights [B] (all 1 without min-SNR). */
  weights: tf.Tensor1D;
  captions: string[];
  t: Int32Array;
}

export interface BatchMaker {
  schedule: NoiseSchedule;
  /** x_t, target and weights for the examples `indices` of a latent set, all randomness from `rng`. */
  make(ds: Dataset, latents: LatentSet, indices: ArrayLike<number>, rng: Random, captionDropout: number): DiffusionBatch;
}

/**
 * One caption per example: "" (unconditional) with probability `dropout`, else a fresh caption
 * from the dataset's caption generator (src/data/captioning.ts captionOf). Draws, per example in
 * order: one uniform, then the caption's own.
 */
export function drawCaptions(ds: Dataset, indices: ArrayLike<number>, rng: Random, dropout: number): string[] {
  return Array.from(indices, (i) => (rng.next() < dropout ? '' : captionOf(ds, i, rng)));
}

/** The run's noise schedule and its batch maker. */
export function makeBatchMaker(
  o: Pick<UnetTrainOptions, 'numTrainTimesteps' | 'betaSchedule' | 'betaStart' | 'betaEnd' | 'zeroTerminalSnr' | 'prediction' | 'snrGamma' | 'latents'>,
  scalingFactor: number,
  text: TextCache,
): BatchMaker {
  const schedule = new NoiseSchedule({
    num_train_timesteps: o.numTrainTimesteps,
    beta_schedule: o.betaSchedule,
    beta_start: o.betaStart,
    beta_end: o.betaEnd,
    trained_betas: null,
    rescale_betas_zero_snr: o.zeroTerminalSnr,
  });
  const T = o.numTrainTimesteps;
  const weightOf = schedule.alphasCumprod.map((a) => minSnrWeight(a, o.snrGamma, o.prediction));
  return {
    schedule,
    make(ds, latents, indices, rng, captionDropout) {
      const b = indices.length;
      const [h, w, c] = latents.shape;
      const per = h * w * c;
      // Draw order (fixed: resumes depend on it): captions, timesteps, noise, posterior noise.
      const captions = drawCaptions(ds, indices, rng, captionDropout);
      const t = Int32Array.from({ length: b }, () => rng.int(T));
      const noise = rng.normalArray(b * per);
      const eps = o.latents === 'sample' ? rng.normalArray(b * per) : null;
      const x0 = scaledLatents(latents, indices, eps, scalingFactor);
      const { noisy, target } = schedule.noisedSample(x0, noise, t, o.prediction);
      return {
        noisy: tf.tensor4d(noisy, [b, h, w, c]),
        timesteps: tf.tensor1d(Float32Array.from(t), 'float32'),
        context: text.batch(captions),
        target: tf.tensor4d(target, [b, h, w, c]),
        weights: tf.tensor1d(Float32Array.from(t, (ti) => weightOf[ti]), 'float32'),
        captions,
        t,
      };
    },
  };
}

/**
 * x0 = scaling_factor · z for the examples `indices`: z = the posterior mean, or with `eps` the
 * posterior sample mean + std·eps (in float64, rounded once to float32).
 */
function scaledLatents(latents: LatentSet, indices: ArrayLike<number>, eps: Float32Array | null, scalingFactor: number): Float32Array {
  const [h, w, c] = latents.shape;
  const per = h * w * c;
  const x0 = new Float32Array(indices.length * per);
  for (let k = 0; k < indices.length; k++) {
    const src = indices[k] * per;
    for (let j = 0; j < per; j++) {
      const z = eps ? latents.mean[src + j] + latents.std[src + j] * eps[k * per + j] : latents.mean[src + j];
      x0[k * per + j] = z * scalingFactor;
    }
  }
  return x0;
}

export function disposeBatch(b: DiffusionBatch): void {
  tf.dispose([b.noisy, b.timesteps, b.context, b.target, b.weights]);
}

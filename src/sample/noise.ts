/**
 * Where a pipeline call's random tensors come from, in one of two orders:
 *
 *   perImageNoise(seed, first, b)   sdlab's default: image k of a run draws everything (its start
 *                                   noise, its posterior sample, the noise img2img adds, the fresh
 *                                   noise of stochastic steps) from its own stream Random(`${seed}:${k}`),
 *                                   so it does not depend on the batch it ran in.
 *   diffusersNoise(generator)       one generator for the whole call, consumed as diffusers consumes
 *                                   its torch.Generator: each tensor drawn once for the batch, in
 *                                   NCHW order ([B, C, h, w], C order — what torch.randn fills), then
 *                                   transposed to sdlab's NHWC. With a TorchGenerator
 *                                   (src/util/torch_random.ts) the numbers are torch's; tests replay
 *                                   the draws a fixture recorded through it.
 *
 * The pipeline asks for tensors in diffusers' order (StableDiffusionPipeline.call): txt2img the
 * start noise; img2img the VAE posterior sample of the init image, then the noise added to it;
 * inpainting as diffusers' inpaint pipeline (image posterior when needed, start noise, masked-image
 * posterior); then whatever each scheduler step draws (`stepGenerator`).
 */
import * as tf from '@tensorflow/tfjs';
import type { NoiseGenerator } from '../schedule/base.ts';
import { Random } from '../util/random.ts';

export interface PipelineNoise {
  /**
   * Standard normal NHWC [b, h, w, c]. `shared`: diffusers draws one [1, c, h, w] tensor for the
   * whole batch (the posterior sample of the one init image it encodes once) and repeats it; the
   * per-image streams give each image its own draw instead.
   */
  latents(b: number, h: number, w: number, c: number, shared?: boolean): tf.Tensor4D;
  /** What stochastic scheduler steps on latents [b, h, w, c] draw from (NHWC values). */
  stepGenerator(b: number, h: number, w: number, c: number): NoiseGenerator;
}

/** The per-image noise stream of image `index` of a run seeded with `seed`. */
export function imageGenerator(seed: number, index: number): Random {
  return new Random(`${seed}:${index}`);
}

/**
 * One noise generator for a batch that draws each image's share from that image's own stream:
 * normalArray(B·n) = [stream0.normalArray(n), stream1.normalArray(n), ...]. This is what makes
 * image k independent of the batch it ran in.
 */
export class BatchNoiseGenerator implements NoiseGenerator {
  constructor(readonly streams: readonly NoiseGenerator[]) {}

  normalArray(n: number): Float32Array {
    const b = this.streams.length;
    if (n % b !== 0) throw new Error(`BatchNoiseGenerator: ${n} numbers do not split over ${b} images.`);
    const per = n / b;
    const out = new Float32Array(n);
    this.streams.forEach((s, k) => out.set(s.normalArray(per), k * per));
    return out;
  }
}

/** sdlab's default: images first..first+b-1 of a run seeded `seed`, each from its own stream. */
export function perImageNoise(seed: number, first: number, b: number): PipelineNoise {
  const generator = new BatchNoiseGenerator(Array.from({ length: b }, (_, k) => imageGenerator(seed, first + k)));
  return {
    latents: (n, h, w, c) => {
      if (n !== b) throw new Error(`perImageNoise: made for ${b} images, asked for ${n}.`);
      return tf.tensor4d(generator.normalArray(n * h * w * c), [n, h, w, c]);
    },
    stepGenerator: () => generator,
  };
}

/** NCHW values [n, c, h, w] (C order) → NHWC values [n, h, w, c]. */
export function nchwToNhwc(src: Float32Array, n: number, c: number, h: number, w: number): Float32Array {
  const out = new Float32Array(src.length);
  const hw = h * w;
  for (let i = 0; i < n; i++) {
    for (let ch = 0; ch < c; ch++) {
      const from = (i * c + ch) * hw;
      for (let p = 0; p < hw; p++) out[(i * hw + p) * c + ch] = src[from + p];
    }
  }
  return out;
}

/** NHWC values [n, h, w, c] → NCHW values [n, c, h, w] (what diffusers and safetensors latents files hold). */
export function nhwcToNchw(src: Float32Array, n: number, h: number, w: number, c: number): Float32Array {
  const out = new Float32Array(src.length);
  const hw = h * w;
  for (let i = 0; i < n; i++) {
    for (let ch = 0; ch < c; ch++) {
      const to = (i * c + ch) * hw;
      for (let p = 0; p < hw; p++) out[to + p] = src[(i * hw + p) * c + ch];
    }
  }
  return out;
}

/** One generator for the call, drawn in diffusers' order and NCHW shapes (see the file header). */
export function diffusersNoise(generator: NoiseGenerator): PipelineNoise {
  const draw = (n: number, h: number, w: number, c: number) => nchwToNhwc(generator.normalArray(n * c * h * w), n, c, h, w);
  return {
    latents: (b, h, w, c, shared = false) => {
      if (!shared) return tf.tensor4d(draw(b, h, w, c), [b, h, w, c]);
      return tf.tidy(() => tf.tile(tf.tensor4d(draw(1, h, w, c), [1, h, w, c]), [b, 1, 1, 1]) as tf.Tensor4D);
    },
    stepGenerator: (b, h, w, c) => ({
      normalArray: (n: number) => {
        // Schedulers ask for noise shaped like the latents: one [B, C, h, w] torch draw.
        if (n !== b * h * w * c) throw new Error(`diffusersNoise: a step asked for ${n} numbers, expected the latents' ${b}×${c}×${h}×${w}.`);
        return draw(b, h, w, c);
      },
    }),
  };
}

/**
 * The two pixel ranges, and the one place that converts between them. Images are stored and
 * drawn in [0, 1] (PNG / 255, MNIST); the networks see [-1, 1], centred on zero as the noise is
 * (diffusers' VaeImageProcessor.normalize / denormalize do the same).
 *
 *   luma(r, g, b)      RGB → gray            0.299 R + 0.587 G + 0.114 B
 *   toSigned(v)        [0, 1] → [-1, 1]     one value: 2v − 1
 *   toUnit(v)          [-1, 1] → [0, 1]     one value: (v + 1) / 2
 *   normalize(x)       toSigned of a tensor
 *   denormalize(x)     toUnit of a tensor, clamped to [0, 1] (decoded images overshoot)
 *
 * Float32 bits: (v + 1) / 2 and v / 2 + 0.5 round alike (halving is exact), so every caller gets
 * the same numbers whichever way it was written before.
 */
import * as tf from '@tensorflow/tfjs';

/** Gray from RGB: the Rec. 601 luma 0.299 R + 0.587 G + 0.114 B (PIL's convert('L')), for PNGs and tf.data images alike. */
export const luma = (r: number, g: number, b: number): number => 0.299 * r + 0.587 * g + 0.114 * b;

/** [0, 1] → [-1, 1]. */
export const toSigned = (v: number): number => v * 2 - 1;

/** [-1, 1] → [0, 1] (not clamped). */
export const toUnit = (v: number): number => (v + 1) / 2;

/** A tensor in [0, 1] → [-1, 1]. */
export function normalize<T extends tf.Tensor>(x: T): T {
  return tf.tidy(() => tf.sub(tf.mul(x, 2), 1) as T);
}

/** A tensor in [-1, 1] → [0, 1], clamped. */
export function denormalize<T extends tf.Tensor>(x: T): T {
  return tf.tidy(() => tf.clipByValue(tf.div(tf.add(x, 1), 2), 0, 1) as T);
}

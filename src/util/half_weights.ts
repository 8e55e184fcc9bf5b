/**
 * Weights kept in half precision: a backend that can hold a float32 tensor as float16 bits (the
 * native backend: NativeBackend.makeHalfTensor) installs itself here, and weight loading
 * (nn/module.ts assignPlanned) keeps the tensors of fp16 files that way — half the memory, and
 * exactly the file's values. util knows no backend; the backend calls setHalfWeights (imports run
 * downward). SDLAB_HALF_WEIGHTS=0 turns it off (float32 in memory, as before).
 */
import * as tf from '@tensorflow/tfjs';

export interface HalfWeights {
  /** The backend (tfjs name) that can hold half-precision tensors. */
  backend: string;
  /** A half-precision copy of a float32 tensor, rounded to nearest even (exact for values from fp16). */
  toHalf(t: tf.Tensor): tf.Tensor;
  /**
   * A half-precision tensor of float16 bits `halves` (of shape `shape`), transposed by `perm` when
   * given (a PyTorch layout to sdlab's, without a float32 copy); `halves` may be reused afterwards.
   */
  fromHalves(halves: Uint16Array, shape: number[], perm: number[] | null): tf.Tensor;
}

let installed: HalfWeights | null = null;

export function setHalfWeights(h: HalfWeights | null): void {
  installed = h;
}

/** Parameters smaller than this stay float32: they save little and some kernels read them often. */
export const HALF_MIN_SIZE = 16384;

/** The active backend's half-precision storage, or null (another backend, or SDLAB_HALF_WEIGHTS=0). */
export function halfWeights(): HalfWeights | null {
  if (!installed || process.env.SDLAB_HALF_WEIGHTS === '0') return null;
  return tf.getBackend() === installed.backend ? installed : null;
}

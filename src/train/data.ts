/**
 * Random-access batches for the trainer (a small adapter over src/data): the i-th batch of an
 * epoch, without walking the epoch from its start. The order is data's `epochOrder(n, {seed,
 * epoch})` — the same one `batches()` uses — so a resumed run picks up at the exact example.
 * The last partial batch is dropped, so every step sees `batchSize` examples.
 */
import * as tf from '@tensorflow/tfjs';
import { type Dataset, epochOrder } from '../data/index.ts';
import { check } from '../util/errors.ts';
import { toSigned } from '../data/pixels.ts';

export class EpochBatcher {
  readonly stepsPerEpoch: number;
  private cachedEpoch = -1;
  private order: Int32Array = new Int32Array(0);

  constructor(
    readonly ds: Dataset,
    readonly batchSize: number,
    readonly seed: number,
    /** 'signed' maps pixels from [0, 1] to [-1, 1] (what the VAE and diffusion see). */
    readonly range: 'unit' | 'signed' = 'signed',
  ) {
    check(Number.isInteger(batchSize) && batchSize > 0, `--batch-size: expected a positive integer, got ${batchSize}.`);
    this.stepsPerEpoch = Math.floor(ds.n / batchSize);
  }

  /** Dataset indices of the index-th batch of `epoch`. */
  indices(epoch: number, index: number): Int32Array {
    if (epoch !== this.cachedEpoch) {
      this.order = epochOrder(this.ds.n, { seed: this.seed, epoch });
      this.cachedEpoch = epoch;
    }
    check(index >= 0 && index < this.stepsPerEpoch, `batch index ${index} out of range [0, ${this.stepsPerEpoch}).`);
    return this.order.subarray(index * this.batchSize, (index + 1) * this.batchSize);
  }

  /** The images of the index-th batch of `epoch`: [B, H, W, 1] (the caller disposes it). */
  images(epoch: number, index: number): tf.Tensor4D {
    return imagesAt(this.ds, this.indices(epoch, index), this.range);
  }
}

/** Images at `indices` as a [B, H, W, 1] tensor, in [0, 1] ('unit') or [-1, 1] ('signed'). */
export function imagesAt(ds: Dataset, indices: ArrayLike<number>, range: 'unit' | 'signed' = 'signed'): tf.Tensor4D {
  const px = ds.height * ds.width;
  const buf = new Float32Array(indices.length * px);
  for (let k = 0; k < indices.length; k++) {
    const i = indices[k];
    const img = ds.images.subarray(i * px, (i + 1) * px);
    if (range === 'signed') for (let p = 0; p < px; p++) buf[k * px + p] = toSigned(img[p]);
    else buf.set(img, k * px);
  }
  return tf.tensor4d(buf, [indices.length, ds.height, ds.width, 1]);
}

/** 0, 1, …, n-1 in chunks of `size` (for evaluation passes). */
export function* chunks(n: number, size: number): Generator<Int32Array> {
  for (let s = 0; s < n; s += size) yield Int32Array.from({ length: Math.min(size, n - s) }, (_, k) => s + k);
}

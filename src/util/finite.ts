/**
 * Finding NaN and ±Infinity in plain arrays: the check behind "weights/latents hold non-finite
 * values" errors (tensors: sample/pipeline.ts requireFinite).
 *
 *   if (firstNonFinite(data) >= 0) throw new UsageError('...');
 */

/** Index of the first NaN or ±Infinity in `values`, or -1 when all are finite. */
export function firstNonFinite(values: ArrayLike<number>): number {
  // x - x is 0 for finite x and NaN for NaN and ±Infinity: one compare per value.
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v - v !== 0) return i;
  }
  return -1;
}

/** Index of the first NaN or ±Infinity among float16 bit patterns (exponent all ones), or -1. */
export function firstNonFiniteHalf(halves: Uint16Array): number {
  for (let i = 0; i < halves.length; i++) if ((halves[i] & 0x7c00) === 0x7c00) return i;
  return -1;
}

/**
 * Degraded copies of real digits, for `sdlab eval --sanity`: a metric worth trusting must score
 * them far worse than real digits. Images are n × size × size values in [-1, 1] (−1 = background),
 * image after image; every function returns a new array.
 *
 *   gaussianBlur(images, n, 32, 0.75)     separable Gaussian, background beyond the edges
 *   pixelNoise(images, 0.1, rng)          + N(0, σ²) per pixel on the [0, 1] scale, clipped
 *   repeatImages(images, 32, 50, 10, 500) the first 50 images, each 10 times in a row
 */
import { check } from '../util/errors.ts';
import type { Random } from '../util/random.ts';

/** The normalised 1-D Gaussian kernel exp(−x²/2σ²), radius ⌈3σ⌉. */
export function gaussianKernel(sigma: number): Float64Array {
  check(sigma > 0, `blur: sigma must be > 0, got ${sigma}.`);
  const r = Math.ceil(3 * sigma);
  const k = new Float64Array(2 * r + 1);
  let sum = 0;
  for (let i = -r; i <= r; i++) sum += k[i + r] = Math.exp(-(i * i) / (2 * sigma * sigma));
  for (let i = 0; i < k.length; i++) k[i] /= sum;
  return k;
}

/**
 * Gaussian blur of each size×size image in [-1, 1]: rows then columns, on the [0, 1] scale with
 * zeros (background) outside the image, so a digit's ink spreads without the border turning grey.
 */
export function gaussianBlur(images: Float32Array, n: number, size: number, sigma: number): Float32Array {
  const px = size * size;
  check(images.length === n * px, `blur: expected ${n} images of ${size}×${size}.`);
  const k = gaussianKernel(sigma);
  const r = (k.length - 1) / 2;
  const out = new Float32Array(images.length);
  const unit = new Float64Array(px);
  const rows = new Float64Array(px);
  for (let i = 0; i < n; i++) {
    const o = i * px;
    for (let p = 0; p < px; p++) unit[p] = (images[o + p] + 1) / 2;
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        let s = 0;
        for (let t = -r; t <= r; t++) if (x + t >= 0 && x + t < size) s += k[t + r] * unit[y * size + x + t];
        rows[y * size + x] = s;
      }
    }
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        let s = 0;
        for (let t = -r; t <= r; t++) if (y + t >= 0 && y + t < size) s += k[t + r] * rows[(y + t) * size + x];
        out[o + y * size + x] = 2 * s - 1;
      }
    }
  }
  return out;
}

/** Each pixel + N(0, σ²) on the [0, 1] scale, clipped to [0, 1]; returned in [-1, 1]. */
export function pixelNoise(images: Float32Array, sigma: number, rng: Random): Float32Array {
  return images.map((v) => 2 * Math.min(1, Math.max(0, (v + 1) / 2 + sigma * rng.normal())) - 1);
}

/** `total` images: the first `distinct` images of the set, each `times` times in a row (truncated to `total`). */
export function repeatImages(images: Float32Array, px: number, distinct: number, times: number, total: number): Float32Array {
  check(distinct >= 1 && images.length >= distinct * px, `repeat: need ${distinct} images, got ${images.length / px}.`);
  const out = new Float32Array(total * px);
  for (let k = 0; k < total; k++) {
    const src = Math.floor(k / times) % distinct;
    out.set(images.subarray(src * px, (src + 1) * px), k * px);
  }
  return out;
}

/**
 * A GIF of the reverse process. For a few images, every frame shows at one denoising step
 *
 *   [the latents x_t]  [the decoded prediction of the clean image x0]
 *
 * x_t's channels are tiled as a small grayscale picture (4 channels → 2×2), min-max normalised
 * per image and frame (so the noise stays visible as it shrinks) and scaled to the image size;
 * x0 is the scheduler's predOriginalSample passed through the VAE decoder. Early frames: x_t is
 * noise and x0 a blurry average guess; late frames: both settle on the digit.
 *
 *   const anim = new ReverseProcessAnimation(pipe, { indices: [0, 8, 16] });   // rows of the batch
 *   pipe.call({ ..., callback: (s) => anim.record(s) });
 *   await anim.save('out/sample/animation.gif');
 *
 * For Stable Diffusion sizes the VAE decoder per step costs more than the UNet step; there
 * `{ decode: latentPreview(pipe).decode }` draws x0 through a cheap linear map instead: each latent
 * pixel's C values → RGB by a C×3 matrix plus a bias, fitted by least squares to the model's own
 * VAE at run time (latentPreview: decode a few random 8×8 latents once, average each decoded
 * f×f block, solve the normal equations; cached per pipeline). The preview is at latent
 * resolution (1/8 of the image's side), as A1111's "Approx cheap" live preview.
 */
import * as tf from '@tensorflow/tfjs';
import { Random } from '../util/random.ts';
import type { StableDiffusionPipeline, StepInfo } from './pipeline.ts';
import { type FloatImage, type Raster, renderGrid, saveGif } from '../viz/index.ts';
import { type Canvas, toCanvasMode } from '../data/canvas.ts';

export interface AnimationOptions {
  /** Which images of the batch to show (default: the first 4). */
  indices?: readonly number[];
  /** Pixel scale of the frames. Default 2. */
  scale?: number;
  /** Row labels (one per shown image). */
  labels?: readonly string[];
  /** Crop the decoded x0 to the data's own size on this canvas (src/data/canvas.ts); default: the VAE's canvas. */
  canvas?: Canvas;
  /** Diffusion-space latents [k, h, w, C] → images [k, H, W, 1|3] in [0, 1] (default: the VAE decoder, pipe.decodeLatents). */
  decode?: (latents: tf.Tensor4D) => tf.Tensor4D;
}

/** A linear latent → RGB map fitted to a model's VAE (latentPreview). */
export interface LatentPreview {
  /** [C + 1, 3]: rows 0..C-1 weigh the latent channels (diffusion space), the last row is the bias. */
  readonly matrix: Float64Array;
  /** Diffusion-space latents [k, h, w, C] → RGB previews [k, h, w, 3] in [0, 1] (clipped). */
  decode(latents: tf.Tensor4D): tf.Tensor4D;
}

const previews = new WeakMap<StableDiffusionPipeline, LatentPreview>();

/** Solves the symmetric positive definite system A x = b (n × n, m right-hand sides) by Gaussian elimination with partial pivoting. */
function solve(a: Float64Array, b: Float64Array, n: number, m: number): Float64Array {
  const A = Float64Array.from(a);
  const B = Float64Array.from(b);
  for (let col = 0; col < n; col++) {
    let piv = col;
    for (let r = col + 1; r < n; r++) if (Math.abs(A[r * n + col]) > Math.abs(A[piv * n + col])) piv = r;
    if (piv !== col) {
      for (let j = 0; j < n; j++) [A[col * n + j], A[piv * n + j]] = [A[piv * n + j], A[col * n + j]];
      for (let j = 0; j < m; j++) [B[col * m + j], B[piv * m + j]] = [B[piv * m + j], B[col * m + j]];
    }
    const d = A[col * n + col] || 1e-12;
    for (let r = col + 1; r < n; r++) {
      const f = A[r * n + col] / d;
      if (f === 0) continue;
      for (let j = col; j < n; j++) A[r * n + j] -= f * A[col * n + j];
      for (let j = 0; j < m; j++) B[r * m + j] -= f * B[col * m + j];
    }
  }
  const x = new Float64Array(n * m);
  for (let r = n - 1; r >= 0; r--) {
    for (let j = 0; j < m; j++) {
      let v = B[r * m + j];
      for (let c = r + 1; c < n; c++) v -= A[r * n + c] * x[c * m + j];
      x[r * m + j] = v / (A[r * n + r] || 1e-12);
    }
  }
  return x;
}

/**
 * The least-squares fit of RGB = [latent, 1] · M to what `decode` makes of `latents`
 * ([n, h, w, C] diffusion space → [n, h·f, w·f, 3 or 1] in [0, 1]): each latent pixel is paired
 * with the mean colour of its f×f block. Exported for the tests; latentPreview uses the VAE.
 */
export function fitLatentPreview(latents: tf.Tensor4D, decoded: tf.Tensor4D): Float64Array {
  const [n, h, w, c] = latents.shape;
  const [, H, W, ch] = decoded.shape;
  const f = H / h;
  const pooled = tf.tidy(() => {
    const rgb = ch === 3 ? decoded : tf.tile(decoded, [1, 1, 1, 3]);
    return tf.avgPool(rgb as tf.Tensor4D, [f, W / w], [f, W / w], 'valid');
  });
  const x = latents.dataSync();
  const y = pooled.dataSync();
  pooled.dispose();
  const p = c + 1;
  const xtx = new Float64Array(p * p);
  const xty = new Float64Array(p * 3);
  const row = new Float64Array(p);
  for (let i = 0; i < n * h * w; i++) {
    for (let j = 0; j < c; j++) row[j] = x[i * c + j];
    row[c] = 1;
    for (let a = 0; a < p; a++) {
      for (let b = 0; b < p; b++) xtx[a * p + b] += row[a] * row[b];
      for (let k = 0; k < 3; k++) xty[a * 3 + k] += row[a] * y[i * 3 + k];
    }
  }
  return solve(xtx, xty, p, 3);
}

/**
 * The cheap preview decoder of a pipeline (see the file header): fitted once per pipeline on
 * 8 random 8×8 latents (standard normal, a fixed seed: the run's random streams are untouched)
 * decoded by its VAE, then reused.
 */
export function latentPreview(pipe: StableDiffusionPipeline): LatentPreview {
  const cached = previews.get(pipe);
  if (cached) return cached;
  const c = pipe.vae.config.latent_channels;
  const [n, h, w] = [8, 8, 8];
  const rng = new Random('sdlab latent preview');
  const values = Float32Array.from({ length: n * h * w * c }, () => rng.normal());
  const latents = tf.tensor4d(values, [n, h, w, c]);
  const decoded = pipe.decodeLatents(latents);
  const matrix = fitLatentPreview(latents, decoded);
  tf.dispose([latents, decoded]);
  const m = tf.tensor2d(Float32Array.from(matrix), [c + 1, 3]);
  const preview: LatentPreview = {
    matrix,
    decode: (x) =>
      tf.tidy(() => {
        const [k, hh, ww] = x.shape;
        const flat = tf.concat([tf.reshape(x, [k * hh * ww, c]), tf.ones([k * hh * ww, 1])], 1);
        return tf.clipByValue(tf.reshape(tf.matMul(flat, m), [k, hh, ww, 3]), 0, 1) as tf.Tensor4D;
      }),
  };
  previews.set(pipe, preview);
  return preview;
}

/** Tiles the C channels of one latent [h, w, C] into a grayscale picture, normalised to [0, 1]. */
export function latentTile(data: Float32Array, h: number, w: number, c: number, outH: number, outW: number): FloatImage {
  const cols = Math.ceil(Math.sqrt(c));
  const rows = Math.ceil(c / cols);
  const th = rows * h;
  const tw = cols * w;
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of data) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const range = hi > lo ? hi - lo : 1;
  const tile = new Float32Array(th * tw).fill(0);
  for (let ch = 0; ch < c; ch++) {
    const oy = Math.floor(ch / cols) * h;
    const ox = (ch % cols) * w;
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) tile[(oy + y) * tw + ox + x] = (data[(y * w + x) * c + ch] - lo) / range;
  }
  // Nearest-neighbour resize to the image's size, so the two pictures of a row line up.
  const out = new Float32Array(outH * outW);
  for (let y = 0; y < outH; y++) {
    const sy = Math.min(th - 1, Math.floor((y * th) / outH));
    for (let x = 0; x < outW; x++) out[y * outW + x] = tile[sy * tw + Math.min(tw - 1, Math.floor((x * tw) / outW))];
  }
  return { data: out, height: outH, width: outW, channels: 1 };
}

export class ReverseProcessAnimation {
  readonly frames: Raster[] = [];

  constructor(
    private readonly pipe: StableDiffusionPipeline,
    private readonly opts: AnimationOptions = {},
  ) {}

  /** Draws one frame from a step of the pipeline (the chosen images of the batch). */
  record(step: StepInfo): void {
    const b = step.latents.shape[0];
    const rows = (this.opts.indices ?? [0, 1, 2, 3]).filter((i) => i < b);
    const k = rows.length;
    if (k === 0) return;
    const [, h, w, c] = step.latents.shape;
    const { latents, images } = tf.tidy(() => {
      const pick = tf.tensor1d(rows, 'int32');
      return {
        latents: tf.gather(step.latents, pick),
        images: (this.opts.decode ?? ((x: tf.Tensor4D) => this.pipe.decodeLatents(x)))(tf.gather(step.predOriginalSample, pick) as tf.Tensor4D),
      };
    });
    const lat = latents.dataSync() as Float32Array;
    const img = images.dataSync() as Float32Array;
    const [, H, W, C] = images.shape;
    latents.dispose();
    images.dispose();
    const cells: FloatImage[] = [];
    for (let j = 0; j < k; j++) {
      let x0: FloatImage = { data: img.slice(j * H * W * C, (j + 1) * H * W * C), height: H, width: W, channels: C as 1 | 3 };
      if (this.opts.canvas) x0 = toCanvasMode(x0, this.opts.canvas, 'native');
      cells.push(latentTile(lat.subarray(j * h * w * c, (j + 1) * h * w * c), h, w, c, x0.height, x0.width));
      cells.push(x0);
    }
    const t = Number.isInteger(step.t) ? String(step.t) : step.t.toFixed(1);
    this.frames.push(
      renderGrid(cells, {
        rows: k,
        cols: 2,
        scale: this.opts.scale ?? 2,
        colLabels: ['x_t', 'x0'],
        rowLabels: this.opts.labels?.slice(0, k),
        title: `step ${step.i + 1}/${step.numSteps} t=${t}`,
      }),
    );
  }

  /** Writes the GIF (atomically); the last frame is held for a moment. */
  async save(file: string): Promise<void> {
    await saveGif(file, this.frames, { delayMs: 120, lastFrameDelayMs: 1500 });
  }
}

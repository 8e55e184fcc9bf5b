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
 */
import * as tf from '@tensorflow/tfjs';
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
        images: this.pipe.decodeLatents(tf.gather(step.predOriginalSample, pick) as tf.Tensor4D),
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

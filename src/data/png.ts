/**
 * Reading PNG files as float pixels: the one PNG reader of sdlab (image folders for training,
 * `sdlab encode`, `interpolate`).
 *
 *   readPngImage('digit.png', 1)   →  { data: Float32Array (H*W), height, width, channels: 1 }
 *   readPngImage('photo.png', 3)   →  HWC, 3 channels
 *
 * Values are in [0, 1]. Any PNG colour type and bit depth (pngjs expands them to 8-bit RGBA);
 * transparent pixels are composited onto black (the background of MNIST-style data); grayscale
 * from RGB is the Rec. 601 luma 0.299 R + 0.587 G + 0.114 B (PIL's convert('L')).
 */
import { readPng } from '../io/png.ts';
import { luma } from './pixels.ts';

/** HWC float pixels in [0, 1] (structurally a viz FloatImage). */
export interface PngPixels {
  data: ArrayLike<number>;
  height: number;
  width: number;
  channels: 1 | 3;
}

/** A PNG as HWC float pixels in [0, 1] with `channels` channels (alpha composited onto black), within sdlab's size limits. */
export function readPngImage(file: string, channels: 1 | 3): PngPixels {
  const { width, height, data } = readPng(file); // RGBA, 8 bits per channel; one line on any failure
  const out = new Float32Array(width * height * channels);
  for (let i = 0; i < width * height; i++) {
    const a = data[4 * i + 3] / 255;
    const r = (data[4 * i] / 255) * a;
    const g = (data[4 * i + 1] / 255) * a;
    const b = (data[4 * i + 2] / 255) * a;
    if (channels === 1) out[i] = luma(r, g, b);
    else out.set([r, g, b], 3 * i);
  }
  return { data: out, height, width, channels };
}

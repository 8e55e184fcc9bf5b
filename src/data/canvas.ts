/**
 * The canvas: digits have their own (native) size — MNIST's 28×28 — while the VAE works on a
 * square canvas of its sample_size (32×32 for the digit preset, a size its downsampling divides),
 * with the digit centred on background. This file is the one home of that pad and its inverse
 * crop, and of the record a run keeps of them:
 *
 *   <run>/vae/canvas.json   {"native_height": 28, "native_width": 28, "sample_size": 32,
 *                            "pad_top": 2, "pad_left": 2, "source": "..."}
 *
 * written by `sdlab train vae` (the trainer knows the data), read by everything that writes
 * digits (`sdlab sample`, `decode`, `interpolate`, the sample sheets), which crop the VAE's
 * output back to the native size unless asked for the padded canvas. A VAE trained before the
 * record existed gets the MNIST convention (1 channel, sample_size 32 → 28×28 centred), with a
 * note saying so.
 *
 *   const c = centredCanvas(28, 28, 32);                 // pad 2 on every side
 *   const big = padPixels(digit, 28, 28, c);             // 32×32, background 0
 *   const back = cropPixels(big, c);                     // the 28×28 digit again
 */
import fs from 'node:fs';
import path from 'node:path';
import { UsageError, check } from '../util/errors.ts';
import { writeFileAtomicSync } from '../util/fs.ts';
import { readJsonFile } from '../util/json.ts';

export interface Canvas {
  /** The data's own size. */
  nativeHeight: number;
  nativeWidth: number;
  /** The square canvas the VAE works on (its sample_size). */
  size: number;
  /** Where the native image sits inside the canvas. */
  top: number;
  left: number;
}

/** Which size outputs are written at: the data's own ('native', default) or the VAE's ('padded'). */
export type CanvasMode = 'native' | 'padded';
export const CANVAS_MODES: readonly CanvasMode[] = ['native', 'padded'];

export const CANVAS_FILE = 'canvas.json';

/** An h×w image centred on a size×size canvas (28 → 32: 2 pixels each side; odd margins put the extra pixel below/right). */
export function centredCanvas(h: number, w: number, size: number): Canvas {
  check(Number.isInteger(h) && Number.isInteger(w) && h >= 1 && w >= 1, `canvas: image size must be positive integers, got ${h}×${w}.`);
  check(h <= size && w <= size, `canvas: cannot pad ${h}×${w} images to ${size}×${size}.`);
  return { nativeHeight: h, nativeWidth: w, size, top: Math.floor((size - h) / 2), left: Math.floor((size - w) / 2) };
}

/** True when the canvas adds no border (nothing to crop). */
export function isIdentity(c: Canvas): boolean {
  return c.nativeHeight === c.size && c.nativeWidth === c.size;
}

/** Where an h×w image goes on canvas `c`: where the record says for the native size, centred for any other. */
export function placement(c: Canvas, h: number, w: number): Canvas {
  return h === c.nativeHeight && w === c.nativeWidth ? c : centredCanvas(h, w, c.size);
}

/**
 * Places an h×w image (HWC, `channels` per pixel) on canvas `c` filled with `fill`. h×w is the
 * canvas's native size, or any size up to the canvas (then centred: `placement`).
 */
export function padPixels(src: ArrayLike<number>, h: number, w: number, c: Canvas, opts: { channels?: number; fill?: number } = {}): Float32Array {
  const ch = opts.channels ?? 1;
  check(src.length === h * w * ch, `pad: expected ${h}×${w}×${ch} = ${h * w * ch} values, got ${src.length}.`);
  const at = placement(c, h, w);
  const S = c.size;
  const out = new Float32Array(S * S * ch);
  if (opts.fill) out.fill(opts.fill);
  const row = w * ch;
  for (let y = 0; y < h; y++) {
    const from = y * row;
    const to = ((y + at.top) * S + at.left) * ch;
    for (let k = 0; k < row; k++) out[to + k] = src[from + k];
  }
  return out;
}

/** The native image inside a canvas-sized HWC image (the inverse of padPixels). */
export function cropPixels(src: ArrayLike<number>, c: Canvas, channels = 1): Float32Array {
  const S = c.size;
  check(src.length === S * S * channels, `crop: expected a ${S}×${S}×${channels} canvas, got ${src.length} values.`);
  const row = c.nativeWidth * channels;
  const out = new Float32Array(c.nativeHeight * row);
  for (let y = 0; y < c.nativeHeight; y++) {
    const from = ((y + c.top) * S + c.left) * channels;
    for (let k = 0; k < row; k++) out[y * row + k] = src[from + k];
  }
  return out;
}

/** An image as the pictures code holds it (structurally viz's FloatImage). */
export interface PixelImage {
  data: ArrayLike<number>;
  height: number;
  width: number;
  channels?: number;
}

/**
 * An image at the size `mode` asks for: 'native' crops a canvas-sized image to the data's own
 * size; 'padded', or an image that is not canvas-sized (e.g. a larger decode), passes through.
 */
export function toCanvasMode<T extends PixelImage>(img: T, c: Canvas, mode: CanvasMode): T {
  if (mode === 'padded' || isIdentity(c) || img.height !== c.size || img.width !== c.size) return img;
  return { ...img, data: cropPixels(img.data, c, img.channels ?? 1), height: c.nativeHeight, width: c.nativeWidth };
}

// ---------------------------------------------------------------------------------------------
// The run's record

/** Writes <vaeDir>/canvas.json (atomically). `source` says where the data came from, for people. */
export function writeCanvasRecord(vaeDir: string, c: Canvas, source?: string): string {
  const file = path.join(vaeDir, CANVAS_FILE);
  const rec: Record<string, unknown> = {
    native_height: c.nativeHeight,
    native_width: c.nativeWidth,
    sample_size: c.size,
    pad_top: c.top,
    pad_left: c.left,
  };
  if (source) rec.source = source;
  writeFileAtomicSync(file, JSON.stringify(rec, null, 2) + '\n');
  return file;
}

const RECORD_KEYS = ['native_height', 'native_width', 'sample_size', 'pad_top', 'pad_left', 'source'];

/** Reads and checks <vaeDir>/canvas.json against the VAE's sample_size; null when there is none. */
export function readCanvasRecord(vaeDir: string, sampleSize: number): Canvas | null {
  const file = path.join(vaeDir, CANVAS_FILE);
  if (!fs.existsSync(file)) return null;
  const raw = readJsonFile(file);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new UsageError(`${file}: expected a JSON object {${RECORD_KEYS.join(', ')}}.`);
  const o = raw as Record<string, unknown>;
  const unknown = Object.keys(o).filter((k) => !RECORD_KEYS.includes(k));
  if (unknown.length) throw new UsageError(`${file}: unknown key "${unknown[0]}" (expected ${RECORD_KEYS.join(', ')}).`);
  const int = (k: string, min: number): number => {
    const v = o[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new UsageError(`${file}: "${k}" must be an integer >= ${min}, got ${JSON.stringify(v)}.`);
    return v;
  };
  if (o.source !== undefined && typeof o.source !== 'string') throw new UsageError(`${file}: "source" must be a string.`);
  const c: Canvas = { nativeHeight: int('native_height', 1), nativeWidth: int('native_width', 1), size: int('sample_size', 1), top: int('pad_top', 0), left: int('pad_left', 0) };
  if (c.size !== sampleSize) throw new UsageError(`${file}: sample_size ${c.size} does not match the VAE's sample_size ${sampleSize} (config.json).`);
  if (c.top + c.nativeHeight > c.size || c.left + c.nativeWidth > c.size) {
    throw new UsageError(`${file}: a ${c.nativeHeight}×${c.nativeWidth} image at offset (${c.top}, ${c.left}) does not fit the ${c.size}×${c.size} canvas.`);
  }
  return c;
}

/** MNIST's digits are 28×28; sdlab's digit VAEs pad them to 32×32. */
export const MNIST_SIZE = 28;

/**
 * The canvas of a VAE: its record, or — for a VAE saved before sdlab kept one — the MNIST
 * convention for a 1-channel 32×32 VAE, and "the data fills the canvas" for any other; `note`
 * says when it was inferred.
 */
export function vaeCanvas(vaeDir: string, vae: { sampleSize: number; inChannels: number }): { canvas: Canvas; note?: string } {
  const rec = readCanvasRecord(vaeDir, vae.sampleSize);
  if (rec) return { canvas: rec };
  const file = path.join(vaeDir, CANVAS_FILE);
  if (vae.inChannels === 1 && vae.sampleSize === 32) {
    return {
      canvas: centredCanvas(MNIST_SIZE, MNIST_SIZE, 32),
      note: `${file} not found (a VAE trained before sdlab recorded its data's size): assuming MNIST's 28×28 digits centred on its 32×32 canvas.`,
    };
  }
  // An RGB VAE (Stable Diffusion's) has no canvas to crop; a digit VAE of another size is taken as filled.
  const s = vae.sampleSize;
  return { canvas: centredCanvas(s, s, s), note: vae.inChannels === 1 ? `${file} not found: assuming the data fills the VAE's ${s}×${s} canvas.` : undefined };
}

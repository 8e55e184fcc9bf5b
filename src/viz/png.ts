/**
 * Image grids as PNG files (pngjs), and reading a PNG file.
 *
 *   await saveImageGrid('out/samples.png', images, { cols: 8, scale: 2, rowLabels: ['0', '1'] });
 *   const { width, height, data } = readPng('digit.png');  // RGBA, 8 bits per channel
 *
 * `images` is a tf tensor [N, H, W, C] / [N, H, W] or an array of FloatImage (HWC, 1 or 3 channels),
 * values in [0, 1]; anything outside is clipped for display. Cells are laid out row by row.
 */
import fs from 'node:fs';
import { PNG } from 'pngjs';
import type * as tf from '@tensorflow/tfjs';
import { UsageError } from '../util/errors.ts';
import { writeFileAtomic } from '../util/fs.ts';
import { oneLine } from '../util/json.ts';
import { Raster, textWidth, GLYPH_HEIGHT, type FloatImage, type RGB } from './raster.ts';

export type ImagesInput = readonly FloatImage[] | tf.Tensor;

export interface GridOptions {
  /** Number of rows; default ceil(N / cols). */
  rows?: number;
  /** Number of columns; default ceil(sqrt(N)) (or N / rows when rows is given). */
  cols?: number;
  /** Pixels between cells and around the border (before scaling is not applied to pad). Default 2. */
  pad?: number;
  /** Each image pixel becomes scale x scale output pixels. Default 1. */
  scale?: number;
  /** One label per row, drawn to the left. */
  rowLabels?: readonly string[];
  /** One label per column, drawn above. */
  colLabels?: readonly string[];
  /** A line of text above everything. */
  title?: string;
  /** Extra gap after every `groupRows` rows, to set blocks of rows apart. */
  groupRows?: number;
  /** Font pixel size; default 2 when scale >= 2, else 1. */
  fontScale?: number;
  background?: RGB;
  textColor?: RGB;
}

/** Converts the accepted image inputs to a list of FloatImage. */
export function toFloatImages(images: ImagesInput): FloatImage[] {
  if (Array.isArray(images)) return images as FloatImage[];
  const t = images as tf.Tensor;
  const shape = t.shape;
  if (shape.length !== 3 && shape.length !== 4) throw new Error(`images: expected a tensor [N, H, W] or [N, H, W, C], got [${shape.join(', ')}].`);
  const [n, h, w] = shape as [number, number, number];
  const c = shape.length === 4 ? shape[3] : 1;
  if (c !== 1 && c !== 3) throw new Error(`images: expected 1 or 3 channels, got ${c}.`);
  const data = t.dataSync() as Float32Array;
  const per = h * w * c;
  return Array.from({ length: n }, (_, i) => ({ data: data.subarray(i * per, (i + 1) * per), height: h, width: w, channels: c as 1 | 3 }));
}

export interface GridLayout {
  width: number;
  height: number;
  rows: number;
  cols: number;
  cellWidth: number;
  cellHeight: number;
  /** Top-left pixel of cell (r, c). */
  cell(r: number, c: number): { x: number; y: number };
}

/** Where everything goes in a grid of `n` images of size h x w (exported so tests can find cells). */
export function gridLayout(n: number, h: number, w: number, opts: GridOptions = {}): GridLayout {
  const pad = opts.pad ?? 2;
  const scale = opts.scale ?? 1;
  const fontScale = opts.fontScale ?? (scale >= 2 ? 2 : 1);
  let cols = opts.cols ?? (opts.rows ? Math.ceil(n / opts.rows) : Math.ceil(Math.sqrt(n)));
  cols = Math.max(1, cols);
  const rows = Math.max(1, opts.rows ?? Math.ceil(n / cols));
  const cellWidth = w * scale;
  const cellHeight = h * scale;
  const lineH = GLYPH_HEIGHT * fontScale + pad + 2;
  const left = opts.rowLabels?.length ? Math.max(...opts.rowLabels.map((s) => textWidth(s, fontScale))) + 2 * pad + 2 : 0;
  const top = (opts.title ? lineH : 0) + (opts.colLabels?.length ? lineH : 0);
  const group = opts.groupRows && opts.groupRows > 0 ? opts.groupRows : 0;
  const groupGap = group ? Math.max(2 * pad, 4) : 0;
  const nGaps = group ? Math.floor((rows - 1) / group) : 0;
  const width = left + pad + cols * (cellWidth + pad);
  const height = top + pad + rows * (cellHeight + pad) + nGaps * groupGap;
  return {
    width,
    height,
    rows,
    cols,
    cellWidth,
    cellHeight,
    cell: (r, c) => ({
      x: left + pad + c * (cellWidth + pad),
      y: top + pad + r * (cellHeight + pad) + (group ? Math.floor(r / group) * groupGap : 0),
    }),
  };
}

/** Draws a grid of images (and labels) into a Raster. */
export function renderGrid(images: ImagesInput, opts: GridOptions = {}): Raster {
  const list = toFloatImages(images);
  if (list.length === 0) throw new Error('renderGrid: no images to draw.');
  const { height: h, width: w } = list[0];
  const layout = gridLayout(list.length, h, w, opts);
  const fontScale = opts.fontScale ?? ((opts.scale ?? 1) >= 2 ? 2 : 1);
  const pad = opts.pad ?? 2;
  const bg = opts.background ?? [40, 40, 40];
  const fg = opts.textColor ?? [235, 235, 235];
  const raster = new Raster(layout.width, layout.height, bg);
  const lineH = GLYPH_HEIGHT * fontScale + pad + 2;
  if (opts.title) raster.text(pad + 1, pad + 1, opts.title, fg, fontScale);
  list.forEach((img, i) => {
    const r = Math.floor(i / layout.cols);
    const c = i % layout.cols;
    if (r >= layout.rows) return;
    if (img.height !== h || img.width !== w) throw new Error(`renderGrid: image ${i} is ${img.height}x${img.width}, expected ${h}x${w} like the first.`);
    const { x, y } = layout.cell(r, c);
    raster.drawImage(x, y, img, opts.scale ?? 1);
  });
  opts.colLabels?.forEach((label, c) => {
    if (c >= layout.cols) return;
    const { x } = layout.cell(0, c);
    const tw = textWidth(label, fontScale);
    raster.text(x + Math.max(0, (layout.cellWidth - tw) / 2), (opts.title ? lineH : 0) + pad + 1, label, fg, fontScale);
  });
  opts.rowLabels?.forEach((label, r) => {
    if (r >= layout.rows) return;
    const { y } = layout.cell(r, 0);
    raster.text(pad + 1, y + Math.max(0, (layout.cellHeight - GLYPH_HEIGHT * fontScale) / 2), label, fg, fontScale);
  });
  return raster;
}

/** Encodes a Raster as PNG bytes. */
export function encodePng(raster: Raster): Buffer {
  const png = new PNG({ width: raster.width, height: raster.height });
  png.data = Buffer.from(raster.data.buffer, raster.data.byteOffset, raster.data.byteLength);
  return PNG.sync.write(png);
}

/**
 * Decodes a PNG file to RGBA (8 bits per channel, whatever the file's depth and colour type).
 * One UsageError line naming the file when it cannot be read or is not a valid PNG. The file is
 * read first and decoded second, so a decoder error is never reported as a file-system one
 * (pngjs's internal asserts carry an error code too).
 */
export function readPng(file: string): { width: number; height: number; data: Buffer } {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (err) {
    throw new UsageError(`${file}: cannot read PNG (${(err as NodeJS.ErrnoException).code ?? String(err)}).`);
  }
  try {
    const png = PNG.sync.read(bytes);
    return { width: png.width, height: png.height, data: png.data };
  } catch (err) {
    throw new UsageError(`${file}: not a valid PNG (${oneLine((err as Error).message || String(err))}).`);
  }
}

/** Writes a Raster to a PNG file (atomically). */
export async function savePng(file: string, raster: Raster): Promise<void> {
  await writeFileAtomic(file, encodePng(raster));
}

/** Draws `images` as a grid and writes it to `file` as PNG (atomically). Returns the layout. */
export async function saveImageGrid(file: string, images: ImagesInput, opts: GridOptions = {}): Promise<GridLayout> {
  const list = toFloatImages(images);
  await savePng(file, renderGrid(list, opts));
  return gridLayout(list.length, list[0].height, list[0].width, opts);
}

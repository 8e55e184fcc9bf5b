/**
 * Image grids as PNG files (pngjs). Reading PNGs (within sdlab's size limits) is src/io/png.ts.
 *
 *   await saveImageGrid('out/samples.png', images, { cols: 8, scale: 2, rowLabels: ['0', '1'] });
 *
 * `images` is a tf tensor [N, H, W, C] / [N, H, W] or an array of FloatImage (HWC, 1 or 3 channels),
 * values in [0, 1]; anything outside is clipped for display. Cells are laid out row by row.
 *
 * Text chunks: `savePng(file, raster, { text: { parameters: '...' } })` stores each entry as a
 * tEXt chunk (Latin-1, as PIL writes it) or, when the text is not Latin-1, an uncompressed iTXt
 * chunk (UTF-8), right after IHDR — where A1111 / PIL put their `parameters`. Read them back with
 * src/io/png.ts readPngText.
 */
import { PNG } from 'pngjs';
import type * as tf from '@tensorflow/tfjs';
import { writeFileAtomic } from '../util/fs.ts';
import { crc32 } from '../util/crc32.ts';
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

export interface PngWriteOptions {
  /** keyword → text, written as tEXt (Latin-1) or iTXt (UTF-8) chunks after IHDR. */
  text?: Readonly<Record<string, string>>;
}

const LATIN1 = /^[\x00-\xff]*$/;

/** One PNG chunk: length, type, data, CRC over type + data. */
function pngChunk(type: string, data: Buffer): Buffer {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'latin1');
  data.copy(out, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

/** A tEXt chunk (Latin-1 text) or, for other text, an uncompressed iTXt chunk (UTF-8). */
export function textChunk(keyword: string, text: string): Buffer {
  // The PNG spec: 1–79 Latin-1 printable characters, no leading/trailing/double spaces.
  if (!/^[\x20-\x7e\xa1-\xff]{1,79}$/.test(keyword) || /^ | $|  /.test(keyword)) throw new Error(`PNG text keyword ${JSON.stringify(keyword)}: expected 1-79 printable Latin-1 characters.`);
  const key = Buffer.from(keyword, 'latin1');
  if (LATIN1.test(text) && !text.includes('\0')) return pngChunk('tEXt', Buffer.concat([key, Buffer.from([0]), Buffer.from(text, 'latin1')]));
  // iTXt: keyword, 0, compression flag 0, method 0, empty language tag + 0, empty translated keyword + 0, UTF-8 text.
  return pngChunk('iTXt', Buffer.concat([key, Buffer.from([0, 0, 0, 0, 0]), Buffer.from(text, 'utf8')]));
}

/** Encodes a Raster as PNG bytes (with `text` chunks after IHDR). */
export function encodePng(raster: Raster, opts: PngWriteOptions = {}): Buffer {
  const png = new PNG({ width: raster.width, height: raster.height });
  png.data = Buffer.from(raster.data.buffer, raster.data.byteOffset, raster.data.byteLength);
  const bytes = PNG.sync.write(png);
  const entries = Object.entries(opts.text ?? {});
  if (entries.length === 0) return bytes;
  // Signature (8) + IHDR (12 + 13) come first in every PNG pngjs writes.
  const ihdrEnd = 8 + 12 + bytes.readUInt32BE(8);
  return Buffer.concat([bytes.subarray(0, ihdrEnd), ...entries.map(([k, v]) => textChunk(k, v)), bytes.subarray(ihdrEnd)]);
}

/** Writes a Raster to a PNG file (atomically), with optional text chunks. */
export async function savePng(file: string, raster: Raster, opts: PngWriteOptions = {}): Promise<void> {
  await writeFileAtomic(file, encodePng(raster, opts));
}

/** Draws `images` as a grid and writes it to `file` as PNG (atomically). Returns the layout. */
export async function saveImageGrid(file: string, images: ImagesInput, opts: GridOptions = {}): Promise<GridLayout> {
  const list = toFloatImages(images);
  await savePng(file, renderGrid(list, opts));
  return gridLayout(list.length, list[0].height, list[0].width, opts);
}

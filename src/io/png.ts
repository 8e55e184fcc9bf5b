/**
 * Reading PNG files within sdlab's size limits (util/limits.ts): the header first, so a small
 * file cannot make sdlab allocate without end, then the pixels (pngjs) as 8-bit RGBA.
 *
 *   readPngSize('digit.png')  →  { width: 28, height: 28, bitsPerPixel: 8, interlaced: false }
 *   readPng('digit.png')      →  { width, height, data: RGBA bytes }
 *
 * Float pixels for the models (luma, alpha) are src/data/png.ts readPngImage; writing PNGs is
 * src/viz/png.ts.
 */
import fs from 'node:fs';
import zlib from 'node:zlib';
import { PNG } from 'pngjs';
import { UsageError } from '../util/errors.ts';
import { checkRegularFile } from '../util/fs.ts';
import { MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, MAX_PNG_BYTES } from '../util/limits.ts';

/** What a PNG's IHDR chunk says. */
export interface PngHeader {
  width: number;
  height: number;
  /** Bits per pixel of the stored rows (bit depth × channels). */
  bitsPerPixel: number;
  interlaced: boolean;
}

const PNG_SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
const PNG_CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

/** The IHDR of PNG bytes (signature, then IHDR as the first chunk: 33 bytes), or null when they are no PNG. */
export function readPngHeader(bytes: Uint8Array): PngHeader | null {
  if (bytes.length < 33 || PNG_SIGNATURE.some((v, i) => bytes[i] !== v)) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (String.fromCharCode(...bytes.subarray(12, 16)) !== 'IHDR') return null;
  const channels = PNG_CHANNELS[bytes[25]] ?? 4;
  return { width: view.getUint32(16), height: view.getUint32(20), bitsPerPixel: bytes[24] * channels, interlaced: bytes[28] !== 0 };
}

/**
 * The header of a PNG file, checked against sdlab's limits (util/limits.ts) without decoding
 * anything: a regular file of at most MAX_PNG_BYTES, a PNG signature and IHDR, and a width and
 * height within MAX_IMAGE_SIDE and MAX_IMAGE_PIXELS — a 3 MB file can claim 30000 × 30000 pixels
 * (3.6 GB decoded). Throws one UsageError naming the file.
 */
export function readPngSize(file: string): PngHeader {
  const fail = (why: string): never => {
    throw new UsageError(`${file}: ${why}.`);
  };
  checkRegularFile(file, 'a PNG image'); // a FIFO would block the read below forever
  let head: Buffer;
  try {
    const stat = fs.statSync(file);
    if (stat.size > MAX_PNG_BYTES) fail(`${stat.size} bytes, over sdlab's limit of ${MAX_PNG_BYTES} bytes for a PNG`);
    const fd = fs.openSync(file, 'r');
    try {
      head = Buffer.alloc(33);
      head = head.subarray(0, fs.readSync(fd, head, 0, 33, 0));
    } finally {
      fs.closeSync(fd);
    }
  } catch (err) {
    if (err instanceof UsageError) throw err;
    return fail(`cannot read PNG (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  const header = readPngHeader(head);
  if (!header) return fail('cannot read PNG (no PNG signature and IHDR header: not a PNG image)');
  const { width, height } = header;
  if (width < 1 || height < 1) fail(`the PNG header says ${width}×${height} pixels`);
  if (width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE || width * height > MAX_IMAGE_PIXELS) {
    fail(`${width}×${height} pixels, over sdlab's limit of ${MAX_IMAGE_SIDE} px a side and ${MAX_IMAGE_PIXELS / 2 ** 20} Mpx`);
  }
  return header;
}

/**
 * Reads a PNG file as RGBA, 8 bits per channel, after readPngSize's checks. pngjs bounds the
 * inflated data by the header's size except for interlaced images, whose compressed data is
 * therefore inflated once here with that bound first (a zlib bomb fails before it expands).
 * Every failure is one UsageError naming the file.
 */
export function readPng(file: string): { width: number; height: number; data: Buffer } {
  const fail = (why: string): never => {
    throw new UsageError(`${file}: ${why}.`);
  };
  const header = readPngSize(file);
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (err) {
    return fail(`cannot read PNG (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  if (header.interlaced) checkInflatedSize(bytes, header, fail);
  try {
    return PNG.sync.read(bytes);
  } catch (err) {
    return fail(`cannot read PNG (invalid: ${(err as Error).message.split('\n')[0]})`);
  }
}

/** Inflates the IDAT data of an interlaced PNG with a cap: a zlib bomb fails before it expands. */
function checkInflatedSize(bytes: Buffer, h: PngHeader, fail: (why: string) => never): void {
  const parts: Buffer[] = [];
  for (let o = 8; o + 8 <= bytes.length; ) {
    const len = bytes.readUInt32BE(o);
    const type = bytes.toString('latin1', o + 4, o + 8);
    if (type === 'IDAT') parts.push(bytes.subarray(o + 8, Math.min(bytes.length, o + 8 + len)));
    if (type === 'IEND') break;
    o += 12 + len;
  }
  // Adam7's seven passes store at most every row once more (filter bytes, partial bytes): 2× the plain size bounds it.
  const limit = 2 * (Math.ceil((h.width * h.bitsPerPixel) / 8) + 1) * h.height + 1024;
  try {
    zlib.inflateSync(Buffer.concat(parts), { maxOutputLength: limit });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE' || err instanceof RangeError) fail(`the compressed image data inflates beyond the ${limit} bytes its ${h.width}×${h.height} header allows`);
    // Other zlib errors: pngjs reports them (one line) when it decodes.
  }
}

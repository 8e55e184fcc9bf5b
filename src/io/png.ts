/**
 * Reading PNG files within sdlab's size limits (util/limits.ts): the header first, so a small
 * file cannot make sdlab allocate without end, then the pixels (pngjs) as 8-bit RGBA.
 *
 *   readPngSize('digit.png')  →  { width: 28, height: 28, bitsPerPixel: 8, interlaced: false }
 *   readPng('digit.png')      →  { width, height, data: RGBA bytes }
 *   readPngText('0000.png')   →  Map { 'parameters' => 'a cat\nSteps: 20, ...' }   (tEXt/zTXt/iTXt)
 *
 * Float pixels for the models (luma, alpha) are src/data/png.ts readPngImage; writing PNGs is
 * src/viz/png.ts.
 */
import fs from 'node:fs';
import zlib from 'node:zlib';
import { PNG } from 'pngjs';
import { UsageError } from '../util/errors.ts';
import { checkRegularFile } from '../util/fs.ts';
import { crc32 } from '../util/crc32.ts';
import { MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, MAX_PNG_BYTES, MAX_PNG_TEXT_BYTES } from '../util/limits.ts';

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

/**
 * The text chunks of a PNG file (after readPngSize's checks): keyword → text for every tEXt
 * (Latin-1), zTXt (Latin-1, deflated) and iTXt (UTF-8, deflated or not) chunk; the first chunk
 * of a keyword wins. Every chunk must lie within the file and text chunks must carry the right
 * CRC; text, compressed or not, is at most MAX_PNG_TEXT_BYTES. Failures: one UsageError naming
 * the file.
 */
export function readPngText(file: string): Map<string, string> {
  const fail = (why: string): never => {
    throw new UsageError(`${file}: ${why}.`);
  };
  readPngSize(file);
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (err) {
    return fail(`cannot read PNG (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  const out = new Map<string, string>();
  const inflate = (data: Buffer, type: string): Buffer => {
    try {
      return zlib.inflateSync(data, { maxOutputLength: MAX_PNG_TEXT_BYTES });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE' || err instanceof RangeError) return fail(`a ${type} chunk inflates beyond sdlab's limit of ${MAX_PNG_TEXT_BYTES} bytes`);
      return fail(`a ${type} chunk holds damaged compressed text (${(err as Error).message})`);
    }
  };
  for (let o = 8; ; ) {
    if (o + 12 > bytes.length) return fail('the PNG ends without an IEND chunk (truncated)');
    const len = bytes.readUInt32BE(o);
    const type = bytes.toString('latin1', o + 4, o + 8);
    if (len > bytes.length - o - 12) return fail(`the ${JSON.stringify(type)} chunk at byte ${o} says ${len} bytes, past the end of the file (truncated)`);
    if (type === 'IEND') break;
    if (type === 'tEXt' || type === 'zTXt' || type === 'iTXt') {
      if (len > MAX_PNG_TEXT_BYTES) fail(`a ${type} chunk of ${len} bytes, over sdlab's limit of ${MAX_PNG_TEXT_BYTES} bytes for text`);
      const data = bytes.subarray(o + 8, o + 8 + len);
      if (crc32(bytes.subarray(o + 4, o + 8 + len)) !== bytes.readUInt32BE(o + 8 + len)) fail(`the ${type} chunk at byte ${o} has a bad CRC (the file is damaged)`);
      const nul = data.indexOf(0);
      if (nul < 1 || nul > 79) fail(`the ${type} chunk at byte ${o} has no valid keyword`);
      const keyword = data.toString('latin1', 0, nul);
      let text: string;
      if (type === 'tEXt') text = data.toString('latin1', nul + 1);
      else if (type === 'zTXt') {
        if (data[nul + 1] !== 0) fail(`the zTXt chunk "${keyword}" uses compression method ${data[nul + 1]} (PNG knows only 0, deflate)`);
        text = inflate(data.subarray(nul + 2), type).toString('latin1');
      } else {
        const [flag, method] = [data[nul + 1], data[nul + 2]];
        const lang = data.indexOf(0, nul + 3);
        const translated = lang < 0 ? -1 : data.indexOf(0, lang + 1);
        if (flag === undefined || (flag !== 0 && flag !== 1) || translated < 0) fail(`the iTXt chunk "${keyword}" is malformed`);
        if (flag === 1 && method !== 0) fail(`the iTXt chunk "${keyword}" uses compression method ${method} (PNG knows only 0, deflate)`);
        const body = data.subarray(translated + 1);
        text = (flag === 1 ? inflate(body, type) : body).toString('utf8');
      }
      if (!out.has(keyword)) out.set(keyword, text);
    }
    o += 12 + len;
  }
  return out;
}

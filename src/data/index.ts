/**
 * Datasets for sdlab: load images, split them, pad them, batch them.
 *
 *   const ds = loadDataset({ data: opts.data });              // embedded MNIST, IDX files or an image folder
 *   const { train, val } = splitDataset(ds, { valFraction: 0.1, seed: 0 });
 *   for (const b of batches(padDataset(train, 32), { batchSize: 64, seed: 0, epoch })) {
 *     // b.images: tf.Tensor4D [B, 32, 32, 1], b.labels: tf.Tensor1D int32 [B]
 *     ...; b.images.dispose(); b.labels.dispose();
 *   }
 *
 * Everything random takes a seed, so the same --seed gives the same split and batch order.
 * What a caption of an example is: ./captioning.ts; the `--data` conventions: ./source.ts.
 */
import * as tf from '@tensorflow/tfjs';
import { UsageError, check } from '../util/errors.ts';
import { Random } from '../util/random.ts';
import { loadEmbeddedMnist } from './mnist.ts';
import { loadIdxDataset } from './idx.ts';
import { loadImageFolder } from './folder.ts';
import { checkDataset, directoryKind, readClassesFile, withClassNames, CLASSES_FILE } from './source.ts';
import type { Dataset } from './types.ts';
import { toSigned } from './pixels.ts';
import { centredCanvas, padPixels } from './canvas.ts';

export type { Dataset } from './types.ts';
export { loadEmbeddedMnist } from './mnist.ts';
export { loadIdxDataset, readIdxFile, parseIdx, findIdxFile, FASHION_MNIST_CLASSES, KNOWN_IDX_LABELS } from './idx.ts';
export { loadImageFolder, METADATA_FILE } from './folder.ts';
export { datasetFromTf, isTfDataset, type TfDataset } from './tfdata.ts';
export { datasetFingerprint, directoryKind, readClassesFile, withClassNames, checkClassNames, CLASSES_FILE, type DirectoryKind } from './source.ts';
export { readRunClasses, writeRunClasses, runClassesOf, RUN_CLASSES_FILE, type RunClasses } from './run_classes.ts';
export { captionKind, captionOf, classPrompts, classLabels, classPrompt, captionVocabulary, checkCaptionable, CLASS_TEMPLATES, type CaptionKind } from './captioning.ts';
export * from './canvas.ts';

export interface LoadOptions {
  /**
   * A directory (`--data DIR`): IDX files, DIR/<label>/*.png folders, or a metadata.jsonl beside
   * PNGs; undefined, '' or 'mnist' means the embedded MNIST digits.
   */
  data?: string;
  /** For IDX directories: 'train' (train-*) or 'test' (t10k-*). Ignored for the embedded set and for image folders (one split; splitDataset holds out the validation part). */
  split?: 'train' | 'test';
  /** Keep only the first `limit` examples (directories only; the embedded set is small already). */
  limit?: number;
  /** Class names for labelled data without them (IDX files, the embedded digits, an in-memory dataset): label 0 first. */
  classes?: readonly string[];
  /** An in-memory dataset instead of `data` (the library API; a tf.data.Dataset goes through datasetFromTf first). */
  dataset?: Dataset;
}

/**
 * The `--data` convention: no value means the embedded MNIST digits, otherwise a directory of
 * IDX files or of images (./folder.ts); then the class names (./source.ts says which win).
 */
export function loadDataset(opts: LoadOptions = {}): Dataset {
  const dir = opts.data === undefined || opts.data === '' || opts.data === 'mnist' ? undefined : opts.data;
  if (opts.dataset && dir !== undefined) throw new UsageError('data and dataset: pass one of them (a directory, or an in-memory dataset).');
  let ds: Dataset;
  let fromFolder = false;
  if (opts.dataset) {
    checkDataset(opts.dataset);
    ds = opts.dataset;
  } else if (dir === undefined) {
    ds = loadEmbeddedMnist();
  } else if (directoryKind(dir) === 'idx') {
    ds = loadIdxDataset(dir, { split: opts.split, limit: opts.limit });
  } else {
    ds = loadImageFolder(dir)!;
    fromFolder = true;
    if (opts.limit !== undefined && opts.limit < ds.n) ds = subset(ds, Int32Array.from({ length: opts.limit }, (_, i) => i));
  }
  if (opts.classes !== undefined) {
    if (fromFolder || ds.captions) {
      throw new UsageError(`--classes: ${dir ?? 'this dataset'} names its classes itself (${fromFolder ? 'the label folder names or the metadata.jsonl texts' : 'its texts'}); drop --classes.`);
    }
    return withClassNames(ds, opts.classes, '--classes');
  }
  if (dir !== undefined && !fromFolder) {
    const names = readClassesFile(dir);
    if (names) return withClassNames(ds, names, `${dir}/${CLASSES_FILE}`);
  }
  return ds;
}

/** The pixels of image `i` (a view, not a copy). */
export function imageAt(ds: Dataset, i: number): Float32Array {
  const px = ds.height * ds.width;
  return ds.images.subarray(i * px, (i + 1) * px);
}

/** A new dataset holding the examples at `indices`, in that order. */
export function subset(ds: Dataset, indices: ArrayLike<number>): Dataset {
  const px = ds.height * ds.width;
  const images = new Float32Array(indices.length * px);
  const labels = ds.labels instanceof Int32Array ? new Int32Array(indices.length) : new Uint8Array(indices.length);
  for (let k = 0; k < indices.length; k++) {
    const i = indices[k];
    check(Number.isInteger(i) && i >= 0 && i < ds.n, `subset: index ${i} out of range [0, ${ds.n}).`);
    images.set(ds.images.subarray(i * px, (i + 1) * px), k * px);
    labels[k] = ds.labels[i];
  }
  return { images, labels, n: indices.length, height: ds.height, width: ds.width, ...captionFields(ds, indices) };
}

/** The source, class names and (picked by `indices`) captions a derived dataset keeps; absent fields stay absent. */
function captionFields(ds: Dataset, indices?: ArrayLike<number>): Pick<Dataset, 'source' | 'classNames' | 'captions'> {
  const out: Pick<Dataset, 'source' | 'classNames' | 'captions'> = { source: ds.source };
  if (ds.classNames) out.classNames = ds.classNames;
  if (ds.captions) out.captions = indices ? Array.from(indices, (i) => ds.captions![i]) : ds.captions;
  return out;
}

export interface SplitOptions {
  /** Fraction of examples held out for validation, in [0, 1). Default 0.1. */
  valFraction?: number;
  seed?: number;
}

/** A seeded random train/validation split: the same seed always gives the same two sets. */
export function splitDataset(ds: Dataset, opts: SplitOptions = {}): { train: Dataset; val: Dataset } {
  const valFraction = opts.valFraction ?? 0.1;
  check(valFraction >= 0 && valFraction < 1, `valFraction: expected a number in [0, 1), got ${valFraction}.`);
  const perm = new Random(opts.seed ?? 0).permutation(ds.n);
  const nVal = Math.round(ds.n * valFraction);
  return { val: subset(ds, perm.subarray(0, nVal)), train: subset(ds, perm.subarray(nVal)) };
}

/** Pads every image with `value` to size x size, centred (28x28 -> 32x32 gives 2 pixels each side): canvas.ts's padPixels. */
export function padDataset(ds: Dataset, size = 32, value = 0): Dataset {
  check(size >= ds.height && size >= ds.width, `pad: cannot pad ${ds.height}x${ds.width} images to ${size}x${size}.`);
  if (size === ds.height && size === ds.width) return ds;
  const c = centredCanvas(ds.height, ds.width, size);
  const px = ds.height * ds.width;
  const out = new Float32Array(ds.n * size * size);
  for (let i = 0; i < ds.n; i++) out.set(padPixels(ds.images.subarray(i * px, (i + 1) * px), ds.height, ds.width, c, { fill: value }), i * size * size);
  return { images: out, labels: ds.labels, n: ds.n, height: size, width: size, ...captionFields(ds) };
}

/** How many examples of each label (index = label). */
export function classCounts(ds: Dataset): number[] {
  const counts: number[] = [];
  for (const l of ds.labels) counts[l] = (counts[l] ?? 0) + 1;
  for (let i = 0; i < counts.length; i++) counts[i] ??= 0;
  return counts;
}

export interface BatchOptions {
  batchSize: number;
  /** Shuffle the order each epoch (seeded by seed and epoch). Default true. */
  shuffle?: boolean;
  seed?: number;
  /** Epoch number: a different, reproducible order per epoch. Default 0. */
  epoch?: number;
  /** Drop the last batch if it is smaller than batchSize. Default false. */
  dropRemainder?: boolean;
  /** Pixel range of the image tensors: 'unit' is [0, 1] as stored, 'signed' maps to [-1, 1] (diffusion). Default 'unit'. */
  range?: 'unit' | 'signed';
}

export interface Batch {
  /** [B, H, W, 1] float32 (NHWC). The caller disposes it. */
  images: tf.Tensor4D;
  /** [B] int32. The caller disposes it. */
  labels: tf.Tensor1D;
  /** Which dataset examples are in this batch (e.g. to make captions for them). */
  indices: Int32Array;
}

/** The example order `batches` uses for a given seed and epoch. */
export function epochOrder(n: number, opts: { shuffle?: boolean; seed?: number; epoch?: number } = {}): Int32Array {
  if (opts.shuffle === false) return Int32Array.from({ length: n }, (_, i) => i);
  return new Random(`${opts.seed ?? 0}/epoch ${opts.epoch ?? 0}`).permutation(n);
}

/** Iterates over one epoch in batches of tf tensors. */
export function* batches(ds: Dataset, opts: BatchOptions): Generator<Batch> {
  const { batchSize } = opts;
  check(Number.isInteger(batchSize) && batchSize > 0, `batchSize: expected a positive integer, got ${batchSize}.`);
  const order = epochOrder(ds.n, opts);
  const px = ds.height * ds.width;
  const signed = opts.range === 'signed';
  for (let start = 0; start < ds.n; start += batchSize) {
    const idx = order.subarray(start, Math.min(ds.n, start + batchSize));
    if (idx.length < batchSize && opts.dropRemainder) break;
    const buf = new Float32Array(idx.length * px);
    const lab = new Int32Array(idx.length);
    for (let k = 0; k < idx.length; k++) {
      const i = idx[k];
      const img = ds.images.subarray(i * px, (i + 1) * px);
      if (signed) for (let p = 0; p < px; p++) buf[k * px + p] = toSigned(img[p]);
      else buf.set(img, k * px);
      lab[k] = ds.labels[i];
    }
    yield {
      images: tf.tensor4d(buf, [idx.length, ds.height, ds.width, 1]),
      labels: tf.tensor1d(lab, 'int32'),
      indices: Int32Array.from(idx),
    };
  }
}

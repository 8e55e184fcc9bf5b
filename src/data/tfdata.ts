/**
 * A tf.data.Dataset (@tensorflow/tfjs-data, also `tf.data` in @tensorflow/tfjs) as an sdlab
 * Dataset, for the library API: `trainAll({ ..., dataset: tf.data.array(elements) })`.
 *
 * Each element is one example, an object with
 *   image  (or xs)   a tf.Tensor or nested number array: [H, W], [H, W, 1] or [H, W, 3]
 *                    (RGB → grayscale by the Rec. 601 luma, as for PNGs); float32 values in
 *                    [0, 1], or int32 values 0..255 (divided by 255)
 *   label  (or ys)   an integer >= 0 (a number or a scalar tensor, or a one-hot vector tensor)
 *   text             a caption (string), instead of a label: same text = same class
 * Every element has a label, or every element a text; all images the same size. The dataset is
 * read once, in its order, into memory (unbatched: don't call .batch()); the tensors stay the
 * caller's (not disposed here). A bad element stops with one line naming its index.
 */
import * as tf from '@tensorflow/tfjs';
import type { Dataset as TfDataset } from '@tensorflow/tfjs-data';
import { UsageError } from '../util/errors.ts';
import { luma } from './pixels.ts';
import type { Dataset } from './types.ts';

export type { TfDataset };

/** Whether `x` looks like a tf.data.Dataset (duck-typed: several copies of tfjs-data may be loaded). */
export function isTfDataset(x: unknown): x is TfDataset<tf.TensorContainer> {
  return typeof x === 'object' && x !== null && typeof (x as { iterator?: unknown }).iterator === 'function' && !('images' in x);
}

/** Reads a value that is a tensor or a nested array as [data, shape, dtype]. */
function tensorData(v: unknown): { data: Float32Array | Int32Array; shape: number[]; dtype: string } | null {
  if (v instanceof tf.Tensor) return { data: v.dataSync() as Float32Array | Int32Array, shape: v.shape, dtype: v.dtype };
  if (Array.isArray(v) || ArrayBuffer.isView(v)) {
    try {
      const t = tf.tensor(v as number[]);
      const out = { data: t.dataSync() as Float32Array, shape: t.shape, dtype: 'float32' };
      t.dispose();
      return out;
    } catch {
      return null;
    }
  }
  return null;
}

/** The pixels of one element's image, grayscale in [0, 1]. */
function elementImage(v: unknown, where: string): { data: Float32Array; height: number; width: number } {
  const t = tensorData(v);
  const expected = 'expected one image [H, W], [H, W, 1] or [H, W, 3] (a tf.Tensor or nested array; pass the dataset unbatched)';
  if (!t) throw new UsageError(`${where}: "image" is missing or not a tensor / number array; ${expected}.`);
  const { shape } = t;
  const channels = shape.length === 2 ? 1 : shape.length === 3 ? shape[2] : 0;
  if (!(channels === 1 || channels === 3) || shape[0] < 1 || shape[1] < 1) throw new UsageError(`${where}: image of shape [${shape.join(', ')}]; ${expected}.`);
  const bytes = t.dtype === 'int32';
  const [height, width] = shape as [number, number];
  const out = new Float32Array(height * width);
  for (let p = 0; p < height * width; p++) {
    for (let c = 0; c < channels; c++) {
      const v = t.data[p * channels + c];
      if (!(bytes ? v >= 0 && v <= 255 : v >= 0 && v <= 1)) {
        throw new UsageError(`${where}: pixel value ${v} outside ${bytes ? '0..255 (int32)' : '[0, 1] (float32; divide 8-bit pixels by 255)'}.`);
      }
    }
    const px = (c: number) => t.data[p * channels + c] / (bytes ? 255 : 1);
    out[p] = channels === 1 ? px(0) : luma(px(0), px(1), px(2));
  }
  return { data: out, height, width };
}

/** One element's label: a non-negative integer, a scalar tensor holding one, or a one-hot vector. */
function elementLabel(v: unknown, where: string): number {
  let label = typeof v === 'number' ? v : NaN;
  if (v instanceof tf.Tensor) {
    const d: number[] = Array.from(v.dataSync());
    if (v.rank === 0 || (v.rank === 1 && v.size === 1)) label = d[0];
    else if (v.rank === 1 && d.filter((x) => x === 1).length === 1 && d.filter((x) => x !== 0).length === 1) label = d.indexOf(1); // one-hot
  }
  if (!Number.isInteger(label) || label < 0) {
    throw new UsageError(`${where}: "label" is ${v instanceof tf.Tensor ? `a tensor of shape [${v.shape.join(', ')}]` : JSON.stringify(v)}; expected an integer >= 0 (a number, a scalar tensor or a one-hot vector).`);
  }
  return label;
}

/** Reads a tf.data.Dataset of {image, label} or {image, text} elements into memory. */
export async function datasetFromTf(source: TfDataset<tf.TensorContainer>, name = 'tf.data.Dataset'): Promise<Dataset> {
  const it = await source.iterator();
  const images: Float32Array[] = [];
  const labels: number[] = [];
  const texts: string[] = [];
  let height = 0;
  let width = 0;
  for (let i = 0; ; i++) {
    const r = await it.next();
    if (r.done) break;
    const where = `${name} element ${i}`;
    const e = r.value as Record<string, unknown> | null;
    if (typeof e !== 'object' || e === null || e instanceof tf.Tensor || Array.isArray(e)) {
      throw new UsageError(`${where}: expected an object {image, label} or {image, text}.`);
    }
    const img = elementImage(e.image ?? e.xs, where);
    if (i === 0) ({ height, width } = img);
    else if (img.height !== height || img.width !== width) {
      throw new UsageError(`${where}: image is ${img.height}×${img.width}, but element 0 is ${height}×${width}; every image must have the same size.`);
    }
    images.push(img.data);
    const hasText = e.text !== undefined;
    const hasLabel = e.label !== undefined || e.ys !== undefined;
    if (hasText === hasLabel) throw new UsageError(`${where}: give either "label" (or ys) or "text", not ${hasText ? 'both' : 'neither'}.`);
    if (i > 0 && hasText !== texts.length > 0) throw new UsageError(`${where}: has a ${hasText ? 'text' : 'label'} but element 0 has a ${hasText ? 'label' : 'text'}; use one kind for every element.`);
    if (hasText) {
      if (typeof e.text !== 'string' || e.text.trim() === '') throw new UsageError(`${where}: "text" must be a non-empty string.`);
      texts.push(e.text.trim());
    } else {
      labels.push(elementLabel(e.label ?? e.ys, where));
    }
  }
  if (images.length === 0) throw new UsageError(`${name}: no elements.`);
  const px = height * width;
  const all = new Float32Array(images.length * px);
  images.forEach((img, i) => all.set(img, i * px));
  const base = { images: all, n: images.length, height, width, source: `${name} (${images.length} examples)` };
  if (texts.length) {
    const distinct = new Map<string, number>();
    for (const t of texts) if (!distinct.has(t)) distinct.set(t, distinct.size);
    return { ...base, labels: Int32Array.from(texts, (t) => distinct.get(t)!), classNames: [...distinct.keys()], captions: texts };
  }
  return { ...base, labels: labels.every((l) => l < 256) ? Uint8Array.from(labels) : Int32Array.from(labels) };
}

/**
 * The pieces of `--data` besides the readers themselves (loadDataset in ./index.ts puts them
 * together): what kind of directory DIR is, the class names of labelled data, and a fingerprint
 * of a loaded dataset (stored with a run, so a resume on other data is refused).
 *
 * Class names of IDX data and of the embedded digits, the first found wins:
 *   1. `classes` (the --classes flag: "t-shirt,trouser,pullover,...", label 0 first)
 *   2. DIR/classes.txt: one name per line, line 1 names label 0
 *   3. a known dataset's names, recognised by its labels file (./idx.ts KNOWN_IDX_LABELS:
 *      Fashion-MNIST) — a convenience; 1 and 2 are the rule
 *   none: the labels are digits and get digit captions.
 * Image folders name their classes themselves (folder names, metadata.jsonl texts), so a
 * `classes` list is refused for them.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { UsageError } from '../util/errors.ts';
import { METADATA_FILE, imageFolderLayout } from './folder.ts';
import type { Dataset } from './types.ts';

export const CLASSES_FILE = 'classes.txt';

/** IDX file names (train-images-idx3-ubyte, t10k-labels.idx1-ubyte.gz, ...). */
const IDX_NAME = /^(train|t10k)-(images|labels)[-.]idx[13]-ubyte(\.gz)?$/;

export type DirectoryKind = 'idx' | 'jsonl' | 'labels';

/** What `dir` holds: IDX files, a metadata.jsonl, or label folders (one line naming what was expected otherwise). */
export function directoryKind(dir: string): DirectoryKind {
  const expected = `expected IDX files (train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz]), a ${METADATA_FILE} beside PNG images, or one folder of PNGs per class (DIR/<label>/*.png)`;
  if (!fs.existsSync(dir)) throw new UsageError(`--data ${dir}: no such directory (${expected}).`);
  if (!fs.statSync(dir).isDirectory()) throw new UsageError(`--data ${dir}: not a directory (${expected}).`);
  if (fs.readdirSync(dir).some((f) => IDX_NAME.test(f))) return 'idx';
  const layout = imageFolderLayout(dir);
  if (layout) return layout;
  throw new UsageError(
    `--data ${dir}: holds none of the data sdlab reads: missing train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz] (IDX files), a ${METADATA_FILE} beside PNG images, or one folder of PNGs per class (DIR/<label>/*.png).`,
  );
}

/** Checks a list of class names (non-empty, distinct, one line each); `origin` names where it came from. */
export function checkClassNames(names: readonly string[], origin: string): string[] {
  if (names.length === 0) throw new UsageError(`${origin}: no class names; expected one name per label, label 0 first.`);
  const out = names.map((n) => n.trim());
  out.forEach((n, i) => {
    if (n === '' || /[\n\r]/.test(n)) throw new UsageError(`${origin}: name ${i + 1} is ${n === '' ? 'empty' : 'more than one line'}; expected one non-empty name per label.`);
    const j = out.indexOf(n);
    if (j < i) throw new UsageError(`${origin}: "${n}" is named twice (names ${j + 1} and ${i + 1}); each class needs its own name.`);
  });
  return out;
}

/** DIR/classes.txt as a list of names (null when there is none); an empty line inside it is refused. */
export function readClassesFile(dir: string): string[] | null {
  const file = path.join(dir, CLASSES_FILE);
  if (!fs.existsSync(file)) return null;
  const lines = fs.readFileSync(file, 'utf8').replace(/\r/g, '').split('\n');
  while (lines.length && lines[lines.length - 1].trim() === '') lines.pop(); // a trailing newline or two
  const empty = lines.findIndex((l) => l.trim() === '');
  if (empty >= 0) throw new UsageError(`${file}:${empty + 1}: empty line; expected one class name per line (line 1 names label 0).`);
  return checkClassNames(lines, file);
}

/** `ds` with class names from `names` (checked against its labels; `origin` names their source in errors). */
export function withClassNames(ds: Dataset, names: readonly string[], origin: string): Dataset {
  const checked = checkClassNames(names, origin);
  let max = -1;
  for (const l of ds.labels) if (l > max) max = l;
  if (max >= checked.length) {
    throw new UsageError(`${origin}: ${checked.length} class names, but the labels of ${ds.source ?? 'the data'} go up to ${max}; expected one name per label, label 0 first.`);
  }
  return { ...ds, classNames: checked };
}

/** Checks that an in-memory dataset's arrays agree with its n, height and width. */
export function checkDataset(ds: Dataset, what = 'dataset'): void {
  const ok = Number.isInteger(ds.n) && ds.n > 0 && Number.isInteger(ds.height) && ds.height > 0 && Number.isInteger(ds.width) && ds.width > 0;
  if (!ok || !(ds.images instanceof Float32Array) || ds.images.length !== ds.n * ds.height * ds.width) {
    throw new UsageError(`${what}: expected {images: Float32Array of n*height*width pixels in [0, 1], labels, n, height, width} with n, height, width > 0.`);
  }
  if (!ds.labels || ds.labels.length !== ds.n) throw new UsageError(`${what}: ${ds.labels?.length ?? 0} labels for ${ds.n} images; expected one label per image.`);
  if (ds.captions && ds.captions.length !== ds.n) throw new UsageError(`${what}: ${ds.captions.length} captions for ${ds.n} images; expected one caption per image.`);
}

const fingerprints = new WeakMap<Dataset, string>();

/**
 * sha256 (hex) of everything a model trained on `ds` sees: size, pixels, labels, class names and
 * captions. Stored with a run that is not on the default digits, so a resume on changed data is
 * refused instead of continuing on other examples.
 */
export function datasetFingerprint(ds: Dataset): string {
  let fp = fingerprints.get(ds);
  if (fp) return fp;
  const h = crypto.createHash('sha256');
  h.update(JSON.stringify({ n: ds.n, height: ds.height, width: ds.width, classNames: ds.classNames ?? null, captions: ds.captions ?? null }));
  h.update(new Uint8Array(ds.images.buffer, ds.images.byteOffset, ds.images.byteLength));
  h.update(new Uint8Array(Int32Array.from(ds.labels).buffer));
  fp = h.digest('hex');
  fingerprints.set(ds, fp);
  return fp;
}

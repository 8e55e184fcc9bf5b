/**
 * A folder of PNG images as a dataset, in the two layouts people already have:
 *
 *   DIR/<label>/*.png            one folder per class (torchvision's ImageFolder, Hugging Face's
 *                                imagefolder); the folder name is the class name, with '_' read
 *                                as a space (ankle_boot → "ankle boot"); captions are made from it
 *   DIR/metadata.jsonl + PNGs    Hugging Face imagefolder with captions: one JSON object per line,
 *                                {"file_name": "img/0001.png", "text": "a red circle"} (other keys
 *                                are ignored); the text is the image's caption
 *
 * Order (the split and every seeded shuffle start from it): label folders by name, files by name
 * (code-point order, the same on every machine); metadata.jsonl in line order. Labels: the
 * folder's index, or for metadata.jsonl the index of the text among the distinct texts in order
 * of first appearance (same text = same class).
 *
 * Images: PNG only (any colour type and bit depth), read as grayscale — RGB through the Rec. 601
 * luma, transparency onto black (src/data/png.ts) — since the models here have one channel.
 * Pixels are used as they are (no inversion). Every image must have the size of the first one;
 * nothing is resized. Hidden entries (".DS_Store", ".git") and, in the label layout, files
 * directly in DIR (README, classes.txt) are skipped. Anything else off — a non-PNG file in a
 * label folder, a folder inside one, a bad metadata.jsonl line, a missing or broken image, a
 * size that differs — stops with one line naming the file (and the metadata.jsonl line).
 */
import fs from 'node:fs';
import path from 'node:path';
import { UsageError } from '../util/errors.ts';
import { readPngImage } from './png.ts';
import type { Dataset } from './types.ts';
import { parseJson } from '../util/json.ts';

export const METADATA_FILE = 'metadata.jsonl';

const byCodePoint = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
const hidden = (name: string) => name.startsWith('.');
const isPng = (name: string) => /\.png$/i.test(name);

/** Which image-folder layout `dir` has, if any: metadata.jsonl wins, then label folders. */
export function imageFolderLayout(dir: string): 'jsonl' | 'labels' | null {
  if (fs.existsSync(path.join(dir, METADATA_FILE))) return 'jsonl';
  const subdirs = fs.readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory() && !hidden(e.name));
  return subdirs.length > 0 ? 'labels' : null;
}

/** Collects same-sized grayscale images into a Dataset. */
class ImageCollector {
  private readonly images: ArrayLike<number>[] = [];
  private first = '';
  private height = 0;
  private width = 0;

  /** Reads `file`; `where` prefixes errors (e.g. "DIR/metadata.jsonl:12: "). */
  add(file: string, where = ''): void {
    let img;
    try {
      img = readPngImage(file, 1);
    } catch (err) {
      if (err instanceof UsageError) throw new UsageError(`${where}${err.message}`);
      throw err;
    }
    if (this.images.length === 0) {
      this.first = file;
      this.height = img.height;
      this.width = img.width;
    } else if (img.height !== this.height || img.width !== this.width) {
      throw new UsageError(
        `${where}${file}: ${img.height}×${img.width} pixels, but ${this.first} is ${this.height}×${this.width}; every image must have the same size (sdlab does not resize: resize them first).`,
      );
    }
    this.images.push(img.data);
  }

  get count(): number {
    return this.images.length;
  }

  dataset(labels: Uint8Array | Int32Array, extra: Pick<Dataset, 'source' | 'classNames' | 'captions'>): Dataset {
    const px = this.height * this.width;
    const images = new Float32Array(this.images.length * px);
    this.images.forEach((img, i) => images.set(img, i * px));
    return { images, labels, n: this.images.length, height: this.height, width: this.width, ...extra };
  }
}

/** DIR/<label>/*.png: one class per folder. */
function loadLabelFolders(dir: string): Dataset {
  const folders = fs
    .readdirSync(dir, { withFileTypes: true })
    .filter((e) => !hidden(e.name))
    .filter((e) => {
      if (e.isDirectory()) return true;
      if (isPng(e.name)) {
        throw new UsageError(`${path.join(dir, e.name)}: an image outside the label folders; put each image in ${dir}/<label>/ (the folder name is its class).`);
      }
      return false; // README, classes.txt, ...: not data
    })
    .map((e) => e.name)
    .sort(byCodePoint);
  const images = new ImageCollector();
  const labels: number[] = [];
  folders.forEach((label, k) => {
    const sub = path.join(dir, label);
    const entries = fs.readdirSync(sub, { withFileTypes: true }).filter((e) => !hidden(e.name));
    const files: string[] = [];
    for (const e of entries) {
      const p = path.join(sub, e.name);
      if (e.name === METADATA_FILE) {
        throw new UsageError(`${p}: a ${METADATA_FILE} inside a subfolder of ${dir}; pass --data ${sub} (the folder that holds it and its images).`);
      }
      if (e.isDirectory()) {
        throw new UsageError(
          `${p}: a folder inside the label folder ${label}/; expected ${dir}/<label>/*.png (for a dataset split into train/ and test/ folders, pass --data ${path.join(dir, 'train')}).`,
        );
      }
      if (!isPng(e.name)) throw new UsageError(`${p}: not a .png file; the label folders must hold PNG images only (convert it, or move it out of ${sub}).`);
      files.push(e.name);
    }
    if (files.length === 0) throw new UsageError(`${sub}: no PNG images in this label folder (remove it, or add its images).`);
    for (const f of files.sort(byCodePoint)) {
      images.add(path.join(sub, f));
      labels.push(k);
    }
  });
  return images.dataset(folders.length <= 256 ? Uint8Array.from(labels) : Int32Array.from(labels), {
    source: `${path.resolve(dir)} (${folders.length} label folders)`,
    classNames: folders.map((f) => f.replaceAll('_', ' ')),
  });
}

/** DIR/metadata.jsonl: {"file_name", "text"} per line. */
function loadMetadataJsonl(dir: string): Dataset {
  const meta = path.join(dir, METADATA_FILE);
  const lines = fs.readFileSync(meta, 'utf8').split('\n');
  const expected = `one JSON object per line, {"file_name": "<image>.png", "text": "<caption>"}`;
  const images = new ImageCollector();
  const texts: string[] = [];
  const seen = new Map<string, number>();
  const root = path.resolve(dir);
  lines.forEach((raw, i) => {
    const where = `${meta}:${i + 1}: `;
    const line = raw.trim();
    if (line === '') return;
    const entry = parseJson(line, where.slice(0, -2), expected);
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw new UsageError(`${where}not a JSON object; expected ${expected}.`);
    const { file_name: name, text } = entry as Record<string, unknown>;
    if (typeof name !== 'string' || name.trim() === '') throw new UsageError(`${where}"file_name" is missing or not a non-empty string; expected ${expected}.`);
    if (typeof text !== 'string' || text.trim() === '') throw new UsageError(`${where}"text" is missing or not a non-empty string; expected ${expected}.`);
    const file = path.resolve(root, name);
    const rel = path.relative(root, file);
    if (path.isAbsolute(name) || rel.startsWith('..') || path.isAbsolute(rel)) {
      throw new UsageError(`${where}file_name "${name}" is not a path inside ${dir}; give it relative to the folder that holds ${METADATA_FILE}.`);
    }
    if (seen.has(rel)) throw new UsageError(`${where}file_name "${name}" is listed twice (first on line ${seen.get(rel)}); list each image once.`);
    seen.set(rel, i + 1);
    if (!isPng(name)) throw new UsageError(`${where}file_name "${name}" is not a .png file; sdlab reads PNG images only.`);
    if (!fs.existsSync(file)) throw new UsageError(`${where}file_name "${name}": no such file ${file}.`);
    images.add(file, where);
    texts.push(text.trim());
  });
  if (images.count === 0) throw new UsageError(`${meta}: no entries; expected ${expected}.`);
  const distinct = new Map<string, number>();
  for (const t of texts) if (!distinct.has(t)) distinct.set(t, distinct.size);
  return images.dataset(Int32Array.from(texts, (t) => distinct.get(t)!), {
    source: `${path.resolve(meta)} (${texts.length} images, ${distinct.size} distinct texts)`,
    classNames: [...distinct.keys()],
    captions: texts,
  });
}

/** Loads an image folder (either layout); null when `dir` has neither. */
export function loadImageFolder(dir: string): Dataset | null {
  const layout = imageFolderLayout(dir);
  if (layout === 'jsonl') return loadMetadataJsonl(dir);
  if (layout === 'labels') return loadLabelFolders(dir);
  return null;
}

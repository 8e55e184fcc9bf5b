/**
 * Your own data, the data layer (issue 18 item 5): Fashion-MNIST's class names, --classes and
 * classes.txt, image folders in both layouts (DIR/<label>/*.png and metadata.jsonl), a
 * tf.data.Dataset, the captions / prompts / vocabulary made from each, and one clear line for
 * every bad entry.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PNG } from 'pngjs';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { UsageError } from '../src/util/errors.ts';
import { Random } from '../src/util/random.ts';
import { WordTokenizer } from '../src/clip/tokenizer_word.ts';
import {
  FASHION_MNIST_CLASSES,
  captionKind,
  captionOf,
  captionVocabulary,
  checkCaptionable,
  classPrompts,
  datasetFingerprint,
  datasetFromTf,
  loadDataset,
  loadIdxDataset,
  splitDataset,
  subset,
  padDataset,
  readRunClasses,
  writeRunClasses,
} from '../src/data/index.ts';
import { DIGIT_WORDS, captionFor } from '../src/data/captions.ts';
import { writeTinyIdx } from './helpers/tiny-data.ts';
import { folderName, jsonlText, tinyDigitBytes, writeGrayPng, writeTinyFolder } from './helpers/tiny-folder.ts';
import { samplePrompts } from '../src/sample/sheet.ts';

const FASHION = '/usr/share/datasets/fashion-mnist';
const haveFashion = fs.existsSync(path.join(FASHION, 'train-labels-idx1-ubyte.gz'));

let tmp: string;
beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-data-sources-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** The UsageError message thrown by fn: one line (fails the test if it throws anything else or nothing). */
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

async function asyncUsageError(p: Promise<unknown>): Promise<string> {
  const err = await p.then(() => null, (e: unknown) => e);
  expect(err).toBeInstanceOf(UsageError);
  expect((err as Error).message).not.toContain('\n');
  return (err as Error).message;
}

/** A copy of the tiny digits as IDX files in a fresh directory. */
function idxDir(name: string, n = 30): string {
  const dir = path.join(tmp, name);
  writeTinyIdx(dir, n);
  return dir;
}

describe.skipIf(!haveFashion)('Fashion-MNIST: class names without flags, captions from them', () => {
  it('the known directory brings its ten names; digit MNIST files do not', () => {
    const ds = loadDataset({ data: FASHION, limit: 200 });
    expect(ds.classNames).toEqual(['t-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'ankle boot']);
    expect(loadIdxDataset(FASHION, { split: 'test', limit: 5 }).classNames).toEqual(FASHION_MNIST_CLASSES);
    expect(captionKind(ds)).toBe('classes');
    expect(classPrompts(ds)[7]).toBe('a sneaker');
    expect(classPrompts(ds)[9]).toBe('an ankle boot');
    // The tiny digits' IDX files are not recognised: digit captions as before.
    expect(loadDataset({ data: idxDir('digits') }).classNames).toBeUndefined();
  });

  it('captions name the class of the image, and the vocabulary holds every word of them', () => {
    const ds = loadDataset({ data: FASHION, limit: 300 });
    const tok = new WordTokenizer(captionVocabulary(ds));
    const rng = new Random(3);
    const seen = new Set<string>();
    for (let i = 0; i < ds.n; i++) {
      const c = captionOf(ds, i, rng);
      seen.add(c.replace(ds.classNames![ds.labels[i]], '<name>').replace(/\ban <name>/, 'a <name>'));
      expect(c, `${c} for label ${ds.labels[i]}`).toContain(ds.classNames![ds.labels[i]]);
      expect(tok.encode(c).inputIds).not.toContain(tok.unkId);
    }
    // All six templates turn up in 300 draws, and nothing else.
    expect([...seen].sort()).toEqual(['<name>', 'a <name>', 'a photo of a <name>', 'a picture of a <name>', 'an image of a <name>', 'the <name>']);
  });

  it('--classes and classes.txt win over the known names', () => {
    const names = ['top', 'pants', 'jumper', 'frock', 'jacket', 'flipflop', 'blouse', 'trainer', 'purse', 'boot'];
    expect(loadDataset({ data: FASHION, limit: 10, classes: names }).classNames).toEqual(names);
  });
});

describe('class names for IDX files: --classes, classes.txt, digits otherwise', () => {
  it('classes.txt beside the data names the labels; --classes overrides it', () => {
    const dir = idxDir('with-classes-txt');
    const names = ['nought', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'];
    fs.writeFileSync(path.join(dir, 'classes.txt'), names.join('\n') + '\n\n');
    const ds = loadDataset({ data: dir });
    expect(ds.classNames).toEqual(names);
    expect(classPrompts(ds)[0]).toBe('a nought');
    expect(classPrompts(ds)[8]).toBe('an eight');
    expect(loadDataset({ data: dir, classes: names.map((n) => n.toUpperCase()) }).classNames![0]).toBe('NOUGHT');
  });

  it('no names: digit captions, drawn exactly as captionFor draws them', () => {
    const ds = loadDataset({ data: idxDir('plain-digits') });
    expect(captionKind(ds)).toBe('digits');
    const a = new Random(9);
    const b = new Random(9);
    for (let i = 0; i < ds.n; i++) expect(captionOf(ds, i, a)).toBe(captionFor({ data: ds.images.subarray(i * 64, (i + 1) * 64), height: 8, width: 8 }, ds.labels[i], b));
    expect(classPrompts(ds)).toEqual(DIGIT_WORDS.map((w) => `a handwritten ${w}`));
  });

  it('bad names are one line naming where they came from', () => {
    const dir = idxDir('bad-classes');
    expect(usageError(() => loadDataset({ data: dir, classes: ['a', 'b'] }))).toMatch(/^--classes: 2 class names, but the labels of .* go up to 9; expected one name per label/);
    expect(usageError(() => loadDataset({ data: dir, classes: 'a,b,,d,e,f,g,h,i,j'.split(',') }))).toMatch(/^--classes: name 3 is empty/);
    expect(usageError(() => loadDataset({ data: dir, classes: 'a,b,c,d,e,f,g,h,i,a'.split(',') }))).toMatch(/^--classes: "a" is named twice \(names 1 and 10\)/);
    fs.writeFileSync(path.join(dir, 'classes.txt'), 'a\nb\n\nd\n');
    expect(usageError(() => loadDataset({ data: dir }))).toBe(`${path.join(dir, 'classes.txt')}:3: empty line; expected one class name per line (line 1 names label 0).`);
  });

  it('labels above 9 without names cannot get digit captions', () => {
    const ds = loadDataset({ data: idxDir('many-labels') });
    const relabelled = { ...ds, labels: Uint8Array.from(ds.labels, (l, i) => (i === 3 ? 12 : l)) };
    expect(usageError(() => checkCaptionable(relabelled))).toMatch(/labels go up to 12, so they are not digits; name the classes with --classes/);
    expect(() => checkCaptionable(ds)).not.toThrow();
  });
});

describe('image folders', () => {
  let labelsDir: string;
  let jsonlDir: string;
  let bytes: { pixels: Uint8Array[]; labels: number[] };
  beforeAll(() => {
    labelsDir = path.join(tmp, 'labels-layout');
    jsonlDir = path.join(tmp, 'jsonl-layout');
    writeTinyFolder(labelsDir, 40, 'labels');
    writeTinyFolder(jsonlDir, 40, 'jsonl');
    bytes = tinyDigitBytes(tmp, 40);
  });

  it('DIR/<label>/*.png: folders in name order are the classes, files in name order, gray and RGB PNGs alike', () => {
    fs.writeFileSync(path.join(labelsDir, 'README.md'), 'not data'); // files beside the folders are skipped
    fs.writeFileSync(path.join(labelsDir, folderName(3), '.DS_Store'), 'junk'); // hidden files too
    const ds = loadDataset({ data: labelsDir });
    expect([ds.n, ds.height, ds.width]).toEqual([40, 8, 8]);
    const folders = fs.readdirSync(labelsDir).filter((f) => f.endsWith('_digit')).sort();
    expect(ds.classNames).toEqual(folders.map((f) => f.replace('_', ' ')));
    expect(captionKind(ds)).toBe('classes');
    // Example k is the k-th file in (folder, file name) order, with its folder's label and the
    // pixels that were written (8-bit / 255), whether the PNG was gray or RGB.
    const order = bytes.labels
      .map((l, i) => ({ folder: folderName(l), file: `${String(i).padStart(5, '0')}.png`, i }))
      .sort((a, b) => (a.folder === b.folder ? (a.file < b.file ? -1 : 1) : a.folder < b.folder ? -1 : 1));
    order.forEach(({ folder, i }, k) => {
      expect(ds.classNames![ds.labels[k]]).toBe(folder.replace('_', ' '));
      const got = Array.from(ds.images.subarray(k * 64, (k + 1) * 64), (v) => Math.round(v * 255));
      expect(got).toEqual(Array.from(bytes.pixels[i]));
    });
    expect(Math.max(...Array.from(ds.images, (v, j) => Math.abs(v - bytes.pixels[order[Math.floor(j / 64)].i][j % 64] / 255)))).toBeLessThan(1e-6);
  });

  it('RGB is read as Rec. 601 luma, transparency onto black', () => {
    const dir = path.join(tmp, 'colours');
    const png = (file: string, rgba: number[]) => {
      const p = new PNG({ width: 1, height: 1 });
      p.data.set(rgba);
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, PNG.sync.write(p));
    };
    png(path.join(dir, 'red', 'a.png'), [255, 0, 0, 255]);
    png(path.join(dir, 'red', 'b.png'), [255, 255, 255, 0]); // fully transparent white
    png(path.join(dir, 'teal', 'c.png'), [0, 128, 128, 255]);
    const ds = loadDataset({ data: dir });
    expect(Array.from(ds.labels)).toEqual([0, 0, 1]);
    expect(ds.images[0]).toBeCloseTo(0.299, 6);
    expect(ds.images[1]).toBe(0);
    expect(ds.images[2]).toBeCloseTo((0.587 + 0.114) * (128 / 255), 6);
  });

  it('metadata.jsonl: line order, the text is the caption, same text = same class', () => {
    fs.appendFileSync(path.join(jsonlDir, 'metadata.jsonl'), '\n   \n'); // blank lines are skipped
    const ds = loadDataset({ data: jsonlDir });
    expect(ds.n).toBe(40);
    expect(captionKind(ds)).toBe('texts');
    expect(ds.captions).toEqual(bytes.labels.map(jsonlText));
    const distinct = [...new Set(bytes.labels.map(jsonlText))];
    expect(ds.classNames).toEqual(distinct);
    expect(Array.from(ds.labels)).toEqual(bytes.labels.map((l) => distinct.indexOf(jsonlText(l))));
    expect(Array.from(ds.images.subarray(5 * 64, 6 * 64), (v) => Math.round(v * 255))).toEqual(Array.from(bytes.pixels[5]));
    expect(classPrompts(ds)).toEqual(distinct);
    // The caption of an example is its text (no randomness); the vocabulary covers every text.
    const tok = new WordTokenizer(captionVocabulary(ds));
    const rng = new Random(0);
    for (let i = 0; i < ds.n; i++) {
      expect(captionOf(ds, i, rng)).toBe(jsonlText(bytes.labels[i]));
      expect(tok.encode(ds.captions![i]).inputIds).not.toContain(tok.unkId);
    }
  });

  it('the train/validation split is the seeded 10% every trainer uses, and keeps captions with their images', () => {
    const ds = loadDataset({ data: jsonlDir });
    const a = splitDataset(ds, { valFraction: 0.1, seed: 0 });
    const b = splitDataset(loadDataset({ data: jsonlDir }), { valFraction: 0.1, seed: 0 });
    expect(a.val.n).toBe(4);
    expect(Array.from(a.val.images)).toEqual(Array.from(b.val.images));
    const perm = new Random(0).permutation(40);
    expect(a.val.captions).toEqual(Array.from(perm.subarray(0, 4), (i) => ds.captions![i]));
    expect(a.train.captions).toEqual(Array.from(perm.subarray(4), (i) => ds.captions![i]));
    const padded = padDataset(a.val, 12);
    expect(padded.captions).toEqual(a.val.captions);
    expect(padded.classNames).toBe(ds.classNames);
  });

  it('--classes is refused for a folder (it names its classes itself)', () => {
    expect(usageError(() => loadDataset({ data: labelsDir, classes: ['x'] }))).toMatch(/^--classes: .* names its classes itself .*drop --classes/);
    expect(usageError(() => loadDataset({ data: jsonlDir, classes: ['x'] }))).toMatch(/^--classes: /);
  });

  it('the fingerprint changes with any pixel, label, name or caption', () => {
    const ds = loadDataset({ data: jsonlDir });
    const fp = datasetFingerprint(ds);
    expect(fp).toMatch(/^[0-9a-f]{64}$/);
    expect(datasetFingerprint(loadDataset({ data: jsonlDir }))).toBe(fp);
    const images = ds.images.slice();
    images[100] += 1 / 255;
    expect(datasetFingerprint({ ...ds, images })).not.toBe(fp);
    expect(datasetFingerprint({ ...ds, captions: ds.captions!.map((c, i) => (i === 7 ? c + '!' : c)) })).not.toBe(fp);
    expect(datasetFingerprint(subset(ds, Int32Array.from({ length: 40 }, (_, i) => i)))).toBe(fp);
  });
});

describe('bad folder and metadata.jsonl entries: one line naming the file (and line)', () => {
  const pixels = new Uint8Array(64).fill(100);

  /** A label-folder dataset with two good images, then `spoil(dir)`. */
  function labelsWith(name: string, spoil: (dir: string) => void): string {
    const dir = path.join(tmp, name);
    writeGrayPng(path.join(dir, 'cat', 'a.png'), pixels, 8);
    writeGrayPng(path.join(dir, 'dog', 'b.png'), pixels, 8);
    spoil(dir);
    return dir;
  }

  /** A metadata.jsonl dataset with two good lines, then `lines` appended. */
  function jsonlWith(name: string, lines: string[]): string {
    const dir = path.join(tmp, name);
    writeGrayPng(path.join(dir, 'a.png'), pixels, 8);
    writeGrayPng(path.join(dir, 'b.png'), pixels, 8);
    writeGrayPng(path.join(dir, 'big.png'), new Uint8Array(100), 10);
    fs.writeFileSync(path.join(dir, 'c.txt'), 'text');
    fs.writeFileSync(path.join(dir, 'metadata.jsonl'), [JSON.stringify({ file_name: 'a.png', text: 'a cat' }), JSON.stringify({ file_name: 'b.png', text: 'a dog' }), ...lines].join('\n'));
    return dir;
  }

  it('label folders', () => {
    let dir = labelsWith('notpng', (d) => fs.writeFileSync(path.join(d, 'dog', 'c.jpg'), 'x'));
    expect(usageError(() => loadDataset({ data: dir }))).toMatch(new RegExp(`^${path.join(dir, 'dog', 'c.jpg')}: not a \\.png file`));
    dir = labelsWith('nested', (d) => writeGrayPng(path.join(d, 'dog', 'puppies', 'p.png'), pixels, 8));
    expect(usageError(() => loadDataset({ data: dir }))).toMatch(new RegExp(`^${path.join(dir, 'dog', 'puppies')}: a folder inside the label folder dog/`));
    dir = labelsWith('loose', (d) => writeGrayPng(path.join(d, 'stray.png'), pixels, 8));
    expect(usageError(() => loadDataset({ data: dir }))).toMatch(new RegExp(`^${path.join(dir, 'stray.png')}: an image outside the label folders`));
    dir = labelsWith('sizes', (d) => writeGrayPng(path.join(d, 'dog', 'c.png'), new Uint8Array(100), 10));
    expect(usageError(() => loadDataset({ data: dir }))).toBe(
      `${path.join(dir, 'dog', 'c.png')}: 10×10 pixels, but ${path.join(dir, 'cat', 'a.png')} is 8×8; every image must have the same size (sdlab does not resize: resize them first).`,
    );
    dir = labelsWith('broken', (d) => fs.writeFileSync(path.join(d, 'dog', 'c.png'), 'not a png at all'));
    expect(usageError(() => loadDataset({ data: dir }))).toMatch(new RegExp(`^${path.join(dir, 'dog', 'c.png')}: cannot read PNG \\(`));
    dir = labelsWith('empty', (d) => fs.mkdirSync(path.join(d, 'emu')));
    expect(usageError(() => loadDataset({ data: dir }))).toMatch(new RegExp(`^${path.join(dir, 'emu')}: no PNG images in this label folder`));
    const none = path.join(tmp, 'nothing');
    fs.mkdirSync(none);
    fs.writeFileSync(path.join(none, 'notes.txt'), 'x');
    expect(usageError(() => loadDataset({ data: none }))).toMatch(/^--data .*nothing: holds none of the data sdlab reads: missing train-images-idx3-ubyte\[\.gz\] .*metadata\.jsonl.*DIR\/<label>\/\*\.png/);
  });

  it('metadata.jsonl lines', () => {
    const meta = (name: string) => path.join(tmp, name, 'metadata.jsonl');
    const cases: Array<[string, string, RegExp]> = [
      ['j-json', '{"file_name": "a.png", "text": ', /not valid JSON \(.*\); expected one JSON object per line/],
      ['j-array', '["a.png", "x"]', /not a JSON object/],
      ['j-noname', '{"text": "a cat"}', /"file_name" is missing or not a non-empty string/],
      ['j-notext', '{"file_name": "a.png"}', /"text" is missing or not a non-empty string/],
      ['j-emptytext', '{"file_name": "a.png", "text": "  "}', /"text" is missing/],
      ['j-twice', '{"file_name": "a.png", "text": "again"}', /file_name "a.png" is listed twice \(first on line 1\)/],
      ['j-missing', '{"file_name": "gone.png", "text": "x"}', /file_name "gone.png": no such file /],
      ['j-escape', '{"file_name": "../a.png", "text": "x"}', /file_name "\.\.\/a\.png" is not a path inside /],
      ['j-txt', '{"file_name": "c.txt", "text": "x"}', /file_name "c\.txt" is not a \.png file/],
      ['j-size', '{"file_name": "big.png", "text": "x"}', /.*big\.png: 10×10 pixels, but .*a\.png is 8×8/],
    ];
    for (const [name, line, re] of cases) {
      const dir = jsonlWith(name, ['', line]); // line 3 is blank (skipped), the bad entry is line 4
      const msg = usageError(() => loadDataset({ data: dir }));
      expect(msg.startsWith(`${meta(name)}:4: `), `${name}: ${msg}`).toBe(true);
      expect(msg, name).toMatch(re);
    }
  });
});

describe('a tf.data.Dataset', () => {
  it('{image, label} elements: same examples as the arrays they came from; int32 pixels are 0..255', async () => {
    const { pixels, labels } = tinyDigitBytes(tmp, 12);
    const elements = pixels.map((p, i) => ({ image: tf.tensor3d(Float32Array.from(p, (v) => v / 255), [8, 8, 1]), label: labels[i] }));
    const ds = await datasetFromTf(tf.data.array(elements));
    expect([ds.n, ds.height, ds.width]).toEqual([12, 8, 8]);
    expect(Array.from(ds.labels)).toEqual(labels);
    expect(captionKind(ds)).toBe('digits');
    const ints = await datasetFromTf(tf.data.array(pixels.map((p, i) => ({ xs: tf.tensor2d(Int32Array.from(p), [8, 8], 'int32'), ys: tf.oneHot(labels[i], 10) }))));
    expect(Array.from(ints.labels)).toEqual(labels);
    for (let i = 0; i < 12 * 64; i++) expect(Math.abs(ints.images[i] - ds.images[i])).toBeLessThan(1e-7);
    // The same through loadDataset's in-memory option, with class names.
    const named = loadDataset({ dataset: ds, classes: DIGIT_WORDS.map((w) => `${w} sign`) });
    expect(classPrompts(named)[1]).toBe('a one sign');
    tf.dispose(elements.map((e) => e.image));
  });

  it('{image, text} elements (images as nested arrays): texts are the captions; RGB images become luma', async () => {
    const el = (rgb: number[], text: string) => ({ image: [[rgb, rgb], [rgb, rgb]], text });
    const ds = await datasetFromTf(tf.data.array([el([1, 0, 0], 'red'), el([0, 0, 1], 'blue'), el([1, 0, 0], 'red')]));
    expect(ds.captions).toEqual(['red', 'blue', 'red']);
    expect(Array.from(ds.labels)).toEqual([0, 1, 0]);
    expect(ds.images[0]).toBeCloseTo(0.299, 6);
    expect(ds.images[4]).toBeCloseTo(0.114, 6);
  });

  it('a bad element is one line naming its index', async () => {
    const img = () => tf.zeros([4, 4]);
    const cases: Array<[unknown[], RegExp]> = [
      [[{ image: img(), label: 1 }, { image: tf.zeros([5, 4]), label: 2 }], /element 1: image is 5×4, but element 0 is 4×4/],
      [[{ image: tf.zeros([2, 4, 4, 1]), label: 1 }], /element 0: image of shape \[2, 4, 4, 1\]; expected one image .*unbatched/],
      [[{ image: tf.fill([4, 4], 255), label: 1 }], /element 0: pixel value 255 outside \[0, 1\] \(float32; divide 8-bit pixels by 255\)/],
      [[{ image: img(), label: 1.5 }], /element 0: "label" is 1\.5; expected an integer >= 0/],
      [[{ image: img(), label: 1, text: 'x' }], /element 0: give either "label" \(or ys\) or "text", not both/],
      [[{ image: img(), label: 1 }, { image: img(), text: 'x' }], /element 1: has a text but element 0 has a label/],
      [[{ label: 1 }], /element 0: "image" is missing/],
      [[], /tf\.data\.Dataset: no elements/],
    ];
    for (const [elements, re] of cases) {
      expect(await asyncUsageError(datasetFromTf(tf.data.array(elements as tf.TensorContainer[])))).toMatch(re);
    }
  });
});

describe('<run>/classes.json', () => {
  it('is written for named classes and texts, removed for digits, and read back', () => {
    const run = path.join(tmp, 'run-classes');
    expect(readRunClasses(run)).toBeNull();
    writeRunClasses(run, { classNames: ['cat', 'owl'] });
    expect(readRunClasses(run)).toEqual({ captions: 'classes', classes: ['cat', 'owl'], prompts: ['a cat', 'an owl'] });
    // `sdlab sample` without prompts draws one row per class of such a run (digits only for a digit run).
    expect(samplePrompts({ run })).toEqual(['a cat', 'an owl']);
    expect(samplePrompts({ run, prompt: ['x'] })).toEqual(['x']);
    expect(samplePrompts({ run: path.join(tmp, 'no-such-run') })).toHaveLength(10);
    writeRunClasses(run, { classNames: ['a red ball', 'a cube'], captions: ['a cube', 'a red ball'] });
    expect(readRunClasses(run)).toEqual({ captions: 'texts', classes: ['a red ball', 'a cube'], prompts: ['a red ball', 'a cube'] });
    writeRunClasses(run, {});
    expect(fs.existsSync(path.join(run, 'classes.json'))).toBe(false);
    fs.writeFileSync(path.join(run, 'classes.json'), '{"captions": "classes", "classes": ["a"], "prompts": []}');
    expect(usageError(() => readRunClasses(run))).toMatch(/classes\.json: "classes" and "prompts" must be lists of strings of the same length/);
  });
});

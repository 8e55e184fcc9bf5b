/**
 * `sdlab eval`: conditional accuracy, class histogram, confusion and FID sets on a fake
 * classifier with hand-worked answers; reading samples (PNG directory + samples.json, file-name
 * digits, safetensors) and every bad-input error; the CLI's exit codes. With the native backend
 * (the tfjs cpu backend's conv2DBackpropFilter makes training far too slow there), also: the
 * real classifier learns (a few dozen steps on 500 digits → clearly above chance), is trained
 * once and cached, and `runEval` on real digits posing as samples scores high conditional
 * accuracy with FID near its real-vs-real baseline, while a mode-collapsed "generator" does not;
 * and --sanity orders the sets as a trustworthy metric must (blurred, noisy, repeated, one-class
 * digits far above real ones; the feature layer alone fails this). `eval` without --samples draws
 * them at the run's sampling_config.json settings (flags win) and says so.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { PNG } from 'pngjs';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import {
  conditionalAccuracy, classHistogram, confusionMatrix, normalizedEntropy, evaluateSamples, formatReport, renderHistogram, runEval,
  type RealDigits,
} from '../src/eval/evaluate.ts';
import { loadSamples, readDigitPng, type Samples } from '../src/eval/samples.ts';
import { formatSanityTable } from '../src/eval/sanity.ts';
import {
  DigitClassifier, DEFAULT_SPLIT, type ImageClassifier, accuracy, ensureClassifier, loadSplit, shiftedBatch, trainClassifier, signedImages,
} from '../src/eval/classifier.ts';
import { DATA_SPLIT } from '../src/train/vae.ts';
import { subset, imageAt } from '../src/data/index.ts';
import { writeSafetensors } from '../src/io/safetensors.ts';
import { manualSeed } from '../src/nn/index.ts';
import { registerNativeBackend, nativeLoadError } from '../src/backend/native.ts';
import { Random } from '../src/util/random.ts';
import { makeRandomRun } from './helpers/random-run.ts';

const run = promisify(execFile);
const ROOT = path.resolve(__dirname, '..');
const PX = 32 * 32;
let tmp: string;

beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-eval-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------
// A fake classifier: the class is written into pixel 0 (-1 + 2c/9), the features are pixels 1..4.

const FAKE_DIM = 4;
const fake: ImageClassifier = {
  featureDim: FAKE_DIM,
  classify(images, n) {
    const preds = new Int32Array(n), features = new Float32Array(n * FAKE_DIM), probs = new Float32Array(n * 10);
    for (let i = 0; i < n; i++) {
      const c = Math.round(((images[i * PX] + 1) / 2) * 9);
      preds[i] = c;
      probs[i * 10 + c] = 0.9;
      for (let k = 0; k < FAKE_DIM; k++) features[i * FAKE_DIM + k] = images[i * PX + 1 + k];
    }
    return { preds, features, probs };
  },
};
/** n fake images: class marks and Gaussian features (mean `shift` in every dimension). */
function fakeImages(classes: number[], rng: Random, shift = 0): Float32Array {
  const out = new Float32Array(classes.length * PX);
  classes.forEach((c, i) => {
    out[i * PX] = -1 + (2 * c) / 9;
    for (let k = 0; k < FAKE_DIM; k++) out[i * PX + 1 + k] = shift + rng.normal();
  });
  return out;
}
const fakeSamples = (images: Float32Array, digits: number[]): Samples => ({
  images, digits: Int32Array.from(digits), n: digits.length, source: 'test', names: digits.map((_, i) => `s${i}`), prompts: digits.map(() => null),
});

describe('metrics on a fake classifier', () => {
  // 30 prompted samples, 3 per digit, 4 of them misread; then 2 unconditional samples.
  const digits = [...Array.from({ length: 30 }, (_, i) => i % 10), -1, -1];
  const seen = digits.slice(0, 30).map((d) => d);
  seen[3] = 5; // digit 3 → seen as 5 (twice)
  seen[13] = 5;
  seen[7] = 1; // 7 → 1
  seen[20] = 8; // 0 → 8
  seen.push(1, 2); // the unconditional ones
  const real: RealDigits = { images: fakeImages(Array.from({ length: 400 }, (_, i) => i % 10), new Random(1)), labels: Array.from({ length: 400 }, (_, i) => i % 10), n: 400 };

  it('conditional accuracy per digit and overall, histogram, confusion, misclassified', () => {
    const r = evaluateSamples(fake, fakeSamples(fakeImages(seen, new Random(2)), digits), real);
    expect(r.accuracy.n).toBe(30);
    expect(r.accuracy.overall).toBeCloseTo(26 / 30, 12);
    const acc = r.accuracy.perDigit.map((d) => d.accuracy);
    expect(acc).toEqual([2 / 3, 1, 1, 1 / 3, 1, 1, 1, 2 / 3, 1, 1]);
    expect(r.accuracy.perDigit.map((d) => d.n)).toEqual(new Array(10).fill(3));
    expect(r.accuracy.meanPerDigit).toBeCloseTo((7 + 5 / 3) / 10, 12);
    expect(r.histogram.predicted).toEqual([2, 5, 4, 1, 3, 5, 3, 2, 4, 3]);
    expect(r.histogram.prompted).toEqual(new Array(10).fill(3));
    expect(r.confusion[3][5]).toBe(2);
    expect(r.confusion[3][3]).toBe(1);
    expect(r.confusion[7][1]).toBe(1);
    expect(r.confusion[0][8]).toBe(1);
    expect(r.confusion.flat().reduce((a, b) => a + b, 0)).toBe(30); // unconditional ones left out
    expect(r.misclassified).toEqual([3, 7, 13, 20]);
    expect(r.realAccuracy).toBe(1);
    expect(r.samples).toEqual({ source: 'test', n: 32, withDigit: 30 });
    const text = formatReport(r);
    expect(text).toMatch(/conditional accuracy: 86\.7% overall/);
    expect(text).toMatch(/accuracy\s+66\.7%\s+100\.0%\s+100\.0%\s+33\.3%/);
  });

  it('plain functions agree on edge cases', () => {
    expect(conditionalAccuracy([1, 2], [-1, -1]).overall).toBeNull();
    expect(conditionalAccuracy([1, 2], [-1, -1]).perDigit[1].accuracy).toBeNull();
    expect(classHistogram([9, 9, 0])).toEqual([1, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    expect(confusionMatrix([1], [2])[2][1]).toBe(1);
    expect(normalizedEntropy([5, 5, 5, 5, 5, 5, 5, 5, 5, 5])).toBeCloseTo(1, 12);
    expect(normalizedEntropy([50, 0, 0, 0, 0, 0, 0, 0, 0, 0])).toBe(0);
    expect(normalizedEntropy([1, 1, 0, 0])).toBeCloseTo(0.5, 12);
    expect(() => conditionalAccuracy([1], [1, 2])).toThrow(/1 predictions for 2 samples/);
  });

  it('FID sets: same distribution ≈ baseline; shifted by 1 per dimension ≈ 4 (|Δμ|²); sizes matched', () => {
    const classes = Array.from({ length: 150 }, (_, i) => i % 10);
    const same = evaluateSamples(fake, fakeSamples(fakeImages(classes, new Random(3)), classes), real);
    expect(same.fid.setSize).toBe(150);
    expect(same.fid.realBaseline).toBeLessThan(0.25);
    expect(same.fid.realBaseline).toBeGreaterThan(0.01); // two finite samples never match exactly
    expect(same.fid.generated).toBeLessThan(0.25);
    const shifted = evaluateSamples(fake, fakeSamples(fakeImages(classes, new Random(3), 1), classes), real);
    expect(shifted.fid.generated).toBeGreaterThan(3.5);
    expect(shifted.fid.generated).toBeLessThan(4.6);
    expect(shifted.fid.meanTerm).toBeCloseTo(4, 0);
    expect(shifted.fid.realBaseline).toBe(same.fid.realBaseline); // same real sets, same seed
    // More samples than half the real digits: both sides use ⌊400/2⌋ = 200.
    const many = Array.from({ length: 500 }, (_, i) => i % 10);
    expect(evaluateSamples(fake, fakeSamples(fakeImages(many, new Random(4)), many), real).fid.setSize).toBe(200);
    // --n-real limits the real digits.
    expect(evaluateSamples(fake, fakeSamples(fakeImages(classes, new Random(3)), classes), real, { nReal: 100 }).fid.setSize).toBe(50);
  });

  it('draws a histogram with one bar per digit, as tall as its count', () => {
    const r = renderHistogram([10, 0, 5, 0, 0, 0, 0, 0, 0, 20], [4, 4, 4, 4, 4, 4, 4, 4, 4, 4]);
    const blue = (x: number, y: number) => {
      const [rr, g, b] = r.getPixel(x, y);
      return rr === 31 && g === 119 && b === 180;
    };
    // Heights of the blue bars, scanned column by column.
    const heights: number[] = [];
    let inBar = false;
    for (let x = 0; x < r.width; x++) {
      let h = 0;
      for (let y = 30; y < r.height; y++) if (blue(x, y)) h++; // below the legend swatch
      if (h > 0 && !inBar) heights.push(h);
      inBar = h > 0;
    }
    expect(heights.length).toBe(3); // digits 0, 2 and 9
    expect(heights[0] / heights[2]).toBeCloseTo(0.5, 1);
    expect(heights[1] / heights[2]).toBeCloseTo(0.25, 1);
  });
});

// ---------------------------------------------------------------------------------------------
// Reading samples

function writePng(file: string, w: number, h: number, value: (x: number, y: number) => number, opts: { gray?: boolean; alpha?: number } = {}): void {
  const png = new PNG({ width: w, height: h });
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const o = (y * w + x) * 4;
      const v = value(x, y);
      png.data[o] = png.data[o + 1] = png.data[o + 2] = v;
      png.data[o + 3] = opts.alpha ?? 255;
    }
  }
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, PNG.sync.write(png, opts.gray ? { colorType: 0 } : {}));
}

describe('reading samples', () => {
  it('a PNG directory with samples.json: pixels mapped to [-1, 1], 28×28 padded to 32×32, digits and null', () => {
    const dir = path.join(tmp, 'pngs');
    writePng(path.join(dir, 'a.png'), 32, 32, (x, y) => (x === 5 && y === 7 ? 255 : x === 6 ? 128 : 0), { gray: true });
    writePng(path.join(dir, 'sub/b.png'), 28, 28, () => 255);
    writePng(path.join(dir, 'c.png'), 32, 32, () => 255, { alpha: 0 }); // fully transparent = background
    fs.writeFileSync(path.join(dir, 'samples.json'), JSON.stringify([
      { file: 'a.png', prompt: 'a handwritten 3', digit: 3 },
      { file: 'sub/b.png', prompt: 'eight', digit: 8 },
      { file: 'c.png', prompt: '', digit: null },
    ]));
    const s = loadSamples(dir);
    expect(s.n).toBe(3);
    expect(Array.from(s.digits)).toEqual([3, 8, -1]);
    expect(s.prompts).toEqual(['a handwritten 3', 'eight', '']);
    expect(s.images[7 * 32 + 5]).toBe(1);
    expect(s.images[0]).toBe(-1);
    expect(s.images[9 * 32 + 6]).toBeCloseTo((128 / 255) * 2 - 1, 6);
    const b = s.images.subarray(PX, 2 * PX);
    expect(b[0]).toBe(-1); // the 2-px border of a padded 28×28 digit
    expect(b[1 * 32 + 1]).toBe(-1);
    expect(b[2 * 32 + 2]).toBe(1);
    expect(b[29 * 32 + 29]).toBe(1);
    expect(b[30 * 32 + 29]).toBe(-1);
    expect(Math.max(...s.images.subarray(2 * PX))).toBe(-1);
  });

  it('digits from file names when there is no samples.json', () => {
    const dir = path.join(tmp, 'named');
    writePng(path.join(dir, '7_0001.png'), 32, 32, () => 0);
    writePng(path.join(dir, '2-x.png'), 32, 32, () => 0);
    const s = loadSamples(dir);
    expect(s.names).toEqual(['2-x.png', '7_0001.png']);
    expect(Array.from(s.digits)).toEqual([2, 7]);
  });

  it('a safetensors file with images and digits (signed by default, or range "unit")', () => {
    const n = 3;
    const data = new Float32Array(n * PX).fill(-1);
    data[5] = 1;
    data[PX + 6] = 0;
    data[2 * PX + 7] = 1.7; // clipped
    const file = path.join(tmp, 's.safetensors');
    writeSafetensors(file, { images: { shape: [n, 32, 32, 1], data }, digits: { shape: [n], data: Float32Array.from([4, -1, 9]) } });
    const s = loadSamples(file);
    expect(Array.from(s.digits)).toEqual([4, -1, 9]);
    expect([s.images[5], s.images[PX + 6], s.images[2 * PX + 7], s.images[0]]).toEqual([1, 0, 1, -1]);
    const unit = path.join(tmp, 'u.safetensors');
    writeSafetensors(unit, { images: { shape: [1, 28, 28], data: new Float32Array(784).fill(0.5) }, digits: { shape: [1], data: Float32Array.from([0]) } }, { metadata: { range: 'unit' } });
    const u = loadSamples(unit);
    expect(u.images[0]).toBe(-1);
    expect(u.images[2 * 32 + 2]).toBe(0);
  });

  it('bad inputs give one-line errors naming the file', () => {
    const bad = (fn: () => unknown, re: RegExp) => {
      let msg = '';
      try {
        fn();
      } catch (err) {
        msg = (err as Error).message;
        expect((err as Error).name).toBe('UsageError');
      }
      expect(msg).toMatch(re);
      expect(msg).not.toMatch(/\n/);
    };
    bad(() => loadSamples(path.join(tmp, 'nope')), /--samples .*nope: no such file or directory/);
    const empty = path.join(tmp, 'empty');
    fs.mkdirSync(empty);
    bad(() => loadSamples(empty), /no samples\.json and no PNG files/);
    const unnamed = path.join(tmp, 'unnamed');
    writePng(path.join(unnamed, 'sample.png'), 32, 32, () => 0);
    bad(() => loadSamples(unnamed), /"sample\.png" does not start with its digit/);
    const garbage = path.join(tmp, 'garbage');
    fs.mkdirSync(garbage);
    fs.writeFileSync(path.join(garbage, '3_x.png'), 'not a png');
    bad(() => loadSamples(garbage), /3_x\.png: cannot read PNG \(/);
    const grid = path.join(tmp, 'grid');
    writePng(path.join(grid, '1_g.png'), 64, 64, () => 0);
    bad(() => loadSamples(grid), /expected a 32×32 \(or 28×28\) digit, got 64×64/);
    const m = path.join(tmp, 'manifest');
    writePng(path.join(m, 'a.png'), 32, 32, () => 0);
    fs.writeFileSync(path.join(m, 'samples.json'), JSON.stringify([{ file: 'a.png', digit: 12 }]));
    bad(() => loadSamples(m), /samples\.json entry 0: "digit" must be an integer 0\.\.9 or null, got 12/);
    fs.writeFileSync(path.join(m, 'samples.json'), '{"file": "a.png"}');
    bad(() => loadSamples(m), /expected a JSON array/);
    fs.writeFileSync(path.join(m, 'samples.json'), JSON.stringify([{ file: 'missing.png', digit: 1 }]));
    bad(() => loadSamples(m), /missing\.png: cannot read PNG \(ENOENT\)/);
    const st = path.join(tmp, 'nodigits.safetensors');
    writeSafetensors(st, { images: { shape: [1, 32, 32, 1], data: new Float32Array(PX) } });
    bad(() => loadSamples(st), /missing tensor "digits"/);
    const st2 = path.join(tmp, 'baddigit.safetensors');
    writeSafetensors(st2, { images: { shape: [1, 32, 32, 1], data: new Float32Array(PX) }, digits: { shape: [1], data: Float32Array.from([10]) } });
    bad(() => loadSamples(st2), /digits\[0\] = 10/);
  });

  it('readDigitPng reads what the viz PNG writer would write (gray = mean of RGB)', () => {
    const file = path.join(tmp, 'rgb.png');
    const png = new PNG({ width: 32, height: 32 });
    png.data.fill(255);
    png.data[0] = 255;
    png.data[1] = 0;
    png.data[2] = 0;
    fs.writeFileSync(file, PNG.sync.write(png));
    const img = readDigitPng(file);
    expect(img[0]).toBeCloseTo(2 / 3 - 1, 6);
    expect(img[1]).toBe(1);
  });
});

describe('classifier plumbing', () => {
  it('uses the held-out split the trainers use', () => {
    expect(DEFAULT_SPLIT).toEqual(DATA_SPLIT);
  });
  it('shiftedBatch moves the digit by at most 2 px and keeps its ink', () => {
    const { train } = loadSplit(undefined);
    const idx = [0, 1, 2, 3, 4, 5, 6, 7];
    const plain = shiftedBatch(train, idx, 0, new Random(0));
    expect(Array.from(plain.subarray(0, PX))).toEqual(Array.from(signedImages(subset(train, [0])))); // no shift = the digit in [-1, 1]
    const moved = shiftedBatch(train, idx, 2, new Random(0));
    let anyMoved = false;
    for (let k = 0; k < idx.length; k++) {
      const a = plain.subarray(k * PX, (k + 1) * PX), b = moved.subarray(k * PX, (k + 1) * PX);
      const sum = (x: Float32Array) => x.reduce((s, v) => s + (v + 1) / 2, 0);
      expect(sum(b)).toBeCloseTo(sum(a), 2); // 28×28 digits padded to 32: a ±2 shift loses no ink
      // b is a shifted copy of a: find the (dx, dy) that matches exactly.
      let found = false;
      for (let dy = -2; dy <= 2 && !found; dy++) {
        for (let dx = -2; dx <= 2 && !found; dx++) {
          let ok = true;
          for (let y = 0; y < 32 && ok; y++) for (let x = 0; x < 32 && ok; x++) {
            const sy = y - dy, sx = x - dx;
            const want = sy >= 0 && sy < 32 && sx >= 0 && sx < 32 ? a[sy * 32 + sx] : -1;
            if (b[y * 32 + x] !== want) ok = false;
          }
          if (ok) {
            found = true;
            if (dx !== 0 || dy !== 0) anyMoved = true;
          }
        }
      }
      expect(found).toBe(true);
    }
    expect(anyMoved).toBe(true);
  });
  it('saves and loads (config.json + model.safetensors) with identical outputs', () => {
    manualSeed(3);
    const m = new DigitClassifier({ block_out_channels: [8, 16], feature_dim: 16, norm_num_groups: 4 });
    const dir = path.join(tmp, 'clf');
    m.save(dir);
    const m2 = DigitClassifier.load(dir);
    const x = tf.randomUniform([2, 32, 32, 1], -1, 1) as tf.Tensor4D;
    const a = m.forward(x), b = m2.forward(x);
    expect(Array.from(b.logits.dataSync())).toEqual(Array.from(a.logits.dataSync()));
    expect(b.features.shape).toEqual([2, 16]);
    tf.dispose([x, a.logits, a.features, b.logits, b.features]);
    m.dispose();
    m2.dispose();
  });
});

// ---------------------------------------------------------------------------------------------
// The CLI

describe('sdlab eval: bad input exits 2 with one line', () => {
  const cli = async (args: string[]) => {
    try {
      const { stdout, stderr } = await run('node', [path.join(ROOT, 'bin/sdlab.mjs'), 'eval', ...args], { cwd: tmp, env: { ...process.env, SDLAB_BACKEND: 'cpu' } });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };
  it('unknown run, missing samples, unreadable PNG', async () => {
    const r1 = await cli(['--run', 'runs/nope', '--samples', 'x']);
    expect(r1.code).toBe(2);
    expect(r1.stderr.trim()).toMatch(/^sdlab: error: --run runs\/nope: no such run directory/);
    expect(r1.stderr.trim().split('\n')).toHaveLength(1);
    fs.mkdirSync(path.join(tmp, 'runs/r'), { recursive: true });
    const r2 = await cli(['--run', 'runs/r', '--samples', 'missing_dir']);
    expect(r2.code).toBe(2);
    expect(r2.stderr.trim()).toMatch(/^sdlab: error: --samples missing_dir: no such file or directory/);
    const r3 = await cli(['--run', 'runs/r', '--samples', 'garbage']); // from the samples test above
    expect(r3.code).toBe(2);
    expect(r3.stderr.trim()).toMatch(/3_x\.png: cannot read PNG \(/);
    expect(r3.stderr.trim().split('\n').filter((l) => !/cpu' backend/.test(l))).toHaveLength(1);
    expect(fs.existsSync(path.join(tmp, 'runs/r/classifier'))).toBe(false); // bad samples cost no training
  });
});

describe('sdlab eval without --samples: draws them at the run\'s own sampling settings', () => {
  // The native backend when it is built: the cpu backend's convolutions make sampling slow.
  const cli = async (args: string[]) => {
    try {
      const { stdout, stderr } = await run('node', [path.join(ROOT, 'bin/sdlab.mjs'), 'eval', ...args], { cwd: tmp, env: { ...process.env, SDLAB_BACKEND: 'auto' } });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };
  /** A random-weight run on the 32×32 canvas (28×28 digits) with a cached, untrained tiny classifier (so nothing trains here). */
  const evalRun = (name: string, sampling: Record<string, unknown> | null) => {
    const dir = path.join(tmp, name);
    makeRandomRun(dir, { sampleSize: 32, native: 28, sampling });
    manualSeed(1);
    const clf = new DigitClassifier({ ...TINY, training: { data: '', split_seed: DEFAULT_SPLIT.seed, val_fraction: DEFAULT_SPLIT.valFraction, val_accuracy: 0.1, seconds: 0 } as never });
    clf.save(path.join(dir, 'classifier'));
    clf.dispose();
    return dir;
  };

  it('samples --n per digit with the settings of sampling_config.json (flags win), says so, and scores them', async () => {
    const dir = evalRun('runs/own', { scheduler: 'ddim', num_inference_steps: 2, guidance_scale: 2.5, eta: 0 });
    const out = path.join(tmp, 'eval_own');
    const r = await cli(['--run', dir, '--n', '2', '--out', out, '--n-real', '40']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`sampled 20 digits (2 per digit, 28×28) into ${path.join(out, 'samples')}: ddim, 2 steps, guidance 2.5, eta 0 (all from ${path.join(dir, 'sampling_config.json')})`);
    const records = JSON.parse(fs.readFileSync(path.join(out, 'samples/samples.json'), 'utf8'));
    expect(records).toHaveLength(20);
    expect(records[19]).toMatchObject({ digit: 9, scheduler: 'ddim', steps: 2, guidance: 2.5, eta: 0 });
    expect(PNG.sync.read(fs.readFileSync(path.join(out, 'samples/0000.png'))).width).toBe(28);
    const json = JSON.parse(fs.readFileSync(path.join(out, 'eval.json'), 'utf8'));
    expect(json.sampling).toEqual({ scheduler: 'ddim', steps: 2, guidance: 2.5, eta: 0, guidanceInterval: null });
    expect(json.samples.n).toBe(20);
    expect(r.stdout).toMatch(/FID \(classifier, feature layer 32-d \+ blocks\.1 channel means 16-d \+ blocks\.2 channel means 16-d; 20 vs 20 images/);

    // A flag overrides the file; eval of those samples, given back with --samples, reports how they were drawn.
    const out2 = path.join(tmp, 'eval_own2');
    const r2 = await cli(['--run', dir, '--n', '1', '--guidance', '4', '--out', out2, '--n-real', '40']);
    expect(r2.code, r2.stderr).toBe(0);
    expect(r2.stdout).toMatch(/ddim, 2 steps, guidance 4, eta 0 \(guidance from --guidance; scheduler, steps, eta, guidance interval from .*sampling_config\.json\)/);
    const r3 = await cli(['--run', dir, '--samples', path.join(out2, 'samples'), '--out', path.join(tmp, 'eval_own3'), '--n-real', '40']);
    expect(r3.code, r3.stderr).toBe(0);
    expect(r3.stdout).toMatch(/samples drawn with ddim, 2 steps, guidance 4, eta 0 .*\nnote: the run samples itself with ddim, 2 steps, guidance 2\.5, eta 0 \(.*\); these samples differ in guidance\./);
  }, 300_000);

  it('bad sampling input exits 2 with one line and writes nothing', async () => {
    const bad = evalRun('runs/badcfg', { scheduler: 'ddim', num_inference_steps: 2, guidance_scale: 2, eta: 0, steps: 3 });
    const good = path.join(tmp, 'runs/own');
    const cases: Array<[string[], RegExp]> = [
      [['--run', bad, '--out', path.join(tmp, 'x1')], /sampling_config\.json: unknown key "steps"/],
      [['--run', good, '--samples', path.join(tmp, 'eval_own/samples'), '--guidance', '3', '--out', path.join(tmp, 'x2')], /--guidance: only for drawing samples/],
      [['--run', good, '--samples', path.join(tmp, 'eval_own/samples'), '--guidance-interval', '100,700', '--out', path.join(tmp, 'x3')], /--guidance-interval: only for drawing samples/],
      [['--run', good, '--guidance-interval', '700,100', '--out', path.join(tmp, 'x4')], /--guidance-interval.*expected LO,HI train timesteps with 0 <= LO <= HI/],
      [['--run', good, '--guidance-interval', '100', '--out', path.join(tmp, 'x5')], /--guidance-interval.*expected LO,HI/],
    ];
    for (const [args, re] of cases) {
      const r = await cli(args);
      expect(r.code).toBe(2);
      const lines = r.stderr.trim().split('\n').filter((l) => !/cpu' backend|warning: using the slow/.test(l));
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(re);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
    for (const x of ['x1', 'x2', 'x3', 'x4', 'x5']) expect(fs.existsSync(path.join(tmp, x))).toBe(false);
  });
});

// ---------------------------------------------------------------------------------------------
// The real classifier (native backend only)

const nativeOk = registerNativeBackend();
if (!nativeOk) console.warn(`eval.test: SKIPPING the classifier training tests: native backend unavailable (${nativeLoadError()}); tfjs's cpu backend trains convs far too slowly.`);
const TINY = { block_out_channels: [8, 16, 16], feature_dim: 32, norm_num_groups: 4 };

describe.runIf(nativeOk)('the digit classifier (native backend)', () => {
  beforeAll(async () => {
    await tf.setBackend('native');
  });
  afterAll(async () => {
    await tf.setBackend('cpu');
  });

  it('60 steps on 500 digits reach clearly above chance (≥ 60% on 500 held-out digits)', () => {
    const { train, val } = loadSplit(undefined);
    const few = subset(train, Array.from({ length: 500 }, (_, i) => i));
    const held = subset(val, Array.from({ length: 500 }, (_, i) => i));
    manualSeed(0);
    const m = new DigitClassifier(TINY);
    const before = accuracy(m, held);
    trainClassifier(m, few, { epochs: 100, maxSteps: 60, batchSize: 32, learningRate: 3e-3, progress: false });
    const after = accuracy(m, held);
    console.log(`eval.test: tiny classifier held-out accuracy ${(before * 100).toFixed(1)}% → ${(after * 100).toFixed(1)}% after 60 steps`);
    expect(before).toBeLessThan(0.3);
    expect(after).toBeGreaterThanOrEqual(0.6);
    m.dispose();
  });

  it('is trained once and cached; eval on real digits ≈ baseline, a collapsed generator is caught', async () => {
    const runDir = path.join(tmp, 'runs/real');
    const logs: string[] = [];
    const first = ensureClassifier(runDir, { config: TINY, epochs: 1, maxSteps: 150, batchSize: 32, learningRate: 3e-3, progress: false, log: (l) => logs.push(l) });
    expect(first.trainedNow).toBe(true);
    expect(first.training.steps).toBe(150);
    expect(first.training.val_accuracy).toBeGreaterThan(0.8);
    expect(fs.existsSync(path.join(runDir, 'classifier/config.json')) && fs.existsSync(path.join(runDir, 'classifier/model.safetensors'))).toBe(true);
    const second = ensureClassifier(runDir, { log: (l) => logs.push(l) });
    expect(second.trainedNow).toBe(false);
    expect(second.training.val_accuracy).toBe(first.training.val_accuracy);
    const { val } = loadSplit(undefined);
    expect(accuracy(second.model, val)).toBeCloseTo(first.training.val_accuracy, 4);
    first.model.dispose();
    second.model.dispose();
    expect(() => ensureClassifier(runDir, { data: '/somewhere/else' })).toThrow(/trained on data "".*pass the matching --data, or --retrain/);

    // "Samples": 300 random real digits from the training split (never held out), as PNGs +
    // samples.json. They come from the same distribution as the held-out digits, so their FID
    // should look like the real-vs-real baseline.
    const { train } = loadSplit(undefined);
    const entries: { file: string; prompt: string; digit: number }[] = [];
    for (const i of new Random('eval test samples').permutation(train.n).subarray(0, 300)) {
      const d = train.labels[i];
      const file = `${String(entries.length).padStart(4, '0')}.png`;
      const img = imageAt(train, i);
      writePng(path.join(tmp, 'real_samples', file), 32, 32, (x, y) => Math.round(img[y * 32 + x] * 255));
      entries.push({ file, prompt: `a handwritten ${d}`, digit: d });
    }
    const ones: number[] = [];
    for (let i = 0; i < train.n && ones.length < 300; i++) if (train.labels[i] === 1) ones.push(i);
    expect(ones.length).toBe(300);
    fs.writeFileSync(path.join(tmp, 'real_samples/samples.json'), JSON.stringify(entries));
    const res = await runEval({ run: runDir, samples: path.join(tmp, 'real_samples'), out: path.join(tmp, 'eval_out'), log: (l) => logs.push(l) });
    const r = res.report;
    console.log(`eval.test: real digits as samples: accuracy ${(r.accuracy.overall! * 100).toFixed(1)}%, FID ${r.fid.generated.toFixed(3)} vs baseline ${r.fid.realBaseline.toFixed(3)} (${r.fid.setSize} per set)`);
    expect(res.classifier.trainedNow).toBe(false);
    expect(r.fid.setSize).toBe(300);
    expect(r.accuracy.overall!).toBeGreaterThan(0.8);
    expect(r.accuracy.overall!).toBeCloseTo(r.realAccuracy, 1); // real samples are read as well as held-out digits
    expect(r.fid.generated).toBeLessThan(1.6 * r.fid.realBaseline);
    expect(r.fid.generated).toBeGreaterThan(0.6 * r.fid.realBaseline);
    expect(r.histogram.entropy).toBeGreaterThan(0.95);
    const json = JSON.parse(fs.readFileSync(res.files.json, 'utf8'));
    expect(json.conditional_accuracy.overall).toBe(r.accuracy.overall);
    expect(json.fid.real_vs_real_baseline).toBe(r.fid.realBaseline);
    expect(json.histogram.seen_as).toEqual(r.histogram.predicted);
    expect(PNG.sync.read(fs.readFileSync(res.files.histogram)).width).toBe(640);

    // A collapsed "generator": 300 ones, prompted as every digit in turn.
    const collapsed = new Float32Array(300 * PX);
    ones.forEach((i, k) => collapsed.set(imageAt(train, i).map((v) => v * 2 - 1), k * PX));
    const st = path.join(tmp, 'collapsed.safetensors');
    writeSafetensors(st, { images: { shape: [300, 32, 32, 1], data: collapsed }, digits: { shape: [300], data: Float32Array.from({ length: 300 }, (_, k) => k % 10) } });
    const bad = (await runEval({ run: runDir, samples: st, out: path.join(tmp, 'eval_collapsed'), log: (l) => logs.push(l) })).report;
    console.log(`eval.test: collapsed generator: accuracy ${(bad.accuracy.overall! * 100).toFixed(1)}%, FID ${bad.fid.generated.toFixed(3)}, entropy ${bad.histogram.entropy.toFixed(3)}`);
    expect(bad.accuracy.overall!).toBeLessThan(0.2);
    expect(bad.histogram.predicted[1]).toBeGreaterThan(240);
    expect(bad.histogram.entropy).toBeLessThan(0.4);
    expect(bad.fid.generated).toBeGreaterThan(5 * bad.fid.realBaseline);
    expect(bad.fid.realBaseline).toBe(r.fid.realBaseline);
  });

  it('--sanity: blurred, noisy, repeated and one-class digits score far worse than real ones', async () => {
    // The classifier trained above (150 steps of the tiny one); the real-digit "samples" set m = 300.
    const res = await runEval({ run: path.join(tmp, 'runs/real'), samples: path.join(tmp, 'real_samples'), out: path.join(tmp, 'eval_sanity'), sanity: true, log: () => {} });
    const t = res.sanity!;
    console.log(`eval.test: sanity table\n${formatSanityTable(t)}`);
    expect(t.setSize).toBe(300);
    const row = (re: RegExp) => {
      const r = t.rows.find((x) => re.test(x.name));
      expect(r, String(re)).toBeDefined();
      return r!;
    };
    const real = row(/real held-out \(5 halvings/);
    expect(real.ratio).toBeCloseTo(1, 12); // the reference is their mean
    const realWorst = real.range![1];
    // Real digits, however split, stay near the reference; every degradation is well above the worst of them.
    expect(real.range![0]).toBeGreaterThan(0.4);
    expect(realWorst).toBeLessThan(2);
    expect(row(/blurred, σ 0\.75/).ratio).toBeGreaterThan(1.5 * realWorst);
    expect(row(/blurred, σ 1\.5/).ratio).toBeGreaterThan(3 * realWorst);
    expect(row(/blurred, σ 1\.5/).ratio).toBeGreaterThan(row(/blurred, σ 0\.75/).ratio);
    expect(row(/pixel noise/).ratio).toBeGreaterThan(1.5 * realWorst);
    expect(row(/each 10×/).ratio).toBeGreaterThan(2 * realWorst);
    expect(row(/one class/).ratio).toBeGreaterThan(10 * realWorst);
    // Near-duplicates: every repeated image has its twins; real digits rarely do.
    expect(row(/each 10×/).nearDuplicates).toBe(1);
    expect(real.nearDuplicates).toBeLessThan(0.2);
    // The samples here are real training digits: they score like real digits.
    expect(row(/the samples/).ratio).toBeLessThan(2 * realWorst);
    // The feature layer alone is the blinder metric the lower layers were added for.
    expect(row(/blurred, σ 0\.75/).featureLayerRatio).toBeLessThan(row(/blurred, σ 0\.75/).ratio);
    const json = JSON.parse(fs.readFileSync(res.files.json, 'utf8'));
    expect(json.sanity.rows.map((r: { set: string }) => r.set)).toEqual(t.rows.map((r) => r.name));
    expect(json.near_duplicates.samples).toBe(res.report.nearDuplicates.generated);
  });
});

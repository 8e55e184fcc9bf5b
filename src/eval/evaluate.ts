/**
 * `sdlab eval`: how good are generated digits? Three numbers a digit classifier can give
 * (the fast.ai course's recipe, with sdlab's own classifier, see classifier.ts):
 *
 *   (a) conditional accuracy — the share of samples the classifier reads as the digit their
 *       prompt asked for, per digit and overall (does the text conditioning work?);
 *   (b) FID between the samples and held-out real digits on three layers of the classifier
 *       (features.ts: the feature layer alone is blind to blur and noise), beside the same FID
 *       between two disjoint sets of held-out real digits of the same size (the floor set by
 *       sampling noise alone: a generator cannot do better than that), both averaged over random
 *       halvings of the real digits; and the near-duplicate rate of samples and real digits;
 *   (c) the class histogram of what the classifier sees, to catch mode collapse (a generator
 *       drawing mostly 1s shows it here even when every 1 is crisp).
 *
 *   const report = evaluateSamples(classifier, samples, realHeldOut, { seed: 0 });
 *   console.log(formatReport(report));
 *
 * `runEval` adds the files: eval.json, histogram.png (bar chart) and misclassified.png, and with
 * `sanity` the table of sanity.ts (real, blurred, noisy, repeated, one-class digits, the VAE round trip).
 */
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { AutoencoderKL } from '../autoencoder/index.ts';
import { type Dataset, subset } from '../data/index.ts';
import { type Canvas, cropPixels, padPixels, vaeCanvas } from '../data/canvas.ts';
import { check } from '../util/errors.ts';
import { writeFileAtomic } from '../util/fs.ts';
import { Random } from '../util/random.ts';
import { Raster, renderGrid, gridLayout, savePng, textWidth, niceTicks, formatTick, PALETTE, type FloatImage, type RGB } from '../viz/index.ts';
import { NEAR_DUPLICATE_COSINE, featureGroups, fidReference, multiLayerFid, nearDuplicateRate, pickRows } from './features.ts';
import { type ImageClassifier, type ClassifierTraining, ensureClassifier, asImageClassifier, loadSplit, signedImages } from './classifier.ts';
import { loadSamples, type Samples, SIZE } from './samples.ts';
import { denormalize, toSigned, toUnit } from '../data/pixels.ts';
import { type SanityExtras, type SanityTable, sanityTable } from './sanity.ts';

export const NUM_DIGITS = 10;

// ---------------------------------------------------------------------------------------------
// The metrics (plain functions of predictions, so they are tested without a network)

export interface DigitAccuracy {
  digit: number;
  /** Samples prompted for this digit. */
  n: number;
  /** Of those, classified as this digit. */
  correct: number;
  /** correct / n, or null when n = 0. */
  accuracy: number | null;
}

export interface ConditionalAccuracy {
  perDigit: DigitAccuracy[];
  /** Over all samples with a prompted digit (null when there are none). */
  overall: number | null;
  /** Mean of the per-digit accuracies that exist (insensitive to how many of each were drawn). */
  meanPerDigit: number | null;
  /** Samples with a prompted digit. */
  n: number;
}

/** Conditional accuracy: preds[i] === digits[i] among samples with digits[i] ≥ 0. */
export function conditionalAccuracy(preds: ArrayLike<number>, digits: ArrayLike<number>, numClasses = NUM_DIGITS): ConditionalAccuracy {
  check(preds.length === digits.length, `conditionalAccuracy: ${preds.length} predictions for ${digits.length} samples.`);
  const n = new Array<number>(numClasses).fill(0);
  const ok = new Array<number>(numClasses).fill(0);
  for (let i = 0; i < digits.length; i++) {
    const d = digits[i];
    if (d < 0) continue;
    n[d]++;
    if (preds[i] === d) ok[d]++;
  }
  const perDigit = n.map((count, digit) => ({ digit, n: count, correct: ok[digit], accuracy: count > 0 ? ok[digit] / count : null }));
  const total = n.reduce((a, b) => a + b, 0);
  const present = perDigit.filter((d) => d.accuracy !== null);
  return {
    perDigit,
    overall: total > 0 ? ok.reduce((a, b) => a + b, 0) / total : null,
    meanPerDigit: present.length ? present.reduce((a, d) => a + d.accuracy!, 0) / present.length : null,
    n: total,
  };
}

/** How many samples were classified as each class. */
export function classHistogram(preds: ArrayLike<number>, numClasses = NUM_DIGITS): number[] {
  const h = new Array<number>(numClasses).fill(0);
  for (let i = 0; i < preds.length; i++) h[preds[i]]++;
  return h;
}

/** confusion[prompted][predicted] counts (unconditional samples left out). */
export function confusionMatrix(preds: ArrayLike<number>, digits: ArrayLike<number>, numClasses = NUM_DIGITS): number[][] {
  const m = Array.from({ length: numClasses }, () => new Array<number>(numClasses).fill(0));
  for (let i = 0; i < digits.length; i++) if (digits[i] >= 0) m[digits[i]][preds[i]]++;
  return m;
}

/** Entropy of the histogram divided by log(numClasses): 1 = every class equally often, 0 = one class only. */
export function normalizedEntropy(counts: readonly number[]): number {
  const total = counts.reduce((a, b) => a + b, 0);
  if (total === 0 || counts.length < 2) return 0;
  let h = 0;
  for (const c of counts) if (c > 0) h -= (c / total) * Math.log(c / total);
  return h / Math.log(counts.length);
}

// ---------------------------------------------------------------------------------------------
// Evaluation

export interface RealDigits {
  /** n × 32 × 32 in [-1, 1]. */
  images: Float32Array;
  labels: ArrayLike<number>;
  n: number;
}

export interface EvalOptions {
  /** Seeds which real digits and which samples go into the FID sets. */
  seed?: number;
  /** Use at most this many held-out real digits (split into two halves). Default: all. */
  nReal?: number;
  /** Random halvings of the real digits the FID and its baseline are averaged over (default 5). */
  halvings?: number;
  /** Also the sanity table (sanity.ts), with these extra sets. */
  sanity?: SanityExtras;
}

export interface EvalReport {
  samples: { source: string; n: number; withDigit: number };
  accuracy: ConditionalAccuracy;
  histogram: { predicted: number[]; prompted: number[]; entropy: number };
  confusion: number[][];
  fid: {
    /** FID(samples, real set A), summed over the classifier's layers (features.ts). */
    generated: number;
    /** FID(real set A, real set B): the noise floor at this sample size. */
    realBaseline: number;
    /** Images in each of the sets compared (samples are subsampled to this when there are more). */
    setSize: number;
    /** Width of the feature layer (the widest layer: the FID note compares it with the set size). */
    featureDim: number;
    meanTerm: number;
    covTerm: number;
    /** Each layer's share of both numbers (w_l · d²_l) and its weight w_l. */
    layers: Array<{ name: string; dim: number; weight: number; generated: number; realBaseline: number }>;
    /** The feature layer alone: the FID sdlab reported before the lower layers were added. */
    featureLayerOnly: { generated: number; realBaseline: number };
    /** Both numbers for each random halving of the real digits (generated and realBaseline are their means). */
    draws: Array<{ generated: number; realBaseline: number }>;
  };
  /** With opts.sanity. */
  sanity?: SanityTable;
  /** Share of images with a near-duplicate (cosine ≥ threshold) in the same set: the FID's samples and real set B. */
  nearDuplicates: { generated: number; real: number; threshold: number };
  /** Mean top-class probability: how sure the classifier is (samples vs held-out real). */
  confidence: { generated: number; real: number };
  /** Classifier accuracy on the held-out real digits used here (its own error floor). */
  realAccuracy: number;
  /** Indices of samples whose prediction differs from their prompted digit. */
  misclassified: number[];
  preds: Int32Array;
}

function meanMaxProb(probs: Float32Array, n: number, c: number): number {
  let s = 0;
  for (let i = 0; i < n; i++) {
    let m = 0;
    for (let k = 0; k < c; k++) m = Math.max(m, probs[i * c + k]);
    s += m;
  }
  return n ? s / n : 0;
}

function gather(src: Float32Array, idx: ArrayLike<number>, dim: number): Float32Array {
  const out = new Float32Array(idx.length * dim);
  for (let k = 0; k < idx.length; k++) out.set(src.subarray(idx[k] * dim, (idx[k] + 1) * dim), k * dim);
  return out;
}

/**
 * Classifies the samples and the real digits and computes every number of the report.
 * FID sets: the real digits are shuffled (seeded) and split into disjoint A and B of size
 * m = min(#samples, ⌊#real / 2⌋); the samples are subsampled to m when there are more, so
 * FID(samples, A) and FID(B, A) compare sets of the same size and bias. Both are averaged over
 * `halvings` random splits of the same real digits into A and B (the first is the plain
 * shuffle): one split's real-vs-real FID varies by tens of percent from the next at 500 digits.
 */
export function evaluateSamples(classifier: ImageClassifier, samples: Samples, real: RealDigits, opts: EvalOptions = {}): EvalReport {
  const seed = opts.seed ?? 0;
  const nReal = Math.min(real.n, opts.nReal ?? real.n);
  check(samples.n >= 2, `eval: need at least 2 samples for FID, got ${samples.n}.`);
  check(nReal >= 4, `eval: need at least 4 held-out real digits (--n-real), got ${nReal}.`);
  const px = SIZE * SIZE;
  check(real.images.length === real.n * px, `eval: real digits must be ${SIZE}×${SIZE}.`);

  const gen = classifier.classify(samples.images, samples.n);
  const realOrder = new Random(`${seed}/eval real`).permutation(real.n).subarray(0, nReal);
  const realImgs = gather(real.images, realOrder, px);
  const realLabels = Int32Array.from(realOrder, (i) => real.labels[i]);
  const rc = classifier.classify(realImgs, nReal);
  let realOk = 0;
  for (let k = 0; k < nReal; k++) if (rc.preds[k] === realLabels[k]) realOk++;

  const F = classifier.featureDim;
  const m = Math.min(samples.n, Math.floor(nReal / 2));
  const realGroups = featureGroups(rc, F);
  const genIdx = samples.n > m ? new Random(`${seed}/eval samples`).permutation(samples.n).subarray(0, m) : Int32Array.from({ length: m }, (_, i) => i);
  const gGroups = pickRows(featureGroups(gen, F), genIdx);
  // Halving k: A = the first m of its order of the real digits, B = the next m.
  const K = Math.max(1, opts.halvings ?? 5);
  const halves = Array.from({ length: K }, (_, k) => {
    const order = k === 0 ? Int32Array.from({ length: nReal }, (_, i) => i) : new Random(`${seed}/eval real halving ${k}`).permutation(nReal);
    const a = order.subarray(0, m), b = order.subarray(m, 2 * m);
    const ref = fidReference(pickRows(realGroups, a), m);
    const bGroups = pickRows(realGroups, b);
    return { a, b, ref, bGroups, base: multiLayerFid(ref, bGroups, m), gen: multiLayerFid(ref, gGroups, m) };
  });
  const mean = (f: (h: (typeof halves)[number]) => number) => halves.reduce((s, h) => s + f(h), 0) / K;
  const ref0 = halves[0].ref;
  const fid = {
    generated: mean((h) => h.gen.fid), realBaseline: mean((h) => h.base.fid), setSize: m, featureDim: Math.max(...ref0.dims),
    meanTerm: mean((h) => h.gen.meanTerm), covTerm: mean((h) => h.gen.covTerm),
    layers: ref0.names.map((name, l) => ({ name, dim: ref0.dims[l], weight: mean((h) => h.ref.weights[l]), generated: mean((h) => h.gen.perLayer[l]), realBaseline: mean((h) => h.base.perLayer[l]) })),
    featureLayerOnly: { generated: mean((h) => h.gen.featureLayerOnly), realBaseline: mean((h) => h.base.featureLayerOnly) },
    draws: halves.map((h) => ({ generated: h.gen.fid, realBaseline: h.base.fid })),
  };
  const nearDuplicates = { generated: nearDuplicateRate(gGroups, m, ref0.weights), real: nearDuplicateRate(halves[0].bGroups, m, ref0.weights), threshold: NEAR_DUPLICATE_COSINE };

  const accuracy = conditionalAccuracy(gen.preds, samples.digits);
  const predicted = classHistogram(gen.preds);
  const prompted = new Array<number>(NUM_DIGITS).fill(0);
  for (const d of samples.digits) if (d >= 0) prompted[d]++;
  const misclassified: number[] = [];
  for (let i = 0; i < samples.n; i++) if (samples.digits[i] >= 0 && gen.preds[i] !== samples.digits[i]) misclassified.push(i);
  const C = gen.probs.length / samples.n;

  let sanity: SanityTable | undefined;
  if (opts.sanity) {
    /** Share of preds equal to their label, among labels ≥ 0 (unconditional samples have −1). */
    const readRight = (preds: ArrayLike<number>, labels: ArrayLike<number>) => {
      let ok = 0, n = 0;
      for (let i = 0; i < labels.length; i++) {
        if (labels[i] < 0) continue;
        n++;
        if (preds[i] === labels[i]) ok++;
      }
      return n ? ok / n : null;
    };
    const b0 = halves[0].b;
    sanity = sanityTable({
      classifier, m, seed, ref: ref0,
      baseline: { fid: fid.realBaseline, featureLayer: fid.featureLayerOnly.realBaseline },
      B: { images: gather(realImgs, b0, px), labels: Int32Array.from(b0, (i) => realLabels[i]) },
      halvings: halves.map((h) => ({
        fid: h.base.fid, featureLayer: h.base.featureLayerOnly, nearDuplicates: nearDuplicateRate(h.bGroups, m, h.ref.weights),
        accuracy: readRight(Int32Array.from(h.b, (i) => rc.preds[i]), Int32Array.from(h.b, (i) => realLabels[i]))!,
      })),
      samples: {
        n: samples.n, fid: fid.generated, featureLayer: fid.featureLayerOnly.generated, nearDuplicates: nearDuplicates.generated,
        accuracy: readRight(Int32Array.from(genIdx, (i) => gen.preds[i]), Int32Array.from(genIdx, (i) => samples.digits[i])),
      },
      ...opts.sanity,
    });
  }

  return {
    samples: { source: samples.source, n: samples.n, withDigit: accuracy.n },
    accuracy,
    histogram: { predicted, prompted, entropy: normalizedEntropy(predicted) },
    confusion: confusionMatrix(gen.preds, samples.digits),
    fid,
    nearDuplicates,
    confidence: { generated: meanMaxProb(gen.probs, samples.n, C), real: meanMaxProb(rc.probs, nReal, C) },
    realAccuracy: realOk / nReal,
    misclassified,
    preds: gen.preds,
    sanity,
  };
}

// ---------------------------------------------------------------------------------------------
// Output

const pct = (v: number | null) => (v === null ? '—' : `${(v * 100).toFixed(1)}%`);
/** "1.52×": a distance as a multiple of its real-vs-real baseline. */
export const ratio = (v: number, baseline: number) => `${(v / baseline).toFixed(2)}×`;

/** The report as a plain-text table. */
export function formatReport(r: EvalReport): string {
  const col = (s: string | number) => String(s).padStart(7);
  const digits = r.accuracy.perDigit;
  const lines = [
    `samples: ${r.samples.n} from ${r.samples.source} (${r.samples.withDigit} with a prompted digit)`,
    '',
    `${'digit'.padEnd(10)}${digits.map((d) => col(d.digit)).join('')}${col('all')}`,
    `${'prompted'.padEnd(10)}${digits.map((d) => col(d.n)).join('')}${col(r.accuracy.n)}`,
    `${'correct'.padEnd(10)}${digits.map((d) => col(d.correct)).join('')}${col(digits.reduce((s, d) => s + d.correct, 0))}`,
    `${'accuracy'.padEnd(10)}${digits.map((d) => col(pct(d.accuracy))).join('')}${col(pct(r.accuracy.overall))}`,
    `${'seen as'.padEnd(10)}${r.histogram.predicted.map((c) => col(c)).join('')}${col(r.samples.n)}`,
    '',
    `conditional accuracy: ${pct(r.accuracy.overall)} overall, ${pct(r.accuracy.meanPerDigit)} mean per digit (classifier on held-out real digits: ${pct(r.realAccuracy)})`,
    `FID (classifier, ${r.fid.layers.map((l) => `${l.name} ${l.dim}-d`).join(' + ')}; ${r.fid.setSize} vs ${r.fid.setSize} images, mean of ${r.fid.draws.length} random halvings of the real digits): generated ${r.fid.generated.toFixed(3)}   real-vs-real baseline ${r.fid.realBaseline.toFixed(3)}   (${ratio(r.fid.generated, r.fid.realBaseline)})`,
    `  feature layer alone (the FID before issue 18; blind to blur): generated ${r.fid.featureLayerOnly.generated.toFixed(3)}   baseline ${r.fid.featureLayerOnly.realBaseline.toFixed(3)}   (${ratio(r.fid.featureLayerOnly.generated, r.fid.featureLayerOnly.realBaseline)})`,
    `near-duplicates (another image of the same set at cosine ≥ ${r.nearDuplicates.threshold} in those features): ${pct(r.nearDuplicates.generated)} of the samples, ${pct(r.nearDuplicates.real)} of real digits`,
    `class histogram entropy: ${r.histogram.entropy.toFixed(3)} of 1 (1 = every digit equally often; low = mode collapse)`,
    `classifier confidence: ${pct(r.confidence.generated)} on samples, ${pct(r.confidence.real)} on real digits`,
  ];
  if (r.fid.setSize < r.fid.featureDim) {
    lines.push(`note: ${r.fid.setSize} images per FID set is fewer than the ${r.fid.featureDim} feature dimensions, so FID is noisy: compare it only with the baseline beside it.`);
  }
  return lines.join('\n');
}

/** A bar chart of predicted classes, with the prompted counts marked on each bar. */
export function renderHistogram(predicted: readonly number[], prompted?: readonly number[], opts: { title?: string; width?: number; height?: number } = {}): Raster {
  const W = opts.width ?? 640, H = opts.height ?? 360, fs = 2;
  const white: RGB = [255, 255, 255], ink: RGB = [30, 30, 30], grid: RGB = [225, 225, 225];
  const barColor = PALETTE[0], markColor = PALETTE[1];
  const r = new Raster(W, H, white);
  const yMax = Math.max(1, ...predicted, ...(prompted ?? []));
  const ticks = niceTicks(0, yMax, 5);
  const top = 34, bottom = H - 30;
  const left = 16 + Math.max(...ticks.map((t) => textWidth(formatTick(t), fs))), right = W - 12;
  const hi = Math.max(yMax, ticks[ticks.length - 1]);
  const y = (v: number) => bottom - ((bottom - top) * v) / hi;
  if (opts.title) r.text(left, 6, opts.title, ink, fs);
  for (const t of ticks) {
    r.line(left, y(t), right, y(t), grid);
    const label = formatTick(t);
    r.text(left - 6 - textWidth(label, fs), y(t) - 5, label, ink, fs);
  }
  const n = predicted.length;
  const slot = (right - left) / n;
  const bw = Math.max(2, Math.floor(slot * 0.6));
  for (let i = 0; i < n; i++) {
    const cx = left + slot * (i + 0.5);
    const v = predicted[i];
    r.fillRect(cx - bw / 2, y(v), bw, bottom - y(v), barColor);
    if (prompted) r.fillRect(cx - bw / 2 - 3, y(prompted[i]) - 1, bw + 6, 3, markColor);
    // The count goes above the bar and above its prompted mark, whichever is higher.
    const label = String(v);
    r.text(cx - textWidth(label, 1) / 2, Math.min(y(v), prompted ? y(prompted[i]) - 1 : Infinity) - 8, label, ink, 1);
    const d = String(i);
    r.text(cx - textWidth(d, fs) / 2, bottom + 8, d, ink, fs);
  }
  r.line(left, bottom, right, bottom, ink);
  // Legend, top right.
  const legend: [string, RGB][] = [['seen as', barColor], ...(prompted ? ([['prompted', markColor]] as [string, RGB][]) : [])];
  let lx = right - legend.reduce((s, [t]) => s + textWidth(t, fs) + 30, 0);
  for (const [t, c] of legend) {
    r.fillRect(lx, 10, 14, 10, c);
    r.text(lx + 18, 10, t, ink, fs);
    lx += textWidth(t, fs) + 30;
  }
  return r;
}

/** Up to `max` misclassified samples in a grid, each labelled "<prompted> as <seen>". */
export function renderMisclassified(samples: Samples, report: EvalReport, max = 64): Raster | null {
  const idx = report.misclassified.slice(0, max);
  if (idx.length === 0) return null;
  const px = SIZE * SIZE;
  const cells: FloatImage[] = idx.map((i) => ({ data: samples.images.subarray(i * px, (i + 1) * px).map(toUnit), height: SIZE, width: SIZE }));
  const gridOpts = { cols: Math.min(8, idx.length), scale: 3, pad: 14, title: `misclassified: prompted as seen (${idx.length} of ${report.misclassified.length})` };
  const raster = renderGrid(cells, gridOpts);
  const layout = gridLayout(cells.length, SIZE, SIZE, gridOpts);
  // Each label goes in the gap above its cell.
  idx.forEach((i, k) => {
    const { x, y } = layout.cell(Math.floor(k / layout.cols), k % layout.cols);
    raster.text(x, y - 12, `${samples.digits[i]} as ${report.preds[i]}`, [255, 200, 80], 2);
  });
  return raster;
}

export interface RunEvalOptions {
  /** Run directory (holds or receives classifier/). */
  run: string;
  /** Samples directory or .safetensors file. */
  samples: string;
  out: string;
  nReal?: number;
  seed?: number;
  /** --data for the real digits (and the classifier's training). */
  data?: string;
  /** Classifier training, when it is not cached yet. */
  epochs?: number;
  retrain?: boolean;
  backend?: string;
  log?: (line: string) => void;
  /** Also score the sanity sets (sanity.ts): real digits, degraded copies, the run's VAE round trip. */
  sanity?: boolean;
}

export interface RunEvalResult {
  report: EvalReport;
  /** With opts.sanity. */
  sanity: SanityTable | null;
  /** How the samples were drawn, when samples.json records it. */
  sampling: Samples['sampling'];
  json: Record<string, unknown>;
  classifier: { dir: string; training: ClassifierTraining; trainedNow: boolean };
  files: { json: string; histogram: string; misclassified: string | null };
}

/** Everything `sdlab eval` does: samples → classifier (trained once) → report → files. */
export async function runEval(opts: RunEvalOptions): Promise<RunEvalResult> {
  const log = opts.log ?? ((line: string) => console.log(line));
  // Read the samples first: a typo in --samples should not cost a classifier training run.
  const samples = loadSamples(opts.samples);
  const ensured = ensureClassifier(opts.run, {
    data: opts.data, epochs: opts.epochs, retrain: opts.retrain, backend: opts.backend, log,
  });
  try {
    const { train, val } = loadSplit(opts.data);
    const real: RealDigits = { images: signedImages(val), labels: val.labels, n: val.n };
    const classifier = asImageClassifier(ensured.model);
    const extras = opts.sanity ? sanityExtras(opts, train) : null;
    let report: EvalReport;
    try {
      report = evaluateSamples(classifier, samples, real, { seed: opts.seed, nReal: opts.nReal, sanity: extras?.extras });
    } finally {
      extras?.dispose();
    }
    const sanity = report.sanity ?? null;

    const json = {
      run: opts.run,
      samples: report.samples,
      classifier: { dir: ensured.dir, held_out_accuracy: ensured.training.val_accuracy, trained_now: ensured.trainedNow },
      conditional_accuracy: {
        overall: report.accuracy.overall,
        mean_per_digit: report.accuracy.meanPerDigit,
        per_digit: report.accuracy.perDigit,
      },
      fid: {
        generated_vs_real: report.fid.generated,
        real_vs_real_baseline: report.fid.realBaseline,
        set_size: report.fid.setSize,
        feature_dim: report.fid.featureDim,
        mean_term: report.fid.meanTerm,
        cov_term: report.fid.covTerm,
      },
      fid_layers: report.fid.layers,
      fid_halvings: report.fid.draws,
      fid_feature_layer_only: { generated_vs_real: report.fid.featureLayerOnly.generated, real_vs_real_baseline: report.fid.featureLayerOnly.realBaseline },
      near_duplicates: { samples: report.nearDuplicates.generated, real: report.nearDuplicates.real, cosine_threshold: report.nearDuplicates.threshold },
      sampling: samples.sampling ?? null,
      histogram: { seen_as: report.histogram.predicted, prompted: report.histogram.prompted, normalized_entropy: report.histogram.entropy },
      confusion: { rows: 'prompted digit', cols: 'classified as', counts: report.confusion },
      confidence: report.confidence,
      real_accuracy: report.realAccuracy,
      misclassified: report.misclassified.map((i) => samples.names[i]),
      ...(sanity
        ? {
            sanity: {
              set_size: sanity.setSize,
              reference_fid: sanity.reference.fid,
              reference_fid_feature_layer_only: sanity.reference.featureLayer,
              rows: sanity.rows.map((r) => ({
                set: r.name, fid: r.fid, fid_ratio: r.ratio, ...(r.range ? { fid_ratio_range: r.range, feature_layer_only_ratio_range: r.featureLayerRange } : {}), feature_layer_only_fid: r.featureLayerFid, feature_layer_only_ratio: r.featureLayerRatio,
                near_duplicates: r.nearDuplicates, read_right: r.accuracy,
              })),
            },
          }
        : {}),
    };
    const files = {
      json: path.join(opts.out, 'eval.json'),
      histogram: path.join(opts.out, 'histogram.png'),
      misclassified: null as string | null,
    };
    await writeFileAtomic(files.json, JSON.stringify(json, null, 2) + '\n');
    await savePng(files.histogram, renderHistogram(report.histogram.predicted, report.accuracy.n > 0 ? report.histogram.prompted : undefined, { title: `classified as (n=${samples.n})` }));
    const mis = renderMisclassified(samples, report);
    if (mis) {
      files.misclassified = path.join(opts.out, 'misclassified.png');
      await savePng(files.misclassified, mis);
    }
    return { report, sanity, sampling: samples.sampling ?? null, json, classifier: { dir: ensured.dir, training: ensured.training, trainedNow: ensured.trainedNow }, files };
  } finally {
    ensured.model.dispose();
  }
}

/** The sanity table's extra sets for a run: training 1s for the one-class row, and the run's VAE round trip when it has one (dispose() frees the VAE). */
function sanityExtras(opts: RunEvalOptions, train: Dataset): { extras: SanityExtras; dispose: () => void } {
  const digit = 1;
  const idx: number[] = [];
  for (let i = 0; i < train.n; i++) if (train.labels[i] === digit) idx.push(i);
  const singleClass = { images: signedImages(subset(train, idx)), n: idx.length, digit };
  const vaeDir = path.join(opts.run, 'vae');
  let vae: AutoencoderKL | null = null;
  if (fs.existsSync(path.join(vaeDir, 'config.json'))) {
    vae = AutoencoderKL.fromPretrained(vaeDir);
    // The round trip is for a digit VAE on eval's 32×32 canvas; any other is left out.
    if (vae.config.in_channels !== 1 || vae.config.sample_size !== SIZE) {
      vae.dispose();
      vae = null;
    }
  }
  const roundTrip = vae ? { name: `the run's VAE`, apply: vaeRoundTrip(vae, vaeCanvas(vaeDir, { sampleSize: SIZE, inChannels: 1 }).canvas) } : undefined;
  return { extras: { singleClass, roundTrip }, dispose: () => vae?.dispose() };
}

/** decode(encode(x).mean) of n images in [-1, 1], cropped to the data's own size and put back on the canvas, as `sdlab sample` writes them. */
export function vaeRoundTrip(vae: AutoencoderKL, canvas: Canvas): (images: Float32Array, n: number) => Float32Array {
  return (images, n) => {
    const px = SIZE * SIZE;
    const out = new Float32Array(n * px);
    for (let s = 0; s < n; s += 64) {
      const b = Math.min(64, n - s);
      const y = tf.tidy(() => denormalize(vae.decode(vae.encode(tf.tensor4d(images.subarray(s * px, (s + b) * px), [b, SIZE, SIZE, 1])).mean)));
      const data = y.dataSync() as Float32Array;
      y.dispose();
      for (let k = 0; k < b; k++) {
        const native = cropPixels(data.subarray(k * px, (k + 1) * px), canvas);
        const back = padPixels(native, canvas.nativeHeight, canvas.nativeWidth, canvas);
        for (let p = 0; p < px; p++) out[(s + k) * px + p] = toSigned(back[p]);
      }
    }
    return out;
  };
}

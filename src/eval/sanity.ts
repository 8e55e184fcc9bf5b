/**
 * The sanity table of `sdlab eval --sanity`: the metric scored on sets whose answer is known, so
 * you can see how far to trust it. It shares the FID's sets (evaluate.ts): the held-out real
 * digits split at random into A and B of m digits each, several times; the real-vs-real reference
 * (1×) is the mean FID(B, A) over those halvings. The rows, each scored against the first A:
 *
 *   real held-out             FID(B, A) of each halving (the spread of the reference itself)
 *   blur σ 0.75, blur σ 1.5   the first B under a Gaussian blur (degrade.ts)
 *   pixel noise σ 0.1         B + noise on the [0, 1] scale, clipped
 *   m/10 images × 10          a tenth of B, each repeated ten times (a generator that repeats itself)
 *   one class                 m training digits of a single class (mode collapse; the held-out
 *                             digits have too few of one class)
 *   (VAE round trip)          B through the run's autoencoder, at the data's own size, when given
 *   (samples)                 the samples being evaluated: their FID and near-duplicates of the report
 *
 * Each row: the multi-layer FID ÷ the reference, the same for the feature layer alone (what sdlab
 * measured before), the near-duplicate rate, and how often the classifier reads the set's digits
 * as their labels. A trustworthy metric puts real digits near 1× and the blurred, noisy, repeated
 * and one-class sets far above them. Ratios depend on m (FID's small-sample bias shrinks them as
 * m falls), so compare rows of one table, not tables of different set sizes.
 */
import { check } from '../util/errors.ts';
import { Random } from '../util/random.ts';
import type { ImageClassifier } from './classifier.ts';
import { gaussianBlur, pixelNoise, repeatImages } from './degrade.ts';
import { type FidReference, featureGroups, multiLayerFid, nearDuplicateRate } from './features.ts';
import { SIZE } from './samples.ts';

export interface SanityRow {
  name: string;
  n: number;
  /** Multi-layer FID against reference A, and as a multiple of the real-vs-real reference. */
  fid: number;
  ratio: number;
  /** For a row of several draws: the smallest and largest ratio, multi-layer and feature layer alone (the other fields are means). */
  range?: [number, number];
  featureLayerRange?: [number, number];
  /** The feature layer alone (sdlab's FID before the lower layers were added), and as a multiple of its own reference. */
  featureLayerFid: number;
  featureLayerRatio: number;
  nearDuplicates: number;
  /** Share classified as the set's labels (prompted digits for samples); null without labels. */
  accuracy: number | null;
}

export interface SanityTable {
  /** Images per set (m). */
  setSize: number;
  /** The real-vs-real reference: mean FID(B, A) over the halvings, multi-layer and feature layer alone. */
  reference: { fid: number; featureLayer: number };
  rows: SanityRow[];
}

/** The sets a caller adds beyond the held-out digits. */
export interface SanityExtras {
  /** m or more training digits of one class (n × 32 × 32 in [-1, 1]). */
  singleClass?: { images: Float32Array; n: number; digit: number };
  /** Maps n images to n images, e.g. through the run's autoencoder: a row of B's round trip. */
  roundTrip?: { name: string; apply: (images: Float32Array, n: number) => Float32Array };
}

/** What evaluateSamples has computed already, plus the extra sets. */
export interface SanityContext extends SanityExtras {
  classifier: ImageClassifier;
  m: number;
  seed: number;
  /** The first halving's A. */
  ref: FidReference;
  baseline: { fid: number; featureLayer: number };
  /** The first halving's B (m × 32 × 32 in [-1, 1]) and its labels. */
  B: { images: Float32Array; labels: Int32Array };
  /** FID(B, A) of each halving, with B's near-duplicate rate and accuracy. */
  halvings: Array<{ fid: number; featureLayer: number; nearDuplicates: number; accuracy: number }>;
  /** The report's numbers for the samples. */
  samples?: { n: number; fid: number; featureLayer: number; nearDuplicates: number; accuracy: number | null };
}

const PX = SIZE * SIZE;

/** Scores every sanity set (see the file comment). */
export function sanityTable(ctx: SanityContext): SanityTable {
  const { classifier, m, ref, baseline, B } = ctx;
  check(m >= 10, `eval --sanity: need sets of at least 10 images (samples and half the held-out digits), got ${m}.`);
  const F = classifier.featureDim;
  const row = (name: string, fid: number, featureLayer: number, nearDuplicates: number, accuracy: number | null): SanityRow => ({
    name, n: m, fid, ratio: fid / baseline.fid, featureLayerFid: featureLayer, featureLayerRatio: featureLayer / baseline.featureLayer, nearDuplicates, accuracy,
  });
  const score = (name: string, images: Float32Array, labels: ArrayLike<number>): SanityRow => {
    const c = classifier.classify(images, m);
    const groups = featureGroups(c, F);
    const d = multiLayerFid(ref, groups, m);
    let ok = 0;
    for (let i = 0; i < m; i++) if (c.preds[i] === labels[i]) ok++;
    return row(name, d.fid, d.featureLayerOnly, nearDuplicateRate(groups, m, ref.weights), ok / m);
  };

  const rows: SanityRow[] = [];
  const h = ctx.halvings;
  const mean = (f: (x: (typeof h)[number]) => number) => h.reduce((s, x) => s + f(x), 0) / h.length;
  const real = row(`real held-out (${h.length} halvings, B vs A)`, mean((x) => x.fid), mean((x) => x.featureLayer), mean((x) => x.nearDuplicates), mean((x) => x.accuracy));
  if (h.length > 1) {
    real.range = [Math.min(...h.map((x) => x.fid)) / baseline.fid, Math.max(...h.map((x) => x.fid)) / baseline.fid];
    real.featureLayerRange = [Math.min(...h.map((x) => x.featureLayer)) / baseline.featureLayer, Math.max(...h.map((x) => x.featureLayer)) / baseline.featureLayer];
  }
  rows.push(real);
  rows.push(score('B blurred, σ 0.75 px', gaussianBlur(B.images, m, SIZE, 0.75), B.labels));
  rows.push(score('B blurred, σ 1.5 px', gaussianBlur(B.images, m, SIZE, 1.5), B.labels));
  rows.push(score('B + pixel noise σ 0.1', pixelNoise(B.images, 0.1, new Random(`${ctx.seed}/eval sanity noise`)), B.labels));
  const distinct = Math.ceil(m / 10);
  rows.push(score(`${distinct} of B, each 10×`, repeatImages(B.images, PX, distinct, 10, m), Int32Array.from({ length: m }, (_, k) => B.labels[Math.floor(k / 10) % distinct])));
  if (ctx.singleClass) {
    const s = ctx.singleClass;
    check(s.n >= m, `eval --sanity: ${s.n} digits of class ${s.digit}, need ${m}.`);
    rows.push(score(`one class (${m} training ${s.digit}s)`, s.images.subarray(0, m * PX), new Int32Array(m).fill(s.digit)));
  }
  if (ctx.roundTrip) rows.push(score(`B through ${ctx.roundTrip.name}`, ctx.roundTrip.apply(B.images, m), B.labels));
  if (ctx.samples) {
    const s = ctx.samples;
    rows.push(row(`the samples (${m} of ${s.n})`, s.fid, s.featureLayer, s.nearDuplicates, s.accuracy));
  }
  return { setSize: m, reference: baseline, rows };
}

/** The table as text. */
export function formatSanityTable(t: SanityTable): string {
  const pct = (v: number | null) => (v === null ? '—' : `${(v * 100).toFixed(1)}%`);
  const x = (v: number, range?: [number, number]) => (range ? `${range[0].toFixed(2)}–${range[1].toFixed(2)}×` : `${v.toFixed(2)}×`);
  const w = Math.max(...t.rows.map((r) => r.name.length), 10);
  const lines = [
    `sanity check: the metric on sets whose answer is known (${t.setSize} images each; 1× = the real-vs-real reference, FID ${t.reference.fid.toFixed(3)})`,
    `${'set'.padEnd(w)}  ${'FID ÷ ref'.padStart(10)}  ${'feature layer only'.padStart(18)}  ${'near-dup'.padStart(8)}  ${'read right'.padStart(10)}`,
  ];
  for (const r of t.rows) {
    lines.push(`${r.name.padEnd(w)}  ${x(r.ratio, r.range).padStart(10)}  ${x(r.featureLayerRatio, r.featureLayerRange).padStart(18)}  ${pct(r.nearDuplicates).padStart(8)}  ${pct(r.accuracy).padStart(10)}`);
  }
  return lines.join('\n');
}

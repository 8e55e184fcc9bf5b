/**
 * How good is a CLIP? (`npx sdlab clip-eval`, and every epoch of `sdlab train clip`.) Three views,
 * all on held-out digits:
 *
 *   zero-shot classification  one prompt per class ("a handwritten seven"); each image gets the
 *                             class whose prompt embedding is most similar. Accuracy, per-class
 *                             accuracy and the confusion matrix (rows: true, columns: predicted).
 *   text → image retrieval    each caption ranks all images by similarity. recall@k = fraction of
 *                             captions whose own image is in the top k; class recall@k counts any
 *                             image of the caption's digit (many captions fit many images).
 *   similarity matrix PNG     captions × images heatmap (one example per digit by default):
 *                             a trained model shows a bright diagonal.
 *
 *   const report = await evaluateClip(clip, valSet, { limit: 1000, similarityPng: 'runs/default/clip/similarity.png' });
 *   console.log(formatClipReport(report));
 *
 * The metric functions (cosineSimilarity, zeroShotPredict, zeroShotScores, recallAtK) take plain
 * embeddings, so they are tested on hand-made vectors with known answers.
 *
 * Ties count against the model: a candidate that scores exactly as high as the right answer ranks
 * above it, so a collapsed model (all embeddings equal) scores recall 0, not 1.
 */
import * as tf from '@tensorflow/tfjs';
import { promptForDigit } from '../data/captions.ts';
import { captionOf, classPrompts, imageAt, padDataset, subset } from '../data/index.ts';
import type { Dataset } from '../data/types.ts';
import { UsageError } from '../util/errors.ts';
import { Random } from '../util/random.ts';
import { Raster, textWidth, GLYPH_HEIGHT, type FloatImage, type RGB } from '../viz/raster.ts';
import { savePng } from '../viz/png.ts';
import { type CLIPModel, l2Normalize } from '../clip/clip.ts';
import type { Tokenizer } from '../clip/tokenizer.ts';
import { toSigned } from '../data/pixels.ts';

/** Embeddings [N, P]: a tensor or rows of numbers. */
export type EmbeddingsInput = tf.Tensor2D | readonly (readonly number[])[];

/** A dense row-major matrix (rows × cols). */
export interface Matrix {
  data: Float32Array;
  rows: number;
  cols: number;
}

function toTensor(e: EmbeddingsInput): tf.Tensor2D {
  return e instanceof tf.Tensor ? e : tf.tensor2d(e.map((r) => [...r]));
}

/** Cosine similarity of every row of `a` with every row of `b` → [a rows × b rows]. */
export function cosineSimilarity(a: EmbeddingsInput, b: EmbeddingsInput): Matrix {
  const sim = tf.tidy(() => tf.matMul(l2Normalize(toTensor(a)), l2Normalize(toTensor(b)), false, true));
  const [rows, cols] = sim.shape as [number, number];
  const data = sim.dataSync() as Float32Array;
  sim.dispose();
  return { data: Float32Array.from(data), rows, cols };
}

/** For each image, the index of the most similar class embedding (first one on ties). */
export function zeroShotPredict(imageEmbeds: EmbeddingsInput, classEmbeds: EmbeddingsInput): Int32Array {
  const sim = cosineSimilarity(imageEmbeds, classEmbeds);
  const out = new Int32Array(sim.rows);
  for (let i = 0; i < sim.rows; i++) {
    let best = 0;
    for (let c = 1; c < sim.cols; c++) if (sim.data[i * sim.cols + c] > sim.data[i * sim.cols + best]) best = c;
    out[i] = best;
  }
  return out;
}

export interface ZeroShotResult {
  /** Fraction of images classified correctly. */
  accuracy: number;
  /** Accuracy per true class (NaN for a class with no images). */
  perClass: number[];
  /** confusion[true][predicted] counts. */
  confusion: number[][];
}

/** Accuracy, per-class accuracy and the confusion matrix of `predictions` against `labels`. */
export function zeroShotScores(predictions: ArrayLike<number>, labels: ArrayLike<number>, numClasses: number): ZeroShotResult {
  if (predictions.length !== labels.length) {
    throw new UsageError(`zero-shot: ${predictions.length} predictions but ${labels.length} labels.`);
  }
  const confusion = Array.from({ length: numClasses }, () => new Array<number>(numClasses).fill(0));
  let correct = 0;
  for (let i = 0; i < labels.length; i++) {
    const t = labels[i];
    const p = predictions[i];
    if (!(t >= 0 && t < numClasses && p >= 0 && p < numClasses)) throw new UsageError(`zero-shot: label ${t} / prediction ${p} outside 0..${numClasses - 1}.`);
    confusion[t][p]++;
    if (t === p) correct++;
  }
  const perClass = confusion.map((row, c) => {
    const n = row.reduce((a, b) => a + b, 0);
    return n === 0 ? NaN : row[c] / n;
  });
  return { accuracy: labels.length ? correct / labels.length : NaN, perClass, confusion };
}

export interface RecallOptions {
  /** With both label lists, a candidate is relevant to a query when the labels match; otherwise candidate i is the one match of query i. */
  queryLabels?: ArrayLike<number>;
  candidateLabels?: ArrayLike<number>;
}

/**
 * 1-based rank of the best relevant candidate of one query row: 1 + the number of irrelevant
 * candidates scoring at least as high (ties count against). Infinity if nothing is relevant.
 */
function rankOfBestRelevant(row: Float32Array, q: number, opts: RecallOptions): number {
  const byLabel = opts.queryLabels !== undefined && opts.candidateLabels !== undefined;
  const relevant = (j: number) => (byLabel ? opts.candidateLabels![j] === opts.queryLabels![q] : j === q);
  let best = -Infinity;
  let any = false;
  for (let j = 0; j < row.length; j++) {
    if (relevant(j)) {
      any = true;
      if (row[j] > best) best = row[j];
    }
  }
  if (!any) return Infinity;
  let above = 0;
  for (let j = 0; j < row.length; j++) if (!relevant(j) && row[j] >= best) above++;
  return 1 + above;
}

/**
 * recall@k for each k: the fraction of queries (rows of `sim`, e.g. captions) whose best relevant
 * candidate (columns, e.g. images) ranks within the top k. Default relevance: column i for row i.
 */
export function recallAtK(sim: Matrix, ks: readonly number[], opts: RecallOptions = {}): Record<number, number> {
  if (opts.queryLabels === undefined && sim.cols < sim.rows) {
    throw new UsageError(`recall: ${sim.rows} queries but only ${sim.cols} candidates (query i must match candidate i).`);
  }
  const ranks: number[] = [];
  for (let q = 0; q < sim.rows; q++) ranks.push(rankOfBestRelevant(sim.data.subarray(q * sim.cols, (q + 1) * sim.cols), q, opts));
  return recallFromRanks(ranks, ks);
}

function recallFromRanks(ranks: readonly number[], ks: readonly number[]): Record<number, number> {
  const out: Record<number, number> = {};
  for (const k of ks) out[k] = ranks.length ? ranks.filter((r) => r <= k).length / ranks.length : NaN;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Similarity heatmap

// viridis at 0, ¼, ½, ¾, 1: dark purple (low) → yellow (high), readable in grey too.
const VIRIDIS: readonly RGB[] = [
  [68, 1, 84],
  [59, 82, 139],
  [33, 145, 140],
  [94, 201, 98],
  [253, 231, 37],
];

/** t in [0, 1] → viridis colour (linear between five stops). */
export function viridis(t: number): RGB {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const a = VIRIDIS[i];
  const b = VIRIDIS[i + 1];
  return [0, 1, 2].map((c) => Math.round(a[c] + (b[c] - a[c]) * f)) as unknown as RGB;
}

export interface SimilarityPlotOptions {
  /** One label per row (e.g. the captions), drawn to the left. */
  rowLabels?: readonly string[];
  /** One picture per column (values in [0, 1]), drawn above it. */
  images?: readonly FloatImage[];
  title?: string;
  /** Cell size in pixels (default: the image width when images are given, else 12). */
  cellSize?: number;
}

/** Draws `sim` as a heatmap (colour scaled from its min to its max, noted in the title). */
export function renderSimilarityMatrix(sim: Matrix, opts: SimilarityPlotOptions = {}): Raster {
  const pad = 4;
  const cs = opts.cellSize ?? (opts.images?.length ? Math.max(12, opts.images[0].width) : 12);
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of sim.data) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const title = `${opts.title ?? 'cosine similarity'}  (min ${lo.toFixed(2)}, max ${hi.toFixed(2)})`;
  const labelW = opts.rowLabels?.length ? Math.max(...opts.rowLabels.map((l) => textWidth(l))) + 2 * pad : pad;
  const titleH = GLYPH_HEIGHT + 2 * pad;
  const thumbH = opts.images?.length ? cs + pad : 0;
  const width = Math.max(labelW + sim.cols * cs + pad, textWidth(title) + 2 * pad);
  const height = titleH + thumbH + sim.rows * cs + pad;
  const white: RGB = [255, 255, 255];
  const r = new Raster(width, height, [20, 20, 20]);
  r.text(pad, pad, title, white);
  opts.images?.slice(0, sim.cols).forEach((img, j) => {
    r.drawImage(labelW + j * cs + Math.floor((cs - img.width) / 2), titleH + Math.floor((cs - img.height) / 2), img);
  });
  const top = titleH + thumbH;
  const showValues = cs >= textWidth('-.00') + 2;
  for (let i = 0; i < sim.rows; i++) {
    const label = opts.rowLabels?.[i];
    if (label) r.text(pad, top + i * cs + Math.floor((cs - GLYPH_HEIGHT) / 2), label, white);
    for (let j = 0; j < sim.cols; j++) {
      const v = sim.data[i * sim.cols + j];
      const t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
      r.fillRect(labelW + j * cs, top + i * cs, cs, cs, viridis(t));
      if (showValues) {
        const s = v.toFixed(2).replace(/^(-?)0\./, '$1.');
        r.text(labelW + j * cs + Math.floor((cs - textWidth(s)) / 2), top + i * cs + Math.floor((cs - GLYPH_HEIGHT) / 2), s, t > 0.6 ? [0, 0, 0] : white);
      }
    }
  }
  return r;
}

/** renderSimilarityMatrix written to a PNG file (atomically). */
export async function saveSimilarityMatrix(file: string, sim: Matrix, opts: SimilarityPlotOptions = {}): Promise<void> {
  await savePng(file, renderSimilarityMatrix(sim, opts));
}

// ---------------------------------------------------------------------------------------------
// Whole evaluation

/** The zero-shot prompts for digits 0-9: "a handwritten zero", ... */
export function digitPrompts(): string[] {
  return Array.from({ length: 10 }, (_, d) => promptForDigit(d));
}

export interface ClipEvalOptions {
  /** Evaluate a seeded random sample of `limit` examples (default min(n, 1000)). */
  limit?: number;
  batchSize?: number;
  /** Seeds the sample and the generated captions. */
  seed?: number;
  /** One prompt per class for zero-shot (default: the dataset's, classPrompts — digitPrompts() for digits). */
  prompts?: readonly string[];
  /** Default: model.tokenizer. */
  tokenizer?: Tokenizer;
  /** Write the captions × images similarity matrix (first example of each class) here. */
  similarityPng?: string;
}

export interface ClipEvalReport {
  n: number;
  zeroShot: ZeroShotResult;
  /** Own image in the top k (k = 1, 5). */
  textToImageRecall: Record<number, number>;
  /** Any image of the caption's class in the top k. */
  textToImageClassRecall: Record<number, number>;
  /** Mean cosine similarity of matching (image, caption) pairs and of all pairs. */
  meanMatchingSimilarity: number;
  meanSimilarity: number;
  /** exp(logit_scale). */
  scale: number;
}

/** Embeds `rows` in batches with `fn` and returns one [N, P] tensor (caller disposes). */
function embedInBatches(n: number, batchSize: number, fn: (start: number, end: number) => tf.Tensor2D): tf.Tensor2D {
  const parts: tf.Tensor2D[] = [];
  for (let s = 0; s < n; s += batchSize) parts.push(fn(s, Math.min(n, s + batchSize)));
  const out = tf.concat(parts, 0);
  parts.forEach((p) => p.dispose());
  return out;
}

/** Images [start, end) of `ds` as NHWC in [-1, 1]. */
function signedImages(ds: Dataset, start: number, end: number): tf.Tensor4D {
  const px = ds.height * ds.width;
  const buf = ds.images.slice(start * px, end * px).map(toSigned);
  return tf.tensor4d(buf, [end - start, ds.height, ds.width, 1]);
}

/** Zero-shot accuracy, text→image recall@1/@5 and (optionally) the similarity PNG on `ds`. */
export async function evaluateClip(model: CLIPModel, dataset: Dataset, opts: ClipEvalOptions = {}): Promise<ClipEvalReport> {
  const tok = opts.tokenizer ?? model.tokenizer;
  if (!tok) throw new UsageError('clip eval: no tokenizer (load the model with CLIPModel.fromPretrained or pass one).');
  const size = model.config.image_config.sample_size;
  let ds = dataset.height < size && dataset.width < size ? padDataset(dataset, size) : dataset;
  const n = Math.min(ds.n, opts.limit ?? 1000);
  if (n < 1) throw new UsageError('clip eval: the dataset is empty.');
  const seed = opts.seed ?? 0;
  // A seeded random sample, not the first n: datasets may be sorted by label.
  if (n < ds.n) ds = subset(ds, new Random(`${seed}/clip eval`).permutation(ds.n).subarray(0, n).sort());
  const bs = opts.batchSize ?? 256;
  const rng = new Random(seed);
  const captions = Array.from({ length: n }, (_, i) => captionOf(ds, i, rng));
  const prompts = opts.prompts ?? classPrompts(ds);
  const ids = (texts: readonly string[]) => tf.tensor2d(texts.map((t) => tok.encode(t).inputIds), [texts.length, tok.maxLength], 'int32');
  const encodeTexts = (texts: readonly string[]) =>
    tf.tidy(() => embedInBatches(texts.length, bs, (s, e) => tf.tidy(() => model.encodeText(ids(texts.slice(s, e))))));

  const imageEmb = tf.tidy(() => embedInBatches(n, bs, (s, e) => tf.tidy(() => model.encodeImage(signedImages(ds, s, e)))));
  const textEmb = encodeTexts(captions);
  const classEmb = encodeTexts(prompts);
  try {
    const zeroShot = zeroShotScores(zeroShotPredict(imageEmb, classEmb), ds.labels, prompts.length);

    // Retrieval, a block of captions at a time (the full n × n matrix can be large).
    const ranksInstance: number[] = [];
    const ranksClass: number[] = [];
    let matching = 0;
    let total = 0;
    for (let s = 0; s < n; s += bs) {
      const e = Math.min(n, s + bs);
      const block = tf.tidy(() => tf.matMul(tf.slice(textEmb, [s, 0], [e - s, -1]), imageEmb, false, true));
      const data = block.dataSync() as Float32Array;
      block.dispose();
      for (let q = s; q < e; q++) {
        const row = data.subarray((q - s) * n, (q - s + 1) * n);
        ranksInstance.push(rankOfBestRelevant(row, q, {}));
        ranksClass.push(rankOfBestRelevant(row, q, { queryLabels: ds.labels, candidateLabels: ds.labels }));
        matching += row[q];
        for (const v of row) total += v;
      }
    }

    if (opts.similarityPng) {
      const picks: number[] = [];
      for (let c = 0; c < prompts.length; c++) {
        const i = ds.labels.indexOf(c);
        if (i >= 0) picks.push(i);
      }
      const pick = (t: tf.Tensor2D) => tf.gather(t, picks) as tf.Tensor2D;
      const [ti, ii] = [pick(textEmb), pick(imageEmb)];
      const sim = cosineSimilarity(ti, ii);
      tf.dispose([ti, ii]);
      await saveSimilarityMatrix(opts.similarityPng, sim, {
        rowLabels: picks.map((i) => captions[i]),
        images: picks.map((i) => ({ data: imageAt(ds, i), height: ds.height, width: ds.width })),
        title: 'captions x images, cosine similarity',
      });
    }
    return {
      n,
      zeroShot,
      textToImageRecall: recallFromRanks(ranksInstance, [1, 5]),
      textToImageClassRecall: recallFromRanks(ranksClass, [1, 5]),
      meanMatchingSimilarity: matching / n,
      meanSimilarity: total / (n * n),
      scale: model.scale,
    };
  } finally {
    tf.dispose([imageEmb, textEmb, classEmb]);
  }
}

/** A few readable lines for the terminal. */
export function formatClipReport(r: ClipEvalReport): string {
  const pct = (x: number) => (Number.isNaN(x) ? '  n/a' : `${(100 * x).toFixed(1).padStart(5)}%`);
  return [
    `clip eval on ${r.n} images (logit scale ${r.scale.toFixed(1)})`,
    `  zero-shot accuracy ${pct(r.zeroShot.accuracy)}   per digit: ${r.zeroShot.perClass.map((a, d) => `${d}:${pct(a).trim()}`).join(' ')}`,
    `  text->image recall@1 ${pct(r.textToImageRecall[1])}  @5 ${pct(r.textToImageRecall[5])}   (same digit: @1 ${pct(r.textToImageClassRecall[1])}  @5 ${pct(r.textToImageClassRecall[5])})`,
    `  cosine similarity: matching pairs ${r.meanMatchingSimilarity.toFixed(3)}, all pairs ${r.meanSimilarity.toFixed(3)}`,
  ].join('\n');
}

/**
 * The feature space `sdlab eval` measures in, and the two numbers it gives: a multi-layer FID
 * and the near-duplicate rate.
 *
 * Why more than one layer: the classifier's feature layer is trained to read digits, so it learns
 * to ignore what does not change the digit — blur, speckle. FID on it alone scored σ 0.75
 * Gaussian blur at 1.12× the real-vs-real baseline and pixel noise at 1.00× (README, "How far
 * to trust the metric"). The lower layers still see stroke texture and sharpness, so the FID here
 * is a sum over three depths of the same classifier:
 *
 *   FID = Σ_l w_l · d²_l,   l ∈ {feature layer, channel means at 8×8, channel means at 4×4}
 *   w_l = tr Σ_ref(feature layer) / tr Σ_ref(l)
 *
 * d²_l is the Fréchet distance (./fid.ts) of layer l, and w_l rescales each layer to the feature
 * layer's total variance on the reference set, so every depth counts alike and the number stays
 * in the feature layer's units (with one layer, it is the plain FID). Cross-layer covariances are
 * left out: three 128-d distances cost a tenth of one 384-d one.
 *
 * Near-duplicates: the share of images in a set with another image of the same set at cosine
 * similarity ≥ 0.995, on the layers concatenated (each scaled by √w_l). Real digits have a few
 * percent; a generator that repeats itself (too much guidance) has many more.
 *
 *   const ref = fidReference(featureGroups(realA, F), nA);
 *   const { fid } = multiLayerFid(ref, featureGroups(samples, F), n);
 *   nearDuplicateRate(featureGroups(samples, F), n, ref.weights);
 */
import { check } from '../util/errors.ts';
import { type GaussianStats, featureStats, frechetDistance } from './fid.ts';
import type { Classified } from './classifier.ts';

/** One layer's features of n images, row-major [n, dim]. */
export interface FeatureGroup {
  name: string;
  dim: number;
  data: Float32Array;
}

/** The classifier's feature layer, then its taps (lower layers), as groups. */
export function featureGroups(c: Pick<Classified, 'features' | 'taps'>, featureDim: number): FeatureGroup[] {
  return [{ name: 'feature layer', dim: featureDim, data: c.features }, ...(c.taps ?? [])];
}

/** The rows `idx` of every group. */
export function pickRows(groups: FeatureGroup[], idx: ArrayLike<number>): FeatureGroup[] {
  return groups.map((g) => {
    const out = new Float32Array(idx.length * g.dim);
    for (let k = 0; k < idx.length; k++) out.set(g.data.subarray(idx[k] * g.dim, (idx[k] + 1) * g.dim), k * g.dim);
    return { ...g, data: out };
  });
}

/** The rows [start, start + n) of every group. */
export function rowRange(groups: FeatureGroup[], start: number, n: number): FeatureGroup[] {
  return groups.map((g) => ({ ...g, data: g.data.subarray(start * g.dim, (start + n) * g.dim) }));
}

export interface FidReference {
  /** Gaussian fit of each layer on the reference set. */
  stats: GaussianStats[];
  /** Each layer's weight w_l (the feature layer's is 1). */
  weights: number[];
  names: string[];
  dims: number[];
  n: number;
}

function trace(s: GaussianStats): number {
  let t = 0;
  for (let i = 0; i < s.dim; i++) t += s.cov[i * s.dim + i];
  return t;
}

/** The reference set's fits and the layer weights (see the file comment). */
export function fidReference(groups: FeatureGroup[], n: number): FidReference {
  check(groups.length >= 1, 'FID: no feature layers.');
  const stats = groups.map((g) => featureStats(g.data.subarray(0, n * g.dim), n, g.dim));
  const t0 = trace(stats[0]);
  // A layer that is constant on the reference set (variance 0) carries no information: weight 0.
  const weights = stats.map((s, i) => (i === 0 ? 1 : trace(s) > 0 ? t0 / trace(s) : 0));
  return { stats, weights, names: groups.map((g) => g.name), dims: groups.map((g) => g.dim), n };
}

export interface MultiLayerFid {
  /** Σ_l w_l · d²_l */
  fid: number;
  /** w_l · d²_l per layer (they sum to fid). */
  perLayer: number[];
  /** d² of the feature layer alone: the FID sdlab reported before the lower layers were added. */
  featureLayerOnly: number;
  meanTerm: number;
  covTerm: number;
}

/** The multi-layer FID of a set against the reference (same layers, in the same order). */
export function multiLayerFid(ref: FidReference, groups: FeatureGroup[], n: number): MultiLayerFid {
  check(groups.length === ref.stats.length, `FID: ${groups.length} feature layers against a reference with ${ref.stats.length}.`);
  let fid = 0, meanTerm = 0, covTerm = 0;
  const perLayer: number[] = [];
  let featureLayerOnly = NaN;
  groups.forEach((g, i) => {
    const d = frechetDistance(ref.stats[i], featureStats(g.data.subarray(0, n * g.dim), n, g.dim));
    const w = ref.weights[i];
    if (i === 0) featureLayerOnly = d.fid;
    perLayer.push(w * d.fid);
    fid += w * d.fid;
    meanTerm += w * d.meanTerm;
    covTerm += w * d.covTerm;
  });
  return { fid, perLayer, featureLayerOnly, meanTerm, covTerm };
}

/** Cosine similarity at or above which two images count as near-duplicates. */
export const NEAR_DUPLICATE_COSINE = 0.995;

/**
 * Share of the n images that have another image of the same set at cosine ≥ `threshold`, on the
 * layers concatenated, layer l scaled by √weights[l] (so each counts as in the FID).
 */
export function nearDuplicateRate(groups: FeatureGroup[], n: number, weights: number[], threshold = NEAR_DUPLICATE_COSINE): number {
  if (n < 2) return 0;
  const D = groups.reduce((a, g) => a + g.dim, 0);
  const v = new Float64Array(n * D);
  for (let i = 0; i < n; i++) {
    let off = i * D;
    groups.forEach((g, l) => {
      const s = Math.sqrt(weights[l] ?? 1);
      for (let j = 0; j < g.dim; j++) v[off + j] = s * g.data[i * g.dim + j];
      off += g.dim;
    });
    let norm = 0;
    for (let j = i * D; j < (i + 1) * D; j++) norm += v[j] * v[j];
    const inv = norm > 0 ? 1 / Math.sqrt(norm) : 0;
    for (let j = i * D; j < (i + 1) * D; j++) v[j] *= inv;
  }
  const hasTwin = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    for (let k = i + 1; k < n; k++) {
      if (hasTwin[i] && hasTwin[k]) continue;
      let dot = 0;
      for (let j = 0; j < D; j++) dot += v[i * D + j] * v[k * D + j];
      if (dot >= threshold) hasTwin[i] = hasTwin[k] = 1;
    }
  }
  return hasTwin.reduce((a, b) => a + b, 0) / n;
}

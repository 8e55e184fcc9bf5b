/**
 * Fréchet distance between Gaussian fits of two feature sets (FID when the features come from
 * an image classifier: Heusel et al. 2017 used Inception-v3's pool features; sdlab uses three
 * layers of its own digit classifier, see features.ts and classifier.ts).
 *
 *   d² = |μ1 − μ2|² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2})
 *
 *   const a = featureStats(featsA, nA, dim), b = featureStats(featsB, nB, dim);
 *   frechetDistance(a, b).fid
 *
 * Everything runs in float64 on the CPU (dim ≤ a few hundred). Σ1Σ2 is not symmetric, so its
 * square root is not taken directly: with S = Σ1^{1/2} (from a symmetric eigendecomposition),
 * Σ1Σ2 = S·(S Σ2) has the same eigenvalues as S Σ2 S, which is symmetric positive semi-definite,
 * so tr (Σ1Σ2)^{1/2} = Σ_i sqrt(λ_i(S Σ2 S)). Tiny negative eigenvalues from round-off are
 * clamped to 0. Covariances are unbiased (n − 1), like numpy.cov and pytorch-fid.
 */
import { check } from '../util/errors.ts';

export interface GaussianStats {
  /** [dim] */
  mean: Float64Array;
  /** [dim, dim] row-major, symmetric. */
  cov: Float64Array;
  dim: number;
  n: number;
  /** cov^{1/2}, filled in by the first frechetDistance that has these stats first (a reference compared many times pays once). */
  sqrtCov?: Float64Array;
}

/** Mean and unbiased covariance of n feature vectors (row-major [n, dim]). */
export function featureStats(features: ArrayLike<number>, n: number, dim: number): GaussianStats {
  check(n >= 2, `FID: need at least 2 feature vectors to estimate a covariance, got ${n}.`);
  check(features.length === n * dim, `FID: expected ${n}×${dim} = ${n * dim} feature values, got ${features.length}.`);
  const mean = new Float64Array(dim);
  for (let i = 0; i < n; i++) for (let j = 0; j < dim; j++) mean[j] += features[i * dim + j];
  for (let j = 0; j < dim; j++) mean[j] /= n;
  const cov = new Float64Array(dim * dim);
  const row = new Float64Array(dim);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < dim; j++) row[j] = features[i * dim + j] - mean[j];
    for (let a = 0; a < dim; a++) {
      const ra = row[a];
      if (ra === 0) continue;
      const off = a * dim;
      for (let b = a; b < dim; b++) cov[off + b] += ra * row[b];
    }
  }
  for (let a = 0; a < dim; a++) {
    for (let b = a; b < dim; b++) {
      const v = cov[a * dim + b] / (n - 1);
      cov[a * dim + b] = v;
      cov[b * dim + a] = v;
    }
  }
  return { mean, cov, dim, n };
}

/**
 * Eigen-decomposition of a symmetric matrix by the cyclic Jacobi method: A = V diag(values) Vᵀ.
 * `vectors` holds the eigenvectors as columns (row-major [dim, dim]). Accurate to round-off for
 * the small matrices FID needs; O(dim³) per sweep, typically < 10 sweeps.
 */
export function symmetricEigen(a: ArrayLike<number>, dim: number): { values: Float64Array; vectors: Float64Array } {
  check(a.length === dim * dim, `symmetricEigen: expected ${dim}×${dim} values, got ${a.length}.`);
  const A = Float64Array.from(a);
  const V = new Float64Array(dim * dim);
  for (let i = 0; i < dim; i++) V[i * dim + i] = 1;
  // Symmetrise: callers pass symmetric matrices, but round-off may differ across the diagonal.
  for (let p = 0; p < dim; p++) {
    for (let q = p + 1; q < dim; q++) {
      const m = 0.5 * (A[p * dim + q] + A[q * dim + p]);
      A[p * dim + q] = m;
      A[q * dim + p] = m;
    }
  }
  let total = 0;
  for (let i = 0; i < dim * dim; i++) total += A[i] * A[i];
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < dim; p++) for (let q = p + 1; q < dim; q++) off += A[p * dim + q] ** 2;
    if (off <= 1e-30 * total || off === 0) break;
    for (let p = 0; p < dim - 1; p++) {
      for (let q = p + 1; q < dim; q++) {
        const apq = A[p * dim + q];
        if (apq === 0) continue;
        // Rotate by φ in the (p, q) plane with cot 2φ = θ, which zeroes A[p, q]; t = tan φ is the
        // smaller root of t² + 2tθ − 1 = 0 (the stable choice).
        const theta = (A[q * dim + q] - A[p * dim + p]) / (2 * apq);
        const t = (theta >= 0 ? 1 : -1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < dim; k++) {
          // columns p, q of A and V
          const akp = A[k * dim + p], akq = A[k * dim + q];
          A[k * dim + p] = c * akp - s * akq;
          A[k * dim + q] = s * akp + c * akq;
          const vkp = V[k * dim + p], vkq = V[k * dim + q];
          V[k * dim + p] = c * vkp - s * vkq;
          V[k * dim + q] = s * vkp + c * vkq;
        }
        for (let k = 0; k < dim; k++) {
          // rows p, q of A
          const apk = A[p * dim + k], aqk = A[q * dim + k];
          A[p * dim + k] = c * apk - s * aqk;
          A[q * dim + k] = s * apk + c * aqk;
        }
        A[p * dim + q] = 0;
        A[q * dim + p] = 0;
      }
    }
  }
  const values = new Float64Array(dim);
  for (let i = 0; i < dim; i++) values[i] = A[i * dim + i];
  return { values, vectors: V };
}

/** The symmetric PSD square root V diag(sqrt(max(λ, 0))) Vᵀ of a symmetric matrix. */
export function sqrtPsd(a: ArrayLike<number>, dim: number): Float64Array {
  const { values, vectors: V } = symmetricEigen(a, dim);
  const out = new Float64Array(dim * dim);
  for (let k = 0; k < dim; k++) {
    const r = Math.sqrt(Math.max(values[k], 0));
    if (r === 0) continue;
    for (let i = 0; i < dim; i++) {
      const vi = V[i * dim + k] * r;
      if (vi === 0) continue;
      for (let j = 0; j < dim; j++) out[i * dim + j] += vi * V[j * dim + k];
    }
  }
  return out;
}

/** C = A B for row-major dim×dim matrices. */
function matmul(a: Float64Array, b: Float64Array, dim: number): Float64Array {
  const c = new Float64Array(dim * dim);
  for (let i = 0; i < dim; i++) {
    for (let k = 0; k < dim; k++) {
      const aik = a[i * dim + k];
      if (aik === 0) continue;
      for (let j = 0; j < dim; j++) c[i * dim + j] += aik * b[k * dim + j];
    }
  }
  return c;
}

/** tr (Σ1 Σ2)^{1/2} for symmetric PSD Σ1, Σ2 (see the file comment); `sqrt1` = Σ1^{1/2} when known. */
export function traceSqrtProduct(cov1: Float64Array, cov2: Float64Array, dim: number, sqrt1?: Float64Array): number {
  const s = sqrt1 ?? sqrtPsd(cov1, dim);
  const m = matmul(matmul(s, cov2, dim), s, dim);
  const { values } = symmetricEigen(m, dim);
  let tr = 0;
  for (const v of values) tr += Math.sqrt(Math.max(v, 0));
  return tr;
}

export interface FrechetResult {
  /** The Fréchet distance d² (what papers call FID). */
  fid: number;
  /** |μ1 − μ2|² */
  meanTerm: number;
  /** tr(Σ1 + Σ2 − 2 (Σ1Σ2)^{1/2}) */
  covTerm: number;
}

/** Fréchet distance between two Gaussians given by their statistics (pass a reference set used many times as `a`). */
export function frechetDistance(a: GaussianStats, b: GaussianStats): FrechetResult {
  check(a.dim === b.dim, `FID: feature sizes differ (${a.dim} vs ${b.dim}).`);
  const d = a.dim;
  let meanTerm = 0;
  for (let i = 0; i < d; i++) meanTerm += (a.mean[i] - b.mean[i]) ** 2;
  let trA = 0, trB = 0;
  for (let i = 0; i < d; i++) {
    trA += a.cov[i * d + i];
    trB += b.cov[i * d + i];
  }
  a.sqrtCov ??= sqrtPsd(a.cov, d);
  let covTerm = trA + trB - 2 * traceSqrtProduct(a.cov, b.cov, d, a.sqrtCov);
  // ≥ 0 in exact arithmetic; round-off can make it a hair negative for (nearly) identical sets.
  // Only that hair is clamped, so a real error would still show.
  if (covTerm < 0 && -covTerm <= 1e-9 * (trA + trB)) covTerm = 0;
  return { fid: meanTerm + covTerm, meanTerm, covTerm };
}

/** FID between two feature sets (row-major [n, dim] each). */
export function fid(featsA: ArrayLike<number>, nA: number, featsB: ArrayLike<number>, nB: number, dim: number): number {
  return frechetDistance(featureStats(featsA, nA, dim), featureStats(featsB, nB, dim)).fid;
}

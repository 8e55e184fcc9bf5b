/**
 * The Fréchet distance behind `sdlab eval`'s FID, against closed forms and an independent
 * matrix square root:
 *   - featureStats on a hand-computed example (mean, unbiased covariance);
 *   - the Jacobi eigensolver: A V = V Λ, VᵀV = I, known eigenvalues;
 *   - identical sets → 0; symmetric in its arguments; unchanged by shifting both sets;
 *   - commuting covariances (diagonal, and the same diagonals rotated by one orthogonal Q):
 *     |μ1 − μ2|² + Σ (s1 + s2 − 2 √(s1 s2)) over the eigenvalues s;
 *   - a random non-commuting pair: tr (Σ1Σ2)^{1/2} from a Denman–Beavers iteration on the
 *     non-symmetric product itself (a different method from the code's eigen route).
 */
import { describe, it, expect } from 'vitest';
import { featureStats, frechetDistance, symmetricEigen, traceSqrtProduct, sqrtPsd, fid, type GaussianStats } from '../src/eval/fid.ts';
import { Random } from '../src/util/random.ts';

// ---------------------------------------------------------------------------------------------
// Small float64 matrix helpers for the references (row-major d×d).

const matmul = (a: Float64Array, b: Float64Array, d: number) => {
  const c = new Float64Array(d * d);
  for (let i = 0; i < d; i++) for (let k = 0; k < d; k++) for (let j = 0; j < d; j++) c[i * d + j] += a[i * d + k] * b[k * d + j];
  return c;
};
const transpose = (a: Float64Array, d: number) => {
  const t = new Float64Array(d * d);
  for (let i = 0; i < d; i++) for (let j = 0; j < d; j++) t[j * d + i] = a[i * d + j];
  return t;
};
const eye = (d: number) => {
  const e = new Float64Array(d * d);
  for (let i = 0; i < d; i++) e[i * d + i] = 1;
  return e;
};
const trace = (a: Float64Array, d: number) => {
  let t = 0;
  for (let i = 0; i < d; i++) t += a[i * d + i];
  return t;
};
/** Gauss–Jordan inverse with partial pivoting. */
function inverse(a: Float64Array, d: number): Float64Array {
  const m = Float64Array.from(a);
  const inv = eye(d);
  for (let c = 0; c < d; c++) {
    let p = c;
    for (let r = c + 1; r < d; r++) if (Math.abs(m[r * d + c]) > Math.abs(m[p * d + c])) p = r;
    for (let j = 0; j < d; j++) {
      [m[c * d + j], m[p * d + j]] = [m[p * d + j], m[c * d + j]];
      [inv[c * d + j], inv[p * d + j]] = [inv[p * d + j], inv[c * d + j]];
    }
    const piv = m[c * d + c];
    for (let j = 0; j < d; j++) {
      m[c * d + j] /= piv;
      inv[c * d + j] /= piv;
    }
    for (let r = 0; r < d; r++) {
      if (r === c) continue;
      const f = m[r * d + c];
      for (let j = 0; j < d; j++) {
        m[r * d + j] -= f * m[c * d + j];
        inv[r * d + j] -= f * inv[c * d + j];
      }
    }
  }
  return inv;
}
/** Denman–Beavers: Y → A^{1/2}, for A with positive real eigenvalues (not necessarily symmetric). */
function sqrtmDenmanBeavers(a: Float64Array, d: number): Float64Array {
  let y = Float64Array.from(a);
  let z = eye(d);
  for (let k = 0; k < 60; k++) {
    const yi = inverse(y, d), zi = inverse(z, d);
    const yn = y.map((v, i) => 0.5 * (v + zi[i]));
    const zn = z.map((v, i) => 0.5 * (v + yi[i]));
    y = yn;
    z = zn;
  }
  return y;
}
/** A random orthogonal matrix (Gram–Schmidt on Gaussian columns). */
function randomOrthogonal(d: number, rng: Random): Float64Array {
  const q = new Float64Array(d * d);
  for (let c = 0; c < d; c++) {
    const v = Float64Array.from({ length: d }, () => rng.normal());
    for (let p = 0; p < c; p++) {
      let dot = 0;
      for (let i = 0; i < d; i++) dot += v[i] * q[i * d + p];
      for (let i = 0; i < d; i++) v[i] -= dot * q[i * d + p];
    }
    const norm = Math.hypot(...v);
    for (let i = 0; i < d; i++) q[i * d + c] = v[i] / norm;
  }
  return q;
}
/** Q diag(s) Qᵀ */
const rotated = (q: Float64Array, s: number[], d: number) => {
  const ds = new Float64Array(d * d);
  s.forEach((v, i) => (ds[i * d + i] = v));
  return matmul(matmul(q, ds, d), transpose(q, d), d);
};
/** A random SPD matrix B Bᵀ + εI. */
function randomSpd(d: number, rng: Random, eps = 0.1): Float64Array {
  const b = Float64Array.from({ length: d * d }, () => rng.normal());
  const m = matmul(b, transpose(b, d), d);
  for (let i = 0; i < d; i++) m[i * d + i] += eps;
  return m;
}
const stats = (mean: number[], cov: Float64Array): GaussianStats => ({ mean: Float64Array.from(mean), cov, dim: mean.length, n: 1000 });

/** Correlated random features: x = A z + b. */
function randomFeatures(n: number, d: number, rng: Random, shift = 0): Float64Array {
  const a = Float64Array.from({ length: d * d }, () => rng.normal());
  const out = new Float64Array(n * d);
  for (let i = 0; i < n; i++) {
    const z = Array.from({ length: d }, () => rng.normal());
    for (let r = 0; r < d; r++) {
      let v = shift + r;
      for (let c = 0; c < d; c++) v += a[r * d + c] * z[c];
      out[i * d + r] = v;
    }
  }
  return out;
}

describe('featureStats', () => {
  it('gives the mean and the unbiased covariance of a hand-computed example', () => {
    const s = featureStats([1, 2, 3, 4, 5, 0], 3, 2);
    expect(Array.from(s.mean)).toEqual([3, 2]);
    // deviations (-2,0), (0,2), (2,-2): Σ outer products / (n - 1)
    expect(Array.from(s.cov)).toEqual([4, -2, -2, 4]);
  });
  it('refuses fewer than two vectors and wrong lengths', () => {
    expect(() => featureStats([1, 2], 1, 2)).toThrow(/at least 2/);
    expect(() => featureStats([1, 2, 3], 2, 2)).toThrow(/expected 2×2/);
  });
});

describe('symmetricEigen (Jacobi)', () => {
  it('finds the eigenvalues of [[2,1],[1,2]] (1 and 3)', () => {
    const { values } = symmetricEigen([2, 1, 1, 2], 2);
    expect(Array.from(values).sort()).toEqual([expect.closeTo(1, 12), expect.closeTo(3, 12)]);
  });
  it('A V = V Λ and Vᵀ V = I for a random 24×24 symmetric matrix', () => {
    const d = 24;
    const rng = new Random(5);
    const a = new Float64Array(d * d);
    for (let i = 0; i < d; i++) for (let j = i; j < d; j++) a[i * d + j] = a[j * d + i] = rng.normal();
    const { values, vectors: v } = symmetricEigen(a, d);
    const av = matmul(a, v, d);
    const vtv = matmul(transpose(v, d), v, d);
    let errAv = 0, errOrth = 0;
    for (let i = 0; i < d; i++) {
      for (let k = 0; k < d; k++) {
        errAv = Math.max(errAv, Math.abs(av[i * d + k] - v[i * d + k] * values[k]));
        errOrth = Math.max(errOrth, Math.abs(vtv[i * d + k] - (i === k ? 1 : 0)));
      }
    }
    expect(errAv).toBeLessThan(1e-10);
    expect(errOrth).toBeLessThan(1e-12);
    expect(values.reduce((s, x) => s + x, 0)).toBeCloseTo(trace(a, d), 10);
  });
  it('sqrtPsd(A)² = A', () => {
    const d = 10;
    const a = randomSpd(d, new Random(6));
    const s = sqrtPsd(a, d);
    const s2 = matmul(s, s, d);
    for (let i = 0; i < d * d; i++) expect(s2[i]).toBeCloseTo(a[i], 9);
  });
});

describe('frechetDistance', () => {
  it('is 0 for identical sets, symmetric, and unchanged by shifting both sets', () => {
    const rng = new Random(1);
    const d = 8;
    const x = randomFeatures(300, d, rng);
    const y = randomFeatures(300, d, rng, 0.5);
    expect(fid(x, 300, x, 300, d)).toBeLessThan(1e-9);
    const xy = fid(x, 300, y, 300, d);
    expect(xy).toBeGreaterThan(1); // genuinely different sets
    expect(fid(y, 300, x, 300, d)).toBeCloseTo(xy, 9);
    const shifted = (f: Float64Array) => f.map((v, i) => v + 3 * (i % d) - 7);
    expect(fid(shifted(x), 300, shifted(y), 300, d)).toBeCloseTo(xy, 8);
  });

  it('matches the closed form for diagonal covariances', () => {
    const mu1 = [0, 1, -2, 0.5], mu2 = [1, 1, 0, -0.5];
    const s1 = [1, 4, 0.25, 9], s2 = [4, 1, 0.25, 0.01];
    const diag = (s: number[]) => {
      const m = new Float64Array(16);
      s.forEach((v, i) => (m[i * 4 + i] = v));
      return m;
    };
    const want = mu1.reduce((acc, m, i) => acc + (m - mu2[i]) ** 2, 0) + s1.reduce((acc, a, i) => acc + a + s2[i] - 2 * Math.sqrt(a * s2[i]), 0);
    const got = frechetDistance(stats(mu1, diag(s1)), stats(mu2, diag(s2)));
    expect(got.fid).toBeCloseTo(want, 10);
    expect(got.meanTerm).toBeCloseTo(1 + 0 + 4 + 1, 12);
  });

  it('matches the closed form for commuting, non-diagonal covariances (Q D1 Qᵀ, Q D2 Qᵀ)', () => {
    const d = 12;
    const rng = new Random(2);
    const q = randomOrthogonal(d, rng);
    const s1 = Array.from({ length: d }, () => 0.1 + 5 * rng.next());
    const s2 = Array.from({ length: d }, () => 0.1 + 5 * rng.next());
    s2[3] = 0; // a singular covariance (fewer samples than dimensions) is allowed
    const mu1 = Array.from({ length: d }, () => rng.normal());
    const mu2 = Array.from({ length: d }, () => rng.normal());
    const want = mu1.reduce((acc, m, i) => acc + (m - mu2[i]) ** 2, 0) + s1.reduce((acc, a, i) => acc + a + s2[i] - 2 * Math.sqrt(a * s2[i]), 0);
    const got = frechetDistance(stats(mu1, rotated(q, s1, d)), stats(mu2, rotated(q, s2, d))).fid;
    // 1e-6: the zero eigenvalue comes back as ±1e-16 round-off, whose square root is ~1e-8.
    expect(got).toBeCloseTo(want, 6);
  });

  it('tr (Σ1Σ2)^{1/2} of a random non-commuting pair matches a Denman–Beavers square root of Σ1Σ2', () => {
    const d = 7;
    const rng = new Random(3);
    const c1 = randomSpd(d, rng), c2 = randomSpd(d, rng);
    const prod = matmul(c1, c2, d);
    const commutator = matmul(c2, c1, d).map((v, i) => v - prod[i]);
    expect(Math.max(...commutator.map(Math.abs))).toBeGreaterThan(1); // really non-commuting
    const root = sqrtmDenmanBeavers(prod, d);
    // The iteration converged to a square root of the product.
    const sq = matmul(root, root, d);
    for (let i = 0; i < d * d; i++) expect(sq[i]).toBeCloseTo(prod[i], 6);
    expect(traceSqrtProduct(c1, c2, d)).toBeCloseTo(trace(root, d), 8);
    const mu = Array.from({ length: d }, () => 0);
    const want = trace(c1, d) + trace(c2, d) - 2 * trace(root, d);
    expect(frechetDistance(stats(mu, c1), stats(mu, c2)).fid).toBeCloseTo(want, 7);
  });

  it('handles 128-d features (the classifier size) quickly and exactly for identical stats', () => {
    const d = 128;
    const rng = new Random(4);
    const x = randomFeatures(400, d, rng);
    const t0 = performance.now();
    const s = featureStats(x, 400, d);
    expect(frechetDistance(s, s).fid).toBeLessThan(1e-8 * trace(s.cov, d));
    expect(performance.now() - t0).toBeLessThan(5000);
  });
});

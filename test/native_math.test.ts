/**
 * Accuracy of the native backend's vectorised float32 math (native/src/vmath.h) against double
 * precision, over sweeps of the whole useful input range: exp, sigmoid, erf, and the fused SiLU /
 * GELU forward and gradient kernels built on them. Errors in ulps of the float32 result
 * (relative error ≈ ulps × 6e-8 to 1.2e-7). The erf reference is computed here in double:
 * erf(x) = 2/√π · e^{−x²} · Σ_n 2^n x^{2n+1} / (1·3·…·(2n+1)) (all terms positive, no
 * cancellation), and 1 − erfc by its continued fraction beyond |x| = 4.
 */
import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs';
// The ops run their fused native kernels here (native is the active backend).
import { gelu as fusedGelu, silu as fusedSilu } from '../src/ops/index.ts';
import { useNativeBackend } from './helpers/native-parity.ts';

useNativeBackend({ activate: true });

function erf64(x: number): number {
  const a = Math.abs(x);
  if (a > 4) {
    // erfc(a) = e^{−a²}/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + ...)))) (Lentz-free backward evaluation)
    let f = a;
    for (let k = 60; k >= 1; k--) f = a + k / 2 / f;
    return Math.sign(x) * (1 - Math.exp(-a * a) / Math.sqrt(Math.PI) / f);
  }
  let term = a, sum = a;
  for (let n = 1; n < 200 && term > 1e-17 * sum; n++) {
    term *= (2 * a * a) / (2 * n + 1);
    sum += term;
  }
  return (Math.sign(x) * 2 * Math.exp(-a * a) * sum) / Math.sqrt(Math.PI);
}

/** Distance in units of the last place of the float32 nearest to `want` (denormals: the smallest step). */
function ulps(got: number, want: number): number {
  if (Number.isNaN(want)) return Number.isNaN(got) ? 0 : Infinity;
  if (!Number.isFinite(want)) return got === want ? 0 : Infinity;
  const w = Math.fround(want);
  const buf = new Float32Array([Math.abs(w)]);
  const bits = new Int32Array(buf.buffer);
  bits[0] += 1;
  const ulp = Math.max(buf[0] - Math.abs(w), 1.401298464324817e-45);
  return Math.abs(got - want) / ulp;
}

/** Evenly spaced points in [lo, hi] plus every power of two in range (and negatives). */
function sweep(lo: number, hi: number, n: number): Float32Array {
  const xs: number[] = [];
  for (let i = 0; i < n; i++) xs.push(lo + ((hi - lo) * i) / (n - 1));
  for (let e = -40; e <= 7; e++) for (const s of [1, -1]) if (s * 2 ** e >= lo && s * 2 ** e <= hi) xs.push(s * 2 ** e);
  return Float32Array.from(xs);
}

function worstUlps(xs: Float32Array, f: (x: tf.Tensor) => tf.Tensor, ref: (x: number) => number): { ulps: number; at: number } {
  const got = tf.tidy(() => f(tf.tensor1d(xs)).dataSync());
  let worst = 0, at = NaN;
  xs.forEach((x, i) => {
    const u = ulps(got[i], ref(x));
    if (u > worst) [worst, at] = [u, x];
  });
  return { ulps: worst, at };
}

describe('native vectorised math against double precision', () => {
  it('the erf reference itself matches known values', () => {
    // values from mpmath at 30 digits
    expect(erf64(0.5)).toBeCloseTo(0.520499877813046537682746653892, 14);
    expect(erf64(1)).toBeCloseTo(0.842700792949714869341220635083, 14);
    expect(erf64(-2.5)).toBeCloseTo(-0.999593047982555041060435784260, 14);
    expect((1 - erf64(5)) / 1.53745979442803485018834348538e-12).toBeCloseTo(1, 4);
  });

  it('exp within 1 ulp over [-104, 89] (denormal results and overflow to Infinity included)', () => {
    const r = worstUlps(sweep(-104, 89, 400001), tf.exp, Math.exp);
    expect(r.ulps, `at x = ${r.at}`).toBeLessThanOrEqual(1);
  });

  it('sigmoid within 3 ulps over [-110, 110]', () => {
    const r = worstUlps(sweep(-110, 110, 400001), tf.sigmoid, (x) => 1 / (1 + Math.exp(-x)));
    expect(r.ulps, `at x = ${r.at}`).toBeLessThanOrEqual(3);
  });

  it('erf within 3 ulps over [-6, 6]', () => {
    const r = worstUlps(sweep(-6, 6, 400001), tf.erf, erf64);
    expect(r.ulps, `at x = ${r.at}`).toBeLessThanOrEqual(3);
  });

  it('NaN, ±Infinity and ±0 come out right', () => {
    const xs = tf.tensor1d([NaN, Infinity, -Infinity, 0, -0]);
    const [e, s, f] = [tf.exp(xs), tf.sigmoid(xs), tf.erf(xs)].map((t) => Array.from(t.dataSync()));
    expect(e).toEqual([NaN, Infinity, 0, 1, 1]);
    expect(s).toEqual([NaN, 1, 0, 0.5, 0.5]);
    expect(f.slice(0, 4)).toEqual([NaN, 1, -1, 0]);
    expect(Object.is(f[4], -0)).toBe(true);
  });

  it("fused SiLU (4 ulps) and GELU (5 ulps), forward and derivative", () => {
    const xs = sweep(-30, 30, 200001);
    const sig = (x: number) => 1 / (1 + Math.exp(-x));
    const phi = (x: number) => Math.exp(-x * x / 2) / Math.sqrt(2 * Math.PI);
    const silu = worstUlps(xs, fusedSilu, (x) => x * sig(x));
    expect(silu.ulps, `at x = ${silu.at}`).toBeLessThanOrEqual(4);
    // GELU = x·Φ(x), Φ(x) = ½(1 + erf(x/√2)) computed as ½erfc(|x|/√2) for x < −√2 (no
    // cancellation); below x ≈ −5.55, where |GELU| < 1e-7, Φ is flushed to 0.
    const gelu = worstUlps(xs.filter((x) => x > -5.5), fusedGelu, (x) => 0.5 * x * (1 + erf64(x / Math.SQRT2)));
    expect(gelu.ulps, `at x = ${gelu.at}`).toBeLessThanOrEqual(5);
    const tail = xs.filter((x) => x <= -5.5);
    const got = tf.tidy(() => fusedGelu(tf.tensor1d(tail)).dataSync());
    tail.forEach((x, i) => expect(Math.abs(got[i] - 0.5 * x * (1 + erf64(x / Math.SQRT2)))).toBeLessThan(1e-7));
    // Derivatives (of order 1; SiLU's crosses zero at x ≈ −1.28 by cancellation in 1 + x(1 − σ)): relative to max(|f'(x)|, 0.1).
    const grad = (f: (x: tf.Tensor) => tf.Tensor) => tf.tidy(() => tf.grad(f)(tf.tensor1d(xs)).dataSync());
    const gs = grad(fusedSilu), gg = grad(fusedGelu);
    let worst = 0;
    xs.forEach((x, i) => {
      const s = sig(x);
      const ws = s * (1 + x * (1 - s)), wg = 0.5 * (1 + erf64(x / Math.SQRT2)) + x * phi(x);
      worst = Math.max(worst, Math.abs(gs[i] - ws) / Math.max(Math.abs(ws), 0.1), Math.abs(gg[i] - wg) / Math.max(Math.abs(wg), 0.1));
    });
    expect(worst).toBeLessThanOrEqual(1e-6);
  });
});

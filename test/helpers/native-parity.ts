/**
 * Shared setup of the native backend's parity tests (native*.test.ts): the backend registered for
 * the file, seeded random inputs, and the comparison with tfjs's `cpu` backend.
 *
 * Error measure: max |native − cpu| / √K over all outputs, K the length of the longest sum (a dot
 * product's error grows like √K); NaN in both is agreement, NaN in one is an infinite error.
 */
import { afterAll, beforeAll, expect } from 'vitest';
import * as tf from '@tensorflow/tfjs';
import { loadNativeAddon, nativeLoadError, nativeThreadCount, registerNativeBackend } from '../../src/backend/native.ts';

/** The bound every parity check must meet. */
export const TOL = 1e-5;

/**
 * Registers the native backend for this test file (failing it when the addon does not load) and
 * sets the cpu backend back afterwards; `activate` also makes native the current backend. Call it
 * at the top of the file.
 */
export function useNativeBackend(o: { activate?: boolean } = {}): void {
  tf.env().set('PROD', true); // no per-op NaN checks/warnings in the comparisons
  beforeAll(async () => {
    if (!registerNativeBackend()) throw new Error(`native backend not available: ${nativeLoadError()}`);
    if (o.activate) await tf.setBackend('native');
  });
  afterAll(() => {
    tf.setBackend('cpu');
  });
}

/**
 * A seeded stream of uniforms in [0, 1) (mulberry32) and the draws built on it. Each file keeps
 * its own seed, so its random shapes and data stay what they were.
 */
export function seededRandom(seed: number) {
  let s = seed >>> 0;
  const R = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    R,
    /** An integer in [lo, hi]. */
    int: (lo: number, hi: number) => lo + Math.floor(R() * (hi - lo + 1)),
    pick: <T,>(xs: T[]) => xs[Math.floor(R() * xs.length)],
    /** n uniforms in [-1, 1). */
    randData: (n: number) => Float32Array.from({ length: n }, () => R() * 2 - 1),
  };
}

export const numel = (s: number[]) => s.reduce((a, b) => a * b, 1);

type Inputs = Array<{ shape: number[]; data?: Float32Array }>;
type Fn = (...xs: tf.Tensor[]) => tf.Tensor | tf.Tensor[];

/** Runs fn on fresh tensors under `backend`, returns the outputs' data. */
export function runOn(backend: string, inputs: Array<{ shape: number[]; data: Float32Array }>, fn: Fn): Float32Array[] {
  tf.setBackend(backend);
  return tf.tidy(() => {
    const xs = inputs.map((i) => tf.tensor(i.data, i.shape));
    const out = fn(...xs);
    return (Array.isArray(out) ? out : [out]).map((t) => t.dataSync() as Float32Array);
  });
}

/**
 * parity(inputs, fn, K): max |native − cpu| / √K over all outputs of fn (their lengths must match
 * too); inputs without data get randData's. With K = 'relative', max |native − cpu| / max(1, |cpu|)
 * instead (for exp and friends, whose outputs span decades).
 */
export function parityWith(randData: (n: number) => Float32Array) {
  return (inputs: Inputs, fn: Fn, K: number | 'relative' = 1): number => {
    const full = inputs.map((i) => ({ shape: i.shape, data: i.data ?? randData(numel(i.shape)) }));
    const want = runOn('cpu', full, fn);
    const got = runOn('native', full, fn);
    let err = 0;
    want.forEach((w, j) => {
      expect(got[j].length).toBe(w.length);
      for (let i = 0; i < w.length; i++) {
        const d = Math.abs(got[j][i] - w[i]) / (K === 'relative' ? Math.max(1, Math.abs(w[i])) : 1);
        err = Math.max(err, Number.isNaN(d) ? (Number.isNaN(w[i]) && Number.isNaN(got[j][i]) ? 0 : Infinity) : d);
      }
    });
    return K === 'relative' ? err : err / Math.sqrt(Math.max(1, K));
  };
}

/** Runs body at 1 and at 2 threads, then restores the default thread count. */
export function bothThreadCounts(body: () => void): void {
  const addon = loadNativeAddon()!;
  try {
    for (const t of [1, 2]) {
      addon.setThreads(t);
      body();
    }
  } finally {
    addon.setThreads(nativeThreadCount());
  }
}

/**
 * Parity of the native backend's data-movement, reduction and transcendental kernels with
 * tfjs's `cpu` backend, forward and through tf.grads: Slice, SplitV, Concat, PadV2, Tile,
 * ResizeNearestNeighbor(+Grad), Sum/Mean/Max/Min over any set of axes, Pow, Erf, Sigmoid, Exp,
 * Softmax, and the model pieces built from them (GroupNorm, LayerNorm, GELU, SiLU, attention),
 * over seeded random shapes with odd sizes, at 1 and 2 threads.
 * Error measure as in native.test.ts: max |native − cpu| / √K, K the length of the longest sum.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs';
import { ATTENTION, gelu, groupNorm, layerNorm, silu } from '../src/ops/index.ts';
import { GroupNorm, LayerNorm, scaledDotProductAttention } from '../src/nn/index.ts';
import { TOL, bothThreadCounts, numel, parityWith, runOn, seededRandom, useNativeBackend } from './helpers/native-parity.ts';
import { loadNativeAddon } from '../src/backend/native.ts';
import { halfToFloat, halvesToFloats } from '../src/io/safetensors.ts';
import { arrayAccel } from '../src/util/accel.ts';

useNativeBackend();
const { int, pick, randData } = seededRandom(4321);
const parity = parityWith(randData);
const sq = (f: (...xs: tf.Tensor[]) => tf.Tensor) => (...xs: tf.Tensor[]) => tf.grads((...ys: tf.Tensor[]) => tf.sum(tf.square(f(...ys))))(xs);

describe('native data movement', () => {
  it('slice: random boxes of rank 1-5 (contiguous and strided), forward and gradient', () => {
    bothThreadCounts(() => {
      let worst = 0;
      for (let t = 0; t < 40; t++) {
        const rank = int(1, 5);
        const shape = Array.from({ length: rank }, () => pick([1, int(1, 6), int(7, 33)]));
        const begin = shape.map((d) => int(0, d - 1));
        const sz = shape.map((d, i) => pick([-1, int(1, d - begin[i])]));
        worst = Math.max(worst, parity([{ shape }], (x) => tf.slice(x, begin, sz)));
        worst = Math.max(worst, parity([{ shape }], sq((x) => tf.slice(x, begin, sz))));
      }
      expect(worst).toBe(0); // pure copies: bit-identical
    });
  });

  it('split along every axis (equal parts and given sizes), forward and gradient', () => {
    bothThreadCounts(() => {
      let worst = 0;
      for (const shape of [[4, 6, 10, 12], [3, 5, 7], [8, 9]]) {
        for (let ax = 0; ax < shape.length; ax++) {
          const parts = shape[ax] % 2 === 0 ? 2 : [1, shape[ax] - 1];
          worst = Math.max(worst, parity([{ shape }], (x) => tf.split(x, parts, ax)));
          worst = Math.max(worst, parity([{ shape }], (x) => tf.grads((y: tf.Tensor) => {
            const p = tf.split(y, parts, ax);
            return tf.add(tf.sum(tf.square(p[0])), tf.sum(tf.mul(p[1], 3)));
          })([x])));
        }
      }
      expect(worst).toBe(0);
    });
  });

  it('concat along every axis (2-4 inputs, one of them empty), forward and gradient', () => {
    bothThreadCounts(() => {
      let worst = 0;
      for (let t = 0; t < 20; t++) {
        const rank = int(1, 4);
        const base = Array.from({ length: rank }, () => int(1, 9));
        const ax = int(0, rank - 1);
        const n = int(2, 4);
        const shapes = Array.from({ length: n }, (_, i) => base.map((d, j) => (j === ax ? (i === 1 && t % 5 === 0 ? 0 : int(1, 7)) : d)));
        worst = Math.max(worst, parity(shapes.map((shape) => ({ shape })), (...xs) => tf.concat(xs, ax)));
        worst = Math.max(worst, parity(shapes.map((shape) => ({ shape })), (...xs) => tf.grads((...ys: tf.Tensor[]) => tf.sum(tf.square(tf.concat(ys, ax))))(xs)));
      }
      expect(worst).toBe(0);
    });
  });

  it('pad with zero and non-zero constants, forward and gradient (a strided slice)', () => {
    bothThreadCounts(() => {
      let worst = 0;
      for (let t = 0; t < 20; t++) {
        const rank = int(1, 4);
        const shape = Array.from({ length: rank }, () => int(1, 9));
        const paddings = shape.map(() => [int(0, 3), int(0, 3)] as [number, number]);
        const c = pick([0, 0, -1.5, 2]);
        worst = Math.max(worst, parity([{ shape }], (x) => tf.pad(x, paddings, c)));
        worst = Math.max(worst, parity([{ shape }], sq((x) => tf.pad(x, paddings, c))));
      }
      // the VAE's downsampling pad: bottom/right by one on NHWC
      worst = Math.max(worst, parity([{ shape: [3, 16, 16, 8] }], sq((x) => tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]]))));
      expect(worst).toBe(0);
    });
  });

  it('tile, forward and gradient', () => {
    let worst = 0;
    for (let t = 0; t < 15; t++) {
      const rank = int(1, 4);
      const shape = Array.from({ length: rank }, () => int(1, 5));
      const reps = shape.map(() => int(1, 3));
      worst = Math.max(worst, parity([{ shape }], (x) => tf.tile(x, reps)));
      worst = Math.max(worst, parity([{ shape }], sq((x) => tf.tile(x, reps)), numel(reps)));
    }
    expect(worst).toBeLessThanOrEqual(TOL);
  });

  it('resizeNearestNeighbor: x2 and odd sizes, alignCorners / halfPixelCenters, forward and gradient', () => {
    bothThreadCounts(() => {
      let worst = 0;
      const cases: Array<[number[], [number, number]]> = [[[2, 4, 4, 3], [8, 8]], [[3, 5, 3, 1], [10, 6]], [[1, 7, 5, 2], [9, 11]], [[2, 6, 6, 4], [4, 3]], [[1, 1, 1, 5], [3, 2]]];
      for (const [shape, size] of cases) {
        const [B, H, W, C] = shape;
        const [OH, OW] = size;
        for (const [ac, hp] of [[false, false], [true, false], [false, true]]) {
          worst = Math.max(worst, parity([{ shape }], (x) => tf.image.resizeNearestNeighbor(x as tf.Tensor4D, size, ac, hp)));
          // The gradient of sum(resize(x) · w) adds each w pixel to the pixel it was copied from.
          // Reference: that mapping read off cpu's forward applied to pixel numbers. (cpu's own
          // gradient kernel is wrong for batch > 1 and ignores halfPixelCenters.)
          const src = runOn('cpu', [{ shape: [1, H, W, 1], data: Float32Array.from({ length: H * W }, (_, i) => i) }],
            (x) => tf.image.resizeNearestNeighbor(x as tf.Tensor4D, size, ac, hp))[0];
          const w = randData(B * OH * OW * C);
          const want = new Float64Array(B * H * W * C);
          for (let b = 0; b < B; b++) for (let p = 0; p < OH * OW; p++) for (let c = 0; c < C; c++) want[(b * H * W + src[p]) * C + c] += w[(b * OH * OW + p) * C + c];
          const got = runOn('native', [{ shape, data: randData(B * H * W * C) }, { shape: [B, OH, OW, C], data: w }],
            (x, wt) => tf.grad((y: tf.Tensor) => tf.sum(tf.mul(tf.image.resizeNearestNeighbor(y as tf.Tensor4D, size, ac, hp), wt)))(x))[0];
          want.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - got[i]) / Math.sqrt(OH * OW))));
        }
      }
      // where cpu's gradient is right (batch 1, no half-pixel centres), the two agree
      worst = Math.max(worst, parity([{ shape: [1, 5, 6, 3] }], sq((x) => tf.image.resizeNearestNeighbor(x as tf.Tensor4D, [10, 12])), 4));
      expect(worst).toBeLessThanOrEqual(TOL);
    });
  });
});

describe('float16 → float32 for loading fp16 weights', () => {
  it('the addon (F16C) equals halfToFloat for all 65,536 bit patterns, and safetensors decoding uses it once the addon has loaded', () => {
    const addon = loadNativeAddon();
    expect(addon).not.toBeNull();
    const h = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const out = new Float32Array(65536).fill(123);
    addon!.halvesToFloats(h, out);
    const bad: number[] = [];
    for (let i = 0; i < 65536; i++) {
      const want = halfToFloat(i);
      if (!(Object.is(out[i], want) || (Number.isNaN(want) && Number.isNaN(out[i])))) bad.push(i);
    }
    expect(bad.slice(0, 5)).toEqual([]);
    expect(arrayAccel()).not.toBeNull();
    const viaIo = halvesToFloats(h);  // ≥ 4096 values: the native path
    expect(viaIo).toEqual(out);
    expect(() => addon!.halvesToFloats(h, new Float32Array(10))).toThrow(/shorter than 65536/);
  });
});

describe('native broadcasting with short rows', () => {
  it('binary ops on GroupNorm-like layouts ([B, HW, G, C/G] against [B, 1, G, 1], both sides broadcasting)', () => {
    bothThreadCounts(() => {
      const ops: Array<(a: tf.Tensor, b: tf.Tensor) => tf.Tensor> = [tf.add, tf.sub, tf.mul, tf.div, tf.squaredDifference, tf.maximum];
      const pairs: number[][][] = [[[6, 60, 8, 4], [6, 1, 8, 1]], [[6, 1, 8, 1], [6, 60, 8, 4]], [[5, 64, 32, 2], [5, 1, 32, 1]], [[3, 7, 5, 3], [1, 7, 1, 3]],
        [[2, 9, 1, 4], [2, 1, 6, 1]], [[70, 3, 2], [70, 1, 2]], [[4, 400, 3], [4, 1, 1]]];
      let worst = 0;
      for (const op of ops) for (const [a, b] of pairs) worst = Math.max(worst, parity([{ shape: a }, { shape: b }], op));
      worst = Math.max(worst, parity([{ shape: [4, 50, 8, 4] }, { shape: [4, 1, 8, 1] }], (a, b) => tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.square(tf.mul(x, y))))([a, b]), 200));
      expect(worst).toBeLessThanOrEqual(TOL);
    });
  });
});

describe('native reductions over any axes', () => {
  it('sum / mean / max / min over non-adjacent axes, size-1 dims and keepDims (GroupNorm layouts)', () => {
    bothThreadCounts(() => {
      let worst = 0;
      const cases: Array<[number[], number[]]> = [[[6, 16, 4, 3], [1, 3]], [[5, 64, 8, 1], [1, 3]], [[4, 9, 1, 7], [1, 3]], [[3, 4, 5, 6], [0, 2]],
        [[3, 4, 5, 6], [0, 1, 3]], [[2, 3, 4, 5, 6], [1, 3, 4]], [[7, 1, 1, 9], [1, 2]], [[1, 5, 1, 4], [0, 2]], [[4, 5, 6], [0, 2]]];
      for (const [shape, axes] of cases) {
        const k = axes.reduce((p, a) => p * shape[a], 1);
        for (const keep of [false, true]) {
          worst = Math.max(worst, parity([{ shape }], (x) => [tf.sum(x, axes, keep), tf.mean(x, axes, keep), tf.max(x, axes, keep), tf.min(x, axes, keep)], k));
        }
        worst = Math.max(worst, parity([{ shape }], sq((x) => tf.mean(x, axes, true)), k));
      }
      expect(worst).toBeLessThanOrEqual(TOL);
    });
  });

  it('max / min propagate NaN over non-adjacent axes', () => {
    const data = randData(2 * 3 * 4 * 5);
    data[7] = NaN;
    const got = runOn('native', [{ shape: [2, 3, 4, 5], data }], (x) => [tf.max(x, [1, 3]), tf.min(x, [1, 3]), tf.sum(x, [1, 3])]);
    const want = runOn('cpu', [{ shape: [2, 3, 4, 5], data }], (x) => [tf.max(x, [1, 3]), tf.min(x, [1, 3]), tf.sum(x, [1, 3])]);
    for (let j = 0; j < 3; j++) expect(Array.from(got[j]).map(Number.isNaN)).toEqual(Array.from(want[j]).map(Number.isNaN));
    expect(Number.isNaN(got[0][1]) && Number.isNaN(got[1][1]) && Number.isNaN(got[2][1])).toBe(true); // x[0,0,1,2] lands in out[0,1]
  });
});

describe('native transcendental kernels against cpu', () => {
  it('erf, sigmoid, exp, pow forward and gradients', () => {
    // cpu's erf is Abramowitz–Stegun 7.1.26 (absolute error ≤ 1.5e-7); the native one is within
    // 3 ulp of the true value (native_math.test.ts), so they agree to about 2e-7.
    expect(parity([{ shape: [5000] }], (x) => tf.erf(tf.mul(x, 4)))).toBeLessThanOrEqual(2.5e-7);
    expect(parity([{ shape: [3000] }], sq((x) => tf.erf(tf.mul(x, 3))))).toBeLessThanOrEqual(2e-6);
    let worst = 0;
    worst = Math.max(worst, parity([{ shape: [4099] }], (x) => [tf.sigmoid(tf.mul(x, 30)), tf.exp(tf.mul(x, 20))], 'relative'));
    worst = Math.max(worst, parity([{ shape: [1000] }], sq((x) => tf.sigmoid(tf.mul(x, 5))), 'relative'));
    worst = Math.max(worst, parity([{ shape: [1000] }], sq((x) => tf.exp(tf.mul(x, 2))), 'relative'));
    const pos = { shape: [999], data: randData(999).map((v) => Math.abs(v) + 0.05) };
    for (const p of [2, 0.5, 1.5, -0.5, 3, -1.3]) worst = Math.max(worst, parity([pos], (x) => tf.pow(x, p), 'relative'));
    worst = Math.max(worst, parity([pos, { shape: [999] }], (x, y) => tf.pow(x, y), 'relative'));
    worst = Math.max(worst, parity([{ shape: [999] }], (x) => [tf.pow(x, 2), tf.pow(x, 3), tf.pow(x, 1.5)], 'relative')); // NaN for x<0, ^1.5
    worst = Math.max(worst, parity([pos], sq((x) => tf.pow(x, 1.5)), 'relative'));
    expect(worst).toBeLessThanOrEqual(1e-6);
  });

  it('relative error of exp/sigmoid vs cpu stays within a few float ulps', () => {
    const xs = randData(20000).map((v) => v * 80);
    const [e1, s1] = runOn('native', [{ shape: [20000], data: xs }], (x) => [tf.exp(x), tf.sigmoid(x)]);
    const [e0, s0] = runOn('cpu', [{ shape: [20000], data: xs }], (x) => [tf.exp(x), tf.sigmoid(x)]);
    let rel = 0;
    for (let i = 0; i < xs.length; i++) {
      for (const [a, b] of [[e1[i], e0[i]], [s1[i], s0[i]]]) if (b !== 0 && Number.isFinite(b)) rel = Math.max(rel, Math.abs(a - b) / Math.abs(b));
    }
    expect(rel).toBeLessThanOrEqual(3.6e-7); // 3 ulp
  });

  it('softmax on long and short rows, forward and gradient', () => {
    let worst = 0;
    for (const shape of [[3, 1000], [37, 7], [2, 3, 64], [5, 1]]) {
      worst = Math.max(worst, parity([{ shape }], (x) => tf.softmax(tf.mul(x, 8))));
      worst = Math.max(worst, parity([{ shape }], (x) => tf.grads((y: tf.Tensor) => tf.sum(tf.mul(tf.softmax(y), tf.range(0, y.shape[y.rank - 1]).cast('float32'))))([x]), shape[shape.length - 1]));
    }
    expect(worst).toBeLessThanOrEqual(TOL);
  });
});

describe('native model pieces against cpu', () => {
  it('GroupNorm (1 and several channels per group), LayerNorm, GELU, SiLU: forward and gradients', () => {
    let worst = 0;
    for (const [groups, C] of [[4, 8], [8, 8], [2, 6]]) {
      const gn = new GroupNorm(groups, C, { eps: 1e-6 });
      const shape = [3, 5, 7, C];
      worst = Math.max(worst, parity([{ shape }], (x) => gn.forward(x), 35 * C / groups));
      worst = Math.max(worst, parity([{ shape }], sq((x) => silu(gn.forward(x))), 35 * C / groups));
      gn.dispose();
    }
    const ln = new LayerNorm(24);
    worst = Math.max(worst, parity([{ shape: [2, 9, 24] }], sq((x) => gelu(ln.forward(x))), 24));
    ln.dispose();
    expect(worst).toBeLessThanOrEqual(TOL);
  });

  it('attention (softmax over keys, transposes, batched matmuls) forward and gradients', () => {
    const f = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => scaledDotProductAttention(q as tf.Tensor3D, k as tf.Tensor3D, v as tf.Tensor3D, 4);
    const inputs = [{ shape: [2, 13, 32] }, { shape: [2, 7, 32] }, { shape: [2, 7, 32] }];
    expect(parity(inputs, f, 32)).toBeLessThanOrEqual(TOL);
    expect(parity(inputs, sq(f), 32)).toBeLessThanOrEqual(TOL);
  });

  it('fused attention kernel (online softmax over key tiles) against the composition on cpu: forward and gradients', async () => {
    // Sizes that cross the kernel's row blocks (128; the portable path's 120) and key tiles (252;
    // portable 256), odd head sizes, Dv ≠ D,
    // cross-attention lengths (77), and scores large enough that the running maximum moves.
    const cases: Array<[number, number, number, number, number, number, number]> = [
      // B, Lq, Lk, heads, D, Dv, input scale
      [2, 300, 77, 3, 8, 8, 1], [1, 257, 600, 2, 5, 7, 4], [2, 121, 513, 1, 40, 40, 2], [1, 7, 1, 2, 3, 3, 1], [1, 130, 300, 8, 16, 16, 6]];
    bothThreadCounts(() => {
      let worst = 0;
      for (const [B, Lq, Lk, H, D, Dv, amp] of cases) {
        const f = (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => scaledDotProductAttention(q as tf.Tensor3D, k as tf.Tensor3D, v as tf.Tensor3D, H);
        const inputs = [{ shape: [B, Lq, H * D], data: randData(B * Lq * H * D).map((x) => x * amp) },
          { shape: [B, Lk, H * D], data: randData(B * Lk * H * D).map((x) => x * amp) }, { shape: [B, Lk, H * Dv] }];
        worst = Math.max(worst, parity(inputs, f, Lk));
        worst = Math.max(worst, parity(inputs, sq(f), Lk));
      }
      expect(worst).toBeLessThanOrEqual(TOL);
    });
    // ... and the native side really ran the fused kernel (not the composition).
    tf.setBackend('native');
    const prof = await tf.profile(() => tf.tidy(() => scaledDotProductAttention(tf.ones([1, 9, 8]), tf.ones([1, 5, 8]), tf.ones([1, 5, 8]), 2)));
    expect(prof.kernelNames).toContain(ATTENTION);
    expect(prof.kernelNames).not.toContain('Softmax');
    tf.setBackend('cpu');
  });

  it('the C++ attention kernel against a double-precision softmax(QKᵀ)V, AVX2 and portable paths (native/test/attention_check.cc)', () => {
    const root = path.resolve(__dirname, '..');
    const exe = path.join(mkdtempSync(path.join(tmpdir(), 'sdlab-attn-')), 'attention_check');
    const build = spawnSync('g++', ['-O2', '-std=c++17', '-pthread', '-Inative/src', 'native/test/attention_check.cc', 'native/src/attention.cc',
      'native/src/gemm.cc', 'native/src/copy.cc', 'native/src/ops.cc', 'native/src/pool.cc', '-o', exe], { cwd: root, encoding: 'utf8' });
    expect(build.status, build.stderr).toBe(0);
    for (const env of [{}, { SDLAB_ISA: 'generic' }]) {
      const r = spawnSync(exe, [], { env: { ...process.env, ...env }, encoding: 'utf8' });
      expect(r.status, `${JSON.stringify(env)}: ${r.stdout}${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(/^60 shapes; worst error/);
    }
  }, 120_000);
});

describe('fused ops (one native kernel each way) against their tfjs composition on cpu', () => {
  it('groupNorm / layerNorm, with and without SiLU and affine parameters: forward and gradients', () => {
    bothThreadCounts(() => {
      let worst = 0;
      const cases: Array<[number[], number, number, boolean]> = [[[3, 5, 7, 8], 4, 1, true], [[2, 6, 6, 8], 8, 1, true], [[2, 3, 9, 12], 1, 1, true],
        [[4, 10, 6], 2, 1, false], [[2, 9, 24], 1, 2, true], [[5, 33], 1, 1, true], [[2, 40, 40, 4], 2, 1, true]];
      for (const [shape, groups, batchDims, affine] of cases) {
        const C = shape[shape.length - 1];
        const K = numel(shape) / numel(shape.slice(0, batchDims)) / groups;
        for (const activation of ['none', 'silu'] as const) {
          const f = (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => groupNorm(x, groups, affine ? g : null, affine ? b : null, 1e-5, { activation, batchDims });
          const inputs = [{ shape }, { shape: [C], data: randData(C).map((v) => 1 + v / 2) }, { shape: [C] }];
          worst = Math.max(worst, parity(inputs, f, K));
          // weighted sum, so the gradient is not ~0 by the normalisation's symmetry
          const w = randData(numel(shape));
          const loss = (x2: tf.Tensor, g2: tf.Tensor, b2: tf.Tensor) => tf.sum(tf.mul(f(x2, g2, b2), tf.tensor(w, shape)));
          worst = Math.max(worst, parity(inputs, (x, g, b) => (affine ? tf.grads(loss)([x, g, b]) : [tf.grad((x2: tf.Tensor) => loss(x2, g, b))(x)]), K));
        }
      }
      expect(worst).toBeLessThanOrEqual(TOL);
    });
  });

  it('layerNorm (its composition reduces over the last axis directly): forward and gradients', () => {
    let worst = 0;
    for (const shape of [[2, 9, 24], [5, 33], [3, 4, 5, 16]]) {
      const C = shape[shape.length - 1];
      for (const affine of [true, false]) {
        const f = (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => layerNorm(x, affine ? g : null, affine ? b : null, 1e-5);
        const inputs = [{ shape }, { shape: [C], data: randData(C).map((v) => 1 + v / 2) }, { shape: [C] }];
        worst = Math.max(worst, parity(inputs, f, C));
        const w = randData(numel(shape));
        const loss = (x2: tf.Tensor, g2: tf.Tensor, b2: tf.Tensor) => tf.sum(tf.mul(f(x2, g2, b2), tf.tensor(w, shape)));
        worst = Math.max(worst, parity(inputs, (x, g, b) => (affine ? tf.grads(loss)([x, g, b]) : [tf.grad((x2: tf.Tensor) => loss(x2, g, b))(x)]), C));
      }
    }
    expect(worst).toBeLessThanOrEqual(TOL);
  });

  it('the nn GroupNorm layer and groupNorm agree (the composition is the same math)', () => {
    const gn = new GroupNorm(4, 8, { eps: 1e-6 });
    const data = randData(2 * 5 * 5 * 8);
    const [a] = runOn('cpu', [{ shape: [2, 5, 5, 8], data }], (x) => gn.forward(x));
    const [b] = runOn('native', [{ shape: [2, 5, 5, 8], data }], (x) => groupNorm(x, 4, gn.weight, gn.bias, 1e-6));
    let err = 0;
    a.forEach((v, i) => (err = Math.max(err, Math.abs(v - b[i]))));
    expect(err).toBeLessThanOrEqual(1e-5);
    gn.dispose();
  });

  it('silu and gelu: forward and gradients', () => {
    // The composition on cpu rounds at every step (and its erf is Abramowitz–Stegun, 1.5e-7
    // absolute), so agreement is a few 1e-7; native_math.test.ts checks both against double precision.
    let worst = 0;
    for (const n of [7, 1000, 40000]) {
      const input = () => [{ shape: [n], data: randData(n).map((v) => v * 6) }];
      worst = Math.max(worst, parity(input(), (x) => silu(x), 'relative'));
      worst = Math.max(worst, parity(input(), sq(silu), 'relative'));
      worst = Math.max(worst, parity(input(), (x) => gelu(x), 'relative'));
      worst = Math.max(worst, parity(input(), sq(gelu), 'relative'));
    }
    expect(worst).toBeLessThanOrEqual(1e-6);
  });
});

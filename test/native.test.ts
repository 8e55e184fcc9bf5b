/**
 * Parity of sdlab's native backend against tfjs's `cpu` backend: every overridden kernel,
 * forward and through tf.grads / optimizer.minimize, over seeded random shapes, strides,
 * paddings, dilations and batch sizes (including 1-sized and odd dimensions, K=1, N=1).
 * Error measure: max |native - cpu| / sqrt(K) <= 1e-5, K the length of each dot product.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs';
import { NativeBackend, loadNativeAddon } from '../src/backend/native.ts';
import { AdamW, type NamedVariable } from '../src/train/optimizer.ts';
import { TOL, parityWith, runOn, seededRandom, useNativeBackend } from './helpers/native-parity.ts';

useNativeBackend();
const { R, int, pick, randData } = seededRandom(1234);
const parity = parityWith(randData);

describe('native backend: GEMM kernels', () => {
  it('matMul forward, random shapes, transposes and broadcast batches (1 and 2 threads)', () => {
    const addon = loadNativeAddon()!;
    let worst = 0;
    for (let t = 0; t < 40; t++) {
      addon.setThreads(t % 2 ? 2 : 1);
      const M = pick([1, 2, int(1, 17), int(20, 70)]), N = pick([1, 3, int(1, 17), int(20, 70)]), K = pick([1, int(1, 9), int(10, 90), 700]);
      const ta = R() < 0.5, tb = R() < 0.5;
      const batch = pick([[], [1], [3], [2, 2]]);
      const bBatch = pick([batch, [1], []]);
      const aShape = [...batch, ...(ta ? [K, M] : [M, K])], bShape = [...bBatch, ...(tb ? [N, K] : [K, N])];
      worst = Math.max(worst, parity([{ shape: aShape }, { shape: bShape }], (a, b) => tf.matMul(a, b, ta, tb), K));
    }
    addon.setThreads(2);
    expect(worst).toBeLessThanOrEqual(TOL);
  });

  it('a larger matMul that uses several K blocks and both threads', () => {
    expect(parity([{ shape: [131, 900] }, { shape: [900, 75] }], (a, b) => tf.matMul(a, b), 900)).toBeLessThanOrEqual(TOL);
  });

  it('wide matMuls (N > 64: A packed by the 6-row SIMD transpose, K tails, K blocks of uneven length)', () => {
    const addon = loadNativeAddon()!;
    let worst = 0;
    for (const [M, K, N, threads] of [[13, 37, 400, 1], [7, 1030, 390, 2], [20, 5, 777, 2], [6, 513, 401, 1]]) {
      addon.setThreads(threads);
      worst = Math.max(worst, parity([{ shape: [M, K] }, { shape: [K, N] }], (a, b) => tf.matMul(a, b), K));
    }
    addon.setThreads(2);
    expect(worst).toBeLessThanOrEqual(TOL);
  });

  it('fmaPeak counts the FLOPs of its 12 FMA chains on every thread', () => {
    const addon = loadNativeAddon()!;
    // FLOPs per chain step: 2 per lane; lanes per vector by the GEMM's ISA.
    const perStep = { 'avx512': 32, 'avx2+fma': 16, 'generic': 2 }[addon.isa()];
    expect(perStep).toBeDefined();
    for (const threads of [1, 2]) {
      addon.setThreads(threads);
      expect(addon.fmaPeak(1000)).toBe(threads * 12 * perStep! * 1000);
    }
    addon.setThreads(2);
  });

  it('fused matMul (bias, activations) forward and gradients', () => {
    let worst = 0;
    for (const activation of ['linear', 'relu', 'relu6', 'sigmoid', 'elu', 'leakyrelu'] as const) {
      const M = int(1, 30), N = int(1, 30), K = int(1, 40);
      const ta = R() < 0.5, tb = R() < 0.5;
      const f = (a: tf.Tensor, b: tf.Tensor, bias: tf.Tensor) =>
        tf.fused.matMul({ a: a as tf.Tensor2D, b: b as tf.Tensor2D, transposeA: ta, transposeB: tb, bias, activation, leakyreluAlpha: 0.1 });
      const inputs = [{ shape: ta ? [K, M] : [M, K] }, { shape: tb ? [N, K] : [K, N] }, { shape: [N] }];
      worst = Math.max(worst, parity(inputs, f, K));
      if (activation === 'linear' || activation === 'relu') {
        worst = Math.max(worst, parity(inputs, (a, b, bias) => tf.grads((a, b, bias) => f(a, b, bias).square().sum())([a, b, bias]), Math.max(K, M, N)));
      }
    }
    // a bias that broadcasts over rows ([M,1]) goes through the Add kernel
    worst = Math.max(worst, parity([{ shape: [5, 7] }, { shape: [7, 4] }, { shape: [5, 1] }],
      (a, b, bias) => tf.fused.matMul({ a: a as tf.Tensor2D, b: b as tf.Tensor2D, bias, activation: 'relu' }), 7));
    expect(worst).toBeLessThanOrEqual(TOL);
  });

  it('conv2d forward: random sizes, strides, paddings, dilations', () => {
    let worst = 0;
    for (let t = 0; t < 40; t++) {
      const B = int(1, 3), H = int(1, 12), W = int(1, 12), Cin = pick([1, int(1, 6), 17]), Cout = pick([1, int(1, 8), 33]);
      const kh = int(1, 4), kw = int(1, 4);
      const stride = R() < 0.5 ? 1 : int(1, 3);
      const dil = stride === 1 && R() < 0.4 ? int(1, 2) : 1; // tfjs: strides or dilations must be 1
      const pad = pick(['same', 'valid', int(0, 2)] as Array<'same' | 'valid' | number>);
      if (pad === 'valid' && (H < (kh - 1) * dil + 1 || W < (kw - 1) * dil + 1)) continue;
      const info = tf.backend_util.computeConv2DInfo([B, H, W, Cin], [kh, kw, Cin, Cout], stride, dil, pad, undefined, false, 'channelsLast');
      if (info.outHeight < 1 || info.outWidth < 1) continue;
      worst = Math.max(worst, parity([{ shape: [B, H, W, Cin] }, { shape: [kh, kw, Cin, Cout] }],
        (x, w) => tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, stride, pad, 'NHWC', dil), kh * kw * Cin));
    }
    expect(worst).toBeLessThanOrEqual(TOL);
  });

  it('conv2d gradients (Conv2DBackpropInput / Conv2DBackpropFilter) through tf.grads', () => {
    let worst = 0;
    for (let t = 0; t < 25; t++) {
      const B = int(1, 3), H = int(2, 11), W = int(2, 11), Cin = pick([1, int(1, 5)]), Cout = pick([1, int(1, 7)]);
      const kh = int(1, 3), kw = int(1, 3), stride: [number, number] = [int(1, 3), int(1, 3)];
      const pad = pick(['same', 'valid', int(0, 1)] as Array<'same' | 'valid' | number>);
      if (pad === 'valid' && (H < kh || W < kw)) continue;
      const f = (x: tf.Tensor, w: tf.Tensor) => tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, stride, pad);
      const inputs = [{ shape: [B, H, W, Cin] }, { shape: [kh, kw, Cin, Cout] }];
      const K = Math.max(kh * kw * Cout, B * H * W);
      worst = Math.max(worst, parity(inputs, (x, w) => tf.grads((x, w) => f(x, w).square().sum())([x, w]), K));
    }
    expect(worst).toBeLessThanOrEqual(TOL);
  });

  it('conv2dTranspose forward and gradients', () => {
    let worst = 0;
    for (let t = 0; t < 15; t++) {
      const B = int(1, 2), h = int(1, 7), w = int(1, 7), Cin = int(1, 5), Cout = int(1, 5), k = int(1, 4), s = int(1, 3);
      const pad = pick(['same', 'valid'] as const);
      const outShape: [number, number, number, number] = pad === 'same' ? [B, h * s, w * s, Cout] : [B, (h - 1) * s + k, (w - 1) * s + k, Cout];
      const f = (x: tf.Tensor, f: tf.Tensor) => tf.conv2dTranspose(x as tf.Tensor4D, f as tf.Tensor4D, outShape, s, pad);
      const inputs = [{ shape: [B, h, w, Cin] }, { shape: [k, k, Cout, Cin] }];
      worst = Math.max(worst, parity(inputs, f, k * k * Cin));
      worst = Math.max(worst, parity(inputs, (x, w) => tf.grads((x, w) => f(x, w).square().sum())([x, w]), Math.max(k * k * Cout, B * outShape[1] * outShape[2])));
    }
    expect(worst).toBeLessThanOrEqual(TOL);
  });

  it('fused conv2d with bias and activation, forward and gradients', () => {
    let worst = 0;
    for (const activation of ['linear', 'relu', 'sigmoid', 'leakyrelu'] as const) {
      const Cin = int(1, 4), Cout = int(1, 6), s = int(1, 2);
      const f = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) =>
        tf.fused.conv2d({ x: x as tf.Tensor4D, filter: w as tf.Tensor4D, strides: s, pad: 'same', bias: b, activation, leakyreluAlpha: 0.3 });
      const inputs = [{ shape: [2, 9, 7, Cin] }, { shape: [3, 3, Cin, Cout] }, { shape: [Cout] }];
      worst = Math.max(worst, parity(inputs, f, 9 * Cin));
      if (activation !== 'sigmoid' && activation !== 'leakyrelu') {
        worst = Math.max(worst, parity(inputs, (x, w, b) => tf.grads((x, w, b) => f(x, w, b).square().sum())([x, w, b]), 2 * 9 * 7));
      }
    }
    expect(worst).toBeLessThanOrEqual(TOL);
  });

  it('the reference convnet shapes (batch 2), forward and backward', () => {
    const layers = (x: tf.Tensor, w1: tf.Tensor, w2: tf.Tensor, w3: tf.Tensor, w4: tf.Tensor, w5: tf.Tensor) => {
      let h = tf.relu(tf.conv2d(x as tf.Tensor4D, w1 as tf.Tensor4D, 1, 'same'));
      h = tf.relu(tf.conv2d(h, w2 as tf.Tensor4D, 2, 'same'));
      h = tf.relu(tf.conv2d(h, w3 as tf.Tensor4D, 1, 'same'));
      h = tf.relu(tf.conv2dTranspose(h, w4 as tf.Tensor4D, [x.shape[0], 28, 28, 32], 2, 'same'));
      return tf.conv2d(h, w5 as tf.Tensor4D, 1, 'same');
    };
    // Weights scaled by sqrt(3 / fan-in) so activations stay O(1) through the five layers.
    const inputs = [[2, 28, 28, 1], [3, 3, 1, 32], [3, 3, 32, 64], [3, 3, 64, 64], [3, 3, 32, 64], [3, 3, 32, 1]].map((shape, i) => {
      const n = shape.reduce((a, b) => a * b, 1);
      const fanIn = i === 4 ? 9 * 64 : 9 * shape[2];
      return { shape, data: i === 0 ? randData(n) : randData(n).map((v) => v * Math.sqrt(3 / fanIn)) };
    });
    const loss = (...xs: tf.Tensor[]) => tf.losses.meanSquaredError(xs[0], layers(...(xs as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor])));
    expect(parity(inputs, (...xs) => layers(...(xs as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor])), 576)).toBeLessThanOrEqual(TOL);
    expect(parity(inputs, (...xs) => tf.grads(loss)(xs), 2 * 28 * 28)).toBeLessThanOrEqual(TOL);
  });
});

describe('native backend: elementwise, reductions, transpose, softmax', () => {
  it('binary ops with broadcasting', () => {
    const ops: Array<(a: tf.Tensor, b: tf.Tensor) => tf.Tensor> = [tf.add, tf.sub, tf.mul, tf.div, tf.squaredDifference, tf.maximum, tf.minimum];
    const pairs: number[][][] = [[[5, 7], [5, 7]], [[5, 7], [7]], [[5, 7], [5, 1]], [[2, 3, 4, 5], [5]], [[2, 3, 4, 5], [3, 1, 1]], [[1], [4, 3]],
      [[2, 1, 4], [3, 1]], [[6], []], [[4, 1, 3, 1], [1, 5, 1, 2]], [[70000], [70000]], [[64, 7, 7, 32], [32]]];
    let worst = 0;
    for (const op of ops) for (const [a, b] of pairs) worst = Math.max(worst, parity([{ shape: a }, { shape: b }], op, 1));
    expect(worst).toBeLessThanOrEqual(TOL);
  });

  it('unary ops, including NaN passthrough of relu', () => {
    const fs: Array<(x: tf.Tensor) => tf.Tensor> = [tf.relu, tf.relu6, tf.sigmoid, tf.tanh, tf.exp, tf.neg, tf.abs, tf.square, tf.elu,
      (x) => tf.step(x, 0.25), (x) => tf.leakyRelu(x, 0.1), (x) => tf.sqrt(tf.abs(x)), (x) => tf.rsqrt(tf.abs(x).add(0.1)), (x) => tf.log(tf.abs(x).add(0.1))];
    let worst = 0;
    for (const f of fs) worst = Math.max(worst, parity([{ shape: [3, 1000] }], (x) => f(x.mul(3)), 1));
    expect(worst).toBeLessThanOrEqual(TOL);
    const nan = new Float32Array([NaN, -1, 2]);
    expect(Array.from(runOn('native', [{ shape: [3], data: nan }], (x) => tf.relu(x))[0])).toEqual([NaN, 0, 2]);
  });

  it('sum / mean / max / min over axes, keepDims', () => {
    const cases: Array<[number[], number | number[] | undefined]> = [[[64, 7, 7, 32], [0, 1, 2]], [[5, 6, 7], 1], [[5, 6, 7], [0, 2]], [[5, 6, 7], -1],
      [[5, 6, 7], undefined], [[3000], 0], [[2, 3, 4, 5], [1, 3]], [[1, 1, 9], [0, 1]]];
    let worst = 0;
    for (const [shape, axis] of cases) {
      for (const keep of [false, true]) {
        const n = shape.reduce((a, b) => a * b, 1);
        const k = axis === undefined ? n : n / tf.sum(tf.zeros(shape), axis).size;
        worst = Math.max(worst, parity([{ shape }], (x) => [tf.sum(x, axis, keep), tf.mean(x, axis, keep), tf.max(x, axis, keep), tf.min(x, axis, keep)], k));
      }
    }
    expect(worst).toBeLessThanOrEqual(TOL);
  });

  it('transpose, softmax, addN', () => {
    let worst = parity([{ shape: [2, 3, 4, 5] }], (x) => [tf.transpose(x, [3, 1, 0, 2]), tf.transpose(x, [0, 2, 1, 3]), tf.transpose(x)], 1);
    worst = Math.max(worst, parity([{ shape: [7, 33] }], (x) => [tf.softmax(x.mul(5)), tf.softmax(x.reshape([7, 3, 11]))], 1));
    worst = Math.max(worst, parity([{ shape: [4, 9] }, { shape: [4, 9] }, { shape: [4, 9] }], (a, b, c) => tf.addN([a, b, c]), 1));
    expect(worst).toBeLessThanOrEqual(TOL);
  });
});

describe('native backend: training', () => {
  it('Adam minimize on a small convnet gives the same weights as cpu after 3 steps', () => {
    const shapes = [[3, 3, 1, 4], [4], [3, 3, 2, 4], [2]];
    const init = shapes.map((s) => randData(s.reduce((a, b) => a * b, 1)).map((v) => v * 0.5));
    const x = randData(3 * 10 * 10);
    const train = (backend: string) => {
      tf.setBackend(backend);
      const vars = shapes.map((s, i) => tf.variable(tf.tensor(init[i], s)));
      const xs = tf.tensor4d(x, [3, 10, 10, 1]);
      const opt = tf.train.adam(1e-2);
      for (let step = 0; step < 3; step++) {
        opt.minimize(() => {
          const h = tf.relu(tf.conv2d(xs, vars[0] as tf.Variable<tf.Rank.R4>, 2, 'same').add(vars[1])) as tf.Tensor4D;
          const y = tf.conv2dTranspose(h, vars[2] as tf.Variable<tf.Rank.R4>, [3, 10, 10, 2], 2, 'same').add(vars[3]);
          return tf.losses.meanSquaredError(xs.tile([1, 1, 1, 2]), y) as tf.Scalar;
        });
      }
      const out = vars.map((v) => v.dataSync().slice() as Float32Array);
      vars.forEach((v) => v.dispose());
      xs.dispose();
      opt.dispose();
      return out;
    };
    const want = train('cpu'), got = train('native');
    let err = 0;
    want.forEach((w, j) => w.forEach((v, i) => (err = Math.max(err, Math.abs(v - got[j][i])))));
    expect(err).toBeLessThanOrEqual(1e-5);
  });
});

describe('native backend: recycled output buffers', () => {
  // The backend's own array behind a tensor, read without readSync (which would pin it).
  const own = (t: tf.Tensor) => (tf.backend() as NativeBackend).data.get(t.dataId).values as Float32Array;
  const x = () => tf.randomUniform([64, 100], -1, 1, 'float32', 5);
  // Elementwise results in float32, computed here from the inputs.
  const expected = (a: tf.Tensor, b: tf.Tensor, f: (p: number, q: number) => number) => {
    const av = a.dataSync(), bv = b.dataSync();
    return Array.from(av, (v, i) => Math.fround(f(v, bv[i])));
  };
  beforeEach(async () => { await tf.setBackend('native'); });

  it('reuses a disposed tensor\'s buffer for the next output of that size, with correct results', () => {
    const a = x(), b = x();
    const s = tf.add(a, b);
    const buf = own(s).buffer;
    s.dispose();
    const p = tf.mul(a, b);
    expect(own(p).buffer).toBe(buf); // recycled...
    expect(Array.from(p.dataSync())).toEqual(expected(a, b, (u, v) => u * v)); // ...and overwritten correctly
    tf.dispose([a, b, p]);
  });

  it('never reuses what dataSync() handed out, nor a buffer a second tensor views', () => {
    const a = x(), b = x();
    const s = tf.add(a, b);
    const seen = s.dataSync(); // the backend's own array
    const kept = seen.slice();
    s.dispose();
    const t = tf.add(a, b);
    const view = tf.sub(a, b);
    const viewBuf = own(view).buffer;
    // A second tensor over a view of the same memory, as some cpu JS kernels make (simple slices).
    const backend = tf.backend() as NativeBackend;
    const alias = tf.engine().makeTensorFromTensorInfo(backend.makeTensorInfo([100], 'float32', own(view).subarray(0, 100)));
    const aliasWant = Array.from(alias.dataSync());
    view.dispose();
    const u = tf.mul(a, b), w = tf.div(a, tf.add(b, 3));
    expect(own(u).buffer).not.toBe(viewBuf);
    expect(own(w).buffer).not.toBe(viewBuf);
    expect(Array.from(seen)).toEqual(Array.from(kept));
    expect(Array.from(alias.dataSync())).toEqual(aliasWant);
    tf.dispose([a, b, t, u, w, alias]);
  });

  it('keeps a buffer while any tensor sharing its data (a reshape) is alive', () => {
    const a = x(), b = x();
    const s = tf.add(a, b);
    const r = tf.reshape(s, [100, 64]);
    const want = expected(a, b, (u, v) => u + v);
    s.dispose();
    const m = tf.mul(a, b);
    expect(own(m).buffer).not.toBe(own(r).buffer);
    expect(Array.from(r.dataSync())).toEqual(want);
    tf.dispose([a, b, r, m]);
  });
});

describe('native backend: fused AdamW', () => {
  it('gives the same float32 bits as the optimizer\'s tfjs composition on the cpu backend', () => {
    const { randData: rnd } = seededRandom(77);
    const shapes = [[3], [7, 5], [130, 257]]; // the last one is split between threads
    const init = shapes.map((s) => rnd(s.reduce((a, b) => a * b, 1)));
    const grads = [0, 1, 2, 3].map(() => shapes.map((s) => rnd(s.reduce((a, b) => a * b, 1))));
    const lrs = [1e-3, 4e-3, 2e-3, 5e-4];
    const run = (backend: string, weightDecay: number) => {
      tf.setBackend(backend);
      const vars = init.map((d, i) => tf.variable(tf.tensor(d, shapes[i]), true, `adamw_${backend}_${weightDecay}_${i}`));
      const opt = new AdamW(vars.map((v, i): NamedVariable => [`p${i}`, v]), { weightDecay, beta1: 0.9, beta2: 0.999, eps: 1e-8 });
      grads.forEach((gs, s) => {
        const g = gs.map((d, i) => tf.tensor(d, shapes[i]));
        opt.applyGradients(g, lrs[s]);
        tf.dispose(g);
      });
      const out = [...vars, ...opt.expAvg, ...opt.expAvgSq].map((t) => Array.from(t.dataSync()));
      tf.dispose(vars);
      opt.expAvg.forEach((t) => t.dispose());
      opt.expAvgSq.forEach((t) => t.dispose());
      return out;
    };
    for (const wd of [0.01, 0]) {
      const native = run('native', wd), cpu = run('cpu', wd);
      native.forEach((xs, i) => expect(xs).toEqual(cpu[i]));
    }
  });
});

/**
 * Weights kept in half precision on the native backend (issue 17: SD 1.5 in ≤ 3.5 GiB). fp16
 * weight files stay float16 in memory; the GEMM kernels unpack them while packing, every other
 * kernel and every read sees float32. Checked here:
 *   - the float32 → float16 conversion against sdlab's JS one (round to nearest even), and the
 *     round trip of all 65,536 half bit patterns;
 *   - every GEMM path (packed, transposed B, matrix-vector, batched, fused bias + activation; the
 *     convolutions' 1×1, few-output, Winograd, im2col-free strided and its gradient paths) gives
 *     bit for bit what the same (fp16-exact) weights give in float32 — the unpacked panels are the
 *     same numbers, so anything else is a bug;
 *   - kernels that do not know half precision (add, transpose, gather, slice, reads) see float32;
 *   - loading an fp16 diffusers UNet keeps its large tensors half (and the small ones float32), in
 *     about half the bytes, with the same values and the same output as SDLAB_HALF_WEIGHTS=0.
 */
import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs';
import path from 'node:path';
import { type NativeBackend, loadNativeAddon } from '../src/backend/native.ts';
import { floatToHalf, halfToFloat } from '../src/io/safetensors.ts';
import { UNet2DConditionModel } from '../src/unet/index.ts';
import { HALF_MIN_SIZE, halfWeights } from '../src/util/half_weights.ts';
import { seededRandom, useNativeBackend } from './helpers/native-parity.ts';
import { MODEL } from './helpers/pipeline-fixture.ts';

useNativeBackend({ activate: true });
const rnd = seededRandom(4242);

/** n values that float16 holds exactly (what an fp16 file gives). */
function halfExact(n: number, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, () => halfToFloat(floatToHalf((rnd.R() * 2 - 1) * scale)));
}

const backend = () => tf.backend() as NativeBackend;
const toHalf = (t: tf.Tensor) => halfWeights()!.toHalf(t);

/** Runs f with the weight in float32 and in half precision; both results' values. */
function bothWays(wShape: number[], f: (w: tf.Tensor) => tf.Tensor | tf.Tensor[], scale = 1): [Float32Array[], Float32Array[]] {
  const w32 = tf.tensor(halfExact(wShape.reduce((a, b) => a * b, 1), scale), wShape);
  const w16 = toHalf(w32);
  expect(backend().isHalf(w16)).toBe(true);
  const run = (w: tf.Tensor) => {
    const out = tf.tidy(() => f(w));
    const list = Array.isArray(out) ? out : [out];
    const vals = list.map((t) => t.dataSync() as Float32Array);
    tf.dispose(list);
    return vals;
  };
  const r = [run(w32), run(w16)] as [Float32Array[], Float32Array[]];
  tf.dispose([w32, w16]);
  return r;
}

function expectIdentical(a: Float32Array[], b: Float32Array[]): void {
  expect(b.length).toBe(a.length);
  for (let i = 0; i < a.length; i++) {
    expect(b[i].length).toBe(a[i].length);
    let diff = 0;
    for (let j = 0; j < a[i].length; j++) if (!Object.is(a[i][j], b[i][j])) diff++;
    expect(diff).toBe(0);
  }
}

describe('float32 → float16 (the addon)', () => {
  it('round-trips every float16 bit pattern (NaNs stay NaN)', () => {
    const addon = loadNativeAddon()!;
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const f = new Float32Array(65536);
    addon.halvesToFloats(all, f);
    const back = new Uint16Array(65536);
    addon.floatsToHalves!(f, back);
    let bad = 0;
    for (let i = 0; i < 65536; i++) {
      const nan = (i & 0x7c00) === 0x7c00 && (i & 0x3ff) !== 0;
      if (nan ? !((back[i] & 0x7c00) === 0x7c00 && (back[i] & 0x3ff) !== 0) : back[i] !== i) bad++;
    }
    expect(bad).toBe(0);
  });

  it('rounds like floatToHalf (nearest even): ties, subnormals, overflow, on the SIMD body and the scalar tail', () => {
    const addon = loadNativeAddon()!;
    const vals: number[] = [0, -0, 65504, 65519.99, 65520, -1e6, Infinity, -Infinity, 6e-8, 2.98e-8, 2.99e-8, 1e-10, 5.96e-8 * 1.5];
    // Exact ties between neighbouring halves (the 13th bit set, nothing below) and one ulp either side.
    for (let i = 0; i < 200; i++) {
      const h = rnd.int(0x0400, 0x7bfe);
      const lo = halfToFloat(h), hi = halfToFloat(h + 1), mid = (lo + hi) / 2;
      vals.push(mid, Math.fround(mid) * (1 + 2 ** -22), -mid);
    }
    for (let i = 0; i < 2000; i++) vals.push((rnd.R() * 2 - 1) * 2 ** rnd.int(-30, 17));
    const src = Float32Array.from(vals);
    const out = new Uint16Array(src.length);
    addon.floatsToHalves!(src, out);
    const want = Array.from(src, (v) => floatToHalf(v));
    const wrong = want.map((h, i) => (h === out[i] ? -1 : i)).filter((i) => i >= 0);
    expect(wrong.map((i) => `${src[i]}: ${out[i]} vs ${want[i]}`)).toEqual([]);
  });
});

describe('GEMM kernels take half-precision weights as they are', () => {
  const x = (shape: number[]) => tf.tensor(halfExact(shape.reduce((a, b) => a * b, 1)), shape);

  it('matmul: packed, transposed B, matrix-vector, batched with a broadcast weight, fused bias + relu', () => {
    const a = x([37, 300]);
    expectIdentical(...bothWays([300, 70], (w) => tf.matMul(a, w)));
    expectIdentical(...bothWays([70, 300], (w) => tf.matMul(a, w, false, true)));
    const v = x([1, 300]);
    expectIdentical(...bothWays([300, 70], (w) => tf.matMul(v, w)));
    expectIdentical(...bothWays([300, 1], (w) => tf.matMul(a, w)));
    const b3 = x([3, 9, 300]);
    expectIdentical(...bothWays([300, 40], (w) => tf.matMul(b3, w)));
    const bias = x([70]);
    expectIdentical(...bothWays([300, 70], (w) => tf.fused.matMul({ a, b: w, bias, activation: 'relu' })));
    tf.dispose([a, v, b3, bias]);
  });

  it('conv2d: 1×1, few outputs, Winograd, strided (im2col-free), fused, and the input gradient', () => {
    const x1 = x([2, 9, 8, 24]);
    expectIdentical(...bothWays([1, 1, 24, 40], (w) => tf.conv2d(x1 as tf.Tensor4D, w as tf.Tensor4D, 1, 'same')));
    expectIdentical(...bothWays([3, 3, 24, 3], (w) => tf.conv2d(x1 as tf.Tensor4D, w as tf.Tensor4D, 1, 'same')));
    const xw = x([2, 17, 15, 72]); // 144 tiles, 72 channels: Winograd F(2×2, 3×3)
    expectIdentical(...bothWays([3, 3, 72, 66], (w) => tf.conv2d(xw as tf.Tensor4D, w as tf.Tensor4D, 1, 'same')));
    expectIdentical(...bothWays([3, 3, 24, 33], (w) => tf.conv2d(x1 as tf.Tensor4D, w as tf.Tensor4D, 2, 'same')));
    const bias = x([66]);
    expectIdentical(...bothWays([3, 3, 72, 66], (w) => tf.fused.conv2d({ x: xw as tf.Tensor4D, filter: w as tf.Tensor4D, strides: 1, pad: 'same', bias, activation: 'relu' })));
    // The input gradient reads the filter through a kernel that does not know halves: unpacked.
    expectIdentical(...bothWays([3, 3, 24, 33], (w) => tf.grad((xx: tf.Tensor) => tf.sum(tf.square(tf.conv2d(xx as tf.Tensor4D, w as tf.Tensor4D, 1, 'same'))))(x1)));
    tf.dispose([x1, xw, bias]);
  });
});

describe('other kernels see float32', () => {
  it('add, transpose, gather, slice, concat, reshape (stays half), dataSync and data()', async () => {
    const ids = tf.tensor1d([3, 0, 7, 7], 'int32');
    const [a, b] = bothWays([8, 2100], (w) => [
      tf.add(w, 1), tf.transpose(w), tf.gather(w, ids), tf.slice(w, [2, 5], [3, 100]), tf.concat([w, w], 0),
      tf.reshape(w, [2100, 8]), tf.clone(w),
    ]);
    expectIdentical(a, b);
    const w32 = tf.tensor(halfExact(1000), [10, 100]);
    const w16 = toHalf(w32);
    expect(backend().isHalf(tf.reshape(w16, [100, 10]))).toBe(true);
    expect(Array.from(await w16.data())).toEqual(Array.from(w32.dataSync()));
    expect(w16.arraySync()).toEqual(w32.arraySync());
    tf.dispose([ids, w32, w16]);
  });
});

describe('loading an fp16 diffusers model', () => {
  const dir = path.join(MODEL, 'unet');

  function load(half: boolean): UNet2DConditionModel {
    const before = process.env.SDLAB_HALF_WEIGHTS;
    process.env.SDLAB_HALF_WEIGHTS = half ? '1' : '0';
    try {
      return UNet2DConditionModel.fromPretrained(dir);
    } finally {
      if (before === undefined) delete process.env.SDLAB_HALF_WEIGHTS;
      else process.env.SDLAB_HALF_WEIGHTS = before;
    }
  }

  it('keeps the large tensors half, the small ones float32, the same values and the same output', () => {
    const h = load(true), f = load(false);
    let halfBytes = 0, floatBytes = 0, halves = 0, expected = 0;
    const fp = new Map(f.namedParameters());
    for (const [name, p] of h.namedParameters()) {
      const isHalf = backend().isHalf(p.variable);
      expect(isHalf, name).toBe(p.variable.size >= HALF_MIN_SIZE);
      halves += isHalf ? 1 : 0;
      expected += p.variable.size * (isHalf ? 2 : 4);
      halfBytes += (backend().data.get(p.variable.dataId).values as unknown as ArrayBufferView).byteLength;
      floatBytes += (backend().data.get(fp.get(name)!.variable.dataId).values as unknown as ArrayBufferView).byteLength;
      expect(Array.from(p.variable.dataSync()), name).toEqual(Array.from(fp.get(name)!.variable.dataSync()));
    }
    expect(halves).toBeGreaterThan(10);
    expect(halfBytes).toBe(expected);
    expect(halfBytes / floatBytes).toBeLessThan(0.7); // the tiny model's many small tensors stay float32 (SD 1.5: 0.50)
    const sample = tf.tensor(halfExact(2 * 16 * 16 * 4), [2, 16, 16, 4]) as tf.Tensor4D; // the fixture: 4 channels, text width 32
    const text = tf.tensor(halfExact(2 * 77 * 32), [2, 77, 32]) as tf.Tensor3D;
    const t = tf.tensor1d([500, 500]);
    const run = (m: UNet2DConditionModel) => tf.tidy(() => m.forward(sample, t, text).dataSync() as Float32Array);
    expectIdentical([run(f)], [run(h)]);
    tf.dispose([sample, text, t]);
    h.dispose();
    f.dispose();
  });
});

describe('upsampleConv2d (2× nearest, then a same-padded conv) reads x in place', () => {
  it('matches the composition (resize, then conv) and the cpu backend: Winograd, indirect and fallback shapes, float32 and half filters', async () => {
    const { upsampleConv2d } = await import('../src/ops/index.ts');
    // [x shape, kernel, Cout, error bound ÷ √K]: F(4×4)'s transforms round about ten times as much
    // as direct sums (native/test/conv_check.cc against float64).
    const cases: Array<[[number, number, number, number], number, number, number?]> = [
      [[1, 9, 8, 72], 3, 80], // Winograd F(2×2) (3×3, ≥ 64 channels)
      [[1, 32, 33, 128], 3, 128, 4e-5], // Winograd F(4×4) (≥ 256 4×4 tiles at 64×66, ≥ 128 channels)
      [[2, 5, 6, 24], 3, 20], // the indirect kernel
      [[1, 4, 5, 6], 3, 3], // few outputs: no in-place path, the kernel upsamples explicitly
      [[1, 4, 4, 8], 1, 16], // 1×1: pointwise, explicit
    ];
    for (const [shape, k, cout, tol = 1e-5] of cases) {
      const x = tf.tensor(halfExact(shape.reduce((a, b) => a * b, 1)), shape) as tf.Tensor4D;
      const w = tf.tensor(halfExact(k * k * shape[3] * cout), [k, k, shape[3], cout]) as tf.Tensor4D;
      const bias = tf.tensor1d(halfExact(cout));
      const composed = tf.tidy(() => tf.fused.conv2d({ x: tf.image.resizeNearestNeighbor(x, [shape[1] * 2, shape[2] * 2]), filter: w, strides: 1, pad: 'same', bias }));
      const fused = upsampleConv2d(x, w, bias);
      const wh = toHalf(w);
      const fusedHalf = upsampleConv2d(x, wh as tf.Tensor4D, bias);
      expect(fused.shape).toEqual(composed.shape);
      const a = composed.dataSync(), b = fused.dataSync(), c = fusedHalf.dataSync();
      let worst = 0;
      for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]), Math.abs(a[i] - c[i]));
      expect(worst, `${shape} k${k} → ${cout}`).toBeLessThan(1e-5 * Math.sqrt(k * k * shape[3]));
      await tf.setBackend('cpu');
      const xc = tf.tensor(x.dataSync(), shape) as tf.Tensor4D, wc = tf.tensor(w.dataSync(), w.shape) as tf.Tensor4D, bc = tf.tensor1d(bias.dataSync());
      const onCpu = upsampleConv2d(xc, wc, bc).dataSync();
      tf.dispose([xc, wc, bc]);
      await tf.setBackend('native');
      let worstCpu = 0;
      for (let i = 0; i < a.length; i++) worstCpu = Math.max(worstCpu, Math.abs(onCpu[i] - b[i]));
      expect(worstCpu, `${shape} k${k} → ${cout} on cpu`).toBeLessThan(tol * Math.sqrt(k * k * shape[3]));
      tf.dispose([x, w, wh, bias, composed, fused, fusedHalf]);
    }
  });
});

describe('fp16 files straight into half precision', () => {
  it('a Linear and a Conv2d load from their float16 bits (transposed, no float32 copy) and a NaN among them is refused', async () => {
    const { Linear, Conv2d, loadWeights } = await import('../src/nn/index.ts');
    const { writeSafetensors } = await import('../src/io/safetensors.ts');
    const { mkdtempSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const dir = mkdtempSync(path.join(tmpdir(), 'sdlab-half-'));
    const lin = new Linear(256, 128), conv = new Conv2d(32, 64, 3);
    const wl = halfExact(128 * 256), wc = halfExact(64 * 32 * 9);
    const file = path.join(dir, 'w.safetensors');
    writeSafetensors(file, { weight: { shape: [128, 256], data: wl }, bias: { shape: [128], data: halfExact(128) } }, { dtype: 'F16' });
    loadWeights(lin, file);
    expect(backend().isHalf(lin.weight)).toBe(true);
    // PyTorch's [out, in] → sdlab's [in, out], element by element.
    const got = lin.weight.dataSync();
    let wrong = 0;
    for (let o = 0; o < 128; o++) for (let i = 0; i < 256; i++) if (got[i * 128 + o] !== wl[o * 256 + i]) wrong++;
    expect(wrong).toBe(0);
    const cfile = path.join(dir, 'c.safetensors');
    writeSafetensors(cfile, { weight: { shape: [64, 32, 3, 3], data: wc }, bias: { shape: [64], data: halfExact(64) } }, { dtype: 'F16' });
    loadWeights(conv, cfile);
    expect(backend().isHalf(conv.weight)).toBe(true);
    const gc = conv.weight.dataSync(); // [kh, kw, in, out] from [out, in, kh, kw]
    wrong = 0;
    for (let o = 0; o < 64; o++) for (let c = 0; c < 32; c++) for (let k = 0; k < 9; k++) if (gc[(k * 32 + c) * 64 + o] !== wc[(o * 32 + c) * 9 + k]) wrong++;
    expect(wrong).toBe(0);
    const bad = wl.slice();
    bad[5000] = NaN;
    const nfile = path.join(dir, 'nan.safetensors');
    writeSafetensors(nfile, { weight: { shape: [128, 256], data: bad }, bias: { shape: [128], data: halfExact(128) } }, { dtype: 'F16' });
    expect(() => loadWeights(new Linear(256, 128), nfile)).toThrow(/"weight" holds non-finite values \(NaN at index 5000\)/);
    lin.dispose();
    conv.dispose();
  });
});

/**
 * src/nn against independent references: naive float64 loops written from the PyTorch
 * definitions (weights given in PyTorch layout, so the layout conversion is tested too),
 * closed forms, and finite-difference gradients.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Attention,
  Conv2d,
  Embedding,
  GEGLU,
  GroupNorm,
  LayerNorm,
  Linear,
  Module,
  ModuleList,
  ResnetBlock2D,
  Upsample2D,
  manualSeed,
  quickGelu,
  scaledDotProductAttention,
  timestepEmbedding,
  type StateDict,
} from '../src/nn/index.ts';
import { loadWeights, saveWeights } from '../src/nn/checkpoint.ts';
import { gelu } from '../src/ops/index.ts';
import { readSafetensors } from '../src/io/safetensors.ts';
import { UsageError } from '../src/util/errors.ts';
import { Random } from '../src/util/random.ts';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

const rng = new Random(7);
const randn = (n: number, scale = 1) => Float32Array.from({ length: n }, () => rng.normal() * scale);
const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};
const values = (t: tf.Tensor) => Array.from(t.dataSync());

// ---------------------------------------------------------------------------------------------
// Naive references (PyTorch layouts: NCHW activations, OIHW conv weights, [out, in] linear)

/** x NCHW, w OIHW; padding [top, bottom, left, right]. */
function convRef(x: Float32Array, [n, c, h, w]: number[], wt: Float32Array, bias: Float32Array, o: number, k: number, stride: number, pad: number[]) {
  const [pt, pb, pl, pr] = pad as [number, number, number, number];
  const oh = Math.floor((h + pt + pb - k) / stride) + 1;
  const ow = Math.floor((w + pl + pr - k) / stride) + 1;
  const out = new Float64Array(n * o * oh * ow);
  for (let b = 0; b < n; b++)
    for (let oc = 0; oc < o; oc++)
      for (let y = 0; y < oh; y++)
        for (let xx = 0; xx < ow; xx++) {
          let s = bias[oc];
          for (let ic = 0; ic < c; ic++)
            for (let ky = 0; ky < k; ky++)
              for (let kx = 0; kx < k; kx++) {
                const iy = y * stride + ky - pt;
                const ix = xx * stride + kx - pl;
                if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                s += wt[((oc * c + ic) * k + ky) * k + kx] * x[((b * c + ic) * h + iy) * w + ix];
              }
          out[((b * o + oc) * oh + y) * ow + xx] = s;
        }
  return { out, shape: [n, o, oh, ow] };
}

const nchwToNhwc = (t: tf.Tensor) => tf.transpose(t, [0, 2, 3, 1]);
const nhwcToNchw = (t: tf.Tensor) => tf.transpose(t, [0, 3, 1, 2]);

/** float64 erf (Taylor series; accurate to ~1e-10 for |x| ≤ 4). */
function erf(x: number): number {
  let sum = 0;
  let term = x;
  for (let n = 0; n < 200; n++) {
    sum += term / (2 * n + 1);
    term *= (-x * x) / (n + 1);
  }
  return (2 / Math.sqrt(Math.PI)) * sum;
}

const sd = (entries: Record<string, { shape: number[]; data: Float32Array }>): StateDict => new Map(Object.entries(entries));

// ---------------------------------------------------------------------------------------------

describe('layers vs naive references', () => {
  const convCases: Array<[string, number, number, number[] | number]> = [
    ['3×3 stride 1 pad 1', 3, 1, 1],
    ['3×3 stride 2 pad 1 (UNet downsample)', 3, 2, 1],
    ['3×3 stride 2 pad (0,1,0,1) (VAE downsample)', 3, 2, [0, 1, 0, 1]],
    ['1×1 (shortcut)', 1, 1, 0],
    ['3×3 stride 1 no padding', 3, 1, 0],
  ];
  for (const [name, k, stride, padding] of convCases) {
    it(`Conv2d ${name} with PyTorch OIHW weights`, () => {
      const [n, c, h, w, o] = [2, 3, 6, 5, 4];
      const x = randn(n * c * h * w);
      const wt = randn(o * c * k * k, 0.3);
      const bias = randn(o, 0.1);
      const conv = new Conv2d(c, o, k, { stride, padding: padding as number });
      conv.loadStateDict(sd({ weight: { shape: [o, c, k, k], data: wt }, bias: { shape: [o], data: bias } }));
      const pad = typeof padding === 'number' ? [padding, padding, padding, padding] : padding;
      const ref = convRef(x, [n, c, h, w], wt, bias, o, k, stride, pad);
      const y = tf.tidy(() => nhwcToNchw(conv.forward(nchwToNhwc(tf.tensor(x, [n, c, h, w])) as tf.Tensor4D)));
      expect(y.shape).toEqual(ref.shape);
      expect(maxAbsDiff(values(y), ref.out)).toBeLessThan(1e-5);
      // And back out in PyTorch layout unchanged.
      expect(Array.from(conv.stateDict().get('weight')!.data)).toEqual(Array.from(wt));
    });
  }

  it('Linear with PyTorch [out, in] weights (and a [out, in, 1, 1] 1×1-conv weight)', () => {
    const [b, l, i, o] = [2, 3, 5, 4];
    const x = randn(b * l * i);
    const wt = randn(o * i);
    const bias = randn(o);
    const ref = new Float64Array(b * l * o);
    for (let r = 0; r < b * l; r++) for (let oc = 0; oc < o; oc++) {
      let s = bias[oc];
      for (let ic = 0; ic < i; ic++) s += wt[oc * i + ic] * x[r * i + ic];
      ref[r * o + oc] = s;
    }
    for (const shape of [[o, i], [o, i, 1, 1]]) {
      const lin = new Linear(i, o);
      lin.loadStateDict(sd({ weight: { shape, data: wt }, bias: { shape: [o], data: bias } }));
      const y = lin.forward(tf.tensor3d(x, [b, l, i]));
      expect(y.shape).toEqual([b, l, o]);
      expect(maxAbsDiff(values(y), ref)).toBeLessThan(1e-5);
    }
    const noBias = new Linear(i, o, { bias: false });
    expect(noBias.namedParameters().map(([n]) => n)).toEqual(['weight']);
  });

  it('GroupNorm (channels-last) matches the NCHW definition, biased variance', () => {
    const [n, c, h, w, g] = [2, 6, 3, 4, 3];
    const x = randn(n * c * h * w, 2);
    const gamma = randn(c);
    const beta = randn(c);
    const eps = 1e-6;
    const ref = new Float64Array(x.length);
    const per = (c / g) * h * w;
    for (let b = 0; b < n; b++) for (let gi = 0; gi < g; gi++) {
      const idx: number[] = [];
      for (let ch = gi * (c / g); ch < (gi + 1) * (c / g); ch++) for (let p = 0; p < h * w; p++) idx.push((b * c + ch) * h * w + p);
      const mean = idx.reduce((s, j) => s + x[j], 0) / per;
      const v = idx.reduce((s, j) => s + (x[j] - mean) ** 2, 0) / per;
      for (const j of idx) {
        const ch = Math.floor(j / (h * w)) % c;
        ref[j] = ((x[j] - mean) / Math.sqrt(v + eps)) * gamma[ch] + beta[ch];
      }
    }
    const gn = new GroupNorm(g, c, { eps });
    gn.loadStateDict(sd({ weight: { shape: [c], data: gamma }, bias: { shape: [c], data: beta } }));
    const y = tf.tidy(() => nhwcToNchw(gn.forward(nchwToNhwc(tf.tensor(x, [n, c, h, w])))));
    expect(maxAbsDiff(values(y), ref)).toBeLessThan(1e-5);
    expect(() => new GroupNorm(4, 6)).toThrow(UsageError);
  });

  it('LayerNorm over the last axis', () => {
    const [r, d] = [4, 7];
    const x = randn(r * d, 3);
    const gamma = randn(d);
    const beta = randn(d);
    const ref = new Float64Array(x.length);
    for (let i = 0; i < r; i++) {
      const row = Array.from(x.slice(i * d, (i + 1) * d));
      const mean = row.reduce((a, b) => a + b) / d;
      const v = row.reduce((a, b) => a + (b - mean) ** 2, 0) / d;
      row.forEach((val, j) => (ref[i * d + j] = ((val - mean) / Math.sqrt(v + 1e-5)) * gamma[j] + beta[j]));
    }
    const ln = new LayerNorm(d);
    ln.loadStateDict(sd({ weight: { shape: [d], data: gamma }, bias: { shape: [d], data: beta } }));
    expect(maxAbsDiff(values(ln.forward(tf.tensor2d(x, [r, d]))), ref)).toBeLessThan(1e-5);
  });

  it('exact (erf) GELU and quick_gelu against closed forms', () => {
    const xs = Array.from({ length: 161 }, (_, i) => -4 + i * 0.05);
    const g = values(gelu(tf.tensor1d(xs)));
    const ref = xs.map((x) => 0.5 * x * (1 + erf(x / Math.SQRT2)));
    expect(maxAbsDiff(g, ref)).toBeLessThan(1e-6);
    // It is not the tanh approximation (which differs by up to ~5e-4 on this range).
    const tanhApprox = xs.map((x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3))));
    expect(maxAbsDiff(ref, tanhApprox)).toBeGreaterThan(1e-4);
    const q = values(quickGelu(tf.tensor1d(xs)));
    expect(maxAbsDiff(q, xs.map((x) => x / (1 + Math.exp(-1.702 * x))))).toBeLessThan(1e-6);
  });

  it('GEGLU: first half of proj is the value, second half the (erf-gelu) gate', () => {
    const [i, o] = [3, 2];
    const wt = randn(2 * o * i);
    const bias = randn(2 * o);
    const x = randn(i);
    const g = new GEGLU(i, o);
    g.loadStateDict(sd({ 'proj.weight': { shape: [2 * o, i], data: wt }, 'proj.bias': { shape: [2 * o], data: bias } }));
    const h = Array.from({ length: 2 * o }, (_, r) => bias[r] + wt.slice(r * i, (r + 1) * i).reduce((s, w, c) => s + w * x[c], 0));
    const ref = Array.from({ length: o }, (_, j) => h[j] * 0.5 * h[o + j] * (1 + erf(h[o + j] / Math.SQRT2)));
    expect(maxAbsDiff(values(g.forward(tf.tensor2d(x, [1, i]))), ref)).toBeLessThan(1e-5);
  });

  it('ResnetBlock2D adds time_emb_proj(silu(temb)) after conv1 (= a per-channel conv1 bias)', () => {
    manualSeed(9);
    const [cin, cout, tc] = [4, 6, 5];
    const withT = new ResnetBlock2D({ inChannels: cin, outChannels: cout, tembChannels: tc, groups: 2, eps: 1e-5 });
    const plain = new ResnetBlock2D({ inChannels: cin, outChannels: cout, groups: 2, eps: 1e-5 });
    expect(withT.namedParameters().map(([n]) => n)).toContain('conv_shortcut.weight');
    expect(withT.namedParameters().map(([n]) => n)).toContain('time_emb_proj.weight');
    const temb = randn(tc);
    const weights = withT.stateDict();
    const tw = weights.get('time_emb_proj.weight')!.data; // [out, in]
    const tb = weights.get('time_emb_proj.bias')!.data;
    const silu = (v: number) => v / (1 + Math.exp(-v));
    const shifted = new Map(weights);
    shifted.delete('time_emb_proj.weight');
    shifted.delete('time_emb_proj.bias');
    const b1 = weights.get('conv1.bias')!.data;
    const newBias = Float32Array.from(b1, (b, o) => b + tb[o] + Array.from(temb).reduce((s, t, c) => s + tw[o * tc + c] * silu(t), 0));
    shifted.set('conv1.bias', { shape: [cout], data: newBias });
    plain.loadStateDict(shifted);
    const x = tf.tensor4d(randn(3 * 3 * cin), [1, 3, 3, cin]);
    const a = withT.forward(x, tf.tensor2d(temb, [1, tc]));
    expect(maxAbsDiff(values(a), values(plain.forward(x)))).toBeLessThan(1e-5);
    expect(() => withT.forward(x)).toThrow(/needs a timestep embedding/);
  });

  it('Embedding gathers rows', () => {
    const e = new Embedding(5, 3);
    const table = randn(15);
    e.loadStateDict(sd({ weight: { shape: [5, 3], data: table } }));
    const y = e.forward(tf.tensor2d([[4, 0], [2, 2]], [2, 2], 'int32'));
    expect(y.shape).toEqual([2, 2, 3]);
    expect(values(y)).toEqual([4, 0, 2, 2].flatMap((r) => Array.from(table.slice(r * 3, r * 3 + 3))));
  });

  it('Upsample2D is nearest ×2 (then conv)', () => {
    const up = new Upsample2D(2, { useConv: false });
    const x = tf.tensor4d([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 2, 2]);
    const y = up.forward(x);
    expect(y.shape).toEqual([1, 4, 4, 2]);
    // Channel 0 of x is [[1,3],[5,7]]; each pixel becomes a 2×2 block.
    expect(values(tf.squeeze(tf.slice(y, [0, 0, 0, 0], [1, 4, 4, 1])))).toEqual([1, 1, 3, 3, 1, 1, 3, 3, 5, 5, 7, 7, 5, 5, 7, 7]);
  });

  it('timestep embedding: [cos, sin] with freq shift 0, as diffusers get_timestep_embedding', () => {
    const ts = [0, 1, 37, 999];
    const dim = 8;
    const half = dim / 2;
    const emb = timestepEmbedding(ts, dim, { flipSinToCos: true, freqShift: 0 });
    expect(emb.shape).toEqual([4, 8]);
    const ref: number[] = [];
    for (const t of ts) {
      const f = Array.from({ length: half }, (_, i) => Math.exp((-Math.log(10000) * i) / half));
      ref.push(...f.map((fr) => Math.cos(t * fr)), ...f.map((fr) => Math.sin(t * fr)));
    }
    // float32 frequencies times t ≤ 999: a few 1e-5 of phase error at most.
    expect(maxAbsDiff(values(emb), ref)).toBeLessThan(2e-4);
    const plain = timestepEmbedding([37], dim); // defaults: [sin, cos], shift 1
    const f1 = Array.from({ length: half }, (_, i) => Math.exp((-Math.log(10000) * i) / (half - 1)));
    expect(maxAbsDiff(values(plain), [...f1.map((fr) => Math.sin(37 * fr)), ...f1.map((fr) => Math.cos(37 * fr))])).toBeLessThan(1e-5);
    expect(timestepEmbedding([3], 7).shape).toEqual([1, 7]); // odd dims are zero padded
  });
});

describe('attention', () => {
  /** Naive multi-head attention in float64 with PyTorch-layout projection weights. */
  function attentionRef(
    x: Float32Array, ctx: Float32Array, [b, lq, lk, c, cc]: number[], heads: number, dh: number,
    w: Record<string, Float32Array>, mask?: (i: number, j: number) => number,
  ) {
    const inner = heads * dh;
    const proj = (inp: Float32Array, rows: number, cin: number, wt: Float32Array, bias: Float32Array | undefined, cout: number) => {
      const out = new Float64Array(rows * cout);
      for (let r = 0; r < rows; r++) for (let o = 0; o < cout; o++) {
        let s = bias ? bias[o] : 0;
        for (let i = 0; i < cin; i++) s += wt[o * cin + i] * inp[r * cin + i];
        out[r * cout + o] = s;
      }
      return out;
    };
    const q = proj(x, b * lq, c, w.q!, w.qb, inner);
    const k = proj(ctx, b * lk, cc, w.k!, w.kb, inner);
    const v = proj(ctx, b * lk, cc, w.v!, w.vb, inner);
    const o = new Float32Array(b * lq * inner);
    for (let bi = 0; bi < b; bi++) for (let h = 0; h < heads; h++) for (let i = 0; i < lq; i++) {
      const s: number[] = [];
      for (let j = 0; j < lk; j++) {
        let d = 0;
        for (let e = 0; e < dh; e++) d += q[(bi * lq + i) * inner + h * dh + e] * k[(bi * lk + j) * inner + h * dh + e];
        s.push(d / Math.sqrt(dh) + (mask ? mask(i, j) : 0));
      }
      const m = Math.max(...s);
      const p = s.map((z) => Math.exp(z - m));
      const z = p.reduce((a, bb) => a + bb);
      for (let e = 0; e < dh; e++) {
        let acc = 0;
        for (let j = 0; j < lk; j++) acc += (p[j] / z) * v[(bi * lk + j) * inner + h * dh + e];
        o[(bi * lq + i) * inner + h * dh + e] = acc;
      }
    }
    return proj(o, b * lq, inner, w.o!, w.ob, c);
  }

  it('cross-attention (2 heads, no q/k/v bias) matches the naive definition', () => {
    const [b, lq, lk, c, cc, heads, dh] = [2, 5, 3, 6, 4, 2, 3];
    const inner = heads * dh;
    const w = { q: randn(inner * c, 0.5), k: randn(inner * cc, 0.5), v: randn(inner * cc, 0.5), o: randn(c * inner, 0.5), ob: randn(c, 0.1) };
    const attn = new Attention(c, { heads, dimHead: dh, crossAttentionDim: cc });
    expect(attn.namedParameters().map(([n]) => n).sort()).toEqual(['to_k.weight', 'to_out.0.bias', 'to_out.0.weight', 'to_q.weight', 'to_v.weight']);
    attn.loadStateDict(sd({
      'to_q.weight': { shape: [inner, c], data: w.q },
      'to_k.weight': { shape: [inner, cc], data: w.k },
      'to_v.weight': { shape: [inner, cc], data: w.v },
      'to_out.0.weight': { shape: [c, inner], data: w.o },
      'to_out.0.bias': { shape: [c], data: w.ob },
    }));
    const x = randn(b * lq * c);
    const ctx = randn(b * lk * cc);
    const y = attn.forward(tf.tensor3d(x, [b, lq, c]), tf.tensor3d(ctx, [b, lk, cc]));
    expect(y.shape).toEqual([b, lq, c]);
    expect(maxAbsDiff(values(y), attentionRef(x, ctx, [b, lq, lk, c, cc], heads, dh, w))).toBeLessThan(1e-5);
  });

  it('self-attention with biases, additive causal mask, NHWC input, group norm + residual', () => {
    const [b, hh, ww, c, heads, dh] = [1, 2, 3, 4, 2, 2];
    const l = hh * ww;
    const inner = heads * dh;
    const w = {
      q: randn(inner * c, 0.5), qb: randn(inner, 0.1), k: randn(inner * c, 0.5), kb: randn(inner, 0.1),
      v: randn(inner * c, 0.5), vb: randn(inner, 0.1), o: randn(c * inner, 0.5), ob: randn(c, 0.1),
    };
    const weights = sd({
      'to_q.weight': { shape: [inner, c], data: w.q }, 'to_q.bias': { shape: [inner], data: w.qb },
      'to_k.weight': { shape: [inner, c], data: w.k }, 'to_k.bias': { shape: [inner], data: w.kb },
      'to_v.weight': { shape: [inner, c], data: w.v }, 'to_v.bias': { shape: [inner], data: w.vb },
      'to_out.0.weight': { shape: [c, inner], data: w.o }, 'to_out.0.bias': { shape: [c], data: w.ob },
    });
    const x = randn(b * l * c);
    // Causal mask as CLIP builds it.
    const causal = (i: number, j: number) => (j > i ? -1e9 : 0);
    const maskT = tf.tensor2d(Array.from({ length: l * l }, (_, n) => causal(Math.floor(n / l), n % l)), [l, l]);
    const attn = new Attention(c, { heads, dimHead: dh, bias: true });
    attn.loadStateDict(weights);
    const y = attn.forward(tf.tensor4d(x, [b, hh, ww, c]), undefined, maskT);
    expect(y.shape).toEqual([b, hh, ww, c]);
    expect(maxAbsDiff(values(y), attentionRef(x, x, [b, l, l, c, c], heads, dh, w, causal))).toBeLessThan(1e-5);

    // VAE-style: GroupNorm first (identity affine here, so normalise by hand), residual added.
    const vae = new Attention(c, { heads, dimHead: dh, bias: true, normNumGroups: 2, normEps: 1e-6, residualConnection: true });
    vae.loadStateDict(weights, { allowMissing: true });
    const xn = new GroupNorm(2, c, { eps: 1e-6 }).forward(tf.tensor3d(x, [b, l, c])).dataSync() as Float32Array;
    const ref = attentionRef(xn, xn, [b, l, l, c, c], heads, dh, w).map((v, i) => v + x[i]);
    expect(maxAbsDiff(values(vae.forward(tf.tensor4d(x, [b, hh, ww, c]))), ref)).toBeLessThan(1e-5);
  });

  it('the chunked path (query-row chunks) equals the one-shot path, with and without a mask', () => {
    const [b, lq, lk, heads, d] = [2, 13, 7, 3, 4];
    const q = tf.tensor3d(randn(b * lq * heads * d), [b, lq, heads * d]);
    const k = tf.tensor3d(randn(b * lk * heads * d), [b, lk, heads * d]);
    const v = tf.tensor3d(randn(b * lk * heads * d), [b, lk, heads * d]);
    const mask = tf.tensor3d(randn(b * lq * lk, 2), [b, lq, lk]);
    for (const m of [undefined, mask]) {
      const full = scaledDotProductAttention(q, k, v, heads, { mask: m });
      // 2·3·7 = 42 scores per query row: a limit of 100 gives 2-row chunks (7 chunks, last one short).
      const chunked = scaledDotProductAttention(q, k, v, heads, { mask: m, maxScoreElements: 100 });
      const one = scaledDotProductAttention(q, k, v, heads, { mask: m, maxScoreElements: 1 });
      expect(maxAbsDiff(values(chunked), values(full))).toBeLessThan(1e-6);
      expect(maxAbsDiff(values(one), values(full))).toBeLessThan(1e-6);
    }
    // Gradients flow through the chunked path too, identically.
    const loss = (limit: number) => (qq: tf.Tensor) =>
      tf.sum(tf.square(scaledDotProductAttention(qq as tf.Tensor3D, k, v, heads, { mask, maxScoreElements: limit }))) as tf.Scalar;
    expect(maxAbsDiff(values(tf.grad(loss(100))(q)), values(tf.grad(loss(1 << 26))(q)))).toBeLessThan(1e-5);
    // And the mask really takes part.
    expect(maxAbsDiff(values(scaledDotProductAttention(q, k, v, heads, { mask })), values(scaledDotProductAttention(q, k, v, heads)))).toBeGreaterThan(1e-2);
  });
});

describe('gradients (tf.grad vs central finite differences)', () => {
  function checkGrad(f: (x: tf.Tensor) => tf.Scalar, x: tf.Tensor, h = 1e-2): number {
    const g = tf.grad(f)(x).dataSync();
    const base = x.dataSync();
    let worst = 0;
    const idx = [0, 3, 7, Math.floor(base.length / 2), base.length - 1];
    for (const i of idx) {
      const plus = Float32Array.from(base);
      const minus = Float32Array.from(base);
      plus[i] += h;
      minus[i] -= h;
      const fd = (f(tf.tensor(plus, x.shape)).dataSync()[0] - f(tf.tensor(minus, x.shape)).dataSync()[0]) / (2 * h);
      worst = Math.max(worst, Math.abs(fd - g[i]) / Math.max(1, Math.abs(fd)));
    }
    return worst;
  }

  it('GroupNorm input gradient', () => {
    manualSeed(1);
    const gn = new GroupNorm(2, 4, { eps: 1e-6 });
    const r = tf.tensor4d(randn(2 * 3 * 3 * 4), [2, 3, 3, 4]);
    const x = tf.tensor4d(randn(2 * 3 * 3 * 4), [2, 3, 3, 4]);
    const f = (t: tf.Tensor) => tf.sum(tf.mul(tf.square(gn.forward(t)), r)) as tf.Scalar;
    expect(checkGrad(f, x)).toBeLessThan(2e-3);
  });

  it('attention input and parameter gradients', () => {
    manualSeed(2);
    const attn = new Attention(4, { heads: 2, dimHead: 2, bias: true });
    const x = tf.tensor3d(randn(2 * 5 * 4), [2, 5, 4]);
    const r = tf.tensor3d(randn(2 * 5 * 4), [2, 5, 4]);
    const f = (t: tf.Tensor) => tf.sum(tf.mul(attn.forward(t as tf.Tensor3D), r)) as tf.Scalar;
    expect(checkGrad(f, x)).toBeLessThan(2e-3);
    // Parameter gradient through the variables (what training uses).
    const { grads } = tf.variableGrads(() => f(x), attn.parameters());
    const wq = attn.to_q.weight;
    const g = grads[wq.name].dataSync();
    const w0 = wq.dataSync().slice();
    const h = 1e-2;
    const at = (delta: number) => {
      const w = Float32Array.from(w0);
      w[5] += delta;
      wq.assign(tf.tensor(w, wq.shape));
      return f(x).dataSync()[0];
    };
    const fd = (at(h) - at(-h)) / (2 * h);
    wq.assign(tf.tensor(w0, wq.shape));
    expect(Math.abs(fd - g[5])).toBeLessThan(2e-3 * Math.max(1, Math.abs(fd)));
    expect(Math.abs(g[5])).toBeGreaterThan(1e-4); // a real, non-trivial gradient
  });
});

// ---------------------------------------------------------------------------------------------

class Toy extends Module {
  readonly conv = this.module('conv', new Conv2d(2, 3, 3, { padding: 1 }));
  readonly blocks = this.module('blocks', new ModuleList([new Linear(3, 4), new Linear(4, 2, { bias: false })]));
  readonly norm = this.module('norm', new GroupNorm(1, 3));
}

describe('module system and state dicts', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-nn-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('names parameters like PyTorch and counts them', () => {
    const m = new Toy();
    expect(m.namedParameters().map(([n]) => n)).toEqual([
      'conv.weight', 'conv.bias', 'blocks.0.weight', 'blocks.0.bias', 'blocks.1.weight', 'norm.weight', 'norm.bias',
    ]);
    expect(m.numParameters()).toBe(2 * 3 * 9 + 3 + 3 * 4 + 4 + 4 * 2 + 3 + 3);
    expect(m.parameters().every((v) => v.trainable)).toBe(true);
    const shapes = Object.fromEntries([...m.stateDict()].map(([k, t]) => [k, t.shape]));
    expect(shapes['conv.weight']).toEqual([3, 2, 3, 3]); // PyTorch OIHW
    expect(shapes['blocks.0.weight']).toEqual([4, 3]); // PyTorch [out, in]
  });

  it('manualSeed makes initialisation reproducible', () => {
    manualSeed(5);
    const a = new Toy().stateDict();
    manualSeed(5);
    const b = new Toy().stateDict();
    const c = new Toy().stateDict();
    expect(Array.from(b.get('conv.weight')!.data)).toEqual(Array.from(a.get('conv.weight')!.data));
    expect(Array.from(c.get('conv.weight')!.data)).not.toEqual(Array.from(a.get('conv.weight')!.data));
  });

  it('a mismatched state dict names every missing, unexpected and mis-shaped key in one error, and loads nothing', () => {
    manualSeed(3);
    const m = new Toy();
    const before = m.stateDict();
    const bad = m.stateDict();
    bad.delete('norm.bias');
    bad.delete('blocks.1.weight');
    bad.set('blocks.2.weight', { shape: [2, 2], data: new Float32Array(4) });
    bad.set('conv.weight', { shape: [3, 2, 1, 1], data: new Float32Array(6) });
    bad.get('conv.bias')!.data.fill(42);
    let msg = '';
    try {
      m.loadStateDict(bad, { source: 'toy.safetensors' });
    } catch (e) {
      expect(e).toBeInstanceOf(UsageError);
      msg = (e as Error).message;
    }
    expect(msg).toMatch(/^toy\.safetensors: weights do not fit the model/);
    expect(msg).toContain('2 missing: blocks.1.weight, norm.bias');
    expect(msg).toContain('1 unexpected: blocks.2.weight');
    expect(msg).toContain('1 with wrong shape: conv.weight [3,2,1,1] vs model [3,2,3,3]');
    expect(msg).not.toContain('\n');
    expect(Array.from(m.stateDict().get('conv.bias')!.data)).toEqual(Array.from(before.get('conv.bias')!.data));
  });

  it('keyMap renames or skips checkpoint keys', () => {
    const m = new Toy();
    const src = new Toy().stateDict();
    const renamed: StateDict = new Map([...src].map(([k, v]) => [`model.${k}`, v]));
    renamed.set('model.position_ids', { shape: [1, 3], data: new Float32Array(3) });
    m.loadStateDict(renamed, { keyMap: (k) => (k.endsWith('position_ids') ? null : k.slice('model.'.length)) });
    expect(Array.from(m.stateDict().get('blocks.0.weight')!.data)).toEqual(Array.from(src.get('blocks.0.weight')!.data));
  });

  it('save → load through safetensors (F32 exact, F16 rounded) reproduces the model', () => {
    manualSeed(11);
    const a = new Toy();
    const b = new Toy();
    const file = path.join(dir, 'toy.safetensors');
    saveWeights(a, file);
    const onDisk = readSafetensors(file);
    expect(onDisk.get('conv.weight')!.shape).toEqual([3, 2, 3, 3]);
    loadWeights(b, file);
    const x = tf.tensor4d(randn(2 * 4 * 4 * 2), [2, 4, 4, 2]);
    expect(values(b.conv.forward(x))).toEqual(values(a.conv.forward(x)));
    for (const [k, t] of a.stateDict()) expect(Array.from(b.stateDict().get(k)!.data)).toEqual(Array.from(t.data));

    const f16 = path.join(dir, 'toy16.safetensors');
    saveWeights(a, f16, { dtype: 'F16' });
    loadWeights(b, f16);
    expect(readSafetensors(f16).get('conv.weight')!.dtype).toBe('F16');
    expect(maxAbsDiff(values(b.conv.forward(x)), values(a.conv.forward(x)))).toBeLessThan(1e-2);

    const wrong = new Linear(3, 3);
    expect(() => loadWeights(wrong, file)).toThrow(/toy\.safetensors: weights do not fit the model — 2 missing: weight, bias; 7 unexpected/);
  });
});

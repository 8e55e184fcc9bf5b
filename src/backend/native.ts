/**
 * sdlab's native CPU backend for TensorFlow.js: tfjs's `cpu` backend with its heavy kernels
 * replaced by a C++ addon (native/: a packed SIMD GEMM, im2col-free convolutions, vectorised
 * exp/sigmoid/erf, broadcasting elementwise ops, reductions over any axes, slice/concat/pad/
 * resize), multithreaded over all cores. It also implements the fused kernels of src/ops
 * (GroupNorm/LayerNorm (+SiLU), SiLU, GELU, AdamW, attention with an online softmax; names in src/ops/kernel_names.ts): the ops
 * there run them when this backend is active, and plain tfjs compositions on any other.
 *
 * The backend `extends MathBackendCPU`, so tensors are the cpu backend's own Float32Arrays and
 * the addon reads and writes them in place (no copies). It registers under the name 'native'
 * with every `cpu` kernel copied; the kernels below override the heavy ones and hand anything
 * they do not cover (other dtypes, NCHW, unusual broadcasts) back to the inherited JS kernel.
 *
 *   import { registerNativeBackend } from './native.ts';
 *   if (registerNativeBackend()) await tf.setBackend('native');
 *
 * Threads: all cores, or SDLAB_THREADS=N. The addon is compiled during `npm install` (`node
 * native/build.mjs`) unless a prebuilt binary fits (Linux x64 and arm64 ship in the package); if
 * neither loads, registerNativeBackend() returns false and nativeLoadError() says why.
 */
import * as tf from '@tensorflow/tfjs';
import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setArrayAccel } from '../util/accel.ts';
import { setHalfWeights } from '../util/half_weights.ts';
import { setMemoryRelease } from '../util/memory.ts';
import { ACTIVATION, ACTIVATION_GRAD, type ActivationAttrs, ADAMW, type AdamWStep, ATTENTION, type AttentionAttrs, GROUP_NORM, GROUP_NORM_GRAD, type GroupNormAttrs, nearestSources, normDims, UPSAMPLE_CONV, type UpsampleConvAttrs } from '../ops/index.ts';

type F32 = Float32Array;
type TensorInfo = tf.TensorInfo;
type KernelFunc = tf.KernelFunc;
type NamedAttrMap = tf.NamedAttrMap;

/** The addon's functions (native/src/addon.cc). Every one works in place on Float32Arrays. */
export interface NativeAddon {
  /** b may be float16 bits (a weight kept in half precision), unpacked while the GEMM packs it. */
  matmul(a: F32, b: F32 | Uint16Array, c: F32, batch: number, m: number, n: number, k: number, transA: boolean, transB: boolean,
    strideA: number, strideB: number, bias: F32 | null, act: number, alpha: number, accumulate: boolean): void;
  /** conv2d of x nearest-upsampled by `up` (shape's H and W: the upsampled sizes); false, nothing written, where no im2col-free path takes it. */
  conv2dUpsampled?(x: F32, w: F32 | Uint16Array, out: F32, shape: number[], up: number, bias: F32 | null, act: number, alpha: number): boolean;
  /** w may be float16 bits, as matmul's b. */
  conv2d(x: F32, w: F32 | Uint16Array, out: F32, shape: number[], bias: F32 | null, act: number, alpha: number): void;
  conv2dBackpropInput(dy: F32, w: F32, dx: F32, shape: number[]): void;
  conv2dBackpropFilter(x: F32, dy: F32, dw: F32, shape: number[]): void;
  binary(op: number, a: F32, aShape: number[], b: F32, bShape: number[], out: F32, outShape: number[]): void;
  unary(op: number, x: F32, out: F32, alpha: number): void;
  reduce(op: number, x: F32, out: F32, outer: number, reduce: number, inner: number): void;
  /** x and out: Float32Arrays, or Uint16Arrays of float16 bits (loading half-precision weights). */
  transpose(x: F32, shape: number[], perm: number[], out: F32): void;
  softmax(x: F32, out: F32, rows: number, cols: number): void;
  reduceAxes(op: number, x: F32, shape: number[], reducedMask: number[], out: F32): void;
  copyBox(src: F32, srcShape: number[], srcBegin: number[], dst: F32, dstShape: number[], dstBegin: number[], size: number[]): void;
  tile(x: F32, shape: number[], reps: number[], out: F32): void;
  gatherHW(x: F32, dims: number[], rows: Int32Array, cols: Int32Array, out: F32): void;
  scatterAddHW(dy: F32, dims: number[], rows: Int32Array, cols: Int32Array, dx: F32): void;
  attention(q: F32, k: F32, v: F32, dims: number[], scale: number, out: F32): void;
  groupNorm(x: F32, dims: number[], gamma: F32 | null, beta: F32 | null, eps: number, act: number, y: F32, mean: F32, rstd: F32): void;
  groupNormGrad(dy: F32, x: F32, dims: number[], gamma: F32 | null, beta: F32 | null, mean: F32, rstd: F32, act: number,
    dx: F32, dgamma: F32 | null, dbeta: F32 | null): void;
  activation(op: number, x: F32, y: F32): void;
  activationGrad(op: number, dy: F32, x: F32, dx: F32): void;
  adamw(p: F32, g: F32, m: F32, v: F32, pOut: F32, mOut: F32, vOut: F32, hyper: F32, hasDecay: boolean): void;
  setThreads(n: number): void;
  threads(): number;
  isa(): string;
  hardwareThreads(): number;
  /** Every pool thread runs `iters` rounds of 12 FMA chains at once (the bench's peak probe); returns the FLOPs done. */
  fmaPeak(iters: number): number;
  /** dst = src's float16 bits as float32, exactly (loading fp16 weights; util/accel.ts). */
  halvesToFloats(src: Uint16Array, dst: F32): void;
  /** dst = src rounded to float16 bits, nearest even (weights kept in half precision; absent in addons built before it). */
  floatsToHalves?(src: F32, dst: Uint16Array): void;
  /** Detaches an ArrayBuffer nothing else can reach, freeing its memory at once (absent in addons built before it). */
  release?(buffer: ArrayBuffer): boolean;
  /** Returns the C heap's free pages to the system (malloc_trim; false where there is none; absent in older addons). */
  trimMemory?(): boolean;
  /** Advises huge pages for a fresh buffer (from 4 MB) before it is written, and for the C heap's growth (addon's advise_huge, advise_heap_growth). */
  adviseHuge?(array: F32 | Uint16Array): void;
  /** One turn of Node's event loop (the webgpu backend's synchronous reads; absent in addons built before it). */
  pumpEventLoop?(): boolean;
}

/** native/: its build/Release (compiled by `npm install` or `npm run build:native`) or its prebuilds/. */
export const NATIVE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../native');

/**
 * The addon file that loads: SDLAB_NATIVE_ADDON=FILE if set (another build, or a missing one to
 * simulate), else what node-gyp-build picks in native/: the compiled build/Release if there is
 * one, else the prebuilt binary for this platform, arch and libc (prebuilds/linux-x64, linux-arm64;
 * native/prebuild.mjs). Throws when there is neither.
 */
export function nativeAddonPath(): string {
  if (process.env.SDLAB_NATIVE_ADDON) return path.resolve(process.env.SDLAB_NATIVE_ADDON);
  return (createRequire(import.meta.url)('node-gyp-build') as { resolve(dir: string): string }).resolve(NATIVE_DIR);
}

let addon: NativeAddon | null | undefined;
let loadError = '';
let loadedFrom = '';

/** Loads the addon once; null (see nativeLoadError()) if it is not built or will not load. */
export function loadNativeAddon(): NativeAddon | null {
  if (addon !== undefined) return addon;
  try {
    loadedFrom = nativeAddonPath();
    addon = createRequire(import.meta.url)(loadedFrom) as NativeAddon;
    addon.setThreads(nativeThreadCount());
    const a = addon;
    if (typeof a.halvesToFloats === 'function') setArrayAccel({ halvesToFloats: (src, out) => a.halvesToFloats(src, out) });
    if (typeof a.floatsToHalves === 'function') setHalfWeights({ backend: NATIVE_BACKEND_NAME, toHalf: toHalfTensor, fromHalves: halfTensorFrom });
    setMemoryRelease(releaseNativeCache);
  } catch (err) {
    addon = null;
    const msg = (err as Error).message.split('\n')[0];
    loadError = msg.includes('Cannot find module') || msg.startsWith('No native build was found')
      ? `${loadedFrom ? path.relative(process.cwd(), loadedFrom) : 'the native addon'} is not built and no prebuilt binary fits this ${process.platform}-${process.arch} (run: node native/build.mjs)`
      : msg;
  }
  return addon;
}

/** Where the loaded addon came from: its file, and whether it is a prebuilt binary (native/prebuilds). */
export function nativeAddonSource(): { file: string; prebuilt: boolean } | null {
  if (!loadNativeAddon()) return null;
  return { file: loadedFrom, prebuilt: loadedFrom.split(path.sep).includes('prebuilds') };
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

/**
 * A fresh, not yet written buffer. First touching memory in 4 KB pages is slow (seconds per GiB
 * in VMs; native/src/pool.h), so the addon advises huge pages for it (from 4 MB up) and for the
 * C heap's growth that it may have caused. Below 64 KB the call would cost more than it saves.
 */
function fresh<T extends F32 | Uint16Array>(a: T): T {
  if (a.byteLength >= 1 << 16) addon?.adviseHuge?.(a);
  return a;
}

/**
 * Recycles the large output buffers of native kernels. A training step allocates and frees the
 * same few dozen multi-megabyte tensors every time, and SD's UNet and VAE the same few sizes in
 * every layer; reusing them skips the fresh pages a new buffer costs (slow in VMs) and V8's
 * garbage collections (each allocation counts as external memory). A freed buffer is reused only if
 * nobody else can still see it: it was allocated here, registered to exactly one tensor (a JS
 * kernel that wraps a view of it in a second tensor makes it shared for good), and never handed
 * out by readSync/read (dataSync() returns the backend's own array). At most MAX_TOTAL bytes wait
 * for reuse, the oldest going first; a buffer that goes is freed at once (the addon detaches it)
 * rather than at V8's next collection, which can come gigabytes later.
 */
class BufferPool {
  /**
   * Buffers from 32 MB up (SD's activations) are not kept: the C heap reuses those under 100 MB as
   * fast (addon.cc), and holding the VAE decoder's 128-256 MB ones only raised its peak.
   */
  static readonly LARGE = 32 << 20;
  /** Bytes held for reuse at most: a training step's many smaller ones (the MNIST VAE step slowed ~15% at 256 MB). */
  static readonly MAX_TOTAL = 512 << 20;
  /**
   * A buffer still unused after this many bytes of others were released goes: work of another
   * shape has begun (SD's decoder, from 64 to 512 px: each stage's sizes are dead once it is over).
   * A training step reuses all of its buffers well within it.
   */
  static readonly MAX_AGE = 1 << 30;
  private stamp = new WeakMap<ArrayBuffer, number>(); // releasedBytes when it was put in the pool
  private releasedBytes = 0;
  private owned = new WeakSet<ArrayBuffer>();
  private uses = new WeakMap<ArrayBuffer, number>(); // tensor registrations since allocation or reuse
  private escaped = new WeakSet<ArrayBuffer>();
  private free = new Map<number, ArrayBuffer[]>(); // by length in floats
  private held = new Set<ArrayBuffer>(); // the same buffers, oldest first
  private bytes = 0;

  /** n floats, contents undefined. */
  take(n: number): F32 {
    const ab = this.free.get(n)?.pop();
    if (ab) {
      this.held.delete(ab);
      this.bytes -= ab.byteLength;
      this.uses.set(ab, 0);
      return new Float32Array(ab, 0, n);
    }
    const b = Buffer.allocUnsafeSlow(n * 4);
    if (b.byteOffset === 0 && b.buffer.byteLength === n * 4) {
      this.owned.add(b.buffer);
      this.uses.set(b.buffer, 0);
    }
    return fresh(new Float32Array(b.buffer, b.byteOffset, n));
  }

  /** Frees every buffer held for reuse. */
  clear(): void {
    for (const ab of this.held) addon!.release?.(ab);
    this.held.clear();
    this.free.clear();
    this.bytes = 0;
  }

  registered(values: unknown): void {
    const ab = ownedBuffer(this.owned, values);
    if (ab) this.uses.set(ab, (this.uses.get(ab) ?? 0) + 1);
  }

  handedOut(values: unknown): void {
    const ab = ownedBuffer(this.owned, values);
    if (ab) this.escaped.add(ab);
  }

  /** The tensor that held `values` is gone. */
  release(values: unknown): void {
    const ab = ownedBuffer(this.owned, values);
    if (!ab || this.escaped.has(ab) || this.uses.get(ab) !== 1) return;
    this.uses.set(ab, 2); // never released twice
    this.releasedBytes += ab.byteLength;
    for (const old of this.held) {
      if (this.releasedBytes - this.stamp.get(old)! <= BufferPool.MAX_AGE) break;
      this.drop(old);
    }
    if (ab.byteLength >= BufferPool.LARGE) {
      addon!.release?.(ab);
      return;
    }
    for (const old of this.held) {
      if (this.bytes + ab.byteLength <= BufferPool.MAX_TOTAL) break;
      this.drop(old);
    }
    const n = ab.byteLength / 4;
    const list = this.free.get(n);
    if (list) list.push(ab);
    else this.free.set(n, [ab]);
    this.held.add(ab);
    this.bytes += ab.byteLength;
    this.stamp.set(ab, this.releasedBytes);
  }

  /** Takes a held buffer out of the pool and frees it. */
  private drop(ab: ArrayBuffer): void {
    const list = this.free.get(ab.byteLength / 4)!;
    list.splice(list.indexOf(ab), 1);
    this.held.delete(ab);
    this.bytes -= ab.byteLength;
    addon!.release?.(ab);
  }
}

function ownedBuffer(owned: WeakSet<ArrayBuffer>, values: unknown): ArrayBuffer | null {
  if (!(values instanceof Float32Array)) return null;
  return owned.has(values.buffer as ArrayBuffer) ? (values.buffer as ArrayBuffer) : null;
}

const buffers = new BufferPool();

/**
 * Gives memory that is free but held for reuse back to the system: the recycled tensor buffers and
 * the C heap's free pages (installed as util/memory.ts's release: between the phases of a pipeline).
 */
function releaseNativeCache(): void {
  buffers.clear();
  addon?.trimMemory?.();
}

/**
 * The cpu backend, with tensors the addon can work on in place and recycled output buffers.
 *
 * A float32 tensor may also hold its values as float16 bits (a Uint16Array): fp16 weight files
 * loaded for inference stay in half precision (SD 1.5's 1.07 G parameters: 2.1 GB instead of 4.3).
 * The GEMM kernels (MatMul, Conv2D, their fused forms) take such a weight as it is and unpack it
 * while they pack it (native/src/gemm.cc, conv.cc, winograd.cc); every other kernel, and every
 * read (dataSync, data), sees float32 values unpacked for the occasion (unpackingHalves).
 */
export class NativeBackend extends MathBackendCPU {
  /** A float32 tensor whose values are the float16 bits `halves` (see the class comment). */
  makeHalfTensor(halves: Uint16Array, shape: number[]): tf.Tensor {
    const dataId = this.write(halves as unknown as tf.backend_util.BackendValues, shape, 'float32');
    halfBuffers++;
    return tf.engine().makeTensorFromDataId(dataId, shape, 'float32', this);
  }

  /** Whether a tensor's values are held as float16 bits. */
  isHalf(t: TensorInfo): boolean {
    return t.dtype === 'float32' && this.data.has(t.dataId) && this.data.get(t.dataId).values instanceof Uint16Array;
  }

  override write(values: tf.backend_util.BackendValues, shape: number[], dtype: tf.DataType): tf.DataId {
    buffers.registered(values);
    return super.write(values, shape, dtype);
  }

  override move(dataId: tf.DataId, values: tf.backend_util.BackendValues, shape: number[], dtype: tf.DataType, refCount: number): void {
    buffers.registered(values);
    super.move(dataId, values, shape, dtype, refCount);
  }

  override readSync(dataId: tf.DataId): tf.backend_util.BackendValues {
    if (this.data.has(dataId)) {
      const { values, dtype } = this.data.get(dataId);
      if (dtype === 'float32' && values instanceof Uint16Array) return unpackHalves(values, new Float32Array(values.length));
      buffers.handedOut(values);
    }
    return super.readSync(dataId);
  }

  override disposeData(dataId: tf.DataId, force = false): boolean {
    const values = this.data.has(dataId) ? this.data.get(dataId).values : undefined;
    const released = super.disposeData(dataId, force);
    if (values !== undefined && !this.data.has(dataId)) {
      if (values instanceof Uint16Array) halfBuffers--;
      buffers.release(values);
    }
    return released;
  }
}

// ---------------------------------------------------------------------------------------------
// Weights in half precision (NativeBackend's class comment)

/** n float16 slots of fresh memory without a zero-fill (the callers write every one). */
function freshHalves(n: number): Uint16Array {
  const b = Buffer.allocUnsafeSlow(n * 2);
  return fresh(new Uint16Array(b.buffer, b.byteOffset, n));
}

/** A half-precision copy of a float32 tensor on the native backend (util/half_weights.ts). */
function toHalfTensor(t: tf.Tensor): tf.Tensor {
  const backend = tf.backend() as NativeBackend;
  if (!(backend instanceof NativeBackend) || t.dtype !== 'float32') throw new Error('toHalfTensor: expects a float32 tensor on the native backend');
  const h = freshHalves(t.size);
  // The backend's own array, not dataSync()'s: a buffer handed out can never be recycled or freed early.
  addon!.floatsToHalves!(f32(backend, t) ?? (t.dataSync() as F32), h);
  return backend.makeHalfTensor(h, [...t.shape]);
}

/** A half-precision tensor of float16 bits, transposed by `perm` if given (util/half_weights.ts). */
function halfTensorFrom(halves: Uint16Array, shape: number[], perm: number[] | null): tf.Tensor {
  const backend = tf.backend() as NativeBackend;
  if (!(backend instanceof NativeBackend)) throw new Error('halfTensorFrom: expects the native backend');
  const out = freshHalves(halves.length);
  if (perm) addon!.transpose(halves as unknown as F32, shape, perm, out as unknown as F32);
  else out.set(halves);
  return backend.makeHalfTensor(out, perm ? perm.map((p) => shape[p]) : [...shape]);
}

/** Live tensor buffers held as float16 bits: kernels look at their inputs only while there are any. */
let halfBuffers = 0;

function unpackHalves(h: Uint16Array, out: F32): F32 {
  addon!.halvesToFloats(h, out);
  return out;
}

/** Kernels that take half-precision inputs as they are: the GEMM family, and those that only pass a dataId on. */
const HALF_AWARE = new Set(['BatchMatMul', '_FusedMatMul', 'Conv2D', 'FusedConv2D', UPSAMPLE_CONV, 'Reshape', 'Identity']);

/** `kf` with every half-precision input unpacked to a float32 temporary for the call. */
function unpackingHalves(kf: KernelFunc): KernelFunc {
  return (args) => {
    if (halfBuffers === 0) return kf(args);
    const backend = args.backend as NativeBackend;
    let inputs: tf.NamedTensorInfoMap | null = null;
    const temps: TensorInfo[] = [];
    for (const [name, t] of Object.entries(args.inputs)) {
      if (!t || !backend.isHalf(t)) continue;
      inputs ??= (Array.isArray(args.inputs) ? [...args.inputs] : { ...args.inputs }) as tf.NamedTensorInfoMap;
      const h = backend.data.get(t.dataId).values as unknown as Uint16Array;
      const tmp = backend.makeTensorInfo(t.shape, 'float32', unpackHalves(h, outBuf(h.length)));
      temps.push(tmp);
      (inputs as Record<string, TensorInfo>)[name] = tmp;
    }
    if (!inputs) return kf(args);
    try {
      return kf({ ...args, inputs });
    } finally {
      for (const t of temps) backend.disposeIntermediateTensorInfo(t);
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Helpers

const ACT: Record<string, number> = { linear: 0, relu: 1, relu6: 2, sigmoid: 3, leakyrelu: 4, elu: 5 };

/** tfjs's cpu kernel (the fallback of the kernels here), seeing half-precision inputs as float32. */
function cpuKernel(name: string): KernelFunc {
  const k = tf.getKernel(name, 'cpu');
  if (!k) throw new Error(`tfjs cpu backend has no kernel ${name}`);
  return unpackingHalves(k.kernelFunc);
}

/** The backend's Float32Array for a float32 tensor, or null (other dtypes go to the JS kernel). */
function f32(backend: NativeBackend, t: TensorInfo | undefined): F32 | null {
  if (!t || t.dtype !== 'float32') return null;
  const v = backend.data.get(t.dataId).values;
  return v instanceof Float32Array ? v : null;
}

/** A GEMM weight operand: f32()'s array, or a half-precision tensor's float16 bits. */
function weights(backend: NativeBackend, t: TensorInfo): F32 | Uint16Array | null {
  if (t.dtype !== 'float32') return null;
  const v = backend.data.get(t.dataId).values;
  return v instanceof Float32Array || v instanceof Uint16Array ? v : null;
}

const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/**
 * An output buffer of n floats with undefined contents, for kernels that write every element:
 * Buffer.allocUnsafeSlow skips the zero-fill of `new Float32Array(n)`, which for large
 * outputs costs a good part of a whole elementwise op, and large ones are recycled (BufferPool).
 * (Small ones: the ordinary allocation.)
 */
function outBuf(n: number): F32 {
  if (n < 4096) return new Float32Array(n);
  return buffers.take(n);
}

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
  const av = f32(backend, a), bv = weights(backend, b);
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
  const out = outBuf(batch * M * N);
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
  const xv = f32(backend, x), wv = weights(backend, filter);
  if (!xv || !wv || (dataFormat ?? 'NHWC') !== 'NHWC' || x.shape.length !== 4 || filter.shape.length !== 4) return null;
  const info = tf.backend_util.computeConv2DInfo(x.shape as [number, number, number, number], filter.shape as [number, number, number, number],
    strides, dilations ?? 1, pad, dimRoundingMode, false, 'channelsLast');
  if (info.outShape.some((d) => !(d > 0))) return null; // empty or invalid: the JS kernel decides
  const out = outBuf(size(info.outShape));
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

/** UPSAMPLE_CONV (ops/fused.ts): the convolution reads x at each upsampled pixel's source; else resize, then conv. */
const upsampleConvKernel: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { x, filter, bias } = args.inputs as { x: TensorInfo; filter: TensorInfo; bias?: TensorInfo };
  const { factor } = args.attrs as unknown as UpsampleConvAttrs;
  const [B, H, W] = x.shape;
  const upSize = [H * factor, W * factor];
  const xv = f32(backend, x), wv = weights(backend, filter);
  const bv = bias ? f32(backend, bias) : null;
  if (xv && wv && (!bias || bv) && x.shape.length === 4 && filter.shape.length === 4) {
    const info = tf.backend_util.computeConv2DInfo([B, upSize[0], upSize[1], x.shape[3]], filter.shape as [number, number, number, number],
      1, 1, 'same', undefined, false, 'channelsLast');
    const out = outBuf(size(info.outShape));
    if (addon!.conv2dUpsampled?.(xv, wv, out, convShape(info), factor, bv, 0, 0)) return backend.makeTensorInfo(info.outShape, 'float32', out);
  }
  const up = run('ResizeNearestNeighbor', { images: x }, backend, { alignCorners: false, halfPixelCenters: false, size: upSize });
  try {
    return bias
      ? run('FusedConv2D', { x: up, filter, bias }, backend, { strides: 1, pad: 'same', dataFormat: 'NHWC', dilations: 1, activation: 'linear' })
      : run('Conv2D', { x: up, filter }, backend, { strides: 1, pad: 'same', dataFormat: 'NHWC', dilations: 1 });
  } finally {
    backend.disposeIntermediateTensorInfo(up);
  }
};

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
      const dx = outBuf(size(info.inShape));
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
      const dw = outBuf(size(filterShape));
      addon!.conv2dBackpropFilter(xv, dyv, dw, convShape(info));
      return backend.makeTensorInfo(filterShape, 'float32', dw);
    }
  }
  return cpuKernel('Conv2DBackpropFilter')(args);
};

// ---------------------------------------------------------------------------------------------
// Elementwise, reductions, transpose, softmax

const BINARY: Record<string, number> = { Add: 0, Sub: 1, Multiply: 2, RealDiv: 3, SquaredDifference: 4, Maximum: 5, Minimum: 6, Pow: 7 };

function binaryKernel(name: string, op: number): KernelFunc {
  const fallback = cpuKernel(name);
  return (args) => {
    const backend = args.backend as NativeBackend;
    const { a, b } = args.inputs as { a: TensorInfo; b: TensorInfo };
    const av = f32(backend, a), bv = f32(backend, b);
    if (!av || !bv) return fallback(args);
    const outShape = tf.broadcast_util.assertAndGetBroadcastShape(a.shape, b.shape);
    const pad = (s: number[]) => new Array(outShape.length - s.length).fill(1).concat(s);
    const out = outBuf(size(outShape));
    addon!.binary(op, av, pad(a.shape), bv, pad(b.shape), out, outShape);
    return backend.makeTensorInfo(outShape, 'float32', out);
  };
}

const UNARY: Record<string, number> = {
  Relu: 0, Relu6: 1, Sigmoid: 2, Tanh: 3, Exp: 4, Log: 5, Sqrt: 6, Rsqrt: 7, Square: 8, Neg: 9, Abs: 10, Step: 11, LeakyRelu: 12, Elu: 13,
  Erf: 14, Reciprocal: 15,
};

function unaryKernel(name: string, op: number): KernelFunc {
  const fallback = cpuKernel(name);
  return (args) => {
    const backend = args.backend as NativeBackend;
    const { x } = args.inputs as { x: TensorInfo };
    const xv = f32(backend, x);
    if (!xv) return fallback(args);
    const alpha = (args.attrs as { alpha?: number } | undefined)?.alpha ?? 0;
    const out = outBuf(xv.length);
    addon!.unary(op, xv, out, alpha);
    return backend.makeTensorInfo(x.shape, 'float32', out);
  };
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
    const shape = keepDims ? x.shape.map((d, i) => (axes.includes(i) ? 1 : d)) : x.shape.filter((_, i) => !axes.includes(i));
    const out = outBuf(size(shape));
    // Any set of axes, natively: no transpose to bring them together first.
    addon!.reduceAxes(op, xv, x.shape, x.shape.map((_, i) => (axes.includes(i) ? 1 : 0)), out);
    return backend.makeTensorInfo(shape, 'float32', out);
  };
}

const transposeKernel: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { x } = args.inputs as { x: TensorInfo };
  const { perm } = args.attrs as { perm: number[] };
  const xv = f32(backend, x);
  if (!xv) return cpuKernel('Transpose')(args);
  const out = outBuf(xv.length);
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
  const out = outBuf(xv.length);
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
  let out = outBuf(vals[0]!.length);
  addon!.binary(0, vals[0]!, shape, vals[1]!, shape, out, shape);
  let spare = vals.length > 2 ? outBuf(out.length) : null;
  for (let i = 2; i < vals.length; i++) {
    addon!.binary(0, out, shape, vals[i]!, shape, spare!, shape);
    [out, spare] = [spare!, out];
  }
  return backend.makeTensorInfo(shape, 'float32', out);
};

// ---------------------------------------------------------------------------------------------
// Data movement: slice, split, concat, pad, tile, nearest-neighbour resize (tfjs's JS versions
// index element by element through generic N-d helpers, which made the gradient of a pad or a
// channel concat cost more than the convolutions around it)

const zerosOf = (n: number) => new Array<number>(n).fill(0);

/** A float32 box copy of x[begin : begin+sz] into a new tensor (sz already resolved). */
function sliceNative(backend: NativeBackend, x: TensorInfo, xv: F32, begin: number[], sz: number[]): TensorInfo {
  const out = outBuf(size(sz));
  addon!.copyBox(xv, x.shape, begin, out, sz, zerosOf(sz.length), sz);
  return backend.makeTensorInfo(sz, 'float32', out);
}

const sliceKernel: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { x } = args.inputs as { x: TensorInfo };
  const { begin, size: sz } = args.attrs as { begin: number | number[]; size?: number | number[] };
  const xv = f32(backend, x);
  if (!xv) return cpuKernel('Slice')(args);
  const [b, s] = tf.slice_util.parseSliceParams(x as tf.Tensor, begin, sz);
  tf.slice_util.assertParamsValid(x as tf.Tensor, b, s);
  // A contiguous slice is a zero-copy subarray in the cpu kernel: keep that.
  if (tf.slice_util.isSliceContinous(x.shape, b, s)) return cpuKernel('Slice')(args);
  return sliceNative(backend, x, xv, b, s);
};

const splitVKernel: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { x } = args.inputs as { x: TensorInfo };
  const { numOrSizeSplits, axis } = args.attrs as { numOrSizeSplits: number | number[]; axis: number };
  const xv = f32(backend, x);
  if (!xv) return cpuKernel('SplitV')(args);
  const ax = tf.util.parseAxisParam(axis, x.shape)[0];
  const sizes = tf.backend_util.prepareSplitSize(x as tf.Tensor, numOrSizeSplits, ax);
  const begin = zerosOf(x.shape.length);
  return sizes.map((n) => {
    const sz = [...x.shape];
    sz[ax] = n;
    const b = [...begin];
    begin[ax] += n;
    return tf.slice_util.isSliceContinous(x.shape, b, sz)
      ? (cpuKernel('Slice')({ inputs: { x }, backend, attrs: { begin: b, size: sz } }) as TensorInfo)
      : sliceNative(backend, x, xv, b, sz);
  });
};

const concatKernel: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const inputs = args.inputs as unknown as TensorInfo[];
  const { axis } = args.attrs as { axis: number };
  const vals = inputs.map((t) => f32(backend, t));
  if (inputs.length < 2 || vals.some((v) => !v)) return cpuKernel('Concat')(args);
  const ax = tf.util.parseAxisParam(axis, inputs[0].shape)[0];
  tf.backend_util.assertParamsConsistent(inputs.map((t) => t.shape), ax);
  const outShape = tf.backend_util.computeOutShape(inputs.map((t) => t.shape), ax);
  const out = outBuf(size(outShape));
  const at = zerosOf(outShape.length);
  inputs.forEach((t, i) => {
    if (vals[i]!.length > 0) addon!.copyBox(vals[i]!, t.shape, zerosOf(t.shape.length), out, outShape, at, t.shape);
    at[ax] += t.shape[ax];
  });
  return backend.makeTensorInfo(outShape, 'float32', out);
};

const padKernel: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { x } = args.inputs as { x: TensorInfo };
  const { paddings, constantValue } = args.attrs as { paddings: Array<[number, number]>; constantValue: number };
  const xv = f32(backend, x);
  if (!xv || paddings.some(([a, b]) => a < 0 || b < 0)) return cpuKernel('PadV2')(args);
  const outShape = paddings.map(([a, b], i) => a + x.shape[i] + b);
  const out = new Float32Array(size(outShape));
  if (constantValue !== 0) out.fill(constantValue);
  if (xv.length > 0) addon!.copyBox(xv, x.shape, zerosOf(x.shape.length), out, outShape, paddings.map(([a]) => a), x.shape);
  return backend.makeTensorInfo(outShape, 'float32', out);
};

const tileKernel: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { x } = args.inputs as { x: TensorInfo };
  const { reps } = args.attrs as { reps: number[] };
  const xv = f32(backend, x);
  if (!xv || reps.length !== x.shape.length) return cpuKernel('Tile')(args);
  const outShape = x.shape.map((d, i) => d * reps[i]);
  const out = outBuf(size(outShape));
  if (out.length > 0) addon!.tile(xv, x.shape, reps, out);
  return backend.makeTensorInfo(outShape, 'float32', out);
};

const resizeNearestKernel: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { images } = args.inputs as { images: TensorInfo };
  const { alignCorners, halfPixelCenters, size: newSize } = args.attrs as { alignCorners: boolean; halfPixelCenters: boolean; size: [number, number] };
  const xv = f32(backend, images);
  if (!xv || images.shape.length !== 4) return cpuKernel('ResizeNearestNeighbor')(args);
  const [B, H, W, C] = images.shape;
  const [OH, OW] = newSize;
  const out = outBuf(B * OH * OW * C);
  if (out.length > 0) {
    addon!.gatherHW(xv, [B, H, W, C, OH, OW], nearestSources(H, OH, alignCorners, halfPixelCenters), nearestSources(W, OW, alignCorners, halfPixelCenters), out);
  }
  return backend.makeTensorInfo([B, OH, OW, C], 'float32', out);
};

/**
 * The gradient of resizeNearestNeighbor: each dy pixel added to the input pixel it was copied
 * from, by the forward's own mapping. (tfjs's cpu kernel differs where it is wrong: it reads dy
 * at the input's batch stride, so batch items after the first get another item's gradient, and
 * it ignores halfPixelCenters. TensorFlow's kernel, like this one, is the true gradient.)
 */
const resizeNearestGradKernel: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { images, dy } = args.inputs as { images: TensorInfo; dy: TensorInfo };
  const { alignCorners, halfPixelCenters } = args.attrs as { alignCorners: boolean; halfPixelCenters?: boolean };
  const dyv = f32(backend, dy);
  if (!dyv || images.dtype !== 'float32' || images.shape.length !== 4 || dy.shape.length !== 4) return cpuKernel('ResizeNearestNeighborGrad')(args);
  const [B, H, W, C] = images.shape;
  const [, OH, OW] = dy.shape;
  const dx = outBuf(B * H * W * C);
  if (dx.length > 0) {
    const hp = halfPixelCenters ?? false;
    addon!.scatterAddHW(dyv, [B, H, W, C, OH, OW], nearestSources(H, OH, alignCorners, hp), nearestSources(W, OW, alignCorners, hp), dx);
  }
  return backend.makeTensorInfo(images.shape, 'float32', dx);
};

// ---------------------------------------------------------------------------------------------
// Fused kernels: the ops of src/ops (groupNorm / layerNorm, silu, gelu, fusedAdamW) run these
// when 'native' is the active backend; their gradients are registered there.

const groupNormKernel: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { x, gamma, beta } = args.inputs as { x: TensorInfo; gamma?: TensorInfo; beta?: TensorInfo };
  const { groups, eps, act, batchDims } = args.attrs as unknown as GroupNormAttrs;
  const dims = normDims(x.shape, batchDims, groups);
  const y = outBuf(size(x.shape)), mean = outBuf(dims[0] * groups), rstd = outBuf(dims[0] * groups);
  addon!.groupNorm(f32(backend, x)!, dims, gamma ? f32(backend, gamma) : null, beta ? f32(backend, beta) : null, eps, act, y, mean, rstd);
  return [backend.makeTensorInfo(x.shape, 'float32', y), backend.makeTensorInfo([dims[0], groups], 'float32', mean),
    backend.makeTensorInfo([dims[0], groups], 'float32', rstd)];
};

const groupNormGradKernel: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { dy, x, gamma, beta, mean, rstd } = args.inputs as Record<string, TensorInfo | undefined>;
  const { groups, act, batchDims } = args.attrs as unknown as GroupNormAttrs;
  const dims = normDims(x!.shape, batchDims, groups);
  const C = dims[2];
  const dx = outBuf(size(x!.shape)), dg = outBuf(C), db = outBuf(C);
  addon!.groupNormGrad(f32(backend, dy)!, f32(backend, x)!, dims, gamma ? f32(backend, gamma) : null, beta ? f32(backend, beta) : null,
    f32(backend, mean)!, f32(backend, rstd)!, act, dx, dg, db);
  return [backend.makeTensorInfo(x!.shape, 'float32', dx), backend.makeTensorInfo([C], 'float32', dg), backend.makeTensorInfo([C], 'float32', db)];
};

const attentionKernel: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { q, k, v } = args.inputs as { q: TensorInfo; k: TensorInfo; v: TensorInfo };
  const { heads, scale } = args.attrs as unknown as AttentionAttrs;
  const [B, Lq, qc] = q.shape, [, Lk] = k.shape, vc = v.shape[2];
  if (q.shape.length !== 3 || k.shape.length !== 3 || v.shape.length !== 3 || k.shape[0] !== B || v.shape[0] !== B || v.shape[1] !== Lk ||
    k.shape[2] !== qc || qc % heads !== 0 || vc % heads !== 0) {
    throw new Error(`${ATTENTION}: expected q [B, Lq, H·D], k [B, Lk, H·D], v [B, Lk, H·Dv] with H = ${heads}, got ${JSON.stringify([q.shape, k.shape, v.shape])}`);
  }
  const out = outBuf(B * Lq * vc);
  addon!.attention(f32(backend, q)!, f32(backend, k)!, f32(backend, v)!, [B, Lq, Lk, heads, qc / heads, vc / heads], scale, out);
  return backend.makeTensorInfo([B, Lq, vc], 'float32', out);
};

const activationKernel: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { x } = args.inputs as { x: TensorInfo };
  const y = outBuf(size(x.shape));
  addon!.activation((args.attrs as unknown as ActivationAttrs).op, f32(backend, x)!, y);
  return backend.makeTensorInfo(x.shape, 'float32', y);
};

const activationGradKernel: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { dy, x } = args.inputs as { dy: TensorInfo; x: TensorInfo };
  const dx = outBuf(size(x.shape));
  addon!.activationGrad((args.attrs as unknown as ActivationAttrs).op, f32(backend, dy)!, f32(backend, x)!, dx);
  return backend.makeTensorInfo(x.shape, 'float32', dx);
};

const adamwKernel: KernelFunc = (args) => {
  const backend = args.backend as NativeBackend;
  const { p, g, m, v } = args.inputs as Record<string, TensorInfo>;
  const h = args.attrs as unknown as AdamWStep;
  const n = size(p.shape);
  const pOut = outBuf(n), mOut = outBuf(n), vOut = outBuf(n);
  // Float32Array rounds each value as tfjs does when it makes a scalar tensor of it.
  const hyper = Float32Array.of(h.beta1, 1 - h.beta1, h.beta2, 1 - h.beta2, h.decay ?? 1, h.bc2Sqrt, h.eps, h.stepSize);
  addon!.adamw(f32(backend, p)!, f32(backend, g)!, f32(backend, m)!, f32(backend, v)!, pOut, mOut, vOut, hyper, h.decay !== null);
  return [backend.makeTensorInfo(p.shape, 'float32', pOut), backend.makeTensorInfo(p.shape, 'float32', mOut),
    backend.makeTensorInfo(p.shape, 'float32', vOut)];
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
    Slice: sliceKernel,
    SplitV: splitVKernel,
    Concat: concatKernel,
    PadV2: padKernel,
    Tile: tileKernel,
    ResizeNearestNeighbor: resizeNearestKernel,
    ResizeNearestNeighborGrad: resizeNearestGradKernel,
    [GROUP_NORM]: groupNormKernel,
    [GROUP_NORM_GRAD]: groupNormGradKernel,
    [ACTIVATION]: activationKernel,
    [ACTIVATION_GRAD]: activationGradKernel,
    [ADAMW]: adamwKernel,
    [ATTENTION]: attentionKernel,
    [UPSAMPLE_CONV]: upsampleConvKernel,
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
  // Every kernel but the half-aware ones sees half-precision weights as float32 (unpackingHalves).
  const wrap = (name: string, kf: KernelFunc) => (HALF_AWARE.has(name) ? kf : unpackingHalves(kf));
  for (const [kernelName, kernelFunc] of Object.entries(own)) {
    tf.registerKernel({ kernelName, backendName: NATIVE_BACKEND_NAME, kernelFunc: wrap(kernelName, kernelFunc) });
  }
  for (const config of tf.getKernelsForBackend('cpu')) {
    if (!(config.kernelName in own)) tf.registerKernel({ ...config, backendName: NATIVE_BACKEND_NAME, kernelFunc: wrap(config.kernelName, config.kernelFunc) });
  }
  registered = true;
  return true;
}

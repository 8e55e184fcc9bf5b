/**
 * The WebGPU backend in Node: tfjs's webgpu backend (@tensorflow/tfjs-backend-webgpu) running on
 * Dawn, Chrome's WebGPU implementation, through its Node binding (the npm package `webgpu`, which
 * ships dawn.node for linux/macOS/Windows inside the tarball). Both are optional dependencies:
 * `npm install` brings them where they install, and this module loads them only when asked.
 *
 * Dawn talks to the GPU through Vulkan on Linux (the driver's ICD: NVIDIA's driver install has
 * one, Mesa has AMD/Intel ones and `lavapipe`, a software rasteriser that runs on the CPU), Metal
 * on macOS and D3D12 on Windows. No CUDA toolkit is involved.
 *
 *   const p = await probeWebgpu();        // { available, hardware, adapter, detail, limits }
 *   await tf.setBackend('webgpu');        // after a successful probe
 *
 * Two things the browser has and Node does not, supplied here:
 *   - `navigator.gpu` (and the GPU* constants), set from Dawn before tfjs's backend is imported.
 *   - Synchronous reads. tfjs's webgpu backend implements tensor.dataSync() with OffscreenCanvas,
 *     which Node lacks; here it copies the tensor to a mappable buffer and turns Node's event loop
 *     (the native addon's pumpEventLoop) until Dawn has mapped it. So sdlab's code, which reads
 *     losses and small tensors synchronously, runs unchanged; timers due meanwhile run as well.
 */
import * as tf from '@tensorflow/tfjs';
import { existsSync, readdirSync } from 'node:fs';
import { loadNativeAddon } from './native.ts';

export interface WebgpuProbe {
  available: boolean;
  /** A real GPU (not a software adapter such as lavapipe/llvmpipe or SwiftShader). */
  hardware: boolean;
  /** The adapter in words: vendor, architecture/device, description. */
  adapter: string;
  detail: string;
  /** The limits that bite for large models (bytes). */
  limits?: { maxStorageBufferBindingSize: number; maxBufferSize: number };
}

/** The subset of Dawn's GPUAdapter that the probe reads. */
export interface AdapterLike {
  info?: { vendor?: string; architecture?: string; device?: string; description?: string; isFallbackAdapter?: boolean };
  isFallbackAdapter?: boolean;
  limits: { maxStorageBufferBindingSize: number; maxBufferSize: number };
}

interface GpuLike {
  requestAdapter(opts?: { powerPreference?: string }): Promise<AdapterLike | null>;
}

/**
 * Whether this machine may have a GPU that Dawn can use, without loading Dawn: on Linux a DRM
 * render node or NVIDIA's device nodes; elsewhere (Metal, D3D12) assume yes. `auto` probes
 * WebGPU only then, so CPU-only machines do not pay for loading Dawn on every command.
 */
export function gpuDeviceNodes(): boolean {
  if (process.platform !== 'linux') return true;
  try {
    if (existsSync('/dev/dri') && readdirSync('/dev/dri').some((f) => f.startsWith('renderD'))) return true;
    return existsSync('/dev/nvidiactl');
  } catch {
    return false;
  }
}

/** Software adapters run WebGPU on the CPU: correct but ~100× slower than sdlab's native backend. */
export function isSoftwareAdapter(a: AdapterLike): boolean {
  const info = a.info ?? {};
  if (a.isFallbackAdapter || info.isFallbackAdapter || info.architecture === 'software') return true;
  return /llvmpipe|lavapipe|swiftshader|software/i.test(`${info.device ?? ''} ${info.description ?? ''}`);
}

function describeAdapter(a: AdapterLike): string {
  const i = a.info ?? {};
  return [i.vendor, i.architecture || i.device, i.description].filter((s) => s).join(', ') || 'unnamed adapter';
}

let probe: Promise<WebgpuProbe> | null = null;

/** Loads Dawn and tfjs's webgpu backend (once) and asks for an adapter; never throws. */
export function probeWebgpu(): Promise<WebgpuProbe> {
  probe ??= load();
  return probe;
}

async function load(): Promise<WebgpuProbe> {
  const none = (detail: string): WebgpuProbe => ({ available: false, hardware: false, adapter: 'none', detail });
  let dawn: { create(flags: string[]): GpuLike; globals: Record<string, unknown> };
  try {
    dawn = (await import('webgpu')) as unknown as typeof dawn;
  } catch (err) {
    const msg = (err as Error).message.split('\n')[0];
    return none(/Cannot find (module|package)/.test(msg) ? 'the optional package webgpu (Dawn for Node) is not installed (npm install webgpu)' : `Dawn (the webgpu package) failed to load: ${msg}`);
  }
  let gpu: GpuLike;
  try {
    // The WebGPU globals (GPUBufferUsage, …) and navigator.gpu, as a browser has them; Node ≥ 21
    // has a navigator object of its own, so gpu is added to it rather than replacing it.
    for (const [k, v] of Object.entries(dawn.globals)) if (!(k in globalThis)) Object.defineProperty(globalThis, k, { value: v, configurable: true, writable: true });
    gpu = dawn.create([]);
    const g = globalThis as { navigator?: object };
    if (g.navigator) Object.defineProperty(g.navigator, 'gpu', { value: gpu, configurable: true });
    else Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
  } catch (err) {
    return none(`Dawn failed to start: ${(err as Error).message.split('\n')[0]}`);
  }
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' }).catch(() => null);
  if (!adapter) {
    return none(process.platform === 'linux'
      ? 'Dawn found no WebGPU adapter: it needs the Vulkan loader (libvulkan1) and a Vulkan driver (the NVIDIA driver, or Mesa\'s mesa-vulkan-drivers ≥ 23 for AMD/Intel and the lavapipe software adapter)'
      : 'Dawn found no WebGPU adapter');
  }
  try {
    const mod = (await import('@tensorflow/tfjs-backend-webgpu')) as unknown as { WebGPUBackend?: { prototype: WebgpuBackendInternals } };
    if (mod.WebGPUBackend) installSyncRead(mod.WebGPUBackend.prototype);
    splitAddN();
  } catch (err) {
    const msg = (err as Error).message.split('\n')[0];
    return none(/Cannot find (module|package)/.test(msg) ? 'the optional package @tensorflow/tfjs-backend-webgpu is not installed' : `@tensorflow/tfjs-backend-webgpu failed to load: ${msg}`);
  }
  const hardware = !isSoftwareAdapter(adapter);
  const name = describeAdapter(adapter);
  const limits = { maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize, maxBufferSize: adapter.limits.maxBufferSize };
  const mib = (n: number) => `${Math.round(n / 2 ** 20)} MiB`;
  return {
    available: true, hardware, adapter: name, limits,
    detail: `Dawn ${hardware ? 'GPU' : 'software adapter (runs on the CPU, slowly)'}: ${name}; largest storage binding ${mib(limits.maxStorageBufferBindingSize)}`,
  };
}

// ---------------------------------------------------------------------------------------------
// AddN with many inputs

/**
 * tfjs's webgpu AddN binds every input at once, and adapters allow as few as 8 storage buffers
 * per kernel: the sum of a UNet's ~100 per-parameter squared-gradient norms (train/optimizer.ts
 * clipGradNorm) was rejected by the GPU. This AddN sums groups that fit, then the group sums.
 */
function splitAddN(): void {
  const original = tf.getKernel('AddN', 'webgpu');
  if (!original || (original as { [patched]?: boolean })[patched]) return;
  const kernelFunc: tf.KernelFunc = (args) => {
    const backend = args.backend as unknown as { device: { limits: { maxStorageBuffersPerShaderStage: number } }; disposeData(id: object): void };
    const fit = Math.max(2, backend.device.limits.maxStorageBuffersPerShaderStage - 1); // one binding is the output
    const inputs = args.inputs as unknown as tf.TensorInfo[];
    const free = (ts: tf.TensorInfo[], keep: tf.TensorInfo[] = []) => {
      for (const t of ts) if (!inputs.includes(t) && !keep.includes(t)) backend.disposeData(t.dataId);
    };
    let level = inputs;
    while (level.length > fit) {
      const next: tf.TensorInfo[] = [];
      for (let i = 0; i < level.length; i += fit) {
        const group = level.slice(i, i + fit);
        next.push(group.length === 1 ? group[0] : (original.kernelFunc({ ...args, inputs: group as unknown as tf.NamedTensorInfoMap }) as tf.TensorInfo));
      }
      free(level, next); // intermediate sums (never the caller's inputs) are freed once summed
      level = next;
    }
    const out = original.kernelFunc({ ...args, inputs: level as unknown as tf.NamedTensorInfoMap }) as tf.TensorInfo;
    free(level);
    return out;
  };
  tf.unregisterKernel('AddN', 'webgpu');
  tf.registerKernel({ kernelName: 'AddN', backendName: 'webgpu', kernelFunc });
  (tf.getKernel('AddN', 'webgpu') as { [patched]?: boolean })[patched] = true;
}

// ---------------------------------------------------------------------------------------------
// Synchronous reads

/** What the read below uses of tfjs-backend-webgpu's WebGPUBackend (4.22). */
interface WebgpuBackendInternals {
  readSync(dataId: object): tf.BackendValues;
  read(dataId: object): Promise<tf.BackendValues>;
  tensorMap: { get(dataId: object): { values: tf.BackendValues | null; dtype: tf.DataType; resource: unknown } };
  device: { createBuffer(d: { size: number; usage: number }): MappableBuffer };
  bufferManager: { acquireBuffer(size: number, usage: number): MappableBuffer; releaseBuffer(b: MappableBuffer): void };
  commandEncoder: { copyBufferToBuffer(src: unknown, so: number, dst: unknown, doff: number, size: number): void };
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
  convertAndCacheOnCPU(dataId: object, data: tf.BackendValues): tf.BackendValues;
}

interface MappableBuffer {
  size: number;
  mapState: 'unmapped' | 'pending' | 'mapped';
  mapAsync(mode: number): Promise<void>;
  getMappedRange(): ArrayBuffer;
  unmap(): void;
}

const patched = Symbol.for('sdlab.webgpu.syncRead');
const watched = Symbol.for('sdlab.webgpu.watched');

/**
 * WebGPU reports a failed dispatch (an over-large binding, an out-of-memory buffer) as an
 * "uncaptured error" event, long after the op returned, and tfjs only logs it: the results are
 * garbage. The first such error is kept here and thrown by the next read of any tensor, so a
 * run stops instead of carrying on with wrong numbers.
 */
let deviceError: string | null = null;

function throwDeviceError(): void {
  if (deviceError === null) return;
  const msg = deviceError;
  deviceError = null;
  throw new Error(`webgpu backend: the GPU rejected a kernel (${msg}); the results since are invalid. ` +
    'A tensor larger than the adapter\'s maxStorageBufferBindingSize (sdlab doctor prints it) is the usual cause.');
}

/**
 * Listens for the device's uncaptured errors (see above) on the webgpu backend `backend`
 * (tf.backend() after setBackend) and returns its largest storage binding in bytes.
 */
export function watchDeviceErrors(backend: unknown): number {
  const b = backend as { device?: { limits: { maxStorageBufferBindingSize: number }; addEventListener?(t: string, f: (e: { error?: { message?: string } }) => void): void }; [watched]?: boolean };
  if (b.device && !Object.prototype.hasOwnProperty.call(b, watched)) {
    b[watched] = true;
    b.device.addEventListener?.('uncapturederror', (e) => {
      const msg = (e.error?.message ?? 'unknown error').split('\n')[0];
      // Objects made from an invalid one report again ("… is invalid due to a previous error"):
      // the cause was reported first.
      if (!/invalid due to a previous error/.test(msg)) deviceError ??= msg;
    });
  }
  return b.device?.limits.maxStorageBufferBindingSize ?? Number.POSITIVE_INFINITY;
}

/** How long a synchronous read waits for the GPU before it gives up (a hung device). */
export const webgpuSettings = { readTimeoutMs: 30 * 60_000 };

function installSyncRead(proto: WebgpuBackendInternals): void {
  const p = proto as WebgpuBackendInternals & { [patched]?: boolean };
  if (p[patched]) return;
  p[patched] = true;
  const original = proto.readSync;
  const originalRead = proto.read;
  proto.read = async function read(this: WebgpuBackendInternals, dataId: object): Promise<tf.BackendValues> {
    const values = await originalRead.call(this, dataId);
    throwDeviceError();
    return values;
  };
  proto.readSync = function readSync(this: WebgpuBackendInternals, dataId: object): tf.BackendValues {
    throwDeviceError();
    const data = this.tensorMap.get(dataId);
    // Values still on the CPU (not yet uploaded, or read before), strings and complex tensors:
    // tfjs's own path handles them without a canvas.
    if (data.values != null || data.dtype === 'string' || data.dtype === 'complex64') return original.call(this, dataId);
    const pump = loadNativeAddon()?.pumpEventLoop;
    if (typeof pump !== 'function') {
      throw new Error('webgpu backend: reading a GPU tensor synchronously (dataSync/arraySync) needs sdlab\'s native addon in Node ' +
        '(npm run build:native); use await tensor.data() instead.');
    }
    // As the backend's async read does: copy into a mappable staging buffer, then map it.
    const src = data.resource as MappableBuffer;
    const usage = (globalThis as unknown as { GPUBufferUsage: Record<string, number> }).GPUBufferUsage;
    const staging = this.bufferManager.acquireBuffer(src.size, usage.COPY_DST | usage.MAP_READ);
    this.ensureCommandEncoderReady();
    this.endComputePassEncoder();
    this.commandEncoder.copyBufferToBuffer(src, 0, staging, 0, src.size);
    this.submitQueue();
    // (its rejection is seen below as mapState falling back to 'unmapped'; the handler itself
    // cannot run before this function returns)
    staging.mapAsync((globalThis as unknown as { GPUMapMode: { READ: number } }).GPUMapMode.READ).catch(() => {});
    const deadline = Date.now() + webgpuSettings.readTimeoutMs;
    // Dawn completes the map from the event loop: turn it until the buffer is mapped (or the map
    // failed: it falls back to 'unmapped', e.g. on a lost device).
    while (staging.mapState === 'pending') {
      if (Date.now() > deadline) throw new Error(`webgpu backend: the GPU did not return a tensor within ${webgpuSettings.readTimeoutMs / 1000} s`);
      pump.call(null);
    }
    if (staging.mapState !== 'mapped') throw new Error('webgpu backend: reading a tensor back failed (device lost?)');
    const bytes = staging.getMappedRange().slice(0);
    staging.unmap();
    this.bufferManager.releaseBuffer(staging);
    throwDeviceError();
    return this.convertAndCacheOnCPU(dataId, tf.util.convertBackendValuesAndArrayBuffer(bytes, data.dtype));
  };
}

/** Waits until the GPU has finished every kernel queued so far (timing; tfjs submits lazily). */
export async function webgpuIdle(): Promise<void> {
  const b = tf.backend() as unknown as { ensureCommandEncoderReady?(): void; endComputePassEncoder?(): void; submitQueue?(): void; device?: { queue: { onSubmittedWorkDone(): Promise<void> } } };
  // as tfjs's own read does: close the open compute pass, submit what was recorded
  b.ensureCommandEncoderReady?.();
  b.endComputePassEncoder?.();
  b.submitQueue?.();
  await b.device?.queue.onSubmittedWorkDone();
}

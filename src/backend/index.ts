/**
 * Backend selection. `--backend auto|cuda|webgpu|tensorflow|native|cpu` (or SDLAB_BACKEND).
 * auto prefers tfjs-node-gpu with a visible GPU, then WebGPU on a hardware adapter (Dawn,
 * webgpu.ts), then tfjs-node, then sdlab's native backend, then the pure-JS cpu backend, and
 * says which it chose and why. `--backend webgpu` also takes a software adapter (lavapipe), which
 * is how CI checks the GPU path on a CPU-only machine.
 *
 *   const sel = await selectBackend(opts.backend);   // { name, reason }
 */
import * as tf from '@tensorflow/tfjs';
import { existsSync, readdirSync } from 'node:fs';
import { UsageError } from '../util/errors.ts';
import { loadNativeAddon, nativeLoadError, registerNativeBackend } from './native.ts';
import { gpuDeviceNodes, probeWebgpu, watchDeviceErrors } from './webgpu.ts';
import { deviceLimits } from '../util/device_limits.ts';
import { describeLibraries, missingCudaLibraries } from './cuda.ts';

export const BACKEND_CHOICES = ['auto', 'cuda', 'webgpu', 'tensorflow', 'native', 'cpu'] as const;
export type BackendChoice = (typeof BACKEND_CHOICES)[number];
/** The --backend option's help text (every command's). */
export const BACKEND_HELP = `backend: ${BACKEND_CHOICES.join('|')}`;

export interface BackendSelection {
  name: string;
  reason: string;
}

/** What each backend needs, and whether it is here: used by selectBackend and `sdlab doctor`. */
export interface BackendProbe {
  choice: Exclude<BackendChoice, 'auto'>;
  tfName: string;
  available: boolean;
  detail: string;
  /** webgpu: whether the adapter is a real GPU (auto takes only those). */
  hardware?: boolean;
}

/** A visible NVIDIA GPU (driver device nodes), without loading CUDA. */
function gpuVisible(): boolean {
  if (process.env.CUDA_VISIBLE_DEVICES === '' || process.env.CUDA_VISIBLE_DEVICES === '-1') return false;
  try {
    return existsSync('/dev/nvidiactl') && readdirSync('/dev').some((f) => /^nvidia\d+$/.test(f));
  } catch {
    return false;
  }
}

// The tfjs-node packages are optional peers (not installable everywhere): import them only when
// asked, since importing one registers its backend and loads libtensorflow.
async function tryImport(pkg: string): Promise<string | null> {
  try {
    await import(pkg);
    return null;
  } catch (err) {
    const msg = (err as Error).message.split('\n')[0];
    return /Cannot find (module|package)/.test(msg) ? `${pkg} is not installed (npm install ${pkg})` : `${pkg} failed to load: ${msg}`;
  }
}

const probed = new Map<string, BackendProbe>();

export async function probeBackend(choice: Exclude<BackendChoice, 'auto'>): Promise<BackendProbe> {
  const cached = probed.get(choice);
  if (cached) return cached;
  let p: BackendProbe;
  if (choice === 'cuda') {
    if (!gpuVisible()) {
      p = { choice, tfName: 'tensorflow', available: false, detail: 'no NVIDIA GPU visible (/dev/nvidia*)' };
    } else {
      const err = await tryImport('@tensorflow/tfjs-node-gpu');
      const missing = err ? missingCudaLibraries() : [];
      const libs = missing.length ? `; the CUDA 11.2 libraries it links are missing: ${describeLibraries(missing)} (README, "GPU")` : '';
      p = { choice, tfName: 'tensorflow', available: !err, detail: err ? err + libs : '@tensorflow/tfjs-node-gpu with a visible GPU' };
    }
  } else if (choice === 'webgpu') {
    const w = await probeWebgpu();
    p = { choice, tfName: 'webgpu', available: w.available, hardware: w.hardware, detail: w.detail };
  } else if (choice === 'tensorflow') {
    const err = await tryImport('@tensorflow/tfjs-node');
    p = { choice, tfName: 'tensorflow', available: !err, detail: err ?? '@tensorflow/tfjs-node (libtensorflow on the CPU)' };
  } else if (choice === 'native') {
    const ok = registerNativeBackend();
    const addon = loadNativeAddon();
    p = {
      choice, tfName: 'native', available: ok,
      detail: ok && addon ? `sdlab native addon (${addon.isa()}, ${addon.threads()} threads)` : nativeLoadError(),
    };
  } else {
    p = { choice, tfName: 'cpu', available: true, detail: "tfjs's pure-JS cpu backend (slow)" };
  }
  probed.set(choice, p);
  return p;
}

let warnedFallback = false;

export async function selectBackend(choice: string = process.env.SDLAB_BACKEND ?? 'auto'): Promise<BackendSelection> {
  if (!(BACKEND_CHOICES as readonly string[]).includes(choice)) {
    throw new UsageError(`--backend / SDLAB_BACKEND: expected one of ${BACKEND_CHOICES.join(', ')}, got "${choice}".`);
  }
  let chosen: BackendProbe;
  let reason: string;
  if (choice !== 'auto') {
    chosen = await probeBackend(choice as BackendProbe['choice']);
    if (!chosen.available) throw new UsageError(`--backend ${choice}: not available: ${chosen.detail}.`);
    reason = 'requested';
  } else {
    const skipped: string[] = [];
    chosen = await probeBackend('cpu');
    reason = '';
    for (const c of ['cuda', 'webgpu', 'tensorflow', 'native'] as const) {
      // Loading Dawn costs ~0.3 s: only where a GPU device could be there.
      if (c === 'webgpu' && !gpuDeviceNodes()) {
        skipped.push('webgpu: no GPU device nodes (/dev/dri/renderD*, /dev/nvidia*)');
        continue;
      }
      const p = await probeBackend(c);
      if (c === 'webgpu' && p.available && !p.hardware) {
        skipped.push(`webgpu: ${p.detail} (--backend webgpu to use it anyway)`);
        continue;
      }
      if (p.available) {
        chosen = p;
        break;
      }
      skipped.push(`${c}: ${p.detail}`);
    }
    reason = skipped.length ? `auto; ${skipped.join('; ')}` : 'auto; fastest available';
    if (chosen.choice === 'cpu' && !warnedFallback) {
      warnedFallback = true;
      console.warn(`sdlab: warning: using the slow pure-JS 'cpu' backend (${nativeLoadError() || 'native backend unavailable'}).`);
    }
  }
  await tf.setBackend(chosen.tfName);
  await tf.ready();
  // What one kernel may bind (util/device_limits.ts): WebGPU's storage-binding limit, else none.
  deviceLimits.maxBindingBytes = Number.POSITIVE_INFINITY;
  if (chosen.choice === 'webgpu') deviceLimits.maxBindingBytes = watchDeviceErrors(tf.backend());
  // The cpu backend (and native, which extends it) greets Node users with an "install
  // tfjs-node" banner on its first write; sdlab already said which backend it chose and why.
  const b = tf.backend() as unknown as { firstUse?: boolean };
  if (b.firstUse === true) b.firstUse = false;
  return { name: chosen.choice === 'cuda' ? 'cuda (tensorflow)' : chosen.tfName, reason };
}

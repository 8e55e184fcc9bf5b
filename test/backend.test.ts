/**
 * Backend selection (`--backend`, SDLAB_BACKEND), `sdlab doctor`, the fallback to `cpu` when the
 * addon is missing, and that the native kernels really run (not the inherited JS ones).
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { selectBackend, probeBackend } from '../src/backend/index.ts';
import { loadNativeAddon } from '../src/backend/native.ts';
import { UsageError } from '../src/util/errors.ts';
import { CUDA11_LIBRARIES, missingCudaLibraries } from '../src/backend/cuda.ts';
import { isSoftwareAdapter } from '../src/backend/webgpu.ts';
import fs from 'node:fs';
import os from 'node:os';

const root = path.resolve(__dirname, '..');
const sdlab = (args: string[], env: Record<string, string> = {}) =>
  spawnSync(process.execPath, [path.join(root, 'bin/sdlab.mjs'), ...args], { cwd: root, encoding: 'utf8', env: { ...process.env, ...env } });

describe('backend selection', () => {
  it('rejects an unknown choice with a UsageError naming the flag', async () => {
    await expect(selectBackend('gpu')).rejects.toThrow(UsageError);
    await expect(selectBackend('gpu')).rejects.toThrow(/--backend/);
  });

  it('native and cpu can be requested; auto picks native here (tfjs-node is not installed)', async () => {
    expect(await selectBackend('cpu')).toEqual({ name: 'cpu', reason: 'requested' });
    expect(tf.getBackend()).toBe('cpu');
    expect((await selectBackend('native')).name).toBe('native');
    expect(tf.getBackend()).toBe('native');
    const tensorflow = await probeBackend('tensorflow');
    if (!tensorflow.available) {
      const sel = await selectBackend('auto');
      expect(sel.name).toBe('native');
      expect(sel.reason).toMatch(/tensorflow: .*tfjs-node/);
      await expect(selectBackend('tensorflow')).rejects.toThrow(/--backend tensorflow: not available/);
    }
  });

  it('the native kernels do the work (the addon is called), not the copied cpu kernels', async () => {
    await selectBackend('native');
    const addon = loadNativeAddon()!;
    const calls: string[] = [];
    const orig = { conv2d: addon.conv2d, matmul: addon.matmul, binary: addon.binary };
    addon.conv2d = (...a) => { calls.push('conv2d'); return orig.conv2d(...a); };
    addon.matmul = (...a) => { calls.push('matmul'); return orig.matmul(...a); };
    addon.binary = (...a) => { calls.push('binary'); return orig.binary(...a); };
    try {
      tf.tidy(() => {
        tf.conv2d(tf.ones([1, 5, 5, 2]) as tf.Tensor4D, tf.ones([3, 3, 2, 8]) as tf.Tensor4D, 1, 'same').dataSync();
        tf.matMul(tf.ones([4, 3]), tf.ones([3, 5])).dataSync();
        tf.add(tf.ones([4, 3]), tf.ones([3])).dataSync();
      });
    } finally {
      Object.assign(addon, orig);
    }
    expect(calls).toEqual(['conv2d', 'matmul', 'binary']);
  });
});

describe('sdlab doctor', () => {
  it('prints the backend, versions and threads', () => {
    const r = sdlab(['doctor'], { SDLAB_THREADS: '1' });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^backend: +native \(auto/m);
    expect(r.stdout).toMatch(/^tfjs: +4\.22\.0/m);
    expect(r.stdout).toMatch(/^threads: +1 native/m);
    expect(r.stdout).toMatch(/^tensorflow: +(missing|available)/m);
    expect(r.stdout).toMatch(/^webgpu: +(missing|available|software only): /m);
    expect(r.stdout).toMatch(/^cuda libs: /m);
  });

  it('an unavailable backend requested explicitly: one line, exit 2', () => {
    const r = sdlab(['doctor', '--backend', 'native'], { SDLAB_NATIVE_ADDON: '/nonexistent/sdlab_native.node' });
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/--backend native: not available/);
  });

  it('falls back to cpu with one warning when the addon cannot load', () => {
    const r = sdlab(['doctor'], { SDLAB_NATIVE_ADDON: '/nonexistent/sdlab_native.node' });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^backend: +cpu \(auto/m);
    const warnings = r.stderr.split('\n').filter((l) => l.includes('warning'));
    expect(warnings).toHaveLength(1);
  });
});

describe('GPU paths: what is there and what is missing', () => {
  it('the CUDA 11 libraries tfjs-node-gpu needs are looked up by soname on LD_LIBRARY_PATH (each missing one named)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-cuda-'));
    const saved = process.env.LD_LIBRARY_PATH;
    try {
      process.env.LD_LIBRARY_PATH = dir;
      const before = missingCudaLibraries().map((l) => l.soname);
      for (const name of ['libcudart.so.11.0', 'libcudnn.so.8', 'libcublas.so.12']) fs.writeFileSync(path.join(dir, name), '');
      const after = missingCudaLibraries().map((l) => l.soname);
      expect(before.filter((n) => !after.includes(n))).toEqual(['libcudart.so.11.0', 'libcudnn.so.8'].filter((n) => before.includes(n)));
      expect(after).not.toContain('libcudart.so.11.0');
      expect(after).not.toContain('libcudnn.so.8');
      // a CUDA 12 library does not stand in for the CUDA 11 one
      if (before.includes('libcublas.so.11')) expect(after).toContain('libcublas.so.11');
      expect(CUDA11_LIBRARIES.map((l) => l.soname)).toContain('libcublasLt.so.11');
    } finally {
      if (saved === undefined) delete process.env.LD_LIBRARY_PATH;
      else process.env.LD_LIBRARY_PATH = saved;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('software WebGPU adapters (lavapipe/llvmpipe, SwiftShader, fallback) are told apart from GPUs', () => {
    const limits = { maxStorageBufferBindingSize: 1, maxBufferSize: 1 };
    expect(isSoftwareAdapter({ info: { vendor: 'mesa', architecture: 'software', device: 'llvmpipe-llvm-15' }, limits })).toBe(true);
    expect(isSoftwareAdapter({ info: { vendor: 'google', device: 'SwiftShader Device (Subzero)' }, limits })).toBe(true);
    expect(isSoftwareAdapter({ isFallbackAdapter: true, info: {}, limits })).toBe(true);
    expect(isSoftwareAdapter({ info: { vendor: 'nvidia', architecture: 'hopper', description: 'NVIDIA H100 80GB HBM3' }, limits })).toBe(false);
    expect(isSoftwareAdapter({ info: { vendor: 'amd', architecture: 'rdna-3', device: '' }, limits })).toBe(false);
  });
});

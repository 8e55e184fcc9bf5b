/** `sdlab doctor`: which backend would run, versions, threads, and what the faster ones need. */
import type { Command } from 'commander';
import * as tf from '@tensorflow/tfjs';
import os from 'node:os';
import { probeBackend, selectBackend, BACKEND_HELP } from '../backend/index.ts';
import { loadNativeAddon, nativeAddonSource } from '../backend/native.ts';
import { describeLibraries, missingCudaLibraries } from '../backend/cuda.ts';

export function register(program: Command): void {
  program
    .command('doctor')
    .description('print the backend sdlab would use, versions, threads, and what is missing for faster backends')
    .option('--backend <name>', BACKEND_HELP, process.env.SDLAB_BACKEND ?? 'auto')
    .action(async (opts: { backend: string }) => {
      const sel = await selectBackend(opts.backend);
      const addon = loadNativeAddon();
      console.log(`backend:   ${sel.name} (${sel.reason})`);
      console.log(`tfjs:      ${tf.version.tfjs}`);
      console.log(`node:      ${process.version}`);
      console.log(`cpus:      ${os.availableParallelism?.() ?? os.cpus().length} (${os.cpus()[0]?.model ?? 'unknown'})`);
      console.log(`threads:   ${addon ? `${addon.threads()} native (SDLAB_THREADS to change)` : '1 (the cpu backend is single-threaded)'}`);
      const src = nativeAddonSource();
      // The kernel in use: avx512 / avx2+fma / neon / generic (the GEMM micro-kernel and the vector paths).
      console.log(`native:    ${addon && src ? `kernels ${addon.isa()}, ${src.prebuilt ? 'prebuilt' : 'compiled'} ${src.file}` : 'not available'}`);
      for (const c of ['cuda', 'webgpu', 'tensorflow', 'native'] as const) {
        const p = await probeBackend(c);
        const state = p.available ? (c === 'webgpu' && !p.hardware ? 'software only' : 'available') : 'missing';
        console.log(`${(c + ':').padEnd(10)} ${state}: ${p.detail}`);
      }
      // tfjs-node-gpu's libraries, whether or not a GPU is visible here (README, "GPU").
      const missing = missingCudaLibraries();
      console.log(`cuda libs: ${missing.length ? `missing ${describeLibraries(missing)}` : 'CUDA 11.2 runtime, cuBLAS, cuFFT, cuRAND, cuSOLVER, cuSPARSE and cuDNN 8 found'}`);
    });
}

/**
 * What `--backend cuda` (@tensorflow/tfjs-node-gpu 4.22, the last release) needs on the machine,
 * checked without loading it: that package links libtensorflow 2.9, built against CUDA 11.2 and
 * cuDNN 8.1, so it loads only where the CUDA 11 runtime libraries below can be found by the
 * dynamic linker — a CUDA 12 installation does not provide them (README, "GPU"). `sdlab doctor`
 * names each missing one.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';

/** The sonames libtensorflow 2.9 (GPU) opens, with what provides each. */
export const CUDA11_LIBRARIES: ReadonlyArray<{ soname: string; from: string }> = [
  { soname: 'libcuda.so.1', from: 'the NVIDIA driver' },
  { soname: 'libcudart.so.11.0', from: 'CUDA 11 runtime (nvidia-cuda-runtime-cu11)' },
  { soname: 'libcublas.so.11', from: 'cuBLAS 11 (nvidia-cublas-cu11)' },
  { soname: 'libcublasLt.so.11', from: 'cuBLAS 11 (nvidia-cublas-cu11)' },
  { soname: 'libcufft.so.10', from: 'cuFFT 10 (nvidia-cufft-cu11)' },
  { soname: 'libcurand.so.10', from: 'cuRAND 10 (nvidia-curand-cu11)' },
  { soname: 'libcusolver.so.11', from: 'cuSOLVER 11 (nvidia-cusolver-cu11)' },
  { soname: 'libcusparse.so.11', from: 'cuSPARSE 11 (nvidia-cusparse-cu11)' },
  { soname: 'libcudnn.so.8', from: 'cuDNN 8 (nvidia-cudnn-cu11 8.x)' },
];

/** Directories the dynamic linker searches: LD_LIBRARY_PATH, the ldconfig cache, CUDA's usual homes. */
function librarySearch(): (soname: string) => boolean {
  const dirs = (process.env.LD_LIBRARY_PATH ?? '').split(':').filter((d) => d);
  for (const d of ['/usr/local/cuda/lib64', '/usr/local/cuda-11.2/lib64', '/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64']) dirs.push(d);
  let cache = '';
  try {
    cache = execFileSync('/sbin/ldconfig', ['-p'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 });
  } catch {
    // no ldconfig (not glibc Linux): the directories alone
  }
  const listed = new Map<string, string[]>();
  const list = (d: string) => {
    if (!listed.has(d)) {
      try {
        listed.set(d, existsSync(d) ? readdirSync(d) : []);
      } catch {
        listed.set(d, []);
      }
    }
    return listed.get(d)!;
  };
  return (soname) => cache.includes(`${soname} `) || dirs.some((d) => list(path.resolve(d)).includes(soname));
}

/** `libcudart.so.11.0 (CUDA 11 runtime (…)), …`: libraries with what provides each, for messages. */
export function describeLibraries(libs: ReadonlyArray<{ soname: string; from: string }>): string {
  return libs.map((l) => `${l.soname} (${l.from})`).join(', ');
}

/** The CUDA 11 libraries tfjs-node-gpu would fail to open here (empty on Linux when all are found). */
export function missingCudaLibraries(): Array<{ soname: string; from: string }> {
  if (process.platform !== 'linux') return [...CUDA11_LIBRARIES];
  const found = librarySearch();
  return CUDA11_LIBRARIES.filter((l) => !found(l.soname));
}

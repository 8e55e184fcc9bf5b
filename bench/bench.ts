/**
 * `npm run bench`: tfjs `cpu` vs sdlab `native` (and PyTorch CPU when /usr/bin/python3 has torch)
 * on the same shapes and thread count. Every figure is the median of --runs interleaved runs
 * (after one warm-up run each): backends take turns within each round, so machine noise hits
 * all of them alike.
 *
 *   npm run bench                         # table
 *   npm run bench -- --json               # one JSON object per line: case, backend, medianMs, gflops, ...
 *   npm run bench -- --threads 1 --runs 7 --cases sgemm-1024,convnet-train-step
 *   npm run bench -- --cpu-slow           # also time the cpu backend on the training steps (slow)
 *   npm run bench -- --backends native,webgpu --cases unet-train-step,sd15-unet-step   # a WebGPU column
 *
 * Cases: fma-peak (one core's FMA peak, measured in the same run: the GEMM rows give their fraction of it),
 * GEMMs (1024³ and two Stable Diffusion shapes), the reference convnet training step, and
 * the model training steps of bench/cases.ts: vae-train-step (AutoencoderKL, MNIST preset, batch
 * 32 of 32×32×1, MSE + KL, Adam) and unet-train-step (UNet2DConditionModel, MNIST preset, batch
 * 64 of 8×8×4 latents, text context [64, 16, 128], ε-MSE, Adam), each also as *-unfused: the
 * same step with src/ops' GroupNorm / LayerNorm / SiLU / GELU as plain tfjs compositions instead
 * of one fused kernel each way (what the fused kernels save; on cpu both run the composition).
 * "cpu ms" is the process's CPU time per run (all threads): on a machine shared with other work
 * it is a steadier measure of the work done than the wall time.
 *
 * Stable Diffusion rows (issue 17; bench/sd.ts): sd15-text-encode, sd15-unet-step, sd15-vae-decode,
 * sd15-image (text encode + --sd-steps DDIM steps, default 20, + decode) and sdturbo-image, full
 * size with random weights, native only, each in a child process of its own (its peak RSS is
 * reported). They run only when named in --cases or with --sd; their GFLOP/s count the analytic
 * direct-convolution FLOPs of src/eval/flops.ts, and each gives its fraction of this run's FMA peak.
 *
 *   npm run bench -- --cases fma-peak,sd15-unet-step   # --sd-runs N, --no-warmup
 *   npm run bench -- --profile sd15-unet-step          # per-kernel profile of one UNet step
 *
 * WebGPU (--backends …,webgpu; src/backend/webgpu.ts): every case but fma-peak, the SD rows in
 * their child process too; each run waits for the GPU to finish. Its "threads" column is 1 and
 * its SD rows' fraction of the FMA peak compares a GPU with this CPU (read it as a ratio).
 *
 * Adding a case: push a BenchCase onto CASES with a `setup` that builds the tensors/model for the
 * current tfjs backend and returns one step as a function, and, for a PyTorch comparison, a
 * snippet in TORCH_SCRIPT's CASES.
 */
import * as tf from '@tensorflow/tfjs';
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { loadNativeAddon, nativeLoadError, nativeThreadCount, registerNativeBackend } from '../src/backend/native.ts';
import { selectBackend } from '../src/backend/index.ts';
import { probeWebgpu, webgpuIdle } from '../src/backend/webgpu.ts';
import { type TrainStep, convnetFlops, convnetTrainStep, unetTrainStep, useFusedOps, vaeTrainStep } from './cases.ts';
import { SD_CASE_NAMES, type SdCaseName, type SdChildResult } from './sd.ts';

interface BenchCase {
  name: string;
  /** FLOPs of one run (for GFLOP/s), 0 if not meaningful. */
  flops: number;
  /** Builds inputs on the current backend; returns one run (which must finish its work synchronously or by the returned promise), and the FLOPs of one run where only the setup knows them. */
  setup: () => { run: () => void | Promise<void>; dispose: () => void; flops?: number };
  /** Runs on the native backend only (no tfjs or torch counterpart). */
  nativeOnly?: boolean;
  /** The cpu backend is too slow for this case: run it once, and only with --cpu-slow. */
  cpuSlow?: boolean;
  /** Not implemented yet: listed as skipped. */
  pending?: string;
  /** Run before setup on every backend (e.g. useFusedOps); the case's runs follow before any other case's. */
  prepare?: () => void;
  /** A Stable Diffusion case of bench/sd.ts: runs on native in a child process of its own (peak RSS per case); only when named in --cases or with --sd. */
  sd?: SdCaseName;
}

const PYTHON = '/usr/bin/python3';
/** Pause after a multi-threaded torch run, so its BLAS threads stop spinning before the next backend runs. */
const TORCH_SETTLE_MS = 300;

// ---- cases ---------------------------------------------------------------------------------

function gemmCase(name: string, M: number, K: number, N: number): BenchCase {
  return {
    name,
    flops: 2 * M * N * K,
    setup: () => {
      const a = tf.randomUniform([M, K], -1, 1), b = tf.randomUniform([K, N], -1, 1);
      return {
        // The cpu and native backends run kernels synchronously: the product is complete when
        // matMul returns (as torch.mm's is). Not reading it back lets the backend reuse the
        // output buffer, as torch's allocator does; dataSync() would pin a fresh one every run.
        run: () => { tf.matMul(a, b).dispose(); },
        dispose: () => { a.dispose(); b.dispose(); },
      };
    },
  };
}

function convnetCase(batch: number): BenchCase {
  return { name: 'convnet-train-step', flops: convnetFlops(batch), cpuSlow: true, setup: () => convnetTrainStep(batch) };
}

/** A model training step from bench/cases.ts (the cpu backend takes seconds to minutes per step). */
function trainCase(name: string, make: () => TrainStep, fused: boolean): BenchCase {
  return { name, flops: 0, cpuSlow: true, prepare: () => useFusedOps(fused), setup: make };
}

/**
 * One core's peak: each native thread runs 12 independent FMA chains in the GEMM kernel's vector
 * width at once. The GEMM rows then say what fraction of this run's peak they reach (a VM's
 * clock moves with its neighbours' load, so a peak measured on another day says little).
 */
function fmaPeakCase(): BenchCase {
  const iters = 5_000_000;
  return {
    name: 'fma-peak', flops: 0, nativeOnly: true,
    setup: () => {
      const addon = loadNativeAddon()!;
      return { run: () => { addon.fmaPeak(iters); }, dispose: () => {}, flops: addon.fmaPeak(iters) };
    },
  };
}

/** A Stable Diffusion row (bench/sd.ts), run in a child process by runSdCase. */
function sdCase(name: SdCaseName): BenchCase {
  return { name, flops: 0, nativeOnly: true, sd: name, setup: () => { throw new Error(`${name} runs in a child process`); } };
}

const CASES: BenchCase[] = [
  fmaPeakCase(),
  gemmCase('sgemm-1024', 1024, 1024, 1024),
  gemmCase('sd-gemm-4096x2880x320', 4096, 2880, 320),
  gemmCase('sd-gemm-4096x320x4096', 4096, 320, 4096),
  convnetCase(64),
  trainCase('vae-train-step', () => vaeTrainStep(), true),
  trainCase('unet-train-step', () => unetTrainStep(), true),
  trainCase('vae-train-step-unfused', () => vaeTrainStep(), false),
  trainCase('unet-train-step-unfused', () => unetTrainStep(), false),
  ...SD_CASE_NAMES.map(sdCase),
];

// PyTorch versions of the same cases (NCHW, same shapes/threads), run by a persistent python process.
const TORCH_SCRIPT = String.raw`
import sys, json, time, torch
import torch.nn as nn
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
def gemm(M, K, N):
    a, b = torch.rand(M, K) * 2 - 1, torch.rand(K, N) * 2 - 1
    return lambda: torch.mm(a, b)
def convnet(B):
    net = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU(), nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ReLU(),
        nn.Conv2d(32, 1, 3, 1, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(B, 1, 28, 28)
    def step():
        opt.zero_grad()
        loss = nn.functional.mse_loss(net(x), x)
        loss.backward()
        opt.step()
        return loss.item()
    return step
CASES = {'sgemm-1024': lambda: gemm(1024, 1024, 1024), 'sd-gemm-4096x2880x320': lambda: gemm(4096, 2880, 320),
         'sd-gemm-4096x320x4096': lambda: gemm(4096, 320, 4096), 'convnet-train-step': lambda: convnet(64)}
# (no PyTorch versions of the model training steps: they would need the models rewritten in torch)
steps = {}
torch.mm(torch.ones(8, 8), torch.ones(8, 8))  # loads the BLAS library, to name it below
maps = open('/proc/self/maps').read()
blas = next((n for n in ('openblas', 'mkl', 'blis') if 'lib' + n in maps), 'reference BLAS')
print(json.dumps({'ready': True, 'version': torch.__version__, 'threads': torch.get_num_threads(), 'blas': blas}), flush=True)
for line in sys.stdin:
    name = line.strip()
    if name not in CASES:
        print(json.dumps({'error': 'unknown case'}), flush=True); continue
    if name not in steps:
        steps[name] = CASES[name]()
        steps[name]()  # warm-up
    t0 = time.perf_counter(); steps[name](); ms = (time.perf_counter() - t0) * 1e3
    print(json.dumps({'ms': ms}), flush=True)
`;

const TORCH_CASE_NAMES = ['sgemm-1024', 'sd-gemm-4096x2880x320', 'sd-gemm-4096x320x4096', 'convnet-train-step'];

class Torch {
  private proc: ChildProcessWithoutNullStreams;
  private lines: AsyncIterableIterator<string>;
  version = '';
  /** The BLAS library torch's matrix products run on (Debian's torch uses whichever libblas.so.3 is selected). */
  blas = '';
  private constructor(threads: number) {
    // torch.set_num_threads does not reach the BLAS library a Debian torch calls (OpenBLAS, when
    // libopenblas0 is installed, runs its own pool over every core): pin it through the environment.
    const t = String(threads);
    const env = { ...process.env, OMP_NUM_THREADS: t, OPENBLAS_NUM_THREADS: t, MKL_NUM_THREADS: t };
    this.proc = spawn(PYTHON, ['-c', TORCH_SCRIPT, t], { stdio: ['pipe', 'pipe', 'pipe'], env });
    this.lines = createInterface({ input: this.proc.stdout })[Symbol.asyncIterator]();
  }
  static async start(threads: number): Promise<Torch | null> {
    if (spawnSync(PYTHON, ['-c', 'import torch'], { stdio: 'ignore' }).status !== 0) return null;
    const t = new Torch(threads);
    const first = await t.lines.next();
    if (first.done) return null;
    const ready = JSON.parse(first.value) as { version: string; blas: string };
    t.version = ready.version;
    t.blas = ready.blas;
    return t;
  }
  async time(name: string): Promise<number> {
    this.proc.stdin.write(`${name}\n`);
    const r = await this.lines.next();
    const msg = JSON.parse(r.value);
    if (msg.error) throw new Error(msg.error);
    return msg.ms;
  }
  stop(): void {
    this.proc.stdin.end();
  }
}

// ---- driver --------------------------------------------------------------------------------

interface Opts {
  json: boolean; cpuSlow: boolean; runs: number; threads: number; cases: string[] | null; backends: string[];
  /** Stable Diffusion rows: include them all (--sd), timed runs each (--sd-runs), sd15-image's steps (--sd-steps), no warm-up (--no-warmup). */
  sd: boolean; sdRuns: number; sdSteps: number; noWarmup: boolean;
  /** --profile CASE: a per-kernel profile of one run of a Stable Diffusion case instead of the table. */
  profile: string | null;
}

function parseArgs(argv: string[]): Opts {
  const o: Opts = {
    json: false, cpuSlow: false, runs: 5, threads: nativeThreadCount(), cases: null, backends: ['cpu', 'native', 'torch'],
    sd: false, sdRuns: 1, sdSteps: 20, noWarmup: false, profile: null,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined) usage(`${a} needs a value`);
      return v;
    };
    if (a === '--json') o.json = true;
    else if (a === '--cpu-slow') o.cpuSlow = true;
    else if (a === '--runs') o.runs = posInt(a, val());
    else if (a === '--threads') o.threads = posInt(a, val());
    else if (a === '--cases') o.cases = val().split(',');
    else if (a === '--backends') o.backends = val().split(',');
    else if (a === '--sd') o.sd = true;
    else if (a === '--sd-runs') o.sdRuns = posInt(a, val());
    else if (a === '--sd-steps') o.sdSteps = posInt(a, val());
    else if (a === '--no-warmup') o.noWarmup = true;
    else if (a === '--profile') o.profile = val();
    else if (a === '--help' || a === '-h') usage('');
    else usage(`unknown option ${a}`);
  }
  for (const b of o.backends) if (!['cpu', 'native', 'torch', 'webgpu'].includes(b)) usage(`--backends: unknown backend "${b}" (have cpu, native, torch, webgpu)`);
  if (o.cases) for (const c of o.cases) if (!CASES.some((k) => k.name === c)) usage(`--cases: unknown case "${c}" (have ${CASES.map((k) => k.name).join(', ')})`);
  if (o.profile !== null && !(SD_CASE_NAMES as readonly string[]).includes(o.profile)) usage(`--profile: expected one of ${SD_CASE_NAMES.join(', ')}, got "${o.profile}" (bench/profile.ts profiles the training steps)`);
  return o;
}

function posInt(flag: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) usage(`${flag}: expected a positive integer, got "${v}"`);
  return n;
}

function usage(msg: string): never {
  if (msg) console.error(`bench: error: ${msg}`);
  console.error('usage: npm run bench -- [--json] [--cpu-slow] [--runs N] [--threads N] [--cases a,b] [--backends cpu,native,torch,webgpu]\n' +
    '                          [--sd] [--sd-runs N] [--sd-steps N] [--no-warmup] [--profile sd15-unet-step]');
  process.exit(msg ? 2 : 0);
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

interface Row {
  case: string; backend: string; medianMs: number | null; cpuMs?: number | null; gflops: number | null; runs: number; threads: number;
  /** Native GEMMs and the Stable Diffusion rows: GFLOP/s per thread as a fraction of this run's fma-peak per thread. */
  ofPeak?: number;
  /** Stable Diffusion rows: the FMA peak (GFLOP/s, all threads) ofPeak refers to: the fma-peak row's when it ran, else the child's own probe. */
  peakGflops?: number;
  /** Stable Diffusion rows: peak resident set of the case's child process (process.resourceUsage().maxRSS, KiB). */
  maxRssKiB?: number;
  /** Stable Diffusion rows: building the models with random weights (not timed in medianMs). */
  setupMs?: number;
  note?: string;
}

/** Script and arguments of a bench/sd.ts child for `name`. */
function sdChildArgs(name: string, opts: Opts, extra: string[] = [], backend = 'native'): string[] {
  const here = path.dirname(fileURLToPath(import.meta.url));
  return [path.join(here, '..', 'bin', 'run-ts.mjs'), path.join(here, 'sd.ts'), '--child', name, '--backend', backend, '--threads', String(opts.threads),
    '--runs', String(opts.sdRuns), '--steps', String(opts.sdSteps), ...(opts.noWarmup ? ['--no-warmup'] : []), ...extra];
}

/** Runs a Stable Diffusion case in a child process; its stderr passes through. */
function runSdCase(name: SdCaseName, opts: Opts, peak: number | undefined, backend = 'native'): Row {
  const r = spawnSync(process.execPath, sdChildArgs(name, opts, [], backend), { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', maxBuffer: 1 << 24 });
  const line = (r.stdout ?? '').split('\n').find((l) => l.startsWith('{"sdBench"'));
  if (r.status !== 0 || !line) {
    return { case: name, backend, medianMs: null, gflops: null, runs: 0, threads: opts.threads, note: `failed: child exited ${r.status ?? r.signal}` };
  }
  const c = (JSON.parse(line) as { sdBench: SdChildResult }).sdBench;
  const ms = median(c.times);
  const gflops = round2(c.flops / ms / 1e6);
  const peakGflops = peak ?? round2(c.peakGflops);
  const warm = c.warmup ? 'after a warm-up run' : 'no warm-up';
  const steps = name === 'sd15-image' ? `; ${opts.sdSteps} DDIM step${opts.sdSteps === 1 ? '' : 's'}` : '';
  return { case: name, backend, medianMs: round2(ms), cpuMs: round2(median(c.cpu)), gflops, runs: c.times.length, threads: backend === 'native' ? opts.threads : 1,
    ofPeak: Math.round((1000 * gflops) / peakGflops) / 1000, peakGflops, maxRssKiB: c.maxRssKiB, setupMs: round2(c.setupMs),
    note: `child process, ${warm}${steps}` };
}

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  tf.env().set('PROD', true);
  const haveNative = registerNativeBackend();
  if (haveNative) loadNativeAddon()!.setThreads(opts.threads);
  if (opts.profile !== null) {
    // One profiled run in a child of its own (its output is the report).
    if (!haveNative) usage(`--profile needs the native backend (${nativeLoadError()})`);
    const r = spawnSync(process.execPath, sdChildArgs(opts.profile, opts, ['--profile']), { stdio: 'inherit' });
    process.exit(r.status ?? 1);
  }
  // The WebGPU column, when asked for and an adapter is there (it says which).
  const wp = opts.backends.includes('webgpu') ? await probeWebgpu() : null;
  const webgpu = wp?.available ?? false;
  if (wp && !opts.json) console.log(`webgpu: ${wp.detail}`);
  if (wp && !wp.available) console.error(`sdlab bench: no webgpu column: ${wp.detail}`);
  // The Stable Diffusion rows take minutes: only when named, or with --sd.
  const cases = CASES.filter((c) => (opts.cases ? opts.cases.includes(c.name) : !c.sd || opts.sd));
  // (no python process when no selected case has a PyTorch version)
  const torch = opts.backends.includes('torch') && cases.some((c) => TORCH_CASE_NAMES.includes(c.name)) ? await Torch.start(opts.threads) : null;
  const rows: Row[] = [];
  const emit = (r: Row) => {
    rows.push(r);
    if (opts.json) console.log(JSON.stringify(r));
  };
  if (!opts.json) {
    const isa = haveNative ? `native ${loadNativeAddon()!.isa()}` : `native unavailable: ${nativeLoadError()}`;
    const blasNote = torch?.blas === 'reference BLAS' ? ' (slow; apt install libopenblas0-pthread for a fair comparison)' : '';
    console.log(`sdlab bench: ${opts.threads} thread(s); ${isa}; ${torch ? `torch ${torch.version} on ${torch.blas}${blasNote}` : cases.some((c) => TORCH_CASE_NAMES.includes(c.name)) ? 'no PyTorch' : 'no PyTorch rows in these cases'}; median of ${opts.runs} interleaved runs\n`);
  }

  for (const c of cases) {
    if (c.sd) {
      if (!haveNative) {
        emit({ case: c.name, backend: 'native', medianMs: null, gflops: null, runs: 0, threads: opts.threads, note: `skipped: native unavailable` });
        continue;
      }
      for (const backend of ['native', 'webgpu'].filter((b) => opts.backends.includes(b))) {
        if (backend === 'webgpu' && !webgpu) continue;
        emit(runSdCase(c.sd, opts, rows.find((p) => p.case === 'fma-peak' && p.gflops !== null)?.gflops ?? undefined, backend));
      }
      continue;
    }
    if (c.pending) {
      emit({ case: c.name, backend: '-', medianMs: null, gflops: null, runs: 0, threads: opts.threads, note: c.pending });
      continue;
    }
    // Backends for this case, each with a setup()'d run function (tfjs) or the torch process.
    type Runner = { backend: string; runs: number; time: () => Promise<number>; dispose: () => void; times: number[]; cpu: number[]; flops: number; note?: string };
    c.prepare?.();
    const runners: Runner[] = [];
    for (const backend of ['cpu', 'native', 'webgpu']) {
      if (!opts.backends.includes(backend)) continue;
      if (backend === 'native' && !haveNative) continue;
      if (backend === 'webgpu' && (!webgpu || c.nativeOnly)) continue;
      if (backend === 'cpu' && c.nativeOnly) continue;
      let runs = opts.runs;
      let note: string | undefined;
      if (backend === 'cpu' && c.cpuSlow) {
        if (!opts.cpuSlow) {
          emit({ case: c.name, backend, medianMs: null, gflops: null, runs: 0, threads: 1, note: 'skipped: slow on cpu (--cpu-slow to run once)' });
          continue;
        }
        runs = 1;
        note = 'one run (--cpu-slow), no warm-up';
      }
      if (backend === 'webgpu') await selectBackend('webgpu');
      else await tf.setBackend(backend);
      const s = c.setup();
      const bname = backend;
      const r: Runner = {
        backend, runs, note, times: [], cpu: [], flops: s.flops ?? c.flops,
        time: async () => {
          await tf.setBackend(bname);
          const t0 = performance.now(), c0 = process.cpuUsage();
          await s.run();
          if (bname === 'webgpu') await webgpuIdle(); // kernels run asynchronously there
          const ms = performance.now() - t0, cu = process.cpuUsage(c0);
          r.cpu.push((cu.user + cu.system) / 1000);
          return ms;
        },
        dispose: () => { tf.setBackend(bname); s.dispose(); },
      };
      runners.push(r);
    }
    if (torch && TORCH_CASE_NAMES.includes(c.name)) runners.push({ backend: 'torch', runs: opts.runs, times: [], cpu: [], flops: c.flops, time: () => torch.time(c.name), dispose: () => {} });

    // OpenBLAS's threads spin for ~0.1 s after a call (OpenMP's for a while too): left busy,
    // they would take the cores from the next backend's threads.
    const settle = async (r: Runner) => {
      if (r.backend === 'torch' && opts.threads > 1) await new Promise((res) => setTimeout(res, TORCH_SETTLE_MS));
    };
    // Warm-up, then interleaved rounds.
    for (const r of runners) if (r.runs > 1) {
      await r.time();
      r.cpu.length = 0;
      await settle(r);
    }
    for (let round = 0; round < opts.runs; round++) {
      for (const r of runners) {
        if (r.times.length >= r.runs) continue;
        r.times.push(await r.time());
        await settle(r);
      }
    }
    for (const r of runners) {
      const ms = median(r.times);
      const gflops = r.flops ? round2(r.flops / ms / 1e6) : null;
      const peak = rows.find((p) => p.case === 'fma-peak' && p.gflops !== null)?.gflops;
      const ofPeak = r.backend === 'native' && c.name.includes('gemm') && peak && gflops ? Math.round((1000 * gflops) / peak) / 1000 : undefined;
      emit({ case: c.name, backend: r.backend, medianMs: round2(ms), cpuMs: r.cpu.length ? round2(median(r.cpu)) : null,
        gflops, runs: r.times.length, threads: r.backend === 'cpu' || r.backend === 'webgpu' ? 1 : opts.threads,
        ...(ofPeak !== undefined ? { ofPeak } : {}), ...(r.note ? { note: r.note } : {}) });
      r.dispose();
    }
  }
  torch?.stop();
  if (!opts.json) printTable(rows, opts.threads);
}

const round2 = (x: number) => Math.round(x * 100) / 100;
/** One Zen 4 core's FMA peak (32 FLOP/cycle at ~3.6 GHz), the figure issue 3 was written against. */
const NOMINAL_PEAK = 115;

function printTable(rows: Row[], threads: number): void {
  // The Stable Diffusion rows add a peak-RSS column (their child process's).
  const rss = rows.some((r) => r.maxRssKiB !== undefined);
  const head = ['case', 'backend', 'threads', 'median ms', 'cpu ms', 'GFLOP/s', 'GFLOP/s/thread', 'runs', ...(rss ? ['peak RSS MiB'] : []), 'note'];
  const body = rows.map((r) => [r.case, r.backend, String(r.threads), r.medianMs === null ? '-' : r.medianMs.toFixed(1), r.cpuMs == null ? '-' : r.cpuMs.toFixed(1),
    r.gflops === null ? '-' : r.gflops.toFixed(1), r.gflops === null ? '-' : (r.gflops / r.threads).toFixed(1), String(r.runs),
    ...(rss ? [r.maxRssKiB === undefined ? '-' : (r.maxRssKiB / 1024).toFixed(0)] : []), r.note ?? '']);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const lastNum = rss ? 8 : 7;
  const line = (cells: string[]) => cells.map((c, i) => (i >= 2 && i <= lastNum ? c.padStart(w[i]) : c.padEnd(w[i]))).join('  ').trimEnd();
  console.log(line(head));
  console.log(w.map((n) => '-'.repeat(n)).join('  '));
  for (const b of body) console.log(line(b));
  // Speed-ups against the other backends, per case.
  const byCase = new Map<string, Row[]>();
  for (const r of rows) if (r.medianMs !== null) byCase.set(r.case, [...(byCase.get(r.case) ?? []), r]);
  const notes: string[] = [];
  for (const [name, rs] of byCase) {
    const nat = rs.find((r) => r.backend === 'native');
    if (!nat) continue;
    for (const o of rs) if (o !== nat) notes.push(`${name}: native is ${(o.medianMs! / nat.medianMs!).toFixed(2)}x ${o.backend}`);
    if (nat.maxRssKiB !== undefined && nat.ofPeak !== undefined) {
      // Stable Diffusion rows: seconds, GFLOP/s (analytic direct-convolution FLOPs), fraction of the FMA peak, peak RSS.
      notes.push(`${name}: ${(nat.medianMs! / 1000).toFixed(2)} s, ${nat.gflops!.toFixed(1)} GFLOP/s = ${(100 * nat.ofPeak).toFixed(1)}% of this run's FMA peak ` +
        `(${nat.peakGflops!.toFixed(1)} GFLOP/s on ${nat.threads} thread(s)), peak RSS ${(nat.maxRssKiB / 1048576).toFixed(2)} GiB; models built in ${(nat.setupMs! / 1000).toFixed(1)} s`);
    } else if (nat.ofPeak !== undefined) {
      notes.push(`${name}: native per thread is ${(100 * nat.ofPeak).toFixed(0)}% of this run's FMA peak per thread ` +
        `(${(100 * nat.gflops! / nat.threads / NOMINAL_PEAK).toFixed(0)}% of a nominal ${NOMINAL_PEAK} GFLOP/s core)`);
    }
  }
  // Each *-unfused case against its fused twin, on native.
  for (const [name, rs] of byCase) {
    const fusedName = name.endsWith('-unfused') ? name.slice(0, -'-unfused'.length) : null;
    const plain = rs.find((r) => r.backend === 'native');
    const fused = fusedName ? byCase.get(fusedName)?.find((r) => r.backend === 'native') : undefined;
    if (plain && fused) notes.push(`${fusedName}: the fused ops make native ${(plain.medianMs! / fused.medianMs!).toFixed(2)}x faster than their tfjs compositions (${name})`);
  }
  if (notes.length) console.log(`\n${notes.join('\n')}`);
  console.log(`\n(cpu is tfjs's single-threaded JS backend; native and torch use ${threads} thread(s).)`);
}

await main();

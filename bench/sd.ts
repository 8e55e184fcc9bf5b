/**
 * The Stable Diffusion rows of `npm run bench` (issue 17), at full SD size with random weights
 * (generated here, seeded: nothing to download), on the native backend:
 *
 *   sd15-text-encode  CLIP ViT-L/14 text tower (TEXT_ENCODER_PRESETS.sd1), batch 2 (prompt and
 *                     negative prompt, as under CFG) of 77 tokens
 *   sd15-unet-step    UNet2DConditionModel(UNET_PRESETS.sd1), CFG batch 2 of 64×64×4 latents,
 *                     text [2, 77, 768]
 *   sd15-vae-decode   AutoencoderKL(VAE_PRESETS.sd1) decoding 1×64×64×4 → 512×512×3
 *   sd15-image        one 512 px image: text encode (batch 2) + 20 DDIM steps (CFG batch 2,
 *                     guidance 7.5) + decode (--sd-steps N for fewer steps)
 *   sdturbo-image     SD-Turbo shape: SD 2.1 architecture (UNET_PRESETS.sd2, OpenCLIP ViT-H text
 *                     TEXT_ENCODER_PRESETS.sd2), 512 px, batch 1, one step, no guidance, decode
 *
 * Each case runs in its own child process (bench.ts spawns `bench/sd.ts --child CASE ...`), so
 * that its peak RSS — process.resourceUsage().maxRSS, in KiB — is its own and one case's
 * memory does not hide another's. The child measures the FMA peak (as bench.ts's fma-peak row)
 * just before the case, builds the models (not timed), runs the warm-up and the timed runs, and
 * prints one JSON line. FLOPs are the analytic direct-convolution counts of src/eval/flops.ts.
 *
 * --profile (bench.ts --profile CASE) times every kernel of one run instead, wall clock, and
 * prints the top kernels with their share of the run, GFLOP/s for the convolutions and matrix
 * products, and the share of the wall time spent outside kernels.
 */
import * as tf from '@tensorflow/tfjs';
import { AutoencoderKL, VAE_PRESETS } from '../src/autoencoder/index.ts';
import { TEXT_ENCODER_PRESETS, TextEncoder } from '../src/clip/text_encoder.ts';
import { manualSeed } from '../src/nn/index.ts';
import { DDIMScheduler } from '../src/schedule/ddim.ts';
import { UNET_PRESETS, UNet2DConditionModel } from '../src/unet/index.ts';
import type { UNet2DConditionConfig } from '../src/unet/config.ts';
import type { TextEncoderConfig } from '../src/clip/text_encoder.ts';
import { textEncoderFlops, unetFlops, vaeDecodeFlops } from '../src/eval/flops.ts';
import { loadNativeAddon, registerNativeBackend } from '../src/backend/native.ts';
import { selectBackend } from '../src/backend/index.ts';

export const SD_CASE_NAMES = ['sd15-unet-step', 'sd15-vae-decode', 'sd15-text-encode', 'sd15-image', 'sdturbo-image'] as const;
export type SdCaseName = (typeof SD_CASE_NAMES)[number];

/** Latent side at 512 px, text tokens, SD 1.5's default step count and guidance. */
const LATENT = 64, TOKENS = 77, SD15_STEPS = 20, GUIDANCE = 7.5;
/** SD-Turbo: SD 2.1's UNet at 512 px (64×64 latents). */
const SDTURBO_UNET: UNet2DConditionConfig = { ...UNET_PRESETS.sd2, sample_size: 64 };

export interface SdCaseOpts {
  /** Denoising steps of sd15-image (default 20). */
  steps: number;
}

/** FLOPs of one run (analytic; see src/eval/flops.ts). */
export function sdCaseFlops(name: SdCaseName, o: SdCaseOpts): number {
  const unet = (cfg: UNet2DConditionConfig, batch: number) => unetFlops(cfg, { batch, height: LATENT, width: LATENT, contextLength: TOKENS }).total;
  const vae = () => vaeDecodeFlops(VAE_PRESETS.sd1, { batch: 1, height: LATENT, width: LATENT }).total;
  const text = (cfg: TextEncoderConfig, batch: number) => textEncoderFlops(cfg, { batch, length: TOKENS }).total;
  switch (name) {
    case 'sd15-unet-step': return unet(UNET_PRESETS.sd1, 2);
    case 'sd15-vae-decode': return vae();
    case 'sd15-text-encode': return text(TEXT_ENCODER_PRESETS.sd1, 2);
    case 'sd15-image': return text(TEXT_ENCODER_PRESETS.sd1, 2) + o.steps * unet(UNET_PRESETS.sd1, 2) + vae();
    case 'sdturbo-image': return text(TEXT_ENCODER_PRESETS.sd2, 1) + unet(SDTURBO_UNET, 1) + vae();
  }
}

/** Whether the case gets a warm-up run before its timed runs (the whole-image cases time one cold image, as a user waits for it). */
export const sdCaseWarmup = (name: SdCaseName) => !name.endsWith('-image');

interface Built {
  run: () => void;
  dispose: () => void;
}

/** Disposes every tensor of a model's output object but `keep`. */
const disposeAll = (out: object, keep?: tf.Tensor) => tf.dispose(Object.values(out).filter((t): t is tf.Tensor => t instanceof tf.Tensor && t !== keep));

const randomIds = (batch: number, vocab: number) =>
  tf.tensor2d(Array.from({ length: batch }, (_, b) => Array.from({ length: TOKENS }, (_, i) => (b * 7919 + i * 104729) % vocab)), undefined, 'int32');

/** Builds the models and inputs of a case (random weights, seeded) on the current backend. */
function build(name: SdCaseName, o: SdCaseOpts): Built {
  manualSeed(0);
  if (name === 'sd15-text-encode') {
    const te = new TextEncoder(TEXT_ENCODER_PRESETS.sd1);
    const ids = randomIds(2, te.config.vocab_size);
    return { run: () => { const out = te.forward(ids); out.lastHiddenState.dataSync(); disposeAll(out); }, dispose: () => { te.dispose(); ids.dispose(); } };
  }
  if (name === 'sd15-unet-step') {
    const unet = new UNet2DConditionModel(UNET_PRESETS.sd1);
    const x = tf.randomNormal([2, LATENT, LATENT, 4], 0, 1, 'float32', 1) as tf.Tensor4D;
    const ctx = tf.randomNormal([2, TOKENS, 768], 0, 1, 'float32', 2) as tf.Tensor3D;
    return { run: () => { const e = unet.forward(x, 500, ctx); e.dataSync(); e.dispose(); }, dispose: () => { unet.dispose(); tf.dispose([x, ctx]); } };
  }
  if (name === 'sd15-vae-decode') {
    const vae = new AutoencoderKL(VAE_PRESETS.sd1);
    const z = tf.randomNormal([1, LATENT, LATENT, 4], 0, 1, 'float32', 1) as tf.Tensor4D;
    return { run: () => { const img = vae.decode(z); img.dataSync(); img.dispose(); }, dispose: () => { vae.dispose(); z.dispose(); } };
  }
  // Whole images: text encode, the denoising loop, decode (what StableDiffusionPipeline does,
  // without the tokenizer: the ids are fixed).
  const turbo = name === 'sdturbo-image';
  const teCfg = turbo ? TEXT_ENCODER_PRESETS.sd2 : TEXT_ENCODER_PRESETS.sd1;
  const te = new TextEncoder(teCfg);
  const unet = new UNet2DConditionModel(turbo ? SDTURBO_UNET : UNET_PRESETS.sd1);
  const vae = new AutoencoderKL(VAE_PRESETS.sd1);
  const guided = !turbo;
  const ids = randomIds(guided ? 2 : 1, teCfg.vocab_size);
  const steps = turbo ? 1 : o.steps;
  const sched = DDIMScheduler.fromConfig({
    beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012, clip_sample: false, set_alpha_to_one: false,
    steps_offset: 1, ...(turbo ? { timestep_spacing: 'trailing' } : {}),
  });
  const run = () => {
    sched.setTimesteps(steps);
    const out = te.forward(ids);
    const ctx = out.lastHiddenState;
    disposeAll(out, ctx);
    let x = tf.randomNormal([1, LATENT, LATENT, 4], 0, 1, 'float32', 3) as tf.Tensor4D;
    for (const t of sched.timesteps) {
      const next = tf.tidy(() => {
        let eps: tf.Tensor;
        if (guided) {
          const both = unet.forward(tf.concat([x, x]) as tf.Tensor4D, t, ctx);
          const [uncond, cond] = tf.split(both, 2);
          eps = tf.add(uncond, tf.mul(tf.sub(cond, uncond), GUIDANCE));
        } else {
          eps = unet.forward(x, t, ctx);
        }
        return sched.step(eps, t, x).prevSample as tf.Tensor4D;
      });
      x.dispose();
      x = next;
    }
    const img = tf.tidy(() => vae.decode(tf.div(x, vae.scalingFactor) as tf.Tensor4D));
    img.dataSync();
    tf.dispose([img, x, ctx]);
  };
  return { run, dispose: () => { te.dispose(); unet.dispose(); vae.dispose(); ids.dispose(); } };
}

/** What a child reports (one JSON line on stdout). */
export interface SdChildResult {
  case: SdCaseName;
  times: number[];
  cpu: number[];
  flops: number;
  /** FMA peak (all threads) measured in this child before the case. */
  peakGflops: number;
  setupMs: number;
  maxRssKiB: number;
  warmup: boolean;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** The in-child FMA peak: median of 5 probes, as bench.ts's fma-peak row (after one warm-up). */
function fmaPeakGflops(): number {
  const addon = loadNativeAddon()!;
  const iters = 5_000_000;
  addon.fmaPeak(iters);
  const g: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    const flops = addon.fmaPeak(iters);
    g.push(flops / (performance.now() - t0) / 1e6);
  }
  return median(g);
}

/** Wraps every native kernel with a wall-clock timer (outermost calls only) for --profile. */
type Tally = Map<string, { ms: number; calls: number; flops: number }>;

function instrument(): { start: () => void; stop: () => { byName: Tally; byShape: Tally } } {
  let recording = false, depth = 0;
  const byName: Tally = new Map(), byShape: Tally = new Map();
  const add = (m: Tally, key: string, ms: number, flops: number) => {
    const e = m.get(key) ?? { ms: 0, calls: 0, flops: 0 };
    e.ms += ms;
    e.calls++;
    e.flops += flops;
    m.set(key, e);
  };
  for (const config of tf.getKernelsForBackend('native')) {
    const inner = config.kernelFunc;
    tf.unregisterKernel(config.kernelName, 'native');
    tf.registerKernel({
      ...config,
      kernelFunc: (a) => {
        if (!recording || depth > 0) return inner(a);
        depth++;
        const t0 = performance.now();
        let out: ReturnType<typeof inner> | undefined;
        try {
          return (out = inner(a));
        } finally {
          const ms = performance.now() - t0;
          depth--;
          const inputs = a.inputs as Record<string, tf.TensorInfo>;
          const flops = out ? kernelFlops(config.kernelName, inputs, a.attrs as Record<string, unknown>, out) : 0;
          add(byName, config.kernelName, ms, flops);
          const shapes = Object.values(inputs).filter((t) => t != null).map((t) => `[${t.shape}]`).join(' ');
          add(byShape, `${config.kernelName} ${shapes}`, ms, flops);
        }
      },
    });
  }
  return { start: () => { recording = true; }, stop: () => { recording = false; return { byName, byShape }; } };
}

const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

/** FLOPs of one convolution or matrix-product kernel call (0 for other kernels). */
function kernelFlops(name: string, inputs: Record<string, tf.TensorInfo>, attrs: Record<string, unknown>, out: tf.TensorInfo | tf.TensorInfo[]): number {
  const o = Array.isArray(out) ? out[0] : out;
  if (name === 'Conv2D' || name === 'FusedConv2D') {
    const [kh, kw, cin] = inputs.filter.shape;
    return 2 * prod(o.shape) * kh * kw * cin;
  }
  if (name === 'BatchMatMul' || name === '_FusedMatMul') {
    const a = inputs.a.shape;
    const k = attrs.transposeA ? a[a.length - 2] : a[a.length - 1];
    return 2 * prod(o.shape) * k;
  }
  return 0;
}

function profile(name: SdCaseName, o: SdCaseOpts, warmup: boolean): void {
  const prof = instrument();
  const t0 = performance.now();
  const built = build(name, o);
  const setupMs = performance.now() - t0;
  if (warmup) built.run();
  prof.start();
  const w0 = performance.now();
  built.run();
  const wall = performance.now() - w0;
  const { byName, byShape } = prof.stop();
  built.dispose();
  let kernelMs = 0, calls = 0, mmFlops = 0, mmMs = 0;
  for (const v of byName.values()) {
    kernelMs += v.ms;
    calls += v.calls;
    if (v.flops) { mmFlops += v.flops; mmMs += v.ms; }
  }
  const flops = sdCaseFlops(name, o);
  const top = Number(process.env.SDLAB_BENCH_PROFILE_TOP ?? 15);
  console.log(`${name} profile on native (${loadNativeAddon()!.threads()} thread(s)): one run ${(wall / 1000).toFixed(2)} s wall ` +
    `(${warmup ? 'after a warm-up run' : 'no warm-up'}; models built in ${(setupMs / 1000).toFixed(1)} s), ${(flops / 1e9).toFixed(1)} GFLOP (analytic) = ${(flops / wall / 1e6).toFixed(1)} GFLOP/s`);
  console.log(`kernels: ${(kernelMs / 1000).toFixed(2)} s in ${calls} calls; outside kernels (JS, tfjs dispatch, allocation): ${(wall - kernelMs).toFixed(0)} ms = ` +
    `${((100 * (wall - kernelMs)) / wall).toFixed(1)}% of the wall time`);
  console.log(`conv + matmul kernels: ${(mmFlops / 1e9).toFixed(1)} GFLOP counted from their shapes, ${(mmMs / 1000).toFixed(2)} s, ${(mmFlops / mmMs / 1e6).toFixed(1)} GFLOP/s\n`);
  const table = (title: string, m: Tally) => {
    console.log(`      ms   calls  %wall  GFLOP/s  ${title}`);
    for (const [k, v] of [...m].sort((p, q) => q[1].ms - p[1].ms).slice(0, top)) {
      const gf = v.flops ? (v.flops / v.ms / 1e6).toFixed(1) : '-';
      console.log(`${v.ms.toFixed(0).padStart(8)}  ${String(v.calls).padStart(6)}  ${((100 * v.ms) / wall).toFixed(1).padStart(5)}  ${gf.padStart(7)}  ${k}`);
    }
  };
  table('kernel (wall time)', byName);
  console.log('');
  table('kernel and input shapes', byShape);
}

/** Child entry: bench/sd.ts --child CASE [--backend native|webgpu] --threads N --runs N --steps N [--no-warmup] [--profile]. */
async function child(argv: string[]): Promise<void> {
  const get = (flag: string, dflt: string) => {
    const i = argv.indexOf(flag);
    return i >= 0 ? argv[i + 1] : dflt;
  };
  const name = get('--child', '') as SdCaseName;
  if (!SD_CASE_NAMES.includes(name)) throw new Error(`bench/sd.ts: unknown case ${name}`);
  const o: SdCaseOpts = { steps: Number(get('--steps', String(SD15_STEPS))) };
  const runs = Number(get('--runs', '1'));
  const warmup = !argv.includes('--no-warmup') && sdCaseWarmup(name);
  tf.env().set('PROD', true);
  if (!registerNativeBackend()) throw new Error('bench/sd.ts: the native backend is not available');
  // --backend webgpu: the model runs on the GPU (the FMA peak probe stays the CPU's).
  if (get('--backend', 'native') === 'webgpu') await selectBackend('webgpu');
  else await tf.setBackend('native');
  loadNativeAddon()!.setThreads(Number(get('--threads', String(loadNativeAddon()!.threads()))));
  if (argv.includes('--profile')) {
    profile(name, o, !argv.includes('--no-warmup'));
    return;
  }
  const peakGflops = fmaPeakGflops();
  const s0 = performance.now();
  const built = build(name, o);
  const setupMs = performance.now() - s0;
  if (warmup) built.run();
  const times: number[] = [], cpu: number[] = [];
  for (let r = 0; r < runs; r++) {
    const t0 = performance.now(), c0 = process.cpuUsage();
    built.run();
    times.push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    cpu.push((c.user + c.system) / 1000);
  }
  built.dispose();
  const res: SdChildResult = { case: name, times, cpu, flops: sdCaseFlops(name, o), peakGflops, setupMs, maxRssKiB: process.resourceUsage().maxRSS, warmup };
  console.log(JSON.stringify({ sdBench: res }));
}

if (process.argv.includes('--child')) await child(process.argv.slice(2));

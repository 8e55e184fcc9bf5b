/**
 * `sdlab encode | decode | interpolate`: look inside a trained VAE.
 *
 *   npx sdlab encode digit.png                 # → out/encode/digit.safetensors (+ digit.latents.png, digit.roundtrip.png)
 *   npx sdlab decode out/encode/digit.safetensors   # → out/decode/digit.png
 *   npx sdlab interpolate                      # → out/interpolate/interpolation.png
 *   npx sdlab interpolate a.png b.png --steps 12 --mode slerp
 *
 * The VAE is <run>/vae (default runs/default/vae, written by `sdlab train vae`) or --vae DIR
 * (any diffusers AutoencoderKL directory). Images are read as grayscale (or RGB for a 3-channel
 * VAE) in [0, 1], transparent pixels onto black, mapped to [-1, 1]; images smaller than the VAE's
 * sample_size are padded (centred, black) to it unless --no-pad, so 28×28 MNIST PNGs give 32×32.
 *
 * Latent files are safetensors with one tensor "latents" [N, C, h, w] (PyTorch's NCHW, like a
 * diffusers pipeline's latents), in diffusion space: the posterior mean times the VAE's
 * scaling_factor (stored in the metadata too). decode divides by the VAE's scaling_factor.
 *
 * interpolate encodes two digits per row — held-out digits of the classes in --pairs, or the two
 * PNGs given — and decodes points along the straight line (lerp) or the great circle (slerp)
 * between their latents: a picture of how the latent space is laid out.
 */
import fs from 'node:fs';
import path from 'node:path';
import { type Command, InvalidArgumentError } from 'commander';
import * as tf from '@tensorflow/tfjs';
import { AutoencoderKL } from '../autoencoder/index.ts';
import { selectBackend } from '../backend/index.ts';
import { readSafetensors, writeSafetensors } from '../io/safetensors.ts';
import { UsageError, check } from '../util/errors.ts';
import { int, oneOf } from '../util/options.ts';
import { Random } from '../util/random.ts';
import { type FloatImage, readPng, renderGrid, savePng, saveImageGrid } from '../viz/index.ts';
import { vaeData } from '../train/vae.ts';
import { denormalize, toSigned } from '../data/pixels.ts';

// ---------------------------------------------------------------------------------------------
// Shared helpers

export interface VaeSource {
  /** Run directory; the VAE is <run>/vae unless `vae` is given. */
  run?: string;
  vae?: string;
}

/** Loads the VAE named by --vae, or <run>/vae. */
export function loadRunVae(src: VaeSource): { vae: AutoencoderKL; dir: string } {
  const dir = src.vae ?? path.join(src.run ?? 'runs/default', 'vae');
  if (!src.vae && !fs.existsSync(path.join(dir, 'config.json'))) {
    throw new UsageError(`no trained VAE in ${dir}: run \`npx sdlab train vae --run ${src.run ?? 'runs/default'}\` first, or pass --vae DIR.`);
  }
  return { vae: AutoencoderKL.fromPretrained(dir), dir };
}

/** A PNG as HWC float pixels in [0, 1] with `channels` channels (alpha composited onto black). */
export function readPngImage(file: string, channels: 1 | 3): FloatImage & { channels: 1 | 3 } {
  const { width, height, data } = readPng(file); // RGBA, 8 bits per channel
  const out = new Float32Array(width * height * channels);
  for (let i = 0; i < width * height; i++) {
    const a = data[4 * i + 3] / 255;
    const r = (data[4 * i] / 255) * a;
    const g = (data[4 * i + 1] / 255) * a;
    const b = (data[4 * i + 2] / 255) * a;
    if (channels === 1) out[i] = 0.299 * r + 0.587 * g + 0.114 * b;
    else out.set([r, g, b], 3 * i);
  }
  return { data: out, height, width, channels };
}

/** Pads an HWC image with zeros (centred) to size × size; images already that large pass through. */
export function padImage(img: FloatImage & { channels: 1 | 3 }, size: number): FloatImage & { channels: 1 | 3 } {
  if (img.height >= size && img.width >= size) return img;
  const H = Math.max(size, img.height);
  const W = Math.max(size, img.width);
  const c = img.channels;
  const top = Math.floor((H - img.height) / 2);
  const left = Math.floor((W - img.width) / 2);
  const out = new Float32Array(H * W * c);
  for (let y = 0; y < img.height; y++) {
    for (let x = 0; x < img.width; x++) {
      for (let k = 0; k < c; k++) out[((y + top) * W + x + left) * c + k] = img.data[(y * img.width + x) * c + k];
    }
  }
  return { data: out, height: H, width: W, channels: c };
}

/** Images (same size) in [0, 1] → [N, H, W, C] in [-1, 1]. */
function toSignedBatch(images: FloatImage[], channels: number): tf.Tensor4D {
  const { height: H, width: W } = images[0];
  const buf = new Float32Array(images.length * H * W * channels);
  images.forEach((img, i) => {
    if (img.height !== H || img.width !== W) throw new UsageError(`images must all be ${H}×${W}; image ${i + 1} is ${img.height}×${img.width}.`);
    for (let p = 0; p < H * W * channels; p++) buf[i * H * W * channels + p] = toSigned(img.data[p]);
  });
  return tf.tensor4d(buf, [images.length, H, W, channels]);
}

/** [N, H, W, C] in [-1, 1] → FloatImages in [0, 1] (clipped). */
function toUnitImages(x: tf.Tensor4D): Array<FloatImage & { channels: 1 | 3 }> {
  const [n, H, W, C] = x.shape;
  const data = denormalize(x).dataSync() as Float32Array;
  const per = H * W * C;
  return Array.from({ length: n }, (_, i) => ({ data: data.slice(i * per, (i + 1) * per), height: H, width: W, channels: C as 1 | 3 }));
}

function checkSize(vae: AutoencoderKL, h: number, w: number, what: string): void {
  const f = vae.downsampleFactor;
  check(h % f === 0 && w % f === 0, `${what}: ${h}×${w} is not divisible by the VAE's downsampling factor ${f}.`);
}

function stem(file: string): string {
  return path.basename(file).replace(/\.(png|safetensors)$/i, '');
}

/** Writes one image at its own resolution (×scale), no border. */
async function saveSingleImage(file: string, img: FloatImage, scale = 1): Promise<void> {
  await savePng(file, renderGrid([img], { cols: 1, pad: 0, scale }));
}

function psnr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
  return 10 * Math.log10(a.length / Math.max(s, 1e-30));
}

// ---------------------------------------------------------------------------------------------
// encode

export interface EncodeOptions extends VaeSource {
  inputs: string[];
  out: string;
  /** Pad images smaller than the VAE's sample_size up to it. */
  pad: boolean;
}

export interface EncodeResult {
  files: string[];
  /** Diffusion-space latents per input, [1, C, h, w] NCHW. */
  latents: Array<{ shape: number[]; data: Float32Array }>;
  scalingFactor: number;
  /** Round-trip PSNR (dB) of each input: decode(encode(x)) vs x, in [0, 1]. */
  psnr: number[];
}

export async function runEncode(o: EncodeOptions): Promise<EncodeResult> {
  check(o.inputs.length > 0, 'encode: give at least one PNG file.');
  const { vae } = loadRunVae(o);
  const channels = vae.config.in_channels === 3 ? 3 : 1;
  const sf = vae.scalingFactor;
  const res: EncodeResult = { files: [], latents: [], scalingFactor: sf, psnr: [] };
  for (const file of o.inputs) {
    let img = readPngImage(file, channels);
    if (o.pad) img = padImage(img, vae.config.sample_size);
    checkSize(vae, img.height, img.width, file);
    const { latentsNhwc, recon } = tf.tidy(() => {
      const x = toSignedBatch([img], channels);
      const mean = vae.encode(x).mean;
      return { latentsNhwc: tf.keep(tf.mul(mean, sf)), recon: tf.keep(vae.decode(mean)) };
    });
    const [, h, w, c] = latentsNhwc.shape;
    const nchw = tf.tidy(() => tf.transpose(latentsNhwc, [0, 3, 1, 2]).dataSync() as Float32Array);
    const back = toUnitImages(recon as tf.Tensor4D)[0];
    tf.dispose([latentsNhwc, recon]);
    const base = path.join(o.out, stem(file));
    writeSafetensors(`${base}.safetensors`, { latents: { shape: [1, c!, h!, w!], data: nchw } }, {
      metadata: { format: 'pt', content: 'sdlab latents (diffusion space: posterior mean × scaling_factor), NCHW', scaling_factor: String(sf), source: path.basename(file) },
    });
    // One small picture per latent channel (each stretched to its own min..max), and the round trip.
    const channelsPics: FloatImage[] = [];
    for (let k = 0; k < c!; k++) {
      const plane = nchw.subarray(k * h! * w!, (k + 1) * h! * w!);
      let lo = Infinity;
      let hi = -Infinity;
      for (const v of plane) (lo = Math.min(lo, v)), (hi = Math.max(hi, v));
      channelsPics.push({ data: Float32Array.from(plane, (v) => (hi > lo ? (v - lo) / (hi - lo) : 0.5)), height: h!, width: w! });
    }
    await saveImageGrid(`${base}.latents.png`, channelsPics, { cols: c!, scale: Math.max(1, Math.round(64 / w!)), colLabels: channelsPics.map((_, k) => `c${k}`) });
    await saveImageGrid(`${base}.roundtrip.png`, [img, back], { cols: 2, scale: 4, colLabels: ['in', 'out'] });
    res.files.push(`${base}.safetensors`);
    res.latents.push({ shape: [1, c!, h!, w!], data: nchw });
    res.psnr.push(psnr(img.data, back.data));
  }
  return res;
}

// ---------------------------------------------------------------------------------------------
// decode

export interface DecodeOptions extends VaeSource {
  inputs: string[];
  out: string;
  /** Pixel scale of the written PNGs. */
  scale: number;
}

/** Reads the latents tensor of a file: "latents", or its only tensor. NCHW. */
export function readLatents(file: string): { shape: number[]; data: Float32Array } {
  const tensors = readSafetensors(file);
  const t = tensors.get('latents') ?? (tensors.size === 1 ? [...tensors.values()][0] : undefined);
  if (!t) throw new UsageError(`${file}: no tensor named "latents" (found ${[...tensors.keys()].slice(0, 5).join(', ') || 'none'}).`);
  if (t.shape.length !== 4 && t.shape.length !== 3) throw new UsageError(`${file}: latents must be [N, C, h, w] or [C, h, w], got [${t.shape.join(', ')}].`);
  return { shape: t.shape.length === 3 ? [1, ...t.shape] : t.shape, data: t.data };
}

export async function runDecode(o: DecodeOptions): Promise<{ files: string[]; images: FloatImage[] }> {
  check(o.inputs.length > 0, 'decode: give at least one .safetensors latents file.');
  const { vae } = loadRunVae(o);
  const files: string[] = [];
  const images: FloatImage[] = [];
  for (const file of o.inputs) {
    const lat = readLatents(file);
    const [n, c, h, w] = lat.shape as [number, number, number, number];
    if (c !== vae.config.latent_channels) {
      throw new UsageError(`${file}: latents have ${c} channels but the VAE expects ${vae.config.latent_channels} (shape [N, C, h, w]).`);
    }
    const decoded = tf.tidy(() => {
      const z = tf.div(tf.transpose(tf.tensor4d(lat.data, [n, c, h, w]), [0, 2, 3, 1]), vae.scalingFactor) as tf.Tensor4D;
      return vae.decode(z);
    });
    const pics = toUnitImages(decoded);
    decoded.dispose();
    for (let i = 0; i < n; i++) {
      const target = path.join(o.out, n === 1 ? `${stem(file)}.png` : `${stem(file)}_${i}.png`);
      await saveSingleImage(target, pics[i], o.scale);
      files.push(target);
      images.push(pics[i]);
    }
  }
  return { files, images };
}

// ---------------------------------------------------------------------------------------------
// interpolate

export interface InterpolateOptions extends VaeSource {
  out: string;
  /** Two PNG files (one row); otherwise rows from `pairs` of held-out digits. */
  images?: string[];
  /** Digit classes, e.g. [[0, 6], [3, 8]]. */
  pairs: Array<[number, number]>;
  /** Points per row, ends included. */
  steps: number;
  mode: 'lerp' | 'slerp';
  seed: number;
  scale: number;
  pad: boolean;
  /** IDX directory for the held-out digits; undefined = embedded MNIST. */
  data?: string;
}

/** Points between a and b: t = i/(steps-1); lerp, or slerp on the flattened vectors. */
export function interpolateLatents(a: Float32Array, b: Float32Array, steps: number, mode: 'lerp' | 'slerp'): Float32Array[] {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) (dot += a[i] * b[i]), (na += a[i] * a[i]), (nb += b[i] * b[i]);
  const omega = Math.acos(Math.min(1, Math.max(-1, dot / Math.sqrt(na * nb || 1))));
  const out: Float32Array[] = [];
  for (let s = 0; s < steps; s++) {
    const t = steps === 1 ? 0 : s / (steps - 1);
    // slerp degenerates to lerp for (nearly) parallel vectors.
    const [ca, cb] = mode === 'slerp' && Math.sin(omega) > 1e-6 ? [Math.sin((1 - t) * omega) / Math.sin(omega), Math.sin(t * omega) / Math.sin(omega)] : [1 - t, t];
    out.push(Float32Array.from(a, (v, i) => ca * v + cb * b[i]));
  }
  return out;
}

export async function runInterpolate(o: InterpolateOptions): Promise<{ file: string; rows: string[]; grid: FloatImage[] }> {
  check(o.steps >= 2, `--steps: expected at least 2, got ${o.steps}.`);
  const { vae } = loadRunVae(o);
  const channels = vae.config.in_channels === 3 ? 3 : 1;
  const size = vae.config.sample_size;
  let ends: Array<[FloatImage, FloatImage]>;
  let rows: string[];
  if (o.images && o.images.length > 0) {
    check(o.images.length === 2, `interpolate: give exactly two PNG files (got ${o.images.length}).`);
    const [a, b] = o.images.map((f) => {
      const img = readPngImage(f, channels);
      return o.pad ? padImage(img, size) : img;
    }) as [FloatImage, FloatImage];
    ends = [[a, b]];
    rows = [`${stem(o.images[0])}-${stem(o.images[1])}`.slice(0, 12)];
  } else {
    check(channels === 1, 'interpolate: held-out digits need a 1-channel VAE; pass two PNG files instead.');
    const { val } = vaeData({ data: o.data, size });
    const rng = new Random(o.seed);
    const px = val.height * val.width;
    const pick = (digit: number): FloatImage => {
      const idx: number[] = [];
      for (let i = 0; i < val.n; i++) if (val.labels[i] === digit) idx.push(i);
      if (!idx.length) throw new UsageError(`--pairs: no held-out digit of class ${digit} in the data.`);
      const i = rng.pick(idx);
      return { data: val.images.subarray(i * px, (i + 1) * px), height: val.height, width: val.width, channels: 1 };
    };
    ends = o.pairs.map(([a, b]) => [pick(a), pick(b)]);
    rows = o.pairs.map(([a, b]) => `${a}-${b}`);
  }
  const { height: H, width: W } = ends[0][0];
  checkSize(vae, H, W, 'interpolate');
  const grid: FloatImage[] = [];
  for (const [a, b] of ends) {
    const means = tf.tidy(() => vae.encode(toSignedBatch([a, b], channels)).mean);
    const [, h, w, c] = means.shape;
    const flat = means.dataSync() as Float32Array;
    means.dispose();
    const per = h * w * c;
    const points = interpolateLatents(flat.slice(0, per), flat.slice(per), o.steps, o.mode);
    const decoded = tf.tidy(() => {
      const z = tf.tensor4d(concat(points), [o.steps, h, w, c]);
      return vae.decode(z);
    });
    grid.push(...toUnitImages(decoded));
    decoded.dispose();
  }
  const file = path.join(o.out, 'interpolation.png');
  await saveImageGrid(file, grid, {
    cols: o.steps,
    scale: o.scale,
    rowLabels: rows,
    title: `${o.mode} between latents`,
  });
  return { file, rows, grid };
}

function concat(arrays: Float32Array[]): Float32Array {
  const out = new Float32Array(arrays.reduce((n, a) => n + a.length, 0));
  let o = 0;
  for (const a of arrays) out.set(a, o), (o += a.length);
  return out;
}

// ---------------------------------------------------------------------------------------------
// CLI

/** "0-6,3-8" → [[0, 6], [3, 8]]. */
function digitPairs(value: string): Array<[number, number]> {
  const pairs = value.split(',').filter((s) => s.trim()).map((s) => {
    const m = /^\s*(\d)\s*-\s*(\d)\s*$/.exec(s);
    if (!m) throw new InvalidArgumentError(`expected digit pairs like "0-6,3-8", got "${s}".`);
    return [Number(m[1]), Number(m[2])] as [number, number];
  });
  if (!pairs.length) throw new InvalidArgumentError('expected at least one digit pair like "3-8".');
  return pairs;
}

const BACKEND_HELP = 'auto|cuda|tensorflow|native|cpu';

export function register(program: Command): void {
  program
    .command('encode')
    .description('encode PNG images to latents (safetensors, NCHW, × scaling_factor), with latent-channel and round-trip pictures')
    .argument('<images...>', 'PNG files')
    .option('--run <dir>', 'run directory whose vae/ to use', 'runs/default')
    .option('--vae <dir>', 'a diffusers AutoencoderKL directory (instead of <run>/vae)')
    .option('--out <dir>', 'output directory', 'out/encode')
    .option('--no-pad', 'do not pad images smaller than the VAE sample_size')
    .option('--backend <name>', BACKEND_HELP, process.env.SDLAB_BACKEND ?? 'auto')
    .action(async (images: string[], opts: { run: string; vae?: string; out: string; pad: boolean; backend: string }) => {
      await selectBackend(opts.backend);
      const res = await runEncode({ inputs: images, out: opts.out, run: opts.run, vae: opts.vae, pad: opts.pad });
      res.files.forEach((f, i) => {
        const [, c, h, w] = res.latents[i].shape;
        console.log(`${f}: latents ${c}×${h}×${w} (× scaling_factor ${res.scalingFactor.toPrecision(5)}), round-trip PSNR ${res.psnr[i].toFixed(1)} dB`);
      });
    });

  program
    .command('decode')
    .description('decode latents (.safetensors from `sdlab encode` or a pipeline) to PNG images')
    .argument('<latents...>', '.safetensors files holding "latents" [N, C, h, w]')
    .option('--run <dir>', 'run directory whose vae/ to use', 'runs/default')
    .option('--vae <dir>', 'a diffusers AutoencoderKL directory (instead of <run>/vae)')
    .option('--out <dir>', 'output directory', 'out/decode')
    .option('--scale <n>', 'pixel scale of the PNGs', int(1, 32), 1)
    .option('--backend <name>', BACKEND_HELP, process.env.SDLAB_BACKEND ?? 'auto')
    .action(async (inputs: string[], opts: { run: string; vae?: string; out: string; scale: number; backend: string }) => {
      await selectBackend(opts.backend);
      const res = await runDecode({ inputs, out: opts.out, run: opts.run, vae: opts.vae, scale: opts.scale });
      for (const f of res.files) console.log(f);
    });

  program
    .command('interpolate')
    .description('decode a grid of points between two digits\' latents (held-out digits of --pairs, or two PNGs)')
    .argument('[images...]', 'two PNG files (default: held-out digits of --pairs)')
    .option('--run <dir>', 'run directory whose vae/ to use', 'runs/default')
    .option('--vae <dir>', 'a diffusers AutoencoderKL directory (instead of <run>/vae)')
    .option('--out <dir>', 'output directory', 'out/interpolate')
    .option('--pairs <list>', 'digit classes per row, e.g. 0-6,1-7,3-8', digitPairs, digitPairs('0-6,1-7,3-8,4-9,2-5'))
    .option('--steps <n>', 'points per row (ends included)', int(2, 64), 10)
    .option('--mode <mode>', 'lerp | slerp', oneOf(['lerp', 'slerp'] as const), 'lerp')
    .option('--seed <n>', 'which held-out digits to pick', int(0), 0)
    .option('--scale <n>', 'pixel scale of the picture', int(1, 16), 2)
    .option('--data <dir>', 'IDX directory for the held-out digits (default: embedded MNIST)')
    .option('--no-pad', 'do not pad PNGs smaller than the VAE sample_size')
    .option('--backend <name>', BACKEND_HELP, process.env.SDLAB_BACKEND ?? 'auto')
    .action(async (images: string[], opts: Omit<InterpolateOptions, 'images'> & { backend: string }) => {
      await selectBackend(opts.backend);
      const res = await runInterpolate({ ...opts, images });
      console.log(`${res.file}: ${res.rows.length} row(s) × ${opts.steps} steps (${opts.mode})`);
    });
}

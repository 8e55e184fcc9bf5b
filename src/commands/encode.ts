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
 * sample_size are padded (black) onto its canvas unless --no-pad — a 28×28 MNIST PNG where the
 * run's vae/canvas.json says (src/data/canvas.ts) — so 28×28 digits and 32×32 padded ones are
 * both accepted; the round trip is reported at the input's own size.
 *
 * decode and interpolate write digits at the data's own size (the VAE's 32×32 output cropped to
 * 28×28), or the VAE's canvas with --canvas padded.
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
import { selectBackend, BACKEND_HELP } from '../backend/index.ts';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.ts';
import { requireFinite } from '../sample/pipeline.ts';
import { UsageError, check } from '../util/errors.ts';
import { checkOutputDir } from '../util/fs.ts';
import { firstNonFinite } from '../util/finite.ts';
import { MAX_DECODE_IMAGES, MAX_IMAGE_PIXELS, MAX_LATENT_PIXELS } from '../util/limits.ts';
import { int, oneOf } from '../util/options.ts';
import { Random } from '../util/random.ts';
import { readPngSize } from '../io/png.ts';
import { type FloatImage, renderGrid, savePng, saveImageGrid } from '../viz/index.ts';
import { vaeData } from '../train/vae.ts';
import { denormalize, toSigned } from '../data/pixels.ts';
import { readPngImage } from '../data/png.ts';
import { CANVAS_MODES, type Canvas, type CanvasMode, cropPixels, padPixels, placement, toCanvasMode, vaeCanvas } from '../data/canvas.ts';

// ---------------------------------------------------------------------------------------------
// Shared helpers

export interface VaeSource {
  /** Run directory; the VAE is <run>/vae unless `vae` is given. */
  run?: string;
  vae?: string;
}

/** Loads the VAE named by --vae, or <run>/vae, with its canvas (the data's own size; `note` when inferred). */
export function loadRunVae(src: VaeSource): { vae: AutoencoderKL; dir: string; canvas: Canvas; note?: string } {
  const dir = src.vae ?? path.join(src.run ?? 'runs/default', 'vae');
  if (!src.vae && !fs.existsSync(path.join(dir, 'config.json'))) {
    throw new UsageError(`no trained VAE in ${dir}: run \`npx sdlab train vae --run ${src.run ?? 'runs/default'}\` first, or pass --vae DIR.`);
  }
  const vae = AutoencoderKL.fromPretrained(dir);
  try {
    const { canvas, note } = vaeCanvas(dir, { sampleSize: vae.config.sample_size, inChannels: vae.config.in_channels });
    return { vae, dir, canvas, note };
  } catch (err) {
    vae.dispose();
    throw err;
  }
}

/**
 * Puts an HWC image on the VAE's canvas with zeros around it: an image of the data's own size
 * (28×28) where the run's record says, any other smaller one centred (src/data/canvas.ts);
 * images as large as the canvas, or larger in either direction, pass through.
 */
export function padImage(img: FloatImage & { channels: 1 | 3 }, canvas: Canvas): FloatImage & { channels: 1 | 3 } {
  const size = canvas.size;
  if (img.height > size || img.width > size || (img.height === size && img.width === size)) return img;
  return { data: padPixels(img.data, img.height, img.width, canvas, { channels: img.channels }), height: size, width: size, channels: img.channels };
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
  checkLatentSize(vae, h, w, what);
}

/**
 * Refuses an h×w image whose latents would exceed MAX_LATENT_PIXELS (util/limits.ts): the VAE's
 * attention makes its time grow with their square. Checked before decoding or encoding anything.
 */
function checkLatentSize(vae: AutoencoderKL, h: number, w: number, what: string): void {
  const f = vae.downsampleFactor;
  const lh = Math.ceil(h / f);
  const lw = Math.ceil(w / f);
  check(
    lh * lw <= MAX_LATENT_PIXELS,
    `${what}: ${h}×${w} pixels make ${lh}×${lw} latents, over sdlab's limit of ${MAX_LATENT_PIXELS} latent pixels (${Math.sqrt(MAX_LATENT_PIXELS)}×${Math.sqrt(MAX_LATENT_PIXELS)}; ${Math.sqrt(MAX_LATENT_PIXELS) * f} px a side for this VAE).`,
  );
}

/**
 * vae.decode in batches of at most MAX_LATENT_PIXELS latent pixels (a whole batch at once would
 * hold every image's activations together), checked for NaN/Inf (requireFinite) before anything
 * is drawn from it.
 */
function decodeBatched(vae: AutoencoderKL, z: tf.Tensor4D, what: string): tf.Tensor4D {
  const [n, h, w] = z.shape;
  const per = Math.max(1, Math.floor(MAX_LATENT_PIXELS / (h * w)));
  const out = tf.tidy(() => {
    if (n <= per) return vae.decode(z);
    const parts: tf.Tensor4D[] = [];
    for (let i = 0; i < n; i += per) parts.push(vae.decode(tf.slice(z, [i, 0, 0, 0], [Math.min(per, n - i), -1, -1, -1]) as tf.Tensor4D));
    return tf.concat(parts) as tf.Tensor4D;
  });
  try {
    requireFinite(out, `${what}: the decoded images`, [['VAE', vae]], 'the latents are finite, so the VAE decoder overflowed (were they made by this VAE?)');
  } catch (err) {
    out.dispose();
    throw err;
  }
  return out;
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
  /** Round-trip PSNR (dB) of each input: decode(encode(x)) vs x, in [0, 1], at the input's own size. */
  psnr: number[];
  /** E.g. that the VAE's canvas was inferred. */
  notes: string[];
}

export async function runEncode(o: EncodeOptions): Promise<EncodeResult> {
  check(o.inputs.length > 0, 'encode: give at least one PNG file.');
  checkOutputDir('--out', o.out);
  // Every input's size, from its header, before the VAE loads or anything is decoded.
  const sizes = o.inputs.map(readPngSize);
  const { vae, canvas, note } = loadRunVae(o);
  const channels = vae.config.in_channels === 3 ? 3 : 1;
  const sf = vae.scalingFactor;
  const pad = o.pad ? vae.config.sample_size : 0;
  o.inputs.forEach((file, i) => checkLatentSize(vae, Math.max(sizes[i].height, pad), Math.max(sizes[i].width, pad), file));
  const res: EncodeResult = { files: [], latents: [], scalingFactor: sf, psnr: [], notes: note ? [note] : [] };
  for (const file of o.inputs) {
    const input = readPngImage(file, channels);
    const img = o.pad ? padImage(input, canvas) : input;
    checkSize(vae, img.height, img.width, file);
    const { latentsNhwc, recon } = tf.tidy(() => {
      const x = toSignedBatch([img], channels);
      const mean = vae.encode(x).mean;
      return { latentsNhwc: tf.keep(tf.mul(mean, sf)), recon: tf.keep(vae.decode(mean)) };
    });
    try {
      requireFinite(latentsNhwc, `${file}: the encoded latents`, [['VAE', vae]], 'the image is finite, so the VAE encoder overflowed');
      requireFinite(recon, `${file}: the round trip's decoded image`, [['VAE', vae]], 'the latents are finite, so the VAE decoder overflowed');
    } catch (err) {
      tf.dispose([latentsNhwc, recon]);
      throw err;
    }
    const [, h, w, c] = latentsNhwc.shape;
    const nchw = tf.tidy(() => tf.transpose(latentsNhwc, [0, 3, 1, 2]).dataSync() as Float32Array);
    // The round trip at the input's own size: a padded input is cropped back (its border is not the digit).
    const decoded = toUnitImages(recon as tf.Tensor4D)[0];
    const back: FloatImage = img === input ? decoded : { ...decoded, data: cropPixels(decoded.data, placement(canvas, input.height, input.width), channels), height: input.height, width: input.width };
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
    await saveImageGrid(`${base}.roundtrip.png`, [input, back], { cols: 2, scale: 4, colLabels: ['in', 'out'] });
    res.files.push(`${base}.safetensors`);
    res.latents.push({ shape: [1, c!, h!, w!], data: nchw });
    res.psnr.push(psnr(input.data, back.data));
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
  /** 'native' (default): the data's own size (28×28 digits); 'padded': the VAE's canvas. */
  canvas?: CanvasMode;
}

/**
 * The latents tensor of a file — "latents", or its only tensor — as [N, C, h, w], checked from
 * the header alone (rank, h × w within MAX_LATENT_PIXELS) before `read()` loads its values
 * (which must be finite).
 */
export function openLatents(file: string): { shape: [number, number, number, number]; read: () => Float32Array } {
  const st = SafetensorsFile.open(file);
  const name = st.entries.has('latents') ? 'latents' : st.entries.size === 1 ? st.names()[0] : undefined;
  if (name === undefined) throw new UsageError(`${file}: no tensor named "latents" (found ${st.names().slice(0, 5).join(', ') || 'none'}).`);
  const s = st.entries.get(name)!.shape;
  if (s.length !== 4 && s.length !== 3) throw new UsageError(`${file}: latents must be [N, C, h, w] or [C, h, w], got [${s.join(', ')}].`);
  if (s.some((d) => d < 1)) throw new UsageError(`${file}: latents [${s.join(', ')}] are empty; every dimension of [N, C, h, w] must be at least 1.`);
  const shape = (s.length === 3 ? [1, ...s] : [...s]) as [number, number, number, number];
  const [n, , h, w] = shape;
  if (n > MAX_DECODE_IMAGES) {
    throw new UsageError(`${file}: latents of ${n} images, over sdlab's limit of ${MAX_DECODE_IMAGES} images per latents file for \`decode\` (one PNG each); split the file.`);
  }
  if (h * w > MAX_LATENT_PIXELS) {
    throw new UsageError(`${file}: latents of ${h}×${w}, over sdlab's limit of ${MAX_LATENT_PIXELS} latent pixels (${Math.sqrt(MAX_LATENT_PIXELS)}×${Math.sqrt(MAX_LATENT_PIXELS)}) per image.`);
  }
  return {
    shape,
    read: () => {
      const data = st.read(name).data;
      const bad = firstNonFinite(data);
      if (bad >= 0) throw new UsageError(`${file}: the latents hold NaN/Inf values (${data[bad]} at index ${bad}).`);
      return data;
    },
  };
}

export async function runDecode(o: DecodeOptions): Promise<{ files: string[]; images: FloatImage[]; notes: string[] }> {
  check(o.inputs.length > 0, 'decode: give at least one .safetensors latents file.');
  checkOutputDir('--out', o.out);
  // Every input's shape, from its header, before the VAE loads or any values are read.
  const inputs = o.inputs.map((file) => ({ file, lat: openLatents(file) }));
  const { vae, canvas, note } = loadRunVae(o);
  const files: string[] = [];
  const images: FloatImage[] = [];
  for (const { file, lat } of inputs) {
    const [n, c, h, w] = lat.shape;
    if (c !== vae.config.latent_channels) {
      throw new UsageError(`${file}: latents have ${c} channels but the VAE expects ${vae.config.latent_channels} (shape [N, C, h, w]).`);
    }
    const data = lat.read();
    const z = tf.tidy(() => tf.div(tf.transpose(tf.tensor4d(data, [n, c, h, w]), [0, 2, 3, 1]), vae.scalingFactor) as tf.Tensor4D);
    let decoded: tf.Tensor4D;
    try {
      decoded = decodeBatched(vae, z, file);
    } finally {
      z.dispose();
    }
    const pics = toUnitImages(decoded).map((p) => toCanvasMode(p, canvas, o.canvas ?? 'native'));
    decoded.dispose();
    for (let i = 0; i < n; i++) {
      const target = path.join(o.out, n === 1 ? `${stem(file)}.png` : `${stem(file)}_${i}.png`);
      await saveSingleImage(target, pics[i], o.scale);
      files.push(target);
      images.push(pics[i]);
    }
  }
  return { files, images, notes: note ? [note] : [] };
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
  /** 'native' (default): cells at the data's own size (28×28 digits); 'padded': the VAE's canvas. */
  canvas?: CanvasMode;
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

export async function runInterpolate(o: InterpolateOptions): Promise<{ file: string; rows: string[]; grid: FloatImage[]; notes: string[] }> {
  check(o.steps >= 2, `--steps: expected at least 2, got ${o.steps}.`);
  checkOutputDir('--out', o.out);
  const sizes = o.images?.map(readPngSize); // from the headers, before the VAE loads
  const { vae, canvas, note } = loadRunVae(o);
  const channels = vae.config.in_channels === 3 ? 3 : 1;
  const size = vae.config.sample_size;
  let ends: Array<[FloatImage, FloatImage]>;
  let rows: string[];
  if (o.images && o.images.length > 0) {
    check(o.images.length === 2, `interpolate: give exactly two PNG files (got ${o.images.length}).`);
    const pad = o.pad ? size : 0;
    o.images.forEach((f, i) => checkLatentSize(vae, Math.max(sizes![i].height, pad), Math.max(sizes![i].width, pad), f));
    const [a, b] = o.images.map((f) => {
      const img = readPngImage(f, channels);
      return o.pad ? padImage(img, canvas) : img;
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
  // The decoded row (and the grid holding every row) grows with --steps × the image.
  check(
    o.steps * H * W <= MAX_IMAGE_PIXELS,
    `interpolate: ${o.steps} steps of ${H}×${W} images make a ${((o.steps * H * W) / 2 ** 20).toFixed(1)} Mpx row, over sdlab's limit of ${MAX_IMAGE_PIXELS / 2 ** 20} Mpx; use fewer --steps.`,
  );
  const grid: FloatImage[] = [];
  for (const [a, b] of ends) {
    const means = tf.tidy(() => vae.encode(toSignedBatch([a, b], channels)).mean);
    const [, h, w, c] = means.shape;
    const flat = means.dataSync() as Float32Array;
    means.dispose();
    const per = h * w * c;
    const points = interpolateLatents(flat.slice(0, per), flat.slice(per), o.steps, o.mode);
    const z = tf.tensor4d(concat(points), [o.steps, h, w, c]);
    let decoded: tf.Tensor4D;
    try {
      decoded = decodeBatched(vae, z, 'interpolate');
    } finally {
      z.dispose();
    }
    grid.push(...toUnitImages(decoded).map((p) => toCanvasMode(p, canvas, o.canvas ?? 'native')));
    decoded.dispose();
  }
  const file = path.join(o.out, 'interpolation.png');
  await saveImageGrid(file, grid, {
    cols: o.steps,
    scale: o.scale,
    rowLabels: rows,
    title: `${o.mode} between latents`,
  });
  return { file, rows, grid, notes: note ? [note] : [] };
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

const CANVAS_HELP = "native: the data's own size (28×28 digits) | padded: the VAE's canvas (32×32)";

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
      for (const n of res.notes) console.log(`note: ${n}`);
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
    .option('--canvas <size>', CANVAS_HELP, oneOf(CANVAS_MODES), 'native')
    .option('--backend <name>', BACKEND_HELP, process.env.SDLAB_BACKEND ?? 'auto')
    .action(async (inputs: string[], opts: { run: string; vae?: string; out: string; scale: number; canvas: CanvasMode; backend: string }) => {
      await selectBackend(opts.backend);
      const res = await runDecode({ inputs, out: opts.out, run: opts.run, vae: opts.vae, scale: opts.scale, canvas: opts.canvas });
      for (const n of res.notes) console.log(`note: ${n}`);
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
    .option('--canvas <size>', CANVAS_HELP, oneOf(CANVAS_MODES), 'native')
    .option('--backend <name>', BACKEND_HELP, process.env.SDLAB_BACKEND ?? 'auto')
    .action(async (images: string[], opts: Omit<InterpolateOptions, 'images'> & { backend: string }) => {
      await selectBackend(opts.backend);
      const res = await runInterpolate({ ...opts, images });
      for (const n of res.notes) console.log(`note: ${n}`);
      console.log(`${res.file}: ${res.rows.length} row(s) × ${opts.steps} steps (${opts.mode})`);
    });
}

/**
 * Reading generated samples for `sdlab eval`: which image, and which digit its prompt asked for.
 *
 * Two inputs are accepted:
 *
 * 1. A directory of PNGs plus `samples.json` (what `sdlab sample` writes):
 *
 *      [ {"file": "0000.png", "prompt": "a handwritten seven", "digit": 7}, ... ]
 *
 *    - file:   PNG path relative to the directory (one digit per file, 32×32 or 28×28;
 *              gray, RGB or RGBA; white ink on black like MNIST; 28×28 is padded to 32×32)
 *    - digit:  the digit the prompt asked for, an integer 0..9, or null for an unconditional
 *              sample (counts for FID and the histogram, not for conditional accuracy)
 *    - prompt: the prompt text (optional; informational)
 *    - scheduler, steps, guidance, eta, guidance_interval: how it was sampled (optional; `sdlab sample` writes them,
 *              and eval reports them when every entry agrees)
 *    `manifest.json` in the same format is accepted too. With neither, each PNG's name must
 *    start with its digit and a separator: `7_0003.png`, `7-a.png`.
 *
 * 2. A safetensors file with `images` [N, 32, 32, 1] (or [N, 32, 32], or 28×28) and `digits` [N]
 *    (integers 0..9, −1 = unconditional). Pixel range from the metadata key `range`: "signed"
 *    ([-1, 1], the default: what a decoder outputs) or "unit" ([0, 1]).
 *
 * Images come back as n × 32 × 32 floats in [-1, 1] (values outside are clipped).
 */
import fs from 'node:fs';
import path from 'node:path';
import { readPng } from '../io/png.ts';
import { SafetensorsFile } from '../io/safetensors.ts';
import { UsageError, check } from '../util/errors.ts';
import { toSigned, toUnit } from '../data/pixels.ts';
import { readJsonFile } from '../util/json.ts';

export const SAMPLES_MANIFEST = 'samples.json';
export const SIZE = 32;

export interface SampleEntry {
  file: string;
  prompt?: string | null;
  digit: number | null;
  /** How it was sampled, when samples.json says (what `sdlab sample` writes). */
  sampling?: SampledWith;
}

/** The sampling settings samples.json records (keys scheduler, steps, guidance, eta, guidance_interval of each entry). */
export interface SampledWith {
  scheduler: string;
  steps: number;
  guidance: number;
  eta: number;
  /** [lo, hi] or null (every step; also when the entry does not say). */
  guidanceInterval: [number, number] | null;
}

export interface Samples {
  /** n × 32 × 32 pixels in [-1, 1]. */
  images: Float32Array;
  /** The prompted digit per image, −1 when the sample was unconditional. */
  digits: Int32Array;
  /** Where each image came from (file name, or `file[i]` for safetensors). */
  names: string[];
  prompts: (string | null)[];
  n: number;
  /** Describes the input for logs and eval.json. */
  source: string;
  /** The settings every entry of samples.json was sampled with; 'mixed' when they differ; null (or absent) when not recorded. */
  sampling?: SampledWith | 'mixed' | null;
}

/** Loads samples from a directory (PNGs) or a .safetensors file. */
export function loadSamples(p: string): Samples {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(p);
  } catch {
    throw new UsageError(`--samples ${p}: no such file or directory (expected a directory of PNGs with ${SAMPLES_MANIFEST}, or a .safetensors file).`);
  }
  return stat.isDirectory() ? loadSamplesDir(p) : loadSamplesSafetensors(p);
}

/** Copies an h×w image of [0, 1] values into a 32×32 [-1, 1] slot, centred (28 → 2 px border). */
function placeUnit(src: ArrayLike<number>, h: number, w: number, out: Float32Array, offset: number): void {
  const top = (SIZE - h) >> 1, left = (SIZE - w) >> 1;
  out.fill(-1, offset, offset + SIZE * SIZE);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const v = src[y * w + x];
      out[offset + (y + top) * SIZE + x + left] = v >= 1 ? 1 : v > 0 ? toSigned(v) : -1; // NaN → background
    }
  }
}

function checkSize(h: number, w: number, where: string): void {
  check((h === 32 && w === 32) || (h === 28 && w === 28), `${where}: expected a 32×32 (or 28×28) digit, got ${h}×${w}; save one digit per file, not a grid.`);
}

/** Decodes one PNG into 32×32 values in [-1, 1] (gray = mean of RGB, times alpha). */
export function readDigitPng(file: string): Float32Array {
  const png = readPng(file); // within the size limits, one line on any failure
  checkSize(png.height, png.width, file);
  const gray = new Float32Array(png.width * png.height);
  for (let i = 0; i < gray.length; i++) {
    const o = i * 4;
    gray[i] = ((png.data[o] + png.data[o + 1] + png.data[o + 2]) / (3 * 255)) * (png.data[o + 3] / 255);
  }
  const out = new Float32Array(SIZE * SIZE);
  placeUnit(gray, png.height, png.width, out, 0);
  return out;
}

function parseDigit(v: unknown, where: string): number {
  if (v === null || v === undefined) return -1;
  check(typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 9, `${where}: "digit" must be an integer 0..9 or null, got ${JSON.stringify(v)}.`);
  return v;
}

/** Reads samples.json (or manifest.json) from `dir`; null when there is neither. */
export function readManifest(dir: string): { file: string; entries: SampleEntry[] } | null {
  for (const name of [SAMPLES_MANIFEST, 'manifest.json']) {
    const file = path.join(dir, name);
    if (!fs.existsSync(file)) continue;
    const raw = readJsonFile(file, 'a JSON list of samples');
    check(Array.isArray(raw), `${file}: expected a JSON array of {"file", "prompt", "digit"} objects.`);
    const entries = raw.map((e, i): SampleEntry => {
      const where = `${file} entry ${i}`;
      check(typeof e === 'object' && e !== null && !Array.isArray(e), `${where}: expected an object {"file", "prompt", "digit"}.`);
      const o = e as Record<string, unknown>;
      check(typeof o.file === 'string' && o.file !== '', `${where}: "file" must be a PNG file name relative to ${dir}.`);
      check(o.prompt === undefined || o.prompt === null || typeof o.prompt === 'string', `${where}: "prompt" must be a string.`);
      const digit = parseDigit(o.digit, where);
      const num = (v: unknown) => typeof v === 'number' && Number.isFinite(v);
      // Older sdlab sample sheets (and other tools) do not record these; they are informational.
      const iv = o.guidance_interval;
      const interval = Array.isArray(iv) && iv.length === 2 && iv.every(num) ? ([iv[0], iv[1]] as [number, number]) : null;
      const sampling = typeof o.scheduler === 'string' && num(o.steps) && num(o.guidance) && num(o.eta)
        ? { scheduler: o.scheduler, steps: o.steps as number, guidance: o.guidance as number, eta: o.eta as number, guidanceInterval: interval }
        : undefined;
      return { file: o.file, prompt: (o.prompt as string | undefined) ?? null, digit: digit < 0 ? null : digit, sampling };
    });
    return { file, entries };
  }
  return null;
}

/** Loads a directory of PNG samples (see the file comment for the manifest format). */
export function loadSamplesDir(dir: string): Samples {
  const manifest = readManifest(dir);
  let entries: SampleEntry[];
  let source: string;
  if (manifest) {
    entries = manifest.entries;
    source = manifest.file;
  } else {
    const pngs = fs.readdirSync(dir).filter((f) => f.toLowerCase().endsWith('.png')).sort();
    check(pngs.length > 0, `--samples ${dir}: no ${SAMPLES_MANIFEST} and no PNG files (expected ${SAMPLES_MANIFEST} = [{"file", "prompt", "digit"}], or PNGs named like 7_0001.png).`);
    entries = pngs.map((f) => {
      const m = /^([0-9])[_\-. ]/.exec(f);
      check(m, `--samples ${dir}: no ${SAMPLES_MANIFEST}, and "${f}" does not start with its digit (expected names like 7_0001.png).`);
      return { file: f, digit: Number(m[1]) };
    });
    source = `${dir} (digits from file names)`;
  }
  check(entries.length > 0, `${source}: no samples listed.`);
  const n = entries.length;
  const images = new Float32Array(n * SIZE * SIZE);
  const digits = new Int32Array(n);
  entries.forEach((e, i) => {
    images.set(readDigitPng(path.resolve(dir, e.file)), i * SIZE * SIZE);
    digits[i] = e.digit ?? -1;
  });
  return { images, digits, names: entries.map((e) => e.file), prompts: entries.map((e) => e.prompt ?? null), n, source, sampling: commonSampling(entries) };
}

/** The sampling settings all entries share; 'mixed' if they differ; null if any entry lacks them. */
function commonSampling(entries: SampleEntry[]): SampledWith | 'mixed' | null {
  const first = entries[0]?.sampling;
  if (!first || entries.some((e) => !e.sampling)) return null;
  const same = (a: SampledWith, b: SampledWith) =>
    a.scheduler === b.scheduler && a.steps === b.steps && a.guidance === b.guidance && a.eta === b.eta && String(a.guidanceInterval) === String(b.guidanceInterval);
  return entries.every((e) => same(e.sampling!, first)) ? first : 'mixed';
}

/** Loads samples from a safetensors file with `images` and `digits`. */
export function loadSamplesSafetensors(file: string): Samples {
  const st = SafetensorsFile.open(file);
  for (const key of ['images', 'digits']) {
    check(st.entries.has(key), `${file}: missing tensor "${key}" (expected images [N, 32, 32, 1] and digits [N]; found ${st.names().join(', ') || 'none'}).`);
  }
  const img = st.read('images');
  const dig = st.read('digits');
  const s = img.shape;
  check(
    (s.length === 4 && s[3] === 1) || s.length === 3,
    `${file}: "images" must be [N, 32, 32, 1] or [N, 32, 32], got [${s.join(', ')}].`,
  );
  const [n, h, w] = s as [number, number, number];
  checkSize(h, w, `${file} "images"`);
  check(dig.shape.length === 1 && dig.shape[0] === n, `${file}: "digits" must be [${n}] (one per image), got [${dig.shape.join(', ')}].`);
  const range = st.metadata.range ?? 'signed';
  check(range === 'signed' || range === 'unit', `${file}: metadata "range" must be "signed" ([-1, 1]) or "unit" ([0, 1]), got "${range}".`);
  const images = new Float32Array(n * SIZE * SIZE);
  const px = h * w;
  const unit = new Float32Array(px);
  for (let i = 0; i < n; i++) {
    for (let p = 0; p < px; p++) {
      const v = img.data[i * px + p];
      unit[p] = range === 'signed' ? toUnit(v) : v;
    }
    placeUnit(unit, h, w, images, i * SIZE * SIZE);
  }
  const digits = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const d = dig.data[i];
    check(d === -1 || (Number.isInteger(d) && d >= 0 && d <= 9), `${file}: digits[${i}] = ${d}; expected an integer 0..9, or -1 for an unconditional sample.`);
    digits[i] = d;
  }
  return {
    images, digits, n, source: `${file} (range ${range})`, sampling: null,
    names: Array.from({ length: n }, (_, i) => `images[${i}]`), prompts: new Array<string | null>(n).fill(null),
  };
}

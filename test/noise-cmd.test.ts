/**
 * `sdlab noise`: the forward process on real digits. Checks ᾱ against closed forms, that the
 * noise in x_t has std sqrt(1 - ᾱ_t) (so it grows with t), that the PNG strip and every GIF frame
 * hold exactly x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε (recomputed here in float64), and the CLI's exit
 * codes.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { PNG } from 'pngjs';
import { GifReader } from 'omggif';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { runNoise, DEFAULT_TIMESTEPS, type NoiseResult } from '../src/commands/noise.ts';
import { BETA_SCHEDULES } from '../src/schedule/index.ts';

const run = promisify(execFile);
const ROOT = path.resolve(__dirname, '..');
const to8 = (v: number) => Math.round(Math.min(1, Math.max(0, (v + 1) / 2)) * 255);

let tmp: string;
let res: NoiseResult;
const N = 3;
const FRAMES = 6;

beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-noise-'));
  res = await runNoise({
    out: path.join(tmp, 'inproc'),
    seed: 1,
    n: N,
    timesteps: DEFAULT_TIMESTEPS,
    schedules: [...BETA_SCHEDULES],
    betaStart: 0.00085,
    betaEnd: 0.012,
    frames: FRAMES,
    scale: 1,
  });
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** ᾱ from first principles in float64. */
function referenceAlphasCumprod(schedule: string, T = 1000, b0 = 0.00085, b1 = 0.012): number[] {
  const lin = (a: number, b: number) => Array.from({ length: T }, (_, i) => a + ((b - a) * i) / (T - 1));
  let betas: number[];
  if (schedule === 'linear') betas = lin(b0, b1);
  else if (schedule === 'scaled_linear') betas = lin(Math.sqrt(b0), Math.sqrt(b1)).map((r) => r * r);
  else {
    // Cosine schedule: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2), s = 0.008 (Nichol & Dhariwal).
    const f = (t: number) => Math.cos(((t / T + 0.008) / 1.008) * (Math.PI / 2)) ** 2;
    return Array.from({ length: T }, (_, t) => f(t + 1) / f(0));
  }
  const out: number[] = [];
  let acc = 1;
  for (const b of betas) out.push((acc *= 1 - b));
  return out;
}

describe('sdlab noise (in process)', () => {
  it('picks N different real digits', () => {
    expect(res.indices.length).toBe(N);
    expect(new Set(res.labels).size).toBe(N);
    expect([res.height, res.width]).toEqual([28, 28]);
    expect(Math.min(...res.x0)).toBe(-1);
    expect(Math.max(...res.x0)).toBe(1);
  });

  it('ᾱ_t of each schedule matches its closed form', () => {
    for (const s of BETA_SCHEDULES) {
      const got = res.alphasCumprod[s];
      const ref = referenceAlphasCumprod(s);
      expect(got.length).toBe(1000);
      // The cosine betas are capped at 0.999 near t = T, where the formula's ᾱ -> 0 anyway.
      for (let t = 0; t < (s === 'squaredcos_cap_v2' ? 990 : 1000); t++) {
        expect(Math.abs(got[t] - ref[t]), `${s} t=${t}`).toBeLessThan(2e-5 + 1e-4 * ref[t]);
      }
    }
  });

  it('the noise in x_t has std sqrt(1 - ᾱ_t), growing with t, the same ε at every t', () => {
    const px = N * 28 * 28;
    for (const s of BETA_SCHEDULES) {
      const ab = res.alphasCumprod[s];
      const stds: number[] = [];
      DEFAULT_TIMESTEPS.forEach((t, k) => {
        const xt = res.xt[s][k];
        expect(xt.length).toBe(px);
        const r = Array.from(xt, (v, i) => v - Math.sqrt(ab[t]) * res.x0[i]);
        const mean = r.reduce((a, v) => a + v, 0) / px;
        const std = Math.sqrt(r.reduce((a, v) => a + (v - mean) ** 2, 0) / px);
        const expected = Math.sqrt(1 - ab[t]);
        // 2352 Gaussian samples: the sample std is within ~3% of the truth.
        expect(std / expected, `${s} t=${t}`).toBeGreaterThan(0.95);
        expect(std / expected, `${s} t=${t}`).toBeLessThan(1.05);
        stds.push(std);
        // The residual is one fixed ε scaled: compare with t = 999's.
        if (expected > 0.1) {
          const last = res.xt[s].at(-1)!;
          const e999 = Math.sqrt(1 - ab[999]);
          for (let i = 0; i < px; i += 97) {
            expect(r[i] / expected).toBeCloseTo((last[i] - Math.sqrt(ab[999]) * res.x0[i]) / e999, 3);
          }
        }
      });
      for (let k = 1; k < stds.length; k++) expect(stds[k]).toBeGreaterThan(stds[k - 1]);
    }
  });

  it('the PNG strip holds x_t clipped to [0, 1] in the documented cells, and visibly noisier with t', () => {
    const png = PNG.sync.read(fs.readFileSync(res.files.strip));
    const L = res.stripLayout;
    expect([png.width, png.height]).toEqual([L.width, L.height]);
    expect(L.rows).toBe(N * BETA_SCHEDULES.length);
    expect(L.cols).toBe(DEFAULT_TIMESTEPS.length);
    let lo = 255;
    let hi = 0;
    const cell = (r: number, c: number) => {
      const { x, y } = L.cell(r, c);
      return Array.from({ length: 784 }, (_, p) => png.data[((y + Math.floor(p / 28)) * png.width + x + (p % 28)) * 4]);
    };
    for (let d = 0; d < N; d++) {
      BETA_SCHEDULES.forEach((s, si) => {
        const clean = cell(d * 3 + si, 0);
        let prevDiff = -1;
        DEFAULT_TIMESTEPS.forEach((_, k) => {
          const got = cell(d * 3 + si, k);
          const xt = res.xt[s][k].subarray(d * 784, (d + 1) * 784);
          for (let p = 0; p < 784; p++) {
            expect(got[p]).toBe(to8(xt[p]));
            lo = Math.min(lo, got[p]);
            hi = Math.max(hi, got[p]);
          }
          // Measured on the picture alone: the mean distance from the t=0 cell grows with t.
          const diff = got.reduce((a, v, p) => a + Math.abs(v - clean[p]), 0) / 784;
          if (k > 0) expect(diff).toBeGreaterThan(prevDiff);
          prevDiff = diff;
        });
      });
    }
    expect([lo, hi]).toEqual([0, 255]);
  });

  it('the GIF has one frame per t from 0 to 999 and each frame is sqrt(ᾱ)·x0 + sqrt(1-ᾱ)·ε', () => {
    const gif = new GifReader(fs.readFileSync(res.files.gif));
    expect(gif.numFrames()).toBe(FRAMES);
    expect(res.gifTimesteps).toEqual([0, 200, 400, 599, 799, 999]);
    const L = res.gifLayout;
    expect([gif.width, gif.height]).toEqual([L.width, L.height]);
    const rgba = new Uint8Array(gif.width * gif.height * 4);
    let off = 0;
    for (let f = 0; f < FRAMES; f++) {
      gif.decodeAndBlitFrameRGBA(f, rgba);
      const t = res.gifTimesteps[f];
      BETA_SCHEDULES.forEach((s, si) => {
        const ab = res.alphasCumprod[s][t];
        for (let d = 0; d < N; d++) {
          const { x, y } = L.cell(si, d);
          for (let p = 0; p < 784; p++) {
            const i = d * 784 + p;
            const want = to8(Math.sqrt(ab) * res.x0[i] + Math.sqrt(1 - ab) * res.noise[i]);
            const got = rgba[((y + Math.floor(p / 28)) * gif.width + x + (p % 28)) * 4];
            const e = Math.abs(got - want);
            expect(e).toBeLessThanOrEqual(1); // float32 vs float64 rounding at .5
            off += e;
          }
        }
      });
    }
    expect(off).toBeLessThan(50);
  });

  it('the same seed gives the same pictures; another seed other digits', async () => {
    const again = await runNoise({ out: path.join(tmp, 'again'), seed: 1, n: N, timesteps: [0, 500], schedules: ['linear'], betaStart: 0.00085, betaEnd: 0.012, frames: 2, scale: 1 });
    expect(again.indices).toEqual(res.indices);
    expect(Array.from(again.noise)).toEqual(Array.from(res.noise));
    const other = await runNoise({ out: path.join(tmp, 'other'), seed: 2, n: N, timesteps: [0, 500], schedules: ['linear'], betaStart: 0.00085, betaEnd: 0.012, frames: 2, scale: 1 });
    expect(other.indices).not.toEqual(res.indices);
  });
});

describe('sdlab noise (CLI)', () => {
  const cli = async (...args: string[]) => {
    try {
      const { stdout, stderr } = await run(process.execPath, [path.join(ROOT, 'bin/sdlab.mjs'), 'noise', ...args], { cwd: ROOT, env: { ...process.env, SDLAB_BACKEND: 'cpu' } });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };
  /** The lines of stderr that are not commander's "(run with --help for usage)" hint. */
  const errorLines = (stderr: string) => stderr.split('\n').filter((l) => l.trim() && !l.startsWith('(run with --help'));

  it('writes the strip, the GIF and the ᾱ plot and says where', async () => {
    const out = path.join(tmp, 'cli');
    const r = await cli('--out', out, '--n', '2', '--frames', '4', '--timesteps', '0,500,999', '--seed', '3');
    expect(r.code).toBe(0);
    for (const f of ['noise_strip.png', 'noise.gif', 'alphas_cumprod.png']) {
      expect(r.stdout).toContain(path.join(out, f));
      expect(fs.statSync(path.join(out, f)).size).toBeGreaterThan(100);
    }
    expect(fs.readdirSync(out).sort()).toEqual(['alphas_cumprod.png', 'noise.gif', 'noise_strip.png']); // no temp files left
    expect(new GifReader(fs.readFileSync(path.join(out, 'noise.gif'))).numFrames()).toBe(4);
    const png = PNG.sync.read(fs.readFileSync(path.join(out, 'noise_strip.png')));
    expect(png.width).toBeGreaterThan(3 * 56);
  });

  it('bad values exit with code 2 and one error line', async () => {
    const empty = fs.mkdtempSync(path.join(tmp, 'empty-'));
    const [n0, t5000, sched, data] = await Promise.all([
      cli('--n', '0', '--out', path.join(tmp, 'x')),
      cli('--timesteps', '5000', '--out', path.join(tmp, 'x')),
      cli('--schedules', 'linear,cosine', '--out', path.join(tmp, 'x')),
      cli('--data', empty, '--out', path.join(tmp, 'x')),
    ]);
    for (const [r, pattern] of [
      [n0, /--n .*expected an integer in \[1, 32\], got 0/],
      [t5000, /--timesteps .*expected an integer in \[0, 999\], got 5000/],
      [sched, /--schedules .*got "cosine"/],
      [data, /missing train-images-idx3-ubyte/],
    ] as const) {
      expect(r.code).toBe(2);
      const lines = errorLines(r.stderr);
      expect(lines.length, r.stderr).toBe(1);
      expect(lines[0]).toMatch(pattern);
      expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
    }
    expect(fs.existsSync(path.join(tmp, 'x'))).toBe(false);
  });
});

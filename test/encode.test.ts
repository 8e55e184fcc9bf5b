/**
 * `sdlab encode | decode | interpolate` against a small random AutoencoderKL saved to disk
 * (scaling_factor 0.5, so the scaling is visible): the latents file holds exactly
 * encode(x).mean × scaling_factor in NCHW, decoding it writes exactly the decoded image, and the
 * interpolation grid's cells are decode(lerp/slerp of the two latents) — all recomputed here with
 * the model and plain loops. Plus the slerp closed form and the CLI's messages.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { PNG } from 'pngjs';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { AutoencoderKL, VAE_PRESETS } from '../src/autoencoder/index.ts';
import { manualSeed } from '../src/nn/index.ts';
import { loadEmbeddedMnist } from '../src/data/index.ts';
import { readSafetensors } from '../src/io/safetensors.ts';
import { interpolateLatents, runDecode, runEncode, runInterpolate } from '../src/commands/encode.ts';

const ROOT = path.resolve(__dirname, '..');
const run = promisify(execFile);

let tmp: string;
let vaeDir: string;
let vae: AutoencoderKL;
const pngs: string[] = [];

/** Writes MNIST digit i (28×28) as an RGBA PNG and returns its [0,1] pixels as stored (8-bit). */
function writeDigitPng(file: string, i: number): Float32Array {
  const ds = loadEmbeddedMnist();
  const png = new PNG({ width: 28, height: 28 });
  const out = new Float32Array(28 * 28);
  for (let p = 0; p < 784; p++) {
    const v = Math.round(ds.images[i * 784 + p] * 255);
    png.data.set([v, v, v, 255], 4 * p);
    out[p] = v / 255;
  }
  fs.writeFileSync(file, PNG.sync.write(png));
  return out;
}

/** 28×28 → 32×32, centred, zeros around; then [-1, 1], as a [1, 32, 32, 1] tensor. */
function padded(img: Float32Array): tf.Tensor4D {
  const out = new Float32Array(32 * 32);
  for (let y = 0; y < 28; y++) for (let x = 0; x < 28; x++) out[(y + 2) * 32 + x + 2] = img[y * 28 + x];
  return tf.tensor4d(out.map((v) => 2 * v - 1), [1, 32, 32, 1]);
}

const pixels: Float32Array[] = [];

beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-encode-'));
  manualSeed(11);
  vae = new AutoencoderKL({
    ...VAE_PRESETS.mnist,
    block_out_channels: [4, 4, 4],
    norm_num_groups: 2,
    latent_channels: 2,
    scaling_factor: 0.5,
  });
  vaeDir = path.join(tmp, 'run/vae');
  vae.save(vaeDir);
  for (const [name, i] of [['three', 3100], ['eight', 8050]] as const) {
    const file = path.join(tmp, `${name}.png`);
    pixels.push(writeDigitPng(file, i));
    pngs.push(file);
  }
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('encode / decode', () => {
  it('encode writes mean × scaling_factor in NCHW, padded 28→32; decode writes the decoded image', async () => {
    const out = path.join(tmp, 'enc');
    const res = await runEncode({ inputs: [pngs[0]], out, vae: vaeDir, pad: true });
    expect(res.files).toEqual([path.join(out, 'three.safetensors')]);
    const file = readSafetensors(res.files[0]);
    const lat = file.get('latents')!;
    expect(lat.shape).toEqual([1, 2, 8, 8]);
    // Independent: the model's mean, scaled, transposed by index arithmetic.
    const x = padded(pixels[0]);
    const mean = vae.encode(x).mean;
    const m = mean.dataSync();
    let maxErr = 0;
    for (let c = 0; c < 2; c++) for (let h = 0; h < 8; h++) for (let w = 0; w < 8; w++) {
      maxErr = Math.max(maxErr, Math.abs(lat.data[c * 64 + h * 8 + w] - 0.5 * m[(h * 8 + w) * 2 + c]));
    }
    expect(maxErr).toBeLessThan(1e-6);
    expect(fs.existsSync(path.join(out, 'three.latents.png'))).toBe(true);
    expect(fs.existsSync(path.join(out, 'three.roundtrip.png'))).toBe(true);

    // Round-trip PSNR as reported: decode(mean) vs the padded input, in [0, 1].
    const y = tf.tidy(() => tf.clipByValue(tf.div(tf.add(vae.decode(mean), 1), 2), 0, 1));
    const yd = y.dataSync();
    const xd = x.dataSync();
    let se = 0;
    for (let i = 0; i < yd.length; i++) se += ((xd[i] + 1) / 2 - yd[i]) ** 2;
    expect(res.psnr[0]).toBeCloseTo(10 * Math.log10(yd.length / se), 4);

    // decode → PNG of exactly the decoded pixels (8-bit).
    const dec = await runDecode({ inputs: res.files, out: path.join(tmp, 'dec'), vae: vaeDir, scale: 1 });
    const png = PNG.sync.read(fs.readFileSync(dec.files[0]));
    expect([png.width, png.height]).toEqual([32, 32]);
    let worst = 0;
    for (let i = 0; i < 1024; i++) worst = Math.max(worst, Math.abs(png.data[4 * i] - Math.round(yd[i] * 255)));
    expect(worst).toBeLessThanOrEqual(1);
    tf.dispose([x, mean, y]);
  });

  it('decode refuses latents with the wrong channel count, naming the file', async () => {
    const { writeSafetensors } = await import('../src/io/safetensors.ts');
    const bad = path.join(tmp, 'bad.safetensors');
    writeSafetensors(bad, { latents: { shape: [1, 3, 8, 8], data: new Float32Array(192) } });
    await expect(runDecode({ inputs: [bad], out: path.join(tmp, 'dec2'), vae: vaeDir, scale: 1 })).rejects.toThrow(/bad\.safetensors: latents have 3 channels but the VAE expects 2/);
  });
});

describe('interpolate', () => {
  it('slerp and lerp follow their closed forms', () => {
    const a = Float32Array.from([1, 0]);
    const b = Float32Array.from([0, 1]);
    const s = interpolateLatents(a, b, 3, 'slerp');
    expect(s[1][0]).toBeCloseTo(Math.SQRT1_2, 6);
    expect(s[1][1]).toBeCloseTo(Math.SQRT1_2, 6);
    const l = interpolateLatents(a, b, 5, 'lerp');
    expect(Array.from(l[1])).toEqual([0.75, 0.25]);
    expect(Array.from(l[4])).toEqual([0, 1]);
  });

  it('each cell decodes the interpolated latents of the two PNGs', async () => {
    const res = await runInterpolate({
      out: path.join(tmp, 'interp'), vae: vaeDir, images: pngs, pairs: [], steps: 5, mode: 'lerp', seed: 0, scale: 1, pad: true,
    });
    expect(fs.existsSync(res.file)).toBe(true);
    expect(res.grid).toHaveLength(5);
    const expected = tf.tidy(() => {
      const ma = vae.encode(padded(pixels[0])).mean;
      const mb = vae.encode(padded(pixels[1])).mean;
      const z = tf.concat([ma, tf.add(tf.mul(ma, 0.75), tf.mul(mb, 0.25)), mb]) as tf.Tensor4D;
      return tf.clipByValue(tf.div(tf.add(vae.decode(z), 1), 2), 0, 1).dataSync();
    });
    for (const [k, cell] of [[0, 0], [1, 1], [2, 4]] as const) {
      const got = res.grid[cell].data;
      let err = 0;
      for (let i = 0; i < 1024; i++) err = Math.max(err, Math.abs(got[i] - expected[k * 1024 + i]));
      expect(err, `cell ${cell}`).toBeLessThan(1e-5);
    }
  });

  it('rows of held-out digits for --pairs', async () => {
    const res = await runInterpolate({
      out: path.join(tmp, 'interp2'), vae: vaeDir, pairs: [[3, 8], [0, 6]], steps: 4, mode: 'slerp', seed: 2, scale: 1, pad: true,
    });
    expect(res.rows).toEqual(['3-8', '0-6']);
    expect(res.grid).toHaveLength(8);
    const png = PNG.sync.read(fs.readFileSync(res.file));
    expect(png.width).toBeGreaterThan(4 * 32);
  });
});

describe('CLI', () => {
  it('encode without a trained VAE says how to get one (exit 2)', async () => {
    const err = await run(process.execPath, ['bin/sdlab.mjs', 'encode', pngs[0], '--backend', 'cpu', '--run', path.join(tmp, 'nothing')], { cwd: ROOT }).then(
      () => null,
      (e: { code: number; stderr: string }) => e,
    );
    expect(err?.code).toBe(2);
    expect(err?.stderr).toMatch(/no trained VAE in .*nothing\/vae: run `npx sdlab train vae/);
  });

  it('encode prints the latent shape and round-trip PSNR', async () => {
    const { stdout } = await run(process.execPath, ['bin/sdlab.mjs', 'encode', pngs[1], '--backend', 'cpu', '--vae', vaeDir, '--out', path.join(tmp, 'cli')], { cwd: ROOT });
    expect(stdout).toMatch(/eight\.safetensors: latents 2×8×8 \(× scaling_factor 0\.50000\), round-trip PSNR [\d.]+ dB/);
  });
});

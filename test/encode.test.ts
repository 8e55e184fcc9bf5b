/**
 * `sdlab encode | decode | interpolate` against a small random AutoencoderKL saved to disk
 * (scaling_factor 0.5, so the scaling is visible): the latents file holds exactly
 * encode(x).mean × scaling_factor in NCHW, decoding it writes exactly the decoded image, and the
 * interpolation grid's cells are decode(lerp/slerp of the two latents) — all recomputed here with
 * the model and plain loops. Outputs are at the data's own 28×28 (the centre of the VAE's 32×32,
 * or where vae/canvas.json says), or 32×32 with canvas 'padded'; encode takes 28×28 and padded
 * 32×32 PNGs alike. Plus the slerp closed form and the CLI's messages.
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

    // Round-trip PSNR as reported: decode(mean) vs the input at its own 28×28 (the centre of the
    // 32×32 output; the padded border is not part of the digit), in [0, 1].
    const y = tf.tidy(() => tf.clipByValue(tf.div(tf.add(vae.decode(mean), 1), 2), 0, 1));
    const yd = y.dataSync();
    let se = 0;
    for (let r = 0; r < 28; r++) for (let c = 0; c < 28; c++) se += (pixels[0][r * 28 + c] - yd[(r + 2) * 32 + c + 2]) ** 2;
    expect(res.psnr[0]).toBeCloseTo(10 * Math.log10(784 / se), 4);
    // The VAE has no canvas.json (saved directly, as before sdlab recorded one): MNIST's convention, said in a note.
    expect(res.notes.join(' ')).toMatch(/canvas\.json not found .*assuming MNIST's 28×28 digits centred on its 32×32 canvas/);

    // decode → PNG of exactly the decoded pixels (8-bit): the data's own 28×28 by default, the
    // VAE's 32×32 canvas with canvas 'padded'.
    const dec = await runDecode({ inputs: res.files, out: path.join(tmp, 'dec'), vae: vaeDir, scale: 1 });
    const png = PNG.sync.read(fs.readFileSync(dec.files[0]));
    expect([png.width, png.height]).toEqual([28, 28]);
    let worst = 0;
    for (let r = 0; r < 28; r++) for (let c = 0; c < 28; c++) worst = Math.max(worst, Math.abs(png.data[4 * (r * 28 + c)] - Math.round(yd[(r + 2) * 32 + c + 2] * 255)));
    expect(worst).toBeLessThanOrEqual(1);
    const full = await runDecode({ inputs: res.files, out: path.join(tmp, 'dec-padded'), vae: vaeDir, scale: 1, canvas: 'padded' });
    const png32 = PNG.sync.read(fs.readFileSync(full.files[0]));
    expect([png32.width, png32.height]).toEqual([32, 32]);
    worst = 0;
    for (let i = 0; i < 1024; i++) worst = Math.max(worst, Math.abs(png32.data[4 * i] - Math.round(yd[i] * 255)));
    expect(worst).toBeLessThanOrEqual(1);
    tf.dispose([x, mean, y]);
  });

  it('encode takes a 28×28 digit and its 32×32 padded copy alike (same latents)', async () => {
    const file32 = path.join(tmp, 'three32.png');
    const png = new PNG({ width: 32, height: 32 });
    for (let p = 0; p < 1024; p++) png.data[4 * p + 3] = 255;
    for (let r = 0; r < 28; r++) for (let c = 0; c < 28; c++) {
      const v = Math.round(pixels[0][r * 28 + c] * 255);
      png.data.set([v, v, v, 255], 4 * ((r + 2) * 32 + c + 2));
    }
    fs.writeFileSync(file32, PNG.sync.write(png));
    const a = await runEncode({ inputs: [pngs[0]], out: path.join(tmp, 'enc28'), vae: vaeDir, pad: true });
    const b = await runEncode({ inputs: [file32], out: path.join(tmp, 'enc32'), vae: vaeDir, pad: true });
    expect(b.latents[0].shape).toEqual(a.latents[0].shape);
    expect(Array.from(b.latents[0].data)).toEqual(Array.from(a.latents[0].data));
  });

  it("a VAE's canvas.json decides where the digit sits: decode crops there, encode pads there", async () => {
    // An off-centre record (top 1, left 3) so a centred crop would give other pixels.
    const dir = path.join(tmp, 'offcentre');
    fs.cpSync(vaeDir, dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'canvas.json'), JSON.stringify({ native_height: 28, native_width: 28, sample_size: 32, pad_top: 1, pad_left: 3 }));
    const enc = await runEncode({ inputs: [pngs[1]], out: path.join(tmp, 'enc-off'), vae: dir, pad: true });
    expect(enc.notes).toEqual([]);
    const x = new Float32Array(1024).fill(-1);
    for (let r = 0; r < 28; r++) for (let c = 0; c < 28; c++) x[(r + 1) * 32 + c + 3] = 2 * pixels[1][r * 28 + c] - 1;
    const yd = tf.tidy(() => {
      const m = vae.encode(tf.tensor4d(x, [1, 32, 32, 1])).mean;
      expect(Math.abs(enc.latents[0].data[0] - 0.5 * m.dataSync()[0])).toBeLessThan(1e-6); // padded at (1, 3)
      return tf.clipByValue(tf.div(tf.add(vae.decode(m), 1), 2), 0, 1).dataSync();
    });
    const dec = await runDecode({ inputs: enc.files, out: path.join(tmp, 'dec-off'), vae: dir, scale: 1 });
    const png = PNG.sync.read(fs.readFileSync(dec.files[0]));
    expect([png.width, png.height]).toEqual([28, 28]);
    let worst = 0;
    for (let r = 0; r < 28; r++) for (let c = 0; c < 28; c++) worst = Math.max(worst, Math.abs(png.data[4 * (r * 28 + c)] - Math.round(yd[(r + 1) * 32 + c + 3] * 255)));
    expect(worst).toBeLessThanOrEqual(1);
    // A record with an unknown key, or one that does not fit the VAE, is one line naming the file.
    fs.writeFileSync(path.join(dir, 'canvas.json'), JSON.stringify({ native_height: 28, native_width: 28, sample_size: 32, pad_top: 2, pad_left: 2, padding: 2 }));
    await expect(runDecode({ inputs: enc.files, out: path.join(tmp, 'dec-bad'), vae: dir, scale: 1 })).rejects.toThrow(/offcentre[/\\]canvas\.json: unknown key "padding"/);
    fs.writeFileSync(path.join(dir, 'canvas.json'), JSON.stringify({ native_height: 28, native_width: 28, sample_size: 32, pad_top: 5, pad_left: 2 }));
    await expect(runDecode({ inputs: enc.files, out: path.join(tmp, 'dec-bad'), vae: dir, scale: 1 })).rejects.toThrow(/canvas\.json: a 28×28 image at offset \(5, 2\) does not fit the 32×32 canvas/);
    expect(fs.existsSync(path.join(tmp, 'dec-bad'))).toBe(false);
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
    // Cells are at the data's own 28×28: the centre of the VAE's 32×32 output.
    for (const [k, cell] of [[0, 0], [1, 1], [2, 4]] as const) {
      const got = res.grid[cell];
      expect([got.height, got.width]).toEqual([28, 28]);
      let err = 0;
      for (let r = 0; r < 28; r++) for (let c = 0; c < 28; c++) err = Math.max(err, Math.abs(got.data[r * 28 + c] - expected[k * 1024 + (r + 2) * 32 + c + 2]));
      expect(err, `cell ${cell}`).toBeLessThan(1e-5);
    }
    const padded32 = await runInterpolate({
      out: path.join(tmp, 'interp-padded'), vae: vaeDir, images: pngs, pairs: [], steps: 5, mode: 'lerp', seed: 0, scale: 1, pad: true, canvas: 'padded',
    });
    let err = 0;
    for (let i = 0; i < 1024; i++) err = Math.max(err, Math.abs(padded32.grid[4].data[i] - expected[2 * 1024 + i]));
    expect([padded32.grid[4].height, padded32.grid[4].width]).toEqual([32, 32]);
    expect(err).toBeLessThan(1e-5);
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

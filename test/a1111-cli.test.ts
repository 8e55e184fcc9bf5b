/**
 * What A1111 users expect from `sdlab txt2img` / `img2img` on the tiny fixture model: every PNG
 * carries A1111's `parameters` infotext with the right seed and image index for each image of a
 * batch; `--from-png` re-creates an image's exact pixels (flags typed on the command line win);
 * a PNG without the chunk is one line, exit 2, nothing written; `--animate` writes one GIF per
 * image with a frame per step whose last x0 is the final image; the cheap latent → RGB
 * projection (src/sample/animate.ts) fits a near-linear decoder on held-out latents.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type CliResult, cliAsync } from './helpers/cli-run.ts';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { GifReader } from 'omggif';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readPng, readPngText } from '../src/io/png.ts';
import { registerNativeBackend } from '../src/backend/native.ts';
import { loadDiffusersPipeline } from '../src/sample/load.ts';
import { fitLatentPreview, latentPreview } from '../src/sample/animate.ts';
import { runSd } from '../src/commands/sd_common.ts';
import { gridLayout } from '../src/viz/index.ts';
import { Random } from '../src/util/random.ts';
import { formatRate } from '../src/util/progress.ts';
import { MODEL, PIPELINES } from './helpers/pipeline-fixture.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-a1111-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
beforeAll(async () => {
  await tf.setBackend(registerNativeBackend() ? 'native' : 'cpu');
});

/** The launcher in a child process (the fastest backend there is: native when built). */
const cli = (args: string[]) => cliAsync(args);
const pixels = (file: string) => Buffer.from(readPng(file).data);
const out = (name: string) => path.join(tmp, name);

describe('infotext and --from-png (CLI)', () => {
  it('txt2img writes A1111 infotext per image; --from-png of image 2 re-creates its pixels; typed flags win', async () => {
    const prompt = 'a (red:1.3) cat, sitting';
    const r = await cli(['txt2img', '--model', MODEL, '--prompt', prompt, '--negative-prompt', 'blurry, dark', '--n', '3', '--batch', '2', '--seed', '5', '--steps', '3', '--scheduler', 'ddim', '--eta', '0.5', '--out', out('run')]);
    expect(r.code, r.stderr).toBe(0);
    // The progress bar counts every step of every batch (2 batches × 3 DDIM steps), with a rate and an ETA.
    expect(r.stderr).toMatch(/txt2img \[#{24}\] 6\/6 100% [\d.]+ (step\/s|s\/step) ETA \d/);
    const text = readPngText(path.join(out('run'), '0002.png')).get('parameters')!;
    const lines = text.split('\n');
    expect(lines[0]).toBe(prompt);
    expect(lines[1]).toBe('Negative prompt: blurry, dark');
    expect(lines[2]).toMatch(/^Steps: 3, Sampler: DDIM, CFG scale: 7\.5, Seed: 5, Size: 16x16, Model: model, sdlab model: .*, sdlab scheduler: ddim, .*sdlab eta: 0\.5, sdlab rng: sdlab, sdlab image index: 2$/);
    expect(readPngText(path.join(out('run'), '0000.png')).get('parameters')).toMatch(/sdlab image index: 0$/);

    const again = await cli(['txt2img', '--from-png', path.join(out('run'), '0002.png'), '--out', out('again')]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).not.toMatch(/warning/);
    expect(pixels(path.join(out('again'), '0000.png')).equals(pixels(path.join(out('run'), '0002.png'))), 'image 2 re-created from its PNG').toBe(true);
    expect(pixels(path.join(out('again'), '0000.png')).equals(pixels(path.join(out('run'), '0000.png')))).toBe(false);
    expect(readPngText(path.join(out('again'), '0000.png')).get('parameters')).toBe(text);

    // The API: what the caller leaves undefined comes from the PNG (here seed, steps, scheduler, eta, index 1).
    const api = await runSd('txt2img', { model: MODEL, fromPng: path.join(out('run'), '0001.png'), n: 1, batch: 1, out: out('api'), progress: null });
    expect(pixels(api.files[0]).equals(pixels(path.join(out('run'), '0001.png'))), 'image 1 re-created through runSd').toBe(true);

    // A typed flag beats the PNG's value (the commander default of --steps would not).
    const fewer = await cli(['txt2img', '--from-png', path.join(out('run'), '0002.png'), '--steps', '2', '--out', out('fewer')]);
    expect(fewer.code, fewer.stderr).toBe(0);
    const json = JSON.parse(fs.readFileSync(path.join(out('fewer'), 'txt2img.json'), 'utf8'));
    expect([json.steps, json.scheduler, json.seed, json.eta, json.negative_prompt]).toEqual([2, 'ddim', 5, 0.5, 'blurry, dark']);
    expect(pixels(path.join(out('fewer'), '0000.png')).equals(pixels(path.join(out('run'), '0002.png')))).toBe(false);
  }, 240_000);

  it('img2img: Denoising strength and the init image are in the infotext; --from-png re-creates the pixels', async () => {
    const init = path.join(PIPELINES, 'init.png');
    const r = await cli(['img2img', '--model', MODEL, '--prompt', 'a dog', '--init-image', init, '--strength', '0.7', '--steps', '4', '--seed', '9', '--out', out('i2i')]);
    expect(r.code, r.stderr).toBe(0);
    const text = readPngText(path.join(out('i2i'), '0000.png')).get('parameters')!;
    expect(text).toMatch(/Denoising strength: 0\.7,/);
    expect(text).toContain(`sdlab init image: ${init.includes(',') || init.includes(':') ? JSON.stringify(init) : init}`);
    const again = await cli(['img2img', '--from-png', path.join(out('i2i'), '0000.png'), '--out', out('i2i-again')]);
    expect(again.code, again.stderr).toBe(0);
    expect(pixels(path.join(out('i2i-again'), '0000.png')).equals(pixels(path.join(out('i2i'), '0000.png')))).toBe(true);
  }, 240_000);

  it('inpaint: the mask and init image come back from the PNG; the pixels are re-created', async () => {
    const args = ['--prompt', 'a dog', '--init-image', path.join(PIPELINES, 'init.png'), '--mask', path.join(PIPELINES, 'mask.png'), '--strength', '0.8', '--steps', '3', '--seed', '4'];
    const r = await cli(['inpaint', '--model', MODEL, ...args, '--out', out('inp')]);
    expect(r.code, r.stderr).toBe(0);
    expect(readPngText(path.join(out('inp'), '0000.png')).get('parameters')).toMatch(/sdlab mask: .*mask\.png/);
    const again = await cli(['inpaint', '--from-png', path.join(out('inp'), '0000.png'), '--out', out('inp-again')]);
    expect(again.code, again.stderr).toBe(0);
    expect(pixels(path.join(out('inp-again'), '0000.png')).equals(pixels(path.join(out('inp'), '0000.png')))).toBe(true);
  }, 240_000);

  it('a PNG without "parameters", or a damaged one: one line, exit 2, nothing written', async () => {
    const plain = path.join(PIPELINES, 'init.png');
    expect(readPngText(plain).has('parameters')).toBe(false);
    const damaged = out('damaged.png');
    const good = fs.readFileSync(path.join(out('run'), '0000.png'));
    const at = good.indexOf('tEXtparameters') + 20;
    const bad = Buffer.from(good);
    bad[at] ^= 0x20; // one flipped bit in the text: the CRC no longer matches
    fs.writeFileSync(damaged, bad);
    for (const [file, pattern] of [[plain, /--from-png .*init\.png: the PNG has no "parameters" text chunk/], [damaged, /--from-png .*damaged\.png: the tEXt chunk at byte \d+ has a bad CRC/]] as const) {
      const r = await cli(['txt2img', '--from-png', file, '--out', out('never')]);
      expect(r.code, r.stderr).toBe(2);
      const lines = r.stderr.split('\n').filter((l) => l.trim());
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(pattern);
      expect(r.stderr).not.toMatch(/\n\s+at /);
      expect(fs.existsSync(out('never'))).toBe(false);
    }
  }, 240_000);
});

describe('progress rate', () => {
  it('steps per second, or seconds per step when slower than one a second', () => {
    expect(formatRate(6.744, 'step')).toBe('6.74 step/s');
    expect(formatRate(12.3, 'step')).toBe('12 step/s');
    expect(formatRate(0.25, 'step')).toBe('4.00 s/step');
  });
});

describe('--animate', () => {
  it('one GIF per image, a frame per step; the last frame\'s x0 is the final image (VAE preview)', async () => {
    const steps = 4;
    const res = await runSd('txt2img', { model: MODEL, prompt: ['a cat'], n: 2, seed: 1, batch: 2, steps, scheduler: 'ddim', out: out('anim'), animate: 'vae', progress: null });
    expect(res.animations.map((f) => path.basename(f))).toEqual(['0000.gif', '0001.gif']);
    for (let k = 0; k < 2; k++) {
      const gif = new GifReader(fs.readFileSync(res.animations[k]));
      expect(gif.numFrames(), 'frames = steps').toBe(steps);
      const rgba = new Uint8Array(gif.width * gif.height * 4);
      gif.decodeAndBlitFrameRGBA(steps - 1, rgba);
      // The frame is a 1×2 grid (x_t, x0) of 16×16 images at 16× (cells of 256 pixels).
      const scale = 16;
      const layout = gridLayout(2, 16, 16, { rows: 1, cols: 2, scale, colLabels: ['x_t', 'x0'], title: 't' });
      expect([layout.width, layout.height]).toEqual([gif.width, gif.height]);
      const { x, y } = layout.cell(0, 1);
      const final = readPng(res.files[k]);
      let sum = 0;
      for (let py = 0; py < 16; py++) {
        for (let px = 0; px < 16; px++) {
          const g = ((y + py * scale + scale / 2) * gif.width + x + px * scale + scale / 2) * 4;
          const f = (py * 16 + px) * 4;
          for (let c = 0; c < 3; c++) sum += Math.abs(rgba[g + c] - final.data[f + c]);
        }
      }
      const mad = sum / (16 * 16 * 3) / 255;
      console.log(`--animate image ${k}: ${gif.numFrames()} frames, mean |last x0 frame − final PNG| = ${mad.toFixed(4)}`);
      // DDIM's last step lands on its x0 prediction; what is left is the GIF's 256-colour palette.
      expect(mad, `image ${k}: mean |last x0 frame − final PNG| = ${mad.toFixed(4)} (of 1)`).toBeLessThan(0.02);
    }
  }, 240_000);

  it('the least-squares latent → RGB projection: recovers a near-linear decoder on held-out latents; on the random-weight tiny VAE it is no worse than a constant colour', () => {
    const c = 4;
    const f = 2;
    // A decoder like a real SD VAE's (RGB nearly linear in the latent: A1111's "Approx cheap"), with a mild tanh and f×f blocks.
    const M = tf.tensor2d([[0.3, 0.1, -0.2], [-0.1, 0.25, 0.05], [0.15, -0.2, 0.3], [0.05, 0.1, 0.1]]);
    const decoder = (x: tf.Tensor4D) => tf.tidy(() => {
      const [n, h, w] = x.shape;
      const rgb = tf.reshape(tf.add(tf.mul(tf.tanh(tf.matMul(tf.reshape(x, [n * h * w, c]), M)), 0.5), 0.5), [n, h, w, 3]) as tf.Tensor4D;
      return tf.image.resizeNearestNeighbor(rgb, [h * f, w * f]);
    });
    const rng = new Random('projection test');
    const draw = (n: number) => tf.tensor4d(Float32Array.from({ length: n * 8 * 8 * c }, () => rng.normal()), [n, 8, 8, c]);
    const train = draw(8);
    const matrix = fitLatentPreview(train, decoder(train));
    const test = draw(4);
    const want = tf.avgPool(decoder(test), f, f, 'valid');
    const m = tf.tensor2d(Float32Array.from(matrix), [c + 1, 3]);
    const got = tf.reshape(tf.matMul(tf.concat([tf.reshape(test, [4 * 64, c]), tf.ones([4 * 64, 1])], 1), m), [4, 8, 8, 3]);
    const rmse = tf.sqrt(tf.mean(tf.square(tf.sub(got, want)))).dataSync()[0];
    const spread = tf.sqrt(tf.mean(tf.square(tf.sub(want, tf.mean(want))))).dataSync()[0];
    console.log(`projection on a near-linear decoder: held-out RMSE ${rmse.toFixed(4)}, colour spread ${spread.toFixed(4)}`);
    expect(rmse, `held-out RMSE ${rmse.toFixed(4)} against the colours' spread ${spread.toFixed(4)}`).toBeLessThan(0.1 * spread + 0.01);

    // The tiny fixture VAE has random weights: nothing linear to find. Measured: RMSE ≈ 0.083 vs a spread of ≈ 0.084 (R² ≈ 0.03).
    const pipe = loadDiffusersPipeline(MODEL);
    try {
      const preview = latentPreview(pipe);
      const x = draw(4);
      const dec = pipe.decodeLatents(x);
      const pooled = tf.avgPool(dec.shape[3] === 3 ? dec : tf.tile(dec, [1, 1, 1, 3]), pipe.vaeScaleFactor, pipe.vaeScaleFactor, 'valid');
      const p = preview.decode(x);
      expect(p.shape).toEqual([4, 8, 8, 3]);
      const e = tf.sqrt(tf.mean(tf.square(tf.sub(p, pooled)))).dataSync()[0];
      const s = tf.sqrt(tf.mean(tf.square(tf.sub(pooled, tf.mean(pooled, [0, 1, 2], true))))).dataSync()[0];
      console.log(`projection on the random-weight tiny VAE: held-out RMSE ${e.toFixed(4)}, constant-colour RMSE ${s.toFixed(4)}`);
      expect(e, `tiny VAE: held-out RMSE ${e.toFixed(4)} vs constant-colour ${s.toFixed(4)}`).toBeLessThanOrEqual(s * 1.05);
      expect(latentPreview(pipe), 'fitted once per pipeline').toBe(preview);
    } finally {
      pipe.dispose();
    }
  });
});

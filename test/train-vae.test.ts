/**
 * `sdlab train vae` on a tiny AutoencoderKL and 8×8 digits (real MNIST digits pooled 4×4, written
 * as IDX files so the CLI reads them too), on the pure-JS cpu backend:
 *   - the run directory holds a diffusers-shaped vae/ (config.json + safetensors in PyTorch
 *     layout) whose scaling_factor is 1/std of the latents, checked against the closed form
 *     Var(z) = Var(μ) + E[σ²] computed here from the saved model;
 *   - the reported held-out PSNR is recomputed here from the saved model;
 *   - reconstructions.png shows the originals above their reconstructions;
 *   - stopping mid-epoch and resuming (in-process, and the CLI killed with SIGINT then run with
 *     --resume) ends with bit-identical weights and optimizer state.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { PNG } from 'pngjs';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { AutoencoderKL, VAE_DEFAULTS, readVaeConfig } from '../src/autoencoder/index.ts';
import { readSafetensors } from '../src/io/safetensors.ts';
import { gridLayout } from '../src/viz/index.ts';
import { readStateInfo, statePath } from '../src/train/state.ts';
import { trainVae, vaeData, evaluateVae, type VaeTrainOptions, type VaeTrainResult } from '../src/train/vae.ts';
import { ROOT, sdlab, tinyDigitsDir } from './helpers/tiny-data.ts';
import { TINY_VAE } from '../src/train/presets.ts';
import { tinyVaeRun } from './helpers/tiny-vae-run.ts';

let tmp: string;
let dataDir: string;

// The tests' tiny autoencoder, with the mid-block attention on (its save/load is tested here).
const TINY = { ...TINY_VAE, mid_block_add_attention: true };

// 4 steps per epoch, 12 in all.
const opts = (runDir: string): VaeTrainOptions => tinyVaeRun(runDir, dataDir, { epochs: 3, limit: 16, config: TINY });

/** Every tensor of a run's vae weights and training state. */
function snapshot(runDir: string): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const [k, t] of readSafetensors(path.join(runDir, 'vae/diffusion_pytorch_model.safetensors'))) out.set(`vae/${k}`, Array.from(t.data));
  for (const [k, t] of readSafetensors(statePath(runDir, 'vae'))) out.set(`state/${k}`, Array.from(t.data));
  return out;
}

function expectSameRun(a: string, b: string): void {
  const sa = snapshot(a);
  const sb = snapshot(b);
  expect([...sb.keys()].sort()).toEqual([...sa.keys()].sort());
  let differing = 0;
  for (const [k, v] of sa) if (JSON.stringify(v) !== JSON.stringify(sb.get(k))) differing++;
  expect(differing).toBe(0);
  expect(readVaeConfig(path.join(b, 'vae/config.json'))).toEqual(readVaeConfig(path.join(a, 'vae/config.json')));
}

let straightDir: string;
let straight: VaeTrainResult;

beforeAll(async () => {
  await tf.setBackend('cpu');
  ({ tmp, dataDir } = tinyDigitsDir('sdlab-train-vae-', 60));
  straightDir = path.join(tmp, 'straight');
  straight = await trainVae(opts(straightDir));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('trainVae', () => {
  it('trains to completion and writes a diffusers-shaped vae/ directory', () => {
    expect(straight.stopped).toBe('finished');
    expect(straight.step).toBe(12);
    expect(straight.history.epochs).toHaveLength(3);
    const h = straight.history.steps;
    expect(h[h.length - 1].loss).toBeLessThan(h[0].loss);
    const raw = JSON.parse(fs.readFileSync(path.join(straightDir, 'vae/config.json'), 'utf8'));
    expect(raw._class_name).toBe('AutoencoderKL');
    for (const k of Object.keys(raw)) if (!k.startsWith('_')) expect(Object.keys(VAE_DEFAULTS)).toContain(k);
    expect(raw.block_out_channels).toEqual([4, 4]);
    const w = readSafetensors(path.join(straightDir, 'vae/diffusion_pytorch_model.safetensors'));
    expect(w.get('encoder.conv_in.weight')!.shape).toEqual([4, 1, 3, 3]); // PyTorch OIHW
    expect(w.get('decoder.mid_block.attentions.0.to_q.weight')!.shape).toEqual([4, 4]);
    for (const f of ['history.json', 'loss.png', 'reconstructions.png', 'reconstructions_epoch3.png', 'state.safetensors']) {
      expect(fs.existsSync(path.join(straightDir, 'train/vae', f)), f).toBe(true);
    }
    // The data's own size and where it sits on the VAE's canvas: 8×8 digits on an 8×8 canvas.
    expect(JSON.parse(fs.readFileSync(path.join(straightDir, 'vae/canvas.json'), 'utf8'))).toMatchObject({
      native_height: 8, native_width: 8, sample_size: 8, pad_top: 0, pad_left: 0,
    });
  });

  it('records the padding the data gets: 8×8 digits on a 14×14 canvas sit at (3, 3); MNIST 28×28 on 32×32 at (2, 2)', () => {
    const small = vaeData({ data: dataDir, limit: 4, size: 14 });
    expect(small.canvas).toEqual({ nativeHeight: 8, nativeWidth: 8, size: 14, top: 3, left: 3 });
    // The canvas record says where the ink is: every pixel outside it is background.
    for (let i = 0; i < small.train.n; i++) {
      for (let y = 0; y < 14; y++) for (let x = 0; x < 14; x++) {
        if (y >= 3 && y < 11 && x >= 3 && x < 11) continue;
        expect(small.train.images[i * 196 + y * 14 + x]).toBe(0);
      }
    }
    expect(vaeData({ limit: 4, valLimit: 4, size: 32 }).canvas).toEqual({ nativeHeight: 28, nativeWidth: 28, size: 32, top: 2, left: 2 });
  });

  it('writes scaling_factor = 1/std of the latents (closed form Var(μ) + E[σ²] from the saved model)', () => {
    const vae = AutoencoderKL.fromPretrained(path.join(straightDir, 'vae'));
    expect(vae.scalingFactor).toBeCloseTo(straight.scalingFactor, 5);
    expect(vae.scalingFactor).not.toBe(1);
    const { train } = vaeData({ data: dataDir, limit: 16, size: 8 });
    const { mean, logvar } = tf.tidy(() => {
      const x = tf.sub(tf.mul(tf.tensor4d(train.images, [train.n, 8, 8, 1]), 2), 1) as tf.Tensor4D;
      const d = vae.encode(x);
      return { mean: Array.from(d.mean.dataSync()), logvar: Array.from(d.logvar.dataSync()) };
    });
    const mu = mean.reduce((a, b) => a + b, 0) / mean.length;
    const varMu = mean.reduce((a, b) => a + (b - mu) ** 2, 0) / mean.length;
    const eSigma2 = logvar.reduce((a, b) => a + Math.exp(b), 0) / logvar.length;
    const expected = 1 / Math.sqrt(varMu + eSigma2);
    // 16 images × 2×2×2 latents = 128 samples: a few percent of sampling error.
    expect(Math.abs(vae.scalingFactor / expected - 1)).toBeLessThan(0.15);
  });

  it('reports the held-out PSNR of the saved model (recomputed here)', () => {
    const vae = AutoencoderKL.fromPretrained(path.join(straightDir, 'vae'));
    const { val } = vaeData({ data: dataDir, size: 8 });
    expect(val.n).toBe(6);
    const { x, y, raw } = tf.tidy(() => {
      const xs = tf.tensor4d(val.images, [val.n, 8, 8, 1]);
      const out = vae.decode(vae.encode(tf.sub(tf.mul(xs, 2), 1) as tf.Tensor4D).mean);
      return { x: Array.from(xs.dataSync()), y: Array.from(tf.clipByValue(tf.div(tf.add(out, 1), 2), 0, 1).dataSync()), raw: Array.from(out.dataSync()) };
    });
    const mse = x.reduce((a, v, i) => a + (v - y[i]) ** 2, 0) / x.length;
    expect(straight.psnr).toBeCloseTo(10 * Math.log10(1 / mse), 3);
    // L1 reconstruction: the mean absolute error in [-1, 1] space (unclipped decoder output).
    const l1 = evaluateVae(vae, val, { loss: 'l1', beta: 0 });
    expect(l1.rec).toBeCloseTo(x.reduce((a, v, i) => a + Math.abs(2 * v - 1 - raw[i]), 0) / x.length, 5);
  });

  it('draws originals above reconstructions', () => {
    const vae = AutoencoderKL.fromPretrained(path.join(straightDir, 'vae'));
    const { val } = vaeData({ data: dataDir, size: 8 });
    const png = PNG.sync.read(fs.readFileSync(path.join(straightDir, 'train/vae/reconstructions.png')));
    const layout = gridLayout(12, 8, 8, { cols: 6, scale: 2, rowLabels: ['in', 'out'], groupRows: 2, title: 'x' });
    expect([png.width, png.height]).toEqual([layout.width, layout.height]);
    const recon = tf.tidy(() => {
      const xs = tf.sub(tf.mul(tf.tensor4d(val.images, [val.n, 8, 8, 1]), 2), 1) as tf.Tensor4D;
      return Array.from(tf.clipByValue(tf.div(tf.add(vae.decode(vae.encode(xs).mean), 1), 2), 0, 1).dataSync());
    });
    const at = (r: number, c: number, y: number, x: number) => {
      const { x: cx, y: cy } = layout.cell(r, c);
      return png.data[4 * ((cy + 2 * y) * png.width + cx + 2 * x)];
    };
    let errIn = 0;
    let errOut = 0;
    for (let c = 0; c < 6; c++) {
      for (let y = 0; y < 8; y++) {
        for (let x = 0; x < 8; x++) {
          errIn = Math.max(errIn, Math.abs(at(0, c, y, x) - Math.round(val.images[c * 64 + y * 8 + x] * 255)));
          errOut = Math.max(errOut, Math.abs(at(1, c, y, x) - Math.round(recon[c * 64 + y * 8 + x] * 255)));
        }
      }
    }
    expect(errIn).toBeLessThanOrEqual(1);
    expect(errOut).toBeLessThanOrEqual(1);
  });

  it('stopped mid-epoch and resumed: bit-identical weights and optimizer state', async () => {
    const dir = path.join(tmp, 'split');
    const first = await trainVae({ ...opts(dir), stopAtStep: 6 }); // epoch 2, batch 2 of 4
    expect(first.stopped).toBe('stop-at-step');
    expect(readStateInfo(statePath(dir, 'vae'))).toMatchObject({ step: 6, epoch: 1, batch: 2 });
    const second = await trainVae({ ...opts(dir), resume: true });
    expect(second.step).toBe(12);
    expect(second.psnr).toBe(straight.psnr);
    expectSameRun(straightDir, dir);
  });

  it('the CLI stops on SIGINT with a checkpoint, and --resume finishes with the same weights', async () => {
    const dir = path.join(tmp, 'cli');
    const args = [
      'train', 'vae', '--backend', 'cpu', '--run', dir, '--data', dataDir, '--limit', '16',
      '--seed', '5', '--epochs', '3', '--batch-size', '4', '--lr', '3e-3', '--weight-decay', '0.01', '--warmup', '2',
      '--min-lr-ratio', '0.1', '--kl-weight', '1e-4', '--channels', '4,4', '--norm-groups', '2', '--latent-channels', '2',
      '--sample-size', '8',
    ];
    const child = spawn(process.execPath, ['bin/sdlab.mjs', ...args], { cwd: ROOT, env: { ...process.env, CI: '1' } });
    let stderr = '';
    let sent = false;
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (!sent && /vae: epoch 1\/3/.test(stderr)) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    expect(stderr).toMatch(/Ctrl-C: saving a checkpoint/);
    expect(code).toBe(130);
    const info = readStateInfo(statePath(dir, 'vae'));
    expect(info.step).toBeGreaterThan(4);
    expect(info.step).toBeLessThan(12);

    // Without --resume the run is protected.
    const clobber = await sdlab(args).then(() => null, (e: { code: number; stderr: string }) => e);
    expect(clobber?.code).toBe(2);
    expect(clobber?.stderr).toMatch(/state\.safetensors exists: pass --resume/);

    // Resume with only --run (and backend): every other setting comes from the state.
    const resumed = await sdlab(['train', 'vae', '--backend', 'cpu', '--run', dir, '--resume']);
    expect(resumed.stdout).toMatch(/vae: trained 12 steps/);
    expectSameRun(straightDir, dir);
  });
});

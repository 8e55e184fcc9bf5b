/**
 * `sdlab train unet` on tiny models (a 4×4×2-latent VAE and a width-8 text encoder, both untrained:
 * the UNet trainer only needs them frozen) and 8×8 digits written as IDX files, on the cpu backend:
 *   - the noisy latents, targets and min-SNR weights of a batch match the closed forms (and the
 *     schedule's own addNoise / getVelocity); the loss is the weighted MSE recomputed here;
 *   - a few steps lower the held-out loss of the same digits/noise/timesteps;
 *   - the exported unet/ holds the EMA of the raw weights, recomputed here from every step;
 *   - stopped mid-epoch and resumed: bit-identical weights, optimizer state and EMA;
 *   - caption dropout happens at the requested rate, and kept captions name the right digit;
 *   - a missing vae/ or clip/ is a one-line error naming the command that trains it.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { AutoencoderKL, VAE_PRESETS } from '../src/autoencoder/index.ts';
import { CLIPModel } from '../src/clip/index.ts';
import { clipTrainConfig, mnistCaptionTokenizer } from '../src/train/clip.ts';
import { SafetensorsFile, readSafetensors, writeSafetensors } from '../src/io/safetensors.ts';
import { manualSeed } from '../src/nn/index.ts';
import { NoiseSchedule, readSchedulerConfig } from '../src/schedule/index.ts';
import { digitFromPrompt } from '../src/sample/prompts.ts';
import { loadRunPipeline } from '../src/sample/load.ts';
import { UNet2DConditionModel } from '../src/unet/index.ts';
import { Random } from '../src/util/random.ts';
import { readStateInfo, statePath } from '../src/train/state.ts';
import { vaeData } from '../src/train/vae.ts';
import { type UnetTrainOptions, type UnetTrainResult, UNET_TRAIN_DEFAULTS, loadFrozenParts, trainUnet, validationLoss } from '../src/train/unet.ts';
import { drawCaptions, makeBatchMaker } from '../src/train/diffusion_batch.ts';
import { encodeLatents } from '../src/train/latents.ts';
import { diffusionLoss, minSnrWeight } from '../src/train/losses.ts';
import { TextCache } from '../src/train/text_cache.ts';
import { sdlab, tinyDigitsDir } from './helpers/tiny-data.ts';
import { writeFrozenParts } from './helpers/tiny-frozen-parts.ts';
import { TINY_VAE } from '../src/train/presets.ts';

let tmp: string;
let dataDir: string;
let baseRun: string;

function copyRun(from: string, to: string): void {
  fs.cpSync(from, to, { recursive: true });
}

const opts = (runDir: string): UnetTrainOptions => ({
  ...UNET_TRAIN_DEFAULTS,
  runDir,
  seed: 3,
  epochs: 2,
  batchSize: 8,
  lr: 1e-2,
  warmupSteps: 2,
  minLrRatio: 0.1,
  config: { block_out_channels: [4, 8], attention_head_dim: [1, 2], norm_num_groups: 2 },
  emaDecay: 0.3, // small, so the cap min(0.3, (1+n)/(10+n)) is reached within 6 steps
  data: dataDir,
  limit: 24, // 3 steps per epoch, 6 in all
  valLimit: 6,
  gridEvery: 0,
  quiet: true,
  handleSigint: false,
});

/** Every tensor of a run's unet weights and training state (which holds the EMA as ema.*). */
function snapshot(runDir: string): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const [k, t] of readSafetensors(path.join(runDir, 'unet/diffusion_pytorch_model.safetensors'))) out.set(`unet/${k}`, t.data);
  for (const [k, t] of readSafetensors(statePath(runDir, 'unet'))) out.set(`state/${k}`, t.data);
  return out;
}

/** Byte-for-byte comparison of two runs' snapshots: the names of differing tensors (and of missing ones). */
function differingTensors(aDir: string, bDir: string): string[] {
  const a = snapshot(aDir);
  const b = snapshot(bDir);
  const names = new Set([...a.keys(), ...b.keys()]);
  const bytes = (v: Float32Array) => Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  return [...names].filter((k) => !a.has(k) || !b.has(k) || Buffer.compare(bytes(a.get(k)!), bytes(b.get(k)!)) !== 0);
}

/** Rewrites a run's state in the layout of an older sdlab: no ema.* tensors in it, the EMA in ema.safetensors at `emaStep`. */
function toOldLayout(runDir: string, emaStep: number, ema: Map<string, { shape: number[]; data: Float32Array }>): void {
  const file = statePath(runDir, 'unet');
  const st = SafetensorsFile.open(file);
  const kept = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const k of st.names()) if (!k.startsWith('ema.')) kept.set(k, st.read(k));
  writeSafetensors(file, kept, { metadata: st.metadata });
  writeSafetensors(path.join(runDir, 'train/unet/ema.safetensors'), ema, { metadata: { format: 'sdlab-ema', step: String(emaStep), decay: '0.3' } });
}

/** The ema.* tensors of a run's state file. */
function emaOf(runDir: string): Map<string, { shape: number[]; data: Float32Array }> {
  const st = SafetensorsFile.open(statePath(runDir, 'unet'));
  return new Map(st.names().filter((k) => k.startsWith('ema.')).map((k) => [k, st.read(k)]));
}

let straightDir: string;
let straight: UnetTrainResult;
/** Raw parameters (tfjs layout) after every update of the straight run. */
const rawAfter: Array<Map<string, Float32Array>> = [];

beforeAll(async () => {
  await tf.setBackend('cpu');
  ({ tmp, dataDir } = tinyDigitsDir('sdlab-train-unet-', 60));
  baseRun = path.join(tmp, 'base');
  writeFrozenParts(baseRun);
  straightDir = path.join(tmp, 'straight');
  copyRun(baseRun, straightDir);
  straight = await trainUnet({
    ...opts(straightDir),
    onStep: ({ unet }) => rawAfter.push(new Map(unet.namedParameters().map(([n, p]) => [n, (p.variable.dataSync() as Float32Array).slice()]))),
  });
});

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('batches and the loss', () => {
  it('x_t, targets and min-SNR weights follow the closed forms', () => {
    const parts = loadFrozenParts(baseRun);
    const { train } = vaeData({ data: dataDir, limit: 24, size: 8 });
    const latents = encodeLatents(parts.vae, train);
    expect(latents.shape).toEqual([4, 4, 2]);
    const text = new TextCache(parts.textEncoder, parts.tokenizer);
    for (const [prediction, zeroTerminalSnr] of [['epsilon', false], ['v_prediction', false], ['v_prediction', true]] as const) {
      const o = { ...UNET_TRAIN_DEFAULTS, prediction, zeroTerminalSnr, snrGamma: 5 };
      const maker = makeBatchMaker(o, 1.7, text);
      const idx = Int32Array.from([3, 0, 7, 7, 12]);
      const b = maker.make(train, latents, idx, new Random(`batch ${prediction}`), 0);
      // Replay the draws: captions, timesteps, noise.
      const rng = new Random(`batch ${prediction}`);
      const captions = drawCaptions(train, idx, rng, 0);
      const t = Array.from(idx, () => rng.int(1000));
      const noise = rng.normalArray(idx.length * 32);
      expect(b.captions).toEqual(captions);
      expect(Array.from(b.t)).toEqual(t);
      const x0 = tf.tensor4d(Float32Array.from({ length: idx.length * 32 }, (_, j) => latents.mean[idx[Math.floor(j / 32)] * 32 + (j % 32)] * 1.7), [idx.length, 4, 4, 2]);
      const eps = tf.tensor4d(noise, [idx.length, 4, 4, 2]);
      const sched = new NoiseSchedule({ num_train_timesteps: 1000, beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012, trained_betas: null, rescale_betas_zero_snr: zeroTerminalSnr });
      if (zeroTerminalSnr) expect(sched.alphasCumprod[999]).toBe(0);
      const xt = sched.addNoise(x0, eps, t);
      const target = prediction === 'epsilon' ? eps : sched.getVelocity(x0, eps, t);
      expect(maxAbsDiff(b.noisy, xt)).toBeLessThan(1e-6);
      expect(maxAbsDiff(b.target, target)).toBeLessThan(1e-6);
      // min-SNR-γ (Hang et al.): ε: min(snr, γ)/snr; v: min(snr, γ)/(snr + 1).
      const w = Array.from(b.weights.dataSync());
      t.forEach((ti, k) => {
        const a = sched.alphasCumprod[ti];
        const snr = a / (1 - a);
        expect(w[k]).toBeCloseTo(prediction === 'epsilon' ? Math.min(snr, 5) / snr : Math.min(snr, 5) / (snr + 1), 6);
      });
      if (zeroTerminalSnr) {
        // At t = T−1 the input is pure noise, v = −x0, and min-SNR gives the step weight 0.
        const t0 = makeBatchMaker(o, 1.7, text);
        // A generator whose timestep draw is the last one and whose noise is all 0.25.
        const last = new (class extends Random {
          override int(n: number): number {
            return n - 1;
          }
          override normalArray(n: number): Float32Array {
            return new Float32Array(n).fill(0.25);
          }
        })('T');
        const bT = t0.make(train, latents, Int32Array.from([5]), last, 0);
        expect(Array.from(bT.t)).toEqual([999]);
        expect(Array.from(bT.noisy.dataSync()).every((v) => Math.abs(v - 0.25) < 1e-6)).toBe(true);
        expect(bT.weights.dataSync()[0]).toBe(0);
        tf.dispose([bT.noisy, bT.timesteps, bT.context, bT.target, bT.weights]);
      }
      // The text states are the frozen encoder's lastHiddenState of each caption.
      const ref = parts.textEncoder.forward(tf.tensor2d(captions.map((c) => parts.tokenizer.encode(c).inputIds), undefined, 'int32')).lastHiddenState;
      expect(maxAbsDiff(b.context, ref)).toBeLessThan(1e-5);
      // Loss = mean_b w_b · mean((pred − target)²).
      const unet = new UNet2DConditionModel({ ...opts('').config, sample_size: 4, in_channels: 2, out_channels: 2, cross_attention_dim: 8, down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'], up_block_types: ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'] });
      const pred = Array.from(unet.forward(b.noisy, b.timesteps, b.context).dataSync());
      const tgt = Array.from(b.target.dataSync());
      let expected = 0;
      for (let k = 0; k < idx.length; k++) {
        let s = 0;
        for (let j = 0; j < 32; j++) s += (pred[k * 32 + j] - tgt[k * 32 + j]) ** 2;
        expected += (w[k] * s) / 32;
      }
      expect(diffusionLoss(unet, b).loss.dataSync()[0]).toBeCloseTo(expected / idx.length, 5);
      tf.dispose([x0, eps, xt, target, ref]);
      unet.dispose();
    }
    expect(minSnrWeight(0.5, 0, 'epsilon')).toBe(1);
  });

  it('caption dropout happens at the requested rate; kept captions name the digit', () => {
    const { train } = vaeData({ data: dataDir, size: 8 });
    const idx = Int32Array.from({ length: 4000 }, (_, i) => i % train.n);
    for (const p of [0, 0.1, 0.5, 1]) {
      const caps = drawCaptions(train, idx, new Random(`drop ${p}`), p);
      const empty = caps.filter((c) => c === '').length;
      // Binomial(4000, p): within 4 standard deviations.
      expect(Math.abs(empty - 4000 * p)).toBeLessThanOrEqual(4 * Math.sqrt(4000 * p * (1 - p)) + 1e-9);
      caps.forEach((c, k) => {
        if (c !== '') expect(digitFromPrompt(c)).toBe(train.labels[idx[k]]);
      });
    }
  });
});

describe('trainUnet', () => {
  it('trains, lowers the held-out loss and writes a run `sdlab sample` can load', () => {
    expect(straight.stopped).toBe('finished');
    expect(straight.step).toBe(6);
    expect(straight.history.epochs).toHaveLength(2);
    for (const f of ['history.json', 'loss.png', 'state.safetensors', 'latents.safetensors']) {
      expect(fs.existsSync(path.join(straightDir, 'train/unet', f)), f).toBe(true);
    }
    // The EMA is in the one state file (one atomic write per checkpoint), not in a second file.
    expect(fs.existsSync(path.join(straightDir, 'train/unet/ema.safetensors'))).toBe(false);
    expect(emaOf(straightDir).size).toBe(rawAfter[0].size);
    const cfg = readSchedulerConfig(path.join(straightDir, 'scheduler/scheduler_config.json'));
    expect(cfg).toMatchObject({
      _class_name: 'DDIMScheduler', beta_schedule: 'scaled_linear', prediction_type: 'v_prediction', num_train_timesteps: 1000,
      rescale_betas_zero_snr: true, timestep_spacing: 'trailing', set_alpha_to_one: true,
    });
    // The held-out loss (same digits, captions, t and noise every epoch) went down.
    const parts = loadFrozenParts(straightDir);
    const { val } = vaeData({ data: dataDir, valLimit: 6, size: 8 });
    const latents = encodeLatents(parts.vae, val);
    const maker = makeBatchMaker(opts(straightDir), parts.vae.scalingFactor, new TextCache(parts.textEncoder, parts.tokenizer));
    const config = JSON.parse(fs.readFileSync(path.join(straightDir, 'unet/config.json'), 'utf8'));
    manualSeed(3);
    const init = new UNet2DConditionModel(config); // the trainer's initial weights (same seed, same config)
    const before = validationLoss(init, maker, val, latents, 8);
    const trained = UNet2DConditionModel.fromPretrained(path.join(straightDir, 'unet'));
    const after = validationLoss(trained, maker, val, latents, 8);
    expect(straight.valLoss).toBeCloseTo(after, 5);
    expect(after).toBeLessThan(0.9 * before);
    init.dispose();
    trained.dispose();

    // How the run samples itself: the recipe's settings (README "Results": DDIM 50, guidance 3 at t in [200, 600]), written beside the model.
    expect(JSON.parse(fs.readFileSync(path.join(straightDir, 'sampling_config.json'), 'utf8'))).toEqual({
      scheduler: 'ddim', num_inference_steps: 50, guidance_scale: 3, eta: 0, guidance_interval: [200, 600], source: 'sdlab train unet',
    });

    const { pipeline, sampling } = loadRunPipeline(straightDir);
    expect(pipeline.unet.config.cross_attention_dim).toBe(8);
    expect(pipeline.unet.config.in_channels).toBe(2);
    expect(sampling.settings).toEqual({ scheduler: 'ddim', steps: 50, guidance: 3, eta: 0, guidanceInterval: [200, 600] });
    expect(Object.values(sampling.from)).toEqual(['run', 'run', 'run', 'run', 'run']);
    expect(sampling.notes).toEqual([]);
    pipeline.dispose();
  });
});

describe('EMA and resume', () => {
  it('exports the EMA of the raw weights: ema ← d·ema + (1−d)·raw, d = min(0.3, (1+n)/(10+n))', () => {
    expect(rawAfter).toHaveLength(6);
    const config = JSON.parse(fs.readFileSync(path.join(straightDir, 'unet/config.json'), 'utf8'));
    manualSeed(3);
    const init = new UNet2DConditionModel(config);
    const ema = new Map(init.namedParameters().map(([n, p]) => [n, Float64Array.from(p.variable.dataSync())]));
    init.dispose();
    rawAfter.forEach((raw, n) => {
      const d = Math.min(0.3, (1 + n) / (10 + n));
      for (const [name, e] of ema) {
        const r = raw.get(name)!;
        for (let i = 0; i < e.length; i++) e[i] = d * e[i] + (1 - d) * r[i];
      }
    });
    const exported = UNet2DConditionModel.fromPretrained(path.join(straightDir, 'unet'));
    let worst = 0;
    let moved = 0;
    for (const [name, p] of exported.namedParameters()) {
      const got = p.variable.dataSync();
      const want = ema.get(name)!;
      const last = rawAfter[5].get(name)!;
      for (let i = 0; i < got.length; i++) {
        worst = Math.max(worst, Math.abs(got[i] - want[i]));
        moved = Math.max(moved, Math.abs(got[i] - last[i]));
      }
    }
    exported.dispose();
    expect(worst).toBeLessThan(1e-5);
    expect(moved).toBeGreaterThan(20 * worst); // the export is not just the raw weights
  });

  it('stopped mid-epoch and resumed: bit-identical weights, optimizer state and EMA', async () => {
    const dir = path.join(tmp, 'split');
    copyRun(baseRun, dir);
    const first = await trainUnet({ ...opts(dir), stopAtStep: 4 }); // epoch 2, batch 2 of 3
    expect(first.stopped).toBe('stop-at-step');
    expect(readStateInfo(statePath(dir, 'unet'))).toMatchObject({ step: 4, epoch: 1, batch: 1 });
    const second = await trainUnet({ ...opts(dir), resume: true });
    expect(second.step).toBe(6);
    expect(differingTensors(straightDir, dir)).toEqual([]);
    expect(second.valLoss).toBe(straight.valLoss);
  });

  it("issue 15's scenario: a stale EMA file beside the state (EMA at step 2, state at 4) cannot break the resume", async () => {
    const dir = path.join(tmp, 'stale-ema');
    copyRun(baseRun, dir);
    await trainUnet({ ...opts(dir), stopAtStep: 2 });
    const emaAt2 = emaOf(dir);
    await trainUnet({ ...opts(dir), resume: true, stopAtStep: 4 });
    // What a kill between the two writes of the old layout left: the EMA file of the step before.
    writeSafetensors(path.join(dir, 'train/unet/ema.safetensors'), emaAt2, { metadata: { format: 'sdlab-ema', step: '2', decay: '0.3' } });
    const last = await trainUnet({ ...opts(dir), resume: true });
    expect(last.step).toBe(6);
    expect(differingTensors(straightDir, dir)).toEqual([]);
  });

  it('a failure between the state write and the model export leaves a state that resumes exactly', async () => {
    const dir = path.join(tmp, 'crash');
    copyRun(baseRun, dir);
    // <run>/unet as a file: the export (once, after the last checkpoint's state write) throws.
    fs.writeFileSync(path.join(dir, 'unet'), 'in the way');
    await expect(trainUnet({ ...opts(dir), checkpointEvery: 2 })).rejects.toThrow();
    expect(readStateInfo(statePath(dir, 'unet')).step).toBe(6);
    fs.rmSync(path.join(dir, 'unet'));
    const done = await trainUnet({ ...opts(dir), resume: true }); // nothing left to train: exports
    expect(done.step).toBe(6);
    expect(differingTensors(straightDir, dir)).toEqual([]);
  });

  it('a run that diverges never replaces the exported unet/ and scheduler/ (even with --overwrite)', async () => {
    const dir = path.join(tmp, 'diverge');
    copyRun(straightDir, dir); // a finished run: good unet/ and scheduler/
    const files = ['unet/diffusion_pytorch_model.safetensors', 'unet/config.json', 'scheduler/scheduler_config.json'];
    const before = files.map((f) => fs.readFileSync(path.join(dir, f)));
    // Start over with a step size that blows the weights up after the first update (and another
    // schedule, so an exported scheduler config would differ too).
    const bad = trainUnet({ ...opts(dir), overwrite: true, lr: 1e30, warmupSteps: 0, clipGradNorm: undefined, betaEnd: 0.02, checkpointEvery: 1 });
    await expect(bad).rejects.toThrow(/unet: (loss|gradient norm) is \S+ at step [2-6] .*try a lower --lr/);
    files.forEach((f, i) => expect(fs.readFileSync(path.join(dir, f)).equals(before[i]), f).toBe(true));
  });

  it('periodic checkpoints (every step) change nothing about the run', async () => {
    const dir = path.join(tmp, 'every1');
    copyRun(baseRun, dir);
    let seen = 0;
    await trainUnet({ ...opts(dir), checkpointEvery: 1, onStep: ({ step }) => {
      // Before update `step` is recorded, the state holds step - 1: a checkpoint after every update.
      if (step > 1) expect(readStateInfo(statePath(dir, 'unet')).step).toBe(step - 1);
      seen++;
    } });
    expect(seen).toBe(6);
    expect(differingTensors(straightDir, dir)).toEqual([]);
  });

  it('resumes a run saved in the older layout (EMA in ema.safetensors) bit for bit, and refuses a mismatched or missing one', async () => {
    const dir = path.join(tmp, 'old-layout');
    copyRun(baseRun, dir);
    await trainUnet({ ...opts(dir), stopAtStep: 4 });
    const ema4 = emaOf(dir);
    const mismatched = path.join(tmp, 'old-layout-mismatch');
    copyRun(dir, mismatched);
    toOldLayout(dir, 4, ema4);
    expect(emaOf(dir).size).toBe(0);
    const done = await trainUnet({ ...opts(dir), resume: true });
    expect(done.step).toBe(6);
    expect(fs.existsSync(path.join(dir, 'train/unet/ema.safetensors'))).toBe(false); // now in the state
    expect(differingTensors(straightDir, dir)).toEqual([]);

    toOldLayout(mismatched, 2, ema4);
    await expect(trainUnet({ ...opts(mismatched), resume: true })).rejects.toThrow(/ema\.safetensors is at step 2 but the training state at step 4/);
    fs.rmSync(path.join(mismatched, 'train/unet/ema.safetensors'));
    await expect(trainUnet({ ...opts(mismatched), resume: true })).rejects.toThrow(/ema\.safetensors is missing/);
  });

  it('`train unet --resume` (CLI, only --run) restores --val-limit and the data settings: same weights and held-out loss', async () => {
    const dir = path.join(tmp, 'cli-resume');
    copyRun(baseRun, dir);
    await trainUnet({ ...opts(dir), stopAtStep: 4 }); // --val-limit 6, --data, --limit 24 stored
    expect(readStateInfo(statePath(dir, 'unet')).settings).toMatchObject({ valLimit: 6, limit: 24, data: dataDir });
    // Without the stored --val-limit the CLI's default (256) would apply and the resume be refused.
    const res = await sdlab(['train', 'unet', '--backend', 'cpu', '--run', dir, '--resume', '--grid-every', '0']);
    expect(res.stdout).toMatch(/unet: trained 6 steps/);
    expect(res.stdout).toContain(`held-out loss ${straight.valLoss.toPrecision(4)}`);
    expect(differingTensors(straightDir, dir)).toEqual([]);
  });
});

describe('missing parts', () => {
  it('names the command that trains a missing vae/ or clip/', async () => {
    const dir = path.join(tmp, 'empty');
    fs.mkdirSync(dir);
    await expect(trainUnet(opts(dir))).rejects.toThrow(new RegExp(`vae/config\\.json not found.*\`npx sdlab train vae --run ${dir.replace(/[/\\]/g, '.')}\``));
    fs.cpSync(path.join(baseRun, 'vae'), path.join(dir, 'vae'), { recursive: true });
    await expect(trainUnet(opts(dir))).rejects.toThrow(/clip\/config\.json not found.*`npx sdlab train clip --run /);
    expect(() => loadFrozenParts('runs/default-that-does-not-exist')).toThrow(/npx sdlab train vae --run runs\/default-that-does-not-exist/);
  });
});

function maxAbsDiff(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]);
}

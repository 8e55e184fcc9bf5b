/**
 * Training the latent-diffusion UNet on captioned digits (or your own captioned images:
 * src/data/captioning.ts) — `npx sdlab train unet`.
 *
 *   x0  = scaling_factor · z,   z = VAE posterior mean (or a sample μ + σ·ε) of a training digit
 *   t   ~ U{0, …, T−1},  ε ~ N(0, I),  x_t = √ᾱ_t · x0 + √(1−ᾱ_t) · ε
 *   c   = frozen CLIP text encoder's lastHiddenState of a freshly drawn caption ("a thick 7",
 *         "seven", "the number 7", …), or of "" with probability `captionDropout` (so the same
 *         network is also the unconditional model classifier-free guidance needs)
 *   loss = mean_b w_b · ‖unet(x_t, t, c) − target‖²,   target = ε (epsilon) or
 *          v = √ᾱ_t · ε − √(1−ᾱ_t) · x0 (v_prediction);  w_b = 1, or min-SNR-γ
 *          (Hang et al. 2023): min(SNR_t, γ)/SNR_t for ε, min(SNR_t, γ)/(SNR_t + 1) for v
 *
 One concern per file:
 *   ./latents.ts          x0's source: the VAE posterior of every digit, encoded once and cached
 *                         in <run>/train/unet/latents.safetensors (keyed by a hash of the VAE)
 *   ./text_cache.ts       c: the text encoder's output per distinct caption (~1,300), each encoded
 *                         on its own so the cache is the same whatever order captions come in
 *   ./diffusion_batch.ts  a batch: captions, t, ε → x_t and target (the schedule's noisedSample)
 *   ./losses.ts           diffusionLoss and minSnrWeight
 *   ./ema.ts              the EMA of the weights
 *   this file             the options, the run's frozen parts, the scheduler config, the sample
 *                         grid and the training loop
 *
 * It needs the run's trained vae/ (`npx sdlab train vae`) and clip/ (`npx sdlab train clip`); both
 * stay frozen.
 *
 * EMA: an exponential moving average of the weights (decay min(emaDecay, (1+n)/(10+n)) after n
 * updates, diffusers' EMAModel) is what <run>/unet/ receives; the raw weights, AdamW moments and
 * the EMA stay in the one training state file (ema.* tensors), so --resume continues bit for bit.
 * <run>/scheduler/scheduler_config.json records the noise schedule for `sdlab sample`, and
 * <run>/sampling_config.json how to sample (opts.sampling: sampler, steps, guidance, eta), so
 * `sdlab sample` and `sdlab eval` use the recipe's settings without flags.
 *
 * Every epoch: held-out loss (EMA weights, fixed captions/t/noise) and a sample grid
 * <run>/train/unet/samples.png (+ samples_epoch<N>.png): one row per digit (or class), same noise
 * each epoch, so you watch the digits form. On data that is not the digits it also writes
 * <run>/classes.json (src/data/run_classes.ts): the class prompts `sample` and `train all` use.
 *
 *   const res = await trainUnet({ ...UNET_TRAIN_DEFAULTS, runDir: 'runs/default' });
 *
 * The recipe (model size, schedule, loss weighting, EMA…) and what it was measured against: the
 * comment at the top of presets.ts.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { AutoencoderKL, VAE_WEIGHTS_FILE } from '../autoencoder/index.ts';
import { TextEncoder } from '../clip/text_encoder.ts';
import { loadTokenizer } from '../clip/tokenizer_load.ts';
import type { Tokenizer } from '../clip/tokenizer.ts';
import { WordTokenizer, splitWords } from '../clip/tokenizer_word.ts';
import { type Dataset, captionVocabulary, checkCaptionable, classLabels, classPrompts, writeRunClasses } from '../data/index.ts';
import { buildChecked, manualSeed, skipInit } from '../nn/index.ts';
import { type BetaSchedule, type PredictionType, type TimestepSpacing, createScheduler, scheduleBetas } from '../schedule/index.ts';
import { NonFiniteError, StableDiffusionPipeline } from '../sample/pipeline.ts';
import { type Canvas, vaeCanvas } from '../data/canvas.ts';
import { type SamplingSettings, writeSamplingConfig } from '../sample/settings.ts';
import { UNet2DConditionModel, type UNet2DConditionConfig, mnistUnetConfig } from '../unet/index.ts';
import { UsageError } from '../util/errors.ts';
import { writeFileAtomicSync } from '../util/fs.ts';
import { Random } from '../util/random.ts';
import { saveImageGrid } from '../viz/index.ts';
import { EpochBatcher, chunks } from './data.ts';
import { type BatchMaker, type DiffusionBatch, disposeBatch, makeBatchMaker } from './diffusion_batch.ts';
import { Ema } from './ema.ts';
import { type LatentSet, cachedLatents, vaeFingerprint } from './latents.ts';
import { diffusionLoss } from './losses.ts';
import type { NamedVariable } from './optimizer.ts';
import { trainDir } from './state.ts';
import { TextCache } from './text_cache.ts';
import { type EpochContext, type ModelTrainOptions, type TrainResult, harnessOptions, lastEpochValue, train, trainLog } from './trainer.ts';
import { DATA_SPLIT, dataSettings, resolveDataset, vaeData } from './vae.ts';

export type LatentMode = 'mean' | 'sample';

export interface UnetTrainOptions extends ModelTrainOptions {
  /** Architecture overrides on top of mnistUnetConfig (cross_attention_dim always comes from the text encoder). */
  config?: Partial<UNet2DConditionConfig>;
  /** What the UNet predicts: the noise ε, or v = √ᾱ·ε − √(1−ᾱ)·x0. */
  prediction: PredictionType;
  betaSchedule: BetaSchedule;
  betaStart: number;
  betaEnd: number;
  numTrainTimesteps: number;
  /** Rescale the betas so ᾱ_T = 0 (arXiv 2305.08891); needs v_prediction. */
  zeroTerminalSnr: boolean;
  /** Spacing of the sampling timesteps written to the scheduler config. */
  timestepSpacing: TimestepSpacing;
  /** min-SNR-γ loss weighting; 0 = plain MSE. */
  snrGamma: number;
  /** Probability of training on the empty caption (classifier-free guidance). */
  captionDropout: number;
  /** Peak EMA decay; 0 = no EMA (the raw weights are exported). */
  emaDecay: number;
  /** Diffuse the VAE's posterior mean, or a fresh posterior sample every step. */
  latents: LatentMode;
  /** Held-out digits for the per-epoch validation loss. */
  valLimit: number;
  /** Sample grid every N epochs (and after the last); 0 = never. */
  gridEvery: number;
  /** Images per digit row in the grid. */
  gridCols: number;
  gridSteps: number;
  gridGuidance: number;
  /** How the trained model is sampled: written to <run>/sampling_config.json, the defaults of `sdlab sample` and `sdlab eval`. */
  sampling: SamplingSettings;
  /** Who chose `sampling` (recorded in the file; default "sdlab train unet"). */
  samplingSource?: string;
  /** Called after every update (and after the EMA update); `unet` holds the raw weights. */
  onStep?: (info: { step: number; loss: number; lr: number; epoch: number; batchIndex: number; unet: UNet2DConditionModel }) => void;
}

/**
 * The UNet of the recipe: mnistUnetConfig's widths (32, 64), one layer per level, but attention
 * only at the 4×4 level and in the mid block — at 8×8 the transformer costs ~30% of a training
 * step and bought nothing measurable in the earlier recipe sweeps.
 */
export const RECIPE_UNET_CONFIG: Partial<UNet2DConditionConfig> = {
  down_block_types: ['DownBlock2D', 'CrossAttnDownBlock2D'],
  up_block_types: ['CrossAttnUpBlock2D', 'UpBlock2D'],
};

/**
 * How the recipe's UNet is sampled: DDIM, 50 steps, guidance 3 applied only at t in [200, 600]
 * (the conditional model alone at the noisiest and the cleanest steps) — the full preset's
 * measured balance of faithfulness (accuracy) and diversity (FID): guidance at t > 600 bought no
 * accuracy and cost variety (the table in presets.ts).
 */
export const RECIPE_SAMPLING: SamplingSettings = { scheduler: 'ddim', steps: 50, guidance: 3, eta: 0, guidanceInterval: [200, 600] };

/** The full-preset recipe (see presets.ts for what it was chosen against and what helped). */
export const UNET_TRAIN_DEFAULTS: Omit<UnetTrainOptions, 'runDir'> = {
  seed: 0,
  epochs: 12,
  maxSteps: 3200,
  batchSize: 32,
  lr: 4e-3,
  weightDecay: 0.01,
  warmupSteps: 100,
  decay: 'cosine',
  minLrRatio: 0.05,
  clipGradNorm: 1,
  config: RECIPE_UNET_CONFIG,
  prediction: 'v_prediction',
  betaSchedule: 'scaled_linear',
  betaStart: 0.00085,
  betaEnd: 0.012,
  numTrainTimesteps: 1000,
  zeroTerminalSnr: true,
  timestepSpacing: 'trailing',
  snrGamma: 5,
  captionDropout: 0.1,
  emaDecay: 0.999,
  latents: 'mean',
  valLimit: 256,
  gridEvery: 1,
  gridCols: 4,
  gridSteps: 20,
  gridGuidance: 3,
  sampling: RECIPE_SAMPLING,
};

// ---------------------------------------------------------------------------------------------
// The run's frozen parts

export interface FrozenParts {
  vae: AutoencoderKL;
  textEncoder: TextEncoder;
  tokenizer: Tokenizer;
  vaeDir: string;
  clipDir: string;
}

/** `npx sdlab train <what>` with --run when the run is not the default one. */
export function trainCommand(what: string, runDir: string): string {
  const runFlag = path.normalize(runDir) === path.normalize('runs/default') ? '' : ` --run ${runDir}`;
  return `npx sdlab train ${what}${runFlag}`;
}

/** Loads the run's trained VAE and CLIP text encoder (+ tokenizer), or says which command trains them. */
export function loadFrozenParts(runDir: string): FrozenParts {
  const vaeDir = path.join(runDir, 'vae');
  const clipDir = path.join(runDir, 'clip');
  const need: Array<[string, string, string]> = [
    ['vae', path.join(vaeDir, 'config.json'), 'autoencoder'],
    ['vae', path.join(vaeDir, VAE_WEIGHTS_FILE), 'autoencoder'],
    ['clip', path.join(clipDir, 'config.json'), 'text encoder'],
    ['clip', path.join(clipDir, 'model.safetensors'), 'text encoder'],
    ['clip', path.join(clipDir, 'tokenizer.json'), 'text encoder'],
  ];
  for (const [what, file, name] of need) {
    if (!fs.existsSync(file)) {
      throw new UsageError(`${file} not found: the UNet trains on the run's frozen ${name}; train it first with \`${trainCommand(what, runDir)}\`.`);
    }
  }
  return {
    vae: AutoencoderKL.fromPretrained(vaeDir),
    textEncoder: TextEncoder.fromPretrained(clipDir),
    tokenizer: loadTokenizer(clipDir),
    vaeDir,
    clipDir,
  };
}

/**
 * Refuses a text encoder whose word tokenizer lacks words of this data's captions: it was trained
 * on other data (say MNIST's CLIP for a Fashion-MNIST UNet), and its prompts would be <unk>.
 */
export function checkVocabulary(tokenizer: Tokenizer, ds: Pick<Dataset, 'classNames' | 'captions'>, clipDir: string, runDir: string): void {
  if (!(tokenizer instanceof WordTokenizer)) return;
  const known = new Set(tokenizer.vocab);
  const missing = [...new Set(captionVocabulary(ds).flatMap(splitWords))].filter((w) => !known.has(w));
  if (missing.length === 0) return;
  const shown = missing.slice(0, 4).map((w) => `"${w}"`).join(', ');
  throw new UsageError(
    `${path.join(clipDir, 'tokenizer.json')}: the run's text encoder does not know ${missing.length} word(s) of this data's captions (${shown}${missing.length > 4 ? ', ...' : ''}); it was trained on other data: train it on the same data first with \`${trainCommand('clip', runDir)}\` and the same --data/--classes.`,
  );
}

// ---------------------------------------------------------------------------------------------
// Noise schedule

/** The diffusers scheduler config the run is sampled with (<run>/scheduler/scheduler_config.json). */
export function unetSchedulerConfig(o: Pick<UnetTrainOptions, 'numTrainTimesteps' | 'betaSchedule' | 'betaStart' | 'betaEnd' | 'prediction' | 'zeroTerminalSnr' | 'timestepSpacing'>): Record<string, unknown> {
  return {
    _class_name: 'DDIMScheduler',
    _diffusers_version: '0.24.0',
    num_train_timesteps: o.numTrainTimesteps,
    beta_schedule: o.betaSchedule,
    beta_start: o.betaStart,
    beta_end: o.betaEnd,
    trained_betas: null,
    prediction_type: o.prediction,
    rescale_betas_zero_snr: o.zeroTerminalSnr,
    timestep_spacing: o.timestepSpacing,
    // With ᾱ_T = 0 the last step must land on clean data; otherwise SD's convention.
    set_alpha_to_one: o.zeroTerminalSnr,
    steps_offset: o.timestepSpacing === 'leading' ? 1 : 0,
    clip_sample: false,
  };
}

/**
 * Checks the run's noise schedule (scheduleBetas, the one check every schedule goes through), so
 * impossible betas fail in one line before any work rather than as a NaN loss later.
 */
export function checkUnetSchedule(o: Pick<UnetTrainOptions, 'numTrainTimesteps' | 'betaSchedule' | 'betaStart' | 'betaEnd' | 'zeroTerminalSnr'>): void {
  scheduleBetas(
    { num_train_timesteps: o.numTrainTimesteps, beta_schedule: o.betaSchedule, beta_start: o.betaStart, beta_end: o.betaEnd, trained_betas: null, rescale_betas_zero_snr: o.zeroTerminalSnr },
    '--beta-start/--beta-end',
  );
}

// ---------------------------------------------------------------------------------------------
// Pictures

/** Rows of the sample grid: at most this many classes (the first ones). */
export const GRID_MAX_ROWS = 10;

/**
 * One row per class, `cols` images each, same seed every time: for digits "a handwritten <word>"
 * rows 0-9, otherwise the dataset's class prompts (src/data/captioning.ts classPrompts), the
 * first GRID_MAX_ROWS of them.
 */
export async function saveSampleGrid(
  file: string,
  parts: { vae: AutoencoderKL; textEncoder: TextEncoder; tokenizer: Tokenizer; unet: UNet2DConditionModel },
  schedulerConfig: Record<string, unknown>,
  o: { cols: number; steps: number; guidance: number; seed?: number; title?: string; classes?: Pick<Dataset, 'classNames' | 'captions'>; canvas?: Canvas },
): Promise<void> {
  const scheduler = createScheduler('ddim', schedulerConfig);
  const pipe = new StableDiffusionPipeline({ ...parts, scheduler });
  const rows = classPrompts(o.classes ?? {}).slice(0, GRID_MAX_ROWS);
  const prompts = rows.flatMap((p) => new Array<string>(o.cols).fill(p));
  const out = pipe.call({ prompt: prompts, numInferenceSteps: o.steps, guidanceScale: o.guidance, seed: o.seed ?? 0 });
  // The digits at the data's own size, as `sdlab sample` writes them (src/data/canvas.ts).
  const c = o.canvas;
  const images = c && out.images.shape[1] === c.size && out.images.shape[2] === c.size ? tf.slice(out.images, [0, c.top, c.left, 0], [-1, c.nativeHeight, c.nativeWidth, -1]) : out.images;
  try {
    await saveImageGrid(file, images, { cols: o.cols, scale: 2, rowLabels: classLabels(o.classes ?? {}).slice(0, GRID_MAX_ROWS), title: o.title });
  } finally {
    tf.dispose([images, out.images, out.latents, out.promptEmbeds]);
    scheduler.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// Training

export interface UnetTrainResult extends TrainResult {
  unet: UNet2DConditionModel;
  /** The exported (EMA) model. */
  emaUnet: UNet2DConditionModel;
  unetDir: string;
  schedulerFile: string;
  /** Held-out loss of the EMA weights after the last finished epoch (NaN if none). */
  valLoss: number;
  /** Std of the scaled training latents (≈ 1 when the VAE's scaling_factor fits). */
  latentStd: number;
}

const EMA_FILE = 'ema.safetensors';
const LATENTS_FILE = 'latents.safetensors';

/** Trains (or resumes) the UNet of a run directory on its frozen VAE and text encoder. */
export async function trainUnet(opts: UnetTrainOptions): Promise<UnetTrainResult> {
  const log = trainLog(opts);
  if (!(opts.captionDropout >= 0 && opts.captionDropout <= 1)) throw new UsageError(`--caption-dropout: expected a probability in [0, 1], got ${opts.captionDropout}.`);
  if (!(opts.emaDecay >= 0 && opts.emaDecay < 1)) throw new UsageError(`--ema-decay: expected a number in [0, 1), got ${opts.emaDecay}.`);
  if (!(opts.snrGamma >= 0)) throw new UsageError(`--snr-gamma: expected a number >= 0 (0 = off), got ${opts.snrGamma}.`);
  if (opts.zeroTerminalSnr && opts.prediction === 'epsilon') {
    throw new UsageError('--zero-terminal-snr needs --prediction v_prediction (at ᾱ_T = 0 the noise prediction cannot give x0).');
  }
  checkUnetSchedule(opts);
  const parts = loadFrozenParts(opts.runDir);
  const { vae, textEncoder, tokenizer } = parts;
  const sf = vae.scalingFactor;
  const dir = trainDir(opts.runDir, 'unet');
  const unetDir = path.join(opts.runDir, 'unet');
  const schedulerFile = path.join(opts.runDir, 'scheduler', 'scheduler_config.json');
  const schedulerConfig = unetSchedulerConfig(opts);

  const data = vaeData({ ...opts, dataset: await resolveDataset(opts.dataset), size: vae.config.sample_size });
  const { train: trainSet, val } = data;
  checkCaptionable(trainSet);
  checkVocabulary(tokenizer, trainSet, parts.clipDir, opts.runDir);
  // A non-digit source adds its fingerprint to the cache key (two in-memory datasets share data: null).
  const latentsKey = { data: opts.data ?? null, limit: opts.limit ?? null, split: DATA_SPLIT, ...(data.source.fingerprint ? { fingerprint: data.source.fingerprint } : {}) };
  const latents = cachedLatents(path.join(dir, LATENTS_FILE), vae, parts.vaeDir, { train: trainSet, val }, latentsKey, log);
  const latentStd = stdOf(latents.train.mean, sf);

  const config: UNet2DConditionConfig = {
    ...mnistUnetConfig(),
    sample_size: latents.train.shape[0],
    in_channels: vae.config.latent_channels,
    out_channels: vae.config.latent_channels,
    ...opts.config,
    cross_attention_dim: textEncoder.hiddenSize,
  };
  manualSeed(opts.seed);
  const unet = buildChecked(() => new UNet2DConditionModel(config), 'unet config');
  const emaUnet = skipInit(() => new UNet2DConditionModel(config));
  const params: NamedVariable[] = unet.namedParameters().map(([n, p]) => [n, p.variable]);
  const ema = new Ema(params, emaUnet.namedParameters().map(([n, p]) => [n, p.variable]), opts.emaDecay);
  const exported = opts.emaDecay > 0 ? emaUnet : unet;
  const emaFile = path.join(dir, EMA_FILE);
  // At the start the average is the initial weights; a resume then loads it from the state file.
  ema.copyFromRaw();

  const text = new TextCache(textEncoder, tokenizer);
  const maker = makeBatchMaker(opts, sf, text);
  const batcher = new EpochBatcher(trainSet, opts.batchSize, opts.seed);
  const totalSteps = Math.min(opts.epochs * batcher.stepsPerEpoch, opts.maxSteps ?? Infinity);
  const frozen = { vae, textEncoder, tokenizer };
  const { canvas } = vaeCanvas(parts.vaeDir, { sampleSize: vae.config.sample_size, inChannels: vae.config.in_channels });
  const writeScheduler = () => {
    writeFileAtomicSync(schedulerFile, JSON.stringify(schedulerConfig, null, 2) + '\n');
  };
  log(`unet: ${trainSet.n} training images → ${latents.train.shape.join('×')} latents (mode ${opts.latents}), std of the scaled posterior means ${latentStd.toFixed(3)} (scaling_factor ${sf.toPrecision(5)}); text ${text.length}×${text.width}`);

  const result = await train<DiffusionBatch>(
    {
      name: 'unet',
      params,
      settings: {
        config: structuredClone(config),
        batchSize: opts.batchSize,
        scheduler: schedulerConfig,
        snrGamma: opts.snrGamma,
        captionDropout: opts.captionDropout,
        emaDecay: opts.emaDecay,
        latents: opts.latents,
        ...dataSettings(opts, data),
        vae: vaeFingerprint(parts.vaeDir).slice(0, 16),
      },
      stepsPerEpoch: batcher.stepsPerEpoch,
      examplesPerStep: opts.batchSize,
      batch: (epoch, i) => {
        // Everything random about a batch comes from (seed, epoch, index) — the trainer's rule.
        const rng = new Random(`${opts.seed}/unet/epoch ${epoch}/batch ${i}`);
        return maker.make(trainSet, latents.train, batcher.indices(epoch, i), rng, opts.captionDropout);
      },
      disposeBatch,
      // The EMA is part of the training state (one file, one step); a run saved by an older sdlab
      // has it in ema.safetensors beside the state.
      extraState: opts.emaDecay > 0 ? { prefix: 'ema', variables: ema.ema, legacy: (step) => ema.load(emaFile, step) } : undefined,
      loss: (b) => {
        const { loss, mse } = diffusionLoss(unet, b);
        return { loss, metrics: { mse } };
      },
      evaluate: () => ({ loss: validationLoss(exported, maker, val, latents.val, opts.batchSize) }),
      onEpochEnd: async (ctx: EpochContext, ev) => {
        const last = ctx.step === totalSteps;
        if (!(opts.gridEvery > 0 && ((Number.isInteger(ctx.epoch) && ctx.epoch % opts.gridEvery === 0) || last))) return;
        const epochName = Number.isInteger(ctx.epoch) ? String(ctx.epoch) : ctx.epoch.toFixed(2);
        const title = `epoch ${epochName}  val loss ${ev.loss!.toPrecision(4)}`;
        const file = path.join(ctx.dir, `samples_epoch${epochName}.png`);
        try {
          await saveSampleGrid(file, { ...frozen, unet: exported }, schedulerConfig, { cols: opts.gridCols, steps: opts.gridSteps, guidance: opts.gridGuidance, title, classes: trainSet, canvas });
        } catch (err) {
          // A picture of progress is no reason to stop training (nor to draw black squares).
          if (!(err instanceof NonFiniteError)) throw err;
          log(`unet: no sample grid at epoch ${epochName}: ${err.message}`);
          return;
        }
        fs.copyFileSync(file, path.join(ctx.dir, 'samples.png'));
      },
      inputs: `the frozen VAE's latents (${parts.vaeDir}) and the noise schedule (--beta-schedule/--beta-start/--beta-end)`,
      exportModel: () => {
        fs.rmSync(emaFile, { force: true }); // an older sdlab's EMA file: the state file now holds the EMA
        exported.save(unetDir);
        writeScheduler();
        writeRunClasses(opts.runDir, trainSet); // what `sample` prompts by default (none for digits)
        writeSamplingConfig(opts.runDir, opts.sampling, opts.samplingSource ?? 'sdlab train unet');
      },
    },
    {
      ...harnessOptions(opts),
      onStep: (info) => {
        if (opts.emaDecay > 0) ema.update(info.step);
        opts.onStep?.({ ...info, unet });
      },
    },
  );
  vae.dispose();
  textEncoder.dispose();
  return { ...result, unet, emaUnet: exported, unetDir, schedulerFile, valLoss: lastEpochValue(result, 'loss'), latentStd };
}

/** Mean (weighted) loss of `model` on the held-out latents, with captions, t and noise fixed across epochs. */
export function validationLoss(model: UNet2DConditionModel, maker: BatchMaker, val: Dataset, latents: LatentSet, batchSize: number): number {
  const rng = new Random('unet validation');
  let total = 0;
  for (const idx of chunks(latents.n, batchSize)) {
    const b = maker.make(val, latents, idx, rng, 0);
    try {
      const l = tf.tidy(() => diffusionLoss(model, b).loss.dataSync()[0]);
      total += l * idx.length;
    } finally {
      disposeBatch(b);
    }
  }
  return total / Math.max(1, latents.n);
}

function stdOf(data: Float32Array, scale: number): number {
  let s = 0;
  let s2 = 0;
  for (let i = 0; i < data.length; i++) {
    const v = data[i] * scale;
    s += v;
    s2 += v * v;
  }
  const m = s / data.length;
  return Math.sqrt(Math.max(0, s2 / data.length - m * m));
}

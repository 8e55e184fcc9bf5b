/**
 * `sdlab train <what>`: train the models of a run directory (--run DIR, default runs/default).
 *
 *   npx sdlab train vae                       # → runs/default/vae/ + runs/default/train/vae/
 *   npx sdlab train vae --epochs 4 --lr 2e-3
 *   npx sdlab train vae --resume              # continue exactly where it stopped (Ctrl-C saves)
 *
 * Each model is one subcommand registered by its own function below (registerVae, …), sharing
 * the harness in src/train/. Everything a run trains lives in the run directory: the usable
 * model in <run>/<model>/ (diffusers layout), the training state, history, loss curve and
 * pictures in <run>/train/<model>/.
 *
 * With --resume, the stored settings are used for every flag not given on the command line (the
 * tables COMMON_STORED, VAE_RESUME, … say where each flag's value is stored); a flag given with a
 * different value is refused (the run would no longer match an uninterrupted one) — start over
 * with --overwrite instead.
 *
 * This file only parses: what the architecture flags mean is the recipe's (src/train/recipe.ts),
 * the defaults are the trainers' (VAE_TRAIN_DEFAULTS, …), the presets of `train all` are in
 * src/train/presets.ts.
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import { type BackendSelection, selectBackend, BACKEND_HELP } from '../backend/index.ts';
import { UsageError } from '../util/errors.ts';
import { checkOutputDir } from '../util/fs.ts';
import { float, int, intList, oneOf } from '../util/options.ts';
import { formatDuration } from '../util/progress.ts';
import { VAE_PRESETS } from '../autoencoder/index.ts';
import { readStateInfo, statePath, trainDir } from '../train/state.ts';
import { CHECKPOINT_EVERY, type TrainResult } from '../train/trainer.ts';
import { VAE_TRAIN_DEFAULTS, type VaePreset, trainVae, vaeData } from '../train/vae.ts';
import { CLIP_PRESETS, CLIP_TRAIN_DEFAULTS, type ClipConfigOverrides, type ClipPreset, trainClip } from '../train/clip.ts';
import type { CLIPConfig } from '../clip/index.ts';
import type { UNet2DConditionConfig } from '../unet/index.ts';
import { BETA_SCHEDULES, TIMESTEP_SPACINGS } from '../schedule/index.ts';
import { UNET_TRAIN_DEFAULTS, checkUnetSchedule, trainUnet, trainCommand, type LatentMode } from '../train/unet.ts';
import { DATA_SPLIT } from '../train/vae.ts';
import { type ClipArchitecture, type VaeArchitecture, clipConfigOverrides, unetBlockLayout, vaeConfigOverrides, zeroTerminalSnrFor } from '../train/recipe.ts';
import { loadDataset, splitDataset } from '../data/index.ts';
import { TINY_PRESET, TRAIN_ALL_PRESETS, type TrainAllPresetName } from '../train/presets.ts';
import { describeRun, trainAll } from '../train/all.ts';

const DATA_HELP = 'a directory: IDX files (MNIST, Fashion-MNIST), DIR/<label>/*.png folders, or a metadata.jsonl beside PNGs (default: the embedded MNIST digits)';
const CLASSES_HELP = 'class names for labelled data without them, label 0 first, e.g. "t-shirt,trouser,..." (else DIR/classes.txt; Fashion-MNIST is recognised); captions are made from them';

/** --classes "a,b,c" → ['a', 'b', 'c'] (checked against the data by src/data/source.ts). */
const classList = (value: string): string[] => value.split(',');

/** The trainer defaults the shared flags fall back on (VAE_TRAIN_DEFAULTS, …). */
interface TrainerDefaults {
  epochs?: number;
  maxSteps?: number;
  batchSize: number;
  lr: number;
  weightDecay: number;
  warmupSteps: number;
  minLrRatio: number;
  /** The recipe's gradient clipping (not shown as the flag's default: only the UNet has one). */
  clipGradNorm?: number;
}

/** The subcommand `train <name>` with the flags every trainer shares: run directory, backend, optimisation, stopping. */
function trainerCommand(
  trainCmd: Command,
  name: string,
  description: string,
  d: TrainerDefaults,
): Command {
  return trainCmd
    .command(name)
    .description(description)
    .option('--run <dir>', 'run directory', 'runs/default')
    .option('--backend <name>', BACKEND_HELP, process.env.SDLAB_BACKEND ?? 'auto')
    .option('--seed <n>', 'seed for initialisation, data order and noise', int(0), 0)
    .option('--epochs <n>', 'passes over the training examples (given alone: train them all)', int(1), d.epochs)
    .option('--steps <n>', 'total training steps; the lr schedule ends there', int(1), d.maxSteps)
    .option('--batch-size <n>', 'examples per step', int(1), d.batchSize)
    .option('--lr <x>', 'peak learning rate (AdamW)', float(0), d.lr)
    .option('--weight-decay <x>', 'AdamW decoupled weight decay', float(0), d.weightDecay)
    .option('--warmup <steps>', 'linear learning-rate warm-up steps', int(0), d.warmupSteps)
    .option('--schedule <kind>', 'after warm-up: cosine | constant', oneOf(['cosine', 'constant'] as const), 'cosine')
    .option('--min-lr-ratio <x>', 'cosine floor as a fraction of --lr', float(0, 1), d.minLrRatio)
    .option('--clip-grad-norm <x>', 'clip the global gradient norm (0 = off)', float(0))
    .option('--data <dir>', DATA_HELP)
    .option('--classes <names>', CLASSES_HELP, classList)
    .option('--limit <n>', 'train on only the first N training examples', int(1))
    .option('--resume', 'continue the run in --run exactly where it stopped')
    .option('--overwrite', 'start over even if --run already holds a training state')
    .option('--stop-at-step <n>', 'stop (and save) once N steps are done; continue later with --resume', int(0))
    .option('--max-minutes <x>', 'stop (and save) after this many minutes', float(0))
    .option('--checkpoint-every <steps>', 'also save the training state every N steps (0 = only at epoch ends and stops)', int(0), CHECKPOINT_EVERY);
}

/** The flags trainerCommand registers, as commander hands them over. */
interface CommonCliOptions {
  run: string;
  backend: string;
  seed: number;
  epochs?: number;
  steps?: number;
  batchSize: number;
  lr: number;
  weightDecay: number;
  warmup: number;
  schedule: 'cosine' | 'constant';
  minLrRatio: number;
  clipGradNorm?: number;
  data?: string;
  classes?: string[];
  limit?: number;
  resume?: boolean;
  overwrite?: boolean;
  stopAtStep?: number;
  maxMinutes?: number;
  checkpointEvery: number;
}

/** Whether any of the options `keys` was given on the command line (not a default, not stored). */
function givenOnCli(cmd: Command, ...keys: string[]): boolean {
  return keys.some((k) => cmd.getOptionValueSource(k) === 'cli');
}

/**
 * Checks that --run can be written (before any data or model is loaded), picks the backend;
 * --epochs alone means all of those epochs, not the default step budget.
 */
async function startTraining(cmd: Command, opts: CommonCliOptions): Promise<BackendSelection> {
  checkOutputDir('--run', opts.run);
  const sel = await selectBackend(opts.backend);
  if (givenOnCli(cmd, 'epochs') && !givenOnCli(cmd, 'steps')) opts.steps = undefined;
  return sel;
}

// ---------------------------------------------------------------------------------------------
// --resume: the flags read back from the stored settings

/**
 * Where a training state stores each flag's value: option key → path in its settings (dots go
 * into nested objects). A flag not given on the command line takes the stored value (null: stored
 * as unset); a path the settings lack leaves the flag as it is. Adding a setting is one line.
 */
type StoredFlags = Record<string, string>;

/** The shared flags (and --val-limit, which every trainer has), as the harness (trainer.ts harnessSettings) and dataSettings store them. */
const COMMON_STORED: StoredFlags = {
  seed: 'seed',
  epochs: 'epochs',
  steps: 'maxSteps',
  batchSize: 'batchSize',
  lr: 'lr',
  weightDecay: 'adamw.weightDecay',
  warmup: 'warmupSteps',
  schedule: 'decay',
  minLrRatio: 'minLrRatio',
  clipGradNorm: 'clipGradNorm',
  data: 'data',
  classes: 'classes',
  limit: 'limit',
  valLimit: 'valLimit',
};

/** What --resume reads back for one trainer. */
interface ResumeTable {
  task: string;
  flags: StoredFlags;
  /** The architecture flags: given none of them, the run keeps its stored model config. */
  architecture: string[];
}

/** Fills the flags not given from the stored settings; returns the stored model config when the run keeps it. */
function resumeFlags(cmd: Command, opts: CommonCliOptions, table: ResumeTable): unknown {
  const file = statePath(opts.run, table.task);
  if (!fs.existsSync(file)) throw new UsageError(`--resume: no training state at ${file} (nothing to resume; drop --resume to start).`);
  const stored = readStateInfo(file).settings;
  const o = opts as unknown as Record<string, unknown>;
  for (const [key, where] of Object.entries(table.flags)) {
    const value = where.split('.').reduce<unknown>((v, k) => (v as Record<string, unknown> | null | undefined)?.[k], stored);
    if (value === undefined) continue; // not stored: keep the flag's value
    if (cmd.getOptionValueSource(key) !== 'cli') o[key] = value ?? undefined; // null: stored as unset
  }
  return givenOnCli(cmd, ...table.architecture) ? undefined : stored.config || undefined;
}

/** --steps alone may need more than the default epochs: as many as it takes (trainDigits() counts the training digits). */
function epochsForSteps(cmd: Command, opts: CommonCliOptions, trainDigits: () => number): void {
  if (!opts.resume && givenOnCli(cmd, 'steps') && !givenOnCli(cmd, 'epochs') && opts.steps !== undefined) {
    opts.epochs = Math.max(1, Math.ceil(opts.steps / Math.max(1, Math.floor(trainDigits() / opts.batchSize))));
  }
}

/** The trainer options the common flags give (the rest is each model's own), falling back on the trainer's defaults `d`. */
function commonTrainOptions(cmd: Command, opts: CommonCliOptions, d: TrainerDefaults & { epochs: number }) {
  // The recipe's clipping unless --clip-grad-norm is given (a resumed run: as it was stored).
  const clip = opts.resume || givenOnCli(cmd, 'clipGradNorm') ? opts.clipGradNorm : d.clipGradNorm;
  return {
    runDir: opts.run,
    seed: opts.seed,
    epochs: opts.epochs ?? d.epochs,
    maxSteps: opts.steps,
    batchSize: opts.batchSize,
    lr: opts.lr,
    weightDecay: opts.weightDecay,
    warmupSteps: opts.warmup,
    decay: opts.schedule,
    minLrRatio: opts.minLrRatio,
    // --clip-grad-norm 0 means off (the harness would otherwise scale every gradient to 0).
    clipGradNorm: clip || undefined,
    data: opts.data,
    classes: opts.classes,
    limit: opts.limit,
    resume: opts.resume,
    overwrite: opts.overwrite,
    stopAtStep: opts.stopAtStep,
    timeLimitSeconds: opts.maxMinutes !== undefined ? opts.maxMinutes * 60 : undefined,
    checkpointEvery: opts.checkpointEvery,
  };
}

/** The closing line: finished(rate) for a finished run; a stopped one says how to continue (exit code 130 after Ctrl-C). */
function report(task: string, res: TrainResult, where: string, finished: (rate: string) => void): void {
  const rate = res.examplesPerSecond ? `, ${res.examplesPerSecond.toFixed(1)} img/s` : '';
  if (res.stopped === 'finished') {
    finished(rate);
  } else {
    console.log(`${task}: stopped (${res.stopped}) at step ${res.step}/${res.totalSteps}${rate}; ${where}; continue with --resume`);
    if (res.stopped === 'interrupted') process.exitCode = 130;
  }
}

// ---------------------------------------------------------------------------------------------
// vae

interface VaeCliOptions extends CommonCliOptions, VaeArchitecture {
  valLimit?: number;
  preset: VaePreset;
  loss: 'mse' | 'l1';
  klWeight: number;
  midAttention: boolean;
}

export function registerVae(trainCmd: Command): void {
  const d = VAE_TRAIN_DEFAULTS;
  const cmd = trainerCommand(trainCmd, 'vae', 'train the autoencoder (AutoencoderKL): reconstruction + β·KL, then measure scaling_factor', d);
  cmd
    .option('--preset <name>', `VAE architecture: ${Object.keys(VAE_PRESETS).join(' | ')}`, oneOf(Object.keys(VAE_PRESETS) as VaePreset[]), d.preset)
    .option('--loss <kind>', 'reconstruction loss: mse | l1', oneOf(['mse', 'l1'] as const), d.loss)
    .option('--kl-weight <x>', 'β, the weight of the KL term', float(0), d.beta)
    .option('--channels <list>', 'override block_out_channels, e.g. 32,64,64', intList(1))
    .option('--layers-per-block <n>', 'override layers_per_block', int(1))
    .option('--latent-channels <n>', 'override latent_channels', int(1))
    .option('--norm-groups <n>', 'override norm_num_groups', int(1))
    .option('--sample-size <n>', 'override sample_size (digits are padded to it)', int(1))
    .option('--no-mid-attention', 'no attention in the mid blocks')
    .option('--val-limit <n>', 'validate on at most N held-out digits', int(1))
    .action(async (opts: VaeCliOptions) => {
      await runTrainVae(cmd, opts);
    });
}

const VAE_RESUME: ResumeTable = {
  task: 'vae',
  flags: { ...COMMON_STORED, loss: 'loss', klWeight: 'beta' },
  architecture: ['channels', 'layersPerBlock', 'latentChannels', 'normGroups', 'sampleSize', 'midAttention', 'preset'],
};

async function runTrainVae(cmd: Command, opts: VaeCliOptions): Promise<void> {
  const sel = await startTraining(cmd, opts);
  let config = vaeConfigOverrides(opts);
  if (opts.resume) config = (resumeFlags(cmd, opts, VAE_RESUME) as typeof config | undefined) ?? config;

  epochsForSteps(cmd, opts, () => {
    const size = config.sample_size ?? VAE_PRESETS[opts.preset].sample_size;
    return vaeData({ data: opts.data, limit: opts.limit, size }).train.n;
  });

  const res = await trainVae({
    ...commonTrainOptions(cmd, opts, VAE_TRAIN_DEFAULTS),
    loss: opts.loss,
    beta: opts.klWeight,
    preset: opts.preset,
    config,
    valLimit: opts.valLimit,
    gridSize: VAE_TRAIN_DEFAULTS.gridSize,
  });
  const where = `model in ${res.vaeDir}, state and pictures in ${trainDir(opts.run, 'vae')}`;
  report('vae', res, where, (rate) =>
    console.log(
      `vae: trained ${res.step} steps in ${formatDuration(res.elapsed)} on ${sel.name}${rate}; held-out PSNR ${res.psnr.toFixed(2)} dB; scaling_factor ${res.scalingFactor.toPrecision(5)}; ${where}`,
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// clip

interface ClipCliOptions extends CommonCliOptions, ClipArchitecture {
  valLimit?: number;
  preset: ClipPreset;
  sameLabelWeight: number;
  shiftPixels: number;
}

export function registerClip(trainCmd: Command): void {
  const d = CLIP_TRAIN_DEFAULTS;
  const cmd = trainerCommand(trainCmd, 'clip', 'train the text encoder with an image encoder (CLIP): symmetric InfoNCE on generated captions, zero-shot digit accuracy', d);
  cmd
    .option('--preset <name>', `CLIP architecture: ${CLIP_PRESETS.join(' | ')}`, oneOf(CLIP_PRESETS), d.preset)
    .option('--same-label-weight <w>', 'share of the target on same-digit pairs: 0 = plain CLIP, 1 = every same-digit pair a positive', float(0, 1), d.sameLabelWeight)
    .option('--shift-pixels <n>', 'augmentation: shift training digits by up to N pixels', int(0, 8), d.shiftPixels)
    .option('--projection-dim <n>', 'override projection_dim (the shared embedding width)', int(1))
    .option('--text-width <n>', 'override the text encoder hidden_size (MLP 4× wider)', int(1))
    .option('--text-layers <n>', 'override the text encoder num_hidden_layers', int(1))
    .option('--text-heads <n>', 'override the text encoder num_attention_heads', int(1))
    .option('--image-channels <list>', 'override the image encoder block_out_channels, e.g. 32,64,96', intList(1))
    .option('--norm-groups <n>', 'override the image encoder norm_num_groups', int(1))
    .option('--sample-size <n>', 'override the image encoder sample_size (digits are padded to it)', int(1))
    .option('--val-limit <n>', 'validate on at most N held-out digits', int(1))
    .action(async (opts: ClipCliOptions) => {
      await runTrainClip(cmd, opts);
    });
}

const CLIP_RESUME: ResumeTable = {
  task: 'clip',
  flags: { ...COMMON_STORED, sameLabelWeight: 'sameLabelWeight', shiftPixels: 'shiftPixels' },
  architecture: ['preset', 'projectionDim', 'textWidth', 'textLayers', 'textHeads', 'imageChannels', 'normGroups', 'sampleSize'],
};

async function runTrainClip(cmd: Command, opts: ClipCliOptions): Promise<void> {
  const sel = await startTraining(cmd, opts);
  let config: ClipConfigOverrides = clipConfigOverrides(opts);
  if (opts.resume) {
    // The stored config is the full CLIPConfig; as overrides, it is the whole of both towers.
    const stored = resumeFlags(cmd, opts, CLIP_RESUME) as CLIPConfig | undefined;
    if (stored) config = { projection_dim: stored.projection_dim, text: stored.text_config, image: stored.image_config };
  }

  epochsForSteps(cmd, opts, () => vaeData({ data: opts.data, limit: opts.limit, size: config.image?.sample_size ?? 32 }).train.n);

  const res = await trainClip({
    ...commonTrainOptions(cmd, opts, CLIP_TRAIN_DEFAULTS),
    sameLabelWeight: opts.sameLabelWeight,
    shiftPixels: opts.shiftPixels,
    preset: opts.preset,
    config,
    valLimit: opts.valLimit,
  });
  res.clip.dispose();
  const where = `model in ${res.clipDir}, state and pictures in ${trainDir(opts.run, 'clip')}`;
  report('clip', res, where, (rate) => {
    const ev = res.lastEvaluation;
    const pct = (x: number | undefined) => `${(100 * (x ?? NaN)).toFixed(1)}%`;
    console.log(
      `clip: trained ${res.step} steps in ${formatDuration(res.elapsed)} on ${sel.name}${rate}; held-out zero-shot accuracy ${pct(res.zeroShotAccuracy)}, text->image recall@1 ${pct(ev.recall1)} @5 ${pct(ev.recall5)}; ${where} (details: npx sdlab clip-eval${opts.run === 'runs/default' ? '' : ` --run ${opts.run}`})`,
    );
  });
}

// ---------------------------------------------------------------------------------------------
// unet

interface UnetCliOptions extends CommonCliOptions {
  epochs: number;
  prediction: 'epsilon' | 'v_prediction';
  betaSchedule: (typeof BETA_SCHEDULES)[number];
  betaStart: number;
  betaEnd: number;
  zeroTerminalSnr?: boolean;
  spacing: (typeof TIMESTEP_SPACINGS)[number];
  snrGamma: number;
  captionDropout: number;
  emaDecay: number;
  latents: LatentMode;
  channels?: number[];
  layersPerBlock?: number;
  valLimit: number;
  gridEvery: number;
  gridSteps: number;
  guidance: number;
}

export function registerUnet(trainCmd: Command): void {
  const d = UNET_TRAIN_DEFAULTS;
  const cmd = trainerCommand(
    trainCmd,
    'unet',
    "train the latent-diffusion UNet on the run's frozen VAE latents and CLIP text states (after `train vae` and `train clip`); gradients are clipped at norm 1 unless --clip-grad-norm says otherwise (0 = off)",
    d,
  );
  cmd
    .option('--prediction <kind>', 'what the UNet predicts: epsilon | v_prediction', oneOf(['epsilon', 'v_prediction'] as const), d.prediction)
    .option('--beta-schedule <kind>', `noise schedule: ${BETA_SCHEDULES.join(' | ')}`, oneOf(BETA_SCHEDULES), d.betaSchedule)
    .option('--beta-start <x>', 'first beta', float(0, 1), d.betaStart)
    .option('--beta-end <x>', 'last beta', float(0, 1), d.betaEnd)
    .option('--zero-terminal-snr', 'rescale the betas so the last timestep is pure noise (default with v_prediction)')
    .option('--no-zero-terminal-snr', 'keep the betas as they are (default with epsilon)')
    .option('--spacing <kind>', `sampling timestep spacing written to the scheduler config: ${TIMESTEP_SPACINGS.join(' | ')}`, oneOf(TIMESTEP_SPACINGS), d.timestepSpacing)
    .option('--snr-gamma <x>', 'min-SNR-γ loss weighting (0 = plain MSE)', float(0), d.snrGamma)
    .option('--caption-dropout <p>', 'share of captions replaced by "" (for classifier-free guidance)', float(0, 1), d.captionDropout)
    .option('--ema-decay <x>', 'EMA of the weights, exported as the model (0 = no EMA); the decay after n updates is min(x, (1+n)/(10+n)) as diffusers\' EMAModel, so x only matters after (10x−1)/(1−x) updates (about 8,990 for 0.999; the full preset runs 3,200)', float(0, 0.999999), d.emaDecay)
    .option('--latents <mode>', "diffuse the VAE's posterior mean or a fresh sample: mean | sample", oneOf(['mean', 'sample'] as const), d.latents)
    .option('--channels <list>', 'override block_out_channels, e.g. 32,64', intList(1))
    .option('--layers-per-block <n>', 'override layers_per_block', int(1))
    .option('--val-limit <n>', 'held-out digits for the validation loss', int(1), d.valLimit)
    .option('--grid-every <n>', 'sample grid every N epochs (0 = never)', int(0), d.gridEvery)
    .option('--grid-steps <n>', 'DDIM steps of the sample grid', int(1, 1000), d.gridSteps)
    .option('--guidance <g>', 'classifier-free guidance of the sample grid', float(0, 100), d.gridGuidance)
    .action(async (opts: UnetCliOptions) => {
      await runTrainUnet(cmd, opts);
    });
}

const UNET_RESUME: ResumeTable = {
  task: 'unet',
  flags: {
    ...COMMON_STORED,
    prediction: 'scheduler.prediction_type',
    betaSchedule: 'scheduler.beta_schedule',
    betaStart: 'scheduler.beta_start',
    betaEnd: 'scheduler.beta_end',
    zeroTerminalSnr: 'scheduler.rescale_betas_zero_snr',
    spacing: 'scheduler.timestep_spacing',
    snrGamma: 'snrGamma',
    captionDropout: 'captionDropout',
    emaDecay: 'emaDecay',
    latents: 'latents',
  },
  architecture: ['channels', 'layersPerBlock'],
};

async function runTrainUnet(cmd: Command, opts: UnetCliOptions): Promise<void> {
  const d = UNET_TRAIN_DEFAULTS;
  // Impossible betas fail here, before any work (trainUnet checks the resumed values again).
  checkUnetSchedule({ ...opts, numTrainTimesteps: d.numTrainTimesteps, zeroTerminalSnr: zeroTerminalSnrFor(opts.prediction, opts.zeroTerminalSnr, d.zeroTerminalSnr) });
  const sel = await startTraining(cmd, opts);
  let config: Partial<UNet2DConditionConfig> = { ...d.config, ...(opts.channels ? unetBlockLayout(opts.channels) : {}) };
  if (opts.layersPerBlock !== undefined) config.layers_per_block = opts.layersPerBlock;
  if (opts.resume) config = (resumeFlags(cmd, opts, UNET_RESUME) as typeof config | undefined) ?? config;

  epochsForSteps(cmd, opts, () => Math.min(opts.limit ?? Infinity, splitDataset(loadDataset({ data: opts.data }), DATA_SPLIT).train.n));

  const res = await trainUnet({
    ...d,
    ...commonTrainOptions(cmd, opts, d),
    config,
    prediction: opts.prediction,
    betaSchedule: opts.betaSchedule,
    betaStart: opts.betaStart,
    betaEnd: opts.betaEnd,
    zeroTerminalSnr: zeroTerminalSnrFor(opts.prediction, opts.zeroTerminalSnr, d.zeroTerminalSnr),
    timestepSpacing: opts.spacing,
    snrGamma: opts.snrGamma,
    captionDropout: opts.captionDropout,
    emaDecay: opts.emaDecay,
    latents: opts.latents,
    valLimit: opts.valLimit,
    gridEvery: opts.gridEvery,
    gridSteps: opts.gridSteps,
    gridGuidance: opts.guidance,
  });
  const where = `model (EMA) in ${res.unetDir}, schedule in ${res.schedulerFile}, state and sample grids in ${trainDir(opts.run, 'unet')}`;
  report('unet', res, where, (rate) => {
    const run = opts.run === 'runs/default' ? '' : ` --run ${opts.run}`;
    console.log(`unet: trained ${res.step} steps in ${formatDuration(res.elapsed)} on ${sel.name}${rate}; held-out loss ${res.valLoss.toPrecision(4)}; ${where}`);
    console.log(`next: npx sdlab sample${run} --digits 0-9 --n 8`);
  });
}

// ---------------------------------------------------------------------------------------------
// all

interface AllCliOptions {
  run: string;
  backend: string;
  preset: TrainAllPresetName | 'tiny';
  seed: number;
  data?: string;
  classes?: string[];
  resume?: boolean;
  overwrite?: boolean;
  sheet: boolean;
}

export function registerAll(trainCmd: Command): void {
  const names = Object.keys(TRAIN_ALL_PRESETS) as TrainAllPresetName[];
  trainCmd
    .command('all')
    .description('train the whole digit generator (VAE → CLIP → UNet) and write a sample sheet')
    .option('--preset <name>', names.map((n) => `${n}: ${TRAIN_ALL_PRESETS[n].description}`).join(' | '), oneOf([...names, 'tiny'] as const), 'full')
    .option('--run <dir>', 'run directory', 'runs/default')
    .option('--backend <name>', BACKEND_HELP, process.env.SDLAB_BACKEND ?? 'auto')
    .option('--seed <n>', 'seed for every stage', int(0), 0)
    .option('--data <dir>', DATA_HELP)
    .option('--classes <names>', CLASSES_HELP, classList)
    .option('--resume', 'continue an interrupted run (finished stages are kept)')
    .option('--overwrite', 'start every stage over')
    .option('--no-sheet', 'skip the closing sample sheet')
    .action(async (opts: AllCliOptions) => {
      checkOutputDir('--run', opts.run);
      const sel = await selectBackend(opts.backend);
      if (opts.resume && opts.overwrite) throw new UsageError('--resume and --overwrite: choose one (continue the run, or start it over).');
      // 'tiny' exists for tests (a few steps on tiny models); it is not listed in --help.
      const preset = opts.preset === 'tiny' ? TINY_PRESET : TRAIN_ALL_PRESETS[opts.preset];
      console.log(`train all --preset ${opts.preset}: vae → clip → unet into ${opts.run} on ${sel.name} (${sel.reason})`);
      const res = await trainAll({
        runDir: opts.run,
        preset,
        presetName: opts.preset,
        seed: opts.seed,
        data: opts.data,
        classes: opts.classes,
        resume: opts.resume,
        overwrite: opts.overwrite,
        noSheet: !opts.sheet,
        backend: sel.name,
      });
      for (const s of res.stages) {
        const time = s.status === 'skipped' ? 'already trained' : `${formatDuration(s.seconds)}${s.examplesPerSecond ? `, ${s.examplesPerSecond.toFixed(1)} img/s` : ''}`;
        const metric = Object.entries(s.metric).map(([k, v]) => `${k} ${v.toPrecision(4)}`).join(', ');
        console.log(`  ${s.stage.padEnd(5)} ${s.status.padEnd(8)} ${time}${metric ? `  ${metric}` : ''}`);
      }
      if (res.stopped) {
        const last = res.stages[res.stages.length - 1];
        console.log(`stopped during ${last.stage}; continue with \`${trainCommand('all', opts.run)} --preset ${opts.preset} --resume\``);
        process.exitCode = 130;
        return;
      }
      const train = res.stages.reduce((a, s) => a + s.seconds, 0);
      console.log(`trained in ${formatDuration(train)}${res.sheet ? ` (+ ${formatDuration(res.sheet.seconds)} for the sample sheet)` : ''}`);
      for (const line of describeRun(opts.run, res)) console.log(line);
    });
}

// ---------------------------------------------------------------------------------------------

export function register(program: Command): void {
  const trainCmd = program
    .command('train')
    .description('train the models of a run directory (vae; clip, unet and all come next)');
  registerVae(trainCmd);
  registerClip(trainCmd);
  registerUnet(trainCmd);
  registerAll(trainCmd);
}

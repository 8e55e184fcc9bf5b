/**
 * Training the latent autoencoder (AutoencoderKL) on digits — `npx sdlab train vae`.
 *
 *   loss = reconstruction(decode(z), x) + β · KL(q(z|x) ‖ N(0, I)),   z = μ + σ·ε
 *
 * reconstruction is the per-pixel mean squared (or absolute) error on images in [-1, 1]; the KL
 * is summed over the latent elements of each image and averaged over the batch, as in diffusers'
 * DiagonalGaussianDistribution.kl(). β defaults to 1e-6, LDM's kl_weight: just enough to keep
 * the latents bounded, so the autoencoder stays almost deterministic and sharp. (No
 * perceptual/GAN losses: on 32-px digits plain MSE is enough.)
 *
 * Data: the embedded MNIST digits (or --data: IDX files or an image folder, src/data/source.ts;
 * or the API's `dataset`, an in-memory or tf.data.Dataset), a fixed held-out split (10%, split
 * seed 0, shared by every sdlab trainer so the validation digits are never trained on), padded to
 * 32×32 (vaeData; dataSettings stores what pins the data, so a resume on other data is refused). Each epoch reports held-out reconstruction loss and PSNR (decoding the posterior mean;
 * PSNR = 10·log10(1/MSE) over all validation pixels in [0, 1]) and draws
 * <run>/train/vae/reconstructions.png (originals above, reconstructions below).
 *
 * Beside the model it records the data's own size and padding (<run>/vae/canvas.json, see
 * src/data/canvas.ts), so what the run draws can be written at the data's size.
 *
 * After the last step it measures the standard deviation of the sampled latents over the
 * training set (its first 2048 digits, a random sample: plenty for one number) and writes scaling_factor = 1/std into <run>/vae/config.json — the way SD's
 * 0.18215 was found — so the diffusion model sees unit-variance latents.
 *
 *   const { psnr, scalingFactor } = await trainVae({ ...VAE_TRAIN_DEFAULTS, runDir: 'runs/default' });
 */
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { AutoencoderKL, type AutoencoderKLConfig, VAE_PRESETS, klDivergence } from '../autoencoder/index.ts';
import { type Canvas, type Dataset, type TfDataset, captionKind, centredCanvas, datasetFingerprint, datasetFromTf, isTfDataset, loadDataset, padDataset, splitDataset, subset, writeCanvasRecord } from '../data/index.ts';
import { buildChecked, manualSeed } from '../nn/index.ts';
import { UsageError } from '../util/errors.ts';
import { Random } from '../util/random.ts';
import { saveImageGrid } from '../viz/index.ts';
import { EpochBatcher, chunks, imagesAt } from './data.ts';
import { type EpochContext, type ModelTrainOptions, type TrainResult, harnessOptions, lastEpochValue, train, trainLog } from './trainer.ts';
import { denormalize } from '../data/pixels.ts';

/** Held-out split shared by all sdlab trainers (independent of --seed, so it never moves). */
export const DATA_SPLIT = { valFraction: 0.1, seed: 0 } as const;

export type VaePreset = keyof typeof VAE_PRESETS;

export interface VaeTrainOptions extends ModelTrainOptions {
  /** Reconstruction loss. */
  loss: 'mse' | 'l1';
  /** KL weight β. */
  beta: number;
  preset: VaePreset;
  /** Overrides on top of the preset (e.g. tiny models for tests). */
  config?: Partial<AutoencoderKLConfig>;
  /** Validate on at most N held-out examples (default all). */
  valLimit?: number;
  /** Number of digits in the reconstruction picture. */
  gridSize: number;
  /** Measure the latent std on at most this many training digits (default 2048; 0 = skip). */
  scaleExamples?: number;
}

/**
 * Defaults for the MNIST preset. The budget is images, so small batches and a high peak lr buy
 * more updates per image: 600 steps × 16 = 9,600 digits, a little over one epoch. Measured with
 * seed 0 on all 1,000 held-out digits: 200 steps end at 23.4 dB PSNR, 600 at 28.1 dB, 1,200 at
 * 29.7 dB. The round trip's FID (sdlab eval, three layers, ÷ real-vs-real) falls from 2.08× at
 * 200 steps to 1.32× at 600 (an L1 loss instead: 1.45×), and the full preset's samples from
 * 2.19× to 1.73× at guidance 1.75; 1,200 steps gave the samples nothing more (1.71×), so 600
 * it is (the UNet is the limit from there; README "Results"). On the command line, --epochs N
 * alone trains N full epochs.
 */
export const VAE_TRAIN_DEFAULTS: Omit<VaeTrainOptions, 'runDir'> = {
  seed: 0,
  epochs: 2,
  maxSteps: 600,
  batchSize: 16,
  lr: 2e-3,
  weightDecay: 0.01,
  warmupSteps: 20,
  decay: 'cosine',
  minLrRatio: 0.1,
  loss: 'mse',
  beta: 1e-6,
  preset: 'mnist',
  gridSize: 16,
};

export interface VaeTrainResult extends TrainResult {
  vae: AutoencoderKL;
  /** Held-out PSNR (dB) after the last finished epoch (NaN if no epoch finished). */
  psnr: number;
  /** Measured 1/std of the latents (the preset's value if training stopped early). */
  scalingFactor: number;
  vaeDir: string;
}

/** Where a trainer's examples come from: the options every trainer shares (ModelTrainOptions). */
export interface DataOptions {
  /** A directory (`--data`): IDX files or an image folder; undefined = the embedded MNIST digits. */
  data?: string;
  /** Class names for labelled data without them (`--classes`). */
  classes?: readonly string[];
  /** An in-memory dataset instead of `data` (the library API; a tf.data.Dataset is read by resolveDataset first). */
  dataset?: Dataset;
  /** Train on only the first N training examples. */
  limit?: number;
  /** Validate on only the first N held-out examples. */
  valLimit?: number;
}

/** The examples a trainer uses, and the stored settings that pin where they came from. */
export interface TrainData {
  train: Dataset;
  val: Dataset;
  /** sourceSettings of the loaded data ({} for digits from the embedded set or IDX files). */
  source: Record<string, unknown>;
  /** Where the examples sit on the padded canvas (their own size and offsets). */
  canvas: Canvas;
  /** Where the data came from, in words (for canvas.json). */
  origin?: string;
}

/** The train/validation examples the VAE (and later trainers) use, padded to `size`, and where they sit on that canvas. */
export function vaeData(opts: DataOptions & { size: number }): TrainData {
  const ds = loadDataset({ data: opts.data, classes: opts.classes, dataset: opts.dataset });
  const split = splitDataset(ds, DATA_SPLIT);
  let train = split.train;
  let val = split.val;
  if (opts.limit !== undefined && opts.limit < train.n) train = subset(train, Int32Array.from({ length: opts.limit }, (_, i) => i));
  if (opts.valLimit !== undefined && opts.valLimit < val.n) val = subset(val, Int32Array.from({ length: opts.valLimit }, (_, i) => i));
  if (train.height > opts.size || train.width > opts.size) {
    throw new UsageError(
      `${ds.source ?? 'data'}: images are ${train.height}×${train.width}, larger than the model's sample_size ${opts.size}; smaller images are padded, larger ones are not resized (resize them, or train with a larger --sample-size).`,
    );
  }
  return { train: padDataset(train, opts.size), val: padDataset(val, opts.size), source: sourceSettings(ds, opts), canvas: centredCanvas(train.height, train.width, opts.size), origin: ds.source };
}

/**
 * What a run stores about its data besides --data/--limit: nothing for digits from the embedded
 * set or IDX files (their runs stay as they were); otherwise the --classes given, how captions are
 * made, the class names (or how many texts) and the dataset's fingerprint — so a resume on other
 * data, other names or another in-memory dataset is refused.
 */
export function sourceSettings(ds: Dataset, opts: Pick<DataOptions, 'classes' | 'dataset'>): Record<string, unknown> {
  const kind = captionKind(ds);
  if (kind === 'digits' && !opts.dataset) return {};
  return {
    classes: opts.classes ? [...opts.classes] : null,
    captions: kind,
    ...(kind === 'classes' ? { classNames: [...ds.classNames!] } : kind === 'texts' ? { texts: ds.classNames!.length } : {}),
    fingerprint: datasetFingerprint(ds),
  };
}

/** The in-memory dataset of `opts.dataset`: a tf.data.Dataset is read into memory (once per call). */
export async function resolveDataset(dataset: Dataset | TfDataset<tf.TensorContainer> | undefined): Promise<Dataset | undefined> {
  if (dataset === undefined) return undefined;
  return isTfDataset(dataset) ? datasetFromTf(dataset) : dataset;
}

/** The stored settings that pin a run's examples, held-out ones included (every trainer stores them; a resume must see the same ones). */
export function dataSettings(opts: { data?: string; limit?: number; valLimit?: number }, data: TrainData): Record<string, unknown> {
  return { data: opts.data ?? null, limit: opts.limit ?? null, valLimit: opts.valLimit ?? null, trainExamples: data.train.n, split: DATA_SPLIT, ...data.source };
}

/** Reconstruction error of one batch (mean over all elements). */
function reconstructionLoss(kind: 'mse' | 'l1', y: tf.Tensor, x: tf.Tensor): tf.Scalar {
  return tf.tidy(() => (kind === 'l1' ? tf.mean(tf.abs(tf.sub(y, x))) : tf.mean(tf.squaredDifference(y, x))) as tf.Scalar);
}

export interface VaeEvaluation {
  /** rec + β·KL with the posterior mean decoded. */
  loss: number;
  rec: number;
  kl: number;
  /** 10·log10(1 / MSE) over all pixels in [0, 1] (decoded posterior mean, clipped to [0, 1]). */
  psnr: number;
}

/** Held-out numbers: decode the posterior mean of every validation image. */
export function evaluateVae(vae: AutoencoderKL, val: Dataset, o: { loss: 'mse' | 'l1'; beta: number; batchSize?: number }): VaeEvaluation {
  let rec = 0;
  let kl = 0;
  let sq01 = 0;
  let pixels = 0;
  for (const idx of chunks(val.n, o.batchSize ?? 64)) {
    const [r, k, s] = tf.tidy(() => {
      const x = imagesAt(val, idx);
      const dist = vae.encode(x);
      const y = vae.decode(dist.mean);
      const y01 = denormalize(y);
      const x01 = denormalize(x); // data: already in range, the clamp changes nothing
      return [
        tf.mul(reconstructionLoss(o.loss, y, x), idx.length),
        tf.sum(klDivergence(dist)),
        tf.sum(tf.squaredDifference(y01, x01)),
      ].map((t) => t.dataSync()[0]);
    });
    rec += r!;
    kl += k!;
    sq01 += s!;
    pixels += idx.length * val.height * val.width;
  }
  rec /= val.n;
  kl /= val.n;
  const mse = sq01 / pixels;
  return { loss: rec + o.beta * kl, rec, kl, psnr: 10 * Math.log10(1 / mse) };
}

/** Std of the sampled latents (z = μ + σ·ε) over a dataset, in float64; SD's scaling_factor is 1/this. */
export function latentStd(vae: AutoencoderKL, ds: Dataset, seed: number, batchSize = 128): number {
  const rng = new Random(`${seed}/latent std`);
  let sum = 0;
  let sumSq = 0;
  let count = 0;
  for (const idx of chunks(ds.n, batchSize)) {
    const z = tf.tidy(() => {
      const dist = vae.encode(imagesAt(ds, idx));
      const noise = tf.tensor(rng.normalArray(dist.mean.size), dist.mean.shape) as tf.Tensor4D;
      return vae.sample(dist, noise);
    });
    const data = z.dataSync();
    z.dispose();
    for (let i = 0; i < data.length; i++) {
      sum += data[i];
      sumSq += data[i] * data[i];
    }
    count += data.length;
  }
  const mean = sum / count;
  return Math.sqrt(Math.max(0, sumSq / count - mean * mean) * (count / Math.max(1, count - 1)));
}

/** Originals above, reconstructions below (posterior mean), `cols` digits per row pair. */
export async function saveReconstructionGrid(
  file: string,
  vae: AutoencoderKL,
  images: Dataset,
  opts: { cols?: number; title?: string; scale?: number } = {},
): Promise<void> {
  const n = images.n;
  const cols = Math.min(opts.cols ?? 8, n);
  const rowsOfPairs = Math.ceil(n / cols);
  const cells = tf.tidy(() => {
    const x = imagesAt(images, Int32Array.from({ length: n }, (_, i) => i));
    const y = vae.decode(vae.encode(x).mean);
    const parts: tf.Tensor[] = [];
    for (let r = 0; r < rowsOfPairs; r++) {
      const size = Math.min(cols, n - r * cols);
      const pad = (t: tf.Tensor) =>
        size < cols ? tf.concat([t, tf.zeros([cols - size, ...t.shape.slice(1)])]) : t;
      parts.push(pad(denormalize(tf.slice(x, r * cols, size))), pad(denormalize(tf.slice(y, r * cols, size))));
    }
    return tf.concat(parts);
  });
  try {
    const rowLabels = Array.from({ length: 2 * rowsOfPairs }, (_, i) => (i % 2 === 0 ? 'in' : 'out'));
    await saveImageGrid(file, cells, { cols, scale: opts.scale ?? 2, rowLabels, groupRows: 2, title: opts.title });
  } finally {
    cells.dispose();
  }
}

/** Trains (or resumes) the VAE of a run directory. */
export async function trainVae(opts: VaeTrainOptions): Promise<VaeTrainResult> {
  if (!(opts.preset in VAE_PRESETS)) {
    throw new UsageError(`--preset: unknown VAE preset "${opts.preset}" (expected one of ${Object.keys(VAE_PRESETS).join(', ')}).`);
  }
  const config: AutoencoderKLConfig = { ...VAE_PRESETS[opts.preset], ...opts.config };
  if (config.in_channels !== 1 || config.out_channels !== 1) {
    throw new UsageError(`vae config: in_channels/out_channels must be 1 for grayscale digits, got ${config.in_channels}/${config.out_channels}.`);
  }
  const data = vaeData({ ...opts, dataset: await resolveDataset(opts.dataset), size: config.sample_size });
  const { train: trainSet, val, canvas } = data;
  manualSeed(opts.seed);
  const vae = buildChecked(() => new AutoencoderKL(config), 'vae config');
  const vaeDir = path.join(opts.runDir, 'vae');
  const batcher = new EpochBatcher(trainSet, opts.batchSize, opts.seed);
  const gridSet = subset(val, Int32Array.from({ length: Math.min(opts.gridSize, val.n) }, (_, i) => i));
  const f = vae.downsampleFactor;
  const latentShape: [number, number, number, number] = [opts.batchSize, config.sample_size / f, config.sample_size / f, config.latent_channels];
  if (!Number.isInteger(latentShape[1])) throw new UsageError(`vae config: sample_size ${config.sample_size} is not divisible by ${f}.`);
  let scalingFactor = vae.config.scaling_factor;

  const result = await train<tf.Tensor4D>(
    {
      name: 'vae',
      params: vae.namedParameters().map(([n, p]) => [n, p.variable]),
      settings: {
        config: structuredClone(config),
        batchSize: opts.batchSize,
        loss: opts.loss,
        beta: opts.beta,
        ...dataSettings(opts, data),
      },
      stepsPerEpoch: batcher.stepsPerEpoch,
      examplesPerStep: opts.batchSize,
      batch: (epoch, i) => batcher.images(epoch, i),
      disposeBatch: (b) => b.dispose(),
      loss: (x, ctx) => {
        // The posterior noise comes from the step's seeded generator (not tf.randomNormal), so a
        // resumed run draws the same ε.
        const noise = tf.tensor4d(ctx.rng.normalArray(latentShape.reduce((a, b) => a * b, 1)), latentShape);
        const dist = vae.encode(x);
        const y = vae.decode(vae.sample(dist, noise));
        const rec = reconstructionLoss(opts.loss, y, x);
        const kl = tf.mean(klDivergence(dist)) as tf.Scalar;
        return { loss: tf.add(rec, tf.mul(kl, opts.beta)) as tf.Scalar, metrics: { rec, kl } };
      },
      evaluate: () => ({ ...evaluateVae(vae, val, { ...opts, batchSize: 100 }) }),
      onEpochEnd: async (ctx: EpochContext, ev) => {
        const title = `epoch ${ctx.epoch}  val PSNR ${ev.psnr!.toFixed(1)} dB`;
        await saveReconstructionGrid(path.join(ctx.dir, 'reconstructions.png'), vae, gridSet, { title });
        await saveReconstructionGrid(path.join(ctx.dir, `reconstructions_epoch${ctx.epoch}.png`), vae, gridSet, { title });
      },
      exportModel: () => {
        vae.save(vaeDir);
        // The data's own size and where it sits on the canvas, so outputs can be cropped back to it.
        writeCanvasRecord(vaeDir, canvas, data.origin);
      },
      onTrainEnd: (ctx) => {
        const nScale = Math.min(trainSet.n, opts.scaleExamples ?? 2048);
        if (nScale <= 0) return;
        // The training split is already in random order, so its first digits are a fair sample.
        const std = latentStd(vae, nScale < trainSet.n ? subset(trainSet, Int32Array.from({ length: nScale }, (_, i) => i)) : trainSet, ctx.seed);
        scalingFactor = 1 / std;
        vae.config.scaling_factor = scalingFactor;
        vae.save(vaeDir);
        trainLog(opts)(
          `vae: latent std over ${nScale} training images = ${std.toFixed(4)} → scaling_factor ${scalingFactor.toFixed(5)} written to ${path.join(vaeDir, 'config.json')}`,
        );
      },
    },
    harnessOptions(opts),
  );
  return { ...result, vae, psnr: lastEpochValue(result, 'psnr'), scalingFactor, vaeDir };
}

/**
 * DigitClassifier — a small CNN that judges generated digits for `sdlab eval` (its predictions
 * give conditional accuracy and the class histogram; its feature layer is the space FID is
 * measured in, as Inception-v3's pool features are for natural images).
 *
 *   x [B, 32, 32, 1] in [-1, 1]   (28×28 digits padded by 2 px of background)
 *     → 3×3 conv → GroupNorm → SiLU                                      32×32
 *     → per further block_out_channels entry: 3×3 stride-2 conv → GroupNorm → SiLU
 *       (32→16→8→4), each followed by layers_per_block − 1 more 3×3 convs at that size
 *       (all of these are blocks.N.{conv,norm}; default channels 32, 64, 128, 128)
 *     → flatten (4×4×C) → fc (Linear → SiLU) = features [B, feature_dim]
 *       (plus "taps": the channel means of the 8×8 and 4×4 block outputs, the lower layers
 *       eval's FID adds to the feature layer so it sees texture and sharpness: ./features.ts)
 *       (flatten, not a global average pool: with GroupNorm before it, a mean pool throws away
 *       where the strokes are and trains far slower)
 *     → classifier (Linear) = logits [B, 10]
 *
 * It is trained once per run directory, with Adam + cross-entropy on the TRAINING split of the
 * same seeded split the generators train on (splitDataset, valFraction 0.1, seed 0), with random
 * shifts of ±2 px so it does not hinge on exact centring, and cached as
 * `runs/<run>/classifier/{config.json, model.safetensors}`. Its held-out accuracy is measured on
 * the validation split, which also supplies the real digits FID compares against.
 *
 *   const { model, training } = ensureClassifier('runs/default');   // trains if missing
 *   const { preds, features, probs } = classifyImages(model, images, n);
 *
 * Standalone: `npx sdlab eval --run runs/default --samples DIR` trains it on first use.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { GroupNorm, Linear, Module, ModuleList, buildChecked, getActivation, init, manualSeed } from '../nn/index.ts';
import { type ConfigSpec, readConfig, writeConfig } from '../io/config.ts';
import { buildAndLoad, saveWeights } from '../nn/checkpoint.ts';
import { type Dataset, epochOrder, loadDataset, padDataset, splitDataset } from '../data/index.ts';
import { UsageError, check } from '../util/errors.ts';
import { checkOutputDir } from '../util/fs.ts';
import { MAX_BLOCKS, MAX_LAYERS_PER_BLOCK } from '../util/limits.ts';
import { Progress } from '../util/progress.ts';
import { Random } from '../util/random.ts';
import { toSigned } from '../data/pixels.ts';

// ---------------------------------------------------------------------------------------------
// Config

export interface DigitClassifierConfig {
  in_channels: number;
  sample_size: number;
  /** Channels at 32, 16, 8, 4 px: one entry per resolution. */
  block_out_channels: number[];
  /** 3×3 convs per resolution (the first of each downsampling block has stride 2). */
  layers_per_block: number;
  norm_num_groups: number;
  /** 'flatten' keeps where things are (Linear over all final positions); 'mean' averages them away. */
  pool: string;
  feature_dim: number;
  num_classes: number;
  act_fn: string;
  /** How it was trained, so a cached classifier is only reused for the same data and split. */
  training: ClassifierTraining | Record<string, never>;
}

export interface ClassifierTraining {
  /** The --data it was trained on ('' = the embedded MNIST digits). */
  data: string;
  split_seed: number;
  val_fraction: number;
  seed: number;
  epochs: number;
  steps: number;
  batch_size: number;
  learning_rate: number;
  max_shift: number;
  n_train: number;
  n_val: number;
  /** Accuracy on the held-out (validation) split, measured after training. */
  val_accuracy: number;
  seconds: number;
  backend: string;
}

export const CLASSIFIER_DEFAULTS: DigitClassifierConfig = {
  in_channels: 1,
  sample_size: 32,
  block_out_channels: [32, 64, 128, 128],
  layers_per_block: 1,
  norm_num_groups: 8,
  pool: 'flatten',
  feature_dim: 128,
  num_classes: 10,
  act_fn: 'silu',
  training: {},
};

export const CLASSIFIER_CONFIG_SPEC: ConfigSpec<DigitClassifierConfig> = { className: 'DigitClassifier', defaults: CLASSIFIER_DEFAULTS };

/**
 * The held-out split every sdlab trainer uses (src/train DATA_SPLIT: 10%, seed 0, independent of
 * --seed), so the classifier never trains on the digits that FID compares against.
 */
export const DEFAULT_SPLIT = { valFraction: 0.1, seed: 0 } as const;

export const CLASSIFIER_DIR = 'classifier';
export const CLASSIFIER_WEIGHTS = 'model.safetensors';

function validate(cfg: DigitClassifierConfig, source: string): DigitClassifierConfig {
  const posInt = (v: number) => Number.isInteger(v) && v > 0;
  check(cfg.block_out_channels.length >= 1 && cfg.block_out_channels.every(posInt), `${source}: block_out_channels must be positive integers, got [${cfg.block_out_channels.join(', ')}].`);
  for (const c of cfg.block_out_channels) {
    check(c % cfg.norm_num_groups === 0, `${source}: block_out_channels ${c} is not divisible by norm_num_groups ${cfg.norm_num_groups}.`);
  }
  check(posInt(cfg.layers_per_block) && posInt(cfg.feature_dim) && posInt(cfg.num_classes) && posInt(cfg.in_channels), `${source}: layers_per_block, feature_dim, num_classes and in_channels must be positive integers.`);
  // Blocks and layers are built eagerly (widths: the parameter count, nn buildChecked).
  check(cfg.block_out_channels.length <= MAX_BLOCKS, `${source}: block_out_channels lists ${cfg.block_out_channels.length} levels, over sdlab's limit of ${MAX_BLOCKS}.`);
  check(cfg.layers_per_block <= MAX_LAYERS_PER_BLOCK, `${source}: layers_per_block ${cfg.layers_per_block} is over sdlab's limit of ${MAX_LAYERS_PER_BLOCK}.`);
  getActivation(cfg.act_fn, `${source}: act_fn`);
  check(cfg.pool === 'flatten' || cfg.pool === 'mean', `${source}: pool must be "flatten" or "mean", got "${cfg.pool}".`);
  return cfg;
}

// ---------------------------------------------------------------------------------------------
// Model

/**
 * A 3×3 conv with TensorFlow 'same' padding (for stride 2: one row/column of zeros at the
 * bottom/right only). nn.Conv2d pads explicitly for exact PyTorch semantics, but the backward
 * pass of that explicit pad (a strided Slice) is very slow on the cpu/native backends, and this
 * classifier never has to match a PyTorch checkpoint.
 */
class SameConv2d extends Module {
  readonly weight: tf.Variable;
  readonly bias: tf.Variable;

  constructor(inCh: number, outCh: number, readonly stride: number) {
    super();
    const bound = 1 / Math.sqrt(inCh * 9);
    this.weight = this.param('weight', [3, 3, inCh, outCh], init.uniform(bound), 'conv');
    this.bias = this.param('bias', [outCh], init.uniform(bound));
  }

  forward(x: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => tf.add(tf.conv2d(x, this.weight as tf.Tensor4D, this.stride, 'same'), this.bias));
  }
}

/** conv → GroupNorm → activation. */
class ConvBlock extends Module {
  conv: SameConv2d;
  norm: GroupNorm;

  constructor(inCh: number, outCh: number, stride: number, groups: number, private readonly act: <T extends tf.Tensor>(x: T) => T) {
    super();
    this.conv = this.module('conv', new SameConv2d(inCh, outCh, stride));
    this.norm = this.module('norm', new GroupNorm(groups, outCh));
  }

  forward(x: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => this.act(this.norm.forward(this.conv.forward(x))));
  }
}

export interface ClassifierOutput {
  /** [B, feature_dim]: the classifier's feature layer (the first layer of eval's FID). */
  features: tf.Tensor2D;
  /** [B, num_classes] */
  logits: tf.Tensor2D;
  /**
   * Per-channel spatial means of the last conv output at each of the two lowest resolutions
   * ([B, C] each; 8×8 and 4×4 by default): lower layers that still see stroke texture and
   * sharpness, which the feature layer, trained to read digits, learns to ignore.
   */
  taps: tf.Tensor2D[];
}

export class DigitClassifier extends Module {
  readonly config: DigitClassifierConfig;
  blocks: ModuleList<ConvBlock>;
  fc: Linear;
  classifier: Linear;
  private readonly act: <T extends tf.Tensor>(x: T) => T;

  constructor(config: Partial<DigitClassifierConfig> = {}) {
    super();
    this.config = validate({ ...CLASSIFIER_DEFAULTS, ...config }, 'DigitClassifier config');
    const c = this.config;
    this.act = getActivation(c.act_fn);
    this.blocks = this.module('blocks', new ModuleList<ConvBlock>());
    let ch = c.in_channels;
    c.block_out_channels.forEach((out, i) => {
      for (let j = 0; j < c.layers_per_block; j++) {
        // The first conv of every block after the first halves the resolution.
        this.blocks.push(new ConvBlock(ch, out, i > 0 && j === 0 ? 2 : 1, c.norm_num_groups, this.act));
        ch = out;
      }
    });
    const finalSize = c.block_out_channels.slice(1).reduce((size) => Math.ceil(size / 2), c.sample_size);
    this.fc = this.module('fc', new Linear(c.pool === 'flatten' ? ch * finalSize * finalSize : ch, c.feature_dim));
    this.classifier = this.module('classifier', new Linear(c.feature_dim, c.num_classes));
  }

  /** Indices into `blocks` whose outputs are the taps: the last conv of each of the two lowest resolutions. */
  get tapBlocks(): number[] {
    const { block_out_channels: ch, layers_per_block: lpb } = this.config;
    return ch.map((_, i) => (i + 1) * lpb - 1).slice(-2);
  }

  /** Channels of each tap (ClassifierOutput.taps). */
  get tapDims(): number[] {
    return this.tapBlocks.map((b) => this.config.block_out_channels[Math.floor(b / this.config.layers_per_block)]);
  }

  forward(x: tf.Tensor4D): ClassifierOutput {
    return tf.tidy(() => {
      const tapAt = this.tapBlocks;
      const taps: tf.Tensor2D[] = [];
      let h = x;
      let i = 0;
      for (const b of this.blocks) {
        h = b.forward(h);
        if (tapAt.includes(i++)) taps.push(tf.mean(h, [1, 2]) as tf.Tensor2D);
      }
      const pooled = (this.config.pool === 'flatten' ? tf.reshape(h, [h.shape[0], -1]) : tf.mean(h, [1, 2])) as tf.Tensor2D;
      const features = this.act(this.fc.forward(pooled));
      return { features, logits: this.classifier.forward(features), taps };
    });
  }

  /** Writes config.json + model.safetensors into `dir`. */
  save(dir: string): void {
    saveWeights(this, path.join(dir, CLASSIFIER_WEIGHTS));
    writeConfig(path.join(dir, 'config.json'), 'DigitClassifier', this.config);
  }

  static load(dir: string): DigitClassifier {
    const cfgFile = path.join(dir, 'config.json');
    const cfg = validate(readConfig(cfgFile, CLASSIFIER_CONFIG_SPEC), cfgFile);
    return buildAndLoad(() => new DigitClassifier(cfg), path.join(dir, CLASSIFIER_WEIGHTS), cfgFile);
  }
}

// ---------------------------------------------------------------------------------------------
// Inference

export interface Classified {
  /** Argmax class per image. */
  preds: Int32Array;
  /** Row-major [n, feature_dim]. */
  features: Float32Array;
  /** Row-major [n, num_classes] softmax probabilities. */
  probs: Float32Array;
  /** Lower-layer features (ClassifierOutput.taps), row-major [n, dim] each; none for a classifier without them. */
  taps?: Array<{ name: string; dim: number; data: Float32Array }>;
}

/** Anything that classifies images and gives features (the real classifier, or a fake in tests). */
export interface ImageClassifier {
  readonly featureDim: number;
  /** `images`: n × 32 × 32 pixels in [-1, 1], image after image. */
  classify(images: Float32Array, n: number): Classified;
}

/** Runs `model` over n images (n × H × W in [-1, 1]) in batches. */
export function classifyImages(model: DigitClassifier, images: Float32Array, n: number, batchSize = 256): Classified {
  const s = model.config.sample_size;
  const px = s * s * model.config.in_channels;
  check(images.length === n * px, `classify: expected ${n} images of ${s}×${s}, got ${images.length} values.`);
  const F = model.config.feature_dim, C = model.config.num_classes;
  const features = new Float32Array(n * F);
  const probs = new Float32Array(n * C);
  const preds = new Int32Array(n);
  const taps = model.tapBlocks.map((b, k) => ({ name: `blocks.${b} channel means`, dim: model.tapDims[k], data: new Float32Array(n * model.tapDims[k]) }));
  for (let start = 0; start < n; start += batchSize) {
    const b = Math.min(batchSize, n - start);
    const [f, p, a, ...t] = tf.tidy(() => {
      const x = tf.tensor4d(images.subarray(start * px, (start + b) * px), [b, s, s, model.config.in_channels]);
      const out = model.forward(x);
      return [out.features, tf.softmax(out.logits), tf.argMax(out.logits, 1), ...out.taps];
    });
    features.set(f.dataSync() as Float32Array, start * F);
    probs.set(p.dataSync() as Float32Array, start * C);
    preds.set(a.dataSync() as Int32Array, start);
    t.forEach((tap, k) => taps[k].data.set(tap.dataSync() as Float32Array, start * taps[k].dim));
    tf.dispose([f, p, a, ...t]);
  }
  return { preds, features, probs, taps };
}

/** Wraps a DigitClassifier as an ImageClassifier. */
export function asImageClassifier(model: DigitClassifier): ImageClassifier {
  return { featureDim: model.config.feature_dim, classify: (images, n) => classifyImages(model, images, n) };
}

// ---------------------------------------------------------------------------------------------
// Training

/** Pixels of a [0, 1] dataset mapped to [-1, 1] (what the classifier and the generators see). */
export function signedImages(ds: Dataset): Float32Array {
  return ds.images.map(toSigned);
}

/**
 * A batch of images in [-1, 1], each shifted by a random (dx, dy) in [-maxShift, maxShift]
 * with background (-1) filled in: cheap augmentation so the classifier accepts digits that a
 * generator draws a pixel or two off-centre.
 */
export function shiftedBatch(ds: Dataset, idx: ArrayLike<number>, maxShift: number, rng: Random): Float32Array {
  const H = ds.height, W = ds.width, px = H * W;
  const out = new Float32Array(idx.length * px).fill(-1);
  for (let k = 0; k < idx.length; k++) {
    const src = ds.images.subarray(idx[k] * px, (idx[k] + 1) * px);
    const dx = maxShift > 0 ? rng.int(2 * maxShift + 1) - maxShift : 0;
    const dy = maxShift > 0 ? rng.int(2 * maxShift + 1) - maxShift : 0;
    for (let y = 0; y < H; y++) {
      const sy = y - dy;
      if (sy < 0 || sy >= H) continue;
      for (let x = 0; x < W; x++) {
        const sx = x - dx;
        if (sx < 0 || sx >= W) continue;
        out[k * px + y * W + x] = toSigned(src[sy * W + sx]);
      }
    }
  }
  return out;
}

export interface TrainClassifierOptions {
  epochs: number;
  batchSize?: number;
  learningRate?: number;
  /** Max random shift in pixels (0 = no augmentation). Default 2. */
  maxShift?: number;
  seed?: number;
  /** Stop after this many steps (tests); default: epochs × batches per epoch. */
  maxSteps?: number;
  /** Show a progress bar (default true). */
  progress?: boolean;
}

/**
 * Trains `model` in place on `train` (a [0, 1] dataset already padded to the model's size):
 * Adam, softmax cross-entropy, learning rate cosine-decayed to 5% over the run. Returns the
 * number of steps and the mean loss of the last 50 steps.
 */
export function trainClassifier(model: DigitClassifier, train: Dataset, opts: TrainClassifierOptions): { steps: number; loss: number } {
  const batchSize = opts.batchSize ?? 64;
  const lr0 = opts.learningRate ?? 2e-3;
  const maxShift = opts.maxShift ?? 2;
  const seed = opts.seed ?? 0;
  const s = model.config.sample_size;
  check(train.height === s && train.width === s, `classifier: training images are ${train.height}×${train.width}, expected ${s}×${s} (pad them first).`);
  const perEpoch = Math.floor(train.n / batchSize);
  check(perEpoch >= 1, `classifier: ${train.n} training images are fewer than one batch of ${batchSize}.`);
  const total = Math.min(opts.maxSteps ?? Infinity, opts.epochs * perEpoch);
  const optimizer = tf.train.adam(lr0);
  const setLr = (lr: number) => ((optimizer as unknown as { learningRate: number }).learningRate = lr);
  const vars = model.parameters();
  const rng = new Random(`${seed}/classifier shifts`);
  const bar = opts.progress === false ? null : new Progress({ total, label: 'classifier', unit: 'step' });
  const recent: number[] = [];
  let step = 0;
  try {
    for (let epoch = 0; step < total; epoch++) {
      const order = epochOrder(train.n, { seed, epoch });
      for (let b = 0; b < perEpoch && step < total; b++, step++) {
        setLr(lr0 * (0.05 + 0.95 * 0.5 * (1 + Math.cos((Math.PI * step) / total))));
        const idx = order.subarray(b * batchSize, (b + 1) * batchSize);
        const x = tf.tensor4d(shiftedBatch(train, idx, maxShift, rng), [idx.length, s, s, 1]);
        const y = tf.oneHot(tf.tensor1d(Array.from(idx, (i) => train.labels[i]), 'int32'), model.config.num_classes);
        const loss = optimizer.minimize(() => tf.losses.softmaxCrossEntropy(y, model.forward(x).logits) as tf.Scalar, true, vars)!;
        const l = loss.dataSync()[0];
        tf.dispose([x, y, loss]);
        recent.push(l);
        if (recent.length > 50) recent.shift();
        bar?.tick(1, `loss ${l.toFixed(4)} epoch ${epoch + 1}`);
      }
    }
  } finally {
    bar?.finish();
    optimizer.dispose();
  }
  return { steps: step, loss: recent.reduce((a, b) => a + b, 0) / Math.max(1, recent.length) };
}

/** Share of `ds` (a [0, 1] dataset at the model's size) that `model` classifies correctly. */
export function accuracy(model: DigitClassifier, ds: Dataset): number {
  const { preds } = classifyImages(model, signedImages(ds), ds.n);
  let ok = 0;
  for (let i = 0; i < ds.n; i++) if (preds[i] === ds.labels[i]) ok++;
  return ok / Math.max(1, ds.n);
}

/** The held-out digits and training digits of the seeded split, padded to 32×32, values in [0, 1]. */
export function loadSplit(data: string | undefined, size = 32): { train: Dataset; val: Dataset } {
  const ds = loadDataset({ data });
  const { train, val } = splitDataset(ds, DEFAULT_SPLIT);
  return { train: padDataset(train, size), val: padDataset(val, size) };
}

export interface EnsureClassifierOptions {
  /** --data (undefined / '' = embedded MNIST). */
  data?: string;
  /** Train again even if a cached classifier exists. */
  retrain?: boolean;
  epochs?: number;
  batchSize?: number;
  learningRate?: number;
  seed?: number;
  maxSteps?: number;
  /** Architecture overrides (tests use a tiny one). */
  config?: Partial<DigitClassifierConfig>;
  progress?: boolean;
  /** Name of the tf backend, recorded in config.json. */
  backend?: string;
  log?: (line: string) => void;
}

export interface EnsuredClassifier {
  model: DigitClassifier;
  dir: string;
  training: ClassifierTraining;
  /** True when it was trained by this call. */
  trainedNow: boolean;
}

/**
 * Loads `run/classifier/`, or trains and saves it there when missing (or `retrain`). A cached
 * classifier trained on other data or another split is refused: its "held-out" digits would not
 * be held out.
 */
export function ensureClassifier(runDir: string, opts: EnsureClassifierOptions = {}): EnsuredClassifier {
  const dir = path.join(runDir, CLASSIFIER_DIR);
  const data = opts.data ?? '';
  const splitSeed = DEFAULT_SPLIT.seed;
  const log = opts.log ?? ((line: string) => console.log(line));
  if (!opts.retrain && fs.existsSync(path.join(dir, 'config.json'))) {
    const model = DigitClassifier.load(dir);
    const t = model.config.training as Partial<ClassifierTraining>;
    const where = path.join(dir, 'config.json');
    if (t.data !== data || t.split_seed !== splitSeed || t.val_fraction !== DEFAULT_SPLIT.valFraction) {
      model.dispose();
      throw new UsageError(
        `${where}: this classifier was trained on data "${t.data ?? '?'}" (split seed ${t.split_seed ?? '?'}, held out ${t.val_fraction ?? '?'}), not "${data}" (split seed ${splitSeed}, held out ${DEFAULT_SPLIT.valFraction}); pass the matching --data, or --retrain.`,
      );
    }
    return { model, dir, training: t as ClassifierTraining, trainedNow: false };
  }

  checkOutputDir('--run', runDir); // before the training, not after it
  const { train, val } = loadSplit(opts.data);
  const seed = opts.seed ?? 0;
  const epochs = opts.epochs ?? 8;
  const batchSize = opts.batchSize ?? 64;
  const learningRate = opts.learningRate ?? 2e-3;
  const maxShift = 2;
  manualSeed(seed);
  const model = buildChecked(() => new DigitClassifier({ ...opts.config, training: {} }), 'classifier config');
  log(`training the digit classifier on ${train.n} digits (${epochs} epochs, ${model.numParameters().toLocaleString('en-US')} parameters); it is cached in ${dir}`);
  const start = Date.now();
  const res = trainClassifier(model, train, { epochs, batchSize, learningRate, maxShift, seed, maxSteps: opts.maxSteps, progress: opts.progress });
  const seconds = (Date.now() - start) / 1000;
  const valAccuracy = accuracy(model, val);
  const training: ClassifierTraining = {
    data, split_seed: splitSeed, val_fraction: DEFAULT_SPLIT.valFraction, seed, epochs, steps: res.steps, batch_size: batchSize,
    learning_rate: learningRate, max_shift: maxShift, n_train: train.n, n_val: val.n,
    val_accuracy: Number(valAccuracy.toFixed(5)), seconds: Number(seconds.toFixed(1)), backend: opts.backend ?? tf.getBackend(),
  };
  (model.config as { training: ClassifierTraining }).training = training;
  model.save(dir);
  log(`classifier: held-out accuracy ${(valAccuracy * 100).toFixed(2)}% on ${val.n} digits after ${res.steps} steps (${seconds.toFixed(0)} s); saved ${dir}`);
  return { model, dir, training, trainedNow: true };
}

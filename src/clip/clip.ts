/**
 * CLIPModel — sdlab's small CLIP: a text encoder (CLIP text transformer + text_projection) and
 * an image encoder (a CNN) trained so that a digit and its caption land close together in one
 * L2-normalised embedding space (contrastive language-image pre-training, Radford et al. 2021).
 *
 *   encodeText(ids) = normalise(text_projection(pooled text state))      [B, P]
 *   encodeImage(x)  = normalise(image_encoder(x))                        [B, P]
 *   logits[i, j]    = exp(logit_scale) · <image_i, text_j>   (logit_scale learned, init ln(1/0.07),
 *                                                             capped at ln 100)
 *   loss            = ½ (CE(logits, diag) + CE(logitsᵀ, diag))  — symmetric InfoNCE (clipLoss):
 *                     each image must pick its own caption among the batch's, and each caption
 *                     its image. sdlab's trainer (src/train/clip.ts) passes the digit labels too,
 *                     so that same-digit pairs share part of the target.
 *
 * After training, the text encoder's lastHiddenState is what the UNet cross-attends to.
 *
 * Training from scratch: warm the learning rate up. At initialisation every random alignment of
 * images and captions costs more than chance, and the quickest way down is to make all embeddings
 * equal; at Adam 1e-3 from step 0 both towers collapse within ~10 steps and the loss then sits at
 * ln(batch size) (measured on MNIST, batch 64). A linear warmup to 1e-3 over the first 100 steps
 * avoids it: zero-shot accuracy ~95 % after 140 steps of batch 64 in that measurement.
 *
 *   const tok = mnistCaptionTokenizer();               // src/train/clip.ts: the caption words
 *   const clip = new CLIPModel(mnistClipConfig(tok.vocabSize));
 *   const loss = clip.loss(images, ids);              // scalar; images NHWC in [-1, 1]
 *   clip.clampLogitScale();                           // after each optimizer step
 *   clip.save('runs/default/clip', tok);              // config.json + model.safetensors + tokenizer.json
 *   const again = CLIPModel.fromPretrained('runs/default/clip');  // again.tokenizer is set
 *
 * Weight names: text_model.* and text_projection.weight as in transformers' CLIPModel (so
 * TextEncoder.fromPretrained reads the text tower straight out of model.safetensors),
 * image_encoder.* for the CNN, and logit_scale.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { Module, init } from '../nn/index.ts';
import { parseConfig, readConfig, writeConfig } from '../io/config.ts';
import { buildAndLoad, saveWeights } from '../nn/checkpoint.ts';
import type { WriteDtype } from '../io/safetensors.ts';
import { UsageError } from '../util/errors.ts';
import { writeFileAtomicSync } from '../util/fs.ts';
import type { Tokenizer } from './tokenizer.ts';
import { loadTokenizer } from './tokenizer_load.ts';
import { WordTokenizer, WORD_TOKENIZER_FILE } from './tokenizer_word.ts';
import {
  TEXT_ENCODER_CONFIG_SPEC,
  TEXT_ENCODER_PRESETS,
  TextEncoder,
  type TextEncoderConfig,
  validateTextEncoderConfig,
} from './text_encoder.ts';
import {
  IMAGE_ENCODER_CONFIG_SPEC,
  IMAGE_ENCODER_PRESETS,
  ImageEncoder,
  type ImageEncoderConfig,
  validateImageEncoderConfig,
} from './image_encoder.ts';

// ---------------------------------------------------------------------------------------------
// Config

export interface CLIPConfig {
  /** Width of the shared embedding space (both towers project to it). */
  projection_dim: number;
  /** Initial logit_scale = ln(1/temperature); CLIP's 0.07 gives 2.6592. */
  logit_scale_init_value: number;
  text_config: TextEncoderConfig;
  image_config: ImageEncoderConfig;
}

/** The largest logit scale: exp(logit_scale) ≤ 100, as in CLIP (keeps training stable). */
export const LOGIT_SCALE_MAX = Math.log(100);
export const LOGIT_SCALE_INIT = Math.log(1 / 0.07);

export const CLIP_DEFAULTS: CLIPConfig = {
  projection_dim: 128,
  logit_scale_init_value: LOGIT_SCALE_INIT,
  text_config: TEXT_ENCODER_PRESETS.mnist,
  image_config: IMAGE_ENCODER_PRESETS.mnist,
};

export const CLIP_CONFIG_FILE = 'config.json';
export const CLIP_WEIGHTS_FILE = 'model.safetensors';
const CLASS_NAME = 'CLIPModel';

/** The CLIP for MNIST captions: TEXT_ENCODER_PRESETS.mnist + IMAGE_ENCODER_PRESETS.mnist, vocab from the tokenizer. */
export function mnistClipConfig(vocabSize: number, maxLength = TEXT_ENCODER_PRESETS.mnist.max_position_embeddings): CLIPConfig {
  return {
    ...CLIP_DEFAULTS,
    text_config: { ...TEXT_ENCODER_PRESETS.mnist, vocab_size: vocabSize, max_position_embeddings: maxLength },
    image_config: { ...IMAGE_ENCODER_PRESETS.mnist },
  };
}

/** Fills defaults, checks both towers and that they agree on projection_dim. */
export function validateClipConfig(cfg: CLIPConfig, source = 'clip config'): CLIPConfig {
  const text = validateTextEncoderConfig({ ...cfg.text_config }, `${source} text_config`);
  const image = validateImageEncoderConfig({ ...cfg.image_config }, `${source} image_config`);
  if (!text.architectures.includes('CLIPTextModelWithProjection')) text.architectures = ['CLIPTextModelWithProjection'];
  const p = cfg.projection_dim;
  if (!Number.isInteger(p) || p < 1) throw new UsageError(`${source}: projection_dim must be a positive integer, got ${p}.`);
  if (text.projection_dim !== p || image.projection_dim !== p) {
    throw new UsageError(
      `${source}: projection_dim ${p} must equal text_config.projection_dim (${text.projection_dim}) and image_config.projection_dim (${image.projection_dim}).`,
    );
  }
  if (!Number.isFinite(cfg.logit_scale_init_value)) throw new UsageError(`${source}: logit_scale_init_value must be a number.`);
  return { ...cfg, text_config: text, image_config: image };
}

/** Reads and validates a clip/config.json (top-level keys, then each tower's keys). */
export function readClipConfig(file: string): CLIPConfig {
  const top = readConfig(file, { className: CLASS_NAME, defaults: CLIP_DEFAULTS });
  return validateClipConfig(
    {
      ...top,
      text_config: parseConfig(top.text_config, TEXT_ENCODER_CONFIG_SPEC, `${file} text_config`),
      image_config: parseConfig(top.image_config, IMAGE_ENCODER_CONFIG_SPEC, `${file} image_config`),
    },
    file,
  );
}

/** Throws unless `tok`'s ids and length fit the text encoder (`where` names the folder). */
export function checkTokenizerFits<T extends Tokenizer>(tok: T, cfg: TextEncoderConfig, where: string): T {
  if (tok.vocabSize > cfg.vocab_size) {
    throw new UsageError(`${where}: the tokenizer has ${tok.vocabSize} tokens but text_config.vocab_size is ${cfg.vocab_size}.`);
  }
  if (tok.maxLength > cfg.max_position_embeddings) {
    throw new UsageError(`${where}: the tokenizer makes ${tok.maxLength}-token encodings but text_config.max_position_embeddings is ${cfg.max_position_embeddings}.`);
  }
  return tok;
}

// ---------------------------------------------------------------------------------------------
// Loss

/** x / max(‖x‖₂, 1e-12) over the last axis (torch F.normalize). */
export function l2Normalize<T extends tf.Tensor>(x: T): T {
  return tf.tidy(() => tf.div(x, tf.maximum(tf.norm(x, 'euclidean', -1, true), 1e-12)) as T);
}

/**
 * CLIP's loss: symmetric InfoNCE with in-batch negatives (HF transformers' clip_loss).
 * imageEmbeds, textEmbeds [N, P] (pair i is image i with text i; pass L2-normalised embeddings),
 * logitScale = ln(scale), capped at LOGIT_SCALE_MAX (no gradient above the cap). With
 * logits = exp(logitScale)·I·Tᵀ and a target matrix whose rows sum to 1:
 *
 *   loss = −1/(2N) Σ_ij target[i, j] · ( log softmax_j logits[i, j]      image → text
 *                                      + log softmax_i logits[i, j] )    text → image
 *
 * Without labels the target is the identity — each image's own caption, each caption's own
 * image — and this is CLIP's ½ [CE(logits, diag) + CE(logitsᵀ, diag)]. With labels, pairs of the
 * same label share `sameLabelWeight` of the target (contrastiveTargets): what sdlab's CLIP trainer
 * minimises, as a batch of digits holds several of each and "seven" fits every 7.
 */
export function clipLoss(
  imageEmbeds: tf.Tensor2D,
  textEmbeds: tf.Tensor2D,
  logitScale: tf.Scalar | number,
  labels: ArrayLike<number> | null = null,
  sameLabelWeight = 0,
): tf.Scalar {
  return tf.tidy(() => {
    const n = imageEmbeds.shape[0];
    const pairLabels = labels ?? Int32Array.from({ length: n }, (_, i) => i); // every pair its own class
    if (textEmbeds.shape[0] !== n || textEmbeds.shape[1] !== imageEmbeds.shape[1] || pairLabels.length !== n) {
      throw new UsageError(`clipLoss: image embeddings [${imageEmbeds.shape}], text embeddings [${textEmbeds.shape}] and ${pairLabels.length} labels must agree.`);
    }
    const scale = tf.exp(tf.minimum(logitScale, LOGIT_SCALE_MAX));
    const logits = tf.mul(tf.matMul(imageEmbeds, textEmbeds, false, true), scale); // [images, captions]
    const target = tf.tensor2d(contrastiveTargets(pairLabels, sameLabelWeight), [n, n]);
    const imageToText = tf.sub(logits, tf.logSumExp(logits, 1, true)); // log p(caption j | image i)
    const textToImage = tf.sub(logits, tf.logSumExp(logits, 0, true)); // log p(image i | caption j)
    const ce = tf.add(tf.sum(tf.mul(target, imageToText)), tf.sum(tf.mul(target, textToImage)));
    return tf.div(ce, -2 * n) as tf.Scalar;
  });
}

/**
 * target[i, j] = (1 − w)·[i = j] + w·[label_i = label_j] / (count of label_i in the batch).
 * Each row sums to 1, and the matrix is symmetric, so its columns are the caption → image targets.
 * With w = 0 (or all labels different) it is the identity.
 */
export function contrastiveTargets(labels: ArrayLike<number>, sameLabelWeight: number): Float32Array {
  const n = labels.length;
  const w = sameLabelWeight;
  const count = new Map<number, number>();
  for (let i = 0; i < n; i++) count.set(labels[i], (count.get(labels[i]) ?? 0) + 1);
  const t = new Float32Array(n * n);
  for (let i = 0; i < n; i++) {
    const c = count.get(labels[i])!;
    for (let j = 0; j < n; j++) t[i * n + j] = (i === j ? 1 - w : 0) + (labels[i] === labels[j] ? w / c : 0);
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// CLIPModel

export interface CLIPOutput {
  /** [N, P], L2-normalised. */
  imageEmbeds: tf.Tensor2D;
  /** [N, P], L2-normalised. */
  textEmbeds: tf.Tensor2D;
  /** [N images, N texts] = exp(logit_scale)·cosine similarity. */
  logitsPerImage: tf.Tensor2D;
  loss: tf.Scalar;
}

export class CLIPModel extends Module {
  readonly config: CLIPConfig;
  /** The text tower; its parameters are registered here as text_model.* and text_projection.*. */
  readonly textEncoder: TextEncoder;
  readonly image_encoder: ImageEncoder;
  readonly logit_scale: tf.Variable;
  /** Set by fromPretrained (and usable by encodePrompts); save() writes it. */
  tokenizer: Tokenizer | null = null;

  constructor(config: Partial<CLIPConfig> = {}) {
    super();
    this.config = validateClipConfig({ ...CLIP_DEFAULTS, ...config });
    this.textEncoder = new TextEncoder(this.config.text_config);
    // Register the text tower's children directly, so names read as in transformers' CLIPModel.
    this.module('text_model', this.textEncoder.text_model);
    this.module('text_projection', this.textEncoder.text_projection!);
    this.image_encoder = this.module('image_encoder', new ImageEncoder(this.config.image_config));
    this.logit_scale = this.param('logit_scale', [], init.constant(this.config.logit_scale_init_value));
  }

  /** ids [B, L] → L2-normalised text embeddings [B, P]. */
  encodeText(ids: tf.Tensor2D | number[][]): tf.Tensor2D {
    return tf.tidy(() => l2Normalize(this.textEncoder.forward(ids).textEmbeds!));
  }

  /** images [B, H, W, C] in [-1, 1] → L2-normalised image embeddings [B, P]. */
  encodeImage(images: tf.Tensor4D): tf.Tensor2D {
    return tf.tidy(() => l2Normalize(this.image_encoder.forward(images)));
  }

  /** Token ids [B, L] int32 for `texts`, from this.tokenizer. */
  tokenize(texts: readonly string[]): tf.Tensor2D {
    if (!this.tokenizer) throw new UsageError('clip: no tokenizer attached (load with CLIPModel.fromPretrained or set model.tokenizer).');
    const tok = this.tokenizer;
    return tf.tensor2d(texts.map((t) => tok.encode(t).inputIds), [texts.length, tok.maxLength], 'int32');
  }

  /** encodeText(tokenize(texts)). */
  encodePrompts(texts: readonly string[]): tf.Tensor2D {
    return tf.tidy(() => this.encodeText(this.tokenize(texts)));
  }

  /** exp(min(logit_scale, ln 100)): the multiplier on cosine similarities. */
  get scale(): number {
    return Math.exp(Math.min(this.logit_scale.dataSync()[0], LOGIT_SCALE_MAX));
  }

  /** Caps the learned logit_scale at ln 100 in place (call after each optimizer step, as CLIP does). */
  clampLogitScale(): void {
    tf.tidy(() => this.logit_scale.assign(tf.minimum(this.logit_scale, LOGIT_SCALE_MAX)));
  }

  /** Both towers, the logits and the symmetric contrastive loss for a batch of N pairs. */
  forward(images: tf.Tensor4D, ids: tf.Tensor2D | number[][]): CLIPOutput {
    return tf.tidy(() => {
      const imageEmbeds = this.encodeImage(images);
      const textEmbeds = this.encodeText(ids);
      const scale = tf.exp(tf.minimum(this.logit_scale, LOGIT_SCALE_MAX));
      const logitsPerImage = tf.mul(tf.matMul(imageEmbeds, textEmbeds, false, true), scale) as tf.Tensor2D;
      return { imageEmbeds, textEmbeds, logitsPerImage, loss: clipLoss(imageEmbeds, textEmbeds, this.logit_scale as tf.Scalar) };
    });
  }

  /** The contrastive loss alone: clipLoss of the batch's pairs (each image with its own text). */
  loss(images: tf.Tensor4D, ids: tf.Tensor2D | number[][]): tf.Scalar {
    return tf.tidy(() => clipLoss(this.encodeImage(images), this.encodeText(ids), this.logit_scale as tf.Scalar));
  }

  /**
   * Writes `dir`/config.json, model.safetensors and (for a word tokenizer) tokenizer.json.
   * A CLIP BPE tokenizer is not copied: it lives in its own vocab.json + merges.txt.
   */
  save(dir: string, tokenizer: Tokenizer | null = this.tokenizer, opts: { dtype?: WriteDtype } = {}): void {
    if (tokenizer) checkTokenizerFits(tokenizer, this.config.text_config, dir);
    saveWeights(this, path.join(dir, CLIP_WEIGHTS_FILE), opts);
    writeConfig(path.join(dir, CLIP_CONFIG_FILE), CLASS_NAME, this.config);
    if (tokenizer instanceof WordTokenizer) {
      writeFileAtomicSync(path.join(dir, WORD_TOKENIZER_FILE), JSON.stringify(tokenizer.toJSON(), null, 1) + '\n');
    }
  }

  /** Loads a clip/ folder written by save(); attaches its tokenizer when one is there. */
  static fromPretrained(dir: string): CLIPModel {
    const cfgFile = path.join(dir, CLIP_CONFIG_FILE);
    const weights = path.join(dir, CLIP_WEIGHTS_FILE);
    if (!fs.existsSync(cfgFile)) throw new UsageError(`${dir}: no ${CLIP_CONFIG_FILE} (expected a clip/ folder from sdlab's CLIP training).`);
    if (!fs.existsSync(weights)) throw new UsageError(`${dir}: no ${CLIP_WEIGHTS_FILE} (expected the CLIP weights next to ${CLIP_CONFIG_FILE}).`);
    const config = readClipConfig(cfgFile);
    const model = buildAndLoad(() => new CLIPModel(config), weights, cfgFile, { keyMap: (k) => (k.endsWith('embeddings.position_ids') ? null : k) });
    if (fs.existsSync(path.join(dir, WORD_TOKENIZER_FILE))) model.tokenizer = checkTokenizerFits(loadTokenizer(dir), model.config.text_config, dir);
    return model;
  }
}

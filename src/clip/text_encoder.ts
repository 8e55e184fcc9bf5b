/**
 * TextEncoder — CLIP's text transformer (transformers `CLIPTextModel`, and
 * `CLIPTextModelWithProjection` when a `text_projection` is configured), in TensorFlow.js.
 * transformers 4.37 semantics, parameter names and config.json.
 *
 *   input_ids [B, L]
 *     → token_embedding(ids) + position_embedding(0..L-1)                      [B, L, D]
 *     → num_hidden_layers × pre-LayerNorm blocks:
 *         h += out_proj(causal self-attention(layer_norm1(h)))   (q_proj k_proj v_proj)
 *         h += fc2(act(fc1(layer_norm2(h))))                     (act: quick_gelu (OpenAI CLIP, SD 1.x) | gelu (OpenCLIP, SD 2.x))
 *     → final_layer_norm                         = lastHiddenState [B, L, D]   (what the UNet attends to)
 *     → the row at the end-of-text token         = pooledOutput    [B, D]
 *     → text_projection (no bias, optional)      = textEmbeds      [B, projection_dim] (CLIP's joint space)
 *
 * The attention is causal: position i sees positions ≤ i only, so the end-of-text token has read
 * the whole prompt and the padding after it changes nothing before it.
 *
 * Usage:
 *   const te = TextEncoder.fromPretrained('../shared/fixtures/sd1_tiny/model/text_encoder');
 *   const ids = tf.tensor2d([tok.encode('a photo of a cat').inputIds], undefined, 'int32');
 *   const { lastHiddenState, pooledOutput } = te.forward(ids);
 *   new TextEncoder(TEXT_ENCODER_PRESETS.mnist);      // small, word-level, for training from scratch
 *
 * fromPretrained reads a transformers text-encoder directory (config.json + model.safetensors)
 * or the text tower of a full CLIP directory (config.json with a "text_config", such as an
 * sdlab run's clip/ folder).
 */
import fs from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import { Embedding, LayerNorm, Linear, Module, ModuleList, getActivation, scaledDotProductAttention } from '../nn/index.ts';
import { type ConfigSpec, parseConfig } from '../io/config.ts';
import { checkRegularFile } from '../util/fs.ts';
import { loadPretrained } from '../nn/pretrained.ts';
import { UsageError } from '../util/errors.ts';
import { MAX_ENCODER_LAYERS, MAX_TEXT_POSITIONS } from '../util/limits.ts';
import { parseJson } from '../util/json.ts';

// ---------------------------------------------------------------------------------------------
// Config

/**
 * Where pooledOutput is read:
 *   'auto'      transformers 4.37: if eos_token_id == 2 (old configs that carried a wrong default)
 *               the position of the largest id (CLIP's eos 49407 is the largest id), else the first
 *               position holding eos_token_id.
 *   'first_eos' the first position holding eos_token_id (sdlab's word tokenizer has eos = 2, so it
 *               needs this explicitly).
 *   'argmax'    the position of the largest id.
 */
export type PoolingRule = 'auto' | 'first_eos' | 'argmax';

/** transformers CLIPTextConfig (same keys as its config.json) plus sdlab's `pooling`. */
export interface TextEncoderConfig {
  /** ["CLIPTextModelWithProjection"] adds text_projection; ["CLIPTextModel"] does not. */
  architectures: string[];
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  projection_dim: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  max_position_embeddings: number;
  hidden_act: string;
  layer_norm_eps: number;
  pad_token_id: number;
  bos_token_id: number;
  eos_token_id: number;
  pooling: PoolingRule;
}

/** transformers 4.37 CLIPTextConfig defaults. */
export const TEXT_ENCODER_DEFAULTS: TextEncoderConfig = {
  architectures: ['CLIPTextModel'],
  vocab_size: 49408,
  hidden_size: 512,
  intermediate_size: 2048,
  projection_dim: 512,
  num_hidden_layers: 12,
  num_attention_heads: 8,
  max_position_embeddings: 77,
  hidden_act: 'quick_gelu',
  layer_norm_eps: 1e-5,
  pad_token_id: 1,
  bos_token_id: 49406,
  eos_token_id: 49407,
  pooling: 'auto',
};

/**
 * Keys transformers writes that sdlab accepts and ignores:
 *   attention_dropout, dropout              — 0 in every CLIP text encoder; sdlab has no dropout.
 *   initializer_factor, initializer_range   — only used to initialise weights in transformers.
 *   model_type, torch_dtype, transformers_version — bookkeeping (sdlab computes in float32).
 */
export const TEXT_ENCODER_IGNORED_KEYS = [
  'attention_dropout',
  'dropout',
  'initializer_factor',
  'initializer_range',
  'model_type',
  'torch_dtype',
  'transformers_version',
] as const;

export const TEXT_ENCODER_CONFIG_SPEC: ConfigSpec<TextEncoderConfig> = {
  defaults: TEXT_ENCODER_DEFAULTS,
  ignored: TEXT_ENCODER_IGNORED_KEYS,
};

export const TEXT_ENCODER_PRESETS = {
  /**
   * MNIST captions: a word-level vocabulary (sdlab's WordTokenizer: <pad>=0 <start>=1 <end>=2,
   * ~45 words; set vocab_size to tokenizer.vocabSize) and captions of at most 16 tokens. Width
   * 128 with 4 heads of 32 and 3 layers (~0.6 M parameters) is plenty for phrases such as
   * "a thick, slanted 7" and trains in minutes on a CPU. gelu as in newer CLIPs; pooled at the
   * first <end> (eos is 2, so the legacy argmax rule must not apply). text_projection maps the
   * pooled output into the 128-wide contrastive space shared with the image encoder.
   */
  mnist: {
    ...TEXT_ENCODER_DEFAULTS,
    architectures: ['CLIPTextModelWithProjection'],
    vocab_size: 64,
    hidden_size: 128,
    intermediate_size: 512,
    projection_dim: 128,
    num_hidden_layers: 3,
    num_attention_heads: 4,
    max_position_embeddings: 16,
    hidden_act: 'gelu',
    pad_token_id: 0,
    bos_token_id: 1,
    eos_token_id: 2,
    pooling: 'first_eos',
  },
  /** Stable Diffusion 1.x: OpenAI CLIP ViT-L/14's text tower. */
  sd1: {
    ...TEXT_ENCODER_DEFAULTS,
    hidden_size: 768,
    intermediate_size: 3072,
    projection_dim: 768,
    num_hidden_layers: 12,
    num_attention_heads: 12,
    eos_token_id: 2, // what the hub config carries (hence the legacy argmax pooling)
    pad_token_id: 1,
    bos_token_id: 0,
  },
  /**
   * Stable Diffusion 2.x: OpenCLIP ViT-H/14's text tower as diffusers stores it
   * (stabilityai/stable-diffusion-2-1 text_encoder/config.json). Exact (erf) gelu, not
   * quick_gelu. 23 layers, not OpenCLIP's 24: SD 2 conditions on the penultimate block's
   * output, and diffusers' converter drops the last block, so the UNet reads
   * final_layer_norm(block 23) as lastHiddenState — what the LDM FrozenOpenCLIPEmbedder
   * (layer "penultimate") computes. The pooled output is unused by SD (argmax pooling, eos 2).
   */
  sd2: {
    ...TEXT_ENCODER_DEFAULTS,
    hidden_size: 1024,
    intermediate_size: 4096,
    projection_dim: 512,
    num_hidden_layers: 23,
    num_attention_heads: 16,
    hidden_act: 'gelu',
    eos_token_id: 2,
    pad_token_id: 1,
    bos_token_id: 0,
  },
} satisfies Record<string, TextEncoderConfig>;

const WITH_PROJECTION = 'CLIPTextModelWithProjection';

/** Checks a text-encoder config (`source` names the file or preset in errors). */
export function validateTextEncoderConfig(cfg: TextEncoderConfig, source = 'text encoder config'): TextEncoderConfig {
  const fail = (msg: string): never => {
    throw new UsageError(`${source}: ${msg}.`);
  };
  const ints: Array<[string, number]> = [
    ['vocab_size', cfg.vocab_size],
    ['hidden_size', cfg.hidden_size],
    ['intermediate_size', cfg.intermediate_size],
    ['projection_dim', cfg.projection_dim],
    ['num_hidden_layers', cfg.num_hidden_layers],
    ['num_attention_heads', cfg.num_attention_heads],
    ['max_position_embeddings', cfg.max_position_embeddings],
  ];
  for (const [k, v] of ints) if (!Number.isInteger(v) || v < 1) fail(`${k} must be a positive integer, got ${v}`);
  // Layers are built eagerly and attention is quadratic in the positions (widths: the parameter count, nn buildChecked).
  if (cfg.num_hidden_layers > MAX_ENCODER_LAYERS) fail(`num_hidden_layers ${cfg.num_hidden_layers} is over sdlab's limit of ${MAX_ENCODER_LAYERS}`);
  if (cfg.max_position_embeddings > MAX_TEXT_POSITIONS) fail(`max_position_embeddings ${cfg.max_position_embeddings} is over sdlab's limit of ${MAX_TEXT_POSITIONS}`);
  if (cfg.hidden_size % cfg.num_attention_heads !== 0) {
    fail(`hidden_size ${cfg.hidden_size} is not divisible by num_attention_heads ${cfg.num_attention_heads}`);
  }
  if (!(cfg.layer_norm_eps > 0)) fail(`layer_norm_eps must be > 0, got ${cfg.layer_norm_eps}`);
  if (!['auto', 'first_eos', 'argmax'].includes(cfg.pooling)) fail(`pooling must be "auto", "first_eos" or "argmax", got "${cfg.pooling}"`);
  for (const a of cfg.architectures) {
    if (a !== 'CLIPTextModel' && a !== WITH_PROJECTION) fail(`architectures: unsupported "${a}" (expected CLIPTextModel or ${WITH_PROJECTION})`);
  }
  getActivation(cfg.hidden_act, `${source}: hidden_act`);
  return cfg;
}

/**
 * Reads a text-encoder config.json: a transformers CLIPTextConfig, or a full CLIP config whose
 * "text_config" object is used (transformers CLIPConfig, sdlab's clip/ run folder).
 */
export function readTextEncoderConfig(file: string): TextEncoderConfig {
  checkRegularFile(file, 'a text encoder config.json');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`${file}: cannot read config (${(err as NodeJS.ErrnoException).code ?? String(err)}).`);
  }
  let raw = parseJson(text, file);
  const obj = raw as Record<string, unknown> | null;
  if (obj && typeof obj === 'object' && typeof obj.text_config === 'object' && obj.text_config !== null) {
    // A whole CLIP model always has text_projection (of the top-level projection_dim).
    const text = { ...(obj.text_config as Record<string, unknown>) };
    text.architectures ??= [WITH_PROJECTION];
    if (typeof obj.projection_dim === 'number') text.projection_dim ??= obj.projection_dim;
    raw = text;
    file = `${file} (text_config)`;
  }
  return validateTextEncoderConfig(parseConfig(raw, TEXT_ENCODER_CONFIG_SPEC, file), file);
}

/**
 * Checkpoint key → parameter name for text encoders: skips the `position_ids` buffer that hub
 * checkpoints carry, and (when the file is a whole CLIP model) every key that is not part of the
 * text tower. Keys without the `text_model.` prefix (old exports) get it.
 */
export function textEncoderKeyMap(key: string): string | null {
  if (key.endsWith('embeddings.position_ids')) return null;
  if (/^(embeddings|encoder|final_layer_norm)\./.test(key)) return `text_model.${key}`;
  return key;
}

/** Like textEncoderKeyMap, but drops every key outside text_model.* / text_projection.* (whole-CLIP files). */
export function textTowerKeyMap(key: string): string | null {
  const k = textEncoderKeyMap(key);
  return k !== null && (k.startsWith('text_model.') || k.startsWith('text_projection.')) ? k : null;
}

// ---------------------------------------------------------------------------------------------
// Blocks

/** Additive causal mask [L, L]: 0 on and below the diagonal, a large negative number above. */
export function causalMask(length: number): tf.Tensor2D {
  return tf.tidy(() => {
    const lower = tf.linalg.bandPart(tf.ones([length, length]), -1, 0); // 1 where j ≤ i
    // −1e9 rather than −∞: exp underflows to exactly 0 and no inf − inf can appear anywhere.
    return tf.mul(tf.sub(1, lower), -1e9) as tf.Tensor2D;
  });
}

/** Vocabularies up to this size are embedded by one-hot matmul (see CLIPTextEmbeddings.forward). */
const ONE_HOT_VOCAB_LIMIT = 2048;

class CLIPTextEmbeddings extends Module {
  readonly token_embedding: Embedding;
  readonly position_embedding: Embedding;

  constructor(cfg: TextEncoderConfig) {
    super();
    this.token_embedding = this.module('token_embedding', new Embedding(cfg.vocab_size, cfg.hidden_size));
    this.position_embedding = this.module('position_embedding', new Embedding(cfg.max_position_embeddings, cfg.hidden_size));
  }

  forward(ids: tf.Tensor2D): tf.Tensor3D {
    return tf.tidy(() => {
      const [b, l] = ids.shape;
      const d = this.token_embedding.embeddingDim;
      // Same numbers as a gather, cheaper gradients on tfjs backends (gather's gradient is an
      // unsorted segment sum, slow there): a one-hot matmul for small vocabularies (sdlab's
      // word-level ones; one-hot rows are exact), and the first L rows for the positions.
      const tokens =
        this.token_embedding.numEmbeddings <= ONE_HOT_VOCAB_LIMIT
          ? tf.reshape(tf.matMul(tf.oneHot(tf.reshape(tf.cast(ids, 'int32'), [-1]), this.token_embedding.numEmbeddings), this.token_embedding.weight), [b, l, d])
          : this.token_embedding.forward(ids);
      return tf.add(tokens, tf.slice(this.position_embedding.weight, [0, 0], [l, d])) as tf.Tensor3D;
    });
  }
}

/** transformers CLIPAttention: q_proj k_proj v_proj out_proj, all with bias, scale 1/√head_dim. */
class CLIPAttention extends Module {
  readonly q_proj: Linear;
  readonly k_proj: Linear;
  readonly v_proj: Linear;
  readonly out_proj: Linear;

  constructor(
    dim: number,
    readonly heads: number,
  ) {
    super();
    this.q_proj = this.module('q_proj', new Linear(dim, dim));
    this.k_proj = this.module('k_proj', new Linear(dim, dim));
    this.v_proj = this.module('v_proj', new Linear(dim, dim));
    this.out_proj = this.module('out_proj', new Linear(dim, dim));
  }

  forward(h: tf.Tensor3D, mask: tf.Tensor): tf.Tensor3D {
    return tf.tidy(() => {
      const o = scaledDotProductAttention(this.q_proj.forward(h), this.k_proj.forward(h), this.v_proj.forward(h), this.heads, { mask });
      return this.out_proj.forward(o);
    });
  }
}

class CLIPMLP extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;
  private readonly act: <T extends tf.Tensor>(x: T) => T;

  constructor(cfg: TextEncoderConfig) {
    super();
    this.act = getActivation(cfg.hidden_act);
    this.fc1 = this.module('fc1', new Linear(cfg.hidden_size, cfg.intermediate_size));
    this.fc2 = this.module('fc2', new Linear(cfg.intermediate_size, cfg.hidden_size));
  }

  forward(h: tf.Tensor3D): tf.Tensor3D {
    return tf.tidy(() => this.fc2.forward(this.act(this.fc1.forward(h))));
  }
}

/** Pre-LayerNorm transformer block. */
class CLIPEncoderLayer extends Module {
  readonly self_attn: CLIPAttention;
  readonly layer_norm1: LayerNorm;
  readonly mlp: CLIPMLP;
  readonly layer_norm2: LayerNorm;

  constructor(cfg: TextEncoderConfig) {
    super();
    this.self_attn = this.module('self_attn', new CLIPAttention(cfg.hidden_size, cfg.num_attention_heads));
    this.layer_norm1 = this.module('layer_norm1', new LayerNorm(cfg.hidden_size, { eps: cfg.layer_norm_eps }));
    this.mlp = this.module('mlp', new CLIPMLP(cfg));
    this.layer_norm2 = this.module('layer_norm2', new LayerNorm(cfg.hidden_size, { eps: cfg.layer_norm_eps }));
  }

  forward(h: tf.Tensor3D, mask: tf.Tensor): tf.Tensor3D {
    return tf.tidy(() => {
      const a = tf.add(h, this.self_attn.forward(this.layer_norm1.forward(h), mask)) as tf.Tensor3D;
      return tf.add(a, this.mlp.forward(this.layer_norm2.forward(a))) as tf.Tensor3D;
    });
  }
}

class CLIPEncoder extends Module {
  readonly layers = this.module('layers', new ModuleList<CLIPEncoderLayer>());

  constructor(cfg: TextEncoderConfig) {
    super();
    for (let i = 0; i < cfg.num_hidden_layers; i++) this.layers.push(new CLIPEncoderLayer(cfg));
  }

  forward(h: tf.Tensor3D, mask: tf.Tensor): tf.Tensor3D {
    return tf.tidy(() => {
      for (const layer of this.layers) h = layer.forward(h, mask);
      return h;
    });
  }
}

/** transformers CLIPTextTransformer (the `text_model.` prefix). */
export class CLIPTextTransformer extends Module {
  readonly embeddings: CLIPTextEmbeddings;
  readonly encoder: CLIPEncoder;
  readonly final_layer_norm: LayerNorm;

  constructor(cfg: TextEncoderConfig) {
    super();
    this.embeddings = this.module('embeddings', new CLIPTextEmbeddings(cfg));
    this.encoder = this.module('encoder', new CLIPEncoder(cfg));
    this.final_layer_norm = this.module('final_layer_norm', new LayerNorm(cfg.hidden_size, { eps: cfg.layer_norm_eps }));
  }

  /** ids [B, L] → final-LayerNormed hidden states [B, L, D]. */
  forward(ids: tf.Tensor2D): tf.Tensor3D {
    return tf.tidy(() => {
      const mask = causalMask(ids.shape[1]);
      return this.final_layer_norm.forward(this.encoder.forward(this.embeddings.forward(ids), mask));
    });
  }
}

// ---------------------------------------------------------------------------------------------
// TextEncoder

export type TextEncoderOutput = {
  /** [B, L, hidden_size], after final_layer_norm (SD's prompt_embeds). */
  lastHiddenState: tf.Tensor3D;
  /** [B, hidden_size]: lastHiddenState at the end-of-text position (see PoolingRule). */
  pooledOutput: tf.Tensor2D;
  /** [B, projection_dim]: text_projection(pooledOutput), unnormalised; only with a projection. */
  textEmbeds?: tf.Tensor2D;
};

export const TEXT_ENCODER_WEIGHTS_FILE = 'model.safetensors';

export class TextEncoder extends Module {
  readonly config: TextEncoderConfig;
  readonly text_model: CLIPTextTransformer;
  readonly text_projection: Linear | null;

  /** Missing keys take transformers' defaults (TEXT_ENCODER_DEFAULTS); see TEXT_ENCODER_PRESETS. */
  constructor(config: Partial<TextEncoderConfig>) {
    super();
    this.config = validateTextEncoderConfig({ ...TEXT_ENCODER_DEFAULTS, ...config });
    this.text_model = this.module('text_model', new CLIPTextTransformer(this.config));
    this.text_projection = this.config.architectures.includes(WITH_PROJECTION)
      ? this.module('text_projection', new Linear(this.config.hidden_size, this.config.projection_dim, { bias: false }))
      : null;
  }

  get hiddenSize(): number {
    return this.config.hidden_size;
  }

  get maxLength(): number {
    return this.config.max_position_embeddings;
  }

  /** Position of the end-of-text token per row of ids [B, L] → int32 [B]. */
  eosPositions(ids: tf.Tensor2D): tf.Tensor1D {
    return tf.tidy(() => {
      const { pooling, eos_token_id: eos } = this.config;
      const argmaxRule = pooling === 'argmax' || (pooling === 'auto' && eos === 2);
      const intIds = ids.dtype === 'int32' ? ids : tf.cast(ids, 'int32');
      // argMax returns the first maximal position, as torch.argmax does.
      return tf.argMax(argmaxRule ? intIds : tf.cast(tf.equal(intIds, eos), 'int32'), 1) as tf.Tensor1D;
    });
  }

  /** input_ids [B, L] (int32, or float holding integers; L ≤ max_position_embeddings). */
  forward(inputIds: tf.Tensor2D | number[][]): TextEncoderOutput {
    return tf.tidy(() => {
      const ids = Array.isArray(inputIds) ? tf.tensor2d(inputIds, undefined, 'int32') : inputIds;
      if (ids.rank !== 2) throw new UsageError(`text encoder: input_ids must be [batch, length], got shape [${ids.shape}].`);
      const [, l] = ids.shape;
      if (l > this.config.max_position_embeddings) {
        throw new UsageError(`text encoder: ${l} tokens but max_position_embeddings is ${this.config.max_position_embeddings}.`);
      }
      const lastHiddenState = this.text_model.forward(ids);
      // Pick the eos row with a one-hot weighted sum rather than tf.gather: gather's gradient is
      // an unsorted segment sum that costs one op per position on tfjs backends (slow training).
      const pick = tf.expandDims(tf.oneHot(this.eosPositions(ids), l, 1, 0, 'float32'), 2); // [B, L, 1]
      const pooledOutput = tf.sum(tf.mul(lastHiddenState, pick), 1) as tf.Tensor2D;
      const out: TextEncoderOutput = { lastHiddenState, pooledOutput };
      if (this.text_projection) out.textEmbeds = this.text_projection.forward(pooledOutput);
      return out;
    });
  }

  /**
   * Loads a transformers text encoder directory (config.json + model.safetensors), or the text
   * tower of a whole-CLIP directory whose config.json has a "text_config".
   */
  static fromPretrained(dir: string): TextEncoder {
    return loadPretrained(dir, {
      what: 'a transformers CLIP text encoder directory',
      weightsFile: TEXT_ENCODER_WEIGHTS_FILE,
      pickleFile: 'pytorch_model.bin',
      readConfig: readTextEncoderConfig,
      build: (cfg) => new TextEncoder(cfg),
      keyMap: textTowerKeyMap,
    });
  }
}

/**
 * UNet2DConditionModel — the text-conditioned noise-prediction network of latent diffusion
 * (diffusers v0.24 semantics, parameter names and config.json), in TensorFlow.js, channels-last.
 *
 *   latents x [B, h, w, in_channels], timesteps t [B], text vectors c [B, L, cross_attention_dim]
 *     t → sinusoidal time_proj ([cos, sin], width C0 = block_out_channels[0])
 *       → time_embedding MLP (linear_1 → SiLU → linear_2)               → temb [B, 4·C0]
 *     x → conv_in → down_blocks: per level `layers_per_block` × (ResnetBlock2D(·, temb)
 *         [+ Transformer2DModel(·, c) in CrossAttn blocks]), then a stride-2 conv (not at the
 *         last level); every intermediate result is kept as a skip connection
 *       → mid_block: resnet, transformer, resnet (at the lowest resolution)
 *       → up_blocks: per level (layers_per_block + 1) × (concat the next skip on channels →
 *         ResnetBlock2D [+ Transformer2DModel]), then nearest ×2 + conv (not at the last level)
 *       → GroupNorm → SiLU → conv_out                                    → noise [B, h, w, out_channels]
 *   Transformer2DModel: GroupNorm(eps 1e-6) → proj_in (1×1 conv, or linear in SD 2.x) →
 *   [self-attention, cross-attention to c, GEGLU feed-forward] (pre-LayerNorm, residual) →
 *   proj_out → + input. `attention_head_dim` is the number of heads in SD configs (a historic
 *   diffusers naming slip); each head has out_channels / heads channels.
 *
 * Usage:
 *   const unet = UNet2DConditionModel.fromPretrained('../shared/fixtures/sd1_tiny/model/unet');
 *   const eps = unet.forward(latents, timesteps, textEmbeddings);   // NHWC in, NHWC out
 *   const small = new UNet2DConditionModel(mnistUnetConfig({ crossAttentionDim: 128 }));
 *   small.save('runs/default/unet');    // config.json + diffusion_pytorch_model.safetensors
 *
 * Supported: DownBlock2D / CrossAttnDownBlock2D / UpBlock2D / CrossAttnUpBlock2D,
 * UNetMidBlock2DCrossAttn (or no mid block), per-block heads / layers / transformer depth,
 * conv or linear projections — SD 1.x and 2.x. Config features outside that (class or
 * addition embeddings, scale-shift time conditioning, Fourier time embedding, dropout ...)
 * are rejected by name when set to anything but their default.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import {
  Conv2d,
  Downsample2D,
  GroupNorm,
  Module,
  ModuleList,
  ResnetBlock2D,
  TimestepEmbedding,
  Transformer2DModel,
  Upsample2D,
  getActivation,
  skipInit,
  timestepEmbedding,
} from '../nn/index.ts';
import { type ConfigSpec, parseConfig, readConfig, writeConfig } from '../io/config.ts';
import { loadWeights, saveWeights } from '../io/checkpoint.ts';
import type { WriteDtype } from '../io/safetensors.ts';
import { UsageError } from '../util/errors.ts';

// ---------------------------------------------------------------------------------------------
// Config

/** The diffusers UNet2DConditionModel config keys sdlab implements (same names as config.json). */
export interface UNet2DConditionConfig {
  /** Latent height/width the model was trained at (a hint for pipelines; any size runs). */
  sample_size: number | null;
  in_channels: number;
  out_channels: number;
  /** x → 2x − 1 before conv_in. */
  center_input_sample: boolean;
  flip_sin_to_cos: boolean;
  freq_shift: number;
  down_block_types: string[]; // DownBlock2D | CrossAttnDownBlock2D
  /** UNetMidBlock2DCrossAttn, or null for no mid block. */
  mid_block_type: string | null;
  up_block_types: string[]; // UpBlock2D | CrossAttnUpBlock2D
  /** attn1 attends to the text instead of the image (one value or one per block). */
  only_cross_attention: boolean | boolean[];
  block_out_channels: number[];
  layers_per_block: number | number[];
  downsample_padding: number;
  mid_block_scale_factor: number;
  act_fn: string;
  norm_num_groups: number;
  norm_eps: number;
  /** Width of the text vectors (one value; a per-block list must repeat it). */
  cross_attention_dim: number | number[];
  transformer_layers_per_block: number | number[];
  /** Number of heads (sic, see the top of the file), one value or one per block. */
  attention_head_dim: number | number[];
  /** Number of heads under its proper name; when set it wins over attention_head_dim. */
  num_attention_heads: number | number[] | null;
  use_linear_projection: boolean;
  /** Computes attention scores in fp32 under fp16 pipelines; sdlab always computes in fp32. */
  upcast_attention: boolean;
  /** Width of temb (default 4·block_out_channels[0]). */
  time_embedding_dim: number | null;
  /** Activation applied to temb after the MLP (null: none). */
  time_embedding_act_fn: string | null;
  conv_in_kernel: number;
  conv_out_kernel: number;
}

/** diffusers' defaults for UNet2DConditionModel (v0.24) for the keys above. */
export const UNET_DEFAULTS: UNet2DConditionConfig = {
  sample_size: null,
  in_channels: 4,
  out_channels: 4,
  center_input_sample: false,
  flip_sin_to_cos: true,
  freq_shift: 0,
  down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
  mid_block_type: 'UNetMidBlock2DCrossAttn',
  up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
  only_cross_attention: false,
  block_out_channels: [320, 640, 1280, 1280],
  layers_per_block: 2,
  downsample_padding: 1,
  mid_block_scale_factor: 1,
  act_fn: 'silu',
  norm_num_groups: 32,
  norm_eps: 1e-5,
  cross_attention_dim: 1280,
  transformer_layers_per_block: 1,
  attention_head_dim: 8,
  num_attention_heads: null,
  use_linear_projection: false,
  upcast_attention: false,
  time_embedding_dim: null,
  time_embedding_act_fn: null,
  conv_in_kernel: 3,
  conv_out_kernel: 3,
};

/**
 * diffusers config keys for features sdlab's UNet does not implement, with their defaults.
 * A config may carry them (diffusers writes every key) only with exactly these values.
 */
export const UNET_UNSUPPORTED_DEFAULTS = {
  dropout: 0,
  dual_cross_attention: false,
  class_embed_type: null,
  num_class_embeds: null,
  class_embeddings_concat: false,
  projection_class_embeddings_input_dim: null,
  addition_embed_type: null,
  addition_time_embed_dim: null,
  addition_embed_type_num_heads: 64,
  encoder_hid_dim: null,
  encoder_hid_dim_type: null,
  resnet_time_scale_shift: 'default',
  resnet_skip_time_act: false,
  resnet_out_scale_factor: 1,
  time_embedding_type: 'positional',
  timestep_post_act: null,
  time_cond_proj_dim: null,
  attention_type: 'default',
  mid_block_only_cross_attention: null,
  cross_attention_norm: null,
  reverse_transformer_layers_per_block: null,
} as const;

/** Keys whose value may be a number or a list (or null): type-checked by validateUnetConfig. */
const UNION_KEYS = [
  'sample_size',
  'mid_block_type',
  'only_cross_attention',
  'layers_per_block',
  'cross_attention_dim',
  'transformer_layers_per_block',
  'attention_head_dim',
  'num_attention_heads',
  'time_embedding_dim',
  'time_embedding_act_fn',
] as const;

/** Schema for parseConfig: the defaults, with the union-typed keys left unchecked (undefined). */
const SCHEMA = {
  ...UNET_DEFAULTS,
  ...Object.fromEntries(UNION_KEYS.map((k) => [k, undefined])),
  ...UNET_UNSUPPORTED_DEFAULTS,
} as unknown as UNet2DConditionConfig & Record<string, unknown>;

export const UNET_CONFIG_SPEC: ConfigSpec<UNet2DConditionConfig & Record<string, unknown>> = {
  className: 'UNet2DConditionModel',
  defaults: SCHEMA,
};

/**
 * A small UNet for 4×8×8 MNIST latents, conditioned on text vectors of width
 * `crossAttentionDim` (the text encoder's hidden size, default 128).
 *
 * Two levels, 8×8 (32 channels) and 4×4 (64), plus a 4×4 mid block, one resnet + transformer
 * per level on the way down (two on the way up): 1.1 M parameters. At 64 tokens attention is
 * cheap, so every level attends to the caption. 16 channels per head; 8 norm groups (4 or 8
 * channels each, rather than SD's 32 groups, which on 32 channels would normalise every
 * channel of every sample on its own). Under tfjs the cost is dominated by the number of ops,
 * not their width, hence one layer per level rather than SD's two.
 */
export function mnistUnetConfig(opts: { crossAttentionDim?: number } = {}): UNet2DConditionConfig {
  return {
    ...UNET_DEFAULTS,
    sample_size: 8,
    down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'],
    up_block_types: ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
    block_out_channels: [32, 64],
    layers_per_block: 1,
    attention_head_dim: [2, 4],
    norm_num_groups: 8,
    cross_attention_dim: opts.crossAttentionDim ?? 128,
  };
}

export const UNET_PRESETS = {
  /** MNIST latents (4×8×8) conditioned on a small text encoder of width 128. */
  mnist: mnistUnetConfig(),
  /** Stable Diffusion 1.x (runwayml/stable-diffusion-v1-5): 4×64×64 latents, CLIP ViT-L/14 text (768). */
  sd1: {
    ...UNET_DEFAULTS,
    sample_size: 64,
    block_out_channels: [320, 640, 1280, 1280],
    attention_head_dim: 8,
    cross_attention_dim: 768,
  },
  /**
   * Stable Diffusion 2.x (stabilityai/stable-diffusion-2-1, 768-v): OpenCLIP ViT-H text (1024),
   * 64-channel heads (5, 10, 20, 20 heads per level), linear transformer projections.
   */
  sd2: {
    ...UNET_DEFAULTS,
    sample_size: 96,
    block_out_channels: [320, 640, 1280, 1280],
    attention_head_dim: [5, 10, 20, 20],
    cross_attention_dim: 1024,
    use_linear_projection: true,
    upcast_attention: true,
  },
} satisfies Record<string, UNet2DConditionConfig>;

const DOWN_TYPES = ['DownBlock2D', 'CrossAttnDownBlock2D'];
const UP_TYPES = ['UpBlock2D', 'CrossAttnUpBlock2D'];
const MID_TYPES = ['UNetMidBlock2DCrossAttn', null];

/** A config resolved into one value per block (down-block order), as the model uses it. */
export interface UNetPlan {
  channels: number[];
  layers: number[];
  heads: number[];
  crossAttentionDim: number;
  transformerLayers: number[];
  onlyCrossAttention: boolean[];
  timeEmbedDim: number;
}

/** Checks a config and resolves per-block values; `source` names the file or preset in errors. */
export function planUnet(cfg: UNet2DConditionConfig, source = 'unet config'): UNetPlan {
  const fail = (msg: string): never => {
    throw new UsageError(`${source}: ${msg}.`);
  };
  const n = cfg.block_out_channels?.length ?? 0;
  if (!Array.isArray(cfg.block_out_channels) || n < 1) fail('block_out_channels must list at least one width');
  const posInt = (key: string, v: unknown): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) fail(`${key} must be a positive integer, got ${JSON.stringify(v)}`);
    return v as number;
  };
  /** A number (repeated per block) or a list with one entry per block. */
  const perBlock = <T>(key: string, v: unknown, isT: (x: unknown) => boolean, what: string): T[] => {
    if (Array.isArray(v)) {
      if (v.length !== n) fail(`${key} must have one entry per block_out_channels (${n}), got ${v.length}`);
      if (!v.every(isT)) fail(`${key} must be a list of ${what}s, got ${JSON.stringify(v)}`);
      return v as T[];
    }
    if (!isT(v)) fail(`${key} must be a ${what} or a list of ${what}s, got ${JSON.stringify(v)}`);
    return Array(n).fill(v) as T[];
  };
  const isPosInt = (x: unknown) => typeof x === 'number' && Number.isInteger(x) && x >= 1;
  const isBool = (x: unknown) => typeof x === 'boolean';

  const channels = cfg.block_out_channels.map((c, i) => posInt(`block_out_channels[${i}]`, c));
  for (const [key, v] of [['in_channels', cfg.in_channels], ['out_channels', cfg.out_channels], ['norm_num_groups', cfg.norm_num_groups]] as const) posInt(key, v);
  if (!Array.isArray(cfg.down_block_types) || !Array.isArray(cfg.up_block_types) || cfg.down_block_types.length !== n || cfg.up_block_types.length !== n) {
    fail(`down_block_types (${cfg.down_block_types?.length}) and up_block_types (${cfg.up_block_types?.length}) must have one entry per block_out_channels (${n})`);
  }
  for (const t of cfg.down_block_types) if (!DOWN_TYPES.includes(t)) fail(`down_block_types: unsupported "${t}" (sdlab has ${DOWN_TYPES.join(', ')})`);
  for (const t of cfg.up_block_types) if (!UP_TYPES.includes(t)) fail(`up_block_types: unsupported "${t}" (sdlab has ${UP_TYPES.join(', ')})`);
  if (!MID_TYPES.includes(cfg.mid_block_type)) fail(`mid_block_type: unsupported ${JSON.stringify(cfg.mid_block_type)} (sdlab has UNetMidBlock2DCrossAttn or null)`);
  for (const c of channels) if (c % cfg.norm_num_groups !== 0) fail(`block_out_channels ${c} is not divisible by norm_num_groups ${cfg.norm_num_groups}`);

  const layers = perBlock<number>('layers_per_block', cfg.layers_per_block, isPosInt, 'positive integer');
  const transformerLayers = perBlock<number>('transformer_layers_per_block', cfg.transformer_layers_per_block, isPosInt, 'positive integer');
  const onlyCrossAttention = perBlock<boolean>('only_cross_attention', cfg.only_cross_attention, isBool, 'boolean');
  // num_attention_heads is the proper name; SD configs set attention_head_dim to the head count.
  const headsKey = cfg.num_attention_heads !== null && cfg.num_attention_heads !== undefined ? 'num_attention_heads' : 'attention_head_dim';
  const heads = perBlock<number>(headsKey, cfg[headsKey], isPosInt, 'positive integer');
  const cross = perBlock<number>('cross_attention_dim', cfg.cross_attention_dim, isPosInt, 'positive integer');
  if (cross.some((d) => d !== cross[0])) fail(`cross_attention_dim: per-block widths ${JSON.stringify(cfg.cross_attention_dim)} differ (sdlab takes one text-vector width)`);

  // Heads must divide the width of every transformer (down i, up i = reversed level, mid = last).
  const hasAttn = (i: number) => cfg.down_block_types[i] === 'CrossAttnDownBlock2D' || cfg.up_block_types[n - 1 - i] === 'CrossAttnUpBlock2D' || (i === n - 1 && cfg.mid_block_type !== null);
  channels.forEach((c, i) => {
    if (hasAttn(i) && c % heads[i]! !== 0) fail(`block_out_channels ${c} is not divisible by ${headsKey} ${heads[i]} (heads per block)`);
  });
  for (const key of ['conv_in_kernel', 'conv_out_kernel'] as const) {
    if (posInt(key, cfg[key]) % 2 !== 1) fail(`${key} must be odd, got ${cfg[key]}`);
  }
  if (!Number.isInteger(cfg.downsample_padding) || cfg.downsample_padding < 0) fail(`downsample_padding must be an integer ≥ 0, got ${cfg.downsample_padding}`);
  if (!(cfg.norm_eps > 0)) fail(`norm_eps must be > 0, got ${cfg.norm_eps}`);
  if (cfg.sample_size !== null) posInt('sample_size', cfg.sample_size);
  const timeEmbedDim = cfg.time_embedding_dim === null ? 4 * channels[0]! : posInt('time_embedding_dim', cfg.time_embedding_dim);
  getActivation(cfg.act_fn, `${source}: act_fn`);
  if (cfg.time_embedding_act_fn !== null) {
    if (typeof cfg.time_embedding_act_fn !== 'string') fail(`time_embedding_act_fn must be an activation name or null`);
    getActivation(cfg.time_embedding_act_fn, `${source}: time_embedding_act_fn`);
  }
  return { channels, layers, heads, crossAttentionDim: cross[0]!, transformerLayers, onlyCrossAttention, timeEmbedDim };
}

/** Checks a complete config object (throws a UsageError naming `source` and the key). */
export function validateUnetConfig(cfg: UNet2DConditionConfig, source = 'unet config'): UNet2DConditionConfig {
  planUnet(cfg, source);
  return cfg;
}

/**
 * Parses a config.json object: unknown keys are errors naming the key; keys of unimplemented
 * diffusers features are accepted only with their default values (and then dropped).
 */
export function parseUnetConfig(raw: unknown, source = 'unet config'): UNet2DConditionConfig {
  const all = parseConfig(raw, UNET_CONFIG_SPEC, source);
  for (const [key, def] of Object.entries(UNET_UNSUPPORTED_DEFAULTS)) {
    const v = all[key];
    if (v !== def) {
      throw new UsageError(
        `${source}: config key "${key}" = ${JSON.stringify(v)} is not supported by sdlab's UNet (only the default ${JSON.stringify(def)}).`,
      );
    }
    delete all[key];
  }
  for (const key of UNION_KEYS) if (all[key] === undefined) (all as Record<string, unknown>)[key] = UNET_DEFAULTS[key];
  return validateUnetConfig(all, source);
}

/** Reads and validates a UNet config.json. */
export function readUnetConfig(file: string): UNet2DConditionConfig {
  // readConfig gives the file-level errors (unreadable, bad JSON, wrong _class_name, unknown
  // keys); parsing its result again is cheap and applies the UNet-specific checks.
  return parseUnetConfig(readConfig(file, UNET_CONFIG_SPEC), file);
}

// ---------------------------------------------------------------------------------------------
// Blocks

interface BlockOptions {
  tembChannels: number;
  groups: number;
  eps: number;
  act: string;
  /** Present in CrossAttn blocks. */
  attention: null | {
    heads: number;
    crossAttentionDim: number;
    transformerLayers: number;
    useLinearProjection: boolean;
    onlyCrossAttention: boolean;
  };
}

function transformer(channels: number, o: BlockOptions): Transformer2DModel {
  const a = o.attention!;
  return new Transformer2DModel(a.heads, channels / a.heads, channels, {
    numLayers: a.transformerLayers,
    crossAttentionDim: a.crossAttentionDim,
    normNumGroups: o.groups,
    useLinearProjection: a.useLinearProjection,
    onlyCrossAttention: a.onlyCrossAttention,
  });
}

/**
 * DownBlock2D (resnets only) or CrossAttnDownBlock2D (a transformer after each resnet), then
 * an optional stride-2 conv. Returns the output and every intermediate state for the skips.
 */
class DownBlock extends Module {
  readonly resnets = this.module('resnets', new ModuleList<ResnetBlock2D>());
  readonly attentions: ModuleList<Transformer2DModel> | null;
  readonly downsamplers: ModuleList<Downsample2D> | null;

  constructor(cin: number, cout: number, layers: number, addDownsample: boolean, padding: number, o: BlockOptions) {
    super();
    this.attentions = o.attention ? this.module('attentions', new ModuleList<Transformer2DModel>()) : null;
    for (let i = 0; i < layers; i++) {
      const inCh = i === 0 ? cin : cout;
      this.resnets.push(new ResnetBlock2D({ inChannels: inCh, outChannels: cout, tembChannels: o.tembChannels, groups: o.groups, eps: o.eps, act: o.act }));
      this.attentions?.push(transformer(cout, o));
    }
    this.downsamplers = addDownsample
      ? this.module('downsamplers', new ModuleList([new Downsample2D(cout, { useConv: true, outChannels: cout, padding })]))
      : null;
  }

  forward(x: tf.Tensor4D, temb: tf.Tensor2D, context?: tf.Tensor3D): { hidden: tf.Tensor4D; skips: tf.Tensor4D[] } {
    const skips: tf.Tensor4D[] = [];
    let h = x;
    this.resnets.items.forEach((resnet, i) => {
      h = resnet.forward(h, temb);
      if (this.attentions) h = this.attentions.at(i).forward(h, context);
      skips.push(h);
    });
    if (this.downsamplers) {
      h = this.downsamplers.at(0).forward(h);
      skips.push(h);
    }
    return { hidden: h, skips };
  }
}

/**
 * UpBlock2D / CrossAttnUpBlock2D: each resnet takes the previous output concatenated (on
 * channels) with the latest unused skip; then an optional nearest ×2 + conv.
 */
class UpBlock extends Module {
  readonly resnets = this.module('resnets', new ModuleList<ResnetBlock2D>());
  readonly attentions: ModuleList<Transformer2DModel> | null;
  readonly upsamplers: ModuleList<Upsample2D> | null;

  /**
   * prevCout: channels coming from below; cout: this level's width; skipIn: width of the skip
   * that the last resnet consumes (the level above's, i.e. the down block's input).
   */
  constructor(prevCout: number, cout: number, skipIn: number, layers: number, addUpsample: boolean, o: BlockOptions) {
    super();
    this.attentions = o.attention ? this.module('attentions', new ModuleList<Transformer2DModel>()) : null;
    for (let i = 0; i < layers; i++) {
      const skip = i === layers - 1 ? skipIn : cout;
      const inCh = i === 0 ? prevCout : cout;
      this.resnets.push(new ResnetBlock2D({ inChannels: inCh + skip, outChannels: cout, tembChannels: o.tembChannels, groups: o.groups, eps: o.eps, act: o.act }));
      this.attentions?.push(transformer(cout, o));
    }
    this.upsamplers = addUpsample ? this.module('upsamplers', new ModuleList([new Upsample2D(cout, { useConv: true, outChannels: cout })])) : null;
  }

  /** skips: this block's skip states, oldest first (the last one is consumed first). */
  forward(x: tf.Tensor4D, skips: tf.Tensor4D[], temb: tf.Tensor2D, context?: tf.Tensor3D, upsampleSize?: [number, number]): tf.Tensor4D {
    let h = x;
    this.resnets.items.forEach((resnet, i) => {
      h = resnet.forward(tf.concat([h, skips[skips.length - 1 - i]!], 3), temb);
      if (this.attentions) h = this.attentions.at(i).forward(h, context);
    });
    if (this.upsamplers) h = this.upsamplers.at(0).forward(h, upsampleSize);
    return h;
  }
}

/** UNetMidBlock2DCrossAttn: resnet, then (transformer, resnet) per layer (SD: one). */
class MidBlock extends Module {
  readonly resnets = this.module('resnets', new ModuleList<ResnetBlock2D>());
  readonly attentions = this.module('attentions', new ModuleList<Transformer2DModel>());

  constructor(ch: number, outputScaleFactor: number, o: BlockOptions) {
    super();
    const resnet = () =>
      new ResnetBlock2D({ inChannels: ch, outChannels: ch, tembChannels: o.tembChannels, groups: o.groups, eps: o.eps, act: o.act, outputScaleFactor });
    this.resnets.push(resnet());
    this.attentions.push(transformer(ch, o));
    this.resnets.push(resnet());
  }

  forward(x: tf.Tensor4D, temb: tf.Tensor2D, context?: tf.Tensor3D): tf.Tensor4D {
    let h = this.resnets.at(0).forward(x, temb);
    this.attentions.items.forEach((attn, i) => {
      h = this.resnets.at(i + 1).forward(attn.forward(h, context), temb);
    });
    return h;
  }
}

// ---------------------------------------------------------------------------------------------
// UNet2DConditionModel

export const UNET_WEIGHTS_FILE = 'diffusion_pytorch_model.safetensors';

export class UNet2DConditionModel extends Module {
  readonly config: UNet2DConditionConfig;
  readonly plan: UNetPlan;
  readonly conv_in: Conv2d;
  readonly time_embedding: TimestepEmbedding;
  readonly down_blocks = new ModuleList<DownBlock>();
  readonly mid_block: MidBlock | null;
  readonly up_blocks = new ModuleList<UpBlock>();
  readonly conv_norm_out: GroupNorm;
  readonly conv_out: Conv2d;
  private readonly act: <T extends tf.Tensor>(x: T) => T;
  private readonly timeEmbedAct: (<T extends tf.Tensor>(x: T) => T) | null;

  /** Missing keys take diffusers' defaults (UNET_DEFAULTS); see UNET_PRESETS. */
  constructor(config: Partial<UNet2DConditionConfig>) {
    super();
    const cfg = (this.config = { ...UNET_DEFAULTS, ...config });
    const p = (this.plan = planUnet(cfg));
    const ch = p.channels;
    const n = ch.length;
    this.act = getActivation(cfg.act_fn);
    this.timeEmbedAct = cfg.time_embedding_act_fn === null ? null : getActivation(cfg.time_embedding_act_fn);
    const opts = (i: number, crossAttn: boolean): BlockOptions => ({
      tembChannels: p.timeEmbedDim,
      groups: cfg.norm_num_groups,
      eps: cfg.norm_eps,
      act: cfg.act_fn,
      attention: crossAttn
        ? {
            heads: p.heads[i]!,
            crossAttentionDim: p.crossAttentionDim,
            transformerLayers: p.transformerLayers[i]!,
            useLinearProjection: cfg.use_linear_projection,
            onlyCrossAttention: p.onlyCrossAttention[i]!,
          }
        : null,
    });

    const kIn = cfg.conv_in_kernel;
    this.conv_in = this.module('conv_in', new Conv2d(cfg.in_channels, ch[0]!, kIn, { padding: (kIn - 1) / 2 }));
    this.time_embedding = this.module('time_embedding', new TimestepEmbedding(ch[0]!, p.timeEmbedDim, { act: cfg.act_fn }));

    this.module('down_blocks', this.down_blocks);
    for (let i = 0; i < n; i++) {
      const cin = i === 0 ? ch[0]! : ch[i - 1]!;
      const crossAttn = cfg.down_block_types[i] === 'CrossAttnDownBlock2D';
      this.down_blocks.push(new DownBlock(cin, ch[i]!, p.layers[i]!, i < n - 1, cfg.downsample_padding, opts(i, crossAttn)));
    }

    // diffusers gives the mid block no only_cross_attention: it always self-attends.
    const midOpts = opts(n - 1, true);
    midOpts.attention!.onlyCrossAttention = false;
    this.mid_block = cfg.mid_block_type === null ? null : this.module('mid_block', new MidBlock(ch[n - 1]!, cfg.mid_block_scale_factor, midOpts));

    // Up block i mirrors down level j = n-1-i: same width, heads and depth, one more resnet.
    this.module('up_blocks', this.up_blocks);
    for (let i = 0; i < n; i++) {
      const j = n - 1 - i;
      const prev = ch[Math.min(j + 1, n - 1)]!;
      const skipIn = ch[Math.max(j - 1, 0)]!;
      const crossAttn = cfg.up_block_types[i] === 'CrossAttnUpBlock2D';
      this.up_blocks.push(new UpBlock(prev, ch[j]!, skipIn, p.layers[j]! + 1, i < n - 1, opts(j, crossAttn)));
    }

    this.conv_norm_out = this.module('conv_norm_out', new GroupNorm(cfg.norm_num_groups, ch[0]!, { eps: cfg.norm_eps }));
    const kOut = cfg.conv_out_kernel;
    this.conv_out = this.module('conv_out', new Conv2d(ch[0]!, cfg.out_channels, kOut, { padding: (kOut - 1) / 2 }));
  }

  /** Whether any block attends to text (then forward needs encoderHiddenStates). */
  get hasCrossAttention(): boolean {
    return this.mid_block !== null || this.down_blocks.items.some((b) => b.attentions) || this.up_blocks.items.some((b) => b.attentions);
  }

  /**
   * Predicts the noise (or v, depending on training) in `sample`.
   *   sample               [B, h, w, in_channels] latents (NHWC)
   *   timesteps            [B] or one value for the whole batch (may be fractional)
   *   encoderHiddenStates  [B, L, cross_attention_dim] text-encoder output
   * → [B, h, w, out_channels]. Any h, w ≥ 1 works (odd sizes upsample to the skip's size).
   */
  forward(sample: tf.Tensor4D, timesteps: tf.Tensor | number | number[], encoderHiddenStates?: tf.Tensor3D): tf.Tensor4D {
    return tf.tidy(() => {
      const cfg = this.config;
      const [b, hgt, wid, c] = sample.shape;
      if (c !== cfg.in_channels) throw new UsageError(`UNet: sample has ${c} channels (NHWC), the model expects in_channels ${cfg.in_channels}.`);
      const context = encoderHiddenStates;
      if (this.hasCrossAttention) {
        if (!context) throw new UsageError('UNet: this model attends to text and needs encoderHiddenStates [B, L, cross_attention_dim].');
        if (context.rank !== 3 || context.shape[2] !== this.plan.crossAttentionDim) {
          throw new UsageError(
            `UNet: encoderHiddenStates have shape [${context.shape}], the model expects [B, L, ${this.plan.crossAttentionDim}] (cross_attention_dim; is the text encoder the one this UNet was trained with?).`,
          );
        }
        if (context.shape[0] !== b) throw new UsageError(`UNet: batch of encoderHiddenStates (${context.shape[0]}) differs from the sample's (${b}).`);
      }

      // Time: sinusoidal features of width C0 → MLP → temb [B, timeEmbedDim].
      const t = batchTimesteps(timesteps, b);
      let temb = this.time_embedding.forward(
        timestepEmbedding(t, this.plan.channels[0]!, { flipSinToCos: cfg.flip_sin_to_cos, freqShift: cfg.freq_shift }),
      );
      if (this.timeEmbedAct) temb = this.timeEmbedAct(temb);

      let h = cfg.center_input_sample ? (tf.sub(tf.mul(sample, 2), 1) as tf.Tensor4D) : sample;
      h = this.conv_in.forward(h);
      const skips: tf.Tensor4D[] = [h];
      for (const block of this.down_blocks) {
        const out = block.forward(h, temb, context);
        h = out.hidden;
        skips.push(...out.skips);
      }
      if (this.mid_block) h = this.mid_block.forward(h, temb, context);

      // When h or w is not a multiple of 2^levels, nearest ×2 would miss the skip's size by
      // one: upsample to the size of the skip that comes next instead (as diffusers does).
      const factor = 2 ** (this.up_blocks.length - 1);
      const forwardSize = hgt % factor !== 0 || wid % factor !== 0;
      this.up_blocks.items.forEach((block, i) => {
        const mine = skips.splice(skips.length - block.resnets.length, block.resnets.length);
        const next = skips[skips.length - 1];
        const size: [number, number] | undefined = forwardSize && i < this.up_blocks.length - 1 && next ? [next.shape[1], next.shape[2]] : undefined;
        h = block.forward(h, mine, temb, context, size);
      });
      return this.conv_out.forward(this.act(this.conv_norm_out.forward(h)));
    });
  }

  /** Loads a diffusers UNet directory (config.json + diffusion_pytorch_model.safetensors). */
  static fromPretrained(dir: string): UNet2DConditionModel {
    const cfgFile = path.join(dir, 'config.json');
    const weights = path.join(dir, UNET_WEIGHTS_FILE);
    if (!fs.existsSync(cfgFile)) throw new UsageError(`${dir}: no config.json (expected a diffusers UNet directory).`);
    if (!fs.existsSync(weights)) {
      const bin = fs.existsSync(path.join(dir, 'diffusion_pytorch_model.bin'));
      throw new UsageError(`${dir}: no ${UNET_WEIGHTS_FILE}${bin ? ' (only a pickle .bin, which sdlab does not read: convert it to safetensors)' : ''}.`);
    }
    const unet = skipInit(() => new UNet2DConditionModel(readUnetConfig(cfgFile)));
    loadWeights(unet, weights);
    return unet;
  }

  /** Writes config.json + diffusion_pytorch_model.safetensors into `dir`. */
  save(dir: string, opts: { dtype?: WriteDtype } = {}): void {
    saveWeights(this, path.join(dir, UNET_WEIGHTS_FILE), opts);
    writeConfig(path.join(dir, 'config.json'), 'UNet2DConditionModel', this.config);
  }
}

/** Timesteps as a float32 [B] tensor (one value is repeated over the batch). */
function batchTimesteps(timesteps: tf.Tensor | number | number[], batch: number): tf.Tensor1D {
  const t = typeof timesteps === 'number' || Array.isArray(timesteps) ? tf.tensor1d(typeof timesteps === 'number' ? [timesteps] : timesteps, 'float32') : tf.cast(tf.reshape(timesteps, [-1]), 'float32');
  const n = t.shape[0]!;
  if (n === batch) return t as tf.Tensor1D;
  if (n === 1) return tf.tile(t, [batch]) as tf.Tensor1D;
  throw new UsageError(`UNet: got ${n} timesteps for a batch of ${batch} (give one per sample, or one for all).`);
}

/**
 * UNet2DConditionModel's config: the diffusers config.json keys sdlab implements, their defaults
 * (UNET_DEFAULTS), the presets (mnist, sd1, sd2), and the checks that turn a config into one
 * value per block (planUnet). The model itself is in unet.ts.
 *
 *   const cfg = mnistUnetConfig({ crossAttentionDim: 128 });   // or UNET_PRESETS.sd1
 *   const plan = planUnet(cfg);                                // { channels, heads, layers, ... }
 *   const fromFile = readUnetConfig('model/unet/config.json'); // validated, unknown keys rejected
 */
import { type ConfigSpec, parseConfig, readConfig } from '../io/config.ts';
import { getActivation } from '../nn/index.ts';
import { UsageError } from '../util/errors.ts';
import { MAX_BLOCKS, MAX_IMAGE_SIDE, MAX_LAYERS_PER_BLOCK } from '../util/limits.ts';

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
  /** Number of heads (sic: a historic diffusers naming slip), one value or one per block. */
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
  /**
   * LCM-distilled UNets: width of the guidance-scale embedding fed to time_embedding.cond_proj
   * (a bias-free Linear into the sinusoidal features before linear_1); null: no cond_proj.
   */
  time_cond_proj_dim: number | null;
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
  time_cond_proj_dim: null,
  conv_in_kernel: 3,
  conv_out_kernel: 3,
};

/**
 * diffusers config keys for features sdlab's UNet does not implement, with their defaults.
 * A config may carry them (diffusers writes every key) only with exactly these values (rule 3
 * of src/io/config.ts).
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
  'time_cond_proj_dim',
] as const;

/** Schema for parseConfig: the defaults, with the union-typed keys left unchecked (undefined). */
const SCHEMA = {
  ...UNET_DEFAULTS,
  ...Object.fromEntries(UNION_KEYS.map((k) => [k, undefined])),
} as unknown as UNet2DConditionConfig & Record<string, unknown>;

export const UNET_CONFIG_SPEC: ConfigSpec<UNet2DConditionConfig & Record<string, unknown>> = {
  className: 'UNet2DConditionModel',
  reader: 'UNet',
  defaults: SCHEMA,
  unimplemented: UNET_UNSUPPORTED_DEFAULTS,
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
  if (n > MAX_BLOCKS) fail(`block_out_channels lists ${n} levels, over sdlab's limit of ${MAX_BLOCKS}`);
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
  // Each layer is a module built eagerly: bound their number before building (widths are
  // bounded by the parameter count, checked on a shape-only build: nn buildChecked).
  for (const [key, list] of [['layers_per_block', layers], ['transformer_layers_per_block', transformerLayers]] as const) {
    const most = Math.max(...list);
    if (most > MAX_LAYERS_PER_BLOCK) fail(`${key} ${most} is over sdlab's limit of ${MAX_LAYERS_PER_BLOCK}`);
  }
  const onlyCrossAttention = perBlock<boolean>('only_cross_attention', cfg.only_cross_attention, isBool, 'boolean');
  // num_attention_heads is the proper name; SD configs set attention_head_dim to the head count.
  const headsKey = cfg.num_attention_heads !== null && cfg.num_attention_heads !== undefined ? 'num_attention_heads' : 'attention_head_dim';
  const heads = perBlock<number>(headsKey, cfg[headsKey], isPosInt, 'positive integer');
  const cross = perBlock<number>('cross_attention_dim', cfg.cross_attention_dim, isPosInt, 'positive integer');
  if (cross.some((d) => d !== cross[0])) fail(`cross_attention_dim: per-block widths ${JSON.stringify(cfg.cross_attention_dim)} differ (sdlab takes one text-vector width)`);

  // Heads must divide the width of every transformer (down i, up i = reversed level, mid = last).
  const hasAttn = (i: number) => cfg.down_block_types[i] === 'CrossAttnDownBlock2D' || cfg.up_block_types[n - 1 - i] === 'CrossAttnUpBlock2D' || (i === n - 1 && cfg.mid_block_type !== null);
  channels.forEach((c, i) => {
    if (hasAttn(i) && c % heads[i] !== 0) fail(`block_out_channels ${c} is not divisible by ${headsKey} ${heads[i]} (heads per block)`);
  });
  for (const key of ['conv_in_kernel', 'conv_out_kernel'] as const) {
    if (posInt(key, cfg[key]) % 2 !== 1) fail(`${key} must be odd, got ${cfg[key]}`);
  }
  if (!Number.isInteger(cfg.downsample_padding) || cfg.downsample_padding < 0) fail(`downsample_padding must be an integer ≥ 0, got ${cfg.downsample_padding}`);
  if (!(cfg.norm_eps > 0)) fail(`norm_eps must be > 0, got ${cfg.norm_eps}`);
  if (cfg.sample_size !== null && posInt('sample_size', cfg.sample_size) > MAX_IMAGE_SIDE) fail(`sample_size ${cfg.sample_size} is over sdlab's limit of ${MAX_IMAGE_SIDE}`);
  const timeEmbedDim = cfg.time_embedding_dim === null ? 4 * channels[0] : posInt('time_embedding_dim', cfg.time_embedding_dim);
  if (cfg.time_cond_proj_dim !== null && cfg.time_cond_proj_dim !== undefined) posInt('time_cond_proj_dim', cfg.time_cond_proj_dim);
  getActivation(cfg.act_fn, `${source}: act_fn`);
  if (cfg.time_embedding_act_fn !== null) {
    if (typeof cfg.time_embedding_act_fn !== 'string') fail(`time_embedding_act_fn must be an activation name or null`);
    getActivation(cfg.time_embedding_act_fn, `${source}: time_embedding_act_fn`);
  }
  return { channels, layers, heads, crossAttentionDim: cross[0], transformerLayers, onlyCrossAttention, timeEmbedDim };
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
  for (const key of UNION_KEYS) if (all[key] === undefined) (all as Record<string, unknown>)[key] = UNET_DEFAULTS[key];
  return validateUnetConfig(all, source);
}

/** Reads and validates a UNet config.json. */
export function readUnetConfig(file: string): UNet2DConditionConfig {
  // readConfig gives the file-level errors (unreadable, bad JSON, wrong _class_name, unknown
  // keys); parsing its result again is cheap and applies the UNet-specific checks.
  return parseUnetConfig(readConfig(file, UNET_CONFIG_SPEC), file);
}

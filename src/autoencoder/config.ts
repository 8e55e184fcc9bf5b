/**
 * AutoencoderKL's config: the diffusers config.json keys, their defaults (VAE_DEFAULTS), the
 * presets (mnist, sd1) and validateVaeConfig. The model itself is in autoencoder.ts.
 *
 *   const vae = new AutoencoderKL(VAE_PRESETS.mnist);
 *   const cfg = readVaeConfig('model/vae/config.json');   // validated, unknown keys rejected
 */
import { type ConfigSpec, readConfig } from '../io/config.ts';
import { getActivation } from '../nn/index.ts';
import { UsageError } from '../util/errors.ts';
import { MAX_BLOCKS, MAX_IMAGE_SIDE, MAX_LAYERS_PER_BLOCK } from '../util/limits.ts';

/** diffusers AutoencoderKL config (same keys as its config.json). */
export interface AutoencoderKLConfig {
  in_channels: number;
  out_channels: number;
  down_block_types: string[]; // all "DownEncoderBlock2D"
  up_block_types: string[]; // all "UpDecoderBlock2D"
  block_out_channels: number[];
  layers_per_block: number;
  act_fn: string;
  latent_channels: number;
  norm_num_groups: number;
  sample_size: number;
  scaling_factor: number;
  /** Subtracted before scaling (SD3/Flux VAEs); null for SD 1.x. */
  shift_factor: number | null;
  mid_block_add_attention: boolean;
  use_quant_conv: boolean;
  use_post_quant_conv: boolean;
}

/** diffusers' defaults for AutoencoderKL. */
export const VAE_DEFAULTS: AutoencoderKLConfig = {
  in_channels: 3,
  out_channels: 3,
  down_block_types: ['DownEncoderBlock2D'],
  up_block_types: ['UpDecoderBlock2D'],
  block_out_channels: [64],
  layers_per_block: 1,
  act_fn: 'silu',
  latent_channels: 4,
  norm_num_groups: 32,
  sample_size: 32,
  scaling_factor: 0.18215,
  shift_factor: null,
  mid_block_add_attention: true,
  use_quant_conv: true,
  use_post_quant_conv: true,
};

/**
 * Keys diffusers writes that sdlab accepts and ignores:
 *   force_upcast          — run the VAE in fp32 under fp16 pipelines; sdlab always computes in fp32.
 *   latents_mean/_std     — per-channel latent statistics used by some (SDXL-era) pipelines, not the model.
 */
export const VAE_IGNORED_KEYS = ['force_upcast', 'latents_mean', 'latents_std'] as const;

/** Schema for readConfig(file, VAE_CONFIG_SPEC). */
export const VAE_CONFIG_SPEC: ConfigSpec<AutoencoderKLConfig> = { className: 'AutoencoderKL', defaults: VAE_DEFAULTS, ignored: VAE_IGNORED_KEYS };

export const VAE_PRESETS = {
  /**
   * MNIST: 28×28 digits padded to 32×32, one channel. Three levels [32, 64, 64] with two
   * stride-2 downsamplings give 4×8×8 latents: 256 numbers for 1024 pixels (4:1, like SD's
   * 3×512×512 → 4×64×64 at 48:1 but gentler, because a 32-px digit has little redundancy and
   * the 8×8 grid still resolves strokes). One resnet per level plus the mid-block attention
   * (8×8 = 64 tokens, cheap) keep it at 953 k parameters, trainable on a laptop CPU. 32 groups
   * as in SD (on 32 channels that is a per-channel norm). scaling_factor 1.0 is a placeholder:
   * training should measure 1/std of the latents and store it in the saved config.
   */
  mnist: {
    ...VAE_DEFAULTS,
    in_channels: 1,
    out_channels: 1,
    down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D'],
    up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D'],
    block_out_channels: [32, 64, 64],
    layers_per_block: 1,
    latent_channels: 4,
    norm_num_groups: 32,
    sample_size: 32,
    scaling_factor: 1.0,
  },
  /** Stable Diffusion 1.x (and 2.x) VAE: 512 px → 4×64×64. */
  sd1: {
    ...VAE_DEFAULTS,
    down_block_types: Array(4).fill('DownEncoderBlock2D'),
    up_block_types: Array(4).fill('UpDecoderBlock2D'),
    block_out_channels: [128, 256, 512, 512],
    layers_per_block: 2,
    sample_size: 512,
    scaling_factor: 0.18215,
  },
} satisfies Record<string, AutoencoderKLConfig>;

/** Fills defaults and checks a config object (`source` names the file or preset in errors). */
export function validateVaeConfig(cfg: AutoencoderKLConfig, source = 'vae config'): AutoencoderKLConfig {
  const n = cfg.block_out_channels.length;
  const fail = (msg: string) => {
    throw new UsageError(`${source}: ${msg}.`);
  };
  if (n < 1) fail('block_out_channels must list at least one width');
  if (n > MAX_BLOCKS) fail(`block_out_channels lists ${n} levels, over sdlab's limit of ${MAX_BLOCKS}`);
  if (cfg.down_block_types.length !== n || cfg.up_block_types.length !== n) {
    fail(`down_block_types (${cfg.down_block_types.length}) and up_block_types (${cfg.up_block_types.length}) must have one entry per block_out_channels (${n})`);
  }
  for (const t of cfg.down_block_types) if (t !== 'DownEncoderBlock2D') fail(`down_block_types: unsupported "${t}" (only DownEncoderBlock2D)`);
  for (const t of cfg.up_block_types) if (t !== 'UpDecoderBlock2D') fail(`up_block_types: unsupported "${t}" (only UpDecoderBlock2D)`);
  const ints: Array<[string, number]> = [
    ['in_channels', cfg.in_channels],
    ['out_channels', cfg.out_channels],
    ['latent_channels', cfg.latent_channels],
    ['layers_per_block', cfg.layers_per_block],
    ['norm_num_groups', cfg.norm_num_groups],
    ...cfg.block_out_channels.map((c, i): [string, number] => [`block_out_channels[${i}]`, c]),
  ];
  for (const [k, v] of ints) if (!Number.isInteger(v) || v < 1) fail(`${k} must be a positive integer, got ${v}`);
  // Layers are built eagerly, and sample_size sizes buffers (widths: the parameter count, nn buildChecked).
  if (cfg.layers_per_block > MAX_LAYERS_PER_BLOCK) fail(`layers_per_block ${cfg.layers_per_block} is over sdlab's limit of ${MAX_LAYERS_PER_BLOCK}`);
  if (!Number.isInteger(cfg.sample_size) || cfg.sample_size < 1 || cfg.sample_size > MAX_IMAGE_SIDE) fail(`sample_size must be an integer in [1, ${MAX_IMAGE_SIDE}] (sdlab's limit), got ${cfg.sample_size}`);
  for (const c of cfg.block_out_channels) {
    if (c % cfg.norm_num_groups !== 0) fail(`block_out_channels ${c} is not divisible by norm_num_groups ${cfg.norm_num_groups}`);
  }
  if (!(cfg.scaling_factor > 0)) fail(`scaling_factor must be > 0, got ${cfg.scaling_factor}`);
  getActivation(cfg.act_fn, `${source}: act_fn`);
  return cfg;
}

/** Reads and validates a VAE config.json. */
export function readVaeConfig(file: string): AutoencoderKLConfig {
  return validateVaeConfig(readConfig(file, VAE_CONFIG_SPEC), file);
}

/**
 * Presets for `npx sdlab train all`: the settings of every stage (VAE → CLIP → UNet) and of the
 * closing sample sheet.
 *
 *   full    the quality target: ≥ 97% conditional accuracy and FID ≤ 2× the real-vs-real baseline
 *           (`sdlab eval` on 50-step DDIM samples), trained in ≤ 20 minutes on a 2-core CPU with the
 *           native backend
 *   quick   a few minutes: recognisable digits for demos and CI smoke runs
 *   tiny    tests only (a handful of steps on tiny models; not offered on the command line)
 *
 * What the recipe is and why (measured; see RECIPE_NOTES below for the numbers):
 *   RECIPE_NOTES_PLACEHOLDER
 */
import type { AutoencoderKLConfig } from '../autoencoder/index.ts';
import { type ClipTrainOptions, CLIP_TRAIN_DEFAULTS } from './clip.ts';
import { type UnetTrainOptions, UNET_TRAIN_DEFAULTS } from './unet.ts';
import { type VaeTrainOptions, VAE_TRAIN_DEFAULTS } from './vae.ts';

type Stage<T> = Omit<T, 'runDir'>;

export interface TrainAllPreset {
  description: string;
  vae: Stage<VaeTrainOptions>;
  clip: Stage<ClipTrainOptions>;
  unet: Stage<UnetTrainOptions>;
  /** The closing sample sheet: one row per digit, `n` images each. */
  sheet: { n: number; steps: number; guidance: number };
}

/** Guidance of the full preset's sheet and of the eval samples (see the measurements above). */
export const FULL_GUIDANCE = 1.75;

const FULL: TrainAllPreset = {
  description: 'the quality target, about 20 minutes on 2 cores',
  vae: { ...VAE_TRAIN_DEFAULTS },
  clip: { ...CLIP_TRAIN_DEFAULTS },
  unet: { ...UNET_TRAIN_DEFAULTS },
  sheet: { n: 8, steps: 50, guidance: FULL_GUIDANCE },
};

const QUICK: TrainAllPreset = {
  description: 'a few minutes: recognisable digits for demos and smoke runs',
  vae: { ...VAE_TRAIN_DEFAULTS, maxSteps: 150 },
  clip: { ...CLIP_TRAIN_DEFAULTS, epochs: 2 },
  unet: { ...UNET_TRAIN_DEFAULTS, maxSteps: 600, warmupSteps: 50, valLimit: 128 },
  sheet: { n: 8, steps: 50, guidance: 3 },
};

const TINY_VAE: Partial<AutoencoderKLConfig> = {
  sample_size: 8,
  block_out_channels: [4, 4],
  down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D'],
  up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D'],
  norm_num_groups: 2,
  latent_channels: 2,
  mid_block_add_attention: false,
};

/** Tests only: every stage a few steps on tiny models, for 8×8 digits (`--data` IDX files). */
export const TINY_PRESET: TrainAllPreset = {
  description: 'tests only: a few steps on tiny models',
  vae: { ...VAE_TRAIN_DEFAULTS, epochs: 1, batchSize: 8, limit: 16, valLimit: 8, warmupSteps: 0, config: TINY_VAE, gridSize: 4 },
  clip: {
    ...CLIP_TRAIN_DEFAULTS,
    epochs: 1,
    batchSize: 8,
    limit: 16,
    valLimit: 20,
    warmupSteps: 0,
    config: {
      projection_dim: 8,
      text: { hidden_size: 8, intermediate_size: 16, num_hidden_layers: 1, num_attention_heads: 2 },
      image: { block_out_channels: [4], norm_num_groups: 2, sample_size: 8 },
    },
  },
  unet: {
    ...UNET_TRAIN_DEFAULTS,
    epochs: 1,
    batchSize: 8,
    limit: 16,
    valLimit: 8,
    warmupSteps: 0,
    config: { block_out_channels: [4, 8], attention_head_dim: [1, 2], norm_num_groups: 2 },
    gridEvery: 1,
    gridCols: 1,
    gridSteps: 2,
  },
  sheet: { n: 1, steps: 2, guidance: 3 },
};

export const TRAIN_ALL_PRESETS = { quick: QUICK, full: FULL } as const;
export type TrainAllPresetName = keyof typeof TRAIN_ALL_PRESETS;

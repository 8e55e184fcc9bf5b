/**
 * Presets for `npx sdlab train all`: the settings of every stage (VAE → CLIP → UNet) and of the
 * closing sample sheet. Measured times: README.md, "Results" (the one place they are kept).
 *
 *   full    the quality target: ≥ 97% conditional accuracy and FID ≤ 2× the real-vs-real baseline
 *           (`sdlab eval` on 50-step DDIM samples), within a 20-minute budget on a 2-core CPU with
 *           the native backend
 *   quick   a few minutes: recognisable digits for demos and CI smoke runs
 *   tiny    tests only (a handful of steps on tiny models; not offered on the command line)
 *
 * What the recipe is and why. Measured on the embedded digits, native backend, 2 idle cores,
 * `sdlab eval` on 1,000 samples (100 per digit, "a handwritten <digit>", DDIM 50 steps); FID is
 * the eval of the time: the classifier's feature layer alone (blind to blur: README, "How far to
 * trust the metric"), one halving, real-vs-real baseline 22.67. Today's three-layer FID scores the
 * full preset's guidance-1.75 samples at 2.19× and its VAE round trip at 2.08×:
 *
 *   VAE       200 steps, batch 16: held-out PSNR 23.4 dB. Its round trip costs little:
 *             1,000 training digits encoded + decoded score FID 24.8 (1.09× baseline), the raw
 *             digits 18.6 — so the UNet, not the VAE, decides the sample quality.
 *   CLIP      4 epochs, batch 64: 97.7% zero-shot. One epoch reached 77% and gave the
 *             UNet muddled prompts (quick preset draft: 0, 2, 5, 6, 8 unreadable).
 *   UNet      v-prediction on zero-terminal-SNR betas, min-SNR-γ 5, 10% caption dropout, EMA,
 *             AdamW lr 4e-3 with warm-up + cosine, attention only at 4×4 (RECIPE_UNET_CONFIG).
 *             Steps against guidance (accuracy / FID ÷ baseline):
 *                 steps   guidance 1.5     1.75           2              3
 *                 1200    91.9% / 1.47×                  97.6% / 1.97×  99.7% / 3.07×
 *                 2400    94.6% / 1.28×                  98.8% / 1.77×
 *                 3200    97.3% / 1.30×    98.7% / 1.53×  99.3% / 1.81×
 *             Guidance trades diversity (FID) for faithfulness (accuracy); longer training lifts
 *             accuracy at low guidance. 3200 steps at guidance 1.75 meets both targets with margin
 *             and fits the budget (the UNet takes most of it).
 *   quick     150 VAE steps (21.8 dB), 2 CLIP epochs (95.9%), 600 UNet steps: the sheet reads as
 *             digits at guidance 3; with 100 / 1 / 300 it did not.
 */
import type { AutoencoderKLConfig } from '../autoencoder/index.ts';
import { type ClipTrainOptions, CLIP_TRAIN_DEFAULTS } from './clip.ts';
import { type UnetTrainOptions, RECIPE_SAMPLING, UNET_TRAIN_DEFAULTS } from './unet.ts';
import { type VaeTrainOptions, VAE_TRAIN_DEFAULTS } from './vae.ts';

type Stage<T> = Omit<T, 'runDir'>;

export interface TrainAllPreset {
  description: string;
  vae: Stage<VaeTrainOptions>;
  clip: Stage<ClipTrainOptions>;
  unet: Stage<UnetTrainOptions>;
  /** The closing sample sheet: one row per digit, `n` images each, sampled as unet.sampling says. */
  sheet: { n: number };
}

/**
 * The full preset samples at guidance 1.75 (RECIPE_SAMPLING: DDIM 50; see the measurements
 * above). The UNet stage writes it into the run (sampling_config.json), so `sdlab sample` and
 * `sdlab eval` use it without flags.
 */
const FULL: TrainAllPreset = {
  description: 'the quality target (measured times: README, "Results")',
  vae: { ...VAE_TRAIN_DEFAULTS },
  clip: { ...CLIP_TRAIN_DEFAULTS },
  unet: { ...UNET_TRAIN_DEFAULTS, sampling: RECIPE_SAMPLING },
  sheet: { n: 8 },
};

/** Guidance 3: the quick model's digits read better with more guidance (measured above). */
const QUICK: TrainAllPreset = {
  description: 'a few minutes: recognisable digits for demos and smoke runs',
  vae: { ...VAE_TRAIN_DEFAULTS, maxSteps: 150 },
  clip: { ...CLIP_TRAIN_DEFAULTS, epochs: 2 },
  unet: { ...UNET_TRAIN_DEFAULTS, maxSteps: 600, warmupSteps: 50, valLimit: 128, sampling: { ...RECIPE_SAMPLING, guidance: 3 } },
  sheet: { n: 8 },
};

/** The tests' tiny autoencoder: 8×8 digits → 2×4×4 latents, four channels, no mid attention. */
export const TINY_VAE: Partial<AutoencoderKLConfig> = {
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
    sampling: { scheduler: 'ddim', steps: 2, guidance: 3, eta: 0, guidanceInterval: null },
  },
  sheet: { n: 1 },
};

export const TRAIN_ALL_PRESETS = { quick: QUICK, full: FULL } as const;
export type TrainAllPresetName = keyof typeof TRAIN_ALL_PRESETS;

/**
 * Presets for `npx sdlab train all`: the settings of every stage (VAE → CLIP → UNet) and of the
 * closing sample sheet. Measured times: README.md, "Results" (the one place they are kept).
 *
 *   full    the quality target of issue 18: ≥ 98% conditional accuracy, FID ≤ 1.5× the
 *           real-vs-real baseline and near-duplicates within 2× of real digits (`sdlab eval`,
 *           three-layer FID, at the run's own sampling settings), within 15 minutes on a 2-core
 *           CPU with the native backend. Where it stands: README "Results".
 *   quick   a few minutes: recognisable digits for demos and CI smoke runs
 *   tiny    tests only (a handful of steps on tiny models; not offered on the command line)
 *
 * What the recipe is and why. Embedded digits, native backend, seed 0; `sdlab eval` on 1,000
 * samples (100 per digit, "a handwritten <digit>", DDIM 50), FID on three classifier layers ÷ the
 * real-vs-real baseline (55.05; 500 vs 500 images, so two sample seeds differ by up to ±0.1×):
 *
 *   VAE       600 steps, batch 16 (VAE_TRAIN_DEFAULTS): held-out PSNR 28.1 dB; real digits
 *             through it score 1.32× (200 steps, the preset before: 23.4 dB, 2.08×; 1,200 steps:
 *             29.7 dB, and the samples no better). With the 200-step VAE the samples scored 2.19×,
 *             with this one 1.73× at the same UNet recipe and guidance 1.75.
 *   CLIP      4 epochs, batch 64: 97.7% zero-shot. One epoch reached 77% and gave the
 *             UNet muddled prompts (quick preset draft: 0, 2, 5, 6, 8 unreadable).
 *   UNet      v-prediction on zero-terminal-SNR betas, min-SNR-γ 5, 10% caption dropout, EMA,
 *             AdamW lr 4e-3 with warm-up + cosine, attention only at 4×4 (RECIPE_UNET_CONFIG),
 *             3,200 steps (most of the budget; 3,600 — what the 15 minutes would still hold —
 *             did worse in one run: held-out loss 0.0514 vs 0.0485, 95.5% / 1.76× / 1.2% at
 *             today's sampling, seed 0). --ema-decay 0.9995 instead of 0.999 exports
 *             bit-identical weights: the EMA warm-up min(decay, (1+n)/(10+n)) decides below
 *             ~9,000 steps.
 *   Sampling  guidance against the interval it applies in (accuracy / FID ÷ baseline /
 *             near-duplicates; real digits: 1.8% near-duplicates), sample seeds 0 and 7:
 *                 guidance, t interval     seed 0                  seed 7
 *                 1.75, every step         98.7% / 1.74× / 1.8%    97.9% / 1.57× / 1.2%
 *                 1.5, every step                                  96.4% / 1.37× / 0.0%
 *                 2, [100, 700]                                    96.9% / 1.39× / 0.4%
 *                 2.5, [100, 600]          97.9% / 1.54× / 0.8%    97.3% / 1.41× / 0.4%
 *                 2.5, [100, 700]                                  99.0% / 1.60× / 1.8%
 *                 3, [100, 600]            98.9% / 1.69× / 1.6%    98.8% / 1.56× / 0.8%
 *                 3, [200, 600]            98.7% / 1.65× / 1.2%    98.5% / 1.51× / 0.4%
 *                 4, [100, 500]                                    98.7% / 1.55× / 0.8%
 *                 2, [500, 999]                                    97.3% / 1.62× / 0.8%
 *                 3, [600, 999]                                    98.2% / 2.14× / 1.8%
 *             Guidance at the noisiest steps (t > 600) costs variety and buys no accuracy; the
 *             class is settled in the middle. The recipe samples with guidance 3 at t in
 *             [200, 600] (RECIPE_SAMPLING), which also skips the unconditional pass on 60% of the
 *             steps. The earlier, feature-layer-only table (200-step VAE) showed the same trade
 *             against UNet steps: accuracy rises with training at a given guidance.
 *   quick     150 VAE steps (21.8 dB), 2 CLIP epochs (95.9%), 600 UNet steps: the sheet reads as
 *             digits at guidance 3 (every step); with 100 / 1 / 300 it did not.
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
 * The full preset samples as RECIPE_SAMPLING says (DDIM 50, guidance 3 at t in [200, 600]; see the
 * measurements above). The UNet stage writes it into the run (sampling_config.json), so `sdlab
 * sample` and `sdlab eval` use it without flags.
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
  vae: { ...VAE_TRAIN_DEFAULTS, epochs: 1, maxSteps: 150 },
  clip: { ...CLIP_TRAIN_DEFAULTS, epochs: 2 },
  unet: { ...UNET_TRAIN_DEFAULTS, maxSteps: 600, warmupSteps: 50, valLimit: 128, sampling: { ...RECIPE_SAMPLING, guidance: 3, guidanceInterval: null } },
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

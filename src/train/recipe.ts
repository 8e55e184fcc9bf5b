/**
 * The recipe's rules for the choices a run states in a few numbers: what a list of widths means
 * for each model's blocks, how wide the text encoder's MLP is, and when the betas get a zero
 * terminal SNR. `sdlab train vae|clip|unet` (src/commands/train.ts) parses its flags and calls
 * these; the models' full defaults are beside their trainers (VAE_TRAIN_DEFAULTS in vae.ts, …)
 * and what the recipe was measured against is in presets.ts.
 *
 *   trainVae({ ...VAE_TRAIN_DEFAULTS, runDir, config: vaeConfigOverrides({ channels: [32, 64, 64] }) });
 *   trainUnet({ ...UNET_TRAIN_DEFAULTS, runDir, config: { ...UNET_TRAIN_DEFAULTS.config, ...unetBlockLayout([32, 64]) } });
 */
import type { AutoencoderKLConfig } from '../autoencoder/index.ts';
import type { PredictionType } from '../schedule/index.ts';
import type { UNet2DConditionConfig } from '../unet/index.ts';
import type { ClipConfigOverrides } from './clip.ts';

/** VAE architecture choices; each one given overrides the preset. */
export interface VaeArchitecture {
  /** Widths of the levels: one encoder and one decoder block per level. */
  channels?: number[];
  layersPerBlock?: number;
  latentChannels?: number;
  normGroups?: number;
  sampleSize?: number;
  /** false: no attention in the mid blocks. */
  midAttention?: boolean;
}

/** The AutoencoderKL config overrides the choices give (plain down/up encoder blocks at every level). */
export function vaeConfigOverrides(a: VaeArchitecture): Partial<AutoencoderKLConfig> {
  const config: Partial<AutoencoderKLConfig> = {};
  if (a.channels) {
    config.block_out_channels = a.channels;
    config.down_block_types = a.channels.map(() => 'DownEncoderBlock2D');
    config.up_block_types = a.channels.map(() => 'UpDecoderBlock2D');
  }
  if (a.layersPerBlock !== undefined) config.layers_per_block = a.layersPerBlock;
  if (a.latentChannels !== undefined) config.latent_channels = a.latentChannels;
  if (a.normGroups !== undefined) config.norm_num_groups = a.normGroups;
  if (a.sampleSize !== undefined) config.sample_size = a.sampleSize;
  if (a.midAttention === false) config.mid_block_add_attention = false;
  return config;
}

/** CLIP architecture choices (text tower, image tower, shared embedding); each one given overrides the preset. */
export interface ClipArchitecture {
  projectionDim?: number;
  textWidth?: number;
  textLayers?: number;
  textHeads?: number;
  imageChannels?: number[];
  normGroups?: number;
  sampleSize?: number;
}

/** The CLIP config overrides the choices give; the text MLP is 4× the text width, as in CLIP. */
export function clipConfigOverrides(a: ClipArchitecture): ClipConfigOverrides {
  const config: ClipConfigOverrides = { text: {}, image: {} };
  if (a.projectionDim !== undefined) config.projection_dim = a.projectionDim;
  if (a.textWidth !== undefined) Object.assign(config.text!, { hidden_size: a.textWidth, intermediate_size: 4 * a.textWidth });
  if (a.textLayers !== undefined) config.text!.num_hidden_layers = a.textLayers;
  if (a.textHeads !== undefined) config.text!.num_attention_heads = a.textHeads;
  if (a.imageChannels) config.image!.block_out_channels = a.imageChannels;
  if (a.normGroups !== undefined) config.image!.norm_num_groups = a.normGroups;
  if (a.sampleSize !== undefined) config.image!.sample_size = a.sampleSize;
  return config;
}

/**
 * The UNet blocks for levels of these widths, laid out as the recipe's: no attention at the
 * first (highest-resolution) level, where it costs most and bought nothing measurable, cross-
 * attention at every other level; 16 channels per attention head.
 */
export function unetBlockLayout(channels: number[]): Partial<UNet2DConditionConfig> {
  const n = channels.length;
  const down = channels.map((_, i) => (i === 0 && n > 1 ? 'DownBlock2D' : 'CrossAttnDownBlock2D'));
  return {
    block_out_channels: channels,
    down_block_types: down,
    up_block_types: [...down].reverse().map((t) => t.replace('Down', 'Up')),
    attention_head_dim: channels.map((c) => Math.max(1, Math.round(c / 16))),
  };
}

/**
 * Whether the betas are rescaled to a zero terminal SNR, unless the run says: the recipe's
 * choice (`recipe`) with v-prediction; never by default with ε-prediction, which cannot give x0
 * at SNR 0 (arXiv 2305.08891).
 */
export function zeroTerminalSnrFor(prediction: PredictionType, given: boolean | undefined, recipe: boolean): boolean {
  return given ?? (prediction === 'v_prediction' && recipe);
}

/** A run directory with an untrained tiny vae/ and clip/, as `train vae` / `train clip` leave them (what `train unet` needs, frozen). */
import path from 'node:path';
import { AutoencoderKL, VAE_PRESETS } from '../../src/autoencoder/index.ts';
import { CLIPModel } from '../../src/clip/index.ts';
import { clipTrainConfig, mnistCaptionTokenizer } from '../../src/train/clip.ts';
import { manualSeed } from '../../src/nn/index.ts';
import { TINY_VAE } from '../../src/train/presets.ts';

/** Writes <run>/vae (a 4×4×2-latent VAE for 8×8 digits, scaling_factor 1.7) and <run>/clip (a width-8 text encoder), seeded. */
export function writeFrozenParts(run: string): void {
  manualSeed(11);
  const vae = new AutoencoderKL({
    ...VAE_PRESETS.mnist,
    ...TINY_VAE,
    scaling_factor: 1.7,
  });
  vae.save(path.join(run, 'vae'));
  const tok = mnistCaptionTokenizer();
  const clip = new CLIPModel(
    clipTrainConfig('mnist', tok.vocabSize, {
      projection_dim: 8,
      text: { hidden_size: 8, intermediate_size: 16, num_hidden_layers: 1, num_attention_heads: 2 },
      image: { block_out_channels: [4], norm_num_groups: 2 },
    }),
  );
  clip.save(path.join(run, 'clip'), tok);
  vae.dispose();
  clip.dispose();
}

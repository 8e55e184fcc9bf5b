/**
 * A run directory with tiny random-weight models saved through the real save functions
 * (AutoencoderKL.save, CLIPModel.save with its word tokenizer, UNet.save): vae/, clip/, unet/,
 * scheduler/scheduler_config.json, and what training records beside them — vae/canvas.json (the
 * data's own size) and sampling_config.json (how the run samples itself). Gray images of
 * `sampleSize` (default 16: 4×8×8 latents), 16-wide text.
 */
import fs from 'node:fs';
import path from 'node:path';
import { AutoencoderKL } from '../../src/autoencoder/index.ts';
import { CLIPModel, mnistClipConfig } from '../../src/clip/index.ts';
import { mnistCaptionTokenizer } from '../../src/train/clip.ts';
import { UNet2DConditionModel, mnistUnetConfig } from '../../src/unet/index.ts';
import { manualSeed } from '../../src/nn/index.ts';

export interface RandomRunOptions {
  sampleSize?: number;
  /** The data's own size on the canvas (centred), or null for no canvas.json. Default: sampleSize (no padding). */
  native?: number | null;
  /** sampling_config.json's contents, or null for none. Default: DDIM 50 at guidance 3. */
  sampling?: Record<string, unknown> | null;
}

export function makeRandomRun(dir: string, o: RandomRunOptions = {}): void {
  const size = o.sampleSize ?? 16;
  manualSeed(7);
  const tok = mnistCaptionTokenizer(8);
  const clipCfg = mnistClipConfig(tok.vocabSize, 8);
  const clip = new CLIPModel({
    ...clipCfg,
    projection_dim: 8,
    text_config: { ...clipCfg.text_config, hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1, num_attention_heads: 2, projection_dim: 8 },
    image_config: { ...clipCfg.image_config, block_out_channels: [8], norm_num_groups: 4, projection_dim: 8 },
  });
  clip.save(path.join(dir, 'clip'), tok);
  const vae = new AutoencoderKL({
    in_channels: 1,
    out_channels: 1,
    down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D'],
    up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D'],
    block_out_channels: [8, 8],
    layers_per_block: 1,
    latent_channels: 4,
    norm_num_groups: 4,
    sample_size: size,
    scaling_factor: 0.5,
  });
  vae.save(path.join(dir, 'vae'));
  const unet = new UNet2DConditionModel({
    ...mnistUnetConfig({ crossAttentionDim: 16 }),
    block_out_channels: [8, 16],
    attention_head_dim: [2, 2],
    norm_num_groups: 4,
    sample_size: size / 2, // the VAE's two levels halve the size once
  });
  unet.save(path.join(dir, 'unet'));
  const native = o.native === undefined ? size : o.native;
  if (native !== null) {
    const pad = Math.floor((size - native) / 2);
    fs.writeFileSync(path.join(dir, 'vae', 'canvas.json'), JSON.stringify({ native_height: native, native_width: native, sample_size: size, pad_top: pad, pad_left: pad }));
  }
  const sampling = o.sampling === undefined ? { scheduler: 'ddim', num_inference_steps: 50, guidance_scale: 3, eta: 0 } : o.sampling;
  if (sampling !== null) fs.writeFileSync(path.join(dir, 'sampling_config.json'), JSON.stringify(sampling));
  fs.mkdirSync(path.join(dir, 'scheduler'), { recursive: true });
  fs.writeFileSync(
    path.join(dir, 'scheduler', 'scheduler_config.json'),
    JSON.stringify({ _class_name: 'DDPMScheduler', num_train_timesteps: 1000, beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012, clip_sample: false }),
  );
  clip.dispose();
  vae.dispose();
  unet.dispose();
}

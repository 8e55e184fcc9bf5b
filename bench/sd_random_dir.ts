/**
 * Writes a random-weight Stable Diffusion 1.5 directory in the diffusers layout, fp16 files
 * (2.1 GB: what a downloaded SD 1.5 fp16 variant holds), for measuring `sdlab txt2img` end to end
 * — loading, peak RSS, wall time — without downloading anything (issue 17):
 *
 *   node bin/run-ts.mjs bench/sd_random_dir.ts /tmp/sd15-random
 *   /usr/bin/time -v npx sdlab txt2img --model /tmp/sd15-random --prompt "a cat" --steps 2 --scheduler ddim --out /tmp/out
 *
 * Models are built, saved and freed one at a time (seeded weights). The tokenizer is sdlab's
 * word-level one (a CLIP BPE vocabulary would have to come from a download); the text encoder is
 * CLIP ViT-L/14's size with its 49,408-token embedding. Writes nothing if DIR/model_index.json
 * exists already.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { AutoencoderKL, VAE_PRESETS } from '../src/autoencoder/index.ts';
import { TEXT_ENCODER_PRESETS, TextEncoder } from '../src/clip/text_encoder.ts';
import { WordTokenizer } from '../src/clip/tokenizer_word.ts';
import { manualSeed } from '../src/nn/index.ts';
import { saveWeights } from '../src/nn/checkpoint.ts';
import { UNET_PRESETS, UNet2DConditionModel } from '../src/unet/index.ts';
import { registerNativeBackend } from '../src/backend/native.ts';

export function writeRandomSd15Dir(dir: string): void {
  if (fs.existsSync(path.join(dir, 'model_index.json'))) return;
  for (const sub of ['text_encoder', 'unet', 'vae', 'tokenizer', 'scheduler']) fs.mkdirSync(path.join(dir, sub), { recursive: true });
  manualSeed(0);
  const te = new TextEncoder(TEXT_ENCODER_PRESETS.sd1);
  saveWeights(te, path.join(dir, 'text_encoder', 'model.safetensors'), { dtype: 'F16' });
  fs.writeFileSync(path.join(dir, 'text_encoder', 'config.json'), JSON.stringify(te.config, null, 2));
  te.dispose();
  const unet = new UNet2DConditionModel(UNET_PRESETS.sd1);
  unet.save(path.join(dir, 'unet'), { dtype: 'F16' });
  unet.dispose();
  const vae = new AutoencoderKL(VAE_PRESETS.sd1);
  vae.save(path.join(dir, 'vae'), { dtype: 'F16' });
  vae.dispose();
  new WordTokenizer(['a photo of a cat dog lighthouse at dusk']).save(path.join(dir, 'tokenizer'));
  fs.writeFileSync(path.join(dir, 'scheduler', 'scheduler_config.json'), JSON.stringify({
    _class_name: 'PNDMScheduler', beta_end: 0.012, beta_schedule: 'scaled_linear', beta_start: 0.00085, clip_sample: false,
    num_train_timesteps: 1000, set_alpha_to_one: false, skip_prk_steps: true, steps_offset: 1,
  }, null, 2));
  fs.writeFileSync(path.join(dir, 'model_index.json'), JSON.stringify({ _class_name: 'StableDiffusionPipeline', note: 'random weights (sdlab bench/sd_random_dir.ts)' }, null, 2));
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(import.meta.filename)) {
  const dir = process.argv[2];
  if (!dir) {
    console.error('usage: node bin/run-ts.mjs bench/sd_random_dir.ts DIR');
    process.exit(2);
  }
  if (registerNativeBackend()) await tf.setBackend('native');
  const t0 = Date.now();
  writeRandomSd15Dir(dir);
  console.log(`${dir}: random SD 1.5 (fp16) ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

/**
 * The model training steps that `npm run bench` times and `bench/profile.ts` profiles:
 *
 *   vae-train-step   AutoencoderKL, VAE_PRESETS.mnist; batch 32 of 32×32×1 in [-1, 1];
 *                    loss = MSE(decode(z), x) + 1e-6 · KL, z sampled from the posterior; Adam 1e-4
 *   unet-train-step  UNet2DConditionModel, UNET_PRESETS.mnist; batch 64 of 8×8×4 latents, text
 *                    context [64, 16, 128], random timesteps; loss = MSE(ε̂, ε); Adam 1e-4
 *
 * Each builder makes the model and inputs on the current tfjs backend (seeded, so every backend
 * trains the same numbers) and returns one training step.
 *
 * useFusedOps() (the *-fused cases) reroutes src/nn's GroupNorm, LayerNorm and SiLU through the
 * native backend's fused ops (groupNorm, fusedSilu in src/backend/native.ts), to measure what
 * adopting them in the models would give. It patches the classes for the rest of the process.
 */
import * as tf from '@tensorflow/tfjs';
import { AutoencoderKL, VAE_PRESETS, klDivergence } from '../src/autoencoder/index.ts';
import { UNET_PRESETS, UNet2DConditionModel } from '../src/unet/index.ts';
import { ACTIVATIONS, GroupNorm, LayerNorm, manualSeed } from '../src/nn/index.ts';
import { fusedSilu, groupNorm } from '../src/backend/native.ts';

let fused = false;

/** Routes GroupNorm / LayerNorm / SiLU of src/nn through the fused ops (process-wide, one way). */
export function useFusedOps(): void {
  if (fused) return;
  fused = true;
  GroupNorm.prototype.forward = function <T extends tf.Tensor>(this: GroupNorm, x: T): T {
    return groupNorm(x, this.numGroups, this.weight, this.bias, this.eps);
  };
  LayerNorm.prototype.forward = function <T extends tf.Tensor>(this: LayerNorm, x: T): T {
    return groupNorm(x, 1, this.weight, this.bias, this.eps, { batchDims: x.rank - 1 });
  };
  ACTIVATIONS.silu = fusedSilu;
  ACTIVATIONS.swish = fusedSilu;
}

export interface TrainStep {
  run: () => void;
  dispose: () => void;
}

/** One Adam step on `loss`, reading the loss back (so the whole step has finished). */
function adamStep(vars: tf.Variable[], opt: tf.Optimizer, loss: () => tf.Scalar): void {
  const l = opt.minimize(loss, true, vars);
  l!.dataSync();
  l!.dispose();
}

export const VAE_BATCH = 32;

export function vaeTrainStep(batch = VAE_BATCH): TrainStep {
  manualSeed(0);
  const vae = new AutoencoderKL(VAE_PRESETS.mnist);
  const x = tf.randomUniform([batch, 32, 32, 1], -1, 1, 'float32', 1) as tf.Tensor4D;
  const noise = tf.randomNormal([batch, 8, 8, 4], 0, 1, 'float32', 2) as tf.Tensor4D;
  const opt = tf.train.adam(1e-4);
  const vars = vae.parameters();
  return {
    run: () =>
      adamStep(vars, opt, () => {
        const out = vae.forward(x, { noise });
        const rec = tf.losses.meanSquaredError(x, out.sample);
        return tf.add(rec, tf.mul(tf.mean(klDivergence(out)), 1e-6)) as tf.Scalar;
      }),
    dispose: () => {
      vae.dispose();
      opt.dispose();
      tf.dispose([x, noise]);
    },
  };
}

export const UNET_BATCH = 64;
export const TEXT_LEN = 16;

export function unetTrainStep(batch = UNET_BATCH): TrainStep {
  manualSeed(0);
  const unet = new UNet2DConditionModel(UNET_PRESETS.mnist);
  const cfg = UNET_PRESETS.mnist;
  const latents = tf.randomNormal([batch, 8, 8, cfg.in_channels], 0, 1, 'float32', 1) as tf.Tensor4D;
  const eps = tf.randomNormal([batch, 8, 8, cfg.out_channels], 0, 1, 'float32', 2) as tf.Tensor4D;
  const ctx = tf.randomNormal([batch, TEXT_LEN, cfg.cross_attention_dim as number], 0, 1, 'float32', 3) as tf.Tensor3D;
  const timesteps = tf.tensor1d(Array.from({ length: batch }, (_, i) => (i * 997) % 1000), 'float32');
  const opt = tf.train.adam(1e-4);
  const vars = unet.parameters();
  return {
    run: () => adamStep(vars, opt, () => tf.losses.meanSquaredError(eps, unet.forward(latents, timesteps, ctx)) as tf.Scalar),
    dispose: () => {
      unet.dispose();
      opt.dispose();
      tf.dispose([latents, eps, ctx, timesteps]);
    },
  };
}

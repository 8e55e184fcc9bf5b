/**
 * The model training steps that `npm run bench` times and `bench/profile.ts` profiles:
 *
 *   vae-train-step   AutoencoderKL, VAE_PRESETS.mnist; batch 32 of 32×32×1 in [-1, 1];
 *                    loss = MSE(decode(z), x) + 1e-6 · KL, z sampled from the posterior; Adam 1e-4
 *   unet-train-step  UNet2DConditionModel, UNET_PRESETS.mnist; batch 64 of 8×8×4 latents, text
 *                    context [64, 16, 128], random timesteps; loss = MSE(ε̂, ε); Adam 1e-4
 *   convnet-train-step  issue 3's reference convnet (below); batch 64 of 28×28×1, MSE to the input, Adam 1e-3
 *
 * Each builder makes the model and inputs on the current tfjs backend (seeded, so every backend
 * trains the same numbers) and returns one training step.
 *
 * The models run src/ops' fused ops (GroupNorm, LayerNorm, SiLU, GELU: one native kernel each
 * way). useFusedOps(false) (the *-unfused cases, profile.ts --unfused) makes those ops take their
 * plain tfjs compositions instead, on any backend, to measure what the fused kernels save.
 */
import * as tf from '@tensorflow/tfjs';
import { AutoencoderKL, VAE_PRESETS, klDivergence } from '../src/autoencoder/index.ts';
import { UNET_PRESETS, UNet2DConditionModel } from '../src/unet/index.ts';
import { manualSeed } from '../src/nn/index.ts';
import { opsSettings } from '../src/ops/index.ts';

/** Fused kernels (the default) or the tfjs compositions, for every op of src/ops from now on. */
export function useFusedOps(fused: boolean): void {
  opsSettings.fused = fused;
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

/**
 * The reference convnet: batch 64 of 28x28x1 (input is also the target), conv3x3 1->32,
 * conv3x3 32->64 stride 2, conv3x3 64->64, 3x3 conv-transpose 64->32 stride 2 back to 28x28,
 * conv3x3 32->1; ReLU after every layer but the last, 'same' padding, biases, MSE, Adam 1e-3.
 */
export const CONVNET_BATCH = 64;
const CONVNET_LAYERS = [
  { kind: 'conv', cin: 1, cout: 32, stride: 1, hw: 28 },
  { kind: 'conv', cin: 32, cout: 64, stride: 2, hw: 14 },
  { kind: 'conv', cin: 64, cout: 64, stride: 1, hw: 14 },
  { kind: 'convT', cin: 64, cout: 32, stride: 2, hw: 28 },
  { kind: 'conv', cin: 32, cout: 1, stride: 1, hw: 28 },
] as const;

export function convnetFlops(batch: number): number {
  // forward 2*B*(output pixels)*Cout*9*Cin for a conv; the transpose conv does the same work as
  // the conv it transposes (14x14x64 <-> 28x28x32). Backward: x2 (dx and dw), no dx for layer 1.
  let total = 0;
  CONVNET_LAYERS.forEach((l, i) => {
    const fwd = l.kind === 'conv' ? 2 * batch * l.hw * l.hw * l.cout * 9 * l.cin : 2 * batch * 14 * 14 * l.cin * 9 * l.cout;
    total += fwd * (i === 0 ? 2 : 3);
  });
  return total;
}

export function convnetTrainStep(batch = CONVNET_BATCH): TrainStep {
  const heInit = (shape: number[], fanIn: number) => tf.variable(tf.randomNormal(shape, 0, Math.sqrt(2 / fanIn), 'float32', 1));
  const w = CONVNET_LAYERS.map((l) => (l.kind === 'conv' ? heInit([3, 3, l.cin, l.cout], 9 * l.cin) : heInit([3, 3, l.cout, l.cin], 9 * l.cin)));
  const b = CONVNET_LAYERS.map((l) => tf.variable(tf.zeros([l.cout])));
  const x = tf.randomUniform([batch, 28, 28, 1], 0, 1, 'float32', 2) as tf.Tensor4D;
  const opt = tf.train.adam(1e-3);
  const forward = (input: tf.Tensor4D): tf.Tensor4D => {
    let h = input;
    CONVNET_LAYERS.forEach((l, i) => {
      const last = i === CONVNET_LAYERS.length - 1;
      if (l.kind === 'conv') {
        h = tf.fused.conv2d({ x: h, filter: w[i] as tf.Tensor4D, strides: l.stride, pad: 'same', bias: b[i], activation: last ? 'linear' : 'relu' });
      } else {
        h = tf.relu(tf.add(tf.conv2dTranspose(h, w[i] as tf.Tensor4D, [batch, l.hw, l.hw, l.cout], l.stride, 'same'), b[i])) as tf.Tensor4D;
      }
    });
    return h;
  };
  return {
    run: () => adamStep([...w, ...b], opt, () => tf.losses.meanSquaredError(x, forward(x)) as tf.Scalar),
    dispose: () => { [...w, ...b, x].forEach((t) => t.dispose()); opt.dispose(); },
  };
}

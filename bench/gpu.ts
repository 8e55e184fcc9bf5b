/**
 * The GPU path's parity checks, shared by test/webgpu.test.ts and `npm run gpu-check`
 * (bench/gpu_check.ts): the UNet, the VAE and the text encoder — forward and every parameter's
 * gradient — built from the same seed and fed the same inputs on a GPU backend and on tfjs's
 * `cpu` backend, compared as max |gpu − cpu| / max |cpu| (over each output, and over all of a
 * model's gradients at once, so tiny entries are not held to a relative bound they cannot meet).
 *
 *   const r = await modelParity('webgpu');   // [{ name, lossErr, gradErr, tensors }]
 */
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { UNet2DConditionModel } from '../src/unet/unet.ts';
import { AutoencoderKL } from '../src/autoencoder/autoencoder.ts';
import { TextEncoder } from '../src/clip/text_encoder.ts';
import { manualSeed, type Module } from '../src/nn/module.ts';
import { selectBackend } from '../src/backend/index.ts';

/** max |a − b| / max |b| over all the pairs (b: the reference). */
export function relErr(a: ArrayLike<number>[], b: ArrayLike<number>[]): number {
  let diff = 0, scale = 0;
  a.forEach((x, k) => {
    const y = b[k];
    for (let i = 0; i < y.length; i++) {
      diff = Math.max(diff, Math.abs(x[i] - y[i]));
      scale = Math.max(scale, Math.abs(y[i]));
    }
  });
  return diff / scale;
}

/** Deterministic standard normals (the same numbers on every backend). */
export function normals(shape: number[], seed: number): tf.Tensor {
  let s = seed >>> 0;
  const n = shape.reduce((a, b) => a * b, 1);
  const d = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const u = (s + 0.5) / 2 ** 32;
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const v = (s + 0.5) / 2 ** 32;
    d[i] = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  return tf.tensor(d, shape);
}

/** Runs f on a backend (through selectBackend, as the CLI does) and returns its outputs' values. */
export async function on(backend: string, f: () => tf.Tensor[]): Promise<Float32Array[]> {
  await selectBackend(backend);
  const outs = tf.tidy(f);
  const vals = await Promise.all(outs.map((t) => t.data() as Promise<Float32Array>));
  tf.dispose(outs);
  return vals;
}

/** [loss, ...every parameter's gradient] of a model built from `seed` on the active backend. */
function lossAndGrads(build: () => Module, loss: (m: Module) => tf.Scalar, seed: number): () => tf.Tensor[] {
  return () => {
    manualSeed(seed);
    const m = build();
    const { value, grads } = tf.variableGrads(() => loss(m), m.parameters());
    const out = [value, ...m.parameters().map((p) => grads[p.name])];
    for (const t of out) tf.keep(t);
    m.dispose();
    return out;
  };
}

/** Small models with every kind of layer the real ones have (cross-attention, mid attention, causal text attention). */
export const PARITY_MODELS: Array<{ name: string; build: () => Module; loss: (m: Module) => tf.Scalar }> = [
  {
    name: 'UNet (cross-attention, 2 levels)',
    build: () => new UNet2DConditionModel({
      sample_size: 8, in_channels: 4, out_channels: 4, block_out_channels: [8, 16], layers_per_block: 1, norm_num_groups: 4,
      cross_attention_dim: 12, attention_head_dim: [2, 4], down_block_types: ['CrossAttnDownBlock2D', 'DownBlock2D'], up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D'],
    }),
    loss: (m) => tf.mean(tf.square(tf.sub((m as UNet2DConditionModel).forward(normals([2, 8, 8, 4], 5) as tf.Tensor4D, [10, 700], normals([2, 5, 12], 6) as tf.Tensor3D), normals([2, 8, 8, 4], 7)))) as tf.Scalar,
  },
  {
    name: 'VAE (encode → sample → decode, mid attention)',
    build: () => new AutoencoderKL({
      sample_size: 16, in_channels: 1, out_channels: 1, block_out_channels: [8, 16], down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D'],
      up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D'], norm_num_groups: 4, latent_channels: 4,
    }),
    loss: (m) => {
      const vae = m as AutoencoderKL;
      const x = normals([2, 16, 16, 1], 8) as tf.Tensor4D;
      const dist = vae.encode(x);
      const z = tf.add(dist.mean, tf.mul(tf.exp(tf.mul(dist.logvar, 0.5)), normals(dist.mean.shape, 9))) as tf.Tensor4D;
      return tf.add(tf.mean(tf.square(tf.sub(vae.decode(z), x))), tf.mul(1e-3, tf.mean(tf.square(dist.mean)))) as tf.Scalar;
    },
  },
  {
    name: 'text encoder (causal self-attention, projection)',
    build: () => new TextEncoder({
      architectures: ['CLIPTextModelWithProjection'], vocab_size: 40, hidden_size: 16, intermediate_size: 32, projection_dim: 8, num_hidden_layers: 2,
      num_attention_heads: 2, max_position_embeddings: 8, hidden_act: 'gelu', eos_token_id: 2, bos_token_id: 1, pad_token_id: 0, pooling: 'first_eos',
    }),
    loss: (m) => {
      const out = (m as TextEncoder).forward([[1, 5, 9, 33, 2, 0, 0, 0], [1, 7, 2, 0, 0, 0, 0, 0]]);
      return tf.add(tf.mean(tf.square(out.lastHiddenState)), tf.mean(tf.square(out.textEmbeds!))) as tf.Scalar;
    },
  },
];

export interface ParityResult {
  name: string;
  /** |loss_gpu − loss_cpu| / |loss_cpu| */
  lossErr: number;
  /** max |g_gpu − g_cpu| / max |g_cpu| over all parameters */
  gradErr: number;
  tensors: number;
}

/** One model of PARITY_MODELS on `backend` against cpu. */
export async function modelParity(backend: string, model: (typeof PARITY_MODELS)[number], seed = 11): Promise<ParityResult> {
  const g = await on(backend, lossAndGrads(model.build, model.loss, seed));
  const c = await on('cpu', lossAndGrads(model.build, model.loss, seed));
  if (g.length !== c.length) throw new Error(`${model.name}: ${g.length} outputs on ${backend}, ${c.length} on cpu`);
  return { name: model.name, lossErr: Math.abs(g[0][0] - c[0][0]) / Math.abs(c[0][0]), gradErr: relErr(g.slice(1), c.slice(1)), tensors: c.length - 1 };
}

/**
 * Basic layers: Conv2d, Linear, GroupNorm, LayerNorm, Embedding, and the activations by config
 * name (silu, exact erf gelu, gelu_tanh, quick_gelu, relu). Activations are channels-last:
 * images are NHWC [batch, height, width, channels], sequences [batch, length, channels].
 *
 * GroupNorm, LayerNorm, silu and gelu are the fused ops of src/ops (one kernel each way on the
 * native backend, the tfjs composition elsewhere); the layers here hold their parameters.
 */
import * as tf from '@tensorflow/tfjs';
import { UsageError } from '../util/errors.ts';
import { Module, init } from './module.ts';
import { gelu, groupNorm, layerNorm, silu } from '../ops/index.ts';
import { fitsBinding } from '../util/device_limits.ts';

// ---------------------------------------------------------------------------------------------
// Activations (silu and gelu are ops: src/ops/fused.ts)

/** GELU's tanh approximation (PyTorch gelu(approximate='tanh')). */
export function geluTanh<T extends tf.Tensor>(x: T): T {
  return tf.tidy(() => {
    const inner = tf.mul(tf.add(x, tf.mul(tf.pow(x, 3), 0.044715)), Math.sqrt(2 / Math.PI));
    return tf.mul(tf.mul(x, 0.5), tf.add(tf.tanh(inner), 1)) as T;
  });
}

/** quick_gelu: x·σ(1.702x) (OpenAI CLIP's activation). */
export function quickGelu<T extends tf.Tensor>(x: T): T {
  return tf.tidy(() => tf.mul(x, tf.sigmoid(tf.mul(x, 1.702))) as T);
}

export type ActivationName = 'silu' | 'swish' | 'gelu' | 'gelu_tanh' | 'quick_gelu' | 'relu';
export const ACTIVATIONS: Record<ActivationName, <T extends tf.Tensor>(x: T) => T> = {
  silu,
  swish: silu,
  gelu,
  gelu_tanh: geluTanh,
  quick_gelu: quickGelu,
  relu: <T extends tf.Tensor>(x: T) => tf.relu(x) as T,
};

/** The activation function for a config name (act_fn / hidden_act); `what` names the key in errors. */
export function getActivation(name: string, what = 'activation'): <T extends tf.Tensor>(x: T) => T {
  const fn = (ACTIVATIONS as Record<string, <T extends tf.Tensor>(x: T) => T>)[name];
  if (!fn) throw new UsageError(`${what}: unknown activation "${name}" (expected one of ${Object.keys(ACTIVATIONS).join(', ')}).`);
  return fn;
}

/** GroupNorm, then the activation named `act` (getActivation's names): one fused kernel for SiLU. */
export function groupNormAct<T extends tf.Tensor>(norm: GroupNorm, act: string, x: T): T {
  return act === 'silu' ? norm.forward(x, { activation: 'silu' }) : getActivation(act)(norm.forward(x));
}

// ---------------------------------------------------------------------------------------------
// Conv2d

export interface Conv2dOptions {
  stride?: number;
  /** Zero padding: one number for all sides, or [top, bottom, left, right] (e.g. [0,1,0,1]). */
  padding?: number | [number, number, number, number];
  bias?: boolean;
}

/** 2-D convolution on NHWC input; weight HWIO (PyTorch files: OIHW). */
export class Conv2d extends Module {
  readonly weight: tf.Variable;
  readonly bias: tf.Variable | null;
  readonly stride: number;
  readonly pad: [number, number, number, number];

  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    readonly kernelSize: number,
    opts: Conv2dOptions = {},
  ) {
    super();
    this.stride = opts.stride ?? 1;
    const p = opts.padding ?? 0;
    this.pad = typeof p === 'number' ? [p, p, p, p] : p;
    const bound = 1 / Math.sqrt(inChannels * kernelSize * kernelSize);
    this.weight = this.param('weight', [kernelSize, kernelSize, inChannels, outChannels], init.uniform(bound), 'conv');
    this.bias = opts.bias === false ? null : this.param('bias', [outChannels], init.uniform(bound));
  }

  /** Stride 1, odd kernel, (k − 1)/2 on every side: tfjs's 'same' padding (the kernel pads, no copy). */
  get same(): boolean {
    const [t, b, l, r] = this.pad;
    const k = this.kernelSize;
    return this.stride === 1 && k % 2 === 1 && t === (k - 1) / 2 && t === b && t === l && t === r;
  }

  forward(x: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => {
      const [t, b, l, r] = this.pad;
      const same = this.same;
      let y: tf.Tensor4D;
      if (this.bias && tf.getBackend() !== 'tensorflow') {
        // The bias inside the convolution kernel (its epilogue): one pass over the output less.
        const pad = same ? 'same' as const : [[0, 0], [t, b], [l, r], [0, 0]] as tf.backend_util.ExplicitPadding;
        return tf.fused.conv2d({ x, filter: this.weight as tf.Tensor4D, strides: this.stride, pad, bias: this.bias });
      }
      if (same) {
        // Symmetric "same" padding: let the kernel pad (no copy of the input).
        y = tf.conv2d(x, this.weight as tf.Tensor4D, 1, 'same');
      } else {
        // PyTorch padding is explicit per side ('same' pads asymmetrically for stride 2). Pass it
        // to the conv itself: a separate tf.pad costs a copy forward and a slow Slice backward.
        // tfjs-node's conv only knows 'same'/'valid', so there we pad first.
        if (tf.getBackend() === 'tensorflow') {
          const xp = t || b || l || r ? tf.pad(x, [[0, 0], [t, b], [l, r], [0, 0]]) : x;
          y = tf.conv2d(xp, this.weight as tf.Tensor4D, this.stride, 'valid');
        } else {
          y = tf.conv2d(x, this.weight as tf.Tensor4D, this.stride, [[0, 0], [t, b], [l, r], [0, 0]]);
        }
      }
      return this.bias ? tf.add(y, this.bias) : y;
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Linear

/** y = x W + b over the last axis; weight [in, out] (PyTorch files: [out, in]). */
export class Linear extends Module {
  readonly weight: tf.Variable;
  readonly bias: tf.Variable | null;

  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    opts: { bias?: boolean } = {},
  ) {
    super();
    const bound = 1 / Math.sqrt(inFeatures);
    this.weight = this.param('weight', [inFeatures, outFeatures], init.uniform(bound), 'linear');
    this.bias = opts.bias === false ? null : this.param('bias', [outFeatures], init.uniform(bound));
  }

  forward<T extends tf.Tensor>(x: T): T {
    return tf.tidy(() => {
      const lead = x.shape.slice(0, -1);
      // The bias in the GEMM's epilogue (one pass over the output, no second tensor).
      const a = tf.reshape(x, [-1, this.inFeatures]) as tf.Tensor2D;
      const y = this.bias ? tf.fused.matMul({ a, b: this.weight as tf.Tensor2D, bias: this.bias }) : tf.matMul(a, this.weight as tf.Tensor2D);
      return tf.reshape(y, [...lead, this.outFeatures]) as T;
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Normalisation

/**
 * GroupNorm over channels-last input of any rank ≥ 2 ([B, ..., C]): statistics per sample
 * and per group of C/groups channels, over all positions. Biased variance, like PyTorch.
 */
export class GroupNorm extends Module {
  readonly weight: tf.Variable | null;
  readonly bias: tf.Variable | null;
  readonly eps: number;

  constructor(
    readonly numGroups: number,
    readonly numChannels: number,
    opts: { eps?: number; affine?: boolean } = {},
  ) {
    super();
    if (numChannels % numGroups !== 0) {
      throw new UsageError(`GroupNorm: ${numChannels} channels are not divisible into ${numGroups} groups (norm_num_groups).`);
    }
    this.eps = opts.eps ?? 1e-5;
    const affine = opts.affine ?? true;
    this.weight = affine ? this.param('weight', [numChannels], init.ones()) : null;
    this.bias = affine ? this.param('bias', [numChannels], init.zeros()) : null;
  }

  /** activation 'silu': SiLU fused into the same kernel (ResnetBlock2D's norm → act). */
  forward<T extends tf.Tensor>(x: T, opts: { activation?: 'none' | 'silu' } = {}): T {
    return groupNorm(x, this.numGroups, this.weight, this.bias, this.eps, opts);
  }
}

/** LayerNorm over the last axis. */
export class LayerNorm extends Module {
  readonly weight: tf.Variable | null;
  readonly bias: tf.Variable | null;
  readonly eps: number;

  constructor(
    readonly dim: number,
    opts: { eps?: number; affine?: boolean } = {},
  ) {
    super();
    this.eps = opts.eps ?? 1e-5;
    const affine = opts.affine ?? true;
    this.weight = affine ? this.param('weight', [dim], init.ones()) : null;
    this.bias = affine ? this.param('bias', [dim], init.zeros()) : null;
  }

  forward<T extends tf.Tensor>(x: T): T {
    return layerNorm(x, this.weight, this.bias, this.eps);
  }
}

// ---------------------------------------------------------------------------------------------
// Embedding

/** A lookup table [num, dim]; forward(ids int32 [...]) → [..., dim]. Init N(0, 1) like PyTorch. */
export class Embedding extends Module {
  readonly weight: tf.Variable;

  constructor(
    readonly numEmbeddings: number,
    readonly embeddingDim: number,
  ) {
    super();
    this.weight = this.param('weight', [numEmbeddings, embeddingDim], init.normal(1));
  }

  forward(ids: tf.Tensor): tf.Tensor {
    if (!fitsBinding(this.weight.size)) return this.gatherOnCpu(ids);
    return tf.tidy(() => tf.gather(this.weight, ids.dtype === 'int32' ? ids : tf.cast(ids, 'int32')));
  }

  private cpuTable: { dataId: object; values: Float32Array } | null = null;

  /**
   * The lookup for a table larger than one GPU binding (SD's 49,408 × 768 tokens is 152 MB;
   * util/device_limits.ts): the rows picked in JS from a copy of the table, read once per weight value.
   * Not differentiable with respect to the table (inference; training such a table needs a
   * backend that can bind it).
   */
  private gatherOnCpu(ids: tf.Tensor): tf.Tensor {
    const w = this.weight as tf.Tensor & { dataId: object };
    if (this.cpuTable?.dataId !== w.dataId) this.cpuTable = { dataId: w.dataId, values: w.dataSync() as Float32Array };
    const table = this.cpuTable.values;
    const idx = ids.dataSync();
    const D = this.embeddingDim;
    const out = new Float32Array(idx.length * D);
    idx.forEach((id, k) => {
      if (!(id >= 0 && id < this.numEmbeddings)) throw new UsageError(`Embedding: id ${id} is outside [0, ${this.numEmbeddings}).`);
      out.set(table.subarray(id * D, (id + 1) * D), k * D);
    });
    return tf.tensor(out, [...ids.shape, D], 'float32');
  }
}

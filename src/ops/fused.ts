/**
 * Fused ops: GroupNorm and LayerNorm (optionally followed by SiLU), SiLU, exact GELU and one
 * AdamW update. tfjs composes each of them from 6-20 elementwise kernels and reductions, every
 * one a full pass over memory; a backend that has the fused kernel (sdlab's 'native' backend,
 * src/backend/native.ts) runs one kernel forward and one backward instead.
 *
 * They are ops in the tfjs sense: functions of tensors, differentiable, backend-agnostic. Each
 * runs its fused kernel when the active backend has it registered (under the names of
 * kernel_names.ts) and every input is float32, and otherwise the plain tfjs composition, so
 * model code calls them unconditionally:
 *
 *   const y = groupNorm(x, 32, gamma, beta, 1e-5, { activation: 'silu' });   // x [B, H, W, C]
 *   const z = gelu(layerNorm(h, gamma, beta, 1e-5));                           // h [B, L, C]
 *
 * The gradients of the fused kernels are registered when this module loads (tfjs keys
 * gradients by kernel name, whichever backend runs the kernel).
 */
import * as tf from '@tensorflow/tfjs';
import {
  ACTIVATION,
  ACTIVATION_GRAD,
  ACTIVATION_OP,
  ADAMW,
  type AdamWStep,
  GROUP_NORM,
  GROUP_NORM_GRAD,
  type GroupNormAttrs,
  UPSAMPLE_CONV,
  type UpsampleConvAttrs,
  normDims,
} from './kernel_names.ts';

type NamedAttrMap = tf.NamedAttrMap;

/** fused: false makes every op take its tfjs composition (the bench's *-unfused cases compare the two). */
export const opsSettings = { fused: true };

/** Whether the active backend has kernel `name` and every given tensor is float32. */
export function useKernel(name: string, ...ts: Array<tf.Tensor | null | undefined>): boolean {
  return opsSettings.fused && tf.getKernel(name, tf.getBackend()) !== undefined && ts.every((t) => !t || t.dtype === 'float32');
}

// ---------------------------------------------------------------------------------------------
// Normalisation

/** The fused norm kernel's y; it always takes gamma and beta (ones / zeros when absent). */
function groupNormKernel<T extends tf.Tensor>(x: T, gamma: tf.Tensor | null, beta: tf.Tensor | null, attrs: GroupNormAttrs): T {
  return tf.tidy(() => {
    const C = x.shape[x.rank - 1];
    const inputs = { x, gamma: gamma ?? tf.ones([C]), beta: beta ?? tf.zeros([C]) };
    return (tf.engine().runKernel(GROUP_NORM, inputs, attrs as unknown as NamedAttrMap) as tf.Tensor[])[0] as T;
  });
}

/**
 * GroupNorm over channels-last x [B, ..., C]: statistics per sample and group of C/groups
 * channels (biased variance, like PyTorch), then ·gamma + beta (per channel, optional) and
 * optionally SiLU. With batchDims = rank − 1 and groups = 1 it is LayerNorm over the last axis.
 */
export function groupNorm<T extends tf.Tensor>(x: T, groups: number, gamma: tf.Tensor | null, beta: tf.Tensor | null,
  eps: number, opts: { activation?: 'none' | 'silu'; batchDims?: number } = {}): T {
  const batchDims = opts.batchDims ?? 1;
  const silu = opts.activation === 'silu';
  const C = x.shape[x.rank - 1];
  if (C % groups !== 0) throw new Error(`groupNorm: ${C} channels are not divisible into ${groups} groups`);
  if (useKernel(GROUP_NORM, x, gamma, beta) && x.rank > batchDims) return groupNormKernel(x, gamma, beta, { groups, eps, act: silu ? 1 : 0, batchDims });
  return tf.tidy(() => {
    const [B, S] = normDims(x.shape, batchDims, groups);
    const xg = tf.reshape(x, [B, S, groups, C / groups]);
    const { mean, variance } = tf.moments(xg, [1, 3], true);
    let y = tf.reshape(tf.mul(tf.sub(xg, mean), tf.rsqrt(tf.add(variance, eps))), x.shape) as tf.Tensor;
    if (gamma) y = tf.mul(y, gamma);
    if (beta) y = tf.add(y, beta);
    return (silu ? tf.mul(y, tf.sigmoid(y)) : y) as T;
  });
}

/** LayerNorm over the last axis (biased variance), then ·gamma + beta (optional): GroupNorm's kernel with one group per row. */
export function layerNorm<T extends tf.Tensor>(x: T, gamma: tf.Tensor | null, beta: tf.Tensor | null, eps: number): T {
  if (useKernel(GROUP_NORM, x, gamma, beta)) return groupNormKernel(x, gamma, beta, { groups: 1, eps, act: 0, batchDims: x.rank - 1 });
  return tf.tidy(() => {
    const { mean, variance } = tf.moments(x, -1, true);
    let y = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps)));
    if (gamma) y = tf.mul(y, gamma);
    if (beta) y = tf.add(y, beta);
    return y as T;
  });
}

// ---------------------------------------------------------------------------------------------
// Activations

/** SiLU / swish: x·σ(x). */
export function silu<T extends tf.Tensor>(x: T): T {
  if (useKernel(ACTIVATION, x)) return tf.engine().runKernel(ACTIVATION, { x }, { op: ACTIVATION_OP.silu }) as T;
  return tf.tidy(() => tf.mul(x, tf.sigmoid(x)) as T);
}

/** Exact GELU, x·Φ(x) = ½x(1 + erf(x/√2)) (PyTorch's default, used by GEGLU in SD). */
export function gelu<T extends tf.Tensor>(x: T): T {
  if (useKernel(ACTIVATION, x)) return tf.engine().runKernel(ACTIVATION, { x }, { op: ACTIVATION_OP.gelu }) as T;
  return tf.tidy(() => tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)) as T);
}

// ---------------------------------------------------------------------------------------------
// Optimizer step

/**
 * One AdamW update of parameter p with gradient g and moments m, v as a single kernel: returns
 * [p', m', v'] (the same float32 bits as the optimizer's composition of ~13 tfjs ops), or null
 * where the backend has no such kernel, and the caller (src/train/optimizer.ts) composes it. A
 * training step updates every parameter tensor, so the per-op overhead of the composition adds
 * up (a third of the elementwise kernel calls of a UNet step).
 */
export function fusedAdamW(p: tf.Tensor, g: tf.Tensor, m: tf.Tensor, v: tf.Tensor, h: AdamWStep): [tf.Tensor, tf.Tensor, tf.Tensor] | null {
  if (!useKernel(ADAMW, p, g, m, v) || !tf.util.arraysEqual(p.shape, g.shape)) return null;
  return tf.engine().runKernel(ADAMW, { p, g, m, v }, h as unknown as NamedAttrMap) as unknown as [tf.Tensor, tf.Tensor, tf.Tensor];
}

// ---------------------------------------------------------------------------------------------
// Gradients (used only when a backend ran the fused kernel forward)

tf.registerGradient({
  kernelName: GROUP_NORM,
  inputsToSave: ['x', 'gamma', 'beta'],
  outputsToSave: [false, true, true],
  gradFunc: (dys, saved, attrs) => {
    const dy = (dys as tf.Tensor[])[0];
    const [x, gamma, beta, mean, rstd] = saved as tf.Tensor[];
    // One kernel computes all three (now, not in the per-input closures: tfjs runs each of
    // those in its own tidy, which would dispose the other two).
    const [dx, dgamma, dbeta] = tf.engine().runKernel(GROUP_NORM_GRAD, { dy, x, gamma, beta, mean, rstd }, attrs as NamedAttrMap) as tf.Tensor[];
    return { x: () => dx, gamma: () => dgamma, beta: () => dbeta };
  },
});

tf.registerGradient({
  kernelName: ACTIVATION,
  inputsToSave: ['x'],
  gradFunc: (dy, saved, attrs) => ({ x: () => tf.engine().runKernel(ACTIVATION_GRAD, { dy: dy as tf.Tensor, x: saved[0] }, attrs as NamedAttrMap) as tf.Tensor }),
});

// ---------------------------------------------------------------------------------------------
// Upsampling convolution

/**
 * conv2d(nearest-neighbour ×factor of x, filter (odd size), stride 1, 'same') + bias: diffusers'
 * Upsample2D. With the fused kernel (and no gradient being recorded: it has none) the upsampled
 * image is never made — in SD's VAE decoder that is a 512×512×256 float32 activation (256 MB) held
 * beside the convolution's output. Otherwise the composition: resizeNearestNeighbor, then conv2d.
 */
export function upsampleConv2d(x: tf.Tensor4D, filter: tf.Tensor4D, bias: tf.Tensor1D | null, factor = 2): tf.Tensor4D {
  if (!tf.engine().isTapeOn() && useKernel(UPSAMPLE_CONV, x, filter, bias)) {
    const attrs: UpsampleConvAttrs = { factor };
    const inputs: tf.NamedTensorMap = bias ? { x, filter, bias } : { x, filter };
    return tf.engine().runKernel(UPSAMPLE_CONV, inputs, attrs as unknown as NamedAttrMap) as tf.Tensor4D;
  }
  return tf.tidy(() => {
    // align_corners=false, half_pixel=false: src = floor(dst·in/out), PyTorch's 'nearest'.
    const up = tf.image.resizeNearestNeighbor(x, [x.shape[1] * factor, x.shape[2] * factor], false, false);
    return bias ? tf.fused.conv2d({ x: up, filter, strides: 1, pad: 'same', bias }) : tf.conv2d(up, filter, 1, 'same');
  });
}

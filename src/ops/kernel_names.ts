/**
 * The fused kernels' contract between the ops (src/ops/fused.ts) and the backends that implement
 * them (src/backend/native.ts): names, attributes and input layouts, as tfjs-core's
 * kernel_names.ts is for its own kernels. A backend registers a kernel function under a name
 * here; an op runs that kernel when the active backend has one (see useKernel in fused.ts).
 *
 *   SdlabGroupNorm       x [B, ..., C], gamma [C], beta [C]   → [y, mean [B, groups], rstd [B, groups]]
 *   SdlabGroupNormGrad   dy, x, gamma, beta, mean, rstd      → [dx, dgamma [C], dbeta [C]]
 *   SdlabActivation      x                                   → y = act(x)
 *   SdlabActivationGrad  dy, x                               → dx
 *   SdlabAdamW           p, g, m, v (same shape)             → [p', m', v']
 *   SdlabAttention       q [B, Lq, H·D], k [B, Lk, H·D], v [B, Lk, H·Dv] → softmax(scale·q kᵀ) v [B, Lq, H·Dv]
 *   SdlabUpsampleConv2D  x [B, H, W, C], filter [k, k, C, Cout] (k odd), bias [Cout]? → conv2d(nearest ×factor
 *                        of x, stride 1, 'same') + bias [B, factor·H, factor·W, Cout] (forward only)
 */

export const GROUP_NORM = 'SdlabGroupNorm';
export const GROUP_NORM_GRAD = 'SdlabGroupNormGrad';
export const ACTIVATION = 'SdlabActivation';
export const ACTIVATION_GRAD = 'SdlabActivationGrad';
export const ADAMW = 'SdlabAdamW';
export const ATTENTION = 'SdlabAttention';
export const UPSAMPLE_CONV = 'SdlabUpsampleConv2D';

/** UPSAMPLE_CONV attributes: the nearest-neighbour factor. */
export interface UpsampleConvAttrs {
  factor: number;
}

/** ATTENTION attributes: heads (H) and the factor on q·k (usually 1/√D). */
export interface AttentionAttrs {
  heads: number;
  scale: number;
}

/** GROUP_NORM / GROUP_NORM_GRAD attributes. */
export interface GroupNormAttrs {
  groups: number;
  eps: number;
  /** 0: none, 1: SiLU after the affine step. */
  act: number;
  /** How many leading dims form the batch (statistics are per batch entry and group). */
  batchDims: number;
}

/** ACTIVATION / ACTIVATION_GRAD attributes: `op` says which activation (ACTIVATION_OP). */
export interface ActivationAttrs {
  op: number;
}

export const ACTIVATION_OP = { silu: 0, gelu: 1 } as const;

/** ADAMW attributes: AdamW's hyperparameters for one step, as the optimizer's tfjs composition uses them. */
export interface AdamWStep {
  beta1: number; beta2: number; eps: number;
  /** Multiplies the parameter before the update (1 − lr·weightDecay); null: no decay. */
  decay: number | null;
  /** √(1 − beta2^t) and lr / (1 − beta1^t). */
  bc2Sqrt: number; stepSize: number;
}

/**
 * The [B, S, C, groups] view of a normalisation input that both sides use: the first
 * `batchDims` dims are B, the last is C, S is everything between.
 */
export function normDims(shape: number[], batchDims: number, groups: number): number[] {
  const size = (s: number[]) => s.reduce((a, b) => a * b, 1);
  const B = size(shape.slice(0, batchDims)), C = shape[shape.length - 1];
  return [B, size(shape) / Math.max(1, B * C), C, groups];
}

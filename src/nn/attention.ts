/**
 * Multi-head attention: the one home of scaled-dot-product attention in sdlab.
 *
 * `scaledDotProductAttention(q, k, v, heads)` is the bare computation, per head,
 *     Attention(Q, K, V) = softmax(Q Kᵀ / √d + mask) V        (d: channels per head)
 * Every model's attention calls it: the UNet's self- and cross-attention (via Attention in
 * blocks.ts' BasicTransformerBlock), the VAE's mid-block attention, the CLIP text encoder.
 * When the score matrix [B, heads, Lq, Lk] would hold more than `maxScoreElements` numbers
 * (a 64×64 latent has Lq = Lk = 4096), it is computed in chunks of query rows, which gives the
 * same result with bounded memory.
 *
 * `Attention` is diffusers' Attention module (to_q, to_k, to_v, to_out.0, optional
 * group_norm and residual connection, as in the VAE mid-block): self-attention when no
 * context is given, cross-attention over `context` otherwise (queries from x, keys and values
 * from the context: in the UNet, x is the image and the context the text).
 */
import * as tf from '@tensorflow/tfjs';
import { Module } from './module.ts';
import { GroupNorm, Linear } from './layers.ts';

/** Score matrices larger than this many elements are computed in query-row chunks. */
export const attentionSettings = { maxScoreElements: 1 << 26 };

export interface SdpaOptions {
  /** Multiplies q·k (default 1/sqrt(head dim)). */
  scale?: number;
  /** Additive mask broadcastable to [B, heads, Lq, Lk]; given as [Lq, Lk], [B, Lq, Lk] or 4-D. */
  mask?: tf.Tensor;
  /** Overrides attentionSettings.maxScoreElements for this call. */
  maxScoreElements?: number;
}

/**
 * softmax(Q Kᵀ / √D + mask) V for each of `heads` heads:
 * q [B, Lq, heads·D], k [B, Lk, heads·D], v [B, Lk, heads·Dv] → [B, Lq, heads·Dv].
 * (q is scaled before the product, so opts.scale replaces 1/√D.)
 */
export function scaledDotProductAttention(
  q: tf.Tensor3D,
  k: tf.Tensor3D,
  v: tf.Tensor3D,
  heads: number,
  opts: SdpaOptions = {},
): tf.Tensor3D {
  return tf.tidy(() => {
    const [b, lq, qDim] = q.shape;
    const lk = k.shape[1];
    const d = qDim / heads;
    const dv = v.shape[2] / heads;
    const scale = opts.scale ?? 1 / Math.sqrt(d);
    const split = (t: tf.Tensor3D, len: number, dim: number) =>
      tf.transpose(tf.reshape(t, [b, len, heads, dim]), [0, 2, 1, 3]) as tf.Tensor4D; // [B, H, L, D]
    const qh = split(tf.mul(q, scale) as tf.Tensor3D, lq, d);
    const kh = split(k, lk, d);
    const vh = split(v, lk, dv);
    let mask = opts.mask;
    // [Lq, Lk] → [1, 1, Lq, Lk]; [B, Lq, Lk] → [B, 1, Lq, Lk] (shared by all heads).
    if (mask && mask.rank === 2) mask = tf.reshape(mask, [1, 1, ...mask.shape]);
    if (mask && mask.rank === 3) mask = tf.expandDims(mask, 1);

    const attend = (qc: tf.Tensor4D, maskc?: tf.Tensor): tf.Tensor4D => {
      let scores = tf.matMul(qc, kh, false, true) as tf.Tensor4D; // [B, H, rows, Lk]
      if (maskc) scores = tf.add(scores, maskc);
      return tf.matMul(tf.softmax(scores), vh) as tf.Tensor4D; // [B, H, rows, Dv]
    };

    const limit = opts.maxScoreElements ?? attentionSettings.maxScoreElements;
    const rowsPerChunk = Math.max(1, Math.floor(limit / (b * heads * lk)));
    let out: tf.Tensor4D;
    if (rowsPerChunk >= lq) {
      out = attend(qh, mask);
    } else {
      const parts: tf.Tensor4D[] = [];
      for (let start = 0; start < lq; start += rowsPerChunk) {
        const n = Math.min(rowsPerChunk, lq - start);
        parts.push(
          tf.tidy(() => {
            const qc = tf.slice(qh, [0, 0, start, 0], [b, heads, n, d]);
            let mc = mask;
            if (mask && mask.shape[2] !== 1) mc = tf.slice(mask, [0, 0, start, 0], [-1, -1, n, -1]);
            return attend(qc, mc);
          }),
        );
      }
      out = tf.concat(parts, 2);
    }
    return tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [b, lq, heads * dv]) as tf.Tensor3D;
  });
}

export interface AttentionOptions {
  /** Number of heads (default 8) and channels per head (default 64), as in diffusers. */
  heads?: number;
  dimHead?: number;
  /** Channels of the context for cross-attention (default: queryDim, i.e. self-attention). */
  crossAttentionDim?: number;
  /** Bias on to_q/to_k/to_v (diffusers `bias`, default false). to_out.0 always has one. */
  bias?: boolean;
  outBias?: boolean;
  /** Output channels (default queryDim). */
  outDim?: number;
  /** GroupNorm applied to the input first (the VAE's attention block). */
  normNumGroups?: number;
  normEps?: number;
  /** Add the input back to the output (VAE), then divide by rescaleOutputFactor. */
  residualConnection?: boolean;
  rescaleOutputFactor?: number;
}

/** diffusers `Attention`: input [B, L, C] or NHWC [B, H, W, C] (flattened to L = H·W). */
export class Attention extends Module {
  readonly heads: number;
  readonly dimHead: number;
  readonly group_norm: GroupNorm | null;
  readonly to_q: Linear;
  readonly to_k: Linear;
  readonly to_v: Linear;
  readonly to_out: Linear;
  readonly residualConnection: boolean;
  readonly rescaleOutputFactor: number;

  constructor(
    readonly queryDim: number,
    opts: AttentionOptions = {},
  ) {
    super();
    this.heads = opts.heads ?? 8;
    this.dimHead = opts.dimHead ?? 64;
    const inner = this.heads * this.dimHead;
    const ctxDim = opts.crossAttentionDim ?? queryDim;
    const bias = opts.bias ?? false;
    this.group_norm =
      opts.normNumGroups !== undefined
        ? this.module('group_norm', new GroupNorm(opts.normNumGroups, queryDim, { eps: opts.normEps ?? 1e-5 }))
        : null;
    this.to_q = this.module('to_q', new Linear(queryDim, inner, { bias }));
    this.to_k = this.module('to_k', new Linear(ctxDim, inner, { bias }));
    this.to_v = this.module('to_v', new Linear(ctxDim, inner, { bias }));
    // diffusers: to_out = ModuleList([Linear, Dropout]); the Linear is "to_out.0".
    this.to_out = this.module('to_out.0', new Linear(inner, opts.outDim ?? queryDim, { bias: opts.outBias ?? true }));
    this.residualConnection = opts.residualConnection ?? false;
    this.rescaleOutputFactor = opts.rescaleOutputFactor ?? 1;
  }

  /** x [B, L, C] or [B, H, W, C]; context [B, Lc, crossAttentionDim]; mask additive (see SdpaOptions). */
  forward<T extends tf.Tensor3D | tf.Tensor4D>(x: T, context?: tf.Tensor3D, mask?: tf.Tensor): T {
    return tf.tidy(() => {
      const b = x.shape[0];
      const c = x.shape[x.rank - 1];
      let h: tf.Tensor = x;
      if (this.group_norm) h = this.group_norm.forward(h);
      const seq = tf.reshape(h, [b, -1, c]) as tf.Tensor3D;
      const ctx = context ?? seq;
      const q = this.to_q.forward(seq);
      const k = this.to_k.forward(ctx);
      const v = this.to_v.forward(ctx);
      let out: tf.Tensor = this.to_out.forward(scaledDotProductAttention(q, k, v, this.heads, { mask }));
      out = tf.reshape(out, [...x.shape.slice(0, -1), out.shape[2]!]);
      if (this.residualConnection) out = tf.add(out, x);
      if (this.rescaleOutputFactor !== 1) out = tf.div(out, this.rescaleOutputFactor);
      return out as T;
    });
  }
}

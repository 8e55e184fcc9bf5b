/**
 * Multi-head attention modules. The bare computation, per head,
 *     Attention(Q, K, V) = softmax(Q Kᵀ / √d + mask) V        (d: channels per head)
 * is `scaledDotProductAttention(q, k, v, heads)`, an op (src/ops/attention.ts: the tfjs
 * composition, chunked over query rows for long sequences, or one fused kernel on the native
 * backend), re-exported here. Every model's attention calls it: the UNet's self- and
 * cross-attention (via Attention in blocks.ts' BasicTransformerBlock), the VAE's mid-block
 * attention, the CLIP text encoder.
 *
 * `Attention` is diffusers' Attention module (to_q, to_k, to_v, to_out.0, optional
 * group_norm and residual connection, as in the VAE mid-block): self-attention when no
 * context is given, cross-attention over `context` otherwise (queries from x, keys and values
 * from the context: in the UNet, x is the image and the context the text).
 */
import * as tf from '@tensorflow/tfjs';
import { Module } from './module.ts';
import { GroupNorm, Linear } from './layers.ts';
import { scaledDotProductAttention } from '../ops/attention.ts';

export { attentionSettings, scaledDotProductAttention, type SdpaOptions } from '../ops/attention.ts';

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

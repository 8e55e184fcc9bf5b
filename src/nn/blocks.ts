/**
 * The diffusers building blocks shared by the VAE and the UNet (diffusers v0.24 semantics and
 * parameter names): ResnetBlock2D, Downsample2D, Upsample2D, the sinusoidal timestep
 * embedding + TimestepEmbedding MLP, GEGLU/FeedForward, BasicTransformerBlock and
 * Transformer2DModel. Images are NHWC.
 */
import * as tf from '@tensorflow/tfjs';
import { Module, ModuleList, freeEarly, sequential } from './module.ts';
import { gelu, upsampleConv2d } from '../ops/index.ts';
import { Conv2d, GroupNorm, LayerNorm, Linear, getActivation, groupNormAct } from './layers.ts';
import { Attention } from './attention.ts';
import { UsageError } from '../util/errors.ts';

// ---------------------------------------------------------------------------------------------
// ResnetBlock2D

export interface ResnetBlock2DOptions {
  inChannels: number;
  /** Default: inChannels. A 1×1 conv_shortcut is added when it differs. */
  outChannels?: number;
  /** Channels of the timestep embedding; null/undefined = no time_emb_proj (VAE). */
  tembChannels?: number | null;
  groups?: number; // default 32
  groupsOut?: number; // default groups
  eps?: number; // default 1e-6 (diffusers' default; the SD UNet passes 1e-5)
  outputScaleFactor?: number; // default 1
  act?: string; // default 'silu'
}

/**
 * norm1 → act → conv1 (+ time_emb_proj(act(temb))) → norm2 → act → conv2, plus the
 * (1×1-projected) input; divided by outputScaleFactor. Dropout is omitted (always 0 here).
 */
export class ResnetBlock2D extends Module {
  readonly norm1: GroupNorm;
  readonly conv1: Conv2d;
  readonly time_emb_proj: Linear | null;
  readonly norm2: GroupNorm;
  readonly conv2: Conv2d;
  readonly conv_shortcut: Conv2d | null;
  readonly outputScaleFactor: number;
  private readonly act: <T extends tf.Tensor>(x: T) => T;
  private readonly actName: string;

  constructor(opts: ResnetBlock2DOptions) {
    super();
    const cin = opts.inChannels;
    const cout = opts.outChannels ?? cin;
    const groups = opts.groups ?? 32;
    const eps = opts.eps ?? 1e-6;
    this.actName = opts.act ?? 'silu';
    this.act = getActivation(this.actName, 'ResnetBlock2D act_fn');
    this.norm1 = this.module('norm1', new GroupNorm(groups, cin, { eps }));
    this.conv1 = this.module('conv1', new Conv2d(cin, cout, 3, { padding: 1 }));
    this.time_emb_proj = opts.tembChannels ? this.module('time_emb_proj', new Linear(opts.tembChannels, cout)) : null;
    this.norm2 = this.module('norm2', new GroupNorm(opts.groupsOut ?? groups, cout, { eps }));
    this.conv2 = this.module('conv2', new Conv2d(cout, cout, 3, { padding: 1 }));
    this.conv_shortcut = cin !== cout ? this.module('conv_shortcut', new Conv2d(cin, cout, 1)) : null;
    this.outputScaleFactor = opts.outputScaleFactor ?? 1;
  }

  /** x [B, H, W, Cin], temb [B, tembChannels] → [B, H, W, Cout]. */
  forward(x: tf.Tensor4D, temb?: tf.Tensor2D): tf.Tensor4D {
    return tf.tidy(() => {
      // norm → SiLU in one fused kernel where the backend has it.
      // Each activation is freed once read (freeEarly: inference only).
      const a1 = groupNormAct(this.norm1, this.actName, x);
      let h = this.conv1.forward(a1);
      freeEarly(a1);
      if (this.time_emb_proj) {
        if (!temb) throw new Error('ResnetBlock2D: this block has time_emb_proj and needs a timestep embedding');
        const t = this.time_emb_proj.forward(this.act(temb));
        const ht = tf.add(h, tf.reshape(t, [t.shape[0], 1, 1, t.shape[1]])) as tf.Tensor4D;
        freeEarly(h);
        h = ht;
      }
      const a2 = groupNormAct(this.norm2, this.actName, h);
      freeEarly(h);
      h = this.conv2.forward(a2);
      freeEarly(a2);
      const shortcut = this.conv_shortcut ? this.conv_shortcut.forward(x) : x;
      let out = tf.add(shortcut, h) as tf.Tensor4D;
      freeEarly(h, shortcut === x ? null : shortcut);
      if (this.outputScaleFactor !== 1) out = tf.div(out, this.outputScaleFactor);
      return out;
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Down/upsampling

/**
 * Halves H and W. useConv: a 3×3 stride-2 conv named `conv` with `padding` on every side —
 * except padding 0, which (as in diffusers, for the VAE) pads only bottom/right by 1 first.
 * Without a conv: 2×2 average pooling.
 */
export class Downsample2D extends Module {
  readonly conv: Conv2d | null;

  constructor(
    readonly channels: number,
    opts: { useConv?: boolean; outChannels?: number; padding?: number } = {},
  ) {
    super();
    const useConv = opts.useConv ?? true;
    const padding = opts.padding ?? 1;
    const cout = opts.outChannels ?? channels;
    this.conv = useConv
      ? this.module('conv', new Conv2d(channels, cout, 3, { stride: 2, padding: padding === 0 ? [0, 1, 0, 1] : padding }))
      : null;
  }

  forward(x: tf.Tensor4D): tf.Tensor4D {
    return this.conv ? this.conv.forward(x) : tf.avgPool(x, 2, 2, 'valid');
  }
}

/** Doubles H and W (nearest neighbour, or to `outputSize`), then an optional 3×3 conv `conv`. */
export class Upsample2D extends Module {
  readonly conv: Conv2d | null;

  constructor(
    readonly channels: number,
    opts: { useConv?: boolean; outChannels?: number } = {},
  ) {
    super();
    const cout = opts.outChannels ?? channels;
    this.conv = opts.useConv ?? true ? this.module('conv', new Conv2d(channels, cout, 3, { padding: 1 })) : null;
  }

  forward(x: tf.Tensor4D, outputSize?: [number, number]): tf.Tensor4D {
    return tf.tidy(() => {
      const size = outputSize ?? [x.shape[1] * 2, x.shape[2] * 2];
      // align_corners=false, half_pixel=false: src = floor(dst·in/out), PyTorch's 'nearest'.
      // Exactly 2× into a padded-'same' conv (SD's): one kernel that reads x in place (ops/fused.ts).
      const c = this.conv;
      if (c && !outputSize && c.same) return upsampleConv2d(x, c.weight as tf.Tensor4D, c.bias as tf.Tensor1D | null);
      const up = tf.image.resizeNearestNeighbor(x, size, false, false);
      if (!c) return up;
      const y = c.forward(up);
      freeEarly(up);
      return y;
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Timestep embedding

export interface TimestepEmbeddingOptions {
  /** [cos, sin] instead of [sin, cos] (SD: true). */
  flipSinToCos?: boolean;
  /** diffusers `downscale_freq_shift` / `freq_shift` (SD: 0; diffusers' default 1). */
  freqShift?: number;
  scale?: number;
  maxPeriod?: number;
}

/**
 * Sinusoidal embedding of (possibly fractional) timesteps [N] → [N, dim], as diffusers'
 * get_timestep_embedding: freq_i = exp(-ln(maxPeriod)·i / (dim/2 − freqShift)), computed in
 * float32 like PyTorch.
 */
export function timestepEmbedding(timesteps: tf.Tensor1D | number[], dim: number, opts: TimestepEmbeddingOptions = {}): tf.Tensor2D {
  return tf.tidy(() => {
    const t = Array.isArray(timesteps) ? tf.tensor1d(timesteps, 'float32') : tf.cast(timesteps, 'float32');
    const half = Math.floor(dim / 2);
    const exponent = tf.div(tf.mul(tf.range(0, half, 1, 'float32'), -Math.log(opts.maxPeriod ?? 10000)), half - (opts.freqShift ?? 1));
    let args = tf.mul(tf.reshape(t, [-1, 1]), tf.reshape(tf.exp(exponent), [1, half]));
    if ((opts.scale ?? 1) !== 1) args = tf.mul(args, opts.scale!);
    const sin = tf.sin(args);
    const cos = tf.cos(args);
    let emb = tf.concat(opts.flipSinToCos ? [cos, sin] : [sin, cos], 1) as tf.Tensor2D;
    if (dim % 2 === 1) emb = tf.pad(emb, [[0, 0], [0, 1]]);
    return emb;
  });
}

/**
 * The guidance-scale embedding LCM-distilled UNets take as `timestep_cond` (diffusers'
 * LatentConsistencyModelPipeline.get_guidance_scale_embedding, after VDM): for each w,
 * [sin(1000·w·f_i), cos(1000·w·f_i)] with f_i = exp(−i·ln(10000)/(dim/2 − 1)), zero-padded to an
 * odd dim. The pipeline passes w = guidance − 1. Each scalar is rounded to float32 at the step
 * where torch rounds it, so the result matches upstream's float32 tensor op for op.
 */
export function guidanceScaleEmbedding(w: readonly number[], dim: number): tf.Tensor2D {
  const f32 = Math.fround;
  const half = Math.floor(dim / 2);
  // torch: log(tensor(10000.)) / (half − 1) as a float32 scalar, then exp(arange · −emb).
  const step = f32(f32(Math.log(10000)) / (half - 1));
  const freqs = Array.from({ length: half }, (_, i) => f32(Math.exp(f32(i * -step))));
  const out = new Float32Array(w.length * dim);
  w.forEach((wi, r) => {
    const s = f32(f32(wi) * 1000);
    for (let i = 0; i < half; i++) {
      const a = f32(s * freqs[i]);
      out[r * dim + i] = Math.sin(a);
      out[r * dim + half + i] = Math.cos(a);
    }
  });
  return tf.tensor2d(out, [w.length, dim]);
}

/**
 * diffusers TimestepEmbedding: linear_1 → act → linear_2. With `condProjDim` (LCM-distilled
 * UNets) it has cond_proj, a bias-free Linear whose output is added to the input features before
 * linear_1 when a condition is given.
 */
export class TimestepEmbedding extends Module {
  readonly linear_1: Linear;
  readonly linear_2: Linear;
  readonly cond_proj: Linear | null;
  private readonly act: <T extends tf.Tensor>(x: T) => T;

  constructor(inChannels: number, timeEmbedDim: number, opts: { act?: string; outDim?: number; condProjDim?: number | null } = {}) {
    super();
    this.act = getActivation(opts.act ?? 'silu', 'TimestepEmbedding act_fn');
    this.linear_1 = this.module('linear_1', new Linear(inChannels, timeEmbedDim));
    this.linear_2 = this.module('linear_2', new Linear(timeEmbedDim, opts.outDim ?? timeEmbedDim));
    this.cond_proj = opts.condProjDim ? this.module('cond_proj', new Linear(opts.condProjDim, inChannels, { bias: false })) : null;
  }

  /** x [N, inChannels]; condition [N, condProjDim] (ignored when absent, as upstream). */
  forward(x: tf.Tensor2D, condition?: tf.Tensor2D | null): tf.Tensor2D {
    return tf.tidy(() => {
      let h = x;
      if (condition) {
        if (!this.cond_proj) throw new UsageError('TimestepEmbedding: got a timestep condition, but this model has no cond_proj (time_cond_proj_dim is null).');
        h = tf.add(h, this.cond_proj.forward(condition));
      }
      return this.linear_2.forward(this.act(this.linear_1.forward(h)));
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Transformer pieces (SD UNet cross-attention blocks)

/** GEGLU: proj to 2·dimOut; first half is the value, second half the gate: value · gelu(gate). */
export class GEGLU extends Module {
  readonly proj: Linear;
  constructor(
    dimIn: number,
    readonly dimOut: number,
  ) {
    super();
    this.proj = this.module('proj', new Linear(dimIn, dimOut * 2));
  }
  forward<T extends tf.Tensor>(x: T): T {
    return tf.tidy(() => {
      // Split via [N, 2, out] → [2, N, out] and unstack: both halves are then contiguous.
      // (tf.split/slice along the last axis take ~100× longer in tfjs's cpu kernels.)
      // Each intermediate is freed once read (freeEarly: inference only); at SD's 4096 tokens each is 40-80 MB.
      const p = this.proj.forward(x);
      const h = tf.transpose(tf.reshape(p, [-1, 2, this.dimOut]), [1, 0, 2]);
      freeEarly(p);
      const [value, gate] = tf.unstack(h, 0);
      freeEarly(h);
      const g = gelu(gate!);
      freeEarly(gate);
      const y = tf.mul(value!, g);
      freeEarly(value, g);
      return tf.reshape(y, [...x.shape.slice(0, -1), this.dimOut]) as T;
    });
  }
}

/** diffusers GELU module: proj then (exact or tanh) gelu. */
export class GELUProj extends Module {
  readonly proj: Linear;
  constructor(
    dimIn: number,
    dimOut: number,
    readonly approximate: 'none' | 'tanh' = 'none',
  ) {
    super();
    this.proj = this.module('proj', new Linear(dimIn, dimOut));
  }
  forward<T extends tf.Tensor>(x: T): T {
    return tf.tidy(() => getActivation(this.approximate === 'tanh' ? 'gelu_tanh' : 'gelu')(this.proj.forward(x)));
  }
}

/** diffusers FeedForward: net.0 (GEGLU or GELU projection), net.1 dropout (omitted), net.2 Linear. */
export class FeedForward extends Module {
  readonly act: GEGLU | GELUProj;
  readonly out: Linear;
  constructor(dim: number, opts: { dimOut?: number; mult?: number; activation?: 'geglu' | 'gelu' | 'gelu-approximate' } = {}) {
    super();
    const inner = dim * (opts.mult ?? 4);
    const a = opts.activation ?? 'geglu';
    this.act = this.module('net.0', a === 'geglu' ? new GEGLU(dim, inner) : new GELUProj(dim, inner, a === 'gelu' ? 'none' : 'tanh'));
    this.out = this.module('net.2', new Linear(inner, opts.dimOut ?? dim));
  }
  forward<T extends tf.Tensor>(x: T): T {
    return sequential(x, (h) => this.act.forward(h), (h) => this.out.forward(h));
  }
}

export interface BasicTransformerBlockOptions {
  /** Context channels for attn2 (cross-attention); null = no attn2. */
  crossAttentionDim?: number | null;
  /** Bias on to_q/k/v (diffusers attention_bias, default false). */
  attentionBias?: boolean;
  /** attn1 attends to the context instead of itself. */
  onlyCrossAttention?: boolean;
  normEps?: number; // LayerNorm eps, default 1e-5
  activation?: 'geglu' | 'gelu' | 'gelu-approximate';
}

/**
 * Pre-norm transformer block: x += attn1(norm1 x); x += attn2(norm2 x, context); x += ff(norm3 x).
 * attn1 is self-attention over the image tokens; attn2 is cross-attention, the step where the
 * text enters the image: queries from the image tokens, keys and values from the text vectors.
 */
export class BasicTransformerBlock extends Module {
  readonly norm1: LayerNorm;
  readonly attn1: Attention;
  readonly norm2: LayerNorm | null;
  readonly attn2: Attention | null;
  readonly norm3: LayerNorm;
  readonly ff: FeedForward;
  readonly onlyCrossAttention: boolean;

  constructor(dim: number, heads: number, dimHead: number, opts: BasicTransformerBlockOptions = {}) {
    super();
    const eps = opts.normEps ?? 1e-5;
    const bias = opts.attentionBias ?? false;
    const ctx = opts.crossAttentionDim ?? null;
    this.onlyCrossAttention = opts.onlyCrossAttention ?? false;
    this.norm1 = this.module('norm1', new LayerNorm(dim, { eps }));
    this.attn1 = this.module(
      'attn1',
      new Attention(dim, { heads, dimHead, bias, crossAttentionDim: this.onlyCrossAttention && ctx ? ctx : undefined }),
    );
    if (ctx !== null) {
      this.norm2 = this.module('norm2', new LayerNorm(dim, { eps }));
      this.attn2 = this.module('attn2', new Attention(dim, { heads, dimHead, bias, crossAttentionDim: ctx }));
    } else {
      this.norm2 = null;
      this.attn2 = null;
    }
    this.norm3 = this.module('norm3', new LayerNorm(dim, { eps }));
    this.ff = this.module('ff', new FeedForward(dim, { activation: opts.activation ?? 'geglu' }));
  }

  forward(x: tf.Tensor3D, context?: tf.Tensor3D): tf.Tensor3D {
    // h + f(norm(h)), the normalised input and f's output freed once read (freeEarly: inference only).
    const residual = (h: tf.Tensor3D, norm: LayerNorm, f: (n: tf.Tensor3D) => tf.Tensor3D) =>
      tf.tidy(() => {
        const n = norm.forward(h);
        const y = f(n);
        freeEarly(n);
        const out = tf.add(y, h) as tf.Tensor3D;
        freeEarly(y);
        return out;
      });
    return sequential(x,
      (h) => residual(h, this.norm1, (n) => this.attn1.forward(n, this.onlyCrossAttention ? context : undefined)),
      // Cross-attention: every image token takes a weighted mix of the text vectors.
      this.attn2 && ((h) => residual(h, this.norm2!, (n) => this.attn2!.forward(n, context))),
      (h) => residual(h, this.norm3, (n) => this.ff.forward(n)));
  }
}

export interface Transformer2DModelOptions extends BasicTransformerBlockOptions {
  numLayers?: number; // default 1
  normNumGroups?: number; // default 32
  /** Linear proj_in/proj_out (SD 2.x) instead of 1×1 convs (SD 1.x). */
  useLinearProjection?: boolean;
}

/**
 * diffusers Transformer2DModel (continuous input): GroupNorm(eps 1e-6) → proj_in →
 * transformer_blocks over the H·W tokens → proj_out → + input.
 */
export class Transformer2DModel extends Module {
  readonly norm: GroupNorm;
  readonly proj_in: Conv2d | Linear;
  readonly transformer_blocks: ModuleList<BasicTransformerBlock>;
  readonly proj_out: Conv2d | Linear;
  readonly innerDim: number;

  constructor(
    heads: number,
    dimHead: number,
    readonly inChannels: number,
    opts: Transformer2DModelOptions = {},
  ) {
    super();
    const inner = (this.innerDim = heads * dimHead);
    const linear = opts.useLinearProjection ?? false;
    this.norm = this.module('norm', new GroupNorm(opts.normNumGroups ?? 32, inChannels, { eps: 1e-6 }));
    this.proj_in = this.module('proj_in', linear ? new Linear(inChannels, inner) : new Conv2d(inChannels, inner, 1));
    this.transformer_blocks = this.module('transformer_blocks', new ModuleList<BasicTransformerBlock>());
    for (let i = 0; i < (opts.numLayers ?? 1); i++) this.transformer_blocks.push(new BasicTransformerBlock(inner, heads, dimHead, opts));
    this.proj_out = this.module('proj_out', linear ? new Linear(inner, inChannels) : new Conv2d(inner, inChannels, 1));
  }

  /** x [B, H, W, C], context [B, L, crossAttentionDim] → [B, H, W, C]. */
  forward(x: tf.Tensor4D, context?: tf.Tensor3D): tf.Tensor4D {
    return tf.tidy(() => {
      const [b, hgt, wid] = x.shape;
      // A 1×1 conv on NHWC is a Linear over channels, so both projections act on the tokens.
      const h0 = this.norm.forward(x);
      const hin = this.proj_in instanceof Conv2d ? this.proj_in.forward(h0) : this.proj_in.forward(h0);
      freeEarly(h0);
      const tokens = sequential(tf.reshape(hin, [b, hgt * wid, this.innerDim]) as tf.Tensor3D,
        ...this.transformer_blocks.items.map((block) => (t: tf.Tensor3D) => block.forward(t, context)));
      freeEarly(hin);
      const grid = tf.reshape(tokens, [b, hgt, wid, this.innerDim]) as tf.Tensor4D;
      const out = this.proj_out instanceof Conv2d ? this.proj_out.forward(grid) : this.proj_out.forward(grid);
      freeEarly(tokens, grid);
      return tf.add(out, x) as tf.Tensor4D;
    });
  }
}

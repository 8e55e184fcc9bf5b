/**
 * UNet2DConditionModel — the text-conditioned noise-prediction network of latent diffusion
 * (diffusers v0.24 semantics, parameter names and config.json), in TensorFlow.js, channels-last.
 * Its config (keys, defaults, presets, checks) is in config.ts beside this file.
 *
 *   latents x [B, h, w, in_channels], timesteps t [B], text vectors c [B, L, cross_attention_dim]
 *     t → sinusoidal time_proj ([cos, sin], width C0 = block_out_channels[0])
 *       (+ cond_proj(timestep_cond) in LCM-distilled UNets: time_cond_proj_dim, guidance as input)
 *       → time_embedding MLP (linear_1 → SiLU → linear_2)               → temb [B, 4·C0]
 *     x → conv_in → down_blocks: per level `layers_per_block` × (ResnetBlock2D(·, temb)
 *         [+ Transformer2DModel(·, c) in CrossAttn blocks]), then a stride-2 conv (not at the
 *         last level); every intermediate result is kept as a skip connection
 *       → mid_block: resnet, transformer, resnet (at the lowest resolution)
 *       → up_blocks: per level (layers_per_block + 1) × (concat the next skip on channels →
 *         ResnetBlock2D [+ Transformer2DModel]), then nearest ×2 + conv (not at the last level)
 *       → GroupNorm → SiLU → conv_out                                    → noise [B, h, w, out_channels]
 *   Transformer2DModel: GroupNorm(eps 1e-6) → proj_in (1×1 conv, or linear in SD 2.x) →
 *   [self-attention, cross-attention to c, GEGLU feed-forward] (pre-LayerNorm, residual) →
 *   proj_out → + input. `attention_head_dim` is the number of heads in SD configs (a historic
 *   diffusers naming slip); each head has out_channels / heads channels.
 *
 * Where the text enters: cross-attention, in every Transformer2DModel of the CrossAttn blocks and
 * the mid block. Each of its BasicTransformerBlocks (src/nn/blocks.ts) has attn2, whose queries
 * come from the image tokens and whose keys and values come from the text vectors c;
 * scaledDotProductAttention (src/nn/attention.ts) computes softmax(QKᵀ/√d)·V. The time enters
 * differently: temb is added inside every ResnetBlock2D.
 *
 * Usage:
 *   const unet = UNet2DConditionModel.fromPretrained('../shared/fixtures/sd1_tiny/model/unet');
 *   const eps = unet.forward(latents, timesteps, textEmbeddings);   // NHWC in, NHWC out
 *   const small = new UNet2DConditionModel(mnistUnetConfig({ crossAttentionDim: 128 }));
 *   small.save('runs/default/unet');    // config.json + diffusion_pytorch_model.safetensors
 *
 * Supported: DownBlock2D / CrossAttnDownBlock2D / UpBlock2D / CrossAttnUpBlock2D,
 * UNetMidBlock2DCrossAttn (or no mid block), per-block heads / layers / transformer depth,
 * conv or linear projections, a guidance-conditioned time embedding (LCM) — SD 1.x and 2.x. Config features outside that (class or
 * addition embeddings, scale-shift time conditioning, Fourier time embedding, dropout ...)
 * are rejected by name when set to anything but their default.
 */
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import {
  Conv2d,
  Downsample2D,
  GroupNorm,
  Module,
  ModuleList,
  ResnetBlock2D,
  TimestepEmbedding,
  Transformer2DModel,
  Upsample2D,
  freeEarly,
  getActivation,
  timestepEmbedding,
} from '../nn/index.ts';
import { writeConfig } from '../io/config.ts';
import { saveWeights } from '../nn/checkpoint.ts';
import { loadPretrained } from '../nn/pretrained.ts';
import type { WriteDtype } from '../io/safetensors.ts';
import { UsageError } from '../util/errors.ts';
import { UNET_DEFAULTS, type UNet2DConditionConfig, type UNetPlan, planUnet, readUnetConfig } from './config.ts';

// ---------------------------------------------------------------------------------------------
// Blocks

interface BlockOptions {
  tembChannels: number;
  groups: number;
  eps: number;
  act: string;
  /** Present in CrossAttn blocks. */
  attention: null | {
    heads: number;
    crossAttentionDim: number;
    transformerLayers: number;
    useLinearProjection: boolean;
    onlyCrossAttention: boolean;
  };
}

function transformer(channels: number, o: BlockOptions): Transformer2DModel {
  const a = o.attention!;
  return new Transformer2DModel(a.heads, channels / a.heads, channels, {
    numLayers: a.transformerLayers,
    crossAttentionDim: a.crossAttentionDim,
    normNumGroups: o.groups,
    useLinearProjection: a.useLinearProjection,
    onlyCrossAttention: a.onlyCrossAttention,
  });
}

/**
 * DownBlock2D (resnets only) or CrossAttnDownBlock2D (a transformer after each resnet), then
 * an optional stride-2 conv. Returns the output and every intermediate state for the skips.
 */
class DownBlock extends Module {
  readonly resnets = this.module('resnets', new ModuleList<ResnetBlock2D>());
  readonly attentions: ModuleList<Transformer2DModel> | null;
  readonly downsamplers: ModuleList<Downsample2D> | null;

  constructor(cin: number, cout: number, layers: number, addDownsample: boolean, padding: number, o: BlockOptions) {
    super();
    this.attentions = o.attention ? this.module('attentions', new ModuleList<Transformer2DModel>()) : null;
    for (let i = 0; i < layers; i++) {
      const inCh = i === 0 ? cin : cout;
      this.resnets.push(new ResnetBlock2D({ inChannels: inCh, outChannels: cout, tembChannels: o.tembChannels, groups: o.groups, eps: o.eps, act: o.act }));
      this.attentions?.push(transformer(cout, o));
    }
    this.downsamplers = addDownsample
      ? this.module('downsamplers', new ModuleList([new Downsample2D(cout, { useConv: true, outChannels: cout, padding })]))
      : null;
  }

  forward(x: tf.Tensor4D, temb: tf.Tensor2D, context?: tf.Tensor3D): { hidden: tf.Tensor4D; skips: tf.Tensor4D[] } {
    const skips: tf.Tensor4D[] = [];
    let h = x;
    this.resnets.items.forEach((resnet, i) => {
      h = resnet.forward(h, temb);
      // CrossAttnDownBlock2D: the text enters here (cross-attention to `context` in the transformer).
      if (this.attentions) {
        const r = h;
        h = this.attentions.at(i).forward(r, context);
        freeEarly(r); // only the transformer's output is kept (a skip)
      }
      skips.push(h);
    });
    if (this.downsamplers) {
      h = this.downsamplers.at(0).forward(h);
      skips.push(h);
    }
    return { hidden: h, skips };
  }
}

/**
 * UpBlock2D / CrossAttnUpBlock2D: each resnet takes the previous output concatenated (on
 * channels) with the latest unused skip; then an optional nearest ×2 + conv.
 */
class UpBlock extends Module {
  readonly resnets = this.module('resnets', new ModuleList<ResnetBlock2D>());
  readonly attentions: ModuleList<Transformer2DModel> | null;
  readonly upsamplers: ModuleList<Upsample2D> | null;

  /**
   * prevCout: channels coming from below; cout: this level's width; skipIn: width of the skip
   * that the last resnet consumes (the level above's, i.e. the down block's input).
   */
  constructor(prevCout: number, cout: number, skipIn: number, layers: number, addUpsample: boolean, o: BlockOptions) {
    super();
    this.attentions = o.attention ? this.module('attentions', new ModuleList<Transformer2DModel>()) : null;
    for (let i = 0; i < layers; i++) {
      const skip = i === layers - 1 ? skipIn : cout;
      const inCh = i === 0 ? prevCout : cout;
      this.resnets.push(new ResnetBlock2D({ inChannels: inCh + skip, outChannels: cout, tembChannels: o.tembChannels, groups: o.groups, eps: o.eps, act: o.act }));
      this.attentions?.push(transformer(cout, o));
    }
    this.upsamplers = addUpsample ? this.module('upsamplers', new ModuleList([new Upsample2D(cout, { useConv: true, outChannels: cout })])) : null;
  }

  /** skips: this block's skip states, oldest first (the last one is consumed first). */
  forward(x: tf.Tensor4D, skips: tf.Tensor4D[], temb: tf.Tensor2D, context?: tf.Tensor3D, upsampleSize?: [number, number]): tf.Tensor4D {
    // Every intermediate is freed once read (freeEarly: inference only); x and the skips are the caller's.
    let h = x;
    const next = (y: tf.Tensor4D) => {
      if (h !== x) freeEarly(h);
      h = y;
    };
    this.resnets.items.forEach((resnet, i) => {
      const cat = tf.concat([h, skips[skips.length - 1 - i]], 3) as tf.Tensor4D;
      next(cat);
      next(resnet.forward(cat, temb));
      // CrossAttnUpBlock2D: the text enters here (cross-attention to `context` in the transformer).
      if (this.attentions) next(this.attentions.at(i).forward(h, context));
    });
    if (this.upsamplers) next(this.upsamplers.at(0).forward(h, upsampleSize));
    return h;
  }
}

/** UNetMidBlock2DCrossAttn: resnet, then (transformer, resnet) per layer (SD: one). */
class MidBlock extends Module {
  readonly resnets = this.module('resnets', new ModuleList<ResnetBlock2D>());
  readonly attentions = this.module('attentions', new ModuleList<Transformer2DModel>());

  constructor(ch: number, outputScaleFactor: number, o: BlockOptions) {
    super();
    const resnet = () =>
      new ResnetBlock2D({ inChannels: ch, outChannels: ch, tembChannels: o.tembChannels, groups: o.groups, eps: o.eps, act: o.act, outputScaleFactor });
    this.resnets.push(resnet());
    this.attentions.push(transformer(ch, o));
    this.resnets.push(resnet());
  }

  forward(x: tf.Tensor4D, temb: tf.Tensor2D, context?: tf.Tensor3D): tf.Tensor4D {
    let h = this.resnets.at(0).forward(x, temb);
    // The transformer attends to the text (cross-attention to `context`) at the lowest resolution.
    this.attentions.items.forEach((attn, i) => {
      const a = attn.forward(h, context);
      freeEarly(h);
      h = this.resnets.at(i + 1).forward(a, temb);
      freeEarly(a);
    });
    return h;
  }
}

// ---------------------------------------------------------------------------------------------
// UNet2DConditionModel

export const UNET_WEIGHTS_FILE = 'diffusion_pytorch_model.safetensors';

export class UNet2DConditionModel extends Module {
  readonly config: UNet2DConditionConfig;
  readonly plan: UNetPlan;
  readonly conv_in: Conv2d;
  readonly time_embedding: TimestepEmbedding;
  readonly down_blocks = new ModuleList<DownBlock>();
  readonly mid_block: MidBlock | null;
  readonly up_blocks = new ModuleList<UpBlock>();
  readonly conv_norm_out: GroupNorm;
  readonly conv_out: Conv2d;
  private readonly act: <T extends tf.Tensor>(x: T) => T;
  private readonly timeEmbedAct: (<T extends tf.Tensor>(x: T) => T) | null;

  /** Missing keys take diffusers' defaults (UNET_DEFAULTS); see UNET_PRESETS. */
  constructor(config: Partial<UNet2DConditionConfig>) {
    super();
    const cfg = (this.config = { ...UNET_DEFAULTS, ...config });
    const p = (this.plan = planUnet(cfg));
    const ch = p.channels;
    const n = ch.length;
    this.act = getActivation(cfg.act_fn);
    this.timeEmbedAct = cfg.time_embedding_act_fn === null ? null : getActivation(cfg.time_embedding_act_fn);
    const opts = (i: number, crossAttn: boolean): BlockOptions => ({
      tembChannels: p.timeEmbedDim,
      groups: cfg.norm_num_groups,
      eps: cfg.norm_eps,
      act: cfg.act_fn,
      attention: crossAttn
        ? {
            heads: p.heads[i],
            crossAttentionDim: p.crossAttentionDim,
            transformerLayers: p.transformerLayers[i],
            useLinearProjection: cfg.use_linear_projection,
            onlyCrossAttention: p.onlyCrossAttention[i],
          }
        : null,
    });

    const kIn = cfg.conv_in_kernel;
    this.conv_in = this.module('conv_in', new Conv2d(cfg.in_channels, ch[0], kIn, { padding: (kIn - 1) / 2 }));
    this.time_embedding = this.module('time_embedding', new TimestepEmbedding(ch[0], p.timeEmbedDim, { act: cfg.act_fn, condProjDim: cfg.time_cond_proj_dim }));

    this.module('down_blocks', this.down_blocks);
    for (let i = 0; i < n; i++) {
      const cin = i === 0 ? ch[0] : ch[i - 1];
      const crossAttn = cfg.down_block_types[i] === 'CrossAttnDownBlock2D';
      this.down_blocks.push(new DownBlock(cin, ch[i], p.layers[i], i < n - 1, cfg.downsample_padding, opts(i, crossAttn)));
    }

    // diffusers gives the mid block no only_cross_attention: it always self-attends.
    const midOpts = opts(n - 1, true);
    midOpts.attention!.onlyCrossAttention = false;
    this.mid_block = cfg.mid_block_type === null ? null : this.module('mid_block', new MidBlock(ch[n - 1], cfg.mid_block_scale_factor, midOpts));

    // Up block i mirrors down level j = n-1-i: same width, heads and depth, one more resnet.
    this.module('up_blocks', this.up_blocks);
    for (let i = 0; i < n; i++) {
      const j = n - 1 - i;
      const prev = ch[Math.min(j + 1, n - 1)];
      const skipIn = ch[Math.max(j - 1, 0)];
      const crossAttn = cfg.up_block_types[i] === 'CrossAttnUpBlock2D';
      this.up_blocks.push(new UpBlock(prev, ch[j], skipIn, p.layers[j] + 1, i < n - 1, opts(j, crossAttn)));
    }

    this.conv_norm_out = this.module('conv_norm_out', new GroupNorm(cfg.norm_num_groups, ch[0], { eps: cfg.norm_eps }));
    const kOut = cfg.conv_out_kernel;
    this.conv_out = this.module('conv_out', new Conv2d(ch[0], cfg.out_channels, kOut, { padding: (kOut - 1) / 2 }));
  }

  /** Whether any block attends to text (then forward needs encoderHiddenStates). */
  get hasCrossAttention(): boolean {
    return this.mid_block !== null || this.down_blocks.items.some((b) => b.attentions) || this.up_blocks.items.some((b) => b.attentions);
  }

  /**
   * Predicts the noise (or v, depending on training) in `sample`.
   *   sample               [B, h, w, in_channels] latents (NHWC)
   *   timesteps            [B] or one value for the whole batch (may be fractional)
   *   encoderHiddenStates  [B, L, cross_attention_dim] text-encoder output
   *   opts.timestepCond    [B, time_cond_proj_dim] (LCM-distilled UNets: guidanceScaleEmbedding
   *                        of guidance − 1); absent = cond_proj unused, as upstream
   * → [B, h, w, out_channels]. Any h, w ≥ 1 works (odd sizes upsample to the skip's size).
   */
  forward(sample: tf.Tensor4D, timesteps: tf.Tensor | number | number[], encoderHiddenStates?: tf.Tensor3D, opts: { timestepCond?: tf.Tensor2D | null } = {}): tf.Tensor4D {
    return tf.tidy(() => {
      const cfg = this.config;
      const [b, hgt, wid, c] = sample.shape;
      if (c !== cfg.in_channels) throw new UsageError(`UNet: sample has ${c} channels (NHWC), the model expects in_channels ${cfg.in_channels}.`);
      const context = encoderHiddenStates;
      if (this.hasCrossAttention) {
        if (!context) throw new UsageError('UNet: this model attends to text and needs encoderHiddenStates [B, L, cross_attention_dim].');
        if (context.rank !== 3 || context.shape[2] !== this.plan.crossAttentionDim) {
          throw new UsageError(
            `UNet: encoderHiddenStates have shape [${context.shape}], the model expects [B, L, ${this.plan.crossAttentionDim}] (cross_attention_dim; is the text encoder the one this UNet was trained with?).`,
          );
        }
        if (context.shape[0] !== b) throw new UsageError(`UNet: batch of encoderHiddenStates (${context.shape[0]}) differs from the sample's (${b}).`);
      }

      const cond = opts.timestepCond ?? null;
      if (cond) {
        const d = cfg.time_cond_proj_dim;
        if (d === null) throw new UsageError('UNet: got a timestep condition, but this model has no cond_proj (time_cond_proj_dim is null).');
        if (cond.rank !== 2 || cond.shape[0] !== b || cond.shape[1] !== d) throw new UsageError(`UNet: timestep condition has shape [${cond.shape}], the model expects [${b}, ${d}] (batch, time_cond_proj_dim).`);
      }
      // Time: sinusoidal features of width C0 (+ cond_proj(cond)) → MLP → temb [B, timeEmbedDim].
      const t = batchTimesteps(timesteps, b);
      let temb = this.time_embedding.forward(
        timestepEmbedding(t, this.plan.channels[0], { flipSinToCos: cfg.flip_sin_to_cos, freqShift: cfg.freq_shift }),
        cond,
      );
      if (this.timeEmbedAct) temb = this.timeEmbedAct(temb);

      let h = cfg.center_input_sample ? (tf.sub(tf.mul(sample, 2), 1) as tf.Tensor4D) : sample;
      h = this.conv_in.forward(h);
      const skips: tf.Tensor4D[] = [h];
      // Every block gets temb (added in its resnets) and the text `context` (read by
      // cross-attention in the CrossAttn blocks' transformers, see DownBlock/UpBlock/MidBlock).
      for (const block of this.down_blocks) {
        const out = block.forward(h, temb, context);
        h = out.hidden;
        skips.push(...out.skips);
      }
      if (this.mid_block) h = this.mid_block.forward(h, temb, context);

      // When h or w is not a multiple of 2^levels, nearest ×2 would miss the skip's size by
      // one: upsample to the size of the skip that comes next instead (as diffusers does).
      const factor = 2 ** (this.up_blocks.length - 1);
      const forwardSize = hgt % factor !== 0 || wid % factor !== 0;
      this.up_blocks.items.forEach((block, i) => {
        const mine = skips.splice(skips.length - block.resnets.length, block.resnets.length);
        const next = skips[skips.length - 1];
        const size: [number, number] | undefined = forwardSize && i < this.up_blocks.length - 1 && next ? [next.shape[1], next.shape[2]] : undefined;
        const out = block.forward(h, mine, temb, context, size);
        freeEarly(h, ...mine); // each skip is read once
        h = out;
      });
      return this.conv_out.forward(this.act(this.conv_norm_out.forward(h)));
    });
  }

  /** Loads a diffusers UNet directory (config.json + diffusion_pytorch_model.safetensors). */
  static fromPretrained(dir: string): UNet2DConditionModel {
    return loadPretrained(dir, {
      what: 'a diffusers UNet directory',
      weightsFile: UNET_WEIGHTS_FILE,
      pickleFile: 'diffusion_pytorch_model.bin',
      readConfig: readUnetConfig,
      build: (cfg) => new UNet2DConditionModel(cfg),
    });
  }

  /** Writes config.json + diffusion_pytorch_model.safetensors into `dir`. */
  save(dir: string, opts: { dtype?: WriteDtype } = {}): void {
    saveWeights(this, path.join(dir, UNET_WEIGHTS_FILE), opts);
    writeConfig(path.join(dir, 'config.json'), 'UNet2DConditionModel', this.config);
  }
}

/** Timesteps as a float32 [B] tensor (one value is repeated over the batch). */
function batchTimesteps(timesteps: tf.Tensor | number | number[], batch: number): tf.Tensor1D {
  const t = typeof timesteps === 'number' || Array.isArray(timesteps) ? tf.tensor1d(typeof timesteps === 'number' ? [timesteps] : timesteps, 'float32') : tf.cast(tf.reshape(timesteps, [-1]), 'float32');
  const n = t.shape[0];
  if (n === batch) return t as tf.Tensor1D;
  if (n === 1) return tf.tile(t, [batch]) as tf.Tensor1D;
  throw new UsageError(`UNet: got ${n} timesteps for a batch of ${batch} (give one per sample, or one for all).`);
}

/**
 * ImageEncoder — the image tower of sdlab's small CLIP: a CNN that maps a digit to a vector in
 * the contrastive space it shares with the text encoder's text_projection.
 *
 *   image x [B, 32, 32, 1] in [-1, 1] (NHWC)
 *     → conv_in (3×3)                                               [B, 32, 32, c0]
 *     → per level: conv1 2×2 stride 2 → GroupNorm → SiLU = h;  h + SiLU(GroupNorm(conv2 3×3 h))
 *                                                               [B, 16, 16, c0] … [B, 4, 4, c_last]
 *     → global average pool → proj (Linear)                         [B, projection_dim]  (unnormalised)
 *
 * Three levels [32, 64, 96] give ~0.18 M parameters and ~6 M multiply-adds per image: enough to
 * tell digits and stroke styles apart, fast to train on a CPU. Global pooling makes it accept
 * any input size divisible by 2^levels. proj has no bias, like CLIP's visual_projection.
 *
 * (Measured alternative: flattening the final 4×4 grid into proj instead of averaging it makes
 * initial embeddings far more distinct — mean cosine between MNIST digits 0.68 vs 0.98 — and
 * learned a little faster in one short run; not adopted, the trainer's defaults are tuned on this.)
 *
 *   const enc = new ImageEncoder(IMAGE_ENCODER_PRESETS.mnist);
 *   const emb = enc.forward(images);   // [B, 128]
 */
import * as tf from '@tensorflow/tfjs';
import { Conv2d, GroupNorm, Linear, Module, ModuleList, getActivation } from '../nn/index.ts';
import type { ConfigSpec } from '../io/config.ts';
import { UsageError } from '../util/errors.ts';
import { MAX_BLOCKS, MAX_IMAGE_SIDE } from '../util/limits.ts';

export interface ImageEncoderConfig {
  in_channels: number;
  /** Expected input size (informational: global pooling accepts any size). */
  sample_size: number;
  /** Channels per level; each level halves the resolution. */
  block_out_channels: number[];
  norm_num_groups: number;
  norm_eps: number;
  act_fn: string;
  projection_dim: number;
}

export const IMAGE_ENCODER_DEFAULTS: ImageEncoderConfig = {
  in_channels: 1,
  sample_size: 32,
  block_out_channels: [32, 64, 96],
  norm_num_groups: 8,
  norm_eps: 1e-5,
  act_fn: 'silu',
  projection_dim: 128,
};

export const IMAGE_ENCODER_CONFIG_SPEC: ConfigSpec<ImageEncoderConfig> = { defaults: IMAGE_ENCODER_DEFAULTS };

export const IMAGE_ENCODER_PRESETS = {
  /** 32×32 MNIST digits → 128-d (matches TEXT_ENCODER_PRESETS.mnist.projection_dim). */
  mnist: { ...IMAGE_ENCODER_DEFAULTS },
} satisfies Record<string, ImageEncoderConfig>;

/** Checks an image-encoder config (`source` names the file or preset in errors). */
export function validateImageEncoderConfig(cfg: ImageEncoderConfig, source = 'image encoder config'): ImageEncoderConfig {
  const fail = (msg: string): never => {
    throw new UsageError(`${source}: ${msg}.`);
  };
  if (cfg.block_out_channels.length < 1) fail('block_out_channels must list at least one width');
  if (cfg.block_out_channels.length > MAX_BLOCKS) fail(`block_out_channels lists ${cfg.block_out_channels.length} levels, over sdlab's limit of ${MAX_BLOCKS}`);
  const ints: Array<[string, number]> = [
    ['in_channels', cfg.in_channels],
    ['sample_size', cfg.sample_size],
    ['norm_num_groups', cfg.norm_num_groups],
    ['projection_dim', cfg.projection_dim],
    ...cfg.block_out_channels.map((c, i): [string, number] => [`block_out_channels[${i}]`, c]),
  ];
  for (const [k, v] of ints) if (!Number.isInteger(v) || v < 1) fail(`${k} must be a positive integer, got ${v}`);
  if (cfg.sample_size > MAX_IMAGE_SIDE) fail(`sample_size ${cfg.sample_size} is over sdlab's limit of ${MAX_IMAGE_SIDE}`);
  for (const c of cfg.block_out_channels) {
    if (c % cfg.norm_num_groups !== 0) fail(`block_out_channels ${c} is not divisible by norm_num_groups ${cfg.norm_num_groups}`);
  }
  if (!(cfg.norm_eps > 0)) fail(`norm_eps must be > 0, got ${cfg.norm_eps}`);
  getActivation(cfg.act_fn, `${source}: act_fn`);
  return cfg;
}

/** One level: a 2×2 stride-2 conv to the new width, then a residual 3×3 conv at that width. */
class DownBlock extends Module {
  readonly conv1: Conv2d;
  readonly norm1: GroupNorm;
  readonly conv2: Conv2d;
  readonly norm2: GroupNorm;

  constructor(
    cin: number,
    cout: number,
    cfg: ImageEncoderConfig,
    private readonly act: <T extends tf.Tensor>(x: T) => T,
  ) {
    super();
    // 2×2 stride-2 "patchify" conv: halves the size with no padding (a padded stride-2 conv
    // would need tf.pad, whose gradient, a strided slice, is very slow on tfjs CPU backends).
    this.conv1 = this.module('conv1', new Conv2d(cin, cout, 2, { stride: 2 }));
    this.norm1 = this.module('norm1', new GroupNorm(cfg.norm_num_groups, cout, { eps: cfg.norm_eps }));
    this.conv2 = this.module('conv2', new Conv2d(cout, cout, 3, { padding: 1 }));
    this.norm2 = this.module('norm2', new GroupNorm(cfg.norm_num_groups, cout, { eps: cfg.norm_eps }));
  }

  forward(x: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => {
      const h = this.act(this.norm1.forward(this.conv1.forward(x)));
      return tf.add(h, this.act(this.norm2.forward(this.conv2.forward(h)))) as tf.Tensor4D;
    });
  }
}

export class ImageEncoder extends Module {
  readonly config: ImageEncoderConfig;
  readonly conv_in: Conv2d;
  readonly down_blocks = new ModuleList<DownBlock>();
  readonly proj: Linear;

  /** Missing keys take IMAGE_ENCODER_DEFAULTS. */
  constructor(config: Partial<ImageEncoderConfig> = {}) {
    super();
    this.config = validateImageEncoderConfig({ ...IMAGE_ENCODER_DEFAULTS, ...config });
    const ch = this.config.block_out_channels;
    const act = getActivation(this.config.act_fn);
    this.conv_in = this.module('conv_in', new Conv2d(this.config.in_channels, ch[0], 3, { padding: 1 }));
    this.module('down_blocks', this.down_blocks);
    ch.forEach((cout, i) => this.down_blocks.push(new DownBlock(i === 0 ? ch[0] : ch[i - 1], cout, this.config, act)));
    this.proj = this.module('proj', new Linear(ch[ch.length - 1], this.config.projection_dim, { bias: false }));
  }

  /** x [B, H, W, in_channels] in [-1, 1] → [B, projection_dim] (not normalised). */
  forward(x: tf.Tensor4D): tf.Tensor2D {
    return tf.tidy(() => {
      if (x.rank !== 4 || x.shape[3] !== this.config.in_channels) {
        throw new UsageError(`image encoder: expected images [batch, height, width, ${this.config.in_channels}] (NHWC), got shape [${x.shape}].`);
      }
      let h = this.conv_in.forward(x);
      for (const block of this.down_blocks) h = block.forward(h);
      return this.proj.forward(tf.mean(h, [1, 2]) as tf.Tensor2D);
    });
  }
}

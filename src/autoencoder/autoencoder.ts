/**
 * AutoencoderKL — the variational autoencoder of latent diffusion (diffusers v0.24 semantics,
 * parameter names and config.json), in TensorFlow.js, channels-last. Its config (keys,
 * defaults, presets, checks) is in config.ts beside this file.
 *
 *   image x [B, H, W, C] in [-1, 1]
 *     → Encoder (conv_in, down_blocks of ResnetBlock2D + stride-2 Downsample2D, mid_block
 *       resnet/attention/resnet, GroupNorm, SiLU, conv_out to 2·latent_channels)
 *     → quant_conv (1×1) → mean, logvar (logvar clamped to [-30, 20])
 *     → z = mean + exp(logvar/2)·ε                         [B, H/2^k, W/2^k, latent_channels]
 *     → post_quant_conv (1×1) → Decoder (mirror image, Upsample2D nearest ×2 + conv) → image
 *   Diffusion runs on z · scaling_factor (≈ unit variance); decode z_diffusion / scaling_factor.
 *
 * Usage:
 *   const vae = AutoencoderKL.fromPretrained('../shared/fixtures/sd1_tiny/model/vae');
 *   const { mean, logvar } = vae.encode(x);              // NHWC
 *   const img = vae.decode(tf.div(latents, vae.scalingFactor));
 *   vae.save('runs/default/vae');                        // config.json + diffusion_pytorch_model.safetensors
 *
 * Weights load from diffusers directories (also with the legacy attention names
 * query/key/value/proj_attn) and round-trip through diffusers unchanged.
 */
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { Attention, Conv2d, Downsample2D, GroupNorm, Module, ModuleList, ResnetBlock2D, Upsample2D, getActivation, groupNormAct, sequential } from '../nn/index.ts';
import { writeConfig } from '../io/config.ts';
import { saveWeights } from '../nn/checkpoint.ts';
import { loadPretrained } from '../nn/pretrained.ts';
import type { WriteDtype } from '../io/safetensors.ts';
import { type AutoencoderKLConfig, VAE_DEFAULTS, readVaeConfig, validateVaeConfig } from './config.ts';

// ---------------------------------------------------------------------------------------------
// Blocks

const VAE_EPS = 1e-6; // every VAE GroupNorm (resnets, attention, conv_norm_out)

/** DownEncoderBlock2D: resnets, then a stride-2 conv (pad bottom/right by 1) unless last. */
class DownEncoderBlock2D extends Module {
  readonly resnets = this.module('resnets', new ModuleList<ResnetBlock2D>());
  readonly downsamplers: ModuleList<Downsample2D> | null;

  constructor(cin: number, cout: number, layers: number, groups: number, addDownsample: boolean) {
    super();
    for (let i = 0; i < layers; i++) {
      this.resnets.push(new ResnetBlock2D({ inChannels: i === 0 ? cin : cout, outChannels: cout, groups, eps: VAE_EPS }));
    }
    this.downsamplers = addDownsample
      ? this.module('downsamplers', new ModuleList([new Downsample2D(cout, { useConv: true, outChannels: cout, padding: 0 })]))
      : null;
  }

  forward(x: tf.Tensor4D): tf.Tensor4D {
    return sequential(x, ...this.resnets.items.map((r) => (h: tf.Tensor4D) => r.forward(h)), this.downsamplers && ((h) => this.downsamplers!.at(0).forward(h)));
  }
}

/** UpDecoderBlock2D: resnets, then nearest ×2 + conv unless last. */
class UpDecoderBlock2D extends Module {
  readonly resnets = this.module('resnets', new ModuleList<ResnetBlock2D>());
  readonly upsamplers: ModuleList<Upsample2D> | null;

  constructor(cin: number, cout: number, layers: number, groups: number, addUpsample: boolean) {
    super();
    for (let i = 0; i < layers; i++) {
      this.resnets.push(new ResnetBlock2D({ inChannels: i === 0 ? cin : cout, outChannels: cout, groups, eps: VAE_EPS }));
    }
    this.upsamplers = addUpsample
      ? this.module('upsamplers', new ModuleList([new Upsample2D(cout, { useConv: true, outChannels: cout })]))
      : null;
  }

  forward(x: tf.Tensor4D): tf.Tensor4D {
    return sequential(x, ...this.resnets.items.map((r) => (h: tf.Tensor4D) => r.forward(h)), this.upsamplers && ((h) => this.upsamplers!.at(0).forward(h)));
  }
}

/** UNetMidBlock2D without time embedding: resnet, (single-head attention with residual), resnet. */
class VaeMidBlock extends Module {
  readonly resnets = this.module('resnets', new ModuleList<ResnetBlock2D>());
  readonly attentions: ModuleList<Attention> | null;

  constructor(ch: number, groups: number, addAttention: boolean) {
    super();
    this.resnets.push(new ResnetBlock2D({ inChannels: ch, outChannels: ch, groups, eps: VAE_EPS }));
    // diffusers: attention_head_dim = channels → one head of dimension `ch`, biases on q/k/v.
    this.attentions = addAttention
      ? this.module(
          'attentions',
          new ModuleList([
            new Attention(ch, { heads: 1, dimHead: ch, bias: true, normNumGroups: groups, normEps: VAE_EPS, residualConnection: true }),
          ]),
        )
      : null;
    this.resnets.push(new ResnetBlock2D({ inChannels: ch, outChannels: ch, groups, eps: VAE_EPS }));
  }

  forward(x: tf.Tensor4D): tf.Tensor4D {
    return sequential(x, (h) => this.resnets.at(0).forward(h), this.attentions && ((h) => this.attentions!.at(0).forward(h)), (h) => this.resnets.at(1).forward(h));
  }
}

export class Encoder extends Module {
  readonly conv_in: Conv2d;
  readonly down_blocks = new ModuleList<DownEncoderBlock2D>();
  readonly mid_block: VaeMidBlock;
  readonly conv_norm_out: GroupNorm;
  readonly conv_out: Conv2d;
  private readonly act: string;

  constructor(cfg: AutoencoderKLConfig) {
    super();
    const ch = cfg.block_out_channels;
    const groups = cfg.norm_num_groups;
    getActivation(cfg.act_fn); // an unknown name fails here, not at the first forward
    this.act = cfg.act_fn;
    this.conv_in = this.module('conv_in', new Conv2d(cfg.in_channels, ch[0], 3, { padding: 1 }));
    this.module('down_blocks', this.down_blocks);
    ch.forEach((cout, i) => {
      const cin = i === 0 ? ch[0] : ch[i - 1];
      this.down_blocks.push(new DownEncoderBlock2D(cin, cout, cfg.layers_per_block, groups, i < ch.length - 1));
    });
    const top = ch[ch.length - 1];
    this.mid_block = this.module('mid_block', new VaeMidBlock(top, groups, cfg.mid_block_add_attention));
    this.conv_norm_out = this.module('conv_norm_out', new GroupNorm(groups, top, { eps: VAE_EPS }));
    // double_z: mean and logvar channels.
    this.conv_out = this.module('conv_out', new Conv2d(top, 2 * cfg.latent_channels, 3, { padding: 1 }));
  }

  forward(x: tf.Tensor4D): tf.Tensor4D {
    return sequential(x, (h) => this.conv_in.forward(h), ...this.down_blocks.items.map((b) => (h: tf.Tensor4D) => b.forward(h)),
      (h) => this.mid_block.forward(h), (h) => groupNormAct(this.conv_norm_out, this.act, h), (h) => this.conv_out.forward(h));
  }
}

export class Decoder extends Module {
  readonly conv_in: Conv2d;
  readonly mid_block: VaeMidBlock;
  readonly up_blocks = new ModuleList<UpDecoderBlock2D>();
  readonly conv_norm_out: GroupNorm;
  readonly conv_out: Conv2d;
  private readonly act: string;

  constructor(cfg: AutoencoderKLConfig) {
    super();
    const rev = [...cfg.block_out_channels].reverse();
    const groups = cfg.norm_num_groups;
    getActivation(cfg.act_fn); // an unknown name fails here, not at the first forward
    this.act = cfg.act_fn;
    this.conv_in = this.module('conv_in', new Conv2d(cfg.latent_channels, rev[0], 3, { padding: 1 }));
    this.mid_block = this.module('mid_block', new VaeMidBlock(rev[0], groups, cfg.mid_block_add_attention));
    this.module('up_blocks', this.up_blocks);
    rev.forEach((cout, i) => {
      const cin = i === 0 ? rev[0] : rev[i - 1];
      // The decoder has one more resnet per level than the encoder.
      this.up_blocks.push(new UpDecoderBlock2D(cin, cout, cfg.layers_per_block + 1, groups, i < rev.length - 1));
    });
    const bottom = rev[rev.length - 1];
    this.conv_norm_out = this.module('conv_norm_out', new GroupNorm(groups, bottom, { eps: VAE_EPS }));
    this.conv_out = this.module('conv_out', new Conv2d(bottom, cfg.out_channels, 3, { padding: 1 }));
  }

  forward(z: tf.Tensor4D): tf.Tensor4D {
    return sequential(z, (h) => this.conv_in.forward(h), (h) => this.mid_block.forward(h), ...this.up_blocks.items.map((b) => (h: tf.Tensor4D) => b.forward(h)),
      (h) => groupNormAct(this.conv_norm_out, this.act, h), (h) => this.conv_out.forward(h));
  }
}

// ---------------------------------------------------------------------------------------------
// AutoencoderKL

export interface LatentDistribution {
  /** [B, h, w, latent_channels], unscaled (multiply by scalingFactor for diffusion space). */
  mean: tf.Tensor4D;
  /** Clamped to [-30, 20] as diffusers does. */
  logvar: tf.Tensor4D;
}

export const VAE_WEIGHTS_FILE = 'diffusion_pytorch_model.safetensors';

/**
 * Maps legacy diffusers VAE attention names (diffusers < 0.14: query, key, value, proj_attn)
 * to the current ones (to_q, to_k, to_v, to_out.0); other keys pass through.
 */
export function vaeLegacyKeyMap(key: string): string {
  return key.replace(/(\.attentions\.\d+\.)(query|key|value|proj_attn)\./, (_m, pre: string, name: string) => {
    const to = { query: 'to_q', key: 'to_k', value: 'to_v', proj_attn: 'to_out.0' }[name as 'query'];
    return `${pre}${to}.`;
  });
}

export class AutoencoderKL extends Module {
  readonly config: AutoencoderKLConfig;
  readonly encoder: Encoder;
  readonly decoder: Decoder;
  readonly quant_conv: Conv2d | null;
  readonly post_quant_conv: Conv2d | null;

  /** Missing keys take diffusers' defaults (VAE_DEFAULTS); see VAE_PRESETS. */
  constructor(config: Partial<AutoencoderKLConfig>) {
    super();
    this.config = validateVaeConfig({ ...VAE_DEFAULTS, ...config });
    const lc = this.config.latent_channels;
    this.encoder = this.module('encoder', new Encoder(this.config));
    this.decoder = this.module('decoder', new Decoder(this.config));
    this.quant_conv = this.config.use_quant_conv ? this.module('quant_conv', new Conv2d(2 * lc, 2 * lc, 1)) : null;
    this.post_quant_conv = this.config.use_post_quant_conv ? this.module('post_quant_conv', new Conv2d(lc, lc, 1)) : null;
  }

  /** Multiply encoder latents by this to get diffusion-space latents (≈ unit variance). */
  get scalingFactor(): number {
    return this.config.scaling_factor;
  }

  /** Spatial downsampling factor (2 per level after the first): 8 for SD, 4 for the MNIST preset. */
  get downsampleFactor(): number {
    return 2 ** (this.config.block_out_channels.length - 1);
  }

  /** x [B, H, W, in_channels] in [-1, 1] → posterior mean and logvar (NHWC). */
  encode(x: tf.Tensor4D): LatentDistribution {
    return tf.tidy(() => {
      let moments = this.encoder.forward(x);
      if (this.quant_conv) moments = this.quant_conv.forward(moments);
      const [mean, logvar] = tf.split(moments, 2, 3) as [tf.Tensor4D, tf.Tensor4D];
      return { mean, logvar: tf.clipByValue(logvar, -30, 20) };
    });
  }

  /** z = mean + exp(logvar/2)·noise (noise ~ N(0,1) if not given; pass it for reproducibility). */
  sample(dist: LatentDistribution, noise?: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => {
      const eps = noise ?? tf.randomNormal(dist.mean.shape);
      return tf.add(dist.mean, tf.mul(tf.exp(tf.mul(dist.logvar, 0.5)), eps)) as tf.Tensor4D;
    });
  }

  /** Unscaled latents z [B, h, w, latent_channels] → image [B, H, W, out_channels] (≈ [-1, 1], not clamped). */
  decode(z: tf.Tensor4D): tf.Tensor4D {
    return tf.tidy(() => this.decoder.forward(this.post_quant_conv ? this.post_quant_conv.forward(z) : z));
  }

  /** Reconstruction: encode, sample the posterior (or take its mean), decode. */
  forward(x: tf.Tensor4D, opts: { samplePosterior?: boolean; noise?: tf.Tensor4D } = {}): LatentDistribution & { sample: tf.Tensor4D } {
    return tf.tidy(() => {
      const dist = this.encode(x);
      const z = opts.samplePosterior ?? true ? this.sample(dist, opts.noise) : dist.mean;
      return { ...dist, sample: this.decode(z) };
    });
  }

  /** Loads a diffusers VAE directory (config.json + diffusion_pytorch_model.safetensors). */
  static fromPretrained(dir: string): AutoencoderKL {
    return loadPretrained(dir, {
      what: 'a diffusers VAE directory',
      weightsFile: VAE_WEIGHTS_FILE,
      pickleFile: 'diffusion_pytorch_model.bin',
      readConfig: readVaeConfig,
      build: (cfg) => new AutoencoderKL(cfg),
      keyMap: vaeLegacyKeyMap,
    });
  }

  /** Writes config.json + diffusion_pytorch_model.safetensors into `dir`. */
  save(dir: string, opts: { dtype?: WriteDtype } = {}): void {
    saveWeights(this, path.join(dir, VAE_WEIGHTS_FILE), opts);
    writeConfig(path.join(dir, 'config.json'), 'AutoencoderKL', this.config);
  }
}

/** KL(q(z|x) ‖ N(0, I)) per sample, summed over latent elements: 0.5·Σ(μ² + σ² − 1 − log σ²). */
export function klDivergence(dist: LatentDistribution): tf.Tensor1D {
  return tf.tidy(
    () => tf.mul(tf.sum(tf.sub(tf.add(tf.square(dist.mean), tf.exp(dist.logvar)), tf.add(dist.logvar, 1)), [1, 2, 3]), 0.5) as tf.Tensor1D,
  );
}

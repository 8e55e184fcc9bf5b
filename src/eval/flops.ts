/**
 * Analytic FLOP counts of one forward pass, from a model's config alone (nothing is allocated):
 * UNet2DConditionModel, the AutoencoderKL decoder and the CLIP text encoder, at any size.
 *
 * Counted, as 2 · multiply-adds: conv2d as a direct convolution (k·k·Cin·Cout per output pixel,
 * 1×1 convs included), linear layers (Cin·Cout per row; per sample for the time-embedding MLPs),
 * and the two attention matmuls, QKᵀ and softmax(·)·V (N·M·inner each, whatever the head count).
 * Elementwise ops, norms, softmax, up/down-sampling copies and embeddings are not counted: they
 * are a few percent of the work at Stable Diffusion sizes and not what GFLOP/s figures measure.
 *
 *   unetFlops(UNET_PRESETS.sd1, { batch: 2, height: 64, width: 64, contextLength: 77 })
 *     → { conv: 888e9, linear: 466e9, attention: 252e9, total: 1606e9 }   (≈, issue 17's figures)
 *   vaeDecodeFlops(VAE_PRESETS.sd1, { batch: 1, height: 64, width: 64 }).total  ≈ 2514e9
 *   textEncoderFlops(TEXT_ENCODER_PRESETS.sd1, { batch: 1, length: 77 })
 */
import type { AutoencoderKLConfig } from '../autoencoder/config.ts';
import type { TextEncoderConfig } from '../clip/text_encoder.ts';
import { type UNet2DConditionConfig, UNET_DEFAULTS, planUnet } from '../unet/config.ts';

/** FLOPs (2 · multiply-adds) by kind, and their sum. */
export interface FlopCount {
  conv: number;
  linear: number;
  attention: number;
  total: number;
}

class Counter {
  conv = 0;
  linear = 0;
  attention = 0;
  /** A k×k conv producing h×w pixels of cout channels from cin, for `batch` images. */
  conv2d(batch: number, h: number, w: number, cin: number, cout: number, k: number): void {
    this.conv += 2 * batch * h * w * k * k * cin * cout;
  }
  /** `rows` rows through a cin → cout linear layer. */
  dense(rows: number, cin: number, cout: number): void {
    this.linear += 2 * rows * cin * cout;
  }
  /** QKᵀ and ·V: `batch` × (n queries against m keys), inner width d (all heads together). */
  attn(batch: number, n: number, m: number, d: number): void {
    this.attention += 2 * (2 * batch * n * m * d);
  }
  result(): FlopCount {
    return { conv: this.conv, linear: this.linear, attention: this.attention, total: this.conv + this.linear + this.attention };
  }
}

/** Output side of a stride-2 conv (kernel 3, padding p on each side; diffusers' padding 0 pads right/bottom by 1). */
const down2 = (x: number, padding: number) => (padding === 0 ? Math.floor((x + 1 - 3) / 2) + 1 : Math.floor((x + 2 * padding - 3) / 2) + 1);

/** ResnetBlock2D: conv1 3×3, time_emb_proj (per sample, when temb), conv2 3×3, 1×1 shortcut when widths differ. */
function resnet(c: Counter, b: number, h: number, w: number, cin: number, cout: number, temb: number | null): void {
  c.conv2d(b, h, w, cin, cout, 3);
  if (temb) c.dense(b, temb, cout);
  c.conv2d(b, h, w, cout, cout, 3);
  if (cin !== cout) c.conv2d(b, h, w, cin, cout, 1);
}

/**
 * Transformer2DModel over h×w tokens of width ch: proj_in/proj_out (1×1 convs, or linears for
 * SD 2.x), then per layer attn1 (self, or cross under only_cross_attention), attn2 (cross to
 * the text), GEGLU feed-forward ch → 2·4ch, 4ch → ch.
 */
function transformer(c: Counter, b: number, h: number, w: number, ch: number, layers: number, ctxLen: number, ctxDim: number, linearProj: boolean, onlyCross: boolean): void {
  const n = h * w, rows = b * n;
  if (linearProj) c.dense(rows, ch, ch);
  else c.conv2d(b, h, w, ch, ch, 1);
  for (let l = 0; l < layers; l++) {
    // attn1
    const [m1, d1] = onlyCross ? [ctxLen, ctxDim] : [n, ch];
    c.dense(rows, ch, ch);
    c.dense(b * m1, d1, 2 * ch);
    c.attn(b, n, m1, ch);
    c.dense(rows, ch, ch);
    // attn2: cross-attention to the text (every sdlab UNet block has it)
    c.dense(rows, ch, ch);
    c.dense(b * ctxLen, ctxDim, 2 * ch);
    c.attn(b, n, ctxLen, ch);
    c.dense(rows, ch, ch);
    // GEGLU feed-forward
    c.dense(rows, ch, 8 * ch);
    c.dense(rows, 4 * ch, ch);
  }
  if (linearProj) c.dense(rows, ch, ch);
  else c.conv2d(b, h, w, ch, ch, 1);
}

/**
 * One UNet2DConditionModel forward on `batch` latents of height×width (a CFG step counts its
 * doubled batch) with `contextLength` text tokens. Follows src/unet/unet.ts block for block.
 */
export function unetFlops(config: Partial<UNet2DConditionConfig>, o: { batch: number; height: number; width: number; contextLength: number }): FlopCount {
  const cfg = { ...UNET_DEFAULTS, ...config };
  const p = planUnet(cfg);
  const ch = p.channels, n = ch.length, b = o.batch, L = o.contextLength, D = p.crossAttentionDim;
  const c = new Counter();
  const temb = p.timeEmbedDim;
  // time embedding MLP (per sample), with LCM's cond_proj when present (its input is only given
  // for guidance-distilled models; counted as used).
  if (cfg.time_cond_proj_dim) c.dense(b, cfg.time_cond_proj_dim, ch[0]);
  c.dense(b, ch[0], temb);
  c.dense(b, temb, temb);
  let h = o.height, w = o.width;
  c.conv2d(b, h, w, cfg.in_channels, ch[0], cfg.conv_in_kernel);
  const sizes: [number, number][] = []; // resolution of each down level
  const skipCh: number[] = [ch[0]];
  for (let i = 0; i < n; i++) {
    sizes.push([h, w]);
    const cross = cfg.down_block_types[i] === 'CrossAttnDownBlock2D';
    for (let l = 0; l < p.layers[i]; l++) {
      resnet(c, b, h, w, l === 0 ? (i === 0 ? ch[0] : ch[i - 1]) : ch[i], ch[i], temb);
      if (cross) transformer(c, b, h, w, ch[i], p.transformerLayers[i], L, D, cfg.use_linear_projection, p.onlyCrossAttention[i]);
      skipCh.push(ch[i]);
    }
    if (i < n - 1) {
      const h2 = down2(h, cfg.downsample_padding), w2 = down2(w, cfg.downsample_padding);
      c.conv2d(b, h2, w2, ch[i], ch[i], 3);
      h = h2;
      w = w2;
      skipCh.push(ch[i]);
    }
  }
  if (cfg.mid_block_type !== null) {
    const top = ch[n - 1];
    resnet(c, b, h, w, top, top, temb);
    transformer(c, b, h, w, top, p.transformerLayers[n - 1], L, D, cfg.use_linear_projection, false);
    resnet(c, b, h, w, top, top, temb);
  }
  let prev = ch[n - 1];
  for (let i = 0; i < n; i++) {
    const j = n - 1 - i;
    const cross = cfg.up_block_types[i] === 'CrossAttnUpBlock2D';
    for (let l = 0; l < p.layers[j] + 1; l++) {
      const skip = skipCh.pop()!;
      resnet(c, b, h, w, prev + skip, ch[j], temb);
      prev = ch[j];
      if (cross) transformer(c, b, h, w, ch[j], p.transformerLayers[j], L, D, cfg.use_linear_projection, p.onlyCrossAttention[j]);
    }
    if (i < n - 1) {
      // nearest ×2 to the next skip level's size, then a 3×3 conv
      [h, w] = sizes[j - 1];
      c.conv2d(b, h, w, ch[j], ch[j], 3);
    }
  }
  c.conv2d(b, h, w, ch[0], cfg.out_channels, cfg.conv_out_kernel);
  return c.result();
}

/**
 * One AutoencoderKL decode of `batch` latents of height×width (latent pixels; the image is
 * 2^(levels−1) times larger): post_quant_conv, decoder conv_in, mid block (resnet, single-head
 * attention over every latent pixel, resnet), up blocks, conv_out.
 */
export function vaeDecodeFlops(cfg: AutoencoderKLConfig, o: { batch: number; height: number; width: number }): FlopCount {
  const c = new Counter();
  const b = o.batch, lc = cfg.latent_channels;
  let h = o.height, w = o.width;
  const rev = [...cfg.block_out_channels].reverse();
  if (cfg.use_post_quant_conv) c.conv2d(b, h, w, lc, lc, 1);
  c.conv2d(b, h, w, lc, rev[0], 3);
  resnet(c, b, h, w, rev[0], rev[0], null);
  if (cfg.mid_block_add_attention) {
    const rows = b * h * w, ch = rev[0];
    c.dense(rows, ch, 3 * ch); // to_q, to_k, to_v
    c.attn(b, h * w, h * w, ch);
    c.dense(rows, ch, ch); // to_out
  }
  resnet(c, b, h, w, rev[0], rev[0], null);
  rev.forEach((cout, i) => {
    for (let l = 0; l < cfg.layers_per_block + 1; l++) resnet(c, b, h, w, l === 0 ? (i === 0 ? rev[0] : rev[i - 1]) : cout, cout, null);
    if (i < rev.length - 1) {
      h *= 2;
      w *= 2;
      c.conv2d(b, h, w, cout, cout, 3);
    }
  });
  c.conv2d(b, h, w, rev[rev.length - 1], cfg.out_channels, 3);
  return c.result();
}

/**
 * One CLIP text-encoder forward on `batch` sequences of `length` tokens: per layer q, k, v, out
 * projections, the causal attention counted in full (as the kernels compute it), fc1 and fc2;
 * text_projection of the pooled vector when the architecture has one.
 */
export function textEncoderFlops(cfg: TextEncoderConfig, o: { batch: number; length: number }): FlopCount {
  const c = new Counter();
  const b = o.batch, L = o.length, d = cfg.hidden_size, rows = b * L;
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    c.dense(rows, d, 4 * d);
    c.attn(b, L, L, d);
    c.dense(rows, d, cfg.intermediate_size);
    c.dense(rows, cfg.intermediate_size, d);
  }
  if (cfg.architectures.includes('CLIPTextModelWithProjection')) c.dense(b, d, cfg.projection_dim);
  return c.result();
}

/**
 * src/eval/flops.ts: the analytic FLOP counts `npm run bench` divides by, against issue 17's
 * Stable Diffusion figures and against hand counts on tiny configs.
 */
import { describe, expect, it } from 'vitest';
import { VAE_DEFAULTS, VAE_PRESETS } from '../src/autoencoder/config.ts';
import { TEXT_ENCODER_DEFAULTS, TEXT_ENCODER_PRESETS } from '../src/clip/text_encoder.ts';
import { UNET_DEFAULTS, UNET_PRESETS } from '../src/unet/config.ts';
import { textEncoderFlops, unetFlops, vaeDecodeFlops } from '../src/eval/flops.ts';

const G = 1e9;
/** Within `rel` (relative) of `want`. */
const near = (got: number, want: number, rel = 0.01) => expect(Math.abs(got - want) / want).toBeLessThan(rel);

describe('FLOP counter at Stable Diffusion sizes (issue 17)', () => {
  it('SD 1.5 UNet step at CFG batch 2, 64×64 latents, 77 tokens: 1,606 GFLOP = conv 888 + linear 466 + attention 252', () => {
    const f = unetFlops(UNET_PRESETS.sd1, { batch: 2, height: 64, width: 64, contextLength: 77 });
    near(f.total, 1606 * G);
    near(f.conv, 888 * G);
    near(f.linear, 466 * G);
    near(f.attention, 252 * G);
    expect(f.total).toBe(f.conv + f.linear + f.attention);
    // Linear in the batch.
    expect(unetFlops(UNET_PRESETS.sd1, { batch: 1, height: 64, width: 64, contextLength: 77 }).total * 2).toBeCloseTo(f.total, -3);
  });

  it('SD VAE decode of 1×64×64×4: 2,514 GFLOP', () => {
    near(vaeDecodeFlops(VAE_PRESETS.sd1, { batch: 1, height: 64, width: 64 }).total, 2514 * G);
  });

  it('SD 1.5 text encoder (CLIP ViT-L/14 text, 77 tokens): ~13.3 GFLOP, no convs', () => {
    const f = textEncoderFlops(TEXT_ENCODER_PRESETS.sd1, { batch: 1, length: 77 });
    expect(f.conv).toBe(0);
    // 12 layers × 77 rows × 2 · (4·768² + 2·768·3072) + 12 × 4 · 77² · 768
    expect(f.total).toBe(12 * 77 * 2 * (4 * 768 * 768 + 2 * 768 * 3072) + 12 * 4 * 77 * 77 * 768);
  });
});

describe('FLOP counter on tiny configs (hand counts)', () => {
  it('UNet: one cross-attention level, no mid block', () => {
    const cfg = {
      ...UNET_DEFAULTS,
      down_block_types: ['CrossAttnDownBlock2D'],
      up_block_types: ['CrossAttnUpBlock2D'],
      mid_block_type: null,
      block_out_channels: [32],
      layers_per_block: 1,
      attention_head_dim: 2,
      norm_num_groups: 8,
      cross_attention_dim: 16,
    };
    const f = unetFlops(cfg, { batch: 1, height: 4, width: 4, contextLength: 3 });
    const px = 16; // 4×4 latents; temb width 4·32 = 128; text 3 × 16
    const conv3 = (cin: number, cout: number) => 2 * px * 9 * cin * cout;
    const conv1 = (cin: number, cout: number) => 2 * px * cin * cout;
    // conv_in; down resnet 32→32; two up resnets (32 + skip 32)→32 with 1×1 shortcuts; three
    // transformers' proj_in + proj_out; conv_out.
    const conv = conv3(4, 32) + 2 * conv3(32, 32) + 2 * (conv3(64, 32) + conv3(32, 32) + conv1(64, 32)) + 3 * 2 * conv1(32, 32) + conv3(32, 4);
    // time MLP 32→128→128; three resnets' time_emb_proj 128→32; per transformer: attn1 q,k,v,out
    // over 16 tokens, attn2 q and out over 16 tokens + k,v over 3 text tokens of width 16, GEGLU 32→256, 128→32.
    const perTransformer = 2 * px * 32 * 32 * 4 + 2 * px * 32 * 32 * 2 + 2 * 3 * 16 * 64 + 2 * px * 32 * 256 + 2 * px * 128 * 32;
    const linear = 2 * (32 * 128 + 128 * 128) + 3 * 2 * 128 * 32 + 3 * perTransformer;
    // QKᵀ and ·V: 16×16×32 (self) and 16×3×32 (cross), per transformer.
    const attention = 3 * (2 * 2 * 16 * 16 * 32 + 2 * 2 * 16 * 3 * 32);
    expect(f).toEqual({ conv, linear, attention, total: conv + linear + attention });
  });

  it('UNet: downsampling, a mid block and a plain level change the resolution the convs run at', () => {
    const cfg = {
      ...UNET_DEFAULTS,
      down_block_types: ['DownBlock2D', 'DownBlock2D'],
      up_block_types: ['UpBlock2D', 'UpBlock2D'],
      mid_block_type: null,
      block_out_channels: [8, 16],
      layers_per_block: 1,
      norm_num_groups: 8,
      cross_attention_dim: 8,
    };
    const f = unetFlops(cfg, { batch: 3, height: 8, width: 8, contextLength: 1 });
    const c3 = (px: number, cin: number, cout: number) => 2 * 3 * px * 9 * cin * cout;
    const c1 = (px: number, cin: number, cout: number) => 2 * 3 * px * cin * cout;
    // 8×8: conv_in, resnet 8→8, stride-2 conv to 4×4; 4×4: resnet 8→16 (shortcut);
    // up level 1 (4×4, skips 16, 8): resnets (16+16)→16, (16+8)→16; upsample conv at 8×8;
    // up level 0 (8×8, skips 8, 8): resnets (16+8)→8, (8+8)→8; conv_out.
    const conv =
      c3(64, 4, 8) + 2 * c3(64, 8, 8) + c3(16, 8, 8) +
      c3(16, 8, 16) + c3(16, 16, 16) + c1(16, 8, 16) +
      c3(16, 32, 16) + c3(16, 16, 16) + c1(16, 32, 16) + c3(16, 24, 16) + c3(16, 16, 16) + c1(16, 24, 16) +
      c3(64, 16, 16) +
      c3(64, 24, 8) + c3(64, 8, 8) + c1(64, 24, 8) + c3(64, 16, 8) + c3(64, 8, 8) + c1(64, 16, 8) +
      c3(64, 8, 4);
    // time MLP 8→32→32, six resnets' time_emb_proj 32→(8 or 16), per sample
    const linear = 2 * 3 * (8 * 32 + 32 * 32) + 2 * 3 * 32 * (8 + 16 + 16 + 16 + 8 + 8);
    expect(f).toEqual({ conv, linear, attention: 0, total: conv + linear });
  });

  it('VAE decoder: two levels, mid attention over the latent pixels', () => {
    const cfg = { ...VAE_DEFAULTS, down_block_types: Array(2).fill('DownEncoderBlock2D'), up_block_types: Array(2).fill('UpDecoderBlock2D'), block_out_channels: [8, 16], norm_num_groups: 8 };
    const f = vaeDecodeFlops(cfg, { batch: 1, height: 2, width: 2 });
    const c3 = (px: number, cin: number, cout: number) => 2 * px * 9 * cin * cout;
    // post_quant_conv 1×1 4→4 and conv_in 4→16 at 2×2; mid resnets 16→16 (two convs each);
    // level 0: two resnets 16→16, upsample conv at 4×4; level 1 at 4×4: resnet 16→8 (+1×1), resnet 8→8; conv_out 8→3.
    const conv = 2 * 4 * 4 * 4 + c3(4, 4, 16) + 4 * c3(4, 16, 16) + 4 * c3(4, 16, 16) + c3(16, 16, 16) +
      c3(16, 16, 8) + c3(16, 8, 8) + 2 * 16 * 16 * 8 + 2 * c3(16, 8, 8) + c3(16, 8, 3);
    const linear = 2 * 4 * 16 * 16 * 4; // to_q, to_k, to_v, to_out over 4 tokens
    const attention = 2 * 2 * 4 * 4 * 16;
    expect(f).toEqual({ conv, linear, attention, total: conv + linear + attention });
  });

  it('text encoder: two layers, with a text projection', () => {
    const cfg = { ...TEXT_ENCODER_DEFAULTS, architectures: ['CLIPTextModelWithProjection'], hidden_size: 8, intermediate_size: 32, num_hidden_layers: 2, num_attention_heads: 2, projection_dim: 4 };
    const f = textEncoderFlops(cfg, { batch: 2, length: 5 });
    const linear = 2 * (2 * 10 * 8 * 32 + 2 * 10 * 8 * 32 * 2) + 2 * 2 * 8 * 4;
    const attention = 2 * 2 * 2 * 2 * 5 * 5 * 8;
    expect(f).toEqual({ conv: 0, linear, attention, total: linear + attention });
  });
});

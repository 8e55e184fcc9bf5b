/**
 * A tiny SD-2-style model in both layouts, built from the sd1_tiny fixture's weights so the
 * fixture's upstream numbers still apply where the maths is unchanged:
 *
 *   <dir>/sd2_tiny.safetensors   LDM single file: model.diffusion_model.* with 2-D (linear)
 *                                proj_in/proj_out, first_stage_model.* as is, and the text encoder
 *                                in OpenCLIP layout (cond_stage_model.model.*: fused in_proj, ln_1,
 *                                mlp.c_fc, ..., text_projection, logit_scale) with ONE EXTRA random
 *                                resblock at the end, which SD 2 (penultimate layer) must drop
 *   <dir>/sd2_tiny.yaml          its yaml (v2-inference-v.yaml style: num_head_channels,
 *                                use_linear_in_transformer, FrozenOpenCLIPEmbedder penultimate, v)
 *   <dir>/model/                 the same weights as a diffusers directory (use_linear_projection,
 *                                per-block attention_head_dim [4, 8], gelu text encoder, tokenizer
 *                                padding with "!", v_prediction scheduler)
 *
 * Heads: 8 channels per head gives [4, 8] heads per level; the tiny UNet attends only at level 1
 * and the mid block (8 heads, as the fixture's attention_head_dim 8).
 */
import fs from 'node:fs';
import path from 'node:path';
import { readSafetensors, writeSafetensors } from '../../src/io/safetensors.ts';
import { Random } from '../../src/util/random.ts';

export const SD1_TINY = path.resolve(import.meta.dirname, '../../../shared/fixtures/sd1_tiny');

type T = { shape: number[]; data: Float32Array };

/** transformers CLIPTextModel weights → OpenCLIP text names (cond_stage_model.model.*), q/k/v fused. */
export function toOpenClip(te: Map<string, T>, prefix = 'cond_stage_model.model.'): Map<string, T> {
  const out = new Map<string, T>();
  const simple: Record<string, string> = {
    'text_model.embeddings.token_embedding.weight': 'token_embedding.weight',
    'text_model.embeddings.position_embedding.weight': 'positional_embedding',
    'text_model.final_layer_norm.weight': 'ln_final.weight',
    'text_model.final_layer_norm.bias': 'ln_final.bias',
  };
  const block: Array<[string, string]> = [
    ['layer_norm1.', 'ln_1.'],
    ['layer_norm2.', 'ln_2.'],
    ['self_attn.out_proj.', 'attn.out_proj.'],
    ['mlp.fc1.', 'mlp.c_fc.'],
    ['mlp.fc2.', 'mlp.c_proj.'],
  ];
  for (const [name, t] of te) {
    if (simple[name]) {
      out.set(prefix + simple[name], t);
      continue;
    }
    const m = /^text_model\.encoder\.layers\.(\d+)\.(.+)$/.exec(name);
    if (!m) continue; // position_ids
    const rb = `${prefix}transformer.resblocks.${m[1]}.`;
    const qkv = /^self_attn\.q_proj\.(weight|bias)$/.exec(m[2]);
    if (qkv) {
      const parts = ['q_proj', 'k_proj', 'v_proj'].map((p) => te.get(`text_model.encoder.layers.${m[1]}.self_attn.${p}.${qkv[1]}`)!);
      const data = new Float32Array(parts.reduce((n, p) => n + p.data.length, 0));
      let o = 0;
      for (const p of parts) {
        data.set(p.data, o);
        o += p.data.length;
      }
      out.set(`${rb}attn.in_proj_${qkv[1]}`, { shape: [3 * parts[0].shape[0], ...parts[0].shape.slice(1)], data });
      continue;
    }
    if (/^self_attn\.[kv]_proj\./.test(m[2])) continue;
    const hit = block.find(([from]) => m[2].startsWith(from));
    if (!hit) throw new Error(`toOpenClip: unexpected ${name}`);
    out.set(rb + hit[1] + m[2].slice(hit[0].length), t);
  }
  return out;
}

/** One more resblock (index n) with random weights of the same shapes as block 0. */
export function addRandomResblock(oc: Map<string, T>, seed = 5, prefix = 'cond_stage_model.model.'): number {
  let n = 0;
  for (const k of oc.keys()) {
    const m = /transformer\.resblocks\.(\d+)\./.exec(k);
    if (m) n = Math.max(n, Number(m[1]) + 1);
  }
  const rng = new Random(seed);
  for (const [k, t] of [...oc]) {
    if (!k.startsWith(`${prefix}transformer.resblocks.0.`)) continue;
    const data = new Float32Array(t.data.length);
    for (let i = 0; i < data.length; i++) data[i] = rng.normal() * 0.5;
    oc.set(k.replace('resblocks.0.', `resblocks.${n}.`), { shape: t.shape, data });
  }
  return n;
}

export const SD2_TINY_YAML = `model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    linear_start: 0.00085
    linear_end: 0.012
    timesteps: 1000
    scale_factor: 0.18215
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        in_channels: 4
        out_channels: 4
        model_channels: 32
        attention_resolutions: [ 2 ]
        num_res_blocks: 2
        channel_mult: [ 1, 2 ]
        num_head_channels: 8
        use_spatial_transformer: True
        use_linear_in_transformer: True
        transformer_depth: 1
        context_dim: 32
        legacy: False
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 16
          in_channels: 3
          out_ch: 3
          ch: 32
          ch_mult: [ 1, 2 ]
          num_res_blocks: 1
          attn_resolutions: []
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
      params:
        freeze: True
        layer: "penultimate"
`;

/** The fixture's text encoder config with OpenCLIP's exact gelu. */
export function sd2TinyTextEncoderConfig(): Record<string, unknown> {
  const cfg = JSON.parse(fs.readFileSync(path.join(SD1_TINY, 'model/text_encoder/config.json'), 'utf8'));
  return { ...cfg, hidden_act: 'gelu' };
}

/** Writes the single file, its yaml and the diffusers directory into `dir` (see the file header). */
export function writeSd2Tiny(dir: string): { file: string; yaml: string; model: string; teConfig: string } {
  const ldm = readSafetensors(path.join(SD1_TINY, 'ldm/sd1_tiny.safetensors'));
  const out = new Map<string, T>();
  for (const [k, t] of ldm) {
    if (k.startsWith('cond_stage_model.')) continue;
    // SD 2.x transformers project with nn.Linear: [out, in] instead of a 1×1 conv's [out, in, 1, 1].
    const linear = k.startsWith('model.diffusion_model.') && /\.proj_(in|out)\.weight$/.test(k);
    out.set(k, linear ? { shape: t.shape.slice(0, 2), data: t.data } : { shape: t.shape, data: t.data });
  }
  const te = readSafetensors(path.join(SD1_TINY, 'model/text_encoder/model.safetensors'));
  const oc = toOpenClip(te);
  addRandomResblock(oc);
  const d = te.get('text_model.final_layer_norm.weight')!.shape[0];
  oc.set('cond_stage_model.model.text_projection', { shape: [d, d], data: new Float32Array(d * d).fill(0.25) });
  oc.set('cond_stage_model.model.logit_scale', { shape: [], data: new Float32Array([4.6]) });
  for (const [k, t] of oc) out.set(k, t);
  const file = path.join(dir, 'sd2_tiny.safetensors');
  writeSafetensors(file, out);
  const yaml = path.join(dir, 'sd2_tiny.yaml');
  fs.writeFileSync(yaml, SD2_TINY_YAML);

  // The diffusers directory.
  const model = path.join(dir, 'model');
  for (const sub of ['unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler']) fs.mkdirSync(path.join(model, sub), { recursive: true });
  const src = (p: string) => path.join(SD1_TINY, 'model', p);
  fs.copyFileSync(src('vae/config.json'), path.join(model, 'vae/config.json'));
  fs.copyFileSync(src('vae/diffusion_pytorch_model.safetensors'), path.join(model, 'vae/diffusion_pytorch_model.safetensors'));
  fs.copyFileSync(src('text_encoder/model.safetensors'), path.join(model, 'text_encoder/model.safetensors'));
  const teConfig = path.join(model, 'text_encoder/config.json');
  fs.writeFileSync(teConfig, JSON.stringify(sd2TinyTextEncoderConfig(), null, 2));
  for (const f of ['vocab.json', 'merges.txt']) fs.copyFileSync(src(`tokenizer/${f}`), path.join(model, 'tokenizer', f));
  // stabilityai/stable-diffusion-2-1's tokenizer pads with "!" (id 0), not <|endoftext|>.
  const tokCfg = JSON.parse(fs.readFileSync(src('tokenizer/tokenizer_config.json'), 'utf8'));
  fs.writeFileSync(path.join(model, 'tokenizer/tokenizer_config.json'), JSON.stringify({ ...tokCfg, pad_token: '!' }));
  const map = JSON.parse(fs.readFileSync(src('tokenizer/special_tokens_map.json'), 'utf8'));
  fs.writeFileSync(path.join(model, 'tokenizer/special_tokens_map.json'), JSON.stringify({ ...map, pad_token: '!' }));
  const unetCfg = JSON.parse(fs.readFileSync(src('unet/config.json'), 'utf8'));
  fs.writeFileSync(path.join(model, 'unet/config.json'), JSON.stringify({ ...unetCfg, use_linear_projection: true, attention_head_dim: [4, 8], upcast_attention: true }));
  const unetW = readSafetensors(src('unet/diffusion_pytorch_model.safetensors'));
  for (const [k, t] of unetW) if (/\.proj_(in|out)\.weight$/.test(k)) unetW.set(k, { ...t, shape: t.shape.slice(0, 2) });
  writeSafetensors(path.join(model, 'unet/diffusion_pytorch_model.safetensors'), unetW);
  const sched = JSON.parse(fs.readFileSync(src('scheduler/scheduler_config.json'), 'utf8'));
  fs.writeFileSync(path.join(model, 'scheduler/scheduler_config.json'), JSON.stringify({ ...sched, prediction_type: 'v_prediction' }));
  return { file, yaml, model, teConfig };
}

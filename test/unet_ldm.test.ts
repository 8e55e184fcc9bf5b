/**
 * LDM (CompVis) single-file import: ../shared/fixtures/sd1_tiny/ldm/sd1_tiny.safetensors holds the
 * same weights as model/{unet,vae,text_encoder} (manifest files.ldm_checkpoint: bit-identical
 * after diffusers' convert_from_ckpt), so every converted tensor must match exactly.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  LDM_SD1_ARCHITECTURE,
  LdmCheckpoint,
  ldmUnetKey,
  planLdmConversion,
  readLdmYaml,
  unetConfigFromLdm,
  vaeConfigFromLdm,
} from '../src/sample/load_single_file.ts';
import { readSafetensors } from '../src/io/safetensors.ts';
import { UNET_PRESETS, UNet2DConditionModel, readUnetConfig } from '../src/unet/index.ts';
import { AutoencoderKL, VAE_PRESETS, readVaeConfig } from '../src/autoencoder/index.ts';
import { skipInit } from '../src/nn/index.ts';
import { UsageError } from '../src/util/errors.ts';

const FIXTURE = path.resolve(import.meta.dirname, '../../shared/fixtures/sd1_tiny');
const LDM_FILE = path.join(FIXTURE, 'ldm/sd1_tiny.safetensors');
const LDM_YAML = path.join(FIXTURE, 'ldm/sd1_tiny.yaml');
const manifest = JSON.parse(fs.readFileSync(path.join(FIXTURE, 'manifest.json'), 'utf8').replace(/(?<=[:[,]\s*)(-?Infinity|NaN)/g, 'null'));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-ldm-'));
let ckpt: LdmCheckpoint;

beforeAll(async () => {
  await tf.setBackend('cpu');
  // The fixture was converted with image_size 16 (its VAE's sample_size).
  ckpt = LdmCheckpoint.open(LDM_FILE, { yaml: LDM_YAML, imageSize: 16 });
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const COMPONENTS = [
  ['unet', 'model/unet/diffusion_pytorch_model.safetensors'],
  ['vae', 'model/vae/diffusion_pytorch_model.safetensors'],
  ['textEncoder', 'model/text_encoder/model.safetensors'],
] as const;

describe('LDM checkpoint → diffusers (sd1_tiny fixture)', () => {
  it('converts every tensor bit-identically to the diffusers files', () => {
    let total = 0;
    for (const [component, file] of COMPONENTS) {
      const want = readSafetensors(path.join(FIXTURE, file));
      const got = ckpt.stateDict(component);
      expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
      for (const [name, w] of want) {
        const g = got.get(name)!;
        expect(g.shape, name).toEqual(w.shape);
        expect(g.dtype, name).toBe(w.dtype);
        // Compare bit patterns (F16 values upcast exactly; Object.is would also do for NaN/−0).
        expect(Buffer.from(new Uint32Array(g.data.buffer, g.data.byteOffset, g.data.length).buffer).equals(
          Buffer.from(new Uint32Array(w.data.buffer, w.data.byteOffset, w.data.length).buffer),
        ), name).toBe(true);
      }
      total += want.size;
    }
    expect(total).toBe(manifest.files.ldm_checkpoint.n_tensors);
    expect(ckpt.conversion.skipped).toEqual([]);
    expect(ckpt.textEncoderShape()).toEqual({ vocab_size: 49408, hidden_size: 32, max_position_embeddings: 77, intermediate_size: 37, num_hidden_layers: 5 });
  });

  it('derives the diffusers configs from the yaml', () => {
    expect(ckpt.unetConfig).toEqual(readUnetConfig(path.join(FIXTURE, 'model/unet/config.json')));
    expect(ckpt.vaeConfig).toEqual(readVaeConfig(path.join(FIXTURE, 'model/vae/config.json')));
  });

  it('loadUnet / loadVae give the same parameters as the diffusers directories', () => {
    const pairs: Array<[UNet2DConditionModel | AutoencoderKL, UNet2DConditionModel | AutoencoderKL]> = [
      [ckpt.loadUnet(), UNet2DConditionModel.fromPretrained(path.join(FIXTURE, 'model/unet'))],
      [ckpt.loadVae(), AutoencoderKL.fromPretrained(path.join(FIXTURE, 'model/vae'))],
    ];
    for (const [a, b] of pairs) {
      const pb = new Map(b.namedParameters());
      for (const [name, p] of a.namedParameters()) {
        expect(tf.tidy(() => tf.max(tf.abs(tf.sub(p.variable, pb.get(name)!.variable))).dataSync()[0]), name).toBe(0);
      }
      a.dispose();
      b.dispose();
    }
  });

  it('weights that do not fit the yaml are reported by name and shape', () => {
    const yaml = fs.readFileSync(LDM_YAML, 'utf8').replace('context_dim: 32', 'context_dim: 48');
    expect(yaml).toContain('context_dim: 48');
    const f = path.join(dir, 'wrong.yaml');
    fs.writeFileSync(f, yaml);
    const wrong = LdmCheckpoint.open(LDM_FILE, { yaml: f, imageSize: 16 });
    expect(() => wrong.loadUnet()).toThrow(
      /sd1_tiny\.safetensors \(unet\): weights do not fit the model — 12 with wrong shape: down_blocks\.1\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k\.weight \[64,32\] vs model \[64,48\]/,
    );
  });
});

describe('LDM key conversion and architectures', () => {
  it('SD 1.x defaults (v1-inference.yaml) give the SD 1.x presets', () => {
    expect(unetConfigFromLdm(LDM_SD1_ARCHITECTURE)).toEqual(UNET_PRESETS.sd1);
    expect(vaeConfigFromLdm(LDM_SD1_ARCHITECTURE)).toEqual(VAE_PRESETS.sd1);
  });

  it('an SD 2.x 768-v yaml gives the SD 2.x preset (64-channel heads, linear projections)', () => {
    const f = path.join(dir, 'v2-inference-v.yaml');
    fs.writeFileSync(
      f,
      `model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    scale_factor: 0.18215
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        use_checkpoint: True
        image_size: 32 # unused
        in_channels: 4
        out_channels: 4
        model_channels: 320
        attention_resolutions: [ 4, 2, 1 ]
        num_res_blocks: 2
        channel_mult: [ 1, 2, 4, 4 ]
        num_head_channels: 64 # need to fix for flash-attn
        use_spatial_transformer: True
        use_linear_in_transformer: True
        transformer_depth: 1
        context_dim: 1024
        legacy: False
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 256
          in_channels: 3
          out_ch: 3
          ch: 128
          ch_mult: [1, 2, 4, 4]
          num_res_blocks: 2
          attn_resolutions: []
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
`,
    );
    const arch = readLdmYaml(f);
    // diffusers sets upcast_attention from a command-line flag, not the yaml.
    expect({ ...unetConfigFromLdm(arch), upcast_attention: true }).toEqual(UNET_PRESETS.sd2);
    expect(vaeConfigFromLdm(arch).sample_size).toBe(768);
    // An SD 2.x yaml for the SD 1.x fixture file: the family mismatch is one line.
    expect(() => LdmCheckpoint.open(LDM_FILE, { yaml: f })).toThrow(/an SD 2\.x config \(cond_stage_config ldm\.modules\.encoders\.modules\.FrozenOpenCLIPEmbedder\) but .* holds SD 1\.x weights/);
  });

  it('every SD 1.x UNet name survives diffusers → LDM (the reverse script’s tables) → diffusers', () => {
    // diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py layout, written as tables.
    const layer: Array<[string, string]> = [];
    for (let i = 0; i < 4; i++) {
      for (let j = 0; j < 2; j++) {
        layer.push([`down_blocks.${i}.resnets.${j}.`, `input_blocks.${3 * i + j + 1}.0.`]);
        if (i < 3) layer.push([`down_blocks.${i}.attentions.${j}.`, `input_blocks.${3 * i + j + 1}.1.`]);
      }
      for (let j = 0; j < 3; j++) {
        layer.push([`up_blocks.${i}.resnets.${j}.`, `output_blocks.${3 * i + j}.0.`]);
        if (i > 0) layer.push([`up_blocks.${i}.attentions.${j}.`, `output_blocks.${3 * i + j}.1.`]);
      }
      if (i < 3) {
        layer.push([`down_blocks.${i}.downsamplers.0.conv.`, `input_blocks.${3 * (i + 1)}.0.op.`]);
        layer.push([`up_blocks.${i}.upsamplers.0.`, `output_blocks.${3 * i + 2}.${i === 0 ? 1 : 2}.`]);
      }
    }
    layer.push(['mid_block.attentions.0.', 'middle_block.1.'], ['mid_block.resnets.0.', 'middle_block.0.'], ['mid_block.resnets.1.', 'middle_block.2.']);
    layer.push(['time_embedding.linear_1.', 'time_embed.0.'], ['time_embedding.linear_2.', 'time_embed.2.'], ['conv_in.', 'input_blocks.0.0.'], ['conv_norm_out.', 'out.0.'], ['conv_out.', 'out.2.']);
    const resnet: Array<[string, string]> = [['norm1', 'in_layers.0'], ['conv1', 'in_layers.2'], ['norm2', 'out_layers.0'], ['conv2', 'out_layers.3'], ['time_emb_proj', 'emb_layers.1'], ['conv_shortcut', 'skip_connection']];
    const toLdm = (name: string) => {
      const [hf, sd] = layer.find(([p]) => name.startsWith(p))!;
      let rest = name.slice(hf.length);
      if (hf.includes('resnets')) for (const [h, s] of resnet) rest = rest.replace(`${h}.`, `${s}.`);
      return sd + rest;
    };
    const sd1 = skipInit(() => new UNet2DConditionModel({ ...UNET_PRESETS.sd1, block_out_channels: [32, 64, 128, 128], cross_attention_dim: 8 }));
    const names = sd1.namedParameters().map(([n]) => n);
    sd1.dispose();
    const ldm = names.map(toLdm);
    expect(ldm).toContain('output_blocks.2.1.conv.weight'); // UpBlock2D's upsampler sits at index 1
    expect(ldm).toContain('output_blocks.5.2.conv.weight');
    expect(ldm).toContain('input_blocks.9.0.op.bias');
    expect(ldm).toContain('output_blocks.11.1.transformer_blocks.0.ff.net.2.weight');
    expect(ldm.map((k) => ldmUnetKey(k, 2))).toEqual(names);
    // Position-dependent keys that belong to nothing are refused.
    expect(ldmUnetKey('input_blocks.3.1.norm.weight', 2)).toBeNull(); // a downsampler level has no transformer
    expect(ldmUnetKey('output_blocks.1.1.conv.weight', 2)).toBeNull(); // only the level's last layer upsamples
  });

  it('non-weights are skipped; foreign keys and unsupported models are clear errors', () => {
    const opts = { layersPerBlock: 2, vaeLevels: 4, source: 'x.safetensors' };
    const plan = planLdmConversion(
      ['betas', 'alphas_cumprod', 'model_ema.decay', 'model_ema.diffusion_modelinput_blocks00weight', 'first_stage_model.loss.logvar',
        'cond_stage_model.transformer.text_model.embeddings.position_ids', 'cond_stage_model.transformer.embeddings.token_embedding.weight',
        'model.diffusion_model.out.2.bias', 'first_stage_model.decoder.up.3.upsample.conv.weight'],
      opts,
    );
    expect(plan.skipped).toHaveLength(6);
    expect([...plan.textEncoder.keys()]).toEqual(['text_model.embeddings.token_embedding.weight']); // old transformers layout
    expect([...plan.unet.keys()]).toEqual(['conv_out.bias']);
    expect([...plan.vae.keys()]).toEqual(['decoder.up_blocks.0.upsamplers.0.conv.weight']);
    expect(() => planLdmConversion(['model.diffusion_model.label_emb.0.0.weight', 'lora_unet_x.alpha'], opts)).toThrow(
      /x\.safetensors: 2 keys that are not SD 1\.x\/2\.x UNet, VAE or CLIP weights: model\.diffusion_model\.label_emb\.0\.0\.weight, lora_unet_x\.alpha/,
    );
    // SD 2 reads the penultimate OpenCLIP block: a file with one block has none to read.
    expect(() => planLdmConversion(['cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight'], { ...opts, openClipLayers: 0 })).toThrow(/would keep no resblock/);
    expect(() => planLdmConversion(['cond_stage_model.model.ln_final.weight', 'cond_stage_model.transformer.text_model.final_layer_norm.weight'], opts)).toThrow(/two text encoders/);
    expect(() => planLdmConversion(['conditioner.embedders.0.transformer.text_model.final_layer_norm.bias'], opts)).toThrow(/SDXL/);
    expect(() => LdmCheckpoint.open(path.join(dir, 'sd.ckpt'))).toThrow(UsageError);
    expect(() => LdmCheckpoint.open(LDM_FILE, { yaml: path.join(dir, 'missing.yaml') })).toThrow(/cannot read LDM config \(ENOENT\)/);
    // Without a yaml the SD 1.x architecture is assumed; the tiny weights then do not fit.
    expect(() => LdmCheckpoint.open(LDM_FILE).loadVae()).toThrow(/weights do not fit the model/);
  });
});

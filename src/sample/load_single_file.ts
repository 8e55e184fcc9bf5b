/**
 * Single-file Stable Diffusion checkpoints in the original CompVis/LDM layout → diffusers names
 * and models (the loader behind loadLdmPipeline in load.ts), as diffusers v0.24's
 * convert_from_ckpt does (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
 * convert_ldm_clip_checkpoint, create_unet_diffusers_config, create_vae_diffusers_config).
 * Like diffusers, sdlab keeps this converter beside the pipeline loaders: it builds the models.
 *
 *   model.diffusion_model.*            → UNet   (input_blocks/middle_block/output_blocks → down/mid/up_blocks)
 *   first_stage_model.*                → VAE    (encoder.down.i.block.j → encoder.down_blocks.i.resnets.j ...)
 *   cond_stage_model.transformer.*     → CLIP text encoder (SD 1.x; already transformers names: prefix stripped)
 *   cond_stage_model.model.*           → OpenCLIP text encoder (SD 2.x; convert_open_clip_checkpoint): fused
 *                                        attn.in_proj_{weight,bias} split into q/k/v rows, resblocks.N →
 *                                        encoder.layers.N, ln_final → final_layer_norm; blocks SD 2 does
 *                                        not read are skipped (it reads the penultimate: openClipLayers)
 *
 * The architecture comes from the checkpoint's yaml (e.g. v1-inference.yaml: model.params.
 * unet_config / first_stage_config / scale_factor) or, without one, from the family the tensors
 * show (detectLdmFamily: SD 1.x → v1-inference.yaml, SD 2.x → v2-inference-v.yaml, as diffusers
 * picks); a yaml of the other family is refused.
 * Tensors are read lazily, one at a time, so a 4 GB checkpoint loads with little extra memory.
 *
 *   const ckpt = LdmCheckpoint.open('sd-v1-5.safetensors', { yaml: 'v1-inference.yaml' });
 *   const unet = ckpt.loadUnet();                 // UNet2DConditionModel (config from the yaml)
 *   const vae = ckpt.loadVae();                   // AutoencoderKL
 *   const clip = ckpt.stateDict('textEncoder');   // transformers CLIPTextModel names
 *   ckpt.loadInto(textEncoder, 'textEncoder');
 *
 * Skipped on purpose (listed in `ckpt.skipped`): the training schedule buffers (betas,
 * alphas_cumprod, ... — the scheduler recomputes them), the EMA copy `model_ema.*` (diffusers'
 * default extract_ema=False reads the regular weights too), the VAE's training loss
 * `first_stage_model.loss.*`, CLIP's `position_ids`, OpenCLIP's `text_projection` / `logit_scale`
 * (SD 2 uses neither) and its last resblock. Not supported: SDXL (`conditioner.*`). PyTorch `.ckpt`
 * files are read by io/ckpt.ts's restricted unpickler (tensor state dicts only; nothing in the file is run).
 */
import fs from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { type Module, type StateDict, type TensorData, assignPlanned, buildChecked, planLoad } from '../nn/module.ts';
import { type TensorFile, openTensorFile } from '../io/ckpt.ts';
import { UNET_DEFAULTS, type UNet2DConditionConfig, UNet2DConditionModel, validateUnetConfig } from '../unet/index.ts';
import { type AutoencoderKLConfig, AutoencoderKL, VAE_DEFAULTS, validateVaeConfig } from '../autoencoder/index.ts';
import { TEXT_ENCODER_PRESETS } from '../clip/text_encoder.ts';
import { UsageError } from '../util/errors.ts';
import { checkRegularFile } from '../util/fs.ts';

// ---------------------------------------------------------------------------------------------
// Architecture (the yaml's fields that decide names and shapes)

/** `model.params.unet_config.params` of an LDM yaml (ldm.modules.diffusionmodules.openaimodel.UNetModel). */
export interface LdmUnetParams {
  in_channels: number;
  out_channels: number;
  model_channels: number;
  channel_mult: number[];
  attention_resolutions: number[];
  num_res_blocks: number;
  /** Heads per transformer (SD 1.x: 8); -1 or absent when num_head_channels is given. */
  num_heads?: number;
  /** Channels per head (SD 2.x: 64). */
  num_head_channels?: number;
  context_dim: number;
  transformer_depth?: number | number[];
  use_linear_in_transformer?: boolean;
  use_spatial_transformer?: boolean;
  [key: string]: unknown;
}

/** `model.params.first_stage_config.params` (ldm.models.autoencoder.AutoencoderKL). */
export interface LdmVaeParams {
  embed_dim: number;
  ddconfig: {
    double_z?: boolean;
    z_channels: number;
    resolution?: number;
    in_channels: number;
    out_ch: number;
    ch: number;
    ch_mult: number[];
    num_res_blocks: number;
    attn_resolutions?: number[];
    [key: string]: unknown;
  };
}

export interface LdmArchitecture {
  unet: LdmUnetParams;
  vae: LdmVaeParams;
  /** Latent scaling (model.params.scale_factor, SD: 0.18215). */
  scaleFactor: number;
  /** 'eps' (SD 1.x, 2.x-base) or 'v' (SD 2.x 768-v). */
  parameterization: string;
  /** cond_stage_config.target, e.g. ldm.modules.encoders.modules.FrozenCLIPEmbedder. */
  condStageTarget: string | null;
  /**
   * FrozenOpenCLIPEmbedder's cond_stage_config.params.layer: "penultimate" (SD 2.x: the last
   * resblock is dropped, as diffusers does) or "last" (all of them); null when the yaml does not
   * say (diffusers then drops the last one too).
   */
  condStageLayer?: string | null;
}

/** Stable Diffusion 1.x (v1-inference.yaml), used when no yaml is given. */
export const LDM_SD1_ARCHITECTURE: LdmArchitecture = {
  unet: {
    in_channels: 4,
    out_channels: 4,
    model_channels: 320,
    attention_resolutions: [4, 2, 1],
    num_res_blocks: 2,
    channel_mult: [1, 2, 4, 4],
    num_heads: 8,
    use_spatial_transformer: true,
    transformer_depth: 1,
    context_dim: 768,
  },
  vae: {
    embed_dim: 4,
    ddconfig: { double_z: true, z_channels: 4, resolution: 256, in_channels: 3, out_ch: 3, ch: 128, ch_mult: [1, 2, 4, 4], num_res_blocks: 2, attn_resolutions: [] },
  },
  scaleFactor: 0.18215,
  parameterization: 'eps',
  condStageTarget: 'ldm.modules.encoders.modules.FrozenCLIPEmbedder',
};

/**
 * Stable Diffusion 2.x 768-v (v2-inference-v.yaml): what diffusers assumes for a file without a
 * yaml whose tensors are SD 2.x. 64 channels per head, linear transformer projections, a
 * 1024-wide OpenCLIP context, v-prediction.
 */
export const LDM_SD2_ARCHITECTURE: LdmArchitecture = {
  unet: {
    in_channels: 4,
    out_channels: 4,
    model_channels: 320,
    attention_resolutions: [4, 2, 1],
    num_res_blocks: 2,
    channel_mult: [1, 2, 4, 4],
    num_head_channels: 64,
    use_spatial_transformer: true,
    use_linear_in_transformer: true,
    transformer_depth: 1,
    context_dim: 1024,
  },
  vae: LDM_SD1_ARCHITECTURE.vae,
  scaleFactor: 0.18215,
  parameterization: 'v',
  condStageTarget: 'ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder',
  condStageLayer: 'penultimate',
};

/** Stable Diffusion 2.x 512-base (v2-inference.yaml): LDM_SD2_ARCHITECTURE with epsilon prediction. */
export const LDM_SD2_BASE_ARCHITECTURE: LdmArchitecture = { ...LDM_SD2_ARCHITECTURE, parameterization: 'eps' };

/** Reads the architecture from an LDM yaml (v1-inference.yaml and its relatives). */
export function readLdmYaml(file: string): LdmArchitecture {
  checkRegularFile(file, 'an LDM yaml config');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`${file}: cannot read LDM config (${(err as NodeJS.ErrnoException).code ?? String(err)}).`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new UsageError(`${file}: not valid YAML (${(err as Error).message.split('\n')[0]}).`);
  }
  const get = (pathStr: string, required = true): unknown => {
    let cur: unknown = doc;
    for (const k of pathStr.split('.')) {
      if (typeof cur !== 'object' || cur === null || !(k in cur)) {
        if (required) throw new UsageError(`${file}: missing ${pathStr} (expected an LDM/Stable Diffusion model config).`);
        return undefined;
      }
      cur = (cur as Record<string, unknown>)[k];
    }
    return cur;
  };
  const unet = get('model.params.unet_config.params') as LdmUnetParams;
  const vae = get('model.params.first_stage_config.params') as LdmVaeParams;
  for (const k of ['in_channels', 'out_channels', 'model_channels', 'channel_mult', 'attention_resolutions', 'num_res_blocks', 'context_dim']) {
    get(`model.params.unet_config.params.${k}`);
  }
  for (const k of ['ch', 'ch_mult', 'num_res_blocks', 'z_channels', 'in_channels', 'out_ch']) get(`model.params.first_stage_config.params.ddconfig.${k}`);
  get('model.params.first_stage_config.params.embed_dim');
  const target = get('model.params.cond_stage_config.target', false);
  const layer = get('model.params.cond_stage_config.params.layer', false);
  if (layer !== undefined && layer !== 'penultimate' && layer !== 'last') {
    throw new UsageError(`${file}: cond_stage_config.params.layer ${JSON.stringify(layer)} is not supported (expected "penultimate" or "last").`);
  }
  return {
    unet,
    vae,
    scaleFactor: (get('model.params.scale_factor', false) as number | undefined) ?? 0.18215,
    parameterization: (get('model.params.parameterization', false) as string | undefined) ?? 'eps',
    condStageTarget: typeof target === 'string' ? target : null,
    condStageLayer: layer ?? null,
  };
}

// ---------------------------------------------------------------------------------------------
// Family (SD 1.x or 2.x)

export type SdFamily = 'sd1' | 'sd2';

/** What a yaml's cond_stage_config.target says about the family (null: nothing). */
export function ldmYamlFamily(arch: LdmArchitecture): SdFamily | null {
  const t = arch.condStageTarget ?? '';
  if (/FrozenOpenCLIPEmbedder$/.test(t)) return 'sd2';
  if (/FrozenCLIPEmbedder$/.test(t)) return 'sd1';
  return null;
}

/**
 * SD 1.x or 2.x from an LDM file's tensors: its text encoder's layout (OpenCLIP
 * `cond_stage_model.model.*` is SD 2.x, CLIP `cond_stage_model.transformer.*` SD 1.x), else —
 * diffusers' rule — the width of the UNet's cross-attention keys (attn2.to_k: 1024 for SD 2.x,
 * 768 for SD 1.x). family null: the tensors do not tell. `reason` says what decided it.
 */
export function detectLdmFamily(names: Iterable<string>, shapeOf: (key: string) => number[] | undefined): { family: SdFamily | null; reason: string } {
  let toK: string | undefined;
  for (const k of names) {
    if (k.startsWith(OPENCLIP_PREFIX)) return { family: 'sd2', reason: `an OpenCLIP text encoder (${OPENCLIP_PREFIX}*)` };
    if (k.startsWith(LDM_PREFIX.textEncoder)) return { family: 'sd1', reason: `a CLIP text encoder (${LDM_PREFIX.textEncoder}*)` };
    if (toK === undefined && k.startsWith(LDM_PREFIX.unet) && k.endsWith('.attn2.to_k.weight')) toK = k;
  }
  const width = toK === undefined ? undefined : shapeOf(toK)?.at(-1);
  if (width === 1024) return { family: 'sd2', reason: `1024-wide text context (${toK})` };
  if (width === 768) return { family: 'sd1', reason: `768-wide text context (${toK})` };
  return { family: null, reason: 'no text encoder and no 768/1024-wide cross-attention' };
}

const FAMILY_NAME: Record<SdFamily, string> = { sd1: 'SD 1.x', sd2: 'SD 2.x' };

/**
 * How many of an OpenCLIP file's resblocks the text encoder keeps (undefined: the file has none).
 * SD 2 reads the penultimate block's output. diffusers' converter loads the file into its SD 2
 * text encoder config (23 layers) and ignores `resblocks.23`: a 24-block original keeps 23, and
 * so does a 23-block file written back from diffusers. sdlab does the same for ViT-H (1024
 * wide); other widths keep all but the last block (the LDM meaning of "penultimate"), and a yaml
 * with `layer: "last"` keeps every block. A text-encoder config's num_hidden_layers, when
 * given, decides.
 */
export function openClipLayers(
  names: Iterable<string>,
  shapeOf: (key: string) => number[] | undefined,
  arch: Pick<LdmArchitecture, 'condStageLayer'>,
  configLayers?: number,
  source = 'LDM checkpoint',
): number | undefined {
  let blocks = 0;
  for (const k of names) {
    const m = /^cond_stage_model\.model\.transformer\.resblocks\.(\d+)\./.exec(k);
    if (m) blocks = Math.max(blocks, Number(m[1]) + 1);
  }
  if (blocks === 0) return undefined;
  if (configLayers !== undefined) {
    // The file holds the config's layers, plus the last block when it is an original (penultimate).
    if (blocks > configLayers + 1) {
      throw new UsageError(`${source}: its OpenCLIP text encoder has ${blocks} resblocks but the text encoder config has num_hidden_layers ${configLayers} (expected ${configLayers} or ${configLayers + 1}).`);
    }
    return configLayers;
  }
  if (arch.condStageLayer === 'last') return blocks;
  const sd2 = TEXT_ENCODER_PRESETS.sd2;
  if (shapeOf(`${OPENCLIP_PREFIX}token_embedding.weight`)?.[1] === sd2.hidden_size) return Math.min(blocks, sd2.num_hidden_layers);
  return blocks - 1;
}

/** Default image size diffusers assumes: 768 for v-prediction (SD 2.x 768-v), else 512. */
export function defaultLdmImageSize(arch: LdmArchitecture): number {
  return arch.parameterization === 'v' ? 768 : 512;
}

/** diffusers' create_unet_diffusers_config. `imageSize` in pixels (sample_size = imageSize / VAE factor). */
export function unetConfigFromLdm(arch: LdmArchitecture, imageSize = defaultLdmImageSize(arch), source = 'LDM config'): UNet2DConditionConfig {
  const u = arch.unet;
  const fail = (msg: string): never => {
    throw new UsageError(`${source}: ${msg}.`);
  };
  if (u.use_spatial_transformer === false) fail('use_spatial_transformer: false (LDM attention blocks without transformers) is not supported');
  for (const k of ['num_classes', 'adm_in_channels']) {
    if (u[k] !== undefined && u[k] !== null) fail(`unet_config.params.${k} (class/SDXL conditioning) is not supported`);
  }
  if (!Number.isInteger(u.num_res_blocks)) fail(`unet_config.params.num_res_blocks must be one integer, got ${JSON.stringify(u.num_res_blocks)}`);
  const channels = u.channel_mult.map((m) => u.model_channels * m);
  const n = channels.length;
  // Attention at a level when its downsampling factor is listed in attention_resolutions.
  const down: string[] = [];
  let res = 1;
  for (let i = 0; i < n; i++) {
    down.push(u.attention_resolutions.includes(res) ? 'CrossAttnDownBlock2D' : 'DownBlock2D');
    if (i !== n - 1) res *= 2;
  }
  const up: string[] = [];
  for (let i = 0; i < n; i++) {
    up.push(u.attention_resolutions.includes(res) ? 'CrossAttnUpBlock2D' : 'UpBlock2D');
    res = Math.floor(res / 2);
  }
  // diffusers' attention_head_dim is the number of heads.
  let heads: number | number[];
  if (u.num_heads !== undefined && u.num_heads > 0) heads = u.num_heads;
  else if (u.num_head_channels !== undefined && u.num_head_channels > 0) heads = channels.map((c) => c / u.num_head_channels!);
  else heads = fail('unet_config.params needs num_heads or num_head_channels');
  const vaeFactor = 2 ** (arch.vae.ddconfig.ch_mult.length - 1);
  const cfg: UNet2DConditionConfig = {
    ...UNET_DEFAULTS,
    sample_size: Math.floor(imageSize / vaeFactor),
    in_channels: u.in_channels,
    out_channels: u.out_channels,
    down_block_types: down,
    up_block_types: up,
    block_out_channels: channels,
    layers_per_block: u.num_res_blocks,
    cross_attention_dim: u.context_dim,
    attention_head_dim: heads,
    use_linear_projection: u.use_linear_in_transformer ?? false,
    transformer_layers_per_block: u.transformer_depth ?? 1,
  };
  if (Array.isArray(u.disable_self_attentions)) cfg.only_cross_attention = u.disable_self_attentions as boolean[];
  return validateUnetConfig(cfg, source);
}

/** diffusers' create_vae_diffusers_config (+ scaling_factor from the yaml's scale_factor). */
export function vaeConfigFromLdm(arch: LdmArchitecture, imageSize = defaultLdmImageSize(arch), source = 'LDM config'): AutoencoderKLConfig {
  const { ddconfig: d, embed_dim } = arch.vae;
  const fail = (msg: string): never => {
    throw new UsageError(`${source}: ${msg}.`);
  };
  if ((d.attn_resolutions ?? []).length > 0) fail(`first_stage_config ddconfig.attn_resolutions ${JSON.stringify(d.attn_resolutions)}: attention inside VAE levels is not supported`);
  if (d.double_z === false) fail('first_stage_config ddconfig.double_z: false is not supported');
  if (embed_dim !== d.z_channels) fail(`first_stage_config embed_dim ${embed_dim} differs from z_channels ${d.z_channels} (not supported)`);
  const channels = d.ch_mult.map((m) => d.ch * m);
  return validateVaeConfig(
    {
      ...VAE_DEFAULTS,
      sample_size: imageSize,
      in_channels: d.in_channels,
      out_channels: d.out_ch,
      down_block_types: channels.map(() => 'DownEncoderBlock2D'),
      up_block_types: channels.map(() => 'UpDecoderBlock2D'),
      block_out_channels: channels,
      latent_channels: d.z_channels,
      layers_per_block: d.num_res_blocks,
      scaling_factor: arch.scaleFactor,
    },
    source,
  );
}

// ---------------------------------------------------------------------------------------------
// Key conversion

export const LDM_PREFIX = {
  unet: 'model.diffusion_model.',
  vae: 'first_stage_model.',
  textEncoder: 'cond_stage_model.transformer.',
} as const;
export type LdmComponent = keyof typeof LDM_PREFIX;

/** openaimodel ResBlock → diffusers ResnetBlock2D. */
const RESNET_NAMES: Array<[string, string]> = [
  ['in_layers.0.', 'norm1.'],
  ['in_layers.2.', 'conv1.'],
  ['emb_layers.1.', 'time_emb_proj.'],
  ['out_layers.0.', 'norm2.'],
  ['out_layers.3.', 'conv2.'],
  ['skip_connection.', 'conv_shortcut.'],
];

function renameStart(rest: string, table: Array<[string, string]>): string | null {
  for (const [from, to] of table) if (rest.startsWith(from)) return to + rest.slice(from.length);
  return null;
}

/**
 * One UNet key without `model.diffusion_model.` → its diffusers name (null: not a UNet weight).
 * `layersPerBlock` is the yaml's num_res_blocks: input_blocks hold layersPerBlock resnets (+
 * transformers) and one downsampler per level, output_blocks layersPerBlock + 1 per level.
 */
export function ldmUnetKey(key: string, layersPerBlock: number): string | null {
  const simple: Array<[string, string]> = [
    ['time_embed.0.', 'time_embedding.linear_1.'],
    ['time_embed.2.', 'time_embedding.linear_2.'],
    ['input_blocks.0.0.', 'conv_in.'],
    ['out.0.', 'conv_norm_out.'],
    ['out.2.', 'conv_out.'],
    ['middle_block.1.', 'mid_block.attentions.0.'],
  ];
  const s = renameStart(key, simple);
  if (s) return s;
  let m = /^middle_block\.([02])\.(.+)$/.exec(key);
  if (m) {
    const r = renameStart(m[2], RESNET_NAMES);
    return r && `mid_block.resnets.${m[1] === '0' ? 0 : 1}.${r}`;
  }
  const per = layersPerBlock + 1;
  m = /^input_blocks\.(\d+)\.([01])\.(.+)$/.exec(key);
  if (m) {
    const i = Number(m[1]) - 1;
    if (i < 0) return null;
    const [block, layer, rest] = [Math.floor(i / per), i % per, m[3]];
    if (layer === layersPerBlock) {
      // The level's last input block is its downsampler (a stride-2 conv named op).
      return m[2] === '0' && rest.startsWith('op.') ? `down_blocks.${block}.downsamplers.0.conv.${rest.slice(3)}` : null;
    }
    if (m[2] === '1') return `down_blocks.${block}.attentions.${layer}.${rest}`;
    const r = renameStart(rest, RESNET_NAMES);
    return r && `down_blocks.${block}.resnets.${layer}.${r}`;
  }
  m = /^output_blocks\.(\d+)\.([012])\.(.+)$/.exec(key);
  if (m) {
    const i = Number(m[1]);
    const [block, layer, sub, rest] = [Math.floor(i / per), i % per, m[2], m[3]];
    // An upsampler (nearest ×2 + conv) follows the resnet, or the resnet and its transformer.
    if (sub !== '0' && rest.startsWith('conv.')) return layer === layersPerBlock ? `up_blocks.${block}.upsamplers.0.conv.${rest.slice(5)}` : null;
    if (sub === '1') return `up_blocks.${block}.attentions.${layer}.${rest}`;
    if (sub === '0') {
      const r = renameStart(rest, RESNET_NAMES);
      return r && `up_blocks.${block}.resnets.${layer}.${r}`;
    }
  }
  return null;
}

const VAE_ATTENTION_NAMES: Array<[string, string]> = [
  ['norm.', 'group_norm.'],
  ['q.', 'to_q.'],
  ['k.', 'to_k.'],
  ['v.', 'to_v.'],
  ['proj_out.', 'to_out.0.'],
];

/** One VAE key without `first_stage_model.` → its diffusers name (null: not a VAE weight). */
export function ldmVaeKey(key: string, numLevels: number): string | null {
  const same = /^(encoder\.conv_in|encoder\.conv_out|decoder\.conv_in|decoder\.conv_out|quant_conv|post_quant_conv)\.(weight|bias)$/.exec(key);
  if (same) return key;
  let m = /^(encoder|decoder)\.norm_out\.(weight|bias)$/.exec(key);
  if (m) return `${m[1]}.conv_norm_out.${m[2]}`;
  m = /^(encoder|decoder)\.mid\.block_([12])\.(.+)$/.exec(key);
  if (m) return `${m[1]}.mid_block.resnets.${Number(m[2]) - 1}.${m[3].replace(/^nin_shortcut\./, 'conv_shortcut.')}`;
  m = /^(encoder|decoder)\.mid\.attn_1\.(.+)$/.exec(key);
  if (m) {
    const r = renameStart(m[2], VAE_ATTENTION_NAMES);
    return r && `${m[1]}.mid_block.attentions.0.${r}`;
  }
  m = /^encoder\.down\.(\d+)\.(block\.(\d+)|downsample)\.(.+)$/.exec(key);
  if (m) {
    if (m[3] !== undefined) return `encoder.down_blocks.${m[1]}.resnets.${m[3]}.${m[4].replace(/^nin_shortcut\./, 'conv_shortcut.')}`;
    return m[4].startsWith('conv.') ? `encoder.down_blocks.${m[1]}.downsamplers.0.${m[4]}` : null;
  }
  // LDM numbers decoder levels from the bottom (up.0 = full resolution); diffusers from the top.
  m = /^decoder\.up\.(\d+)\.(block\.(\d+)|upsample)\.(.+)$/.exec(key);
  if (m) {
    const level = numLevels - 1 - Number(m[1]);
    if (level < 0) return null;
    if (m[3] !== undefined) return `decoder.up_blocks.${level}.resnets.${m[3]}.${m[4].replace(/^nin_shortcut\./, 'conv_shortcut.')}`;
    return m[4].startsWith('conv.') ? `decoder.up_blocks.${level}.upsamplers.0.${m[4]}` : null;
  }
  return null;
}

/** SD 2.x single files: the OpenCLIP text model (FrozenOpenCLIPEmbedder.model, visual tower removed). */
export const OPENCLIP_PREFIX = 'cond_stage_model.model.';

const OPENCLIP_BLOCK_NAMES: Array<[string, string]> = [
  ['ln_1.', 'layer_norm1.'],
  ['ln_2.', 'layer_norm2.'],
  ['attn.out_proj.', 'self_attn.out_proj.'],
  ['mlp.c_fc.', 'mlp.fc1.'],
  ['mlp.c_proj.', 'mlp.fc2.'],
];

/**
 * One OpenCLIP text key without `cond_stage_model.model.` → its transformers CLIPTextModel
 * name(s), as diffusers' convert_open_clip_checkpoint renames them: a fused attention input
 * projection (attn.in_proj_weight [3D, D] / in_proj_bias [3D], rows q, k, v) gives three names.
 * null: not a text-encoder weight.
 */
export function openClipTextKey(key: string): string[] | null {
  const simple: Record<string, string> = {
    positional_embedding: 'text_model.embeddings.position_embedding.weight',
    'token_embedding.weight': 'text_model.embeddings.token_embedding.weight',
    'ln_final.weight': 'text_model.final_layer_norm.weight',
    'ln_final.bias': 'text_model.final_layer_norm.bias',
  };
  if (Object.hasOwn(simple, key)) return [simple[key]];
  const m = /^transformer\.resblocks\.(\d+)\.(.+)$/.exec(key);
  if (!m) return null;
  const layer = `text_model.encoder.layers.${Number(m[1])}.`;
  const fused = /^attn\.in_proj_(weight|bias)$/.exec(m[2]);
  if (fused) return ['q_proj', 'k_proj', 'v_proj'].map((p) => `${layer}self_attn.${p}.${fused[1]}`);
  const r = renameStart(m[2], OPENCLIP_BLOCK_NAMES);
  return r && /^[a-z_12.]+\.(weight|bias)$/.test(r) ? [layer + r] : null;
}

/** One text-encoder key without `cond_stage_model.transformer.` → transformers CLIPTextModel name. */
export function ldmTextEncoderKey(key: string): string {
  // Checkpoints from old transformers releases lack the text_model. level.
  return key.startsWith('text_model.') ? key : `text_model.${key}`;
}

/** Keys of an SD checkpoint that are not model weights (see the top of the file). */
const SKIP = [
  /^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod|posterior_variance|posterior_log_variance_clipped|posterior_mean_coef1|posterior_mean_coef2|logvar|lvlb_weights)$/,
  /^model_ema\./,
  /^first_stage_model\.loss\./,
  /\.position_ids$/,
  // OpenCLIP's projection into the image space and its contrastive temperature: SD 2 reads the
  // token states only (diffusers' CLIPTextModel has neither); attn_mask is the causal mask.
  /^cond_stage_model\.model\.(text_projection|logit_scale|attn_mask)$/,
];

export interface LdmConversion {
  /** Per component: diffusers name → LDM key, in file order. */
  unet: Map<string, string>;
  vae: Map<string, string>;
  textEncoder: Map<string, string>;
  /**
   * Text-encoder names that are a third of a fused OpenCLIP in_proj tensor: name → which rows
   * (0 q, 1 k, 2 v of [3D, …]).
   */
  fused: Map<string, number>;
  /** Keys deliberately not converted. */
  skipped: string[];
}

/**
 * Sorts every key of an LDM checkpoint into UNet / VAE / text-encoder names; one UsageError
 * lists everything that is neither convertible nor a known non-weight.
 */
export function planLdmConversion(
  keys: Iterable<string>,
  opts: {
    layersPerBlock: number;
    vaeLevels: number;
    source?: string;
    /** OpenCLIP: how many resblocks the text encoder keeps (the rest are skipped; default all). See openClipLayers. */
    openClipLayers?: number;
  },
): LdmConversion {
  const out: LdmConversion = { unet: new Map(), vae: new Map(), textEncoder: new Map(), fused: new Map(), skipped: [] };
  const all = [...keys];
  const keep = opts.openClipLayers ?? Infinity;
  const dropped = (key: string) => {
    const m = /^cond_stage_model\.model\.transformer\.resblocks\.(\d+)\./.exec(key);
    return m !== null && Number(m[1]) >= keep;
  };
  const unknown: string[] = [];
  const duplicate: string[] = [];
  const put = (component: LdmComponent, name: string, key: string) => {
    const prev = out[component].get(name);
    if (prev !== undefined) duplicate.push(`${key} and ${prev} (both → ${name})`);
    else out[component].set(name, key);
  };
  let sdxl = false;
  for (const key of all) {
    if (SKIP.some((re) => re.test(key)) || dropped(key)) {
      out.skipped.push(key);
      continue;
    }
    let name: string | null = null;
    if (key.startsWith(LDM_PREFIX.unet)) {
      name = ldmUnetKey(key.slice(LDM_PREFIX.unet.length), opts.layersPerBlock);
      if (name) put('unet', name, key);
    } else if (key.startsWith(LDM_PREFIX.vae)) {
      name = ldmVaeKey(key.slice(LDM_PREFIX.vae.length), opts.vaeLevels);
      if (name) put('vae', name, key);
    } else if (key.startsWith(LDM_PREFIX.textEncoder)) {
      name = ldmTextEncoderKey(key.slice(LDM_PREFIX.textEncoder.length));
      put('textEncoder', name, key);
    } else if (key.startsWith(OPENCLIP_PREFIX)) {
      const names = openClipTextKey(key.slice(OPENCLIP_PREFIX.length));
      names?.forEach((n, i) => {
        put('textEncoder', n, key);
        if (names.length > 1) out.fused.set(n, i);
      });
      name = names && names[0];
    } else if (key.startsWith('conditioner.')) {
      sdxl = true;
      continue;
    }
    if (name === null) unknown.push(key);
  }
  const src = opts.source ?? 'LDM checkpoint';
  if (all.some((k) => k.startsWith(OPENCLIP_PREFIX)) && all.some((k) => k.startsWith(LDM_PREFIX.textEncoder))) {
    throw new UsageError(`${src}: holds two text encoders (CLIP ${LDM_PREFIX.textEncoder}* and OpenCLIP ${OPENCLIP_PREFIX}*); an SD 1.x/2.x checkpoint has one.`);
  }
  if (keep < 1) throw new UsageError(`${src}: its OpenCLIP text encoder would keep no resblock (a single one, and SD 2 reads the penultimate block's output).`);
  if (sdxl) throw new UsageError(`${src}: is an SDXL checkpoint (conditioner.*), which sdlab does not support.`);
  const problems: string[] = [];
  const some = (a: string[]) => a.slice(0, 20).join(', ') + (a.length > 20 ? `, … (${a.length - 20} more)` : '');
  if (unknown.length) problems.push(`${unknown.length} keys that are not SD 1.x/2.x UNet, VAE or CLIP weights: ${some(unknown)}`);
  if (duplicate.length) problems.push(`${duplicate.length} duplicated: ${some(duplicate)}`);
  if (problems.length) throw new UsageError(`${src}: ${problems.join('; ')}.`);
  return out;
}

// ---------------------------------------------------------------------------------------------
// LdmCheckpoint

export interface LdmOpenOptions {
  /** The checkpoint's LDM yaml (default: the family's, from the tensors: detectLdmFamily). */
  yaml?: string;
  /** Image size in pixels for the configs' sample_size (default 512; 768 for v-prediction). */
  imageSize?: number;
  /**
   * Without a yaml, picks SD 2.x's variant: 'epsilon' → 512-base (v2-inference.yaml),
   * otherwise 768-v (v2-inference-v.yaml, diffusers' default). With a yaml it changes nothing
   * here (the scheduler's prediction_type is set by the pipeline loader).
   */
  prediction?: string;
  /** The text encoder's num_hidden_layers when its config is given (an OpenCLIP file keeps that many resblocks). */
  textEncoderLayers?: number;
}

/** An LDM checkpoint (.safetensors or a PyTorch .ckpt), opened lazily: configs and key plan now, tensors on demand. */
export class LdmCheckpoint {
  private constructor(
    readonly file: string,
    private readonly st: TensorFile,
    readonly architecture: LdmArchitecture,
    readonly unetConfig: UNet2DConditionConfig,
    readonly vaeConfig: AutoencoderKLConfig,
    readonly conversion: LdmConversion,
    /** Where the architecture came from (the yaml, or the family's default), for errors. */
    readonly architectureSource: string,
    /** SD 1.x or 2.x: the yaml's text encoder, else what the tensors show (SD 1.x when they show nothing). */
    readonly family: SdFamily,
  ) {}

  static open(file: string, opts: LdmOpenOptions = {}): LdmCheckpoint {
    const yamlArch = opts.yaml ? readLdmYaml(opts.yaml) : null;
    const st = openTensorFile(file); // by content: a PyTorch zip checkpoint (read safely, io/ckpt.ts) or safetensors
    const stNames = new Set(st.names());
    const shapeIfAny = (k: string): number[] | undefined => (stNames.has(k) ? st.shapeOf(k) : undefined);
    const detected = detectLdmFamily([...stNames], shapeIfAny);
    let arch: LdmArchitecture;
    let source: string;
    let family: SdFamily;
    if (yamlArch) {
      [arch, source] = [yamlArch, opts.yaml!];
      const said = ldmYamlFamily(arch);
      if (said && detected.family && said !== detected.family) {
        throw new UsageError(
          `${source}: an ${FAMILY_NAME[said]} config (cond_stage_config ${arch.condStageTarget}) but ${file} holds ${FAMILY_NAME[detected.family]} weights (${detected.reason}); pass the checkpoint's own yaml.`,
        );
      }
      family = said ?? detected.family ?? 'sd1';
    } else {
      // diffusers' choice without a yaml: v1-inference.yaml, or v2-inference-v.yaml for SD 2.x.
      family = detected.family ?? 'sd1';
      const base = opts.prediction === 'epsilon';
      arch = family === 'sd2' ? (base ? LDM_SD2_BASE_ARCHITECTURE : LDM_SD2_ARCHITECTURE) : LDM_SD1_ARCHITECTURE;
      const variant = family === 'sd2' ? (base ? ' 512-base' : ' 768-v') : '';
      source = `${file} (${FAMILY_NAME[family]}${variant} default architecture, from ${detected.family ? detected.reason : 'no sign of SD 2.x'})`;
    }
    const imageSize = opts.imageSize ?? defaultLdmImageSize(arch);
    const unetConfig = unetConfigFromLdm(arch, imageSize, source);
    const vaeConfig = vaeConfigFromLdm(arch, imageSize, source);
    const conversion = planLdmConversion(st.names(), {
      layersPerBlock: arch.unet.num_res_blocks,
      vaeLevels: arch.vae.ddconfig.ch_mult.length,
      source: file,
      openClipLayers: openClipLayers([...stNames], shapeIfAny, arch, opts.textEncoderLayers, file),
    });
    return new LdmCheckpoint(file, st, arch, unetConfig, vaeConfig, conversion, source, family);
  }

  /** diffusers names of a component, in file order. */
  names(component: LdmComponent): string[] {
    return [...this.conversion[component].keys()];
  }

  private ldmKey(component: LdmComponent, name: string): string {
    const key = this.conversion[component].get(name);
    if (key === undefined) throw new UsageError(`${this.file}: no ${component} tensor "${name}".`);
    return key;
  }

  /**
   * Shape under the diffusers name (the VAE's 1×1-conv attention weights become linear; a third
   * of a fused OpenCLIP q/k/v projection has a third of its rows).
   */
  shapeOf(component: LdmComponent, name: string): number[] {
    const shape = this.st.shapeOf(this.ldmKey(component, name));
    return component === 'textEncoder' && this.conversion.fused.has(name) ? fusedPartShape(shape, name, this.file) : diffusersShape(component, name, shape);
  }

  /** Reads one tensor (float32, PyTorch layout) under its diffusers name. */
  read(component: LdmComponent, name: string): TensorData {
    const key = this.ldmKey(component, name);
    const part = component === 'textEncoder' ? this.conversion.fused.get(name) : undefined;
    if (part !== undefined) {
      // q, k, v are consecutive row blocks of the fused tensor: read it once for all three.
      if (this.lastFused?.key !== key) this.lastFused = { key, t: this.st.read(key) };
      const t = this.lastFused.t;
      const shape = fusedPartShape(t.shape, name, this.file);
      const n = shape.reduce((a, b) => a * b, 1);
      return { shape, data: t.data.slice(part * n, (part + 1) * n), dtype: t.dtype };
    }
    const t = this.st.read(key);
    return { shape: diffusersShape(component, name, t.shape), data: t.data, dtype: t.dtype };
  }

  private lastFused?: { key: string; t: { shape: number[]; data: Float32Array; dtype: string } };

  /** The whole component as a diffusers/transformers state dict (reads every tensor). */
  stateDict(component: LdmComponent): StateDict {
    const sd: StateDict = new Map();
    for (const name of this.names(component)) sd.set(name, this.read(component, name));
    return sd;
  }

  /** Names and shapes of a component checked against `model` (real or shape-only); the load plan. */
  private plan(model: Module, component: LdmComponent): Array<[string, string]> {
    return planLoad(model, this.names(component), (n) => this.shapeOf(component, n), { source: `${this.file} (${component})` });
  }

  /** Loads a component into `model` (names and shapes checked first, then one tensor at a time; NaN/Inf refused). */
  loadInto(model: Module, component: LdmComponent): void {
    try {
      assignPlanned(model, this.plan(model, component), (name) => this.read(component, name), `${this.file} (${component})`);
    } finally {
      this.lastFused = undefined;
    }
  }

  /**
   * Builds a component's model and loads it. Size and shapes are checked on a shape-only build
   * first (buildChecked), so weights that do not fit the yaml fail before anything is allocated.
   */
  loadModel<M extends Module>(component: LdmComponent, build: () => M, source: string): M {
    const model = buildChecked(build, source, { skip: true, check: (dry) => void this.plan(dry, component) });
    this.loadInto(model, component);
    return model;
  }

  /** The UNet, configured from the yaml. */
  loadUnet(): UNet2DConditionModel {
    return this.loadModel('unet', () => new UNet2DConditionModel(this.unetConfig), this.architectureSource);
  }

  /** The VAE, configured from the yaml. */
  loadVae(): AutoencoderKL {
    return this.loadModel('vae', () => new AutoencoderKL(this.vaeConfig), this.architectureSource);
  }

  /**
   * The text encoder's sizes as far as the weights tell (heads are not visible in shapes:
   * SD 1.x's CLIP ViT-L/14 has 12, SD 2.x's OpenCLIP ViT-H 16: 64 channels each). An OpenCLIP
   * file's layers are those SD reads (the last resblock dropped).
   */
  textEncoderShape(): { vocab_size: number; hidden_size: number; max_position_embeddings: number; intermediate_size: number; num_hidden_layers: number } {
    const shape = (n: string) => this.shapeOf('textEncoder', n);
    const tok = shape('text_model.embeddings.token_embedding.weight');
    const layers = new Set(this.names('textEncoder').map((n) => /^text_model\.encoder\.layers\.(\d+)\./.exec(n)?.[1]).filter((x) => x !== undefined));
    return {
      vocab_size: tok[0],
      hidden_size: tok[1],
      max_position_embeddings: shape('text_model.embeddings.position_embedding.weight')[0],
      intermediate_size: shape('text_model.encoder.layers.0.mlp.fc1.weight')[0],
      num_hidden_layers: layers.size,
    };
  }
}

/** The shape of one of q/k/v in a fused OpenCLIP in_proj tensor: [3D, D] → [D, D], [3D] → [D]. */
function fusedPartShape(shape: number[], name: string, file: string): number[] {
  if (shape.length < 1 || shape[0] % 3 !== 0) {
    throw new UsageError(`${file}: the fused attention projection behind ${name} has shape [${shape}], whose first size is not a multiple of 3 (q, k, v).`);
  }
  return [shape[0] / 3, ...shape.slice(1)];
}

/** diffusers stores the VAE attention projections as linear weights (LDM: 1×1 convs). */
function diffusersShape(component: LdmComponent, name: string, shape: number[]): number[] {
  if (component === 'vae' && /\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$/.test(name) && shape.length === 4 && shape[2] === 1 && shape[3] === 1) {
    return shape.slice(0, 2);
  }
  return [...shape];
}

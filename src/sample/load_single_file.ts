/**
 * Single-file Stable Diffusion checkpoints in the original CompVis/LDM layout → diffusers names
 * and models (the loader behind loadLdmPipeline in load.ts), as diffusers v0.24's
 * convert_from_ckpt does (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
 * convert_ldm_clip_checkpoint, create_unet_diffusers_config, create_vae_diffusers_config).
 * Like diffusers, sdlab keeps this converter beside the pipeline loaders: it builds the models.
 *
 *   model.diffusion_model.*            → UNet   (input_blocks/middle_block/output_blocks → down/mid/up_blocks)
 *   first_stage_model.*                → VAE    (encoder.down.i.block.j → encoder.down_blocks.i.resnets.j ...)
 *   cond_stage_model.transformer.*     → CLIP text encoder (already transformers names: prefix stripped)
 *
 * The architecture comes from the checkpoint's yaml (e.g. v1-inference.yaml: model.params.
 * unet_config / first_stage_config / scale_factor) or, without one, from SD 1.x's defaults.
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
 * `first_stage_model.loss.*` and CLIP's `position_ids`. Not supported: SD 2.x's OpenCLIP text
 * encoder (`cond_stage_model.model.*`), SDXL (`conditioner.*`). PyTorch `.ckpt` files are read by
 * io/ckpt.ts's restricted unpickler (tensor state dicts only; nothing in the file is run).
 */
import fs from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { type Module, type StateDict, type TensorData, assignPlanned, buildChecked, planLoad } from '../nn/module.ts';
import { type TensorFile, openTensorFile } from '../io/ckpt.ts';
import { UNET_DEFAULTS, type UNet2DConditionConfig, UNet2DConditionModel, validateUnetConfig } from '../unet/index.ts';
import { type AutoencoderKLConfig, AutoencoderKL, VAE_DEFAULTS, validateVaeConfig } from '../autoencoder/index.ts';
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
  return {
    unet,
    vae,
    scaleFactor: (get('model.params.scale_factor', false) as number | undefined) ?? 0.18215,
    parameterization: (get('model.params.parameterization', false) as string | undefined) ?? 'eps',
    condStageTarget: typeof target === 'string' ? target : null,
  };
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
];

export interface LdmConversion {
  /** Per component: diffusers name → LDM key, in file order. */
  unet: Map<string, string>;
  vae: Map<string, string>;
  textEncoder: Map<string, string>;
  /** Keys deliberately not converted. */
  skipped: string[];
}

/**
 * Sorts every key of an LDM checkpoint into UNet / VAE / text-encoder names; one UsageError
 * lists everything that is neither convertible nor a known non-weight.
 */
export function planLdmConversion(keys: Iterable<string>, opts: { layersPerBlock: number; vaeLevels: number; source?: string }): LdmConversion {
  const out: LdmConversion = { unet: new Map(), vae: new Map(), textEncoder: new Map(), skipped: [] };
  const unknown: string[] = [];
  const duplicate: string[] = [];
  const put = (component: LdmComponent, name: string, key: string) => {
    const prev = out[component].get(name);
    if (prev !== undefined) duplicate.push(`${key} and ${prev} (both → ${name})`);
    else out[component].set(name, key);
  };
  let openClip = false;
  let sdxl = false;
  for (const key of keys) {
    if (SKIP.some((re) => re.test(key))) {
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
    } else if (key.startsWith('cond_stage_model.model.')) {
      openClip = true;
      continue;
    } else if (key.startsWith('conditioner.')) {
      sdxl = true;
      continue;
    }
    if (name === null) unknown.push(key);
  }
  const src = opts.source ?? 'LDM checkpoint';
  if (openClip) throw new UsageError(`${src}: has an OpenCLIP text encoder (cond_stage_model.model.*, SD 2.x), which the LDM importer does not convert yet; use a diffusers directory.`);
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
  /** The checkpoint's LDM yaml (default: SD 1.x's v1-inference.yaml values). */
  yaml?: string;
  /** Image size in pixels for the configs' sample_size (default 512; 768 for v-prediction). */
  imageSize?: number;
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
    /** Where the architecture came from (the yaml, or the SD 1.x default), for errors. */
    readonly architectureSource: string,
  ) {}

  static open(file: string, opts: LdmOpenOptions = {}): LdmCheckpoint {
    const arch = opts.yaml ? readLdmYaml(opts.yaml) : LDM_SD1_ARCHITECTURE;
    const source = opts.yaml ?? `${file} (SD 1.x default architecture)`;
    if (arch.condStageTarget && /OpenCLIP/i.test(arch.condStageTarget)) {
      throw new UsageError(`${source}: cond_stage_config ${arch.condStageTarget} (SD 2.x OpenCLIP) is not supported by the LDM importer yet; use a diffusers directory.`);
    }
    const imageSize = opts.imageSize ?? defaultLdmImageSize(arch);
    const unetConfig = unetConfigFromLdm(arch, imageSize, source);
    const vaeConfig = vaeConfigFromLdm(arch, imageSize, source);
    const st = openTensorFile(file); // by content: a PyTorch zip checkpoint (read safely, io/ckpt.ts) or safetensors
    const conversion = planLdmConversion(st.names(), {
      layersPerBlock: arch.unet.num_res_blocks,
      vaeLevels: arch.vae.ddconfig.ch_mult.length,
      source: file,
    });
    return new LdmCheckpoint(file, st, arch, unetConfig, vaeConfig, conversion, source);
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

  /** Shape under the diffusers name (the VAE's 1×1-conv attention weights become linear). */
  shapeOf(component: LdmComponent, name: string): number[] {
    return diffusersShape(component, name, this.st.shapeOf(this.ldmKey(component, name)));
  }

  /** Reads one tensor (float32, PyTorch layout) under its diffusers name. */
  read(component: LdmComponent, name: string): TensorData {
    const t = this.st.read(this.ldmKey(component, name));
    return { shape: diffusersShape(component, name, t.shape), data: t.data, dtype: t.dtype };
  }

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
    assignPlanned(model, this.plan(model, component), (name) => this.read(component, name).data, `${this.file} (${component})`);
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
   * SD 1.x's CLIP ViT-L/14 has 12).
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

/** diffusers stores the VAE attention projections as linear weights (LDM: 1×1 convs). */
function diffusersShape(component: LdmComponent, name: string, shape: number[]): number[] {
  if (component === 'vae' && /\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$/.test(name) && shape.length === 4 && shape[2] === 1 && shape[3] === 1) {
    return shape.slice(0, 2);
  }
  return [...shape];
}

/**
 * Loading a StableDiffusionPipeline from the three places weights live:
 *
 *   loadDiffusersPipeline('path/to/model')          a diffusers directory (save_pretrained):
 *                                                   tokenizer/ text_encoder/ unet/ vae/ scheduler/
 *   loadLdmPipeline('sd.safetensors', { yaml, tokenizer })   (or 'sd.ckpt')
 *                                                   an original CompVis/LDM single file (+ its yaml);
 *                                                   the tokenizer comes from a separate directory
 *   loadRunPipeline('runs/default')                 a run trained by sdlab: vae/ clip/ unet/,
 *                                                   scheduler/scheduler_config.json and
 *                                                   sampling_config.json
 *
 * The scheduler is picked by name (`--scheduler`), configured from the model's
 * scheduler_config.json as diffusers' `Scheduler.from_config(pipe.scheduler.config)` does;
 * without a name, the class the config names.
 */
import fs from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { loadTokenizer } from '../clip/tokenizer_load.ts';
import type { Tokenizer } from '../clip/tokenizer.ts';
import { TEXT_ENCODER_PRESETS, TextEncoder, type TextEncoderConfig, readTextEncoderConfig } from '../clip/text_encoder.ts';
import { UNet2DConditionModel } from '../unet/unet.ts';
import type { UNet2DConditionConfig } from '../unet/config.ts';
import { AutoencoderKL } from '../autoencoder/autoencoder.ts';
import { LdmCheckpoint, type SdFamily } from './load_single_file.ts';
import { type Scheduler, type SchedulerName, SCHEDULER_NAMES, createScheduler, readSchedulerConfig, schedulerNameForClass } from '../schedule/index.ts';
import { type Canvas, vaeCanvas } from '../data/canvas.ts';
import { type ResolvedSampling, resolveSampling } from './settings.ts';
import { UsageError } from '../util/errors.ts';
import { StableDiffusionPipeline } from './pipeline.ts';

/** Builds scheduler `name` (or the config's own class) from a diffusers scheduler config. */
export function schedulerFromConfig(config: Record<string, unknown>, name?: string, source = 'scheduler config'): Scheduler {
  let chosen = name;
  if (!chosen) {
    const cls = typeof config._class_name === 'string' ? config._class_name : '';
    chosen = schedulerNameForClass(cls) ?? undefined;
    if (!chosen) {
      throw new UsageError(`${source}: _class_name "${cls}" is not a scheduler sdlab has; pick one with --scheduler ${SCHEDULER_NAMES.join('|')}.`);
    }
  }
  try {
    return createScheduler(chosen, config); // checks the config, and the betas (scheduleBetas)
  } catch (err) {
    // Name the file the bad value came from.
    if (err instanceof UsageError && source !== 'scheduler config') throw new UsageError(`${source}: ${err.message}`);
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// diffusers directory

export interface PipelineLoadOptions {
  /** sdlab scheduler name (ddim, euler, ...); default: the class in the model's scheduler config. */
  scheduler?: string;
  /**
   * What the UNet predicts, over the scheduler config's prediction_type (or the yaml's
   * parameterization), as diffusers' `Scheduler.from_config(config, prediction_type=...)`.
   */
  prediction?: 'epsilon' | 'v_prediction';
}

/** The scheduler config with --prediction applied. */
function withPrediction(config: Record<string, unknown>, prediction: string | undefined): Record<string, unknown> {
  return prediction ? { ...config, prediction_type: prediction } : config;
}

/**
 * SD 1.x or 2.x from a loaded model's diffusers configs (a diffusers directory's, or those a
 * single file was given): SD 2.x's text encoder is OpenCLIP's (exact gelu; OpenAI CLIP, SD 1.x,
 * uses quick_gelu) and its UNet attends to 1024-wide text vectors. Before loading a single file,
 * LdmCheckpoint.family tells (from the yaml or the tensors) and picks these configs.
 */
export function diffusersFamily(textEncoder: Pick<TextEncoderConfig, 'hidden_act'>, unet: Pick<UNet2DConditionConfig, 'cross_attention_dim'>): SdFamily {
  const cross = Array.isArray(unet.cross_attention_dim) ? unet.cross_attention_dim[0] : unet.cross_attention_dim;
  return textEncoder.hidden_act === 'gelu' || cross === 1024 ? 'sd2' : 'sd1';
}

/** The text encoder must produce the vectors the UNet attends to (else one line at load, not a shape error mid-run). */
function checkTextWidth(textEncoder: TextEncoder, unet: UNet2DConditionModel, source: string): void {
  if (unet.hasCrossAttention && textEncoder.hiddenSize !== unet.plan.crossAttentionDim) {
    throw new UsageError(
      `${source}: the text encoder is ${textEncoder.hiddenSize} wide but the UNet attends to ${unet.plan.crossAttentionDim}-wide text (cross_attention_dim): they are not from the same model (SD 1.x: 768, SD 2.x: 1024).`,
    );
  }
}

export interface DiffusersLoadOptions extends PipelineLoadOptions {
  /** A tokenizer folder to use instead of the model's tokenizer/. */
  tokenizer?: string;
}

function requireDir(dir: string, what: string, root: string): void {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
    throw new UsageError(`${root}: no ${path.basename(dir)}/ folder (expected a diffusers Stable Diffusion directory with ${what}).`);
  }
}

/** A diffusers StableDiffusionPipeline directory: tokenizer/, text_encoder/, unet/, vae/, scheduler/. */
export function loadDiffusersPipeline(dir: string, opts: DiffusersLoadOptions = {}): StableDiffusionPipeline {
  const parts = 'tokenizer/, text_encoder/, unet/, vae/ and scheduler/';
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new UsageError(`--model ${dir}: no such directory (expected a diffusers directory or a .safetensors file).`);
  for (const sub of [...(opts.tokenizer ? [] : ['tokenizer']), 'text_encoder', 'unet', 'vae', 'scheduler']) requireDir(path.join(dir, sub), parts, dir);
  const schedulerFile = path.join(dir, 'scheduler', 'scheduler_config.json');
  const scheduler = schedulerFromConfig(withPrediction(readSchedulerConfig(schedulerFile), opts.prediction), opts.scheduler, schedulerFile);
  const textEncoder = TextEncoder.fromPretrained(path.join(dir, 'text_encoder'));
  const unet = UNet2DConditionModel.fromPretrained(path.join(dir, 'unet'));
  checkTextWidth(textEncoder, unet, dir);
  return new StableDiffusionPipeline({
    tokenizer: loadTokenizer(opts.tokenizer ?? path.join(dir, 'tokenizer')),
    textEncoder,
    unet,
    vae: AutoencoderKL.fromPretrained(path.join(dir, 'vae')),
    scheduler,
  });
}

// ---------------------------------------------------------------------------------------------
// LDM single file

export interface LdmLoadOptions extends PipelineLoadOptions {
  /** The checkpoint's LDM yaml (default: v1-inference.yaml's values, v2-inference-v.yaml's for SD 2.x tensors). */
  yaml?: string;
  /** A directory holding the CLIP tokenizer (vocab.json + merges.txt), e.g. a diffusers model dir. Required. */
  tokenizer?: string;
  /**
   * The text encoder's config.json. Default: the family's preset (SD 1.x: CLIP ViT-L/14, SD 2.x:
   * OpenCLIP ViT-H) with the sizes read from the weights and 64 channels per head (the head
   * count is not visible in the weights).
   */
  textEncoderConfig?: string;
  /** Image size the configs' sample_size is derived from (default 512, 768 for v-prediction). */
  imageSize?: number;
}

/**
 * diffusers' single-file scheduler: SD's DDIM-style config from the yaml's
 * linear_start/linear_end/timesteps (scaled_linear, steps_offset 1, no clipping), epsilon or v
 * (the yaml's parameterization, or `parameterization` when given: the architecture's, which
 * LdmCheckpoint picks for files without a yaml).
 */
export function ldmSchedulerConfig(yamlFile?: string, parameterization?: string): Record<string, unknown> {
  let p: Record<string, unknown> = {};
  if (yamlFile) {
    const doc = parseYaml(fs.readFileSync(yamlFile, 'utf8')) as { model?: { params?: Record<string, unknown> } } | null;
    p = doc?.model?.params ?? {};
  }
  if (parameterization !== undefined) p = { ...p, parameterization };
  const num = (k: string, d: number) => (typeof p[k] === 'number' ? (p[k] as number) : d);
  return {
    _class_name: 'PNDMScheduler',
    num_train_timesteps: num('timesteps', 1000),
    beta_start: num('linear_start', 0.00085),
    beta_end: num('linear_end', 0.012),
    beta_schedule: 'scaled_linear',
    prediction_type: p.parameterization === 'v' ? 'v_prediction' : 'epsilon',
    clip_sample: false,
    set_alpha_to_one: false,
    skip_prk_steps: true,
    steps_offset: 1,
  };
}

/**
 * The text encoder config for a single file's text encoder: `given` (a --text-encoder-config,
 * checked against the weights' sizes; OpenCLIP weights need exact gelu), else the family's preset
 * (SD 1.x CLIP ViT-L/14, SD 2.x OpenCLIP ViT-H) with the sizes read from the weights and 64
 * channels per head. Open the checkpoint with textEncoderLayers: given.num_hidden_layers.
 */
export function ldmTextEncoderConfig(ckpt: LdmCheckpoint, given: { config: TextEncoderConfig; source: string } | null): TextEncoderConfig {
  const shape = ckpt.textEncoderShape();
  const file = ckpt.file;
  if (given) {
    for (const [k, v] of Object.entries(shape)) {
      if (given.config[k as keyof typeof shape] !== v) {
        throw new UsageError(`${given.source}: ${k} is ${given.config[k as keyof typeof shape]} but the weights in ${file} have ${v}.`);
      }
    }
    // OpenCLIP's transformer uses nn.GELU (exact); OpenAI CLIP's quick_gelu there would run silently wrong.
    if (ckpt.conversion.fused.size > 0 && given.config.hidden_act !== 'gelu') {
      throw new UsageError(`${given.source}: hidden_act is "${given.config.hidden_act}" but ${file} holds an OpenCLIP text encoder (SD 2.x), which uses exact "gelu"; use an SD 2.x text encoder config.`);
    }
    return given.config;
  }
  if (shape.hidden_size % 64 !== 0) {
    throw new UsageError(`${file}: text encoder width ${shape.hidden_size} is not a multiple of 64, so its number of heads cannot be guessed; pass --text-encoder-config config.json.`);
  }
  return { ...TEXT_ENCODER_PRESETS[ckpt.family], ...shape, num_attention_heads: shape.hidden_size / 64 };
}

/** An LDM/CompVis single-file checkpoint (.safetensors) + its yaml + a tokenizer directory. */
export function loadLdmPipeline(file: string, opts: LdmLoadOptions = {}): StableDiffusionPipeline {
  if (!fs.existsSync(file)) throw new UsageError(`--model ${file}: no such file.`);
  if (!opts.tokenizer) {
    throw new UsageError(
      `--model ${file}: a single-file checkpoint carries no tokenizer; pass --tokenizer DIR (a folder with CLIP's vocab.json + merges.txt, e.g. a diffusers model directory).`,
    );
  }
  const tokenizer: Tokenizer = loadTokenizer(opts.tokenizer);
  const given = opts.textEncoderConfig ? readTextEncoderConfig(opts.textEncoderConfig) : null;
  const ckpt = LdmCheckpoint.open(file, { yaml: opts.yaml, imageSize: opts.imageSize, prediction: opts.prediction, textEncoderLayers: given?.num_hidden_layers });
  const teConfig = ldmTextEncoderConfig(ckpt, given && { config: given, source: opts.textEncoderConfig! });
  const textEncoder = ckpt.loadModel('textEncoder', () => new TextEncoder(teConfig), opts.textEncoderConfig ?? `${file} (text encoder)`);
  const config = ldmSchedulerConfig(opts.yaml, ckpt.architecture.parameterization);
  const scheduler = schedulerFromConfig(withPrediction(config, opts.prediction), opts.scheduler, opts.yaml ?? file);
  const unet = ckpt.loadUnet();
  checkTextWidth(textEncoder, unet, file);
  return new StableDiffusionPipeline({ tokenizer, textEncoder, unet, vae: ckpt.loadVae(), scheduler });
}

// ---------------------------------------------------------------------------------------------
// sdlab run directory

/** The scheduler a run uses when it has no scheduler/scheduler_config.json: SD's DDPM training schedule. */
export const DEFAULT_RUN_SCHEDULER_CONFIG: Record<string, unknown> = {
  _class_name: 'DDPMScheduler',
  num_train_timesteps: 1000,
  beta_schedule: 'scaled_linear',
  beta_start: 0.00085,
  beta_end: 0.012,
  prediction_type: 'epsilon',
  clip_sample: false,
  set_alpha_to_one: false,
  steps_offset: 1,
};

export interface RunPipeline {
  pipeline: StableDiffusionPipeline;
  /** Things the user should know (e.g. a default that was assumed). */
  notes: string[];
  /** The data's own size on the VAE's canvas (<run>/vae/canvas.json): crop outputs with toCanvasMode. */
  canvas: Canvas;
  /** How the run samples itself (<run>/sampling_config.json, else the defaults; its notes say which). */
  sampling: ResolvedSampling;
}

/** Throws the "train it first" message unless `dir` holds config.json and `weights`. */
function requireTrained(run: string, component: 'vae' | 'clip' | 'unet', weights: string): string {
  const dir = path.join(run, component);
  const missing = [path.join(dir, 'config.json'), path.join(dir, weights)].filter((f) => !fs.existsSync(f));
  if (missing.length) {
    const runFlag = path.normalize(run) === path.normalize('runs/default') ? '' : ` --run ${run}`;
    throw new UsageError(`${missing[0]} not found: the run has no trained ${component}; train it with \`npx sdlab train ${component}${runFlag}\`.`);
  }
  return dir;
}

/**
 * A run trained by sdlab: vae/ (AutoencoderKL, and canvas.json: the data's own size), clip/
 * (CLIP: its text tower + tokenizer.json), unet/ (UNet2DConditionModel),
 * scheduler/scheduler_config.json (the training schedule) and sampling_config.json (how to
 * sample it: src/sample/settings.ts).
 */
export function loadRunPipeline(run: string, opts: PipelineLoadOptions = {}): RunPipeline {
  if (!fs.existsSync(run) || !fs.statSync(run).isDirectory()) {
    throw new UsageError(`--run ${run}: no such run directory; train one with \`npx sdlab train vae\`, \`npx sdlab train clip\` and \`npx sdlab train unet\` (add --run ${run}).`);
  }
  const notes: string[] = [];
  const vaeDir = requireTrained(run, 'vae', 'diffusion_pytorch_model.safetensors');
  const clipDir = requireTrained(run, 'clip', 'model.safetensors');
  const unetDir = requireTrained(run, 'unet', 'diffusion_pytorch_model.safetensors');
  let config: Record<string, unknown>;
  const schedulerFile = path.join(run, 'scheduler', 'scheduler_config.json');
  if (fs.existsSync(schedulerFile)) {
    config = readSchedulerConfig(schedulerFile);
  } else {
    config = DEFAULT_RUN_SCHEDULER_CONFIG;
    notes.push(`${schedulerFile} not found: assuming the default training schedule (DDPM, scaled_linear betas 0.00085..0.012, 1000 steps).`);
  }
  // The scheduler asked for, else the run's own (sampling_config.json), else DDIM.
  const sampling = resolveSampling(run, { scheduler: opts.scheduler as SchedulerName | undefined });
  const scheduler = schedulerFromConfig(config, sampling.settings.scheduler, schedulerFile);
  const vae = AutoencoderKL.fromPretrained(vaeDir);
  const { canvas, note } = vaeCanvas(vaeDir, { sampleSize: vae.config.sample_size, inChannels: vae.config.in_channels });
  if (note) notes.push(note);
  const pipeline = new StableDiffusionPipeline({
    tokenizer: loadTokenizer(clipDir),
    textEncoder: TextEncoder.fromPretrained(clipDir),
    unet: UNet2DConditionModel.fromPretrained(unetDir),
    vae,
    scheduler,
  });
  return { pipeline, notes, canvas, sampling };
}

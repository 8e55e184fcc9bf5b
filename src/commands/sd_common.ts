/**
 * What `sdlab txt2img`, `img2img` and `inpaint` share: the model, prompt and sampler flags
 * (`addSdOptions`), loading the model (`loadModel`), and the run itself (`runSd`): checks, the
 * init image and mask (img2img / inpaint), the random source (--rng), --init-latents /
 * --save-latents, then the pipeline batch by batch, the PNGs, a grid and `<command>.json`.
 *
 *   --rng sdlab (default)  image k of a run draws from its own stream (seed, k): batch-independent.
 *   --rng torch            one torch.Generator('cpu').manual_seed(seed) (src/util/torch_random.ts)
 *                          for the run, drawn in diffusers' order and shapes: a run in one batch
 *                          (--batch ≥ the number of images) is diffusers' call with
 *                          generator=torch.Generator('cpu').manual_seed(seed); later batches
 *                          continue the same generator, like further calls with it.
 *   --save-latents F       writes the start noise of every image, [N, C, h, w] float32 safetensors
 *                          (key "latents", NCHW as diffusers' `latents`), atomically, after the run.
 *   --init-latents F       reads such a file instead of drawing the start noise (txt2img: the
 *                          initial latents; inpaint: diffusers' `latents` argument; img2img: the
 *                          noise added to the encoded image).
 *
 * What A1111 users expect (src/sample/infotext.ts, src/sample/prompt_weighting.ts):
 *   every PNG        carries a `parameters` text chunk in A1111's layout (prompt, "Negative
 *                    prompt: ...", "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size:
 *                    512x512, Model: NAME, ..." then sdlab's own keys: model path, scheduler,
 *                    prediction, rng, LoRAs, image index), so A1111's "PNG Info" reads it.
 *   --from-png F     re-runs from such a PNG (sdlab's or A1111's): its settings, overridden by
 *                    every flag given on the command line; image k of an --rng sdlab run is
 *                    drawn from its own stream (seed, k) again, so the re-run is the same image.
 *   prompts          (word:1.3) emphasis and prompts over 75 tokens in chunks, as A1111
 *                    (--prompt-syntax plain reads them exactly as diffusers does).
 *   --animate        writes NNNN.gif beside each image: x_t and the predicted clean image x0
 *                    at every step (the VAE decoder for small images, a linear latent → RGB map
 *                    fitted to the VAE for large ones: src/sample/animate.ts).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { selectBackend, BACKEND_HELP } from '../backend/index.ts';
import { UsageError, check } from '../util/errors.ts';
import { float, int, oneOf } from '../util/options.ts';
import { Progress } from '../util/progress.ts';
import { checkOutputDir, writeFileAtomic } from '../util/fs.ts';
import { MAX_GENERATED_SIDE, MAX_LATENT_PIXELS } from '../util/limits.ts';
import { TorchGenerator } from '../util/torch_random.ts';
import { withReadProgress, writeSafetensors } from '../io/safetensors.ts';
import { readPngText } from '../io/png.ts';
import { KARRAS_SCHEDULERS, SCHEDULER_NAMES, TIMESTEP_SPACINGS, type TimestepSpacing, reconfigureScheduler, schedulerNameForClass } from '../schedule/index.ts';
import { diffusersFamily, loadDiffusersPipeline, loadLdmPipeline } from '../sample/load.ts';
import { TEXT_ENCODER_WEIGHTS_FILE } from '../clip/index.ts';
import { UNET_WEIGHTS_FILE } from '../unet/index.ts';
import { VAE_WEIGHTS_FILE } from '../autoencoder/index.ts';
import type { StableDiffusionPipeline } from '../sample/pipeline.ts';
import { type LoraMergeReport, type LoraSpec, mergeLoras, openLoras, parseLoraSpec } from '../sample/lora.ts';
import { type U8Image, preprocessImage, preprocessMask, readGreyImage, readRgbImage } from '../sample/image_processor.ts';
import { nchwToNhwc, nhwcToNchw } from '../sample/noise.ts';
import { A1111_SAMPLERS, formatInfotext, parseInfotext, schedulerFromA1111 } from '../sample/infotext.ts';
import { PROMPT_SYNTAXES, type PromptSyntax } from '../sample/prompt_weighting.ts';
import { ReverseProcessAnimation, latentPreview } from '../sample/animate.ts';
import { type FloatImage, renderGrid, savePng } from '../viz/index.ts';
import { openLatents } from './encode.ts';

export type SdCommand = 'txt2img' | 'img2img' | 'inpaint';
export const RNG_NAMES = ['sdlab', 'torch'] as const;
/** --prediction values (the UNet's training target; 'sample' models are not Stable Diffusion). */
export const PREDICTIONS = ['epsilon', 'v_prediction'] as const;
/** --animate values: how x0 is drawn in the preview (auto: vae below a 32×32 latent, approx from there). */
export const ANIMATE_PREVIEWS = ['auto', 'vae', 'approx'] as const;
/**
 * --animate auto: from this latent side on (256 pixels at SD's 1/8) a VAE decode per step costs
 * about as much as the UNet step or more, so the preview uses the fitted linear projection.
 */
const ANIMATE_APPROX_LATENT_SIDE = 32;

export interface SdOptions {
  /** Required (or named by --from-png's PNG). */
  model: string;
  yaml?: string;
  tokenizer?: string;
  textEncoderConfig?: string;
  prompt?: string[];
  negativePrompt?: string;
  /** Images per prompt. */
  n: number;
  /** Default: the model's (pipeline.defaultSteps: 50, or 4 for LCM-distilled UNets). */
  steps?: number;
  /** Default: the model's scheduler. */
  scheduler?: string;
  /** What the UNet predicts (default: the model's scheduler config / yaml; SD 2.x files without a yaml: v_prediction). */
  prediction?: (typeof PREDICTIONS)[number];
  /** Karras sigmas (euler, euler_a, dpm++2m). */
  karras?: boolean;
  /** Overrides the scheduler config's timestep_spacing (e.g. "trailing" for SD-Turbo). */
  timestepSpacing?: TimestepSpacing;
  /** LoRA files merged into the weights before sampling (--lora FILE[:scale], repeatable). */
  lora?: LoraSpec[];
  /** Default: the model's (pipeline.defaultGuidance: 7.5, or 8.5 for LCM-distilled UNets). */
  guidance?: number;
  /** Default 0 (optional so that an API caller's --from-png takes the PNG's seed). */
  seed?: number;
  height?: number;
  width?: number;
  eta?: number;
  batch: number;
  out: string;
  /** Random numbers: sdlab's per-image streams (default) or torch's generator, in diffusers' order. */
  rng?: (typeof RNG_NAMES)[number];
  /** A safetensors file of start noise [N, C, h, w] to use instead of drawing it. */
  initLatents?: string;
  /** Where to write the start noise [N, C, h, w] of the run. */
  saveLatents?: string;
  /** img2img / inpaint: the init image (PNG). */
  initImage?: string;
  /** inpaint: the mask (PNG, white = repaint). */
  mask?: string;
  /** img2img / inpaint: the share of the schedule that runs. */
  strength?: number;
  /** Re-run from the `parameters` chunk of this PNG (options given explicitly win; see applyPngParameters). */
  fromPng?: string;
  /** Write NNNN.gif per image: the predicted x0 at every step (true = 'auto'). */
  animate?: boolean | (typeof ANIMATE_PREVIEWS)[number];
  /** How prompts are read: a1111 (default: emphasis, chunks of 75 tokens) or plain (diffusers: brackets are text, truncated at 77). */
  promptSyntax?: PromptSyntax;
  /** Where --from-png's one-line warning (keys sdlab does not use) goes (default console.warn). */
  warn?: (line: string) => void;
  /** Set by applyPngParameters: the PNG's settings are already in (runSd does not read it again). */
  fromPngApplied?: boolean;
  /** The stream index of the first image (--rng sdlab): a --from-png re-run of image k starts at k. */
  firstIndex?: number;
  progress?: NodeJS.WriteStream | null;
}

export interface SdResult {
  files: string[];
  grid?: string;
  json: string;
  scheduler: string;
  /** The step count and guidance used (the flags, or the model's defaults). */
  steps: number;
  guidance: number;
  height: number;
  width: number;
  latents?: string;
  loras: LoraMergeReport[];
  /** --animate: one GIF per image. */
  animations: string[];
}

/** Loads the pipeline --model names: a diffusers directory or a single .safetensors file. */
export function loadModel(opts: Pick<SdOptions, 'model' | 'yaml' | 'tokenizer' | 'textEncoderConfig' | 'scheduler' | 'prediction'>): StableDiffusionPipeline {
  if (!fs.existsSync(opts.model)) throw new UsageError(`--model ${opts.model}: no such file or directory (expected a diffusers directory, a .safetensors file or a .ckpt).`);
  const isDir = fs.statSync(opts.model).isDirectory();
  if (isDir && opts.yaml) throw new UsageError(`--yaml is for single-file checkpoints; ${opts.model} is a diffusers directory.`);
  // Gigabytes of weights take a while: a bar over the bytes of the weight files.
  const files = isDir
    ? [['text_encoder', TEXT_ENCODER_WEIGHTS_FILE], ['unet', UNET_WEIGHTS_FILE], ['vae', VAE_WEIGHTS_FILE]].map(([sub, f]) => path.join(opts.model, sub, f))
    : [opts.model];
  const mib = (bytes: number) => Math.floor(bytes / 2 ** 20);
  const totalMib = mib(files.reduce((sum, f) => sum + (fs.existsSync(f) ? fs.statSync(f).size : 0), 0));
  // The bar draws on a terminal only: elsewhere stderr is kept for the one-line errors, and the
  // summary below (stdout) says how long loading took.
  const bar = process.stderr.isTTY && !process.env.CI ? new Progress({ total: Math.max(1, totalMib), label: 'loading weights', unit: 'MiB' }) : null;
  const started = Date.now();
  let read = 0, shown = 0; // bytes read; MiB the bar shows (at most the files' total)
  const pipe = withReadProgress((bytes) => {
    read += bytes;
    const now = Math.min(mib(read), totalMib);
    if (now > shown) bar?.tick(now - shown);
    shown = now;
  }, () => (isDir
    ? loadDiffusersPipeline(opts.model, { scheduler: opts.scheduler, tokenizer: opts.tokenizer, prediction: opts.prediction })
    : loadLdmPipeline(opts.model, { yaml: opts.yaml, tokenizer: opts.tokenizer, textEncoderConfig: opts.textEncoderConfig, scheduler: opts.scheduler, prediction: opts.prediction })));
  bar?.finish();
  console.log(`loaded ${(read / 2 ** 30).toFixed(2)} GiB of weights in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return pipe;
}

/** --height/--width within [8, MAX_GENERATED_SIDE] (either may be undefined: the model's default). */
function checkImageSide(height: number | undefined, width: number | undefined): void {
  for (const [flag, v] of [['--height', height], ['--width', width]] as const) {
    if (v === undefined) continue;
    check(Number.isInteger(v) && v >= 8 && v <= MAX_GENERATED_SIDE, `${flag}: expected an integer in [8, ${MAX_GENERATED_SIDE}] pixels, got ${v} (Stable Diffusion 1.x is trained at 512; larger images do not fit in memory).`);
  }
}

/** --karras and --timestep-spacing: the scheduler rebuilt from its own config with those settings. */
function applySchedulerFlags(pipe: StableDiffusionPipeline, opts: Pick<SdOptions, 'karras' | 'timestepSpacing'>): void {
  if (!opts.karras && opts.timestepSpacing === undefined) return;
  const name = schedulerNameForClass(pipe.scheduler.constructor.name) ?? pipe.scheduler.constructor.name;
  check(!opts.karras || (KARRAS_SCHEDULERS as readonly string[]).includes(name), `--karras: only ${KARRAS_SCHEDULERS.join(', ')} take Karras sigmas, and the scheduler is ${name} (pick one with --scheduler).`);
  check(opts.timestepSpacing === undefined || name !== 'lcm', '--timestep-spacing: lcm takes its timesteps from the grid of original_inference_steps; drop the flag.');
  const overrides: Record<string, unknown> = {};
  if (opts.karras) overrides.use_karras_sigmas = true;
  if (opts.timestepSpacing !== undefined) overrides.timestep_spacing = opts.timestepSpacing;
  const before = pipe.scheduler;
  pipe.scheduler = reconfigureScheduler(before, overrides);
  before.dispose();
}

/** --lora's argParser: one spec per flag, collected in order. */
export function collectLora(value: string, prev: LoraSpec[] = []): LoraSpec[] {
  try {
    return [...prev, parseLoraSpec(value)];
  } catch (err) {
    // commander names the flag and the value already.
    throw new InvalidArgumentError((err as Error).message.replace(`--lora ${value}: `, ''));
  }
}

/** The flags every Stable Diffusion command takes (txt2img's, shared by img2img and inpaint). */
export function addSdOptions(cmd: Command, out: string): Command {
  return cmd
    .option('--model <dir|file>', 'diffusers model directory, or an LDM single file (.safetensors, or a PyTorch .ckpt, read without running its pickle); required unless --from-png names one')
    .option('--yaml <file>', 'the LDM yaml of a single-file checkpoint (default: SD 1.x v1-inference settings)')
    .option('--tokenizer <dir>', 'CLIP tokenizer folder (vocab.json + merges.txt); needed for single files')
    .option('--text-encoder-config <file>', 'text encoder config.json for a single file (default: CLIP ViT-L/14, or OpenCLIP ViT-H for SD 2.x, 64 channels per head)')
    .option('--prediction <type>', "what the UNet predicts: epsilon|v_prediction (default: the model's scheduler config or yaml; an SD 2.x file without a yaml: v_prediction at 768, epsilon means 512-base)", oneOf(PREDICTIONS))
    .option('--prompt <text>', 'the prompt (repeat for several). A1111 syntax: (word:1.3), (word) = ×1.1, [word] = ÷1.1, \\( for a literal bracket, BREAK starts a new chunk; over 75 tokens: chunks of 75 concatenated', (v: string, prev: string[] = []) => [...prev, v])
    .option('--prompt-syntax <s>', 'a1111 (default: (word:1.3) emphasis, prompts over 75 tokens in chunks) | plain (as diffusers: brackets are text, truncated at 77 tokens)', oneOf(PROMPT_SYNTAXES))
    .option('--from-png <file>', 'take the settings from a PNG\'s "parameters" chunk (written by sdlab or A1111): prompt, negative prompt, steps, sampler, CFG scale, seed, size, strength, LoRAs, model; flags given here override them')
    .addOption(new Option('--animate [preview]', 'also write NNNN.gif per image: x_t and the predicted clean image x0 at every step. preview: vae (the VAE decoder) | approx (a linear latent→RGB map fitted to the model\'s own VAE by least squares at start-up; latent resolution, cheap) | auto (the default: vae below a 32x32 latent, i.e. 256x256 pixels for SD, else approx)').choices(ANIMATE_PREVIEWS).preset('auto'))
    .option('--negative-prompt <text>', 'what to steer away from (default: none, i.e. the empty prompt)')
    .option('--n <count>', 'images per prompt', int(1, 10_000), 1)
    .option('--steps <n>', 'denoising steps (default: 50; 4 for LCM-distilled UNets)', int(1, 10_000))
    .option('--scheduler <name>', `sampler: ${SCHEDULER_NAMES.join('|')} (default: the model's own)`, oneOf(SCHEDULER_NAMES))
    .option('--karras', `Karras sigmas (${KARRAS_SCHEDULERS.join('|')}; e.g. --scheduler dpm++2m --karras = "DPM++ 2M Karras")`)
    .option('--timestep-spacing <s>', `${TIMESTEP_SPACINGS.join('|')}: overrides the scheduler config's (SD-Turbo: trailing)`, oneOf(TIMESTEP_SPACINGS))
    .option('--lora <file[:scale]>', 'a LoRA (.safetensors, kohya/A1111 or diffusers/PEFT keys) merged into the UNet and text encoder at scale (default 1); repeatable', collectLora)
    .option('--guidance <g>', 'classifier-free guidance scale (default: 7.5; 8.5 for LCM-distilled UNets, which take it as an input)', float(0, 100))
    .option('--eta <x>', 'DDIM eta (0 = deterministic)', float(0, 1), 0)
    .option('--seed <n>', 'random seed (with --rng sdlab, image k uses the stream (seed, k))', int(0), 0)
    .option('--rng <kind>', 'random numbers: sdlab (per-image streams, batch-independent) | torch (torch.Generator("cpu").manual_seed(seed), drawn in diffusers\' order: the same image as diffusers for the same seed when the run is one batch)', oneOf(RNG_NAMES), 'sdlab')
    .option('--init-latents <file>', 'start noise [N, C, h, w] (safetensors, key "latents", NCHW as diffusers\' latents; N = all images of the run) instead of drawing it')
    .option('--save-latents <file>', 'write the start noise of every image there ([N, C, h, w] float32 safetensors, NCHW)')
    .option('--height <px>', `image height, at most ${MAX_GENERATED_SIDE} (default: the model's sample size, 512 for SD 1.5)`, int(8))
    .option('--width <px>', `image width, at most ${MAX_GENERATED_SIDE} (default: the model's sample size)`, int(8))
    .option('--batch <n>', 'images per UNet batch', int(1, 1024), 1)
    .option('--out <dir>', 'output directory', out)
    .option('--backend <name>', BACKEND_HELP, process.env.SDLAB_BACKEND ?? 'auto');
}

/** A file flag that must name an existing regular file (one line otherwise). */
function requireFile(flag: string, file: string, what: string): void {
  if (!fs.existsSync(file)) throw new UsageError(`${flag} ${file}: no such file (expected ${what}).`);
  if (!fs.statSync(file).isFile()) throw new UsageError(`${flag} ${file}: not a regular file (expected ${what}).`);
}

/** --save-latents: a file in an existing directory, not a directory itself. */
function checkSaveLatents(file: string): void {
  const dir = path.dirname(path.resolve(file));
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new UsageError(`--save-latents ${file}: the directory ${dir} does not exist.`);
  if (fs.existsSync(file) && fs.statSync(file).isDirectory()) throw new UsageError(`--save-latents ${file}: is a directory (expected a .safetensors file to write).`);
  try {
    fs.accessSync(dir, fs.constants.W_OK);
  } catch {
    throw new UsageError(`--save-latents ${file}: the directory ${dir} is not writable.`);
  }
}

/** The pixel size of the images: txt2img and inpaint --height/--width or the model's; img2img the init image's rounded down to the VAE factor (diffusers' rules, image_processor.ts). */
function outputSize(kind: SdCommand, pipe: StableDiffusionPipeline, opts: SdOptions, image: U8Image | null): { height: number; width: number } {
  const f = pipe.vaeScaleFactor;
  if (kind === 'img2img' && image) {
    const height = opts.height ?? image.height - (image.height % f);
    const width = opts.width ?? image.width - (image.width % f);
    check(height >= f && width >= f, `--init-image ${opts.initImage}: ${image.width}×${image.height} pixels is smaller than the VAE's ${f}×${f} block.`);
    return { height, width };
  }
  return { height: opts.height ?? pipe.defaultSize, width: opts.width ?? pipe.defaultSize };
}

/** What a1111Params records beyond the options: the values the run actually used. */
interface RunFacts {
  steps: number;
  guidance: number;
  scheduler: string;
  karras: boolean;
  timestepSpacing: string | null;
  prediction: string;
  rng: string;
  height: number;
  width: number;
  strength: number | undefined;
  loras: LoraMergeReport[];
  /** A1111's short hash (12 hex digits) of each LoRA file, by file. */
  loraHashes: Map<string, string>;
  /** The image's stream index (--rng sdlab: its noise is stream (seed, index)). */
  index: number;
}

/** sdlab's own infotext keys (after A1111's), each read back by applyPngParameters. */
const SDLAB_KEYS = {
  model: 'sdlab model',
  yaml: 'sdlab yaml',
  tokenizer: 'sdlab tokenizer',
  textEncoderConfig: 'sdlab text encoder config',
  scheduler: 'sdlab scheduler',
  timestepSpacing: 'sdlab timestep spacing',
  prediction: 'sdlab prediction',
  eta: 'sdlab eta',
  rng: 'sdlab rng',
  index: 'sdlab image index',
  loras: 'sdlab loras',
  promptSyntax: 'sdlab prompt syntax',
  initImage: 'sdlab init image',
  mask: 'sdlab mask',
} as const;
/** A1111 keys that describe the run but that sdlab cannot act on: read without a warning. */
const INFORMATIONAL_KEYS = new Set(['Model hash', 'Version']);

/**
 * A1111's LoRA short hash: the first 12 hex digits of the SHA-256 of a .safetensors file's data
 * after its header (A1111's addnet_hash_safetensors), so "Lora hashes" match what A1111 shows.
 * Other files: of the whole file.
 */
function loraShortHash(file: string): string {
  const bytes = fs.readFileSync(file);
  let start = 0;
  if (/\.safetensors$/i.test(file) && bytes.length >= 8) {
    const n = Number(bytes.readBigUInt64LE(0));
    if (8 + n <= bytes.length) start = 8 + n;
  }
  return crypto.createHash('sha256').update(bytes.subarray(start)).digest('hex').slice(0, 12);
}

/**
 * The settings line of one image's infotext: A1111's keys first (its sampler names, "Schedule
 * type: Karras", CFG scale, Size WxH, Model = the file name without extension, Denoising strength,
 * Lora hashes "name: hash"), then sdlab's (SDLAB_KEYS) with what re-creates the image exactly.
 */
export function a1111Params(kind: SdCommand, opts: SdOptions & { seed: number }, run: RunFacts): Array<[string, string | number]> {
  const base = (file: string) => path.basename(file).replace(/\.(safetensors|ckpt|pt|bin)$/i, '');
  const params: Array<[string, string | number]> = [
    ['Steps', run.steps],
    ['Sampler', A1111_SAMPLERS[run.scheduler as keyof typeof A1111_SAMPLERS] ?? run.scheduler],
  ];
  if (run.karras) params.push(['Schedule type', 'Karras']);
  params.push(['CFG scale', run.guidance], ['Seed', opts.seed], ['Size', `${run.width}x${run.height}`], ['Model', base(path.resolve(opts.model))]);
  if (run.strength !== undefined) params.push(['Denoising strength', run.strength]);
  if (run.loras.length > 0) params.push(['Lora hashes', run.loras.map((l) => `${base(l.file)}: ${run.loraHashes.get(l.file) ?? ''}`).join(', ')]);
  params.push([SDLAB_KEYS.model, opts.model]);
  if (opts.yaml !== undefined) params.push([SDLAB_KEYS.yaml, opts.yaml]);
  if (opts.tokenizer !== undefined) params.push([SDLAB_KEYS.tokenizer, opts.tokenizer]);
  if (opts.textEncoderConfig !== undefined) params.push([SDLAB_KEYS.textEncoderConfig, opts.textEncoderConfig]);
  params.push([SDLAB_KEYS.scheduler, run.scheduler]);
  if (run.timestepSpacing !== null) params.push([SDLAB_KEYS.timestepSpacing, run.timestepSpacing]);
  params.push([SDLAB_KEYS.prediction, run.prediction]);
  if ((opts.eta ?? 0) !== 0) params.push([SDLAB_KEYS.eta, opts.eta!]);
  params.push([SDLAB_KEYS.rng, run.rng], [SDLAB_KEYS.index, run.index]);
  // JSON: file names may hold anything; the value is quoted as a whole (it has commas).
  if (run.loras.length > 0) params.push([SDLAB_KEYS.loras, JSON.stringify(run.loras.map((l) => [l.file, l.scale]))]);
  if ((opts.promptSyntax ?? 'a1111') !== 'a1111') params.push([SDLAB_KEYS.promptSyntax, opts.promptSyntax!]);
  if (kind !== 'txt2img' && opts.initImage !== undefined) params.push([SDLAB_KEYS.initImage, opts.initImage]);
  if (kind === 'inpaint' && opts.mask !== undefined) params.push([SDLAB_KEYS.mask, opts.mask]);
  return params;
}

/** The `parameters` text of a PNG file (one UsageError naming the file otherwise). */
function pngParameters(file: string): string {
  requireFile('--from-png', file, 'a PNG written by sdlab or A1111, with a "parameters" text chunk');
  let text: string | undefined;
  try {
    text = readPngText(file).get('parameters');
  } catch (err) {
    if (err instanceof UsageError) throw new UsageError(`--from-png ${err.message}`);
    throw err;
  }
  if (text === undefined) throw new UsageError(`--from-png ${file}: the PNG has no "parameters" text chunk (expected one written by sdlab or A1111's web UI).`);
  return text;
}

/**
 * --from-png: `opts` with the settings of FILE's `parameters` chunk filled in wherever `given(key)`
 * is false (the CLI: the flag was not typed; the API: the caller left it undefined). Keys sdlab
 * does not use (A1111's "Clip skip", a sampler sdlab lacks, ...) are listed in one warning.
 * A settings line missing or unreadable (no "Steps", "Seed", ...) is one UsageError.
 */
export function applyPngParameters(kind: SdCommand, opts: SdOptions, file: string, given: (key: keyof SdOptions) => boolean): SdOptions {
  const info = parseInfotext(pngParameters(file));
  const p = info.params;
  const bad = (key: string, expected: string): never => {
    throw new UsageError(`--from-png ${file}: "${key}: ${p.get(key)}" in its parameters, expected ${expected}.`);
  };
  if (!p.has('Steps') || !p.has('Seed')) throw new UsageError(`--from-png ${file}: its "parameters" chunk has no settings line (expected A1111's "Steps: 20, Sampler: ..., Seed: 1, ..." as its last line).`);
  const num = (key: string, ok: (v: number) => boolean, expected: string): number => {
    const raw = p.get(key)!;
    const v = Number(raw);
    return raw.trim() !== '' && Number.isFinite(v) && ok(v) ? v : bad(key, expected);
  };
  const used = new Set<string>();
  const out: SdOptions = { ...opts, fromPngApplied: true };
  /** Sets out[key] from the PNG's `name` unless the flag was given. */
  const take = <K extends keyof SdOptions>(key: K, name: string, read: (raw: string) => SdOptions[K]) => {
    if (!p.has(name)) return;
    used.add(name);
    if (!given(key)) out[key] = read(p.get(name)!);
  };
  if (!given('prompt')) out.prompt = [info.prompt];
  if (!given('negativePrompt')) out.negativePrompt = info.negativePrompt === '' ? undefined : info.negativePrompt;
  take('steps', 'Steps', () => num('Steps', (v) => Number.isInteger(v) && v >= 1 && v <= 10_000, 'an integer in [1, 10000]'));
  take('guidance', 'CFG scale', () => num('CFG scale', (v) => v >= 0 && v <= 100, 'a number in [0, 100]'));
  take('seed', 'Seed', () => num('Seed', (v) => Number.isSafeInteger(v) && v >= 0, 'an integer >= 0'));
  take('width', 'Size-1', () => num('Size-1', (v) => Number.isInteger(v) && v >= 8 && v <= MAX_GENERATED_SIDE, `a width in [8, ${MAX_GENERATED_SIDE}]`));
  take('height', 'Size-2', () => num('Size-2', (v) => Number.isInteger(v) && v >= 8 && v <= MAX_GENERATED_SIDE, `a height in [8, ${MAX_GENERATED_SIDE}]`));
  if (kind !== 'txt2img') take('strength', 'Denoising strength', () => num('Denoising strength', (v) => v > 0 && v <= 1, 'a number in (0, 1]'));
  // The scheduler: sdlab's exact name, else A1111's sampler name ("DPM++ 2M Karras" too).
  const sampler = p.get('Sampler');
  const fromA1111 = sampler !== undefined ? schedulerFromA1111(sampler) : null;
  if (p.has(SDLAB_KEYS.scheduler)) {
    take('scheduler', SDLAB_KEYS.scheduler, (v) => ((SCHEDULER_NAMES as readonly string[]).includes(v) ? v : bad(SDLAB_KEYS.scheduler, `one of ${SCHEDULER_NAMES.join(', ')}`)));
    used.add('Sampler');
  } else if (fromA1111) {
    used.add('Sampler');
    if (!given('scheduler')) out.scheduler = fromA1111.scheduler;
  }
  const karras = p.get('Schedule type') === 'Karras' || fromA1111?.karras === true;
  if (p.has('Schedule type') && (p.get('Schedule type') === 'Karras' || p.get('Schedule type') === 'Automatic')) used.add('Schedule type');
  if (karras && !given('karras') && !given('scheduler')) out.karras = true;
  take('timestepSpacing', SDLAB_KEYS.timestepSpacing, (v) => ((TIMESTEP_SPACINGS as readonly string[]).includes(v) ? (v as TimestepSpacing) : bad(SDLAB_KEYS.timestepSpacing, `one of ${TIMESTEP_SPACINGS.join(', ')}`)));
  take('prediction', SDLAB_KEYS.prediction, (v) => ((PREDICTIONS as readonly string[]).includes(v) ? (v as SdOptions['prediction']) : bad(SDLAB_KEYS.prediction, `one of ${PREDICTIONS.join(', ')}`)));
  take('eta', SDLAB_KEYS.eta, () => num(SDLAB_KEYS.eta, (v) => v >= 0 && v <= 1, 'a number in [0, 1]'));
  take('rng', SDLAB_KEYS.rng, (v) => ((RNG_NAMES as readonly string[]).includes(v) ? (v as SdOptions['rng']) : bad(SDLAB_KEYS.rng, `one of ${RNG_NAMES.join(', ')}`)));
  take('firstIndex', SDLAB_KEYS.index, () => num(SDLAB_KEYS.index, (v) => Number.isSafeInteger(v) && v >= 0, 'an integer >= 0'));
  take('promptSyntax', SDLAB_KEYS.promptSyntax, (v) => ((PROMPT_SYNTAXES as readonly string[]).includes(v) ? (v as PromptSyntax) : bad(SDLAB_KEYS.promptSyntax, `one of ${PROMPT_SYNTAXES.join(', ')}`)));
  take('model', SDLAB_KEYS.model, (v) => v);
  take('yaml', SDLAB_KEYS.yaml, (v) => v);
  take('tokenizer', SDLAB_KEYS.tokenizer, (v) => v);
  take('textEncoderConfig', SDLAB_KEYS.textEncoderConfig, (v) => v);
  if (kind !== 'txt2img') take('initImage', SDLAB_KEYS.initImage, (v) => v);
  if (kind === 'inpaint') take('mask', SDLAB_KEYS.mask, (v) => v);
  take('lora', SDLAB_KEYS.loras, (v) => {
    let list: unknown;
    try {
      list = JSON.parse(v);
    } catch {
      list = null;
    }
    if (!Array.isArray(list) || !list.every((e) => Array.isArray(e) && typeof e[0] === 'string' && typeof e[1] === 'number' && Number.isFinite(e[1]))) return bad(SDLAB_KEYS.loras, 'a JSON list of [file, scale] pairs');
    return (list as Array<[string, number]>).map(([f, scale]) => ({ file: f, scale }));
  });
  // A1111's Model is a name, not a path: usable only with --model (or sdlab's own key).
  if (p.has('Model')) used.add('Model');
  if (!out.model) throw new UsageError(`--from-png ${file}: the PNG names the model "${p.get('Model') ?? '?'}" but not its file (written by A1111?): give --model DIR|FILE.`);
  // A1111's LoRAs are named in the prompt and by hash: sdlab needs their files (--lora).
  if (p.has('Lora hashes') && (p.has(SDLAB_KEYS.loras) || given('lora'))) used.add('Lora hashes');
  // Image k of an --rng torch run came from one generator shared by the run's images: alone, it draws other noise.
  const warnings: string[] = [];
  if (out.rng === 'torch' && (out.firstIndex ?? 0) > 0) warnings.push(`image ${out.firstIndex} of an --rng torch run (its noise depends on the images before it: re-run the whole batch to re-create it)`);
  const unused = [...p.keys()].filter((k) => !used.has(k) && !INFORMATIONAL_KEYS.has(k));
  if (unused.length > 0) warnings.push(`ignoring what sdlab does not use: ${unused.map((k) => (k === 'Lora hashes' ? 'Lora hashes (give the files with --lora)' : `${k.replace(/-[12]$/, '')}: ${p.get(k)}`)).join('; ')}`);
  if (warnings.length > 0) (opts.warn ?? ((l: string) => console.warn(l)))(`sdlab: warning: --from-png ${file}: ${warnings.join('; ')}.`);
  return out;
}

/** Runs txt2img, img2img or inpaint as the CLI does (see the file header). */
export async function runSd(kind: SdCommand, options: SdOptions): Promise<SdResult> {
  // The API: what the caller set wins over the PNG (the CLI merges first, knowing which flags were typed).
  const withPng = options.fromPng !== undefined && !options.fromPngApplied ? applyPngParameters(kind, options, options.fromPng, (k) => options[k] !== undefined) : options;
  const opts = { ...withPng, seed: withPng.seed ?? 0 };
  check(typeof opts.model === 'string' && opts.model !== '', '--model: required (a diffusers directory, a .safetensors file or a .ckpt), unless --from-png names one.');
  const prompts = opts.prompt ?? [];
  check(prompts.length > 0, '--prompt: give at least one prompt (repeat --prompt for several; "" is unconditional).');
  check(opts.steps === undefined || (Number.isInteger(opts.steps) && opts.steps >= 1), `--steps: expected an integer >= 1, got ${opts.steps}.`);
  check(opts.guidance === undefined || Number.isFinite(opts.guidance), `--guidance: expected a number, got ${opts.guidance}.`);
  check(opts.scheduler === undefined || (SCHEDULER_NAMES as readonly string[]).includes(opts.scheduler), `--scheduler: expected one of ${SCHEDULER_NAMES.join(', ')}, got "${opts.scheduler}".`);
  check(!opts.karras || opts.scheduler === undefined || (KARRAS_SCHEDULERS as readonly string[]).includes(opts.scheduler), `--karras: only ${KARRAS_SCHEDULERS.join(', ')} take Karras sigmas, got --scheduler ${opts.scheduler}.`);
  check(opts.timestepSpacing === undefined || (TIMESTEP_SPACINGS as readonly string[]).includes(opts.timestepSpacing), `--timestep-spacing: expected one of ${TIMESTEP_SPACINGS.join(', ')}, got "${opts.timestepSpacing}".`);
  check(opts.timestepSpacing === undefined || opts.scheduler !== 'lcm', '--timestep-spacing: lcm takes its timesteps from the grid of original_inference_steps; drop the flag.');
  check(opts.prediction === undefined || (PREDICTIONS as readonly string[]).includes(opts.prediction), `--prediction: expected one of ${PREDICTIONS.join(', ')}, got "${opts.prediction}".`);
  const rng = opts.rng ?? 'sdlab';
  check((RNG_NAMES as readonly string[]).includes(rng), `--rng: expected one of ${RNG_NAMES.join(', ')}, got "${rng}".`);
  checkImageSide(opts.height, opts.width);
  const strength = kind === 'txt2img' ? undefined : (opts.strength ?? (kind === 'inpaint' ? 1 : 0.8));
  if (strength !== undefined) check(strength > 0 && strength <= 1, `--strength: expected a number in (0, 1], got ${strength}.`);
  // Every input file before any work (and before the model loads): one line each.
  let image: U8Image | null = null;
  let mask: U8Image | null = null;
  if (kind !== 'txt2img') {
    check(opts.initImage !== undefined, `--init-image: ${kind} needs the image to start from (a PNG).`);
    requireFile('--init-image', opts.initImage!, 'a PNG image');
    image = readRgbImage(opts.initImage!);
  }
  if (kind === 'inpaint') {
    check(opts.mask !== undefined, '--mask: inpaint needs a mask (a PNG, white = repaint).');
    requireFile('--mask', opts.mask!, 'a PNG mask');
    mask = readGreyImage(opts.mask!);
    check(mask.width === image!.width && mask.height === image!.height, `--mask ${opts.mask}: ${mask.width}×${mask.height} pixels, but --init-image ${opts.initImage} is ${image!.width}×${image!.height}: the mask must have the image's size (white pixels are repainted).`);
  }
  let init: ReturnType<typeof openLatents> | null = null;
  if (opts.initLatents !== undefined) {
    requireFile('--init-latents', opts.initLatents, 'a safetensors latents file');
    init = openLatents(opts.initLatents);
  }
  if (opts.saveLatents !== undefined) checkSaveLatents(opts.saveLatents);
  checkOutputDir('--out', opts.out);
  const loras = openLoras(opts.lora ?? []); // a bad --lora fails before the model loads

  const pipe = loadModel(opts);
  const tensors: tf.Tensor[] = [];
  try {
    pipe.promptSyntax = opts.promptSyntax ?? 'a1111';
    applySchedulerFlags(pipe, opts);
    const merged = mergeLoras(pipe, loras);
    const loraHashes = new Map(merged.map((m) => [m.file, loraShortHash(m.file)]));
    const { height, width } = outputSize(kind, pipe, opts, image);
    checkImageSide(height, width); // the model's own default size too
    const f = pipe.vaeScaleFactor;
    check(height % f === 0 && width % f === 0, `--height/--width: expected multiples of ${f} (the VAE's downsampling factor), got ${height}x${width}.`);
    // The VAE's mid-block attention is quadratic in the latent pixels: bounded like `decode`'s.
    check((height / f) * (width / f) <= MAX_LATENT_PIXELS, `--height/--width: ${height}x${width} is ${(height / f) * (width / f)} latent pixels, over sdlab's limit of ${MAX_LATENT_PIXELS} (${Math.sqrt(MAX_LATENT_PIXELS) * f}x${Math.sqrt(MAX_LATENT_PIXELS) * f} at this VAE's 1/${f} scale).`);
    if (kind === 'inpaint') {
      check(pipe.unet.config.in_channels === pipe.vae.config.latent_channels || pipe.isInpaintingUnet, `--model ${opts.model}: its UNet takes ${pipe.unet.config.in_channels} channels; inpainting needs ${pipe.vae.config.latent_channels} (latent blending) or ${2 * pipe.vae.config.latent_channels + 1} (an inpainting UNet).`);
    } else {
      check(!pipe.isInpaintingUnet, `--model ${opts.model}: an inpainting UNet (${pipe.unet.config.in_channels} input channels): use \`sdlab inpaint\` with --init-image and --mask.`);
    }
    const steps = opts.steps ?? pipe.defaultSteps;
    const guidance = opts.guidance ?? pipe.defaultGuidance;
    pipe.scheduler.setTimesteps(steps); // one clear line for a bad step count, before any work
    const stepsPerBatch = pipe.startTimesteps(steps, strength ?? null).length; // PNDM runs one more than asked; strength fewer
    const schedulerName = opts.scheduler ?? schedulerNameForClass(pipe.scheduler.constructor.name) ?? pipe.scheduler.constructor.name;
    const perImage = prompts.flatMap((p) => new Array<string>(opts.n).fill(p));
    const [N, C, h, w] = [perImage.length, pipe.vae.config.latent_channels, height / f, width / f];
    let latents: tf.Tensor4D | undefined;
    if (init) {
      const want = [N, C, h, w];
      check(tf.util.arraysEqual(init.shape, want), `--init-latents ${opts.initLatents}: shape [${init.shape.join(', ')}], expected [${want.join(', ')}] ([images, channels, height/${f}, width/${f}], NCHW).`);
      latents = tf.tensor4d(nchwToNhwc(init.read(), N, C, h, w), [N, h, w, C]);
      tensors.push(latents);
    }
    const imageT = image ? (() => {
      const p = preprocessImage(image, height, width);
      return tf.tensor4d(p.data, p.shape);
    })() : undefined;
    const maskT = mask ? (() => {
      const p = preprocessMask(mask, height, width);
      return tf.tensor4d(p.data, p.shape);
    })() : undefined;
    tensors.push(...(imageT ? [imageT] : []), ...(maskT ? [maskT] : []));
    const generator = rng === 'torch' ? new TorchGenerator(opts.seed) : undefined;

    const batches = Math.ceil(perImage.length / opts.batch);
    const progress = opts.progress === null ? null : new Progress({ total: batches * stepsPerBatch, label: kind, unit: 'step', stream: opts.progress });
    const images: FloatImage[] = [];
    const files: string[] = [];
    const animations: string[] = [];
    const noise = opts.saveLatents !== undefined ? new Float32Array(N * h * w * C) : null;
    const preview = opts.animate === undefined || opts.animate === false ? null : opts.animate === true ? 'auto' : opts.animate;
    const approx = preview === 'approx' || (preview === 'auto' && Math.max(h, w) >= ANIMATE_APPROX_LATENT_SIDE);
    const decode = approx ? latentPreview(pipe).decode : undefined;
    // Cells of about 256 pixels: the x0 preview is at latent resolution with approx.
    const cellScale = Math.max(1, Math.round(256 / Math.max(approx ? height / f : height, approx ? width / f : width)));
    let anims: ReverseProcessAnimation[] = [];
    const parameters = (index: number) => formatInfotext({
      prompt: perImage[index],
      negativePrompt: opts.negativePrompt ?? '',
      params: a1111Params(kind, opts, {
        steps,
        guidance,
        scheduler: schedulerName,
        karras: (pipe.scheduler.config as { use_karras_sigmas?: boolean }).use_karras_sigmas === true,
        timestepSpacing: schedulerName === 'lcm' ? null : pipe.scheduler.config.timestep_spacing,
        prediction: pipe.scheduler.config.prediction_type,
        rng,
        height,
        width,
        strength,
        loras: merged,
        loraHashes,
        index: (opts.firstIndex ?? 0) + index,
      }),
    });
    await pipe.generate({
      prompts: perImage,
      negativePrompts: opts.negativePrompt ?? '',
      batchSize: opts.batch,
      numInferenceSteps: steps,
      guidanceScale: guidance,
      seed: opts.seed,
      generator,
      height,
      width,
      eta: opts.eta,
      image: imageT,
      mask: maskT,
      strength,
      latents,
      firstIndex: opts.firstIndex,
      returnNoise: noise !== null,
      callback: (s) => {
        if (preview) {
          if (s.i === 0) anims = Array.from({ length: s.latents.shape[0] }, (_, j) => new ReverseProcessAnimation(pipe, { indices: [j], decode, scale: cellScale }));
          for (const a of anims) a.record(s);
        }
        progress?.tick(1, `t=${Number.isInteger(s.t) ? s.t : s.t.toFixed(1)}`);
      },
      onBatch: async ({ first, images: batch, height: H, width: W, channels, noise: batchNoise }) => {
        if (noise && batchNoise) noise.set(batchNoise, first * h * w * C);
        for (let k = 0; k < batch.length; k++) {
          const img: FloatImage = { data: batch[k], height: H, width: W, channels: channels as 1 | 3 };
          images.push(img);
          const file = path.join(opts.out, `${String(first + k).padStart(4, '0')}.png`);
          await savePng(file, renderGrid([img], { pad: 0 }), { text: { parameters: parameters(first + k) } });
          files.push(file);
          if (preview && anims[k]) {
            const gif = path.join(opts.out, `${String(first + k).padStart(4, '0')}.gif`);
            await anims[k].save(gif);
            animations.push(gif);
          }
        }
        anims = [];
      },
    });
    progress?.finish();
    let grid: string | undefined;
    if (images.length > 1) {
      grid = path.join(opts.out, 'grid.png');
      await savePng(grid, renderGrid(images, prompts.length > 1 ? { rows: prompts.length, cols: opts.n } : {}), { text: { parameters: parameters(0) } });
    }
    if (noise) {
      writeSafetensors(opts.saveLatents!, { latents: { shape: [N, C, h, w], data: nhwcToNchw(noise, N, h, w, C) } }, {
        metadata: { format: 'pt', content: `sdlab ${kind} start noise (before × init_noise_sigma), NCHW as diffusers' latents`, rng, seed: String(opts.seed) },
      });
    }
    const json = path.join(opts.out, `${kind}.json`);
    const settings = {
      model: opts.model,
      yaml: opts.yaml ?? null,
      family: diffusersFamily(pipe.textEncoder.config, pipe.unet.config),
      prediction: pipe.scheduler.config.prediction_type,
      prompts,
      negative_prompt: opts.negativePrompt ?? '',
      n: opts.n,
      steps,
      scheduler: schedulerName,
      karras: (pipe.scheduler.config as { use_karras_sigmas?: boolean }).use_karras_sigmas === true,
      timestep_spacing: schedulerName === 'lcm' ? null : pipe.scheduler.config.timestep_spacing,
      loras: merged.map((m) => ({ file: m.file, scale: m.scale, unet_modules: m.unetModules, text_encoder_modules: m.textEncoderModules })),
      guidance,
      eta: opts.eta ?? 0,
      seed: opts.seed,
      rng,
      height,
      width,
      ...(kind !== 'txt2img' ? { init_image: opts.initImage, strength } : {}),
      ...(kind === 'inpaint' ? { mask: opts.mask } : {}),
      ...(opts.initLatents !== undefined ? { init_latents: opts.initLatents } : {}),
      ...(opts.fromPng !== undefined ? { from_png: opts.fromPng } : {}),
      prompt_syntax: opts.promptSyntax ?? 'a1111',
      images: files.map((file, index) => ({ file: path.basename(file), prompt: perImage[index], index: (opts.firstIndex ?? 0) + index })),
    };
    await writeFileAtomic(json, JSON.stringify(settings, null, 1) + '\n');
    return { files, grid, json, scheduler: schedulerName, steps, guidance, height, width, latents: opts.saveLatents, loras: merged, animations };
  } finally {
    tf.dispose(tensors);
    pipe.dispose();
  }
}

/** The `action` of the three commands: select the backend, run, print what was written. */
export function sdAction(kind: SdCommand): (o: SdOptions & { backend: string }, cmd: Command) => Promise<void> {
  return async (typed, cmd) => {
    // --from-png: the PNG's settings under every flag typed on the command line (not commander's defaults).
    const given = (k: keyof SdOptions) => ['cli', 'env'].includes(cmd.getOptionValueSource(k) ?? '');
    const o = typed.fromPng !== undefined ? { ...applyPngParameters(kind, typed, typed.fromPng, given), backend: typed.backend } : typed;
    const backend = await selectBackend(o.backend);
    const started = Date.now();
    const res = await runSd(kind, o);
    const extra = kind === 'txt2img' ? '' : `, strength ${o.strength ?? (kind === 'inpaint' ? 1 : 0.8)}`;
    console.log(`${res.files.length} image${res.files.length > 1 ? 's' : ''} ${res.width}x${res.height}, ${res.scheduler} ${res.steps} steps${extra}, guidance ${res.guidance}, seed ${o.seed} (rng ${o.rng ?? 'sdlab'}), backend ${backend.name}, ${((Date.now() - started) / 1000).toFixed(1)} s`);
    for (const l of res.loras) console.log(`lora ${l.file} at scale ${l.scale}: ${l.unetModules} UNet and ${l.textEncoderModules} text-encoder modules merged`);
    for (const f of res.files) console.log(`wrote ${f}`);
    for (const f of res.animations) console.log(`wrote ${f}`);
    if (res.grid) console.log(`wrote ${res.grid}`);
    if (res.latents) console.log(`wrote ${res.latents}`);
    console.log(`wrote ${res.json}`);
  };
}

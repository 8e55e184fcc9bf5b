/**
 * `sdlab txt2img`: Stable Diffusion 1.x inference from imported weights.
 *
 *   npx sdlab txt2img --model path/to/stable-diffusion-v1-5 --prompt "a photograph of an astronaut riding a horse"
 *   npx sdlab txt2img --model v1-5-pruned-emaonly.safetensors --yaml v1-inference.yaml \
 *       --tokenizer path/to/stable-diffusion-v1-5 --prompt "..." --negative-prompt "blurry" \
 *       --steps 30 --scheduler euler --guidance 7.5 --seed 42 --height 512 --width 512 --out out/astronaut
 *
 * --model is a diffusers directory (model_index.json, tokenizer/, text_encoder/, unet/, vae/,
 * scheduler/) or an original single-file checkpoint (.safetensors, CompVis/LDM layout; its yaml
 * with --yaml, else SD 1.x's v1-inference settings). A single file has no tokenizer: --tokenizer
 * names a folder with CLIP's vocab.json + merges.txt (any SD 1.x diffusers directory has one).
 * The scheduler defaults to the model's own (PNDM for SD 1.5); --scheduler picks another,
 * configured from the model's scheduler_config.json.
 *
 * Writes to --out: 0000.png, ... (one per image), grid.png (when more than one) and
 * txt2img.json (the settings, to reproduce the images).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { selectBackend } from '../backend/index.ts';
import { UsageError, check } from '../util/errors.ts';
import { float, int, oneOf } from '../util/options.ts';
import { Progress } from '../util/progress.ts';
import { checkOutputDir, writeFileAtomic } from '../util/fs.ts';
import { MAX_GENERATED_SIDE, MAX_LATENT_PIXELS } from '../util/limits.ts';
import { SCHEDULER_NAMES, schedulerNameForClass } from '../schedule/index.ts';
import { loadDiffusersPipeline, loadLdmPipeline } from '../sample/load.ts';
import type { StableDiffusionPipeline } from '../sample/pipeline.ts';
import { type FloatImage, renderGrid, savePng } from '../viz/index.ts';

export interface Txt2ImgOptions {
  model: string;
  yaml?: string;
  tokenizer?: string;
  textEncoderConfig?: string;
  prompt?: string[];
  negativePrompt?: string;
  /** Images per prompt. */
  n: number;
  steps: number;
  /** Default: the model's scheduler. */
  scheduler?: string;
  guidance: number;
  seed: number;
  height?: number;
  width?: number;
  eta?: number;
  batch: number;
  out: string;
  progress?: NodeJS.WriteStream | null;
}

export interface Txt2ImgResult {
  files: string[];
  grid?: string;
  json: string;
  scheduler: string;
  height: number;
  width: number;
}

/** Loads the pipeline --model names: a diffusers directory or a single .safetensors file. */
export function loadModel(opts: Pick<Txt2ImgOptions, 'model' | 'yaml' | 'tokenizer' | 'textEncoderConfig' | 'scheduler'>): StableDiffusionPipeline {
  if (!fs.existsSync(opts.model)) throw new UsageError(`--model ${opts.model}: no such file or directory (expected a diffusers directory, a .safetensors file or a .ckpt).`);
  if (fs.statSync(opts.model).isDirectory()) {
    if (opts.yaml) throw new UsageError(`--yaml is for single-file checkpoints; ${opts.model} is a diffusers directory.`);
    return loadDiffusersPipeline(opts.model, { scheduler: opts.scheduler, tokenizer: opts.tokenizer });
  }
  return loadLdmPipeline(opts.model, {
    yaml: opts.yaml,
    tokenizer: opts.tokenizer,
    textEncoderConfig: opts.textEncoderConfig,
    scheduler: opts.scheduler,
  });
}

/** --height/--width within [8, MAX_GENERATED_SIDE] (either may be undefined: the model's default). */
function checkImageSide(height: number | undefined, width: number | undefined): void {
  for (const [flag, v] of [['--height', height], ['--width', width]] as const) {
    if (v === undefined) continue;
    check(Number.isInteger(v) && v >= 8 && v <= MAX_GENERATED_SIDE, `${flag}: expected an integer in [8, ${MAX_GENERATED_SIDE}] pixels, got ${v} (Stable Diffusion 1.x is trained at 512; larger images do not fit in memory).`);
  }
}

export async function runTxt2Img(opts: Txt2ImgOptions): Promise<Txt2ImgResult> {
  const prompts = opts.prompt ?? [];
  check(prompts.length > 0, '--prompt: give at least one prompt (repeat --prompt for several; "" is unconditional).');
  check(Number.isInteger(opts.steps) && opts.steps >= 1, `--steps: expected an integer >= 1, got ${opts.steps}.`);
  check(opts.scheduler === undefined || (SCHEDULER_NAMES as readonly string[]).includes(opts.scheduler), `--scheduler: expected one of ${SCHEDULER_NAMES.join(', ')}, got "${opts.scheduler}".`);
  checkImageSide(opts.height, opts.width);
  checkOutputDir('--out', opts.out);
  const pipe = loadModel(opts);
  try {
    const height = opts.height ?? pipe.defaultSize;
    const width = opts.width ?? pipe.defaultSize;
    checkImageSide(height, width); // the model's own default size too
    const f = pipe.vaeScaleFactor;
    check(height % f === 0 && width % f === 0, `--height/--width: expected multiples of ${f} (the VAE's downsampling factor), got ${height}x${width}.`);
    // The VAE's mid-block attention is quadratic in the latent pixels: bounded like `decode`'s.
    check((height / f) * (width / f) <= MAX_LATENT_PIXELS, `--height/--width: ${height}x${width} is ${(height / f) * (width / f)} latent pixels, over sdlab's limit of ${MAX_LATENT_PIXELS} (${Math.sqrt(MAX_LATENT_PIXELS) * f}x${Math.sqrt(MAX_LATENT_PIXELS) * f} at this VAE's 1/${f} scale).`);
    pipe.scheduler.setTimesteps(opts.steps); // one clear line for a bad step count, before any work
    const stepsPerBatch = pipe.scheduler.timesteps.length; // PNDM runs one more than asked
    const schedulerName = opts.scheduler ?? schedulerNameForClass(pipe.scheduler.constructor.name) ?? pipe.scheduler.constructor.name;
    const perImage = prompts.flatMap((p) => new Array<string>(opts.n).fill(p));
    const batches = Math.ceil(perImage.length / opts.batch);
    const progress = opts.progress === null ? null : new Progress({ total: batches * stepsPerBatch, label: 'txt2img', unit: 'step', stream: opts.progress });
    const images: FloatImage[] = [];
    const files: string[] = [];
    await pipe.generate({
      prompts: perImage,
      negativePrompts: opts.negativePrompt ?? '',
      batchSize: opts.batch,
      numInferenceSteps: opts.steps,
      guidanceScale: opts.guidance,
      seed: opts.seed,
      height,
      width,
      eta: opts.eta,
      callback: (s) => progress?.tick(1, `t=${Number.isInteger(s.t) ? s.t : s.t.toFixed(1)}`),
      onBatch: async ({ first, images: batch, height: H, width: W, channels }) => {
        for (let k = 0; k < batch.length; k++) {
          const img: FloatImage = { data: batch[k], height: H, width: W, channels: channels as 1 | 3 };
          images.push(img);
          const file = path.join(opts.out, `${String(first + k).padStart(4, '0')}.png`);
          await savePng(file, renderGrid([img], { pad: 0 }));
          files.push(file);
        }
      },
    });
    progress?.finish();
    let grid: string | undefined;
    if (images.length > 1) {
      grid = path.join(opts.out, 'grid.png');
      await savePng(grid, renderGrid(images, prompts.length > 1 ? { rows: prompts.length, cols: opts.n } : {}));
    }
    const json = path.join(opts.out, 'txt2img.json');
    const settings = {
      model: opts.model,
      yaml: opts.yaml ?? null,
      prompts,
      negative_prompt: opts.negativePrompt ?? '',
      n: opts.n,
      steps: opts.steps,
      scheduler: schedulerName,
      guidance: opts.guidance,
      eta: opts.eta ?? 0,
      seed: opts.seed,
      height,
      width,
      images: files.map((file, index) => ({ file: path.basename(file), prompt: perImage[index], index })),
    };
    await writeFileAtomic(json, JSON.stringify(settings, null, 1) + '\n');
    return { files, grid, json, scheduler: schedulerName, height, width };
  } finally {
    pipe.dispose();
  }
}

export function register(program: Command): void {
  program
    .command('txt2img')
    .description('Stable Diffusion 1.x text-to-image from a diffusers directory or a single .safetensors checkpoint')
    .requiredOption('--model <dir|file>', 'diffusers model directory, or an LDM single file (.safetensors, or a PyTorch .ckpt, read without running its pickle)')
    .option('--yaml <file>', 'the LDM yaml of a single-file checkpoint (default: SD 1.x v1-inference settings)')
    .option('--tokenizer <dir>', 'CLIP tokenizer folder (vocab.json + merges.txt); needed for single files')
    .option('--text-encoder-config <file>', 'text encoder config.json for a single file (default: CLIP ViT-L/14, 64 channels per head)')
    .option('--prompt <text>', 'the prompt (repeat for several)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--negative-prompt <text>', 'what to steer away from (default: none, i.e. the empty prompt)')
    .option('--n <count>', 'images per prompt', int(1, 10_000), 1)
    .option('--steps <n>', 'denoising steps', int(1, 10_000), 50)
    .option('--scheduler <name>', `sampler: ${SCHEDULER_NAMES.join('|')} (default: the model's own)`, oneOf(SCHEDULER_NAMES))
    .option('--guidance <g>', 'classifier-free guidance scale', float(0, 100), 7.5)
    .option('--eta <x>', 'DDIM eta (0 = deterministic)', float(0, 1), 0)
    .option('--seed <n>', 'random seed (image k uses the stream (seed, k))', int(0), 0)
    .option('--height <px>', `image height, at most ${MAX_GENERATED_SIDE} (default: the model's sample size, 512 for SD 1.5)`, int(8))
    .option('--width <px>', `image width, at most ${MAX_GENERATED_SIDE} (default: the model's sample size)`, int(8))
    .option('--batch <n>', 'images per UNet batch', int(1, 1024), 1)
    .option('--out <dir>', 'output directory', 'out/txt2img')
    .option('--backend <name>', 'backend: auto|cuda|tensorflow|native|cpu', process.env.SDLAB_BACKEND ?? 'auto')
    .action(async (o: Txt2ImgOptions & { backend: string }) => {
      const backend = await selectBackend(o.backend);
      const started = Date.now();
      const res = await runTxt2Img(o);
      console.log(`${res.files.length} image${res.files.length > 1 ? 's' : ''} ${res.width}x${res.height}, ${res.scheduler} ${o.steps} steps, guidance ${o.guidance}, seed ${o.seed}, backend ${backend.name}, ${((Date.now() - started) / 1000).toFixed(1)} s`);
      for (const f of res.files) console.log(`wrote ${f}`);
      if (res.grid) console.log(`wrote ${res.grid}`);
      console.log(`wrote ${res.json}`);
    });
}

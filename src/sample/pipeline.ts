/**
 * StableDiffusionPipeline — text (+ image, + mask) → image with a latent diffusion model:
 * diffusers' StableDiffusionPipeline, StableDiffusionImg2ImgPipeline and
 * StableDiffusionInpaintPipeline (v0.24) on ONE denoising loop, unrolled so it reads top to bottom.
 *
 *   1. prompt → tokenizer → TextEncoder.lastHiddenState      = promptEmbeds   [B, L, D]
 *      (CLIP prompts: A1111's (word:1.3) emphasis and chunks of 75 tokens, L = k·77: encodeText)
 *      negative prompt (or "" = unconditional) the same way  = negativeEmbeds [B, L, D]
 *   2. scheduler.setTimesteps(steps); with an init image only the last int(steps · strength) of
 *      them run (startTimesteps: Python's int() truncates, 0.6 of 10 → 6)
 *   3. start latents [B, h, w, C] (h = height / vae factor; `prepareStart`):
 *        txt2img   noise × scheduler.initNoiseSigma
 *        img2img   x0 = scaling_factor · (posterior mean + std · ε) of the init image (a *sample*,
 *                  not the mean); noise added at the first timestep run: scheduler.addNoise(x0,
 *                  noise, t0) (√ᾱ·x0 + √(1−ᾱ)·noise, or x0 + σ·noise for the σ-space samplers;
 *                  initNoiseSigma is not applied)
 *        inpaint   as img2img when strength < 1, as txt2img at strength 1 (or when latents are
 *                  given); plus the mask at latent size (the top-left pixel of each f×f block) and
 *                  the masked image (repaint area set to 0) encoded like the init image
 *   4. for each timestep t (noisiest first):
 *        x    = scheduler.scaleModelInput([latents, latents], t)   (identity except Euler-type)
 *               9-channel inpainting UNets: x = [x, mask, masked-image latents] on channels
 *        eps  = unet(x, t, [negativeEmbeds, promptEmbeds])          ONE UNet call on 2B rows
 *        eps  = eps_uncond + g · (eps_cond − eps_uncond)           classifierFreeGuidance
 *        latents = scheduler.step(eps, t, latents).prevSample
 *               4-channel inpainting: latents = (1 − m)·known + m·latents, known = the encoded
 *               image noised (same noise) to the NEXT timestep, the clean one after the last
 *      With g = 1 the formula is just eps_cond, so the unconditional half is skipped (half the
 *      work). (diffusers skips it for every g ≤ 1; here g < 1 still guides — g = 0 gives the
 *      unconditional model — which is what the formula says.)
 *      LCM-distilled UNets (time_cond_proj_dim set), as LatentConsistencyModelPipeline: the
 *      guidance was distilled into the model, so there is no CFG (B rows, the prompt only, no
 *      negative prompt) and the UNet gets timestep_cond = guidanceScaleEmbedding(g − 1) instead;
 *      defaults g = 8.5 and 4 steps.
 *   5. images = clamp(vae.decode(latents / scaling_factor) / 2 + 0.5, 0, 1)   denormalize (data/pixels.ts)
 *
 * Usage:
 *   const pipe = loadDiffusersPipeline('../shared/fixtures/sd1_tiny/model');       // ./load.ts
 *   const { images } = pipe.call({ prompt: 'a photograph of an astronaut riding a horse',
 *                                  numInferenceSteps: 10, guidanceScale: 7.5, seed: 0 });
 *   pipe.call({ prompt, image, strength: 0.6 })          // img2img: image [1, H, W, 3] in [-1, 1]
 *   pipe.call({ prompt, image, mask })                   // inpainting: mask [1, H, W, 1], 1 = repaint
 *   pipe.generate({ prompts, batchSize: 16, ... , onBatch })    // many prompts, batch by batch
 * Init images and masks are prepared from PNGs as diffusers prepares them: ./image_processor.ts.
 *
 * Reproducibility: by default image k of a run with --seed s draws everything random from its
 * own stream Random(`${s}:${k}`), so an image does not depend on the batch size or on the other
 * images; with `generator` (a TorchGenerator for --rng torch) every random tensor is drawn in
 * diffusers' order and NCHW shape from that one generator (./noise.ts).
 *
 * Memory: every step runs in tf.tidy and disposes the previous latents, so the number of live
 * tensors stays flat across steps (multistep schedulers keep their few previous outputs).
 * Tensors handed to `callback` are disposed after it returns: clone what you keep.
 */
import * as tf from '@tensorflow/tfjs';
import type { Tokenizer } from '../clip/tokenizer.ts';
import type { TextEncoder } from '../clip/text_encoder.ts';
import type { UNet2DConditionModel } from '../unet/unet.ts';
import type { AutoencoderKL } from '../autoencoder/autoencoder.ts';
import type { NoiseGenerator, Scheduler } from '../schedule/base.ts';
import type { Module } from '../nn/module.ts';
import { guidanceScaleEmbedding } from '../nn/blocks.ts';
import { UsageError } from '../util/errors.ts';
import { releaseCachedMemory } from '../util/memory.ts';
import { denormalize } from '../data/pixels.ts';
import { type PipelineNoise, BatchNoiseGenerator, diffusersNoise, imageGenerator, perImageNoise } from './noise.ts';
import { type PromptSyntax, emptyChunk, promptChunks } from './prompt_weighting.ts';

export interface PipelineComponents {
  tokenizer: Tokenizer;
  textEncoder: TextEncoder;
  unet: UNet2DConditionModel;
  vae: AutoencoderKL;
  scheduler: Scheduler;
}

/** What the per-step callback sees (tensors live only during the call). */
export interface StepInfo {
  /** Step number, 0 .. numSteps-1. */
  i: number;
  numSteps: number;
  /** The timestep of this step. */
  t: number;
  /** Latents after the step [B, h, w, C] (diffusion space: multiply by 1/scaling_factor to decode). */
  latents: tf.Tensor4D;
  /** The estimate of the clean latents x0 at this step (scheduler.step's, else scheduler.predictOriginalSample). */
  predOriginalSample: tf.Tensor4D;
  /** The (guided) model output the scheduler stepped with. */
  noisePred: tf.Tensor4D;
}

export interface PipelineCallOptions {
  /** One prompt per image (a single string is one image). "" is unconditional. */
  prompt: string | readonly string[];
  /** What to steer away from: one for all images or one per image. Default "" (unconditional). */
  negativePrompt?: string | readonly string[] | null;
  /** Number of denoising steps (default 50; 4 for LCM-distilled UNets). */
  numInferenceSteps?: number;
  /** Classifier-free guidance scale g (default 7.5; 8.5 for LCM-distilled UNets, where it is a UNet input); 1 = the conditional model alone. */
  guidanceScale?: number;
  /**
   * Guide only while the timestep t lies in [lo, hi] (train timesteps, ends included), the
   * conditional model alone (g = 1, half the UNet work) elsewhere: "guidance in a limited
   * interval" (Kynkäänniemi et al. 2024, arXiv 2404.07724) — guidance at high noise levels is what
   * collapses variety, at low noise it barely matters. Default: every step.
   */
  guidanceInterval?: readonly [number, number] | null;
  /** Image size in pixels (default: the UNet's sample_size × the VAE's downsampling factor). */
  height?: number;
  width?: number;
  /**
   * The start noise [B, h, w, C] NHWC (wins over drawing it): txt2img and inpainting start from
   * latents × initNoiseSigma — for inpainting at any strength, as diffusers' `latents` argument
   * (below strength 1 the init image then enters only through the mask channels or the blend);
   * img2img adds it to the encoded init image (diffusers 0.24's img2img takes no latents).
   */
  latents?: tf.Tensor4D;
  /** Seed of the per-image noise streams (default 0). */
  seed?: number;
  /**
   * One generator drawn in diffusers' order and NCHW shapes for the whole call (./noise.ts), e.g.
   * a TorchGenerator: then `seed` and `firstIndex` are not used.
   */
  generator?: NoiseGenerator;
  /** img2img / inpainting: the init image [1 or B, H, W, 3] in [-1, 1] at height × width (image_processor.ts preprocessImage). */
  image?: tf.Tensor4D;
  /** Inpainting: the binarised mask [1 or B, H, W, 1], 1 = repaint (preprocessMask). Needs `image`. */
  mask?: tf.Tensor4D;
  /** With an image: the share of the schedule that runs, in (0, 1] (default 0.8 for img2img, 1 for inpainting, as diffusers). */
  strength?: number;
  /** Also return the start noise (`noise`, NHWC): what --save-latents writes. */
  returnNoise?: boolean;
  /** Sees the intermediates by name (posterior_mean, image_latents, mask_latent, unet_input_step0, …); they live only during the call. */
  inspect?: (name: string, t: tf.Tensor) => void;
  /** Index of this call's first image in the whole run (image k uses stream `${seed}:${firstIndex + k}`). */
  firstIndex?: number;
  /** DDIM's η (0 = deterministic). */
  eta?: number;
  /** Called after every step. */
  callback?: (step: StepInfo) => void;
}

export interface PipelineOutput {
  /** [B, H, W, out_channels] in [0, 1]. */
  images: tf.Tensor4D;
  /** Final latents [B, h, w, C] (before / scaling_factor). */
  latents: tf.Tensor4D;
  /** The encoder states the UNet attended to: [negative; prompt] (2B rows), or just the prompt's with g = 1. */
  promptEmbeds: tf.Tensor3D;
  /** The start noise [B, h, w, C] (with returnNoise). */
  noise?: tf.Tensor4D;
}

export interface GenerateOptions extends Omit<PipelineCallOptions, 'prompt' | 'negativePrompt' | 'latents' | 'firstIndex' | 'callback' | 'returnNoise' | 'inspect'> {
  /** Stream index of the run's first image (default 0): a re-run of image k of an earlier run (--from-png) passes k. */
  firstIndex?: number;
  /** Start noise for every image of the run [N, h, w, C] (each batch takes its rows). */
  latents?: tf.Tensor4D;
  /** One prompt per image. */
  prompts: readonly string[];
  /** One for all, or one per image. */
  negativePrompts?: string | readonly string[] | null;
  /** Images per UNet batch (the UNet sees 2× this with guidance). */
  batchSize: number;
  /** Called after each step of each batch; `first` is the batch's first image index. */
  callback?: (step: StepInfo & { first: number }) => void;
  /** Receives each batch's images [b, H, W, C] in [0, 1] as plain arrays (one per image, HWC). */
  onBatch?: (batch: { first: number; images: Float32Array[]; height: number; width: number; channels: number; noise?: Float32Array }) => void | Promise<void>;
  /** Hand each batch's start noise (NHWC values) to onBatch as `noise`. */
  returnNoise?: boolean;
}

/** What a call starts from and keeps through the loop (prepareStart). */
interface Start {
  /** The latents entering the first step. */
  latents: tf.Tensor4D;
  /** The start noise (given or drawn). */
  noise: tf.Tensor4D;
  /** 9-channel inpainting: [mask, masked-image latents] [B, h, w, 5], appended to each CFG half's UNet input. */
  extraChannels: tf.Tensor4D | null;
  /** 4-channel inpainting: the encoded init image and the latent mask, blended in after every step. */
  blend: { imageLatents: tf.Tensor4D; mask: tf.Tensor4D } | null;
  /** Tensors to release after the call. */
  owned: tf.Tensor[];
}

/** Latents or images that hold NaN/Inf (requireFinite): bad input from the user's files, one line. */
export class NonFiniteError extends UsageError {
  constructor(message: string) {
    super(message);
    this.name = 'NonFiniteError';
  }
}

/**
 * Throws one line (a NonFiniteError) when `t` holds NaN or ±Infinity — the check every picture sdlab writes from a
 * model passes first (sample, txt2img, the sample sheets and training grids through the
 * pipeline; decode, encode and interpolate in commands/encode.ts): non-finite numbers would
 * otherwise be drawn as black pixels and the command would succeed. The message names the
 * likely cause: the first of `suspects` whose weights are not finite, else `otherwise`.
 */
export function requireFinite(t: tf.Tensor, what: string, suspects: ReadonlyArray<[string, Module]>, otherwise: string): void {
  if (tf.tidy(() => tf.all(tf.isFinite(t)).dataSync()[0])) return;
  for (const [label, model] of suspects) {
    const bad = model.firstNonFiniteParameter();
    if (bad !== null) throw new NonFiniteError(`${what} hold NaN/Inf values: the ${label}'s weights are not finite (${bad}).`);
  }
  throw new NonFiniteError(`${what} hold NaN/Inf values: ${otherwise}.`);
}

/**
 * Classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598): push the prediction away from
 * the unconditional one, ε = ε_uncond + g · (ε_cond − ε_uncond). g = 1 is the conditional model
 * alone; larger g follows the text more closely and trades away variety.
 */
export function classifierFreeGuidance<T extends tf.Tensor>(uncond: T, cond: T, g: number): T {
  return tf.tidy(() => tf.add(uncond, tf.mul(tf.sub(cond, uncond), g)) as T);
}

export class StableDiffusionPipeline {
  readonly tokenizer: Tokenizer;
  readonly textEncoder: TextEncoder;
  readonly unet: UNet2DConditionModel;
  readonly vae: AutoencoderKL;
  scheduler: Scheduler;
  /** How prompts are read (./prompt_weighting.ts): a1111 (emphasis, chunks of 75) or plain (diffusers' encode). */
  promptSyntax: PromptSyntax = 'a1111';

  constructor(c: PipelineComponents) {
    this.tokenizer = c.tokenizer;
    this.textEncoder = c.textEncoder;
    this.unet = c.unet;
    this.vae = c.vae;
    this.scheduler = c.scheduler;
    checkCompatible(c);
    releaseCachedMemory(); // loading's transient buffers (util/memory.ts)
  }

  /** Spatial factor between pixels and latents (8 for SD). */
  get vaeScaleFactor(): number {
    return this.vae.downsampleFactor;
  }

  /** Upstream's step count for this model: 4 for LCM-distilled UNets (time_cond_proj_dim set), else 50. */
  get defaultSteps(): number {
    return this.unet.config.time_cond_proj_dim ? 4 : 50;
  }

  /** Upstream's guidance scale for this model: 8.5 for LCM-distilled UNets (there a UNet input), else 7.5. */
  get defaultGuidance(): number {
    return this.unet.config.time_cond_proj_dim ? 8.5 : 7.5;
  }

  /** Default image size: the UNet's sample_size in pixels (512 for SD 1.5, 32 for the MNIST presets). */
  get defaultSize(): number {
    return (this.unet.config.sample_size ?? 64) * this.vaeScaleFactor;
  }

  /**
   * lastHiddenState for each text [N, k·L, D]: CLIP prompts are read as A1111 reads them —
   * (word:1.3) emphasis, and longer prompts as k chunks of 75 tokens, each encoded on its own and
   * concatenated along the sequence, every text padded to the most chunks among `texts`
   * (./prompt_weighting.ts). Each distinct text is encoded once (a batch of 64 copies of one
   * prompt costs one text-encoder row), then rows are gathered back in order.
   */
  encodeText(texts: readonly string[]): tf.Tensor3D {
    const unique = [...new Set(texts)];
    const read = unique.map((t) => promptChunks(this.tokenizer, t, { syntax: this.promptSyntax }));
    const k = Math.max(...read.map((r) => r.ids.length));
    const empty = k > 1 ? emptyChunk(this.tokenizer) : [];
    // k = 1 (every prompt within 75 tokens): exactly the rows of tokenizer.encode, as always.
    const ids = read.flatMap((r) => [...r.ids, ...new Array<number[]>(k - r.ids.length).fill(empty)]);
    return tf.tidy(() => {
      let states = this.textEncoder.forward(tf.tensor2d(ids, [ids.length, ids[0].length], 'int32')).lastHiddenState;
      const [, l, d] = states.shape;
      if (k > 1) states = tf.reshape(states, [unique.length, k * l, d]);
      if (read.some((r) => r.weights)) {
        const rows = tf.unstack(states) as tf.Tensor2D[];
        states = tf.stack(rows.map((z, u) => (read[u].weights ? applyEmphasis(z, read[u].weights!, l) : z))) as tf.Tensor3D;
      }
      if (unique.length === texts.length && unique.every((u, i) => u === texts[i])) return states;
      const index = tf.tensor1d(texts.map((t) => unique.indexOf(t)), 'int32');
      return tf.gather(states, index) as tf.Tensor3D;
    });
  }

  /**
   * The encoder states the UNet attends to: [negative; prompt] (2B rows, unconditional first, as
   * diffusers' encode_prompt + torch.cat) with guidance, else just the prompt's B rows.
   */
  encodePrompt(prompts: readonly string[], negative: readonly string[], doGuidance: boolean): tf.Tensor3D {
    return doGuidance ? this.encodeText([...negative, ...prompts]) : this.encodeText(prompts);
  }

  /** Standard normal latents [B, h, w, C], image k from imageGenerator(seed, first + k). */
  prepareLatents(batch: number, height: number, width: number, seed: number, first = 0): tf.Tensor4D {
    const h = height / this.vaeScaleFactor;
    const w = width / this.vaeScaleFactor;
    const c = this.vae.config.latent_channels;
    const streams = Array.from({ length: batch }, (_, k) => imageGenerator(seed, first + k));
    return tf.tensor4d(new BatchNoiseGenerator(streams).normalArray(batch * h * w * c), [batch, h, w, c]);
  }

  /** Does the UNet take [latents, mask, masked-image latents] (an inpainting UNet, e.g. sd-v1-5-inpainting)? */
  get isInpaintingUnet(): boolean {
    return this.unet.config.in_channels === 2 * this.vae.config.latent_channels + 1;
  }

  /**
   * Init image(s) [n, H, W, 3] in [-1, 1] → diffusion-space latents for `b` images:
   * scaling_factor · (mean + std · ε), std = exp(logvar / 2), ε drawn from `noise` (diffusers
   * encodes one image once: one draw shared by the batch). `name` prefixes the inspected tensors.
   */
  encodeImage(image: tf.Tensor4D, b: number, noise: PipelineNoise, name: string, inspect?: PipelineCallOptions['inspect']): tf.Tensor4D {
    const n = image.shape[0];
    const dist = this.vae.encode(image);
    try {
      const [, h, w, c] = dist.mean.shape;
      const eps = noise.latents(b, h, w, c, n === 1);
      return tf.tidy(() => {
        const std = tf.exp(tf.mul(dist.logvar, 0.5));
        inspect?.(`${name}posterior_mean`, dist.mean);
        inspect?.(`${name}posterior_std`, std);
        const rows = (t: tf.Tensor4D) => (n === b ? t : (tf.tile(t, [b, 1, 1, 1]) as tf.Tensor4D));
        const z = tf.mul(tf.add(rows(dist.mean), tf.mul(rows(std as tf.Tensor4D), eps)), this.vae.scalingFactor) as tf.Tensor4D;
        eps.dispose();
        return z;
      });
    } finally {
      tf.dispose([dist.mean, dist.logvar]);
    }
  }

  /**
   * The timesteps a call runs: all of the schedule, or with an init image its last
   * int(steps · strength) (diffusers' get_timesteps: `timesteps[t_start · order:]`, order 1 for
   * every sdlab scheduler; PNDM's repeated warm-up timestep shifts its start as upstream).
   */
  startTimesteps(steps: number, strength: number | null): number[] {
    const all = this.scheduler.timesteps;
    if (strength === null) return all;
    const initTimestep = Math.min(Math.trunc(steps * strength), steps);
    const tStart = Math.max(steps - initTimestep, 0);
    if (steps - tStart < 1) {
      throw new UsageError(`strength ${strength} with ${steps} steps runs int(${steps} × ${strength}) = 0 steps: raise --strength or --steps.`);
    }
    return all.slice(tStart);
  }

  /** Step 3 of the header: the start latents, and what inpainting keeps for the loop. */
  private prepareStart(
    opts: PipelineCallOptions,
    shape: [number, number, number, number],
    t0: number,
    strength: number | null,
    noise: PipelineNoise,
  ): Start {
    const [b, h, w, c] = shape;
    const scheduler = this.scheduler;
    const inspect = opts.inspect;
    const owned: tf.Tensor[] = [];
    const given = opts.latents ? opts.latents.clone() : null;
    const drawNoise = () => given ?? noise.latents(b, h, w, c);
    try {
      // txt2img: noise × initNoiseSigma
      if (!opts.image) {
        const n = owned[owned.push(drawNoise()) - 1] as tf.Tensor4D;
        return { latents: tf.mul(n, scheduler.initNoiseSigma) as tf.Tensor4D, noise: n, extraChannels: null, blend: null, owned };
      }
      // img2img: the init image's posterior sample, noised to the first timestep run
      if (!opts.mask) {
        const x0 = owned[owned.push(this.encodeImage(opts.image, b, noise, '', inspect)) - 1] as tf.Tensor4D;
        inspect?.('image_latents', x0);
        const n = owned[owned.push(drawNoise()) - 1] as tf.Tensor4D;
        return { latents: scheduler.addNoise(x0, n, t0) as tf.Tensor4D, noise: n, extraChannels: null, blend: null, owned };
      }
      // inpainting (diffusers' prepare_latents, then prepare_mask_latents), draws in that order
      const nineChannels = this.isInpaintingUnet;
      const fromImage = strength !== null && strength < 1 && !given;
      let x0: tf.Tensor4D | null = null;
      if (!nineChannels || fromImage) {
        x0 = owned[owned.push(this.encodeImage(opts.image, b, noise, '', inspect)) - 1] as tf.Tensor4D;
        inspect?.('image_latents', x0);
      }
      const n = owned[owned.push(drawNoise()) - 1] as tf.Tensor4D;
      const latents = (fromImage ? scheduler.addNoise(x0!, n, t0) : tf.mul(n, scheduler.initNoiseSigma)) as tf.Tensor4D;
      owned.push(latents);
      const f = this.vaeScaleFactor;
      const mask = opts.mask;
      const maskedImage = owned[owned.push(tf.tidy(() => tf.mul(opts.image!, tf.cast(tf.less(mask, 0.5), 'float32')))) - 1] as tf.Tensor4D;
      inspect?.('masked_image', maskedImage);
      // F.interpolate(mode 'nearest') to h × w: latent (i, j) takes pixel (f·i, f·j), not an average.
      const rows = (t: tf.Tensor4D) => (t.shape[0] === b ? t : (tf.tile(t, [b, 1, 1, 1]) as tf.Tensor4D));
      const maskLatent = owned[owned.push(tf.tidy(() => rows(tf.stridedSlice(mask, [0, 0, 0, 0], mask.shape, [1, f, f, 1]) as tf.Tensor4D))) - 1] as tf.Tensor4D;
      inspect?.('mask_latent', maskLatent);
      // Encoded (a draw) even for 4-channel UNets, which do not use it: diffusers does.
      const maskedLatents = owned[owned.push(this.encodeImage(maskedImage, b, noise, 'masked_image_', inspect)) - 1] as tf.Tensor4D;
      inspect?.('masked_image_latents', maskedLatents);
      owned.splice(owned.indexOf(latents), 1);
      if (nineChannels) {
        const extra = owned[owned.push(tf.concat([maskLatent, maskedLatents], 3)) - 1] as tf.Tensor4D;
        return { latents, noise: n, extraChannels: extra, blend: null, owned };
      }
      return { latents, noise: n, extraChannels: null, blend: { imageLatents: x0!, mask: maskLatent }, owned };
    } catch (err) {
      tf.dispose(owned);
      throw err;
    }
  }

  /**
   * Diffusion-space latents → images in [0, 1]: vae.decode(latents / scaling_factor), denormalised.
   * Decoded values that are not finite fail here (requireFinite), not as black pixels.
   */
  decodeLatents(latents: tf.Tensor4D): tf.Tensor4D {
    const decoded = tf.tidy(() => this.vae.decode(tf.div(latents, this.vae.scalingFactor) as tf.Tensor4D));
    try {
      requireFinite(decoded, 'pipeline: the decoded images', [['VAE', this.vae]], 'the latents were finite, so the VAE decoder overflowed');
      return denormalize(decoded);
    } finally {
      decoded.dispose();
    }
  }

  /** Generates one batch of images (all in one UNet batch): txt2img, img2img (`image`) or inpainting (`image` + `mask`). */
  call(opts: PipelineCallOptions): PipelineOutput {
    const prompts = typeof opts.prompt === 'string' ? [opts.prompt] : [...opts.prompt];
    const b = prompts.length;
    if (b === 0) throw new UsageError('pipeline: no prompts (give at least one; "" is the unconditional prompt).');
    const negative = perImage(opts.negativePrompt ?? '', b, 'negative prompt');
    // LCM-distilled UNets take the guidance scale as an input (see the file header).
    const guidanceDim = this.unet.config.time_cond_proj_dim;
    const steps = opts.numInferenceSteps ?? this.defaultSteps;
    const g = opts.guidanceScale ?? this.defaultGuidance;
    if (!Number.isInteger(steps) || steps < 1) throw new UsageError(`steps: expected an integer >= 1, got ${steps}.`);
    if (!Number.isFinite(g)) throw new UsageError(`guidance: expected a number, got ${g}.`);
    const iv = opts.guidanceInterval;
    if (iv && !(iv.length === 2 && Number.isFinite(iv[0]) && Number.isFinite(iv[1]) && iv[0] <= iv[1])) {
      throw new UsageError(`guidance interval: expected [lo, hi] timesteps with lo <= hi, got [${iv.join(', ')}].`);
    }
    const f = this.vaeScaleFactor;
    // Sizes: given, else the init image's, else the model's.
    const height = opts.height ?? opts.image?.shape[1] ?? this.defaultSize;
    const width = opts.width ?? opts.image?.shape[2] ?? this.defaultSize;
    if (!(Number.isInteger(height) && Number.isInteger(width) && height > 0 && width > 0 && height % f === 0 && width % f === 0)) {
      throw new UsageError(`height/width: expected positive multiples of ${f} (the VAE's downsampling factor), got ${height}x${width}.`);
    }
    const strength = this.checkConditioning(opts, b, height, width);
    const doGuidance = !guidanceDim && g !== 1;
    const scheduler = this.scheduler;
    const [h, w, c] = [height / f, width / f, this.vae.config.latent_channels];
    if (opts.latents && !tf.util.arraysEqual(opts.latents.shape, [b, h, w, c])) {
      throw new UsageError(`pipeline: latents have shape [${opts.latents.shape}], expected [${[b, h, w, c]}] (NHWC).`);
    }
    // Stochastic schedulers draw their fresh noise from the same source, after the start's draws.
    const noise = opts.generator ? diffusersNoise(opts.generator) : perImageNoise(opts.seed ?? 0, opts.firstIndex ?? 0, b);
    const generator = noise.stepGenerator(b, h, w, c);

    // 1. text → encoder states
    const embeds = this.encodePrompt(prompts, negative, doGuidance);
    const timestepCond = guidanceDim ? guidanceScaleEmbedding(Array(b).fill(g - 1), guidanceDim) : null;

    let start: Start | null = null;
    let latents: tf.Tensor4D | null = null;
    try {
      // 2. timesteps (the tail of the schedule with an init image)
      scheduler.setTimesteps(steps);
      const timesteps = this.startTimesteps(steps, strength);

      // 3. start latents (and inpainting's mask inputs)
      start = this.prepareStart(opts, [b, h, w, c], timesteps[0], strength, noise);
      latents = start.latents;
      opts.inspect?.('start_latents', latents);
      const extra = start.extraChannels ? (doGuidance ? tf.concat([start.extraChannels, start.extraChannels]) : start.extraChannels.clone()) : null;
      if (extra) start.owned.push(extra);
      // Steps outside the guidance interval run the prompt's rows only.
      const interval = doGuidance ? (iv ?? null) : null;
      // (start.extraChannels is owned by start and lives through the loop: no copy needed.)
      const condOnly = interval ? { embeds: embeds.slice([b, 0, 0]), extra: start.extraChannels } : null;
      if (condOnly) start.owned.push(condOnly.embeds);

      // 4. the denoising loop
      for (let i = 0; i < timesteps.length; i++) {
        const t = timesteps[i];
        const x = latents;
        const guided = doGuidance && (!interval || (t >= interval[0] && t <= interval[1]));
        const noisePred = tf.tidy(() => {
          let modelInput = scheduler.scaleModelInput(guided ? tf.concat([x, x]) : x, t) as tf.Tensor4D;
          const ex = guided || !condOnly ? extra : condOnly.extra;
          if (ex) modelInput = tf.concat([modelInput, ex], 3);
          const out = this.unet.forward(modelInput, t, guided || !condOnly ? embeds : condOnly.embeds, { timestepCond });
          if (i === 0 && opts.inspect) {
            opts.inspect('unet_input_step0', modelInput);
            opts.inspect('unet_output_step0', out);
          }
          if (!guided) return out;
          const [uncond, cond] = tf.split(out, 2, 0) as [tf.Tensor4D, tf.Tensor4D];
          return classifierFreeGuidance(uncond, cond, g);
        });
        const stepped = scheduler.step(noisePred, t, x, { eta: opts.eta, generator });
        let next = stepped.prevSample as tf.Tensor4D;
        if (start.blend) next = this.blendKnown(next, start.blend, start.noise, timesteps, i);
        // Schedulers that report no x0 (PNDM, DPM-Solver) are asked for it: pictures only.
        const x0 = opts.callback ? ((stepped.predOriginalSample ?? scheduler.predictOriginalSample(noisePred, t, x)) as tf.Tensor4D) : null;
        if (!opts.callback) stepped.predOriginalSample?.dispose();
        x.dispose();
        latents = next;
        try {
          if (opts.callback) opts.callback({ i, numSteps: timesteps.length, t, latents: next, predOriginalSample: x0!, noisePred });
        } finally {
          x0?.dispose();
          noisePred.dispose();
        }
      }

      // 5. decode (latents that are not finite would decode to black images: say why instead)
      requireFinite(latents, 'pipeline: the sampled latents', [['UNet', this.unet], ['text encoder', this.textEncoder]], `the weights are finite, so sampling diverged (scheduler ${scheduler.constructor.name}, guidance ${g}): try another scheduler or a lower guidance`);
      // The denoising loop's cached buffers go back before the decoder's larger ones (util/memory.ts).
      releaseCachedMemory();
      const images = this.decodeLatents(latents);
      const out: PipelineOutput = { images, latents, promptEmbeds: embeds };
      if (opts.returnNoise) out.noise = start.noise.clone();
      return out;
    } catch (err) {
      tf.dispose([embeds, ...(latents ? [latents] : [])]);
      throw err;
    } finally {
      if (start) tf.dispose(start.owned);
      timestepCond?.dispose();
    }
  }

  /**
   * 4-channel inpainting after step i: latents = (1 − m)·known + m·latents, where known is the
   * encoded init image noised with the start noise to the next timestep (diffusers'
   * init_latents_proper), or the clean encoded image after the last step.
   */
  private blendKnown(stepped: tf.Tensor4D, blend: NonNullable<Start['blend']>, noise: tf.Tensor4D, timesteps: readonly number[], i: number): tf.Tensor4D {
    const out = tf.tidy(() => {
      const known = i < timesteps.length - 1 ? this.scheduler.addNoise(blend.imageLatents, noise, timesteps[i + 1]) : blend.imageLatents;
      return tf.add(tf.mul(tf.sub(1, blend.mask), known), tf.mul(blend.mask, stepped)) as tf.Tensor4D;
    });
    stepped.dispose();
    return out;
  }

  /** Checks image / mask / strength against the call; the strength that applies (null: txt2img). */
  private checkConditioning(opts: PipelineCallOptions, b: number, height: number, width: number): number | null {
    const { image, mask } = opts;
    if (!image) {
      if (mask) throw new UsageError('pipeline: a mask needs an init image (inpainting takes both).');
      if (opts.strength !== undefined) throw new UsageError('pipeline: strength needs an init image (img2img or inpainting).');
      if (this.isInpaintingUnet) throw new UsageError(`pipeline: this UNet takes ${this.unet.config.in_channels} input channels (an inpainting UNet): it needs an init image and a mask (sdlab inpaint).`);
      return null;
    }
    const strength = opts.strength ?? (mask ? 1 : 0.8);
    if (!(strength > 0 && strength <= 1)) throw new UsageError(`strength: expected a number in (0, 1], got ${strength}.`);
    const want = (t: tf.Tensor4D, ch: number, what: string) => {
      if (t.rank !== 4 || (t.shape[0] !== 1 && t.shape[0] !== b) || t.shape[1] !== height || t.shape[2] !== width || t.shape[3] !== ch) {
        throw new UsageError(`pipeline: the ${what} has shape [${t.shape}], expected [1 or ${b}, ${height}, ${width}, ${ch}] (NHWC at the output size).`);
      }
    };
    want(image, this.vae.config.in_channels, 'init image');
    if (mask) want(mask, 1, 'mask');
    if (!mask && this.isInpaintingUnet) throw new UsageError(`pipeline: this UNet takes ${this.unet.config.in_channels} input channels (an inpainting UNet): it needs a mask too (sdlab inpaint).`);
    return strength;
  }

  /**
   * Generates an image per prompt, `batchSize` at a time; image k is reproducible from
   * (seed, k) alone. Images are handed to `onBatch` as plain arrays and not kept here.
   */
  async generate(opts: GenerateOptions): Promise<void> {
    const { prompts, batchSize } = opts;
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new UsageError(`--batch: expected an integer >= 1, got ${batchSize}.`);
    const negative = perImage(opts.negativePrompts ?? '', prompts.length, 'negative prompt');
    if (opts.latents && opts.latents.shape[0] !== prompts.length) {
      throw new UsageError(`pipeline: latents for ${opts.latents.shape[0]} images, expected one per image (${prompts.length}).`);
    }
    for (let first = 0; first < prompts.length; first += batchSize) {
      const end = Math.min(prompts.length, first + batchSize);
      const latents = opts.latents ? tf.slice(opts.latents, [first], [end - first]) : undefined;
      let out: PipelineOutput;
      try {
        out = this.call({
          ...opts,
          prompt: prompts.slice(first, end),
          negativePrompt: negative.slice(first, end),
          firstIndex: (opts.firstIndex ?? 0) + first,
          latents,
          callback: opts.callback ? (s) => opts.callback!({ ...s, first }) : undefined,
        });
      } finally {
        latents?.dispose();
      }
      const [n, H, W, C] = out.images.shape;
      const data = (await out.images.data()) as Float32Array;
      const noise = out.noise ? ((await out.noise.data()) as Float32Array) : undefined;
      tf.dispose([out.images, out.latents, out.promptEmbeds, ...(out.noise ? [out.noise] : [])]);
      const per = H * W * C;
      const images = Array.from({ length: n }, (_, k) => data.slice(k * per, (k + 1) * per));
      await opts.onBatch?.({ first, images, height: H, width: W, channels: C, noise });
    }
  }

  /** Releases the weights of every component. */
  dispose(): void {
    this.textEncoder.dispose();
    this.unet.dispose();
    this.vae.dispose();
    this.scheduler.dispose();
  }
}

/** One value for all B images, or exactly B values. */
function perImage(v: string | readonly string[], b: number, what: string): string[] {
  if (typeof v === 'string') return new Array<string>(b).fill(v);
  if (v.length === 1) return new Array<string>(b).fill(v[0]);
  if (v.length !== b) throw new UsageError(`pipeline: got ${v.length} values for the ${what}, expected 1 or ${b} (one per image).`);
  return [...v];
}

/** Throws a one-line error when the components were not made for each other. */
function checkCompatible(c: PipelineComponents): void {
  const d = c.textEncoder.hiddenSize;
  const cross = c.unet.plan.crossAttentionDim;
  if (c.unet.hasCrossAttention && cross !== d) {
    throw new UsageError(`pipeline: the UNet attends to ${cross}-wide text vectors (cross_attention_dim) but the text encoder makes ${d}-wide ones (hidden_size): they were not trained together.`);
  }
  const lc = c.vae.config.latent_channels;
  // An inpainting UNet reads [latents, mask, masked-image latents]: 2·lc + 1 channels in.
  if ((c.unet.config.in_channels !== lc && c.unet.config.in_channels !== 2 * lc + 1) || c.unet.config.out_channels !== lc) {
    throw new UsageError(`pipeline: the UNet has in/out_channels ${c.unet.config.in_channels}/${c.unet.config.out_channels} but the VAE makes ${lc}-channel latents (latent_channels): expected ${lc}/${lc}, or ${2 * lc + 1}/${lc} for an inpainting UNet.`);
  }
  if (c.tokenizer.maxLength > c.textEncoder.maxLength) {
    throw new UsageError(`pipeline: the tokenizer makes ${c.tokenizer.maxLength}-token encodings but the text encoder reads at most ${c.textEncoder.maxLength} (max_position_embeddings).`);
  }
  if (c.tokenizer.vocabSize > c.textEncoder.config.vocab_size) {
    throw new UsageError(`pipeline: the tokenizer has ${c.tokenizer.vocabSize} tokens but the text encoder's vocab_size is ${c.textEncoder.config.vocab_size}.`);
  }
}

/**
 * A1111's "Original" emphasis on one prompt's hidden states z [k·L, D]: each chunk of L rows is
 * multiplied row by row by its weights, then rescaled so its mean equals the unweighted mean
 * (./prompt_weighting.ts). Weights of 1 give z back (the ratio is exactly 1).
 */
export function applyEmphasis(z: tf.Tensor2D, weights: readonly (readonly number[])[], l: number): tf.Tensor2D {
  return tf.tidy(() => {
    const chunks = weights.map((w, c) => {
      const zc = tf.slice(z, [c * l, 0], [l, z.shape[1]]);
      const weighted = tf.mul(zc, tf.tensor2d(w as number[], [l, 1]));
      return tf.mul(weighted, tf.div(tf.mean(zc), tf.mean(weighted)));
    });
    // Padding chunks (no weights of their own) stay as they are.
    const rest = z.shape[0] / l - weights.length;
    if (rest > 0) chunks.push(tf.slice(z, [weights.length * l, 0], [rest * l, z.shape[1]]));
    return tf.concat(chunks, 0) as tf.Tensor2D;
  });
}

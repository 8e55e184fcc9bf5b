/**
 * StableDiffusionPipeline — text → image with a latent diffusion model: diffusers'
 * StableDiffusionPipeline.__call__ (v0.24), its loop unrolled so it reads top to bottom.
 *
 *   1. prompt → tokenizer → TextEncoder.lastHiddenState      = promptEmbeds   [B, L, D]
 *      negative prompt (or "" = unconditional) the same way  = negativeEmbeds [B, L, D]
 *   2. latents ~ N(0, I) [B, h, w, C] (seeded per image, or given) × scheduler.initNoiseSigma,
 *      with h = height / vae factor; scheduler.setTimesteps(steps)
 *   3. for each timestep t (noisiest first):
 *        x    = scheduler.scaleModelInput([latents, latents], t)   (identity except Euler-type)
 *        eps  = unet(x, t, [negativeEmbeds, promptEmbeds])          ONE UNet call on 2B rows
 *        eps  = eps_uncond + g · (eps_cond − eps_uncond)           classifierFreeGuidance
 *        latents = scheduler.step(eps, t, latents).prevSample
 *      With g = 1 the formula is just eps_cond, so the unconditional half is skipped (half the
 *      work). (diffusers skips it for every g ≤ 1; here g < 1 still guides — g = 0 gives the
 *      unconditional model — which is what the formula says.)
 *   4. images = clamp(vae.decode(latents / scaling_factor) / 2 + 0.5, 0, 1)   denormalize (data/pixels.ts)
 *
 * Usage:
 *   const pipe = loadDiffusersPipeline('../shared/fixtures/sd1_tiny/model');       // ./load.ts
 *   const { images } = pipe.call({ prompt: 'a photograph of an astronaut riding a horse',
 *                                  numInferenceSteps: 10, guidanceScale: 7.5, seed: 0 });
 *   pipe.generate({ prompts, batchSize: 16, ... , onBatch })    // many prompts, batch by batch
 *
 * Reproducibility: image k of a run with --seed s draws everything random (its initial noise,
 * and the fresh noise of stochastic schedulers such as ddpm and euler_a) from its own stream
 * Random(`${s}:${k}`), so an image does not depend on the batch size or on the other images.
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
import { UsageError } from '../util/errors.ts';
import { Random } from '../util/random.ts';
import { denormalize } from '../data/pixels.ts';

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
  /** Number of denoising steps (default 50). */
  numInferenceSteps?: number;
  /** Classifier-free guidance scale g (default 7.5); 1 = the conditional model alone. */
  guidanceScale?: number;
  /** Image size in pixels (default: the UNet's sample_size × the VAE's downsampling factor). */
  height?: number;
  width?: number;
  /** Initial noise [B, h, w, C] NHWC, before × initNoiseSigma (wins over seed). */
  latents?: tf.Tensor4D;
  /** Seed of the per-image noise streams (default 0). */
  seed?: number;
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
}

export interface GenerateOptions extends Omit<PipelineCallOptions, 'prompt' | 'negativePrompt' | 'latents' | 'firstIndex' | 'callback'> {
  /** One prompt per image. */
  prompts: readonly string[];
  /** One for all, or one per image. */
  negativePrompts?: string | readonly string[] | null;
  /** Images per UNet batch (the UNet sees 2× this with guidance). */
  batchSize: number;
  /** Called after each step of each batch; `first` is the batch's first image index. */
  callback?: (step: StepInfo & { first: number }) => void;
  /** Receives each batch's images [b, H, W, C] in [0, 1] as plain arrays (one per image, HWC). */
  onBatch?: (batch: { first: number; images: Float32Array[]; height: number; width: number; channels: number }) => void | Promise<void>;
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

/** The per-image noise stream of image `index` of a run seeded with `seed`. */
export function imageGenerator(seed: number, index: number): Random {
  return new Random(`${seed}:${index}`);
}

/**
 * One noise generator for a batch that draws each image's share from that image's own stream:
 * normalArray(B·n) = [stream0.normalArray(n), stream1.normalArray(n), ...]. This is what makes
 * image k independent of the batch it ran in.
 */
export class BatchNoiseGenerator implements NoiseGenerator {
  constructor(readonly streams: readonly NoiseGenerator[]) {}

  normalArray(n: number): Float32Array {
    const b = this.streams.length;
    if (n % b !== 0) throw new Error(`BatchNoiseGenerator: ${n} numbers do not split over ${b} images.`);
    const per = n / b;
    const out = new Float32Array(n);
    this.streams.forEach((s, k) => out.set(s.normalArray(per), k * per));
    return out;
  }
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

  constructor(c: PipelineComponents) {
    this.tokenizer = c.tokenizer;
    this.textEncoder = c.textEncoder;
    this.unet = c.unet;
    this.vae = c.vae;
    this.scheduler = c.scheduler;
    checkCompatible(c);
  }

  /** Spatial factor between pixels and latents (8 for SD). */
  get vaeScaleFactor(): number {
    return this.vae.downsampleFactor;
  }

  /** Default image size: the UNet's sample_size in pixels (512 for SD 1.5, 32 for the MNIST presets). */
  get defaultSize(): number {
    return (this.unet.config.sample_size ?? 64) * this.vaeScaleFactor;
  }

  /**
   * lastHiddenState for each text [N, L, D]. Each distinct text is encoded once (a batch of 64
   * copies of one prompt costs one text-encoder row), then rows are gathered back in order.
   */
  encodeText(texts: readonly string[]): tf.Tensor3D {
    const unique = [...new Set(texts)];
    const ids = unique.map((t) => this.tokenizer.encode(t).inputIds);
    return tf.tidy(() => {
      const states = this.textEncoder.forward(tf.tensor2d(ids, [unique.length, ids[0].length], 'int32')).lastHiddenState;
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
    const c = this.unet.config.in_channels;
    const streams = Array.from({ length: batch }, (_, k) => imageGenerator(seed, first + k));
    return tf.tensor4d(new BatchNoiseGenerator(streams).normalArray(batch * h * w * c), [batch, h, w, c]);
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

  /** Generates one batch of images (all in one UNet batch). */
  call(opts: PipelineCallOptions): PipelineOutput {
    const prompts = typeof opts.prompt === 'string' ? [opts.prompt] : [...opts.prompt];
    const b = prompts.length;
    if (b === 0) throw new UsageError('pipeline: no prompts (give at least one; "" is the unconditional prompt).');
    const negative = perImage(opts.negativePrompt ?? '', b, 'negative prompt');
    const steps = opts.numInferenceSteps ?? 50;
    const g = opts.guidanceScale ?? 7.5;
    if (!Number.isInteger(steps) || steps < 1) throw new UsageError(`steps: expected an integer >= 1, got ${steps}.`);
    if (!Number.isFinite(g)) throw new UsageError(`guidance: expected a number, got ${g}.`);
    const height = opts.height ?? this.defaultSize;
    const width = opts.width ?? this.defaultSize;
    const f = this.vaeScaleFactor;
    if (!(Number.isInteger(height) && Number.isInteger(width) && height > 0 && width > 0 && height % f === 0 && width % f === 0)) {
      throw new UsageError(`height/width: expected positive multiples of ${f} (the VAE's downsampling factor), got ${height}x${width}.`);
    }
    const doGuidance = g !== 1;
    const scheduler = this.scheduler;
    const seed = opts.seed ?? 0;
    const first = opts.firstIndex ?? 0;
    // Stochastic schedulers draw their fresh noise per image, from the stream after the initial noise.
    const streams = Array.from({ length: b }, (_, k) => imageGenerator(seed, first + k));
    const generator = new BatchNoiseGenerator(streams);

    // 1. text → encoder states
    const embeds = this.encodePrompt(prompts, negative, doGuidance);

    // 2. timesteps and initial latents
    let latents: tf.Tensor4D | null = null;
    try {
      scheduler.setTimesteps(steps);
      const [h, w, c] = [height / f, width / f, this.unet.config.in_channels];
      if (opts.latents) {
        const want = [b, h, w, c];
        if (!tf.util.arraysEqual(opts.latents.shape, want)) {
          throw new UsageError(`pipeline: latents have shape [${opts.latents.shape}], expected [${want}] (NHWC).`);
        }
        latents = tf.mul(opts.latents, scheduler.initNoiseSigma) as tf.Tensor4D;
      } else {
        latents = tf.tidy(() => tf.mul(tf.tensor4d(generator.normalArray(b * h * w * c), [b, h, w, c]), scheduler.initNoiseSigma) as tf.Tensor4D);
      }

      // 3. the denoising loop
      const timesteps = scheduler.timesteps;
      for (let i = 0; i < timesteps.length; i++) {
        const t = timesteps[i];
        const x = latents;
        const noisePred = tf.tidy(() => {
          const modelInput = scheduler.scaleModelInput(doGuidance ? tf.concat([x, x]) : x, t) as tf.Tensor4D;
          const out = this.unet.forward(modelInput, t, embeds);
          if (!doGuidance) return out;
          const [uncond, cond] = tf.split(out, 2, 0) as [tf.Tensor4D, tf.Tensor4D];
          return classifierFreeGuidance(uncond, cond, g);
        });
        const stepped = scheduler.step(noisePred, t, x, { eta: opts.eta, generator });
        const next = stepped.prevSample as tf.Tensor4D;
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

      // 4. decode (latents that are not finite would decode to black images: say why instead)
      requireFinite(latents, 'pipeline: the sampled latents', [['UNet', this.unet], ['text encoder', this.textEncoder]], `the weights are finite, so sampling diverged (scheduler ${scheduler.constructor.name}, guidance ${g}): try another scheduler or a lower guidance`);
      const images = this.decodeLatents(latents);
      return { images, latents, promptEmbeds: embeds };
    } catch (err) {
      tf.dispose([embeds, ...(latents ? [latents] : [])]);
      throw err;
    }
  }

  /**
   * Generates an image per prompt, `batchSize` at a time; image k is reproducible from
   * (seed, k) alone. Images are handed to `onBatch` as plain arrays and not kept here.
   */
  async generate(opts: GenerateOptions): Promise<void> {
    const { prompts, batchSize } = opts;
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new UsageError(`--batch: expected an integer >= 1, got ${batchSize}.`);
    const negative = perImage(opts.negativePrompts ?? '', prompts.length, 'negative prompt');
    for (let first = 0; first < prompts.length; first += batchSize) {
      const end = Math.min(prompts.length, first + batchSize);
      const out = this.call({
        ...opts,
        prompt: prompts.slice(first, end),
        negativePrompt: negative.slice(first, end),
        firstIndex: first,
        callback: opts.callback ? (s) => opts.callback!({ ...s, first }) : undefined,
      });
      const [n, H, W, C] = out.images.shape;
      const data = (await out.images.data()) as Float32Array;
      out.images.dispose();
      out.latents.dispose();
      out.promptEmbeds.dispose();
      const per = H * W * C;
      const images = Array.from({ length: n }, (_, k) => data.slice(k * per, (k + 1) * per));
      await opts.onBatch?.({ first, images, height: H, width: W, channels: C });
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
  if (c.unet.config.in_channels !== lc || c.unet.config.out_channels !== lc) {
    throw new UsageError(`pipeline: the UNet has in/out_channels ${c.unet.config.in_channels}/${c.unet.config.out_channels} but the VAE makes ${lc}-channel latents (latent_channels).`);
  }
  if (c.tokenizer.maxLength > c.textEncoder.maxLength) {
    throw new UsageError(`pipeline: the tokenizer makes ${c.tokenizer.maxLength}-token encodings but the text encoder reads at most ${c.textEncoder.maxLength} (max_position_embeddings).`);
  }
  if (c.tokenizer.vocabSize > c.textEncoder.config.vocab_size) {
    throw new UsageError(`pipeline: the tokenizer has ${c.tokenizer.vocabSize} tokens but the text encoder's vocab_size is ${c.textEncoder.config.vocab_size}.`);
  }
}

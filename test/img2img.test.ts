/**
 * img2img against diffusers v0.24's StableDiffusionImg2ImgPipeline on the sd1_tiny model
 * (../shared/fixtures/sd1_pipelines, cases img2img.ddim and img2img.euler): the preprocessed init
 * image, the VAE posterior (mean, std) and its sample, the noised start latents, the UNet's input
 * and output at the first step, the latents after every step, the final latents and the image —
 * with upstream's recorded random draws replayed in upstream's order (ReplayGenerator checks
 * each request's size, so a draw in the wrong place or shape fails). Also: the LDM single file
 * gives the same image, strength picks the tail of every scheduler's schedule, v-prediction
 * models noise the same way, and the batch draws as diffusers does.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerNativeBackend } from '../src/backend/native.ts';
import { createScheduler, readSchedulerConfig } from '../src/schedule/index.ts';
import { type StableDiffusionPipeline, loadDiffusersPipeline, loadLdmPipeline, pilResizeLanczos, preprocessImage, preprocessMask, processingSize, readGreyImage, readRgbImage } from '../src/sample/index.ts';
import { UsageError } from '../src/util/errors.ts';
import { EMBED_TOL, IMAGE_TOL, LATENT_REL_TOL, MODEL, PIPELINES, ReplayGenerator, TINY, absErr, manifest, maxAbs, recorder, refTensor, relErr, toNchw } from './helpers/pipeline-fixture.ts';

const sdConfig = readSchedulerConfig(path.join(MODEL, 'scheduler/scheduler_config.json'));
let pipe: StableDiffusionPipeline;
let image: tf.Tensor4D;

beforeAll(async () => {
  await tf.setBackend(registerNativeBackend() ? 'native' : 'cpu');
  pipe = loadDiffusersPipeline(MODEL);
  const img = readRgbImage(path.join(PIPELINES, 'init.png'));
  const { height, width } = processingSize(img, pipe.vaeScaleFactor);
  const p = preprocessImage(img, height, width);
  image = tf.tensor4d(p.data, p.shape);
});
afterAll(() => {
  pipe?.dispose();
  image?.dispose();
});

type Case = 'ddim' | 'euler';

function runCase(p: StableDiffusionPipeline, name: Case) {
  const c = manifest.cases.img2img[name];
  p.scheduler = createScheduler(name, sdConfig);
  const replay = ReplayGenerator.forCase(`img2img.${name}`, c.random_inputs.length);
  const rec = recorder();
  const stepRef = refTensor(c.outputs.step_latents);
  const stepErrors: number[] = [];
  const timesteps: number[] = [];
  const out = p.call({
    prompt: c.call.prompt,
    numInferenceSteps: c.call.num_inference_steps,
    guidanceScale: c.call.guidance_scale,
    eta: c.call.eta,
    strength: c.call.strength,
    image,
    generator: replay,
    inspect: rec.inspect,
    callback: (s) => {
      timesteps.push(s.t);
      const want = tf.squeeze(tf.slice(stepRef, [s.i], [1]), [0]);
      stepErrors.push(maxAbs(toNchw(s.latents), want) / tf.max(tf.abs(want)).dataSync()[0]);
      want.dispose();
    },
  });
  stepRef.dispose();
  return { c, out, rec, replay, stepErrors, timesteps };
}

describe('img2img against diffusers (sd1_pipelines fixture)', () => {
  it('init.png is preprocessed exactly as VaeImageProcessor does (u8/255·2−1, 32×32 kept)', () => {
    expect(image.shape).toEqual([1, 32, 32, 3]);
    expect(absErr(toNchw(image), 'image.init_preprocessed')).toBe(0);
  });

  for (const name of ['ddim', 'euler'] as const) {
    it(`case ${name}: draws, posterior, start latents, first UNet call, every step, final latents, image`, () => {
      const { c, out, rec, replay, stepErrors, timesteps } = runCase(pipe, name);
      const o = c.outputs;
      const seen = (k: string) => rec.seen.get(k)!;
      const errs = {
        posteriorMean: relErr(seen('posterior_mean'), o.posterior_mean),
        posteriorStd: relErr(seen('posterior_std'), o.posterior_std),
        imageLatents: relErr(seen('image_latents'), o.image_latents),
        noised: relErr(seen('start_latents'), o.noised_latents),
        unetIn: relErr(seen('unet_input_step0'), o.unet_input_step0),
        unetOut: relErr(seen('unet_output_step0'), o.unet_output_step0),
        final: relErr(toNchw(out.latents), o.final_latents),
      };
      const embedErr = absErr(out.promptEmbeds, o.prompt_embeds);
      const imageErr = absErr(out.images, o.image);
      console.log(`img2img.${name}: ${Object.entries(errs).map(([k, v]) => `${k} ${v.toExponential(2)}`).join(', ')}, steps ≤ ${Math.max(...stepErrors).toExponential(2)}, embeds ${embedErr.toExponential(2)}, image ${imageErr.toExponential(2)}`);
      // Every recorded draw consumed, in order (Euler's unused churn noise included).
      expect(replay.used).toBe(c.random_inputs.length);
      expect(timesteps).toEqual(c.timesteps);
      for (const [k, v] of Object.entries(errs)) expect(v, k).toBeLessThanOrEqual(LATENT_REL_TOL);
      expect(stepErrors).toHaveLength(c.num_steps_run);
      for (const e of stepErrors) expect(e).toBeLessThanOrEqual(LATENT_REL_TOL);
      expect(embedErr).toBeLessThanOrEqual(EMBED_TOL);
      expect(imageErr).toBeLessThanOrEqual(IMAGE_TOL);
      rec.dispose();
      tf.dispose([out.images, out.latents, out.promptEmbeds]);
    });
  }

  it('the LDM single file gives the same image as the diffusers folder', () => {
    const ldm = loadLdmPipeline(path.join(TINY, 'ldm/sd1_tiny.safetensors'), {
      yaml: path.join(TINY, 'ldm/sd1_tiny.yaml'),
      tokenizer: path.join(MODEL, 'tokenizer'),
      textEncoderConfig: path.join(MODEL, 'text_encoder/config.json'),
      imageSize: 16,
    });
    try {
      const a = runCase(ldm, 'euler');
      const b = runCase(pipe, 'euler');
      expect(absErr(a.out.images, manifest.cases.img2img.euler.outputs.image)).toBeLessThanOrEqual(IMAGE_TOL);
      expect(maxAbs(a.out.images, b.out.images)).toBe(0);
      for (const r of [a, b]) {
        r.rec.dispose();
        tf.dispose([r.out.images, r.out.latents, r.out.promptEmbeds]);
      }
    } finally {
      ldm.dispose();
    }
  });
});

describe('img2img with every scheduler, v-prediction, batches', () => {
  /** The timesteps an img2img call runs, and its start latents (NCHW), with the draws of `gen`. */
  function timestepsOf(name: string, strength: number, steps = 10, overrides: Record<string, unknown> = {}) {
    pipe.scheduler = createScheduler(name, sdConfig, overrides);
    const ts: number[] = [];
    const rec = recorder();
    const draws = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11].map((i) => refTensor(`img2img.euler.randn.${Math.min(i, 7)}`).dataSync() as Float32Array);
    const out = pipe.call({ prompt: 'a red cube', numInferenceSteps: steps, guidanceScale: 3, strength, image, generator: new ReplayGenerator(draws, name), inspect: rec.inspect, callback: (s) => ts.push(s.t) });
    const start = rec.seen.get('start_latents')!.clone();
    const finite = tf.all(tf.isFinite(out.images)).dataSync()[0] === 1;
    rec.dispose();
    tf.dispose([out.images, out.latents, out.promptEmbeds]);
    return { ts, start, finite };
  }

  it('strength keeps the last int(steps · strength) timesteps of each schedule, as diffusers', () => {
    // Literal schedules from diffusers 0.24 (10 steps, SD's config): the tail after t_start = 10 − int(10 · s).
    const cases: Array<[string, number, number[]]> = [
      ['ddim', 0.6, [501, 401, 301, 201, 101, 1]],
      ['ddim', 0.75, [601, 501, 401, 301, 201, 101, 1]], // int(7.5) = 7
      ['ddpm', 0.3, [201, 101, 1]],
      ['euler', 0.6, [555, 444, 333, 222, 111, 0]],
      ['euler_a', 0.25, [111, 0]], // int(2.5) = 2
      // PNDM repeats its second timestep (901, 801, 801, 701, …): upstream's slice starts one later.
      ['pndm', 0.6, [601, 501, 401, 301, 201, 101, 1]],
      ['dpm++2m', 0.6, [599, 500, 400, 300, 200, 100]],
    ];
    for (const [name, s, want] of cases) {
      const r = timestepsOf(name, s);
      expect(r.ts, `${name} ${s}`).toEqual(want);
      expect(r.finite, name).toBe(true);
      r.start.dispose();
    }
  });

  it('the start is the encoded image noised to the first timestep: ᾱ form for DDIM/PNDM/DPM++, x0 + σ·ε for Euler', () => {
    const x0 = refTensor('img2img.euler.image_latents');
    const eps = refTensor('img2img.euler.randn.1');
    // DDIM, PNDM and DPM-Solver start at the same noise level in the ᾱ parametrisation.
    const ac = createScheduler('ddim', sdConfig).alphasCumprod;
    for (const [name, t] of [['ddim', 501], ['pndm', 601], ['dpm++2m', 599]] as const) {
      const { start } = timestepsOf(name, 0.6);
      const want = tf.add(tf.mul(x0, Math.sqrt(ac[t])), tf.mul(eps, Math.sqrt(1 - ac[t])));
      expect(maxAbs(start, want), name).toBeLessThan(2e-5);
      tf.dispose([start, want]);
    }
    const { start } = timestepsOf('euler', 0.6);
    const sigma = Math.sqrt((1 - ac[555]) / ac[555]);
    const want = tf.add(x0, tf.mul(eps, sigma));
    expect(maxAbs(start, want)).toBeLessThan(2e-5);
    tf.dispose([start, want, x0, eps]);
  });

  it('a v-prediction model noises the init image the same way and samples differently', () => {
    const eps = timestepsOf('ddim', 0.6);
    const v = timestepsOf('ddim', 0.6, 10, { prediction_type: 'v_prediction' });
    expect(maxAbs(eps.start, v.start)).toBe(0);
    expect(v.finite).toBe(true);
    tf.dispose([eps.start, v.start]);
    // The same call on the same draws gives another image: the model output is read as v.
    const run = (overrides: Record<string, unknown>) => {
      pipe.scheduler = createScheduler('euler', sdConfig, overrides);
      const draws = [0, 1, 2, 3, 4, 5, 6, 7].map((i) => refTensor(`img2img.euler.randn.${i}`).dataSync() as Float32Array);
      return pipe.call({ prompt: 'a red cube', numInferenceSteps: 10, strength: 0.6, image, generator: new ReplayGenerator(draws, 'v') });
    };
    const a = run({});
    const b = run({ prediction_type: 'v_prediction' });
    expect(maxAbs(a.images, b.images)).toBeGreaterThan(1e-2);
    tf.dispose([a.images, a.latents, a.promptEmbeds, b.images, b.latents, b.promptEmbeds]);
  });

  it('a batch of 2 from one image draws as diffusers: one posterior sample [1, C, h, w], then noise [2, C, h, w]', () => {
    pipe.scheduler = createScheduler('ddim', sdConfig);
    const sizes: number[] = [];
    const gen = { normalArray: (n: number) => (sizes.push(n), new Float32Array(n).fill(0.5)) };
    const out = pipe.call({ prompt: ['a', 'b'], numInferenceSteps: 4, strength: 0.5, image, generator: gen });
    expect(sizes).toEqual([4 * 16 * 16, 2 * 4 * 16 * 16]);
    tf.dispose([out.images, out.latents, out.promptEmbeds]);
  });

  it('per-image streams (the default): image k of a batch equals the same image run alone', () => {
    pipe.scheduler = createScheduler('euler_a', sdConfig);
    const both = pipe.call({ prompt: ['a red cube', 'a cat'], numInferenceSteps: 4, strength: 0.7, image, seed: 3 });
    const second = pipe.call({ prompt: 'a cat', numInferenceSteps: 4, strength: 0.7, image, seed: 3, firstIndex: 1 });
    const row1 = tf.slice(both.images, [1], [1]);
    expect(maxAbs(row1, second.images)).toBeLessThan(1e-4);
    tf.dispose([row1, both.images, both.latents, both.promptEmbeds, second.images, second.latents, second.promptEmbeds]);
  });

  it('bad input: one-line UsageErrors', () => {
    pipe.scheduler = createScheduler('ddim', sdConfig);
    expect(() => pipe.call({ prompt: 'x', image, strength: 0 })).toThrow(/strength: expected a number in \(0, 1\]/);
    expect(() => pipe.call({ prompt: 'x', image, strength: 1.5 })).toThrow(UsageError);
    expect(() => pipe.call({ prompt: 'x', image, strength: 0.05, numInferenceSteps: 10 })).toThrow(/= 0 steps/);
    expect(() => pipe.call({ prompt: 'x', image, height: 16, width: 16 })).toThrow(/init image has shape/);
    expect(() => pipe.call({ prompt: 'x', strength: 0.5, height: 16, width: 16 })).toThrow(/strength needs an init image/);
  });
});

describe('init image preprocessing (diffusers 0.24 VaeImageProcessor with PIL)', () => {
  it('pilResizeLanczos equals PIL Image.resize(LANCZOS) byte for byte (test/data/pil_lanczos.json, scripts/make_pil_resize_reference.py)', () => {
    const ref = JSON.parse(fs.readFileSync(path.resolve(import.meta.dirname, 'data/pil_lanczos.json'), 'utf8'));
    expect(ref.cases.length).toBeGreaterThanOrEqual(10);
    for (const c of ref.cases) {
      const out = pilResizeLanczos({ data: Uint8Array.from(c.input), width: c.width, height: c.height, channels: c.channels }, c.out_width, c.out_height);
      expect([out.width, out.height]).toEqual([c.out_width, c.out_height]);
      expect(Array.from(out.data), `${c.width}x${c.height}x${c.channels} -> ${c.out_width}x${c.out_height}`).toEqual(c.output);
    }
  });

  it('sizes round down to the VAE factor; a resized image keeps [-1, 1] and the mask stays binary', () => {
    expect(processingSize({ height: 47, width: 33 }, 8)).toEqual({ height: 40, width: 32 });
    expect(processingSize({ height: 47, width: 33 }, 8, 512, 768)).toEqual({ height: 512, width: 768 });
    const img = readRgbImage(path.join(PIPELINES, 'init.png'));
    const p = preprocessImage(img, 24, 40);
    expect(p.shape).toEqual([1, 24, 40, 3]);
    expect(Math.min(...p.data)).toBeGreaterThanOrEqual(-1);
    expect(Math.max(...p.data)).toBeLessThanOrEqual(1);
    const m = preprocessMask(readGreyImage(path.join(PIPELINES, 'mask.png')), 16, 16);
    expect(new Set(m.data)).toEqual(new Set([0, 1]));
  });

  it('a colour mask becomes grey as PIL\'s convert("L") does: (19595 R + 38470 G + 7471 B + 2^15) >> 16', () => {
    // init.png is RGB; read as a mask, pixel 0 must follow PIL's integer luma.
    const rgb = readRgbImage(path.join(PIPELINES, 'init.png'));
    const grey = readGreyImage(path.join(PIPELINES, 'init.png'));
    for (const i of [0, 17, 500, 1023]) {
      const [r, g, b] = [rgb.data[3 * i], rgb.data[3 * i + 1], rgb.data[3 * i + 2]];
      expect(grey.data[i]).toBe(Math.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536));
    }
  });
});

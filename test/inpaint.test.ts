/**
 * Inpainting against diffusers v0.24's StableDiffusionInpaintPipeline on the sd1_tiny model
 * (../shared/fixtures/sd1_pipelines): the 9-channel UNet the fixture ships (cases inpaint.ddim:
 * strength 1 with given latents; inpaint.ddim_strength075: image + noise start) and the model's
 * own 4-channel UNet with per-step latent blending (inpaint.legacy4ch_ddim). Checked: the
 * binarised mask, the masked image, the latent mask, the posteriors and encoded latents, the
 * UNet input and output at the first step (the 9-channel concat), every step, the final latents
 * and the image — with upstream's random draws replayed in upstream's order.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerNativeBackend } from '../src/backend/native.ts';
import { createScheduler, readSchedulerConfig } from '../src/schedule/index.ts';
import { type StableDiffusionPipeline, loadDiffusersPipeline, loadLdmPipeline, preprocessImage, preprocessMask, readGreyImage, readRgbImage } from '../src/sample/index.ts';
import { EMBED_TOL, IMAGE_TOL, LATENT_REL_TOL, MODEL, PIPELINES, ReplayGenerator, TINY, absErr, inpaintModelDir, manifest, maxAbs, recorder, refTensor, relErr, toNchw } from './helpers/pipeline-fixture.ts';

const sdConfig = readSchedulerConfig(path.join(MODEL, 'scheduler/scheduler_config.json'));
let tmp: string;
let pipe4: StableDiffusionPipeline;
let pipe9: StableDiffusionPipeline;
let image: tf.Tensor4D;
let mask: tf.Tensor4D;

beforeAll(async () => {
  await tf.setBackend(registerNativeBackend() ? 'native' : 'cpu');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-inpaint-'));
  pipe4 = loadDiffusersPipeline(MODEL);
  pipe9 = loadDiffusersPipeline(inpaintModelDir(tmp));
  const img = preprocessImage(readRgbImage(path.join(PIPELINES, 'init.png')), 32, 32);
  const m = preprocessMask(readGreyImage(path.join(PIPELINES, 'mask.png')), 32, 32);
  image = tf.tensor4d(img.data, img.shape);
  mask = tf.tensor4d(m.data, m.shape);
});
afterAll(() => {
  pipe4?.dispose();
  pipe9?.dispose();
  tf.dispose([image, mask]);
  fs.rmSync(tmp, { recursive: true, force: true });
});

type Case = 'ddim' | 'ddim_strength075' | 'legacy4ch_ddim';

function runCase(name: Case, scheduler = 'ddim', pipe?: StableDiffusionPipeline) {
  const c = manifest.cases.inpaint[name];
  const p = pipe ?? (c.unet_in_channels === 9 ? pipe9 : pipe4);
  p.scheduler = createScheduler(scheduler, sdConfig);
  // Other schedulers draw more than upstream's DDIM did (Euler's churn noise): per-image streams then.
  const replay = scheduler === 'ddim' ? ReplayGenerator.forCase(`inpaint.${name}`, c.random_inputs.length) : undefined;
  const rec = recorder();
  const latents = c.call.latents ? (tf.transpose(refTensor(c.call.latents), [0, 2, 3, 1]) as tf.Tensor4D) : undefined;
  const stepRef = refTensor(c.outputs.step_latents);
  const stepErrors: number[] = [];
  const timesteps: number[] = [];
  const out = p.call({
    prompt: c.call.prompt,
    numInferenceSteps: c.call.num_inference_steps,
    guidanceScale: c.call.guidance_scale,
    eta: c.call.eta,
    strength: c.call.strength,
    height: c.call.height,
    width: c.call.width,
    image,
    mask,
    latents,
    generator: replay,
    seed: 1,
    inspect: rec.inspect,
    callback: (s) => {
      timesteps.push(s.t);
      if (scheduler !== 'ddim') return;
      const want = tf.squeeze(tf.slice(stepRef, [s.i], [1]), [0]);
      stepErrors.push(maxAbs(toNchw(s.latents), want) / tf.max(tf.abs(want)).dataSync()[0]);
      want.dispose();
    },
  });
  tf.dispose([stepRef, ...(latents ? [latents] : [])]);
  return { c, out, rec, replay, stepErrors, timesteps };
}

describe('inpainting against diffusers (sd1_pipelines fixture)', () => {
  it('mask.png is binarised at 0.5 (127 keeps, 128 repaints), init.png preprocessed, both exactly', () => {
    expect(absErr(toNchw(mask), 'inpaint.ddim.mask_condition')).toBe(0);
    expect(absErr(toNchw(image), 'image.init_preprocessed')).toBe(0);
  });

  for (const name of ['ddim', 'ddim_strength075', 'legacy4ch_ddim'] as const) {
    it(`case ${name}: draws, mask inputs, posteriors, first UNet call, every step, final latents, image`, () => {
      const { c, out, rec, replay, stepErrors, timesteps } = runCase(name);
      const o = c.outputs;
      const seen = (k: string) => {
        const t = rec.seen.get(k);
        if (!t) throw new Error(`the pipeline showed no ${k}`);
        return t;
      };
      // Exact: no arithmetic beyond a product with 0/1 and a strided pick.
      expect(absErr(seen('masked_image'), o.masked_image)).toBe(0);
      expect(absErr(seen('mask_latent'), o.mask_latent)).toBe(0);
      const errs: Record<string, number> = {
        maskedMean: relErr(seen('masked_image_posterior_mean'), o.masked_image_posterior_mean),
        maskedStd: relErr(seen('masked_image_posterior_std'), o.masked_image_posterior_std),
        maskedLatents: relErr(seen('masked_image_latents'), o.masked_image_latents),
        unetIn: relErr(seen('unet_input_step0'), o.unet_input_step0),
        unetOut: relErr(seen('unet_output_step0'), o.unet_output_step0),
        final: relErr(toNchw(out.latents), o.final_latents),
      };
      if (o.image_latents) errs.imageLatents = relErr(seen('image_latents'), o.image_latents);
      if (o.noised_latents) errs.noised = relErr(seen('start_latents'), o.noised_latents);
      const embedErr = absErr(out.promptEmbeds, o.prompt_embeds);
      const imageErr = absErr(out.images, o.image);
      console.log(`inpaint.${name}: ${Object.entries(errs).map(([k, v]) => `${k} ${v.toExponential(2)}`).join(', ')}, steps ≤ ${Math.max(...stepErrors).toExponential(2)}, embeds ${embedErr.toExponential(2)}, image ${imageErr.toExponential(2)}`);
      expect(replay!.used).toBe(c.random_inputs.length);
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

  it('4-channel blending from the LDM single file: the same image as from the diffusers folder', () => {
    const ldm = loadLdmPipeline(path.join(TINY, 'ldm/sd1_tiny.safetensors'), {
      yaml: path.join(TINY, 'ldm/sd1_tiny.yaml'),
      tokenizer: path.join(MODEL, 'tokenizer'),
      textEncoderConfig: path.join(MODEL, 'text_encoder/config.json'),
      imageSize: 16,
    });
    try {
      const a = runCase('legacy4ch_ddim', 'ddim', ldm);
      const b = runCase('legacy4ch_ddim');
      expect(absErr(a.out.images, manifest.cases.inpaint.legacy4ch_ddim.outputs.image)).toBeLessThanOrEqual(IMAGE_TOL);
      expect(maxAbs(a.out.images, b.out.images)).toBe(0);
      for (const r of [a, b]) {
        r.rec.dispose();
        tf.dispose([r.out.images, r.out.latents, r.out.promptEmbeds]);
      }
    } finally {
      ldm.dispose();
    }
  });

  it('4-channel blending with Euler: the kept region ends as the clean encoded image, the repainted one does not', () => {
    const { out, rec } = runCase('legacy4ch_ddim', 'euler');
    const m = rec.seen.get('mask_latent')!; // NCHW [1, 1, 16, 16]
    const x0 = rec.seen.get('image_latents')!;
    const final = toNchw(out.latents);
    const keep = tf.sub(1, m);
    // After the last step known = the clean image latents, so (1 − m)·final = (1 − m)·x0 up to one rounding.
    expect(maxAbs(tf.mul(keep, final), tf.mul(keep, x0))).toBeLessThan(1e-5);
    expect(maxAbs(tf.mul(m, final), tf.mul(m, x0))).toBeGreaterThan(1e-2);
    expect(tf.all(tf.isFinite(out.images)).dataSync()[0]).toBe(1);
    rec.dispose();
    tf.dispose([final, keep, out.images, out.latents, out.promptEmbeds]);
  });

  it('9 channels: [latents, mask, masked-image latents] on the channel axis of each CFG half', () => {
    const { out, rec } = runCase('ddim');
    const unetIn = rec.seen.get('unet_input_step0')!; // NCHW [2, 9, 16, 16]
    const m = rec.seen.get('mask_latent')!;
    const ml = rec.seen.get('masked_image_latents')!;
    for (const half of [0, 1]) {
      expect(maxAbs(tf.slice(unetIn, [half, 4, 0, 0], [1, 1, 16, 16]), m)).toBe(0);
      expect(maxAbs(tf.slice(unetIn, [half, 5, 0, 0], [1, 4, 16, 16]), ml)).toBe(0);
    }
    rec.dispose();
    tf.dispose([out.images, out.latents, out.promptEmbeds]);
  });

  it('no tensors leak: img2img, 4-channel and 9-channel inpainting return to the count they started from', () => {
    for (const [p, opts] of [
      [pipe4, { image }],
      [pipe4, { image, mask, strength: 0.6 }],
      [pipe9, { image, mask }],
      [pipe9, { image, mask, strength: 0.5, returnNoise: true }],
    ] as const) {
      p.scheduler = createScheduler('dpm++2m', sdConfig);
      const before = tf.memory().numTensors;
      const out = p.call({ prompt: 'a red cube', numInferenceSteps: 4, height: 32, width: 32, seed: 2, ...opts });
      tf.dispose([out.images, out.latents, out.promptEmbeds, ...(out.noise ? [out.noise] : [])]);
      p.scheduler.dispose();
      expect(tf.memory().numTensors).toBe(before);
    }
  });

  it('bad input: a mask without an image, a 9-channel UNet without a mask, shapes', () => {
    pipe9.scheduler = createScheduler('ddim', sdConfig);
    expect(() => pipe9.call({ prompt: 'x', height: 32, width: 32 })).toThrow(/inpainting UNet/);
    expect(() => pipe9.call({ prompt: 'x', image, height: 32, width: 32 })).toThrow(/needs a mask/);
    expect(() => pipe4.call({ prompt: 'x', mask, height: 32, width: 32 })).toThrow(/a mask needs an init image/);
    const small = tf.zeros([1, 16, 16, 1]) as tf.Tensor4D;
    expect(() => pipe9.call({ prompt: 'x', image, mask: small, height: 32, width: 32 })).toThrow(/the mask has shape/);
    small.dispose();
  });
});

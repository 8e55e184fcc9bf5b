/**
 * The sd1_pipelines fixture (../shared/fixtures/sd1_pipelines: upstream diffusers v0.24's img2img
 * and inpaint pipelines and LCM on the sd1_tiny model) for test/img2img.test.ts, test/inpaint.test.ts and test/lcm.test.ts:
 * its tensors, a replay generator for its recorded random draws, and the comparisons.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { expect } from 'vitest';
import { type SafeTensor, readSafetensors } from '../../src/io/safetensors.ts';
import type { NoiseGenerator } from '../../src/schedule/base.ts';

export const PIPELINES = path.resolve(import.meta.dirname, '../../../shared/fixtures/sd1_pipelines');
export const TINY = path.resolve(import.meta.dirname, '../../../shared/fixtures/sd1_tiny');
export const MODEL = path.join(TINY, 'model');
export const manifest = JSON.parse(fs.readFileSync(path.join(PIPELINES, 'manifest.json'), 'utf8').replace(/(?<=[:[,]\s*)(-?Infinity|NaN)/g, 'null'));

let refs: Map<string, SafeTensor> | null = null;
/** A reference tensor by key (NCHW as stored). */
export function refTensor(key: string): tf.Tensor {
  refs ??= readSafetensors(path.join(PIPELINES, 'reference.safetensors'), (n) => /^(img2img|inpaint|lcm|image)\./.test(n));
  const t = refs.get(key);
  if (!t) throw new Error(`reference.safetensors has no ${key}`);
  return tf.tensor(t.data, t.shape);
}

/**
 * Hands out a case's recorded draws (`<case>.randn.<i>`, in order) as a diffusers-order
 * generator would draw them, checking that each request has the recorded draw's size. `used`
 * counts what was consumed; a request past the last draw fails.
 */
export class ReplayGenerator implements NoiseGenerator {
  used = 0;
  constructor(private readonly draws: Float32Array[], private readonly label: string) {}

  static forCase(prefix: string, count: number): ReplayGenerator {
    const draws = Array.from({ length: count }, (_, i) => refTensor(`${prefix}.randn.${i}`).dataSync() as Float32Array);
    return new ReplayGenerator(draws, prefix);
  }

  normalArray(n: number): Float32Array {
    const d = this.draws[this.used];
    if (!d) throw new Error(`${this.label}: draw #${this.used} requested, but upstream drew only ${this.draws.length}.`);
    if (d.length !== n) throw new Error(`${this.label}: draw #${this.used} requested ${n} numbers, upstream drew ${d.length}.`);
    this.used++;
    return d.slice();
  }
}

export const toNchw = (x: tf.Tensor) => tf.transpose(x, [0, 3, 1, 2]);
export const maxAbs = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]);
export const maxOf = (a: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(a)).dataSync()[0]);

/**
 * Tolerances: the fixture README's suggestion (an independent float32 implementation: a few
 * times the fp32-vs-fp64 floor of 2–5e-6 relative): latents within 5e-5 × max|reference|, images
 * within 1e-4 absolute, prompt embeddings within 1e-5 absolute. Intermediates before the UNet
 * (VAE posterior, encoded latents) are held like latents; exact quantities (the preprocessed
 * image, the binarised mask and its latent downsample, the masked image) must match exactly.
 */
export const LATENT_REL_TOL = 5e-5;
export const IMAGE_TOL = 1e-4;
export const EMBED_TOL = 1e-5;

/** Records the pipeline's inspected intermediates (NCHW copies) by name. */
export function recorder(): { seen: Map<string, tf.Tensor>; inspect: (name: string, t: tf.Tensor) => void; dispose: () => void } {
  const seen = new Map<string, tf.Tensor>();
  return {
    seen,
    inspect: (name, t) => {
      seen.get(name)?.dispose();
      seen.set(name, tf.keep(t.rank === 4 ? toNchw(t) : t.clone()));
    },
    dispose: () => tf.dispose([...seen.values()]),
  };
}

/** max|got − ref| / max|ref| for a named output, asserting shapes match. */
export function relErr(got: tf.Tensor, key: string): number {
  const want = refTensor(key);
  expect(got.shape, key).toEqual(want.shape);
  const e = maxAbs(got, want) / maxOf(want);
  want.dispose();
  return e;
}

export function absErr(got: tf.Tensor, key: string): number {
  const want = refTensor(key);
  expect(got.shape, key).toEqual(want.shape);
  const e = maxAbs(got, want);
  want.dispose();
  return e;
}

/**
 * A diffusers folder for the fixture's 9-channel inpainting UNet: the tiny model's tokenizer,
 * text encoder, VAE and scheduler (symlinks) with inpaint_model/unet, under `dir`.
 */
export function inpaintModelDir(dir: string): string {
  const root = path.join(dir, 'inpaint-model');
  fs.mkdirSync(root, { recursive: true });
  for (const part of ['model_index.json', 'tokenizer', 'text_encoder', 'vae', 'scheduler']) fs.symlinkSync(path.join(MODEL, part), path.join(root, part));
  fs.symlinkSync(path.join(PIPELINES, 'inpaint_model/unet'), path.join(root, 'unet'));
  return root;
}

/**
 * The VAE latents the UNet trains on: each training digit's posterior mean and std, encoded once
 * by the frozen VAE and cached in <run>/train/unet/latents.safetensors, keyed by a sha256 of the
 * VAE's config and weights (a retrained VAE re-encodes).
 *
 *   const { train, val } = cachedLatents(file, vae, vaeDir, { train: trainSet, val: valSet }, key, log);
 *   train.mean, train.std   // [n, h, w, c] flat, unscaled (× scaling_factor for diffusion space)
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { AutoencoderKL, VAE_WEIGHTS_FILE } from '../autoencoder/index.ts';
import { type Dataset, imageAt } from '../data/index.ts';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.ts';
import { chunks } from './data.ts';
import { toSigned } from '../data/pixels.ts';

export interface LatentSet {
  /** Posterior means [n, h, w, c] (unscaled), flat. */
  mean: Float32Array;
  /** Posterior standard deviations, same shape. */
  std: Float32Array;
  n: number;
  /** [h, w, c] of one latent. */
  shape: [number, number, number];
}

/** Posterior mean and std of every image of `ds` (chunks of 64). */
export function encodeLatents(vae: AutoencoderKL, ds: Dataset): LatentSet {
  const f = vae.downsampleFactor;
  const shape: [number, number, number] = [ds.height / f, ds.width / f, vae.config.latent_channels];
  const per = shape[0] * shape[1] * shape[2];
  const mean = new Float32Array(ds.n * per);
  const std = new Float32Array(ds.n * per);
  const px = ds.height * ds.width;
  for (const idx of chunks(ds.n, 64)) {
    const [m, s] = tf.tidy(() => {
      const buf = new Float32Array(idx.length * px);
      for (let k = 0; k < idx.length; k++) {
        const img = imageAt(ds, idx[k]);
        for (let p = 0; p < px; p++) buf[k * px + p] = toSigned(img[p]);
      }
      const dist = vae.encode(tf.tensor4d(buf, [idx.length, ds.height, ds.width, 1]));
      return [dist.mean.dataSync() as Float32Array, tf.exp(tf.mul(dist.logvar, 0.5)).dataSync() as Float32Array];
    });
    mean.set(m!, idx[0] * per);
    std.set(s!, idx[0] * per);
  }
  return { mean, std, n: ds.n, shape };
}

/** sha256 of the VAE's config and weights: the latent cache is valid for exactly this VAE. */
export function vaeFingerprint(vaeDir: string): string {
  const h = crypto.createHash('sha256');
  h.update(fs.readFileSync(path.join(vaeDir, 'config.json')));
  h.update(fs.readFileSync(path.join(vaeDir, VAE_WEIGHTS_FILE)));
  return h.digest('hex');
}

/** Encoded train/val latents, from `file` when it matches this VAE and `key`, else encoded and cached there. */
export function cachedLatents(
  file: string,
  vae: AutoencoderKL,
  vaeDir: string,
  sets: { train: Dataset; val: Dataset },
  key: Record<string, unknown>,
  log: (line: string) => void,
): { train: LatentSet; val: LatentSet } {
  const fingerprint = JSON.stringify({ vae: vaeFingerprint(vaeDir), ...key, trainN: sets.train.n, valN: sets.val.n });
  if (fs.existsSync(file)) {
    try {
      const st = SafetensorsFile.open(file);
      if (st.metadata.key === fingerprint) {
        const get = (name: string) => st.read(name);
        const mk = (p: string, n: number): LatentSet => {
          const m = get(`${p}.mean`);
          return { mean: m.data, std: get(`${p}.std`).data, n, shape: m.shape.slice(1) as [number, number, number] };
        };
        return { train: mk('train', sets.train.n), val: mk('val', sets.val.n) };
      }
    } catch {
      // unreadable cache: encode again below
    }
  }
  const started = Date.now();
  const train = encodeLatents(vae, sets.train);
  const val = encodeLatents(vae, sets.val);
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [p, s] of [['train', train], ['val', val]] as const) {
    tensors.set(`${p}.mean`, { shape: [s.n, ...s.shape], data: s.mean });
    tensors.set(`${p}.std`, { shape: [s.n, ...s.shape], data: s.std });
  }
  writeSafetensors(file, tensors, { metadata: { key: fingerprint } });
  log(`unet: encoded ${train.n + val.n} images with the VAE in ${((Date.now() - started) / 1000).toFixed(1)} s; cached in ${file}`);
  return { train, val };
}

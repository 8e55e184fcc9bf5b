/**
 * The forward (noising) process of diffusion: the beta schedule, ᾱ, and the noisy sample x_t with
 * the target a model is trained to predict from it. Training and the pictures of `sdlab noise`
 * both call `NoiseSchedule.noisedSample`; the samplers (./base.ts and the files beside it) extend
 * NoiseSchedule and walk the process backwards.
 *
 * A beta schedule says how much noise each of T = num_train_timesteps small steps adds (beta_t);
 * its running product
 *
 *   ᾱ_t = Π_{s<=t} (1 - beta_s)                                        (alphasCumprod)
 *
 * gives the closed form of the forward process (DDPM, Ho et al. 2020, arXiv 2006.11239, eq. 4):
 * any t is one jump away from the clean x0,
 *
 *   x_t = √ᾱ_t · x0 + √(1−ᾱ_t) · ε,   ε ~ N(0, I)                       (noisedSample, addNoise)
 *
 * and the model learns to predict, from x_t and t, one of
 *
 *   epsilon       ε
 *   v_prediction  v = √ᾱ_t · ε − √(1−ᾱ_t) · x0   (Salimans & Ho 2022, arXiv 2202.00512) (getVelocity)
 *   sample        x0
 *
 *   const s = new NoiseSchedule({ num_train_timesteps: 1000, beta_schedule: 'scaled_linear',
 *                                 beta_start: 0.00085, beta_end: 0.012, trained_betas: null });
 *   const { noisy, target } = s.noisedSample(x0, noise, [t0, t1], 'v_prediction'); // Float32Arrays
 *
 * Precision: the tables are float64 arrays holding the float32 values diffusers' torch tensors
 * hold (see ./base.ts); the coefficients √ᾱ_t and √(1−ᾱ_t) are rounded to float32 as torch does.
 */
import * as tf from '@tensorflow/tfjs';
import { UsageError } from '../util/errors.ts';
import { MAX_TRAIN_TIMESTEPS } from '../util/limits.ts';

export const BETA_SCHEDULES = ['linear', 'scaled_linear', 'squaredcos_cap_v2'] as const;
export type BetaSchedule = (typeof BETA_SCHEDULES)[number];
export const PREDICTION_TYPES = ['epsilon', 'v_prediction', 'sample'] as const;
export type PredictionType = (typeof PREDICTION_TYPES)[number];

const f32 = Math.fround;

/** The keys of a diffusers scheduler config that fix the beta schedule. */
export interface NoiseScheduleConfig {
  num_train_timesteps: number;
  beta_start: number;
  beta_end: number;
  beta_schedule: BetaSchedule;
  trained_betas: readonly number[] | null;
  /** Rescale the betas so that ᾱ_T = 0 (arXiv 2305.08891). */
  rescale_betas_zero_snr?: boolean;
}

/** The beta schedule of the DDPM paper (T = 1000, β linear from 1e-4 to 0.02): every diffusers scheduler's default. */
export const DDPM_BETA_DEFAULTS = {
  num_train_timesteps: 1000,
  beta_start: 0.0001,
  beta_end: 0.02,
  beta_schedule: 'linear',
  trained_betas: null,
} as const satisfies NoiseScheduleConfig;

/** Timesteps for addNoise: a number, a list (one per batch item) or an int tensor. */
export type TimestepsLike = number | readonly number[] | Int32Array | Float32Array | tf.Tensor;

/** The noisy sample x_t and the training target, flat like x0. */
export interface NoisedSample {
  noisy: Float32Array;
  target: Float32Array;
}

/**
 * A beta schedule and its forward process: betas, ᾱ, noisedSample (and its tensor forms addNoise,
 * getVelocity). Schedulers extend it; use it alone for training.
 */
export class NoiseSchedule {
  readonly numTrainTimesteps: number;
  readonly betas: Float64Array;
  readonly alphas: Float64Array;
  /** ᾱ_t for t = 0..T-1 (float32 values held in float64). */
  readonly alphasCumprod: Float64Array;
  /** √ᾱ_t and √(1−ᾱ_t), rounded as diffusers' `alphas_cumprod ** 0.5` and `(1 - alphas_cumprod) ** 0.5` on float32. */
  readonly sqrtAlphasCumprod: Float64Array;
  readonly sqrtOneMinusAlphasCumprod: Float64Array;

  /** `source` names the config in errors (a file, or the flags it came from). */
  constructor(cfg: NoiseScheduleConfig, source = 'scheduler config') {
    const betas = scheduleBetas(cfg, source);
    this.numTrainTimesteps = betas.length;
    this.betas = betas;
    this.alphas = betas.map((b) => f32(1 - b));
    this.alphasCumprod = alphasCumprodFromBetas(betas);
    this.sqrtAlphasCumprod = this.alphasCumprod.map((a) => f32(Math.sqrt(a)));
    this.sqrtOneMinusAlphasCumprod = this.alphasCumprod.map((a) => f32(Math.sqrt(f32(1 - a))));
  }

  /** Throws unless t is an integer train timestep in [0, T). */
  checkTimestep(t: number, where: string): void {
    if (!Number.isInteger(t) || t < 0 || t >= this.numTrainTimesteps) {
      throw new UsageError(`${where}: timestep must be an integer in [0, ${this.numTrainTimesteps - 1}], got ${t}.`);
    }
  }

  /**
   * The forward process and the training target, for a batch of flat samples:
   *
   *   noisy  = x_t = √ᾱ_t · x0 + √(1−ᾱ_t) · noise        (DDPM eq. 4)
   *   target = noise (epsilon) | √ᾱ_t · noise − √(1−ᾱ_t) · x0 (v_prediction) | x0 (sample)
   *
   * `t` holds one timestep per batch item (x0 splits into t.length equal items; one t serves all).
   * Each value is computed in float64 from the float32 inputs and coefficients and rounded once
   * when stored: the UNet trainer's batches are exactly these numbers.
   */
  noisedSample(x0: Float32Array, noise: Float32Array, t: ArrayLike<number>, prediction: PredictionType): NoisedSample {
    const b = t.length;
    if (noise.length !== x0.length) throw new UsageError(`noisedSample: x0 has ${x0.length} values but noise has ${noise.length}; they must match.`);
    if (b === 0 || x0.length % b !== 0) throw new UsageError(`noisedSample: ${b} timesteps do not split ${x0.length} values into equal batch items.`);
    const per = x0.length / b;
    const noisy = new Float32Array(x0.length);
    const target = new Float32Array(x0.length);
    for (let k = 0; k < b; k++) {
      this.checkTimestep(t[k], 'noisedSample');
      const a = this.sqrtAlphasCumprod[t[k]];
      const s = this.sqrtOneMinusAlphasCumprod[t[k]];
      for (let j = k * per; j < (k + 1) * per; j++) {
        const x = x0[j];
        const n = noise[j];
        noisy[j] = a * x + s * n;
        target[j] = prediction === 'v_prediction' ? a * n - s * x : prediction === 'sample' ? x : n;
      }
    }
    return { noisy, target };
  }

  /** x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·noise on tensors (noisedSample), t one integer per batch item or one for all. */
  addNoise(x0: tf.Tensor, noise: tf.Tensor, t: TimestepsLike): tf.Tensor {
    const { noisy } = this.noisedSample(...this.flatBatch(x0, noise, t, 'addNoise'), 'epsilon');
    return tf.tensor(noisy, x0.shape, 'float32');
  }

  /** v = √ᾱ_t·noise − √(1−ᾱ_t)·x0 on tensors (noisedSample): the target of a v_prediction model. */
  getVelocity(x0: tf.Tensor, noise: tf.Tensor, t: TimestepsLike): tf.Tensor {
    const { target } = this.noisedSample(...this.flatBatch(x0, noise, t, 'getVelocity'), 'v_prediction');
    return tf.tensor(target, x0.shape, 'float32');
  }

  /** The tensors' values and the per-item timesteps, checked as diffusers' add_noise would use them. */
  private flatBatch(x0: tf.Tensor, noise: tf.Tensor, t: TimestepsLike, where: string): [Float32Array, Float32Array, number[]] {
    if (!tf.util.arraysEqual(noise.shape, x0.shape)) {
      throw new UsageError(`${where}: noise has shape [${noise.shape}], expected the shape of x0 [${x0.shape}].`);
    }
    const values = typeof t === 'number' ? [t] : t instanceof tf.Tensor ? Array.from(t.dataSync()) : Array.from(t);
    const scalar = typeof t === 'number' || (t instanceof tf.Tensor && t.rank === 0);
    if (!scalar && values.length !== 1 && values.length !== x0.shape[0]) {
      throw new UsageError(`${where}: got ${values.length} timesteps for a batch of ${x0.shape[0]}.`);
    }
    for (const v of values) this.checkTimestep(v, where);
    const floats = (x: tf.Tensor) => (x.dtype === 'float32' ? (x.dataSync() as Float32Array) : Float32Array.from(x.dataSync()));
    return [floats(x0), floats(noise), values];
  }
}

// ---------------------------------------------------------------------------------------------
// the one check of a schedule

/**
 * The betas of a schedule config, checked: the one validation of a noise schedule, which
 * NoiseSchedule (and so every scheduler), training and `sdlab noise` all go through. Throws one
 * UsageError line naming `source` unless
 *   - num_train_timesteps is an integer in [2, MAX_TRAIN_TIMESTEPS] (the tables are built eagerly),
 *   - trained_betas (when given) has one value per timestep, each in (0, 1),
 *   - beta_start and beta_end (for linear / scaled_linear) satisfy 0 < beta_start <= beta_end < 1,
 *   - ᾱ_t stays > 0 up to the last timestep (at ᾱ_t = 0 the epsilon- and sigma-space formulas
 *     divide by zero, so sampling gives NaN) — except ᾱ_T = 0, which rescale_betas_zero_snr asks for.
 * Out-of-range betas otherwise make NaN latents and all-black images far from their cause.
 */
export function scheduleBetas(cfg: NoiseScheduleConfig, source = 'scheduler config'): Float64Array {
  const fail = (msg: string): never => {
    throw new UsageError(`${source}: ${msg}.`);
  };
  const T = cfg.num_train_timesteps;
  if (!Number.isInteger(T) || T < 2 || T > MAX_TRAIN_TIMESTEPS) {
    fail(`num_train_timesteps: expected an integer in [2, ${MAX_TRAIN_TIMESTEPS}] (sdlab's limit), got ${T}`);
  }
  if (cfg.trained_betas) {
    if (cfg.trained_betas.length !== T) fail(`trained_betas: expected ${T} values (num_train_timesteps), got ${cfg.trained_betas.length}`);
    const bad = cfg.trained_betas.findIndex((b) => !(b > 0 && b < 1));
    if (bad >= 0) fail(`trained_betas[${bad}]: expected 0 < beta < 1, got ${cfg.trained_betas[bad]}`);
  } else if (cfg.beta_schedule === 'linear' || cfg.beta_schedule === 'scaled_linear') {
    const [b0, b1] = [cfg.beta_start, cfg.beta_end];
    if (!(b0 > 0 && b0 <= b1 && b1 < 1)) fail(`beta_start ${b0} and beta_end ${b1}: expected 0 < beta_start <= beta_end < 1`);
  }
  let betas = makeBetas(cfg.beta_schedule, T, cfg.beta_start, cfg.beta_end, cfg.trained_betas);
  if (cfg.rescale_betas_zero_snr) betas = rescaleZeroTerminalSnr(betas);
  const ac = alphasCumprodFromBetas(betas);
  const last = cfg.rescale_betas_zero_snr ? T - 1 : T; // rescaling sets ᾱ_T = 0 on purpose
  for (let t = 0; t < last; t++) {
    if (!(ac[t] > 0)) fail(`ᾱ_t (the signal left) reaches ${ac[t]} at timestep ${t} of ${T}: the betas destroy all signal before the last timestep; use smaller betas or fewer num_train_timesteps`);
  }
  return betas;
}

// ---------------------------------------------------------------------------------------------
// beta schedules and ᾱ, reproduced bit for bit from torch where the last float32 bit matters
// ---------------------------------------------------------------------------------------------

/** The betas of a diffusers beta_schedule, as float32 values. */
export function makeBetas(
  schedule: string,
  numTrainTimesteps: number,
  betaStart: number,
  betaEnd: number,
  trainedBetas: readonly number[] | null = null,
): Float64Array {
  if (trainedBetas) return Float64Array.from(trainedBetas, f32);
  switch (schedule) {
    case 'linear':
      return torchLinspaceF32(betaStart, betaEnd, numTrainTimesteps);
    case 'scaled_linear': {
      // Latent diffusion: linear in sqrt(beta), then squared (in float32, as torch does).
      const root = torchLinspaceF32(Math.sqrt(betaStart), Math.sqrt(betaEnd), numTrainTimesteps);
      return root.map((r) => f32(r * r));
    }
    case 'squaredcos_cap_v2':
      return betasForAlphaBar(numTrainTimesteps);
    default:
      throw new UsageError(`scheduler config beta_schedule: expected one of ${BETA_SCHEDULES.join(', ')}, got "${schedule}".`);
  }
}

/** Glide's cosine schedule: betas from ᾱ(t) = cos²((t + 0.008) / 1.008 · π/2), capped at 0.999. */
function betasForAlphaBar(numTrainTimesteps: number, maxBeta = 0.999): Float64Array {
  const alphaBar = (t: number) => Math.cos(((t + 0.008) / 1.008) * (Math.PI / 2)) ** 2;
  const betas = new Float64Array(numTrainTimesteps);
  for (let i = 0; i < numTrainTimesteps; i++) {
    const t1 = i / numTrainTimesteps;
    const t2 = (i + 1) / numTrainTimesteps;
    betas[i] = f32(Math.min(1 - alphaBar(t2) / alphaBar(t1), maxBeta)); // torch.tensor(list) -> float32
  }
  return betas;
}

/** ᾱ_t = cumprod(1 - beta). torch's CPU cumprod multiplies in float64 and stores float32. */
export function alphasCumprodFromBetas(betas: Float64Array): Float64Array {
  const out = new Float64Array(betas.length);
  let acc = 1;
  for (let i = 0; i < betas.length; i++) {
    acc *= f32(1 - betas[i]);
    out[i] = f32(acc);
  }
  return out;
}

/**
 * Rescales betas so the last timestep has zero signal (ᾱ_T = 0), "Common Diffusion Noise
 * Schedules and Sample Steps are Flawed" (arXiv 2305.08891), Algorithm 1. Used by DDIM's
 * rescale_betas_zero_snr. Done in float64 (torch does it in float32; no fixture covers it).
 */
export function rescaleZeroTerminalSnr(betas: Float64Array): Float64Array {
  const n = betas.length;
  const ac = alphasCumprodFromBetas(betas);
  const sq = ac.map(Math.sqrt);
  const s0 = sq[0];
  const sT = sq[n - 1];
  const scaled = sq.map((v) => ((v - sT) * s0) / (s0 - sT));
  const bar = scaled.map((v) => v * v);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = f32(1 - (i === 0 ? bar[0] : bar[i] / bar[i - 1]));
  return out;
}

/**
 * torch.linspace(start, end, steps, dtype=float32) on CPU, bit for bit. torch fills 8 lanes at a
 * time from a base fma(step, i0, start) (the second half counts back from `end`), and the last
 * steps % 16 values one by one. The float64 expressions below are exact before the final
 * rounding, so each equals one fused multiply-add. Reproducing it makes alphasCumprod match
 * torch exactly, which matters at t ~ 0 where 1 - ᾱ_t cancels (sigma there moves by ~1e-5).
 */
export function torchLinspaceF32(start: number, end: number, steps: number): Float64Array {
  const s = f32(start);
  const e = f32(end);
  const step = f32((e - s) / (steps - 1));
  const half = Math.floor(steps / 2);
  const at = (i: number) => (i < half ? f32(s + step * i) : f32(e - step * (steps - i - 1)));
  const out = new Float64Array(steps);
  let i = 0;
  for (; i + 16 <= steps; i += 16) {
    for (const i0 of [i, i + 8]) {
      const base = at(i0);
      for (let k = 0; k < 8; k++) out[i0 + k] = f32(base + k * step);
    }
  }
  for (; i < steps; i++) out[i] = at(i);
  return out;
}

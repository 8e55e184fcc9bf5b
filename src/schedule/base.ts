/**
 * The noise schedule, and what every sampler ("scheduler") shares.
 *
 * Diffusion training adds Gaussian noise to clean data x0 in T = num_train_timesteps small steps.
 * A beta schedule says how much noise step t adds (beta_t); its running product
 *
 *   alphasCumprod[t] = ᾱ_t = Π_{s<=t} (1 - beta_s)
 *
 * gives the closed form of the forward process used for training:
 *
 *   x_t = sqrt(ᾱ_t) · x0 + sqrt(1 - ᾱ_t) · noise          (addNoise)
 *   v_t = sqrt(ᾱ_t) · noise - sqrt(1 - ᾱ_t) · x0           (getVelocity, the v-prediction target)
 *
 * A scheduler walks the process backwards at inference: setTimesteps(n) picks n of the T
 * timesteps, and step(modelOutput, t, x_t) turns the model's prediction at t into the sample at
 * the next (earlier) timestep. Each scheduler lives in its own file next to this one and mirrors
 * diffusers v0.24 (same config keys, same defaults, same numbers); `createScheduler` in
 * ./index.ts builds one by name from a diffusers `scheduler_config.json`.
 *
 * Precision: diffusers keeps its tables as float32 torch tensors and computes the per-step
 * coefficients as float32 0-d tensors. We keep the tables in Float64Arrays holding exactly those
 * float32 values, and round each scalar op with Math.fround (`f32`) the way torch does; tensor
 * math is float32 in tfjs. Without this, sigmas near t = 0 (where 1 - ᾱ_t cancels) move by
 * ~1e-5; with it DDPM, DDIM, PNDM and Euler reproduce the fixture bit for bit, DPM-Solver to
 * ~1 ulp per step (torch's float32 exp/log are not always correctly rounded; ours are).
 */
import * as tf from '@tensorflow/tfjs';
import { UsageError } from '../util/errors.ts';

export const BETA_SCHEDULES = ['linear', 'scaled_linear', 'squaredcos_cap_v2'] as const;
export type BetaSchedule = (typeof BETA_SCHEDULES)[number];
export const PREDICTION_TYPES = ['epsilon', 'v_prediction', 'sample'] as const;
export type PredictionType = (typeof PREDICTION_TYPES)[number];
export const TIMESTEP_SPACINGS = ['leading', 'linspace', 'trailing'] as const;
export type TimestepSpacing = (typeof TIMESTEP_SPACINGS)[number];

const f32 = Math.fround;

// ---------------------------------------------------------------------------------------------
// numpy / torch helpers, reproduced exactly where the last float32 bit matters
// ---------------------------------------------------------------------------------------------

/** np.round: halves go to the even neighbour (499.5 -> 500, 0.5 -> 0). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 ? 2 * Math.round(x / 2) : r;
}

/** np.linspace(start, stop, num) in float64: i*step + start, last element exactly stop. */
export function npLinspace(start: number, stop: number, num: number): number[] {
  const div = num - 1;
  const step = (stop - start) / div;
  const out: number[] = [];
  for (let i = 0; i < num; i++) out.push(div > 0 ? i * step + start : start);
  if (num > 1) out[num - 1] = stop;
  return out;
}

/** np.arange(start, stop, step) with a float step: numpy fills start + i*delta, delta = (start+step)-start. */
export function npArange(start: number, stop: number, step: number): number[] {
  const len = Math.max(0, Math.ceil((stop - start) / step));
  const delta = start + step - start;
  const out: number[] = [];
  for (let i = 0; i < len; i++) out.push(i === 0 ? start : start + i * delta);
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

/** np.interp(x, [0, 1, ..., n-1], table): linear interpolation in a table indexed by timestep. */
export function interpTable(x: number, table: ArrayLike<number>): number {
  const n = table.length;
  if (x <= 0) return table[0]!;
  if (x >= n - 1) return table[n - 1]!;
  const j = Math.floor(x);
  if (j === x) return table[j]!;
  const slope = table[j + 1]! - table[j]!; // over xp[j+1] - xp[j] = 1
  return slope * (x - j) + table[j]!;
}

// ---------------------------------------------------------------------------------------------
// beta schedules and ᾱ
// ---------------------------------------------------------------------------------------------

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

/** ᾱ_t = cumprod(1 - beta). torch's CPU cumprod multiplies in float64 and stores float32. */
export function alphasCumprodFromBetas(betas: Float64Array): Float64Array {
  const out = new Float64Array(betas.length);
  let acc = 1;
  for (let i = 0; i < betas.length; i++) {
    acc *= f32(1 - betas[i]!);
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
  const s0 = sq[0]!;
  const sT = sq[n - 1]!;
  const scaled = sq.map((v) => ((v - sT) * s0) / (s0 - sT));
  const bar = scaled.map((v) => v * v);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = f32(1 - (i === 0 ? bar[0]! : bar[i]! / bar[i - 1]!));
  return out;
}

/** sqrt((1 - ᾱ) / ᾱ) per train timestep, each op rounded to float32 like the torch expression. */
export function sigmaTable(alphasCumprod: Float64Array): Float64Array {
  return alphasCumprod.map((a) => f32(Math.sqrt(f32(f32(1 - a) / a))));
}

// ---------------------------------------------------------------------------------------------
// config
// ---------------------------------------------------------------------------------------------

/** The config keys every scheduler shares (diffusers names, snake_case as in scheduler_config.json). */
export interface BaseSchedulerConfig {
  num_train_timesteps: number;
  beta_start: number;
  beta_end: number;
  beta_schedule: BetaSchedule;
  trained_betas: number[] | null;
  prediction_type: PredictionType;
  timestep_spacing: TimestepSpacing;
  steps_offset: number;
}

type ConfigValue = number | string | boolean | null | number[];

/**
 * defaults <- json <- overrides, keeping only keys the scheduler knows (diffusers ignores the
 * others too, e.g. PNDM's skip_prk_steps in a DDIM config). Each value must have the default's
 * type; `choices` lists the allowed strings of enum keys. `where` names the scheduler in errors.
 */
export function resolveConfig<C extends object>(
  where: string,
  defaults: C,
  json: Record<string, unknown> = {},
  overrides: Partial<C> | Record<string, unknown> = {},
  choices: Record<string, readonly (string | null)[]> = {},
  nullable: Record<string, 'number' | 'number[]'> = {},
): C {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new UsageError(`${where} config: expected a JSON object (a diffusers scheduler_config.json), got ${JSON.stringify(json)}.`);
  }
  const out: Record<string, ConfigValue> = { ...(defaults as Record<string, ConfigValue>) };
  for (const src of [json, overrides as Record<string, unknown>]) {
    for (const [key, value] of Object.entries(src)) {
      if (!(key in out) || value === undefined) continue;
      out[key] = checkValue(where, key, value, (defaults as Record<string, ConfigValue>)[key]!, choices[key], nullable[key]);
    }
  }
  return out as C;
}

function checkValue(
  where: string,
  key: string,
  value: unknown,
  def: ConfigValue,
  choices: readonly (string | null)[] | undefined,
  nullable: 'number' | 'number[]' | undefined,
): ConfigValue {
  const bad = (expected: string) =>
    new UsageError(`${where} config key "${key}": expected ${expected}, got ${JSON.stringify(value)}.`);
  if (choices) {
    if (!choices.includes(value as string | null)) throw bad(`one of ${choices.map((c) => JSON.stringify(c)).join(', ')}`);
    return value as string | null;
  }
  if (value === null && (def === null || nullable)) return null;
  const kind = nullable ?? (Array.isArray(def) ? 'number[]' : typeof def);
  if (kind === 'number[]') {
    if (!Array.isArray(value) || !value.every((v) => typeof v === 'number' && Number.isFinite(v))) throw bad('a list of numbers');
    return value as number[];
  }
  // JSON has no infinities (Python writes a bare -Infinity for lambda_min_clipped, which
  // readSchedulerConfig turns into a string): accept "-Infinity" / "-inf" for number keys.
  if (kind === 'number' && typeof value === 'string' && /^[-+]?(inf|infinity)$/i.test(value)) {
    return value.startsWith('-') ? -Infinity : Infinity;
  }
  if (typeof value !== kind || (kind === 'number' && Number.isNaN(value))) throw bad(`a ${kind}`);
  return value as ConfigValue;
}

export const BASE_CHOICES = {
  beta_schedule: BETA_SCHEDULES,
  prediction_type: PREDICTION_TYPES,
  timestep_spacing: TIMESTEP_SPACINGS,
};

// ---------------------------------------------------------------------------------------------
// randomness
// ---------------------------------------------------------------------------------------------

/** Anything that gives standard normal numbers; src/util/random.ts `Random` is one. */
export interface NoiseGenerator {
  normalArray(n: number): Float32Array;
}

/** Options of step(). Stochastic steps take `noise` (replayable) or draw it from `generator`. */
export interface StepOptions {
  /** The standard normal noise the step adds, shaped like the sample (wins over `generator`). */
  noise?: tf.Tensor;
  /** Seeded source to draw the noise from; without either, tf.randomNormal (unseeded) is used. */
  generator?: NoiseGenerator;
  /** DDIM only: η, the amount of fresh noise (0 = deterministic DDIM, 1 = DDPM-like). */
  eta?: number;
  /** DDIM only: re-derive epsilon from the clipped x0. */
  useClippedModelOutput?: boolean;
}

export interface SchedulerOutput {
  /** The sample at the previous (less noisy) timestep: feed it to the next step. */
  prevSample: tf.Tensor;
  /** The scheduler's current estimate of the clean sample x0, where it computes one. */
  predOriginalSample?: tf.Tensor;
}

/** The noise a stochastic step adds: the given tensor, or drawn from the generator (or unseeded). */
export function drawNoise(shape: number[], opts: StepOptions): tf.Tensor {
  if (opts.noise) {
    if (!tf.util.arraysEqual(opts.noise.shape, shape)) {
      throw new UsageError(`step(): noise has shape [${opts.noise.shape}], expected the sample's shape [${shape}].`);
    }
    return opts.noise.clone();
  }
  if (opts.generator) return tf.tensor(opts.generator.normalArray(tf.util.sizeFromShape(shape)), shape, 'float32');
  return tf.randomNormal(shape);
}

// ---------------------------------------------------------------------------------------------
// the forward process and the Scheduler base class
// ---------------------------------------------------------------------------------------------

/** Timesteps for addNoise: a number, a list (one per batch item) or an int tensor. */
export type TimestepsLike = number | readonly number[] | Int32Array | Float32Array | tf.Tensor;

function timestepList(t: TimestepsLike): { values: number[]; scalar: boolean } {
  if (typeof t === 'number') return { values: [t], scalar: true };
  if (t instanceof tf.Tensor) return { values: Array.from(t.dataSync()), scalar: t.rank === 0 };
  return { values: Array.from(t), scalar: false };
}

/** Shape that broadcasts one value per batch item against a tensor of rank `rank`. */
function perItemShape(n: number, rank: number, scalar: boolean): number[] {
  return scalar ? [] : [n, ...new Array<number>(Math.max(0, rank - 1)).fill(1)];
}

/**
 * The forward (noising) process of a beta schedule: betas, ᾱ, addNoise, getVelocity.
 * Schedulers extend it; use it alone for training.
 */
export class NoiseSchedule {
  readonly numTrainTimesteps: number;
  readonly betas: Float64Array;
  readonly alphas: Float64Array;
  /** ᾱ_t for t = 0..T-1 (float32 values held in float64). */
  readonly alphasCumprod: Float64Array;

  constructor(
    cfg: Pick<BaseSchedulerConfig, 'num_train_timesteps' | 'beta_start' | 'beta_end' | 'beta_schedule' | 'trained_betas'> & {
      rescale_betas_zero_snr?: boolean;
    },
  ) {
    const T = cfg.num_train_timesteps;
    if (!Number.isInteger(T) || T < 2) {
      throw new UsageError(`scheduler config num_train_timesteps: expected an integer >= 2, got ${T}.`);
    }
    if (cfg.trained_betas && cfg.trained_betas.length !== T) {
      throw new UsageError(`scheduler config trained_betas: expected ${T} values (num_train_timesteps), got ${cfg.trained_betas.length}.`);
    }
    let betas = makeBetas(cfg.beta_schedule, T, cfg.beta_start, cfg.beta_end, cfg.trained_betas);
    if (cfg.rescale_betas_zero_snr) betas = rescaleZeroTerminalSnr(betas);
    this.numTrainTimesteps = T;
    this.betas = betas;
    this.alphas = betas.map((b) => f32(1 - b));
    this.alphasCumprod = alphasCumprodFromBetas(betas);
  }

  /** Throws unless t is an integer train timestep in [0, T). */
  checkTimestep(t: number, where: string): void {
    if (!Number.isInteger(t) || t < 0 || t >= this.numTrainTimesteps) {
      throw new UsageError(`${where}: timestep must be an integer in [0, ${this.numTrainTimesteps - 1}], got ${t}.`);
    }
  }

  /** sqrt(ᾱ_t) and sqrt(1 - ᾱ_t) per batch item, as float32 tensors shaped to broadcast against x. */
  protected signalNoiseCoefs(t: TimestepsLike, x: tf.Tensor, where: string): [tf.Tensor, tf.Tensor] {
    const { values, scalar } = timestepList(t);
    if (!scalar && values.length !== 1 && values.length !== x.shape[0]) {
      throw new UsageError(`${where}: got ${values.length} timesteps for a batch of ${x.shape[0]}.`);
    }
    for (const v of values) this.checkTimestep(v, where);
    const shape = perItemShape(values.length, x.rank, scalar);
    const a = values.map((v) => this.alphasCumprod[v]!);
    // Same float32 roundings as diffusers: ᾱ ** 0.5 and (1 - ᾱ) ** 0.5 on float32 tensors.
    const sqrtA = tf.tensor(a.map((v) => f32(Math.sqrt(v))), shape, 'float32');
    const sqrt1mA = tf.tensor(a.map((v) => f32(Math.sqrt(f32(1 - v)))), shape, 'float32');
    return [sqrtA, sqrt1mA];
  }

  /** x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·noise, with t one integer per batch item (or one for all). */
  addNoise(x0: tf.Tensor, noise: tf.Tensor, t: TimestepsLike): tf.Tensor {
    return tf.tidy(() => {
      const [a, s] = this.signalNoiseCoefs(t, x0, 'addNoise');
      return tf.add(tf.mul(a, x0), tf.mul(s, noise));
    });
  }

  /** v = sqrt(ᾱ_t)·noise - sqrt(1-ᾱ_t)·x0: the target of a v_prediction model. */
  getVelocity(x0: tf.Tensor, noise: tf.Tensor, t: TimestepsLike): tf.Tensor {
    return tf.tidy(() => {
      const [a, s] = this.signalNoiseCoefs(t, x0, 'getVelocity');
      return tf.sub(tf.mul(a, noise), tf.mul(s, x0));
    });
  }
}

/**
 * What every scheduler offers. Ownership: every tensor a scheduler returns is new and owned by
 * the caller; the caller's inputs are never disposed.
 */
export abstract class Scheduler<C extends BaseSchedulerConfig = BaseSchedulerConfig> extends NoiseSchedule {
  readonly config: C;
  /** Timesteps of the current schedule, noisiest first (integers, or floats for Euler). */
  timesteps: number[] = [];
  numInferenceSteps: number | null = null;

  constructor(config: C & { rescale_betas_zero_snr?: boolean }) {
    super(config);
    if (!Number.isInteger(config.steps_offset) || config.steps_offset < 0) {
      throw new UsageError(`scheduler config steps_offset: expected an integer >= 0, got ${config.steps_offset}.`);
    }
    this.config = config;
  }

  /** Std of the initial noise: latents start as initNoiseSigma · N(0, I). */
  get initNoiseSigma(): number {
    return 1.0;
  }

  /** Chooses `numInferenceSteps` timesteps (and resets any multistep state). */
  abstract setTimesteps(numInferenceSteps: number): void;

  /** One reverse step from `sample` at `timestep` given the model's output there. */
  abstract step(modelOutput: tf.Tensor, timestep: number, sample: tf.Tensor, opts?: StepOptions): SchedulerOutput;

  /** Scales the model input for this timestep; identity for the ᾱ-parametrised schedulers. */
  scaleModelInput(sample: tf.Tensor, _timestep: number): tf.Tensor {
    return sample.clone();
  }

  /** Releases tensors a multistep scheduler keeps between steps. */
  dispose(): void {}

  /** Throws unless n is a usable number of inference steps. */
  protected checkSteps(n: number): void {
    const T = this.numTrainTimesteps;
    if (!Number.isInteger(n) || n <= 0 || n > T) {
      throw new UsageError(`setTimesteps: number of inference steps must be an integer in [1, ${T}] (num_train_timesteps), got ${n}.`);
    }
  }

  /**
   * The "leading" / "linspace" / "trailing" spacings (arXiv 2305.08891, Table 2) as DDPM, DDIM,
   * PNDM and Euler compute them (Euler's linspace is unrounded), noisiest first. leading: 0, r, 2r... plus steps_offset (SD's configs use
   * steps_offset=1 so the last step is t=1); linspace: evenly from T-1 to 0; trailing: from T-1
   * down in steps of T/n.
   */
  protected spacedTimesteps(n: number): number[] {
    const T = this.numTrainTimesteps;
    switch (this.config.timestep_spacing) {
      case 'linspace':
        return npLinspace(0, T - 1, n).map(roundHalfEven).reverse();
      case 'leading': {
        const ratio = Math.floor(T / n);
        return Array.from({ length: n }, (_, i) => i * ratio + this.config.steps_offset).reverse();
      }
      case 'trailing':
        return npArange(T, 0, -T / n).map((v) => roundHalfEven(v) - 1);
    }
  }

  /** x0 from the model output in the ᾱ parametrisation (used by DDPM), per prediction_type. */
  protected predictX0(modelOutput: tf.Tensor, sample: tf.Tensor, alphaProdT: number): tf.Tensor {
    const betaProdT = f32(1 - alphaProdT);
    switch (this.config.prediction_type) {
      case 'epsilon':
        return tf.div(tf.sub(sample, tf.mul(modelOutput, Math.sqrt(betaProdT))), Math.sqrt(alphaProdT));
      case 'sample':
        return modelOutput.clone();
      case 'v_prediction':
        return tf.sub(tf.mul(sample, Math.sqrt(alphaProdT)), tf.mul(modelOutput, Math.sqrt(betaProdT)));
    }
  }
}

/**
 * Dynamic thresholding (Imagen, arXiv 2205.11487): per batch item, s = the `ratio` quantile of
 * |x0| clamped to [1, maxValue]; x0 is clipped to [-s, s] and divided by s. Reads the values
 * back to the CPU (it is meant for small pixel-space models).
 */
export function thresholdSample(x: tf.Tensor, ratio: number, maxValue: number): tf.Tensor {
  return tf.tidy(() => {
    const b = x.shape[0] ?? 1;
    const flat = x.reshape([b, -1]);
    const rows = flat.abs().arraySync() as number[][];
    const s = rows.map((row) => {
      const sorted = Float64Array.from(row).sort();
      // torch.quantile, linear interpolation between the closest ranks.
      const pos = ratio * (sorted.length - 1);
      const lo = Math.floor(pos);
      const hi = Math.min(lo + 1, sorted.length - 1);
      const q = sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
      return Math.min(Math.max(q, 1), maxValue);
    });
    const sT = tf.tensor(s, [b, 1], 'float32');
    return tf.div(tf.minimum(tf.maximum(flat, tf.neg(sT)), sT), sT).reshape(x.shape);
  });
}

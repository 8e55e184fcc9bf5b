/**
 * What every sampler ("scheduler") shares: the config, the timestep spacings, x0 from the model
 * output, and the numpy/torch helpers that make the numbers match diffusers.
 *
 * The beta schedule, ᾱ and the forward (noising) process x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε live in
 * ./forward.ts (NoiseSchedule); a Scheduler extends NoiseSchedule and walks the process backwards
 * at inference: setTimesteps(n) picks n of the T timesteps, and step(modelOutput, t, x_t) turns
 * the model's prediction at t into the sample at the next (earlier) timestep. Each scheduler lives
 * in its own file next to this one and mirrors diffusers v0.24 (same config keys, same defaults,
 * same numbers); `createScheduler` in ./index.ts builds one by name from a diffusers
 * `scheduler_config.json`.
 *
 * Precision: diffusers keeps its tables as float32 torch tensors and computes the per-step
 * coefficients as float32 0-d tensors. We keep the tables in Float64Arrays holding exactly those
 * float32 values, and round each scalar op with Math.fround (`f32`) the way torch does; tensor
 * math is float32 in tfjs. Without this, sigmas near t = 0 (where 1 - ᾱ_t cancels) move by
 * ~1e-5; with it DDPM, DDIM, PNDM and Euler reproduce the fixture bit for bit, DPM-Solver to
 * ~1 ulp per step (torch's float32 exp/log are not always correctly rounded; ours are).
 */
import * as tf from '@tensorflow/tfjs';
import { type KeyRule, checkConfigKey } from '../io/config.ts';
import { UsageError } from '../util/errors.ts';
import { showJson } from '../util/json.ts';
import { BETA_SCHEDULES, type BetaSchedule, NoiseSchedule, PREDICTION_TYPES, type PredictionType } from './forward.ts';

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

/** np.interp(x, [0, 1, ..., n-1], table): linear interpolation in a table indexed by timestep. */
export function interpTable(x: number, table: ArrayLike<number>): number {
  const n = table.length;
  if (x <= 0) return table[0];
  if (x >= n - 1) return table[n - 1];
  const j = Math.floor(x);
  if (j === x) return table[j];
  const slope = table[j + 1] - table[j]; // over xp[j+1] - xp[j] = 1
  return slope * (x - j) + table[j];
}

/** σ_t = sqrt((1 - ᾱ_t) / ᾱ_t) per train timestep (the sigma-space samplers' noise level), each op rounded to float32 like the torch expression. */
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
 * The config-key rule of src/io/config.ts, for schedulers. diffusers shares one
 * scheduler_config.json among its schedulers (`OtherScheduler.from_config(pipe.scheduler.config)`),
 * so a scheduler reads keys written for another one:
 *   - its own keys (its defaults) are validated;
 *   - the keys any diffusers diffusion scheduler defines (SCHEDULER_INERT_KEYS, from diffusers
 *     0.2 to 0.40) are inert for a scheduler that does not define them, as in diffusers: PNDM's
 *     skip_prk_steps means nothing to Euler;
 *   - except the keys that describe the model and its predictions rather than one sampler
 *     (MODEL_KEYS): every scheduler honours them or accepts only the value that changes nothing
 *     (ᾱ rescaled to zero terminal SNR, thresholded or clipped x0, the old predict_epsilon);
 *     and the keys the scheduler's own diffusers class has that sdlab does not implement
 *     (UNIMPLEMENTED), likewise;
 *   - any other key is refused, naming the file and the key.
 */
export const SCHEDULER_INERT_KEYS: readonly string[] = [
  // the beta-schedule samplers of diffusers (DDPM, DDIM, PNDM, LMS, Euler, Euler a, Heun, KDPM2,
  // DPM-Solver multistep/singlestep/SDE, DEIS, UniPC, SA-Solver, LCM, TCD, DDIM inverse)
  'num_train_timesteps', 'beta_start', 'beta_end', 'beta_schedule', 'trained_betas', 'prediction_type',
  'timestep_spacing', 'steps_offset', 'variance_type', 'clip_sample', 'clip_sample_range', 'set_alpha_to_one',
  'skip_prk_steps', 'thresholding', 'dynamic_thresholding_ratio', 'sample_max_value', 'rescale_betas_zero_snr',
  'interpolation_type', 'use_karras_sigmas', 'use_exponential_sigmas', 'use_beta_sigmas', 'use_flow_sigmas',
  'use_lu_lambdas', 'sigma_min', 'sigma_max', 'timestep_type', 'final_sigmas_type', 'solver_order', 'solver_type',
  'algorithm_type', 'lower_order_final', 'euler_at_final', 'lambda_min_clipped', 'flow_shift',
  'use_dynamic_shifting', 'time_shift_type', 'noise_sampler_seed', 'predict_x0', 'disable_corrector', 'solver_p',
  'shift_terminal', 'predictor_order', 'corrector_order', 'tau_func', 'original_inference_steps',
  'timestep_scaling', 'set_alpha_to_zero',
  // removed from diffusers long ago, still in old configs
  'tensor_format', 'timestep_values', 'predict_epsilon',
];

/** Keys that describe the model, not one sampler → the value at which they change nothing. */
const MODEL_KEYS: Readonly<Record<string, unknown>> = {
  rescale_betas_zero_snr: false,
  thresholding: false,
  clip_sample: false,
  predict_epsilon: true, // diffusers 0.8; false meant prediction_type "sample"
};

/** Keys each scheduler's diffusers class (up to 0.40) has that sdlab does not implement → their no-op value. */
const UNIMPLEMENTED: Readonly<Record<string, Readonly<Record<string, unknown>>>> = {
  EulerDiscreteScheduler: { use_exponential_sigmas: false, use_beta_sigmas: false, final_sigmas_type: 'zero' },
  // sdlab follows diffusers 0.24, whose last sigma is sigma_min (later releases default to "zero").
  DPMSolverMultistepScheduler: { use_exponential_sigmas: false, use_beta_sigmas: false, use_flow_sigmas: false, use_dynamic_shifting: false, final_sigmas_type: 'sigma_min' },
};

/** The file each config object returned by readSchedulerConfig came from, for error messages. */
const configSources = new WeakMap<object, string>();

/** Remembers that `json` was read from `file` (readSchedulerConfig), so errors can name the file. */
export function rememberConfigSource(json: object, file: string): void {
  configSources.set(json, file);
}

/**
 * defaults <- json <- overrides. Keys are classified by the rule above (SCHEDULER_INERT_KEYS);
 * each value of a known key must have the default's type; `choices` lists the allowed strings
 * of enum keys. `where` names the scheduler class in errors (and the file, when readSchedulerConfig
 * read `json`).
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
    throw new UsageError(`${where} config: expected a JSON object (a diffusers scheduler_config.json), got ${showJson(json)}.`);
  }
  const known = Object.keys(defaults);
  const unimplemented = { ...MODEL_KEYS, ...UNIMPLEMENTED[where] };
  for (const k of known) delete unimplemented[k];
  const rule: KeyRule = {
    reader: `sdlab's ${where}`,
    known,
    inert: SCHEDULER_INERT_KEYS,
    unimplemented,
    unimplementedHint: 'pick another --scheduler, or set the key to that value to sample without it',
    unknownHint: 'it is not a key of any diffusers diffusion scheduler',
  };
  const out: Record<string, ConfigValue> = { ...(defaults as Record<string, ConfigValue>) };
  for (const [src, source] of [[json, configSources.get(json) ?? `${where} config`], [overrides as Record<string, unknown>, `${where} settings`]] as const) {
    for (const [key, value] of Object.entries(src)) {
      if (value === undefined || checkConfigKey(key, value, rule, source) === 'ignore') continue;
      out[key] = checkValue(where, key, value, (defaults as Record<string, ConfigValue>)[key], Object.hasOwn(choices, key) ? choices[key] : undefined, Object.hasOwn(nullable, key) ? nullable[key] : undefined);
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
    new UsageError(`${where} config key "${key}": expected ${expected}, got ${showJson(value)}.`);
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
// the Scheduler base class
// ---------------------------------------------------------------------------------------------

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

  /**
   * The model's estimate of the clean sample x0 at `timestep`, from its output there (the
   * forward process solved for x0, per prediction_type). Pipelines draw it for schedulers whose
   * step() reports none (PNDM, DPM-Solver).
   */
  predictOriginalSample(modelOutput: tf.Tensor, timestep: number, sample: tf.Tensor): tf.Tensor {
    this.checkTimestep(timestep, `${this.constructor.name}.predictOriginalSample`);
    return tf.tidy(() => this.predictX0(modelOutput, sample, this.alphasCumprod[timestep]));
  }

  /**
   * x0 from the model output in the ᾱ parametrisation, per prediction_type:
   *   epsilon: (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t;   v_prediction: √ᾱ_t·x_t − √(1−ᾱ_t)·v̂;   sample: x̂0.
   */
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
      const q = sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
      return Math.min(Math.max(q, 1), maxValue);
    });
    const sT = tf.tensor(s, [b, 1], 'float32');
    return tf.div(tf.minimum(tf.maximum(flat, tf.neg(sT)), sT), sT).reshape(x.shape);
  });
}

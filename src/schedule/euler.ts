/**
 * Euler: the first-order ODE sampler of "Elucidating the Design Space of Diffusion-Based
 * Generative Models" (Karras et al. 2022, arXiv 2206.00364, Algorithm 2 without churn),
 * mirroring diffusers v0.24 EulerDiscreteScheduler.
 *
 * It works in the sigma parametrisation x = x0 + σ·ε with σ_t = sqrt((1-ᾱ_t)/ᾱ_t) (the
 * ᾱ-scaled sample divided by sqrt(ᾱ_t)). Hence latents start at N(0, σ_max²) (initNoiseSigma
 * ~ 14.6 for SD) and the model input is rescaled to unit variance: x / sqrt(σ² + 1)
 * (scaleModelInput, required every step). A step follows the ODE dx/dσ = (x - x0)/σ:
 *
 *   x0 = x - σ_i·ε;   x_{i+1} = x + (x - x0)/σ_i · (σ_{i+1} - σ_i)
 *
 * Timesteps are floats ("linspace" by default: 999, 888, ..., 0 for 10 steps); sigmas are the
 * σ table interpolated at them, plus a final 0 — or, with use_karras_sigmas, Karras sigmas between
 * the same ends (or sigma_min/sigma_max) and the timesteps they map to (./karras.ts). The
 * scheduler keeps a step index: call
 * setTimesteps before each run and step through `timesteps` in order.
 *
 *   const s = EulerDiscreteScheduler.fromConfig(json); s.setTimesteps(20);
 *   let x = noise.mul(s.initNoiseSigma);
 *   for (const t of s.timesteps) x = s.step(unet(s.scaleModelInput(x, t), t), t, x).prevSample;
 */
import * as tf from '@tensorflow/tfjs';
import { UsageError } from '../util/errors.ts';
import {
  BASE_CHOICES,
  type BaseSchedulerConfig,
  Scheduler,
  type SchedulerOutput,
  type StepOptions,
  interpTable,
  npLinspace,
  resolveConfig,
  sigmaTable,
} from './base.ts';
import { DDPM_BETA_DEFAULTS, type TimestepsLike } from './forward.ts';
import { karrasSigmas, logSigmaTable, sigmaToT } from './karras.ts';

const f32 = Math.fround;

/**
 * Shared by Euler and Euler-ancestral: float timesteps, the sigma table, the step index,
 * scaleModelInput and sigma-space addNoise.
 */
export abstract class SigmaScheduler<C extends BaseSchedulerConfig> extends Scheduler<C> {
  /** σ at each timestep of the schedule, then 0 (length timesteps + 1; float32 values). */
  sigmas: number[] = [];
  /** Index of the next step in `timesteps`; set by the first scaleModelInput/step after setTimesteps. */
  stepIndex: number | null = null;

  constructor(config: C) {
    super(config);
    // Before setTimesteps: every train timestep, noisiest first.
    const T = this.numTrainTimesteps;
    this.timesteps = npLinspace(0, T - 1, T).reverse();
    this.sigmas = [...Array.from(sigmaTable(this.alphasCumprod)).reverse(), 0];
  }

  /** σ_max for "linspace"/"trailing"; sqrt(σ_max² + 1) for "leading" (as diffusers). */
  override get initNoiseSigma(): number {
    const max = f32(Math.max(...this.sigmas));
    return this.config.timestep_spacing === 'leading' ? f32(Math.sqrt(f32(f32(max * max) + 1))) : max;
  }

  setTimesteps(numInferenceSteps: number): void {
    this.checkSteps(numInferenceSteps);
    const T = this.numTrainTimesteps;
    const n = numInferenceSteps;
    this.numInferenceSteps = n;
    // Euler's "linspace" is not rounded (999, 832.5, ... for 7 steps); the other spacings are DDIM's.
    let ts = this.config.timestep_spacing === 'linspace' ? npLinspace(0, T - 1, n).map(f32).reverse() : this.spacedTimesteps(n);
    const table = sigmaTable(this.alphasCumprod);
    let sigmas = ts.map((t) => interpTable(t, table)); // float64, as np.interp returns them
    const karras = this.karras();
    if (karras) {
      // Karras σs between the ends of that schedule (or the config's sigma_min/sigma_max), each
      // mapped back to a fractional train timestep for the model (./karras.ts).
      sigmas = karrasSigmas(karras.sigmaMin ?? sigmas[sigmas.length - 1], karras.sigmaMax ?? sigmas[0], n);
      const logSigmas = logSigmaTable(table);
      ts = sigmas.map((s) => f32(sigmaToT(s, logSigmas)));
    }
    this.timesteps = ts;
    this.sigmas = [...sigmas.map(f32), 0];
    this.stepIndex = null;
  }

  /** Karras sigmas (use_karras_sigmas) and their optional ends, or null for the plain σ table. */
  protected karras(): { sigmaMin: number | null; sigmaMax: number | null } | null {
    return null;
  }

  /** Finds the step index of `timestep` (the second match if it repeats, as diffusers does). */
  protected initStepIndex(timestep: number, where: string): void {
    const matches = this.timesteps.flatMap((t, i) => (t === timestep ? [i] : []));
    if (matches.length === 0) {
      throw new UsageError(`${where}: timestep ${timestep} is not in this scheduler's timesteps (call setTimesteps and use scheduler.timesteps).`);
    }
    this.stepIndex = matches.length > 1 ? matches[1] : matches[0];
  }

  /** The current step's σ, initialising the step index from `timestep` on first use. */
  protected currentSigma(timestep: number, where: string): number {
    if (this.stepIndex === null) this.initStepIndex(timestep, where);
    if (this.stepIndex! >= this.timesteps.length) {
      throw new UsageError(`${where}: all ${this.timesteps.length} steps are done; call setTimesteps again for a new run.`);
    }
    return this.sigmas[this.stepIndex!];
  }

  /** x / sqrt(σ² + 1): the model was trained on unit-variance inputs. */
  override scaleModelInput(sample: tf.Tensor, timestep: number): tf.Tensor {
    const sigma = this.currentSigma(timestep, `${this.constructor.name}.scaleModelInput`);
    return tf.div(sample, f32(Math.sqrt(f32(f32(sigma * sigma) + 1))));
  }

  /**
   * The forward process in this scheduler's own parametrisation: x = x0 + σ_t·noise, which is
   * the ᾱ form x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·noise (NoiseSchedule.noisedSample) divided by √ᾱ_t —
   * the sample this scheduler's steps walk. For timesteps of the current schedule (img2img
   * starts mid-schedule), as in diffusers.
   */
  override addNoise(x0: tf.Tensor, noise: tf.Tensor, t: TimestepsLike): tf.Tensor {
    const values = typeof t === 'number' ? [t] : t instanceof tf.Tensor ? Array.from(t.dataSync()) : Array.from(t);
    const sig = values.map((v) => this.sigmaAt(v, 'addNoise'));
    const shape = sig.length === 1 ? [] : [sig.length, ...new Array<number>(x0.rank - 1).fill(1)];
    return tf.tidy(() => tf.add(x0, tf.mul(noise, tf.tensor(sig, shape, 'float32'))));
  }

  /** x0 from the model output at a timestep of the schedule, in sigma space (predictX0Sigma). */
  override predictOriginalSample(modelOutput: tf.Tensor, timestep: number, sample: tf.Tensor): tf.Tensor {
    const sigma = this.sigmaAt(timestep, `${this.constructor.name}.predictOriginalSample`);
    return tf.tidy(() => this.predictX0Sigma(modelOutput, sample, sigma));
  }

  /** σ at a timestep of the current schedule. */
  private sigmaAt(t: number, where: string): number {
    const i = this.timesteps.indexOf(t);
    if (i < 0) throw new UsageError(`${where}: timestep ${t} is not in this scheduler's timesteps.`);
    return this.sigmas[i];
  }

  /** x0 from the model output at σ (the Karras "denoiser" D(x; σ)). */
  protected predictX0Sigma(modelOutput: tf.Tensor, sample: tf.Tensor, sigma: number): tf.Tensor {
    switch (this.config.prediction_type) {
      case 'epsilon':
        return tf.sub(sample, tf.mul(modelOutput, sigma));
      case 'v_prediction': {
        // c_out·v + c_skip·x with c_out = -σ/sqrt(σ²+1), c_skip = 1/(σ²+1)
        const s2p1 = f32(f32(sigma * sigma) + 1);
        return tf.add(tf.mul(modelOutput, f32(-sigma / f32(Math.sqrt(s2p1)))), tf.div(sample, s2p1));
      }
      case 'sample':
        return modelOutput.clone();
    }
  }
}

export interface EulerDiscreteConfig extends BaseSchedulerConfig {
  interpolation_type: 'linear';
  use_karras_sigmas: boolean;
  sigma_min: number | null;
  sigma_max: number | null;
  timestep_type: 'discrete';
}

export const EULER_DEFAULTS: EulerDiscreteConfig = {
  ...DDPM_BETA_DEFAULTS,
  prediction_type: 'epsilon',
  interpolation_type: 'linear',
  use_karras_sigmas: false,
  sigma_min: null,
  sigma_max: null,
  timestep_spacing: 'linspace',
  timestep_type: 'discrete',
  steps_offset: 0,
};

export class EulerDiscreteScheduler extends SigmaScheduler<EulerDiscreteConfig> {
  static fromConfig(json: Record<string, unknown> = {}, overrides: Partial<EulerDiscreteConfig> | Record<string, unknown> = {}): EulerDiscreteScheduler {
    const cfg = resolveConfig(
      'EulerDiscreteScheduler',
      EULER_DEFAULTS,
      json,
      overrides,
      { ...BASE_CHOICES, interpolation_type: ['linear'], timestep_type: ['discrete'] },
      { trained_betas: 'number[]', sigma_min: 'number', sigma_max: 'number' },
    );
    return new EulerDiscreteScheduler(cfg);
  }

  constructor(config: EulerDiscreteConfig = EULER_DEFAULTS) {
    for (const k of ['sigma_min', 'sigma_max'] as const) {
      const v = config[k];
      if (v !== null && !(v > 0)) throw new UsageError(`EulerDiscreteScheduler config key "${k}": expected a number > 0 or null, got ${v}.`);
    }
    super(config);
  }

  protected override karras(): { sigmaMin: number | null; sigmaMax: number | null } | null {
    return this.config.use_karras_sigmas ? { sigmaMin: this.config.sigma_min, sigmaMax: this.config.sigma_max } : null;
  }

  step(modelOutput: tf.Tensor, timestep: number, sample: tf.Tensor, opts: StepOptions = {}): SchedulerOutput {
    const where = 'EulerDiscreteScheduler.step';
    const sigma = this.currentSigma(timestep, where);
    // diffusers draws the churn noise every step although s_churn = 0 multiplies it by zero: draw
    // (and drop) it too, so a generator shared with later draws stays in step with torch's stream.
    if (opts.generator) opts.generator.normalArray(modelOutput.size);
    const dt = f32(this.sigmas[this.stepIndex! + 1] - sigma);
    const out = tf.tidy(() => {
      // 1. x0 from the model output, 2. the ODE derivative d = (x - x0)/σ, 3. an Euler step
      const x0 = this.predictX0Sigma(modelOutput, sample, sigma);
      const derivative = tf.div(tf.sub(sample, x0), sigma);
      return { prevSample: tf.add(sample, tf.mul(derivative, dt)), predOriginalSample: x0 };
    });
    this.stepIndex! += 1;
    return out;
  }
}

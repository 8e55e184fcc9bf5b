/**
 * DPM-Solver++(2M): "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
 * Models" (Lu et al. 2022, arXiv 2211.01095), mirroring diffusers v0.24
 * DPMSolverMultistepScheduler with algorithm_type "dpmsolver++" (solver_order 2 by default, 1
 * also works). Good samples in 15-25 steps.
 *
 * In log-SNR time λ = log(α/σ) (α = 1/sqrt(1+σ_k²), σ = σ_k·α for the Karras sigma σ_k), the
 * exact solution of the diffusion ODE is a weighted integral of the model's x0 prediction.
 * Approximating that x0(λ) by a constant gives the first-order step (= DDIM); a line through
 * the current and the previous x0 gives the second-order multistep update ("midpoint"):
 *
 *   h = λ_t - λ_s,  r = (λ_s - λ_prev)/h,  D0 = x0_s,  D1 = (x0_s - x0_prev)/r
 *   x_t = (σ_t/σ_s)·x_s - α_t(e^{-h} - 1)·D0 - ½·α_t(e^{-h} - 1)·D1
 *
 * The first step (no history yet) and, with lower_order_final and < 15 steps, the last one are
 * first order. Timesteps are integers, "linspace" by default over n+1 points minus the last
 * (999, 899, ..., 100 for 10 steps); sigmas end with σ at t=0. The model input is not scaled.
 * use_karras_sigmas picks Karras sigmas instead ("DPM++ 2M Karras", ./karras.ts).
 *
 *   const s = DPMSolverMultistepScheduler.fromConfig(json); s.setTimesteps(20);
 *   for (const t of s.timesteps) x = s.step(unet(x, t), t, x).prevSample;
 */
import * as tf from '@tensorflow/tfjs';
import { UsageError } from '../util/errors.ts';
import {
  BASE_CHOICES,
  type BaseSchedulerConfig,
  Scheduler,
  type SchedulerOutput,
  interpTable,
  npArange,
  npLinspace,
  resolveConfig,
  roundHalfEven,
  sigmaTable,
  thresholdSample,
} from './base.ts';
import { DDPM_BETA_DEFAULTS, type TimestepsLike } from './forward.ts';
import { karrasSigmas, logSigmaTable, sigmaToT } from './karras.ts';

const f32 = Math.fround;

export interface DPMSolverMultistepConfig extends BaseSchedulerConfig {
  solver_order: number;
  thresholding: boolean;
  dynamic_thresholding_ratio: number;
  sample_max_value: number;
  algorithm_type: 'dpmsolver++';
  solver_type: 'midpoint' | 'heun';
  lower_order_final: boolean;
  euler_at_final: boolean;
  use_karras_sigmas: boolean;
  use_lu_lambdas: boolean;
  lambda_min_clipped: number;
  /** Only "learned" variances change DPM-Solver (sdlab has none); DDPM's fixed ones, from a shared config, do not. */
  variance_type: (typeof DPM_FIXED_VARIANCE_TYPES)[number];
}

/** variance_type values that leave DPM-Solver as it is (diffusers acts only on "learned"/"learned_range"). */
const DPM_FIXED_VARIANCE_TYPES = [null, 'fixed_small', 'fixed_small_log', 'fixed_large', 'fixed_large_log'] as const;

export const DPM_SOLVER_DEFAULTS: DPMSolverMultistepConfig = {
  ...DDPM_BETA_DEFAULTS,
  solver_order: 2,
  prediction_type: 'epsilon',
  thresholding: false,
  dynamic_thresholding_ratio: 0.995,
  sample_max_value: 1.0,
  algorithm_type: 'dpmsolver++',
  solver_type: 'midpoint',
  lower_order_final: true,
  euler_at_final: false,
  use_karras_sigmas: false,
  use_lu_lambdas: false,
  lambda_min_clipped: -Infinity,
  variance_type: null,
  timestep_spacing: 'linspace',
  steps_offset: 0,
};

/**
 * α_t, σ_t and λ_t = log(α_t/σ_t) from a Karras sigma: α = 1/sqrt(σ²+1), σ_t = σ·α. Each op is
 * rounded to float32 as diffusers computes these on float32 tensors: the per-step scalars then
 * match torch's exactly, instead of drifting ~1e-6 relative per step.
 */
function alphaSigma(sigma: number): { alpha: number; sigmaT: number; lambda: number } {
  const alpha = f32(1 / f32(Math.sqrt(f32(f32(sigma * sigma) + 1))));
  const sigmaT = f32(sigma * alpha);
  return { alpha, sigmaT, lambda: f32(f32(Math.log(alpha)) - f32(Math.log(sigmaT))) };
}

export class DPMSolverMultistepScheduler extends Scheduler<DPMSolverMultistepConfig> {
  sigmas: number[] = [];
  stepIndex: number | null = null;
  /** x0 predictions of the last `solver_order` steps, oldest first (null before they exist). */
  private modelOutputs: (tf.Tensor | null)[];
  private lowerOrderNums = 0;

  static fromConfig(json: Record<string, unknown> = {}, overrides: Partial<DPMSolverMultistepConfig> | Record<string, unknown> = {}): DPMSolverMultistepScheduler {
    const cfg = resolveConfig(
      'DPMSolverMultistepScheduler',
      DPM_SOLVER_DEFAULTS,
      json,
      overrides,
      { ...BASE_CHOICES, algorithm_type: ['dpmsolver++'], solver_type: ['midpoint', 'heun'], variance_type: DPM_FIXED_VARIANCE_TYPES },
      { trained_betas: 'number[]' },
    );
    return new DPMSolverMultistepScheduler(cfg);
  }

  constructor(config: DPMSolverMultistepConfig = DPM_SOLVER_DEFAULTS) {
    if (config.solver_order !== 1 && config.solver_order !== 2) {
      throw new UsageError(`DPMSolverMultistepScheduler config key "solver_order": sdlab supports 1 or 2, got ${config.solver_order}.`);
    }
    if (config.use_lu_lambdas) {
      throw new UsageError('DPMSolverMultistepScheduler config key "use_lu_lambdas": true is not supported by sdlab; set it to false.');
    }
    super(config);
    this.modelOutputs = new Array<tf.Tensor | null>(config.solver_order).fill(null);
    const T = this.numTrainTimesteps;
    this.timesteps = npLinspace(0, T - 1, T).map(f32).reverse();
  }

  setTimesteps(numInferenceSteps: number): void {
    this.checkSteps(numInferenceSteps);
    const n = numInferenceSteps;
    const T = this.numTrainTimesteps;
    // Clip the smallest λ (lambda_min_clipped) for stability: the last usable timestep.
    const lambdas = this.alphasCumprod.map((a) => f32(Math.log(f32(Math.sqrt(a))) - Math.log(f32(Math.sqrt(f32(1 - a))))));
    let clippedIdx = 0; // searchsorted(flip(λ), lambda_min_clipped)
    while (clippedIdx < T && lambdas[T - 1 - clippedIdx] < this.config.lambda_min_clipped) clippedIdx++;
    const lastTimestep = T - clippedIdx;

    let ts: number[];
    switch (this.config.timestep_spacing) {
      case 'linspace':
        ts = npLinspace(0, lastTimestep - 1, n + 1).map(roundHalfEven).reverse().slice(0, -1);
        break;
      case 'leading': {
        const ratio = Math.floor(lastTimestep / (n + 1));
        ts = Array.from({ length: n + 1 }, (_, i) => i * ratio).reverse().slice(0, -1).map((t) => t + this.config.steps_offset);
        break;
      }
      case 'trailing':
        ts = npArange(lastTimestep, 0, -T / n).map((v) => roundHalfEven(v) - 1);
        break;
    }
    const table = sigmaTable(this.alphasCumprod);
    if (this.config.use_karras_sigmas) {
      // Karras σs over the whole train range (σ_0 .. σ_{T−1}), each mapped to the nearest train
      // timestep (./karras.ts). As in diffusers 0.24 the list ends with the last σ repeated, so
      // the final step goes from σ_min to σ_min: it changes nothing (later diffusers end at 0).
      const karras = karrasSigmas(table[0], table[T - 1], n);
      const logSigmas = logSigmaTable(table);
      ts = karras.map((sg) => roundHalfEven(sigmaToT(sg, logSigmas)));
      this.sigmas = [...karras, karras[n - 1]].map(f32);
    } else {
      this.sigmas = [...ts.map((t) => f32(interpTable(t, table))), table[0]];
    }
    this.timesteps = ts;
    this.numInferenceSteps = ts.length;
    this.resetState();
  }

  /**
   * The forward process as diffusers' DPM-Solver writes it: α_t·x0 + σ_t·noise with α_t, σ_t from
   * the schedule's σ at `t` (α_t = 1/√(σ²+1) = √ᾱ_t, σ_t = σ·α_t = √(1−ᾱ_t), up to float32
   * rounding). For timesteps of the current schedule (img2img starts mid-schedule), as in diffusers.
   */
  override addNoise(x0: tf.Tensor, noise: tf.Tensor, t: TimestepsLike): tf.Tensor {
    const values = typeof t === 'number' ? [t] : t instanceof tf.Tensor ? Array.from(t.dataSync()) : Array.from(t);
    const coefs = values.map((v) => {
      const i = this.timesteps.indexOf(v);
      if (i < 0) throw new UsageError(`DPMSolverMultistepScheduler.addNoise: timestep ${v} is not in this scheduler's timesteps.`);
      return alphaSigma(this.sigmas[i]);
    });
    const shape = coefs.length === 1 ? [] : [coefs.length, ...new Array<number>(x0.rank - 1).fill(1)];
    return tf.tidy(() => tf.add(tf.mul(x0, tf.tensor(coefs.map((c) => c.alpha), shape, 'float32')), tf.mul(noise, tf.tensor(coefs.map((c) => c.sigmaT), shape, 'float32'))));
  }

  /** x0 prediction at the current σ (dpmsolver++ works on x0, whatever the model predicts). */
  convertModelOutput(modelOutput: tf.Tensor, sample: tf.Tensor): tf.Tensor {
    const { alpha, sigmaT } = alphaSigma(this.sigmas[this.stepIndex!]);
    return tf.tidy(() => {
      let x0: tf.Tensor;
      switch (this.config.prediction_type) {
        case 'epsilon':
          x0 = tf.div(tf.sub(sample, tf.mul(modelOutput, sigmaT)), alpha);
          break;
        case 'sample':
          x0 = modelOutput.clone();
          break;
        case 'v_prediction':
          x0 = tf.sub(tf.mul(sample, alpha), tf.mul(modelOutput, sigmaT));
          break;
      }
      if (this.config.thresholding) x0 = thresholdSample(x0, this.config.dynamic_thresholding_ratio, this.config.sample_max_value);
      return x0;
    });
  }

  /** First order (DDIM in λ time): x_t = (σ_t/σ_s)·x_s - α_t(e^{-h} - 1)·x0. */
  private firstOrderUpdate(x0: tf.Tensor, sample: tf.Tensor): tf.Tensor {
    const i = this.stepIndex!;
    const t = alphaSigma(this.sigmas[i + 1]);
    const s = alphaSigma(this.sigmas[i]);
    const h = f32(t.lambda - s.lambda);
    const coef = f32(t.alpha * f32(f32(Math.exp(-h)) - 1));
    return tf.tidy(() => tf.sub(tf.mul(sample, f32(t.sigmaT / s.sigmaT)), tf.mul(x0, coef)));
  }

  /** Second order multistep from the last two x0 predictions (m0 newest, m1 previous). */
  private secondOrderUpdate(m0: tf.Tensor, m1: tf.Tensor, sample: tf.Tensor): tf.Tensor {
    const i = this.stepIndex!;
    const t = alphaSigma(this.sigmas[i + 1]);
    const s0 = alphaSigma(this.sigmas[i]);
    const s1 = alphaSigma(this.sigmas[i - 1]);
    const h = f32(t.lambda - s0.lambda);
    const h0 = f32(s0.lambda - s1.lambda);
    const r0 = f32(h0 / h);
    const em1 = f32(f32(Math.exp(-h)) - 1);
    const coef = f32(t.alpha * em1);
    return tf.tidy(() => {
      const d1 = tf.mul(tf.sub(m0, m1), f32(1 / r0));
      const base = tf.sub(tf.mul(sample, f32(t.sigmaT / s0.sigmaT)), tf.mul(m0, coef));
      if (this.config.solver_type === 'midpoint') return tf.sub(base, tf.mul(d1, 0.5 * coef));
      return tf.add(base, tf.mul(d1, f32(t.alpha * f32(f32(em1 / h) + 1)))); // heun
    });
  }

  step(modelOutput: tf.Tensor, timestep: number, sample: tf.Tensor): SchedulerOutput {
    if (this.numInferenceSteps === null) throw new UsageError('DPMSolverMultistepScheduler.step: call setTimesteps(n) first.');
    const where = 'DPMSolverMultistepScheduler.step';
    if (this.stepIndex === null) {
      const matches = this.timesteps.flatMap((t, i) => (t === timestep ? [i] : []));
      if (matches.length === 0) {
        throw new UsageError(`${where}: timestep ${timestep} is not in this scheduler's timesteps (call setTimesteps and use scheduler.timesteps).`);
      }
      this.stepIndex = matches.length > 1 ? matches[1] : matches[0];
    }
    const n = this.timesteps.length;
    if (this.stepIndex >= n) throw new UsageError(`${where}: all ${n} steps are done; call setTimesteps again for a new run.`);
    const c = this.config;
    // Lower the order at the very end when there are few steps: more stable.
    const lowerOrderFinal = this.stepIndex === n - 1 && (c.euler_at_final || (c.lower_order_final && n < 15));

    const x0 = tf.keep(this.convertModelOutput(modelOutput, sample));
    this.modelOutputs.shift()?.dispose();
    this.modelOutputs.push(x0);

    let prev: tf.Tensor;
    if (c.solver_order === 1 || this.lowerOrderNums < 1 || lowerOrderFinal) {
      prev = this.firstOrderUpdate(x0, sample);
    } else {
      prev = this.secondOrderUpdate(x0, this.modelOutputs[this.modelOutputs.length - 2]!, sample);
    }
    if (this.lowerOrderNums < c.solver_order) this.lowerOrderNums += 1;
    this.stepIndex += 1;
    return { prevSample: prev };
  }

  private resetState(): void {
    for (const m of this.modelOutputs) m?.dispose();
    this.modelOutputs = new Array<tf.Tensor | null>(this.config.solver_order).fill(null);
    this.lowerOrderNums = 0;
    this.stepIndex = null;
  }

  override dispose(): void {
    this.resetState();
  }
}

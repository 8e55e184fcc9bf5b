/**
 * LCM: the multistep sampler of "Latent Consistency Models" (Luo et al. 2023, arXiv 2310.04378,
 * Algorithm 1), mirroring diffusers v0.24 LCMScheduler. Made for LCM-distilled UNets and
 * LCM-LoRA: 2–8 steps at guidance ~1.
 *
 * A consistency model maps any x_t straight to an estimate of x0. Each step takes x0 from the
 * model output as DDIM does (per prediction_type), applies the consistency boundary condition
 *
 *   denoised = c_out(t)·x0 + c_skip(t)·x_t,   s = t · timestep_scaling,
 *   c_skip = σ_d² / (s² + σ_d²),   c_out = s / sqrt(s² + σ_d²),   σ_d = 0.5
 *
 * (c_skip → 1 at t = 0, ≈ 0 at the timesteps used) and, except at the last step, re-noises that
 * estimate to the next timestep with fresh noise: x_t' = sqrt(ᾱ_t')·denoised + sqrt(1−ᾱ_t')·z.
 * The last step returns `denoised`. step() reports `denoised` as predOriginalSample.
 *
 * Timesteps: the distillation grid of original_inference_steps (default 50) points
 * k−1, 2k−1, ..., T−1 with k = T // original_inference_steps (19, 39, ..., 999 for SD), of which
 * n are taken at evenly spaced indices from the top: floor(linspace(0, len, n, endpoint=False)),
 * so 4 steps run 999, 759, 499, 259. timestep_spacing and steps_offset are config keys that
 * LCMScheduler has and does not use. initNoiseSigma is 1 and the model input is not scaled.
 *
 *   const s = LCMScheduler.fromConfig(json); s.setTimesteps(4);
 *   for (const t of s.timesteps) x = s.step(unet(x, t), t, x, { generator }).prevSample;
 */
import * as tf from '@tensorflow/tfjs';
import { UsageError } from '../util/errors.ts';
import {
  BASE_CHOICES,
  type BaseSchedulerConfig,
  Scheduler,
  type SchedulerOutput,
  type StepOptions,
  drawNoise,
  resolveConfig,
  thresholdSample,
} from './base.ts';

const f32 = Math.fround; // scalars rounded as torch rounds them on float32 tensors (see base.ts)

/** σ_data of the consistency boundary condition (diffusers and the LCM paper: 0.5). */
const SIGMA_DATA = 0.5;

export interface LCMConfig extends BaseSchedulerConfig {
  original_inference_steps: number;
  clip_sample: boolean;
  clip_sample_range: number;
  set_alpha_to_one: boolean;
  thresholding: boolean;
  dynamic_thresholding_ratio: number;
  sample_max_value: number;
  timestep_scaling: number;
  rescale_betas_zero_snr: boolean;
}

/** diffusers v0.24 LCMScheduler's defaults (SD's betas; unlike the others, not DDPM's). */
export const LCM_DEFAULTS: LCMConfig = {
  num_train_timesteps: 1000,
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: 'scaled_linear',
  trained_betas: null,
  original_inference_steps: 50,
  clip_sample: false,
  clip_sample_range: 1.0,
  set_alpha_to_one: true,
  steps_offset: 0,
  prediction_type: 'epsilon',
  thresholding: false,
  dynamic_thresholding_ratio: 0.995,
  sample_max_value: 1.0,
  timestep_spacing: 'leading',
  timestep_scaling: 10.0,
  rescale_betas_zero_snr: false,
};

export class LCMScheduler extends Scheduler<LCMConfig> {
  /** ᾱ used for a step past t = 0 (a custom schedule only; the LCM grid never gets there). */
  readonly finalAlphaCumprod: number;
  /** Index of the next step in `timesteps`; set by the first step() after setTimesteps. */
  stepIndex: number | null = null;

  static fromConfig(json: Record<string, unknown> = {}, overrides: Partial<LCMConfig> | Record<string, unknown> = {}): LCMScheduler {
    return new LCMScheduler(resolveConfig('LCMScheduler', LCM_DEFAULTS, json, overrides, BASE_CHOICES, { trained_betas: 'number[]' }));
  }

  constructor(config: LCMConfig = LCM_DEFAULTS) {
    const o = config.original_inference_steps;
    if (!Number.isInteger(o) || o < 1 || o > config.num_train_timesteps) {
      throw new UsageError(`LCMScheduler config key "original_inference_steps": expected an integer in [1, ${config.num_train_timesteps}] (num_train_timesteps), got ${o}.`);
    }
    if (!Number.isFinite(config.timestep_scaling)) {
      throw new UsageError(`LCMScheduler config key "timestep_scaling": expected a finite number, got ${config.timestep_scaling}.`);
    }
    super(config);
    this.finalAlphaCumprod = config.set_alpha_to_one ? 1 : this.alphasCumprod[0];
    this.timesteps = Array.from({ length: this.numTrainTimesteps }, (_, i) => this.numTrainTimesteps - 1 - i);
  }

  /** The distillation grid k−1, 2k−1, ..., (original_inference_steps)·k − 1, ascending. */
  originTimesteps(): number[] {
    const o = this.config.original_inference_steps;
    const k = Math.floor(this.numTrainTimesteps / o);
    return Array.from({ length: o }, (_, i) => (i + 1) * k - 1);
  }

  setTimesteps(numInferenceSteps: number): void {
    this.checkSteps(numInferenceSteps);
    const n = numInferenceSteps;
    const o = this.config.original_inference_steps;
    if (n > o) {
      throw new UsageError(`LCMScheduler: ${n} inference steps is more than original_inference_steps (${o}), the grid the model was distilled on: use at most ${o} (LCMs are made for 2-8).`);
    }
    const origin = this.originTimesteps().reverse();
    // floor(np.linspace(0, len, n, endpoint=False)) = floor(i·len/n)
    const step = origin.length / n;
    this.timesteps = Array.from({ length: n }, (_, i) => origin[Math.floor(i * step)]);
    this.numInferenceSteps = n;
    this.stepIndex = null;
  }

  /** c_skip and c_out of the boundary condition at `timestep` (float32, as the torch 0-d tensors). */
  boundaryCondition(timestep: number): { cSkip: number; cOut: number } {
    const s = f32(timestep * this.config.timestep_scaling);
    const d2 = f32(f32(s * s) + SIGMA_DATA ** 2);
    return { cSkip: f32(SIGMA_DATA ** 2 / d2), cOut: f32(s / f32(Math.sqrt(d2))) };
  }

  step(modelOutput: tf.Tensor, timestep: number, sample: tf.Tensor, opts: StepOptions = {}): SchedulerOutput {
    const where = 'LCMScheduler.step';
    if (this.numInferenceSteps === null) throw new UsageError(`${where}: call setTimesteps(n) first.`);
    if (this.stepIndex === null) {
      // diffusers: the second match when a timestep repeats (not on LCM's grid)
      const matches = this.timesteps.flatMap((t, i) => (t === timestep ? [i] : []));
      if (matches.length === 0) {
        throw new UsageError(`${where}: timestep ${timestep} is not in this scheduler's timesteps (call setTimesteps and use scheduler.timesteps).`);
      }
      this.stepIndex = matches.length > 1 ? matches[1] : matches[0];
    }
    const i = this.stepIndex;
    if (i >= this.timesteps.length) throw new UsageError(`${where}: all ${this.timesteps.length} steps are done; call setTimesteps again for a new run.`);
    this.checkTimestep(timestep, where);
    const c = this.config;

    // 1. the next timestep (itself at the last step), 2. ᾱ at both
    const prevT = i + 1 < this.timesteps.length ? this.timesteps[i + 1] : timestep;
    const alphaProdT = this.alphasCumprod[timestep];
    const alphaProdTPrev = prevT >= 0 ? this.alphasCumprod[prevT] : this.finalAlphaCumprod;
    const betaProdTPrev = f32(1 - alphaProdTPrev);
    // 3. the boundary condition
    const { cSkip, cOut } = this.boundaryCondition(timestep);
    const last = i === this.numInferenceSteps - 1;

    const out = tf.tidy(() => {
      // 4. x0 from the model output, 5. clipped or thresholded
      let x0 = this.predictX0(modelOutput, sample, alphaProdT);
      if (c.thresholding) x0 = thresholdSample(x0, c.dynamic_thresholding_ratio, c.sample_max_value);
      else if (c.clip_sample) x0 = tf.clipByValue(x0, -c.clip_sample_range, c.clip_sample_range);
      // 6. the consistency model's output
      const denoised = tf.add(tf.mul(x0, cOut), tf.mul(sample, cSkip));
      // 7. re-noise to the next timestep with fresh noise, except after the last step (no draw then)
      const prev = last
        ? denoised.clone()
        : tf.add(tf.mul(denoised, Math.sqrt(alphaProdTPrev)), tf.mul(drawNoise(modelOutput.shape, opts), Math.sqrt(betaProdTPrev)));
      return { prevSample: prev, predOriginalSample: denoised };
    });
    this.stepIndex = i + 1;
    return out;
  }
}

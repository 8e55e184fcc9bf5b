/**
 * DDPM: the ancestral sampler of "Denoising Diffusion Probabilistic Models" (Ho et al. 2020,
 * arXiv 2006.11239), mirroring diffusers v0.24 DDPMScheduler.
 *
 * Each step predicts x0 from the model output, then draws x_{t'} (t' = the previous timestep of
 * the schedule) from the Gaussian posterior q(x_{t'} | x_t, x0):
 *
 *   mean = sqrt(ᾱ_t') β_t / (1-ᾱ_t) · x0  +  sqrt(α_t) (1-ᾱ_t') / (1-ᾱ_t) · x_t
 *   var  = (1-ᾱ_t') / (1-ᾱ_t) · β_t            ("fixed_small"; "fixed_large" uses β_t)
 *
 * where α_t = ᾱ_t / ᾱ_t' and β_t = 1 - α_t span the whole jump t -> t'. Fresh noise is added at
 * every step with t > 0, so pass `noise` or a seeded `generator` to step() for reproducibility.
 *
 *   const s = DDPMScheduler.fromConfig(json); s.setTimesteps(50);
 *   for (const t of s.timesteps) x = s.step(unet(x, t), t, x, { generator }).prevSample;
 */
import * as tf from '@tensorflow/tfjs';
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
import { DDPM_BETA_DEFAULTS } from './forward.ts';

const f32 = Math.fround; // scalars rounded as torch rounds them on float32 tensors (see base.ts)

export const DDPM_VARIANCE_TYPES = ['fixed_small', 'fixed_large'] as const;

export interface DDPMConfig extends BaseSchedulerConfig {
  variance_type: (typeof DDPM_VARIANCE_TYPES)[number];
  clip_sample: boolean;
  clip_sample_range: number;
  thresholding: boolean;
  dynamic_thresholding_ratio: number;
  sample_max_value: number;
  /** ᾱ rescaled to zero terminal SNR (Lin et al. 2023), as the model was trained: NoiseSchedule does it. */
  rescale_betas_zero_snr: boolean;
}

export const DDPM_DEFAULTS: DDPMConfig = {
  ...DDPM_BETA_DEFAULTS,
  variance_type: 'fixed_small',
  clip_sample: true,
  prediction_type: 'epsilon',
  thresholding: false,
  dynamic_thresholding_ratio: 0.995,
  clip_sample_range: 1.0,
  sample_max_value: 1.0,
  timestep_spacing: 'leading',
  steps_offset: 0,
  rescale_betas_zero_snr: false,
};

export class DDPMScheduler extends Scheduler<DDPMConfig> {
  static fromConfig(json: Record<string, unknown> = {}, overrides: Partial<DDPMConfig> | Record<string, unknown> = {}): DDPMScheduler {
    const cfg = resolveConfig('DDPMScheduler', DDPM_DEFAULTS, json, overrides, { ...BASE_CHOICES, variance_type: [...DDPM_VARIANCE_TYPES, null] }, { trained_betas: 'number[]' });
    // null (a DPM-Solver config's value) matches none of diffusers' variance branches, which
    // leaves the fixed_small variance.
    cfg.variance_type ??= 'fixed_small';
    return new DDPMScheduler(cfg);
  }

  constructor(config: DDPMConfig = DDPM_DEFAULTS) {
    super(config);
    // Until setTimesteps is called, the schedule is every train timestep (t -> t-1).
    this.timesteps = Array.from({ length: this.numTrainTimesteps }, (_, i) => this.numTrainTimesteps - 1 - i);
  }

  setTimesteps(numInferenceSteps: number): void {
    this.checkSteps(numInferenceSteps);
    this.numInferenceSteps = numInferenceSteps;
    this.timesteps = this.spacedTimesteps(numInferenceSteps);
  }

  /** The timestep the step from t lands on: t - T // n (negative means "past the end", x0). */
  previousTimestep(t: number): number {
    const n = this.numInferenceSteps ?? this.numTrainTimesteps;
    return t - Math.floor(this.numTrainTimesteps / n);
  }

  /** Posterior variance of the jump t -> previousTimestep(t), per variance_type. */
  getVariance(t: number): number {
    const prevT = this.previousTimestep(t);
    const alphaProdT = this.alphasCumprod[t];
    const alphaProdTPrev = prevT >= 0 ? this.alphasCumprod[prevT] : 1;
    const currentBetaT = f32(1 - f32(alphaProdT / alphaProdTPrev));
    if (this.config.variance_type === 'fixed_large') return currentBetaT;
    // fixed_small; clamped so its log (used by fixed_small_log in diffusers) stays finite.
    return Math.max(f32(f32(f32(1 - alphaProdTPrev) / f32(1 - alphaProdT)) * currentBetaT), 1e-20);
  }

  step(modelOutput: tf.Tensor, timestep: number, sample: tf.Tensor, opts: StepOptions = {}): SchedulerOutput {
    const t = timestep;
    this.checkTimestep(t, 'DDPMScheduler.step');
    const prevT = this.previousTimestep(t);
    const c = this.config;

    // 1. ᾱ and β over the jump t -> prevT
    const alphaProdT = this.alphasCumprod[t];
    const alphaProdTPrev = prevT >= 0 ? this.alphasCumprod[prevT] : 1;
    const betaProdT = f32(1 - alphaProdT);
    const betaProdTPrev = f32(1 - alphaProdTPrev);
    const currentAlphaT = f32(alphaProdT / alphaProdTPrev);
    const currentBetaT = f32(1 - currentAlphaT);

    return tf.tidy(() => {
      // 2. predicted x0, optionally thresholded or clipped
      let x0 = this.predictX0(modelOutput, sample, alphaProdT);
      if (c.thresholding) x0 = thresholdSample(x0, c.dynamic_thresholding_ratio, c.sample_max_value);
      else if (c.clip_sample) x0 = tf.clipByValue(x0, -c.clip_sample_range, c.clip_sample_range);

      // 3-4. posterior mean (formula (7) of the DDPM paper)
      const x0Coef = f32(f32(f32(Math.sqrt(alphaProdTPrev)) * currentBetaT) / betaProdT);
      const sampleCoef = f32(f32(f32(Math.sqrt(currentAlphaT)) * betaProdTPrev) / betaProdT);
      let prev = tf.add(tf.mul(x0, x0Coef), tf.mul(sample, sampleCoef));

      // 5. add fresh noise, except when stepping from t = 0
      if (t > 0) {
        const noise = drawNoise(modelOutput.shape, opts);
        prev = tf.add(prev, tf.mul(noise, Math.sqrt(this.getVariance(t))));
      }
      return { prevSample: prev, predOriginalSample: x0 };
    });
  }
}

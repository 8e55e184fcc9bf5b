/**
 * DDIM: "Denoising Diffusion Implicit Models" (Song et al. 2020, arXiv 2010.02502), mirroring
 * diffusers v0.24 DDIMScheduler. With η = 0 (the default) sampling is deterministic: predict
 * x0 and the noise ε from the model output, then jump straight to the previous timestep t':
 *
 *   x_t' = sqrt(ᾱ_t') · x0  +  sqrt(1 - ᾱ_t' - σ²) · ε  (+ σ · z)       formula (12)
 *   σ    = η · sqrt((1-ᾱ_t') / (1-ᾱ_t)) · sqrt(1 - ᾱ_t / ᾱ_t')         formula (16)
 *
 * t' = t - T // n whatever the spacing (as diffusers does); past the end it uses ᾱ_0, or 1 with
 * set_alpha_to_one. SD's config ("leading", steps_offset 1, set_alpha_to_one false) runs
 * 901, 801, ..., 1 for 10 steps.
 *
 *   const s = DDIMScheduler.fromConfig(json); s.setTimesteps(50);
 *   for (const t of s.timesteps) x = s.step(unet(x, t), t, x).prevSample;
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
import { DDPM_BETA_DEFAULTS } from './forward.ts';

const f32 = Math.fround; // scalars rounded as torch rounds them on float32 tensors (see base.ts)

export interface DDIMConfig extends BaseSchedulerConfig {
  clip_sample: boolean;
  clip_sample_range: number;
  set_alpha_to_one: boolean;
  thresholding: boolean;
  dynamic_thresholding_ratio: number;
  sample_max_value: number;
  rescale_betas_zero_snr: boolean;
}

export const DDIM_DEFAULTS: DDIMConfig = {
  ...DDPM_BETA_DEFAULTS,
  clip_sample: true,
  set_alpha_to_one: true,
  steps_offset: 0,
  prediction_type: 'epsilon',
  thresholding: false,
  dynamic_thresholding_ratio: 0.995,
  clip_sample_range: 1.0,
  sample_max_value: 1.0,
  timestep_spacing: 'leading',
  rescale_betas_zero_snr: false,
};

export class DDIMScheduler extends Scheduler<DDIMConfig> {
  /** ᾱ used for the step past the last timestep. */
  readonly finalAlphaCumprod: number;

  static fromConfig(json: Record<string, unknown> = {}, overrides: Partial<DDIMConfig> | Record<string, unknown> = {}): DDIMScheduler {
    return new DDIMScheduler(resolveConfig('DDIMScheduler', DDIM_DEFAULTS, json, overrides, BASE_CHOICES, { trained_betas: 'number[]' }));
  }

  constructor(config: DDIMConfig = DDIM_DEFAULTS) {
    super(config);
    this.finalAlphaCumprod = config.set_alpha_to_one ? 1 : this.alphasCumprod[0];
    this.timesteps = Array.from({ length: this.numTrainTimesteps }, (_, i) => this.numTrainTimesteps - 1 - i);
  }

  setTimesteps(numInferenceSteps: number): void {
    this.checkSteps(numInferenceSteps);
    this.numInferenceSteps = numInferenceSteps;
    this.timesteps = this.spacedTimesteps(numInferenceSteps);
  }

  /** Variance σ²/η² of the jump t -> t' (formula (16) without η). */
  getVariance(t: number, prevT: number): number {
    const alphaProdT = this.alphasCumprod[t];
    const alphaProdTPrev = prevT >= 0 ? this.alphasCumprod[prevT] : this.finalAlphaCumprod;
    return f32(f32(f32(1 - alphaProdTPrev) / f32(1 - alphaProdT)) * f32(1 - f32(alphaProdT / alphaProdTPrev)));
  }

  step(modelOutput: tf.Tensor, timestep: number, sample: tf.Tensor, opts: StepOptions = {}): SchedulerOutput {
    if (this.numInferenceSteps === null) {
      throw new UsageError('DDIMScheduler.step: call setTimesteps(n) first.');
    }
    const t = timestep;
    this.checkTimestep(t, 'DDIMScheduler.step');
    const eta = opts.eta ?? 0;
    if (!(eta >= 0)) throw new UsageError(`DDIMScheduler.step: eta must be >= 0, got ${eta}.`);
    const c = this.config;

    // 1. previous timestep, 2. ᾱ there
    const prevT = t - Math.floor(this.numTrainTimesteps / this.numInferenceSteps);
    const alphaProdT = this.alphasCumprod[t];
    const alphaProdTPrev = prevT >= 0 ? this.alphasCumprod[prevT] : this.finalAlphaCumprod;
    const betaProdT = f32(1 - alphaProdT);

    return tf.tidy(() => {
      // 3. x0 and ε from the model output
      let x0: tf.Tensor;
      let eps: tf.Tensor;
      switch (c.prediction_type) {
        case 'epsilon':
          x0 = tf.div(tf.sub(sample, tf.mul(modelOutput, Math.sqrt(betaProdT))), Math.sqrt(alphaProdT));
          eps = modelOutput;
          break;
        case 'sample':
          x0 = modelOutput;
          eps = tf.div(tf.sub(sample, tf.mul(x0, Math.sqrt(alphaProdT))), Math.sqrt(betaProdT));
          break;
        case 'v_prediction':
          x0 = tf.sub(tf.mul(sample, Math.sqrt(alphaProdT)), tf.mul(modelOutput, Math.sqrt(betaProdT)));
          eps = tf.add(tf.mul(modelOutput, Math.sqrt(alphaProdT)), tf.mul(sample, Math.sqrt(betaProdT)));
          break;
      }

      // 4. threshold or clip x0
      if (c.thresholding) x0 = thresholdSample(x0, c.dynamic_thresholding_ratio, c.sample_max_value);
      else if (c.clip_sample) x0 = tf.clipByValue(x0, -c.clip_sample_range, c.clip_sample_range);

      // 5. σ_t(η)
      const stdDevT = f32(eta * f32(Math.sqrt(this.getVariance(t, prevT))));
      if (opts.useClippedModelOutput) {
        // Glide re-derives ε from the clipped x0.
        eps = tf.div(tf.sub(sample, tf.mul(x0, Math.sqrt(alphaProdT))), Math.sqrt(betaProdT));
      }

      // 6. "direction pointing to x_t", 7. x_t' without noise
      const direction = tf.mul(eps, Math.sqrt(f32(f32(1 - alphaProdTPrev) - f32(stdDevT * stdDevT))));
      let prev = tf.add(tf.mul(x0, Math.sqrt(alphaProdTPrev)), direction);
      if (eta > 0) prev = tf.add(prev, tf.mul(drawNoise(modelOutput.shape, opts), stdDevT));
      return { prevSample: prev, predOriginalSample: x0.clone() };
    });
  }
}

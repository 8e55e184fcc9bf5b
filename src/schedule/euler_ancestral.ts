/**
 * Euler-ancestral ("euler_a"): Euler steps that overshoot to a lower noise level σ_down and
 * then add fresh noise σ_up·z so the marginal noise level is σ_{i+1} again (k-diffusion's
 * sample_euler_ancestral), mirroring diffusers v0.24 EulerAncestralDiscreteScheduler:
 *
 *   σ_up   = sqrt(σ_{i+1}² (σ_i² - σ_{i+1}²) / σ_i²),   σ_down = sqrt(σ_{i+1}² - σ_up²)
 *   x0     = x - σ_i·ε;   x_{i+1} = x + (x - x0)/σ_i · (σ_down - σ_i) + σ_up·z
 *
 * Timesteps, sigmas, initNoiseSigma and scaleModelInput are Euler's (./euler.ts), Karras sigmas
 * too (k-diffusion's euler_ancestral on Karras sigmas: only as an override, see the config). Every step
 * draws z: pass `noise` or a seeded `generator` to step() for reproducible samples.
 *
 *   const s = EulerAncestralDiscreteScheduler.fromConfig(json); s.setTimesteps(20);
 *   for (const t of s.timesteps) x = s.step(unet(s.scaleModelInput(x, t), t), t, x, { generator }).prevSample;
 */
import * as tf from '@tensorflow/tfjs';
import { UsageError } from '../util/errors.ts';
import { BASE_CHOICES, type BaseSchedulerConfig, type SchedulerOutput, type StepOptions, drawNoise, resolveConfig } from './base.ts';
import { DDPM_BETA_DEFAULTS } from './forward.ts';
import { SigmaScheduler } from './euler.ts';

export interface EulerAncestralConfig extends BaseSchedulerConfig {
  /**
   * Karras sigmas, as Euler's (./karras.ts). An sdlab setting, not a config key: diffusers'
   * EulerAncestralDiscreteScheduler has no use_karras_sigmas and ignores it in a shared
   * scheduler_config.json, so sdlab does too; only an override (txt2img --karras) sets it.
   */
  use_karras_sigmas?: boolean;
}

export const EULER_ANCESTRAL_DEFAULTS: EulerAncestralConfig = {
  ...DDPM_BETA_DEFAULTS,
  prediction_type: 'epsilon',
  timestep_spacing: 'linspace',
  steps_offset: 0,
};

export class EulerAncestralDiscreteScheduler extends SigmaScheduler<EulerAncestralConfig> {
  static fromConfig(json: Record<string, unknown> = {}, overrides: Partial<EulerAncestralConfig> | Record<string, unknown> = {}): EulerAncestralDiscreteScheduler {
    const { use_karras_sigmas: karras, ...rest } = overrides as Record<string, unknown>;
    if (karras !== undefined && typeof karras !== 'boolean') {
      throw new UsageError(`EulerAncestralDiscreteScheduler settings key "use_karras_sigmas": expected a boolean, got ${JSON.stringify(karras)}.`);
    }
    const cfg = resolveConfig('EulerAncestralDiscreteScheduler', EULER_ANCESTRAL_DEFAULTS, json, rest, BASE_CHOICES, {
      trained_betas: 'number[]',
    });
    return new EulerAncestralDiscreteScheduler(karras ? { ...cfg, use_karras_sigmas: true } : cfg);
  }

  constructor(config: EulerAncestralConfig = EULER_ANCESTRAL_DEFAULTS) {
    if (config.prediction_type === 'sample') {
      throw new UsageError('EulerAncestralDiscreteScheduler config key "prediction_type": "sample" is not supported (as in diffusers); use "epsilon" or "v_prediction".');
    }
    super(config);
  }

  protected override karras(): { sigmaMin: number | null; sigmaMax: number | null } | null {
    return this.config.use_karras_sigmas ? { sigmaMin: null, sigmaMax: null } : null;
  }

  /** σ_up (fresh noise) and σ_down (where the deterministic part lands) for the step σ_from -> σ_to. */
  static ancestralSigmas(sigmaFrom: number, sigmaTo: number): { sigmaUp: number; sigmaDown: number } {
    const sigmaUp = Math.sqrt((sigmaTo ** 2 * (sigmaFrom ** 2 - sigmaTo ** 2)) / sigmaFrom ** 2);
    const sigmaDown = Math.sqrt(sigmaTo ** 2 - sigmaUp ** 2);
    return { sigmaUp, sigmaDown };
  }

  step(modelOutput: tf.Tensor, timestep: number, sample: tf.Tensor, opts: StepOptions = {}): SchedulerOutput {
    const sigma = this.currentSigma(timestep, 'EulerAncestralDiscreteScheduler.step');
    const { sigmaUp, sigmaDown } = EulerAncestralDiscreteScheduler.ancestralSigmas(sigma, this.sigmas[this.stepIndex! + 1]);
    const out = tf.tidy(() => {
      const x0 = this.predictX0Sigma(modelOutput, sample, sigma);
      const derivative = tf.div(tf.sub(sample, x0), sigma);
      const det = tf.add(sample, tf.mul(derivative, sigmaDown - sigma));
      const noise = drawNoise(modelOutput.shape, opts);
      return { prevSample: tf.add(det, tf.mul(noise, sigmaUp)), predOriginalSample: x0 };
    });
    this.stepIndex! += 1;
    return out;
  }
}

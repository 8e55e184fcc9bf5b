/**
 * PNDM: "Pseudo Numerical Methods for Diffusion Models on Manifolds" (Liu et al. 2022, arXiv
 * 2202.09778), mirroring diffusers v0.24 PNDMScheduler — Stable Diffusion's default scheduler.
 *
 * It treats DDIM's update (formula (9) of the paper, `prevSample` below) as one step of an ODE
 * solver and feeds it a linear multistep (Adams-Bashforth) combination of the last model outputs
 * instead of the current one: PLMS. Order 1, 2, 3, then 4:
 *
 *   e' = e_t;  (e_t + e_prev)/2;  (3e_1 - e_2)/2;  (23e_1 - 16e_2 + 5e_3)/12;  (55e_1 - 59e_2 + 37e_3 - 9e_4)/24
 *
 * The first step is done twice (a Heun-like warm-up), so the schedule repeats a timestep: SD's
 * config with 10 steps runs 901, 801, 801, 701, ..., 1 — 11 model calls. With skip_prk_steps
 * false (the class default; SD's config sets true) it warms up instead with Runge-Kutta steps
 * at half-step timesteps.
 *
 *   const s = PNDMScheduler.fromConfig(json); s.setTimesteps(50);
 *   for (const t of s.timesteps) x = s.step(unet(x, t), t, x).prevSample;
 */
import * as tf from '@tensorflow/tfjs';
import { UsageError } from '../util/errors.ts';
import {
  BASE_CHOICES,
  type BaseSchedulerConfig,
  Scheduler,
  type SchedulerOutput,
  resolveConfig,
} from './base.ts';
import { DDPM_BETA_DEFAULTS } from './forward.ts';

const f32 = Math.fround; // scalars rounded as torch rounds them on float32 tensors (see base.ts)

export interface PNDMConfig extends BaseSchedulerConfig {
  skip_prk_steps: boolean;
  set_alpha_to_one: boolean;
}

export const PNDM_DEFAULTS: PNDMConfig = {
  ...DDPM_BETA_DEFAULTS,
  skip_prk_steps: false,
  set_alpha_to_one: false,
  prediction_type: 'epsilon',
  timestep_spacing: 'leading',
  steps_offset: 0,
};

export class PNDMScheduler extends Scheduler<PNDMConfig> {
  readonly finalAlphaCumprod: number;
  /** Runge-Kutta warm-up timesteps (empty with skip_prk_steps) and the PLMS timesteps after them. */
  prkTimesteps: number[] = [];
  plmsTimesteps: number[] = [];
  // Multistep state: past model outputs (newest last), the RK accumulator, the sample at the warm-up start.
  private ets: tf.Tensor[] = [];
  private counter = 0;
  private curModelOutput: tf.Tensor | null = null;
  private curSample: tf.Tensor | null = null;

  static fromConfig(json: Record<string, unknown> = {}, overrides: Partial<PNDMConfig> | Record<string, unknown> = {}): PNDMScheduler {
    const cfg = resolveConfig('PNDMScheduler', PNDM_DEFAULTS, json, overrides, BASE_CHOICES, { trained_betas: 'number[]' });
    return new PNDMScheduler(cfg);
  }

  constructor(config: PNDMConfig = PNDM_DEFAULTS) {
    super(config);
    if (config.prediction_type === 'sample') {
      throw new UsageError('PNDMScheduler config key "prediction_type": expected "epsilon" or "v_prediction", got "sample".');
    }
    this.finalAlphaCumprod = config.set_alpha_to_one ? 1 : this.alphasCumprod[0];
  }

  setTimesteps(numInferenceSteps: number): void {
    this.checkSteps(numInferenceSteps);
    const T = this.numTrainTimesteps;
    const n = numInferenceSteps;
    this.numInferenceSteps = n;
    // Ascending here (PNDM reverses at the end).
    const ts = this.spacedTimesteps(n).reverse();

    if (this.config.skip_prk_steps) {
      // PLMS only: repeat the second-to-last (ascending) timestep for the warm-up step.
      this.prkTimesteps = [];
      this.plmsTimesteps = [...ts.slice(0, -1), ...ts.slice(-2, -1), ...ts.slice(-1)].reverse();
    } else {
      // 4 Runge-Kutta steps on the last 4 (noisiest) timesteps, each with half-step midpoints.
      if (n < 4) {
        throw new UsageError(`PNDMScheduler.setTimesteps: with skip_prk_steps false it needs at least 4 steps, got ${n}.`);
      }
      const half = Math.floor(Math.floor(T / n) / 2);
      const last4 = ts.slice(-4);
      const prk: number[] = [];
      for (const v of last4) prk.push(v, v + half); // repeat(2) + tile([0, half])
      const rep: number[] = [];
      for (const v of prk.slice(0, -1)) rep.push(v, v); // [:-1].repeat(2)
      this.prkTimesteps = rep.slice(1, -1).reverse();
      this.plmsTimesteps = ts.slice(0, -3).reverse();
    }
    this.timesteps = [...this.prkTimesteps, ...this.plmsTimesteps];
    this.resetState();
  }

  step(modelOutput: tf.Tensor, timestep: number, sample: tf.Tensor): SchedulerOutput {
    if (this.numInferenceSteps === null) throw new UsageError('PNDMScheduler.step: call setTimesteps(n) first.');
    this.checkTimestep(timestep, 'PNDMScheduler.step');
    if (this.counter < this.prkTimesteps.length && !this.config.skip_prk_steps) {
      return { prevSample: this.stepPrk(modelOutput, timestep, sample) };
    }
    return { prevSample: this.stepPlms(modelOutput, timestep, sample) };
  }

  /** Runge-Kutta warm-up: 4 calls per step, weights 1/6, 1/3, 1/3, 1/6. */
  private stepPrk(modelOutput: tf.Tensor, timestep: number, sample: tf.Tensor): tf.Tensor {
    const ratio = Math.floor(this.numTrainTimesteps / this.numInferenceSteps!);
    const diffToPrev = this.counter % 2 ? 0 : Math.floor(ratio / 2);
    const prevTimestep = timestep - diffToPrev;
    const t = this.prkTimesteps[Math.floor(this.counter / 4) * 4];
    const phase = this.counter % 4;

    let eps: tf.Tensor;
    if (phase === 0) {
      this.accumulate(modelOutput, 1 / 6);
      this.ets.push(tf.keep(modelOutput.clone()));
      this.setCurSample(sample);
      eps = modelOutput;
    } else if (phase === 1 || phase === 2) {
      this.accumulate(modelOutput, 1 / 3);
      eps = modelOutput;
    } else {
      eps = tf.tidy(() => tf.add(this.curModelOutput!, tf.mul(modelOutput, 1 / 6)));
      this.curModelOutput!.dispose();
      this.curModelOutput = null;
    }
    const from = this.curSample ?? sample;
    const prev = this.prevSample(from, t, prevTimestep, eps);
    if (phase === 3) eps.dispose();
    this.counter += 1;
    return prev;
  }

  /** Linear multistep: combine the last (up to 4) model outputs, then take a DDIM-like step. */
  private stepPlms(modelOutput: tf.Tensor, timestep: number, sample: tf.Tensor): tf.Tensor {
    if (!this.config.skip_prk_steps && this.ets.length < 3) {
      throw new UsageError('PNDMScheduler.step: the Runge-Kutta warm-up steps must run first (follow scheduler.timesteps).');
    }
    const ratio = Math.floor(this.numTrainTimesteps / this.numInferenceSteps!);
    let t = timestep;
    let prevTimestep = t - ratio;
    if (this.counter !== 1) {
      while (this.ets.length > 3) this.ets.shift()!.dispose();
      this.ets.push(tf.keep(modelOutput.clone()));
    } else {
      // The repeated timestep: redo the first jump (t+ratio -> t) with the averaged output.
      prevTimestep = t;
      t = t + ratio;
    }

    let from = sample;
    const e = this.ets;
    const n = e.length;
    const eps = tf.tidy(() => {
      if (n === 1 && this.counter === 0) return modelOutput.clone();
      if (n === 1 && this.counter === 1) return tf.div(tf.add(modelOutput, e[0]), 2);
      if (n === 2) return tf.div(tf.sub(tf.mul(e[1], 3), e[0]), 2);
      if (n === 3) return tf.div(tf.add(tf.sub(tf.mul(e[2], 23), tf.mul(e[1], 16)), tf.mul(e[0], 5)), 12);
      return tf.mul(tf.sub(tf.add(tf.sub(tf.mul(e[3], 55), tf.mul(e[2], 59)), tf.mul(e[1], 37)), tf.mul(e[0], 9)), 1 / 24);
    });
    let dropCur = false;
    if (n === 1 && this.counter === 0) {
      this.setCurSample(sample);
    } else if (n === 1 && this.counter === 1) {
      from = this.curSample!;
      dropCur = true;
    }
    const prev = this.prevSample(from, t, prevTimestep, eps);
    eps.dispose();
    if (dropCur) this.setCurSample(null);
    this.counter += 1;
    return prev;
  }

  /**
   * Formula (9) of the PNDM paper: the DDIM step t -> t' written as
   *   x_t' = sqrt(ᾱ_t'/ᾱ_t)·x_t - (ᾱ_t' - ᾱ_t) / (ᾱ_t·sqrt(1-ᾱ_t') + sqrt(ᾱ_t(1-ᾱ_t)ᾱ_t'))·ε
   */
  private prevSample(sample: tf.Tensor, t: number, prevT: number, modelOutput: tf.Tensor): tf.Tensor {
    const alphaProdT = this.alphasCumprod[t];
    const alphaProdTPrev = prevT >= 0 ? this.alphasCumprod[prevT] : this.finalAlphaCumprod;
    const betaProdT = f32(1 - alphaProdT);
    const betaProdTPrev = f32(1 - alphaProdTPrev);
    return tf.tidy(() => {
      let eps = modelOutput;
      if (this.config.prediction_type === 'v_prediction') {
        eps = tf.add(tf.mul(modelOutput, Math.sqrt(alphaProdT)), tf.mul(sample, Math.sqrt(betaProdT)));
      }
      const sampleCoef = Math.sqrt(f32(alphaProdTPrev / alphaProdT));
      const denom = f32(f32(alphaProdT * f32(Math.sqrt(betaProdTPrev))) + f32(Math.sqrt(f32(f32(alphaProdT * betaProdT) * alphaProdTPrev))));
      return tf.sub(tf.mul(sample, sampleCoef), tf.div(tf.mul(eps, alphaProdTPrev - alphaProdT), denom));
    });
  }

  private accumulate(x: tf.Tensor, w: number): void {
    const next = tf.tidy(() => (this.curModelOutput ? tf.add(this.curModelOutput, tf.mul(x, w)) : tf.mul(x, w)));
    this.curModelOutput?.dispose();
    this.curModelOutput = tf.keep(next);
  }

  private setCurSample(x: tf.Tensor | null): void {
    this.curSample?.dispose();
    this.curSample = x ? tf.keep(x.clone()) : null;
  }

  private resetState(): void {
    for (const e of this.ets) e.dispose();
    this.ets = [];
    this.curModelOutput?.dispose();
    this.curModelOutput = null;
    this.setCurSample(null);
    this.counter = 0;
  }

  override dispose(): void {
    this.resetState();
  }
}

/**
 * Scheduler behaviour the fixture does not cover, checked against closed forms:
 *  - "point-mass data": if all data is one x0, the exact model output at any (x, t) is known in
 *    closed form, and every deterministic solver (DDIM, PLMS, PNDM's Runge-Kutta warm-up,
 *    Euler, DPM-Solver++ 1/2M midpoint/heun) must stay on the trajectory sqrt(ᾱ)x0 + sqrt(1-ᾱ)ε
 *    (x0 + σε in sigma space) and end at x0 — for epsilon, v_prediction and sample models;
 *  - the stochastic steps (DDPM fixed_small/fixed_large, DDIM with eta, Euler-ancestral)
 *    against their formulas with a given noise, and seeded generators replaying;
 *  - spacings for 7 steps as numpy computes them (values from numpy 2.4, incl. round-half-even),
 *    PNDM's Runge-Kutta timesteps, thresholding/clipping, zero-SNR rescaling, memory hygiene.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import {
  DDIMScheduler,
  DDPMScheduler,
  DPMSolverMultistepScheduler,
  EulerAncestralDiscreteScheduler,
  EulerDiscreteScheduler,
  type PredictionType,
  type Scheduler,
  SigmaScheduler,
  createScheduler,
  thresholdSample,
} from '../src/schedule/index.ts';
import { Random } from '../src/util/random.ts';
import { sdSchedulerConfig } from './schedule_fixture.ts';

const X0 = [0.8, -0.3, 0.1, -1.2, 0.5, 0.9, -0.7, 0.05];
const EPS = [0.4, 1.3, -0.9, 0.2, -1.6, 0.7, 0.1, -0.5];
const SHAPE = [1, 2, 2, 2];
const x0T = () => tf.tensor(X0, SHAPE);

function expectNear(got: tf.Tensor, want: number[], tol: number, what: string): void {
  const g = got.dataSync();
  for (let i = 0; i < want.length; i++) {
    expect(Math.abs(g[i] - want[i]), `${what}[${i}]: ${g[i]} vs ${want[i]}`).toBeLessThanOrEqual(tol * (1 + Math.abs(want[i])));
  }
}

const onTrajectory = (a: number) => X0.map((v, j) => Math.sqrt(a) * v + Math.sqrt(1 - a) * EPS[j]);

/** The exact model output for point-mass data x0, given ᾱ at the model's timestep. */
function exactOutput(x: tf.Tensor, alphaBar: number, type: PredictionType): tf.Tensor {
  return tf.tidy(() => {
    const a = Math.sqrt(alphaBar);
    const s = Math.sqrt(1 - alphaBar);
    const eps = tf.div(tf.sub(x, tf.mul(x0T(), a)), s);
    if (type === 'epsilon') return eps;
    if (type === 'sample') return x0T();
    return tf.sub(tf.mul(eps, a), tf.mul(x0T(), s)); // v
  });
}

/** ᾱ that the model sees at step i: the table for integer timesteps, 1/(1+σ²) for Euler's sigmas. */
function alphaBarAt(s: Scheduler, i: number, t: number): number {
  if (s instanceof SigmaScheduler) return 1 / (1 + s.sigmas[i] ** 2);
  return s.alphasCumprod[t];
}

/** Runs a whole sampling loop with the exact point-mass model; returns the final sample (owned). */
function runExact(s: Scheduler, n: number, type: PredictionType, onStep?: (i: number, out: tf.Tensor) => void, opts = {}): tf.Tensor {
  s.setTimesteps(n);
  // Start on the trajectory: x0 + σε in sigma space, sqrt(ᾱ)x0 + sqrt(1-ᾱ)ε otherwise.
  const start = s instanceof SigmaScheduler ? X0.map((v, j) => v + s.sigmas[0] * EPS[j]) : onTrajectory(s.alphasCumprod[s.timesteps[0]]);
  let x = tf.tensor(start, SHAPE);
  s.timesteps.forEach((t, i) => {
    const input = s.scaleModelInput(x, t);
    // Euler's model sees the scaled input x/sqrt(σ²+1) = sqrt(ᾱ)x0 + sqrt(1-ᾱ)ε: the ᾱ form again.
    const out = exactOutput(input, alphaBarAt(s, i, t), type);
    const r = s.step(out, t, x, opts);
    // x0 = (x - sqrt(1-ᾱ)ε)/sqrt(ᾱ) amplifies float32 rounding by 1/sqrt(ᾱ) at the noisy end.
    const x0Tol = 4e-6 * (1 + 1 / Math.sqrt(alphaBarAt(s, i, t)));
    if (r.predOriginalSample) expectNear(r.predOriginalSample, X0, x0Tol, `x0 at step ${i}`);
    onStep?.(i, r.prevSample);
    tf.dispose([input, out, x, r.predOriginalSample]);
    x = r.prevSample;
  });
  s.dispose();
  return x;
}


describe('point-mass data: deterministic solvers stay on the exact trajectory', () => {
  for (const type of ['epsilon', 'v_prediction', 'sample'] as const) {
    it(`DDIM (${type}): every step lands on sqrt(ᾱ_t')x0 + sqrt(1-ᾱ_t')ε, the last on x0`, () => {
      const s = DDIMScheduler.fromConfig(sdSchedulerConfig, { prediction_type: type, set_alpha_to_one: true });
      const final = runExact(s, 10, type, (i, out) => {
        const prevT = s.timesteps[i] - 100;
        expectNear(out, prevT >= 0 ? onTrajectory(s.alphasCumprod[prevT]) : X0, 2e-5, `step ${i}`);
      });
      expectNear(final, X0, 2e-5, 'final');
      final.dispose();
    });

    it(`Euler (${type}): every step lands on x0 + σ_{i+1}ε, the last on x0`, () => {
      const s = EulerDiscreteScheduler.fromConfig(sdSchedulerConfig, { prediction_type: type });
      const final = runExact(s, 12, type, (i, out) => {
        expectNear(out, X0.map((v, j) => v + s.sigmas[i + 1] * EPS[j]), 3e-5, `step ${i}`);
      });
      expectNear(final, X0, 3e-5, 'final');
      final.dispose();
    });

    it(`DDPM (${type}): predOriginalSample is x0 at every step, whatever noise was added`, () => {
      const s = DDPMScheduler.fromConfig(sdSchedulerConfig, { prediction_type: type });
      let steps = 0;
      const final = runExact(s, 10, type, () => steps++, { generator: new Random(3) });
      expect(steps).toBe(10);
      final.dispose();
    });

    it(`DPM-Solver++ 2M (${type}) ends on sqrt(ᾱ_0)x0 + sqrt(1-ᾱ_0)ε (its last sigma is σ at t=0)`, () => {
      const s = createScheduler('dpm++2m', sdSchedulerConfig, { prediction_type: type });
      const final = runExact(s, 12, type);
      expectNear(final, onTrajectory(s.alphasCumprod[0]), 3e-5, 'final');
      final.dispose();
    });
  }

  for (const skip of [true, false]) {
    it(`PNDM ${skip ? 'PLMS' : 'Runge-Kutta + PLMS'} ends on x0`, () => {
      const s = createScheduler('pndm', sdSchedulerConfig, { set_alpha_to_one: true, skip_prk_steps: skip });
      const final = runExact(s, 10, 'epsilon');
      expectNear(final, X0, 3e-5, 'final');
      final.dispose();
    });
  }

  it('PNDM v_prediction: its first step is the exact DDIM jump', () => {
    // (Later steps combine v's of different timesteps, which diffusers does too: not exact here.)
    const s = createScheduler('pndm', sdSchedulerConfig, { prediction_type: 'v_prediction', skip_prk_steps: true });
    s.setTimesteps(10);
    const x = tf.tensor(onTrajectory(s.alphasCumprod[901]), SHAPE);
    const v = exactOutput(x, s.alphasCumprod[901], 'v_prediction');
    const r = s.step(v, 901, x);
    expectNear(r.prevSample, onTrajectory(s.alphasCumprod[801]), 2e-5, 'step 0');
    tf.dispose([x, v, r.prevSample]);
    s.dispose();
  });

  for (const [order, solver] of [[1, 'midpoint'], [2, 'heun']] as const) {
    it(`DPM-Solver++ order ${order} ${solver}`, () => {
      const s = DPMSolverMultistepScheduler.fromConfig(sdSchedulerConfig, { solver_order: order, solver_type: solver });
      const final = runExact(s, 8, 'epsilon');
      expectNear(final, onTrajectory(s.alphasCumprod[0]), 3e-5, 'final');
      final.dispose();
    });
  }

  for (const solver of ['midpoint', 'heun'] as const) {
    it(`DPM-Solver++ 2M ${solver}: the second step uses D1 = (x0_1 - x0_0)/r as in the paper`, () => {
      // sample-prediction model: we choose the x0 predictions, so D1 is not zero.
      const s = DPMSolverMultistepScheduler.fromConfig(sdSchedulerConfig, { solver_type: solver, prediction_type: 'sample' });
      s.setTimesteps(20);
      const [a, b] = [X0, EPS];
      const par = (sig: number) => {
        const alpha = 1 / Math.sqrt(sig * sig + 1);
        return { alpha, sigma: sig * alpha, lambda: Math.log(alpha) - Math.log(sig * alpha) };
      };
      const [p0, p1, p2] = [par(s.sigmas[0]), par(s.sigmas[1]), par(s.sigmas[2])];
      const xStart = X0.map((_, j) => Math.sin(j + 1));
      const h1 = p1.lambda - p0.lambda;
      const x1 = xStart.map((v, j) => (p1.sigma / p0.sigma) * v - p1.alpha * (Math.exp(-h1) - 1) * a[j]);
      const h2 = p2.lambda - p1.lambda;
      const r = h1 / h2;
      const x2 = x1.map((v, j) => {
        const d1 = (b[j] - a[j]) / r;
        const first = (p2.sigma / p1.sigma) * v - p2.alpha * (Math.exp(-h2) - 1) * b[j];
        return solver === 'midpoint'
          ? first - 0.5 * p2.alpha * (Math.exp(-h2) - 1) * d1
          : first + p2.alpha * ((Math.exp(-h2) - 1) / h2 + 1) * d1;
      });
      const x = tf.tensor(xStart, SHAPE);
      const [ta, tb] = [tf.tensor(a, SHAPE), tf.tensor(b, SHAPE)];
      const r1 = s.step(ta, s.timesteps[0], x);
      expectNear(r1.prevSample, x1, 2e-5, 'step 1');
      const r2 = s.step(tb, s.timesteps[1], r1.prevSample);
      expectNear(r2.prevSample, x2, 2e-5, 'step 2');
      tf.dispose([x, ta, tb, r1.prevSample, r2.prevSample]);
      s.dispose();
    });
  }

  it('a cosine schedule (squaredcos_cap_v2) with DDIM, trailing spacing', () => {
    const s = DDIMScheduler.fromConfig({ beta_schedule: 'squaredcos_cap_v2', clip_sample: false, timestep_spacing: 'trailing' });
    expect(s.alphasCumprod[999]).toBeLessThan(1e-6); // the cosine schedule ends (almost) at pure noise
    const final = runExact(s, 20, 'epsilon');
    expectNear(final, X0, 5e-5, 'final');
    final.dispose();
  });

  it('a broken solver is caught: PLMS with the wrong order-2 weights leaves the trajectory', () => {
    // Guards the test itself: a model output that is *not* the exact one gives a different end.
    const s = createScheduler('pndm', sdSchedulerConfig, { set_alpha_to_one: true, skip_prk_steps: true });
    s.setTimesteps(10);
    let x = tf.tensor(onTrajectory(s.alphasCumprod[901]), SHAPE);
    for (const t of s.timesteps) {
      const out = tf.tidy(() => tf.mul(exactOutput(x, s.alphasCumprod[t], 'epsilon'), 1.01));
      const r = s.step(out, t, x);
      tf.dispose([out, x]);
      x = r.prevSample;
    }
    const d = Math.max(...Array.from(x.dataSync()).map((v, j) => Math.abs(v - X0[j])));
    expect(d).toBeGreaterThan(1e-3);
    x.dispose();
  });
});

describe('stochastic steps against their formulas', () => {
  const z = [0.3, -0.2, 1.1, -0.4, 0.6, -1.3, 0.2, 0.9];

  for (const varianceType of ['fixed_small', 'fixed_large'] as const) {
    it(`DDPM ${varianceType}: posterior mean + sqrt(var)·z`, () => {
      const s = DDPMScheduler.fromConfig(sdSchedulerConfig, { variance_type: varianceType, clip_sample: false });
      s.setTimesteps(10);
      const [t, prevT] = [501, 401];
      const ab = s.alphasCumprod[t];
      const abPrev = s.alphasCumprod[prevT];
      const xt = onTrajectory(ab);
      const x = tf.tensor(xt, SHAPE);
      const out = exactOutput(x, ab, 'epsilon');
      const r = s.step(out, t, x, { noise: tf.tensor(z, SHAPE) });
      // DDPM paper eq. (7) for the jump t -> t' (α = ᾱ_t/ᾱ_t', β = 1 - α).
      const alpha = ab / abPrev;
      const beta = 1 - alpha;
      const variance = varianceType === 'fixed_small' ? ((1 - abPrev) / (1 - ab)) * beta : beta;
      const want = X0.map((v, j) => (Math.sqrt(abPrev) * beta * v + Math.sqrt(alpha) * (1 - abPrev) * xt[j]) / (1 - ab) + Math.sqrt(variance) * z[j]);
      expectNear(r.prevSample, want, 2e-5, 'prev');
      tf.dispose([x, out, r.prevSample, r.predOriginalSample]);
    });
  }

  it('DDPM draws no noise on the step from t = 0 and lands on x0 there', () => {
    const s = DDPMScheduler.fromConfig(sdSchedulerConfig, { clip_sample: false });
    const x = tf.tensor(onTrajectory(s.alphasCumprod[0]), SHAPE);
    const out = exactOutput(x, s.alphasCumprod[0], 'epsilon');
    const generator = { normalArray: (): Float32Array => { throw new Error('no noise expected at t = 0'); } };
    const r = s.step(out, 0, x, { generator });
    expectNear(r.prevSample, X0, 2e-5, 'prev');
    tf.dispose([x, out, r.prevSample, r.predOriginalSample]);
  });

  it('DDIM with eta: sqrt(ᾱ\')x0 + sqrt(1-ᾱ\'-σ²)ε + σz, σ from formula (16)', () => {
    const s = DDIMScheduler.fromConfig(sdSchedulerConfig);
    s.setTimesteps(10);
    const [t, prevT, eta] = [501, 401, 0.7];
    const ab = s.alphasCumprod[t];
    const abPrev = s.alphasCumprod[prevT];
    const x = tf.tensor(onTrajectory(ab), SHAPE);
    const out = exactOutput(x, ab, 'epsilon');
    const r = s.step(out, t, x, { eta, noise: tf.tensor(z, SHAPE) });
    const sigma = eta * Math.sqrt((1 - abPrev) / (1 - ab)) * Math.sqrt(1 - ab / abPrev);
    const want = X0.map((v, j) => Math.sqrt(abPrev) * v + Math.sqrt(1 - abPrev - sigma ** 2) * EPS[j] + sigma * z[j]);
    expectNear(r.prevSample, want, 2e-5, 'prev');
    tf.dispose([x, out, r.prevSample, r.predOriginalSample]);
  });

  it('Euler-ancestral: x0 + σ_down·ε + σ_up·z each step, σ_up² + σ_down² = σ_next², ending on x0', () => {
    const s = EulerAncestralDiscreteScheduler.fromConfig(sdSchedulerConfig);
    const rng = new Random(5);
    const noises: number[][] = [];
    let e = EPS.slice(); // the noise direction of the current sample
    const final = runExact(
      s,
      10,
      'epsilon',
      (i, out) => {
        const { sigmaUp, sigmaDown } = EulerAncestralDiscreteScheduler.ancestralSigmas(s.sigmas[i], s.sigmas[i + 1]);
        expect(sigmaUp ** 2 + sigmaDown ** 2).toBeCloseTo(s.sigmas[i + 1] ** 2, 10);
        const want = X0.map((v, j) => v + sigmaDown * e[j] + sigmaUp * noises[i][j]);
        expectNear(out, want, 3e-5, `step ${i}`);
        if (s.sigmas[i + 1] > 0) e = want.map((w, j) => (w - X0[j]) / s.sigmas[i + 1]);
      },
      { generator: { normalArray: (n: number) => { const a = rng.normalArray(n); noises.push(Array.from(a)); return a; } } },
    );
    expect(noises.length).toBe(10);
    expectNear(final, X0, 3e-5, 'final');
    final.dispose();
  });

  it('a seeded generator replays the same samples; another seed differs', () => {
    const sample = (name: string, seed: number) => {
      const s = createScheduler(name, sdSchedulerConfig);
      s.setTimesteps(5);
      const gen = new Random(seed);
      let x = tf.tensor(EPS, SHAPE);
      for (const t of s.timesteps) {
        const out = tf.tidy(() => tf.mul(s.scaleModelInput(x, t), 0.5));
        const r = s.step(out, t, x, { generator: gen });
        tf.dispose([out, x, r.predOriginalSample]);
        x = r.prevSample;
      }
      const v = Array.from(x.dataSync());
      x.dispose();
      return v;
    };
    for (const name of ['ddpm', 'euler_a']) {
      expect(sample(name, 1)).toEqual(sample(name, 1));
      expect(sample(name, 1)).not.toEqual(sample(name, 2));
    }
  });
});

describe('timesteps, sigmas and options', () => {
  const build = (name: string, overrides: Record<string, unknown>, n: number) => {
    const s = createScheduler(name, sdSchedulerConfig, overrides);
    s.setTimesteps(n);
    return s.timesteps;
  };

  it('7 steps, as numpy rounds them (round half to even: 832.5 -> 832, 499.5 -> 500)', () => {
    expect(build('ddim', { timestep_spacing: 'trailing' }, 7)).toEqual([999, 856, 713, 570, 428, 285, 142]);
    expect(build('ddim', { timestep_spacing: 'linspace' }, 7)).toEqual([999, 832, 666, 500, 333, 166, 0]);
    expect(build('euler', {}, 7)).toEqual([999, 832.5, 666, 499.5, 333, 166.5, 0]);
    expect(build('dpm++2m', {}, 7)).toEqual([999, 856, 714, 571, 428, 285, 143]);
    expect(build('dpm++2m', { timestep_spacing: 'leading' }, 7)).toEqual([876, 751, 626, 501, 376, 251, 126]);
    expect(build('pndm', { timestep_spacing: 'trailing' }, 7)).toEqual([999, 856, 856, 713, 570, 428, 285, 142]);
    expect(build('ddpm', {}, 1)).toEqual([1]);
    expect(build('pndm', {}, 1)).toEqual([1]);
  });

  it('PNDM Runge-Kutta warm-up timesteps (skip_prk_steps false) and its minimum of 4 steps', () => {
    expect(build('pndm', { skip_prk_steps: false, steps_offset: 0 }, 10)).toEqual([
      900, 850, 850, 800, 800, 750, 750, 700, 700, 650, 650, 600, 600, 500, 400, 300, 200, 100, 0,
    ]);
    expect(() => build('pndm', { skip_prk_steps: false }, 3)).toThrow(/at least 4 steps/);
  });

  it('Euler sigmas interpolate sqrt((1-ᾱ)/ᾱ) between train timesteps; initNoiseSigma per spacing', () => {
    const s = EulerDiscreteScheduler.fromConfig(sdSchedulerConfig);
    s.setTimesteps(7);
    const sig = (t: number) => Math.sqrt((1 - s.alphasCumprod[t]) / s.alphasCumprod[t]);
    expect(s.sigmas[1]).toBeCloseTo((sig(832) + sig(833)) / 2, 5);
    expect(s.sigmas[7]).toBe(0);
    expect(s.initNoiseSigma).toBeCloseTo(sig(999), 5);
    const lead = EulerDiscreteScheduler.fromConfig(sdSchedulerConfig, { timestep_spacing: 'leading' });
    lead.setTimesteps(10);
    expect(lead.initNoiseSigma).toBeCloseTo(Math.sqrt(sig(901) ** 2 + 1), 5);
  });

  it('Euler scaleModelInput divides by sqrt(σ² + 1); addNoise is x0 + σ·noise at schedule timesteps', () => {
    const s = EulerDiscreteScheduler.fromConfig(sdSchedulerConfig);
    s.setTimesteps(10);
    const x = tf.tensor(EPS, SHAPE);
    expectNear(s.scaleModelInput(x, 999), EPS.map((v) => v / Math.sqrt(s.sigmas[0] ** 2 + 1)), 1e-6, 'scaled');
    const noisy = s.addNoise(x0T(), x, 444);
    expectNear(noisy, X0.map((v, j) => v + s.sigmas[5] * EPS[j]), 1e-6, 'noisy');
    expect(() => s.addNoise(x0T(), x, 445)).toThrow(/timestep 445 is not in this scheduler's timesteps/);
    x.dispose();
  });

  it('predictOriginalSample is the x0 that step() reports (ᾱ and sigma forms), and recovers x0 on the trajectory', () => {
    for (const name of ['ddpm', 'ddim', 'euler', 'pndm', 'dpm++2m'] as const) {
      for (const type of ['epsilon', 'v_prediction', 'sample'] as const) {
        if (name === 'pndm' && type === 'sample') continue; // PNDM has no x0-prediction mode
        const s = createScheduler(name, sdSchedulerConfig, { prediction_type: type });
        s.setTimesteps(10);
        const i = 3;
        const t = s.timesteps[i];
        // The sample at t on the point-mass trajectory, in the scheduler's own space (Euler's is x0 + σ·ε).
        const a = alphaBarAt(s, i, t);
        const x = s instanceof SigmaScheduler ? tf.tensor(X0.map((v, j) => v + s.sigmas[i] * EPS[j]), SHAPE) : tf.tensor(onTrajectory(a), SHAPE);
        const out = exactOutput(s instanceof SigmaScheduler ? tf.div(x, Math.sqrt(1 + s.sigmas[i] ** 2)) : x, a, type);
        const x0 = s.predictOriginalSample(out, t, x);
        expectNear(x0, X0, 1e-5, `${name} ${type} x0`);
        if (name !== 'pndm' && name !== 'dpm++2m') {
          if (s instanceof SigmaScheduler) s.scaleModelInput(x, t).dispose(); // sets the step index
          const r = s.step(out, t, x, { noise: tf.zerosLike(x) });
          expect(Array.from(x0.dataSync()), `${name} ${type}`).toEqual(Array.from(r.predOriginalSample!.dataSync()));
          tf.dispose([r.prevSample, r.predOriginalSample]);
        }
        tf.dispose([x, out, x0]);
      }
    }
    expect(() => createScheduler('ddim', sdSchedulerConfig).predictOriginalSample(tf.zeros([1]), 1000, tf.zeros([1]))).toThrow(/timestep must be an integer in \[0, 999\]/);
  });

  it('DPM-Solver lambda_min_clipped drops the timesteps whose log-SNR is below it', () => {
    const s = DPMSolverMultistepScheduler.fromConfig({ beta_schedule: 'squaredcos_cap_v2', lambda_min_clipped: -5.1 });
    s.setTimesteps(10);
    const lambda = (t: number) => 0.5 * Math.log(s.alphasCumprod[t] / (1 - s.alphasCumprod[t]));
    let last = 1000;
    while (lambda(last - 1) < -5.1) last--;
    expect(last).toBeLessThan(1000);
    expect(s.timesteps[0]).toBe(last - 1);
    expect(lambda(s.timesteps[0])).toBeGreaterThanOrEqual(-5.1);
  });

  it('clip_sample clips x0; dynamic thresholding follows the quantile rule', () => {
    const s = DDIMScheduler.fromConfig({ clip_sample: true, prediction_type: 'sample' });
    s.setTimesteps(10);
    const big = tf.tensor([3, -2, 0.5, 0.1], [1, 1, 2, 2]);
    const r = s.step(big, 501, big);
    expect(Array.from(r.predOriginalSample!.dataSync())).toEqual([1, -1, 0.5, Math.fround(0.1)]);
    // |x| sorted: 0.5, 1.5, 2, 3; the 0.5 quantile is 1.75 -> clip to ±1.75 and divide by it.
    const th = thresholdSample(tf.tensor([[0.5, -3, 2, 1.5]]), 0.5, 10);
    expectNear(th, [0.5 / 1.75, -1, 1, 1.5 / 1.75], 1e-6, 'threshold');
    // s is clamped to >= 1, so small samples pass unchanged; and to <= sample_max_value.
    expectNear(thresholdSample(tf.tensor([[0.5, -0.2]]), 0.995, 10), [0.5, -0.2], 1e-7, 'small');
    expectNear(thresholdSample(tf.tensor([[8, -8]]), 0.995, 2), [1, -1], 1e-7, 'capped');
    const t2 = DDIMScheduler.fromConfig({ thresholding: true, prediction_type: 'sample', dynamic_thresholding_ratio: 0.5, sample_max_value: 10 });
    t2.setTimesteps(10);
    const x = tf.tensor([0.5, -3, 2, 1.5], [1, 1, 2, 2]);
    expectNear(t2.step(x, 501, x).predOriginalSample!, [0.5 / 1.75, -1, 1, 1.5 / 1.75], 1e-6, 'ddim thresholded');
  });

  it('rescale_betas_zero_snr makes the last timestep pure noise (ᾱ_T = 0) and keeps ᾱ_0', () => {
    const plain = DDIMScheduler.fromConfig(sdSchedulerConfig);
    const zero = DDIMScheduler.fromConfig(sdSchedulerConfig, { rescale_betas_zero_snr: true });
    expect(zero.alphasCumprod[999]).toBe(0);
    expect(zero.alphasCumprod[0]).toBeCloseTo(plain.alphasCumprod[0], 7);
    expect(plain.alphasCumprod[999]).toBeGreaterThan(1e-3);
  });

  it('a config JSON may spell lambda_min_clipped "-inf"; unknown keys are ignored like diffusers', () => {
    const s = createScheduler('dpm++2m', { lambda_min_clipped: '-inf', _class_name: 'PNDMScheduler', skip_prk_steps: true });
    expect((s as DPMSolverMultistepScheduler).config.lambda_min_clipped).toBe(-Infinity);
  });

  it('a full loop leaves no tensors behind (multistep state is released)', () => {
    for (const name of ['ddpm', 'ddim', 'pndm', 'euler', 'euler_a', 'dpm++2m', 'lcm']) {
      const before = tf.memory().numTensors;
      const s = createScheduler(name, sdSchedulerConfig);
      const final = runExact(s, 6, 'epsilon', undefined, { generator: new Random(0) });
      final.dispose();
      expect(tf.memory().numTensors, name).toBe(before);
    }
  });
});

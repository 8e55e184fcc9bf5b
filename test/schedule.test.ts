/**
 * Schedulers against diffusers v0.24 (fixture sd1_tiny, manifest cases.schedulers): every number
 * of the case — alphas_cumprod, each class's timesteps (its own default spacing and all three
 * spacings), sigmas, init_noise_sigma, and for every step scale_model_input, prev_sample and
 * pred_original_sample — plus closed forms of the schedule and the bad-input errors.
 *
 * Tolerance: |ours - ref| <= 1e-5·|ref| + 1e-6·max|ref| per tensor. The relative part is the
 * brief's bound. The absolute floor is for entries that are the difference of two nearly equal
 * float32 terms (e.g. x - σ·ε): their rounding error is ~6e-8 of the operands, not of the
 * (possibly tiny) result, and the operands are bounded by the tensor's scale max|ref|; 1e-6 of
 * it leaves ~16x headroom over one float32 rounding yet is 10x below the fp32-vs-fp64 gap of
 * the full pipeline (manifest fp32_vs_fp64_max_abs_diff) — a wrong coefficient fails it.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import {
  DDIMScheduler,
  DDPMScheduler,
  DPMSolverMultistepScheduler,
  NoiseSchedule,
  SCHEDULER_CLASS_NAMES,
  SCHEDULER_NAMES,
  type Scheduler,
  createScheduler,
  makeBetas,
  readSchedulerConfig,
  schedulerNameForClass,
} from '../src/schedule/index.ts';
import { UsageError } from '../src/util/errors.ts';
import { closeness, manifest, ref, refTensor, sdSchedulerConfig } from './schedule_fixture.ts';

const RTOL = 1e-5;
const ATOL_SCALE = 1e-6;

/** Asserts every entry of `ours` is within tolerance of the reference tensor/array. */
function expectClose(ours: ArrayLike<number>, reference: ArrayLike<number>, what: string): void {
  let scale = 0;
  for (let i = 0; i < reference.length; i++) scale = Math.max(scale, Math.abs(reference[i]));
  const c = closeness(ours, reference, RTOL, ATOL_SCALE * scale);
  if (process.env.SCHEDULE_TEST_VERBOSE) console.log(`${what}: maxAbs ${c.maxAbs.toExponential(2)} maxRel ${c.maxRel.toExponential(2)} worst ${c.worst.toFixed(3)}`);
  expect(
    c.worst,
    `${what}: entry ${c.worstIndex} is ${ours[c.worstIndex]} vs reference ${reference[c.worstIndex]} (max abs err ${c.maxAbs})`,
  ).toBeLessThanOrEqual(1);
}

const schedCase = manifest.cases.schedulers;
const CLASSES = Object.keys(schedCase.by_class) as string[];

describe('fixture: cases.schedulers (diffusers v0.24)', () => {
  it('covers every scheduler class of the fixture', () => {
    expect(CLASSES.sort()).toEqual(
      ['DDIMScheduler', 'DDPMScheduler', 'DPMSolverMultistepScheduler', 'EulerDiscreteScheduler', 'PNDMScheduler'].sort(),
    );
  });

  it('alphas_cumprod of the scaled_linear schedule matches torch bit for bit', () => {
    const ours = DDIMScheduler.fromConfig(sdSchedulerConfig).alphasCumprod;
    const reference = ref(schedCase.alphas_cumprod).data;
    expect(ours.length).toBe(1000);
    let mismatches = 0;
    for (let i = 0; i < 1000; i++) if (ours[i] !== reference[i]) mismatches++;
    expect(mismatches).toBe(0);
  });

  for (const cls of CLASSES) {
    const c = schedCase.by_class[cls];
    const name = schedulerNameForClass(cls)!;

    describe(`${cls} (${name})`, () => {
      it('resolves the same config as diffusers from_config', () => {
        const s = createScheduler(name, sdSchedulerConfig);
        for (const [key, value] of Object.entries(c.config)) {
          if (key.startsWith('_') || !(key in s.config)) continue;
          const ours = (s.config as unknown as Record<string, unknown>)[key];
          if (value === '-Infinity') expect(ours, key).toBe(-Infinity);
          else expect(ours, key).toEqual(value);
        }
      });

      it('timesteps, sigmas and init_noise_sigma after setTimesteps', () => {
        const s = createScheduler(name, sdSchedulerConfig);
        s.setTimesteps(c.num_inference_steps);
        expect(s.timesteps).toEqual(c.timesteps);
        expect(s.timesteps).toEqual(Array.from(ref(c.outputs.timesteps).data));
        expect(s.initNoiseSigma).toBe(c.init_noise_sigma);
        if (c.sigmas) expect((s as unknown as { sigmas: number[] }).sigmas).toEqual(c.sigmas);
      });

      for (const spacing of ['leading', 'linspace', 'trailing']) {
        it(`timesteps with timestep_spacing "${spacing}"`, () => {
          const s = createScheduler(name, sdSchedulerConfig, { timestep_spacing: spacing });
          s.setTimesteps(c.num_inference_steps);
          expect(s.timesteps).toEqual(c.timesteps_by_spacing[spacing]);
        });
      }

      it(`replays the ${c.num_steps_run}-step loop: every scaled input, prev_sample and pred_original_sample`, () => {
        const s: Scheduler = createScheduler(name, sdSchedulerConfig);
        s.setTimesteps(c.num_inference_steps);
        expect(s.timesteps.length).toBe(c.num_steps_run);
        let x = tf.mul(refTensor(schedCase.inputs.sample0), s.initNoiseSigma);
        let noiseRow = 0;
        s.timesteps.forEach((t, i) => {
          const scaled = s.scaleModelInput(x, t);
          expectClose(scaled.dataSync(), ref(`${c.outputs.scaled_inputs}[${i}]`).data, `${cls} scaled_inputs[${i}]`);
          const modelOutput = refTensor(`${schedCase.inputs.model_outputs}[${i}]`);
          // DDPM draws its noise inside step(); the fixture recorded it, we replay it.
          const noise = c.outputs.variance_noise && t > 0 ? refTensor(`${c.outputs.variance_noise}[${noiseRow++}]`) : undefined;
          const out = s.step(modelOutput, t, x, { noise });
          expectClose(out.prevSample.dataSync(), ref(`${c.outputs.prev_samples}[${i}]`).data, `${cls} prev_samples[${i}] (t=${t})`);
          if (c.outputs.pred_original_samples) {
            expect(out.predOriginalSample, 'predOriginalSample').toBeDefined();
            expectClose(
              out.predOriginalSample!.dataSync(),
              ref(`${c.outputs.pred_original_samples}[${i}]`).data,
              `${cls} pred_original_samples[${i}]`,
            );
          }
          tf.dispose([scaled, modelOutput, noise, x, out.predOriginalSample]);
          x = out.prevSample;
        });
        x.dispose();
        s.dispose();
      });
    });
  }
});

describe('noise schedule: closed forms', () => {
  it('linear betas: ᾱ_t = Π(1 - β_s) with β evenly spaced from beta_start to beta_end', () => {
    const T = 1000;
    const s = new NoiseSchedule({ num_train_timesteps: T, beta_start: 1e-4, beta_end: 0.02, beta_schedule: 'linear', trained_betas: null });
    let prod = 1;
    for (let t = 0; t < T; t++) {
      const beta = 1e-4 + ((0.02 - 1e-4) * t) / (T - 1);
      // betas are float32 (as torch's): equal to the float64 line to float32 precision.
      expect(Math.abs(s.betas[t] - beta) / beta).toBeLessThan(1e-6);
      prod *= 1 - beta;
      expect(Math.abs(s.alphasCumprod[t] - prod) / prod).toBeLessThan(1e-5);
    }
    // A known value: ᾱ_999 of DDPM's linear schedule is ~4.04e-5.
    expect(s.alphasCumprod[999]).toBeCloseTo(4.0358e-5, 8);
  });

  it('scaled_linear betas are linear in sqrt(β)', () => {
    const b = makeBetas('scaled_linear', 1000, 0.00085, 0.012);
    const lo = Math.sqrt(0.00085);
    const hi = Math.sqrt(0.012);
    for (const t of [0, 1, 250, 500, 998, 999]) {
      const root = lo + ((hi - lo) * t) / 999;
      expect(Math.abs(b[t] - root * root) / (root * root)).toBeLessThan(1e-6);
    }
  });

  it('squaredcos_cap_v2: ᾱ_t follows cos²((t/T + 0.008)/1.008 · π/2) (normalised by ᾱ(0))', () => {
    const T = 1000;
    const s = new NoiseSchedule({ num_train_timesteps: T, beta_start: 0, beta_end: 0, beta_schedule: 'squaredcos_cap_v2', trained_betas: null });
    const f = (u: number) => Math.cos(((u + 0.008) / 1.008) * (Math.PI / 2)) ** 2;
    for (const t of [0, 100, 500, 900, 990]) {
      expect(Math.abs(s.alphasCumprod[t] - f((t + 1) / T) / f(0))).toBeLessThan(1e-5);
    }
    expect(Math.max(...s.betas)).toBeCloseTo(0.999, 6); // the cap
  });

  it('addNoise: x_t has mean sqrt(ᾱ_t)·x0 and std sqrt(1 - ᾱ_t), per batch item', () => {
    const s = createScheduler('ddpm', sdSchedulerConfig);
    const ts = [0, 250, 999];
    const n = 20000;
    const x0 = tf.fill([3, n], 0.7);
    const noise = tf.randomNormal([3, n], 0, 1, 'float32', 7);
    const xt = s.addNoise(x0, noise, ts);
    const rows = xt.arraySync() as number[][];
    ts.forEach((t, i) => {
      const a = s.alphasCumprod[t];
      const row = rows[i];
      const mean = row.reduce((p, v) => p + v, 0) / n;
      const std = Math.sqrt(row.reduce((p, v) => p + (v - mean) ** 2, 0) / n);
      expect(Math.abs(mean - 0.7 * Math.sqrt(a))).toBeLessThan(4 * Math.sqrt((1 - a) / n));
      expect(Math.abs(std / Math.sqrt(1 - a) - 1)).toBeLessThan(0.02);
    });
    // And exactly: x_t = sqrt(ᾱ)x0 + sqrt(1-ᾱ)ε for the given ε.
    const eps = noise.arraySync() as number[][];
    ts.forEach((t, i) => {
      const a = s.alphasCumprod[t];
      for (const j of [0, 1, 12345]) {
        expect(rows[i][j]).toBeCloseTo(Math.sqrt(a) * 0.7 + Math.sqrt(1 - a) * eps[i][j], 5);
      }
    });
    tf.dispose([x0, noise, xt]);
  });

  it('addNoise with a scalar t and a tensor t; getVelocity is the v-prediction target', () => {
    const s = new DDPMScheduler();
    const x0 = tf.tensor4d([1, -2, 3, 0.5], [2, 2, 1, 1]);
    const eps = tf.tensor4d([0.3, 0.1, -1, 2], [2, 2, 1, 1]);
    const a = s.alphasCumprod[400];
    const b = s.alphasCumprod[10];
    const one = s.addNoise(x0, eps, 400).dataSync();
    const batch = s.addNoise(x0, eps, tf.tensor1d([400, 10], 'int32')).dataSync();
    const v = s.getVelocity(x0, eps, [400, 10]).dataSync();
    const xs = [1, -2, 3, 0.5];
    const es = [0.3, 0.1, -1, 2];
    for (let j = 0; j < 4; j++) {
      const ab = j < 2 ? a : b;
      expect(one[j]).toBeCloseTo(Math.sqrt(a) * xs[j] + Math.sqrt(1 - a) * es[j], 6);
      expect(batch[j]).toBeCloseTo(Math.sqrt(ab) * xs[j] + Math.sqrt(1 - ab) * es[j], 6);
      expect(v[j]).toBeCloseTo(Math.sqrt(ab) * es[j] - Math.sqrt(1 - ab) * xs[j], 6);
    }
    // v-prediction round trip: x0 = sqrt(ᾱ)x_t - sqrt(1-ᾱ)v.
    const xt = s.addNoise(x0, eps, [400, 10]).dataSync();
    for (let j = 0; j < 4; j++) {
      const ab = j < 2 ? a : b;
      expect(Math.sqrt(ab) * xt[j] - Math.sqrt(1 - ab) * v[j]).toBeCloseTo(xs[j], 5);
    }
    tf.dispose([x0, eps]);
  });
});

describe('noisedSample: the forward process and the training target', () => {
  it('x_t and each target per batch item, computed in float64 and rounded once', () => {
    const s = new NoiseSchedule({ num_train_timesteps: 1000, beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012, trained_betas: null });
    const x0 = Float32Array.from([1, -2, 3, 0.5, 0.25, -0.75]);
    const eps = Float32Array.from([0.3, 0.1, -1, 2, -0.6, 1.1]);
    const t = [400, 10, 999];
    const f32 = Math.fround;
    for (const prediction of ['epsilon', 'v_prediction', 'sample'] as const) {
      const { noisy, target } = s.noisedSample(x0, eps, t, prediction);
      for (let j = 0; j < 6; j++) {
        const ab = s.alphasCumprod[t[Math.floor(j / 2)]];
        const a = f32(Math.sqrt(ab));
        const b = f32(Math.sqrt(f32(1 - ab)));
        expect(noisy[j]).toBe(f32(a * x0[j] + b * eps[j]));
        const want = prediction === 'epsilon' ? eps[j] : prediction === 'sample' ? x0[j] : f32(a * eps[j] - b * x0[j]);
        expect(target[j]).toBe(want);
      }
    }
    // One timestep serves the whole batch.
    expect(Array.from(s.noisedSample(x0, eps, [400], 'epsilon').noisy)).toEqual(Array.from(s.noisedSample(x0, eps, [400, 400, 400], 'epsilon').noisy));
    // The tensor forms are the same numbers.
    const xT = tf.tensor3d(x0, [3, 2, 1]);
    const eT = tf.tensor3d(eps, [3, 2, 1]);
    expect(Array.from(s.addNoise(xT, eT, t).dataSync())).toEqual(Array.from(s.noisedSample(x0, eps, t, 'epsilon').noisy));
    expect(Array.from(s.getVelocity(xT, eT, t).dataSync())).toEqual(Array.from(s.noisedSample(x0, eps, t, 'v_prediction').target));
    expect(() => s.addNoise(xT, tf.zeros([3, 2]), t)).toThrow(/noise has shape \[3,2\], expected the shape of x0 \[3,2,1\]/);
    tf.dispose([xT, eT]);
    expect(() => s.noisedSample(x0, eps.subarray(1), t, 'epsilon')).toThrow(UsageError);
    expect(() => s.noisedSample(x0, eps, [1, 2, 3, 4], 'epsilon')).toThrow(/4 timesteps do not split 6 values/);
    expect(() => s.noisedSample(x0, eps, [1, 2, 1000], 'epsilon')).toThrow(/timestep must be an integer in \[0, 999\], got 1000/);
  });
});

describe('bad input', () => {
  it('an unknown scheduler name lists the valid ones', () => {
    expect(() => createScheduler('lms', sdSchedulerConfig)).toThrow(UsageError);
    expect(() => createScheduler('lms', sdSchedulerConfig)).toThrow(/unknown scheduler "lms".*ddpm, ddim, pndm, euler, euler_a, dpm\+\+2m, lcm/);
    expect(SCHEDULER_NAMES).toEqual(['ddpm', 'ddim', 'pndm', 'euler', 'euler_a', 'dpm++2m', 'lcm']);
    for (const n of SCHEDULER_NAMES) expect(createScheduler(n, sdSchedulerConfig).constructor.name).toBe(SCHEDULER_CLASS_NAMES[n]);
  });

  it('steps <= 0, non-integer or > num_train_timesteps', () => {
    for (const n of SCHEDULER_NAMES) {
      const s = createScheduler(n, sdSchedulerConfig);
      for (const bad of [0, -3, 2.5, 1001, NaN]) {
        expect(() => s.setTimesteps(bad), `${n} ${bad}`).toThrow(UsageError);
      }
      expect(() => s.setTimesteps(0)).toThrow(/number of inference steps must be an integer in \[1, 1000\]/);
    }
  });

  it('timesteps out of range or not in the schedule', () => {
    const x = tf.zeros([1, 4, 2, 2]);
    for (const n of SCHEDULER_NAMES) {
      const s = createScheduler(n, sdSchedulerConfig);
      s.setTimesteps(10);
      for (const bad of [-1, 1000, 5000, 12.5]) {
        expect(() => s.step(x, bad, x, { noise: x }), `${n} step t=${bad}`).toThrow(UsageError);
      }
    }
    const s = createScheduler('ddpm', sdSchedulerConfig);
    expect(() => s.addNoise(x, x, 1000)).toThrow(/timestep must be an integer in \[0, 999\], got 1000/);
    expect(() => s.addNoise(x, x, [-1])).toThrow(UsageError);
    expect(() => s.addNoise(tf.zeros([3, 2]), tf.zeros([3, 2]), [1, 2])).toThrow(/2 timesteps for a batch of 3/);
    const e = createScheduler('euler', sdSchedulerConfig);
    e.setTimesteps(10);
    expect(() => e.scaleModelInput(x, 500)).toThrow(/timestep 500 is not in this scheduler's timesteps/);
    x.dispose();
  });

  it('bad config values name the key', () => {
    expect(() => createScheduler('ddim', { beta_schedule: 'cosine' })).toThrow(/DDIMScheduler config key "beta_schedule": expected one of "linear", "scaled_linear", "squaredcos_cap_v2"/);
    expect(() => createScheduler('euler', { timestep_spacing: 'even' })).toThrow(UsageError);
    expect(() => createScheduler('ddpm', { prediction_type: 'v' })).toThrow(/prediction_type/);
    expect(() => createScheduler('ddpm', { num_train_timesteps: '1000' })).toThrow(/"num_train_timesteps": expected a number/);
    expect(() => createScheduler('dpm++2m', {}, { solver_order: 3 })).toThrow(/solver_order/);
    expect(() => createScheduler('euler', { use_karras_sigmas: 'yes' })).toThrow(/"use_karras_sigmas": expected a boolean/);
    expect(() => createScheduler('ddpm', { variance_type: 'learned_range' })).toThrow(/variance_type/);
    expect(() => createScheduler('ddim', [] as unknown as Record<string, unknown>)).toThrow(/expected a JSON object/);
  });

  it('readSchedulerConfig: Python json\'s -Infinity, and files that are not configs', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-sched-'));
    const file = path.join(dir, 'scheduler_config.json');
    fs.writeFileSync(file, '{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "solver_order": 2}');
    const s = createScheduler('dpm++2m', readSchedulerConfig(file)) as DPMSolverMultistepScheduler;
    expect(s.config.lambda_min_clipped).toBe(-Infinity);
    fs.writeFileSync(file, '{"beta_start": 0.1,');
    expect(() => readSchedulerConfig(file)).toThrow(/scheduler_config.json: not valid JSON/);
    fs.writeFileSync(file, '[1, 2]');
    expect(() => readSchedulerConfig(file)).toThrow(/expected a JSON object/);
    expect(() => readSchedulerConfig(path.join(dir, 'missing.json'))).toThrow(/missing.json: cannot read the scheduler config/);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('step before setTimesteps, and noise of the wrong shape', () => {
    const x = tf.zeros([1, 4, 2, 2]);
    expect(() => createScheduler('ddim', sdSchedulerConfig).step(x, 901, x)).toThrow(/call setTimesteps/);
    expect(() => createScheduler('pndm', sdSchedulerConfig).step(x, 901, x)).toThrow(/call setTimesteps/);
    expect(() => createScheduler('dpm++2m', sdSchedulerConfig).step(x, 999, x)).toThrow(/call setTimesteps/);
    const d = createScheduler('ddpm', sdSchedulerConfig);
    d.setTimesteps(10);
    expect(() => d.step(x, 901, x, { noise: tf.zeros([1, 4, 2, 3]) })).toThrow(/noise has shape \[1,4,2,3\]/);
    x.dispose();
  });
});

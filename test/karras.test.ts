/**
 * Karras sigmas (use_karras_sigmas; txt2img --karras) for euler, euler_a and dpm++2m, checked
 * against references computed here in float64 from upstream's ᾱ table (sd1_tiny fixture
 * `scheduler.alphas_cumprod`), not by sdlab's code:
 *   - σ_i: the closed form of Karras et al. 2022 (arXiv 2206.00364) eq. 5 with ρ = 7;
 *   - the timestep of each σ: log-σ interpolation between the two train timesteps that bracket
 *     it (diffusers' _sigma_to_t), written here as a binary search;
 *   - one step of each sampler from those σs (Euler, Euler a's σ_up/σ_down, DPM-Solver++'s first
 *     order update), and diffusers 0.24's DPM-Solver ending (the last σ repeated).
 * And txt2img --karras (runs with dpm++2m; refused with a scheduler that has no Karras sigmas).
 * The sd1_tiny fixture has no Karras case (every scheduler there runs with use_karras_sigmas
 * false); the first test says so, so a fixture that adds one is noticed.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { beforeAll, describe, expect, it } from 'vitest';
import { readSafetensors } from '../src/io/safetensors.ts';
import {
  DPMSolverMultistepScheduler,
  EulerAncestralDiscreteScheduler,
  EulerDiscreteScheduler,
  KARRAS_SCHEDULERS,
  createScheduler,
  readSchedulerConfig,
} from '../src/schedule/index.ts';
import { expectRefusedOneLine, runCli } from './helpers/cli-run.ts';

const FIXTURE = path.resolve(import.meta.dirname, '../../shared/fixtures/sd1_tiny');
const sd = readSchedulerConfig(path.join(FIXTURE, 'model/scheduler/scheduler_config.json'));
const manifestText = fs.readFileSync(path.join(FIXTURE, 'manifest.json'), 'utf8');

/** σ_t = sqrt((1 − ᾱ_t)/ᾱ_t) from upstream's float32 ᾱ, in float64. */
let sigmaTab: number[];
let logTab: number[];

beforeAll(async () => {
  await tf.setBackend('cpu');
  const acp = readSafetensors(path.join(FIXTURE, 'reference.safetensors'), (n) => n === 'scheduler.alphas_cumprod').get('scheduler.alphas_cumprod')!;
  sigmaTab = Array.from(acp.data, (a) => Math.sqrt((1 - a) / a));
  logTab = sigmaTab.map(Math.log);
});

/** Karras et al. eq. 5: σ_i = (σ_max^(1/ρ) + i/(N−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, ρ = 7. */
function karrasRef(sigmaMin: number, sigmaMax: number, n: number): number[] {
  const rho = 7;
  return Array.from({ length: n }, (_, i) => {
    const f = n === 1 ? 0 : i / (n - 1);
    return (sigmaMax ** (1 / rho) + f * (sigmaMin ** (1 / rho) - sigmaMax ** (1 / rho))) ** rho;
  });
}

/** The fractional timestep of σ: binary search for log σ_j ≤ log σ < log σ_{j+1}, linear in log σ. */
function tRef(sigma: number): number {
  const ls = Math.log(sigma);
  const n = logTab.length;
  if (ls <= logTab[0]) return 0;
  if (ls >= logTab[n - 1]) return n - 1;
  let lo = 0;
  let hi = n - 1; // logTab[lo] <= ls < logTab[hi]
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (logTab[mid] <= ls) lo = mid;
    else hi = mid;
  }
  return lo + (ls - logTab[lo]) / (logTab[hi] - logTab[lo]);
}

/** |a − b| ≤ rel·|b| entry by entry. */
function expectClose(a: readonly number[], b: readonly number[], rel: number, abs = 0, what = ''): void {
  expect(a.length, what).toBe(b.length);
  a.forEach((v, i) => expect(Math.abs(v - b[i]), `${what}[${i}]: ${v} vs ${b[i]}`).toBeLessThanOrEqual(rel * Math.abs(b[i]) + abs));
}

const SIGMA_REL = 5e-7; // float32 rounding of σ: 6e-8 observed
const T_ABS = 5e-4; // float32 log σ table and timestep: 4e-5 observed; a σ-linear instead of log-σ interpolation is off by ~0.04

describe('the fixture', () => {
  it('sd1_tiny has no Karras case (all its schedulers run with use_karras_sigmas false)', () => {
    expect(manifestText).not.toMatch(/"use_karras_sigmas":\s*true/);
    expect(KARRAS_SCHEDULERS).toEqual(['euler', 'euler_a', 'dpm++2m']);
  });
});

describe('Euler with Karras sigmas', () => {
  it('σs are eq. 5 between the ends of the spacing, timesteps their log-σ interpolation; σ_max starts the noise', () => {
    for (const n of [2, 10, 25]) {
      const s = createScheduler('euler', sd, { use_karras_sigmas: true }) as EulerDiscreteScheduler;
      s.setTimesteps(n);
      // "linspace" (Euler's default) runs from t = 999 to 0: σ_max = σ_999 = 14.6146, σ_min = σ_0 = 0.0292
      const want = karrasRef(sigmaTab[0], sigmaTab[999], n);
      expectClose(s.sigmas.slice(0, n), want, SIGMA_REL, 0, `σ n=${n}`);
      expect(s.sigmas[n]).toBe(0);
      expectClose(s.timesteps, want.map(tRef), 0, T_ABS, `t n=${n}`);
      expect(s.initNoiseSigma).toBeCloseTo(14.614645, 5);
    }
  });

  it('one step: "linspace" has the single timestep 0 (so both ends are σ_0, as upstream); "trailing" has 999', () => {
    const lin = createScheduler('euler', sd, { use_karras_sigmas: true });
    lin.setTimesteps(1);
    expect(lin.timesteps).toEqual([0]);
    const trail = createScheduler('euler', { ...sd, timestep_spacing: 'trailing' }, { use_karras_sigmas: true }) as EulerDiscreteScheduler;
    trail.setTimesteps(1);
    expect(trail.timesteps[0]).toBeCloseTo(999, 2);
    expectClose(trail.sigmas, [sigmaTab[999], 0], SIGMA_REL);
  });

  it('"leading" spacing: the ends are σ at its first and last timesteps (901 and 1 for 10 steps)', () => {
    const s = createScheduler('euler', { ...sd, timestep_spacing: 'leading' }, { use_karras_sigmas: true }) as EulerDiscreteScheduler;
    s.setTimesteps(10);
    const want = karrasRef(sigmaTab[1], sigmaTab[901], 10);
    expectClose(s.sigmas.slice(0, 10), want, SIGMA_REL);
    expectClose(s.timesteps, want.map(tRef), 0, T_ABS);
    expect(s.timesteps[0]).toBeCloseTo(901, 2);
    expect(s.timesteps[9]).toBeCloseTo(1, 2);
  });

  it('the config\'s sigma_min / sigma_max replace the ends', () => {
    const s = createScheduler('euler', { ...sd, use_karras_sigmas: true, sigma_min: 0.1, sigma_max: 10 }) as EulerDiscreteScheduler;
    s.setTimesteps(7);
    const want = karrasRef(0.1, 10, 7);
    expectClose(s.sigmas.slice(0, 7), want, SIGMA_REL);
    expectClose(s.timesteps, want.map(tRef), 0, T_ABS);
    expect(() => createScheduler('euler', { ...sd, sigma_min: -1 })).toThrow(/"sigma_min": expected a number > 0 or null/);
  });

  it('a step moves x by ε·(σ_{i+1} − σ_i) with those σs, and the model input is x / sqrt(σ_i² + 1)', () => {
    const s = createScheduler('euler', sd, { use_karras_sigmas: true });
    s.setTimesteps(5);
    const want = karrasRef(sigmaTab[0], sigmaTab[999], 5);
    const x = tf.tensor4d([1, -2, 3, 0.5], [1, 2, 2, 1]);
    const eps = tf.tensor4d([0.1, 0.2, -0.3, 1], [1, 2, 2, 1]);
    const t0 = s.timesteps[0];
    const scaled = Array.from(s.scaleModelInput(x, t0).dataSync());
    expectClose(scaled, [1, -2, 3, 0.5].map((v) => v / Math.sqrt(want[0] ** 2 + 1)), 1e-6);
    const prev = Array.from(s.step(eps, t0, x).prevSample.dataSync());
    expectClose(prev, [1, -2, 3, 0.5].map((v, k) => v + [0.1, 0.2, -0.3, 1][k] * (want[1] - want[0])), 1e-6, 1e-6);
  });
});

describe('Euler a with Karras sigmas', () => {
  it('as an override (txt2img --karras): Karras σs, and a step with σ_up / σ_down from them', () => {
    const s = createScheduler('euler_a', sd, { use_karras_sigmas: true }) as EulerAncestralDiscreteScheduler;
    s.setTimesteps(6);
    const want = karrasRef(sigmaTab[0], sigmaTab[999], 6);
    expectClose(s.sigmas.slice(0, 6), want, SIGMA_REL);
    expectClose(s.timesteps, want.map(tRef), 0, T_ABS);
    const [s0, s1] = want;
    const up = Math.sqrt((s1 ** 2 * (s0 ** 2 - s1 ** 2)) / s0 ** 2);
    const down = Math.sqrt(s1 ** 2 - up ** 2);
    const xs = [1, -2, 3, 0.5];
    const es = [0.1, 0.2, -0.3, 1];
    const zs = [0.7, -0.1, 0.4, -1.3];
    const T = (v: number[]) => tf.tensor4d(v, [1, 2, 2, 1]);
    const prev = Array.from(s.step(T(es), s.timesteps[0], T(xs), { noise: T(zs) }).prevSample.dataSync());
    expectClose(prev, xs.map((x, k) => x + es[k] * (down - s0) + zs[k] * up), 1e-6, 1e-6);
  });

  it('the config key alone does nothing, as diffusers\' EulerAncestralDiscreteScheduler (which has no such key) ignores it', () => {
    const plain = createScheduler('euler_a', sd);
    const keyed = createScheduler('euler_a', { ...sd, use_karras_sigmas: true });
    plain.setTimesteps(10);
    keyed.setTimesteps(10);
    expect(keyed.timesteps).toEqual(plain.timesteps);
    expect(keyed.timesteps).toEqual(expect.arrayContaining([999, 0]));
    expect(() => createScheduler('euler_a', sd, { use_karras_sigmas: 'yes' })).toThrow(/"use_karras_sigmas": expected a boolean/);
  });
});

describe('DPM++ 2M Karras (DPMSolverMultistepScheduler, use_karras_sigmas)', () => {
  it('σs over the whole train range, integer timesteps (rounded), and the last σ repeated (diffusers 0.24)', () => {
    for (const n of [10, 20, 25]) {
      const s = createScheduler('dpm++2m', { ...sd, use_karras_sigmas: true }) as DPMSolverMultistepScheduler;
      s.setTimesteps(n);
      const want = karrasRef(sigmaTab[0], sigmaTab[999], n);
      expectClose(s.sigmas.slice(0, n), want, SIGMA_REL, 0, `σ n=${n}`);
      expect(s.sigmas[n]).toBe(s.sigmas[n - 1]);
      expect(s.timesteps, `n=${n}`).toEqual(want.map((sg) => Math.round(tRef(sg))));
      expect(s.timesteps[0]).toBe(999);
      expect(s.timesteps[n - 1]).toBe(0);
    }
  });

  it('the first step is the first-order update in λ time with those σs; the last one changes nothing', () => {
    const s = createScheduler('dpm++2m', sd, { use_karras_sigmas: true });
    s.setTimesteps(4);
    const want = karrasRef(sigmaTab[0], sigmaTab[999], 4);
    const as = (k: number) => {
      const alpha = 1 / Math.sqrt(k * k + 1);
      return { alpha, sigma: k * alpha, lambda: Math.log(alpha) - Math.log(k * alpha) };
    };
    const xs = [1, -2, 3, 0.5];
    const es = [0.1, 0.2, -0.3, 1];
    const T = (v: number[]) => tf.tensor4d(v, [1, 2, 2, 1]);
    const a = as(want[0]);
    const b = as(want[1]);
    const h = b.lambda - a.lambda;
    const ref = xs.map((x, k) => {
      const x0 = (x - a.sigma * es[k]) / a.alpha;
      return (b.sigma / a.sigma) * x - b.alpha * (Math.exp(-h) - 1) * x0;
    });
    let x: tf.Tensor = T(xs);
    const first = s.step(T(es), s.timesteps[0], x).prevSample;
    expectClose(Array.from(first.dataSync()), ref, 1e-5, 1e-5);
    x = first;
    for (let i = 1; i < 3; i++) x = s.step(T(es), s.timesteps[i], x).prevSample;
    const last = s.step(T(es), s.timesteps[3], x).prevSample;
    expectClose(Array.from(last.dataSync()), Array.from(x.dataSync()), 1e-6, 1e-7);
  });

  it('use_lu_lambdas is still refused', () => {
    expect(() => createScheduler('dpm++2m', { ...sd, use_lu_lambdas: true })).toThrow(/use_lu_lambdas/);
  });
});

describe('point-mass data (the exact model for a single x0): the Karras samplers stay on the trajectory', () => {
  const X0 = [0.8, -0.3, 0.1, -1.2];
  const E = [0.4, 1.3, -0.9, 0.2];
  const T = (v: number[]) => tf.tensor4d(v, [1, 2, 2, 1]);

  it('Euler: x0 + σ_i·ε after every step, x0 at the end', () => {
    const s = createScheduler('euler', sd, { use_karras_sigmas: true }) as EulerDiscreteScheduler;
    s.setTimesteps(8);
    let x: tf.Tensor = T(X0.map((v, j) => v + s.sigmas[0] * E[j]));
    s.timesteps.forEach((t, i) => {
      const next = s.step(T(E), t, x).prevSample; // the exact ε of x0 + σε is ε
      expectClose(Array.from(next.dataSync()), X0.map((v, j) => v + s.sigmas[i + 1] * E[j]), 2e-6, 2e-6, `step ${i}`);
      x = next;
    });
    expectClose(Array.from(x.dataSync()), X0, 2e-6, 2e-6);
  });

  it('DPM++ 2M (second order included): α_k·x0 + σ_k·ε at each Karras σ_k', () => {
    const s = createScheduler('dpm++2m', sd, { use_karras_sigmas: true, prediction_type: 'sample' }) as DPMSolverMultistepScheduler;
    s.setTimesteps(8);
    const at = (k: number) => X0.map((v, j) => (v + k * E[j]) / Math.sqrt(k * k + 1)); // α = 1/sqrt(σ²+1), σ_t = σα
    let x: tf.Tensor = T(at(s.sigmas[0]));
    s.timesteps.forEach((t, i) => {
      const next = s.step(T(X0), t, x).prevSample;
      expectClose(Array.from(next.dataSync()), at(s.sigmas[i + 1]), 1e-5, 1e-5, `step ${i}`);
      x = next;
    });
  });
});

describe('schedulers without Karras sigmas', () => {
  it('are unchanged by the key (it belongs to other diffusers schedulers)', () => {
    for (const name of ['ddim', 'ddpm', 'pndm', 'lcm']) {
      const plain = createScheduler(name, sd);
      const keyed = createScheduler(name, { ...sd, use_karras_sigmas: true });
      plain.setTimesteps(4);
      keyed.setTimesteps(4);
      expect(keyed.timesteps, name).toEqual(plain.timesteps);
    }
  });
});

describe('txt2img --karras', { timeout: 300_000 }, () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-karras-'));
  const base = (out: string) => ['txt2img', '--model', path.join(FIXTURE, 'model'), '--prompt', 'a cat', '--height', '16', '--width', '16', '--steps', '3', '--out', path.join(tmp, out), '--backend', 'cpu'];

  it('"DPM++ 2M Karras": --scheduler dpm++2m --karras runs and records karras: true', () => {
    const r = runCli([...base('dpm'), '--scheduler', 'dpm++2m', '--karras']);
    expect(r.code, r.stderr).toBe(0);
    const json = JSON.parse(fs.readFileSync(path.join(tmp, 'dpm/txt2img.json'), 'utf8'));
    expect([json.scheduler, json.karras]).toEqual(['dpm++2m', true]);
    expect(r.stderr).toMatch(/t=999/);
  });

  it('refused with ddim (before loading), and with the model\'s own PNDM (named): one line, exit 2, nothing written', () => {
    expectRefusedOneLine(runCli([...base('ddim'), '--scheduler', 'ddim', '--karras']), /--karras: only euler, euler_a, dpm\+\+2m take Karras sigmas, got --scheduler ddim\.$/);
    expectRefusedOneLine(runCli([...base('own'), '--karras']), /--karras: only euler, euler_a, dpm\+\+2m take Karras sigmas, and the scheduler is pndm \(pick one with --scheduler\)\.$/);
    for (const d of ['ddim', 'own']) expect(fs.existsSync(path.join(tmp, d)), d).toBe(false);
  });
});

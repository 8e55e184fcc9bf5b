/**
 * LCMScheduler (--scheduler lcm) against diffusers v0.24 on the sd1_pipelines fixture (case
 * lcm.txt2img: StableDiffusionPipeline + LCMScheduler.from_config(SD's config), 4 steps, guidance
 * 1, explicit latents): the whole pipeline runs with upstream's three re-noising draws replayed
 * (test/helpers/pipeline-fixture.ts ReplayGenerator, through the pipeline's `generator`), and every step's latents and `denoised`, the final latents and
 * the image are compared with the README's tolerances. The scheduler alone: the timestep grid
 * rule, c_skip/c_out, x0 from each prediction type, the re-noising and the last step, checked
 * against the manifest's values and formulas written out here in float64. SD-Turbo-style
 * sampling: "trailing" spacing for Euler / Euler a, 1–4 steps, a one-step Euler a run at t = 999.
 * And the CLI: --scheduler lcm, --timestep-spacing, and their refusals.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSafetensors } from '../src/io/safetensors.ts';
import { registerNativeBackend } from '../src/backend/native.ts';
import os from 'node:os';
import { EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, LCMScheduler, SCHEDULER_NAMES, createScheduler, readSchedulerConfig } from '../src/schedule/index.ts';
import { type StableDiffusionPipeline, loadDiffusersPipeline } from '../src/sample/index.ts';
import { UsageError } from '../src/util/errors.ts';
import { ReplayGenerator, manifest, maxAbs, maxOf, refTensor } from './helpers/pipeline-fixture.ts';
import { expectRefusedOneLine, runCli } from './helpers/cli-run.ts';

const FIXTURES = path.resolve(import.meta.dirname, '../../shared/fixtures');
const MODEL = path.join(FIXTURES, 'sd1_tiny/model');

const lcmCase = manifest.cases.lcm.txt2img;
const sdConfig = readSchedulerConfig(path.join(MODEL, 'scheduler/scheduler_config.json'));

/**
 * Tolerances: the fixture README's suggestions for an independent float32 implementation
 * (its float64 replay differs by 4.5e-7 of max|latents| on the final latents, 5.1e-7 on the
 * image): latents within 5e-5 · max|reference|, images within 1e-4, prompt embeddings 1e-5.
 */
const LATENT_REL_TOL = 5e-5;
const IMAGE_TOL = 1e-4;
const EMBED_TOL = 1e-5;

let pipe: StableDiffusionPipeline;

beforeAll(async () => {
  await tf.setBackend(registerNativeBackend() ? 'native' : 'cpu');
  pipe = loadDiffusersPipeline(MODEL, { scheduler: 'lcm' });
});
afterAll(() => pipe?.dispose());

/** Row i of a stacked [N, 1, C, H, W] reference, as NHWC [1, H, W, C]. */
function rowNhwc(key: string, i: number): tf.Tensor4D {
  return tf.tidy(() => tf.transpose(tf.squeeze(tf.slice(refTensor(key), [i], [1]), [0]), [0, 2, 3, 1]) as tf.Tensor4D);
}
/** An NCHW reference as NHWC. */
const nhwc = (key: string) => tf.tidy(() => tf.transpose(refTensor(key), [0, 2, 3, 1]) as tf.Tensor4D);

describe('lcm.txt2img against diffusers (sd1_pipelines fixture)', () => {
  it('LCMScheduler.from_config(SD config): the config diffusers resolved, and its timesteps', () => {
    const s = pipe.scheduler as LCMScheduler;
    expect(s).toBeInstanceOf(LCMScheduler);
    const want = lcmCase.scheduler_config;
    for (const k of Object.keys(s.config)) expect(s.config[k as keyof typeof s.config], k).toEqual(want[k]);
    s.setTimesteps(lcmCase.call.num_inference_steps);
    expect(s.timesteps).toEqual(lcmCase.timesteps);
    expect(Array.from(refTensor('lcm.txt2img.timesteps').dataSync())).toEqual(lcmCase.timesteps);
    expect(s.initNoiseSigma).toBe(lcmCase.init_noise_sigma);
  });

  it('the whole pipeline with upstream draws: every step (latents, denoised), final latents, image', () => {
    const call = lcmCase.call;
    // upstream's draws, replayed through the pipeline's diffusers-order path (NCHW, as torch drew them)
    const replay = ReplayGenerator.forCase('lcm.txt2img', lcmCase.random_inputs.length);
    const stepErr: number[] = [];
    const denoisedErr: number[] = [];
    const ts: number[] = [];
    const out = pipe.call({
      prompt: call.prompt,
      numInferenceSteps: call.num_inference_steps,
      guidanceScale: call.guidance_scale,
      height: call.height,
      width: call.width,
      latents: nhwc(call.latents),
      generator: replay,
      callback: (st) => {
        ts.push(st.t);
        const want = rowNhwc(lcmCase.outputs.step_latents, st.i);
        stepErr.push(maxAbs(st.latents, want) / maxOf(want));
        const wantD = rowNhwc(lcmCase.outputs.denoised, st.i);
        denoisedErr.push(maxAbs(st.predOriginalSample, wantD) / maxOf(wantD));
        tf.dispose([want, wantD]);
      },
    });
    const finalRef = nhwc(lcmCase.outputs.final_latents);
    const finalErr = maxAbs(out.latents, finalRef) / maxOf(finalRef);
    const imageErr = maxAbs(out.images, refTensor(lcmCase.outputs.image));
    const embedErr = maxAbs(out.promptEmbeds, refTensor(lcmCase.outputs.prompt_embeds));
    console.log(`lcm: embeds ${embedErr.toExponential(2)}, steps (rel) ≤ ${Math.max(...stepErr).toExponential(2)}, denoised (rel) ≤ ${Math.max(...denoisedErr).toExponential(2)}, final (rel) ${finalErr.toExponential(2)}, image ${imageErr.toExponential(2)}`);
    expect(ts).toEqual(lcmCase.timesteps);
    expect(replay.used).toBe(3); // one fresh noise per step except the last
    expect(out.promptEmbeds.shape).toEqual([1, 77, 32]); // guidance 1: the prompt alone
    expect(embedErr).toBeLessThanOrEqual(EMBED_TOL);
    expect(stepErr).toHaveLength(4);
    for (const e of [...stepErr, ...denoisedErr, finalErr]) expect(e).toBeLessThanOrEqual(LATENT_REL_TOL);
    expect(out.images.shape).toEqual([1, 32, 32, 3]);
    expect(imageErr).toBeLessThanOrEqual(IMAGE_TOL);
    tf.dispose([out.images, out.latents, out.promptEmbeds, finalRef]);
  });
});

describe('LCMScheduler alone', () => {
  const lcm = () => createScheduler('lcm', sdConfig) as LCMScheduler;

  it('is registered as --scheduler lcm', () => {
    expect(SCHEDULER_NAMES).toContain('lcm');
    expect(lcm()).toBeInstanceOf(LCMScheduler);
  });

  it('the timestep grid: k = T // original_inference_steps, k−1 .. T−1, n taken at floor(i·len/n) from the top', () => {
    const s = lcm();
    // worked out by hand from the rule: origin (top first) 999, 979, ..., 19 (50 entries, step 20)
    const cases: [number, number[]][] = [
      [1, [999]],
      [2, [999, 499]], // indices 0, 25
      [3, [999, 679, 339]], // indices 0, 16, 33
      [8, [999, 879, 759, 639, 499, 379, 259, 139]], // 0, 6, 12, 18, 25, 31, 37, 43
    ];
    for (const [n, want] of cases) {
      s.setTimesteps(n);
      expect(s.timesteps, `${n} steps`).toEqual(want);
    }
    s.setTimesteps(50);
    expect(s.timesteps[49]).toBe(19);
    // original_inference_steps 4: k = 250, grid 249, 499, 749, 999
    const o4 = createScheduler('lcm', sdConfig, { original_inference_steps: 4 });
    o4.setTimesteps(2);
    expect(o4.timesteps).toEqual([999, 499]);
    expect(() => s.setTimesteps(51)).toThrow(/51 inference steps is more than original_inference_steps \(50\)/);
  });

  it('c_skip and c_out at each timestep: the values the manifest records', () => {
    const s = lcm();
    for (const p of lcmCase.boundary_condition.per_step) {
      const { cSkip, cOut } = s.boundaryCondition(p.t);
      expect(cOut).toBe(p.c_out);
      expect(cSkip).toBe(Math.fround(p.c_skip));
    }
    // t = 0: c_skip = 1, c_out = 0 (the identity); timestep_scaling changes both
    expect(s.boundaryCondition(0)).toEqual({ cSkip: 1, cOut: 0 });
    const slow = createScheduler('lcm', sdConfig, { timestep_scaling: 0.01 }) as LCMScheduler;
    const d = 0.01 * 0.01 + 0.25; // t = 1
    expect(slow.boundaryCondition(1).cSkip).toBeCloseTo(0.25 / d, 6);
    expect(slow.boundaryCondition(1).cOut).toBeCloseTo(0.01 / Math.sqrt(d), 6);
  });

  it('one step for each prediction type: x0, denoised, re-noising with the given noise; the last step returns denoised and draws nothing', () => {
    const x = [0.3, -1.2, 2.0, 0.7];
    const m = [0.5, 0.1, -0.4, 1.5];
    const z = [1.0, -0.5, 0.25, 2.0];
    const T = (v: number[]) => tf.tensor4d(v, [1, 1, 2, 2]);
    const scaling = 0.02; // so that c_skip is not negligible
    for (const prediction of ['epsilon', 'v_prediction', 'sample'] as const) {
      const s = createScheduler('lcm', sdConfig, { prediction_type: prediction, timestep_scaling: scaling }) as LCMScheduler;
      s.setTimesteps(4);
      const [t0, t1] = s.timesteps;
      const [p0, p1] = lcmCase.boundary_condition.per_step; // ᾱ at 999 and 759, as recorded upstream
      expect([t0, t1]).toEqual([p0.t, p1.t]);
      const a = p0.alphas_cumprod_t;
      const an = p0.alphas_cumprod_t_next;
      const st = scaling * t0;
      const cSkip = 0.25 / (st * st + 0.25);
      const cOut = st / Math.sqrt(st * st + 0.25);
      const want = x.map((xi, k) => {
        const x0 = prediction === 'epsilon' ? (xi - Math.sqrt(1 - a) * m[k]) / Math.sqrt(a) : prediction === 'v_prediction' ? Math.sqrt(a) * xi - Math.sqrt(1 - a) * m[k] : m[k];
        const den = cOut * x0 + cSkip * xi;
        return { den, prev: Math.sqrt(an) * den + Math.sqrt(1 - an) * z[k] };
      });
      const out = s.step(T(m), t0, T(x), { noise: T(z) });
      const prev = out.prevSample.dataSync();
      const den = out.predOriginalSample!.dataSync();
      want.forEach((w, k) => {
        expect(den[k], `${prediction} denoised ${k}`).toBeCloseTo(w.den, 4);
        expect(prev[k], `${prediction} prev ${k}`).toBeCloseTo(w.prev, 4);
      });
      // steps 2 and 3 draw; the last (t = 259) returns denoised and draws nothing
      const counting = { n: 0, normalArray: (k: number) => (counting.n++, new Float32Array(k)) };
      s.step(T(m), t1, T(x), { generator: counting });
      s.step(T(m), s.timesteps[2], T(x), { generator: counting });
      expect(counting.n).toBe(2);
      const never = { normalArray: (): Float32Array => { throw new Error('the last step must not draw'); } };
      const last = s.step(T(m), s.timesteps[3], T(x), { generator: never });
      expect(Array.from(last.prevSample.dataSync())).toEqual(Array.from(last.predOriginalSample!.dataSync()));
      expect(() => s.step(T(m), s.timesteps[3], T(x))).toThrow(/all 4 steps are done/);
    }
  });

  it('point-mass data (the exact ε for a single x0): each step re-noises x0 with the drawn z, the last returns x0', () => {
    const X0 = [0.8, -0.3, 0.1, -1.2];
    const E = [0.4, 1.3, -0.9, 0.2];
    const s = lcm();
    s.setTimesteps(4);
    const acp = s.alphasCumprod;
    const z: number[][] = [];
    const gen = { normalArray: (n: number) => { const a = Float32Array.from({ length: n }, (_, k) => Math.sin(7 * z.length + k)); z.push(Array.from(a)); return a; } };
    let e = E;
    let x: tf.Tensor = tf.tensor4d(X0.map((v, j) => Math.sqrt(acp[999]) * v + Math.sqrt(1 - acp[999]) * E[j]), [1, 2, 2, 1]);
    s.timesteps.forEach((t, i) => {
      const out = s.step(tf.tensor4d(e, [1, 2, 2, 1]), t, x, { generator: gen });
      const den = Array.from(out.predOriginalSample!.dataSync());
      den.forEach((v, j) => expect(v, `denoised ${i}`).toBeCloseTo(X0[j], 4)); // c_skip ≤ 4e-8: x0 itself
      const next = s.timesteps[i + 1];
      const want = next === undefined ? X0 : X0.map((v, j) => Math.sqrt(acp[next]) * v + Math.sqrt(1 - acp[next]) * z[i][j]);
      Array.from(out.prevSample.dataSync()).forEach((v, j) => expect(v, `step ${i}`).toBeCloseTo(want[j], 4));
      if (next !== undefined) e = z[i];
      x = out.prevSample;
    });
    expect(z).toHaveLength(3);
  });

  it('a one-step run (t = 999) is the denoised estimate alone', () => {
    const s = lcm();
    s.setTimesteps(1);
    const x = tf.tensor4d([1, 2, 3, 4], [1, 1, 2, 2]);
    const eps = tf.tensor4d([0.5, 0.5, 0.5, 0.5], [1, 1, 2, 2]);
    const never = { normalArray: (): Float32Array => { throw new Error('no draw'); } };
    const out = s.step(eps, 999, x, { generator: never });
    const a = lcmCase.boundary_condition.per_step[0].alphas_cumprod_t;
    const want = [1, 2, 3, 4].map((v) => (v - Math.sqrt(1 - a) * 0.5) / Math.sqrt(a));
    Array.from(out.prevSample.dataSync()).forEach((v, k) => expect(v).toBeCloseTo(want[k], 3));
  });

  it('bad settings: one line naming the key', () => {
    expect(() => createScheduler('lcm', sdConfig, { original_inference_steps: 0 })).toThrow(UsageError);
    expect(() => createScheduler('lcm', sdConfig, { original_inference_steps: 2000 })).toThrow(/"original_inference_steps": expected an integer in \[1, 1000\]/);
    expect(() => createScheduler('lcm', { ...sdConfig, timestep_scaling: '10' })).toThrow(/"timestep_scaling": expected a number/);
    expect(() => createScheduler('lcm', { ...sdConfig, timestep_scalng: 10 })).toThrow(/unknown config key "timestep_scalng" for sdlab's LCMScheduler/);
    // DPM-Solver's keys are inert for LCM, as in diffusers' from_config
    expect(() => createScheduler('lcm', { ...sdConfig, solver_order: 3, use_karras_sigmas: true })).not.toThrow();
    const s = lcm();
    s.setTimesteps(4);
    const x = tf.zeros([1, 1, 2, 2]);
    expect(() => s.step(x, 500, x)).toThrow(/timestep 500 is not in this scheduler's timesteps/);
    expect(() => lcm().step(x, 999, x)).toThrow(/call setTimesteps\(n\) first/);
  });
});

describe('SD-Turbo-style sampling: "trailing" spacing with Euler / Euler a, 1–4 steps', () => {
  // SD-Turbo ships an EulerDiscreteScheduler config with timestep_spacing "trailing"; its model
  // card samples 1 step at guidance_scale 0.0 (no guidance: sdlab's --guidance 1).
  const turbo = { ...sdConfig, _class_name: 'EulerDiscreteScheduler', timestep_spacing: 'trailing' };
  let sigma: number[];
  beforeAll(() => {
    const acp = readSafetensors(path.join(FIXTURES, 'sd1_tiny/reference.safetensors'), (n) => n === 'scheduler.alphas_cumprod').get('scheduler.alphas_cumprod')!;
    sigma = Array.from(acp.data, (a) => Math.sqrt((1 - a) / a));
  });

  it('timesteps T−1 down in steps of T/n (rounded), σ at them, and initNoiseSigma = σ_999', () => {
    // by hand: arange(1000, 0, -1000/n), rounded, minus 1
    const want: [number, number[]][] = [[1, [999]], [2, [999, 499]], [3, [999, 666, 332]], [4, [999, 749, 499, 249]]];
    for (const name of ['euler', 'euler_a'] as const) {
      for (const [n, ts] of want) {
        const s = createScheduler(name, turbo) as EulerDiscreteScheduler | EulerAncestralDiscreteScheduler;
        s.setTimesteps(n);
        expect(s.timesteps, `${name} ${n}`).toEqual(ts);
        ts.forEach((t, i) => expect(Math.abs(s.sigmas[i] - sigma[t]) / sigma[t]).toBeLessThan(1e-6));
        expect(s.sigmas[n]).toBe(0);
        expect(s.initNoiseSigma).toBeCloseTo(sigma[999], 4); // not sqrt(σ² + 1): that is "leading"'s
      }
    }
  });

  it('one Euler a step at t = 999 lands on x0 = x − σ_999·ε (σ_up = 0: the drawn noise is multiplied by 0)', () => {
    const s = createScheduler('euler_a', turbo);
    s.setTimesteps(1);
    const xs = [3, -7, 12, 0.5];
    const es = [0.2, -0.5, 0.8, 0.1];
    const T = (v: number[]) => tf.tensor4d(v, [1, 2, 2, 1]);
    const draws = { n: 0, normalArray: (k: number) => (draws.n++, new Float32Array(k).fill(5)) };
    const out = s.step(T(es), 999, T(xs), { generator: draws });
    expect(draws.n).toBe(1); // drawn as upstream draws it, so a torch stream stays in step
    Array.from(out.prevSample.dataSync()).forEach((v, k) => expect(v).toBeCloseTo(xs[k] - sigma[999] * es[k], 4));
  });

  it('a whole 1-step Euler a pipeline run at guidance 1: the final latents are the x0 of the one UNet call', () => {
    const p = loadDiffusersPipeline(MODEL, { scheduler: 'euler_a' });
    try {
      p.scheduler = createScheduler('euler_a', turbo);
      const noise = tf.randomNormal([1, 4, 4, 4], 0, 1, 'float32', 7) as tf.Tensor4D;
      const seen: number[] = [];
      const out = p.call({ prompt: 'a horse', numInferenceSteps: 1, guidanceScale: 1, height: 8, width: 8, latents: noise, callback: (st) => seen.push(st.t) });
      expect(seen).toEqual([999]);
      const s999 = Math.fround(sigma[999]);
      const x = tf.mul(noise, s999);
      const eps = p.unet.forward(tf.div(x, Math.sqrt(s999 * s999 + 1)) as tf.Tensor4D, 999, out.promptEmbeds);
      const want = tf.sub(x, tf.mul(eps, s999));
      expect(maxAbs(out.latents, want) / maxOf(want)).toBeLessThan(1e-5);
      expect(out.images.dataSync().every(Number.isFinite)).toBe(true);
      tf.dispose([noise, x, eps, want, out.images, out.latents, out.promptEmbeds]);
    } finally {
      p.dispose();
    }
  });
});

describe('the CLI', { timeout: 300_000 }, () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-lcm-'));
  const base = (out: string) => ['txt2img', '--model', MODEL, '--prompt', 'a cat', '--height', '16', '--width', '16', '--out', path.join(tmp, out), '--backend', 'cpu'];

  it('--scheduler lcm and --scheduler euler_a --timestep-spacing trailing run, and say so in txt2img.json', () => {
    const lcmRun = runCli([...base('lcm'), '--scheduler', 'lcm', '--steps', '4', '--guidance', '1']);
    expect(lcmRun.code, lcmRun.stderr).toBe(0);
    const lcmJson = JSON.parse(fs.readFileSync(path.join(tmp, 'lcm/txt2img.json'), 'utf8'));
    expect([lcmJson.scheduler, lcmJson.timestep_spacing, lcmJson.karras]).toEqual(['lcm', null, false]);
    const turboRun = runCli([...base('turbo'), '--scheduler', 'euler_a', '--timestep-spacing', 'trailing', '--steps', '1', '--guidance', '1']);
    expect(turboRun.code, turboRun.stderr).toBe(0);
    expect(turboRun.stderr).toMatch(/t=999/);
    const turboJson = JSON.parse(fs.readFileSync(path.join(tmp, 'turbo/txt2img.json'), 'utf8'));
    expect([turboJson.scheduler, turboJson.timestep_spacing]).toEqual(['euler_a', 'trailing']);
    expect(fs.existsSync(path.join(tmp, 'turbo/0000.png'))).toBe(true);
  });

  it('refusals: one line, exit 2, nothing written', () => {
    const cases: [string, string[], RegExp][] = [
      ['bad spacing', ['--timestep-spacing', 'even'], /--timestep-spacing.*expected one of leading, linspace, trailing, got "even"/],
      ['spacing with lcm', ['--scheduler', 'lcm', '--timestep-spacing', 'trailing'], /--timestep-spacing: lcm takes its timesteps from the grid of original_inference_steps/],
      ['too many LCM steps', ['--scheduler', 'lcm', '--steps', '60'], /60 inference steps is more than original_inference_steps \(50\)/],
    ];
    for (const [label, extra, pattern] of cases) {
      const out = `refused-${label.replace(/ /g, '-')}`;
      expectRefusedOneLine(runCli([...base(out), ...extra]), pattern);
      expect(fs.existsSync(path.join(tmp, out)), label).toBe(false);
    }
  });
});

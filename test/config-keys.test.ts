/**
 * The one rule for config keys (src/io/config.ts header), for model configs and scheduler configs
 * alike: implemented keys validated, inert keys ignored, unimplemented features only at their
 * no-op value, anything else refused naming the file and the key. And every config the upstream
 * fixtures carry (written by several diffusers versions) still loads with every scheduler.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { Random } from '../src/util/random.ts';
import { UsageError } from '../src/util/errors.ts';
import { checkConfigKey, parseConfig } from '../src/io/config.ts';
import { SCHEDULER_NAMES, createScheduler, readSchedulerConfig } from '../src/schedule/index.ts';
import { readUnetConfig } from '../src/unet/config.ts';
import { readVaeConfig } from '../src/autoencoder/config.ts';
import { readTextEncoderConfig } from '../src/clip/text_encoder.ts';

const FIXTURES = path.resolve(__dirname, '../../shared/fixtures');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-config-keys-'));

/** Every object in a manifest that is a scheduler config (it has beta_start), with where it is. */
function schedulerConfigsIn(manifestFile: string): Array<[string, Record<string, unknown>]> {
  // Python's json writes bare -Infinity (lambda_min_clipped); readSchedulerConfig's convention.
  const text = fs.readFileSync(manifestFile, 'utf8').replace(/([:[,]\s*)(-?Infinity|NaN)(?=\s*[,\]}])/g, '$1"$2"');
  const found: Array<[string, Record<string, unknown>]> = [];
  const walk = (v: unknown, where: string): void => {
    if (Array.isArray(v)) v.forEach((x, i) => walk(x, `${where}[${i}]`));
    else if (v && typeof v === 'object') {
      if ('beta_start' in v) found.push([where, v as Record<string, unknown>]);
      for (const [k, x] of Object.entries(v)) walk(x, `${where}.${k}`);
    }
  };
  walk(JSON.parse(text), path.basename(path.dirname(manifestFile)));
  return found;
}

function writeJson(name: string, obj: unknown): string {
  const f = path.join(tmp, name);
  fs.writeFileSync(f, JSON.stringify(obj));
  return f;
}

describe('every fixture config loads', () => {
  const configs = [
    ...schedulerConfigsIn(path.join(FIXTURES, 'sd1_tiny/manifest.json')),
    ...schedulerConfigsIn(path.join(FIXTURES, 'sd1_pipelines/manifest.json')),
  ];

  it('the manifests hold scheduler configs of several classes and diffusers versions (LCM keys too)', () => {
    expect(configs.length).toBeGreaterThanOrEqual(10);
    const keys = new Set(configs.flatMap(([, c]) => Object.keys(c)));
    for (const k of ['skip_prk_steps', 'original_inference_steps', 'timestep_scaling', 'use_lu_lambdas', 'timestep_type']) expect(keys).toContain(k);
  });

  it('each one builds every sdlab scheduler', () => {
    for (const [where, config] of configs) {
      for (const name of SCHEDULER_NAMES) expect(() => createScheduler(name, config), `${where} as ${name}`).not.toThrow();
    }
  });

  it('the scheduler_config.json file and the model configs of both fixture models', () => {
    const sched = readSchedulerConfig(path.join(FIXTURES, 'sd1_tiny/model/scheduler/scheduler_config.json'));
    for (const name of SCHEDULER_NAMES) expect(() => createScheduler(name, sched)).not.toThrow();
    expect(readUnetConfig(path.join(FIXTURES, 'sd1_tiny/model/unet/config.json')).in_channels).toBe(4);
    expect(readUnetConfig(path.join(FIXTURES, 'sd1_pipelines/inpaint_model/unet/config.json')).in_channels).toBe(9);
    expect(readVaeConfig(path.join(FIXTURES, 'sd1_tiny/model/vae/config.json')).latent_channels).toBe(4);
    expect(readTextEncoderConfig(path.join(FIXTURES, 'sd1_tiny/model/text_encoder/config.json')).hidden_size).toBeGreaterThan(0);
  });
});

describe('scheduler configs follow the rule', () => {
  const sd = readSchedulerConfig(path.join(FIXTURES, 'sd1_tiny/model/scheduler/scheduler_config.json'));

  it('an unknown key is refused, naming the file and the key', () => {
    const f = writeJson('typo_scheduler.json', { ...sd, beta_ends: 0.02 });
    const cfg = readSchedulerConfig(f);
    for (const name of SCHEDULER_NAMES) {
      expect(() => createScheduler(name, cfg)).toThrow(UsageError);
      expect(() => createScheduler(name, cfg)).toThrow(`${f}: unknown config key "beta_ends"`);
    }
  });

  it("another diffusers scheduler's key is inert, whatever its value", () => {
    // PNDM's skip_prk_steps, LCM's timestep_scaling, UniPC's solver_p: nothing for Euler or DDIM.
    const cfg = { ...sd, skip_prk_steps: false, timestep_scaling: 3, solver_p: 'x', set_alpha_to_one: true };
    const euler = createScheduler('euler', cfg);
    expect(euler.config).not.toHaveProperty('timestep_scaling');
    expect(euler.alphasCumprod).toEqual(createScheduler('euler', sd).alphasCumprod);
  });

  it('a key that changes the result and a scheduler does not implement: only its no-op value', () => {
    const f = writeJson('thresholding.json', { ...sd, thresholding: true });
    const cfg = readSchedulerConfig(f);
    // Euler, Euler a and PNDM have no thresholding: refused, naming file, key and scheduler.
    for (const [name, cls] of [['euler', 'EulerDiscreteScheduler'], ['euler_a', 'EulerAncestralDiscreteScheduler'], ['pndm', 'PNDMScheduler']]) {
      expect(() => createScheduler(name, cfg)).toThrow(`${f}: config key "thresholding" = true is not supported by sdlab's ${cls} (it accepts only false`);
    }
    // DDPM, DDIM and DPM-Solver implement it: the value is used.
    expect((createScheduler('ddim', cfg).config as unknown as { thresholding: boolean }).thresholding).toBe(true);
    // At the no-op value every scheduler accepts it.
    for (const name of SCHEDULER_NAMES) expect(() => createScheduler(name, { ...sd, thresholding: false })).not.toThrow();
  });

  it('zero terminal SNR is honoured by DDIM and DDPM and refused where it is not implemented (never silently dropped)', () => {
    const zero = { ...sd, rescale_betas_zero_snr: true };
    expect(createScheduler('ddim', zero).alphasCumprod[999]).toBe(0);
    // DDPM: the same rescaled table, and a v-prediction step from pure noise (t = T - 1) stays finite.
    const ddpm = createScheduler('ddpm', { ...zero, prediction_type: 'v_prediction', timestep_spacing: 'trailing' });
    expect(Array.from(ddpm.alphasCumprod)).toEqual(Array.from(createScheduler('ddim', zero).alphasCumprod));
    ddpm.setTimesteps(10);
    const x = tf.randomNormal([1, 2, 2, 2], 0, 1, 'float32', 1);
    const out = ddpm.step(tf.zerosLike(x), ddpm.timesteps[0], x, { generator: new Random(0) }).prevSample;
    expect(ddpm.timesteps[0]).toBe(999); // trailing spacing starts at ᾱ_999 = 0
    expect(out.dataSync().every(Number.isFinite)).toBe(true);
    for (const name of ['pndm', 'euler', 'euler_a', 'dpm++2m']) {
      expect(() => createScheduler(name, zero), name).toThrow(/config key "rescale_betas_zero_snr" = true is not supported by sdlab's \w+Scheduler/);
    }
  });

  it("keys of a scheduler's own diffusers class that sdlab lacks: newer DPM-Solver and Euler configs", () => {
    expect(() => createScheduler('dpm++2m', { ...sd, final_sigmas_type: 'zero' })).toThrow(/"final_sigmas_type" = "zero" is not supported by sdlab's DPMSolverMultistepScheduler \(it accepts only "sigma_min"/);
    expect(() => createScheduler('dpm++2m', { ...sd, final_sigmas_type: 'sigma_min' })).not.toThrow();
    expect(() => createScheduler('euler', { ...sd, use_beta_sigmas: true })).toThrow(/"use_beta_sigmas" = true is not supported/);
    expect(() => createScheduler('euler', { ...sd, final_sigmas_type: 'zero', use_exponential_sigmas: false })).not.toThrow();
    // Keys of flow-matching models are not SD-style scheduler keys at all.
    expect(() => createScheduler('euler', { ...sd, base_shift: 0.5 })).toThrow(/unknown config key "base_shift"/);
  });

  it('overrides given by code follow the same rule', () => {
    expect(() => createScheduler('ddim', sd, { timestep_spacng: 'trailing' })).toThrow(/DDIMScheduler settings: unknown config key "timestep_spacng"/);
  });
});

describe('model configs follow the same rule', () => {
  const spec = {
    className: 'Thing',
    defaults: { width: 4, act: 'silu' },
    ignored: ['force_upcast'],
    unimplemented: { dropout: 0 },
  };

  it('known keys validated, inert and bookkeeping keys ignored, unimplemented only at the no-op value', () => {
    expect(parseConfig({ _class_name: 'Thing', _diffusers_version: '0.30.0', width: 8, force_upcast: true, dropout: 0 }, spec, 'c.json')).toEqual({ width: 8, act: 'silu' });
    expect(() => parseConfig({ width: 'wide' }, spec, 'c.json')).toThrow('c.json: config key "width" must be a number, got "wide".');
    expect(() => parseConfig({ dropout: 0.1 }, spec, 'c.json')).toThrow('c.json: config key "dropout" = 0.1 is not supported by sdlab\'s Thing (it accepts only 0, which changes nothing)');
    expect(() => parseConfig({ widht: 8 }, spec, 'c.json')).toThrow('c.json: unknown config key "widht" for sdlab\'s Thing (known keys: width, act)');
  });

  it('checkConfigKey is the one classifier both use', () => {
    const rule = { reader: 'x', known: ['a'], inert: ['b'], unimplemented: { c: null } };
    expect(checkConfigKey('a', 1, rule, 'f')).toBe('known');
    expect(checkConfigKey('b', 1, rule, 'f')).toBe('ignore');
    expect(checkConfigKey('_class_name', 'X', rule, 'f')).toBe('ignore');
    expect(checkConfigKey('c', null, rule, 'f')).toBe('ignore');
    expect(() => checkConfigKey('c', 0, rule, 'f')).toThrow(UsageError);
    expect(() => checkConfigKey('d', 1, rule, 'f')).toThrow('f: unknown config key "d"');
  });
});

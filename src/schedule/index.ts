/**
 * The noise schedule and the samplers. ./forward.ts is the forward process (NoiseSchedule:
 * betas, ᾱ, x_t and the training target); ./base.ts what every sampler shares.
 *
 * Schedulers by name. `createScheduler('euler', json)` builds one from a diffusers
 * `scheduler_config.json` (e.g. SD's, which names PNDMScheduler: like diffusers' `from_config`,
 * each class takes the keys it knows and its own defaults for the rest — so the spacing is
 * "leading" for ddpm/ddim/pndm and "linspace" for euler/euler_a/dpm++2m).
 *
 *   ddpm      DDPMScheduler                    ancestral, stochastic (./ddpm.ts)
 *   ddim      DDIMScheduler                    deterministic with eta=0 (./ddim.ts)
 *   pndm      PNDMScheduler                    PLMS, SD's default (./pndm.ts)
 *   euler     EulerDiscreteScheduler           sigma-space ODE, scales the input (./euler.ts)
 *   euler_a   EulerAncestralDiscreteScheduler  Euler + fresh noise (./euler_ancestral.ts)
 *   dpm++2m   DPMSolverMultistepScheduler      2nd-order multistep (./dpm_solver.ts)
 *   lcm       LCMScheduler                     few-step, for LCM-distilled models (./lcm.ts)
 *
 * Karras sigmas (use_karras_sigmas, ./karras.ts) work with euler, euler_a and dpm++2m
 * (KARRAS_SCHEDULERS).
 */
import fs from 'node:fs';
import { UsageError } from '../util/errors.ts';
import { checkRegularFile } from '../util/fs.ts';
import { parseJson } from '../util/json.ts';
import { type Scheduler, rememberConfigSource } from './base.ts';
import { DDIMScheduler } from './ddim.ts';
import { DDPMScheduler } from './ddpm.ts';
import { DPMSolverMultistepScheduler } from './dpm_solver.ts';
import { EulerDiscreteScheduler } from './euler.ts';
import { EulerAncestralDiscreteScheduler } from './euler_ancestral.ts';
import { LCMScheduler } from './lcm.ts';
import { PNDMScheduler } from './pndm.ts';

export * from './forward.ts';
export * from './base.ts';
export { DDIMScheduler } from './ddim.ts';
export { DDPMScheduler } from './ddpm.ts';
export { DPMSolverMultistepScheduler } from './dpm_solver.ts';
export { EulerDiscreteScheduler, SigmaScheduler } from './euler.ts';
export { EulerAncestralDiscreteScheduler } from './euler_ancestral.ts';
export { PNDMScheduler } from './pndm.ts';
export { LCMScheduler } from './lcm.ts';
export { KARRAS_RHO, karrasSigmas, sigmaToT } from './karras.ts';

export const SCHEDULER_NAMES = ['ddpm', 'ddim', 'pndm', 'euler', 'euler_a', 'dpm++2m', 'lcm'] as const;
export type SchedulerName = (typeof SCHEDULER_NAMES)[number];

/** The diffusers class name behind each sdlab name (`_class_name` in scheduler_config.json). */
export const SCHEDULER_CLASS_NAMES: Record<SchedulerName, string> = {
  ddpm: 'DDPMScheduler',
  ddim: 'DDIMScheduler',
  pndm: 'PNDMScheduler',
  euler: 'EulerDiscreteScheduler',
  euler_a: 'EulerAncestralDiscreteScheduler',
  'dpm++2m': 'DPMSolverMultistepScheduler',
  lcm: 'LCMScheduler',
};

/** The schedulers that take Karras sigmas (`use_karras_sigmas`; txt2img --karras). */
export const KARRAS_SCHEDULERS: readonly SchedulerName[] = ['euler', 'euler_a', 'dpm++2m'];

/** The sdlab name for a diffusers class name, or null if sdlab has no such scheduler. */
export function schedulerNameForClass(className: string): SchedulerName | null {
  const hit = SCHEDULER_NAMES.find((n) => SCHEDULER_CLASS_NAMES[n] === className);
  return hit ?? null;
}

/**
 * Builds the scheduler `name` from a diffusers scheduler config (other schedulers' keys are
 * ignored, keys that would change the result and are not implemented refused: base.ts
 * resolveConfig) with `overrides` applied on top, e.g. `{ timestep_spacing: 'trailing' }`.
 */
export function createScheduler(
  name: string,
  config: Record<string, unknown> = {},
  overrides: Record<string, unknown> = {},
): Scheduler {
  switch (name as SchedulerName) {
    case 'ddpm':
      return DDPMScheduler.fromConfig(config, overrides);
    case 'ddim':
      return DDIMScheduler.fromConfig(config, overrides);
    case 'pndm':
      return PNDMScheduler.fromConfig(config, overrides);
    case 'euler':
      return EulerDiscreteScheduler.fromConfig(config, overrides);
    case 'euler_a':
      return EulerAncestralDiscreteScheduler.fromConfig(config, overrides);
    case 'dpm++2m':
      // The name fixes the algorithm: DPM-Solver++ of order 2.
      return DPMSolverMultistepScheduler.fromConfig(config, { algorithm_type: 'dpmsolver++', solver_order: 2, ...overrides });
    case 'lcm':
      return LCMScheduler.fromConfig(config, overrides);
    default:
      throw new UsageError(`unknown scheduler "${name}": expected one of ${SCHEDULER_NAMES.join(', ')}.`);
  }
}

/**
 * The same scheduler (its class and resolved config) rebuilt with `overrides` on top, e.g.
 * `{ use_karras_sigmas: true }` or `{ timestep_spacing: 'trailing' }` from the command line.
 */
export function reconfigureScheduler(s: Scheduler, overrides: Record<string, unknown>): Scheduler {
  const name = schedulerNameForClass(s.constructor.name);
  if (!name) throw new Error(`reconfigureScheduler: ${s.constructor.name} is not one of sdlab's schedulers.`);
  const config = s.config as unknown as Record<string, unknown>;
  // Euler a takes Karras sigmas only as an override (its config key is inert): carry it over.
  const keep = config.use_karras_sigmas === true ? { use_karras_sigmas: true } : {};
  return createScheduler(name, { ...config }, { ...keep, ...overrides });
}

/**
 * Reads a diffusers scheduler_config.json. Python's json writes -Infinity (DPM-Solver's
 * lambda_min_clipped) as a bare token that JSON.parse rejects; it becomes the string "-Infinity",
 * which the config reader understands.
 */
export function readSchedulerConfig(file: string): Record<string, unknown> {
  checkRegularFile(file, 'a diffusers scheduler_config.json');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    throw new UsageError(`${file}: cannot read the scheduler config (expected a diffusers scheduler_config.json).`);
  }
  const json = parseJson(text.replace(/([:[,]\s*)(-?Infinity|NaN)(?=\s*[,\]}])/g, '$1"$2"'), file);
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new UsageError(`${file}: expected a JSON object of scheduler settings.`);
  }
  rememberConfigSource(json, file); // a refused key names this file
  return json as Record<string, unknown>;
}

/**
 * How a run samples itself: the sampler, step count, guidance and DDIM η its recipe was measured
 * at, kept in the run so `sdlab sample` and `sdlab eval` use them without flags.
 *
 *   <run>/sampling_config.json   {"scheduler": "ddim", "num_inference_steps": 50,
 *                                 "guidance_scale": 3, "eta": 0, "guidance_interval": [200, 600],
 *                                 "source": "train all --preset full"}
 *
 * The keys are the diffusers pipeline's argument names (pipe(num_inference_steps=...,
 * guidance_scale=..., eta=...)); "scheduler" is an sdlab name (ddim, euler, …) or the diffusers
 * class (DDIMScheduler, …); "guidance_interval" ([lo, hi] train timesteps, or null = every
 * step; optional, files written before it existed mean null) limits guidance to those steps
 * (pipeline.ts guidanceInterval); "source" says who wrote it. The UNet trainer writes it (atomically);
 * reading checks every key, and an unknown key or a bad value is one line naming the file.
 *
 * resolveSampling() merges, per setting: the flag when given, else the run's file, else
 * SAMPLING_DEFAULTS (a run without the file — trained before sdlab wrote one — gets a note).
 */
import fs from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError } from 'commander';
import { UsageError } from '../util/errors.ts';
import { writeFileAtomicSync } from '../util/fs.ts';
import { SCHEDULER_NAMES, type SchedulerName, schedulerNameForClass } from '../schedule/index.ts';
import { readJsonFile } from '../util/json.ts';

export interface SamplingSettings {
  /** sdlab scheduler name (SCHEDULER_NAMES). */
  scheduler: SchedulerName;
  /** Denoising steps (num_inference_steps). */
  steps: number;
  /** Classifier-free guidance scale (guidance_scale; 1 = the conditional model alone). */
  guidance: number;
  /** DDIM η (0 = deterministic); other schedulers ignore it. */
  eta: number;
  /** Guide only at train timesteps t in [lo, hi] (the conditional model alone elsewhere); null = every step. */
  guidanceInterval: readonly [number, number] | null;
}

/** What `sdlab sample` used before runs recorded their own settings, and still uses without one. */
export const SAMPLING_DEFAULTS: Readonly<SamplingSettings> = { scheduler: 'ddim', steps: 50, guidance: 3, eta: 0, guidanceInterval: null };

export const SAMPLING_CONFIG_FILE = 'sampling_config.json';

/** The file's key for each setting (diffusers' argument names). */
const FILE_KEYS: Record<keyof SamplingSettings, string> = { scheduler: 'scheduler', steps: 'num_inference_steps', guidance: 'guidance_scale', eta: 'eta', guidanceInterval: 'guidance_interval' };
/** Keys a file may leave out (added after runs began recording their settings): their default then. */
const OPTIONAL_KEYS: ReadonlyArray<keyof SamplingSettings> = ['guidanceInterval'];
/** The CLI flag of each setting. */
export const SAMPLING_FLAGS: Record<keyof SamplingSettings, string> = { scheduler: '--scheduler', steps: '--steps', guidance: '--guidance', eta: '--eta', guidanceInterval: '--guidance-interval' };

/** Largest train timestep a guidance interval may name (the schedules' num_train_timesteps bound). */
const MAX_TIMESTEP = 100_000;

/**
 * --guidance-interval: "LO,HI" (train timesteps, ends included) or "all" (every step) — commander
 * argParser, so a bad value exits 2 naming the flag.
 */
export function parseGuidanceInterval(value: string): [number, number] | null {
  if (value.trim() === 'all') return null;
  const parts = value.split(',').map((x) => x.trim());
  const [lo, hi] = parts.map(Number);
  if (parts.length !== 2 || parts.some((x) => x === '') || !intervalOk([lo, hi])) {
    throw new InvalidArgumentError(`expected LO,HI train timesteps with 0 <= LO <= HI (e.g. 100,700), or "all", got "${value}".`);
  }
  return [lo, hi];
}

function intervalOk(v: unknown): v is [number, number] {
  return Array.isArray(v) && v.length === 2 && v.every((x) => typeof x === 'number' && Number.isFinite(x) && x >= 0 && x <= MAX_TIMESTEP) && v[0] <= v[1];
}

export function samplingConfigPath(runDir: string): string {
  return path.join(runDir, SAMPLING_CONFIG_FILE);
}

/** Checks one setting's value; returns an error message (without the file name) or null. */
function problem(key: keyof SamplingSettings, v: unknown): string | null {
  switch (key) {
    case 'scheduler':
      return typeof v === 'string' && ((SCHEDULER_NAMES as readonly string[]).includes(v) || schedulerNameForClass(v))
        ? null
        : `"scheduler" must be one of ${SCHEDULER_NAMES.join(', ')} (or its diffusers class name), got ${JSON.stringify(v)}`;
    case 'steps':
      return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 10_000 ? null : `"num_inference_steps" must be an integer in [1, 10000], got ${JSON.stringify(v)}`;
    case 'guidance':
      return typeof v === 'number' && Number.isFinite(v) && v >= 0 && v <= 100 ? null : `"guidance_scale" must be a number in [0, 100], got ${JSON.stringify(v)}`;
    case 'eta':
      return typeof v === 'number' && Number.isFinite(v) && v >= 0 && v <= 1 ? null : `"eta" must be a number in [0, 1], got ${JSON.stringify(v)}`;
    case 'guidanceInterval':
      return v === null || intervalOk(v) ? null : `"guidance_interval" must be null or [lo, hi] train timesteps with 0 <= lo <= hi, got ${JSON.stringify(v)}`;
  }
}

/** Writes <run>/sampling_config.json atomically (after checking the values). */
export function writeSamplingConfig(runDir: string, s: SamplingSettings, source?: string): string {
  for (const k of Object.keys(FILE_KEYS) as Array<keyof SamplingSettings>) {
    const p = problem(k, s[k]);
    if (p) throw new UsageError(`sampling settings: ${p}.`);
  }
  const file = samplingConfigPath(runDir);
  const rec: Record<string, unknown> = { scheduler: s.scheduler, num_inference_steps: s.steps, guidance_scale: s.guidance, eta: s.eta, guidance_interval: s.guidanceInterval };
  if (source) rec.source = source;
  writeFileAtomicSync(file, JSON.stringify(rec, null, 2) + '\n');
  return file;
}

/** Reads and checks <run>/sampling_config.json; null when the run has none. */
export function readSamplingConfig(runDir: string): SamplingSettings | null {
  const file = samplingConfigPath(runDir);
  if (!fs.existsSync(file)) return null;
  const raw = readJsonFile(file);
  const known = [...Object.values(FILE_KEYS), 'source'];
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new UsageError(`${file}: expected a JSON object with ${known.join(', ')}.`);
  const o = raw as Record<string, unknown>;
  const unknown = Object.keys(o).find((k) => !known.includes(k));
  if (unknown !== undefined) throw new UsageError(`${file}: unknown key "${unknown}" (expected ${known.join(', ')}).`);
  if (o.source !== undefined && typeof o.source !== 'string') throw new UsageError(`${file}: "source" must be a string, got ${JSON.stringify(o.source)}.`);
  const out = { ...SAMPLING_DEFAULTS } as SamplingSettings;
  for (const [k, fileKey] of Object.entries(FILE_KEYS) as Array<[keyof SamplingSettings, string]>) {
    if (!(fileKey in o)) {
      if (OPTIONAL_KEYS.includes(k)) continue;
      throw new UsageError(`${file}: missing "${fileKey}" (expected ${Object.values(FILE_KEYS).join(', ')}).`);
    }
    const p = problem(k, o[fileKey]);
    if (p) throw new UsageError(`${file}: ${p}.`);
    (out as unknown as Record<string, unknown>)[k] = o[fileKey];
  }
  const sched = o.scheduler as string;
  out.scheduler = (SCHEDULER_NAMES as readonly string[]).includes(sched) ? (sched as SchedulerName) : schedulerNameForClass(sched)!;
  return out;
}

export type SettingSource = 'flag' | 'run' | 'default';

export interface ResolvedSampling {
  settings: SamplingSettings;
  /** Where each setting came from. */
  from: Record<keyof SamplingSettings, SettingSource>;
  /** The run's file (whether or not it exists). */
  file: string;
  /** E.g. that the run has no file and the defaults were used. */
  notes: string[];
}

/** The settings to sample with: each flag given wins, else the run's file, else SAMPLING_DEFAULTS. */
export function resolveSampling(runDir: string, given: Partial<SamplingSettings> = {}): ResolvedSampling {
  const file = samplingConfigPath(runDir);
  const stored = readSamplingConfig(runDir);
  const settings = {} as SamplingSettings;
  const from = {} as Record<keyof SamplingSettings, SettingSource>;
  for (const k of Object.keys(FILE_KEYS) as Array<keyof SamplingSettings>) {
    const g = given[k];
    const [v, src]: [unknown, SettingSource] = g !== undefined ? [g, 'flag'] : stored ? [stored[k], 'run'] : [SAMPLING_DEFAULTS[k], 'default'];
    (settings as unknown as Record<string, unknown>)[k] = v;
    from[k] = src;
  }
  const notes: string[] = [];
  if (!stored && (Object.values(from) as SettingSource[]).includes('default')) {
    notes.push(`${file} not found (a run trained before sdlab recorded its sampling settings): using the defaults (${formatSampling(SAMPLING_DEFAULTS)}) for what no flag sets.`);
  }
  return { settings, from, file, notes };
}

/** "ddim, 50 steps, guidance 3, guidance at t in [200, 600], eta 0" (the interval part only with one) */
export function formatSampling(s: SamplingSettings): string {
  const iv = s.guidanceInterval ? `, guidance at t in [${s.guidanceInterval.join(', ')}]` : '';
  return `${s.scheduler}, ${s.steps} steps, guidance ${s.guidance}${iv}, eta ${s.eta}`;
}

/** "ddim, 50 steps, guidance 3, eta 0 (guidance from --guidance; scheduler, steps, eta from runs/x/sampling_config.json)" */
export function describeSampling(r: ResolvedSampling): string {
  const keys = Object.keys(FILE_KEYS) as Array<keyof SamplingSettings>;
  const parts: string[] = [];
  for (const src of ['flag', 'run', 'default'] as const) {
    const ks = keys.filter((k) => r.from[k] === src);
    if (!ks.length) continue;
    const where = src === 'flag' ? ks.map((k) => SAMPLING_FLAGS[k]).join(', ') : src === 'run' ? r.file : "sdlab's defaults";
    parts.push(`${ks.length === keys.length ? 'all' : ks.map((k) => (k === 'guidanceInterval' ? 'guidance interval' : k)).join(', ')} from ${where}`);
  }
  return `${formatSampling(r.settings)} (${parts.join('; ')})`;
}

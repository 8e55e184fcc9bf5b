/**
 * diffusers-style config.json files: a flat JSON object of model hyper-parameters, plus
 * diffusers' bookkeeping keys (`_class_name`, `_diffusers_version`, ...).
 *
 * A model describes its config by its defaults (one object; the value types are the schema)
 * and an explicit list of keys it knowingly ignores. Reading then
 *   - fills missing keys from the defaults,
 *   - rejects unknown keys with an error naming the file and the key (a typo such as
 *     "latent_chanels" must not silently fall back to a default),
 *   - rejects values of the wrong type (number vs string vs array ...).
 *
 *   const cfg = readConfig('runs/default/vae/config.json', {
 *     className: 'AutoencoderKL', defaults: VAE_DEFAULTS, ignored: ['force_upcast'] });
 *   writeConfig('out/vae/config.json', 'AutoencoderKL', cfg);
 */
import fs from 'node:fs';
import { UsageError } from '../util/errors.ts';
import { writeFileAtomicSync } from '../util/fs.ts';
import { parseJson, showJson } from '../util/json.ts';

/** Bookkeeping keys diffusers/transformers write; always accepted and never part of a config. */
export const DIFFUSERS_META_KEYS: readonly string[] = [
  '_class_name',
  '_diffusers_version',
  '_name_or_path',
  '_use_default_values',
  '_commit_hash',
];

/** The diffusers release whose semantics sdlab's models follow (written into saved configs). */
export const DIFFUSERS_VERSION = '0.24.0';

export interface ConfigSpec<T> {
  /** Expected `_class_name` (checked when the file has one). */
  className?: string;
  /** Every accepted key with its default value; the default's type is the expected type. */
  defaults: T;
  /** Keys accepted but ignored (document why next to the list). */
  ignored?: readonly string[];
}

/** Validates a parsed config object against `spec`; `source` names the file in errors. */
export function parseConfig<T extends object>(raw: unknown, spec: ConfigSpec<T>, source: string): T {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new UsageError(`${source}: expected a JSON object of config keys.`);
  }
  const obj = raw as Record<string, unknown>;
  const defaults = spec.defaults as Record<string, unknown>;
  if (spec.className && typeof obj._class_name === 'string' && obj._class_name !== spec.className) {
    throw new UsageError(`${source}: _class_name is ${showJson(obj._class_name)}, expected "${spec.className}".`);
  }
  const out: Record<string, unknown> = structuredClone(defaults);
  for (const [key, value] of Object.entries(obj)) {
    if (DIFFUSERS_META_KEYS.includes(key) || spec.ignored?.includes(key)) continue;
    if (!Object.hasOwn(defaults, key)) {
      throw new UsageError(`${source}: unknown config key ${showJson(key)} (known keys: ${Object.keys(defaults).join(', ')}).`);
    }
    const problem = typeProblem(defaults[key], value);
    if (problem) throw new UsageError(`${source}: config key "${key}" ${problem}, got ${showJson(value)}.`);
    out[key] = value;
  }
  return out as T;
}

/** Reads and validates a config.json. */
export function readConfig<T extends object>(file: string, spec: ConfigSpec<T>): T {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`${file}: cannot read config (${(err as NodeJS.ErrnoException).code ?? String(err)}).`);
  }
  return parseConfig(parseJson(text, file), spec, file);
}

/** Writes `config` as a diffusers-style config.json (atomically), with _class_name first. */
export function writeConfig(file: string, className: string, config: object): void {
  const body = { _class_name: className, _diffusers_version: DIFFUSERS_VERSION, ...config };
  writeFileAtomicSync(file, JSON.stringify(body, null, 2) + '\n');
}

function typeProblem(def: unknown, value: unknown): string | null {
  if (def === null || def === undefined) return null; // no schema: anything JSON
  if (typeof def === 'number') return typeof value === 'number' && Number.isFinite(value) ? null : 'must be a number';
  if (typeof def === 'string') return typeof value === 'string' ? null : 'must be a string';
  if (typeof def === 'boolean') return typeof value === 'boolean' ? null : 'must be true or false';
  if (Array.isArray(def)) {
    if (!Array.isArray(value)) return 'must be a list';
    if (def.length > 0) {
      const t = typeof def[0];
      if (!value.every((v) => typeof v === t && (t !== 'number' || Number.isFinite(v)))) return `must be a list of ${t}s`;
    }
    return null;
  }
  if (typeof def === 'object') return typeof value === 'object' && value !== null && !Array.isArray(value) ? null : 'must be an object';
  return null;
}

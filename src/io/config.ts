/**
 * diffusers-style config.json files: a flat JSON object of model hyper-parameters, plus
 * diffusers' bookkeeping keys (`_class_name`, `_diffusers_version`, ...).
 *
 * One rule for the keys of every config sdlab reads — model configs (parseConfig below) and
 * scheduler configs (src/schedule/base.ts resolveConfig) alike; checkConfigKey applies it:
 *   1. a key sdlab implements is validated (its type, and its range where the model checks it);
 *      a missing one takes its default;
 *   2. a key on the config's inert list is accepted and ignored: diffusers/transformers
 *      bookkeeping (DIFFUSERS_META_KEYS), keys that change nothing in sdlab (e.g. a VAE's
 *      force_upcast: sdlab always computes in float32), and for a scheduler the keys other
 *      diffusers schedulers define (diffusers shares one scheduler_config.json among them);
 *   3. a key of a feature sdlab does not implement is accepted only at the value that changes
 *      nothing (a UNet's class_embed_type null, a scheduler's thresholding false): any other
 *      value is refused with a line naming the key and the value that is accepted;
 *   4. any other key is refused with a line naming the file and the key. A typo such as
 *      "latent_chanels" must not silently fall back to a default, and a key newer than sdlab
 *      that would change what the model computes must never be silently ignored.
 *
 *   const cfg = readConfig('runs/default/vae/config.json', {
 *     className: 'AutoencoderKL', defaults: VAE_DEFAULTS, ignored: ['force_upcast'] });
 *   writeConfig('out/vae/config.json', 'AutoencoderKL', cfg);
 */
import fs from 'node:fs';
import { UsageError } from '../util/errors.ts';
import { checkRegularFile, writeFileAtomicSync } from '../util/fs.ts';
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
  /** Who reads the config, for messages ("UNet" → "sdlab's UNet"); default: className. */
  reader?: string;
  /** Every implemented key with its default value; the default's type is the expected type (rule 1). */
  defaults: T;
  /** Inert keys: accepted and ignored (rule 2; document why next to the list). */
  ignored?: readonly string[];
  /** Keys of unimplemented features → the only value accepted, the one that changes nothing (rule 3). */
  unimplemented?: Readonly<Record<string, unknown>>;
}

/** How one config's keys are classified (the rule in this file's header). */
export interface KeyRule {
  /** Who reads the config, for messages: "sdlab's UNet", "sdlab's EulerDiscreteScheduler". */
  reader: string;
  /** Rule 1: keys sdlab implements. */
  known: readonly string[];
  /** Rule 2: keys accepted and ignored (besides DIFFUSERS_META_KEYS). */
  inert?: readonly string[];
  /** Rule 3: key → the only value accepted. */
  unimplemented?: Readonly<Record<string, unknown>>;
  /** Ends the message for an unimplemented value (what to do); default: sdlab cannot run it. */
  unimplementedHint?: string;
  /** Added to the unknown-key message (what the config should be). */
  unknownHint?: string;
}

const sameJson = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);

/**
 * Classifies `key` (with `value`) of the config `source` by the rule in this file's header:
 * 'known' (the caller validates the value) or 'ignore' (inert, or unimplemented at its no-op
 * value); throws a UsageError naming the file and key for anything else.
 */
export function checkConfigKey(key: string, value: unknown, rule: KeyRule, source: string): 'known' | 'ignore' {
  if (rule.known.includes(key)) return 'known';
  // Before the inert list: a scheduler's inert list holds every scheduler's keys, these included.
  if (rule.unimplemented && Object.hasOwn(rule.unimplemented, key)) {
    const ok = rule.unimplemented[key];
    if (sameJson(value, ok)) return 'ignore';
    const hint = rule.unimplementedHint ?? 'sdlab cannot run a model that needs it';
    throw new UsageError(
      `${source}: config key ${showJson(key)} = ${showJson(value)} is not supported by ${rule.reader} (it accepts only ${JSON.stringify(ok)}, which changes nothing); ${hint}.`,
    );
  }
  if (DIFFUSERS_META_KEYS.includes(key) || rule.inert?.includes(key)) return 'ignore';
  throw new UsageError(
    `${source}: unknown config key ${showJson(key)} for ${rule.reader} (known keys: ${rule.known.join(', ')})${rule.unknownHint ? `; ${rule.unknownHint}` : ''}; fix its spelling, or remove it if it is not needed.`,
  );
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
  const rule: KeyRule = {
    reader: `sdlab's ${spec.reader ?? spec.className ?? 'model'}`,
    known: Object.keys(defaults),
    inert: spec.ignored,
    unimplemented: spec.unimplemented,
  };
  const out: Record<string, unknown> = structuredClone(defaults);
  for (const [key, value] of Object.entries(obj)) {
    if (checkConfigKey(key, value, rule, source) === 'ignore') continue;
    const problem = typeProblem(defaults[key], value);
    if (problem) throw new UsageError(`${source}: config key "${key}" ${problem}, got ${showJson(value)}.`);
    out[key] = value;
  }
  return out as T;
}

/** Reads and validates a config.json. */
export function readConfig<T extends object>(file: string, spec: ConfigSpec<T>): T {
  checkRegularFile(file, 'a config.json');
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

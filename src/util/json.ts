/**
 * JSON from files sdlab did not write (configs, tokenizers, safetensors headers): parsed with
 * one-line errors, and shown in error messages without breaking the one-line rule.
 *
 *   const raw = parseJson(text, 'unet/config.json');  // UsageError: "unet/config.json: not valid JSON (...)."
 *   const raw = readJsonFile('runs/r/sampling_config.json');  // the same, from a file
 *   throw new UsageError(`key "x" must be a number, got ${showJson(value)}.`);
 *
 * Nesting is bounded (MAX_JSON_DEPTH): no config needs more than a few levels, and a deeper
 * value overflows the stack of anything recursive that later touches it (JSON.stringify in an
 * error message, structuredClone), which would end in a stack trace instead of one line.
 */
import fs from 'node:fs';
import { UsageError } from './errors.ts';
import { checkRegularFile } from './fs.ts';

/** Deepest nesting of arrays/objects accepted in a JSON file. */
export const MAX_JSON_DEPTH = 64;

/** A message made one line: control characters (newlines included) escaped, cut to `max` characters. */
export function oneLine(text: string, max = 160): string {
  const flat = text.replace(/[\u0000-\u001f\u007f\u2028\u2029]/g, (c) => JSON.stringify(c).slice(1, -1));
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

/** A JSON value as text for an error message: one line, at most `max` characters; never throws. */
export function showJson(value: unknown, max = 80): string {
  let text: string;
  try {
    text = value === undefined ? '(missing)' : typeof value === 'number' && !Number.isFinite(value) ? String(value) : JSON.stringify(value);
  } catch {
    text = Array.isArray(value) ? '[…]' : '{…}';
  }
  return oneLine(text, max);
}

/** How deep `value` nests arrays/objects, counted without recursion; stops counting past `limit`. */
export function jsonDepth(value: unknown, limit = MAX_JSON_DEPTH): number {
  let deepest = 0;
  const stack: Array<[unknown, number]> = [[value, 0]];
  while (stack.length) {
    const [v, d] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    deepest = Math.max(deepest, d + 1);
    if (deepest > limit) return deepest;
    for (const child of Object.values(v)) stack.push([child, d + 1]);
  }
  return deepest;
}

/**
 * Parses JSON text (a leading UTF-8 byte-order mark is dropped) or throws one UsageError line:
 * `<source>: not valid JSON (<why>)` or `<source>: JSON nested deeper than 64 levels`, each
 * followed by `; expected <expected>` when given.
 */
export function parseJson(text: string, source: string, expected?: string): unknown {
  const tail = expected ? `; expected ${expected}.` : '.';
  let value: unknown;
  try {
    value = JSON.parse(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text);
  } catch (err) {
    throw new UsageError(`${source}: not valid JSON (${oneLine((err as Error).message)})${tail}`);
  }
  if (jsonDepth(value) > MAX_JSON_DEPTH) throw new UsageError(`${source}: JSON nested deeper than ${MAX_JSON_DEPTH} levels (no config needs that)${tail}`);
  return value;
}

/** Reads and parses a JSON file: parseJson's rules, plus one line when it cannot be read (or is no regular file). */
export function readJsonFile(file: string, expected?: string): unknown {
  checkRegularFile(file, expected ?? 'a JSON file');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? oneLine(String(err))}).`);
  }
  return parseJson(text, file, expected);
}

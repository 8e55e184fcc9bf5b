/**
 * <run>/classes.json: the classes a run was trained on and one prompt per class, for whoever
 * samples the run without prompts (the closing sheet of `train all`, `sdlab sample`'s default).
 * The UNet trainer writes it for a run whose captions are not the digits'; a digit run has none,
 * so readers fall back on the digit prompts.
 *
 *   {"captions": "classes", "classes": ["t-shirt", ...], "prompts": ["a t-shirt", ...]}
 *   {"captions": "texts",   "classes": ["a red circle", ...], "prompts": ["a red circle", ...]}
 *
 *   const rc = readRunClasses('runs/fashion');   // null for a digit run
 *   rc?.prompts                                   // one prompt per class, label 0 first
 */
import fs from 'node:fs';
import path from 'node:path';
import { UsageError } from '../util/errors.ts';
import { writeFileAtomicSync } from '../util/fs.ts';
import { captionKind, classPrompts } from './captioning.ts';
import type { Dataset } from './types.ts';
import { readJsonFile } from '../util/json.ts';

export const RUN_CLASSES_FILE = 'classes.json';

export interface RunClasses {
  /** How the run's captions were made (src/data/captioning.ts). */
  captions: 'classes' | 'texts';
  /** Class names (or texts), label 0 first. */
  classes: string[];
  /** One prompt per class, label 0 first. */
  prompts: string[];
}

/** What classes.json holds for a dataset: null for digits. */
export function runClassesOf(ds: Pick<Dataset, 'classNames' | 'captions'>): RunClasses | null {
  const kind = captionKind(ds);
  if (kind === 'digits') return null;
  return { captions: kind, classes: [...ds.classNames!], prompts: classPrompts(ds) };
}

/** Writes <run>/classes.json for `ds` (atomically), or removes a stale one for a digit run. */
export function writeRunClasses(runDir: string, ds: Pick<Dataset, 'classNames' | 'captions'>): void {
  const file = path.join(runDir, RUN_CLASSES_FILE);
  const rc = runClassesOf(ds);
  if (!rc) {
    fs.rmSync(file, { force: true });
    return;
  }
  fs.mkdirSync(runDir, { recursive: true });
  writeFileAtomicSync(file, JSON.stringify(rc, null, 1) + '\n');
}

/**
 * The classes and prompts a run was trained on (<run>/classes.json), or null when the run has
 * none (a digit run: sample the digit prompts). A broken file is one UsageError naming it.
 */
export function readRunClasses(runDir: string): RunClasses | null {
  const file = path.join(runDir, RUN_CLASSES_FILE);
  if (!fs.existsSync(file)) return null;
  const bad = (why: string): never => {
    throw new UsageError(`${file}: ${why}; expected {"captions": "classes"|"texts", "classes": [...], "prompts": [...]} (written by sdlab train unet).`);
  };
  const j = readJsonFile(file, 'the classes of a run (written by sdlab train unet)') as Partial<RunClasses>;
  if (typeof j !== 'object' || j === null) bad('not a JSON object');
  if (j.captions !== 'classes' && j.captions !== 'texts') bad(`"captions" is ${JSON.stringify(j.captions)}`);
  const strings = (v: unknown) => Array.isArray(v) && v.length > 0 && v.every((s) => typeof s === 'string');
  if (!strings(j.classes) || !strings(j.prompts) || j.classes!.length !== j.prompts!.length) bad('"classes" and "prompts" must be lists of strings of the same length');
  return { captions: j.captions!, classes: j.classes!, prompts: j.prompts! };
}

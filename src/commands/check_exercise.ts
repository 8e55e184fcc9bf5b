/**
 * `sdlab check-exercise <name> <file.ts>`: grades a learner's exercise against sdlab's own
 * implementation (src/exercises/), printing a PASS/FAIL line per check and hints.
 *
 *   npx sdlab check-exercise add_noise notebooks/exercises/add_noise.ts
 *   npm run check-exercise -- attention my/attention.ts
 *
 * The file is imported as it is (the CLI runs under tsx, so TypeScript works) and must export the
 * function the exercise names (addNoise for add_noise, …: `npx sdlab check-exercise --list`).
 * Exit code 0 when every check passes, 1 when one fails, 2 on a usage error (unknown exercise,
 * missing file or export, a file that does not load).
 */
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Command } from 'commander';
import { selectBackend, BACKEND_HELP } from '../backend/index.ts';
import { UsageError } from '../util/errors.ts';
import { EXERCISES, checkExercise, findExercise } from '../exercises/index.ts';

/** The repository root: learners' files inside it load as ES modules with its node_modules. */
const ROOT = path.resolve(import.meta.dirname, '../..');

/** The export `exportName` of the learner's module `file`; UsageError when the file or the export is missing. */
export async function loadLearnerFunction(file: string, exportName: string): Promise<unknown> {
  const abs = path.resolve(file);
  if (!fs.existsSync(abs) || !fs.statSync(abs).isFile()) throw new UsageError(`${file}: no such file.`);
  let mod: Record<string, unknown>;
  try {
    mod = (await import(pathToFileURL(abs).href)) as Record<string, unknown>;
  } catch (err) {
    const message = (err instanceof Error ? err.message : String(err)).split('\n')[0];
    const outside = !abs.startsWith(ROOT + path.sep) || /Cannot find (package|module) '@tensorflow\/tfjs'/.test(message)
      ? ' (put the file inside the sdlab folder, e.g. in notebooks/exercises/, so that it loads as an ES module and finds sdlab\'s @tensorflow/tfjs)'
      : '';
    throw new UsageError(`${file} does not load: ${message}${outside}`);
  }
  if (!(exportName in mod)) {
    const names = Object.keys(mod);
    throw new UsageError(`${file} has no export named ${exportName} (it exports ${names.length ? names.join(', ') : 'nothing'}); write \`export function ${exportName}(…)\`.`);
  }
  return mod[exportName];
}

function listExercises(): string {
  return EXERCISES.map((e) => `  ${e.name.padEnd(14)} ${e.exportName.padEnd(24)} notebook ${e.notebook}`).join('\n');
}

export function register(program: Command): void {
  program
    .command('check-exercise')
    .description('grade a course exercise (notebooks/exercises/): run your function against sdlab\'s and explain the differences')
    .argument('[name]', `the exercise: ${EXERCISES.map((e) => e.name).join(', ')}`)
    .argument('[file]', 'your TypeScript file exporting the function (e.g. notebooks/exercises/add_noise.ts)')
    .option('--list', 'list the exercises and the function each one asks for')
    .option('--backend <name>', BACKEND_HELP, process.env.SDLAB_BACKEND ?? 'auto')
    .action(async (name: string | undefined, file: string | undefined, o: { list?: boolean; backend: string }) => {
      if (o.list) {
        console.log(listExercises());
        return;
      }
      if (!name || !file) throw new UsageError(`usage: sdlab check-exercise <name> <file.ts> (exercises: ${EXERCISES.map((e) => e.name).join(', ')}).`);
      const ex = findExercise(name);
      const fn = await loadLearnerFunction(file, ex.exportName);
      await selectBackend(o.backend);
      const report = await checkExercise(name, fn as (...args: unknown[]) => unknown);
      process.exitCode = report.passed ? 0 : 1;
    });
}

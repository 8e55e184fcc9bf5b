/**
 * Graded exercises: `checkExercise(name, fn)` grades a learner's function against sdlab's own
 * implementation (./grader.ts runs the checks, ./exercises.ts holds the six exercises).
 *
 *   import { checkExercise, EXERCISES } from 'sdlab';
 *   const report = await checkExercise('attention', attention);   // PASS/FAIL per check, hints
 *
 *   npx sdlab check-exercise attention notebooks/exercises/attention.ts
 *
 * Stubs to fill in: notebooks/exercises/<name>.ts; reference solutions beside them in solutions/.
 */
import { type Exercise, type ExerciseReport, exerciseByName, runChecks } from './grader.ts';
import { EXERCISES } from './exercises.ts';

export { EXERCISES } from './exercises.ts';
export { RTOL, ATOL, type Exercise, type ExerciseReport, type CheckResult } from './grader.ts';

export interface CheckExerciseOptions {
  /** Where the PASS/FAIL lines go (default console.log); `() => {}` for silence. */
  log?: (line: string) => void;
}

/** The exercise called `name`; throws a UsageError naming the known ones otherwise. */
export function findExercise(name: string): Exercise {
  return exerciseByName(EXERCISES, name);
}

/**
 * Grades `fn` as the exercise `name`: every check on seeded random inputs, a PASS/FAIL line per
 * check and, on failure, a hint. Never throws on a mistake in `fn` (only on an unknown name).
 */
export async function checkExercise(name: string, fn: Function, opts: CheckExerciseOptions = {}): Promise<ExerciseReport> {
  return runChecks(findExercise(name), fn, opts.log ?? ((line) => console.log(line)));
}

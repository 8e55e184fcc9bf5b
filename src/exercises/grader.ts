/**
 * The grader of the course exercises (notebooks/exercises/): runs a learner's function and sdlab's
 * own implementation on the same seeded random inputs, compares shapes, dtypes, values and (where
 * the function is differentiated in training) gradients, and when they differ says why, by
 * recognising the usual mistakes.
 *
 *   import { checkExercise } from 'sdlab';
 *   const report = await checkExercise('add_noise', addNoise);   // prints a PASS/FAIL line per check
 *   report.passed;                                                // true when every check passes
 *
 *   npx sdlab check-exercise add_noise notebooks/exercises/add_noise.ts   (src/commands/check_exercise.ts)
 *
 * How a check decides: the learner's output must have the reference's shape, be float32 and
 * satisfy max|yours − expected| ≤ RTOL · max|expected| + ATOL. On a difference the grader computes
 * each known mistake of that exercise (./exercises.ts: "ᾱ_t indexed at t+1", "1/d instead of
 * 1/√d", …) on the same inputs; if the learner's output matches one, its hint is the diagnosis,
 * otherwise the exercise's general hint restates the formula. A learner's exception, a missing
 * return or a non-tensor result is a failed check with its message, never a crash of the grader.
 */
import * as tf from '@tensorflow/tfjs';
import { UsageError } from '../util/errors.ts';
import { Random } from '../util/random.ts';

/** Relative tolerance of every value and gradient comparison (float32 work in another op order is ~1e-6). */
export const RTOL = 1e-4;
/** Absolute slack added to RTOL · max|expected|. */
export const ATOL = 1e-6;

/** One check's outcome. */
export interface CheckResult {
  /** What was checked, e.g. "values: batch 3 of 5×7×2, t = [0, 250, 998]". */
  name: string;
  passed: boolean;
  /** Why it failed (the error measured, the exception's message), or what matched. */
  detail: string;
  /** On failure: what is probably wrong, and how to fix it. */
  hint?: string;
}

/** What checkExercise returns. */
export interface ExerciseReport {
  exercise: string;
  /** The name of the function the exercise asks for (addNoise, ddimStep, …). */
  exportName: string;
  /** True when every check passed. */
  passed: boolean;
  checks: CheckResult[];
}

/** A common wrong version of the function: what it returns, and the hint that explains it. */
export interface Mistake<A extends unknown[]> {
  hint: string;
  wrong: (...args: A) => tf.Tensor;
}

/** One set of inputs the function is called on. */
export interface ExerciseCase<A extends unknown[]> {
  /** Shown in the PASS/FAIL line: the shapes and the other arguments. */
  name: string;
  /** Builds the inputs from a seeded generator (the same every run). */
  inputs: (rng: Random) => A;
}

/** A gradient check: the gradients of some scalar of the function, the learner's against the reference's. */
export interface GradientCheck<A extends unknown[]> {
  /** What is differentiated, e.g. "d/dx0 and d/dε". */
  what: string;
  /** Which case's inputs (index into cases). */
  caseIndex: number;
  /** The gradients of `f` (the learner's function or the reference) at `args`. */
  grads: (f: (...args: A) => tf.Tensor, args: A) => tf.Tensor[];
  /** The reference's gradients, when the reference itself is not differentiable by tf (default: grads(reference, args)). */
  referenceGrads?: (args: A) => tf.Tensor[];
}

/** An exercise: the learner's function, sdlab's reference, the inputs and the known mistakes. */
export interface Exercise<A extends unknown[] = any[]> {
  /** The name on the command line: add_noise, ddim_step, … */
  name: string;
  /** The export the learner's file must have: addNoise, ddimStep, … */
  exportName: string;
  /** The TypeScript signature the learner implements. */
  signature: string;
  /** One line: what the function computes. */
  description: string;
  /** Where sdlab's own implementation lives (file : function). */
  reference: string;
  /** The notebook it belongs with (notebooks/exercises/<name>.ts is the stub). */
  notebook: string;
  /** What the checks cover, in words (the table's "checks" column). */
  checks: string;
  cases: ExerciseCase<A>[];
  /** sdlab's answer on one case's inputs. */
  expected: (...args: A) => tf.Tensor;
  gradient?: GradientCheck<A>;
  mistakes: Mistake<A>[];
  /** Said when the output is wrong and no known mistake matches: the formula, restated. */
  generalHint: string;
  /** Hints for exceptions whose message matches (e.g. a broadcast error: reshape the per-item coefficients). */
  errorHints?: Array<[RegExp, string]>;
}

// ---------------------------------------------------------------------------------------------
// comparing tensors

/** True for a tfjs tensor (duck-typed, so a tensor from another copy of tfjs is recognised too). */
export function isTensor(x: unknown): x is tf.Tensor {
  return typeof x === 'object' && x !== null && Array.isArray((x as tf.Tensor).shape) && typeof (x as tf.Tensor).dataSync === 'function';
}

const fmtShape = (s: readonly number[]) => `[${s.join(', ')}]`;
const fmt = (x: number) => (Number.isFinite(x) ? Number(x.toPrecision(3)).toString() : String(x));

/** max|a − b| (NaN where one is NaN and the other is not), and max|b|. */
function errorOf(a: tf.Tensor, b: tf.Tensor): { err: number; scale: number } {
  const x = a.dataSync();
  const y = b.dataSync();
  let err = 0;
  let scale = 0;
  for (let i = 0; i < y.length; i++) {
    const bothNaN = Number.isNaN(x[i]) && Number.isNaN(y[i]);
    const d = bothNaN ? 0 : Math.abs(x[i] - y[i]);
    err = Number.isNaN(d) || Number.isNaN(err) ? NaN : Math.max(err, d);
    if (Number.isFinite(y[i])) scale = Math.max(scale, Math.abs(y[i]));
  }
  return { err, scale };
}

/** Same shape and values within RTOL · max|expected| + ATOL. */
export function closeTo(actual: tf.Tensor, expected: tf.Tensor): boolean {
  if (!tf.util.arraysEqual(actual.shape, expected.shape)) return false;
  const { err, scale } = errorOf(actual, expected);
  return err <= RTOL * scale + ATOL;
}

/** Why `actual` is not `expected`, in one phrase (null when it is close enough). */
function difference(actual: unknown, expected: tf.Tensor, what: string): string | null {
  if (!isTensor(actual)) {
    const got = actual === undefined ? 'undefined (a missing return?)' : actual instanceof Promise ? 'a Promise' : typeof actual;
    return `expected ${what} to be a tf.Tensor, got ${got}`;
  }
  if (!tf.util.arraysEqual(actual.shape, expected.shape)) return `${what} has shape ${fmtShape(actual.shape)}, expected ${fmtShape(expected.shape)}`;
  if (actual.dtype !== 'float32') return `${what} has dtype ${actual.dtype}, expected float32`;
  const { err, scale } = errorOf(actual, expected);
  if (err <= RTOL * scale + ATOL) return null;
  if (Number.isNaN(err)) return `${what} has NaN where the expected values are numbers`;
  return `max |yours − expected| = ${fmt(err)} in ${what} (allowed ${fmt(RTOL * scale + ATOL)}; max |expected| = ${fmt(scale)})`;
}

/** The indices of the mistakes whose output `actual` reproduces. */
function matchingMistakes<A extends unknown[]>(ex: Exercise<A>, args: A, actual: tf.Tensor): number[] {
  const found: number[] = [];
  ex.mistakes.forEach((m, i) => {
    try {
      if (tf.tidy(() => closeTo(actual, m.wrong(...args)))) found.push(i);
    } catch {
      // a mistake that cannot be formed on these inputs does not match
    }
  });
  return found;
}

/** The hint for a result that is not a tensor. */
function notATensorHint(actual: unknown): string {
  return actual instanceof Promise
    ? 'return the tensor itself: the function is synchronous (no async, no await).'
    : 'the function must return its result as a tf.Tensor (did you forget `return`?).';
}

/** The hint for an exception thrown by the learner's code. */
function hintForError<A extends unknown[]>(ex: Exercise<A>, message: string): string {
  if (/^TODO/.test(message)) return `not implemented yet: replace the TODO in ${ex.exportName} with your code.`;
  for (const [re, hint] of ex.errorHints ?? []) if (re.test(message)) return hint;
  return `your ${ex.exportName} threw an error on these inputs; ${ex.generalHint}`;
}

// ---------------------------------------------------------------------------------------------
// running the checks

type AnyFn = (...args: any[]) => unknown;

/** A check's result, with the mistakes its output matched (values checks). */
type Checked = CheckResult & { matches?: number[] };

/** The values check of one case. */
function checkValues<A extends unknown[]>(ex: Exercise<A>, fn: AnyFn, c: ExerciseCase<A>, seed: string): Checked {
  const name = `values: ${c.name}`;
  return tf.tidy(() => {
    const args = c.inputs(new Random(seed));
    const expected = ex.expected(...args);
    let actual: unknown;
    try {
      actual = fn(...args);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      return { name, passed: false, detail: `threw: ${message}`, hint: hintForError(ex, message) };
    }
    if (actual instanceof Promise) actual.catch(() => {}); // an async function's rejection is reported as its result, not thrown later
    const diff = difference(actual, expected, 'the result');
    if (diff === null) return { name, passed: true, detail: '' };
    if (!isTensor(actual)) return { name, passed: false, detail: diff, hint: notATensorHint(actual) };
    return { name, passed: false, detail: diff, matches: matchingMistakes(ex, args, actual) };
  });
}

/**
 * The hints of the failed values checks: the mistake that explains the most of them wherever it
 * matches (a mistake can coincide with another on one input, rarely on several), else each
 * check's first match, else the exercise's general hint.
 */
function assignHints(ex: Exercise, checks: Checked[]): void {
  const votes = new Map<number, number>();
  for (const c of checks) for (const i of c.matches ?? []) votes.set(i, (votes.get(i) ?? 0) + 1);
  const best = [...votes.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0])[0]?.[0];
  for (const c of checks) {
    if (c.passed || c.hint || !c.matches) continue;
    const i = best !== undefined && c.matches.includes(best) ? best : c.matches[0];
    c.hint = i === undefined ? ex.generalHint : ex.mistakes[i].hint;
  }
}

/** The gradient check: the learner's gradients against the reference's on one case. */
function checkGradients<A extends unknown[]>(ex: Exercise<A>, fn: AnyFn, g: GradientCheck<A>, seed: string, valuesPassed: boolean): CheckResult {
  const c = ex.cases[g.caseIndex];
  const name = `gradients ${g.what}: ${c.name}`;
  return tf.tidy(() => {
    const args = c.inputs(new Random(seed));
    const expected = g.referenceGrads ? g.referenceGrads(args) : g.grads(ex.expected, args);
    let actual: tf.Tensor[];
    try {
      actual = g.grads(fn as (...a: A) => tf.Tensor, args);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      if (/^TODO/.test(message)) return { name, passed: false, detail: `threw: ${message}`, hint: hintForError(ex, message) };
      return {
        name,
        passed: false,
        detail: `tf.grads failed: ${message}`,
        hint: !valuesPassed ? 'wrong values give wrong gradients: fix the values on this case first.' :
          'no gradient flows through your function: build the result from tf ops on the input tensors ' +
          '(no dataSync()/arraySync()/tf.tensor(...) of computed numbers in between, which cut the tape), ' +
          'so training can differentiate it.',
      };
    }
    for (let i = 0; i < expected.length; i++) {
      const diff = difference(actual[i], expected[i], `gradient ${i + 1} of ${expected.length}`);
      if (diff !== null) {
        const hint = valuesPassed
          ? 'the values are right but the gradients are not: part of your function is cut from the tape ' +
            '(tf.stopGradient, a tensor built from computed numbers) or changes only the derivative.'
          : 'wrong values give wrong gradients: fix the values on this case first.';
        return { name, passed: false, detail: diff, hint };
      }
    }
    return { name, passed: true, detail: '' };
  });
}

/**
 * Runs a check; anything the learner's code breaks later (a result it disposed, inputs it
 * disposed, a tensor-like that is not one) becomes a failed check instead of a crash.
 */
function guarded(name: string, check: () => Checked): Checked {
  try {
    return check();
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    return { name, passed: false, detail: `could not compare your result: ${message}`, hint: 'return a new tensor and leave the inputs as they are (do not dispose them or the result).' };
  }
}

/** A registry of exercises by name (./exercises.ts fills it). */
export function exerciseByName(exercises: readonly Exercise[], name: string): Exercise {
  const ex = exercises.find((e) => e.name === name);
  if (!ex) throw new UsageError(`unknown exercise "${name}" (known: ${exercises.map((e) => e.name).join(', ')}).`);
  return ex;
}

/** Runs every check of `ex` on `fn` and prints a line per check through `log`. */
export function runChecks(ex: Exercise, fn: unknown, log: (line: string) => void): ExerciseReport {
  log(`${ex.name}: ${ex.exportName} — ${ex.description}`);
  const checks: CheckResult[] = [];
  if (typeof fn !== 'function') {
    const got = fn === undefined ? 'undefined' : typeof fn;
    checks.push({ name: 'is a function', passed: false, detail: `expected a function ${ex.exportName}, got ${got}`, hint: `export it as \`export function ${ex.exportName}${ex.signature}\`.` });
  } else {
    const f = fn as AnyFn;
    const values = ex.cases.map((c, i) => guarded(`values: ${c.name}`, () => checkValues(ex, f, c, `${ex.name}:${i}`)));
    assignHints(ex, values);
    checks.push(...values.map(({ matches: _, ...c }) => c));
    const g = ex.gradient;
    if (g) checks.push(guarded(`gradients ${g.what}`, () => checkGradients(ex, f, g, `${ex.name}:${g.caseIndex}`, values[g.caseIndex].passed)));
  }
  const shown = new Set<string>();
  for (const c of checks) {
    log(`  ${c.passed ? 'PASS' : 'FAIL'}  ${c.name}${c.passed ? '' : `\n        ${c.detail}`}`);
    if (c.hint) {
      log(shown.has(c.hint) ? '        hint: (the same as above)' : `        hint: ${c.hint}`);
      shown.add(c.hint);
    }
  }
  const passed = checks.every((c) => c.passed);
  const n = checks.filter((c) => c.passed).length;
  log(passed ? `${ex.name}: all ${n} checks passed.` : `${ex.name}: ${n} of ${checks.length} checks passed.`);
  return { exercise: ex.name, exportName: ex.exportName, passed, checks };
}

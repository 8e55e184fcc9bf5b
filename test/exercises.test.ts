/**
 * The graded exercises (src/exercises/, notebooks/exercises/): the grader passes every reference
 * solution and fails every TODO stub; learner-style wrong implementations fail with the hint that
 * names their mistake; every mistake in the table is recognised as itself (no other mistake
 * shadows it); a non-differentiable implementation fails the gradient check only; the CLI's exit
 * codes (0 pass, 1 fail, 2 usage).
 *
 *   npx vitest run test/exercises.test.ts
 */
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { beforeAll, describe, expect, it } from 'vitest';
import { registerNativeBackend } from '../src/backend/native.ts';
import { EXERCISES, checkExercise, type ExerciseReport } from '../src/exercises/index.ts';
import { UsageError } from '../src/util/errors.ts';
import * as addNoiseStub from '../notebooks/exercises/add_noise.ts';
import * as infoNceStub from '../notebooks/exercises/info_nce.ts';
import * as attentionStub from '../notebooks/exercises/attention.ts';
import * as trainingLossStub from '../notebooks/exercises/training_loss.ts';
import * as ddimStepStub from '../notebooks/exercises/ddim_step.ts';
import * as guidanceStub from '../notebooks/exercises/guidance.ts';
import * as addNoiseSolution from '../notebooks/exercises/solutions/add_noise.ts';
import * as infoNceSolution from '../notebooks/exercises/solutions/info_nce.ts';
import * as attentionSolution from '../notebooks/exercises/solutions/attention.ts';
import * as trainingLossSolution from '../notebooks/exercises/solutions/training_loss.ts';
import * as ddimStepSolution from '../notebooks/exercises/solutions/ddim_step.ts';
import * as guidanceSolution from '../notebooks/exercises/solutions/guidance.ts';

const ROOT = path.resolve(import.meta.dirname, '..');

/** The files of notebooks/exercises/ by exercise name (imported statically, so `npm run typecheck` checks them too). */
const files: Record<string, [stub: Record<string, unknown>, solution: Record<string, unknown>]> = {
  add_noise: [addNoiseStub, addNoiseSolution],
  info_nce: [infoNceStub, infoNceSolution],
  attention: [attentionStub, attentionSolution],
  training_loss: [trainingLossStub, trainingLossSolution],
  ddim_step: [ddimStepStub, ddimStepSolution],
  guidance: [guidanceStub, guidanceSolution],
};
const run = promisify(execFile);
const quiet = { log: () => {} };

beforeAll(async () => {
  await tf.setBackend(registerNativeBackend() ? 'native' : 'cpu');
});

/** The hints of the failed checks. */
const hints = (r: ExerciseReport) => r.checks.filter((c) => !c.passed).map((c) => c.hint ?? '');

/** ᾱ per item, shaped [B, 1, …, 1], from a learner's chosen indices (the way a learner writes it). */
const perItem = (ac: ArrayLike<number>, idx: number[], rank: number) =>
  tf.tensor(idx.map((i) => ac[i] ?? NaN), [idx.length, ...Array(rank - 1).fill(1)]);

describe('the grader on the files learners get', () => {
  it('passes every reference solution, fails every stub (with the "not implemented" hint), and leaks no tensor', async () => {
    const before = tf.memory().numTensors;
    for (const ex of EXERCISES) {
      const lines: string[] = [];
      const [stubModule, solutionModule] = files[ex.name];
      const solved = await checkExercise(ex.name, solutionModule[ex.exportName] as () => unknown, { log: (l) => lines.push(l) });
      expect(solved.passed, `${ex.name}:\n${lines.join('\n')}`).toBe(true);
      expect(lines.filter((l) => l.includes('PASS'))).toHaveLength(solved.checks.length);
      expect(solved.checks.length).toBeGreaterThanOrEqual(3);

      const stub = await checkExercise(ex.name, stubModule[ex.exportName] as () => unknown, quiet);
      expect(stub.passed).toBe(false);
      expect(stub.checks.every((c) => !c.passed)).toBe(true);
      expect(hints(stub).every((h) => h.startsWith('not implemented yet'))).toBe(true);
    }
    expect(tf.memory().numTensors).toBe(before);
  });

  it('every exercise names its export, reference and checks; an unknown name is a UsageError listing the known ones', async () => {
    expect(EXERCISES.map((e) => e.name)).toEqual(['add_noise', 'info_nce', 'attention', 'training_loss', 'ddim_step', 'guidance']);
    expect(EXERCISES.map((e) => e.exportName)).toEqual(['addNoise', 'infoNCE', 'attention', 'noisePredictionLoss', 'ddimStep', 'classifierFreeGuidance']);
    for (const ex of EXERCISES) expect(ex.reference && ex.description && ex.checks).toBeTruthy();
    // Gradients are checked where the function is differentiated in training.
    expect(EXERCISES.filter((e) => e.gradient).map((e) => e.name).sort()).toEqual(['add_noise', 'attention', 'info_nce', 'training_loss']);
    await expect(checkExercise('addnoise', () => 0, quiet)).rejects.toThrow(UsageError);
    await expect(checkExercise('addnoise', () => 0, quiet)).rejects.toThrow(/known: add_noise, info_nce/);
  });
});

describe('learner-style mistakes fail with the hint that names them', () => {
  it('add_noise: ᾱ indexed at t+1', async () => {
    const addNoise = (x0: tf.Tensor, noise: tf.Tensor, ac: ArrayLike<number>, t: number[]) => {
      const a = perItem(ac, t.map((ti) => ti + 1), x0.rank);
      return tf.add(tf.mul(tf.sqrt(a), x0), tf.mul(tf.sqrt(tf.sub(1, a)), noise));
    };
    const r = await checkExercise('add_noise', addNoise, quiet);
    expect(r.passed).toBe(false);
    expect(hints(r)[0]).toMatch(/your ᾱ_t is indexed at t\+1/);
  });

  it('add_noise: ᾱ_t instead of √ᾱ_t; swapped coefficients; one t for the whole batch', async () => {
    const variants: Array<[string, (a: tf.Tensor, x0: tf.Tensor, n: tf.Tensor) => tf.Tensor, RegExp]> = [
      ['no sqrt', (a, x0, n) => tf.add(tf.mul(a, x0), tf.mul(tf.sqrt(tf.sub(1, a)), n)), /ᾱ_t instead of √ᾱ_t/],
      ['swapped', (a, x0, n) => tf.add(tf.mul(tf.sqrt(tf.sub(1, a)), x0), tf.mul(tf.sqrt(a), n)), /swapped the signal and noise/],
    ];
    for (const [, formula, hint] of variants) {
      const r = await checkExercise('add_noise', (x0: tf.Tensor, n: tf.Tensor, ac: ArrayLike<number>, t: number[]) => formula(perItem(ac, t, x0.rank), x0, n), quiet);
      expect(hints(r)[0]).toMatch(hint);
    }
    const oneT = (x0: tf.Tensor, n: tf.Tensor, ac: ArrayLike<number>, t: number[]) =>
      tf.add(tf.mul(Math.sqrt(ac[t[0]]), x0), tf.mul(Math.sqrt(1 - ac[t[0]]), n));
    const r = await checkExercise('add_noise', oneT, quiet);
    expect(r.checks[0].passed).toBe(true); // one image: one t is right
    expect(hints(r)[0]).toMatch(/first timestep for every item/);
  });

  it('add_noise: right values through dataSync() fail only the gradient check, which says why', async () => {
    const viaArrays = (x0: tf.Tensor, noise: tf.Tensor, ac: ArrayLike<number>, t: number[]) => {
      const x = x0.dataSync();
      const n = noise.dataSync();
      const per = x.length / t.length;
      const out = x.map((v, i) => Math.sqrt(ac[t[Math.floor(i / per)]]) * v + Math.sqrt(1 - ac[t[Math.floor(i / per)]]) * n[i]);
      return tf.tensor(out, x0.shape);
    };
    const r = await checkExercise('add_noise', viaArrays, quiet);
    expect(r.checks.map((c) => c.passed)).toEqual([true, true, true, false]);
    expect(r.checks[3].hint).toMatch(/no gradient flows/);
  });

  it('add_noise: tf.tensor(alphasCumprod) on a Float64Array is explained', async () => {
    const r = await checkExercise('add_noise', (x0: tf.Tensor, n: tf.Tensor, ac: ArrayLike<number>, t: number[]) => tf.gather(tf.tensor(ac as Float32Array), t), quiet);
    expect(hints(r)[0]).toMatch(/does not take a Float64Array/);
  });

  it('attention: 1/d instead of 1/√d; softmax over the queries', async () => {
    const scaledBy = (scale: (d: number) => number, axis = -1) => (q: tf.Tensor3D, k: tf.Tensor3D, v: tf.Tensor3D) => {
      const scores = tf.mul(tf.matMul(q, k, false, true), scale(q.shape[2]));
      const w = axis === -1 ? tf.softmax(scores) : tf.transpose(tf.softmax(tf.transpose(scores, [0, 2, 1])), [0, 2, 1]);
      return tf.matMul(w, v);
    };
    expect(hints(await checkExercise('attention', scaledBy((d) => 1 / d), quiet))[0]).toMatch(/scale by 1\/√d, not 1\/d/);
    expect(hints(await checkExercise('attention', scaledBy((d) => 1 / Math.sqrt(d), 1), quiet))[0]).toMatch(/softmax over the keys axis \(last\), not the queries/);
  });

  it('info_nce: only one direction; forgot exp(logitScale)', async () => {
    const loss = (o: { exp: boolean; both: boolean }) => (img: tf.Tensor2D, txt: tf.Tensor2D, s: number) => {
      const norm = (x: tf.Tensor2D) => tf.div(x, tf.norm(x, 'euclidean', 1, true));
      const logits = tf.mul(tf.matMul(norm(img), norm(txt), false, true), o.exp ? Math.exp(s) : s);
      const labels = tf.oneHot(tf.range(0, img.shape[0], 1, 'int32'), img.shape[0]);
      const i2t = tf.losses.softmaxCrossEntropy(labels, logits);
      return o.both ? tf.div(tf.add(i2t, tf.losses.softmaxCrossEntropy(labels, tf.transpose(logits))), 2) : i2t;
    };
    expect(hints(await checkExercise('info_nce', loss({ exp: true, both: false }), quiet))[0]).toMatch(/only one direction/);
    const noExp = hints(await checkExercise('info_nce', loss({ exp: false, both: true }), quiet))[0];
    expect(noExp).toMatch(/forgot exp\(logitScale\)/);
    expect(noExp).toMatch(/below ln 100/); // the cap of clipLoss is named, and why it does not matter here
  });

  it('training_loss: the target is ε, not x0; sum instead of mean', async () => {
    const loss = (target: 'x0' | 'noise', reduce: 'mean' | 'sum') =>
      (predict: (xt: tf.Tensor, t: number[]) => tf.Tensor, x0: tf.Tensor, noise: tf.Tensor, ac: ArrayLike<number>, t: number[]) => {
        const a = perItem(ac, t, x0.rank);
        const xt = tf.add(tf.mul(tf.sqrt(a), x0), tf.mul(tf.sqrt(tf.sub(1, a)), noise));
        const sq = tf.square(tf.sub(predict(xt, t), target === 'x0' ? x0 : noise));
        return reduce === 'sum' ? tf.sum(sq) : tf.mean(sq);
      };
    expect(hints(await checkExercise('training_loss', loss('x0', 'mean'), quiet))[0]).toMatch(/target is ε, not x0/);
    expect(hints(await checkExercise('training_loss', loss('noise', 'sum'), quiet))[0]).toMatch(/mean of the squared errors, not the sum/);
  });

  it('ddim_step: x0 with 1−ᾱ_t; guidance: g added to cond', async () => {
    const ddim = (e: tf.Tensor, x: tf.Tensor, a: number, p: number) => {
      const x0 = tf.div(tf.sub(x, tf.mul(1 - a, e)), Math.sqrt(a));
      return tf.add(tf.mul(Math.sqrt(p), x0), tf.mul(Math.sqrt(1 - p), e));
    };
    expect(hints(await checkExercise('ddim_step', ddim, quiet))[0]).toMatch(/x0 uses √\(1−ᾱ_t\)/);
    const cfg = (u: tf.Tensor, c: tf.Tensor, g: number) => tf.add(c, tf.mul(g, tf.sub(c, u)));
    expect(hints(await checkExercise('guidance', cfg, quiet))[0]).toMatch(/g multiplies \(cond − uncond\) and is added to uncond/);
  });

  it('not a tensor, an async function, not a function, a disposed result: failed checks with a message, never a throw', async () => {
    const r1 = await checkExercise('guidance', () => undefined, quiet);
    expect(r1.checks[0].detail).toMatch(/got undefined/);
    expect(r1.checks[0].hint).toMatch(/forget `return`/);
    const r2 = await checkExercise('guidance', async () => { throw new Error('boom'); }, quiet);
    expect(r2.checks[0].hint).toMatch(/synchronous/);
    const r3 = await checkExercise('guidance', 42 as unknown as () => void, quiet);
    expect(r3.passed).toBe(false);
    expect(r3.checks[0].detail).toMatch(/expected a function classifierFreeGuidance/);
    const disposesResult = (u: tf.Tensor, c: tf.Tensor) => {
      const y = tf.add(u, c);
      y.dispose();
      return y;
    };
    const r4 = await checkExercise('guidance', disposesResult, quiet);
    expect(r4.checks[0].detail).toMatch(/could not compare your result: Tensor is disposed/);
  });

  it('every mistake of the table is recognised as itself somewhere (none is shadowed by another)', async () => {
    for (const ex of EXERCISES) {
      for (const m of ex.mistakes) {
        const r = await checkExercise(ex.name, m.wrong, quiet);
        expect(r.passed, `${ex.name}: ${m.hint}`).toBe(false);
        expect(hints(r), `${ex.name}: ${m.hint}`).toContain(m.hint);
      }
    }
  });
});

describe('sdlab check-exercise', () => {
  const sdlab = (...args: string[]) =>
    run(process.execPath, [path.join(ROOT, 'bin/sdlab.mjs'), 'check-exercise', ...args], { cwd: ROOT, encoding: 'utf8' })
      .then((r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }))
      .catch((e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }));

  it('exits 0 when every check passes, 1 when one fails, 2 on a usage error', async () => {
    const [pass, fail, unknown, noExport] = await Promise.all([
      sdlab('guidance', 'notebooks/exercises/solutions/guidance.ts'),
      sdlab('guidance', 'notebooks/exercises/guidance.ts'),
      sdlab('cfg', 'notebooks/exercises/guidance.ts'),
      sdlab('guidance', 'notebooks/exercises/attention.ts'),
    ]);
    expect(pass.code, pass.stderr).toBe(0);
    expect(pass.stdout).toMatch(/PASS {2}values: .*g = 7\.5/);
    expect(pass.stdout).toMatch(/guidance: all 4 checks passed/);
    expect(fail.code).toBe(1);
    expect(fail.stdout).toMatch(/FAIL {2}values/);
    expect(fail.stdout).toMatch(/hint: not implemented yet/);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr.trim()).toBe('sdlab: error: unknown exercise "cfg" (known: add_noise, info_nce, attention, training_loss, ddim_step, guidance).');
    expect(noExport.code).toBe(2);
    expect(noExport.stderr).toMatch(/has no export named classifierFreeGuidance \(it exports attention\)/);
  });
});

/**
 * The training harness (src/train/): AdamW against tfjs's Adam (no weight decay) and against a
 * float64 transcription of torch.optim.AdamW; the learning-rate schedule against diffusers'
 * closed forms; gradient clipping; and the loop itself on a toy regression — it learns, a run
 * stopped mid-epoch (by step count or by an abort signal) and resumed ends with bit-identical
 * parameters and optimizer moments, a NaN loss stops with the last good state saved and an
 * error naming the step, and resume refuses changed settings.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { AdamW, clipGradNorm, learningRate, type LrSchedule } from '../src/train/optimizer.ts';
import { train, TrainingError, type TrainOptions, type TrainTask } from '../src/train/trainer.ts';
import { readSafetensors } from '../src/io/safetensors.ts';
import { readStateInfo, statePath } from '../src/train/state.ts';
import { epochOrder } from '../src/data/index.ts';
import { Random } from '../src/util/random.ts';

let tmp: string;
beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-train-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------
// AdamW

/** A small quadratic-ish loss with a different gradient every step. */
function lossOf(vars: tf.Variable[], step: number): tf.Scalar {
  return tf.tidy(() => {
    const target = tf.tensor1d([0.3, -1.2, 2.0, 0.5, -0.7, 1.1].map((v) => v * (1 + 0.1 * step)));
    const flat = tf.concat(vars.map((v) => tf.reshape(v, [-1])));
    return tf.add(tf.sum(tf.square(tf.sub(flat, target))), tf.sum(tf.pow(flat, 4))) as tf.Scalar;
  });
}

function makeVars(): tf.Variable[] {
  return [tf.variable(tf.tensor2d([[0.1, -0.2], [0.3, 0.4]])), tf.variable(tf.tensor1d([0.5, -0.6]))];
}

describe('AdamW', () => {
  it('with weight decay 0 matches tfjs Adam step for step', () => {
    const a = makeVars();
    const b = makeVars();
    const ours = new AdamW(a.map((v, i) => [`p${i}`, v]), { weightDecay: 0, beta1: 0.8, beta2: 0.95, eps: 1e-7 });
    const ref = tf.train.adam(0.05, 0.8, 0.95, 1e-7);
    for (let s = 0; s < 6; s++) {
      const ga = tf.variableGrads(() => lossOf(a, s), a);
      ours.applyGradients(ga.grads, 0.05);
      const gb = tf.variableGrads(() => lossOf(b, s), b);
      ref.applyGradients(gb.grads as Record<string, tf.Variable>);
      tf.dispose([ga.value, gb.value, ...Object.values(ga.grads), ...Object.values(gb.grads)]);
    }
    for (let i = 0; i < a.length; i++) {
      const x = a[i].dataSync();
      const y = b[i].dataSync();
      for (let k = 0; k < x.length; k++) expect(x[k]).toBeCloseTo(y[k], 5);
    }
    expect(ours.step).toBe(6);
  });

  it('matches a float64 transcription of torch.optim.AdamW (decoupled weight decay, changing lr)', () => {
    const vars = makeVars();
    const opt = new AdamW(vars.map((v, i) => [`p${i}`, v]), { weightDecay: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8 });
    // Reference state in float64.
    const p = vars.map((v) => Array.from(v.dataSync()));
    const m = p.map((x) => x.map(() => 0));
    const vv = p.map((x) => x.map(() => 0));
    const lrs = [0.01, 0.02, 0.05, 0.03, 0.01];
    lrs.forEach((lr, s) => {
      // Gradients at the reference's current point (computed by tf in float32 at the same values).
      const refVars = p.map((x, i) => tf.variable(tf.tensor(x, vars[i].shape)));
      const { value, grads } = tf.variableGrads(() => lossOf(refVars, s), refVars);
      const g = refVars.map((rv) => Array.from(grads[rv.name].dataSync()));
      tf.dispose([value, ...Object.values(grads), ...refVars]);
      const ours = tf.variableGrads(() => lossOf(vars, s), vars);
      opt.applyGradients(ours.grads, lr);
      tf.dispose([ours.value, ...Object.values(ours.grads)]);
      const t = s + 1;
      for (let i = 0; i < p.length; i++) {
        for (let k = 0; k < p[i].length; k++) {
          p[i][k] = p[i][k] * (1 - lr * 0.1);
          m[i][k] = 0.9 * m[i][k] + 0.1 * g[i][k];
          vv[i][k] = 0.999 * vv[i][k] + 0.001 * g[i][k] ** 2;
          const denom = Math.sqrt(vv[i][k]) / Math.sqrt(1 - 0.999 ** t) + 1e-8;
          p[i][k] = p[i][k] - (lr / (1 - 0.9 ** t)) * (m[i][k] / denom);
        }
      }
    });
    for (let i = 0; i < p.length; i++) {
      const x = vars[i].dataSync();
      for (let k = 0; k < x.length; k++) expect(Math.abs(x[k] - p[i][k])).toBeLessThan(2e-6);
    }
    // Moments are exposed under stable names for checkpoints.
    const st = opt.stateTensors();
    expect([...st.keys()].sort()).toEqual(['exp_avg.p0', 'exp_avg.p1', 'exp_avg_sq.p0', 'exp_avg_sq.p1']);
    expect(st.get('exp_avg_sq.p1')!.data[0]).toBeCloseTo(vv[1][0], 6);
  });

  it('skips parameters without a gradient (like grad=None in PyTorch)', () => {
    const [a, b] = makeVars() as [tf.Variable, tf.Variable];
    const before = b.dataSync().slice();
    const opt = new AdamW([['a', a], ['b', b]], { weightDecay: 0.5 });
    opt.applyGradients([tf.onesLike(a), null], 0.1);
    expect(Array.from(b.dataSync())).toEqual(Array.from(before));
    expect(a.dataSync()[0]).not.toBeCloseTo(0.1, 4);
  });
});

describe('learningRate', () => {
  const s: LrSchedule = { lr: 1, warmupSteps: 10, decay: 'cosine', totalSteps: 110, minLrRatio: 0 };
  it('warms up linearly from 0 (diffusers: lr·step/warmup)', () => {
    expect(learningRate(0, s)).toBe(0);
    expect(learningRate(5, s)).toBeCloseTo(0.5, 12);
    expect(learningRate(10, s)).toBeCloseTo(1, 12);
  });
  it('follows half a cosine to 0, or to the floor minLrRatio', () => {
    expect(learningRate(60, s)).toBeCloseTo(0.5, 12); // halfway: ½(1 + cos(π/2))
    expect(learningRate(35, s)).toBeCloseTo(0.5 * (1 + Math.cos(Math.PI / 4)), 12);
    expect(learningRate(110, s)).toBeCloseTo(0, 12);
    expect(learningRate(60, { ...s, minLrRatio: 0.1 })).toBeCloseTo(0.55, 12);
    expect(learningRate(110, { ...s, minLrRatio: 0.1 })).toBeCloseTo(0.1, 12);
    expect(learningRate(77, { ...s, decay: 'constant' })).toBe(1);
  });
});

describe('clipGradNorm', () => {
  it('computes the global norm and rescales to maxNorm', () => {
    const g = { a: tf.tensor1d([3, 0]), b: tf.tensor1d([0, 4]) }; // norm 5
    const none = clipGradNorm(g, 10);
    expect(none.norm).toBeCloseTo(5, 5);
    expect(none.clipped).toBe(false);
    const c = clipGradNorm(g, 1);
    expect(c.clipped).toBe(true);
    const n2 = tf.tidy(() => tf.sqrt(tf.add(tf.sum(tf.square(c.grads.a!)), tf.sum(tf.square(c.grads.b!)))).dataSync()[0]);
    expect(n2).toBeCloseTo(1, 5);
  });
});

// ---------------------------------------------------------------------------------------------
// The loop, on a toy regression

const N = 40;
const BATCH = 8; // 5 steps per epoch
const X = new Random(1).normalArray(N * 3);
const Y = Float32Array.from({ length: N }, (_, i) => 0.5 * X[3 * i] - 1.5 * X[3 * i + 1] + 2 * X[3 * i + 2] + 0.3);

interface Toy {
  task: TrainTask<{ x: tf.Tensor2D; y: tf.Tensor2D }>;
  w: tf.Variable;
  b: tf.Variable;
  ends: number[];
}

/** A fresh toy task (same initial parameters every time). `nanAt`: the loss of that update is NaN. */
function toy(seed: number, nanAt = -1): Toy {
  const w = tf.variable(tf.tensor2d([[0.1], [-0.1], [0.2]]));
  const b = tf.variable(tf.scalar(0));
  const ends: number[] = [];
  const task: Toy['task'] = {
    name: 'toy',
    params: [['linear.weight', w], ['linear.bias', b]],
    settings: { batch: BATCH },
    stepsPerEpoch: N / BATCH,
    batch: (epoch, i) => {
      const idx = epochOrder(N, { seed, epoch }).subarray(i * BATCH, (i + 1) * BATCH);
      const xs = new Float32Array(BATCH * 3);
      const ys = new Float32Array(BATCH);
      idx.forEach((j, k) => {
        xs.set(X.subarray(3 * j, 3 * j + 3), 3 * k);
        ys[k] = Y[j];
      });
      return { x: tf.tensor2d(xs, [BATCH, 3]), y: tf.tensor2d(ys, [BATCH, 1]) };
    },
    disposeBatch: (bt) => tf.dispose([bt.x, bt.y]),
    loss: (bt, ctx) => {
      // Input noise from the step's generator: resumes must reproduce it too.
      const jitter = tf.mul(tf.tensor2d(ctx.rng.normalArray(BATCH * 3), [BATCH, 3]), 0.05);
      const pred = tf.add(tf.matMul(tf.add(bt.x, jitter), w), b);
      const mse = tf.mean(tf.squaredDifference(pred, bt.y)) as tf.Scalar;
      return { loss: ctx.step === nanAt ? (tf.mul(mse, NaN) as tf.Scalar) : mse, metrics: { abs: tf.mean(tf.abs(tf.sub(pred, bt.y))) as tf.Scalar } };
    },
    evaluate: () => ({ loss: tf.tidy(() => tf.mean(tf.squaredDifference(tf.add(tf.matMul(tf.tensor2d(X, [N, 3]), w), b), tf.tensor2d(Y, [N, 1]))).dataSync()[0]) }),
    exportModel: (ctx) => fs.writeFileSync(path.join(ctx.runDir, 'model.json'), JSON.stringify({ w: Array.from(w.dataSync()), b: b.dataSync()[0] })),
    onTrainEnd: (ctx) => void ends.push(ctx.step),
  };
  return { task, w, b, ends };
}

const base = (runDir: string): TrainOptions => ({
  runDir, seed: 7, epochs: 4, lr: 0.05, warmupSteps: 3, decay: 'cosine', minLrRatio: 0.1,
  optimizer: { weightDecay: 0.01 }, quiet: true, handleSigint: false,
});

function stateTensors(runDir: string): Map<string, Float32Array> {
  return new Map([...readSafetensors(statePath(runDir, 'toy'))].map(([k, t]) => [k, t.data]));
}

function expectSameState(a: string, b: string): void {
  const sa = stateTensors(a);
  const sb = stateTensors(b);
  expect([...sb.keys()].sort()).toEqual([...sa.keys()].sort());
  expect(sa.size).toBe(6); // 2 params + 2×2 moments
  for (const [k, v] of sa) expect(Array.from(sb.get(k)!), k).toEqual(Array.from(v));
}

describe('train (harness)', () => {
  let straight: string;
  let straightW: number[];

  beforeAll(async () => {
    straight = path.join(tmp, 'straight');
    const t = toy(7);
    const res = await train(t.task, base(straight));
    straightW = [...t.w.dataSync(), t.b.dataSync()[0]];
    expect(res.stopped).toBe('finished');
    expect(res.step).toBe(20);
    expect(t.ends).toEqual([20]);
  });

  it('learns the toy regression and writes history, loss curve and model', () => {
    const h = JSON.parse(fs.readFileSync(path.join(straight, 'train/toy/history.json'), 'utf8'));
    expect(h.steps).toHaveLength(20);
    expect(h.epochs.map((e: { epoch: number }) => e.epoch)).toEqual([1, 2, 3, 4]);
    expect(h.epochs[3].loss).toBeLessThan(h.epochs[0].loss);
    expect(h.steps[19].loss).toBeLessThan(h.steps[0].loss / 4);
    expect(h.steps[0].lr).toBe(0); // warm-up starts at 0
    expect(typeof h.steps[0].abs).toBe('number');
    expect(fs.existsSync(path.join(straight, 'train/toy/loss.png'))).toBe(true);
    expect(JSON.parse(fs.readFileSync(path.join(straight, 'model.json'), 'utf8')).b).toBeCloseTo(straightW[3], 6);
    const info = readStateInfo(statePath(straight, 'toy'));
    expect([info.step, info.epoch, info.batch, info.totalSteps]).toEqual([20, 4, 0, 20]);
  });

  it('stopped mid-epoch at a step and resumed: bit-identical parameters and moments', async () => {
    const dir = path.join(tmp, 'split');
    const first = toy(7);
    const r1 = await train(first.task, { ...base(dir), stopAtStep: 7 }); // epoch 2, batch 2
    expect(r1.stopped).toBe('stop-at-step');
    expect(first.ends).toEqual([]);
    const info = readStateInfo(statePath(dir, 'toy'));
    expect([info.step, info.epoch, info.batch]).toEqual([7, 1, 2]);
    const second = toy(7);
    const r2 = await train(second.task, { ...base(dir), resume: true });
    expect(r2.stopped).toBe('finished');
    expect([...second.w.dataSync(), second.b.dataSync()[0]]).toEqual(straightW);
    expectSameState(straight, dir);
    const h = JSON.parse(fs.readFileSync(path.join(dir, 'train/toy/history.json'), 'utf8'));
    expect(h.steps.map((s: { step: number }) => s.step)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
  });

  it('an abort signal mid-epoch saves a checkpoint; resuming gives the same weights', async () => {
    const dir = path.join(tmp, 'abort');
    const ac = new AbortController();
    const first = toy(7);
    const r1 = await train(first.task, { ...base(dir), signal: ac.signal, onStep: (s) => s.step === 13 && ac.abort() });
    expect(r1.stopped).toBe('interrupted');
    expect(readStateInfo(statePath(dir, 'toy')).step).toBe(13);
    const r2 = await train(toy(7).task, { ...base(dir), resume: true });
    expect(r2.step).toBe(20);
    expectSameState(straight, dir);
  });

  it('maxSteps ends part-way through an epoch: schedule, final evaluation and resume all end there', async () => {
    const a = path.join(tmp, 'max-a');
    const ta = toy(7);
    const ra = await train(ta.task, { ...base(a), maxSteps: 13 });
    expect([ra.step, ra.totalSteps, ra.stopped]).toEqual([13, 13, 'finished']);
    expect(readStateInfo(statePath(a, 'toy')).totalSteps).toBe(13);
    expect(ta.ends).toEqual([13]);
    expect(ra.history.epochs.map((e) => [e.epoch, e.step])).toEqual([[1, 5], [2, 10], [2.6, 13]]);
    // The cosine reaches its floor (0.1·lr) at step 13, not at the 20 steps of 4 epochs.
    expect(ra.history.steps[12].lr).toBeCloseTo(0.05 * (0.1 + 0.9 * 0.5 * (1 + Math.cos((Math.PI * 9) / 10))), 10);
    const b = path.join(tmp, 'max-b');
    await train(toy(7).task, { ...base(b), maxSteps: 13, stopAtStep: 6 });
    await train(toy(7).task, { ...base(b), maxSteps: 13, resume: true });
    const sa = stateTensors(a);
    const sb = stateTensors(b);
    for (const [k, v] of sa) expect(Array.from(sb.get(k)!), k).toEqual(Array.from(v));
  });

  it('a different seed gives a different run (the comparison above can fail)', async () => {
    const dir = path.join(tmp, 'seed8');
    const t = toy(8);
    await train(t.task, { ...base(dir), seed: 8 });
    expect([...t.w.dataSync(), t.b.dataSync()[0]]).not.toEqual(straightW);
  });

  it('a NaN loss stops before the bad update, saves the last good state and names the step', async () => {
    const dir = path.join(tmp, 'nan');
    const t = toy(7, 5);
    await expect(train(t.task, base(dir))).rejects.toThrow(TrainingError);
    const info = readStateInfo(statePath(dir, 'toy'));
    expect(info.step).toBe(5);
    const ref = path.join(tmp, 'nan-ref');
    await train(toy(7).task, { ...base(ref), stopAtStep: 5 });
    const got = stateTensors(dir);
    for (const [k, v] of stateTensors(ref)) expect(Array.from(got.get(k)!), k).toEqual(Array.from(v));
    await expect(train(toy(7, 2).task, base(path.join(tmp, 'nan2')))).rejects.toThrow(/loss is NaN at step 3 \(epoch 1, batch 3.*saved the last good state \(step 2\)/);
  });

  it('the divergence message names the likely cause: the inputs before any update, the step size after', async () => {
    // At the first update no learning rate has touched the weights: blaming --lr would mislead.
    const first = train(toy(7, 0).task, base(path.join(tmp, 'nan0')));
    await expect(first).rejects.toThrow(/loss is NaN at step 1 .*No update had been applied yet, so the learning rate is not the cause: check the training data\.$/);
    const inputs = { ...toy(7, 0).task, inputs: 'the latents and the noise schedule' };
    await expect(train(inputs, base(path.join(tmp, 'nan0b')))).rejects.toThrow(/learning rate is not the cause: check the latents and the noise schedule\.$/);
    await expect(train(toy(7, 4).task, base(path.join(tmp, 'nan4')))).rejects.toThrow(/loss is NaN at step 5 .*Likely cause: updates too large for the weights — try a lower --lr or --clip-grad-norm 1\.$/);
    await expect(train(toy(7, 4).task, { ...base(path.join(tmp, 'nan4c')), clipGradNorm: 1 })).rejects.toThrow(/try a lower --lr\.$/);
  });

  it('exports once, when a session ends well; a diverged session (even with --overwrite) leaves the old export alone', async () => {
    const dir = path.join(tmp, 'export');
    const exports: number[] = [];
    const counted = (t: Toy) => ({ ...t.task, exportModel: (ctx: Parameters<Toy['task']['exportModel']>[0]) => (exports.push(ctx.step), t.task.exportModel(ctx)) });
    // Checkpoints every 2 steps and at every epoch end: the export still comes once, at the end.
    await train(counted(toy(7)), { ...base(dir), checkpointEvery: 2, stopAtStep: 7 });
    expect(exports).toEqual([7]); // a stop on request is a good end: its state is exported
    await train(counted(toy(7)), { ...base(dir), checkpointEvery: 2, resume: true });
    expect(exports).toEqual([7, 20]);
    const good = fs.readFileSync(path.join(dir, 'model.json'), 'utf8');
    expect(JSON.parse(good).w).toEqual(straightW.slice(0, 3));

    // Start over, and diverge at step 9 after four periodic checkpoints: nothing is exported.
    await expect(train(counted(toy(7, 8)), { ...base(dir), checkpointEvery: 2, overwrite: true })).rejects.toThrow(TrainingError);
    expect(exports).toEqual([7, 20]);
    expect(fs.readFileSync(path.join(dir, 'model.json'), 'utf8')).toBe(good);
    expect(readStateInfo(statePath(dir, 'toy')).step).toBe(8); // the state is saved for a resume
  });

  it('refuses to clobber a run, to resume nothing, and to resume with changed settings', async () => {
    await expect(train(toy(7).task, base(straight))).rejects.toThrow(/exists: pass --resume.*--overwrite/);
    await expect(train(toy(7).task, { ...base(path.join(tmp, 'none')), resume: true })).rejects.toThrow(/no training state/);
    const dir = path.join(tmp, 'changed');
    await train(toy(7).task, { ...base(dir), stopAtStep: 3 });
    await expect(train(toy(7).task, { ...base(dir), lr: 0.1, resume: true })).rejects.toThrow(/different settings \(lr 0\.05 → 0\.1\)/);
    const res = await train(toy(7).task, { ...base(dir), overwrite: true, stopAtStep: 2 });
    expect(res.step).toBe(2);
  });
});

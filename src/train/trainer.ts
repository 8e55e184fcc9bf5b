/**
 * The training loop every sdlab model shares (VAE, text encoder, UNet). A task says what to
 * train; the harness does the rest: AdamW with warm-up + cosine decay, gradient clipping,
 * checkpoints that resume exactly, Ctrl-C, NaN detection, progress bar, history and loss curve.
 *
 *   const result = await train({
 *     name: 'vae',                                     // files go to <run>/train/vae/
 *     params: vae.namedParameters().map(([n, p]) => [n, p.variable]),
 *     settings: { config, batchSize, ... },            // stored; a resume must match
 *     stepsPerEpoch,
 *     batch: (epoch, i) => ...,                        // i-th batch of epoch's seeded order
 *     loss: (batch, ctx) => ({ loss, metrics }),       // runs inside tf.variableGrads
 *     evaluate: (ctx) => ({ loss, psnr }),             // validation, end of every epoch
 *     onEpochEnd: (ctx) => savePictures(...),
 *     exportModel: (ctx) => vae.save(...),             // when the session ends well
 *     onTrainEnd: (ctx) => ...,                        // once, after the last update
 *   }, { runDir, seed, epochs, maxSteps, lr, warmupSteps, decay: 'cosine', resume });
 *
 * Exact resume. One update is a pure function of (parameters, optimizer moments, step): the
 * batch is the (step mod stepsPerEpoch)-th slice of the order the task derives from
 * (seed, epoch), the noise comes from ctx.rng = Random(`${seed}/step ${step}`), the learning
 * rate from the step. The state file stores exactly those things (see state.ts), so N steps in
 * one go and N/2 + stop + N/2 give bit-identical weights on the same backend.
 *
 * Length. epochs × stepsPerEpoch updates, or fewer with maxSteps (the lr schedule then ends
 * there, and the last, partial epoch still gets its evaluation, pictures and checkpoint).
 *
 * Checkpoints. One state file (state.ts) written atomically at every epoch end, every
 * opts.checkpointEvery updates (CHECKPOINT_EVERY by default) and when training stops; it holds the
 * task's extra state too (the UNet's EMA), so a kill at any moment leaves the last complete
 * checkpoint. Saving changes nothing about training, so a run is the same with or without them.
 *
 * Export. The usable model (task.exportModel, e.g. <run>/vae/) is written once, when a session
 * ends well: finished, or stopped on request (the state is then a good one). A session that
 * diverges, fails or is killed exports nothing, so the model a previous run exported stays
 * until a run that replaces it has ended well — `--overwrite` never swaps a good model for a
 * broken one.
 *
 * Stopping. Ctrl-C (SIGINT), SIGTERM (`kill`, `timeout`, `docker stop`), opts.signal,
 * opts.stopAtStep or opts.timeLimitSeconds finish the current update, write a checkpoint and
 * return (stopped: 'interrupted' | 'stop-at-step' | 'time-limit'); a second signal quits at once
 * without saving. A non-finite loss or gradient stops before the bad update is applied: the last
 * good state is saved (nothing is exported) and a TrainingError names the step and the likely cause.
 *
 * One process per task and run: <run>/train/<task>/train.lock (lock.ts) refuses a second one.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { Dataset, TfDataset } from '../data/index.ts';
import { UsageError } from '../util/errors.ts';
import { makeDirs } from '../util/fs.ts';
import { Progress, formatDuration } from '../util/progress.ts';
import { Random } from '../util/random.ts';
import { saveLossCurve } from '../viz/index.ts';
import { AdamW, type AdamWConfig, type LrSchedule, type NamedVariable, clipGradNorm, learningRate } from './optimizer.ts';
import { lockTask } from './lock.ts';
import { type ExtraState, type History, type StateInfo, loadState, readHistory, readStateInfo, saveState, statePath, trainDir, writeHistory } from './state.ts';

/** Training diverged or cannot continue; the message is one line naming the step. */
export class TrainingError extends UsageError {
  constructor(message: string) {
    super(message);
    this.name = 'TrainingError';
  }
}

export interface StepContext {
  /** Index of this update (0-based): updates done before it. */
  step: number;
  epoch: number;
  /** Batch index within the epoch. */
  batchIndex: number;
  /** Learning rate of this update. */
  lr: number;
  /** Seeded by (seed, step): use it for all training noise so resumes are exact. */
  rng: Random;
}

export interface EpochContext {
  /**
   * Epochs finished (1-based number of the epoch that just ended); fractional when training
   * ends part-way through an epoch (maxSteps).
   */
  epoch: number;
  /** Updates done. */
  step: number;
  runDir: string;
  /** <run>/train/<task>: history, loss curve, pictures. */
  dir: string;
  seed: number;
  history: History;
}

export type LossOutput = tf.Scalar | { loss: tf.Scalar; metrics?: Record<string, tf.Scalar> };

export interface TrainTask<B> {
  /** Short name: names the files (<run>/train/<name>/) and messages. */
  name: string;
  params: NamedVariable[];
  /** Everything (besides the harness's own options) that shapes the run; a resume must match it. */
  settings: Record<string, unknown>;
  stepsPerEpoch: number;
  /** Examples per update, for the img/s rate (optional). */
  examplesPerStep?: number;
  /** The index-th batch of `epoch`; must depend only on (seed, epoch, index). */
  batch(epoch: number, index: number): B;
  disposeBatch?(batch: B): void;
  /** The loss of one batch (called inside tf.variableGrads; metrics are logged per step). */
  loss(batch: B, ctx: StepContext): LossOutput;
  /** Validation numbers at the end of each epoch; `loss` (if present) is drawn on the loss curve. */
  evaluate?(ctx: EpochContext): Promise<Record<string, number>> | Record<string, number>;
  /** Pictures etc. at the end of each epoch, after evaluate. */
  onEpochEnd?(ctx: EpochContext, evaluation: Record<string, number>): Promise<void> | void;
  /** Variables besides params that a resume needs (the UNet's EMA): saved in the same state file. */
  extraState?: ExtraState;
  /** Writes the usable model (e.g. <run>/vae/); called once, when a session ends well (see Export above). */
  exportModel(ctx: EpochContext): Promise<void> | void;
  /** Called after each checkpoint is written (CLIP caps its logit scale there; see train/clip.ts). */
  afterCheckpoint?(ctx: EpochContext): void;
  /**
   * What besides the weights feeds the loss, named when the loss is not finite before any
   * update (so the learning rate cannot be the cause), e.g. 'the VAE latents or the noise
   * schedule (--beta-start/--beta-end)'. Default: 'the training data'.
   */
  inputs?: string;
  /** Once, after the last update (also when resuming a finished run). */
  onTrainEnd?(ctx: EpochContext): Promise<void> | void;
}

export interface TrainOptions {
  runDir: string;
  seed: number;
  epochs: number;
  /** End training after this many updates even if the epochs are not done (the schedule ends here). */
  maxSteps?: number;
  lr: number;
  warmupSteps?: number;
  decay?: LrSchedule['decay'];
  minLrRatio?: number;
  optimizer?: Partial<AdamWConfig>;
  /** Clip the global gradient norm to this (off when undefined). */
  clipGradNorm?: number;
  /** Continue from <run>/train/<name>/state.safetensors. */
  resume?: boolean;
  /** Start over even if a training state exists. */
  overwrite?: boolean;
  /** Stop (with a checkpoint) once this many updates are done. */
  stopAtStep?: number;
  /** Stop (with a checkpoint) after this many seconds of this session. */
  timeLimitSeconds?: number;
  /** Also write a checkpoint every this many updates (default CHECKPOINT_EVERY; 0 = only at epoch ends and stops). */
  checkpointEvery?: number;
  /** Stop (with a checkpoint) when aborted. */
  signal?: AbortSignal;
  /** Install SIGINT and SIGTERM handlers (default true). */
  handleSigint?: boolean;
  /** No progress bar or log lines. */
  quiet?: boolean;
  log?: (line: string) => void;
  /** Called after every update (tests, telemetry). */
  onStep?: (info: { step: number; loss: number; lr: number; epoch: number; batchIndex: number }) => void;
}

export interface TrainResult {
  /** Updates done (in total, over all sessions). */
  step: number;
  totalSteps: number;
  stopped: 'finished' | 'interrupted' | 'stop-at-step' | 'time-limit';
  /** Seconds spent in this session's loop, and over all sessions. */
  seconds: number;
  elapsed: number;
  /** Examples per second in this session (if the task gave examplesPerStep). */
  examplesPerSecond: number;
  history: History;
  lastEvaluation: Record<string, number>;
  statePath: string;
}

// ---------------------------------------------------------------------------------------------
// What the model trainers (vae.ts, clip.ts, unet.ts) share

/**
 * The options trainVae, trainClip and trainUnet all take, in the same sense: the harness's own
 * (handed on by harnessOptions) plus the batch size and which digits to train on.
 */
export interface ModelTrainOptions
  extends Pick<TrainOptions, 'runDir' | 'seed' | 'maxSteps' | 'lr' | 'clipGradNorm' | 'resume' | 'overwrite' | 'stopAtStep' | 'timeLimitSeconds' | 'checkpointEvery' | 'signal' | 'handleSigint' | 'quiet' | 'log'> {
  /** Passes over the training digits (training ends earlier if maxSteps says so). */
  epochs: number;
  batchSize: number;
  /** AdamW decoupled weight decay. */
  weightDecay: number;
  warmupSteps: number;
  decay: LrSchedule['decay'];
  minLrRatio: number;
  /** IDX directory or image folder (src/data/source.ts); undefined = embedded MNIST. */
  data?: string;
  /** Class names for labelled data without them (IDX files, the embedded digits, `dataset`), label 0 first. */
  classes?: readonly string[];
  /** Library API: an in-memory Dataset or a tf.data.Dataset of {image, label} / {image, text} (src/data/tfdata.ts), instead of `data`. */
  dataset?: Dataset | TfDataset<tf.TensorContainer>;
  /** Train on only the first N training digits (quick runs). */
  limit?: number;
}

/** The harness options a model trainer passes to train(): its own options, mapped the same way for every model. */
export function harnessOptions(o: ModelTrainOptions): TrainOptions {
  return {
    runDir: o.runDir,
    seed: o.seed,
    epochs: o.epochs,
    maxSteps: o.maxSteps,
    lr: o.lr,
    warmupSteps: o.warmupSteps,
    decay: o.decay,
    minLrRatio: o.minLrRatio,
    optimizer: { weightDecay: o.weightDecay },
    clipGradNorm: o.clipGradNorm,
    resume: o.resume,
    overwrite: o.overwrite,
    stopAtStep: o.stopAtStep,
    timeLimitSeconds: o.timeLimitSeconds,
    checkpointEvery: o.checkpointEvery,
    signal: o.signal,
    handleSigint: o.handleSigint,
    quiet: o.quiet,
    log: o.log,
  };
}

/** Where train() writes its lines (o.log, else stderr; nothing when quiet), for a trainer's own messages. */
export function trainLog(o: Pick<TrainOptions, 'quiet' | 'log'>): (line: string) => void {
  return o.quiet ? () => {} : (o.log ?? ((line: string) => process.stderr.write(line + '\n')));
}

/** `key` of the last finished epoch's evaluation (NaN if no epoch finished): a trainer's headline number. */
export function lastEpochValue(result: TrainResult, key: string): number {
  return result.history.epochs[result.history.epochs.length - 1]?.[key] ?? NaN;
}

/** The hyper-parameters the harness itself adds to the stored settings. */
function harnessSettings(task: TrainTask<unknown>, o: TrainOptions, schedule: LrSchedule, adam: AdamWConfig): Record<string, unknown> {
  return {
    ...task.settings,
    seed: o.seed,
    epochs: o.epochs,
    maxSteps: o.maxSteps ?? null,
    stepsPerEpoch: task.stepsPerEpoch,
    lr: schedule.lr,
    warmupSteps: schedule.warmupSteps,
    decay: schedule.decay,
    minLrRatio: schedule.minLrRatio,
    adamw: adam,
    clipGradNorm: o.clipGradNorm ?? null,
  };
}

/** Keys whose values differ between two settings objects (compared as JSON). */
export function settingsDiff(a: Record<string, unknown>, b: Record<string, unknown>): string[] {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  return [...keys].filter((k) => JSON.stringify(a[k] ?? null) !== JSON.stringify(b[k] ?? null));
}

/**
 * Settings stored only since a later sdlab: a state saved before them lacks the key, and is
 * resumed with whatever the options now say (they touch only validation, not the weights).
 */
const LATER_SETTINGS = new Set(['valLimit']);

/**
 * Updates between periodic checkpoints. Steps, not minutes, so that where checkpoints fall does
 * not depend on the machine. 200 updates are well under a minute for the full preset's UNet on
 * the native backend (its measured time: README, "Results"; VAE and CLIP steps are cheaper), so a
 * kill loses at most that, and a checkpoint (a few MB written) every 200 steps costs little. Slower
 * backends lose more per kill: lower it with --checkpoint-every.
 */
export const CHECKPOINT_EVERY = 200;

// ---------------------------------------------------------------------------------------------
// The loop

/**
 * Trains `task` to the end of its schedule (or until told to stop) and returns where it got to.
 * Read it top to bottom: open the run (fresh or resumed), then one trainStep() per batch, the
 * end-of-epoch pass (evaluate, pictures, checkpoint) whenever an epoch ends, and a last
 * checkpoint when the loop is done.
 */
export async function train<B>(task: TrainTask<B>, o: TrainOptions): Promise<TrainResult> {
  const lock = lockTask(trainDir(o.runDir, task.name), task.name, trainLog(o));
  try {
    return await trainLocked(task, o);
  } finally {
    lock.release();
  }
}

/** train() while this process holds the run's lock. */
async function trainLocked<B>(task: TrainTask<B>, o: TrainOptions): Promise<TrainResult> {
  const run = openOrResume(task, o);
  const stop = new StopSignals(task.name, o);
  const every = o.checkpointEvery ?? CHECKPOINT_EVERY;
  try {
    while (run.step < run.totalSteps && stop.reason === null) {
      if (stop.reachedStopStep(run.step)) break;
      const ctx = stepContext(run, run.step);
      const out = trainStep(task, run.optimizer, ctx, o.clipGradNorm);
      if (!out.applied) throw await diverged(run, ctx, out);
      recordStep(run, ctx, out);
      // End of an epoch, or of training part-way through one: validate, draw, checkpoint.
      if (run.step % task.stepsPerEpoch === 0 || run.step === run.totalSteps) await endOfEpoch(run);
      else if (every > 0 && run.step % every === 0) await checkpoint(run, run.step);
      await tick(); // let Ctrl-C / abort handlers run
      stop.checkTimeLimit(sessionSeconds(run), run.step < run.totalSteps);
    }

    run.progress?.finish();
    if (run.savedAt !== run.step) await checkpoint(run, run.step);
    // Every applied update was finite and the session ended well: now the model may replace
    // what <run>/<model>/ held (never from a diverged session, which threw above).
    await task.exportModel(epochContext(run, run.step));
    if (stop.reason !== null) run.log(`${task.name}: stopped (${stop.reason}) at step ${run.step}/${run.totalSteps}; saved ${run.stateFile} — continue with --resume`);
    else await task.onTrainEnd?.(epochContext(run, run.step));
    return result(run, stop.reason ?? 'finished');
  } finally {
    stop.dispose();
    run.optimizer.dispose();
  }
}

/** One training session of a task: the run's fixed facts, and where training stands. */
interface Session<B> {
  task: TrainTask<B>;
  o: TrainOptions;
  log: (line: string) => void;
  /** <run>/train/<task> and its state file. */
  dir: string;
  stateFile: string;
  totalSteps: number;
  schedule: LrSchedule;
  optimizer: AdamW;
  /** What the state file stores and a resume must match (harnessSettings). */
  settings: Record<string, unknown>;
  /** Updates done, over all sessions. */
  step: number;
  history: History;
  /** Seconds of training before this session, and when this session started (ms). */
  elapsedBefore: number;
  started: number;
  /** Updates done in this session (for the img/s rate). */
  sessionSteps: number;
  /** The step of the last checkpoint this session wrote (-1: none yet). */
  savedAt: number;
  lastEvaluation: Record<string, number>;
  progress: Progress | null;
}

/**
 * Opens the run: the lr schedule and AdamW, then either a fresh start (refusing to clobber an
 * existing state unless opts.overwrite) or, with opts.resume, the saved parameters, optimizer
 * moments, step and history — after checking that the stored settings match these.
 */
function openOrResume<B>(task: TrainTask<B>, o: TrainOptions): Session<B> {
  const log = trainLog(o);
  const dir = trainDir(o.runDir, task.name);
  const stateFile = statePath(o.runDir, task.name);
  const totalSteps = Math.min(o.epochs * task.stepsPerEpoch, o.maxSteps ?? Infinity);
  if (!(task.stepsPerEpoch > 0)) throw new UsageError(`${task.name}: no full batch per epoch (too little data for the batch size?).`);
  const schedule: LrSchedule = {
    lr: o.lr,
    warmupSteps: o.warmupSteps ?? 0,
    decay: o.decay ?? 'cosine',
    totalSteps,
    minLrRatio: o.minLrRatio ?? 0,
  };
  const optimizer = new AdamW(task.params, o.optimizer);
  const settings = harnessSettings(task as TrainTask<unknown>, o, schedule, optimizer.config);

  if (o.resume && o.overwrite) throw new UsageError('--resume and --overwrite: choose one (continue the run, or start it over).');
  let step = 0;
  let elapsedBefore = 0;
  let history: History = { task: task.name, steps: [], epochs: [] };
  const exists = fs.existsSync(stateFile);
  if (o.resume) {
    if (!exists) throw new UsageError(`--resume: no training state at ${stateFile} (nothing to resume; drop --resume to start).`);
    const peek = readStateInfo(stateFile);
    if (peek.task !== task.name) throw new UsageError(`${stateFile}: holds a "${peek.task}" run, not "${task.name}".`);
    const diff = settingsDiff(peek.settings, settings).filter((k) => k in peek.settings || !LATER_SETTINGS.has(k));
    if (diff.length) {
      const show = diff.slice(0, 4).map((k) => `${k} ${JSON.stringify(peek.settings[k] ?? null)} → ${JSON.stringify(settings[k] ?? null)}`);
      throw new UsageError(`--resume: ${stateFile} was trained with different settings (${show.join('; ')}); resume with the same settings, or start over with --overwrite.`);
    }
    const info = loadState(stateFile, task.params, optimizer, task.extraState);
    step = info.step;
    elapsedBefore = info.elapsed;
    history = readHistory(dir, task.name);
    // The history is written before the state, so it may run ahead of it: cut it back.
    history.steps = history.steps.filter((s) => s.step <= step);
    history.epochs = history.epochs.filter((e) => e.step <= step);
    log(`${task.name}: resuming ${stateFile} at step ${step}/${totalSteps} (epoch ${Math.floor(step / task.stepsPerEpoch) + 1}, batch ${step % task.stepsPerEpoch})`);
  } else if (exists && !o.overwrite) {
    throw new UsageError(`${stateFile} exists: pass --resume to continue that run, or --overwrite to start over.`);
  } else if (exists) {
    fs.rmSync(path.join(dir, 'history.json'), { force: true });
  }
  makeDirs(dir);

  const started = Date.now();
  const todo = totalSteps - step;
  const progress = o.quiet || todo <= 0 ? null : new Progress({ total: todo, label: task.name, unit: 'step' });
  if (step < totalSteps && step === 0) {
    const epochsText = totalSteps < o.epochs * task.stepsPerEpoch ? `${(totalSteps / task.stepsPerEpoch).toFixed(2)} epochs of ${task.stepsPerEpoch}` : `${o.epochs} epochs × ${task.stepsPerEpoch}`;
    log(`${task.name}: ${totalSteps} steps (${epochsText}), ${countParams(task.params).toLocaleString('en')} parameters, state in ${dir}`);
  }
  return { task, o, log, dir, stateFile, totalSteps, schedule, optimizer, settings, step, history, elapsedBefore, started, sessionSteps: 0, savedAt: -1, lastEvaluation: {}, progress };
}

/** The step-th update's place in the data, its learning rate and its noise (a pure function of step: exact resume). */
function stepContext(run: Session<unknown>, step: number): StepContext {
  const { stepsPerEpoch } = run.task;
  return {
    step,
    epoch: Math.floor(step / stepsPerEpoch),
    batchIndex: step % stepsPerEpoch,
    lr: learningRate(step, run.schedule),
    rng: new Random(`${run.o.seed}/step ${step}`),
  };
}

interface StepOutcome {
  loss: number;
  metrics: Record<string, number>;
  /** Global gradient norm before clipping. */
  norm: number;
  /** False when the loss or the gradient norm was not finite: the parameters were left as they were. */
  applied: boolean;
}

/**
 * One update: the loss and its gradients (tf.variableGrads), the global gradient norm (clipped to
 * maxNorm when given), a non-finite check, and the AdamW step. clipGradNorm measures the norm
 * that the check needs, so it runs before the check; a non-finite loss or norm applies nothing.
 */
function trainStep<B>(task: TrainTask<B>, optimizer: AdamW, ctx: StepContext, maxNorm: number | undefined): StepOutcome {
  const batch = task.batch(ctx.epoch, ctx.batchIndex);
  let metrics: Record<string, tf.Scalar> = {};
  let value: tf.Scalar;
  let grads: tf.NamedTensorMap;
  try {
    ({ value, grads } = tf.variableGrads(() => {
      const out = task.loss(batch, ctx);
      if (out instanceof tf.Tensor) return out;
      metrics = out.metrics ?? {};
      for (const m of Object.values(metrics)) tf.keep(m);
      return out.loss;
    }, optimizer.variables));
  } finally {
    task.disposeBatch?.(batch);
  }
  const loss = value.dataSync()[0];
  const metricValues: Record<string, number> = {};
  for (const [k, m] of Object.entries(metrics)) metricValues[k] = m.dataSync()[0];
  tf.dispose([value, ...Object.values(metrics)]);

  const clipped = clipGradNorm(grads, maxNorm);
  const applied = Number.isFinite(loss) && Number.isFinite(clipped.norm);
  if (applied) optimizer.applyGradients(clipped.grads, ctx.lr);
  tf.dispose(Object.values(grads));
  if (clipped.clipped) tf.dispose(Object.values(clipped.grads));
  return { loss, metrics: metricValues, norm: clipped.norm, applied };
}

/**
 * A non-finite loss or gradient: the parameters are still those after `run.step` good updates,
 * so save them (the state only: nothing is exported) and return the error (one line naming the
 * step and the likely cause) for the caller to throw.
 */
async function diverged(run: Session<unknown>, ctx: StepContext, out: StepOutcome): Promise<TrainingError> {
  await checkpoint(run, run.step);
  const what = Number.isFinite(out.loss) ? `gradient norm is ${out.norm}` : `loss is ${out.loss}`;
  return new TrainingError(`${run.task.name}: ${what} at step ${ctx.step + 1} (epoch ${ctx.epoch + 1}, batch ${ctx.batchIndex + 1}, lr ${ctx.lr.toPrecision(3)}); saved the last good state (step ${run.step}) to ${run.stateFile}. ${divergenceCause(run, ctx)}`);
}

/**
 * The likely cause of a non-finite loss or gradient, as one sentence. At the run's first update
 * no learning rate has touched the weights yet, so the inputs are to blame; later, the step size.
 */
export function divergenceCause(run: Pick<Session<unknown>, 'task' | 'o'>, ctx: Pick<StepContext, 'step'>): string {
  if (ctx.step === 0) {
    return `No update had been applied yet, so the learning rate is not the cause: check ${run.task.inputs ?? 'the training data'}.`;
  }
  return `Likely cause: updates too large for the weights — try a lower --lr${run.o.clipGradNorm === undefined ? ' or --clip-grad-norm 1' : ''}.`;
}

/** After an update: count it, add it to the history, tell opts.onStep and the progress bar. */
function recordStep(run: Session<unknown>, ctx: StepContext, out: StepOutcome): void {
  const { loss, metrics } = out;
  const { epoch, batchIndex, lr } = ctx;
  run.step += 1;
  run.sessionSteps += 1;
  run.history.steps.push({ step: run.step, loss, lr, ...metrics });
  run.o.onStep?.({ step: run.step, loss, lr, epoch, batchIndex });
  if (run.progress) {
    const examples = run.task.examplesPerStep ?? 0;
    const rate = examples ? `  ${((run.sessionSteps * examples) / Math.max(1e-9, sessionSeconds(run))).toFixed(1)} img/s` : '';
    run.progress.tick(1, `e${epoch + 1}/${Math.ceil(run.totalSteps / run.task.stepsPerEpoch)} loss ${fmt(loss)} lr ${lr.toExponential(1)}${rate}`);
  }
}

/** End of an epoch (or of training part-way through one): validate, draw, checkpoint, one log line. */
async function endOfEpoch(run: Session<unknown>): Promise<void> {
  const { task, step, history } = run;
  const ctx = epochContext(run, step);
  run.lastEvaluation = task.evaluate ? await task.evaluate(ctx) : {};
  const seconds = run.elapsedBefore + sessionSeconds(run);
  history.epochs.push({ epoch: ctx.epoch, step, seconds, ...run.lastEvaluation });
  await task.onEpochEnd?.(ctx, run.lastEvaluation);
  await checkpoint(run, step);
  const recent = history.steps.slice(-(step % task.stepsPerEpoch || task.stepsPerEpoch));
  const trainLoss = recent.reduce((a, s) => a + s.loss, 0) / Math.max(1, recent.length);
  const evalText = Object.entries(run.lastEvaluation).map(([k, v]) => `val ${k} ${fmt(v)}`).join('  ');
  run.progress?.finish();
  run.log(`${task.name}: epoch ${ctx.epoch}/${Number((run.totalSteps / task.stepsPerEpoch).toFixed(3))}  train loss ${fmt(trainLoss)}  ${evalText}  (${formatDuration(seconds)})`);
}

/** Writes history.json, the state file (parameters + moments + position) and loss.png (the usable model: at the end, see Export). */
async function checkpoint(run: Session<unknown>, step: number): Promise<void> {
  const { task, dir, history } = run;
  writeHistory(dir, history);
  const info: StateInfo = {
    task: task.name,
    step,
    epoch: Math.floor(step / task.stepsPerEpoch),
    batch: step % task.stepsPerEpoch,
    totalSteps: run.totalSteps,
    settings: run.settings,
    elapsed: run.elapsedBefore + sessionSeconds(run),
  };
  saveState(run.stateFile, info, task.params, run.optimizer, task.extraState);
  task.afterCheckpoint?.(epochContext(run, step));
  await plotHistory(dir, history, task.name).catch((err) => run.log(`${task.name}: could not draw the loss curve: ${(err as Error).message}`));
  run.savedAt = step;
}

/** What the task's epoch callbacks see after `step` updates (a fractional epoch when training ends mid-epoch). */
function epochContext(run: Session<unknown>, step: number): EpochContext {
  const { stepsPerEpoch } = run.task;
  return {
    epoch: step === run.totalSteps && step % stepsPerEpoch !== 0 ? Number((step / stepsPerEpoch).toFixed(3)) : Math.floor(step / stepsPerEpoch),
    step,
    runDir: run.o.runDir,
    dir: run.dir,
    seed: run.o.seed,
    history: run.history,
  };
}

function sessionSeconds(run: Session<unknown>): number {
  return (Date.now() - run.started) / 1000;
}

function result(run: Session<unknown>, stopped: TrainResult['stopped']): TrainResult {
  const seconds = sessionSeconds(run);
  const examples = run.task.examplesPerStep ?? 0;
  return {
    step: run.step,
    totalSteps: run.totalSteps,
    stopped,
    seconds,
    elapsed: run.elapsedBefore + seconds,
    examplesPerSecond: examples && seconds > 0 ? (run.sessionSteps * examples) / seconds : 0,
    history: run.history,
    lastEvaluation: run.lastEvaluation,
    statePath: run.stateFile,
  };
}

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

// ---------------------------------------------------------------------------------------------
// Stopping early

/**
 * Why the loop should stop before the schedule ends, if it should: Ctrl-C, SIGTERM or opts.signal
 * ('interrupted'; a second signal quits at once without saving), opts.stopAtStep, or
 * opts.timeLimitSeconds. Each lets the current update finish; train() then saves a checkpoint.
 */
class StopSignals {
  reason: Exclude<TrainResult['stopped'], 'finished'> | null = null;
  private sigints = 0;
  private readonly handleSigint: boolean;

  constructor(
    private readonly name: string,
    private readonly o: Pick<TrainOptions, 'signal' | 'handleSigint' | 'stopAtStep' | 'timeLimitSeconds'>,
  ) {
    this.handleSigint = o.handleSigint ?? true;
    if (this.handleSigint) {
      process.on('SIGINT', this.onSigint);
      process.on('SIGTERM', this.onSigterm);
    }
    o.signal?.addEventListener('abort', this.onAbort);
    if (o.signal?.aborted) this.reason = 'interrupted';
  }

  /** True (with reason 'stop-at-step') once opts.stopAtStep updates are done. */
  reachedStopStep(step: number): boolean {
    if (this.o.stopAtStep === undefined || step < this.o.stopAtStep) return false;
    this.reason = 'stop-at-step';
    return true;
  }

  /** Checked after an update (so a session does at least one); another reason that came first wins. */
  checkTimeLimit(seconds: number, moreToDo: boolean): void {
    if (this.o.timeLimitSeconds !== undefined && seconds >= this.o.timeLimitSeconds && moreToDo) this.reason ??= 'time-limit';
  }

  dispose(): void {
    if (this.handleSigint) {
      process.off('SIGINT', this.onSigint);
      process.off('SIGTERM', this.onSigterm);
    }
    this.o.signal?.removeEventListener('abort', this.onAbort);
  }

  private readonly onSigint = () => this.onSignal('Ctrl-C');
  private readonly onSigterm = () => this.onSignal('SIGTERM');

  /** The first SIGINT/SIGTERM stops after this update (with a checkpoint); a second one quits now. */
  private onSignal(what: string): void {
    this.sigints++;
    if (this.sigints > 1) {
      process.stderr.write(`\n${this.name}: second ${what}, quitting without saving.\n`);
      process.exit(130);
    }
    this.reason = 'interrupted';
    process.stderr.write(`\n${this.name}: ${what}: saving a checkpoint after this step (Ctrl-C again to quit without saving)\n`);
  }

  private readonly onAbort = () => (this.reason = 'interrupted');
}

// ---------------------------------------------------------------------------------------------

function countParams(params: NamedVariable[]): number {
  return params.reduce((n, [, v]) => n + v.size, 0);
}

function fmt(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(3) : v.toPrecision(4);
}

/** loss.png: per-step training loss (smoothed) and the per-epoch validation loss. */
async function plotHistory(dir: string, h: History, name: string): Promise<void> {
  if (h.steps.length === 0) return;
  const series = [{ name: 'train', values: h.steps.map((s) => s.loss), steps: h.steps.map((s) => s.step) }];
  const val = h.epochs.filter((e) => Number.isFinite(e.loss));
  if (val.length) series.push({ name: 'val', values: val.map((e) => e.loss!), steps: val.map((e) => e.step) });
  await saveLossCurve(path.join(dir, 'loss.png'), series, { title: `${name} loss`, xLabel: 'step', smooth: 0.9 });
}

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
 *     exportModel: (ctx) => vae.save(...),             // at every checkpoint
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
 * Stopping. Ctrl-C (SIGINT), opts.signal, opts.stopAtStep or opts.timeLimitSeconds finish the
 * current update, write a checkpoint and return (stopped: 'interrupted' | 'stop-at-step' |
 * 'time-limit'); a second Ctrl-C quits at once without saving. A non-finite loss or gradient
 * stops before the bad update is applied: the last good state is saved and a TrainingError
 * names the step.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { UsageError } from '../util/errors.ts';
import { Progress, formatDuration } from '../util/progress.ts';
import { Random } from '../util/random.ts';
import { saveLossCurve } from '../viz/index.ts';
import { AdamW, type AdamWConfig, type LrSchedule, type NamedVariable, clipGradNorm, learningRate } from './optimizer.ts';
import { type History, type StateInfo, loadState, readHistory, readStateInfo, saveState, statePath, trainDir, writeHistory } from './state.ts';

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
  /** Writes the usable model (e.g. <run>/vae/); called at every checkpoint. */
  exportModel(ctx: EpochContext): Promise<void> | void;
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
  /** Stop (with a checkpoint) when aborted. */
  signal?: AbortSignal;
  /** Install a SIGINT handler (default true). */
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
  extends Pick<TrainOptions, 'runDir' | 'seed' | 'maxSteps' | 'lr' | 'clipGradNorm' | 'resume' | 'overwrite' | 'stopAtStep' | 'timeLimitSeconds' | 'signal' | 'handleSigint' | 'quiet' | 'log'> {
  /** Passes over the training digits (training ends earlier if maxSteps says so). */
  epochs: number;
  batchSize: number;
  /** AdamW decoupled weight decay. */
  weightDecay: number;
  warmupSteps: number;
  decay: LrSchedule['decay'];
  minLrRatio: number;
  /** IDX directory; undefined = embedded MNIST. */
  data?: string;
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

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

export async function train<B>(task: TrainTask<B>, o: TrainOptions): Promise<TrainResult> {
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

  // ---- fresh start or resume
  if (o.resume && o.overwrite) throw new UsageError('--resume and --overwrite: choose one (continue the run, or start it over).');
  let step = 0;
  let elapsedBefore = 0;
  let history: History = { task: task.name, steps: [], epochs: [] };
  const exists = fs.existsSync(stateFile);
  if (o.resume) {
    if (!exists) throw new UsageError(`--resume: no training state at ${stateFile} (nothing to resume; drop --resume to start).`);
    const peek = readStateInfo(stateFile);
    if (peek.task !== task.name) throw new UsageError(`${stateFile}: holds a "${peek.task}" run, not "${task.name}".`);
    const diff = settingsDiff(peek.settings, settings);
    if (diff.length) {
      const show = diff.slice(0, 4).map((k) => `${k} ${JSON.stringify(peek.settings[k] ?? null)} → ${JSON.stringify(settings[k] ?? null)}`);
      throw new UsageError(`--resume: ${stateFile} was trained with different settings (${show.join('; ')}); resume with the same settings, or start over with --overwrite.`);
    }
    const info = loadState(stateFile, task.params, optimizer);
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
  fs.mkdirSync(dir, { recursive: true });

  const ctxAt = (s: number): EpochContext => ({
    epoch: s === totalSteps && s % task.stepsPerEpoch !== 0 ? Number((s / task.stepsPerEpoch).toFixed(3)) : Math.floor(s / task.stepsPerEpoch),
    step: s,
    runDir: o.runDir,
    dir,
    seed: o.seed,
    history,
  });

  const started = Date.now();
  const sessionSeconds = () => (Date.now() - started) / 1000;
  let lastEvaluation: Record<string, number> = {};
  let savedAt = -1;

  const checkpoint = async (s: number) => {
    const ctx = ctxAt(s);
    writeHistory(dir, history);
    const info: StateInfo = {
      task: task.name,
      step: s,
      epoch: Math.floor(s / task.stepsPerEpoch),
      batch: s % task.stepsPerEpoch,
      totalSteps,
      settings,
      elapsed: elapsedBefore + sessionSeconds(),
    };
    saveState(stateFile, info, task.params, optimizer);
    await task.exportModel(ctx);
    await plotHistory(dir, history, task.name).catch((err) => log(`${task.name}: could not draw the loss curve: ${(err as Error).message}`));
    savedAt = s;
  };

  // ---- stop requests
  let stopReason: TrainResult['stopped'] | null = null;
  let sigints = 0;
  const onSigint = () => {
    sigints++;
    if (sigints > 1) {
      process.stderr.write(`\n${task.name}: second Ctrl-C, quitting without saving.\n`);
      process.exit(130);
    }
    stopReason = 'interrupted';
    process.stderr.write(`\n${task.name}: Ctrl-C: saving a checkpoint after this step (Ctrl-C again to quit without saving)\n`);
  };
  const handleSigint = o.handleSigint ?? true;
  if (handleSigint) process.on('SIGINT', onSigint);
  const onAbort = () => (stopReason = 'interrupted');
  o.signal?.addEventListener('abort', onAbort);
  if (o.signal?.aborted) stopReason = 'interrupted';

  const stepsThisSession = totalSteps - step;
  const progress = o.quiet || stepsThisSession <= 0 ? null : new Progress({ total: stepsThisSession, label: task.name, unit: 'step' });
  const examples = task.examplesPerStep ?? 0;
  let sessionSteps = 0;

  try {
    const epochsText = totalSteps < o.epochs * task.stepsPerEpoch ? `${(totalSteps / task.stepsPerEpoch).toFixed(2)} epochs of ${task.stepsPerEpoch}` : `${o.epochs} epochs × ${task.stepsPerEpoch}`;
    if (step < totalSteps && step === 0) log(`${task.name}: ${totalSteps} steps (${epochsText}), ${countParams(task.params).toLocaleString('en')} parameters, state in ${dir}`);
    while (step < totalSteps && stopReason === null) {
      if (o.stopAtStep !== undefined && step >= o.stopAtStep) {
        stopReason = 'stop-at-step';
        break;
      }
      const epoch = Math.floor(step / task.stepsPerEpoch);
      const batchIndex = step % task.stepsPerEpoch;
      const lr = learningRate(step, schedule);
      const ctx: StepContext = { step, epoch, batchIndex, lr, rng: new Random(`${o.seed}/step ${step}`) };
      const batch = task.batch(epoch, batchIndex);
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
      const loss = value.dataSync()[0]!;
      const metricValues: Record<string, number> = {};
      for (const [k, m] of Object.entries(metrics)) metricValues[k] = m.dataSync()[0]!;
      tf.dispose([value, ...Object.values(metrics)]);
      const clipped = clipGradNorm(grads, o.clipGradNorm);
      if (!Number.isFinite(loss) || !Number.isFinite(clipped.norm)) {
        tf.dispose(Object.values(grads));
        if (clipped.clipped) tf.dispose(Object.values(clipped.grads));
        // The parameters are still those after `step` good updates: save them, then stop.
        await checkpoint(step);
        const what = Number.isFinite(loss) ? `gradient norm is ${clipped.norm}` : `loss is ${loss}`;
        throw new TrainingError(
          `${task.name}: ${what} at step ${step + 1} (epoch ${epoch + 1}, batch ${batchIndex + 1}, lr ${lr.toPrecision(3)}); saved the last good state (step ${step}) to ${stateFile}. Try a lower --lr${o.clipGradNorm === undefined ? ' or --clip-grad-norm 1' : ''}.`,
        );
      }
      optimizer.applyGradients(clipped.grads, lr);
      tf.dispose(Object.values(grads));
      if (clipped.clipped) tf.dispose(Object.values(clipped.grads));
      step += 1;
      sessionSteps += 1;
      history.steps.push({ step, loss, lr, ...metricValues });
      o.onStep?.({ step, loss, lr, epoch, batchIndex });
      if (progress) {
        const rate = examples ? `  ${((sessionSteps * examples) / Math.max(1e-9, sessionSeconds())).toFixed(1)} img/s` : '';
        progress.tick(1, `e${epoch + 1}/${Math.ceil(totalSteps / task.stepsPerEpoch)} loss ${fmt(loss)} lr ${lr.toExponential(1)}${rate}`);
      }

      // End of an epoch, or of training part-way through one: validate, draw, checkpoint.
      if (step % task.stepsPerEpoch === 0 || step === totalSteps) {
        const ctx = ctxAt(step);
        lastEvaluation = task.evaluate ? await task.evaluate(ctx) : {};
        const seconds = elapsedBefore + sessionSeconds();
        history.epochs.push({ epoch: ctx.epoch, step, seconds, ...lastEvaluation });
        await task.onEpochEnd?.(ctx, lastEvaluation);
        await checkpoint(step);
        const recent = history.steps.slice(-(step % task.stepsPerEpoch || task.stepsPerEpoch));
        const trainLoss = recent.reduce((a, s) => a + s.loss, 0) / Math.max(1, recent.length);
        const evalText = Object.entries(lastEvaluation).map(([k, v]) => `val ${k} ${fmt(v)}`).join('  ');
        progress?.finish();
        log(`${task.name}: epoch ${ctx.epoch}/${Number((totalSteps / task.stepsPerEpoch).toFixed(3))}  train loss ${fmt(trainLoss)}  ${evalText}  (${formatDuration(seconds)})`);
      }
      await tick(); // let Ctrl-C / abort handlers run
      if (o.timeLimitSeconds !== undefined && sessionSeconds() >= o.timeLimitSeconds && step < totalSteps) stopReason ??= 'time-limit';
    }
    if (stopReason === null && o.stopAtStep !== undefined && step >= o.stopAtStep && step < totalSteps) stopReason = 'stop-at-step';

    if (stopReason !== null) {
      progress?.finish();
      if (savedAt !== step) await checkpoint(step);
      log(`${task.name}: stopped (${stopReason}) at step ${step}/${totalSteps}; saved ${stateFile} — continue with --resume`);
    } else {
      progress?.finish();
      if (savedAt !== step) await checkpoint(step);
      await task.onTrainEnd?.(ctxAt(step));
    }
    const seconds = sessionSeconds();
    return {
      step,
      totalSteps,
      stopped: stopReason ?? 'finished',
      seconds,
      elapsed: elapsedBefore + seconds,
      examplesPerSecond: examples && seconds > 0 ? (sessionSteps * examples) / seconds : 0,
      history,
      lastEvaluation,
      statePath: stateFile,
    };
  } finally {
    if (handleSigint) process.off('SIGINT', onSigint);
    o.signal?.removeEventListener('abort', onAbort);
    optimizer.dispose();
  }
}

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

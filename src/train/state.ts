/**
 * Training state on disk: everything needed to continue a run exactly where it stopped.
 *
 *   <run>/train/<task>/state.safetensors
 *     model.<param>        the trainable parameters (tfjs layout, float32: exact)
 *     exp_avg.<param>      AdamW first moments
 *     exp_avg_sq.<param>   AdamW second moments
 *     __metadata__         format, task, step, epoch, batch (next position in the epoch's
 *                          order), total_steps (the run is finished when step = total_steps), settings (JSON: every hyper-parameter that shapes the run),
 *                          elapsed seconds, saved_at
 *     <prefix>.<name>      a task's extra state (the UNet's EMA weights: ema.<param>)
 *   <run>/train/<task>/history.json   per-step losses and per-epoch validation numbers
 *
 * A checkpoint is this one file, written atomically (temporary file + rename): everything a
 * resume needs is in it, all at the same step, so no kill can leave parts of a checkpoint at
 * different steps. (Earlier sdlab wrote the UNet's EMA to a second file, ema.safetensors,
 * beside it; a state without the extra tensors is resumed from that file, see ExtraState.) The
 * exported model directory (<run>/vae/ ...) is for using the model, not for resuming. The data order and all training noise
 * are pure functions of (seed, epoch) and (seed, step), so no generator state is stored.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.ts';
import { UsageError } from '../util/errors.ts';
import { writeFileAtomicSync } from '../util/fs.ts';
import type { AdamW } from './optimizer.ts';

export const STATE_FORMAT = 'sdlab-train-state';
export const STATE_VERSION = '1';
export const STATE_FILE = 'state.safetensors';
export const HISTORY_FILE = 'history.json';

/** Where a task's training state, history and pictures live: <run>/train/<task>. */
export function trainDir(runDir: string, task: string): string {
  return path.join(runDir, 'train', task);
}

export function statePath(runDir: string, task: string): string {
  return path.join(trainDir(runDir, task), STATE_FILE);
}

export interface StateInfo {
  task: string;
  /** Updates applied so far. */
  step: number;
  /** Position of the next batch: epoch (0-based) and batch index within its order. */
  epoch: number;
  batch: number;
  /** Updates the finished run will have (epochs × steps per epoch, or maxSteps): done when step reaches it. */
  totalSteps: number;
  settings: Record<string, unknown>;
  /** Training seconds accumulated over all sessions. */
  elapsed: number;
}

export interface History {
  task: string;
  /** One entry per update: step (1-based: updates done), loss, lr and the task's metrics. */
  steps: Array<{ step: number; loss: number; lr: number; [metric: string]: number }>;
  /** One entry per finished epoch (1-based), with the validation numbers. */
  epochs: Array<{ epoch: number; step: number; seconds: number; [metric: string]: number }>;
}

/**
 * Variables besides the trained parameters that a resume needs (the UNet's EMA), stored in the
 * state file as `<prefix>.<name>` so that a checkpoint stays one atomic write.
 */
export interface ExtraState {
  prefix: string;
  variables: Array<[string, tf.Variable]>;
  /** Loads them from elsewhere when the state file has none (a run saved by an older sdlab). */
  legacy?(step: number): void;
}

/** Writes the state file atomically (with the task's extra state, if any). */
export function saveState(
  file: string,
  info: StateInfo,
  params: Array<[string, tf.Variable]>,
  optimizer: AdamW,
  extra?: ExtraState,
): void {
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [key, v] of [...keyed('model', params), ...keyed(extra?.prefix, extra?.variables)]) {
    tensors.set(key, { shape: [...v.shape], data: (v.dataSync() as Float32Array).slice() });
  }
  for (const [k, t] of optimizer.stateTensors()) tensors.set(k, t);
  writeSafetensors(file, tensors, {
    metadata: {
      format: STATE_FORMAT,
      version: STATE_VERSION,
      task: info.task,
      step: String(info.step),
      epoch: String(info.epoch),
      batch: String(info.batch),
      total_steps: String(info.totalSteps),
      optimizer_step: String(optimizer.step),
      settings: JSON.stringify(info.settings),
      elapsed: String(info.elapsed),
      saved_at: new Date().toISOString(),
    },
  });
}

/** Reads only the metadata of a state file (cheap: no tensor data). */
export function readStateInfo(file: string): StateInfo {
  const st = SafetensorsFile.open(file);
  const m = st.metadata;
  if (m.format !== STATE_FORMAT) throw new UsageError(`${file}: not an sdlab training state (metadata format is ${JSON.stringify(m.format)}).`);
  if (m.version !== STATE_VERSION) throw new UsageError(`${file}: training state version ${m.version}, this sdlab reads version ${STATE_VERSION}.`);
  const num = (k: string) => {
    const v = Number(m[k]);
    if (!Number.isFinite(v)) throw new UsageError(`${file}: metadata "${k}" is ${JSON.stringify(m[k])}, expected a number.`);
    return v;
  };
  let settings: Record<string, unknown>;
  try {
    settings = JSON.parse(m.settings ?? '{}') as Record<string, unknown>;
  } catch {
    throw new UsageError(`${file}: metadata "settings" is not valid JSON.`);
  }
  return { task: m.task ?? '', step: num('step'), epoch: num('epoch'), batch: num('batch'), totalSteps: m.total_steps === undefined ? NaN : num('total_steps'), settings, elapsed: num('elapsed') };
}

/** Loads parameters, optimizer state and the task's extra state from a state file (checks every name and shape first). */
export function loadState(file: string, params: Array<[string, tf.Variable]>, optimizer: AdamW, extra?: ExtraState): StateInfo {
  const info = readStateInfo(file);
  const st = SafetensorsFile.open(file);
  const model = keyed('model', params);
  const extras = keyed(extra?.prefix, extra?.variables);
  const stored = extras.filter(([key]) => st.entries.has(key)).length;
  const problems = shapeProblems(st, model);
  const known = new Set(model.map(([key]) => key));
  const unknownModel = st.names().filter((k) => k.startsWith('model.') && !known.has(k));
  if (unknownModel.length) problems.push(`${unknownModel.length} unexpected parameter(s), e.g. ${unknownModel[0]}`);
  if (stored > 0) problems.push(...shapeProblems(st, extras));
  if (extra && stored === 0 && !extra.legacy) problems.push(`no ${extra.prefix}.* tensors`);
  if (problems.length) {
    throw new UsageError(`${file}: the saved parameters do not fit the model (${problems.slice(0, 5).join('; ')}${problems.length > 5 ? `; … ${problems.length - 5} more` : ''}).`);
  }
  const opt = st.readAll((k) => k.startsWith('exp_avg'));
  optimizer.loadState(Number(st.metadata.optimizer_step ?? info.step), opt, file);
  assignFrom(st, model);
  if (extra && stored === 0) extra.legacy!(info.step);
  else assignFrom(st, extras);
  return info;
}

/** Variables under their keys in the state file: `<prefix>.<name>` (model.<param>, ema.<param>). */
function keyed(prefix: string | undefined, vars: Array<[string, tf.Variable]> | undefined): Array<[string, tf.Variable]> {
  return (vars ?? []).map(([name, v]) => [`${prefix}.${name}`, v]);
}

/** What keeps `vars` from loading from `st`: missing keys and shapes that differ. */
function shapeProblems(st: SafetensorsFile, vars: Array<[string, tf.Variable]>): string[] {
  const problems: string[] = [];
  for (const [key, v] of vars) {
    const e = st.entries.get(key);
    if (!e) problems.push(`missing ${key}`);
    else if (e.shape.join(',') !== v.shape.join(',')) problems.push(`${key} is [${e.shape}] but the model needs [${v.shape}]`);
  }
  return problems;
}

/** Reads each variable's tensor from `st` (one at a time) into the variable. */
function assignFrom(st: SafetensorsFile, vars: Array<[string, tf.Variable]>): void {
  for (const [key, v] of vars) {
    const t = st.read(key);
    tf.tidy(() => v.assign(tf.tensor(t.data, v.shape, 'float32')));
  }
}

export function readHistory(dir: string, task: string): History {
  const file = path.join(dir, HISTORY_FILE);
  if (!fs.existsSync(file)) return { task, steps: [], epochs: [] };
  try {
    const h = JSON.parse(fs.readFileSync(file, 'utf8')) as History;
    if (!Array.isArray(h.steps) || !Array.isArray(h.epochs)) throw new Error('bad shape');
    return h;
  } catch (err) {
    throw new UsageError(`${file}: not a valid training history (${(err as Error).message}); delete it to start a fresh history.`);
  }
}

export function writeHistory(dir: string, h: History): void {
  writeFileAtomicSync(path.join(dir, HISTORY_FILE), JSON.stringify(h) + '\n');
}

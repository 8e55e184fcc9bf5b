/**
 * EMA: an exponential moving average of a model's weights, kept in a second model of the same
 * config (diffusers' EMAModel without warm-up power). The UNet trainer exports the average: it
 * samples better than the raw weights of the last step.
 *
 *   const ema = new Ema(rawParams, emaParams, 0.999);
 *   ema.copyFromRaw();                 // at the start
 *   ema.update(step);                  // after every optimizer step
 *   // The trainer stores ema.ema in the training state (exact resume); ema.load(file, step)
 *   // reads the separate ema.safetensors an older sdlab wrote beside the state.
 */
import fs from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import { SafetensorsFile } from '../io/safetensors.ts';
import { UsageError } from '../util/errors.ts';
import type { NamedVariable } from './optimizer.ts';

/** Exponential moving average of a model's parameters, kept in a second model of the same config. */
export class Ema {
  constructor(
    readonly raw: NamedVariable[],
    readonly ema: NamedVariable[],
    readonly maxDecay: number,
  ) {
    if (raw.length !== ema.length || raw.some(([n], i) => n !== ema[i][0])) throw new Error('Ema: the two models do not have the same parameters');
  }

  /** diffusers' EMAModel.get_decay (no ema warm-up power): min(maxDecay, (1+n)/(10+n)), n = updates before this one. */
  decayAt(updatesDone: number): number {
    const n = Math.max(0, updatesDone - 1);
    return Math.min(this.maxDecay, (1 + n) / (10 + n));
  }

  copyFromRaw(): void {
    tf.tidy(() => this.ema.forEach(([, e], i) => e.assign(this.raw[i][1])));
  }

  /** ema ← d·ema + (1−d)·raw, after update number `updatesDone`. */
  update(updatesDone: number): void {
    const d = this.decayAt(updatesDone);
    tf.tidy(() => this.ema.forEach(([, e], i) => e.assign(tf.add(tf.mul(e, d), tf.mul(this.raw[i][1], 1 - d)))));
  }

  /** Loads ema.safetensors, which must be at `step` (the training state's). */
  load(file: string, step: number): void {
    if (!fs.existsSync(file)) throw new UsageError(`--resume: ${file} is missing (the EMA weights of the run); start over with --overwrite.`);
    const st = SafetensorsFile.open(file);
    const at = Number(st.metadata.step);
    if (at !== step) throw new UsageError(`--resume: ${file} is at step ${st.metadata.step} but the training state at step ${step}; start over with --overwrite.`);
    for (const [n, v] of this.ema) {
      const e = st.entries.get(`ema.${n}`);
      if (!e || e.shape.join(',') !== v.shape.join(',')) throw new UsageError(`--resume: ${file} does not fit the model (ema.${n}); start over with --overwrite.`);
      const data = st.read(`ema.${n}`).data;
      tf.tidy(() => v.assign(tf.tensor(data, v.shape, 'float32')));
    }
  }
}

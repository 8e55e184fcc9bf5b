/**
 * AdamW (decoupled weight decay, Loshchilov & Hutter) and the learning-rate schedule, written
 * out so that the whole optimizer state — step count and the two moment buffers per parameter —
 * is plain named tensors that a checkpoint can save and restore exactly. (tfjs's own Adam has
 * no decoupled weight decay and names its slots after auto-generated variable names.)
 *
 *   const opt = new AdamW(model.namedParameters().map(([n, p]) => [n, p.variable]), { weightDecay: 0.01 });
 *   const { value, grads } = tf.variableGrads(lossFn, opt.variables);
 *   opt.applyGradients(grads, learningRate(opt.step, schedule));
 *
 * One update, for every parameter p with gradient g, exactly as torch.optim.AdamW:
 *   t += 1
 *   p ← p · (1 − lr·wd)                                 decay first, independent of the gradient
 *   m ← β1·m + (1 − β1)·g,   v ← β2·v + (1 − β2)·g²
 *   p ← p − lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + ε)
 * Parameters with no gradient this step (null/absent) are left alone, as PyTorch skips grad=None.
 */
import * as tf from '@tensorflow/tfjs';
import { UsageError } from '../util/errors.ts';
import { fusedAdamW } from '../ops/index.ts';

export interface AdamWConfig {
  beta1: number;
  beta2: number;
  eps: number;
  /** Decoupled weight decay (PyTorch's AdamW default 0.01). */
  weightDecay: number;
}

export const ADAMW_DEFAULTS: AdamWConfig = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };

/** A trainable variable with its checkpoint name (e.g. 'encoder.conv_in.weight'). */
export type NamedVariable = [name: string, variable: tf.Variable];

export class AdamW {
  readonly config: AdamWConfig;
  /** Number of updates applied so far (PyTorch's state['step']). */
  step = 0;
  readonly names: string[];
  readonly variables: tf.Variable[];
  /** First and second moment estimates, aligned with `variables`. */
  readonly expAvg: tf.Variable[];
  readonly expAvgSq: tf.Variable[];

  constructor(params: NamedVariable[], config: Partial<AdamWConfig> = {}) {
    this.config = { ...ADAMW_DEFAULTS, ...config };
    const names = new Set<string>();
    for (const [n] of params) {
      if (names.has(n)) throw new Error(`AdamW: parameter name "${n}" appears twice`);
      names.add(n);
    }
    this.names = params.map(([n]) => n);
    this.variables = params.map(([, v]) => v);
    this.expAvg = this.variables.map((v) => tf.variable(tf.zerosLike(v), false));
    this.expAvgSq = this.variables.map((v) => tf.variable(tf.zerosLike(v), false));
  }

  /**
   * Applies one update with learning rate `lr`. `grads` maps variable names (v.name, what
   * tf.variableGrads returns) to gradients, or is an array aligned with `variables`.
   */
  applyGradients(grads: tf.NamedTensorMap | Array<tf.Tensor | null>, lr: number): void {
    const { beta1: b1, beta2: b2, eps, weightDecay: wd } = this.config;
    this.step += 1;
    const t = this.step;
    const bc1 = 1 - b1 ** t;
    const bc2Sqrt = Math.sqrt(1 - b2 ** t);
    const stepSize = lr / bc1;
    tf.tidy(() => {
      this.variables.forEach((p, i) => {
        const g = Array.isArray(grads) ? grads[i] : grads[p.name];
        if (!g) return;
        const m = this.expAvg[i];
        const v = this.expAvgSq[i];
        // On the native backend the lines below run as one kernel (same float32 bits).
        const fused = fusedAdamW(p, g, m, v, { beta1: b1, beta2: b2, eps, decay: wd !== 0 ? 1 - lr * wd : null, bc2Sqrt, stepSize });
        if (fused) {
          m.assign(fused[1]);
          v.assign(fused[2]);
          p.assign(fused[0]);
          return;
        }
        const mNew = tf.add(tf.mul(m, b1), tf.mul(g, 1 - b1));
        const vNew = tf.add(tf.mul(v, b2), tf.mul(tf.square(g), 1 - b2));
        m.assign(mNew);
        v.assign(vNew);
        const decayed = wd !== 0 ? tf.mul(p, 1 - lr * wd) : p;
        const denom = tf.add(tf.div(tf.sqrt(vNew), bc2Sqrt), eps);
        p.assign(tf.sub(decayed, tf.mul(tf.div(mNew, denom), stepSize)));
      });
    });
  }

  /** The moment buffers as name → {shape, data} (internal tfjs layout), for checkpoints. */
  stateTensors(): Map<string, { shape: number[]; data: Float32Array }> {
    const out = new Map<string, { shape: number[]; data: Float32Array }>();
    this.names.forEach((n, i) => {
      out.set(`exp_avg.${n}`, { shape: [...this.expAvg[i].shape], data: (this.expAvg[i].dataSync() as Float32Array).slice() });
      out.set(`exp_avg_sq.${n}`, { shape: [...this.expAvgSq[i].shape], data: (this.expAvgSq[i].dataSync() as Float32Array).slice() });
    });
    return out;
  }

  /** Restores the step count and moment buffers written by stateTensors(); `source` names the file in errors. */
  loadState(step: number, tensors: Map<string, { shape: number[]; data: Float32Array }>, source: string): void {
    const problems: string[] = [];
    const plan: Array<[tf.Variable, Float32Array]> = [];
    this.names.forEach((n, i) => {
      for (const [key, buf] of [[`exp_avg.${n}`, this.expAvg[i]], [`exp_avg_sq.${n}`, this.expAvgSq[i]]] as const) {
        const t = tensors.get(key);
        if (!t) problems.push(`missing ${key}`);
        else if (t.shape.join(',') !== buf.shape.join(',')) problems.push(`${key} is [${t.shape}] but the model needs [${buf.shape}]`);
        else plan.push([buf, t.data]);
      }
    });
    if (problems.length) {
      throw new UsageError(`${source}: optimizer state does not fit the model (${problems.slice(0, 5).join('; ')}${problems.length > 5 ? `; … ${problems.length - 5} more` : ''}).`);
    }
    for (const [buf, data] of plan) tf.tidy(() => buf.assign(tf.tensor(data, buf.shape, 'float32')));
    this.step = step;
  }

  dispose(): void {
    for (const v of [...this.expAvg, ...this.expAvgSq]) v.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// Learning-rate schedule

export interface LrSchedule {
  /** Peak learning rate. */
  lr: number;
  /** Linear warm-up over this many updates (diffusers: lr·step/warmup, so update 0 uses lr 0). */
  warmupSteps: number;
  /** After warm-up: constant, or half a cosine down to minLrRatio·lr at totalSteps. */
  decay: 'constant' | 'cosine';
  /** Total number of updates (the cosine's end). */
  totalSteps: number;
  /** Floor of the cosine as a fraction of lr (0 = diffusers' get_cosine_schedule_with_warmup). */
  minLrRatio: number;
}

/**
 * Learning rate for update number `step` (0-based: the step-th call of applyGradients), the same
 * as diffusers' get_constant_schedule_with_warmup / get_cosine_schedule_with_warmup (num_cycles
 * 0.5) when minLrRatio is 0:
 *   warm-up:  lr · step / warmup                                       (step < warmup)
 *   cosine:   lr · (r + (1 − r) · ½(1 + cos(π · (step − warmup) / (total − warmup)))), floored at r
 */
export function learningRate(step: number, s: LrSchedule): number {
  if (step < s.warmupSteps) return (s.lr * step) / Math.max(1, s.warmupSteps);
  if (s.decay === 'constant') return s.lr;
  const progress = (step - s.warmupSteps) / Math.max(1, s.totalSteps - s.warmupSteps);
  const cosine = Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress)));
  const r = s.minLrRatio;
  return s.lr * (r + (1 - r) * cosine);
}

// ---------------------------------------------------------------------------------------------
// Gradient norm

/**
 * Global L2 norm of the gradients; if `maxNorm` is given and exceeded, returns the gradients
 * scaled by maxNorm / (norm + 1e-6) (torch.nn.utils.clip_grad_norm_). The returned map holds
 * new tensors only when clipping happened; the caller disposes what it owns either way.
 */
export function clipGradNorm(grads: tf.NamedTensorMap, maxNorm?: number): { grads: tf.NamedTensorMap; norm: number; clipped: boolean } {
  const list = Object.values(grads).filter((g): g is tf.Tensor => g != null);
  const norm = list.length === 0 ? 0 : tf.tidy(() => tf.sqrt(tf.addN(list.map((g) => tf.sum(tf.square(g))))).dataSync()[0]);
  if (maxNorm === undefined || !(norm > maxNorm) || !Number.isFinite(norm)) return { grads, norm, clipped: false };
  const scale = maxNorm / (norm + 1e-6);
  const out: tf.NamedTensorMap = {};
  for (const [k, g] of Object.entries(grads)) if (g) out[k] = tf.mul(g, scale);
  return { grads: out, norm, clipped: true };
}

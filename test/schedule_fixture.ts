/**
 * Shared by the schedule tests: the sd1_tiny fixture (manifest, SD's scheduler_config.json, the
 * scheduler.* reference tensors) and an element-wise closeness check that reports the worst entry.
 */
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { readSafetensors, type SafeTensor } from '../src/io/safetensors.ts';
import { readSchedulerConfig } from '../src/schedule/index.ts';

await tf.setBackend('cpu');

export const FIXTURE = path.resolve(__dirname, '../../shared/fixtures/sd1_tiny');

// manifest.json is written by Python's json, which spells infinities as bare -Infinity:
// turn them into strings ("-Infinity"), which scheduler configs accept for lambda_min_clipped.
const manifestText = fs.readFileSync(path.join(FIXTURE, 'manifest.json'), 'utf8');
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const manifest: any = JSON.parse(manifestText.replace(/([:[,]\s*)(-?Infinity|NaN)(?=\s*[,\]}])/g, '$1"$2"'));

export const sdSchedulerConfig: Record<string, unknown> = readSchedulerConfig(path.join(FIXTURE, 'model/scheduler/scheduler_config.json'));

let refs: Map<string, SafeTensor> | null = null;
/** A scheduler.* reference tensor; 'key[i]' is row i along axis 0 (the manifest's index syntax). */
export function ref(key: string): SafeTensor {
  refs ??= readSafetensors(path.join(FIXTURE, 'reference.safetensors'), (n) => n.startsWith('scheduler.'));
  const m = /^(.*)\[(\d+)\]$/.exec(key);
  const t = refs.get(m ? m[1] : key);
  if (!t) throw new Error(`reference.safetensors has no tensor "${key}"`);
  if (!m) return t;
  const i = Number(m[2]);
  const rowShape = t.shape.slice(1);
  const rowSize = rowShape.reduce((a, b) => a * b, 1);
  return { dtype: t.dtype, shape: rowShape, data: t.data.subarray(i * rowSize, (i + 1) * rowSize) };
}

export function refTensor(key: string): tf.Tensor {
  const t = ref(key);
  return tf.tensor(t.data, t.shape, 'float32');
}

export interface Closeness {
  /** Largest |a-b| / (rtol·|b| + atol) over all entries: <= 1 means every entry passes. */
  worst: number;
  worstIndex: number;
  maxAbs: number;
  maxRel: number;
}

/** Compares a (ours) with b (reference) entry by entry: |a-b| <= rtol·|b| + atol. */
export function closeness(a: ArrayLike<number>, b: ArrayLike<number>, rtol: number, atol: number): Closeness {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs reference ${b.length}`);
  let worst = 0;
  let worstIndex = -1;
  let maxAbs = 0;
  let maxRel = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= Number.MAX_VALUE)) return { worst: Infinity, worstIndex: i, maxAbs: Infinity, maxRel: Infinity }; // NaN
    const r = d / (rtol * Math.abs(b[i]) + atol);
    if (r > worst) {
      worst = r;
      worstIndex = i;
    }
    maxAbs = Math.max(maxAbs, d);
    if (b[i] !== 0) maxRel = Math.max(maxRel, d / Math.abs(b[i]));
  }
  return { worst, worstIndex, maxAbs, maxRel };
}

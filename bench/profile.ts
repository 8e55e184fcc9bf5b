/**
 * Per-kernel profile of a training step (bench/cases.ts): time per kernel name, and the most
 * expensive (kernel, input shapes) pairs, averaged over --steps steps after one warm-up step.
 *
 * Every kernel of the backend is wrapped with a timer. --clock cpu (the default) charges each
 * call the CPU time the process used during it (all threads, so a kernel running on 2 threads
 * for 1 ms costs 2 ms): unlike wall time, that is not inflated when other processes share the
 * cores. --clock wall measures elapsed time. "step" is the median wall time of a whole step.
 *
 *   node bin/run-ts.mjs bench/profile.ts vae|unet|convnet [--backend native|cpu] [--steps 3] [--clock cpu|wall] [--top 12] [--shapes 15] [--unfused]
 *
 * --unfused runs src/ops' GroupNorm / LayerNorm / SiLU / GELU as tfjs compositions instead of
 * their fused kernels (see bench/cases.ts).
 */
import * as tf from '@tensorflow/tfjs';
import { registerNativeBackend } from '../src/backend/native.ts';
import { type TrainStep, convnetTrainStep, unetTrainStep, useFusedOps, vaeTrainStep } from './cases.ts';

const args = process.argv.slice(2);
const which = args[0];
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const STEPS: Record<string, () => TrainStep> = { vae: () => vaeTrainStep(), unet: () => unetTrainStep(), convnet: () => convnetTrainStep() };
if (!which || !Object.hasOwn(STEPS, which)) {
  console.error('usage: bench/profile.ts vae|unet|convnet [--backend native|cpu] [--steps N] [--clock cpu|wall] [--top N] [--shapes N] [--unfused]');
  process.exit(2);
}
const backend = opt('backend', 'native');
const steps = Number(opt('steps', '3'));
const clock = opt('clock', 'cpu');
const top = Number(opt('top', '12'));
const topShapes = Number(opt('shapes', '15'));
if (args.includes('--unfused')) useFusedOps(false);

tf.env().set('PROD', true);
if (backend === 'native' && !registerNativeBackend()) throw new Error('native backend not available');
await tf.setBackend(backend);

const now = clock === 'cpu' ? () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; } : () => performance.now();
let recording = false;
let depth = 0; // kernels that call other kernels are charged once, at the outermost call
const byName = new Map<string, { ms: number; calls: number }>();
const byShape = new Map<string, { ms: number; calls: number }>();
const add = (m: Map<string, { ms: number; calls: number }>, key: string, ms: number) => {
  const a = m.get(key) ?? { ms: 0, calls: 0 };
  a.ms += ms;
  a.calls++;
  m.set(key, a);
};
for (const config of tf.getKernelsForBackend(backend)) {
  const inner = config.kernelFunc;
  tf.unregisterKernel(config.kernelName, backend);
  tf.registerKernel({
    ...config,
    kernelFunc: (a) => {
      if (!recording || depth > 0) return inner(a);
      depth++;
      const t0 = now();
      try {
        return inner(a);
      } finally {
        const ms = now() - t0;
        depth--;
        const shapes = Object.values(a.inputs).filter((t) => t != null).map((t) => `[${(t as tf.TensorInfo).shape}]`).join(' ');
        add(byName, config.kernelName, ms);
        add(byShape, `${config.kernelName} ${shapes}`, ms);
      }
    },
  });
}

const step = STEPS[which]();
step.run(); // warm-up
const walls: number[] = [];
let cpuTotal = 0;
recording = true;
for (let s = 0; s < steps; s++) {
  const t0 = performance.now(), c0 = process.cpuUsage();
  step.run();
  const c = process.cpuUsage(c0);
  cpuTotal += (c.user + c.system) / 1000;
  walls.push(performance.now() - t0);
}
recording = false;
step.dispose();

let kernelTotal = 0, calls = 0;
for (const v of byName.values()) {
  kernelTotal += v.ms;
  calls += v.calls;
}
const wall = [...walls].sort((a, b) => a - b)[walls.length >> 1];
const per = (x: number) => (x / steps).toFixed(2).padStart(8);
console.log(`${which}-train-step on ${backend}: step ${wall.toFixed(1)} ms wall (median of ${steps}), ${(cpuTotal / steps).toFixed(1)} ms CPU; ` +
  `kernels ${(kernelTotal / steps).toFixed(1)} ms ${clock} in ${calls / steps} calls\n`);
console.log(`  ms/step   calls  %kern  kernel (${clock} time)`);
for (const [name, v] of [...byName].sort((p, q) => q[1].ms - p[1].ms).slice(0, top)) {
  console.log(`${per(v.ms)}  ${String(v.calls / steps).padStart(6)}  ${((100 * v.ms) / kernelTotal).toFixed(1).padStart(5)}  ${name}`);
}
console.log('\n  ms/step   calls  kernel and input shapes');
for (const [key, v] of [...byShape].sort((p, q) => q[1].ms - p[1].ms).slice(0, topShapes)) {
  console.log(`${per(v.ms)}  ${String(v.calls / steps).padStart(6)}  ${key}`);
}

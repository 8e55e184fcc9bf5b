/**
 * Child process of test/memory.test.ts (huge pages): on the native backend, times in page faults
 * the first write of a fresh 128 MB tensor (an Add's output) and prints one JSON line.
 */
import * as tf from '@tensorflow/tfjs';
import { selectBackend } from '../../src/backend/index.ts';

await selectBackend('native');
const n = 32 << 20; // 128 MB of float32
const a = tf.fill([n], 1), b = tf.fill([n], 2);
a.dataSync(), b.dataSync();
const f0 = process.resourceUsage().minorPageFault;
const c = tf.add(a, b);
const faults = process.resourceUsage().minorPageFault - f0;
const v = c.dataSync();
console.log(JSON.stringify({ faults, pages4k: (n * 4) / 4096, first: v[0], last: v[n - 1], backend: tf.getBackend() }));

/**
 * Inference frees what it is done with (issue 17: SD 1.5 at 512 px in ≤ 3.5 GiB): freeEarly and
 * sequential (src/nn/module.ts) dispose intermediate activations at once when no gradient is being
 * recorded, and keep them for backpropagation when one is. Checked: what is freed and when, that
 * gradients through the same code are unchanged (against a closed form), that a UNet and a VAE
 * forward leave nothing behind and hold fewer bytes at their peak than the same code with the
 * tape on, and that releasing cached memory between phases (util/memory.ts) leaves results intact.
 */
import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { freeEarly, sequential } from '../src/nn/index.ts';
import { UNet2DConditionModel } from '../src/unet/index.ts';
import { AutoencoderKL } from '../src/autoencoder/index.ts';
import { releaseCachedMemory } from '../src/util/memory.ts';
import { useNativeBackend } from './helpers/native-parity.ts';
import { MODEL } from './helpers/pipeline-fixture.ts';

useNativeBackend({ activate: true });

describe('freeEarly / sequential', () => {
  it('frees intermediates at once without a tape, keeps the input and the result', () => {
    const x: tf.Tensor = tf.tensor1d([1, 2, 3]);
    const seen: tf.Tensor[] = [];
    const keep = (t: tf.Tensor) => (seen.push(t), t);
    const y = sequential(x, (h) => keep(tf.mul(h, 2)), (h) => keep(tf.add(h, 1)), (h) => keep(tf.square(h)));
    expect(Array.from(y.dataSync())).toEqual([9, 25, 49]);
    expect(x.isDisposed).toBe(false);
    expect(seen.map((t) => t.isDisposed)).toEqual([true, true, false]);
    const a = tf.exp(x);
    freeEarly(a, null, undefined);
    expect(a.isDisposed).toBe(true);
    tf.dispose([x, y]);
  });

  it('keeps them while a gradient is recorded: d/dx sum((2x + 1)²) = 4(2x + 1)', () => {
    const x: tf.Tensor = tf.tensor1d([1, 2, 3]);
    let freedInside = false;
    const g = tf.grad((v: tf.Tensor) => {
      const t = tf.mul(v, 2);
      freeEarly(t);
      freedInside = t.isDisposed;
      return tf.sum(sequential(t, (h) => tf.add(h, 1), (h) => tf.square(h)));
    })(x);
    expect(freedInside).toBe(false);
    expect(Array.from(g.dataSync())).toEqual([12, 20, 28]);
    tf.dispose([x, g]);
  });
});

describe('model forwards free their activations', () => {
  /** Peak live tensor bytes above the start, and tensors left behind, for fn (tape on: inside tf.grad). */
  async function peak(fn: () => tf.Tensor, tape: boolean): Promise<{ peak: number; left: number; out: Float32Array }> {
    const before = tf.memory().numTensors, startBytes = tf.memory().numBytes;
    let out: Float32Array = new Float32Array(0);
    const info = await tf.profile(() => {
      if (tape) {
        const dummy = tf.scalar(1);
        // The forward inside tf.grad: the tape records it, so nothing may be freed early.
        const g = tf.grad((s: tf.Tensor) => {
          const y = fn();
          out = y.dataSync() as Float32Array;
          return tf.mul(tf.sum(y), s);
        })(dummy);
        tf.dispose([dummy, g]);
      } else {
        const y = fn();
        out = y.dataSync() as Float32Array;
        y.dispose();
      }
    });
    return { peak: info.peakBytes - startBytes, left: tf.memory().numTensors - before, out };
  }

  it('UNet (sd1_tiny): nothing left behind, the same output, a lower peak than with the tape on', async () => {
    const unet = UNet2DConditionModel.fromPretrained(path.join(MODEL, 'unet'));
    const sample = tf.randomNormal([2, 32, 32, 4], 0, 1, 'float32', 1) as tf.Tensor4D;
    const text = tf.randomNormal([2, 77, 32], 0, 1, 'float32', 2) as tf.Tensor3D;
    const inference = await peak(() => unet.forward(sample, [10, 900], text), false);
    const taped = await peak(() => unet.forward(sample, [10, 900], text), true);
    expect(inference.left).toBe(0);
    expect(taped.left).toBe(0);
    expect(Array.from(inference.out)).toEqual(Array.from(taped.out));
    expect(inference.peak).toBeLessThan(0.7 * taped.peak);
    tf.dispose([sample, text]);
    unet.dispose();
  });

  it('VAE decode (sd1_tiny): nothing left behind, the same image, a lower peak; the same after releasing cached memory', async () => {
    const vae = AutoencoderKL.fromPretrained(path.join(MODEL, 'vae'));
    const z = tf.randomNormal([1, 16, 16, 4], 0, 1, 'float32', 3) as tf.Tensor4D;
    const inference = await peak(() => vae.decode(z), false);
    const taped = await peak(() => vae.decode(z), true);
    expect(inference.left).toBe(0);
    expect(Array.from(inference.out)).toEqual(Array.from(taped.out));
    expect(inference.peak).toBeLessThan(0.7 * taped.peak);
    releaseCachedMemory();
    const again = await peak(() => vae.decode(z), false);
    expect(Array.from(again.out)).toEqual(Array.from(inference.out));
    z.dispose();
    vae.dispose();
  });
});

describe('huge pages for fresh buffers (native/src/pool.h advise_huge)', () => {
  // A 4 KB page fault costs about what a 2 MB one does, and in VMs it is slow: first writing a
  // fresh 128 MB output in 4 KB pages takes 32,768 faults, in 2 MB pages 64. The addon advises
  // huge pages for fresh buffers from 4 MB up; the kernel takes the advice where transparent huge
  // pages are "always" or "madvise", and ignores it where they are "never" (or absent).
  const thp = (() => {
    try {
      return /\[(always|madvise|never)\]/.exec(fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'))?.[1] ?? 'never';
    } catch {
      return 'never';
    }
  })();
  const child = (env: Record<string, string>) => {
    const r = spawnSync(process.execPath, [path.resolve('bin/run-ts.mjs'), path.resolve('test/helpers/fault_child.ts')], { encoding: 'utf8', env: { ...process.env, ...env } });
    expect(r.status, r.stderr).toBe(0);
    return JSON.parse(r.stdout.trim().split('\n').pop()!) as { faults: number; pages4k: number; first: number; last: number; backend: string };
  };

  it(`writes a fresh 128 MB tensor in ${thp === 'never' ? '4 KB pages (THP is off here)' : 'huge pages'}, and in 4 KB pages with SDLAB_HUGEPAGES=0`, () => {
    const off = child({ SDLAB_HUGEPAGES: '0' });
    const on = child({});
    for (const r of [off, on]) {
      expect(r.backend).toBe('native');
      expect([r.first, r.last]).toEqual([3, 3]);
    }
    expect(off.faults).toBeGreaterThan(0.9 * off.pages4k);
    if (thp === 'never') expect(on.faults).toBeGreaterThan(0.9 * on.pages4k);
    else expect(on.faults).toBeLessThan(0.1 * on.pages4k);
  }, 120_000);
});

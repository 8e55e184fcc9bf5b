/**
 * The fused ops' gradients are registered by src/ops when it loads, so a program that imports
 * only src/nn (which builds on src/ops) can train on the native backend: no call into
 * src/backend is needed for them. This file imports nn statically and the backend only inside
 * the test that selects it.
 */
import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs';
import { GroupNorm, LayerNorm, getActivation } from '../src/nn/index.ts';

describe('fused ops registration', () => {
  it('importing nn registers the fused kernels\' gradients (before any backend is set up)', () => {
    expect(tf.getGradient('SdlabGroupNorm')).toBeDefined();
    expect(tf.getGradient('SdlabActivation')).toBeDefined();
  });

  it('on native, nn layers run the fused kernels and their gradients match cpu', async () => {
    const { registerNativeBackend, nativeLoadError } = await import('../src/backend/native.ts');
    if (!registerNativeBackend()) throw new Error(`native backend not available: ${nativeLoadError()}`);
    const gn = new GroupNorm(2, 8, { eps: 1e-6 });
    const ln = new LayerNorm(8);
    const silu = getActivation('silu'), gelu = getActivation('gelu');
    const data = Float32Array.from({ length: 2 * 3 * 3 * 8 }, (_, i) => Math.sin(i * 1.7) * 2);
    const run = async (backend: string) => {
      await tf.setBackend(backend);
      const x = tf.tensor4d(data, [2, 3, 3, 8]);
      const w = tf.tensor4d(data.map((v) => Math.cos(v)), [2, 3, 3, 8]); // weighted sum: gradients not ~0
      const f = (t: tf.Tensor) => tf.sum(tf.mul(gelu(ln.forward(silu(gn.forward(t)))), w));
      let grad: Float32Array | undefined;
      const profile = await tf.profile(() => {
        grad = tf.grad(f)(x).dataSync() as Float32Array;
      });
      tf.dispose([x, w]);
      return { grad: grad!, kernels: profile.kernelNames };
    };
    try {
      const cpu = await run('cpu');
      const native = await run('native');
      expect(cpu.kernels).not.toContain('SdlabGroupNorm');
      for (const k of ['SdlabGroupNorm', 'SdlabGroupNormGrad', 'SdlabActivation', 'SdlabActivationGrad']) expect(native.kernels).toContain(k);
      let err = 0;
      cpu.grad.forEach((v, i) => (err = Math.max(err, Math.abs(v - native.grad[i]))));
      expect(err).toBeLessThanOrEqual(1e-4);
    } finally {
      await tf.setBackend('cpu');
      gn.dispose();
      ln.dispose();
    }
  });
});

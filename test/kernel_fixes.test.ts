/**
 * src/ops/kernel_fixes.ts: the gradient of resizeNearestNeighbor on the cpu backend (tfjs 4.22's
 * own kernel gives batch items after the first another item's gradient) and on sdlab's native
 * backend, against the closed form: dx[n, i, j] = Σ dy[n, r, c] over the output pixels (r, c) that
 * the forward copied from (i, j) — for 2× (sums of 2×2 blocks) and an uneven size (brute force
 * over the forward's own mapping, found by pushing one-hot images through the forward).
 */
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, describe, expect, it } from 'vitest';
import '../src/ops/index.ts';
import { registerNativeBackend } from '../src/backend/native.ts';

const backends = ['cpu', ...(registerNativeBackend() ? ['native'] : [])];
afterAll(async () => {
  await tf.setBackend('cpu');
});

function rand(shape: number[], seed: number): tf.Tensor {
  let s = seed;
  const d = new Float32Array(shape.reduce((a, b) => a * b, 1)).map(() => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32) - 0.5);
  return tf.tensor(d, shape);
}

describe.each(backends)('resizeNearestNeighbor gradient on %s', (backend) => {
  it('2× upsampling, batch 3: sums of 2×2 blocks of dy, per batch item', async () => {
    await tf.setBackend(backend);
    const x = rand([3, 4, 5, 2], 1), dy = rand([3, 8, 10, 2], 2);
    const [dx] = tf.grads((a: tf.Tensor) => tf.sum(tf.mul(tf.image.resizeNearestNeighbor(a as tf.Tensor4D, [8, 10]), dy)))([x]);
    const closed = tf.sum(tf.reshape(dy, [3, 4, 2, 5, 2, 2]), [2, 4]);
    expect(tf.max(tf.abs(tf.sub(dx, closed))).dataSync()[0]).toBeLessThan(1e-6);
  });

  it('an uneven size (5×3 → 7×8), batch 2, each flag combination: the forward mapping transposed', async () => {
    await tf.setBackend(backend);
    const [B, H, W, C, OH, OW] = [2, 5, 3, 1, 7, 8];
    for (const [alignCorners, halfPixelCenters] of [[false, false], [true, false], [false, true]]) {
      const dy = rand([B, OH, OW, C], 3);
      const [dx] = tf.grads((a: tf.Tensor) => tf.sum(tf.mul(tf.image.resizeNearestNeighbor(a as tf.Tensor4D, [OH, OW], alignCorners, halfPixelCenters), dy)))([rand([B, H, W, C], 4)]);
      const got = dx.dataSync();
      const dyv = dy.dataSync();
      for (let n = 0; n < B; n++) {
        for (let p = 0; p < H * W; p++) {
          // one-hot input pixel p of item n: the forward shows where it lands
          const onehot = tf.oneHot(tf.tensor1d([n * H * W + p], 'int32'), B * H * W).reshape([B, H, W, C]) as tf.Tensor4D;
          const lands = tf.image.resizeNearestNeighbor(onehot, [OH, OW], alignCorners, halfPixelCenters).dataSync();
          let want = 0;
          for (let q = 0; q < lands.length; q++) want += lands[q] * dyv[q];
          expect(Math.abs(got[n * H * W + p] - want)).toBeLessThan(1e-6);
          onehot.dispose();
        }
      }
    }
  });
});

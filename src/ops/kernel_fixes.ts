/**
 * Corrections to tfjs 4.22 kernels that sdlab's models depend on, registered when the ops load:
 * every model imports them, so an in-process run and the CLI (which selects a backend first) train
 * with the same kernel.
 *
 * ResizeNearestNeighborGrad on the `cpu` backend (the Upsample2D of every UNet and VAE decoder,
 * in training): tfjs's kernel reads dy at the input's batch stride, so batch items after the
 * first receive another item's gradient (wrong by O(1) for batch > 1), and it ignores
 * halfPixelCenters. This one adds each dy pixel to the input pixel the forward copied it from,
 * by the forward's own index rule (nearestSources), as TensorFlow's kernel, sdlab's native
 * backend (which takes nearestSources from here) and tfjs's webgpu backend do;
 * test/kernel_fixes.test.ts checks it against the closed form.
 */
import * as tf from '@tensorflow/tfjs';

/** Source index of each output row/column, exactly as tfjs's cpu resizeNearestNeighbor computes it. */
export function nearestSources(inSize: number, outSize: number, alignCorners: boolean, halfPixelCenters: boolean): Int32Array {
  const ratio = (alignCorners && outSize > 1 ? inSize - 1 : inSize) / (alignCorners && outSize > 1 ? outSize - 1 : outSize);
  const idx = new Int32Array(outSize);
  for (let o = 0; o < outSize; o++) {
    const frac = halfPixelCenters ? ratio * (o + 0.5) : ratio * o;
    let src = Math.min(inSize - 1, alignCorners ? Math.round(frac) : Math.floor(frac));
    if (halfPixelCenters) src = Math.max(0, src);
    idx[o] = src;
  }
  return idx;
}

interface CpuLike {
  readSync(dataId: object): tf.BackendValues;
  makeTensorInfo(shape: number[], dtype: tf.DataType, values?: tf.BackendValues): tf.TensorInfo;
}

const resizeNearestGrad: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { images, dy } = inputs as { images: tf.TensorInfo; dy: tf.TensorInfo };
  const { alignCorners, halfPixelCenters } = attrs as unknown as { alignCorners: boolean; halfPixelCenters?: boolean };
  const b = backend as unknown as CpuLike;
  const [B, H, W, C] = images.shape;
  const [, OH, OW] = dy.shape;
  const g = b.readSync(dy.dataId) as Float32Array;
  const rows = nearestSources(H, OH, alignCorners, halfPixelCenters ?? false);
  const cols = nearestSources(W, OW, alignCorners, halfPixelCenters ?? false);
  const dx = new Float32Array(B * H * W * C);
  for (let n = 0; n < B; n++) {
    for (let r = 0; r < OH; r++) {
      for (let c = 0; c < OW; c++) {
        const src = ((n * OH + r) * OW + c) * C;
        const dst = ((n * H + rows[r]) * W + cols[c]) * C;
        for (let k = 0; k < C; k++) dx[dst + k] += g[src + k];
      }
    }
  }
  return b.makeTensorInfo(images.shape, 'float32', dx);
};

tf.unregisterKernel('ResizeNearestNeighborGrad', 'cpu');
tf.registerKernel({ kernelName: 'ResizeNearestNeighborGrad', backendName: 'cpu', kernelFunc: resizeNearestGrad });

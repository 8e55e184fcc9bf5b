/**
 * The one place where PyTorch weight layouts meet sdlab's internal (TensorFlow) layouts.
 *
 * sdlab computes channels-last (NHWC) because that is what tfjs convolutions want, so
 *   - conv weights live as HWIO [kh, kw, in, out]  (PyTorch files: OIHW [out, in, kh, kw]),
 *   - linear weights live as [in, out], y = x W + b (PyTorch files: [out, in], y = x Wᵀ + b),
 *   - everything else ('plain': biases, norm scales, embeddings) is identical.
 * Every parameter carries one of these layout tags; state dicts (and so safetensors files)
 * are always in PyTorch layout, so diffusers/transformers checkpoints load unchanged.
 */

export type Layout = 'conv' | 'linear' | 'plain';

/** The shape a parameter has in a PyTorch checkpoint, given its internal shape. */
export function torchShape(layout: Layout, shape: readonly number[]): number[] {
  if (layout === 'conv') {
    const [kh, kw, cin, cout] = shape as [number, number, number, number];
    return [cout, cin, kh, kw];
  }
  if (layout === 'linear') {
    const [cin, cout] = shape as [number, number];
    return [cout, cin];
  }
  return [...shape];
}

/** The permutation that takes a PyTorch-layout tensor (torchShape) to the internal layout: OIHW → HWIO, [out, in] → [in, out]. */
export function torchToInternalPerm(layout: Exclude<Layout, 'plain'>): number[] {
  return layout === 'conv' ? [2, 3, 1, 0] : [1, 0];
}

/**
 * Whether a checkpoint tensor of shape `fileShape` can fill a parameter. Besides the exact
 * PyTorch shape, a linear layer also accepts a 1×1 conv weight [out, in, 1, 1] (the original
 * LDM VAE stores its attention projections that way).
 */
export function shapeMatches(layout: Layout, internalShape: readonly number[], fileShape: readonly number[]): boolean {
  const want = torchShape(layout, internalShape);
  if (sameShape(want, fileShape)) return true;
  if (layout === 'linear' && fileShape.length === 4 && fileShape[2] === 1 && fileShape[3] === 1) {
    return fileShape[0] === want[0] && fileShape[1] === want[1];
  }
  return false;
}

/** Internal-layout data → PyTorch-layout data (loading goes the other way with torchToInternalPerm, on the backend). */
export function toTorch(layout: Layout, internalShape: readonly number[], data: Float32Array): Float32Array {
  if (layout === 'plain') return data;
  if (layout === 'linear') {
    const [cin, cout] = internalShape as [number, number];
    return transpose2d(data, cin, cout); // [in, out] → [out, in]
  }
  const [kh, kw, cin, cout] = internalShape as [number, number, number, number];
  const out = new Float32Array(data.length);
  const hw = kh * kw;
  for (let o = 0; o < cout; o++) {
    for (let i = 0; i < cin; i++) {
      const dst = (o * cin + i) * hw;
      for (let k = 0; k < hw; k++) out[dst + k] = data[(k * cin + i) * cout + o];
    }
  }
  return out;
}

function transpose2d(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[base + c];
  }
  return out;
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

export function shapeStr(shape: readonly number[]): string {
  return `[${shape.join(',')}]`;
}

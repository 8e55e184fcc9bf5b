/**
 * What one kernel may touch on the active backend (a device limit, beside util/limits.ts's input limits). WebGPU binds each tensor a kernel reads or
 * writes as one storage buffer, at most `maxStorageBufferBindingSize` bytes (128 MiB on some
 * adapters, ≥ 2 GiB on most GPUs); larger bindings fail on the GPU while the JS side carries on
 * with garbage. selectBackend (src/backend/index.ts) sets the limit for webgpu and lifts it for
 * every other backend; ops and layers that can split their work read it:
 *   - scaledDotProductAttention computes its score matrix in query-row chunks that fit;
 *   - Embedding gathers the rows of a table too large to bind on the CPU.
 */
export const deviceLimits = { maxBindingBytes: Number.POSITIVE_INFINITY };

/** The most float32/int32 values one binding holds. */
export function bindingElements(): number {
  return Math.floor(deviceLimits.maxBindingBytes / 4);
}

/** Whether a float32/int32 tensor of `elements` values fits one binding. */
export function fitsBinding(elements: number): boolean {
  return elements <= bindingElements();
}

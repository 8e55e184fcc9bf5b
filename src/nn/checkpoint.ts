/**
 * Model weights ↔ safetensors files.
 *
 *   saveWeights(model, 'runs/default/vae/diffusion_pytorch_model.safetensors');
 *   loadWeights(model, 'model/vae/diffusion_pytorch_model.safetensors');
 *
 * Files are in PyTorch layout with diffusers names, so they load in diffusers and vice versa.
 * loadWeights checks every name and shape against the model before reading any data, reports
 * all missing/unexpected/mis-shaped keys in one error, then reads the tensors one at a time
 * (peak memory: the model plus one tensor).
 */
import { type LoadOptions, type Module, assignFromTorch, planLoad } from './module.ts';
import { SafetensorsFile, type WriteDtype, writeSafetensors } from '../io/safetensors.ts';

/** Loads a safetensors file into `model` (see LoadOptions for renaming/skipping keys). */
export function loadWeights(model: Module, file: string, opts: LoadOptions = {}): void {
  const st = SafetensorsFile.open(file);
  const plan = planLoad(model, st.names(), (k) => st.entries.get(k)!.shape, { source: file, ...opts });
  const params = new Map(model.namedParameters());
  for (const [key, name] of plan) assignFromTorch(params.get(name)!, st.read(key).data);
}

/** Saves `model`'s parameters (PyTorch layout, diffusers names) to a safetensors file, atomically. */
export function saveWeights(
  model: Module,
  file: string,
  opts: { dtype?: WriteDtype; metadata?: Record<string, string> } = {},
): void {
  writeSafetensors(file, model.stateDict(), { dtype: opts.dtype, metadata: { format: 'pt', ...opts.metadata } });
}

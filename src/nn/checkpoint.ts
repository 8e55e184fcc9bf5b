/**
 * Model weights ↔ safetensors files.
 *
 *   saveWeights(model, 'runs/default/vae/diffusion_pytorch_model.safetensors');
 *   loadWeights(model, 'model/vae/diffusion_pytorch_model.safetensors');
 *
 * Files are in PyTorch layout with diffusers names, so they load in diffusers and vice versa.
 * loadWeights checks every name and shape against the model before reading any data, reports
 * all missing/unexpected/mis-shaped keys in one error, then reads the tensors one at a time
 * (peak memory: the model plus one tensor), refusing NaN/Inf values. buildAndLoad (which
 * loadPretrained uses) runs the same check on a shape-only model first, so a file that does not
 * fit its config fails before the model is allocated.
 */
import { type LoadOptions, type Module, assignPlanned, buildChecked, planLoad } from './module.ts';
import { SafetensorsFile, type WriteDtype, writeSafetensors } from '../io/safetensors.ts';
import { HALF_MIN_SIZE } from '../util/half_weights.ts';

/**
 * Loads a safetensors file into `model` (see LoadOptions for renaming/skipping keys); a file or
 * an opened header. NaN/Inf values are refused (assignPlanned).
 */
export function loadWeights(model: Module, file: string | SafetensorsFile, opts: LoadOptions = {}): void {
  const st = typeof file === 'string' ? SafetensorsFile.open(file) : file;
  const plan = checkWeights(model, st, opts);
  // Borrowed reads: the file's bytes and their float32 values land in buffers reused from tensor
  // to tensor, and only the parameter's own copy is fresh memory (fresh pages cost ~1 GB/s to
  // touch in a VM: for SD's 2 GB of fp16 weights that was most of the load time).
  assignPlanned(model, plan, (k) => st.read(k, { borrow: true }), opts.source ?? st.file, {
    borrowed: true,
    // fp16 tensors that stay half precision: the file's bits, never float32 (util/half_weights.ts).
    halves: (k) => (st.dtypeOf(k) === 'F16' && st.shapeOf(k).reduce((a, b) => a * b, 1) >= HALF_MIN_SIZE ? st.readHalves(k) : null),
  });
}

/**
 * Builds a model for the weights in `file` and loads them. The model's size and the file's names
 * and shapes are checked on a shape-only build first (buildChecked), so a config that does not
 * fit its weights (or asks for too large a model) fails before anything is allocated. `source`
 * names the config in errors.
 */
export function buildAndLoad<M extends Module>(build: () => M, file: string, source: string, opts: LoadOptions = {}): M {
  const st = SafetensorsFile.open(file);
  const model = buildChecked(build, source, { skip: true, check: (dry) => void checkWeights(dry, st, opts) });
  loadWeights(model, st, opts);
  return model;
}

/**
 * Checks a file's names and shapes against `model` (a real or a shape-only one, see shapeOnly)
 * without reading any tensor; returns the load plan or throws one UsageError listing every problem.
 */
export function checkWeights(model: Module, st: SafetensorsFile, opts: LoadOptions = {}): Array<[string, string]> {
  return planLoad(model, st.names(), (k) => st.entries.get(k)!.shape, { source: st.file, ...opts });
}

/** Saves `model`'s parameters (PyTorch layout, diffusers names) to a safetensors file, atomically. */
export function saveWeights(
  model: Module,
  file: string,
  opts: { dtype?: WriteDtype; metadata?: Record<string, string> } = {},
): void {
  writeSafetensors(file, model.stateDict(), { dtype: opts.dtype, metadata: { format: 'pt', ...opts.metadata } });
}

/**
 * File formats: safetensors files (validated reads, atomic writes), PyTorch `.ckpt` checkpoints
 * (read safely: a restricted unpickler that runs nothing from the file), diffusers-style
 * config.json files, and reading PNG files within sdlab's size limits. io knows no layer and no model: putting a Module's weights into files
 * (loadWeights/saveWeights) and the one fromPretrained loader are src/nn's (checkpoint.ts,
 * pretrained.ts), and the single-file LDM checkpoint importer, which builds models, lives with
 * the pipeline loaders (src/sample/load_single_file.ts).
 *
 *   readSafetensors(file)                  → Map<name, {dtype, shape, data: Float32Array}>
 *   SafetensorsFile.open(file)             → validated header; .read(name) one tensor at a time
 *   writeSafetensors(file, tensors, {dtype: 'F32'|'F16'|'BF16', metadata})
 *   CkptFile.open(file)                    → a torch.save zip's state dict: .names(), .read(name) (io/ckpt.ts)
 *   openTensorFile(file)                   → CkptFile or SafetensorsFile, by content
 *   readConfig(file, {className, defaults, ignored}) / writeConfig(file, className, config)
 *   readPngSize(file) / readPng(file)      → a PNG's header / RGBA pixels, within sdlab's size limits
 */
export * from './safetensors.ts';
export * from './config.ts';
export * from './png.ts';
export { CkptFile, openTensorFile, type TensorFile } from './ckpt.ts';

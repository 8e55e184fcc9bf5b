/**
 * Checkpoint I/O: safetensors files (validated reads, atomic writes), diffusers-style
 * config.json files, and model weights ↔ safetensors.
 *
 *   readSafetensors(file)                  → Map<name, {dtype, shape, data: Float32Array}>
 *   SafetensorsFile.open(file)             → validated header; .read(name) one tensor at a time
 *   writeSafetensors(file, tensors, {dtype: 'F32'|'F16'|'BF16', metadata})
 *   readConfig(file, {className, defaults, ignored}) / writeConfig(file, className, config)
 *   loadWeights(model, file, {keyMap, allowMissing}) / saveWeights(model, file, {dtype})
 */
export * from './safetensors.ts';
export * from './config.ts';
export * from './checkpoint.ts';

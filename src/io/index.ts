/**
 * Checkpoint I/O: safetensors files (validated reads, atomic writes), diffusers-style
 * config.json files, model weights ↔ safetensors, and the one fromPretrained loader. io knows
 * no model (models pass their config readers and constructors in); the single-file LDM
 * checkpoint importer builds models, so it lives with the pipeline loaders (src/sample).
 *
 *   readSafetensors(file)                  → Map<name, {dtype, shape, data: Float32Array}>
 *   SafetensorsFile.open(file)             → validated header; .read(name) one tensor at a time
 *   writeSafetensors(file, tensors, {dtype: 'F32'|'F16'|'BF16', metadata})
 *   readConfig(file, {className, defaults, ignored}) / writeConfig(file, className, config)
 *   loadWeights(model, file, {keyMap, allowMissing}) / saveWeights(model, file, {dtype})
 *   loadPretrained(dir, {what, weightsFile, pickleFile, readConfig, build, keyMap})
 *                                          → a model from config.json + weights (each fromPretrained)
 */
export * from './safetensors.ts';
export * from './config.ts';
export * from './checkpoint.ts';
export * from './pretrained.ts';

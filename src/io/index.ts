/**
 * File formats: safetensors files (validated reads, atomic writes) and diffusers-style
 * config.json files. io knows no layer and no model: putting a Module's weights into files
 * (loadWeights/saveWeights) and the one fromPretrained loader are src/nn's (checkpoint.ts,
 * pretrained.ts), and the single-file LDM checkpoint importer, which builds models, lives with
 * the pipeline loaders (src/sample/load_single_file.ts).
 *
 *   readSafetensors(file)                  → Map<name, {dtype, shape, data: Float32Array}>
 *   SafetensorsFile.open(file)             → validated header; .read(name) one tensor at a time
 *   writeSafetensors(file, tensors, {dtype: 'F32'|'F16'|'BF16', metadata})
 *   readConfig(file, {className, defaults, ignored}) / writeConfig(file, className, config)
 */
export * from './safetensors.ts';
export * from './config.ts';

/**
 * `fromPretrained` for every model: a pretrained directory in the diffusers / transformers
 * layout (save_pretrained) is config.json plus one safetensors weights file. This loader knows
 * no model: each model passes its file names, its config reader and its constructor.
 *
 *   static fromPretrained(dir: string): UNet2DConditionModel {
 *     return loadPretrained(dir, {
 *       what: 'a diffusers UNet directory',
 *       weightsFile: 'diffusion_pytorch_model.safetensors', pickleFile: 'diffusion_pytorch_model.bin',
 *       readConfig: readUnetConfig, build: (cfg) => new UNet2DConditionModel(cfg) });
 *   }
 */
import fs from 'node:fs';
import path from 'node:path';
import type { LoadOptions, Module } from './module.ts';
import { UsageError } from '../util/errors.ts';
import { buildAndLoad } from './checkpoint.ts';

export interface PretrainedSpec<C, M extends Module> {
  /** What the directory should be, for errors: 'a diffusers UNet directory'. */
  what: string;
  /** The weights file in the directory. */
  weightsFile: string;
  /** The PyTorch pickle that may be there instead (named in the error, which points to `sdlab convert`). */
  pickleFile: string;
  /** Reads and validates config.json. */
  readConfig: (file: string) => C;
  /** The model for a config (built without initialisation: the weights overwrite every parameter). */
  build: (config: C) => M;
  /** Renames checkpoint keys to parameter names (e.g. legacy names); see LoadOptions. */
  keyMap?: LoadOptions['keyMap'];
}

/** Builds the model from `dir`'s config.json and loads its weights, with the errors a user can act on. */
export function loadPretrained<C, M extends Module>(dir: string, spec: PretrainedSpec<C, M>): M {
  const cfgFile = path.join(dir, 'config.json');
  const weights = path.join(dir, spec.weightsFile);
  if (!fs.existsSync(cfgFile)) throw new UsageError(`${dir}: no config.json (expected ${spec.what}).`);
  if (!fs.existsSync(weights)) {
    const bin = fs.existsSync(path.join(dir, spec.pickleFile));
    throw new UsageError(`${dir}: no ${spec.weightsFile}${bin ? ` (only a pickle ${spec.pickleFile}: \`sdlab convert\` reads it safely and writes safetensors)` : ''}.`);
  }
  const config = spec.readConfig(cfgFile);
  // A config or header that asks for more than the file holds fails before any allocation.
  return buildAndLoad(() => spec.build(config), weights, cfgFile, { keyMap: spec.keyMap });
}

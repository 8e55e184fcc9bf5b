/**
 * `sdlab convert IN OUT [--dtype fp16|fp32]`: any Stable Diffusion model sdlab reads → a diffusers
 * directory of safetensors files + configs:
 *
 *   npx sdlab convert v1-5-pruned-emaonly.ckpt sd15 --tokenizer path/to/tokenizer
 *   npx sdlab convert model.safetensors sd15 --yaml v1-inference.yaml --tokenizer sd15-diffusers --dtype fp16
 *   npx sdlab convert path/to/diffusers-dir sd15-fp16 --dtype fp16
 *
 * IN is a diffusers directory, an LDM single file (.safetensors), or a PyTorch checkpoint
 * (.ckpt/.pt/.bin, read by io/ckpt.ts's restricted unpickler: nothing in it is run). OUT gets
 * model_index.json, unet/ vae/ text_encoder/ (config.json + weights), scheduler/
 * scheduler_config.json and tokenizer/ (copied from --tokenizer, or from IN's own) — what
 * `sdlab txt2img --model OUT` and diffusers' from_pretrained load.
 *
 * Every component's names and shapes are checked against a shape-only model before anything is
 * written (what sdlab's loaders check), then tensors are converted one at a time (a 4 GB
 * checkpoint needs one tensor's memory). OUT appears whole or not at all: everything is written
 * into a temporary directory beside it, which is renamed to OUT at the end. OUT must not exist
 * (an empty directory is fine): convert never replaces a model.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { UsageError, check } from '../util/errors.ts';
import { checkOutputDir, makeDirs, writeFileAtomicSync } from '../util/fs.ts';
import { firstNonFinite } from '../util/finite.ts';
import { int, oneOf } from '../util/options.ts';
import { MAX_GENERATED_SIDE } from '../util/limits.ts';
import { DIFFUSERS_VERSION, writeConfig } from '../io/config.ts';
import { type TensorFile, openTensorFile } from '../io/ckpt.ts';
import { type WriteDtype, writeSafetensorsFrom } from '../io/safetensors.ts';
import { type Module, planLoad, shapeOnlyChecked } from '../nn/module.ts';
import { torchShape } from '../nn/layout.ts';
import { TEXT_ENCODER_WEIGHTS_FILE, TextEncoder, type TextEncoderConfig, readTextEncoderConfig, textTowerKeyMap } from '../clip/text_encoder.ts';
import { loadTokenizer } from '../clip/tokenizer_load.ts';
import { UNET_WEIGHTS_FILE, UNet2DConditionModel, readUnetConfig } from '../unet/index.ts';
import { AutoencoderKL, VAE_WEIGHTS_FILE, readVaeConfig, vaeLegacyKeyMap } from '../autoencoder/index.ts';
import { readSchedulerConfig } from '../schedule/index.ts';
import { LdmCheckpoint, type LdmComponent } from '../sample/load_single_file.ts';
import { ldmSchedulerConfig, ldmTextEncoderConfig } from '../sample/load.ts';
import { PREDICTIONS } from './sd_common.ts';

export type ConvertDtype = 'fp16' | 'fp32';

export interface ConvertOptions {
  input: string;
  out: string;
  dtype?: ConvertDtype;
  /** Single files: the LDM yaml (default: SD 1.x's v1-inference values). */
  yaml?: string;
  /** A tokenizer folder (vocab.json + merges.txt) to copy into OUT/tokenizer (default: IN's own, for a diffusers IN). */
  tokenizer?: string;
  /** Single files: the text encoder's config.json (default: CLIP ViT-L/14 with 64 channels per head). */
  textEncoderConfig?: string;
  /** Single files: image size the configs' sample_size is derived from (default 512; 768 for v-prediction). */
  imageSize?: number;
  /**
   * What the UNet predicts, written as the scheduler's prediction_type (default: the input's
   * scheduler config or yaml; an SD 2.x single file without a yaml: v_prediction, epsilon for 512-base).
   */
  prediction?: (typeof PREDICTIONS)[number];
  /** Called with one line per component written. */
  log?: (line: string) => void;
}

export interface ConvertResult {
  out: string;
  /** Per component: tensors and parameters written. */
  components: Record<string, { tensors: number; params: number }>;
  tokenizer: boolean;
}

/** One model of the pipeline, checked and ready to write. */
interface Part {
  sub: 'unet' | 'vae' | 'text_encoder';
  weightsFile: string;
  /** [key in the input, parameter name] for every tensor (planLoad's plan). */
  plan: Array<[string, string]>;
  /** Parameter name → PyTorch shape. */
  shapes: Map<string, number[]>;
  read: (key: string) => Float32Array;
  writeConfig: (file: string) => void;
  source: string;
  className: string;
}

/** Checks `keys` against a shape-only `build()` model (names, shapes, size) and returns the write plan. */
function checkPart<M extends Module>(
  sub: Part['sub'],
  build: () => M,
  keys: string[],
  shapeOf: (key: string) => readonly number[],
  read: (key: string) => Float32Array,
  opts: { source: string; configSource: string; keyMap?: (k: string) => string | null; weightsFile: string; className: string; writeConfig: (file: string) => void },
): Part {
  const dry = shapeOnlyChecked(build, opts.configSource);
  const plan = planLoad(dry, keys, shapeOf, { source: opts.source, keyMap: opts.keyMap });
  const shapes = new Map<string, number[]>();
  for (const [name, p] of dry.namedParameters()) shapes.set(name, torchShape(p.layout, p.variable.shape));
  return { sub, plan, shapes, read, source: opts.source, weightsFile: opts.weightsFile, className: opts.className, writeConfig: opts.writeConfig };
}

/** A transformers CLIPTextConfig config.json (sdlab's own `pooling` only when it is not the default). */
function textEncoderJson(cfg: TextEncoderConfig, dtype: ConvertDtype): Record<string, unknown> {
  const { pooling, ...rest } = cfg;
  return { ...rest, ...(pooling !== 'auto' ? { pooling } : {}), model_type: 'clip_text_model', torch_dtype: dtype === 'fp16' ? 'float16' : 'float32' };
}

const TOKENIZER_FILES = ['vocab.json', 'merges.txt', 'tokenizer_config.json', 'special_tokens_map.json', 'added_tokens.json', 'tokenizer.json'];

/** The folder holding the tokenizer files: `dir` itself or its tokenizer/ subfolder (as loadTokenizer looks). */
function tokenizerDir(dir: string): string {
  loadTokenizer(dir); // one line if there is none, or it is broken
  const has = (d: string) => TOKENIZER_FILES.some((f) => fs.existsSync(path.join(d, f)));
  return has(dir) ? dir : path.join(dir, 'tokenizer');
}

/** The diffusers weights of a component folder: safetensors, else the PyTorch pickle beside it (read safely). */
function componentWeights(dir: string, safetensors: string, pickle: string): TensorFile {
  const st = path.join(dir, safetensors);
  if (fs.existsSync(st)) return openTensorFile(st);
  if (fs.existsSync(path.join(dir, pickle))) return openTensorFile(path.join(dir, pickle));
  throw new UsageError(`${dir}: no ${safetensors} (or ${pickle}).`);
}

function diffusersParts(dir: string, dtype: ConvertDtype, prediction: ConvertOptions['prediction']): { parts: Part[]; scheduler: { write: (file: string) => void; className: string } } {
  for (const sub of ['unet', 'vae', 'text_encoder', 'scheduler']) {
    const d = path.join(dir, sub);
    if (!fs.existsSync(d) || !fs.statSync(d).isDirectory()) throw new UsageError(`${dir}: no ${sub}/ folder (expected a diffusers Stable Diffusion directory with unet/, vae/, text_encoder/ and scheduler/).`);
  }
  const unetCfgFile = path.join(dir, 'unet', 'config.json');
  const unetCfg = readUnetConfig(unetCfgFile);
  const unetW = componentWeights(path.join(dir, 'unet'), UNET_WEIGHTS_FILE, 'diffusion_pytorch_model.bin');
  const vaeCfgFile = path.join(dir, 'vae', 'config.json');
  const vaeCfg = readVaeConfig(vaeCfgFile);
  const vaeW = componentWeights(path.join(dir, 'vae'), VAE_WEIGHTS_FILE, 'diffusion_pytorch_model.bin');
  const teCfgFile = path.join(dir, 'text_encoder', 'config.json');
  const teCfg = readTextEncoderConfig(teCfgFile);
  const teW = componentWeights(path.join(dir, 'text_encoder'), TEXT_ENCODER_WEIGHTS_FILE, 'pytorch_model.bin');
  const reader = (w: TensorFile) => (k: string) => w.read(k).data;
  const parts = [
    checkPart('unet', () => new UNet2DConditionModel(unetCfg), unetW.names(), (k) => unetW.shapeOf(k), reader(unetW), {
      source: unetW.file, configSource: unetCfgFile, weightsFile: UNET_WEIGHTS_FILE, className: 'UNet2DConditionModel',
      writeConfig: (f) => writeConfig(f, 'UNet2DConditionModel', unetCfg),
    }),
    checkPart('vae', () => new AutoencoderKL(vaeCfg), vaeW.names(), (k) => vaeW.shapeOf(k), reader(vaeW), {
      source: vaeW.file, configSource: vaeCfgFile, keyMap: vaeLegacyKeyMap, weightsFile: VAE_WEIGHTS_FILE, className: 'AutoencoderKL',
      writeConfig: (f) => writeConfig(f, 'AutoencoderKL', vaeCfg),
    }),
    checkPart('text_encoder', () => new TextEncoder(teCfg), teW.names(), (k) => teW.shapeOf(k), reader(teW), {
      source: teW.file, configSource: teCfgFile, keyMap: textTowerKeyMap, weightsFile: TEXT_ENCODER_WEIGHTS_FILE, className: teCfg.architectures[0],
      writeConfig: (f) => writeFileAtomicSync(f, JSON.stringify(textEncoderJson(teCfg, dtype), null, 2) + '\n'),
    }),
  ];
  const schedFile = path.join(dir, 'scheduler', 'scheduler_config.json');
  const sched = readSchedulerConfig(schedFile);
  const className = typeof sched._class_name === 'string' ? sched._class_name : 'PNDMScheduler';
  const write = prediction
    ? (f: string) => writeFileAtomicSync(f, JSON.stringify({ ...sched, prediction_type: prediction }, null, 2) + '\n')
    : (f: string) => fs.copyFileSync(schedFile, f);
  return { parts, scheduler: { className, write } };
}

function singleFileParts(opts: ConvertOptions, dtype: ConvertDtype): { parts: Part[]; scheduler: { write: (file: string) => void; className: string } } {
  const given = opts.textEncoderConfig ? readTextEncoderConfig(opts.textEncoderConfig) : null;
  const ckpt = LdmCheckpoint.open(opts.input, { yaml: opts.yaml, imageSize: opts.imageSize, prediction: opts.prediction, textEncoderLayers: given?.num_hidden_layers });
  const teCfg = ldmTextEncoderConfig(ckpt, given && { config: given, source: opts.textEncoderConfig! });
  const archSource = ckpt.architectureSource;
  const part = <M extends Module>(component: LdmComponent, sub: Part['sub'], build: () => M, o: Omit<Parameters<typeof checkPart>[5], 'source'>) =>
    checkPart(sub, build, ckpt.names(component), (n) => ckpt.shapeOf(component, n), (n) => ckpt.read(component, n).data, { ...o, source: `${opts.input} (${component})` });
  const parts = [
    part('unet', 'unet', () => new UNet2DConditionModel(ckpt.unetConfig), {
      configSource: archSource, weightsFile: UNET_WEIGHTS_FILE, className: 'UNet2DConditionModel',
      writeConfig: (f) => writeConfig(f, 'UNet2DConditionModel', ckpt.unetConfig),
    }),
    part('vae', 'vae', () => new AutoencoderKL(ckpt.vaeConfig), {
      configSource: archSource, weightsFile: VAE_WEIGHTS_FILE, className: 'AutoencoderKL',
      writeConfig: (f) => writeConfig(f, 'AutoencoderKL', ckpt.vaeConfig),
    }),
    part('textEncoder', 'text_encoder', () => new TextEncoder(teCfg), {
      configSource: opts.textEncoderConfig ?? `${opts.input} (text encoder)`, weightsFile: TEXT_ENCODER_WEIGHTS_FILE, className: teCfg.architectures[0],
      writeConfig: (f) => writeFileAtomicSync(f, JSON.stringify(textEncoderJson(teCfg, dtype), null, 2) + '\n'),
    }),
  ];
  const sched: Record<string, unknown> = { ...ldmSchedulerConfig(opts.yaml, ckpt.architecture.parameterization), _diffusers_version: DIFFUSERS_VERSION };
  if (opts.prediction) sched.prediction_type = opts.prediction;
  return { parts, scheduler: { className: String(sched._class_name), write: (f) => writeFileAtomicSync(f, JSON.stringify(sched, null, 2) + '\n') } };
}

/** The largest finite float16 value: anything larger in magnitude would be stored as ±Inf. */
const F16_MAX = 65504;

export function runConvert(opts: ConvertOptions): ConvertResult {
  const dtype = opts.dtype ?? 'fp32';
  const { input, out } = opts;
  check(fs.existsSync(input), `${input}: no such file or directory (expected a diffusers directory, an LDM .safetensors file or a PyTorch .ckpt).`);
  const isDir = fs.statSync(input).isDirectory();
  if (isDir) {
    for (const [flag, v] of [['--yaml', opts.yaml], ['--text-encoder-config', opts.textEncoderConfig], ['--image-size', opts.imageSize]] as const) {
      check(v === undefined, `${flag} is for single-file checkpoints; ${input} is a diffusers directory.`);
    }
  }
  // OUT: new (or an empty directory), in a place we can write; checked before any work.
  if (fs.existsSync(out)) {
    const empty = fs.statSync(out).isDirectory() && fs.readdirSync(out).length === 0;
    check(empty, `${out}: already exists; convert writes a new directory and never replaces one (choose another OUT, or remove it).`);
  }
  checkOutputDir('OUT', out);
  // A diffusers IN brings its own tokenizer/ (if it has one); a single file has none.
  const tokenizerSrc = opts.tokenizer ?? (isDir && fs.existsSync(path.join(input, 'tokenizer')) ? input : undefined);
  const tokDir = tokenizerSrc !== undefined ? tokenizerDir(tokenizerSrc) : undefined;

  // Everything is read and checked before the first byte is written.
  const { parts, scheduler } = isDir ? diffusersParts(input, dtype, opts.prediction) : singleFileParts(opts, dtype);
  const writeDtype: WriteDtype = dtype === 'fp16' ? 'F16' : 'F32';

  const parent = path.dirname(path.resolve(out));
  makeDirs(parent);
  const tmp = path.join(parent, `.${path.basename(path.resolve(out))}.${process.pid}.${Math.floor(Math.random() * 0x7fffffff).toString(36)}.tmp`);
  const components: ConvertResult['components'] = {};
  fs.mkdirSync(tmp);
  try {
    for (const p of parts) {
      const dir = path.join(tmp, p.sub);
      fs.mkdirSync(dir);
      const keyOf = new Map(p.plan.map(([key, name]) => [name, key]));
      let params = 0;
      writeSafetensorsFrom(
        path.join(dir, p.weightsFile),
        p.plan.map(([, name]) => ({ name, shape: p.shapes.get(name)! })),
        (name) => {
          const key = keyOf.get(name)!;
          const data = p.read(key);
          const bad = firstNonFinite(data);
          if (bad >= 0) throw new UsageError(`${p.source}: tensor "${key}" holds non-finite values (${data[bad]} at index ${bad}): the weights are broken.`);
          if (dtype === 'fp16') {
            const i = data.findIndex((v) => Math.abs(v) > F16_MAX);
            if (i >= 0) throw new UsageError(`${p.source}: tensor "${key}" holds ${data[i]}, beyond float16's range (±${F16_MAX}); convert with --dtype fp32.`);
          }
          params += data.length;
          return data;
        },
        { dtype: writeDtype, metadata: { format: 'pt' } },
      );
      p.writeConfig(path.join(dir, 'config.json'));
      components[p.sub] = { tensors: p.plan.length, params };
      opts.log?.(`${p.sub}: ${p.plan.length} tensors, ${(params / 1e6).toFixed(2)} M parameters (${dtype})`);
    }
    fs.mkdirSync(path.join(tmp, 'scheduler'));
    scheduler.write(path.join(tmp, 'scheduler', 'scheduler_config.json'));
    if (tokDir) {
      fs.mkdirSync(path.join(tmp, 'tokenizer'));
      for (const f of TOKENIZER_FILES) if (fs.existsSync(path.join(tokDir, f))) fs.copyFileSync(path.join(tokDir, f), path.join(tmp, 'tokenizer', f));
    }
    const te = parts.find((p) => p.sub === 'text_encoder')!;
    const index = {
      _class_name: 'StableDiffusionPipeline',
      _diffusers_version: DIFFUSERS_VERSION,
      feature_extractor: [null, null],
      requires_safety_checker: false,
      safety_checker: [null, null],
      scheduler: ['diffusers', scheduler.className],
      text_encoder: ['transformers', te.className],
      tokenizer: tokDir ? ['transformers', 'CLIPTokenizer'] : [null, null],
      unet: ['diffusers', 'UNet2DConditionModel'],
      vae: ['diffusers', 'AutoencoderKL'],
    };
    writeFileAtomicSync(path.join(tmp, 'model_index.json'), JSON.stringify(index, null, 2) + '\n');
    if (fs.existsSync(out)) fs.rmdirSync(out); // the empty directory checked above
    fs.renameSync(tmp, out);
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  return { out, components, tokenizer: tokDir !== undefined };
}

export function register(program: Command): void {
  program
    .command('convert')
    .description('convert a Stable Diffusion model (diffusers directory, LDM .safetensors, or PyTorch .ckpt read safely) into a diffusers directory of safetensors')
    .argument('<in>', 'a diffusers directory, an LDM single-file .safetensors, or a .ckpt/.pt/.bin PyTorch checkpoint')
    .argument('<out>', 'the diffusers directory to write (must not exist yet)')
    .option('--dtype <type>', 'weights on disk: fp16|fp32 (fp32 keeps every value exactly)', oneOf(['fp16', 'fp32'] as const), 'fp32')
    .option('--yaml <file>', 'the LDM yaml of a single-file checkpoint (default: SD 1.x v1-inference settings)')
    .option('--tokenizer <dir>', 'CLIP tokenizer folder to copy into OUT/tokenizer (default: a diffusers IN\'s own; a single file has none)')
    .option('--text-encoder-config <file>', 'text encoder config.json for a single file (default: CLIP ViT-L/14, 64 channels per head)')
    .option('--image-size <px>', 'image size of a single file\'s configs (sample_size; default 512, 768 for v-prediction)', int(8, MAX_GENERATED_SIDE))
    .option('--prediction <type>', "the scheduler's prediction_type: epsilon|v_prediction (default: the input's; an SD 2.x file without a yaml: v_prediction, epsilon for 512-base)", oneOf(PREDICTIONS))
    .action((input: string, out: string, o: { dtype: ConvertDtype; yaml?: string; tokenizer?: string; textEncoderConfig?: string; imageSize?: number; prediction?: (typeof PREDICTIONS)[number] }) => {
      const started = Date.now();
      const res = runConvert({ input, out, ...o, log: (l) => console.log(l) });
      if (!res.tokenizer) console.log(`note: no tokenizer copied (the input has none); pass --tokenizer DIR to txt2img, or convert again with --tokenizer`);
      console.log(`wrote ${res.out} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
    });
}

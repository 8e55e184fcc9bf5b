/**
 * LoRA files (Hu et al. 2021, arXiv 2106.09685) merged into a pipeline's UNet and text encoder:
 * for every module the file lists, W' = W + scale · (alpha / r) · up · down, once, before
 * sampling (no per-step cost). This is what diffusers v0.24 computes on the fly as
 * y = W·x + b + scale · (alpha/r) · up(down(x)), with `scale` = cross_attention_kwargs["scale"]
 * applied to the UNet and the text encoder alike.
 *
 *   const loras = openLoras([{ file: 'style.safetensors', scale: 0.8 }]);   // headers: fails fast
 *   const pipe = loadDiffusersPipeline(dir);
 *   mergeLoras(pipe, loras, { warn: (line) => console.warn(line) });
 *
 * Key layouts read (one file may mix them):
 *   kohya / A1111   lora_unet_<module path with "." written "_">.lora_down.weight [r, in] (conv: [r, in, kh, kw])
 *                   (the UNet's diffusers path, or its original LDM one: lora_unet_input_blocks_4_1_…)
 *                   lora_te_<…>.lora_up.weight [out, r] (conv: [out, r, 1, 1]), optional 0-d .alpha
 *   diffusers/PEFT  unet.<module path>.lora_A.weight / .lora_B.weight, text_encoder.<…> likewise
 *                   (an optional base_model.model. in front, .lora_A.default.weight, and <module>.alpha)
 *   diffusers, older  unet.<…>.attn1.processor.to_q_lora.down.weight / .up.weight (to_out_lora = to_out.0),
 *                   <module>.lora.down.weight, text_encoder.<…>.self_attn.to_q_lora.down.weight (= q_proj),
 *                   <…>.mlp.fc1.lora_linear_layer.down.weight
 * A diffusers/PEFT file without .alpha tensors takes alpha from its `lora_adapter_metadata`
 * (newer diffusers write PEFT's LoraConfig there: lora_alpha, alpha_pattern, use_rslora — rsLoRA
 * scales by alpha/√r), else alpha = r.
 * The underscore names are matched against a table built from the model's own parameter names,
 * so `to_out_0` finds `to_out.0` and `proj_in` stays `proj_in` without guessing which "_" was a
 * "." (a name two module paths would share is never matched). No .alpha means a factor of 1.
 * SDXL files (lora_te1_/lora_te2_, text_encoder_2.) are refused: sdlab runs SD 1.x/2.x.
 *
 * Everything is checked before the first weight changes — every file's header, key names, the
 * shapes against the model (a LoRA for another base model fails naming the first module that does
 * not fit), dtypes, finite values and a bound on the merged magnitudes — so a bad file leaves the
 * model as it was. Keys that fit nothing are reported in one warning line per file.
 */
import fs from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import { type Module, type Parameter } from '../nn/module.ts';
import { shapeStr, torchShape } from '../nn/layout.ts';
import { SafetensorsFile, type TensorEntry } from '../io/safetensors.ts';
import { UsageError } from '../util/errors.ts';
import { firstNonFinite } from '../util/finite.ts';
import { parseJson, showJson } from '../util/json.ts';
import { ldmUnetKey } from './load_single_file.ts';

/** A key (or any text from a file) quoted for a message: one line, control characters escaped. */
const q = (text: string): string => showJson(text, 120);

/** One `--lora FILE[:scale]`. */
export interface LoraSpec {
  file: string;
  /** Multiplies the LoRA's effect (diffusers' cross_attention_kwargs["scale"]; 1 = as trained, negative allowed). */
  scale: number;
}

/** Largest |scale| accepted: far beyond any useful value, small enough that the merge stays finite. */
export const MAX_LORA_SCALE = 100;

/**
 * Parses `FILE` or `FILE:SCALE`. A value whose text after the last ":" is not a number is a file
 * name only if that file exists (so "a:b.safetensors" works); otherwise it is a bad scale.
 */
export function parseLoraSpec(value: string): LoraSpec {
  const colon = value.lastIndexOf(':');
  if (colon > 0) {
    const file = value.slice(0, colon);
    const s = value.slice(colon + 1);
    const scale = Number(s);
    // Decimal only: "0x10" or "Infinity" after a colon is more likely part of a file name than a scale.
    if (/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(s) && Number.isFinite(scale)) {
      if (Math.abs(scale) > MAX_LORA_SCALE) throw new UsageError(`--lora ${value}: scale ${scale} is outside [-${MAX_LORA_SCALE}, ${MAX_LORA_SCALE}].`);
      return { file, scale };
    }
    if (!fs.existsSync(value)) {
      throw new UsageError(`--lora ${value}: scale ${q(s)} is not a number (expected FILE or FILE:SCALE, e.g. style.safetensors:0.8).`);
    }
  }
  if (value.trim() === '') throw new UsageError('--lora: empty file name (expected FILE or FILE:SCALE).');
  return { file: value, scale: 1 };
}

// ---------------------------------------------------------------------------------------------
// Reading a file's key names (header only)

export type LoraComponent = 'unet' | 'textEncoder';

/** The keys of one target module, as the file names it. */
interface KeyGroup {
  /** 'kohya': `name` is lora_unet_…/lora_te_… (underscores); 'dotted': a module path. */
  style: 'kohya' | 'dotted';
  /** Which model the key's prefix names (dotted keys without unet./text_encoder.: undefined, found by path). */
  component?: LoraComponent;
  name: string;
  down?: string;
  up?: string;
  alpha?: string;
  /** Every key of the group (for the unknown-keys warning). */
  keys: string[];
  /** A key of the module sdlab cannot apply (LoHa, LoKr, DoRA, Tucker mid…): the module is skipped. */
  unsupported?: string;
}

/** A LoRA file whose header has been read and whose keys have been grouped by module. */
export interface LoraFile {
  spec: LoraSpec;
  st: SafetensorsFile;
  groups: KeyGroup[];
  /** Keys that name no LoRA weight sdlab knows. */
  unknown: string[];
  /** PEFT LoraConfig values from the file's lora_adapter_metadata, per model. */
  peft: Partial<Record<LoraComponent, PeftScaling>>;
}

/** How PEFT scales a module: lora_alpha (or an alpha_pattern entry) / r, or / √r with rsLoRA. */
interface PeftScaling {
  alpha?: number;
  /** [module path or its dotted tail, alpha]. */
  patterns: Array<[string, number]>;
  rslora: boolean;
}

const FLOAT_DTYPES = new Set(['F16', 'BF16', 'F32', 'F64']);


/** Names the older diffusers formats use for a module's LoRA, → the module's own name. */
const OLD_ATTN: Record<string, string> = { to_q: 'to_q', to_k: 'to_k', to_v: 'to_v', to_out: 'to_out.0' };
const OLD_TE_ATTN: Record<string, string> = { to_q: 'q_proj', to_k: 'k_proj', to_v: 'v_proj', to_out: 'out_proj' };

type Part = 'down' | 'up' | 'alpha';
type DottedPart = Part | 'unsupported';

/** A dotted (diffusers / PEFT) key → module path and part, or null when it is not one. */
function parseDottedKey(key: string): { path: string; part: DottedPart } | null {
  let m = /^(.+)\.lora_([AB])(?:\.default)?\.weight$/.exec(key);
  if (m) return { path: m[1], part: m[2] === 'A' ? 'down' : 'up' };
  m = /^(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$/.exec(key);
  if (m) return { path: `${m[1]}.${OLD_ATTN[m[2]]}`, part: m[3] as Part };
  m = /^(.+\.self_attn)\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$/.exec(key);
  if (m) return { path: `${m[1]}.${OLD_TE_ATTN[m[2]]}`, part: m[3] as Part };
  m = /^(.+)\.(?:lora|lora_linear_layer)\.(down|up)\.weight$/.exec(key);
  if (m) return { path: m[1], part: m[2] as Part };
  m = /^(.+)\.lora_magnitude_vector(?:\.default)?(?:\.weight)?$/.exec(key);
  if (m) return { path: m[1], part: 'unsupported' }; // DoRA
  m = /^(.+)\.alpha$/.exec(key);
  if (m) {
    // An alpha is named after its module, in whichever of the spellings above the file uses.
    const p = m[1]
      .replace(/\.processor\.(to_q|to_k|to_v|to_out)_lora$/, (_, n: string) => `.${OLD_ATTN[n]}`)
      .replace(/\.self_attn\.(to_q|to_k|to_v|to_out)_lora$/, (_, n: string) => `.self_attn.${OLD_TE_ATTN[n]}`)
      .replace(/\.(lora|lora_linear_layer)$/, '');
    return { path: p, part: 'alpha' };
  }
  return null;
}

/**
 * Opens every file and groups its keys by module (headers only: no tensor is read). Fails with
 * one line for a missing, unreadable or non-safetensors file, an SDXL LoRA, or a file with no
 * LoRA weights at all. Cheap: call it before loading a model so a bad --lora fails at once.
 */
export function openLoras(specs: readonly LoraSpec[]): LoraFile[] {
  return specs.map(openLora);
}

function openLora(spec: LoraSpec): LoraFile {
  const file = spec.file;
  if (!fs.existsSync(file)) throw new UsageError(`--lora ${file}: no such file.`);
  if (!Number.isFinite(spec.scale) || Math.abs(spec.scale) > MAX_LORA_SCALE) {
    throw new UsageError(`--lora ${file}: scale ${spec.scale} is not a number in [-${MAX_LORA_SCALE}, ${MAX_LORA_SCALE}].`);
  }
  const st = SafetensorsFile.open(file); // validates the whole header; one line naming the file
  const groups = new Map<string, KeyGroup>();
  const unknown: string[] = [];
  const group = (id: string, make: () => KeyGroup): KeyGroup => {
    let g = groups.get(id);
    if (!g) groups.set(id, (g = make()));
    return g;
  };
  for (const key of st.names()) {
    if (/^lora_te[12]_/.test(key) || key.startsWith('text_encoder_2.')) {
      throw new UsageError(`--lora ${file}: an SDXL LoRA (key ${q(key)}): sdlab runs SD 1.x/2.x models, whose one text encoder has lora_te_ / text_encoder. keys.`);
    }
    const k = /^(lora_unet|lora_te)_([^.]+)\.(.+)$/.exec(key);
    if (k) {
      const component: LoraComponent = k[1] === 'lora_unet' ? 'unet' : 'textEncoder';
      const g = group(`${k[1]}_${k[2]}`, () => ({ style: 'kohya', component, name: `${k[1]}_${k[2]}`, keys: [] }));
      g.keys.push(key);
      const part = ({ 'lora_down.weight': 'down', 'lora_up.weight': 'up', alpha: 'alpha' } as Record<string, Part | undefined>)[k[3]];
      if (part) setPart(file, g, part, key);
      else g.unsupported ??= key;
      continue;
    }
    let rest = key.replace(/^base_model\.model\./, '');
    let component: LoraComponent | undefined;
    if (rest.startsWith('unet.')) [component, rest] = ['unet', rest.slice(5)];
    else if (rest.startsWith('text_encoder.')) [component, rest] = ['textEncoder', rest.slice(13)];
    const d = parseDottedKey(rest);
    if (!d) {
      unknown.push(key);
      continue;
    }
    const g = group(`${component ?? '?'}:${d.path}`, () => ({ style: 'dotted', component, name: d.path, keys: [] }));
    g.keys.push(key);
    if (d.part === 'unsupported') g.unsupported ??= key;
    else setPart(file, g, d.part, key);
  }
  const list = [...groups.values()];
  if (!list.some((g) => g.down || g.up)) {
    throw new UsageError(`--lora ${file}: no LoRA weights in it (expected kohya lora_unet_…/lora_te_… .lora_down/.lora_up keys or diffusers/PEFT …lora_A/lora_B keys; found e.g. ${q(st.names()[0] ?? 'nothing')}).`);
  }
  return { spec, st, groups: list, unknown, peft: peftScaling(file, st.metadata) };
}

/** The unet./text_encoder. LoraConfig values of newer diffusers files (metadata "lora_adapter_metadata"). */
function peftScaling(file: string, metadata: Record<string, string>): Partial<Record<LoraComponent, PeftScaling>> {
  const text = metadata.lora_adapter_metadata;
  if (text === undefined) return {};
  const where = `--lora ${file}: metadata lora_adapter_metadata`;
  const meta = parseJson(text, where, 'a JSON object');
  if (typeof meta !== 'object' || meta === null || Array.isArray(meta)) throw new UsageError(`${where}: expected a JSON object.`);
  const m = meta as Record<string, unknown>;
  const out: Partial<Record<LoraComponent, PeftScaling>> = {};
  for (const [prefix, component] of [['unet', 'unet'], ['text_encoder', 'textEncoder']] as const) {
    const num = (k: string, v: unknown): number => {
      if (typeof v !== 'number' || !Number.isFinite(v)) throw new UsageError(`${where}: ${k} is ${JSON.stringify(v)}; expected a number.`);
      return v;
    };
    const alpha = m[`${prefix}.lora_alpha`];
    const pattern = m[`${prefix}.alpha_pattern`] ?? {};
    if (typeof pattern !== 'object' || pattern === null || Array.isArray(pattern)) throw new UsageError(`${where}: ${prefix}.alpha_pattern is not an object.`);
    if (m[`${prefix}.use_dora`] === true) throw new UsageError(`${where}: ${prefix}.use_dora is true: DoRA LoRAs are not supported.`);
    const entry: PeftScaling = {
      alpha: alpha === undefined || alpha === null ? undefined : num(`${prefix}.lora_alpha`, alpha),
      patterns: Object.entries(pattern).map(([k, v]) => [k, num(`${prefix}.alpha_pattern[${q(k)}]`, v)]),
      rslora: m[`${prefix}.use_rslora`] === true,
    };
    if (entry.alpha !== undefined || entry.patterns.length || entry.rslora) out[component] = entry;
  }
  return out;
}

function setPart(file: string, g: KeyGroup, part: Part, key: string): void {
  if (g[part] !== undefined) throw new UsageError(`--lora ${file}: two keys for one tensor: ${q(g[part]!)} and ${q(key)}.`);
  g[part] = key;
}

// ---------------------------------------------------------------------------------------------
// Matching against a model

/** A model's LoRA-able weights (linear and conv), by module path and by kohya name. */
interface TargetTable {
  byPath: Map<string, Parameter>;
  /** kohya name (prefix + path with "_") → path; null where two paths would share a name. */
  byKohya: Map<string, string | null>;
  /** The UNet's layers_per_block, for kohya names in the LDM layout (input_blocks_…); else undefined. */
  layersPerBlock?: number;
  /** LDM names tried so far: capped, so a hostile file of made-up names cannot cost minutes. */
  ldmTries: number;
}

function targetTable(model: Module, kohyaPrefix: string, layersPerBlock?: number): TargetTable {
  const byPath = new Map<string, Parameter>();
  const byKohya = new Map<string, string | null>();
  for (const [name, p] of model.namedParameters()) {
    if (!name.endsWith('.weight') || (p.layout !== 'linear' && p.layout !== 'conv')) continue;
    const path = name.slice(0, -'.weight'.length);
    byPath.set(path, p);
    const k = `${kohyaPrefix}_${path.replace(/\./g, '_')}`;
    byKohya.set(k, byKohya.has(k) ? null : path);
  }
  return { byPath, byKohya, layersPerBlock, ldmTries: 0 };
}

/**
 * A kohya UNet name in the original LDM layout (lora_unet_input_blocks_4_1_proj_in, as tools
 * working on single-file checkpoints write them; diffusers maps them too) → the module path, or
 * null. Every way of reading its "_" as "." is put through the single-file converter
 * (load_single_file.ts ldmUnetKey); the name resolves only if exactly one reading lands on a
 * module of this UNet.
 */
function ldmKohyaPath(name: string, table: TargetTable): string | null {
  // A real file names each module once: more names than modules (×4) are not worth trying.
  if (table.layersPerBlock === undefined || table.ldmTries++ > 4 * table.byPath.size) return null;
  // The block indices are fixed; only the rest of the name is ambiguous.
  const m =
    /^lora_unet_(input_blocks|output_blocks)_(\d+)_(\d+)(?:_(.+))?$/.exec(name) ?? /^lora_unet_(middle_block|time_embed|out)_(\d+)()(?:_(.+))?$/.exec(name);
  if (!m) return null;
  const head = [m[1], m[2], m[3]].filter((x) => x !== '').join('.');
  const tokens = m[4] ? m[4].split('_') : [];
  if (tokens.length > 10) return null; // 512 readings at most (SD's longest rest, transformer_blocks_0_attn2_to_out_0, has 7 tokens)
  const found = new Set<string>();
  for (let mask = 0; mask < 1 << Math.max(0, tokens.length - 1); mask++) {
    let rest = tokens[0] ?? '';
    for (let i = 1; i < tokens.length; i++) rest += (mask & (1 << (i - 1)) ? '.' : '_') + tokens[i];
    const key = ldmUnetKey(`${head}${rest ? `.${rest}` : ''}.weight`, table.layersPerBlock);
    if (key && key.endsWith('.weight') && table.byPath.has(key.slice(0, -7))) found.add(key.slice(0, -7));
  }
  return found.size === 1 ? [...found][0] : null;
}

/** One module's merge, fully checked: W += factor · up · down. */
interface MergeStep {
  component: LoraComponent;
  path: string;
  param: Parameter;
  /** up [out, r], down [r, in·kh·kw] (PyTorch layout, flattened), float32. */
  up: Float32Array;
  down: Float32Array;
  rank: number;
  factor: number;
}

export interface LoraTargets {
  /** Its config's layers_per_block (a UNet2DConditionModel has it) lets LDM-layout kohya names resolve. */
  unet: Module & { config?: { layers_per_block?: number | readonly number[] } };
  textEncoder: Module;
}

export interface MergeLoraOptions {
  /** Where the one-line warning about unused keys goes (default console.warn). */
  warn?: (line: string) => void;
}

/** What one file changed. */
export interface LoraMergeReport {
  file: string;
  scale: number;
  unetModules: number;
  textEncoderModules: number;
  /** Keys that were not applied (listed in the warning). */
  unusedKeys: string[];
}

/**
 * Merges the opened files into the models, in order. Every file is checked completely (names,
 * shapes, values) before any weight changes, so a failure leaves the models untouched.
 */
export function mergeLoras(targets: LoraTargets, files: readonly LoraFile[], opts: MergeLoraOptions = {}): LoraMergeReport[] {
  const tables: Record<LoraComponent, TargetTable> = {
    unet: targetTable(targets.unet, 'lora_unet', typeof targets.unet.config?.layers_per_block === 'number' ? targets.unet.config.layers_per_block : undefined),
    textEncoder: targetTable(targets.textEncoder, 'lora_te'),
  };
  const plans = files.map((f) => planFile(f, tables));
  const warn = opts.warn ?? ((line: string) => console.warn(line));
  for (const { report } of plans) {
    const n = report.unusedKeys.length;
    if (n) {
      const shown = report.unusedKeys.slice(0, 4).map(q).join(', ');
      warn(`sdlab: warning: --lora ${report.file}: ${n} key${n > 1 ? 's' : ''} not applied (not a LoRA weight sdlab knows, or for a module this model lacks): ${shown}${n > 4 ? `, … (${n - 4} more)` : ''}.`);
    }
  }
  // Nothing below can fail on the files' account: they were all checked above.
  for (const { steps } of plans) for (const s of steps) applyStep(s);
  return plans.map((p) => p.report);
}

/** Opens and merges in one call (the library's one-liner). */
export function applyLoras(targets: LoraTargets, specs: readonly LoraSpec[], opts: MergeLoraOptions = {}): LoraMergeReport[] {
  return mergeLoras(targets, openLoras(specs), opts);
}

/** Resolves, shape-checks and reads one file: its merge steps, or one UsageError. */
function planFile(f: LoraFile, tables: Record<LoraComponent, TargetTable>): { steps: MergeStep[]; report: LoraMergeReport } {
  const file = f.spec.file;
  const unused = [...f.unknown];
  const steps: MergeStep[] = [];
  for (const g of f.groups) {
    const target = resolve(g, tables);
    if (!target || g.unsupported || (!g.down && !g.up)) {
      unused.push(...g.keys);
      continue;
    }
    const { component, path, param } = target;
    const what = `${component === 'unet' ? 'UNet' : 'text encoder'} module ${path}`;
    if (!g.down || !g.up) throw new UsageError(`--lora ${file}: ${what} has a ${g.down ? 'down' : 'up'} weight but no ${g.down ? 'up' : 'down'} weight (${q((g.down ?? g.up)!)}).`);
    const down = f.st.entries.get(g.down)!;
    const up = f.st.entries.get(g.up)!;
    for (const [key, e] of [[g.down, down], [g.up, up]] as const) {
      if (!FLOAT_DTYPES.has(e.dtype)) throw new UsageError(`--lora ${file}: ${q(key)} is ${e.dtype}; expected a float tensor (F16, BF16, F32 or F64).`);
    }
    const rank = checkShapes(file, what, param, down, up);
    let alpha = rank; // no .alpha: factor 1
    let divisor = rank;
    const peft = g.style === 'dotted' && !g.alpha ? f.peft[component] : undefined;
    if (peft) {
      // PEFT matches alpha_pattern keys against the end of the module's name, at a "." boundary.
      const hit = peft.patterns.find(([p]) => path === p || path.endsWith(`.${p}`) || g.name === p || g.name.endsWith(`.${p}`));
      alpha = hit ? hit[1] : (peft.alpha ?? rank);
      if (peft.rslora) divisor = Math.sqrt(rank);
    }
    if (g.alpha) {
      const a = f.st.entries.get(g.alpha)!;
      if (!FLOAT_DTYPES.has(a.dtype) && !/^[IU]\d+$/.test(a.dtype)) throw new UsageError(`--lora ${file}: ${q(g.alpha)} is ${a.dtype}; expected a number.`);
      if (a.shape.reduce((x, y) => x * y, 1) !== 1) throw new UsageError(`--lora ${file}: ${q(g.alpha)} has shape ${shapeStr(a.shape)}; expected one number.`);
      alpha = f.st.read(g.alpha).data[0];
      if (!Number.isFinite(alpha)) throw new UsageError(`--lora ${file}: ${q(g.alpha)} is ${alpha}; expected a finite number.`);
    }
    const upData = readFinite(f, g.up);
    const downData = readFinite(f, g.down);
    const factor = (f.spec.scale * alpha) / divisor;
    // |Δ| ≤ |factor| · r · max|up| · max|down|: bounded well inside float32, the merged weights stay finite.
    const bound = Math.abs(factor) * rank * maxAbs(upData) * maxAbs(downData);
    if (!(bound < 1e30)) throw new UsageError(`--lora ${file}: ${what}: its values are too large to merge (up to ${bound.toExponential(1)}).`);
    steps.push({ component, path, param, up: upData, down: downData, rank, factor });
  }
  if (!steps.length) {
    throw new UsageError(`--lora ${file}: none of its ${f.st.names().length} keys fits this model's UNet or text encoder (e.g. ${q(unused[0])}): a LoRA for another kind of model?`);
  }
  return {
    steps,
    report: {
      file,
      scale: f.spec.scale,
      unetModules: steps.filter((s) => s.component === 'unet').length,
      textEncoderModules: steps.filter((s) => s.component === 'textEncoder').length,
      unusedKeys: unused,
    },
  };
}

function resolve(g: KeyGroup, tables: Record<LoraComponent, TargetTable>): { component: LoraComponent; path: string; param: Parameter } | null {
  if (g.style === 'kohya') {
    const table = tables[g.component!];
    const path = table.byKohya.has(g.name) ? table.byKohya.get(g.name) : g.component === 'unet' ? ldmKohyaPath(g.name, table) : null;
    return path ? { component: g.component!, path, param: table.byPath.get(path)! } : null;
  }
  for (const component of g.component ? [g.component] : (['unet', 'textEncoder'] as const)) {
    const param = tables[component].byPath.get(g.name);
    if (param) return { component, path: g.name, param };
  }
  return null;
}

/**
 * Checks down [r, in(, kh, kw)] and up [out, r(, 1, 1)] against the weight [out, in(, kh, kw)];
 * returns r. 1×1 convs accept 2-D LoRA weights and linears accept [.., 1, 1] ones (as diffusers
 * and kohya write them either way); a k×k conv takes LoCon's down [r, in, k, k].
 */
function checkShapes(file: string, what: string, p: Parameter, down: TensorEntry, up: TensorEntry): number {
  const w = torchShape(p.layout, p.variable.shape); // [out, in] or [out, in, kh, kw]
  const [out, inn] = w;
  const kernel = w.length === 4 ? [w[2], w[3]] : [1, 1];
  const r = down.shape[0];
  const downOk =
    r >= 1 &&
    down.shape[1] === inn &&
    ((down.shape.length === 2 && kernel[0] === 1 && kernel[1] === 1) || (down.shape.length === 4 && down.shape[2] === kernel[0] && down.shape[3] === kernel[1]));
  const upOk = up.shape[0] === out && up.shape[1] === r && (up.shape.length === 2 || (up.shape.length === 4 && up.shape[2] === 1 && up.shape[3] === 1));
  if (!downOk || !upOk) {
    throw new UsageError(
      `--lora ${file}: not a LoRA for this model: ${what} is ${shapeStr(w)} but the file's down/up weights are ${shapeStr(down.shape)}/${shapeStr(up.shape)} (a LoRA for another base model? SD 2.x's text vectors are 1024 wide, SD 1.x's 768).`,
    );
  }
  return r;
}

function readFinite(f: LoraFile, key: string): Float32Array {
  const data = f.st.read(key).data;
  const bad = firstNonFinite(data);
  if (bad >= 0) throw new UsageError(`--lora ${f.spec.file}: tensor ${q(key)} holds non-finite values (${data[bad]} at index ${bad}).`);
  return data;
}

function maxAbs(a: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/** W += factor · up · down, in the weight's internal layout (linear [in, out], conv HWIO). */
function applyStep(s: MergeStep): void {
  const v = s.param.variable;
  tf.tidy(() => {
    const up = tf.tensor2d(s.up, [s.up.length / s.rank, s.rank]);
    const down = tf.tensor2d(s.down, [s.rank, s.down.length / s.rank]);
    let delta: tf.Tensor;
    if (s.param.layout === 'linear') {
      delta = tf.matMul(down, up, true, true); // (up·down)ᵀ: [in, out]
    } else {
      const [kh, kw, cin, cout] = v.shape;
      delta = tf.transpose(tf.reshape(tf.matMul(up, down), [cout, cin, kh, kw]), [2, 3, 1, 0]); // OIHW → HWIO
    }
    v.assign(tf.add(v, tf.mul(delta, s.factor)));
  });
}

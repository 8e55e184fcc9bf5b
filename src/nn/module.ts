/**
 * A small module system in the spirit of torch.nn.Module.
 *
 * A Module owns named parameters (trainable tf.Variables, each tagged with a weight layout,
 * see layout.ts) and named child modules. Names compose with dots exactly like PyTorch
 * state-dict keys, so `encoder.down_blocks.0.resnets.1.conv1.weight` in a diffusers file
 * addresses the same parameter here. Each subclass defines its own `forward(...)`.
 *
 *   class Block extends Module {
 *     conv = this.module('conv', new Conv2d(4, 8, 3, { padding: 1 }));
 *     forward(x: tf.Tensor4D) { return this.conv.forward(x); }
 *   }
 *
 * Initialisation follows PyTorch's defaults and draws from one seeded stream
 * (`manualSeed(n)`), so building the same model twice after the same seed gives the same
 * weights. `skipInit(() => new Model(cfg))` builds with zeros — use it when weights are
 * about to be loaded from a checkpoint anyway (faster, no random draws).
 */
import * as tf from '@tensorflow/tfjs';
import { UsageError } from '../util/errors.ts';
import { firstNonFinite, firstNonFiniteHalf } from '../util/finite.ts';
import { HALF_MIN_SIZE, type HalfWeights, halfWeights } from '../util/half_weights.ts';
import { MAX_MODEL_PARAMS } from '../util/limits.ts';
import { Random } from '../util/random.ts';
import { type Layout, shapeMatches, shapeStr, toTorch, torchShape, torchToInternalPerm } from './layout.ts';

/** A parameter: its variable and how its weight is laid out in PyTorch files. */
export interface Parameter {
  variable: tf.Variable;
  layout: Layout;
}

/** One tensor of a state dict: PyTorch layout, float32 values (dtype is informational). */
export interface TensorData {
  shape: number[];
  data: Float32Array;
  dtype?: string;
}

/** Parameter name → tensor, PyTorch layout (what safetensors files hold). */
export type StateDict = Map<string, TensorData>;

// ---------------------------------------------------------------------------------------------
// Initialisation

let initRng = new Random(0);
let initDisabled = false;
let shapesOnly = false;

/** Reseeds the stream that parameter initialisers draw from. */
export function manualSeed(seed: number): void {
  initRng = new Random(seed);
}

/** Runs `build` with every initialiser producing zeros (for models about to be loaded). */
export function skipInit<T>(build: () => T): T {
  const before = initDisabled;
  initDisabled = true;
  try {
    return build();
  } finally {
    initDisabled = before;
  }
}

/**
 * Builds `build`'s model with shape-only parameters: nothing is allocated and nothing drawn from
 * the init stream. The result answers namedParameters() / numParameters() / planLoad (names,
 * shapes, layouts) and nothing else — never run it. It is how a model's size and a checkpoint's
 * shapes are checked before the real build allocates anything (buildChecked).
 */
export function shapeOnly<T>(build: () => T): T {
  const before = shapesOnly;
  shapesOnly = true;
  try {
    return build();
  } finally {
    shapesOnly = before;
  }
}

/**
 * Builds a model after checking, on a shape-only build, that it has at most MAX_MODEL_PARAMS
 * parameters and (with `check`) whatever else must hold before memory is spent — e.g. that a
 * checkpoint's names and shapes fit it. `source` names the config in errors. `skip` builds
 * without initialisation (for models about to be loaded).
 */
export function buildChecked<M extends Module>(build: () => M, source: string, opts: { check?: (dry: M) => void; skip?: boolean } = {}): M {
  const dry = shapeOnlyChecked(build, source); // always: `check?.(…)` would skip evaluating its argument
  opts.check?.(dry);
  return opts.skip ? skipInit(build) : build();
}

/** The shape-only model of `build` (see shapeOnly), refused when it has more than MAX_MODEL_PARAMS parameters. */
export function shapeOnlyChecked<M extends Module>(build: () => M, source: string): M {
  const dry = shapeOnly(build);
  const n = dry.numParameters();
  if (n > MAX_MODEL_PARAMS) {
    throw new UsageError(`${source}: the model would have ${n.toExponential(2)} parameters, over sdlab's limit of ${MAX_MODEL_PARAMS.toExponential(0)} (${(MAX_MODEL_PARAMS * 4) / 1e9} GB in float32).`);
  }
  return dry;
}

/**
 * Frees activations a forward pass is done with, at once instead of when the enclosing tidy ends —
 * only when no gradient is being recorded (backpropagation needs them). Inference then holds about
 * one layer's working set, not a whole block's: SD's VAE decode at 512 px held every 512×512×128/256
 * activation of a block until the block returned. Never pass a tensor the caller owns.
 */
export function freeEarly(...ts: Array<tf.Tensor | null | undefined>): void {
  if (tf.engine().isTapeOn()) return;
  for (const t of ts) if (t && !t.isDisposed) t.dispose();
}

/** x → f1 → f2 → …, each intermediate result freed (freeEarly) once the next one exists; x is the caller's. */
export function sequential<T extends tf.Tensor>(x: T, ...fns: Array<((h: T) => T) | null | undefined>): T {
  return tf.tidy(() => {
    let h = x;
    for (const f of fns) {
      if (!f) continue;
      const next = f(h);
      if (h !== x && next !== h) freeEarly(h);
      h = next;
    }
    return h;
  });
}

/** An initialiser fills a fresh Float32Array of `size` values. */
export type Initializer = (size: number) => Float32Array;

export const init = {
  zeros: (): Initializer => (n) => new Float32Array(n),
  ones: (): Initializer => (n) => new Float32Array(n).fill(1),
  constant: (v: number): Initializer => (n) => new Float32Array(n).fill(v),
  /** U(-bound, bound); PyTorch's default for conv/linear is bound = 1/sqrt(fan_in). */
  uniform: (bound: number): Initializer => (n) => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = (2 * initRng.next() - 1) * bound;
    return a;
  },
  normal: (std = 1): Initializer => (n) => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = initRng.normal() * std;
    return a;
  },
};

// ---------------------------------------------------------------------------------------------
// Module

export abstract class Module {
  private readonly _params = new Map<string, Parameter>();
  private readonly _children = new Map<string, Module>();

  /** Creates and registers a trainable parameter. `shape` is the internal (tfjs) shape. */
  protected param(name: string, shape: number[], initializer: Initializer, layout: Layout = 'plain'): tf.Variable {
    if (this._params.has(name) || this._children.has(name)) throw new Error(`duplicate parameter name "${name}"`);
    const size = shape.reduce((a, b) => a * b, 1);
    if (shapesOnly) {
      // A stand-in with the variable's shape and nothing behind it (see shapeOnly).
      const stub = { shape: [...shape], size, dtype: 'float32', dispose: () => {} } as unknown as tf.Variable;
      this._params.set(name, { variable: stub, layout });
      return stub;
    }
    const values = initDisabled ? new Float32Array(size) : initializer(size);
    const initial = tf.tensor(values, shape, 'float32');
    const variable = tf.variable(initial, true); // shares the data (ref-counted)
    initial.dispose();
    this._params.set(name, { variable, layout });
    return variable;
  }

  /** Registers a child module under `name` (may contain dots, e.g. 'to_out.0') and returns it. */
  protected module<M extends Module>(name: string, child: M): M {
    if (this._params.has(name) || this._children.has(name)) throw new Error(`duplicate module name "${name}"`);
    this._children.set(name, child);
    return child;
  }

  /** All parameters with their full dotted names, in registration order. */
  namedParameters(prefix = ''): Array<[string, Parameter]> {
    const out: Array<[string, Parameter]> = [];
    for (const [name, p] of this._params) out.push([prefix + name, p]);
    for (const [name, child] of this._children) out.push(...child.namedParameters(`${prefix}${name}.`));
    return out;
  }

  /** All descendant modules (not this one) with their dotted names. */
  namedModules(prefix = ''): Array<[string, Module]> {
    const out: Array<[string, Module]> = [];
    for (const [name, child] of this._children) {
      out.push([prefix + name, child]);
      out.push(...child.namedModules(`${prefix}${name}.`));
    }
    return out;
  }

  /** The trainable variables (e.g. the varList of an optimizer). */
  parameters(): tf.Variable[] {
    return this.namedParameters().map(([, p]) => p.variable);
  }

  /** Total number of scalar parameters. */
  numParameters(): number {
    return this.namedParameters().reduce((n, [, p]) => n + p.variable.size, 0);
  }

  /** A copy of every parameter in PyTorch layout (synchronously downloads the values). */
  stateDict(): StateDict {
    const sd: StateDict = new Map();
    for (const [name, p] of this.namedParameters()) {
      const shape = p.variable.shape;
      const raw = p.variable.dataSync() as Float32Array;
      const data = toTorch(p.layout, shape, raw);
      // Backends may hand out their own buffer: never let a state dict alias a parameter.
      sd.set(name, { shape: torchShape(p.layout, shape), data: data === raw ? raw.slice() : data, dtype: 'F32' });
    }
    return sd;
  }

  /**
   * Copies a PyTorch-layout state dict into the parameters. Every name and shape is checked
   * first; all missing, unexpected and mis-shaped keys are reported together in one
   * UsageError (naming `source`) and nothing is assigned unless everything matches.
   * `keyMap` renames checkpoint keys to model names (return null to skip a key).
   */
  loadStateDict(sd: StateDict, opts: LoadOptions = {}): void {
    const plan = planLoad(this, sd.keys(), (k) => sd.get(k)!.shape, opts);
    assignPlanned(this, plan, (k) => sd.get(k)!, opts.source ?? 'state dict');
  }

  /** The name of the first parameter holding NaN or ±Infinity, or null (reads them on the backend). */
  firstNonFiniteParameter(): string | null {
    for (const [name, p] of this.namedParameters()) {
      if (!tf.tidy(() => tf.all(tf.isFinite(p.variable)).dataSync()[0])) return name;
    }
    return null;
  }

  /** Frees every parameter. */
  dispose(): void {
    for (const [, p] of this.namedParameters()) p.variable.dispose();
  }
}

/** A list of child modules named 0, 1, 2… (torch.nn.ModuleList). */
export class ModuleList<M extends Module = Module> extends Module {
  readonly items: M[] = [];
  constructor(items: M[] = []) {
    super();
    for (const m of items) this.push(m);
  }
  push(m: M): M {
    this.module(String(this.items.length), m);
    this.items.push(m);
    return m;
  }
  get length(): number {
    return this.items.length;
  }
  at(i: number): M {
    const m = this.items[i];
    if (!m) throw new Error(`ModuleList index ${i} out of range (length ${this.items.length})`);
    return m;
  }
  [Symbol.iterator](): Iterator<M> {
    return this.items[Symbol.iterator]();
  }
}

// ---------------------------------------------------------------------------------------------
// Loading

export interface LoadOptions {
  /** Named in error messages (a file path, or e.g. "state dict"). */
  source?: string;
  /** Checkpoint key → model parameter name; null skips the key (e.g. position_ids). */
  keyMap?: (key: string) => string | null;
  /** Allow model parameters the checkpoint does not provide (they keep their values). */
  allowMissing?: boolean;
}

/**
 * Matches checkpoint keys against a model's parameters and returns [checkpointKey, paramName]
 * pairs, or throws one UsageError listing every problem.
 */
export function planLoad(
  model: Module,
  keys: Iterable<string>,
  shapeOf: (key: string) => readonly number[],
  opts: LoadOptions = {},
): Array<[string, string]> {
  const params = new Map(model.namedParameters());
  const plan: Array<[string, string]> = [];
  const seen = new Map<string, string>();
  const unexpected: string[] = [];
  const mismatched: string[] = [];
  const duplicated: string[] = [];
  for (const key of keys) {
    const name = opts.keyMap ? opts.keyMap(key) : key;
    if (name === null) continue;
    const p = params.get(name);
    if (!p) {
      unexpected.push(key);
      continue;
    }
    if (seen.has(name)) {
      duplicated.push(`${key} (also ${seen.get(name)})`);
      continue;
    }
    seen.set(name, key);
    const shape = shapeOf(key);
    if (!shapeMatches(p.layout, p.variable.shape, shape)) {
      mismatched.push(`${key} ${shapeStr(shape)} vs model ${shapeStr(torchShape(p.layout, p.variable.shape))}`);
      continue;
    }
    plan.push([key, name]);
  }
  const missing = opts.allowMissing ? [] : [...params.keys()].filter((n) => !seen.has(n));
  const problems: string[] = [];
  if (missing.length) problems.push(`${missing.length} missing: ${listSome(missing)}`);
  if (unexpected.length) problems.push(`${unexpected.length} unexpected: ${listSome(unexpected)}`);
  if (mismatched.length) problems.push(`${mismatched.length} with wrong shape: ${listSome(mismatched)}`);
  if (duplicated.length) problems.push(`${duplicated.length} duplicated: ${listSome(duplicated)}`);
  if (problems.length) {
    throw new UsageError(`${opts.source ?? 'state dict'}: weights do not fit the model — ${problems.join('; ')}.`);
  }
  return plan;
}

/**
 * Assigns what planLoad planned, one tensor at a time (`read` gives a checkpoint key's values),
 * refusing NaN/Inf values: weights that are not finite would only come out as black images.
 */
export function assignPlanned(model: Module, plan: ReadonlyArray<[string, string]>,
  read: (key: string) => { data: Float32Array; dtype?: string }, source: string,
  opts: { borrowed?: boolean; halves?: (key: string) => Uint16Array | null } = {}): void {
  const params = new Map(model.namedParameters());
  // fp16 tensors stay in half precision where the backend can hold them (util/half_weights.ts):
  // straight from the file's bits when the reader gives them (`halves`), else from float32.
  const half = halfWeights();
  for (const [key, name] of plan) {
    const bits = half && opts.halves ? opts.halves(key) : null;
    if (half && bits && bits.length >= HALF_MIN_SIZE) {
      const bad = firstNonFiniteHalf(bits);
      if (bad >= 0) throw new UsageError(`${source}: tensor "${key}" holds non-finite values (${bits[bad] & 0x3ff ? NaN : bits[bad] & 0x8000 ? -Infinity : Infinity} at index ${bad}): the weights are broken.`);
      const p = params.get(name)!;
      const t = half.fromHalves(bits, torchShape(p.layout, p.variable.shape), p.layout === 'plain' ? null : torchToInternalPerm(p.layout));
      p.variable.assign(t);
      t.dispose();
      continue;
    }
    const { data, dtype } = read(key);
    const bad = firstNonFinite(data);
    if (bad >= 0) throw new UsageError(`${source}: tensor "${key}" holds non-finite values (${data[bad]} at index ${bad}): the weights are broken.`);
    assignFromTorch(params.get(name)!, data, opts.borrowed, half && dtype === 'F16' && data.length >= HALF_MIN_SIZE ? half : null);
  }
}

/**
 * Writes PyTorch-layout values into a parameter (converting the layout). `borrowed`: `data` is a
 * reader's reusable buffer (SafetensorsFile.read with borrow), so it is copied where the layout
 * needs no conversion (the tensor would otherwise keep the buffer). `half`: keep the parameter in
 * half precision (the values must come from float16, so nothing is rounded).
 */
export function assignFromTorch(p: Parameter, data: Float32Array, borrowed = false, half: HalfWeights | null = null): void {
  const layout = p.layout;
  const keep = (t: tf.Tensor) => (half ? half.toHalf(t) : t);
  if (layout === 'plain') {
    tf.tidy(() => p.variable.assign(keep(tf.tensor(borrowed && !half ? data.slice() : data, p.variable.shape, 'float32'))));
    return;
  }
  // Conv and linear weights: transposed by the active backend (the native backend's threaded
  // kernel: loading SD's UNet spent most of its time in this transpose in JS). The input tensor
  // wraps `data` only inside the tidy, so a borrowed buffer is not kept.
  tf.tidy(() => p.variable.assign(keep(tf.transpose(tf.tensor(data, torchShape(layout, p.variable.shape), 'float32'), torchToInternalPerm(layout)))));
}

const LIST_LIMIT = 30;
function listSome(items: string[]): string {
  const shown = items.slice(0, LIST_LIMIT).join(', ');
  return items.length > LIST_LIMIT ? `${shown}, … (${items.length - LIST_LIMIT} more)` : shown;
}

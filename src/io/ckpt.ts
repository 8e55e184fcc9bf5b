/**
 * PyTorch checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin` — what torch.save writes since 1.6) read
 * as tensors, safely: a zip archive (io/zip.ts) of
 *   <name>/data.pkl        the pickled object (protocol 2): a state dict of tensors
 *   <name>/data/<key>      one raw little-endian storage per key
 *   <name>/version         (and byteorder, .data/serialization_id in newer releases)
 * The pickle is read by sdlab's restricted unpickler (io/pickle.ts) with an allow-list of
 * exactly the globals a tensor state dict uses — collections.OrderedDict,
 * torch._utils._rebuild_tensor_v2 / _rebuild_parameter(_with_state), torch.Size and the
 * torch.*Storage classes (float32/16, bfloat16, float64 and the integer/bool ones). Each maps to
 * sdlab's own code, which records a view (storage, offset, shape, stride); nothing in the file
 * is ever called, and any other global (`os.system`, `builtins.eval`, ...) is refused by name.
 *
 * Checked at open, before any tensor is read: every storage's zip entry exists and has exactly
 * numel × element size bytes, every tensor's view (offset + Σ (size−1)·stride) fits in its
 * storage, element counts within MAX_MODEL_PARAMS (views with more elements than their storage,
 * i.e. expanded ones: MAX_EXPANDED_ELEMENTS). Lightning/SD checkpoints nest the state dict under
 * "state_dict"; plain state dicts (HF pytorch_model.bin) are read as they are.
 *
 *   const ckpt = CkptFile.open('sd-v1-5.ckpt');
 *   ckpt.names()                          // ['model.diffusion_model.input_blocks.0.0.weight', ...]
 *   ckpt.read('first_stage_model.decoder.conv_in.weight')  // {dtype: 'F32', shape, data: Float32Array}
 *   openTensorFile(file)                  // a CkptFile or a SafetensorsFile, by the file's first bytes
 */
import fs from 'node:fs';
import { UsageError } from '../util/errors.ts';
import { checkRegularFile } from '../util/fs.ts';
import { oneLine } from '../util/json.ts';
import { MAX_EXPANDED_ELEMENTS, MAX_MODEL_PARAMS, MAX_PICKLE_BYTES, MAX_TENSOR_DIMS } from '../util/limits.ts';
import { PyCallable, PyDict, PyTuple, pyTypeName, unpickle } from './pickle.ts';
import { type Dtype, type SafeTensor, SafetensorsFile, decodeTensorBytes, dtypeSize, reportRead } from './safetensors.ts';
import { StoredZip } from './zip.ts';

/** What the LDM importer needs of a weights file: names, shapes, and tensors read one at a time. */
export interface TensorFile {
  readonly file: string;
  names(): string[];
  shapeOf(name: string): number[];
  /** One tensor as float32 (dtype: what was on disk), in PyTorch (C-order) layout. */
  read(name: string): SafeTensor;
}

/** torch.<X>Storage → dtype. */
const STORAGE_DTYPES: Record<string, Dtype> = {
  FloatStorage: 'F32',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  DoubleStorage: 'F64',
  LongStorage: 'I64',
  IntStorage: 'I32',
  ShortStorage: 'I16',
  CharStorage: 'I8',
  ByteStorage: 'U8',
  BoolStorage: 'BOOL',
};

class StorageType {
  readonly pyTypeName: string;
  constructor(
    readonly name: string,
    readonly dtype: Dtype,
  ) {
    this.pyTypeName = `torch.${name} (class)`;
  }
}

class StorageRef {
  readonly pyTypeName = 'torch storage';
  constructor(
    readonly key: string,
    readonly dtype: Dtype,
    readonly numel: number,
    readonly entry: string,
  ) {}
}

class TensorRef {
  readonly pyTypeName = 'torch.Tensor';
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}
}

/** A tensor of the file, validated: where its values are and how to gather them. */
interface CkptTensor {
  storage: StorageRef;
  offset: number;
  shape: number[];
  stride: number[];
  numel: number;
  /** Storage elements from `offset` that the view touches (0 for an empty tensor). */
  extent: number;
  contiguous: boolean;
}

const ZIP_MAGIC = 0x04034b50;

/** torch's legacy format opens with a pickled magic number: PROTO 2, LONG1 of 10 bytes. */
function isLegacyTorch(head: Buffer): boolean {
  return head.length === 4 && head[0] === 0x80 && head[1] === 0x02 && head[2] === 0x8a && head[3] === 0x0a;
}

/** The first 4 bytes of `file` (fewer if it is shorter). */
function magic(file: string): Buffer {
  checkRegularFile(file, 'a weights file');
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (err) {
    throw new UsageError(`${file}: cannot open weights file (${(err as NodeJS.ErrnoException).code ?? String(err)}).`);
  }
  try {
    const buf = Buffer.alloc(4);
    const n = fs.readSync(fd, buf, 0, 4, 0);
    return buf.subarray(0, n);
  } finally {
    fs.closeSync(fd);
  }
}

/** Opens a weights file by its content: a PyTorch zip checkpoint, else safetensors. */
export function openTensorFile(file: string): TensorFile {
  const head = magic(file);
  if (head.length === 4 && head.readUInt32LE(0) === ZIP_MAGIC) return CkptFile.open(file);
  if (isLegacyTorch(head)) return CkptFile.open(file); // says why it cannot
  return SafetensorsFile.open(file);
}

/** A PyTorch zip checkpoint, opened and validated; tensors are read on demand. */
export class CkptFile implements TensorFile {
  private constructor(
    readonly file: string,
    private readonly zip: StoredZip,
    private readonly tensors: Map<string, CkptTensor>,
    /** Where the state dict was: "state_dict" (Lightning/SD checkpoints) or null (the top level). */
    readonly nestedUnder: string | null,
  ) {}

  static open(file: string): CkptFile {
    const head = magic(file);
    if (isLegacyTorch(head)) {
      throw new UsageError(`${file}: a PyTorch checkpoint in the legacy (pre-1.6) format, which sdlab does not read; re-save it with a current torch.save, or use a .safetensors file.`);
    }
    if (head.length < 4 || head.readUInt32LE(0) !== ZIP_MAGIC) {
      throw new UsageError(`${file}: not a PyTorch checkpoint (expected a zip archive as torch.save writes, starting with "PK").`);
    }
    const zip = StoredZip.open(file, 'PyTorch checkpoint (zip archive)');
    const pkls = [...zip.entries.keys()].filter((n) => /^[^/]+\/data\.pkl$/.test(n));
    if (pkls.length !== 1) {
      throw new UsageError(`${file}: ${pkls.length === 0 ? 'no <name>/data.pkl in the archive' : `${pkls.length} data.pkl files in the archive`}; not a PyTorch checkpoint.`);
    }
    const prefix = pkls[0].slice(0, -'data.pkl'.length);
    const byteorder = zip.entries.get(`${prefix}byteorder`);
    if (byteorder) {
      const order = Buffer.from(zip.read(byteorder.name, 0, Math.min(byteorder.size, 16))).toString('latin1');
      if (order !== 'little') throw new UsageError(`${file}: tensors are stored ${oneLine(order, 20)}-endian; sdlab reads little-endian checkpoints only.`);
    }
    const pkl = zip.entries.get(pkls[0])!;
    if (pkl.size > MAX_PICKLE_BYTES) throw new UsageError(`${file}: its pickle is ${pkl.size} bytes, over sdlab's limit of ${MAX_PICKLE_BYTES}.`);
    const root = unpickle(zip.read(pkl.name), file, torchPolicy(file, zip, prefix));
    const { dict, under } = findStateDict(file, root);
    const tensors = new Map<string, CkptTensor>();
    for (const [key, value] of dict.items) {
      if (typeof key !== 'string') throw new UsageError(`${file}: the state dict has a key of type ${pyTypeName(key)}; expected tensor names (strings).`);
      const where = `${file}: ${under ? `${under}[${JSON.stringify(oneLine(key, 100))}]` : `"${oneLine(key, 100)}"`}`;
      if (/[\u0000-\u001f\u007f]/.test(key)) throw new UsageError(`${where}: the tensor name contains a control character.`);
      if (!(value instanceof TensorRef)) throw new UsageError(`${where} is a ${pyTypeName(value)}, not a tensor; sdlab reads state dicts of tensors only.`);
      tensors.set(key, checkView(where, value));
    }
    return new CkptFile(file, zip, tensors, under);
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  private get(name: string): CkptTensor {
    const t = this.tensors.get(name);
    if (!t) throw new UsageError(`${this.file}: no tensor named "${oneLine(name)}".`);
    return t;
  }

  shapeOf(name: string): number[] {
    return [...this.get(name).shape];
  }

  /** Reads one tensor (converted to float32; strided views gathered into C order). */
  read(name: string): SafeTensor {
    const t = this.get(name);
    const dtype = t.storage.dtype;
    const size = dtypeSize(dtype);
    const flat = decodeTensorBytes(dtype, this.zip.read(t.storage.entry, t.offset * size, t.extent * size));
    reportRead(t.extent * size);
    if (t.contiguous) return { dtype, shape: [...t.shape], data: flat };
    const out = new Float32Array(t.numel);
    const rank = t.shape.length;
    const idx = new Array<number>(rank).fill(0);
    let src = 0;
    for (let i = 0; i < t.numel; i++) {
      out[i] = flat[src];
      // Next index in C order: bump the last dimension, carrying into earlier ones.
      for (let d = rank - 1; d >= 0; d--) {
        idx[d]++;
        src += t.stride[d];
        if (idx[d] < t.shape[d]) break;
        src -= t.stride[d] * t.shape[d];
        idx[d] = 0;
      }
    }
    return { dtype, shape: [...t.shape], data: out };
  }
}

/** SD/Lightning checkpoints: {"state_dict": {...}, "global_step": ...}; else the top-level dict itself. */
function findStateDict(file: string, root: unknown): { dict: PyDict; under: string | null } {
  if (!(root instanceof PyDict)) throw new UsageError(`${file}: the checkpoint holds a ${pyTypeName(root)}, not a state dict (a dict of tensors).`);
  const nested = root.items.get('state_dict');
  if (nested !== undefined) {
    if (!(nested instanceof PyDict)) throw new UsageError(`${file}: "state_dict" is a ${pyTypeName(nested)}, not a dict of tensors.`);
    return { dict: nested, under: 'state_dict' };
  }
  return { dict: root, under: null };
}

/** Checks a tensor view against its storage (sizes from the file are never trusted). */
function checkView(where: string, t: TensorRef): CkptTensor {
  const { shape, stride, offset, storage } = t;
  const bad = (why: string): never => {
    throw new UsageError(`${where}: ${why}.`);
  };
  let numel = 1;
  let extent = 1;
  for (let d = 0; d < shape.length; d++) {
    numel *= shape[d];
    if (shape[d] === 0) extent = 0;
    else extent += (shape[d] - 1) * stride[d];
    if (numel > MAX_MODEL_PARAMS) bad(`shape [${shape.join(', ')}] has more than sdlab's limit of ${MAX_MODEL_PARAMS} elements`);
    if (extent > Number.MAX_SAFE_INTEGER / 8) bad(`strides [${stride.join(', ')}] reach absurdly far`);
  }
  if (numel === 0) extent = 0;
  if (offset + extent > storage.numel) {
    bad(`the tensor (shape [${shape.join(', ')}], stride [${stride.join(', ')}], offset ${offset}) needs ${offset + extent} elements but its storage "${oneLine(storage.key, 40)}" holds ${storage.numel} (storage shorter than the tensor)`);
  }
  if (numel > storage.numel && numel > MAX_EXPANDED_ELEMENTS) {
    bad(`the tensor is a view with ${numel} elements from a storage of ${storage.numel}, over sdlab's limit of ${MAX_EXPANDED_ELEMENTS} for expanded tensors`);
  }
  // Contiguous: the C-order strides (dimensions of size 1 may have any stride).
  let contiguous = extent === numel;
  let expect = 1;
  for (let d = shape.length - 1; d >= 0 && contiguous; d--) {
    if (shape[d] !== 1 && stride[d] !== expect) contiguous = false;
    expect *= shape[d];
  }
  return { storage, offset, shape, stride, numel, extent, contiguous };
}

/** A non-negative safe integer from the pickle, or one line saying what was wrong. */
function count(file: string, what: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new UsageError(`${file}: ${what} must be a non-negative integer, got ${typeof v === 'number' || typeof v === 'bigint' ? String(v) : `a ${pyTypeName(v)}`}.`);
  }
  return v;
}

function intTuple(file: string, what: string, v: unknown): number[] {
  if (!(v instanceof PyTuple)) throw new UsageError(`${file}: a tensor's ${what} is a ${pyTypeName(v)}, not a tuple.`);
  if (v.items.length > MAX_TENSOR_DIMS) throw new UsageError(`${file}: a tensor has ${v.items.length} dimensions, over sdlab's limit of ${MAX_TENSOR_DIMS}.`);
  return v.items.map((x) => count(file, `a tensor's ${what} entry`, x));
}

/**
 * The only globals a tensor state dict needs, each mapped to sdlab's own code. This table is the
 * whole of what a checkpoint can name: everything else is refused by the unpickler.
 */
function torchPolicy(file: string, zip: StoredZip, prefix: string) {
  const globals = new Map<string, unknown>();
  for (const [name, dtype] of Object.entries(STORAGE_DTYPES)) globals.set(`torch.${name}`, new StorageType(name, dtype));
  const fail = (why: string): never => {
    throw new UsageError(`${file}: ${why}.`);
  };

  globals.set(
    'collections.OrderedDict',
    new PyCallable('collections.OrderedDict', (args) => {
      const d = new PyDict('OrderedDict');
      if (args.length === 0) return d;
      const [items] = args;
      if (args.length !== 1 || !Array.isArray(items)) return fail('collections.OrderedDict called with arguments other than () or a list of pairs');
      for (const pair of items) {
        if (!(pair instanceof PyTuple) || pair.items.length !== 2) return fail('collections.OrderedDict called with a list that is not of (key, value) pairs');
        d.items.set(pair.items[0], pair.items[1]);
      }
      return d;
    }),
  );

  globals.set(
    'torch.Size',
    new PyCallable('torch.Size', (args) => {
      if (args.length !== 1 || !(args[0] instanceof PyTuple)) return fail('torch.Size called with arguments other than one tuple');
      return args[0];
    }),
  );

  const rebuildTensor = new PyCallable('torch._utils._rebuild_tensor_v2', (args) => {
    // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    if (args.length !== 6 && args.length !== 7) return fail(`torch._utils._rebuild_tensor_v2 called with ${args.length} arguments (expected 6 or 7)`);
    const [storage, offset, size, stride] = args;
    if (!(storage instanceof StorageRef)) return fail(`torch._utils._rebuild_tensor_v2 called on a ${pyTypeName(storage)}, not a storage`);
    const shape = intTuple(file, 'size', size);
    const strides = intTuple(file, 'stride', stride);
    if (shape.length !== strides.length) return fail(`a tensor has size [${shape.join(', ')}] but stride [${strides.join(', ')}]`);
    return new TensorRef(storage, count(file, "a tensor's storage offset", offset), shape, strides);
  });
  globals.set('torch._utils._rebuild_tensor_v2', rebuildTensor);
  // nn.Parameter(data, requires_grad, backward_hooks[, state]): the data is all a state dict needs.
  for (const [name, n] of [
    ['_rebuild_parameter', 3],
    ['_rebuild_parameter_with_state', 4],
  ] as const) {
    globals.set(
      `torch._utils.${name}`,
      new PyCallable(`torch._utils.${name}`, (args) => {
        if (args.length !== n || !(args[0] instanceof TensorRef)) return fail(`torch._utils.${name} called with arguments other than (tensor, ...) (${n} of them)`);
        return args[0];
      }),
    );
  }

  const storages = new Map<string, StorageRef>();
  const persistentLoad = (pid: unknown): unknown => {
    // ('storage', torch.<X>Storage, key, location, numel)
    if (!(pid instanceof PyTuple) || pid.items.length !== 5 || pid.items[0] !== 'storage') {
      return fail(`a persistent id is not a torch storage reference ('storage', type, key, location, numel)`);
    }
    const [, type, key, location, numelRaw] = pid.items;
    if (!(type instanceof StorageType)) return fail(`a storage reference names a ${pyTypeName(type)}, not a torch storage class`);
    if (typeof key !== 'string' || typeof location !== 'string') return fail('a storage reference has a key or location that is not a string');
    const numel = count(file, `storage "${oneLine(key, 40)}"'s element count`, numelRaw);
    const prev = storages.get(key);
    if (prev) {
      if (prev.dtype !== type.dtype || prev.numel !== numel) return fail(`storage "${oneLine(key, 40)}" is referenced as two different types or sizes`);
      return prev;
    }
    const entry = `${prefix}data/${key}`;
    const e = zip.entries.get(entry);
    if (!e) return fail(`storage "${oneLine(key, 40)}" has no entry ${oneLine(entry, 80)} in the archive (truncated?)`);
    const bytes = numel * dtypeSize(type.dtype);
    if (e.size !== bytes) return fail(`storage "${oneLine(key, 40)}" is ${numel} × ${type.name} (${bytes} bytes) but its entry holds ${e.size} bytes`);
    const ref = new StorageRef(key, type.dtype, numel, entry);
    storages.set(key, ref);
    return ref;
  };
  return { globals, persistentLoad };
}

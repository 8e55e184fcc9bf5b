/**
 * safetensors read/write (https://github.com/huggingface/safetensors format):
 *   8-byte little-endian u64 N | N bytes of JSON header | raw little-endian tensor bytes.
 * The header maps each name to {dtype, shape, data_offsets: [begin, end]} (offsets into the
 * byte buffer after the header) plus an optional "__metadata__" string map.
 *
 * Reading validates everything before trusting it — header length bounds (checked before
 * anything is allocated), JSON shape, dtypes, offsets inside the file, no overlaps or gaps,
 * dtype size × element count = byte length — so a hostile or truncated file fails with one
 * UsageError line naming the file. Tensors are read one at a time straight from the file
 * (no whole-file buffer), so multi-GB checkpoints load with little extra memory.
 *
 * All float dtypes (F16, BF16, F32, F64) and integer dtypes (e.g. I64 position_ids) come back
 * as Float32Array values; `dtype` says what was on disk. Writing produces F32 (or F16/BF16,
 * rounded to nearest even) and is atomic (util/fs.ts writeStreamAtomicSync: a temporary file in
 * the same directory, then a rename).
 *
 *   const tensors = readSafetensors('vae/diffusion_pytorch_model.safetensors');
 *   tensors.get('decoder.conv_in.weight')  // {dtype: 'F16', shape: [64,4,3,3], data: Float32Array}
 *   writeSafetensors('out.safetensors', tensors, { metadata: { format: 'pt' } });
 */
import fs from 'node:fs';
import os from 'node:os';
import { arrayAccel } from '../util/accel.ts';
import { UsageError } from '../util/errors.ts';
import { checkRegularFile, writeStreamAtomicSync } from '../util/fs.ts';
import { MAX_JSON_DEPTH, jsonDepth, oneLine, showJson } from '../util/json.ts';

export type Dtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U64' | 'U32' | 'U16' | 'U8' | 'BOOL';
export type WriteDtype = 'F32' | 'F16' | 'BF16';

const DTYPE_SIZE: Record<Dtype, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1,
};

/** Bytes per element of each dtype. */
export function dtypeSize(dtype: Dtype): number {
  return DTYPE_SIZE[dtype];
}

/** The spec caps the header at 100 MB; anything larger is refused before allocating. */
export const MAX_HEADER_BYTES = 100_000_000;

export interface SafeTensor {
  dtype: Dtype;
  shape: number[];
  data: Float32Array;
}

export interface TensorEntry {
  dtype: Dtype;
  shape: number[];
  /** Absolute byte range in the file. */
  begin: number;
  end: number;
}

if (os.endianness() !== 'LE') throw new Error('sdlab safetensors I/O assumes a little-endian machine');

// ---------------------------------------------------------------------------------------------
// Reading

let readListener: ((bytes: number) => void) | null = null;

/** The reusable buffers of borrowing reads (grow-only). */
const borrowed: Record<'bytes' | 'floats', ArrayBuffer | null> = { bytes: null, floats: null };
function borrowBuffer(which: 'bytes' | 'floats', size: number): ArrayBuffer {
  const b = borrowed[which];
  if (b && b.byteLength >= size) return b;
  return (borrowed[which] = new ArrayBuffer(Math.max(size, Math.ceil((b?.byteLength ?? 0) * 1.5))));
}

/**
 * Runs `fn` with `onRead(bytes)` called after every tensor read from a safetensors or .ckpt file
 * (what a loading progress bar counts), then restores the previous listener.
 */
export function withReadProgress<T>(onRead: (bytes: number) => void, fn: () => T): T {
  const prev = readListener;
  readListener = onRead;
  try {
    return fn();
  } finally {
    readListener = prev;
  }
}

/** Tells the listener of withReadProgress (if any) that `bytes` of tensor data were read. */
export function reportRead(bytes: number): void {
  readListener?.(bytes);
}

/** A parsed and validated safetensors header; read tensors lazily with `read(name)`. */
export class SafetensorsFile {
  private constructor(
    readonly file: string,
    readonly entries: Map<string, TensorEntry>,
    readonly metadata: Record<string, string>,
  ) {}

  /** Opens `file` and validates its header (no tensor data is read yet). */
  static open(file: string): SafetensorsFile {
    checkRegularFile(file, 'a safetensors file'); // a FIFO would block the open below forever
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (err) {
      throw new UsageError(`${file}: cannot open safetensors file (${(err as NodeJS.ErrnoException).code ?? String(err)}).`);
    }
    try {
      const size = fs.fstatSync(fd).size;
      const { entries, metadata } = parseHeader(file, fd, size);
      return new SafetensorsFile(file, entries, metadata);
    } finally {
      fs.closeSync(fd);
    }
  }

  names(): string[] {
    return [...this.entries.keys()];
  }

  /** Shape of tensor `name` (from the header; no data is read). */
  shapeOf(name: string): number[] {
    const e = this.entries.get(name);
    if (!e) throw new UsageError(`${this.file}: no tensor named "${name}".`);
    return [...e.shape];
  }

  /**
   * Reads one tensor, converted to float32. With `borrow`, the data may be a view of buffers that
   * the next borrowing read overwrites (no fresh memory per tensor): copy or convert it before then.
   */
  read(name: string, opts: { borrow?: boolean } = {}): SafeTensor {
    const e = this.entry(name);
    const bytes = this.readBytes(name, e, opts.borrow ?? false);
    const n = bytes.length / DTYPE_SIZE[e.dtype];
    const into = opts.borrow && e.dtype !== 'F32' ? new Float32Array(borrowBuffer('floats', n * 4), 0, n) : undefined;
    return { dtype: e.dtype, shape: [...e.shape], data: decodeTensorBytes(e.dtype, bytes, into) };
  }

  /** Dtype of tensor `name` as stored (from the header). */
  dtypeOf(name: string): Dtype {
    return this.entry(name).dtype;
  }

  /**
   * An F16 tensor's float16 bits as they are in the file (weights kept in half precision), in a
   * borrowed buffer as read's `borrow`; null for other dtypes (nothing read).
   */
  readHalves(name: string): Uint16Array | null {
    const e = this.entry(name);
    if (e.dtype !== 'F16') return null;
    const bytes = this.readBytes(name, e, true);
    return new Uint16Array(bytes.buffer, 0, bytes.length / 2);
  }

  private entry(name: string): TensorEntry {
    const e = this.entries.get(name);
    if (!e) throw new UsageError(`${this.file}: no tensor named "${name}".`);
    return e;
  }

  private readBytes(name: string, e: TensorEntry, borrow: boolean): Uint8Array {
    const len = e.end - e.begin;
    // Own ArrayBuffer, starting at offset 0: aligned typed-array views.
    const bytes = borrow ? new Uint8Array(borrowBuffer('bytes', len), 0, len) : new Uint8Array(len);
    const fd = fs.openSync(this.file, 'r');
    try {
      let done = 0;
      while (done < bytes.length) {
        const n = fs.readSync(fd, bytes, done, bytes.length - done, e.begin + done);
        if (n === 0) throw new UsageError(`${this.file}: file ended while reading tensor "${name}" (truncated?).`);
        done += n;
      }
    } finally {
      fs.closeSync(fd);
    }
    reportRead(bytes.length);
    return bytes;
  }

  /** Reads every tensor (or those `filter` accepts), in file order. */
  readAll(filter?: (name: string) => boolean): Map<string, SafeTensor> {
    const out = new Map<string, SafeTensor>();
    for (const name of this.entries.keys()) if (!filter || filter(name)) out.set(name, this.read(name));
    return out;
  }
}

/** Reads a whole safetensors file: name → {dtype (on disk), shape, data: Float32Array}. */
export function readSafetensors(file: string, filter?: (name: string) => boolean): Map<string, SafeTensor> {
  return SafetensorsFile.open(file).readAll(filter);
}

function parseHeader(file: string, fd: number, size: number): { entries: Map<string, TensorEntry>; metadata: Record<string, string> } {
  const bad = (why: string) => new UsageError(`${file}: not a valid safetensors file: ${why}.`);
  if (size < 8) throw bad(`only ${size} bytes, shorter than the 8-byte header length`);
  const lenBuf = Buffer.alloc(8);
  fs.readSync(fd, lenBuf, 0, 8, 0);
  const n64 = lenBuf.readBigUInt64LE(0);
  if (n64 > BigInt(MAX_HEADER_BYTES)) throw bad(`header length ${n64} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  const n = Number(n64);
  if (n < 2) throw bad(`header length ${n} is too small for a JSON object`);
  if (8 + n > size) throw bad(`header length ${n} runs past the end of the ${size}-byte file (truncated?)`);
  const headerBytes = Buffer.alloc(n);
  fs.readSync(fd, headerBytes, 0, n, 8);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
  } catch (err) {
    throw bad(`header is not valid UTF-8 JSON (${oneLine((err as Error).message)})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw bad('header is not a JSON object');
  // Entries are two levels deep: anything deeper would only overflow JSON.stringify in a message.
  if (jsonDepth(header) > MAX_JSON_DEPTH) throw bad(`header JSON nested deeper than ${MAX_JSON_DEPTH} levels`);

  const dataStart = 8 + n;
  const dataLen = size - dataStart;
  const entries = new Map<string, TensorEntry>();
  let metadata: Record<string, string> = {};
  const ranges: Array<[number, number, string]> = [];
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    // Names end up in messages and model keys; no real tensor name has a control character.
    if (/[\u0000-\u001f\u007f]/.test(name)) throw bad(`tensor name ${showJson(name)} contains a control character`);
    if (name === '__metadata__') {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad('"__metadata__" is not an object');
      metadata = Object.fromEntries(Object.entries(raw).map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify(v)]));
      continue;
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad(`entry "${name}" is not an object`);
    const { dtype, shape, data_offsets: offs } = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof dtype !== 'string' || !Object.hasOwn(DTYPE_SIZE, dtype)) {
      throw bad(`tensor "${name}" has unsupported dtype ${showJson(dtype)} (expected one of ${Object.keys(DTYPE_SIZE).join(', ')})`);
    }
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw bad(`tensor "${name}" has an invalid shape ${showJson(shape)}`);
    }
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0) || offs[0] > offs[1]) {
      throw bad(`tensor "${name}" has invalid data_offsets ${showJson(offs)}`);
    }
    const [b, e] = offs as [number, number];
    if (e > dataLen) throw bad(`tensor "${name}" data_offsets [${b}, ${e}] run past the end of the data (${dataLen} bytes; truncated?)`);
    // Element count, bailing out early so absurd shapes cannot overflow.
    const bytes = e - b;
    let count = (shape as number[]).includes(0) ? 0 : 1;
    for (const d of shape as number[]) {
      if (count * DTYPE_SIZE[dtype as Dtype] > bytes) break;
      count *= d;
    }
    if (count * DTYPE_SIZE[dtype as Dtype] !== bytes) {
      throw bad(`tensor "${name}" is ${dtype} ${showJson(shape)} but its data_offsets span ${bytes} bytes`);
    }
    entries.set(name, { dtype: dtype as Dtype, shape: shape as number[], begin: dataStart + b, end: dataStart + e });
    ranges.push([b, e, name]);
  }
  // The byte buffer must be covered exactly: sorted ranges are contiguous, from 0 to the end.
  ranges.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  let pos = 0;
  for (const [b, e, name] of ranges) {
    if (b < pos) throw bad(`tensor "${name}" data [${b}, ${e}] overlaps the previous tensor (which ends at ${pos})`);
    if (b > pos) throw bad(`gap in the data before tensor "${name}" (bytes ${pos}..${b} belong to no tensor)`);
    pos = e;
  }
  if (pos !== dataLen) throw bad(`${dataLen - pos} trailing bytes after the last tensor`);
  return { entries, metadata };
}

// ---------------------------------------------------------------------------------------------
// dtype conversion

/** float16 bits → float32 value (exact). */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24; // subnormal (or zero)
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 value → float16 bits, rounding to nearest even (overflow → ±Inf). */
export function floatToHalf(value: number): number {
  f32[0] = value;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // Inf / NaN
  const e = exp - 127 + 15; // re-biased exponent
  if (e >= 31) return sign | 0x7c00; // too large: Inf
  if (e <= 0) {
    // Subnormal half (or zero): shift the full 24-bit significand into place, round to even.
    if (e < -10) return sign; // below half of the smallest subnormal: ±0
    mant |= 0x800000;
    const shift = 14 - e; // 14..24
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++; // may carry into the exponent: correct (→ Inf at the top)
  return sign | h;
}

/** float32 value → bfloat16 bits, rounding to nearest even. */
export function floatToBf16(value: number): number {
  f32[0] = value;
  const x = u32[0];
  if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) return (x >>> 16) | 0x40; // keep NaN a (quiet) NaN
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

let f16Table: Float32Array | null = null;

/**
 * float16 values → float32 (into `into` when given): natively (F16C / NEON, both threads) when the
 * native backend has loaded (util/accel.ts), else through a 65,536-entry table of halfToFloat.
 */
export function halvesToFloats(src: Uint16Array, into?: Float32Array): Float32Array {
  const fast = arrayAccel();
  if (fast && src.length >= 4096) {
    const out = into ?? new Float32Array(src.length);
    fast.halvesToFloats(src, out);
    return out;
  }
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) f16Table[i] = halfToFloat(i);
  }
  const table = f16Table;
  const n = src.length;
  const out = into ?? new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = table[src[i]];
  return out;
}

/**
 * Bytes of `dtype` values (little-endian, `bytes` starting at offset 0 of its own buffer) → float32
 * (F16 into `into` when given, of the same length).
 */
export function decodeTensorBytes(dtype: Dtype, bytes: Uint8Array, into?: Float32Array): Float32Array {
  const buf = bytes.buffer;
  const n = bytes.length / DTYPE_SIZE[dtype];
  switch (dtype) {
    case 'F32':
      return new Float32Array(buf, 0, n);
    case 'F16':
      return halvesToFloats(new Uint16Array(buf, 0, n), into);
    case 'BF16': {
      const src = new Uint16Array(buf, 0, n);
      const out = new Uint32Array(n);
      for (let i = 0; i < n; i++) out[i] = src[i] << 16;
      return new Float32Array(out.buffer);
    }
    case 'F64':
      return Float32Array.from(new Float64Array(buf, 0, n));
    case 'I64':
      return Float32Array.from(new BigInt64Array(buf, 0, n), (v) => Number(v));
    case 'U64':
      return Float32Array.from(new BigUint64Array(buf, 0, n), (v) => Number(v));
    case 'I32':
      return Float32Array.from(new Int32Array(buf, 0, n));
    case 'U32':
      return Float32Array.from(new Uint32Array(buf, 0, n));
    case 'I16':
      return Float32Array.from(new Int16Array(buf, 0, n));
    case 'U16':
      return Float32Array.from(new Uint16Array(buf, 0, n));
    case 'I8':
      return Float32Array.from(new Int8Array(buf, 0, n));
    case 'U8':
    case 'BOOL':
      return Float32Array.from(new Uint8Array(buf, 0, n));
  }
}

function encode(dtype: WriteDtype, data: Float32Array): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint16Array(data.length);
  const conv = dtype === 'F16' ? floatToHalf : floatToBf16;
  for (let i = 0; i < data.length; i++) out[i] = conv(data[i]);
  return new Uint8Array(out.buffer);
}

// ---------------------------------------------------------------------------------------------
// Writing

export interface WriteOptions {
  /** String metadata stored under "__metadata__" (e.g. {format: 'pt'}). */
  metadata?: Record<string, string>;
  /** On-disk dtype for every tensor (default F32). */
  dtype?: WriteDtype;
}

/**
 * Writes tensors (name → {shape, data}) as safetensors, atomically. Tensors are laid out in
 * name order; the header is padded with spaces to a multiple of 8 bytes, as the Python
 * library does, so the data stays aligned.
 */
export function writeSafetensors(
  file: string,
  tensors: Map<string, { shape: readonly number[]; data: Float32Array }> | Record<string, { shape: readonly number[]; data: Float32Array }>,
  opts: WriteOptions = {},
): void {
  const map = tensors instanceof Map ? tensors : new Map(Object.entries(tensors));
  writeSafetensorsFrom(file, [...map].map(([name, t]) => ({ name, shape: t.shape })), (name) => map.get(name)!.data, opts);
}

/**
 * writeSafetensors for tensors produced one at a time: the header needs only names and shapes,
 * then `read(name)` is called once per tensor, in the file's (name) order, and its values are
 * written before the next is read — so converting a multi-GB checkpoint holds one tensor at a time.
 */
export function writeSafetensorsFrom(
  file: string,
  specs: ReadonlyArray<{ name: string; shape: readonly number[] }>,
  read: (name: string) => Float32Array,
  opts: WriteOptions = {},
): void {
  const dtype = opts.dtype ?? 'F32';
  const size = DTYPE_SIZE[dtype];
  const items = [...specs].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const header: Record<string, unknown> = {};
  if (opts.metadata) header.__metadata__ = opts.metadata;
  let offset = 0;
  for (const { name, shape } of items) {
    const count = shape.reduce((a, b) => a * b, 1);
    header[name] = { dtype, shape: [...shape], data_offsets: [offset, offset + count * size] };
    offset += count * size;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((Buffer.byteLength(json) + 8) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(headerBytes.length));

  writeStreamAtomicSync(file, (write) => {
    write(len);
    write(headerBytes);
    for (const { name, shape } of items) {
      const data = read(name);
      const count = shape.reduce((a, b) => a * b, 1);
      if (count !== data.length) {
        throw new Error(`writeSafetensors: tensor "${name}" has shape [${shape.join(',')}] but ${data.length} values`);
      }
      write(encode(dtype, data));
    }
  });
}

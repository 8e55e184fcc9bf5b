/**
 * The fuzz test's parts (test/fuzz.test.ts): seeded mutations of valid safetensors, config.json
 * and PNG files, and a child-process runner that bounds time and memory and judges the ending.
 *
 * Each mutator takes the valid bytes, a Random and optionally which kind of mutation (else a
 * random one), and returns the mutated bytes with a short description of what it did (`header: shape of "latents" → [1,2,4,1e+15]`), so that a failing
 * case can be read in the summary and rebuilt from the seed alone.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import zlib from 'node:zlib';
import type { Random } from '../../src/util/random.ts';

export interface Mutation {
  bytes: Buffer;
  what: string;
}

/** Compact JSON for descriptions (long values cut). */
function show(v: unknown): string {
  let s: string;
  try {
    s = typeof v === 'number' && !Number.isFinite(v) ? String(v) : JSON.stringify(v) ?? String(v);
  } catch {
    s = '<deep>';
  }
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

// ---------------------------------------------------------------------------------------------
// JSON values a careless or hostile file may hold where a small number, a string or a list was expected

/** Raw JSON text of values; some (1e400, the deep nest) have no JS value that prints as them. */
const ODD_JSON: readonly string[] = [
  '1000000000', '2147483648', '4294967297', '9007199254740993', '1e308', '1e400', '-1e400', '-1', '-2147483649', '0', '-0',
  '0.5', '1e-320', '"x"', '""', '"12"', 'null', 'true', 'false', '[]', '{}', '[1000000000]', '[0]', '[-1,2]', '[[1]]',
  '{"a":1}', `"${'x'.repeat(100_000)}"`, `${'['.repeat(100_000)}${']'.repeat(100_000)}`, '[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32]',
];

const ODD_KEYS: readonly string[] = ['foo', 'layers_per_blok', '', 'a\nb', 'quote"key', '__proto__', 'constructor', 'toString', '\u0000'];

/** Every path to a value inside `v` (object keys and array indices), the root excluded. */
function paths(v: unknown, prefix: Array<string | number> = [], out: Array<Array<string | number>> = []): Array<Array<string | number>> {
  if (Array.isArray(v)) v.forEach((x, i) => (out.push([...prefix, i]), paths(x, [...prefix, i], out)));
  else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) out.push([...prefix, k]), paths(x, [...prefix, k], out);
  return out;
}

const PLACEHOLDER = '\u0001odd\u0001';

/** JSON text of `root` with the value at `at` replaced by the raw text `raw`. */
function replaceAt(root: unknown, at: Array<string | number>, raw: string): string {
  const copy = structuredClone(root) as Record<string | number, unknown>;
  let o = copy;
  for (const k of at.slice(0, -1)) o = o[k] as Record<string | number, unknown>;
  o[at[at.length - 1]] = PLACEHOLDER;
  return JSON.stringify(copy, null, 2).replace(JSON.stringify(PLACEHOLDER), () => raw);
}

/** One random mutation of a JSON config file (of kind `op` modulo the number of kinds, if given). */
export function mutateConfig(text: string, rng: Random, op?: number): Mutation {
  const obj = JSON.parse(text) as Record<string, unknown>;
  const ps = paths(obj);
  const topKeys = Object.keys(obj);
  const ops: Array<() => [string | Buffer, string]> = [
    () => {
      const at = rng.pick(ps);
      const raw = rng.pick(ODD_JSON);
      return [replaceAt(obj, at, raw), `value ${at.join('.')} → ${show(raw)}`];
    },
    () => {
      // a list key made long, or one of its numbers huge
      const lists = ps.filter((p) => Array.isArray(p.reduce<unknown>((o, k) => (o as Record<string | number, unknown>)[k], obj)));
      if (!lists.length) return [replaceAt(obj, [rng.pick(topKeys)], '[]'), 'a key → []'];
      const at = rng.pick(lists);
      const list = at.reduce<unknown>((o, k) => (o as Record<string | number, unknown>)[k], obj) as unknown[];
      const long = rng.next() < 0.5;
      const raw = long ? JSON.stringify(Array.from({ length: 100_000 }, (_, i) => list[i % Math.max(1, list.length)] ?? 1)) : JSON.stringify([...list.slice(0, -1), 2 ** 25]);
      return [replaceAt(obj, at, raw), long ? `list ${at.join('.')} → 100000 entries` : `list ${at.join('.')} → last entry 33554432`];
    },
    () => {
      const key = rng.pick(ODD_KEYS);
      const raw = rng.pick(ODD_JSON.slice(0, 12));
      const body = JSON.stringify(obj, null, 2);
      return [`{${JSON.stringify(key)}: ${raw},${body.slice(1)}`, `unknown key ${show(key)}: ${show(raw)}`];
    },
    () => {
      const key = rng.pick(topKeys);
      const { [key]: _gone, ...rest } = obj;
      return [JSON.stringify(rest, null, 2), `key ${key} removed`];
    },
    () => {
      // a duplicate key after the real one: JSON.parse keeps the last
      const key = rng.pick(topKeys);
      const raw = rng.pick(ODD_JSON);
      const body = JSON.stringify(obj, null, 2);
      return [`${body.slice(0, -1)},\n  ${JSON.stringify(key)}: ${raw}\n}`, `duplicate key ${key} → ${show(raw)}`];
    },
    () => {
      const raw = rng.pick(['[]', '1', '"x"', 'null', 'true', `${'['.repeat(100_000)}${']'.repeat(100_000)}`, `${'{"a":'.repeat(50_000)}1${'}'.repeat(50_000)}`]);
      return [raw, `whole file → ${show(raw)}`];
    },
    () => {
      const cut = rng.int(text.length);
      return [text.slice(0, cut), `truncated at ${cut}/${text.length}`];
    },
    () => {
      const b = Buffer.from(text);
      const n = 1 + rng.int(4);
      const at: number[] = [];
      for (let i = 0; i < n; i++) at.push(rng.int(b.length)), (b[at[i]] = rng.pick([0x00, 0x22, 0x5c, 0x7b, 0x5d, 0xff, 0xc3, 0x0a, rng.int(256)]));
      return [b, `bytes changed at ${at.join(',')}`];
    },
    () => {
      const prefix = rng.pick([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from([0xff, 0xfe]), Buffer.alloc(0)]);
      return [Buffer.concat([prefix, prefix.length ? Buffer.from(text) : Buffer.alloc(0)]), prefix.length ? `prefixed ${prefix.toString('hex')}` : 'empty file'];
    },
  ];
  const [out, what] = ops[(op ?? rng.int(ops.length)) % ops.length]();
  return { bytes: Buffer.isBuffer(out) ? out : Buffer.from(out), what: `config: ${what}` };
}

// ---------------------------------------------------------------------------------------------
// safetensors

interface StParts {
  header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>>;
  data: Buffer;
}

function parseSt(b: Buffer): StParts {
  const n = Number(b.readBigUInt64LE(0));
  return { header: JSON.parse(b.subarray(8, 8 + n).toString('utf8')), data: b.subarray(8 + n) };
}

function buildSt(header: unknown, data: Buffer): Buffer {
  const h = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([len, h, data]);
}

const DTYPE_BYTES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1 };

/** Non-finite and extreme values in a dtype's bytes. */
function oddValue(dtype: string, rng: Random): { bytes: Buffer; name: string } {
  if (dtype === 'F16') {
    const [v, name] = rng.pick([[0x7e00, 'NaN'], [0x7c00, 'Inf'], [0xfc00, '-Inf'], [0x7bff, '65504']] as const);
    const b = Buffer.alloc(2);
    b.writeUInt16LE(v);
    return { bytes: b, name };
  }
  if (dtype === 'BF16') {
    const [v, name] = rng.pick([[0x7fc0, 'NaN'], [0x7f80, 'Inf'], [0xff80, '-Inf'], [0x7f7f, '3.4e38']] as const);
    const b = Buffer.alloc(2);
    b.writeUInt16LE(v);
    return { bytes: b, name };
  }
  const [v, name] = rng.pick([[NaN, 'NaN'], [Infinity, 'Inf'], [-Infinity, '-Inf'], [3.4e38, '3.4e38'], [1e-45, '1e-45']] as const);
  const size = DTYPE_BYTES[dtype] ?? 4;
  const b = Buffer.alloc(size);
  if (size === 8) b.writeDoubleLE(v);
  else if (size === 4) b.writeFloatLE(v);
  else b.fill(0xff);
  return { bytes: b, name };
}

/**
 * One random mutation of a safetensors file: its header's fields (dtype, shape, data_offsets),
 * entries (removed, added, renamed, metadata), JSON bytes and length prefix; truncation; data
 * bytes (NaN/Inf, random flips, appended junk); and changes that keep the file well-formed
 * (a tensor resized, a same-size dtype, a reshaped or transposed shape, two same-size tensors
 * swapped).
 */
export function mutateSafetensors(file: Buffer, rng: Random, op?: number): Mutation {
  const { header, data } = parseSt(file);
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  const name = rng.pick(names);
  const entry = header[name] as { dtype: string; shape: number[]; data_offsets: [number, number] };
  const n = Number(file.readBigUInt64LE(0));
  const withEntry = (e: unknown) => ({ ...header, [name]: e });
  const ops: Array<() => [Buffer, string]> = [
    () => {
      // well-formed, the tensor resized (zeros): an empty batch, ones, or a large image (at most 8 MB)
      const dims = entry.shape;
      const size = DTYPE_BYTES[entry.dtype] ?? 4;
      const shape = rng.pick([
        [0, ...dims.slice(1)],
        dims.map(() => 1),
        dims.length >= 2 ? [...dims.slice(0, -2), ...dims.slice(-2).map(() => 512)] : [1 << 20],
        [Math.max(1, Math.floor(2 ** 21 / Math.max(1, dims.slice(1).reduce((a, b) => a * b, 1)))), ...dims.slice(1)],
      ]);
      const count = shape.reduce((a, b) => a * b, 1);
      if (count * size > 8 << 20) return [file, `unchanged (${show(shape)} would be over 8 MB)`];
      // Rebuild the data in offset order with this tensor's bytes replaced.
      const order = names.map((k) => [k, (header[k] as typeof entry).data_offsets] as const).sort((a, b) => a[1][0] - b[1][0]);
      const parts: Buffer[] = [];
      const out: Record<string, unknown> = { ...header };
      let at = 0;
      for (const [k, [b, e]] of order) {
        const bytes = k === name ? Buffer.alloc(count * size) : data.subarray(b, e);
        out[k] = { ...(header[k] as typeof entry), ...(k === name ? { shape } : {}), data_offsets: [at, at + bytes.length] };
        parts.push(bytes);
        at += bytes.length;
      }
      return [buildSt(out, Buffer.concat(parts)), `"${name}" resized to ${show(shape)} (zeros, well-formed)`];
    },
    () => {
      const dtype = rng.pick(['F32', 'F16', 'BF16', 'F64', 'I64', 'I32', 'U8', 'BOOL', 'F8_E4M3', 'Q4', 'f32', '', 5, null]);
      return [buildSt(withEntry({ ...entry, dtype }), data), `dtype of "${name}" → ${show(dtype)}`];
    },
    () => {
      const shape: unknown[] = [...entry.shape];
      const odd = rng.pick([0, -1, 1.5, 2 ** 31, 2 ** 32 + 1, 2 ** 53, 1e15, 1e300, '4', null, [2]]);
      shape[rng.int(Math.max(1, shape.length))] = odd;
      return [buildSt(withEntry({ ...entry, shape }), data), `shape of "${name}" → ${show(shape)}`];
    },
    () => {
      const shape = rng.pick(['x', 5, {}, [], [0], [...entry.shape, 0], [entry.shape.reduce((a, b) => a * b, 1) * 2]]);
      return [buildSt(withEntry({ ...entry, shape }), data), `shape of "${name}" → ${show(shape)}`];
    },
    () => {
      // still consistent with the bytes: the loader must check shapes against the model
      const count = entry.shape.reduce((a, b) => a * b, 1);
      const shape = rng.pick([[count], [1, ...entry.shape], [...entry.shape].reverse(), entry.shape.length > 1 ? [entry.shape[0] * entry.shape[1], ...entry.shape.slice(2)] : [1, count], [count, 1, 1, 1]]);
      return [buildSt(withEntry({ ...entry, shape }), data), `shape of "${name}" → ${show(shape)} (same size)`];
    },
    () => {
      const [b, e] = entry.data_offsets;
      const offs = rng.pick([[b + 1, e + 1], [e, b], [b, e + 4], [b, e - 1], [0, 2 ** 53], [-4, e], [b], 'x', [b, 1e300], [b + 0.5, e], [b, data.length + 1]]);
      return [buildSt(withEntry({ ...entry, data_offsets: offs }), data), `data_offsets of "${name}" → ${show(offs)}`];
    },
    () => {
      const op = rng.int(6);
      if (op === 0) {
        const { [name]: _gone, ...rest } = header;
        return [buildSt(rest, data), `entry "${name}" removed (its bytes left as a gap)`];
      }
      if (op === 1) return [buildSt({ ...header, 'extra.weight': { dtype: 'F32', shape: [0], data_offsets: [data.length, data.length] } }, data), 'extra empty tensor "extra.weight"'];
      if (op === 2) {
        const { [name]: e, ...rest } = header;
        return [buildSt({ ...rest, [`${name}.renamed`]: e }, data), `"${name}" renamed`];
      }
      if (op === 3) {
        const meta = rng.pick(['5', '"x"', '[]', '{"format":{"deep":[1,2]}}', '{"format":"pt","a\\nb":"c\\nd"}', `${'{"a":'.repeat(20_000)}1${'}'.repeat(20_000)}`]);
        const { __metadata__: _m, ...rest } = header;
        return [buildSt(`{"__metadata__":${meta},${JSON.stringify(rest).slice(1)}`, data), `__metadata__ → ${show(meta)}`];
      }
      if (op === 4) {
        // the same name twice in the JSON text: JSON.parse keeps the last
        const text = JSON.stringify(header);
        const dup = `${text.slice(0, -1)},${JSON.stringify(name)}:${JSON.stringify({ ...entry, shape: [1] })}}`;
        return [buildSt(dup, data), `"${name}" listed twice`];
      }
      const whole = rng.pick(['[]', 'null', '1', '"x"', `${'['.repeat(100_000)}${']'.repeat(100_000)}`]);
      return [buildSt(whole, data), `header → ${show(whole)}`];
    },
    () => {
      const b = Buffer.from(file);
      const at: number[] = [];
      for (let i = 0, k = 1 + rng.int(4); i < k; i++) at.push(8 + rng.int(n)), (b[at[i]] = rng.pick([0x00, 0x22, 0x5c, 0x7b, 0x7d, 0x5b, 0x2c, 0x39, 0x2d, 0xff, 0xc3, rng.int(256)]));
      return [b, `header bytes changed at ${at.join(',')}`];
    },
    () => {
      const b = Buffer.from(file);
      const len = rng.pick([0n, 1n, BigInt(n - 1), BigInt(n + 1), BigInt(n + 8), BigInt(file.length - 8), BigInt(file.length), 2n ** 32n, 2n ** 53n, 2n ** 64n - 1n]);
      b.writeBigUInt64LE(len);
      return [b, `header length ${n} → ${len}`];
    },
    () => {
      const cut = rng.int(file.length);
      return [file.subarray(0, cut), `truncated at ${cut}/${file.length} (header ends at ${8 + n})`];
    },
    () => {
      const [b, e] = entry.data_offsets;
      const size = DTYPE_BYTES[entry.dtype] ?? 4;
      const d = Buffer.from(data);
      const { bytes, name: value } = oddValue(entry.dtype, rng);
      const all = rng.next() < 0.5;
      const count = (e - b) / size;
      const idx = all ? Array.from({ length: count }, (_, i) => i) : [rng.int(Math.max(1, count))];
      for (const i of idx) if (b + (i + 1) * size <= e) bytes.copy(d, b + i * size);
      return [Buffer.concat([file.subarray(0, 8 + n), d]), `${all ? 'every value' : `value ${idx[0]}`} of "${name}" → ${value}`];
    },
    () => {
      const d = Buffer.from(data);
      const at: number[] = [];
      for (let i = 0, k = 1 + rng.int(8); i < k && d.length; i++) at.push(rng.int(d.length)), (d[at[i]] = rng.int(256));
      return [Buffer.concat([file.subarray(0, 8 + n), d]), `data bytes changed at ${at.join(',')}`];
    },
    () => {
      const junk = Buffer.alloc(1 + rng.int(64), 0x41);
      return [Buffer.concat([file, junk]), `${junk.length} junk bytes appended`];
    },
    () => {
      const size = DTYPE_BYTES[entry.dtype];
      const same = Object.keys(DTYPE_BYTES).filter((t) => DTYPE_BYTES[t] === size && t !== entry.dtype);
      const dtype = rng.pick(same);
      return [buildSt(withEntry({ ...entry, dtype }), data), `dtype of "${name}" ${entry.dtype} → ${dtype} (same size)`];
    },
    () => {
      const len = (k: string) => {
        const o = (header[k] as { data_offsets: [number, number] }).data_offsets;
        return o[1] - o[0];
      };
      const other = names.find((k) => k !== name && len(k) === len(name));
      if (!other) return [buildSt(header, data), 'unchanged (no tensor of the same size to swap with)'];
      const o = header[other] as typeof entry;
      return [buildSt({ ...header, [name]: { ...entry, data_offsets: o.data_offsets }, [other]: { ...o, data_offsets: entry.data_offsets } }, data), `data of "${name}" and "${other}" swapped`];
    },
  ];
  const [bytes, what] = ops[(op ?? rng.int(ops.length)) % ops.length]();
  return { bytes, what: `safetensors: ${what}` };
}

// ---------------------------------------------------------------------------------------------
// PNG

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

/** CRC-32 (ISO-HDLC, as PNG chunks use). */
export function crc32(b: Uint8Array): number {
  let c = 0xffffffff;
  for (const x of b) c = CRC_TABLE[(c ^ x) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

interface Chunk {
  type: string;
  data: Buffer;
}

function chunks(png: Buffer): Chunk[] {
  const out: Chunk[] = [];
  for (let p = 8; p + 8 <= png.length; ) {
    const len = png.readUInt32BE(p);
    out.push({ type: png.toString('latin1', p + 4, p + 8), data: png.subarray(p + 8, p + 8 + len) });
    p += 12 + len;
  }
  return out;
}

/** Chunk bytes (length, type, data, CRC); `crc` overrides the correct CRC. */
function chunkBytes(c: Chunk, crc?: number): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(c.data.length, 0);
  head.write(c.type, 4, 'latin1');
  const tail = Buffer.alloc(4);
  tail.writeUInt32BE(crc ?? crc32(Buffer.concat([head.subarray(4), c.data])));
  return Buffer.concat([head, c.data, tail]);
}

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function buildPng(cs: Chunk[]): Buffer {
  return Buffer.concat([SIGNATURE, ...cs.map((c) => chunkBytes(c))]);
}

/** An 8-bit grayscale PNG of w×h zeros (IDAT: every row filter 0), compressed: tiny on disk whatever its size. */
export function blankPng(w: number, h: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8;
  ihdr[9] = 0;
  const raw = Buffer.alloc((w + 1) * h);
  return buildPng([{ type: 'IHDR', data: ihdr }, { type: 'IDAT', data: zlib.deflateSync(raw, { level: 9 }) }, { type: 'IEND', data: Buffer.alloc(0) }]);
}

/**
 * One random mutation of a PNG: IHDR fields (width/height, bit depth, colour type, interlace;
 * CRC fixed or not), chunk lengths, CRCs, truncation, IDAT bytes (CRC fixed so the decoder sees
 * them), chunks added or removed, the signature; and well-formed images of odd sizes.
 */
export function mutatePng(png: Buffer, rng: Random, op?: number): Mutation {
  const cs = chunks(png);
  const ihdr = cs.find((c) => c.type === 'IHDR')!;
  const withIhdr = (f: (d: Buffer) => void, fixCrc: boolean): Buffer => {
    const d = Buffer.from(ihdr.data);
    f(d);
    return Buffer.concat([SIGNATURE, ...cs.map((c) => (c === ihdr ? chunkBytes({ type: 'IHDR', data: d }, fixCrc ? undefined : 0x12345678) : chunkBytes(c)))]);
  };
  const ops: Array<() => [Buffer, string]> = [
    () => {
      const w = rng.pick([0, 1, 7, 4096, 30000, 100000, 2 ** 31 - 1, 2 ** 32 - 1]);
      const h = rng.pick([0, 1, 8, 4096, 30000, 2 ** 31 - 1]);
      const fix = rng.next() < 0.8;
      return [withIhdr((d) => (d.writeUInt32BE(w, 0), d.writeUInt32BE(h, 4)), fix), `IHDR ${w}×${h}${fix ? '' : ', bad CRC'}`];
    },
    () => {
      const field = rng.pick([[8, 'bit depth', [0, 1, 2, 3, 4, 16, 255]], [9, 'colour type', [1, 2, 3, 4, 5, 6, 7]], [10, 'compression', [1, 255]], [11, 'filter', [1, 255]], [12, 'interlace', [1, 2]]] as const);
      const v = rng.pick(field[2]);
      return [withIhdr((d) => (d[field[0]] = v), true), `IHDR ${field[1]} → ${v}`];
    },
    () => {
      const i = rng.int(cs.length);
      const len = rng.pick([0, cs[i].data.length + 1, Math.max(0, cs[i].data.length - 1), 2 ** 31 - 1, 2 ** 32 - 1, rng.int(1 << 20)]);
      const b = buildPng(cs);
      let p = 8;
      for (let k = 0; k < i; k++) p += 12 + cs[k].data.length;
      b.writeUInt32BE(len, p);
      return [b, `${cs[i].type} length ${cs[i].data.length} → ${len}`];
    },
    () => {
      const i = rng.int(cs.length);
      return [Buffer.concat([SIGNATURE, ...cs.map((c, k) => chunkBytes(c, k === i ? 0xdeadbeef : undefined))]), `${cs[i].type} CRC wrong`];
    },
    () => {
      const cut = rng.int(png.length);
      return [png.subarray(0, cut), `truncated at ${cut}/${png.length}`];
    },
    () => {
      const idat = cs.find((c) => c.type === 'IDAT')!;
      const d = Buffer.from(idat.data);
      const at: number[] = [];
      for (let i = 0, k = 1 + rng.int(6); i < k; i++) at.push(rng.int(d.length)), (d[at[i]] = rng.int(256));
      return [buildPng(cs.map((c) => (c === idat ? { type: 'IDAT', data: d } : c))), `IDAT bytes changed at ${at.join(',')} (CRC fixed)`];
    },
    () => {
      const extra = rng.pick<Chunk>([
        { type: 'tEXt', data: Buffer.from('Comment\0' + 'x'.repeat(1000)) },
        { type: 'zTXt', data: Buffer.concat([Buffer.from('Comment\0\0'), zlib.deflateSync(Buffer.alloc(1 << 24))]) },
        { type: 'abCd', data: Buffer.alloc(16) },
        { type: 'ABCD', data: Buffer.alloc(16) },
        { type: 'IHDR', data: ihdr.data },
        { type: 'PLTE', data: Buffer.alloc(9) },
        { type: 'IDAT', data: Buffer.alloc(0) },
        { type: 'IEND', data: Buffer.alloc(0) },
      ]);
      const at = 1 + rng.int(cs.length - 1);
      return [buildPng([...cs.slice(0, at), extra, ...cs.slice(at)]), `${extra.type} chunk (${extra.data.length} bytes) inserted before ${cs[at].type}`];
    },
    () => {
      const i = rng.int(cs.length);
      return [buildPng(cs.filter((_, k) => k !== i)), `${cs[i].type} chunk removed`];
    },
    () => {
      const b = Buffer.from(png);
      const at = rng.int(8);
      b[at] ^= 1 << rng.int(8);
      return [b, `signature byte ${at} changed`];
    },
    () => {
      // well-formed, odd sizes (tiny on disk, large or degenerate when decoded)
      const [w, h] = rng.pick([[1, 1], [1, 100_000], [100_000, 1], [3, 5], [6000, 6000], [9, 8]] as const);
      return [blankPng(w, h), `a valid blank ${w}×${h} PNG`];
    },
  ];
  const [bytes, what] = ops[(op ?? rng.int(ops.length)) % ops.length]();
  return { bytes, what: `png: ${what}` };
}

// ---------------------------------------------------------------------------------------------
// Running the CLI with bounds

export interface Bounds {
  /** Killed (and failed) after this long. */
  timeoutMs: number;
  /** Killed (and failed) once its peak resident memory passes this (Linux: /proc/<pid>/status VmHWM). */
  maxRssMb: number;
  /** --max-old-space-size of the child's V8 heap. */
  heapMb: number;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
  /** Peak resident memory seen (null where /proc is not there). */
  peakRssMb: number | null;
  /** Why the runner killed it, if it did. */
  killed?: 'time' | 'memory';
}

/** The child's peak resident set (VmHWM) in MB, or null once it is gone (or without /proc). */
function peakRss(pid: number): number | null {
  try {
    const m = /VmHWM:\s*(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

/** Keeps the last `max` characters of a stream (a child that prints without end cannot fill memory). */
function tailOf(max: number) {
  let s = '';
  return { add: (d: Buffer) => void (s = (s + d.toString()).slice(-max)), get: () => s };
}

/** Runs `node <nodeArgs> <script> <args>` in `cwd`, polling its memory every 25 ms, and kills it past `bounds`. */
export function runBounded(script: string, args: string[], cwd: string, bounds: Bounds): Promise<RunResult> {
  const started = performance.now();
  const child = spawn(process.execPath, [`--max-old-space-size=${bounds.heapMb}`, script, ...args], { cwd, env: { ...process.env, CI: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
  const out = tailOf(20_000);
  const err = tailOf(20_000);
  child.stdout.on('data', out.add);
  child.stderr.on('data', err.add);
  let peak: number | null = null;
  let killed: RunResult['killed'];
  const kill = (why: 'time' | 'memory') => {
    if (killed || child.exitCode !== null || child.signalCode !== null) return;
    killed = why;
    child.kill('SIGKILL');
  };
  const poll = setInterval(() => {
    const now = peakRss(child.pid!);
    if (now !== null) peak = Math.max(peak ?? 0, now);
    if (peak !== null && peak > bounds.maxRssMb) kill('memory');
  }, 25);
  const timer = setTimeout(() => kill('time'), bounds.timeoutMs);
  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearInterval(poll);
      clearTimeout(timer);
      resolve({ code, signal, stdout: out.get(), stderr: err.get(), ms: performance.now() - started, peakRssMb: peak, killed });
    });
  });
}

/** tfjs's "install the node backend" banner, printed on stderr by the pure-JS cpu backend: not sdlab's output. */
const TFJS_BANNER = /^(=+|Hi, looks like you are running TensorFlow\.js in Node\.js\..*)$/;

/** sdlab's own stderr lines (blank lines and tfjs's banner dropped). */
export function ownStderrLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.trim() !== '' && !TFJS_BANNER.test(l.trim()));
}

/** What is wrong with how a run ended (null: exit 0, or exit 2 with one `sdlab: error:` line and no stack trace). */
export function problem(r: RunResult, bounds: Bounds): string | null {
  if (r.killed === 'time') return `still running after ${bounds.timeoutMs / 1000} s`;
  if (r.killed === 'memory') return `peak memory past ${bounds.maxRssMb} MB`;
  if (r.signal) return `killed by ${r.signal}`;
  const trace = /^\s+at .+(:\d+:\d+\)?|\(native\)|<anonymous>\)?)$/m.test(r.stderr);
  if (r.code === 0) return trace ? 'exit 0 with a stack trace' : null;
  if (r.code !== 2) return `exit ${r.code}`;
  if (trace) return 'exit 2 with a stack trace';
  const lines = ownStderrLines(r.stderr);
  if (lines.length !== 1) return `exit 2 with ${lines.length} stderr lines`;
  if (!lines[0].startsWith('sdlab: error: ')) return 'exit 2 without an "sdlab: error:" line';
  return null;
}

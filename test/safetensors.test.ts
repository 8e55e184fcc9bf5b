import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SafetensorsFile, floatToBf16, floatToHalf, halfToFloat, halvesToFloats, readSafetensors, writeSafetensors } from '../src/io/safetensors.ts';
import { UsageError } from '../src/util/errors.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-st-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const tmp = (name: string) => path.join(dir, name);

/** Builds a file from a header object (or raw header text) and a data buffer. */
function rawFile(name: string, header: object | string, data: Uint8Array = new Uint8Array(0), lengthOverride?: bigint): string {
  const text = typeof header === 'string' ? header : JSON.stringify(header);
  const h = Buffer.from(text, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(lengthOverride ?? BigInt(h.length));
  const file = tmp(name);
  fs.writeFileSync(file, Buffer.concat([len, h, data]));
  return file;
}

/** The raw 16-bit words of the first tensor's data in a file we wrote. */
function words16(file: string): number[] {
  const st = SafetensorsFile.open(file);
  const e = [...st.entries.values()][0];
  const buf = fs.readFileSync(file).subarray(e.begin, e.end);
  return Array.from({ length: buf.length / 2 }, (_, i) => buf.readUInt16LE(2 * i));
}

describe('safetensors round trip', () => {
  it('F32 keeps every value, shape, name and the metadata', () => {
    const a = Float32Array.from({ length: 24 }, (_, i) => Math.sin(i * 1.7) * 1e3 + i / 7);
    const b = new Float32Array([Math.PI, -0, Infinity, -1e-40]);
    const file = tmp('f32.safetensors');
    writeSafetensors(file, { 'x.weight': { shape: [2, 3, 4], data: a }, 'a.bias': { shape: [4], data: b } }, { metadata: { format: 'pt' } });
    const back = readSafetensors(file);
    expect([...back.keys()].sort()).toEqual(['a.bias', 'x.weight']);
    expect(back.get('x.weight')!.shape).toEqual([2, 3, 4]);
    expect(back.get('x.weight')!.dtype).toBe('F32');
    expect(Array.from(back.get('x.weight')!.data)).toEqual(Array.from(a));
    expect(Array.from(back.get('a.bias')!.data)).toEqual(Array.from(b));
    expect(SafetensorsFile.open(file).metadata).toEqual({ format: 'pt' });
    // The data section starts 8-byte aligned, as the Python library writes it.
    const n = Number(fs.readFileSync(file).readBigUInt64LE(0));
    expect((8 + n) % 8).toBe(0);
    // Atomic write: no temporary file left behind.
    expect(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('F16: representable values survive exactly; rounding is to nearest even', () => {
    // Reference bit patterns from the IEEE 754 binary16 definition.
    const cases: Array<[number, number]> = [
      [1, 0x3c00],
      [-2, 0xc000],
      [65504, 0x7bff], // largest finite
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -14, 0x0400], // smallest normal
      [0.1, 0x2e66],
      [1 + 2 ** -11, 0x3c00], // halfway 1 ↔ 1+2^-10: ties to even
      [1 + 3 * 2 ** -11, 0x3c02], // halfway 0x3c01 ↔ 0x3c02: ties to even
      [2 ** -25, 0x0000], // halfway 0 ↔ 2^-24: ties to even (0)
      [3 * 2 ** -26, 0x0001],
      [65520, 0x7c00], // halfway 65504 ↔ 65536: rounds to even → overflow to Inf
      [1e6, 0x7c00],
      [-Infinity, 0xfc00],
      [0, 0x0000],
    ];
    const data = Float32Array.from(cases.map(([v]) => v));
    const file = tmp('f16.safetensors');
    writeSafetensors(file, new Map([['t', { shape: [cases.length], data }]]), { dtype: 'F16' });
    expect(words16(file).map((w) => w.toString(16))).toEqual(cases.map(([, bits]) => bits.toString(16)));
    const back = readSafetensors(file).get('t')!;
    expect(back.dtype).toBe('F16');
    // Decoding the reference patterns gives the exact binary16 values.
    expect(Array.from(back.data)).toEqual(cases.map(([, bits]) => halfToFloat(bits)));
    expect(halfToFloat(0x2e66)).toBe(0.0999755859375);
    expect(halfToFloat(0x7bff)).toBe(65504);
    expect(Number.isNaN(halfToFloat(floatToHalf(NaN)))).toBe(true);
    // Every finite half survives half → float → half.
    for (let bits = 0; bits < 0x10000; bits++) {
      if ((bits & 0x7c00) === 0x7c00) continue;
      const back16 = floatToHalf(halfToFloat(bits));
      if (back16 !== bits) throw new Error(`half 0x${bits.toString(16)} came back as 0x${back16.toString(16)}`);
    }
  });

  it('BF16: upper 16 bits of float32 with round to nearest even', () => {
    const cases: Array<[number, number]> = [
      [1, 0x3f80],
      [-2, 0xc000],
      [0.1, 0x3dcd], // 0x3DCCCCCD rounds up
      [1 + 2 ** -8, 0x3f80], // tie → even
      [1 + 3 * 2 ** -8, 0x3f82], // tie → even
      [3.3895313892515355e38, 0x7f7f], // largest finite bf16
    ];
    const file = tmp('bf16.safetensors');
    writeSafetensors(file, { t: { shape: [2, 3], data: Float32Array.from(cases.map(([v]) => v)) } }, { dtype: 'BF16' });
    expect(words16(file).map((w) => w.toString(16))).toEqual(cases.map(([, b]) => b.toString(16)));
    const back = readSafetensors(file).get('t')!;
    expect(back.dtype).toBe('BF16');
    expect(back.shape).toEqual([2, 3]);
    expect(Array.from(back.data)).toEqual([1, -2, 0.10009765625, 1, 1.015625, 3.3895313892515355e38]);
    expect(Number.isNaN(new Float32Array(new Uint32Array([floatToBf16(NaN) << 16]).buffer)[0])).toBe(true);
  });

  it('reads integer tensors (I64 position_ids, I32) as float values', () => {
    const ids = new BigInt64Array([0n, 1n, 2n, 3n, 76n]);
    const i32 = new Int32Array([-5, 7]);
    const data = Buffer.concat([Buffer.from(ids.buffer), Buffer.from(i32.buffer)]);
    const file = rawFile('ints.safetensors', {
      'text_model.embeddings.position_ids': { dtype: 'I64', shape: [1, 5], data_offsets: [0, 40] },
      small: { dtype: 'I32', shape: [2], data_offsets: [40, 48] },
    }, data);
    const t = readSafetensors(file);
    expect(t.get('text_model.embeddings.position_ids')).toEqual({ dtype: 'I64', shape: [1, 5], data: new Float32Array([0, 1, 2, 3, 76]) });
    expect(Array.from(t.get('small')!.data)).toEqual([-5, 7]);
  });

  it('reads the fixture VAE (F16 on disk) into float32', () => {
    const file = path.resolve(import.meta.dirname, '../../shared/fixtures/sd1_tiny/model/vae/diffusion_pytorch_model.safetensors');
    const st = SafetensorsFile.open(file);
    expect(st.metadata).toEqual({ format: 'pt' });
    expect(st.names().length).toBe(124);
    const w = st.read('decoder.conv_in.weight');
    expect(w.dtype).toBe('F16');
    expect(w.shape).toEqual([64, 4, 3, 3]);
    expect(w.data.length).toBe(64 * 4 * 9);
    // Reference values read with numpy (np.frombuffer(..., np.float16)).
    expect(Array.from(w.data.slice(0, 3))).toEqual([0.0069427490234375, 0.0966796875, -0.01103973388671875]);
    expect(w.data.reduce((a, b) => a + b, 0)).toBeCloseTo(-1.1396748423576355, 9);
    // fp16 values: every one is exactly representable as a half.
    for (const v of w.data) expect(halfToFloat(floatToHalf(v))).toBe(v);
  });
});

describe('fp16 decoding', () => {
  it('halvesToFloats: subnormal, largest normal, signed zero, infinities, NaN; into a given buffer', () => {
    const h = Uint16Array.of(0x0001, 0x03ff, 0x0400, 0x3c00, 0x7bff, 0x8000, 0xfc00, 0x7c00, 0x7e00, 0xc000);
    const into = new Float32Array(h.length);
    const got = halvesToFloats(h, into);
    expect(got).toBe(into);
    expect([...got]).toEqual([2 ** -24, 1023 * 2 ** -24, 2 ** -14, 1, 65504, -0, -Infinity, Infinity, NaN, -2]);
    expect(Object.is(got[5], -0)).toBe(true);
  });
});

describe('safetensors rejects hostile or broken files with one clear line', () => {
  const good = { t: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
  const eight = new Uint8Array(8);

  const cases: Array<[string, () => string, RegExp]> = [
    ['shorter than 8 bytes', () => (fs.writeFileSync(tmp('short'), Buffer.from([1, 2, 3])), tmp('short')), /only 3 bytes/],
    ['huge header length', () => rawFile('huge', good, eight, 1n << 62n), /header length \d+ exceeds the 100000000-byte limit/],
    ['header length past end of file', () => rawFile('pastend', good, eight, 5000n), /header length 5000 runs past the end/],
    ['bad JSON', () => rawFile('badjson', '{"t": {"dtype": "F32", ', eight), /header is not valid UTF-8 JSON/],
    ['JSON that is not an object', () => rawFile('array', '[1,2,3]', eight), /header is not a JSON object/],
    ['offsets past the end of the file', () => rawFile('offs', { t: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, eight), /data_offsets \[0, 16\] run past the end of the data \(8 bytes/],
    ['truncated file', () => {
      const f = tmp('trunc');
      writeSafetensors(f, { a: { shape: [3], data: new Float32Array(3) }, b: { shape: [5], data: new Float32Array(5) } });
      fs.truncateSync(f, fs.statSync(f).size - 3);
      return f;
    }, /tensor "b" data_offsets \[12, 32\] run past the end of the data .*truncated/],
    ['overlapping ranges', () => rawFile('overlap', {
      a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
    }, new Uint8Array(12)), /tensor "b" data \[4, 12\] overlaps the previous tensor/],
    ['gap between tensors', () => rawFile('gap', {
      a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
      b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] },
    }, new Uint8Array(12)), /gap in the data before tensor "b"/],
    ['trailing bytes', () => rawFile('trail', good, new Uint8Array(12)), /4 trailing bytes/],
    ['dtype × shape ≠ byte length', () => rawFile('mismatch', { t: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, eight), /tensor "t" is F32 \[3\] but its data_offsets span 8 bytes/],
    ['absurd shape', () => rawFile('absurd', { t: { dtype: 'F32', shape: [1e9, 1e9, 1e9], data_offsets: [0, 8] } }, eight), /is F32 .* span 8 bytes/],
    ['negative / fractional shape', () => rawFile('negshape', { t: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } }, eight), /invalid shape \[-2\]/],
    ['unsupported dtype', () => rawFile('dtype', { t: { dtype: 'F8_E4M3', shape: [8], data_offsets: [0, 8] } }, eight), /unsupported dtype "F8_E4M3"/],
    ['malformed data_offsets', () => rawFile('offsbad', { t: { dtype: 'F32', shape: [2], data_offsets: [8, 0] } }, eight), /invalid data_offsets \[8,0\]/],
    ['missing file', () => tmp('does-not-exist.safetensors'), /cannot open safetensors file \(ENOENT\)/],
  ];

  for (const [what, make, pattern] of cases) {
    it(what, () => {
      const file = make();
      let err: unknown;
      try {
        readSafetensors(file);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(UsageError);
      const msg = (err as Error).message;
      expect(msg).toMatch(pattern);
      expect(msg.startsWith(file)).toBe(true);
      expect(msg).not.toContain('\n');
    });
  }

  it('a valid file built the same way reads fine (the cases above fail for their stated reason)', () => {
    const file = rawFile('valid', good, new Uint8Array(new Float32Array([1.5, -2]).buffer));
    expect(Array.from(readSafetensors(file).get('t')!.data)).toEqual([1.5, -2]);
  });
});

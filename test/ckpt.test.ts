/**
 * The PyTorch checkpoint reader (src/io/ckpt.ts, pickle.ts, zip.ts):
 *   - files written by the real torch.save (1.13, test/fixtures/ckpt/, made by
 *     scripts/make_torch_ckpt_fixture.py) read back to exactly torch's values: every dtype,
 *     transposed / sliced / expanded views, nn.Parameter, the nested and the plain layouts;
 *   - the sd1_tiny LDM weights written as checkpoints by scripts/make_ckpt_fixture.py (Python's
 *     stdlib pickle + zipfile, run here with python3) read back bit-identical to the safetensors
 *     file, also through strided views, shared storages, zip64 records and pickle protocol 4;
 *   - hostile files: pickles that run code (os.system, builtins.eval, subprocess.Popen, getattr)
 *     are refused by name, and the marker file their payload would create is never created —
 *     while Python's own unpickler, given the same file, does create it (the payloads are live);
 *     calling-opcodes, truncation, absurd sizes, deep nesting, cycles, compressed entries and
 *     corrupt data are each one UsageError line.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CkptFile, openTensorFile } from '../src/io/ckpt.ts';
import { SafetensorsFile } from '../src/io/safetensors.ts';
import { PyCallable, PyDict, unpickle } from '../src/io/pickle.ts';
import * as zipModule from '../src/io/zip.ts';
import { UsageError } from '../src/util/errors.ts';
import { Random } from '../src/util/random.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const SCRIPT = path.join(ROOT, 'scripts/make_ckpt_fixture.py');
const TORCH = path.join(ROOT, 'test/fixtures/ckpt');
const LDM = path.resolve(ROOT, '../shared/fixtures/sd1_tiny/ldm/sd1_tiny.safetensors');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-ckpt-'));

const py = (...args: string[]) => execFileSync('python3', [SCRIPT, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
const file = (name: string) => path.join(tmp, name);
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Expects `fn` to throw one UsageError line matching `pattern`. */
function oneLineError(fn: () => unknown, pattern: RegExp): string {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, `expected a UsageError matching ${pattern}`).toBeInstanceOf(UsageError);
  const msg = (err as Error).message;
  expect(msg).toMatch(pattern);
  expect(msg).not.toContain('\n');
  return msg;
}

describe('files written by torch.save (1.13)', () => {
  const expected = JSON.parse(fs.readFileSync(path.join(TORCH, 'torch_1.13.json'), 'utf8')).tensors as Record<string, { dtype: string; shape: number[]; values: number[] }>;

  for (const [name, nested] of [
    ['torch_1.13.ckpt', 'state_dict'],
    ['torch_1.13_plain.bin', null],
  ] as const) {
    it(`${name}: every tensor has torch's dtype, shape and values`, () => {
      const ckpt = CkptFile.open(path.join(TORCH, name));
      expect(ckpt.nestedUnder).toBe(nested);
      expect(ckpt.names().sort()).toEqual(Object.keys(expected).sort());
      for (const [key, want] of Object.entries(expected)) {
        const t = ckpt.read(key);
        expect(t.dtype, key).toBe(want.dtype);
        expect(t.shape, key).toEqual(want.shape);
        expect(ckpt.shapeOf(key)).toEqual(want.shape);
        // float32 holds every value of these dtypes exactly except float64's and large int32s.
        const exact = want.values.map((v) => Math.fround(v));
        expect(Array.from(t.data), key).toEqual(exact);
      }
    });
  }

  it('openTensorFile tells a checkpoint from a safetensors file by content', () => {
    expect(openTensorFile(path.join(TORCH, 'torch_1.13.ckpt'))).toBeInstanceOf(CkptFile);
    expect(openTensorFile(LDM)).toBeInstanceOf(SafetensorsFile);
  });
});

describe('the sd1_tiny LDM weights as checkpoints (scripts/make_ckpt_fixture.py)', () => {
  beforeAll(() => {
    py('ldm', LDM, file('plain-layout.ckpt'));
    py('ldm', LDM, file('views.ckpt'), '--views', '--zip64', '--protocol4');
    py('ldm', LDM, file('top.ckpt'), '--plain');
  });

  for (const name of ['plain-layout.ckpt', 'views.ckpt', 'top.ckpt']) {
    it(`${name}: bit-identical to the safetensors file`, () => {
      const st = SafetensorsFile.open(LDM);
      const ckpt = CkptFile.open(file(name));
      expect(ckpt.nestedUnder).toBe(name === 'top.ckpt' ? null : 'state_dict');
      expect(ckpt.names().sort()).toEqual(st.names().sort());
      let compared = 0;
      for (const key of st.names()) {
        const a = st.read(key);
        const b = ckpt.read(key);
        expect(b.shape, key).toEqual(a.shape);
        expect(b.dtype, key).toBe(a.dtype);
        if (!a.data.every((v, i) => Object.is(v, b.data[i]))) throw new Error(`${name}: ${key} differs`);
        compared += a.data.length;
      }
      expect(compared).toBeGreaterThan(1_000_000);
    });
  }

  it('a flipped byte in a storage fails the CRC check on read', () => {
    const bytes = fs.readFileSync(file('plain-layout.ckpt'));
    const ckpt = CkptFile.open(file('plain-layout.ckpt'));
    const key = ckpt.names()[0];
    const st = SafetensorsFile.open(LDM);
    // Find the first tensor's bytes in the checkpoint (the same bytes as in the safetensors file) and flip one bit.
    const first = new Uint8Array(fs.readFileSync(LDM).subarray(st.entries.get(key)!.begin, st.entries.get(key)!.begin + 64));
    const at = bytes.indexOf(Buffer.from(first));
    expect(at).toBeGreaterThan(0);
    bytes[at + 3] ^= 0x10;
    fs.writeFileSync(file('corrupt.ckpt'), bytes);
    const corrupt = CkptFile.open(file('corrupt.ckpt')); // the directory is intact
    oneLineError(() => corrupt.read(key), /fails its CRC-32 check \(the file is corrupt\)/);
  });
});

describe('hostile checkpoints: refused by name, nothing runs', () => {
  const cases: Array<[string, RegExp]> = [
    ['os_system', /refused to load: the pickle uses the Python global "posix\.system", which is not allowed/],
    ['builtins_eval', /the Python global "__builtin__\.eval"/],
    ['builtins_eval_p4', /the Python global "builtins\.eval"/],
    ['subprocess_popen', /the Python global "subprocess\.Popen"/],
    ['getattr', /the Python global "__builtin__\.getattr"/],
  ];
  for (const [kind, pattern] of cases) {
    it(`${kind}: one line naming the global and the file; the payload's file is never created`, () => {
      const ckpt = file(`${kind}.ckpt`);
      const marker = file(`${kind}.pwned`);
      py('hostile', kind, ckpt, marker);
      const msg = oneLineError(() => CkptFile.open(ckpt), pattern);
      expect(msg).toContain(ckpt);
      expect(fs.existsSync(marker)).toBe(false);
      // The same file through Python's own unpickler (what torch.load without weights_only does) runs it.
      try {
        py('unsafe-load', ckpt);
      } catch {
        /* eval/Popen results may not unpickle further; the side effect is what counts */
      }
      for (let i = 0; i < 50 && !fs.existsSync(marker); i++) execFileSync('sleep', ['0.1']); // Popen runs async
      expect(fs.existsSync(marker), 'the payload is live under an unrestricted unpickler').toBe(true);
    });
  }
});

describe('broken and hostile structure: one line each', () => {
  const hex = (...parts: Array<string | number[]>) =>
    Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : Buffer.from(p))));
  const u32 = (n: number) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24];
  const deep = 100_000;
  const raw: Array<[string, Buffer, RegExp]> = [
    ['STACK_GLOBAL os.system (protocol 4)', hex([0x80, 4, 0x8c, 2], 'os', [0x8c, 6], 'system', [0x93], '.'), /the Python global "os\.system", which is not allowed/],
    ['REDUCE on a string', hex([0x80, 2], 'X', u32(3), 'abc)R.'), /refused to load: the pickle calls a str \(REDUCE\)/],
    ['REDUCE on an allowed storage class (not callable)', hex([0x80, 2], 'ctorch\nFloatStorage\n)R.'), /calls a torch\.FloatStorage \(class\) \(REDUCE\)/],
    ['NEWOBJ of an allowed class', hex([0x80, 2], 'ccollections\nOrderedDict\n)', [0x81], '.'), /opcode NEWOBJ \(0x81\).*creates objects of arbitrary classes/],
    ['INST', hex('(iposix\nsystem\n.'), /opcode INST \(0x69\)/],
    ['BUILD on a list', hex([0x80, 2], ']}b.'), /sets the state of a list \(BUILD\)/],
    ['_rebuild_tensor_v2 with no arguments', hex([0x80, 2], 'ctorch._utils\n_rebuild_tensor_v2\n)R.'), /_rebuild_tensor_v2 called with 0 arguments/],
    ['a persistent id that is no storage', hex([0x80, 2], 'X', u32(1), 'xQ.'), /persistent id is not a torch storage reference/],
    ['BINUNICODE of 4 GB', hex([0x80, 2], 'X', [0xff, 0xff, 0xff, 0xff]), /ends inside a string \(4294967295 bytes asked for/],
    ['BINUNICODE8 of 2^64-1 bytes', hex([0x80, 2, 0x8d], [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), /length of 18446744073709551615 bytes is longer than the whole pickle/],
    ['LONG4 of 2 GB', hex([0x80, 2, 0x8b], [0xff, 0xff, 0xff, 0x7f]), /integer of 2147483647 bytes/],
    ['LONG_BINGET of a never-stored index', hex([0x80, 2], 'j', [0xff, 0xff, 0xff, 0xff], '.'), /memo entry 4294967295, which was never stored/],
    ['no STOP', hex([0x80, 2], '}'), /ends without STOP \(truncated\?\)/],
    ['an unknown opcode', hex([0x80, 2, 0xff]), /unknown pickle opcode 0xff/],
    ['deeply nested MARKs', hex([0x80, 2], '('.repeat(deep)), /nested deeper than sdlab's limit of 64 open MARKs/],
    ['a list nested 100,000 deep', hex([0x80, 2], ']'.repeat(deep), 'a'.repeat(deep - 1), '.'), /holds a list, not a state dict/],
    ['a tensor that is a deeply nested list', hex([0x80, 2], '}X', u32(1), 'w', ']'.repeat(deep), 'a'.repeat(deep - 1), 's.'), /"w" is a list, not a tensor/],
    ['a state dict that contains itself', hex([0x80, 2], '}q', [0], 'X', u32(10), 'state_dicth', [0], 's.'), /state_dict\["state_dict"\] is a dict, not a tensor/],
    ['a non-string key', hex([0x80, 2], '}K', [1], 'K', [2], 's.'), /key of type int; expected tensor names/],
  ];
  for (const [label, pickle, pattern] of raw) {
    it(`pickle: ${label}`, () => {
      const f = file(`raw-${label.replace(/\W+/g, '_')}.ckpt`);
      fs.writeFileSync(`${f}.pkl`, pickle);
      py('raw', `${f}.pkl`, f);
      oneLineError(() => CkptFile.open(f), pattern);
    });
  }

  const brokenCases: Array<[string, RegExp]> = [
    ['storage_short', /state_dict\["w"\]: the tensor \(shape \[4, 4\], stride \[4, 1\], offset 0\) needs 16 elements but its storage "0" holds 6 \(storage shorter than the tensor\)/],
    ['entry_short', /storage "0" is 100 × FloatStorage \(400 bytes\) but its entry holds 24 bytes/],
    ['absurd_size', /shape \[1099511627776, 1099511627776\] has more than sdlab's limit/],
    ['deflate', /entry "archive\/data\.pkl" is compressed \(method 8, deflate\); sdlab reads only stored entries/],
    ['bad_dtype_mix', /storage "0" is referenced as two different types or sizes/],
  ];
  for (const [kind, pattern] of brokenCases) {
    it(`file: ${kind}`, () => {
      py('broken', kind, file(`${kind}.ckpt`));
      oneLineError(() => CkptFile.open(file(`${kind}.ckpt`)), pattern);
    });
  }

  it('truncated archives, wrong magic, the legacy format, an empty file', () => {
    py('ldm', LDM, file('whole.ckpt'));
    const whole = fs.readFileSync(file('whole.ckpt'));
    const cuts: Array<[number, RegExp]> = [
      [whole.length - 1, /not a valid PyTorch checkpoint \(zip archive\): no end-of-archive record \(truncated\?\)/],
      [Math.floor(whole.length / 2), /no end-of-archive record \(truncated\?\)/],
      [100, /no end-of-archive record \(truncated\?\)/],
    ];
    for (const [n, pattern] of cuts) {
      fs.writeFileSync(file('cut.ckpt'), whole.subarray(0, n));
      oneLineError(() => CkptFile.open(file('cut.ckpt')), pattern);
      oneLineError(() => openTensorFile(file('cut.ckpt')), pattern);
    }
    // The end records survive but the data before them does not: the directory points past it.
    const noData = Buffer.concat([whole.subarray(0, 4096), whole.subarray(whole.length - 4096)]);
    fs.writeFileSync(file('hole.ckpt'), noData);
    oneLineError(() => CkptFile.open(file('hole.ckpt')), /not a valid PyTorch checkpoint \(zip archive\)/);
    fs.writeFileSync(file('text.ckpt'), 'this is not a checkpoint\n');
    oneLineError(() => CkptFile.open(file('text.ckpt')), /not a PyTorch checkpoint \(expected a zip archive as torch\.save writes/);
    fs.writeFileSync(file('legacy.ckpt'), Buffer.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]));
    oneLineError(() => openTensorFile(file('legacy.ckpt')), /legacy \(pre-1\.6\) format, which sdlab does not read/);
    fs.writeFileSync(file('empty.ckpt'), '');
    oneLineError(() => CkptFile.open(file('empty.ckpt')), /not a PyTorch checkpoint/);
    oneLineError(() => CkptFile.open(tmp), /is a directory; expected a weights file/);
  });

  it('the unpickler alone: only listed globals resolve, and only PyCallables are called', () => {
    const p = Buffer.from([0x80, 2, ...Buffer.from('cmod\nfn\n)R.', 'latin1')]);
    oneLineError(() => unpickle(p, 'x.pkl', { globals: new Map() }), /x\.pkl: refused to load: the pickle uses the Python global "mod\.fn"/);
    let called = 0;
    const v = unpickle(p, 'x.pkl', { globals: new Map([['mod.fn', new PyCallable('mod.fn', () => ++called)]]) });
    expect([v, called]).toEqual([1, 1]);
  });
});

describe('mutated torch.save files (fixed seed): a result or one UsageError line, never another error', () => {
  it('2,000 mutations of torch_1.13.ckpt: flipped bytes, cuts, splices', () => {
    const original = fs.readFileSync(path.join(TORCH, 'torch_1.13.ckpt'));
    const rng = new Random('ckpt-fuzz');
    const f = file('fuzz.ckpt');
    const outcomes = { read: 0, refused: 0 };
    for (let k = 0; k < 2000; k++) {
      let bytes = Buffer.from(original);
      const kind = k % 4;
      if (kind === 0) for (let j = 0; j < 1 + rng.int(8); j++) bytes[rng.int(bytes.length)] = rng.int(256);
      else if (kind === 1) bytes = bytes.subarray(0, rng.int(bytes.length));
      else if (kind === 2) {
        const at = rng.int(bytes.length);
        bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + 1 + rng.int(64))]);
      } else {
        const at = rng.int(bytes.length);
        bytes = Buffer.concat([bytes.subarray(0, at), Buffer.from(Array.from({ length: 1 + rng.int(16) }, () => rng.int(256))), bytes.subarray(at)]);
      }
      fs.writeFileSync(f, bytes);
      try {
        const c = CkptFile.open(f);
        for (const n of c.names()) c.read(n);
        outcomes.read++;
      } catch (err) {
        if (!(err instanceof UsageError) || err.message.includes('\n')) throw new Error(`mutation ${k} (kind ${kind}): ${(err as Error).stack}`);
        outcomes.refused++;
      }
    }
    console.log(`ckpt fuzz: ${outcomes.read} read, ${outcomes.refused} refused with one line`);
    expect(outcomes.refused).toBeGreaterThan(1000);
  });

  it("2,000 mutations of its data.pkl straight into the unpickler (the zip's CRC would stop most of them)", () => {
    const { StoredZip } = zipModule;
    const zip = StoredZip.open(path.join(TORCH, 'torch_1.13.ckpt'));
    const pkl = zip.read([...zip.entries.keys()].find((n) => n.endsWith('/data.pkl'))!);
    const rng = new Random('pickle-fuzz');
    const opcodes = [0x28, 0x29, 0x5d, 0x7d, 0x52, 0x62, 0x51, 0x71, 0x68, 0x74, 0x75, 0x65, 0x2e, 0x85, 0x86, 0x87, 0x30, 0x31, 0x32, 0x94, 0x93];
    const policy = {
      // Every global the file names, each a stand-in that accepts any arguments (the pickle machine is under test).
      globals: new Map<string, unknown>([
        ['collections.OrderedDict', new PyCallable('collections.OrderedDict', () => new PyDict('OrderedDict'))],
        ...['torch._utils._rebuild_tensor_v2', 'torch._utils._rebuild_parameter'].map((n) => [n, new PyCallable(n, (args) => args.length)] as const),
        ...['Float', 'Half', 'BFloat16', 'Double', 'Long', 'Int', 'Bool', 'Byte'].map((t) => [`torch.${t}Storage`, { pyTypeName: t }] as const),
      ]),
      persistentLoad: (pid: unknown) => pid,
    };
    expect(unpickle(pkl, 'torch.pkl', policy)).toBeInstanceOf(PyDict); // unmutated, it reads
    let ok = 0;
    for (let k = 0; k < 2000; k++) {
      const bytes = Buffer.from(pkl);
      for (let j = 0; j < 1 + rng.int(4); j++) bytes[rng.int(bytes.length)] = rng.next() < 0.7 ? opcodes[rng.int(opcodes.length)] : rng.int(256);
      try {
        unpickle(bytes, 'fuzz.pkl', policy);
        ok++;
      } catch (err) {
        if (!(err instanceof UsageError) || err.message.includes('\n')) throw new Error(`pickle mutation ${k}: ${(err as Error).stack}`);
      }
    }
    console.log(`pickle fuzz: ${ok} of 2000 unpickled, the rest one UsageError line`);
    expect(ok).toBeGreaterThan(100); // the mutations reach past the first opcodes
  });
});

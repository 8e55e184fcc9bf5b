/**
 * The parsers on the hostile inputs the fuzz test (test/fuzz.test.ts) turned up, one focused case
 * each: every one must end in a single-line UsageError naming the file — never a RangeError from
 * a deep value, a TypeError from a key like "toString", a multi-line message, or a decoder error
 * reported as a file-system one.
 *   - JSON files (src/util/json.ts parseJson): a byte-order mark, nesting past 64 levels, V8's
 *     multi-line syntax messages; values and keys shown in errors (showJson);
 *   - model configs (src/io/config.ts), scheduler configs (src/schedule/), tokenizer files;
 *   - safetensors headers: deep metadata, inherited names as dtypes, control characters in names;
 *   - PNG files (src/io/png.ts readPng).
 */
import { describe, it, expect, afterAll } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PNG } from 'pngjs';
import { parseJson, showJson, MAX_JSON_DEPTH } from '../src/util/json.ts';
import { UsageError } from '../src/util/errors.ts';
import { parseConfig, readConfig } from '../src/io/config.ts';
import { VAE_CONFIG_SPEC } from '../src/autoencoder/config.ts';
import { readTextEncoderConfig } from '../src/clip/text_encoder.ts';
import { SafetensorsFile } from '../src/io/safetensors.ts';
import { DDIMScheduler, readSchedulerConfig } from '../src/schedule/index.ts';
import { ClipTokenizer } from '../src/clip/tokenizer_clip.ts';
import { WordTokenizer } from '../src/clip/tokenizer_word.ts';
import { readPng } from '../src/io/png.ts';
import { readPngImage } from '../src/data/png.ts';
import { crc32 } from './helpers/fuzz.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-hostile-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
const file = (name: string, content: string | Buffer) => {
  const f = path.join(dir, name);
  fs.mkdirSync(path.dirname(f), { recursive: true });
  fs.writeFileSync(f, content);
  return f;
};

/** The UsageError `f` throws (failing the test if it throws anything else, or nothing). */
function usageError(f: () => unknown): string {
  try {
    f();
  } catch (err) {
    expect(err, String((err as Error).stack)).toBeInstanceOf(UsageError);
    const message = (err as Error).message;
    expect(message, 'one line').not.toMatch(/[\n\r]/);
    return message;
  }
  throw new Error('expected a UsageError, got none');
}

/** A value nested `depth` arrays deep, built without recursion. */
function deepArray(depth: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

const deepText = (depth: number) => `${'['.repeat(depth)}1${']'.repeat(depth)}`;

describe('JSON files (util/json.ts)', () => {
  it('a UTF-8 byte-order mark is dropped; invalid JSON is one line, whatever V8 quotes', () => {
    expect(parseJson('\ufeff{"a": 1}', 'x.json')).toEqual({ a: 1 });
    // V8 quotes the source around the error, newlines included.
    const m = usageError(() => parseJson('\ufeff\ufeff{\n  "a":\n 1,\n}', 'x.json'));
    expect(m).toMatch(/^x\.json: not valid JSON \(.*\\n.*\)\.$/);
  });

  it('nesting is bounded: 64 levels parse, 65 and 100000 are refused (not a stack overflow later)', () => {
    expect(parseJson(deepText(MAX_JSON_DEPTH), 'ok.json')).toEqual(deepArray(MAX_JSON_DEPTH));
    expect(usageError(() => parseJson(deepText(MAX_JSON_DEPTH + 1), 'x.json'))).toBe('x.json: JSON nested deeper than 64 levels (no config needs that).');
    expect(usageError(() => parseJson(deepText(100_000), 'x.json'))).toMatch(/nested deeper than 64 levels/);
  });

  it('showJson never throws and stays one short line', () => {
    expect(showJson(deepArray(100_000))).toBe('[…]');
    expect(showJson('x'.repeat(1000))).toHaveLength(80);
    expect(showJson('a\nb')).toBe('"a\\nb"');
    expect(showJson([1, 'two', null])).toBe('[1,"two",null]');
    expect(showJson(-Infinity)).toBe('-Infinity');
  });
});

describe('model configs (io/config.ts)', () => {
  it('a deep value is one line naming the key (was a RangeError from JSON.stringify)', () => {
    const m = usageError(() => parseConfig({ block_out_channels: deepArray(100_000) }, VAE_CONFIG_SPEC, 'vae/config.json'));
    expect(m).toBe('vae/config.json: config key "block_out_channels" must be a list of numbers, got […].');
    expect(usageError(() => readConfig(file('deep/config.json', `{"block_out_channels": ${deepText(1000)}}`), VAE_CONFIG_SPEC))).toMatch(/deep[/\\]config\.json: JSON nested deeper than 64 levels/);
  });

  it('an unknown key with a newline in it, and a long value, stay on one line', () => {
    expect(usageError(() => parseConfig({ 'a\nb': 1 }, VAE_CONFIG_SPEC, 'c.json'))).toMatch(/^c\.json: unknown config key "a\\nb" for sdlab's AutoencoderKL \(known keys: [^\n]*$/);
    expect(usageError(() => parseConfig({ latent_channels: 'x'.repeat(100_000) }, VAE_CONFIG_SPEC, 'c.json')).length).toBeLessThan(200);
  });

  it('a text encoder config that is not JSON says so (was "cannot read config")', () => {
    expect(usageError(() => readTextEncoderConfig(file('te/config.json', '{"hidden_size": 32,')))).toMatch(/te[/\\]config\.json: not valid JSON \(/);
  });
});

describe('scheduler configs (schedule/)', () => {
  it('"toString", "constructor" and "__proto__" keys are unknown keys like any other: one line (were a TypeError)', () => {
    for (const key of ['toString', 'constructor', '__proto__', 'hasOwnProperty']) {
      const f = file(`sched-${key}/scheduler_config.json`, `{${JSON.stringify(key)}: {"beta_schedule": "nope"}, "beta_schedule": "linear"}`);
      expect(usageError(() => DDIMScheduler.fromConfig(readSchedulerConfig(f)))).toMatch(new RegExp(`unknown config key "${key}" for sdlab's DDIMScheduler [^\\n]*$`));
    }
  });

  it('a deep value and a broken file are one line each', () => {
    expect(usageError(() => DDIMScheduler.fromConfig({ beta_end: deepArray(100_000) }))).toBe('DDIMScheduler config key "beta_end": expected a number, got […].');
    expect(usageError(() => readSchedulerConfig(file('sched2/scheduler_config.json', '\ufeff{\n"a": nu\u0000ll\n}')))).toMatch(/scheduler_config\.json: not valid JSON \(/);
    expect(usageError(() => readSchedulerConfig(file('sched3/scheduler_config.json', `{"a": ${deepText(500)}}`)))).toMatch(/nested deeper than 64 levels/);
  });
});

describe('tokenizer files (clip/)', () => {
  /** A copy of sd1_tiny's CLIP tokenizer folder with `json` written over its file `name`. */
  const tokDir = (dirName: string, json: string, name = 'tokenizer_config.json') => {
    const d = path.join(dir, dirName);
    fs.cpSync(path.join(__dirname, '../../shared/fixtures/sd1_tiny/model/tokenizer'), d, { recursive: true });
    fs.writeFileSync(path.join(d, name), json);
    return d;
  };

  it('an added token too long for a RegExp is refused when the tokenizer loads (was a SyntaxError in encode)', () => {
    const long = JSON.stringify({ added_tokens_decoder: { '49407': { content: 'x'.repeat(100_000) } } });
    expect(usageError(() => ClipTokenizer.fromDirectory(tokDir('tok-long', long)).encode('a cat'))).toMatch(/added tokens, the longest 100000 characters: too many or too long/);
  });

  it('a special token with a newline is shown escaped', () => {
    const m = usageError(() => ClipTokenizer.fromDirectory(tokDir('tok-nl', JSON.stringify({ unk_token: 'no\nsuch' }), 'special_tokens_map.json')));
    expect(m).toBe('CLIP tokenizer: unk token "no\\nsuch" is not in vocab.json');
  });

  it('a vocab.json or tokenizer.json that is not JSON, or too deep, is one line', () => {
    const d = tokDir('tok-vocab', '{}');
    fs.writeFileSync(path.join(d, 'vocab.json'), `{"a": ${deepText(200)}}`);
    expect(usageError(() => ClipTokenizer.fromDirectory(d))).toMatch(/vocab\.json: JSON nested deeper than 64 levels .*; expected the CLIP vocab\.json/);
    const w = file('word/tokenizer.json', '\ufeff{\n"type": \u0000}');
    expect(usageError(() => WordTokenizer.load(w))).toMatch(/tokenizer\.json: not valid JSON \(.*\); expected an sdlab word tokenizer\.$/);
  });
});

describe('safetensors headers (io/safetensors.ts)', () => {
  const st = (name: string, headerText: string, data = Buffer.alloc(0)) => {
    const h = Buffer.from(headerText);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(h.length));
    return file(name, Buffer.concat([len, h, data]));
  };

  it('deeply nested __metadata__ is refused (was a RangeError when its values were stringified)', () => {
    const f = st('deep.safetensors', `{"__metadata__": {"a": ${deepText(20_000)}}, "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}`, Buffer.alloc(4));
    expect(usageError(() => SafetensorsFile.open(f))).toMatch(/deep\.safetensors: not a valid safetensors file: header JSON nested deeper than 64 levels\.$/);
    // Shallow non-string metadata is still read (as JSON text), as before.
    const g = st('meta.safetensors', '{"__metadata__": {"a": [1, 2]}, "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', Buffer.alloc(4));
    expect(SafetensorsFile.open(g).metadata).toEqual({ a: '[1,2]' });
  });

  it('a dtype named like an Object.prototype member is unsupported (was accepted as a size of NaN)', () => {
    for (const dtype of ['toString', 'constructor', '__proto__', 'hasOwnProperty']) {
      const f = st(`dtype-${dtype}.safetensors`, JSON.stringify({ x: { dtype, shape: [1], data_offsets: [0, 4] } }), Buffer.alloc(4));
      expect(usageError(() => SafetensorsFile.open(f))).toContain(`tensor "x" has unsupported dtype "${dtype}" (expected one of F64, F32`);
    }
  });

  it('a tensor name with a control character is refused, shown escaped', () => {
    const f = st('name.safetensors', JSON.stringify({ 'a\nb': { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }), Buffer.alloc(4));
    expect(usageError(() => SafetensorsFile.open(f))).toMatch(/: tensor name "a\\nb" contains a control character\.$/);
  });

  it('an invalid shape is shown short', () => {
    const f = st('shape.safetensors', JSON.stringify({ x: { dtype: 'F32', shape: Array.from({ length: 10_000 }, () => 'x'), data_offsets: [0, 4] } }), Buffer.alloc(4));
    expect(usageError(() => SafetensorsFile.open(f)).length).toBeLessThan(250);
  });
});

describe('PNG files (io/png.ts readPng)', () => {
  /** A valid 12×12 RGBA PNG with its IHDR size changed to 1×8 (CRC fixed): pngjs fails an internal assert on it. */
  function resizedIhdr(): Buffer {
    const img = new PNG({ width: 12, height: 12 });
    for (let i = 0; i < 144; i++) img.data.set([(i * 37) % 256, (i * 11) % 256, 200, 255], 4 * i);
    const b = Buffer.from(PNG.sync.write(img));
    // IHDR: length at 8, type at 12, data at 16 (width, height), CRC at 29 over type + data.
    b.writeUInt32BE(1, 16);
    b.writeUInt32BE(8, 20);
    b.writeUInt32BE(crc32(b.subarray(12, 29)), 29);
    return b;
  }

  it('a decoder failure is "invalid" (was "cannot read (ERR_ASSERTION)", as if the file were unreadable)', () => {
    const f = file('ihdr.png', resizedIhdr());
    expect(usageError(() => readPng(f))).toMatch(/ihdr\.png: cannot read PNG \(invalid: .+\)\.$/);
    expect(usageError(() => readPngImage(f, 1))).toMatch(/ihdr\.png: cannot read PNG \(invalid: /);
  });

  it('a missing file is "cannot read PNG (ENOENT)"; a truncated one is "not a PNG image"', () => {
    expect(usageError(() => readPng(path.join(dir, 'missing.png')))).toMatch(/missing\.png: cannot read PNG \(ENOENT\)\.$/);
    const f = file('short.png', resizedIhdr().subarray(0, 40));
    expect(usageError(() => readPng(f))).toMatch(/short\.png: cannot read PNG \((invalid: |no PNG signature)/);
  });
});

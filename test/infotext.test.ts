/**
 * A1111's infotext (src/sample/infotext.ts), PNG text chunks (src/viz/png.ts textChunk, src/io/png.ts
 * readPngText) and --from-png's reading of them (src/commands/sd_common.ts applyPngParameters):
 * the layout and quoting A1111 writes, a PNG written by A1111 itself (unknown keys: one warning),
 * and hostile chunks (bad CRC, truncation, a zlib bomb, a 4 MB settings line) failing with one
 * UsageError or parsing in linear time, never a stack trace.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { formatInfotext, parseInfotext, schedulerFromA1111 } from '../src/sample/infotext.ts';
import { readPngText } from '../src/io/png.ts';
import { crc32 } from '../src/util/crc32.ts';
import { UsageError } from '../src/util/errors.ts';
import { applyPngParameters, type SdOptions } from '../src/commands/sd_common.ts';
import { encodePng, renderGrid } from '../src/viz/index.ts';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-infotext-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const raster = () => renderGrid([{ data: new Float32Array(16).fill(0.5), height: 4, width: 4, channels: 1 }], { pad: 0 });
function pngWith(name: string, text: Record<string, string>): string {
  const file = path.join(tmp, name);
  fs.writeFileSync(file, encodePng(raster(), { text }));
  return file;
}
/** A PNG with one raw chunk inserted after IHDR (CRC as given, or the right one). */
function pngWithChunk(name: string, type: string, data: Buffer, crc?: number): string {
  const bytes = encodePng(raster());
  const ihdrEnd = 8 + 12 + bytes.readUInt32BE(8);
  const chunk = Buffer.alloc(12 + data.length);
  chunk.writeUInt32BE(data.length, 0);
  chunk.write(type, 4, 'latin1');
  data.copy(chunk, 8);
  chunk.writeUInt32BE(crc ?? crc32(chunk.subarray(4, 8 + data.length)), 8 + data.length);
  const file = path.join(tmp, name);
  fs.writeFileSync(file, Buffer.concat([bytes.subarray(0, ihdrEnd), chunk, bytes.subarray(ihdrEnd)]));
  return file;
}

// What A1111 v1.9 writes (modules/processing.py create_infotext), typed by hand.
const A1111_TEXT = [
  'masterpiece, (best quality:1.2), a cat',
  'on a mat',
  'Negative prompt: lowres, bad anatomy',
  'Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.9.4',
].join('\n');

describe('infotext: A1111 layout', () => {
  it('formats prompt, negative prompt and the settings line, JSON-quoting values with , : or newlines', () => {
    const text = formatInfotext({ prompt: 'a cat', negativePrompt: 'blurry', params: [['Steps', 20], ['Sampler', 'Euler a'], ['Seed', 1], ['sdlab model', 'C:\\models\\a, b.safetensors'], ['Note', 'say "hi"']] });
    expect(text).toBe('a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 1, sdlab model: "C:\\\\models\\\\a, b.safetensors", Note: say "hi"');
    expect(formatInfotext({ prompt: 'a cat', negativePrompt: '', params: [['Steps', 1]] })).toBe('a cat\nSteps: 1');
    const back = parseInfotext(text);
    expect(back.prompt).toBe('a cat');
    expect(back.negativePrompt).toBe('blurry');
    expect(back.params.get('sdlab model')).toBe('C:\\models\\a, b.safetensors');
    expect(back.params.get('Sampler')).toBe('Euler a');
  });
  it('parses what A1111 writes: multi-line prompt, Size split, quoted values', () => {
    const p = parseInfotext(A1111_TEXT);
    expect(p.prompt).toBe('masterpiece, (best quality:1.2), a cat\non a mat');
    expect(p.negativePrompt).toBe('lowres, bad anatomy');
    expect(Object.fromEntries(p.params)).toEqual({
      Steps: '28', Sampler: 'DPM++ 2M', 'Schedule type': 'Karras', 'CFG scale': '7', Seed: '1234567890', 'Size-1': '512', 'Size-2': '768',
      'Model hash': '6ce0161689', Model: 'v1-5-pruned-emaonly', 'Clip skip': '2', 'Lora hashes': 'add_detail: 7c6bad76eb54', Version: 'v1.9.4',
    });
  });
  it('a last line with fewer than 3 pairs is prompt text, as A1111 reads it', () => {
    const p = parseInfotext('a cat\nstyle: oil');
    expect(p.prompt).toBe('a cat\nstyle: oil');
    expect(p.params.size).toBe(0);
  });
  it('A1111 sampler names', () => {
    expect(schedulerFromA1111('DPM++ 2M Karras')).toEqual({ scheduler: 'dpm++2m', karras: true });
    expect(schedulerFromA1111('Euler a')).toEqual({ scheduler: 'euler_a', karras: false });
    expect(schedulerFromA1111('PLMS')).toEqual({ scheduler: 'pndm', karras: false });
    expect(schedulerFromA1111('DPM++ SDE')).toBeNull();
  });
  it('a 4 MB settings line parses in linear time', () => {
    const started = Date.now();
    const p = parseInfotext(`x\nSteps: 1, Seed: 2, CFG scale: 3, ${'a'.repeat(4 << 20)}`);
    expect(p.params.get('Seed')).toBe('2');
    expect(Date.now() - started, 'ms to parse').toBeLessThan(3000);
  });
});

describe('PNG text chunks', () => {
  it('tEXt for Latin-1, iTXt for other text; both read back', () => {
    const file = pngWith('text.png', { parameters: 'café (cat:1.2)\nSteps: 1, Seed: 2, CFG scale: 3', other: '猫 🐈' });
    const bytes = fs.readFileSync(file);
    expect(bytes.indexOf('tEXtparameters')).toBeGreaterThan(0);
    expect(bytes.indexOf('iTXtother')).toBeGreaterThan(0);
    const t = readPngText(file);
    expect(t.get('parameters')).toBe('café (cat:1.2)\nSteps: 1, Seed: 2, CFG scale: 3');
    expect(t.get('other')).toBe('猫 🐈');
  });
  it('zTXt (compressed) reads back; a zlib bomb, a 5 MB chunk, a bad CRC, a chunk past the end: one UsageError naming the file', () => {
    const z = pngWithChunk('z.png', 'zTXt', Buffer.concat([Buffer.from('parameters\0\0', 'latin1'), zlib.deflateSync(Buffer.from('a dog\nSteps: 1, Seed: 2, CFG scale: 3'))]));
    expect(readPngText(z).get('parameters')).toBe('a dog\nSteps: 1, Seed: 2, CFG scale: 3');
    const bomb = pngWithChunk('bomb.png', 'zTXt', Buffer.concat([Buffer.from('parameters\0\0', 'latin1'), zlib.deflateSync(Buffer.alloc(64 << 20))]));
    expect(() => readPngText(bomb)).toThrow(/bomb\.png: a zTXt chunk inflates beyond/);
    const huge = pngWithChunk('huge.png', 'tEXt', Buffer.concat([Buffer.from('parameters\0', 'latin1'), Buffer.alloc(5 << 20, 0x61)]));
    expect(() => readPngText(huge)).toThrow(/huge\.png: a tEXt chunk of \d+ bytes, over sdlab's limit/);
    const badCrc = pngWithChunk('crc.png', 'tEXt', Buffer.from('parameters\0x', 'latin1'), 1234);
    expect(() => readPngText(badCrc)).toThrow(UsageError);
    expect(() => readPngText(badCrc)).toThrow(/crc\.png: the tEXt chunk at byte \d+ has a bad CRC/);
    const good = fs.readFileSync(pngWith('t.png', { parameters: 'x' }));
    const cut = path.join(tmp, 'cut.png');
    fs.writeFileSync(cut, good.subarray(0, 50));
    expect(() => readPngText(cut)).toThrow(UsageError);
  });
});

describe('applyPngParameters (--from-png)', () => {
  const base: SdOptions = { model: undefined as unknown as string, n: 1, seed: 0, batch: 1, out: tmp };
  it("an A1111 PNG: its settings as defaults, a model named by A1111's name needs --model, unknown keys in one warning", () => {
    const file = pngWith('a1111.png', { parameters: A1111_TEXT });
    expect(() => applyPngParameters('txt2img', base, file, () => false)).toThrow(/a1111\.png: the PNG names the model "v1-5-pruned-emaonly" but not its file.*--model/);
    const warnings: string[] = [];
    const o = applyPngParameters('txt2img', { ...base, model: '/m', steps: 5, warn: (l) => warnings.push(l) }, file, (k) => k === 'model' || k === 'steps');
    expect(o).toMatchObject({ model: '/m', steps: 5, prompt: ['masterpiece, (best quality:1.2), a cat\non a mat'], negativePrompt: 'lowres, bad anatomy', scheduler: 'dpm++2m', karras: true, guidance: 7, seed: 1234567890, width: 512, height: 768 });
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^sdlab: warning: --from-png .*a1111\.png: ignoring what sdlab does not use: Clip skip: 2; Lora hashes \(give the files with --lora\)\.$/);
  });
  it('a PNG without the chunk, a malformed chunk or a bad value: one UsageError naming the file and what was expected', () => {
    const none = pngWith('none.png', { Software: 'x' });
    expect(() => applyPngParameters('txt2img', base, none, () => false)).toThrow(/--from-png .*none\.png: the PNG has no "parameters" text chunk \(expected one written by sdlab or A1111/);
    const prose = pngWith('prose.png', { parameters: 'just a prompt' });
    expect(() => applyPngParameters('txt2img', base, prose, () => false)).toThrow(/prose\.png: its "parameters" chunk has no settings line/);
    const badSteps = pngWith('steps.png', { parameters: 'a\nSteps: -3, Seed: 1, CFG scale: 7, sdlab model: /m' });
    expect(() => applyPngParameters('txt2img', base, badSteps, () => false)).toThrow(/steps\.png: "Steps: -3" in its parameters, expected an integer in \[1, 10000\]/);
    expect(() => applyPngParameters('txt2img', base, path.join(tmp, 'missing.png'), () => false)).toThrow(/--from-png .*missing\.png: no such file/);
  });
});

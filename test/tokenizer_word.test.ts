/** Word-level tokenizer: ids, unknown words, padding/truncation, save/load round trip, bad files. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadTokenizer, SPECIAL_WORDS, WordTokenizer } from '../src/clip/index.ts';
import { UsageError } from '../src/util/errors.ts';

const WORDS = ['a', 'handwritten', 'digit', 'Seven', 'seven', 'the number', 'thick, thin'];
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-wordtok-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('WordTokenizer', () => {
  const tok = new WordTokenizer(WORDS, { maxLength: 10, onWarn: () => {} });

  it('numbers specials first, then each new lower-cased word in order', () => {
    expect(tok.vocab).toEqual([...SPECIAL_WORDS, 'a', 'handwritten', 'digit', 'seven', 'the', 'number', 'thick', ',', 'thin']);
    expect([tok.padId, tok.bosId, tok.eosId, tok.unkId]).toEqual([0, 1, 2, 3]);
    expect(tok.vocabSize).toBe(13);
  });

  it('encodes with start/end, pads to maxLength and masks the padding', () => {
    const enc = tok.encode('A handwritten SEVEN');
    expect(enc.inputIds).toEqual([1, 4, 5, 7, 2, 0, 0, 0, 0, 0]);
    expect(enc.attentionMask).toEqual([1, 1, 1, 1, 1, 0, 0, 0, 0, 0]);
    expect(enc.truncated).toBe(false);
    expect(tok.encode('').inputIds).toEqual([1, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
  });

  it('splits punctuation off words and maps unknown words to <unk>', () => {
    expect(tok.tokenize('thick,thin digit-seven!')).toEqual(['thick', ',', 'thin', 'digit', '-', 'seven', '!']);
    expect(tok.encode('thick,thin digit-seven!').inputIds).toEqual([1, 10, 11, 12, 6, 3, 7, 3, 2, 0]);
    expect(tok.encode('zebra 🦓 <start> ünïcödé').inputIds.slice(0, 7)).toEqual([1, 3, 3, 3, 3, 3, 3]);
    expect(tok.decode(tok.encode('a zebra digit').inputIds)).toBe('a <unk> digit');
  });

  it('truncates keeping <end> last and warns once', () => {
    const warnings: string[] = [];
    const short = new WordTokenizer(WORDS, { maxLength: 5, onWarn: (m) => warnings.push(m) });
    const enc = short.encode('a handwritten digit seven');
    expect(enc.inputIds).toEqual([1, 4, 5, 6, 2]);
    expect(enc.attentionMask).toEqual([1, 1, 1, 1, 1]);
    expect(enc.truncated).toBe(true);
    short.encode('a handwritten digit seven seven');
    expect(short.encode('a digit seven').truncated).toBe(false);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/6 tokens .* at most 3/);
  });

  it('decodes in-vocabulary text back to its lower-cased words', () => {
    expect(tok.decode(tok.encode('The Number seven, thick').inputIds)).toBe('the number seven , thick');
  });

  it('saves tokenizer.json and loads the same vocabulary and ids back', () => {
    const dir = path.join(tmp, 'run', 'clip');
    const file = tok.save(dir);
    expect(file).toBe(path.join(dir, 'tokenizer.json'));
    for (const back of [WordTokenizer.load(dir), WordTokenizer.load(file), loadTokenizer(dir) as WordTokenizer]) {
      expect(back).toBeInstanceOf(WordTokenizer);
      expect(back.vocab).toEqual(tok.vocab);
      expect(back.maxLength).toBe(10);
      for (const text of ['a handwritten seven', 'the number, thin zebra']) {
        expect(back.encode(text)).toEqual(tok.encode(text));
      }
    }
  });

  it('rejects a bad maxLength', () => {
    expect(() => new WordTokenizer(WORDS, { maxLength: 1 })).toThrow(UsageError);
  });
});

describe('WordTokenizer.load rejects bad files with one line naming the file', () => {
  const cases: Array<[string, string | null, RegExp]> = [
    ['missing', null, /tokenizer\.json not found: expected the word tokenizer/],
    ['notjson', '{"type":', /tokenizer\.json: not valid JSON/],
    ['hf', '{"version": "1.0", "model": {}}', /not an sdlab word tokenizer; expected/],
    ['version', '{"type": "sdlab-word-tokenizer", "version": 2, "maxLength": 8, "vocab": []}', /unsupported version 2/],
    ['nospecials', '{"type": "sdlab-word-tokenizer", "version": 1, "maxLength": 8, "vocab": ["a", "b"]}', /must start with <pad>, <start>, <end>, <unk>/],
    ['dupes', '{"type": "sdlab-word-tokenizer", "version": 1, "maxLength": 8, "vocab": ["<pad>", "<start>", "<end>", "<unk>", "a", "a"]}', /duplicate words/],
    ['notwords', '{"type": "sdlab-word-tokenizer", "version": 1, "maxLength": 8, "vocab": ["<pad>", "<start>", "<end>", "<unk>", "Big cat"]}', /not single lower-case words/],
    ['maxlen', '{"type": "sdlab-word-tokenizer", "version": 1, "maxLength": "8", "vocab": ["<pad>", "<start>", "<end>", "<unk>"]}', /"maxLength" must be an integer/],
  ];
  for (const [name, text, pattern] of cases) {
    it(name, () => {
      const dir = path.join(tmp, name);
      fs.mkdirSync(dir, { recursive: true });
      if (text !== null) fs.writeFileSync(path.join(dir, 'tokenizer.json'), text);
      let err: unknown;
      try {
        WordTokenizer.load(dir);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(UsageError);
      expect((err as Error).message).toMatch(pattern);
      expect((err as Error).message).toContain(path.join(dir, 'tokenizer.json'));
      expect((err as Error).message).not.toContain('\n');
    });
  }
});

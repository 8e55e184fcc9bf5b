/**
 * CLIP BPE tokenizer against the fixture: every prompt of manifest cases.tokenizer, ids compared as
 * whole arrays with what transformers' slow CLIPTokenizer (no ftfy) produced, plus the token
 * strings, masks, truncation warning and the errors for broken vocab.json / merges.txt.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { ClipTokenizer, loadTokenizer } from '../src/clip/index.ts';
import { UsageError } from '../src/util/errors.ts';

const FIXTURE = path.resolve(__dirname, '../../shared/fixtures/sd1_tiny');
const TOKENIZER_DIR = path.join(FIXTURE, 'model/tokenizer');

interface PromptCase {
  index: number;
  prompt: string;
  prompt_utf8_hex: string;
  input_ids: number[];
  untruncated_length: number;
  truncated: boolean;
  tokens: string[];
}

// manifest.json is written by Python's json, which spells infinities as bare -Infinity.
const manifestText = fs.readFileSync(path.join(FIXTURE, 'manifest.json'), 'utf8');
const manifest = JSON.parse(manifestText.replace(/([:[,]\s*)(-?Infinity|NaN)(?=\s*[,\]}])/g, '$1null'));
const tokCase = manifest.cases.tokenizer as { bos_id: number; eos_id: number; pad_id: number; prompts: PromptCase[] };

const warnings: string[] = [];
const clip = ClipTokenizer.fromDirectory(TOKENIZER_DIR, { onWarn: (m) => warnings.push(m) }); // loaded once

describe('ClipTokenizer reproduces transformers CLIPTokenizer (slow, no ftfy)', () => {
  it('reads the special ids and length from the model files', () => {
    expect(tokCase.prompts.length).toBe(13);
    expect([clip.bosId, clip.eosId, clip.padId]).toEqual([tokCase.bos_id, tokCase.eos_id, tokCase.pad_id]);
    expect(clip.maxLength).toBe(77);
    expect(clip.vocabSize).toBe(49408);
  });

  for (const p of tokCase.prompts) {
    it(`prompt ${p.index}: ${JSON.stringify(p.prompt.slice(0, 50))}`, () => {
      // The hex guards against the prompt's unicode being mangled on its way through JSON.
      expect(Buffer.from(p.prompt, 'utf8').toString('hex')).toBe(p.prompt_utf8_hex);
      const enc = clip.encode(p.prompt);
      expect(enc.inputIds).toEqual(p.input_ids);
      const real = Math.min(p.untruncated_length, 77);
      expect(enc.attentionMask).toEqual(Array.from({ length: 77 }, (_, i) => (i < real ? 1 : 0)));
      expect(enc.truncated).toBe(p.truncated);
      expect(clip.tokenize(p.prompt)).toEqual(p.tokens.slice(1, -1));
    });
  }

  it('warns once, through onWarn, when a prompt is truncated; eos stays last', () => {
    const long = tokCase.prompts.find((p) => p.truncated)!;
    expect(warnings).toHaveLength(1); // from the loop above
    expect(warnings[0]).toMatch(/130 tokens.*at most 75/);
    clip.encode(long.prompt);
    expect(warnings).toHaveLength(1);
    const enc = clip.encode(long.prompt);
    expect(enc.inputIds[76]).toBe(clip.eosId);
    expect(enc.attentionMask.every((m) => m === 1)).toBe(true);
  });

  it('warns on console.warn by default', () => {
    const spy = vi.spyOn(console, 'warn').mockImplementation(() => {});
    const tok = ClipTokenizer.fromDirectory(TOKENIZER_DIR, { maxLength: 4 });
    expect(tok.encode('a photograph of an astronaut').inputIds).toEqual([49406, 320, 8853, 49407]);
    tok.encode('a photograph of an astronaut');
    expect(spy).toHaveBeenCalledTimes(1);
    spy.mockRestore();
  });

  it('decodes ids back to text', () => {
    const text = 'a photograph of an astronaut riding a horse';
    expect(clip.decode(clip.encode(text).inputIds)).toBe(text);
    expect(clip.decode(clip.encode('café “quotes” 🗼').inputIds)).toBe('café “ quotes ” 🗼');
  });

  it('treats special strings literally in the text, in any case', () => {
    expect(clip.encode('<|ENDOFTEXT|>').inputIds.slice(0, 3)).toEqual([49406, 49407, 49407]);
    // "'" glued to a special token stays its own piece (special tokens are split out first).
    expect(clip.tokenize("'<|endoftext|>s")).toEqual(["'</w>", '<|endoftext|>', 's</w>']);
  });

  it('drops control characters and never crashes on odd input', () => {
    expect(clip.tokenize('a\u0000b\u200bc\ufffd d')).toEqual(clip.tokenize('abc d'));
    expect(() => clip.encode('\ud800 lone surrogate \udfff')).not.toThrow();
    expect(clip.encode('   \n\t ').inputIds).toEqual(clip.encode('').inputIds);
  });

  it('loadTokenizer finds the tokenizer/ folder of a diffusers model directory', () => {
    const tok = loadTokenizer(path.join(FIXTURE, 'model'), { onWarn: () => {} });
    expect(tok).toBeInstanceOf(ClipTokenizer);
    expect(tok.encode(tokCase.prompts[0].prompt).inputIds).toEqual(tokCase.prompts[0].input_ids);
  });
});

describe('ClipTokenizer BPE on a tiny hand-made vocabulary', () => {
  const vocab = { l: 0, o: 1, w: 2, 'w</w>': 3, lo: 4, 'low</w>': 5, 'lo</w>': 6, 'o</w>': 7, '<|startoftext|>': 8, '<|endoftext|>': 9 };
  it('applies merges by rank, with </w> on the last symbol', () => {
    const tok = new ClipTokenizer(vocab, [['l', 'o'], ['lo', 'w</w>'], ['o', 'w</w>']]);
    // "l o w</w>": "l o" (rank 0) before "o w</w>" (rank 2), then "lo w</w>".
    expect(tok.tokenize('low')).toEqual(['low</w>']);
    expect(tok.tokenize('lo')).toEqual(['l', 'o</w>']); // no "l o</w>" merge
    expect(tok.tokenize('lolo')).toEqual(['lo', 'l', 'o</w>']);
    expect(tok.encode('low wo!').inputIds.slice(0, 6)).toEqual([8, 5, 2, 7, 9, 9]); // "!" not in vocab -> unk (9)
    // Reversing the ranks changes the result: "o w</w>" first leaves "l ow</w>".
    const rev = new ClipTokenizer(vocab, [['o', 'w</w>'], ['l', 'o'], ['lo', 'w</w>']]);
    expect(rev.tokenize('low')).toEqual(['l', 'ow</w>']);
  });
});

describe('ClipTokenizer rejects broken files with one line naming the file', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-tok-'));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const goodVocab = JSON.stringify({ a: 0, 'a</w>': 1, '<|startoftext|>': 2, '<|endoftext|>': 3 });
  const goodMerges = '#version: 0.2\na a</w>\n';

  function dirWith(name: string, files: Record<string, string>): string {
    const dir = path.join(tmp, name);
    fs.mkdirSync(dir);
    for (const [f, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, f), text);
    return dir;
  }
  function errorOf(dir: string): UsageError {
    try {
      ClipTokenizer.fromDirectory(dir);
    } catch (e) {
      expect(e).toBeInstanceOf(UsageError);
      expect((e as Error).message).not.toContain('\n');
      return e as UsageError;
    }
    throw new Error('expected a UsageError');
  }

  it('accepts the good tiny files', () => {
    const tok = ClipTokenizer.fromDirectory(dirWith('good', { 'vocab.json': goodVocab, 'merges.txt': goodMerges }));
    expect(tok.encode('A').inputIds.slice(0, 3)).toEqual([2, 1, 3]);
  });
  it('missing vocab.json', () => {
    expect(errorOf(dirWith('novocab', { 'merges.txt': goodMerges })).message).toMatch(/vocab\.json not found: expected .*token -> integer id/);
  });
  it('vocab.json that is not JSON', () => {
    expect(errorOf(dirWith('badjson', { 'vocab.json': '{"a": 0,', 'merges.txt': goodMerges })).message).toMatch(/vocab\.json: not valid JSON/);
  });
  it('vocab.json with a non-integer id', () => {
    const msg = errorOf(dirWith('badid', { 'vocab.json': '{"a": "zero"}', 'merges.txt': goodMerges })).message;
    expect(msg).toMatch(/vocab\.json: token "a" has id "zero"/);
  });
  it('vocab.json that is a list', () => {
    expect(errorOf(dirWith('list', { 'vocab.json': '["a"]', 'merges.txt': goodMerges })).message).toMatch(/vocab\.json: it is empty or not an object/);
  });
  it('vocab.json without the special tokens', () => {
    expect(errorOf(dirWith('nospecial', { 'vocab.json': '{"a": 0}', 'merges.txt': goodMerges })).message).toMatch(/bos token "<\|startoftext\|>" is not in vocab\.json/);
  });
  it('missing merges.txt', () => {
    expect(errorOf(dirWith('nomerges', { 'vocab.json': goodVocab })).message).toMatch(/merges\.txt not found: expected .*"a b" merge per line/);
  });
  it('merges.txt with a malformed line (line number given)', () => {
    const msg = errorOf(dirWith('badmerge', { 'vocab.json': goodVocab, 'merges.txt': '#version: 0.2\na a</w>\na b c\n' })).message;
    expect(msg).toMatch(/merges\.txt line 3: "a b c" is not a merge/);
  });
  it('merges.txt with no merges, or a vocab.json given as merges.txt', () => {
    expect(errorOf(dirWith('emptymerge', { 'vocab.json': goodVocab, 'merges.txt': '#version: 0.2\n' })).message).toMatch(/merges\.txt has no merges/);
    expect(errorOf(dirWith('swapped', { 'vocab.json': goodVocab, 'merges.txt': goodVocab })).message).toMatch(/merges\.txt line 1/);
  });
  it('a corrupt tokenizer_config.json', () => {
    const dir = dirWith('badcfg', { 'vocab.json': goodVocab, 'merges.txt': goodMerges, 'tokenizer_config.json': 'nope' });
    expect(errorOf(dir).message).toMatch(/tokenizer_config\.json: not valid JSON/);
  });
  it('SD 2.x tokenizers pad with "!" (special_tokens_map pad_token), after one eos, as transformers does', () => {
    const vocab = JSON.parse(fs.readFileSync(path.join(TOKENIZER_DIR, 'vocab.json'), 'utf8')) as Record<string, number>;
    const dir = dirWith('sd2pad', {
      'vocab.json': JSON.stringify(vocab),
      'merges.txt': fs.readFileSync(path.join(TOKENIZER_DIR, 'merges.txt'), 'utf8'),
      'special_tokens_map.json': '{"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>"}',
    });
    const sd2 = loadTokenizer(dir) as ClipTokenizer;
    const sd1 = loadTokenizer(TOKENIZER_DIR) as ClipTokenizer;
    const a = sd2.encode('a red cube').inputIds;
    const b = sd1.encode('a red cube').inputIds;
    const n = b.indexOf(sd1.eosId) + 1; // bos, the words, eos
    expect(a.slice(0, n)).toEqual(b.slice(0, n));
    expect(a.slice(n)).toEqual(new Array(77 - n).fill(vocab['!']));
    expect(b.slice(n)).toEqual(new Array(77 - n).fill(vocab['<|endoftext|>']));
  });
  it('a pad token from the config that the vocabulary lacks', () => {
    const dir = dirWith('badpad', { 'vocab.json': goodVocab, 'merges.txt': goodMerges, 'special_tokens_map.json': '{"pad_token": "<pad>"}' });
    expect(errorOf(dir).message).toMatch(/pad token "<pad>" is not in vocab\.json/);
  });
  it('loadTokenizer on a folder with no tokenizer', () => {
    expect(() => loadTokenizer(dirWith('empty', {}))).toThrow(/expected vocab\.json \+ merges\.txt .* or tokenizer\.json/);
  });
});

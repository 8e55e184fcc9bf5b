/**
 * A word-level tokenizer for the text encoder we train from scratch: one id per word of a small,
 * closed vocabulary (the caption generator's words). Ids 0..3 are <pad>, <start>, <end>, <unk>;
 * then the words in the order given. Text is lower-cased and split into runs of letters/digits,
 * with every other non-space character (punctuation) a token of its own; a word outside the
 * vocabulary becomes <unk>.
 *
 * Saved as tokenizer.json beside the trained text encoder so it finds its vocabulary again:
 *
 *   const tok = new WordTokenizer(['a', 'digit', 'seven'], { maxLength: 16 });
 *   tok.encode('A digit, seven!').inputIds; // [1, 4, 5, 3, 6, 3, 2, 0, 0, ...]  (',' '!' -> <unk>)
 *   tok.save('runs/default/clip');          // writes runs/default/clip/tokenizer.json
 *   WordTokenizer.load('runs/default/clip');
 */
import fs from 'node:fs';
import path from 'node:path';
import { UsageError } from '../util/errors.ts';
import { checkRegularFile, writeFileAtomicSync } from '../util/fs.ts';
import { parseJson } from '../util/json.ts';
import { frameIds, TruncationWarning, type Encoding, type Tokenizer, type WarnFn } from './tokenizer.ts';

export const WORD_TOKENIZER_FILE = 'tokenizer.json';
export const WORD_TOKENIZER_TYPE = 'sdlab-word-tokenizer';
export const SPECIAL_WORDS = ['<pad>', '<start>', '<end>', '<unk>'] as const;
const DEFAULT_MAX_LENGTH = 16;

export interface WordTokenizerOptions {
  /** Length of every encoding, including <start> and <end> (default 16). */
  maxLength?: number;
  /** Where the one-time truncation warning goes (default console.warn). */
  onWarn?: WarnFn;
}

/** What tokenizer.json holds. */
export interface WordTokenizerJson {
  type: typeof WORD_TOKENIZER_TYPE;
  version: 1;
  maxLength: number;
  /** Token strings in id order; the first four are SPECIAL_WORDS. */
  vocab: string[];
}

/** Lower-case, then letter/digit runs and single punctuation characters. */
export function splitWords(text: string): string[] {
  return text.normalize('NFC').toLowerCase().match(/[\p{L}\p{M}\p{N}]+|[^\s\p{L}\p{M}\p{N}]/gu) ?? [];
}

export class WordTokenizer implements Tokenizer {
  readonly padId = 0;
  readonly bosId = 1;
  readonly eosId = 2;
  readonly unkId = 3;
  readonly maxLength: number;
  /** Token strings in id order. */
  readonly vocab: readonly string[];
  private readonly ids = new Map<string, number>();
  private readonly warning: TruncationWarning;

  /** `words`: the vocabulary; each entry is split like text, duplicates are kept once. */
  constructor(words: readonly string[], opts: WordTokenizerOptions = {}) {
    const vocab: string[] = [...SPECIAL_WORDS];
    vocab.forEach((w, i) => this.ids.set(w, i));
    for (const entry of words) {
      for (const w of splitWords(entry)) {
        if (!this.ids.has(w)) {
          this.ids.set(w, vocab.length);
          vocab.push(w);
        }
      }
    }
    this.vocab = vocab;
    this.maxLength = opts.maxLength ?? DEFAULT_MAX_LENGTH;
    if (!Number.isInteger(this.maxLength) || this.maxLength < 2) {
      throw new UsageError(`word tokenizer: maxLength must be an integer >= 2, got ${this.maxLength}`);
    }
    this.warning = new TruncationWarning(opts.onWarn);
  }

  get vocabSize(): number {
    return this.vocab.length;
  }

  /** The token strings `text` splits into (before ids; unknown words kept as written). */
  tokenize(text: string): string[] {
    return splitWords(text);
  }

  encode(text: string): Encoding {
    const ids = splitWords(text).map((w) => this.ids.get(w) ?? this.unkId);
    const enc = frameIds(ids, this);
    if (enc.truncated) this.warning.maybeWarn(text, ids.length + 2, this.maxLength);
    return enc;
  }

  /** Ids -> words joined by spaces; <pad>/<start>/<end> are skipped, <unk> stays visible. */
  decode(ids: readonly number[]): string {
    return ids
      .filter((id) => id !== this.padId && id !== this.bosId && id !== this.eosId)
      .map((id) => this.vocab[id] ?? '<unk>')
      .join(' ');
  }

  toJSON(): WordTokenizerJson {
    return { type: WORD_TOKENIZER_TYPE, version: 1, maxLength: this.maxLength, vocab: [...this.vocab] };
  }

  /** Rebuilds a tokenizer from `toJSON()` output; `source` names the file in error messages. */
  static fromJSON(json: unknown, source = WORD_TOKENIZER_FILE, opts: WordTokenizerOptions = {}): WordTokenizer {
    const what = `{"type": "${WORD_TOKENIZER_TYPE}", "version": 1, "maxLength": N, "vocab": ["<pad>", "<start>", "<end>", "<unk>", ...words]}`;
    const j = json as Partial<WordTokenizerJson> | null;
    const fail = (why: string): never => {
      throw new UsageError(`${source}: ${why}; expected an sdlab word tokenizer ${what}`);
    };
    if (!j || typeof j !== 'object' || j.type !== WORD_TOKENIZER_TYPE) fail('not an sdlab word tokenizer');
    if (j!.version !== 1) fail(`unsupported version ${JSON.stringify(j!.version)}`);
    const vocab = j!.vocab;
    if (!Array.isArray(vocab) || !vocab.every((w) => typeof w === 'string' && w.length > 0)) {
      fail('"vocab" must be an array of non-empty strings');
    }
    if (SPECIAL_WORDS.some((s, i) => vocab![i] !== s)) fail(`"vocab" must start with ${SPECIAL_WORDS.join(', ')}`);
    if (new Set(vocab).size !== vocab!.length) fail('"vocab" has duplicate words');
    if (!Number.isInteger(j!.maxLength) || j!.maxLength! < 2) fail('"maxLength" must be an integer >= 2');
    const tok = new WordTokenizer(vocab!.slice(SPECIAL_WORDS.length), {
      onWarn: opts.onWarn,
      maxLength: opts.maxLength ?? j!.maxLength,
    });
    // Ids are positions in the saved list: refuse a list that would not come back identical.
    if (tok.vocab.length !== vocab!.length) fail('"vocab" holds entries that are not single lower-case words');
    return tok;
  }

  /** Writes `<dir>/tokenizer.json` (dir is created) and returns its path. */
  save(dir: string): string {
    const file = path.join(dir, WORD_TOKENIZER_FILE);
    writeFileAtomicSync(file, JSON.stringify(this.toJSON(), null, 1) + '\n');
    return file;
  }

  /** Reads `<dir>/tokenizer.json`, or the .json file `where` names. */
  static load(where: string, opts: WordTokenizerOptions = {}): WordTokenizer {
    const file = where.endsWith('.json') ? where : path.join(where, WORD_TOKENIZER_FILE);
    if (!fs.existsSync(file)) {
      throw new UsageError(`${file} not found: expected the word tokenizer saved with the text encoder`);
    }
    checkRegularFile(file, 'an sdlab word tokenizer (tokenizer.json)');
    return WordTokenizer.fromJSON(parseJson(fs.readFileSync(file, 'utf8'), file, 'an sdlab word tokenizer'), file, opts);
  }
}

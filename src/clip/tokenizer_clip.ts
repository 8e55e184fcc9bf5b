/**
 * CLIP's byte-level BPE tokenizer, as transformers' slow `CLIPTokenizer` runs it when ftfy is
 * not installed (the default `pip install diffusers transformers`), i.e. what Stable Diffusion
 * pipelines feed their text encoder:
 *
 *   1. split out added/special tokens written literally in the text ("<|endoftext|>"),
 *   2. per remaining piece, BERT's BasicTokenizer without accent stripping or punctuation
 *      splitting: drop control chars, whitespace -> space, space around CJK ideographs, NFC,
 *      split on whitespace, lower-case; re-joined with single spaces,
 *   3. CLIP's regex cuts words, contractions, single digits and punctuation runs,
 *   4. each piece -> UTF-8 bytes -> printable stand-in chars -> BPE merges (ranked by merges.txt)
 *      -> vocab ids; the last symbol of a word carries "</w>",
 *   5. [bos] + ids + [eos], truncated to model_max_length (77) keeping eos, padded with pad.
 *
 * Checked id-for-id against the fixture in test/tokenizer.test.ts.
 *
 *   const tok = ClipTokenizer.fromDirectory('path/to/model/tokenizer');
 *   tok.encode('a photo of a cat');   // { inputIds: [49406, 320, 1125, 539, 320, 2368, 49407, ...] }
 */
import fs from 'node:fs';
import path from 'node:path';
import { UsageError } from '../util/errors.ts';
import { checkRegularFile } from '../util/fs.ts';
import { parseJson, showJson } from '../util/json.ts';
import { frameIds, TruncationWarning, type Encoding, type Tokenizer, type WarnFn } from './tokenizer.ts';

export interface ClipTokenizerOptions {
  /** Overrides model_max_length from tokenizer_config.json (default 77). */
  maxLength?: number;
  /** Where the one-time truncation warning goes (default console.warn). */
  onWarn?: WarnFn;
}

export interface ClipSpecialTokens {
  bos: string;
  eos: string;
  unk: string;
  pad: string;
  /** Added tokens (content -> id) from tokenizer_config.json's added_tokens_decoder. */
  added?: Record<string, number>;
}

const DEFAULT_SPECIALS: ClipSpecialTokens = {
  bos: '<|startoftext|>',
  eos: '<|endoftext|>',
  unk: '<|endoftext|>',
  pad: '<|endoftext|>',
};
const DEFAULT_MAX_LENGTH = 77;
// The slow tokenizer reads at most this many merges (49152 - 256 bytes - 2 specials).
const MAX_MERGES = 49152 - 256 - 2;

// CLIP's pre-tokenizer regex; the text is already lower-cased, `i` mirrors re.IGNORECASE.
const WORD_PATTERN =
  /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+/giu;
// What Python's str.split() treats as whitespace.
const PY_WHITESPACE = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/;
const CONTROL = /^\p{C}$/u; // Cc, Cf, Cs, Co, Cn: dropped (except \t \n \r)
const SPACE_SEPARATOR = /^\p{Zs}$/u;

/**
 * GPT-2/CLIP byte -> unicode table: printable bytes map to themselves, the other 68 to
 * U+0100.., so every byte string becomes a string of visible characters without spaces.
 */
function bytesToUnicode(): string[] {
  const table: string[] = new Array(256);
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCodePoint(printable ? b : next++);
  }
  return table;
}
const BYTE_ENCODER = bytesToUnicode();
const BYTE_DECODER = new Map(BYTE_ENCODER.map((c, b) => [c, b]));

/** CJK ideograph blocks BERT's BasicTokenizer surrounds with spaces (not kana or hangul). */
function isCjkIdeograph(cp: number): boolean {
  return (
    (cp >= 0x4e00 && cp <= 0x9fff) ||
    (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) ||
    (cp >= 0x2b820 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0x2f800 && cp <= 0x2fa1f)
  );
}

/** BasicTokenizer(do_lower_case, strip_accents=False, do_split_on_punc=False), re-joined with spaces. */
export function basicClean(text: string): string {
  let out = '';
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (ch === '\t' || ch === '\n' || ch === '\r' || SPACE_SEPARATOR.test(ch)) out += ' ';
    else if (cp === 0 || cp === 0xfffd || CONTROL.test(ch)) continue;
    else if (isCjkIdeograph(cp)) out += ` ${ch} `;
    else out += ch;
  }
  // Lower-case per whitespace token, as Python does (it matters for final sigma).
  return out
    .normalize('NFC')
    .split(PY_WHITESPACE)
    .filter((w) => w.length > 0)
    .map((w) => w.toLowerCase())
    .join(' ');
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

export class ClipTokenizer implements Tokenizer {
  readonly maxLength: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  readonly unkId: number;
  readonly vocabSize: number;
  private readonly encoder: Map<string, number>;
  private readonly decoder: Map<number, string>;
  private readonly ranks = new Map<string, number>();
  private readonly cache = new Map<string, string[]>();
  /** Added tokens (content -> id): never split, matched literally before anything else. */
  private readonly added = new Map<string, number>();
  private readonly addedPattern: RegExp | null;
  private readonly warning: TruncationWarning;

  constructor(
    vocab: Record<string, number>,
    merges: ReadonlyArray<readonly [string, string]>,
    specials: ClipSpecialTokens = DEFAULT_SPECIALS,
    opts: ClipTokenizerOptions = {},
  ) {
    this.encoder = new Map(Object.entries(vocab));
    this.decoder = new Map([...this.encoder].map(([t, i]) => [i, t]));
    merges.slice(0, MAX_MERGES).forEach(([a, b], rank) => this.ranks.set(`${a} ${b}`, rank));

    for (const [content, id] of Object.entries(specials.added ?? {})) this.added.set(content, id);
    const idOf = (role: string, token: string): number => {
      const id = this.added.get(token) ?? this.encoder.get(token);
      if (id === undefined) throw new UsageError(`CLIP tokenizer: ${role} token ${showJson(token)} is not in vocab.json`);
      this.added.set(token, id);
      return id;
    };
    this.bosId = idOf('bos', specials.bos);
    this.eosId = idOf('eos', specials.eos);
    this.unkId = idOf('unk', specials.unk);
    this.padId = idOf('pad', specials.pad);
    for (const [content, id] of this.added) this.decoder.set(id, content);
    // Longest first, so a token that is a prefix of another does not win.
    const contents = [...this.added.keys()].sort((a, b) => b.length - a.length);
    try {
      this.addedPattern = contents.length ? new RegExp(`(${contents.map(escapeRegExp).join('|')})`) : null;
      this.addedPattern?.test(''); // V8 compiles on first use: fail here, not in encode()
    } catch {
      // V8 caps a pattern's size; real tokenizers add a few short tokens.
      throw new UsageError(`CLIP tokenizer: ${contents.length} added tokens, the longest ${contents[0].length} characters: too many or too long to match`);
    }
    // The special strings themselves map to their ids when they come out of the regex
    // (e.g. "<|ENDOFTEXT|>", lower-cased), as the slow tokenizer's seeded BPE cache does.
    for (const t of [DEFAULT_SPECIALS.bos, DEFAULT_SPECIALS.eos]) this.cache.set(t, [t]);

    let maxId = 0;
    for (const id of this.decoder.keys()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    this.maxLength = opts.maxLength ?? DEFAULT_MAX_LENGTH;
    if (!Number.isInteger(this.maxLength) || this.maxLength < 2) {
      throw new UsageError(`CLIP tokenizer: maxLength must be an integer >= 2, got ${this.maxLength}`);
    }
    this.warning = new TruncationWarning(opts.onWarn);
  }

  /**
   * Reads vocab.json + merges.txt (+ tokenizer_config.json / special_tokens_map.json when present)
   * from `dir`, a tokenizer folder or a diffusers model folder with a `tokenizer/` inside.
   */
  static fromDirectory(dir: string, opts: ClipTokenizerOptions = {}): ClipTokenizer {
    if (!fs.existsSync(path.join(dir, 'vocab.json')) && fs.existsSync(path.join(dir, 'tokenizer', 'vocab.json'))) {
      dir = path.join(dir, 'tokenizer');
    }
    const vocab = readVocab(path.join(dir, 'vocab.json'));
    const merges = readMerges(path.join(dir, 'merges.txt'));
    const specials: ClipSpecialTokens = { ...DEFAULT_SPECIALS };
    let maxLength = DEFAULT_MAX_LENGTH;

    const config = readOptionalJson(path.join(dir, 'tokenizer_config.json'));
    const map = readOptionalJson(path.join(dir, 'special_tokens_map.json'));
    for (const source of [config, map]) {
      for (const role of ['bos', 'eos', 'unk', 'pad'] as const) {
        const v = source?.[`${role}_token`];
        const content = typeof v === 'string' ? v : (v as { content?: unknown } | undefined)?.content;
        if (typeof content === 'string') specials[role] = content;
      }
    }
    const addedDecoder = config?.added_tokens_decoder;
    if (addedDecoder && typeof addedDecoder === 'object') {
      specials.added = {};
      for (const [id, t] of Object.entries(addedDecoder as Record<string, { content?: unknown }>)) {
        if (typeof t?.content === 'string' && /^\d+$/.test(id)) specials.added[t.content] = Number(id);
      }
    }
    // Some configs say 1e30 ("no limit"); CLIP's position table is what really bounds it.
    const mml = config?.model_max_length;
    if (typeof mml === 'number' && Number.isInteger(mml) && mml >= 2 && mml <= 1_000_000) maxLength = mml;

    return new ClipTokenizer(vocab, merges, specials, { maxLength, ...opts });
  }

  /** The BPE token strings of `text`, without bos/eos/padding (handy to see what the model sees). */
  tokenize(text: string): string[] {
    const tokens: string[] = [];
    const pieces = this.addedPattern ? text.split(this.addedPattern) : [text];
    // split() with a capture group alternates: text, added token, text, ...
    pieces.forEach((piece, i) => {
      if (i % 2 === 1) tokens.push(piece);
      else if (piece) for (const word of basicClean(piece).match(WORD_PATTERN) ?? []) tokens.push(...this.bpe(word));
    });
    return tokens;
  }

  textIds(text: string): number[] {
    return this.tokenize(text).map((t) => this.added.get(t) ?? this.encoder.get(t) ?? this.unkId);
  }

  encode(text: string): Encoding {
    const ids = this.textIds(text);
    const enc = frameIds(ids, this);
    if (enc.truncated) this.warning.maybeWarn(text, ids.length + 2, this.maxLength);
    return enc;
  }

  /** Ids -> text; special tokens (bos/eos/pad, added tokens) are skipped, "</w>" becomes a space. */
  decode(ids: readonly number[]): string {
    const special = new Set(this.added.values());
    const symbols = ids.filter((id) => !special.has(id)).map((id) => this.decoder.get(id) ?? '').join('');
    const bytes = Uint8Array.from([...symbols].map((c) => BYTE_DECODER.get(c) ?? 0x3f));
    return new TextDecoder('utf-8').decode(bytes).replaceAll('</w>', ' ').trim();
  }

  /** Byte-level BPE of one regex piece; cached per piece. */
  private bpe(word: string): string[] {
    const cached = this.cache.get(word);
    if (cached) return cached;
    const chars = [...Buffer.from(word, 'utf8')].map((b) => BYTE_ENCODER[b]);
    let symbols = chars.slice(0, -1).concat(chars[chars.length - 1] + '</w>');
    while (symbols.length > 1) {
      // The adjacent pair merged earliest in training wins.
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < symbols.length - 1; i++) {
        const rank = this.ranks.get(`${symbols[i]} ${symbols[i + 1]}`);
        if (rank !== undefined && rank < bestRank) {
          bestRank = rank;
          best = i;
        }
      }
      if (best < 0) break;
      const [a, b] = [symbols[best], symbols[best + 1]];
      const merged: string[] = [];
      for (let i = 0; i < symbols.length; i++) {
        if (symbols[i] === a && symbols[i + 1] === b && i < symbols.length - 1) {
          merged.push(a + b);
          i++;
        } else merged.push(symbols[i]);
      }
      symbols = merged;
    }
    this.cache.set(word, symbols);
    return symbols;
  }
}

function readText(file: string, what: string): string {
  if (!fs.existsSync(file)) throw new UsageError(`${file} not found: expected ${what}`);
  checkRegularFile(file, what);
  return fs.readFileSync(file, 'utf8');
}

function readVocab(file: string): Record<string, number> {
  const what = 'the CLIP vocab.json, a JSON object mapping token -> integer id';
  const text = readText(file, what);
  const vocab = parseJson(text, file, what);
  const entries = vocab && typeof vocab === 'object' && !Array.isArray(vocab) ? Object.entries(vocab) : [];
  const bad = entries.find(([, id]) => !Number.isInteger(id) || (id as number) < 0);
  if (entries.length === 0 || bad) {
    const detail = bad ? `token ${showJson(bad[0])} has id ${showJson(bad[1])}` : 'it is empty or not an object';
    throw new UsageError(`${file}: ${detail}; expected ${what}`);
  }
  return vocab as Record<string, number>;
}

function readMerges(file: string): Array<[string, string]> {
  const what = 'the CLIP merges.txt: a "#version" header, then one "a b" merge per line';
  const lines = readText(file, what).split(/\r?\n/);
  // The slow tokenizer drops the first line (the "#version: 0.2" header) unconditionally; we drop
  // it only when it is a header, so a header-less file loses no merge.
  const first = lines[0]?.startsWith('#') ? 1 : 0;
  const merges: Array<[string, string]> = [];
  lines.slice(first).forEach((line, i) => {
    if (line.trim() === '') return;
    const parts = line.trim().split(/\s+/);
    if (parts.length !== 2) {
      throw new UsageError(`${file} line ${i + first + 1}: ${JSON.stringify(line.slice(0, 60))} is not a merge; expected ${what}`);
    }
    merges.push([parts[0], parts[1]]);
  });
  if (merges.length === 0) throw new UsageError(`${file} has no merges; expected ${what}`);
  return merges;
}

function readOptionalJson(file: string): Record<string, unknown> | undefined {
  if (!fs.existsSync(file)) return undefined;
  checkRegularFile(file, 'a transformers tokenizer config');
  const v = parseJson(fs.readFileSync(file, 'utf8'), file, 'a transformers tokenizer config (or remove the file)');
  if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  throw new UsageError(`${file} is not a JSON object; expected a transformers tokenizer config (or remove the file)`);
}

/**
 * Long prompts and emphasis, as AUTOMATIC1111's web UI reads prompts (modules/prompt_parser.py
 * parse_prompt_attention, modules/sd_hijack_clip.py), for CLIP tokenizers:
 *
 * Emphasis (parsePromptAttention):
 *   (word)        weight × 1.1          ((word)) × 1.21, and so on
 *   [word]        weight ÷ 1.1
 *   (word:1.3)    weight × 1.3           (any number: "(word:0.5)", "(a b:-1)")
 *   \( \) \[ \]   the literal bracket;   \\ a backslash; a lone \ is dropped
 *   BREAK         (upper case, a word of its own) ends the chunk: the rest starts a new one
 * Brackets nest and multiply. An unbalanced "(" or "[" applies to the rest of the prompt; an
 * unbalanced ")" or "]" is plain text; "(word:x)" with no open "(" is plain text. Runs of text
 * with equal weights are merged. Each run is tokenized on its own (as A1111 does), so
 * "a (red) cat" has the tokens of "a ", "red", " cat".
 *
 * Chunks (promptChunks): the tokens (no bos/eos) are cut into chunks of 75 — where the 76th
 * token would go. When a chunk is full and a comma is among its last 20 tokens, the tokens after
 * that comma move on to the next chunk (A1111's default "comma padding backtrack" of 20). Each
 * chunk is framed as the tokenizer frames a prompt: bos, its tokens, eos, then padding to 77
 * (SD 1.x pads with eos, SD 2.x's OpenCLIP with 0, as A1111 does for each). An empty prompt is
 * one chunk. The text encoder runs on every chunk separately; the chunks' hidden states are
 * concatenated along the sequence: k chunks give a context of k·77 tokens for the UNet.
 *
 * Weighting (applyEmphasis, A1111's "Original" emphasis): each chunk's hidden states [77, D] are
 * multiplied token by token by the weights (bos, eos and padding weigh 1), then rescaled so the
 * mean over the whole chunk equals the unweighted mean: z' = (z·w) · mean(z) / mean(z·w). The
 * mean is taken per prompt and chunk (A1111 takes it over the batch's chunk; the same for a batch
 * of one prompt). A prompt whose weights are all 1 is left untouched.
 *
 * In a batch the prompts (negative prompts included: they share the UNet call) are padded to the
 * same number of chunks with empty chunks (bos, eos, padding), as A1111 pads within a batch and
 * pads the negative prompt to the prompt's length. So an image whose prompt is shorter than
 * another's in the same --batch depends on that batch; --batch 1 keeps images independent.
 *
 * A prompt of at most 75 tokens with no emphasis syntax is one chunk with weights 1: the ids and
 * the embeddings are exactly those of the tokenizer's plain encode().
 */
import { UsageError } from '../util/errors.ts';
import { frameIds, type Tokenizer } from '../clip/tokenizer.ts';

/** A1111's multipliers for () and []. */
export const ROUND_BRACKET = 1.1;
export const SQUARE_BRACKET = 1 / 1.1;
/** Tokens per chunk between bos and eos (CLIP's 77 positions − 2). */
export const CHUNK_TOKENS = 75;
/** A1111's default "prompt word wrap length limit" (opts.comma_padding_backtrack). */
export const COMMA_BACKTRACK = 20;
/** At most this many chunks per prompt (1001 tokens): the UNet's cross-attention grows with the context. */
export const MAX_PROMPT_CHUNKS = 13;

/** Weight −1 marks a BREAK (A1111's convention). */
export type WeightedText = [text: string, weight: number];

// A1111's re_attention, alternative by alternative: escapes, openers, ":weight)", closers, plain text, a lone colon.
const ATTENTION = /\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()[\]:]+|:/g;
const BREAK = /\s*\bBREAK\b\s*/s;

/**
 * The prompt as runs of text with weights (see the file header), A1111's parse_prompt_attention:
 *   'an (important) word'  → [['an ', 1], ['important', 1.1], [' word', 1]]
 *   '(unbalanced'          → [['unbalanced', 1.1]]
 *   '\\(literal\\]'        → [['(literal]', 1]]
 * Throws one line when a "(text:weight)" weight is not a number (A1111 fails on it too).
 */
export function parsePromptAttention(text: string): WeightedText[] {
  const res: WeightedText[] = [];
  const round: number[] = [];
  const square: number[] = [];
  const multiplyRange = (start: number, m: number) => {
    for (let p = start; p < res.length; p++) res[p][1] *= m;
  };
  for (const match of text.matchAll(ATTENTION)) {
    const piece = match[0];
    const weight = match[1];
    if (piece.startsWith('\\')) res.push([piece.slice(1), 1]);
    else if (piece === '(') round.push(res.length);
    else if (piece === '[') square.push(res.length);
    else if (weight !== undefined && round.length > 0) {
      const w = Number(weight);
      // Python's float() takes what Number() takes here except "" and ".": both fail there too.
      if (!Number.isFinite(w) || weight === '.' || /^[+-]?$/.test(weight)) throw new UsageError(`prompt: the emphasis weight "${weight}" in "${text.length > 60 ? text.slice(0, 60) + '…' : text}" is not a number (write (word:1.3); \\( and \\) for literal brackets).`);
      multiplyRange(round.pop()!, w);
    } else if (piece === ')' && round.length > 0) multiplyRange(round.pop()!, ROUND_BRACKET);
    else if (piece === ']' && square.length > 0) multiplyRange(square.pop()!, SQUARE_BRACKET);
    else {
      piece.split(BREAK).forEach((part, i) => {
        if (i > 0) res.push(['BREAK', -1]);
        res.push([part, 1]);
      });
    }
  }
  for (const pos of round) multiplyRange(pos, ROUND_BRACKET);
  for (const pos of square) multiplyRange(pos, SQUARE_BRACKET);
  if (res.length === 0) res.push(['', 1]);
  for (let i = 0; i + 1 < res.length; ) {
    if (res[i][1] === res[i + 1][1]) {
      res[i][0] += res[i + 1][0];
      res.splice(i + 1, 1);
    } else i++;
  }
  return res;
}

/** A prompt as the text encoder reads it. */
export interface PromptChunks {
  /** One row of tokenizer.maxLength ids per chunk (bos, ≤ 75 tokens, eos, padding). */
  ids: number[][];
  /** Per chunk, one weight per position (1 at bos, eos and padding); null when every weight is 1. */
  weights: number[][] | null;
  /** Tokens of the prompt (without bos/eos). */
  tokenCount: number;
}

/**
 * How prompts are read. a1111 (the default, what A1111/ComfyUI users write): emphasis and chunks.
 * plain: exactly diffusers' reading (one tokenizer.encode, brackets are text, truncated at 77
 * with a warning), for reproducing a diffusers run of a prompt with literal brackets.
 */
export const PROMPT_SYNTAXES = ['a1111', 'plain'] as const;
export type PromptSyntax = (typeof PROMPT_SYNTAXES)[number];

export interface PromptChunkOptions {
  /** Default a1111 (see PROMPT_SYNTAXES). */
  syntax?: PromptSyntax;
  /** Tokens after the last comma that move to the next chunk when a chunk fills (default 20; 0 = off). */
  commaBacktrack?: number;
}

/**
 * The chunks of a prompt (see the file header). Tokenizers without `textIds` (sdlab's word
 * tokenizer of the digit model) read the prompt as before: one encode(), no emphasis.
 */
export function promptChunks(tok: Tokenizer, text: string, opts: PromptChunkOptions = {}): PromptChunks {
  if (!tok.textIds || opts.syntax === 'plain') return { ids: [tok.encode(text).inputIds], weights: null, tokenCount: -1 };
  const perChunk = tok.maxLength - 2;
  const parsed = parsePromptAttention(text);
  const backtrack = opts.commaBacktrack ?? COMMA_BACKTRACK;
  const comma = tok.textIds(',');
  const commaId = comma.length === 1 ? comma[0] : -1;
  const chunks: Array<{ tokens: number[]; weights: number[] }> = [];
  let chunk = { tokens: [] as number[], weights: [] as number[] };
  let lastComma = -1;
  let tokenCount = 0;
  const nextChunk = () => {
    chunks.push(chunk);
    chunk = { tokens: [], weights: [] };
    lastComma = -1;
  };
  for (const [piece, weight] of parsed) {
    if (piece === 'BREAK' && weight === -1) {
      nextChunk();
      continue;
    }
    for (const token of tok.textIds(piece)) {
      tokenCount++;
      if (token === commaId) lastComma = chunk.tokens.length;
      else if (backtrack !== 0 && chunk.tokens.length === perChunk && lastComma !== -1 && chunk.tokens.length - lastComma <= backtrack) {
        const at = lastComma + 1;
        const moved = { tokens: chunk.tokens.slice(at), weights: chunk.weights.slice(at) };
        chunk.tokens = chunk.tokens.slice(0, at);
        chunk.weights = chunk.weights.slice(0, at);
        nextChunk();
        chunk = moved;
      }
      if (chunk.tokens.length === perChunk) nextChunk();
      chunk.tokens.push(token);
      chunk.weights.push(weight);
    }
  }
  if (chunk.tokens.length > 0 || chunks.length === 0) nextChunk();
  if (chunks.length > MAX_PROMPT_CHUNKS) {
    throw new UsageError(`prompt: ${tokenCount} tokens make ${chunks.length} chunks of ${perChunk}, over sdlab's limit of ${MAX_PROMPT_CHUNKS} (the UNet attends to every token at every step): shorten "${text.slice(0, 40)}…".`);
  }
  const ids = chunks.map((c) => frameIds(c.tokens, tok).inputIds);
  const weighted = chunks.some((c) => c.weights.some((w) => w !== 1));
  const weights = weighted ? chunks.map((c) => [1, ...c.weights, ...new Array<number>(tok.maxLength - 1 - c.weights.length).fill(1)]) : null;
  return { ids, weights, tokenCount };
}

/** The empty chunk (bos, eos, padding) that pads a prompt to more chunks. */
export function emptyChunk(tok: Tokenizer): number[] {
  return frameIds([], tok).inputIds;
}

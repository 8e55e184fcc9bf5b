/**
 * Tokenizers for the text encoder: text -> fixed-length token ids + attention mask.
 *
 * Two implementations share the `Tokenizer` interface:
 *   - `ClipTokenizer` (tokenizer_clip.ts): the real CLIP byte-level BPE, read from a model
 *     directory's vocab.json + merges.txt, for Stable Diffusion 1.x weights.
 *   - `WordTokenizer` (tokenizer_word.ts): one id per word of a small vocabulary, for the text
 *     encoder we train from scratch on captions; saved as tokenizer.json next to its weights.
 *
 * `loadTokenizer(dir)` (tokenizer_load.ts) picks whichever the directory holds.
 *
 *   import { loadTokenizer } from './src/clip/index.ts';
 *   const tok = loadTokenizer('../shared/fixtures/sd1_tiny/model/tokenizer');
 *   tok.encode('a photograph of an astronaut').inputIds; // [49406, 320, 8853, ..., 49407, 49407]
 */
export interface Encoding {
  /** Exactly `maxLength` ids: bos, text tokens, eos, then pad ids. */
  inputIds: number[];
  /** 1 for bos/text/eos positions, 0 for padding (same length as inputIds). */
  attentionMask: number[];
  /** True when the text had more tokens than fit and the tail was dropped. */
  truncated: boolean;
}

export interface Tokenizer {
  encode(text: string): Encoding;
  /** The text's token ids without bos/eos/padding and without truncation (CLIP: what A1111's prompt chunking splits into chunks of 75). */
  textIds?(text: string): number[];
  decode?(ids: readonly number[]): string;
  /** Length of every encoding (the text encoder's context length, 77 for CLIP). */
  readonly maxLength: number;
  readonly padId: number;
  readonly bosId: number;
  readonly eosId: number;
  /** Number of embedding rows the text encoder needs (largest id + 1). */
  readonly vocabSize: number;
}

export type WarnFn = (message: string) => void;

/**
 * bos + ids + eos, truncated so that eos stays last, then padded to `maxLength`
 * (what transformers does for `padding='max_length', truncation=True`).
 */
export function frameIds(
  ids: readonly number[],
  spec: { bosId: number; eosId: number; padId: number; maxLength: number },
): Encoding {
  const room = spec.maxLength - 2;
  const truncated = ids.length > room;
  const body = truncated ? ids.slice(0, room) : ids;
  const inputIds = [spec.bosId, ...body, spec.eosId];
  const attentionMask = inputIds.map(() => 1);
  while (inputIds.length < spec.maxLength) {
    inputIds.push(spec.padId);
    attentionMask.push(0);
  }
  return { inputIds, attentionMask, truncated };
}

/** Warns once per tokenizer when a prompt is truncated (the default sink is console.warn -> stderr). */
export class TruncationWarning {
  private warned = false;
  constructor(private readonly onWarn: WarnFn = (m) => console.warn(m)) {}

  maybeWarn(text: string, tokenCount: number, maxLength: number): void {
    if (this.warned) return;
    this.warned = true;
    const head = text.length > 40 ? `${text.slice(0, 40)}…` : text;
    this.onWarn(
      `warning: prompt "${head}" has ${tokenCount} tokens but the text encoder reads at most ` +
        `${maxLength - 2} (+ start/end); the rest is dropped (shown once)`,
    );
  }
}

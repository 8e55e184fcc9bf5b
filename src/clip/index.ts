/**
 * sdlab's CLIP: tokenizers, the text encoder (CLIP text transformer), a small image encoder and the
 * contrastive model with its loss (clipLoss). Its evaluation is src/eval/clip.ts.
 */
export { frameIds, TruncationWarning, type Encoding, type Tokenizer, type WarnFn } from './tokenizer.ts';
export { ClipTokenizer, basicClean, type ClipTokenizerOptions, type ClipSpecialTokens } from './tokenizer_clip.ts';
export {
  WordTokenizer,
  splitWords,
  SPECIAL_WORDS,
  WORD_TOKENIZER_FILE,
  type WordTokenizerJson,
  type WordTokenizerOptions,
} from './tokenizer_word.ts';
export { loadTokenizer } from './tokenizer_load.ts';
export * from './text_encoder.ts';
export * from './image_encoder.ts';
export * from './clip.ts';

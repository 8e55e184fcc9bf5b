/** The text side of sdlab: tokenizers (and, later, the text encoder). */
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

/** `loadTokenizer(dir)`: the tokenizer a directory holds, CLIP BPE or word-level. */
import fs from 'node:fs';
import path from 'node:path';
import { UsageError } from '../util/errors.ts';
import type { Tokenizer } from './tokenizer.ts';
import { ClipTokenizer, type ClipTokenizerOptions } from './tokenizer_clip.ts';
import { WordTokenizer, WORD_TOKENIZER_FILE, type WordTokenizerOptions } from './tokenizer_word.ts';

/**
 * Loads the tokenizer a directory holds: CLIP BPE (vocab.json + merges.txt) or a word-level
 * tokenizer.json written by `WordTokenizer.save`. Also looks in a `tokenizer/` subfolder, so a
 * diffusers model directory works as well.
 */
export function loadTokenizer(
  dir: string,
  opts: ClipTokenizerOptions & WordTokenizerOptions = {},
): Tokenizer {
  for (const d of [dir, path.join(dir, 'tokenizer')]) {
    if (fs.existsSync(path.join(d, 'vocab.json')) || fs.existsSync(path.join(d, 'merges.txt'))) {
      return ClipTokenizer.fromDirectory(d, opts);
    }
    if (fs.existsSync(path.join(d, WORD_TOKENIZER_FILE))) return WordTokenizer.load(d, opts);
  }
  throw new UsageError(
    `no tokenizer in ${dir}: expected vocab.json + merges.txt (CLIP BPE) or ${WORD_TOKENIZER_FILE} (word-level)`,
  );
}

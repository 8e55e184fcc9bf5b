/**
 * Prompts for the digit model: which digit a prompt names, and digit lists for the sample sheet.
 *
 *   digitFromPrompt('a handwritten 7')       → 7
 *   digitFromPrompt('a thick, slanted seven') → 7
 *   digitFromPrompt('a 3 or a five')          → null   (two different digits)
 *   digitFromPrompt('a handwritten digit')    → null   (none)
 *   parseDigitList('0-9') → [0..9];  parseDigitList('1,4-6') → [1, 4, 5, 6]
 */
import { InvalidArgumentError } from 'commander';
import { DIGIT_WORDS } from '../data/captions.ts';
import { splitWords } from '../clip/tokenizer_word.ts';

/**
 * The digit a prompt names, as a word ("seven") or a numeral ("7"), if it names exactly one
 * (naming it twice, "a 7, a seven", still counts as one); else null. A number of several
 * digits ("17") names no single digit, so the prompt gives null.
 */
export function digitFromPrompt(prompt: string): number | null {
  const found = new Set<number>();
  for (const w of splitWords(prompt)) {
    if (/^\d$/.test(w)) found.add(Number(w));
    else if (/^\d+$/.test(w)) return null;
    else {
      const d = (DIGIT_WORDS as readonly string[]).indexOf(w);
      if (d >= 0) found.add(d);
    }
  }
  return found.size === 1 ? [...found][0] : null;
}

/** "0-9", "3", "1,4-6" → the listed digits in order (commander argParser: bad input exits 2). */
export function parseDigitList(value: string): number[] {
  const out: number[] = [];
  for (const part of value.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^(\d)(?:-(\d))?$/.exec(part);
    if (!m) throw new InvalidArgumentError(`expected digits like 0-9, 7 or 1,4-6, got "${value}".`);
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (b < a) throw new InvalidArgumentError(`expected a rising range like 0-9, got "${part}".`);
    for (let d = a; d <= b; d++) out.push(d);
  }
  if (out.length === 0) throw new InvalidArgumentError(`expected digits like 0-9, got "${value}".`);
  return out;
}

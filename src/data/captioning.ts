/**
 * Captions for any labelled dataset: which caption an example gets, the one prompt per class
 * (zero-shot evaluation, sample grids and sheets) and every word a caption can contain (the
 * vocabulary of the CLIP word tokenizer, src/train/clip.ts captionTokenizer).
 *
 * The dataset decides the kind (captionKind):
 *   digits   no class names: the digit captions of ./captions.ts ("a thick, slanted 7", ...),
 *            drawn exactly as before (same function, same random draws)
 *   classes  ds.classNames (--classes, classes.txt, folder names, Fashion-MNIST's known names):
 *            a template around the class name, picked at random:
 *              "sneaker" | "a sneaker" | "the sneaker" | "a picture of a sneaker" |
 *              "a photo of a sneaker" | "an image of a sneaker"
 *            prompt: "a sneaker" ("an ankle boot")
 *   texts    ds.captions (a metadata.jsonl's "text"): each example's own text; the prompt of a
 *            class (= one distinct text) is that text
 *
 *   captionOf(ds, i, rng)     the caption of example i (draws from rng for digits and classes)
 *   classPrompts(ds)          one prompt per label
 *   captionVocabulary(ds)     the words (and punctuation) captions of ds can hold
 */
import { UsageError } from '../util/errors.ts';
import type { Random } from '../util/random.ts';
import { CAPTION_PUNCTUATION, CAPTION_VOCABULARY, article, captionFor, promptForDigit } from './captions.ts';
import type { Dataset } from './types.ts';

export type CaptionKind = 'digits' | 'classes' | 'texts';

/** The caption templates for a named class: {a} is "a" or "an", {name} the class name. */
export const CLASS_TEMPLATES: readonly string[] = ['{name}', '{a} {name}', 'the {name}', 'a picture of {a} {name}', 'a photo of {a} {name}', 'an image of {a} {name}'];

type Captioned = Pick<Dataset, 'classNames' | 'captions'>;

export function captionKind(ds: Captioned): CaptionKind {
  if (ds.captions) return 'texts';
  if (ds.classNames) return 'classes';
  return 'digits';
}

/** A template filled in with `name`. */
function fill(template: string, name: string): string {
  return template.replaceAll('{a}', article(name)).replaceAll('{name}', name);
}

/** The prompt of a named class: "a sneaker", "an ankle boot". */
export function classPrompt(name: string): string {
  return fill('{a} {name}', name);
}

/** A caption for an example of class `name`: one of CLASS_TEMPLATES, picked with `rng`. */
export function classCaption(name: string, rng: Random): string {
  return fill(CLASS_TEMPLATES[rng.int(CLASS_TEMPLATES.length)], name);
}

/**
 * The caption of example `i` of `ds`. Deterministic given the state of `rng`; digit datasets
 * get captionFor's caption with the same draws as ever, so digit runs are unchanged.
 */
export function captionOf(ds: Dataset, i: number, rng: Random): string {
  if (ds.captions) return ds.captions[i];
  if (ds.classNames) return classCaption(ds.classNames[ds.labels[i]], rng);
  const px = ds.height * ds.width;
  return captionFor({ data: ds.images.subarray(i * px, (i + 1) * px), height: ds.height, width: ds.width }, ds.labels[i], rng);
}

/** One prompt per label, in label order: the digit prompts 0-9, "a <name>" per class, or the distinct texts. */
export function classPrompts(ds: Captioned): string[] {
  switch (captionKind(ds)) {
    case 'texts':
      return [...ds.classNames!];
    case 'classes':
      return ds.classNames!.map(classPrompt);
    default:
      return Array.from({ length: 10 }, (_, d) => promptForDigit(d));
  }
}

/** A short label per class for picture rows: the digit, the class name, or the start of the text. */
export function classLabels(ds: Captioned, maxLength = 12): string[] {
  if (captionKind(ds) === 'digits') return Array.from({ length: 10 }, (_, d) => String(d));
  return ds.classNames!.map((s) => (s.length > maxLength ? `${s.slice(0, maxLength - 2)}..` : s));
}

/**
 * Every word and punctuation mark the captions of `ds` can contain, in a fixed order (the word
 * tokenizer's ids follow it): the digit caption vocabulary; the templates' words, then the class
 * names'; or the jsonl texts' words in order of first appearance.
 */
export function captionVocabulary(ds: Captioned): string[] {
  switch (captionKind(ds)) {
    case 'texts':
      return [...ds.classNames!];
    case 'classes':
      return [...CLASS_TEMPLATES.flatMap((t) => [t.replaceAll('{a}', 'a an').replaceAll('{name}', '')]), ...ds.classNames!];
    default:
      return [...CAPTION_VOCABULARY, ...CAPTION_PUNCTUATION];
  }
}

/**
 * Refuses a dataset whose labels its captions cannot describe (one line naming the data):
 * digit captions need labels 0-9; named classes need a name for every label.
 */
export function checkCaptionable(ds: Dataset): void {
  let max = -1;
  for (const l of ds.labels) if (l > max) max = l;
  const what = ds.source ?? 'the data';
  if (captionKind(ds) === 'digits' && max > 9) {
    throw new UsageError(
      `${what}: labels go up to ${max}, so they are not digits; name the classes with --classes "name0,name1,..." (or a classes.txt beside the data, one name per line).`,
    );
  }
  if (captionKind(ds) === 'classes' && max >= ds.classNames!.length) {
    throw new UsageError(`${what}: labels go up to ${max} but there are only ${ds.classNames!.length} class names; give one name per label, label 0 first.`);
  }
}

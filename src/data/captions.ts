/**
 * Captions for digits: varied text for the text encoder to learn from, not just the label.
 *
 *   captionFor(image, 7, rng)  ->  "a handwritten seven" | "the digit 7" | "7" | "seven" |
 *                                  "the number seven" | "a thick, slanted 7" | ...
 *   styleOf(image)             ->  { thickness: 2.9, slantDegrees: 24, ..., words: { thickness: 'thick', slant: 'slanted', size: 'normal' } }
 *   promptForDigit(7)          ->  "a handwritten seven"
 *
 * The style words are measured from the pixels, so they are true of the image:
 *   - stroke thickness = 2 * ink area / ink perimeter (pixels at >= 0.5); for a stroke of width w
 *     and length L this is w*L / (L + w) ~ w. thin < 1.55 px, thick > 2.5 px (about the lowest and
 *     highest fifth of MNIST; the measure does not depend on the digit class).
 *   - slant from second moments of the ink: the x-shift per unit height, -mu11 / mu02 (y grows
 *     downwards), as an angle. slanted when |angle| >= 20 degrees, upright when <= 5.
 *   - size from the bounding box of pixels > 0.2: its larger side, small < 17 px, large > 22 px
 *     (MNIST digits are all drawn in a 20x20 box, so these two only appear on rescaled data).
 * Thresholds assume MNIST-scale strokes (28x28, or padded to 32x32).
 *
 * Every word the generator can emit is in CAPTION_VOCABULARY; captions are those words joined by
 * single spaces, where a style word may carry a trailing comma ("a thick, slanted 7"). The CLIP
 * trainer's word tokenizer is built from these lists (mnistCaptionTokenizer, src/train/clip.ts).
 */
import { Random } from '../util/random.ts';

export const DIGIT_WORDS = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'] as const;

/** Synonyms for each measured style; the generator picks one at random. */
export const STYLE_WORDS = {
  thin: ['thin', 'light'],
  thick: ['thick', 'bold'],
  upright: ['upright', 'straight'],
  slanted: ['slanted', 'tilted'],
  small: ['small', 'tiny'],
  large: ['large', 'big'],
} as const;

const FRAME_WORDS = ['a', 'an', 'the', 'digit', 'number', 'handwritten', 'picture', 'of'] as const;

/** Every word a caption can contain (lower case; numerals 0-9 included). Punctuation: only ','. */
export const CAPTION_VOCABULARY: readonly string[] = [
  ...FRAME_WORDS,
  ...DIGIT_WORDS,
  ...DIGIT_WORDS.map((_, d) => String(d)),
  ...Object.values(STYLE_WORDS).flat(),
];

/** Punctuation a caption can contain, attached to the end of a word. */
export const CAPTION_PUNCTUATION: readonly string[] = [','];

export const THRESHOLDS = {
  thinBelow: 1.55,
  thickAbove: 2.5,
  slantedFromDegrees: 20,
  uprightToDegrees: 5,
  smallBelowPx: 17,
  largeAbovePx: 22,
} as const;

/** A grayscale image in [0, 1]: a square Float32Array (28*28, 32*32, ...) or pixels with a size. */
export type GrayImage = Float32Array | ArrayLike<number> | { data: ArrayLike<number>; height: number; width: number };

export interface Style {
  /** Estimated stroke width in pixels (2 * area / perimeter of the ink at >= 0.5). */
  thickness: number;
  /** Horizontal shift per unit of height; > 0 leans right (top to the right). */
  slant: number;
  slantDegrees: number;
  /** Bounding box of pixels > 0.2, in pixels. */
  boxHeight: number;
  boxWidth: number;
  /** Larger side of the bounding box, in pixels. */
  size: number;
  /** Mean pixel value (ink mass per pixel). */
  inkMass: number;
  words: {
    thickness: 'thin' | 'normal' | 'thick';
    slant: 'upright' | 'normal' | 'slanted';
    size: 'small' | 'normal' | 'large';
  };
}

function asImage(image: GrayImage): { data: ArrayLike<number>; height: number; width: number } {
  if ('data' in image && 'height' in image) return image;
  const arr = image as ArrayLike<number>;
  const side = Math.round(Math.sqrt(arr.length));
  if (side * side !== arr.length) {
    throw new Error(`captions: a bare pixel array must be square, got ${arr.length} pixels; pass {data, height, width}.`);
  }
  return { data: arr, height: side, width: side };
}

/** Measures stroke thickness, slant and size of the ink in a [0, 1] image. */
export function styleOf(image: GrayImage): Style {
  const { data, height: H, width: W } = asImage(image);
  let area = 0;
  let perimeter = 0;
  let mass = 0;
  let sx = 0;
  let sy = 0;
  let y0 = H;
  let y1 = -1;
  let x0 = W;
  let x1 = -1;
  const on = (y: number, x: number) => y >= 0 && y < H && x >= 0 && x < W && data[y * W + x] >= 0.5;
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const v = Math.max(0, data[y * W + x]);
      mass += v;
      sx += v * x;
      sy += v * y;
      if (v > 0.2) {
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
      }
      if (v >= 0.5) {
        area++;
        perimeter += +!on(y - 1, x) + +!on(y + 1, x) + +!on(y, x - 1) + +!on(y, x + 1);
      }
    }
  }
  let mu11 = 0;
  let mu02 = 0;
  if (mass > 0) {
    const cx = sx / mass;
    const cy = sy / mass;
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const v = Math.max(0, data[y * W + x]);
        mu11 += v * (x - cx) * (y - cy);
        mu02 += v * (y - cy) * (y - cy);
      }
    }
  }
  const thickness = perimeter > 0 ? (2 * area) / perimeter : 0;
  const slant = mu02 > 0 ? -mu11 / mu02 : 0;
  const slantDegrees = (Math.atan(slant) * 180) / Math.PI;
  const boxHeight = y1 >= y0 ? y1 - y0 + 1 : 0;
  const boxWidth = x1 >= x0 ? x1 - x0 + 1 : 0;
  const size = Math.max(boxHeight, boxWidth);
  const T = THRESHOLDS;
  const blank = area === 0;
  return {
    thickness,
    slant,
    slantDegrees,
    boxHeight,
    boxWidth,
    size,
    inkMass: mass / (H * W),
    words: {
      thickness: blank ? 'normal' : thickness < T.thinBelow ? 'thin' : thickness > T.thickAbove ? 'thick' : 'normal',
      slant: blank ? 'normal' : Math.abs(slantDegrees) >= T.slantedFromDegrees ? 'slanted' : Math.abs(slantDegrees) <= T.uprightToDegrees ? 'upright' : 'normal',
      size: blank ? 'normal' : size < T.smallBelowPx ? 'small' : size > T.largeAbovePx ? 'large' : 'normal',
    },
  };
}

/** "a" or "an" for the word that follows ("an eight", "an 8", "an upright 7", "a one"). */
export function article(next: string): 'a' | 'an' {
  const w = next.toLowerCase();
  if (w.startsWith('one')) return 'a';
  if (/^[aeiou8]/.test(w)) return 'an';
  return 'a';
}

function withArticle(rest: string): string {
  return `${article(rest)} ${rest}`;
}

/** The style words measured in `style` that are not 'normal', each as one synonym picked by `rng`. */
export function styleWords(style: Style, rng: Random): string[] {
  const out: string[] = [];
  const { thickness, slant, size } = style.words;
  if (size !== 'normal') out.push(rng.pick(STYLE_WORDS[size]));
  if (thickness !== 'normal') out.push(rng.pick(STYLE_WORDS[thickness]));
  if (slant !== 'normal') out.push(rng.pick(STYLE_WORDS[slant]));
  return out;
}

/**
 * A caption for a digit image. Deterministic given the image, the label and the state of `rng`
 * (pass a number to seed a fresh generator). About half the captions carry the measured style
 * words when the digit has any; the rest name the digit in one of several ways.
 */
export function captionFor(image: GrayImage, label: number, rng: Random | number = 0): string {
  if (!Number.isInteger(label) || label < 0 || label > 9) throw new Error(`captionFor: label must be a digit 0-9, got ${label}.`);
  const r = typeof rng === 'number' ? new Random(rng) : rng;
  const num = String(label);
  const word = DIGIT_WORDS[label];
  const name = () => (r.next() < 0.5 ? num : word);
  const styles = styleWords(styleOf(image), r);
  if (styles.length > 0 && r.next() < 0.5) {
    // Keep one, two or all of the measured words, in a random order, comma-separated.
    r.shuffle(styles);
    const kept = styles.slice(0, 1 + r.int(styles.length)).join(', ');
    return r.next() < 0.3 ? withArticle(`${kept} handwritten ${word}`) : withArticle(`${kept} ${name()}`);
  }
  switch (r.int(8)) {
    case 0:
      return num;
    case 1:
      return word;
    case 2:
      return `the digit ${name()}`;
    case 3:
      return `the number ${name()}`;
    case 4:
      return withArticle(`handwritten ${name()}`);
    case 5:
      return `a picture of ${withArticle(name())}`;
    case 6:
      return `the handwritten digit ${name()}`;
    default:
      return withArticle(`handwritten ${word}`);
  }
}

/** The canonical prompt for a digit, e.g. promptForDigit(7) = "a handwritten seven". */
export function promptForDigit(d: number): string {
  if (!Number.isInteger(d) || d < 0 || d > 9) throw new Error(`promptForDigit: expected a digit 0-9, got ${d}.`);
  return `a handwritten ${DIGIT_WORDS[d]}`;
}

/**
 * Captions: deterministic for a seed, varied, every word in CAPTION_VOCABULARY (and every
 * vocabulary word reachable), and style words that follow real measured changes to a digit:
 * dilating makes it "thick", shearing makes it "slanted", shrinking makes it "small".
 */
import { describe, it, expect } from 'vitest';
import { loadEmbeddedMnist, imageAt, padDataset, subset } from '../src/data/index.ts';
import { captionFor, styleOf, promptForDigit, article, CAPTION_VOCABULARY, CAPTION_PUNCTUATION, DIGIT_WORDS, STYLE_WORDS } from '../src/data/captions.ts';
import { Random } from '../src/util/random.ts';

const ds = loadEmbeddedMnist();
const S = 28;

function dilate(img: Float32Array): Float32Array {
  const out = new Float32Array(img.length);
  for (let y = 0; y < S; y++) {
    for (let x = 0; x < S; x++) {
      let m = 0;
      for (let dy = -1; dy <= 1; dy++) {
        for (let dx = -1; dx <= 1; dx++) {
          const yy = y + dy;
          const xx = x + dx;
          if (yy >= 0 && yy < S && xx >= 0 && xx < S) m = Math.max(m, img[yy * S + xx]);
        }
      }
      out[y * S + x] = m;
    }
  }
  return out;
}

/** Horizontal shear about the middle row: a pixel at height (13.5 - y) moves right by k times that. */
function shear(img: Float32Array, k: number): Float32Array {
  const out = new Float32Array(img.length);
  for (let y = 0; y < S; y++) {
    const shift = k * (13.5 - y);
    for (let x = 0; x < S; x++) {
      const sx = x - shift; // inverse map, linear interpolation along the row
      const x0 = Math.floor(sx);
      const f = sx - x0;
      const at = (xx: number) => (xx >= 0 && xx < S ? img[y * S + xx] : 0);
      out[y * S + x] = (1 - f) * at(x0) + f * at(x0 + 1);
    }
  }
  return out;
}

/** Scales the image about its centre by `s` (bilinear). */
function zoom(img: Float32Array, s: number): Float32Array {
  const out = new Float32Array(img.length);
  const c = 13.5;
  const at = (yy: number, xx: number) => (yy >= 0 && yy < S && xx >= 0 && xx < S ? img[yy * S + xx] : 0);
  for (let y = 0; y < S; y++) {
    for (let x = 0; x < S; x++) {
      const sy = c + (y - c) / s;
      const sx = c + (x - c) / s;
      const y0 = Math.floor(sy);
      const x0 = Math.floor(sx);
      const fy = sy - y0;
      const fx = sx - x0;
      out[y * S + x] =
        (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1)) + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1));
    }
  }
  return out;
}

/** The first digits with ordinary thickness, an upright stance and normal size. */
function ordinaryDigits(count: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < ds.n && out.length < count; i += 37) {
    const st = styleOf(imageAt(ds, i));
    if (st.words.thickness === 'normal' && st.words.size === 'normal' && st.thickness < 2.0 && Math.abs(st.slantDegrees) < 5) out.push(i);
  }
  return out;
}

const words = (caption: string) => caption.split(' ').map((w) => (CAPTION_PUNCTUATION.some((p) => w.endsWith(p)) ? w.slice(0, -1) : w));

describe('captions', () => {
  it('are deterministic for a seed and change with the seed', () => {
    const idx = Array.from({ length: 300 }, (_, k) => k * 33);
    const make = (seed: number) => {
      const rng = new Random(seed);
      return idx.map((i) => captionFor(imageAt(ds, i), ds.labels[i], rng));
    };
    const a = make(5);
    expect(make(5)).toEqual(a);
    const b = make(6);
    expect(b).not.toEqual(a);
    expect(a.filter((c, k) => c !== b[k]).length).toBeGreaterThan(100);
    expect(captionFor(imageAt(ds, 0), 0, 11)).toBe(captionFor(imageAt(ds, 0), 0, 11)); // numeric seed form
  });

  it('vary beyond the label: the listed forms all occur, and name the right digit', () => {
    const seven = ds.labels.indexOf(7);
    const rng = new Random(1);
    const seen = new Set<string>();
    for (let k = 0; k < 400; k++) seen.add(captionFor(imageAt(ds, seven + (k % 50)), 7, rng));
    for (const c of ['7', 'seven', 'the digit 7', 'the digit seven', 'the number 7', 'a handwritten seven', 'a handwritten 7']) {
      expect(seen, c).toContain(c);
    }
    expect(seen.size).toBeGreaterThan(12);
    for (const c of seen) {
      const w = words(c);
      expect(w.includes('7') || w.includes('seven'), c).toBe(true);
      for (const d of DIGIT_WORDS.filter((x) => x !== 'seven')) expect(w).not.toContain(d);
    }
  });

  it('use only CAPTION_VOCABULARY, and every vocabulary word can occur', () => {
    const vocab = new Set(CAPTION_VOCABULARY);
    const used = new Set<string>();
    const rng = new Random(2);
    const add = (img: Float32Array, label: number) => {
      const c = captionFor(img, label, rng);
      expect(c).toBe(c.trim());
      expect(c).not.toMatch(/ {2}|,,| ,|,$/);
      for (const w of words(c)) {
        expect(vocab.has(w), `"${w}" in "${c}"`).toBe(true);
        used.add(w);
      }
    };
    for (let i = 0; i < ds.n; i++) add(imageAt(ds, i), ds.labels[i]);
    // MNIST digits are all drawn in a 20x20 box, so none is "large" or "small" as-is: add zoomed ones.
    for (let i = 0; i < 600; i += 3) add(zoom(imageAt(ds, i) as Float32Array, 1.35), ds.labels[i]);
    for (let i = 1; i < 600; i += 3) add(zoom(imageAt(ds, i) as Float32Array, 0.5), ds.labels[i]);
    expect([...vocab].filter((w) => !used.has(w))).toEqual([]);
  });

  it('articles agree with the next word', () => {
    expect(article('eight')).toBe('an');
    expect(article('8')).toBe('an');
    expect(article('upright')).toBe('an');
    expect(article('one')).toBe('a');
    expect(article('7')).toBe('a');
    const rng = new Random(3);
    const eight = ds.labels.indexOf(8);
    for (let k = 0; k < 300; k++) {
      const c = captionFor(imageAt(ds, eight + (k % 40)), 8, rng);
      expect(c).not.toMatch(/\ba (8|eight|upright)\b/);
    }
  });

  it('promptForDigit gives "a handwritten <word>"', () => {
    expect(promptForDigit(7)).toBe('a handwritten seven');
    expect(promptForDigit(0)).toBe('a handwritten zero');
    expect(() => promptForDigit(10)).toThrow(/digit 0-9/);
    expect(() => captionFor(imageAt(ds, 0), 12, 0)).toThrow(/label/);
  });
});

describe('style words follow measured changes', () => {
  const picks = ordinaryDigits(6);

  it('found ordinary digits to start from', () => {
    expect(picks.length).toBe(6);
  });

  it('dilating a digit makes it measurably thicker and "thick"', () => {
    for (const i of picks) {
      const img = imageAt(ds, i) as Float32Array;
      const before = styleOf(img);
      const after = styleOf(dilate(img));
      expect(after.thickness - before.thickness).toBeGreaterThan(0.8); // one pixel each side ~ +2 px in theory
      expect(after.words.thickness).toBe('thick');
      expect(before.words.thickness).toBe('normal');
      expect(after.inkMass).toBeGreaterThan(before.inkMass * 1.4);
      // The captions of the dilated digit use a thickness word sometimes; the original's never do.
      const thick = new Set<string>(STYLE_WORDS.thick);
      const withThick = (x: Float32Array) => {
        const rng = new Random(i);
        let n = 0;
        for (let k = 0; k < 100; k++) if (words(captionFor(x, ds.labels[i], rng)).some((w) => thick.has(w))) n++;
        return n;
      };
      expect(withThick(img)).toBe(0);
      expect(withThick(dilate(img))).toBeGreaterThan(10);
    }
  });

  it('shearing a digit changes the measured slant by the shear and makes it "slanted"', () => {
    for (const i of picks) {
      const img = imageAt(ds, i) as Float32Array;
      const before = styleOf(img);
      expect(before.words.slant).toBe('upright');
      for (const k of [0.6, -0.6]) {
        const after = styleOf(shear(img, k));
        // A shear x += k * height adds k to the slant (dx per unit height).
        expect(after.slant - before.slant).toBeCloseTo(k, 1);
        expect(after.words.slant).toBe('slanted');
        expect(Math.sign(after.slantDegrees)).toBe(Math.sign(k));
      }
      const small = styleOf(shear(img, 0.05));
      expect(small.words.slant).not.toBe('slanted');
    }
  });

  it('shrinking a digit makes it "small", enlarging makes it "large"; thickness scales too', () => {
    for (const i of picks) {
      const img = imageAt(ds, i) as Float32Array;
      const half = styleOf(zoom(img, 0.5));
      const big = styleOf(zoom(img, 1.35));
      expect(styleOf(img).words.size).toBe('normal');
      expect(half.words.size).toBe('small');
      expect(half.boxHeight).toBeLessThan(13);
      expect(big.words.size).toBe('large');
      expect(big.thickness).toBeGreaterThan(styleOf(img).thickness);
    }
  });

  it('padding to 32x32 (as training does) changes no measurement', () => {
    const padded = padDataset(subset(ds, Array.from({ length: 1000 }, (_, k) => k * 10)), 32);
    for (let k = 0; k < padded.n; k++) {
      const a = styleOf(imageAt(ds, k * 10));
      const b = styleOf(imageAt(padded, k));
      expect(b.words).toEqual(a.words);
      expect(b.thickness).toBeCloseTo(a.thickness, 9);
      expect(b.slant).toBeCloseTo(a.slant, 6);
    }
  });

  it('a blank image has no style words and still gets a caption', () => {
    const blank = new Float32Array(784);
    const st = styleOf(blank);
    expect(st.words).toEqual({ thickness: 'normal', slant: 'normal', size: 'normal' });
    expect(captionFor(blank, 3, 1)).toMatch(/3|three/);
  });
});

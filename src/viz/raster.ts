/**
 * A tiny RGBA drawing surface (what PNG grids, GIF frames and loss curves are drawn into), with
 * a built-in 3x5 pixel font for labels and numbers. No canvas dependency: pixels, rectangles,
 * lines and text, which is all sdlab's pictures need.
 */

export type RGB = readonly [number, number, number];

/**
 * 3x5 glyphs, row by row ('#' = ink). Lower-case letters draw as upper case; anything unknown
 * draws as '?'.
 */
const GLYPHS: Record<string, string> = {
  '0': '###|#.#|#.#|#.#|###', '1': '.#.|##.|.#.|.#.|###', '2': '###|..#|###|#..|###', '3': '###|..#|.##|..#|###',
  '4': '#.#|#.#|###|..#|..#', '5': '###|#..|###|..#|###', '6': '###|#..|###|#.#|###', '7': '###|..#|..#|.#.|.#.',
  '8': '###|#.#|###|#.#|###', '9': '###|#.#|###|..#|###',
  A: '.#.|#.#|###|#.#|#.#', B: '##.|#.#|##.|#.#|##.', C: '.##|#..|#..|#..|.##', D: '##.|#.#|#.#|#.#|##.',
  E: '###|#..|##.|#..|###', F: '###|#..|##.|#..|#..', G: '.##|#..|#.#|#.#|.##', H: '#.#|#.#|###|#.#|#.#',
  I: '###|.#.|.#.|.#.|###', J: '..#|..#|..#|#.#|.#.', K: '#.#|#.#|##.|#.#|#.#', L: '#..|#..|#..|#..|###',
  M: '#.#|###|###|#.#|#.#', N: '##.|#.#|#.#|#.#|#.#', O: '.#.|#.#|#.#|#.#|.#.', P: '##.|#.#|##.|#..|#..',
  Q: '.#.|#.#|#.#|##.|.##', R: '##.|#.#|##.|#.#|#.#', S: '.##|#..|.#.|..#|##.', T: '###|.#.|.#.|.#.|.#.',
  U: '#.#|#.#|#.#|#.#|###', V: '#.#|#.#|#.#|#.#|.#.', W: '#.#|#.#|###|###|#.#', X: '#.#|#.#|.#.|#.#|#.#',
  Y: '#.#|#.#|.#.|.#.|.#.', Z: '###|..#|.#.|#..|###',
  ' ': '...|...|...|...|...', '.': '...|...|...|...|.#.', ',': '...|...|...|.#.|#..', '-': '...|...|###|...|...',
  '+': '...|.#.|###|.#.|...', '=': '...|###|...|###|...', ':': '...|.#.|...|.#.|...', _: '...|...|...|...|###',
  '/': '..#|..#|.#.|#..|#..', '(': '.#.|#..|#..|#..|.#.', ')': '.#.|..#|..#|..#|.#.', '%': '#.#|..#|.#.|#..|#.#',
  '?': '###|..#|.#.|...|.#.',
};

export const GLYPH_WIDTH = 3;
export const GLYPH_HEIGHT = 5;

/** Width in pixels of `text` drawn at `scale` (glyphs 3 wide plus 1 pixel spacing). */
export function textWidth(text: string, scale = 1): number {
  return text.length === 0 ? 0 : (text.length * (GLYPH_WIDTH + 1) - 1) * scale;
}

export class Raster {
  readonly data: Uint8Array;

  constructor(
    readonly width: number,
    readonly height: number,
    background: RGB = [0, 0, 0],
  ) {
    if (!(width > 0 && height > 0 && Number.isInteger(width) && Number.isInteger(height))) {
      throw new Error(`Raster: bad size ${width}x${height}.`);
    }
    this.data = new Uint8Array(width * height * 4);
    this.fillRect(0, 0, width, height, background);
  }

  setPixel(x: number, y: number, c: RGB): void {
    x = Math.round(x);
    y = Math.round(y);
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return;
    const o = (y * this.width + x) * 4;
    this.data[o] = c[0];
    this.data[o + 1] = c[1];
    this.data[o + 2] = c[2];
    this.data[o + 3] = 255;
  }

  getPixel(x: number, y: number): [number, number, number] {
    const o = (y * this.width + x) * 4;
    return [this.data[o], this.data[o + 1], this.data[o + 2]];
  }

  fillRect(x: number, y: number, w: number, h: number, c: RGB): void {
    const x0 = Math.max(0, Math.round(x));
    const y0 = Math.max(0, Math.round(y));
    const x1 = Math.min(this.width, Math.round(x + w));
    const y1 = Math.min(this.height, Math.round(y + h));
    for (let yy = y0; yy < y1; yy++) {
      for (let xx = x0; xx < x1; xx++) {
        const o = (yy * this.width + xx) * 4;
        this.data[o] = c[0];
        this.data[o + 1] = c[1];
        this.data[o + 2] = c[2];
        this.data[o + 3] = 255;
      }
    }
  }

  /** A straight line (Bresenham), `thickness` pixels wide. */
  line(x0: number, y0: number, x1: number, y1: number, c: RGB, thickness = 1): void {
    x0 = Math.round(x0);
    y0 = Math.round(y0);
    x1 = Math.round(x1);
    y1 = Math.round(y1);
    const dx = Math.abs(x1 - x0);
    const dy = -Math.abs(y1 - y0);
    const sx = x0 < x1 ? 1 : -1;
    const sy = y0 < y1 ? 1 : -1;
    let err = dx + dy;
    const off = Math.floor((thickness - 1) / 2);
    for (;;) {
      if (thickness <= 1) this.setPixel(x0, y0, c);
      else this.fillRect(x0 - off, y0 - off, thickness, thickness, c);
      if (x0 === x1 && y0 === y1) break;
      const e2 = 2 * err;
      if (e2 >= dy) {
        err += dy;
        x0 += sx;
      }
      if (e2 <= dx) {
        err += dx;
        y0 += sy;
      }
    }
  }

  /** Draws `text` with its top-left corner at (x, y), each font pixel `scale` x `scale`. */
  text(x: number, y: number, text: string, c: RGB, scale = 1): void {
    let cx = Math.round(x);
    for (const ch of text) {
      const glyph = GLYPHS[ch] ?? GLYPHS[ch.toUpperCase()] ?? GLYPHS['?'];
      const rows = glyph.split('|');
      for (let gy = 0; gy < GLYPH_HEIGHT; gy++) {
        for (let gx = 0; gx < GLYPH_WIDTH; gx++) {
          if (rows[gy][gx] === '#') this.fillRect(cx + gx * scale, y + gy * scale, scale, scale, c);
        }
      }
      cx += (GLYPH_WIDTH + 1) * scale;
    }
  }

  /**
   * Copies a float image (values in [0, 1], clipped; 1 or 3 channels, HWC) with its top-left at
   * (x, y), each source pixel drawn as a `scale` x `scale` block (nearest neighbour).
   */
  drawImage(x: number, y: number, img: FloatImage, scale = 1): void {
    const ch = img.channels ?? 1;
    const to8 = (v: number) => (v >= 1 ? 255 : v > 0 ? Math.round(v * 255) : 0); // NaN -> 0
    for (let iy = 0; iy < img.height; iy++) {
      for (let ix = 0; ix < img.width; ix++) {
        const o = (iy * img.width + ix) * ch;
        const r = to8(img.data[o]);
        const c: RGB = ch === 1 ? [r, r, r] : [r, to8(img.data[o + 1]), to8(img.data[o + 2])];
        this.fillRect(x + ix * scale, y + iy * scale, scale, scale, c);
      }
    }
  }
}

/** A float image: HWC pixels in [0, 1], 1 (gray) or 3 (RGB) channels. */
export interface FloatImage {
  data: ArrayLike<number>;
  height: number;
  width: number;
  channels?: 1 | 3;
}

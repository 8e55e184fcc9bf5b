/**
 * A NoiseGenerator that replays recorded random draws (the fixtures' `<case>.randn.<i>`, drawn by
 * upstream diffusers in NCHW) instead of drawing: draw i returns recorded tensor i transposed to
 * sdlab's NHWC, so a pipeline fed through it consumes exactly upstream's noise. A draw of another
 * size, or one more than was recorded, throws (that is a bug in the draw order).
 */
import type { NoiseGenerator } from '../../src/schedule/base.ts';

export interface RecordedDraw {
  /** Shape as recorded, NCHW [B, C, H, W]. */
  shape: number[];
  data: Float32Array;
}

export class ReplayNoise implements NoiseGenerator {
  /** How many draws were consumed so far. */
  used = 0;

  constructor(private readonly draws: readonly RecordedDraw[]) {}

  normalArray(n: number): Float32Array {
    const d = this.draws[this.used];
    if (!d) throw new Error(`ReplayNoise: draw #${this.used} asked for, but only ${this.draws.length} were recorded.`);
    if (d.data.length !== n) throw new Error(`ReplayNoise: draw #${this.used} asked for ${n} numbers, the recorded one has ${d.data.length} [${d.shape}].`);
    this.used++;
    return nchwToNhwc(d.data, d.shape);
  }
}

/** [B, C, H, W] C-order data → the same values in [B, H, W, C] order. */
export function nchwToNhwc(data: Float32Array, shape: readonly number[]): Float32Array {
  const [b, c, h, w] = shape;
  const out = new Float32Array(data.length);
  for (let n = 0; n < b; n++)
    for (let k = 0; k < c; k++)
      for (let y = 0; y < h; y++)
        for (let x = 0; x < w; x++) out[((n * h + y) * w + x) * c + k] = data[((n * c + k) * h + y) * w + x];
  return out;
}

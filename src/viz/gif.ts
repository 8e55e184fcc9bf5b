/**
 * Animated GIFs (gifenc): a list of Raster frames -> one .gif file.
 *
 *   await saveGif('out/noise/noise.gif', frames, { delayMs: 80 });
 *
 * Gray frames (r = g = b everywhere, as for digits) use a fixed 256-level gray palette, so the
 * gray values are stored exactly; colour frames get a 256-colour palette quantized per frame.
 */
import * as gifencModule from 'gifenc';
import { writeFileAtomic } from '../util/fs.ts';
import type { Raster } from './raster.ts';

// gifenc ships CommonJS (Node's `main`) and ESM (bundlers' `module`, which vitest picks): take the
// named exports from whichever shape we were handed.
const loaded = gifencModule as unknown as Record<string, unknown> & { default: typeof gifencModule.default };
const gifenc = ('GIFEncoder' in loaded ? loaded : loaded.default) as typeof gifencModule.default;
const { GIFEncoder, quantize, applyPalette } = gifenc;

export interface GifOptions {
  /** Delay per frame in milliseconds (GIF stores hundredths of a second). Default 100. */
  delayMs?: number;
  /** Extra delay on the last frame, so the loop pauses at the end. Default 0. */
  lastFrameDelayMs?: number;
  /** 0 = loop forever (default), -1 = play once, n > 0 = repeat n times. */
  repeat?: number;
}

const GRAY_PALETTE = Array.from({ length: 256 }, (_, i) => [i, i, i]);

function isGray(rgba: Uint8Array): boolean {
  for (let i = 0; i < rgba.length; i += 4) if (rgba[i] !== rgba[i + 1] || rgba[i] !== rgba[i + 2]) return false;
  return true;
}

/** Encodes frames (all the same size) as GIF bytes. */
export function encodeGif(frames: readonly Raster[], opts: GifOptions = {}): Uint8Array {
  if (frames.length === 0) throw new Error('encodeGif: no frames.');
  const { width, height } = frames[0];
  const gif = GIFEncoder();
  const delay = opts.delayMs ?? 100;
  // The first frame's palette becomes the global one; later gray frames reuse it when it is gray.
  const firstGray = isGray(frames[0].data);
  frames.forEach((f, i) => {
    if (f.width !== width || f.height !== height) throw new Error(`encodeGif: frame ${i} is ${f.width}x${f.height}, expected ${width}x${height}.`);
    const frameDelay = delay + (i === frames.length - 1 ? (opts.lastFrameDelayMs ?? 0) : 0);
    if (isGray(f.data)) {
      const index = new Uint8Array(width * height);
      for (let p = 0; p < index.length; p++) index[p] = f.data[p * 4];
      gif.writeFrame(index, width, height, { palette: i === 0 || !firstGray ? GRAY_PALETTE : undefined, delay: frameDelay, repeat: opts.repeat ?? 0 });
    } else {
      const palette = quantize(f.data, 256);
      gif.writeFrame(applyPalette(f.data, palette), width, height, { palette, delay: frameDelay, repeat: opts.repeat ?? 0 });
    }
  });
  gif.finish();
  return gif.bytes();
}

/** Writes frames to `file` as an animated GIF (atomically). */
export async function saveGif(file: string, frames: readonly Raster[], opts: GifOptions = {}): Promise<void> {
  await writeFileAtomic(file, encodeGif(frames, opts));
}

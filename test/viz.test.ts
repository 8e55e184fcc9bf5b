/**
 * Pictures: PNG grids decode to exactly the pixels given (clipped, upscaled), labels draw, GIFs
 * decode (omggif) to the right frames, loss curves go the way the data goes, and writeFileAtomic
 * never leaves a half-written or temporary file behind.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PNG } from 'pngjs';
import { GifReader } from 'omggif';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { saveImageGrid, renderGrid, encodePng, encodeGif, saveGif, saveLossCurve, renderLossCurve, niceTicks, formatTick, Raster, PALETTE, type FloatImage } from '../src/viz/index.ts';
import { writeFileAtomic, writeFileAtomicSync } from '../src/util/fs.ts';
import { Random } from '../src/util/random.ts';

let tmp: string;
beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-viz-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const readPng = (file: string) => PNG.sync.read(fs.readFileSync(file));
const to8 = (v: number) => (Number.isNaN(v) ? 0 : Math.round(Math.min(1, Math.max(0, v)) * 255));

function randomImages(n: number, h: number, w: number, seed: number, channels: 1 | 3 = 1): FloatImage[] {
  const r = new Random(seed);
  return Array.from({ length: n }, () => ({ data: Float32Array.from({ length: h * w * channels }, () => r.uniformRange(-0.3, 1.3)), height: h, width: w, channels }));
}

describe('image grids (PNG)', () => {
  it('decode to the given pixels: upscaled blocks, clipped to [0, 1], at the documented positions', async () => {
    const imgs = randomImages(5, 6, 7, 1);
    (imgs[0].data as Float32Array)[0] = NaN;
    const file = path.join(tmp, 'grid.png');
    await saveImageGrid(file, imgs, { cols: 3, pad: 2, scale: 2 });
    const png = readPng(file);
    // Independent layout arithmetic: pad + cols * (w*scale + pad) by pad + rows * (h*scale + pad).
    expect([png.width, png.height]).toEqual([2 + 3 * (14 + 2), 2 + 2 * (12 + 2)]);
    imgs.forEach((img, i) => {
      const x0 = 2 + (i % 3) * 16;
      const y0 = 2 + Math.floor(i / 3) * 14;
      for (let y = 0; y < 12; y++) {
        for (let x = 0; x < 14; x++) {
          const v = to8(img.data[Math.floor(y / 2) * 7 + Math.floor(x / 2)]);
          const o = ((y0 + y) * png.width + x0 + x) * 4;
          expect([png.data[o], png.data[o + 1], png.data[o + 2], png.data[o + 3]]).toEqual([v, v, v, 255]);
        }
      }
    });
    // Clipping happened: both extremes are present.
    let zeros = 0;
    let fulls = 0;
    for (let i = 0; i < png.data.length; i += 4) {
      if (png.data[i] === 0) zeros++;
      if (png.data[i] === 255) fulls++;
    }
    expect(zeros).toBeGreaterThan(20);
    expect(fulls).toBeGreaterThan(20);
    // The empty 6th cell keeps the background.
    const o = ((2 + 14 + 5) * png.width + 2 + 2 * 16 + 5) * 4;
    expect(png.data[o]).toBe(40);
  });

  it('a tensor [N,H,W,1] draws exactly like the same images as arrays; RGB keeps its colours', async () => {
    const imgs = randomImages(4, 5, 5, 2);
    const t = tf.tensor4d(Float32Array.from(imgs.flatMap((i) => Array.from(i.data))), [4, 5, 5, 1]);
    expect(Buffer.compare(encodePng(renderGrid(t, { cols: 2 })), encodePng(renderGrid(imgs, { cols: 2 })))).toBe(0);
    t.dispose();
    const rgb = randomImages(1, 3, 4, 3, 3);
    const r = renderGrid(rgb, { pad: 0 });
    for (let y = 0; y < 3; y++) {
      for (let x = 0; x < 4; x++) {
        const o = (y * 4 + x) * 3;
        expect(r.getPixel(x, y)).toEqual([to8(rgb[0].data[o]), to8(rgb[0].data[o + 1]), to8(rgb[0].data[o + 2])]);
      }
    }
    expect(() => renderGrid([imgs[0], { data: new Float32Array(4), height: 2, width: 2 }])).toThrow(/image 1 is 2x2, expected 5x5/);
  });

  it('row/column labels and a title widen the picture and put text pixels in the margins', () => {
    const imgs = randomImages(4, 8, 8, 4);
    const plain = renderGrid(imgs, { cols: 2 });
    const labelled = renderGrid(imgs, { cols: 2, rowLabels: ['linear', 'cosine'], colLabels: ['t=0', 't=999'], title: 'x_t' });
    expect(labelled.width).toBeGreaterThan(plain.width);
    expect(labelled.height).toBeGreaterThan(plain.height);
    const textPixels = (r: Raster, x0: number, x1: number, y0: number, y1: number) => {
      let n = 0;
      for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) if (r.getPixel(x, y)[0] === 235) n++;
      return n;
    };
    const left = labelled.width - plain.width;
    const top = labelled.height - plain.height;
    expect(textPixels(labelled, 0, left, top, labelled.height)).toBeGreaterThan(20); // row labels
    expect(textPixels(labelled, left, labelled.width, 0, top)).toBeGreaterThan(10); // column labels + title
  });

  it('the font draws each digit differently, and lower case as upper case', () => {
    const bitmaps = new Set<string>();
    for (const ch of '0123456789') {
      const r = new Raster(3, 5);
      r.text(0, 0, ch, [255, 255, 255]);
      bitmaps.add(Array.from(r.data).join(','));
    }
    expect(bitmaps.size).toBe(10);
    const a = new Raster(30, 5);
    a.text(0, 0, 'loss', [255, 255, 255]);
    const b = new Raster(30, 5);
    b.text(0, 0, 'LOSS', [255, 255, 255]);
    expect(Array.from(a.data)).toEqual(Array.from(b.data));
  });
});

describe('GIF', () => {
  it('gray frames decode (omggif) to the exact gray values, frame count, size and delay', async () => {
    const frames = [0, 1, 2].map((k) => renderGrid(randomImages(2, 6, 6, 10 + k), { cols: 2, pad: 1 }));
    const file = path.join(tmp, 'anim.gif');
    await saveGif(file, frames, { delayMs: 70, lastFrameDelayMs: 500 });
    const bytes = fs.readFileSync(file);
    expect(bytes.subarray(0, 6).toString('latin1')).toBe('GIF89a');
    const gif = new GifReader(bytes);
    expect(gif.numFrames()).toBe(3);
    expect([gif.width, gif.height]).toEqual([frames[0].width, frames[0].height]);
    expect(gif.loopCount()).toBe(0);
    expect(gif.frameInfo(0).delay).toBe(7);
    expect(gif.frameInfo(2).delay).toBe(57);
    for (let k = 0; k < 3; k++) {
      const rgba = new Uint8Array(gif.width * gif.height * 4);
      gif.decodeAndBlitFrameRGBA(k, rgba);
      expect(Array.from(rgba)).toEqual(Array.from(frames[k].data));
    }
  });

  it('colour frames are quantized to close colours', () => {
    const r = new Raster(8, 4, [200, 30, 30]);
    r.fillRect(4, 0, 4, 4, [20, 180, 60]);
    const gif = new GifReader(Buffer.from(encodeGif([r])));
    const rgba = new Uint8Array(8 * 4 * 4);
    gif.decodeAndBlitFrameRGBA(0, rgba);
    for (const [x, c] of [[1, [200, 30, 30]], [6, [20, 180, 60]]] as const) {
      for (let ch = 0; ch < 3; ch++) expect(Math.abs(rgba[(2 * 8 + x) * 4 + ch] - c[ch])).toBeLessThanOrEqual(8);
    }
    expect(() => encodeGif([])).toThrow(/no frames/);
  });
});

describe('loss curves', () => {
  /** Mean row of the pixels of colour c in columns [x0, x1). */
  function meanRow(png: { width: number; height: number; data: Uint8Array }, c: readonly number[], x0: number, x1: number): number {
    let s = 0;
    let n = 0;
    for (let y = 0; y < png.height; y++) {
      for (let x = x0; x < x1; x++) {
        const o = (y * png.width + x) * 4;
        if (png.data[o] === c[0] && png.data[o + 1] === c[1] && png.data[o + 2] === c[2]) {
          s += y;
          n++;
        }
      }
    }
    expect(n).toBeGreaterThan(0);
    return s / n;
  }

  it('a falling loss is drawn falling and a rising one rising, each in its colour', async () => {
    const file = path.join(tmp, 'loss.png');
    const down = Array.from({ length: 200 }, (_, i) => 1 / (1 + i / 20));
    const up = Array.from({ length: 200 }, (_, i) => 0.2 + i / 400);
    await saveLossCurve(file, [{ name: 'down', values: down }, { name: 'up', values: up }], { width: 500, height: 300, title: 'loss', xLabel: 'step' });
    const png = readPng(file);
    expect([png.width, png.height]).toEqual([500, 300]);
    // Skip the legend corner (top right) when measuring.
    expect(meanRow(png, PALETTE[0], 90, 200)).toBeLessThan(meanRow(png, PALETTE[0], 300, 380));
    expect(meanRow(png, PALETTE[1], 90, 200)).toBeGreaterThan(meanRow(png, PALETTE[1], 300, 380));
  });

  it('copes with NaN, a single point, a constant series, and log vs linear axes differ', () => {
    expect(() => renderLossCurve([1, NaN, 0.5, Infinity, 0.25])).not.toThrow();
    expect(() => renderLossCurve([0.3])).not.toThrow();
    expect(() => renderLossCurve([2, 2, 2])).not.toThrow();
    const spread = Array.from({ length: 50 }, (_, i) => 10 ** (-i / 10));
    const log = renderLossCurve(spread, { logY: true });
    const lin = renderLossCurve(spread, { logY: false });
    expect(Array.from(log.data)).not.toEqual(Array.from(lin.data));
    expect(Array.from(renderLossCurve(spread).data)).toEqual(Array.from(log.data)); // auto picks log for a 1e5 span
    expect(() => renderLossCurve([1, 2], { width: 30, height: 30 })).toThrow(/too small/);
  });

  it('tick helpers', () => {
    expect(niceTicks(0, 1)).toEqual([0, 0.2, 0.4, 0.6000000000000001, 0.8, 1]);
    expect(niceTicks(0, 1000, 5)).toEqual([0, 200, 400, 600, 800, 1000]);
    expect(formatTick(0.1)).toBe('0.1');
    expect(formatTick(1500)).toBe('1500');
    expect(formatTick(1e-4)).toBe('1E-4');
    expect(formatTick(2.5e6)).toBe('2.5E6');
  });
});

describe('writeFileAtomic', () => {
  it('writes, overwrites, creates directories and leaves no temporary files', async () => {
    const dir = path.join(tmp, 'atomic', 'deep');
    const file = path.join(dir, 'a.bin');
    await writeFileAtomic(file, new Uint8Array([1, 2, 3]));
    expect(Array.from(fs.readFileSync(file))).toEqual([1, 2, 3]);
    await writeFileAtomic(file, 'hello');
    expect(fs.readFileSync(file, 'utf8')).toBe('hello');
    writeFileAtomicSync(file, 'sync');
    expect(fs.readFileSync(file, 'utf8')).toBe('sync');
    expect(fs.readdirSync(dir)).toEqual(['a.bin']);
  });

  it('on failure keeps the old target and removes its temporary file', async () => {
    const dir = path.join(tmp, 'atomic-fail');
    const target = path.join(dir, 'out.png');
    fs.mkdirSync(target, { recursive: true }); // a directory where the file should go: rename fails
    fs.writeFileSync(path.join(target, 'keep'), 'x');
    await expect(writeFileAtomic(target, 'data')).rejects.toThrow();
    expect(() => writeFileAtomicSync(target, 'data')).toThrow();
    expect(fs.readdirSync(dir)).toEqual(['out.png']);
    expect(fs.readFileSync(path.join(target, 'keep'), 'utf8')).toBe('x');
  });

  it('a reader polling during many rewrites only ever sees complete files', async () => {
    const file = path.join(tmp, 'race.bin');
    const a = new Uint8Array(200_000).fill(1);
    const b = new Uint8Array(300_000).fill(2);
    await writeFileAtomic(file, a);
    let done = false;
    const seen = new Set<string>();
    const reader = (async () => {
      while (!done) {
        const buf = fs.readFileSync(file);
        const ok = (buf.length === a.length && buf.every((v) => v === 1)) || (buf.length === b.length && buf.every((v) => v === 2));
        seen.add(ok ? String(buf.length) : `torn ${buf.length}`);
        await new Promise((r) => setImmediate(r));
      }
    })();
    for (let i = 0; i < 30; i++) await writeFileAtomic(file, i % 2 ? a : b);
    done = true;
    await reader;
    expect([...seen].filter((s) => s.startsWith('torn'))).toEqual([]);
  });
});

/**
 * Tiny image folders for the own-data tests: the helpers' 8×8 digits (tiny-data.ts) written as
 * PNG files in the two layouts sdlab reads, plus a small Fashion-MNIST slice pooled to 8×8.
 *
 *   DIR/<word>_digit/00000.png ...     the label-folder layout ("zero digit", "one digit", ...)
 *   DIR/metadata.jsonl + DIR/img/*.png {"file_name": "img/00000.png", "text": "a <word> drawn by hand"}
 *
 * Odd-numbered images are written as RGB PNGs (gray replicated), the others as grayscale, so both
 * colour types go through the reader; both decode to the same gray values.
 */
import fs from 'node:fs';
import path from 'node:path';
import { PNG } from 'pngjs';
import { DIGIT_WORDS } from '../../src/data/captions.ts';
import { loadIdxDataset } from '../../src/data/index.ts';
import { writeTinyIdx } from './tiny-data.ts';

/** 8-bit gray pixels (H*W) as a PNG file: grayscale (colorType 0) or RGB (colorType 2). */
export function writeGrayPng(file: string, gray: Uint8Array, size: number, rgb = false): void {
  const png = new PNG({ width: size, height: size });
  for (let i = 0; i < size * size; i++) png.data.set([gray[i], gray[i], gray[i], 255], 4 * i);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, PNG.sync.write(png, { colorType: rgb ? 2 : 0 }));
}

/** The n tiny digits as 8-bit pixels and labels (the same ones writeTinyIdx writes). */
export function tinyDigitBytes(tmp: string, n: number): { pixels: Uint8Array[]; labels: number[] } {
  const dir = path.join(tmp, `.idx-${n}`);
  writeTinyIdx(dir, n);
  const ds = loadIdxDataset(dir);
  fs.rmSync(dir, { recursive: true, force: true });
  const px = ds.height * ds.width;
  return {
    pixels: Array.from({ length: n }, (_, i) => Uint8Array.from(ds.images.subarray(i * px, (i + 1) * px), (v) => Math.round(v * 255))),
    labels: Array.from(ds.labels),
  };
}

/** The class folder of digit d in the label-folder layout ('_' reads as a space: "seven digit"). */
export const folderName = (d: number) => `${DIGIT_WORDS[d]}_digit`;

/** The text of digit d in the metadata.jsonl layout. */
export const jsonlText = (d: number) => `a ${DIGIT_WORDS[d]} drawn by hand`;

/** Writes `n` tiny digits to `dir` in the given layout. */
export function writeTinyFolder(dir: string, n: number, layout: 'labels' | 'jsonl'): void {
  const { pixels, labels } = tinyDigitBytes(path.dirname(dir), n);
  const lines: string[] = [];
  pixels.forEach((p, i) => {
    const name = `${String(i).padStart(5, '0')}.png`;
    if (layout === 'labels') {
      writeGrayPng(path.join(dir, folderName(labels[i]), name), p, 8, i % 2 === 1);
    } else {
      writeGrayPng(path.join(dir, 'img', name), p, 8, i % 2 === 1);
      lines.push(JSON.stringify({ file_name: `img/${name}`, text: jsonlText(labels[i]) }));
    }
  });
  if (layout === 'jsonl') fs.writeFileSync(path.join(dir, 'metadata.jsonl'), lines.join('\n') + '\n');
}

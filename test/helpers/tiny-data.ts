/**
 * Shared setup of the trainer tests: tiny digit data on disk and the CLI.
 *
 * The digits are real MNIST digits, padded to 32×32 and average-pooled 4×4 to 8×8, written as IDX
 * files so both the trainers (opts.data) and the CLI (--data) read them; the same seeded pick
 * every time, so every test trains on the same digits.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { loadEmbeddedMnist, padDataset } from '../../src/data/index.ts';
import { Random } from '../../src/util/random.ts';

/** The repository root: the CLI runs from here. */
export const ROOT = path.resolve(__dirname, '../..');

/** `n` MNIST digits pooled to 8×8, as train-images/train-labels IDX files in `dir`. */
export function writeTinyIdx(dir: string, n: number): void {
  const ds = padDataset(loadEmbeddedMnist(), 32);
  const pick = new Random(3).permutation(ds.n).subarray(0, n);
  const S = 8;
  const px = new Uint8Array(n * S * S);
  const labels = new Uint8Array(n);
  pick.forEach((i, k) => {
    labels[k] = ds.labels[i];
    for (let y = 0; y < S; y++) {
      for (let x = 0; x < S; x++) {
        let s = 0;
        for (let dy = 0; dy < 4; dy++) for (let dx = 0; dx < 4; dx++) s += ds.images[i * 1024 + (4 * y + dy) * 32 + 4 * x + dx];
        px[k * S * S + y * S + x] = Math.round(Math.min(1, (s / 16) * 1.5) * 255);
      }
    }
  });
  const header = (magic: number, dims: number[]) => {
    const b = Buffer.alloc(4 + 4 * dims.length);
    b.writeUInt32BE(magic, 0);
    dims.forEach((d, i) => b.writeUInt32BE(d, 4 + 4 * i));
    return b;
  };
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'train-images-idx3-ubyte'), Buffer.concat([header(0x803, [n, S, S]), px]));
  fs.writeFileSync(path.join(dir, 'train-labels-idx1-ubyte'), Buffer.concat([header(0x801, [n]), labels]));
}

/** A fresh temporary directory (`tmp`, named after `prefix`) with `n` tiny digits in `dataDir` = <tmp>/digits8. */
export function tinyDigitsDir(prefix: string, n: number): { tmp: string; dataDir: string } {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const dataDir = path.join(tmp, 'digits8');
  writeTinyIdx(dataDir, n);
  return { tmp, dataDir };
}

const execFileAsync = promisify(execFile);

/** Runs `sdlab <args>` (bin/sdlab.mjs from the repository root); rejects on a non-zero exit, with code, stdout and stderr. */
export function sdlab(args: string[]): Promise<{ stdout: string; stderr: string }> {
  return execFileAsync(process.execPath, ['bin/sdlab.mjs', ...args], { cwd: ROOT });
}

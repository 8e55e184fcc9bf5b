/**
 * `sdlab train all` end to end on the `tiny` preset (a few steps of tiny models on 16 digits):
 *   - the CLI trains VAE → CLIP → UNet into one run directory (8×8 digits from IDX files), writes the sample sheet and says
 *     where everything is; `sdlab sample` reads the run it made;
 *   - running it again skips every finished stage; a run trained with other settings is refused;
 *   - the UNet stage of a run without clip/ names `npx sdlab train clip`.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { PNG } from 'pngjs';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { loadEmbeddedMnist, padDataset } from '../src/data/index.ts';
import { Random } from '../src/util/random.ts';
import { readStateInfo, statePath } from '../src/train/state.ts';
import { TINY_PRESET, TRAIN_ALL_PRESETS } from '../src/train/presets.ts';
import { stageState, trainAll } from '../src/train/all.ts';
import { trainUnet } from '../src/train/unet.ts';

const ROOT = path.resolve(__dirname, '..');
const run = promisify(execFile);

let tmp: string;
let dataDir: string;
let runDir: string;
let stdout: string;

/** 60 MNIST digits, padded to 32×32 and average-pooled 4×4 to 8×8, as IDX files. */
function writeTinyIdx(dir: string): void {
  const ds = padDataset(loadEmbeddedMnist(), 32);
  const n = 60;
  const pick = new Random(3).permutation(ds.n).subarray(0, n);
  const S = 8;
  const px = new Uint8Array(n * S * S);
  const labels = new Uint8Array(n);
  pick.forEach((i, k) => {
    labels[k] = ds.labels[i]!;
    for (let y = 0; y < S; y++) {
      for (let x = 0; x < S; x++) {
        let s = 0;
        for (let dy = 0; dy < 4; dy++) for (let dx = 0; dx < 4; dx++) s += ds.images[i * 1024 + (4 * y + dy) * 32 + 4 * x + dx]!;
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

beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-train-all-'));
  runDir = path.join(tmp, 'run');
  dataDir = path.join(tmp, 'digits8');
  writeTinyIdx(dataDir);
  ({ stdout } = await run(process.execPath, ['bin/sdlab.mjs', 'train', 'all', '--preset', 'tiny', '--data', dataDir, '--backend', 'cpu', '--run', runDir], { cwd: ROOT }));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('train all', () => {
  it('trains every stage into one run and prints where everything is', () => {
    for (const stage of ['vae', 'clip', 'unet'] as const) {
      const info = readStateInfo(statePath(runDir, stage));
      const want = TINY_PRESET[stage];
      expect(info.step, stage).toBe(want.epochs * Math.floor(want.limit! / want.batchSize));
      expect(stdout).toMatch(new RegExp(`${stage}\\s+trained`));
    }
    for (const f of ['vae/config.json', 'clip/tokenizer.json', 'unet/diffusion_pytorch_model.safetensors', 'scheduler/scheduler_config.json', 'train/unet/samples.png', 'train/all.json']) {
      expect(fs.existsSync(path.join(runDir, f)), f).toBe(true);
    }
    const summary = JSON.parse(fs.readFileSync(path.join(runDir, 'train/all.json'), 'utf8'));
    expect(summary.preset).toBe('tiny');
    expect(summary.stages.map((s: { stage: string }) => s.stage)).toEqual(['vae', 'clip', 'unet']);
    // The sample sheet: one row per digit, prompts "a handwritten <digit>".
    const sheet = JSON.parse(fs.readFileSync(path.join(runDir, 'samples/samples.json'), 'utf8'));
    expect(sheet.map((r: { digit: number }) => r.digit)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(sheet[7].prompt).toBe('a handwritten seven');
    expect(stdout).toMatch(/sample sheet: .*samples[/\\]grid\.png/);
    expect(stdout).toMatch(/npx sdlab sample --run /);
  });

  it('leaves a run `sdlab sample` reads (paraphrases, "" and unknown words included)', async () => {
    const out = path.join(tmp, 'sampled');
    const res = await run(
      process.execPath,
      ['bin/sdlab.mjs', 'sample', '--backend', 'cpu', '--run', runDir, '--prompt', 'the number 7', '--prompt', '', '--prompt', 'a zebra 7', '--n', '2', '--steps', '2', '--out', out],
      { cwd: ROOT },
    );
    expect(res.stdout).toMatch(/6 images \(3 prompts × 2\)/);
    const png = PNG.sync.read(fs.readFileSync(path.join(out, '0000.png')));
    expect([png.width, png.height]).toEqual([8, 8]);
    const records = JSON.parse(fs.readFileSync(path.join(out, 'samples.json'), 'utf8'));
    expect(records.map((r: { digit: number | null }) => r.digit)).toEqual([7, 7, null, null, 7, 7]);
  });

  it('skips finished stages when run again, and refuses a run made with other settings', async () => {
    const before = fs.statSync(statePath(runDir, 'unet')).mtimeMs;
    const res = await trainAll({ runDir, preset: TINY_PRESET, presetName: 'tiny', data: dataDir, quiet: true, noSheet: true, handleSigint: false });
    expect(res.stages.map((s) => s.status)).toEqual(['skipped', 'skipped', 'skipped']);
    expect(fs.statSync(statePath(runDir, 'unet')).mtimeMs).toBe(before);
    expect(stageState(runDir, 'unet', TRAIN_ALL_PRESETS.quick.unet)).toHaveProperty('mismatch');
    await expect(trainAll({ runDir, preset: TRAIN_ALL_PRESETS.quick, presetName: 'quick', quiet: true, handleSigint: false })).rejects.toThrow(
      /holds a vae trained with other settings \(.*limit 16 → 3000.*\) than --preset quick; .*--overwrite/,
    );
  });

  it('the UNet stage names the command for a missing clip/', async () => {
    const dir = path.join(tmp, 'noclip');
    fs.cpSync(path.join(runDir, 'vae'), path.join(dir, 'vae'), { recursive: true });
    await expect(trainUnet({ ...TINY_PRESET.unet, runDir: dir, data: dataDir, quiet: true })).rejects.toThrow(/clip[/\\]config\.json not found: .*`npx sdlab train clip --run /);
    const cli = await run(process.execPath, ['bin/sdlab.mjs', 'train', 'unet', '--backend', 'cpu', '--run', dir], { cwd: ROOT }).then(
      () => null,
      (e: { code: number; stderr: string }) => e,
    );
    expect(cli?.code).toBe(2);
    expect(cli?.stderr.trim().split('\n').filter((l) => l.trim() !== '' && !/tfjs|TensorFlow|=====/.test(l))).toHaveLength(1);
    expect(cli?.stderr).toMatch(/`npx sdlab train clip --run /);
  });
});

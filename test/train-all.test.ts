/**
 * `sdlab train all` end to end on the `tiny` preset (a few steps of tiny models on 16 digits):
 *   - the CLI trains VAE → CLIP → UNet into one run directory (8×8 digits from IDX files), writes the sample sheet and says
 *     where everything is; `sdlab sample` reads the run it made;
 *   - running it again skips every finished stage; a run trained with other settings is refused;
 *   - the UNet stage of a run without clip/ names `npx sdlab train clip`.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { PNG } from 'pngjs';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { readStateInfo, statePath } from '../src/train/state.ts';
import { TINY_PRESET, TRAIN_ALL_PRESETS } from '../src/train/presets.ts';
import { stageState, trainAll } from '../src/train/all.ts';
import { trainUnet } from '../src/train/unet.ts';
import { sdlab, tinyDigitsDir } from './helpers/tiny-data.ts';

let tmp: string;
let dataDir: string;
let runDir: string;
let stdout: string;

beforeAll(async () => {
  await tf.setBackend('cpu');
  ({ tmp, dataDir } = tinyDigitsDir('sdlab-train-all-', 60));
  runDir = path.join(tmp, 'run');
  ({ stdout } = await sdlab(['train', 'all', '--preset', 'tiny', '--data', dataDir, '--backend', 'cpu', '--run', runDir]));
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
    // The run knows how to sample itself (the preset's settings) and the size of its data.
    expect(JSON.parse(fs.readFileSync(path.join(runDir, 'sampling_config.json'), 'utf8'))).toEqual({
      scheduler: 'ddim', num_inference_steps: 2, guidance_scale: 3, eta: 0, guidance_interval: null, source: 'train all --preset tiny',
    });
    expect(sheet[0]).toMatchObject({ scheduler: 'ddim', steps: 2, guidance: 3, eta: 0 });
    expect(JSON.parse(fs.readFileSync(path.join(runDir, 'vae/canvas.json'), 'utf8'))).toMatchObject({ native_height: 8, native_width: 8, sample_size: 8, pad_top: 0, pad_left: 0 });
    // The suggested eval commands need no sampling flags.
    expect(stdout).not.toMatch(/--guidance/);
  });

  it("the full and quick presets carry their measured sampling settings (full: guidance 3 at t in [200, 600], README's Results)", () => {
    expect(TRAIN_ALL_PRESETS.full.unet.sampling).toEqual({ scheduler: 'ddim', steps: 50, guidance: 3, eta: 0, guidanceInterval: [200, 600] });
    expect(TRAIN_ALL_PRESETS.quick.unet.sampling).toEqual({ scheduler: 'ddim', steps: 50, guidance: 3, eta: 0, guidanceInterval: null });
    // The full preset's VAE: 600 steps (README's Results: the round trip 2.08× → 1.32×); quick keeps its 150.
    expect([TRAIN_ALL_PRESETS.full.vae.maxSteps, TRAIN_ALL_PRESETS.quick.vae.maxSteps, TRAIN_ALL_PRESETS.quick.vae.epochs]).toEqual([600, 150, 1]);
  });

  it('leaves a run `sdlab sample` reads (paraphrases, "" and unknown words included)', async () => {
    const out = path.join(tmp, 'sampled');
    const res = await sdlab(['sample', '--backend', 'cpu', '--run', runDir, '--prompt', 'the number 7', '--prompt', '', '--prompt', 'a zebra 7', '--n', '2', '--out', out]);
    expect(res.stdout).toMatch(/6 images \(3 prompts × 2\)/);
    expect(res.stdout).toContain(`sampling: ddim, 2 steps, guidance 3, eta 0 (all from ${path.join(runDir, 'sampling_config.json')})`);
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
      /holds a vae trained with other settings \(.*limit 16 → none.*\) than --preset quick; .*--overwrite/,
    );
  });

  it('the UNet stage names the command for a missing clip/', async () => {
    const dir = path.join(tmp, 'noclip');
    fs.cpSync(path.join(runDir, 'vae'), path.join(dir, 'vae'), { recursive: true });
    await expect(trainUnet({ ...TINY_PRESET.unet, runDir: dir, data: dataDir, quiet: true })).rejects.toThrow(/clip[/\\]config\.json not found: .*`npx sdlab train clip --run /);
    const cli = await sdlab(['train', 'unet', '--backend', 'cpu', '--run', dir]).then(
      () => null,
      (e: { code: number; stderr: string }) => e,
    );
    expect(cli?.code).toBe(2);
    expect(cli?.stderr.trim().split('\n').filter((l) => l.trim() !== '' && !/tfjs|TensorFlow|=====/.test(l))).toHaveLength(1);
    expect(cli?.stderr).toMatch(/`npx sdlab train clip --run /);
  });
});

/**
 * Your own data through the trainers (issue 18 item 5), tiny models and a few steps each:
 *   - a Fashion-MNIST slice (the real files, --limit): captions from its class names, a
 *     vocabulary with them, <run>/classes.json, a closing sheet with one row per class, and
 *     `sdlab sample --prompt "a sneaker"` on the run;
 *   - an image folder in both layouts (DIR/<label>/*.png through the CLI, metadata.jsonl);
 *   - exact resume for a folder source (the CLI restores --data from the state) and for a
 *     tf.data.Dataset (library API); a changed folder or dataset is refused;
 *   - bad input as real child processes: exit 2, one line, nothing written.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { readSafetensors } from '../src/io/safetensors.ts';
import { selectBackend } from '../src/backend/index.ts';
import { WordTokenizer } from '../src/clip/tokenizer_word.ts';
import { DIGIT_WORDS } from '../src/data/captions.ts';
import { FASHION_MNIST_CLASSES, datasetFingerprint, datasetFromTf, loadDataset, readRunClasses } from '../src/data/index.ts';
import { readStateInfo, statePath } from '../src/train/state.ts';
import { TINY_PRESET, TINY_VAE, type TrainAllPreset } from '../src/train/presets.ts';
import { stageState, trainAll } from '../src/train/all.ts';
import { CLIP_TRAIN_DEFAULTS, mnistCaptionTokenizer, trainClip, type ClipTrainOptions } from '../src/train/clip.ts';
import { checkVocabulary } from '../src/train/unet.ts';
import { ROOT, sdlab } from './helpers/tiny-data.ts';
import { folderName, jsonlText, tinyDigitBytes, writeGrayPng, writeTinyFolder } from './helpers/tiny-folder.ts';
import { spawnSync } from 'node:child_process';

const FASHION = '/usr/share/datasets/fashion-mnist';
const haveFashion = fs.existsSync(path.join(FASHION, 'train-images-idx3-ubyte.gz'));

/** The tiny preset for 28×28 images: the same tiny models at sample_size 32 (padded, as MNIST). */
const TINY32: TrainAllPreset = {
  ...TINY_PRESET,
  vae: { ...TINY_PRESET.vae, config: { ...TINY_VAE, sample_size: 32 } },
  clip: { ...TINY_PRESET.clip, config: { ...TINY_PRESET.clip.config, image: { ...TINY_PRESET.clip.config!.image, sample_size: 32 } } },
};

let tmp: string;
let labelsDir: string;
let jsonlDir: string;

beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-own-data-'));
  labelsDir = path.join(tmp, 'labels');
  jsonlDir = path.join(tmp, 'jsonl');
  writeTinyFolder(labelsDir, 60, 'labels');
  writeTinyFolder(jsonlDir, 60, 'jsonl');
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Runs the CLI expecting it to fail: exit code and sdlab's own stderr lines (not tfjs's banner). */
function cliFails(args: string[]): { code: number | null; lines: string[] } {
  const r = spawnSync(process.execPath, ['bin/sdlab.mjs', ...args], { cwd: ROOT, encoding: 'utf8' });
  return { code: r.status, lines: r.stderr.split('\n').filter((l) => l.trim() !== '' && !/tfjs|TensorFlow|=====|node backend/.test(l)) };
}

/** Every tensor of a run's clip weights and training state, as bytes. */
function clipSnapshot(runDir: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const [k, t] of readSafetensors(path.join(runDir, 'clip/model.safetensors'))) out.set(`clip/${k}`, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).toString('base64'));
  for (const [k, t] of readSafetensors(statePath(runDir, 'clip'))) out.set(`state/${k}`, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).toString('base64'));
  return out;
}

function differing(a: string, b: string): string[] {
  const sa = clipSnapshot(a);
  const sb = clipSnapshot(b);
  return [...new Set([...sa.keys(), ...sb.keys()])].filter((k) => sa.get(k) !== sb.get(k));
}

describe.skipIf(!haveFashion)('a Fashion-MNIST slice, end to end', () => {
  let run: string;
  beforeAll(async () => {
    // 32×32 models are slow on the pure-JS cpu backend: the fastest one there is (nothing here
    // compares numbers across backends).
    await selectBackend('auto');
    run = path.join(tmp, 'fashion');
    await trainAll({ runDir: run, preset: TINY32, presetName: 'tiny', data: FASHION, quiet: true, handleSigint: false });
  }, 300_000);
  afterAll(async () => {
    await tf.setBackend('cpu');
  });

  it('captions come from the class names: the tokenizer knows them, the run records them', () => {
    const tok = WordTokenizer.load(path.join(run, 'clip'));
    for (const w of ['sneaker', 'ankle', 'boot', 'trouser', 'photo']) expect(tok.vocab, w).toContain(w);
    expect(tok.vocab).not.toContain('seven');
    expect(readRunClasses(run)).toEqual({ captions: 'classes', classes: [...FASHION_MNIST_CLASSES], prompts: FASHION_MNIST_CLASSES.map((c) => (c === 'ankle boot' ? 'an ankle boot' : `a ${c}`)) });
    for (const stage of ['vae', 'clip', 'unet'] as const) {
      const s = readStateInfo(statePath(run, stage)).settings;
      expect(s, stage).toMatchObject({ data: FASHION, limit: 16, captions: 'classes', classes: null, classNames: [...FASHION_MNIST_CLASSES] });
      expect(s.fingerprint, stage).toMatch(/^[0-9a-f]{64}$/);
    }
  });

  it('the closing sheet has one row per class, and `sdlab sample --prompt "a sneaker"` samples the run', async () => {
    const sheet = JSON.parse(fs.readFileSync(path.join(run, 'samples/samples.json'), 'utf8')) as Array<{ prompt: string }>;
    expect(sheet.map((r) => r.prompt)).toEqual(readRunClasses(run)!.prompts);
    const out = path.join(tmp, 'sneakers');
    const res = await sdlab(['sample', '--run', run, '--prompt', 'a sneaker', '--n', '2', '--steps', '2', '--out', out]);
    expect(res.stdout).toMatch(/2 images \(1 prompt × 2\)/);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'samples.json'), 'utf8')).map((r: { prompt: string }) => r.prompt)).toEqual(['a sneaker', 'a sneaker']);
  });

  it('a finished run is skipped with the same data, and refused with other class names', async () => {
    const again = await trainAll({ runDir: run, preset: TINY32, presetName: 'tiny', data: FASHION, quiet: true, noSheet: true, handleSigint: false });
    expect(again.stages.map((s) => s.status)).toEqual(['skipped', 'skipped', 'skipped']);
    const names = FASHION_MNIST_CLASSES.map((c) => c.toUpperCase());
    await expect(trainAll({ runDir: run, preset: TINY32, presetName: 'tiny', data: FASHION, classes: names, quiet: true, noSheet: true, handleSigint: false })).rejects.toThrow(
      /holds a vae trained with other settings \(classes none → T-SHIRT,TROUSER,.*classNames .*fingerprint .*\)/,
    );
  });
});

describe('an image folder through the CLI', () => {
  it('DIR/<label>/*.png: train all writes class captions, classes.json and a sheet of class prompts', async () => {
    const run = path.join(tmp, 'labels-run');
    const { stdout } = await sdlab(['train', 'all', '--preset', 'tiny', '--data', labelsDir, '--backend', 'cpu', '--run', run]);
    const folders = fs.readdirSync(labelsDir).sort();
    const prompts = folders.map((f) => `${/^eight/.test(f) ? 'an' : 'a'} ${f.replace('_', ' ')}`);
    expect(readRunClasses(run)?.prompts).toEqual(prompts);
    const sheet = JSON.parse(fs.readFileSync(path.join(run, 'samples/samples.json'), 'utf8')) as Array<{ prompt: string }>;
    expect(sheet.map((r) => r.prompt)).toEqual(prompts);
    expect(stdout).toContain(`npx sdlab sample --run ${run} --prompt "${prompts[0]}"`);
    expect(WordTokenizer.load(path.join(run, 'clip')).vocab).toContain('digit');
    // clip-eval on the run's data: zero-shot over the class prompts.
    const ev = await sdlab(['clip-eval', '--backend', 'cpu', '--run', run, '--data', labelsDir, '--out', path.join(tmp, 'labels-clip-eval')]);
    expect(ev.stdout).toContain(`zero-shot prompts: ${prompts.map((p) => `"${p}"`).join(', ')}`);
  });

  it('metadata.jsonl: the texts are the captions and the classes', async () => {
    const run = path.join(tmp, 'jsonl-run');
    await trainAll({ runDir: run, preset: TINY_PRESET, presetName: 'tiny', data: jsonlDir, quiet: true, noSheet: true, handleSigint: false });
    const texts = [...new Set(tinyDigitBytes(tmp, 60).labels.map(jsonlText))];
    expect(readRunClasses(run)).toEqual({ captions: 'texts', classes: texts, prompts: texts });
    expect(readStateInfo(statePath(run, 'clip')).settings).toMatchObject({ captions: 'texts', texts: texts.length });
    const tok = WordTokenizer.load(path.join(run, 'clip'));
    for (const t of texts) expect(tok.encode(t).inputIds).not.toContain(tok.unkId);
  });
});

/** A tiny CLIP run on an image folder, as CLI flags: 16 examples, batch 4, 2 epochs = 8 steps. */
const clipArgs = (run: string, data: string) => [
  'train', 'clip', '--backend', 'cpu', '--run', run, '--data', data, '--limit', '16', '--batch-size', '4', '--epochs', '2',
  '--seed', '3', '--warmup', '1', '--projection-dim', '8', '--text-width', '8', '--text-layers', '1', '--text-heads', '2',
  '--image-channels', '4', '--norm-groups', '2', '--sample-size', '8', '--val-limit', '6',
];

describe('exact resume on your own data', () => {
  it('a folder: stopped, then `--resume` with only --run ends bit-identical; a changed folder is refused', async () => {
    const straight = path.join(tmp, 'folder-straight');
    const split = path.join(tmp, 'folder-split');
    await sdlab(clipArgs(straight, labelsDir));
    const first = await sdlab([...clipArgs(split, labelsDir), '--stop-at-step', '3']);
    expect(first.stdout).toMatch(/clip: stopped \(stop-at-step\) at step 3\/8/);
    await sdlab(['train', 'clip', '--backend', 'cpu', '--run', split, '--resume']);
    expect(readStateInfo(statePath(split, 'clip')).step).toBe(8);
    expect(differing(straight, split)).toEqual([]);

    // The same folder with one image changed: the stored fingerprint no longer matches.
    const changed = path.join(tmp, 'labels-changed');
    fs.cpSync(labelsDir, changed, { recursive: true });
    const stopped = path.join(tmp, 'folder-changed');
    await sdlab([...clipArgs(stopped, changed), '--stop-at-step', '3']);
    const folder = path.join(changed, folderName(0));
    writeGrayPng(path.join(folder, fs.readdirSync(folder).sort()[0]), new Uint8Array(64).fill(7), 8);
    const before = fs.statSync(statePath(stopped, 'clip')).mtimeMs;
    const res = cliFails(['train', 'clip', '--backend', 'cpu', '--run', stopped, '--resume']);
    expect(res.code).toBe(2);
    expect(res.lines).toHaveLength(1);
    expect(res.lines[0]).toMatch(/^sdlab: error: --resume: .*state\.safetensors was trained with different settings \(fingerprint "[0-9a-f]{64}" → "[0-9a-f]{64}"\)/);
    expect(fs.statSync(statePath(stopped, 'clip')).mtimeMs).toBe(before);
  });

  it('a tf.data.Dataset: stopped and resumed with the same dataset is bit-identical; another dataset is refused', async () => {
    const { pixels, labels } = tinyDigitBytes(tmp, 40);
    const elements = (flip = -1) =>
      pixels.map((p, i) => ({ image: tf.tensor2d(Float32Array.from(p, (v) => (i === flip ? 1 - v / 255 : v / 255)), [8, 8]), text: `the ${DIGIT_WORDS[labels[i]]}` }));
    const opts = (runDir: string, dataset: tf.data.Dataset<tf.TensorContainer>): ClipTrainOptions => ({
      ...CLIP_TRAIN_DEFAULTS,
      runDir,
      dataset,
      seed: 2,
      epochs: 2,
      batchSize: 4,
      limit: 16,
      valLimit: 4,
      warmupSteps: 1,
      config: TINY_PRESET.clip.config,
      quiet: true,
      handleSigint: false,
    });
    const ds = tf.data.array(elements());
    const straight = path.join(tmp, 'tfdata-straight');
    const split = path.join(tmp, 'tfdata-split');
    (await trainClip(opts(straight, ds))).clip.dispose();
    expect((await trainClip({ ...opts(split, ds), stopAtStep: 5 })).stopped).toBe('stop-at-step');
    const resumed = await trainClip({ ...opts(split, ds), resume: true });
    resumed.clip.dispose();
    expect(resumed.step).toBe(8);
    expect(differing(straight, split)).toEqual([]);
    expect(readStateInfo(statePath(split, 'clip')).settings).toMatchObject({ data: null, captions: 'texts' });
    await expect(trainClip({ ...opts(split, tf.data.array(elements(7))), resume: true })).rejects.toThrow(/different settings \(fingerprint /);
  });
});

describe('trainAll with a tf.data.Dataset and class names (the library API)', () => {
  it('every stage trains on it; the run records the names and the examples', async () => {
    const { pixels, labels } = tinyDigitBytes(tmp, 40);
    const ds = tf.data.array(pixels.map((p, i) => ({ xs: tf.tensor3d(Float32Array.from(p, (v) => v / 255), [8, 8, 1]), ys: labels[i] })));
    const names = DIGIT_WORDS.map((w) => `${w} sign`);
    const run = path.join(tmp, 'tfdata-all');
    const res = await trainAll({ runDir: run, preset: TINY_PRESET, presetName: 'tiny', dataset: ds, classes: names, quiet: true, noSheet: true, handleSigint: false });
    expect(res.stages.map((s) => s.status)).toEqual(['trained', 'trained', 'trained']);
    expect(readRunClasses(run)?.prompts[1]).toBe('a one sign');
    const settings = readStateInfo(statePath(run, 'unet')).settings;
    expect(settings).toMatchObject({ data: null, captions: 'classes', classes: names, classNames: names, trainExamples: 16 });
    // The examples trained on are the dataset's (its fingerprint, with the names), in every stage.
    const fp = datasetFingerprint(loadDataset({ dataset: await datasetFromTf(ds), classes: names }));
    for (const stage of ['vae', 'clip', 'unet'] as const) expect(readStateInfo(statePath(run, stage)).settings.fingerprint, stage).toBe(fp);
    // The same call again: every stage is already done with this dataset and these names.
    const again = await trainAll({ runDir: run, preset: TINY_PRESET, presetName: 'tiny', dataset: ds, classes: names, quiet: true, noSheet: true, handleSigint: false });
    expect(again.stages.map((s) => s.status)).toEqual(['skipped', 'skipped', 'skipped']);
    expect(stageState(run, 'clip', { ...TINY_PRESET.clip, source: {} })).toHaveProperty('mismatch');
  });
});

describe('bad input: exit 2, one line, nothing written', () => {
  it('a bad folder entry, a bad metadata.jsonl line, --classes for a folder', () => {
    const badFolder = path.join(tmp, 'bad-folder');
    fs.cpSync(labelsDir, badFolder, { recursive: true });
    fs.writeFileSync(path.join(badFolder, folderName(2), 'notes.txt'), 'hello');
    const badJsonl = path.join(tmp, 'bad-jsonl');
    fs.cpSync(jsonlDir, badJsonl, { recursive: true });
    fs.appendFileSync(path.join(badJsonl, 'metadata.jsonl'), '{"file_name": "img/00003.png"}\n');
    const cases: Array<[string[], RegExp]> = [
      [['train', 'vae', '--data', badFolder], new RegExp(`notes\\.txt: not a \\.png file`)],
      [['train', 'clip', '--data', badJsonl], /metadata\.jsonl:61: "text" is missing or not a non-empty string/],
      [['train', 'all', '--preset', 'tiny', '--data', labelsDir, '--classes', 'a,b'], /^sdlab: error: --classes: .* names its classes itself/],
      [['train', 'vae', '--classes', 'a,b'], /^sdlab: error: --classes: 2 class names, but the labels of embedded mnist .* go up to 9/],
    ];
    for (const [args, re] of cases) {
      const run = path.join(tmp, `bad-${args[1]}-${args.length}`);
      const res = cliFails([...args, '--backend', 'cpu', '--run', run]);
      expect(res.code, args.join(' ')).toBe(2);
      expect(res.lines, args.join(' ')).toHaveLength(1);
      expect(res.lines[0], args.join(' ')).toMatch(re);
      expect(fs.existsSync(run), args.join(' ')).toBe(false);
    }
  });

  it("a UNet is refused on a text encoder that does not know the data's words", () => {
    const fashionLike = { classNames: ['sneaker', 'bag'] };
    expect(() => checkVocabulary(mnistCaptionTokenizer(), fashionLike, '/run/clip', '/run')).toThrow(
      /^[/\\]run[/\\]clip[/\\]tokenizer\.json: the run's text encoder does not know 4 word\(s\) of this data's captions \("photo", "image", "sneaker", "bag"\); .*train it on the same data first/,
    );
    expect(() => checkVocabulary(mnistCaptionTokenizer(), {}, '/run/clip', '/run')).not.toThrow();
    expect(loadDataset({ data: labelsDir }).classNames).toHaveLength(10);
  });
});

/**
 * `sdlab clip-eval` on a tiny trained run (8×8 digits as IDX files, cpu backend):
 *   - the printed zero-shot accuracy, per-digit accuracy and recall@1/@5 are those of the saved
 *     model, recomputed here with independent code (cosine similarities by hand, nearest prompt);
 *   - similarity.png and clip_eval.json are written to --out;
 *   - bad input: an unknown word becomes <unk> (no crash), an over-long prompt is cut with a
 *     warning; a missing tokenizer.json is a one-line error with exit code 2 (CLI), a corrupt one,
 *     a missing clip/ and a template without a placeholder are UsageErrors naming the problem.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import { PNG } from 'pngjs';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { CLIPModel } from '../src/clip/index.ts';
import { digitPrompts } from '../src/eval/clip.ts';
import { CLIP_TRAIN_DEFAULTS, trainClip } from '../src/train/clip.ts';
import { vaeData } from '../src/train/vae.ts';
import { loadRunClip, zeroShotPrompts } from '../src/commands/clip_eval.ts';
import { UsageError } from '../src/util/errors.ts';
import { sdlab, tinyDigitsDir } from './helpers/tiny-data.ts';

let tmp: string;
let dataDir: string;
let runDir: string;

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return sdlab(['clip-eval', '--backend', 'cpu', ...args]).then(
    (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
}

/** A copy of the trained run whose clip/ we can damage. */
function copyRun(name: string): string {
  const dir = path.join(tmp, name);
  fs.cpSync(runDir, dir, { recursive: true });
  return dir;
}

beforeAll(async () => {
  await tf.setBackend('cpu');
  ({ tmp, dataDir } = tinyDigitsDir('sdlab-clip-eval-', 120));
  runDir = path.join(tmp, 'run');
  await trainClip({
    ...CLIP_TRAIN_DEFAULTS,
    runDir,
    seed: 1,
    epochs: 4,
    batchSize: 12,
    lr: 5e-3,
    warmupSteps: 2,
    data: dataDir,
    config: {
      projection_dim: 8,
      text: { hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1, num_attention_heads: 2 },
      image: { sample_size: 8, block_out_channels: [4, 8], norm_num_groups: 2 },
    },
    quiet: true,
    handleSigint: false,
  });
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('sdlab clip-eval', () => {
  it('prints the zero-shot accuracy and recall of the saved model (recomputed independently), reads odd prompts, writes the PNG and JSON', async () => {
    const out = path.join(tmp, 'eval');
    const long = `a ${'thick '.repeat(20)}seven`;
    const r = await cli(['--run', runDir, '--data', dataDir, '--out', out, '--prompt', 'a purple zebra seven', '--prompt', long, '--top', '3']);
    expect(r.code, r.stderr).toBe(0);

    // Independent recomputation: raw embeddings, cosine by hand, nearest of the ten prompts.
    const clip = CLIPModel.fromPretrained(path.join(runDir, 'clip'));
    const { val } = vaeData({ data: dataDir, size: 8 });
    const tok = clip.tokenizer!;
    const img = tf.tidy(() => clip.image_encoder.forward(tf.sub(tf.mul(tf.tensor4d(val.images, [val.n, 8, 8, 1]), 2), 1) as tf.Tensor4D).arraySync() as number[][]);
    const txt = tf.tidy(() => clip.textEncoder.forward(tf.tensor2d(digitPrompts().map((p) => tok.encode(p).inputIds), undefined, 'int32')).textEmbeds!.arraySync() as number[][]);
    const cos = (a: number[], b: number[]) => a.reduce((s, v, k) => s + v * b[k], 0) / Math.hypot(...a) / Math.hypot(...b);
    let correct = 0;
    const perDigit = new Map<number, [number, number]>();
    img.forEach((v, i) => {
      const sims = txt.map((t) => cos(v, t));
      const pred = sims.indexOf(Math.max(...sims));
      const d = val.labels[i];
      const [c, n] = perDigit.get(d) ?? [0, 0];
      perDigit.set(d, [c + +(pred === d), n + 1]);
      if (pred === d) correct++;
    });
    clip.dispose();
    const acc = (100 * correct) / val.n;
    expect(r.stdout).toMatch(new RegExp(`clip eval on ${val.n} images`));
    expect(r.stdout).toContain(`zero-shot accuracy ${acc.toFixed(1).padStart(5)}%`);
    for (const [d, [c, n]] of perDigit) expect(r.stdout).toContain(` ${d}:${((100 * c) / n).toFixed(1)}%`);
    expect(r.stdout).toMatch(/text->image recall@1 +\d+\.\d% +@5 +\d+\.\d%/);

    const json = JSON.parse(fs.readFileSync(path.join(out, 'clip_eval.json'), 'utf8'));
    expect(json.zeroShot.accuracy).toBeCloseTo(correct / val.n, 10);
    expect(json.n).toBe(val.n);
    expect(json.textToImageRecall['5']).toBeGreaterThanOrEqual(json.textToImageRecall['1']);
    expect(r.stdout).toMatch(new RegExp(`recall@1 +${(100 * json.textToImageRecall['1']).toFixed(1)}%`));
    const png = PNG.sync.read(fs.readFileSync(path.join(out, 'similarity.png')));
    expect(png.width).toBeGreaterThan(8 * 8);
    expect(png.height).toBeGreaterThan(8 * 8);

    // Unknown words become <unk>; an over-long prompt is cut (16 positions: <start> + 14 words + <end>) with a warning.
    expect(r.stdout).toContain('prompt "a purple zebra seven"\n  tokens: a <unk> <unk> seven\n  nearest 3 held-out digits: ');
    expect(r.stdout).toMatch(/tokens: a( thick){13}   \(truncated\)/);
    expect(r.stderr).toMatch(/warning: prompt "a thick thick.*" has 24 tokens but the text encoder reads at most 14/);
  });

  it('--template sets the prompts; one without a placeholder is refused', () => {
    expect(zeroShotPrompts('the digit {digit}')[7]).toBe('the digit 7');
    expect(zeroShotPrompts('{word}')[3]).toBe('three');
    expect(zeroShotPrompts()).toEqual(digitPrompts());
    expect(() => zeroShotPrompts('a digit')).toThrow(/--template: "a digit" has no \{word\} or \{digit\} placeholder/);
  });

  it('a missing tokenizer.json is a one-line error with exit code 2', async () => {
    const noTok = copyRun('no-tokenizer');
    fs.rmSync(path.join(noTok, 'clip/tokenizer.json'));
    const r = await cli(['--run', noTok, '--data', dataDir]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/clip\/tokenizer\.json not found: the text encoder's vocabulary is saved there/);
    expect(r.stderr.split('\n').filter((l) => l.startsWith('sdlab: error'))).toHaveLength(1);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
  });

  it('corrupt tokenizer.json, a missing clip/ are clear UsageErrors', () => {
    const badJson = copyRun('bad-json');
    fs.writeFileSync(path.join(badJson, 'clip/tokenizer.json'), '{"type": "sdlab-word-tokenizer", "vocab": [');
    expect(() => loadRunClip(badJson)).toThrow(UsageError);
    expect(() => loadRunClip(badJson)).toThrow(/tokenizer\.json: not valid JSON/);

    const badVocab = copyRun('bad-vocab');
    fs.writeFileSync(path.join(badVocab, 'clip/tokenizer.json'), JSON.stringify({ type: 'sdlab-word-tokenizer', version: 1, maxLength: 16, vocab: ['a', 'b'] }));
    expect(() => loadRunClip(badVocab)).toThrow(/tokenizer\.json: "vocab" must start with <pad>, <start>, <end>, <unk>/);

    const noClip = path.join(tmp, 'empty-run');
    fs.mkdirSync(noClip);
    expect(() => loadRunClip(noClip)).toThrow(/clip\/config\.json not found: no trained CLIP in --run .*npx sdlab train clip --run/);

    expect(loadRunClip(runDir).tokenizer!.vocabSize).toBeGreaterThan(40);
  });
});

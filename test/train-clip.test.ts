/**
 * `sdlab train clip` on tiny towers and 8×8 digits (real MNIST digits pooled 4×4, written as IDX
 * files so the CLI reads them too), on the pure-JS cpu backend:
 *   - the multi-positive contrastive loss against a float64 reference written from its definition
 *     (and, at w = 0, against the plain CLIP loss without labels);
 *   - trimming the token ids after the longest caption changes no text embedding (causal encoder);
 *   - batches: captions name the right digit, are fresh each epoch, repeat exactly for (seed, epoch,
 *     batch); the shift augmentation is a translation;
 *   - training lowers the loss; the run directory holds clip/ (config, weights, tokenizer.json)
 *     that loads back and reproduces the reported zero-shot accuracy, and that the UNet's loaders
 *     (TextEncoder.fromPretrained, loadTokenizer) read;
 *   - stopped mid-epoch and resumed (in-process, and through the CLI with only --run --resume):
 *     bit-identical weights and optimizer state.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { CLIPModel, TextEncoder, clipLoss, contrastiveTargets, l2Normalize, loadTokenizer } from '../src/clip/index.ts';
import { evaluateClip } from '../src/eval/clip.ts';
import { CAPTION_PUNCTUATION, CAPTION_VOCABULARY, DIGIT_WORDS } from '../src/data/captions.ts';
import { readSafetensors } from '../src/io/safetensors.ts';
import { Random } from '../src/util/random.ts';
import { readHistory, readStateInfo, statePath, trainDir } from '../src/train/state.ts';
import { EpochBatcher } from '../src/train/data.ts';
import {
  type ClipTrainOptions,
  type ClipTrainResult,
  CLIP_TRAIN_DEFAULTS,
  captionBatch,
  clipTrainConfig,
  mnistCaptionTokenizer,
  shiftedImages,
  tokenIds,
  trainClip,
} from '../src/train/clip.ts';
import { vaeData } from '../src/train/vae.ts';
import { sdlab, tinyDigitsDir } from './helpers/tiny-data.ts';
import { logSumExp, scaledLogits } from './helpers/infonce-reference.ts';

let tmp: string;
let dataDir: string;

const TINY = {
  projection_dim: 8,
  text: { hidden_size: 16, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2 },
  image: { sample_size: 8, block_out_channels: [4, 8], norm_num_groups: 2 },
};

const opts = (runDir: string): ClipTrainOptions => ({
  ...CLIP_TRAIN_DEFAULTS,
  runDir,
  seed: 5,
  epochs: 3,
  batchSize: 8,
  lr: 3e-3,
  weightDecay: 0.01,
  warmupSteps: 2,
  decay: 'cosine',
  minLrRatio: 0.1,
  sameLabelWeight: 0.5,
  shiftPixels: 1,
  config: TINY,
  data: dataDir,
  limit: 32, // 4 steps per epoch, 12 in all
  quiet: true,
  handleSigint: false,
});

/** Every tensor of a run's clip weights and training state. */
function snapshot(runDir: string): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const [k, t] of readSafetensors(path.join(runDir, 'clip/model.safetensors'))) out.set(`clip/${k}`, Array.from(t.data));
  for (const [k, t] of readSafetensors(statePath(runDir, 'clip'))) out.set(`state/${k}`, Array.from(t.data));
  return out;
}

function expectSameRun(a: string, b: string): void {
  const sa = snapshot(a);
  const sb = snapshot(b);
  expect([...sb.keys()].sort()).toEqual([...sa.keys()].sort());
  const differing = [...sa].filter(([k, v]) => JSON.stringify(v) !== JSON.stringify(sb.get(k))).map(([k]) => k);
  expect(differing).toEqual([]);
}

let straightDir: string;
let straight: ClipTrainResult;

beforeAll(async () => {
  await tf.setBackend('cpu');
  ({ tmp, dataDir } = tinyDigitsDir('sdlab-train-clip-', 120));
  straightDir = path.join(tmp, 'straight');
  straight = await trainClip(opts(straightDir));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** The loss in float64 from its definition: soft-target cross-entropy, rows and columns. */
function referenceLoss(img: number[][], txt: number[][], logitScale: number, labels: number[], w: number): number {
  const n = img.length;
  const logits = scaledLogits(img, txt, logitScale);
  const lse = logSumExp;
  const target = (i: number, j: number) => (i === j ? 1 - w : 0) + (labels[i] === labels[j] ? w / labels.filter((l) => l === labels[i]).length : 0);
  let i2t = 0;
  let t2i = 0;
  for (let i = 0; i < n; i++) {
    const rowLse = lse(logits[i]);
    const colLse = lse(logits.map((r) => r[i]));
    for (let j = 0; j < n; j++) {
      i2t -= target(i, j) * (logits[i][j] - rowLse); // image i over captions j
      t2i -= target(j, i) * (logits[j][i] - colLse); // caption i over images j
    }
  }
  return (i2t / n + t2i / n) / 2;
}

function unitRows(rng: Random, n: number, p: number): number[][] {
  return Array.from({ length: n }, () => {
    const v = Array.from({ length: p }, () => rng.normal());
    const norm = Math.hypot(...v);
    return v.map((x) => x / norm);
  });
}


/** `train clip` flags of the tests' small run (the same run as `opts`). */
function clipCliArgs(dir: string): string[] {
  return [
    'train', 'clip', '--backend', 'cpu', '--run', dir, '--data', dataDir, '--limit', '32',
    '--seed', '5', '--epochs', '3', '--batch-size', '8', '--lr', '3e-3', '--weight-decay', '0.01', '--warmup', '2',
    '--min-lr-ratio', '0.1', '--same-label-weight', '0.5', '--shift-pixels', '1', '--projection-dim', '8', '--text-width', '16',
    '--text-layers', '1', '--text-heads', '2', '--image-channels', '4,8', '--norm-groups', '2', '--sample-size', '8',
  ];
}

describe('multi-positive contrastive loss', () => {
  it('targets: rows sum to 1, symmetric, identity at w = 0, uniform over the digit at w = 1', () => {
    const labels = [3, 1, 3, 3, 7];
    const t = contrastiveTargets(labels, 0.4);
    for (let i = 0; i < 5; i++) {
      expect(Array.from(t.subarray(i * 5, i * 5 + 5)).reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
      for (let j = 0; j < 5; j++) expect(t[i * 5 + j]).toBeCloseTo(t[j * 5 + i], 7);
    }
    expect(t[0]).toBeCloseTo(0.6 + 0.4 / 3, 6); // own pair
    expect(t[2]).toBeCloseTo(0.4 / 3, 6); // another 3
    expect(t[1]).toBe(0); // a 1
    expect(t[4 * 5 + 4]).toBeCloseTo(1, 6); // the only 7
    expect(Array.from(contrastiveTargets(labels, 0))).toEqual(Array.from({ length: 25 }, (_, k) => (k % 6 === 0 ? 1 : 0)));
    expect(contrastiveTargets(labels, 1)[2]).toBeCloseTo(1 / 3, 6);
  });

  it('matches a float64 reference for several w, and the plain CLIP loss (no labels) at w = 0', () => {
    const rng = new Random(11);
    const labels = [0, 2, 2, 5, 0, 2, 9];
    const img = unitRows(rng, 7, 5);
    const txt = unitRows(rng, 7, 5);
    for (const [w, ls] of [[0, 1.2], [0.5, 2.0], [1, 3.1], [0.3, 5.5]] as const) {
      const got = tf.tidy(() => clipLoss(tf.tensor2d(img), tf.tensor2d(txt), ls, labels, w).dataSync()[0]);
      expect(got).toBeCloseTo(referenceLoss(img, txt, ls, labels, w), 4);
    }
    const plain = tf.tidy(() => clipLoss(tf.tensor2d(img), tf.tensor2d(txt), 2.0).dataSync()[0]);
    const ours = tf.tidy(() => clipLoss(tf.tensor2d(img), tf.tensor2d(txt), 2.0, labels, 0).dataSync()[0]);
    expect(ours).toBeCloseTo(plain, 5);
  });

  it('collapsed embeddings give ln N whatever the target', () => {
    const same = Array.from({ length: 6 }, () => [0.6, 0.8]);
    for (const w of [0, 0.5, 1]) {
      const l = tf.tidy(() => clipLoss(tf.tensor2d(same), tf.tensor2d(same), 2.6, [1, 1, 2, 3, 3, 3], w).dataSync()[0]);
      expect(l).toBeCloseTo(Math.log(6), 5);
    }
  });
});

describe('caption batches', () => {
  it('trimmed token ids give the same text embeddings as full-length ones (causal encoder, pooled at <end>)', () => {
    const tok = mnistCaptionTokenizer();
    const clip = new CLIPModel(clipTrainConfig('mnist', tok.vocabSize, { projection_dim: 8, text: { hidden_size: 16, intermediate_size: 32, num_attention_heads: 2, num_hidden_layers: 2 } }));
    const texts = ['7', 'a thick, slanted seven', 'the number 3', 'a picture of an eight'];
    const ids = tokenIds(tok, texts);
    expect(ids.shape).toEqual([4, 2 + 5]); // "a thick , slanted seven" + <start> <end>
    const full = tf.tensor2d(texts.map((t) => tok.encode(t).inputIds), undefined, 'int32');
    expect(full.shape[1]).toBe(16);
    const a = clip.encodeText(ids);
    const b = clip.encodeText(full);
    expect(tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]).toBeLessThan(1e-5);
    tf.dispose([ids, full, a, b]);
    clip.dispose();
  });

  it('captions name the digit, repeat for (seed, epoch, batch), and are drawn fresh each epoch', () => {
    const tok = mnistCaptionTokenizer();
    const { train } = vaeData({ data: dataDir, size: 8 });
    const batcher = new EpochBatcher(train, 8, 5);
    const e0 = captionBatch(batcher, tok, 0, 1);
    const again = captionBatch(batcher, tok, 0, 1);
    expect(again.captions).toEqual(e0.captions);
    expect(Array.from(again.ids.dataSync())).toEqual(Array.from(e0.ids.dataSync()));
    e0.captions.forEach((c, k) => {
      const d = e0.labels[k];
      expect(c.split(/[ ,]+/).some((w) => w === String(d) || w === DIGIT_WORDS[d]), `${c} for ${d}`).toBe(true);
      expect(d).toBe(train.labels[batcher.indices(0, 1)[k]]);
    });
    // The same images in another epoch get other captions (over 30 digits, some must differ).
    const idx0 = Array.from(batcher.indices(0, 0));
    let same = 0;
    let compared = 0;
    for (let e = 1; e < 4; e++) {
      for (let b = 0; b < batcher.stepsPerEpoch; b++) {
        const batch = captionBatch(batcher, tok, e, b);
        const idx = batcher.indices(e, b);
        idx.forEach((i, k) => {
          const j = idx0.indexOf(i);
          if (j >= 0) {
            compared++;
            if (batch.captions[k] === captionBatch(batcher, tok, 0, 0).captions[j]) same++;
          }
        });
        tf.dispose([batch.images, batch.ids]);
      }
    }
    expect(compared).toBeGreaterThan(10);
    expect(same).toBeLessThan(compared);
    tf.dispose([e0.images, e0.ids, again.images, again.ids]);
  });

  it('the shift augmentation translates each digit by at most maxShift pixels', () => {
    const { train } = vaeData({ data: dataDir, size: 8 });
    const idx = [0, 1, 2, 3, 4, 5];
    const shifted = shiftedImages(train, idx, 1, new Random(1));
    const plain = shiftedImages(train, idx, 0, new Random(1));
    const s = shifted.arraySync() as number[][][][];
    const p = plain.arraySync() as number[][][][];
    let moved = 0;
    idx.forEach((_, k) => {
      // Find the (dy, dx) in [-1, 1]² that maps the plain image onto the shifted one.
      const fits = [];
      for (let dy = -1; dy <= 1; dy++) {
        for (let dx = -1; dx <= 1; dx++) {
          let ok = true;
          for (let y = 0; y < 8 && ok; y++) {
            for (let x = 0; x < 8 && ok; x++) {
              const sy = y - dy;
              const sx = x - dx;
              const want = sy >= 0 && sy < 8 && sx >= 0 && sx < 8 ? p[k][sy][sx][0] : -1;
              ok = Math.abs(s[k][y][x][0] - want) < 1e-6;
            }
          }
          if (ok) fits.push([dy, dx]);
        }
      }
      expect(fits.length, `digit ${k}`).toBeGreaterThan(0);
      if (!fits.some(([dy, dx]) => dy === 0 && dx === 0)) moved++;
    });
    expect(moved).toBeGreaterThan(0);
    tf.dispose([shifted, plain]);
  });
});

describe('trainClip', () => {
  it('lowers the loss and writes clip/ with config, weights and the caption tokenizer', () => {
    expect(straight.stopped).toBe('finished');
    expect(straight.step).toBe(12);
    expect(straight.history.epochs).toHaveLength(3);
    const h = straight.history.steps;
    const mean = (xs: typeof h) => xs.reduce((a, s) => a + s.loss, 0) / xs.length;
    expect(mean(h.slice(-4))).toBeLessThan(mean(h.slice(0, 4)));
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json']) expect(fs.existsSync(path.join(straightDir, 'clip', f)), f).toBe(true);
    for (const f of ['history.json', 'loss.png', 'similarity.png', 'state.safetensors']) expect(fs.existsSync(path.join(straightDir, 'train/clip', f)), f).toBe(true);
    const tok = JSON.parse(fs.readFileSync(path.join(straightDir, 'clip/tokenizer.json'), 'utf8'));
    expect(tok.vocab).toEqual(['<pad>', '<start>', '<end>', '<unk>', ...CAPTION_VOCABULARY, ...CAPTION_PUNCTUATION]);
    expect(tok.vocab).toEqual(expect.arrayContaining(['0', '7', 'seven', 'thick', 'slanted']));
  });

  it('the saved model reproduces the reported held-out zero-shot accuracy and recall', async () => {
    const clip = CLIPModel.fromPretrained(path.join(straightDir, 'clip'));
    const { val } = vaeData({ data: dataDir, size: 8 });
    expect(val.n).toBe(12);
    const report = await evaluateClip(clip, val, { limit: val.n });
    const last = straight.history.epochs[2];
    expect(straight.zeroShotAccuracy).toBe(last.zeroShot);
    expect(report.zeroShot.accuracy).toBeCloseTo(last.zeroShot!, 6);
    expect(report.textToImageRecall[1]).toBeCloseTo(last.recall1!, 6);
    expect(report.textToImageRecall[5]).toBeCloseTo(last.recall5!, 6);
    expect(report.scale).toBeCloseTo(last.scale!, 4);
    clip.dispose();
  });

  it("the UNet's loaders read the text tower and tokenizer from clip/ (same embeddings)", () => {
    const dir = path.join(straightDir, 'clip');
    const clip = CLIPModel.fromPretrained(dir);
    const te = TextEncoder.fromPretrained(dir);
    const tok = loadTokenizer(dir);
    const ids = tf.tensor2d([tok.encode('a thick seven').inputIds, tok.encode('0').inputIds], undefined, 'int32');
    const out = te.forward(ids);
    expect(out.lastHiddenState.shape).toEqual([2, 16, 16]);
    const a = l2Normalize(out.textEmbeds!);
    const b = clip.encodeText(ids);
    expect(tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]).toBeLessThan(1e-6);
    tf.dispose([ids, out.lastHiddenState, out.pooledOutput, out.textEmbeds!, a, b]);
    clip.dispose();
    te.dispose();
  });

  it('stopped mid-epoch and resumed: bit-identical weights and optimizer state', async () => {
    const dir = path.join(tmp, 'split');
    const first = await trainClip({ ...opts(dir), stopAtStep: 6 }); // epoch 2, batch 2 of 4
    expect(first.stopped).toBe('stop-at-step');
    expect(readStateInfo(statePath(dir, 'clip'))).toMatchObject({ step: 6, epoch: 1, batch: 2 });
    const second = await trainClip({ ...opts(dir), resume: true });
    expect(second.step).toBe(12);
    expect(second.zeroShotAccuracy).toBe(straight.zeroShotAccuracy);
    expectSameRun(straightDir, dir);
    // A different loss target is a different run: refused.
    await expect(trainClip({ ...opts(dir), sameLabelWeight: 1, resume: true })).rejects.toThrow(/different settings \(sameLabelWeight 0\.5 → 1\)/);
  });

  it('the CLI stops at a step, and --resume with only --run finishes with the same weights', async () => {
    const dir = path.join(tmp, 'cli');
    const args = [...clipCliArgs(dir), '--stop-at-step', '5'];
    const first = await sdlab(args);
    expect(first.stdout).toMatch(/clip: stopped \(stop-at-step\) at step 5\/12/);
    const resumed = await sdlab(['train', 'clip', '--backend', 'cpu', '--run', dir, '--resume']);
    expect(resumed.stdout).toMatch(/clip: trained 12 steps .*held-out zero-shot accuracy \d+\.\d%, text->image recall@1/);
    const a = snapshot(straightDir);
    const b = snapshot(dir);
    const differing = [...a].filter(([k, v]) => JSON.stringify(v) !== JSON.stringify(b.get(k))).map(([k]) => k);
    expect(differing).toEqual([]);
  });

  it('--resume restores --val-limit: the held-out numbers after the resume are those of an uninterrupted run', async () => {
    const dir = path.join(tmp, 'cli-val-limit');
    const args = [...clipCliArgs(dir), '--val-limit', '7', '--stop-at-step', '5'];
    await sdlab(args);
    expect(readStateInfo(statePath(dir, 'clip')).settings.valLimit).toBe(7);
    await sdlab(['train', 'clip', '--backend', 'cpu', '--run', dir, '--resume']);
    const ref = path.join(tmp, 'val-limit-straight');
    await trainClip({ ...opts(ref), valLimit: 7 });
    const strip = (run: string) => readHistory(trainDir(run, 'clip'), 'clip').epochs.map(({ seconds: _s, ...rest }) => rest);
    expect(strip(dir)).toHaveLength(3);
    expect(strip(dir)).toEqual(strip(ref));
    expect(strip(dir)).not.toEqual(strip(straightDir)); // all held-out digits give other numbers
  });
});

/**
 * sdlab's CLIP: the symmetric contrastive loss against hand-computed closed forms and a float64
 * reference (value and finite-difference gradients), the model's save/load round trip, the image
 * encoder, a few steps of training on a separable toy problem, and the evaluation metrics on
 * hand-made embeddings with known answers (plus evaluateClip checked against them).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { PNG } from 'pngjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CLIPModel,
  type CLIPConfig,
  IMAGE_ENCODER_PRESETS,
  ImageEncoder,
  LOGIT_SCALE_INIT,
  TEXT_ENCODER_PRESETS,
  TextEncoder,
  WordTokenizer,
  clipLoss,
  mnistClipConfig,
} from '../src/clip/index.ts';
import { cosineSimilarity, digitPrompts, evaluateClip, recallAtK, renderSimilarityMatrix, viridis, zeroShotPredict, zeroShotScores } from '../src/eval/clip.ts';
import { mnistCaptionTokenizer } from '../src/train/clip.ts';
import { CAPTION_VOCABULARY, captionFor } from '../src/data/captions.ts';
import type { Dataset } from '../src/data/types.ts';
import { manualSeed } from '../src/nn/index.ts';
import { UsageError } from '../src/util/errors.ts';
import { Random } from '../src/util/random.ts';
import { logSumExp, scaledLogits } from './helpers/infonce-reference.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-clip-'));
beforeAll(async () => {
  await tf.setBackend('cpu');
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const maxAbs = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]);
const softplus = (x: number) => Math.log1p(Math.exp(x));

/** The loss in float64, written out directly from the definition. */
function referenceLoss(img: number[][], txt: number[][], logitScale: number): number {
  const n = img.length;
  const logits = scaledLogits(img, txt, logitScale);
  const lse = logSumExp;
  let i2t = 0;
  let t2i = 0;
  for (let i = 0; i < n; i++) {
    i2t += lse(logits[i]) - logits[i][i];
    t2i += lse(logits.map((row) => row[i])) - logits[i][i];
  }
  return (i2t / n + t2i / n) / 2;
}

describe('clipLoss (symmetric InfoNCE)', () => {
  it('matches the closed form on a 2×2 example (both directions count)', () => {
    // logits = [[1, 0.6], [0, 0.8]] at scale 1: rows are image→text, columns text→image.
    const img = tf.tensor2d([[1, 0], [0, 1]]);
    const txt = tf.tensor2d([[1, 0], [0.6, 0.8]]);
    const want = 0.5 * ((softplus(-0.4) + softplus(-0.8)) / 2 + (softplus(-1) + softplus(-0.2)) / 2);
    expect(clipLoss(img, txt, 0).dataSync()[0]).toBeCloseTo(want, 6);
    expect(clipLoss(img, txt, tf.scalar(0)).dataSync()[0]).toBeCloseTo(want, 6);
    // Swapping the roles of images and texts gives the same symmetric loss.
    expect(clipLoss(txt, img, 0).dataSync()[0]).toBeCloseTo(want, 6);
  });

  it('caps the scale at 100 (logit_scale ≤ ln 100)', () => {
    // Every pair is mismatched by 0.2: each of the four terms is softplus(0.2·scale).
    const img = tf.tensor2d([[1, 0], [0, 1]]);
    const txt = tf.tensor2d([[0.6, 0.8], [0.8, 0.6]]);
    expect(clipLoss(img, txt, Math.log(10)).dataSync()[0]).toBeCloseTo(softplus(2), 5);
    expect(clipLoss(img, txt, Math.log(100)).dataSync()[0]).toBeCloseTo(softplus(20), 4);
    expect(clipLoss(img, txt, Math.log(1000)).dataSync()[0]).toBeCloseTo(softplus(20), 4);
  });

  it('agrees with a float64 reference, and its gradients with finite differences', () => {
    const rng = new Random(3);
    const n = 4;
    const p = 3;
    const img = Array.from({ length: n }, () => Array.from({ length: p }, () => rng.normal() * 0.5));
    const txt = Array.from({ length: n }, () => Array.from({ length: p }, () => rng.normal() * 0.5));
    const ls = 1.3;
    const f = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => clipLoss(a as tf.Tensor2D, b as tf.Tensor2D, c as tf.Scalar);
    const [gi, gt, gs] = tf.grads(f)([tf.tensor2d(img), tf.tensor2d(txt), tf.scalar(ls)]).map((g) => g.dataSync());
    expect(f(tf.tensor2d(img), tf.tensor2d(txt), tf.scalar(ls)).dataSync()[0]).toBeCloseTo(referenceLoss(img, txt, ls), 5);
    const h = 1e-6;
    const fd = (perturb: (d: number) => number) => (perturb(h) - perturb(-h)) / (2 * h);
    const near = (got: number, want: number) => expect(Math.abs(got - want)).toBeLessThan(1e-4 * Math.max(1, Math.abs(want)));
    for (let i = 0; i < n; i++) {
      for (let k = 0; k < p; k++) {
        near(gi![i * p + k], fd((d) => referenceLoss(img.map((r, a) => r.map((v, b) => (a === i && b === k ? v + d : v))), txt, ls)));
        near(gt![i * p + k], fd((d) => referenceLoss(img, txt.map((r, a) => r.map((v, b) => (a === i && b === k ? v + d : v))), ls)));
      }
    }
    near(gs![0], fd((d) => referenceLoss(img, txt, ls + d)));
    expect(Math.abs(gs![0])).toBeGreaterThan(1e-3);
    // Above the cap the temperature gets no gradient.
    expect(tf.grad((c: tf.Tensor) => clipLoss(tf.tensor2d(img), tf.tensor2d(txt), c as tf.Scalar))(tf.scalar(5)).dataSync()[0]).toBe(0);
  });

  it('rejects mismatched batches', () => {
    expect(() => clipLoss(tf.zeros([2, 3]) as tf.Tensor2D, tf.zeros([3, 3]) as tf.Tensor2D, 0)).toThrow(UsageError);
  });
});

// ---------------------------------------------------------------------------------------------

const tinyTokenizer = () => new WordTokenizer([...CAPTION_VOCABULARY, ','], { maxLength: 8, onWarn: () => {} });

/** A small CLIP (16×16 images, width-16 text) so that CPU tests stay fast. */
function tinyConfig(vocabSize: number, sampleSize = 16): CLIPConfig {
  return {
    projection_dim: 8,
    logit_scale_init_value: LOGIT_SCALE_INIT,
    text_config: {
      ...TEXT_ENCODER_PRESETS.mnist,
      vocab_size: vocabSize,
      hidden_size: 16,
      intermediate_size: 32,
      projection_dim: 8,
      num_hidden_layers: 1,
      num_attention_heads: 2,
      max_position_embeddings: 8,
    },
    image_config: { ...IMAGE_ENCODER_PRESETS.mnist, sample_size: sampleSize, block_out_channels: [8, 16], norm_num_groups: 4, projection_dim: 8 },
  };
}

/** n random 16×16 "digits" (values in [0, 1]) with labels i mod 10. */
function toyDataset(n: number, size = 16): Dataset {
  const rng = new Random(11);
  const images = Float32Array.from({ length: n * size * size }, () => (rng.next() < 0.3 ? rng.next() : 0));
  return { images, labels: Uint8Array.from({ length: n }, (_, i) => i % 10), n, height: size, width: size };
}

describe('CLIPModel', () => {
  it('the MNIST config: both towers project to 128, image encoder 100–300 k parameters', () => {
    const tok = mnistCaptionTokenizer();
    expect(tok.vocabSize).toBe(CAPTION_VOCABULARY.length + 4 + 1);
    const cfg = mnistClipConfig(tok.vocabSize);
    expect(cfg.text_config.vocab_size).toBe(tok.vocabSize);
    const img = new ImageEncoder(cfg.image_config);
    expect(img.numParameters()).toBeGreaterThan(1e5);
    expect(img.numParameters()).toBeLessThan(3e5);
    expect(img.forward(tf.zeros([2, 32, 32, 1]) as tf.Tensor4D).shape).toEqual([2, 128]);
    expect(() => img.forward(tf.zeros([2, 32, 32, 3]) as tf.Tensor4D)).toThrow(/\[batch, height, width, 1\]/);
    img.dispose();
    expect(() => new CLIPModel({ ...cfg, projection_dim: 64 })).toThrow(/projection_dim 64 must equal/);
  });

  it('encodes to unit vectors, starts at logit scale 1/0.07, and frees every intermediate tensor', () => {
    const tok = tinyTokenizer();
    manualSeed(1);
    const model = new CLIPModel(tinyConfig(tok.vocabSize));
    model.tokenizer = tok;
    expect(model.scale).toBeCloseTo(1 / 0.07, 4);
    const ids = model.tokenize(['a handwritten seven', 'the digit 3', 'nine']);
    const x = tf.randomUniform([3, 16, 16, 1], -1, 1, 'float32', 5) as tf.Tensor4D;
    const before = tf.memory().numTensors;
    const out = model.forward(x, ids);
    expect(tf.memory().numTensors).toBe(before + 4); // just the four outputs
    tf.tidy(() => {
      expect(tf.norm(out.imageEmbeds, 'euclidean', 1).dataSync().every((v) => Math.abs(v - 1) < 1e-5)).toBe(true);
      expect(tf.norm(out.textEmbeds, 'euclidean', 1).dataSync().every((v) => Math.abs(v - 1) < 1e-5)).toBe(true);
      expect(maxAbs(out.logitsPerImage, tf.mul(tf.matMul(out.imageEmbeds, out.textEmbeds, false, true), 1 / 0.07))).toBeLessThan(1e-4);
      expect(out.loss.dataSync()[0]).toBeCloseTo(clipLoss(out.imageEmbeds, out.textEmbeds, LOGIT_SCALE_INIT).dataSync()[0], 5);
    });
    tf.dispose([out.imageEmbeds, out.textEmbeds, out.logitsPerImage, out.loss]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([ids, x]);
    model.logit_scale.assign(tf.scalar(7));
    model.clampLogitScale();
    expect(model.logit_scale.dataSync()[0]).toBeCloseTo(Math.log(100), 6);
    model.dispose();
  });

  it('learns a separable toy problem: every parameter gets a gradient and the loss falls', () => {
    const tok = tinyTokenizer();
    manualSeed(2);
    const model = new CLIPModel(tinyConfig(tok.vocabSize, 8));
    model.tokenizer = tok;
    // Four 8×8 pictures a CNN can tell apart: horizontal bar, vertical bar, centre dot, frame.
    const S = 8;
    const mid = (v: number) => v >= 3 && v < 5;
    const ink = (k: number, y: number, x: number) => [mid(y), mid(x), mid(y) && mid(x), y % 7 === 0 || x % 7 === 0][k];
    const x = tf.tensor4d(Float32Array.from({ length: 4 * S * S }, (_, i) => (ink(Math.floor(i / (S * S)), Math.floor((i % (S * S)) / S), i % S) ? 1 : -1)), [4, S, S, 1]);
    const ids = model.tokenize(['zero', 'one', 'two', 'three']);
    const { value, grads } = tf.variableGrads(() => model.loss(x, ids), model.parameters());
    const first = value.dataSync()[0];
    const silent = model.namedParameters().filter(([, p]) => tf.max(tf.abs(grads[p.variable.name])).dataSync()[0] === 0);
    expect(silent.map(([n]) => n)).toEqual([]);
    tf.dispose(grads);
    const opt = tf.train.adam(5e-3);
    let last = first;
    for (let i = 0; i < 30; i++) {
      last = (opt.minimize(() => model.loss(x, ids), true, model.parameters()) as tf.Scalar).dataSync()[0];
      model.clampLogitScale();
    }
    // Chance level is ln 4 ≈ 1.39 (every caption equally likely). Observed 1.56 → 0.82: one pair
    // is told apart, three are still merged (3/4·ln 3); splitting those takes more steps.
    expect(first).toBeGreaterThan(1.2);
    expect(last).toBeLessThan(1.0);
    model.dispose();
  });

  it('saves config.json + model.safetensors + tokenizer.json and loads back identical', () => {
    const tok = tinyTokenizer();
    manualSeed(3);
    const model = new CLIPModel(tinyConfig(tok.vocabSize));
    model.logit_scale.assign(tf.scalar(3.25));
    const run = path.join(dir, 'run/clip');
    model.save(run, tok);
    expect(fs.readdirSync(run).sort()).toEqual(['config.json', 'model.safetensors', 'tokenizer.json']);
    const cfg = JSON.parse(fs.readFileSync(path.join(run, 'config.json'), 'utf8'));
    expect(cfg._class_name).toBe('CLIPModel');
    expect(cfg.text_config.hidden_size).toBe(16);

    const again = CLIPModel.fromPretrained(run);
    expect(again.config).toEqual(model.config);
    const a = model.stateDict();
    const b = again.stateDict();
    expect([...b.keys()]).toEqual([...a.keys()]);
    expect(a.has('text_model.encoder.layers.0.self_attn.q_proj.weight') && a.has('text_projection.weight') && a.has('logit_scale')).toBe(true);
    for (const [k, t] of a) expect(Buffer.from(b.get(k)!.data.buffer).equals(Buffer.from(t.data.buffer)), k).toBe(true);
    expect(again.scale).toBeCloseTo(Math.exp(3.25), 4);
    expect(again.tokenizer!.encode('a thick, slanted 7').inputIds).toEqual(tok.encode('a thick, slanted 7').inputIds);
    const x = tf.randomUniform([2, 16, 16, 1], -1, 1, 'float32', 9) as tf.Tensor4D;
    expect(maxAbs(again.encodeImage(x), model.encodeImage(x))).toBe(0);
    expect(maxAbs(again.encodePrompts(['seven', 'a bold 1']), model.encodeText([tok.encode('seven').inputIds, tok.encode('a bold 1').inputIds]))).toBe(0);

    // The text tower alone loads out of the same folder (what the UNet trainer needs).
    const te = TextEncoder.fromPretrained(run);
    const ids = [tok.encode('the number 4').inputIds];
    expect(maxAbs(te.forward(ids).lastHiddenState, model.textEncoder.forward(ids).lastHiddenState)).toBe(0);
    expect(maxAbs(te.forward(ids).textEmbeds!, model.textEncoder.forward(ids).textEmbeds!)).toBe(0);

    // A typo in the saved config is named, not ignored.
    fs.writeFileSync(path.join(run, 'config.json'), JSON.stringify({ ...cfg, image_config: { ...cfg.image_config, norm_num_group: 4 } }));
    expect(() => CLIPModel.fromPretrained(run)).toThrow(/image_config: unknown config key "norm_num_group"/);
    expect(() => CLIPModel.fromPretrained(path.join(dir, 'missing'))).toThrow(/no config\.json/);
    // A tokenizer longer than the position table is refused at save time.
    expect(() => model.save(path.join(dir, 'bad'), new WordTokenizer(['a'], { maxLength: 12 }))).toThrow(/max_position_embeddings is 8/);
    model.dispose();
    again.dispose();
  });
});

// ---------------------------------------------------------------------------------------------

describe('evaluation metrics on hand-made embeddings', () => {
  it('cosine similarity ignores length', () => {
    const s = cosineSimilarity([[3, 0], [1, 1]], [[1, 0], [0, 2]]);
    expect([s.rows, s.cols]).toEqual([2, 2]);
    expect(Array.from(s.data).map((v) => +v.toFixed(5))).toEqual([1, 0, +Math.SQRT1_2.toFixed(5), +Math.SQRT1_2.toFixed(5)]);
  });

  it('zero-shot: nearest class prompt, accuracy, per-class accuracy, confusion', () => {
    const classes = [[1, 0, 0], [0, 1, 0], [0, 0, 1]];
    const images = [
      [9, 1, 0], // → 0 (length does not matter)
      [0, 0.2, 1], // → 2
      [0.1, 1, 0.3], // → 1
      [1, 0, 0.1], // → 0
    ];
    const pred = zeroShotPredict(images, classes);
    expect(Array.from(pred)).toEqual([0, 2, 1, 0]);
    const r = zeroShotScores(pred, [0, 2, 2, 1], 3);
    expect(r.accuracy).toBe(0.5);
    expect(r.perClass).toEqual([1, 0, 0.5]);
    expect(r.confusion).toEqual([[1, 0, 0], [1, 0, 0], [0, 1, 1]]);
    expect(zeroShotScores([0], [0], 2).perClass[1]).toBeNaN();
  });

  it('recall@k: own-candidate and same-label relevance, ties count against', () => {
    // Rows: queries; the own candidate of query i is column i.
    // query 0: own 0.9 is best → rank 1; query 1: own 0.5, two above → rank 3; query 2: own lowest → rank 4.
    const sim = { rows: 3, cols: 4, data: Float32Array.from([0.9, 0.1, 0.2, 0.3, 0.8, 0.5, 0.7, 0.0, 0.6, 0.5, -0.2, 0.1]) };
    expect(recallAtK(sim, [1, 3, 4])).toEqual({ 1: 1 / 3, 3: 2 / 3, 4: 1 });
    // Labels: candidates [a, b, a, b]; queries [b, a, b]: any candidate with the query's label counts.
    // query 0 (b): best b is 0.3, one a above (0.9) → rank 2; query 1 (a): 0.8 is best → 1; query 2 (b): 0.5, one a above → 2.
    expect(recallAtK(sim, [1, 2], { queryLabels: [1, 0, 1], candidateLabels: [0, 1, 0, 1] })).toEqual({ 1: 1 / 3, 2: 1 });
    // A collapsed model (everything equal) must not score perfectly.
    expect(recallAtK({ rows: 2, cols: 2, data: new Float32Array(4).fill(0.5) }, [1, 2])).toEqual({ 1: 0, 2: 1 });
  });

  it('the similarity heatmap colours cells from min (dark) to max (yellow)', () => {
    const r = renderSimilarityMatrix({ rows: 2, cols: 2, data: Float32Array.from([1, -1, 0, 0.5]) }, { cellSize: 12 });
    const cell = (i: number, j: number) => r.getPixel(4 + j * 12 + 1, 13 + i * 12 + 1);
    expect(cell(0, 0)).toEqual([...viridis(1)]);
    expect(cell(0, 1)).toEqual([...viridis(0)]);
    expect(cell(1, 0)).toEqual([...viridis(0.5)]);
    expect(viridis(1)).toEqual([253, 231, 37]);
    expect(viridis(0)).toEqual([68, 1, 84]);
  });

  it('evaluateClip agrees with the metric functions, in batches, and writes the PNG', async () => {
    const tok = tinyTokenizer();
    manualSeed(4);
    const model = new CLIPModel(tinyConfig(tok.vocabSize));
    model.tokenizer = tok;
    const ds = toyDataset(24);
    const png = path.join(dir, 'sim.png');
    const report = await evaluateClip(model, ds, { batchSize: 7, seed: 5, similarityPng: png });

    // The same numbers computed in one go with the plain functions.
    const rng = new Random(5);
    const px = 16 * 16;
    const captions = Array.from({ length: 24 }, (_, i) => captionFor(ds.images.subarray(i * px, (i + 1) * px), ds.labels[i], rng));
    const img = model.encodeImage(tf.tensor4d(ds.images.map((v) => v * 2 - 1), [24, 16, 16, 1]));
    const txt = model.encodePrompts(captions);
    const sim = cosineSimilarity(txt, img);
    expect(report.n).toBe(24);
    expect(report.textToImageRecall).toEqual(recallAtK(sim, [1, 5]));
    expect(report.textToImageClassRecall).toEqual(recallAtK(sim, [1, 5], { queryLabels: ds.labels, candidateLabels: ds.labels }));
    expect(report.zeroShot).toEqual(zeroShotScores(zeroShotPredict(img, model.encodePrompts(digitPrompts())), ds.labels, 10));
    expect(report.meanMatchingSimilarity).toBeCloseTo(Array.from({ length: 24 }, (_, i) => sim.data[i * 24 + i]).reduce((a, b) => a + b) / 24, 5);

    const image = PNG.sync.read(fs.readFileSync(png));
    expect(image.width).toBeGreaterThan(10 * 16);
    expect(image.height).toBeGreaterThan(10 * 16);
    model.dispose();
  });
});

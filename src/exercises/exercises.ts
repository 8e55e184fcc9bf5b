/**
 * The course exercises: for each, the function a learner writes (notebooks/exercises/<name>.ts),
 * sdlab's own implementation it is graded against, the inputs it is tried on and the mistakes the
 * grader recognises. `checkExercise` (./index.ts) runs them; the machinery is in ./grader.ts.
 *
 *   name           learner's export          reference (sdlab)                                    notebook
 *   add_noise      addNoise                  NoiseSchedule.addNoise (src/schedule/forward.ts)       1
 *   ddim_step      ddimStep                  DDIMScheduler.step (src/schedule/ddim.ts)              5
 *   info_nce       infoNCE                   clipLoss (src/clip/clip.ts)                            3
 *   attention      attention                 scaledDotProductAttention (src/nn/attention.ts)        4
 *   guidance       classifierFreeGuidance    classifierFreeGuidance (src/sample/pipeline.ts)        5
 *   training_loss  noisePredictionLoss       addNoise + perExampleMse (src/train/losses.ts)         4
 *
 * The mistakes below are wrong formulas on purpose: each is what a learner's function returns when
 * it makes that mistake, so matching it names the mistake.
 */
import * as tf from '@tensorflow/tfjs';
import { NoiseSchedule } from '../schedule/forward.ts';
import { DDIMScheduler } from '../schedule/ddim.ts';
import { clipLoss, l2Normalize } from '../clip/clip.ts';
import { scaledDotProductAttention } from '../nn/attention.ts';
import { classifierFreeGuidance } from '../sample/pipeline.ts';
import { perExampleMse } from '../train/losses.ts';
import { Random } from '../util/random.ts';
import { type Exercise, isTensor } from './grader.ts';

// ---------------------------------------------------------------------------------------------
// shared inputs

/** Stable Diffusion's training schedule (scaled_linear β from 0.00085 to 0.012, T = 1000), as the notebooks use it. */
const SD_SCHEDULE = { num_train_timesteps: 1000, beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012, trained_betas: null } as const;
const schedule = new NoiseSchedule(SD_SCHEDULE);

/** Standard normal values of `shape`. */
function randn(rng: Random, shape: number[], scale = 1): tf.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return tf.mul(tf.tensor(rng.normalArray(n), shape), scale);
}

/** One value per batch item, shaped [B, 1, …, 1] to broadcast over items of rank − 1 axes. */
function perItem(values: number[], rank: number): tf.Tensor {
  return tf.reshape(tf.tensor1d(values), [values.length, ...Array(rank - 1).fill(1)]);
}

/** alphasCumprod[i], NaN past the ends (as a wrong index gives). */
const at = (ac: ArrayLike<number>, i: number) => (i >= 0 && i < ac.length ? ac[i] : NaN);

/** A forward process with chosen coefficient functions and indexing: the mistakes of x_t. */
function noisedWith(
  x0: tf.Tensor,
  noise: tf.Tensor,
  ac: ArrayLike<number>,
  t: number[],
  signal: (a: number) => number,
  noiseCoef: (a: number) => number,
  index: (t: number, k: number) => number = (tk) => tk,
): tf.Tensor {
  const a = t.map((tk, k) => at(ac, index(tk, k)));
  return tf.add(tf.mul(x0, perItem(a.map(signal), x0.rank)), tf.mul(noise, perItem(a.map(noiseCoef), x0.rank)));
}

const sqrt = Math.sqrt;
const sqrt1m = (a: number) => Math.sqrt(1 - a);
const FORWARD = 'x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, with ᾱ_t = alphasCumprod[t[b]] for batch item b (axis 0)';

/** The mistakes of the forward process, shared by add_noise and training_loss (there inside the loss). */
const FORWARD_MISTAKES: Array<{ hint: string; signal: (a: number) => number; noise: (a: number) => number; index?: (t: number, k: number, t0: number) => number }> = [
  { hint: 'your ᾱ_t is indexed at t+1: alphasCumprod[t] already is ᾱ_t (index 0 is after the first noising step), so index it at t itself.', signal: sqrt, noise: sqrt1m, index: (t) => t + 1 },
  { hint: 'your ᾱ_t is indexed at t−1: alphasCumprod[t] already is ᾱ_t, so index it at t itself.', signal: sqrt, noise: sqrt1m, index: (t) => t - 1 },
  { hint: 'you used the first timestep for every item: each batch item b has its own t[b], so gather ᾱ at every t and shape the coefficients [B, 1, …, 1] to scale each item.', signal: sqrt, noise: sqrt1m, index: (_t, _k, t0) => t0 },
  { hint: 'you used ᾱ_t and 1−ᾱ_t as the coefficients: they are variances; the coefficients are their square roots √ᾱ_t and √(1−ᾱ_t) (so the variance of x_t stays ᾱ_t + (1−ᾱ_t) = 1).', signal: (a) => a, noise: (a) => 1 - a },
  { hint: 'you used ᾱ_t instead of √ᾱ_t on x0: the signal is scaled by the square root, √ᾱ_t·x0.', signal: (a) => a, noise: sqrt1m },
  { hint: 'you used 1−ᾱ_t instead of √(1−ᾱ_t) on ε: the noise is scaled by the square root, √(1−ᾱ_t)·ε.', signal: sqrt, noise: (a) => 1 - a },
  { hint: 'you swapped the signal and noise coefficients: x0 gets √ᾱ_t (≈ 1 at small t: almost clean) and ε gets √(1−ᾱ_t).', signal: sqrt1m, noise: sqrt },
  { hint: 'the noise coefficient is √(1−ᾱ_t), not 1−√ᾱ_t: take the square root of 1−ᾱ_t.', signal: sqrt, noise: (a) => 1 - Math.sqrt(a) },
  { hint: 'x0 must be scaled too: x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (the signal fades as the noise grows).', signal: () => 1, noise: sqrt1m },
];

const FLOAT64_HINT =
  'tf.tensor() does not take a Float64Array (sdlab\'s alphasCumprod is one): pick the values in plain JS, ' +
  'e.g. t.map((ti) => alphasCumprod[ti]), or convert with Array.from(alphasCumprod) first.';
const BROADCAST_HINT =
  'a shape error: one coefficient per batch item must be shaped [B, 1, …, 1] (tf.reshape) so it scales a whole item (x0.shape[0] is the batch).';

// ---------------------------------------------------------------------------------------------
// add_noise: the forward process

type AddNoiseArgs = [x0: tf.Tensor, noise: tf.Tensor, alphasCumprod: ArrayLike<number>, t: number[]];

function addNoiseCase(name: string, shape: number[], t: number[]) {
  return { name, inputs: (rng: Random): AddNoiseArgs => [randn(rng, shape), randn(rng, shape), Float64Array.from(schedule.alphasCumprod), t] };
}

/** dy of the gradient checks: a fixed random weighting of the output, the same for the learner and the reference. */
const weightingFor = (y: tf.Tensor) => randn(new Random('dy'), y.shape);

export const addNoiseExercise: Exercise<AddNoiseArgs> = {
  name: 'add_noise',
  exportName: 'addNoise',
  signature: '(x0: tf.Tensor, noise: tf.Tensor, alphasCumprod: ArrayLike<number>, t: number[]): tf.Tensor',
  description: 'the forward process: x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, one t per batch item',
  reference: 'src/schedule/forward.ts NoiseSchedule.addNoise (noisedSample)',
  notebook: '1 — forward noising and schedules',
  checks: 'values on 3 shapes (one image; batch 3 of 5×7×2; batch 4 of rank 2 with t = T−1), d/dx0 and d/dε',
  cases: [
    addNoiseCase('one image 4×4×1, t = [500]', [1, 4, 4, 1], [500]),
    addNoiseCase('batch 3 of 5×7×2 (non-square), t = [0, 250, 998]', [3, 5, 7, 2], [0, 250, 998]),
    addNoiseCase('batch 4 of 6 values (rank 2), t = [10, 999, 500, 3]', [4, 6], [10, 999, 500, 3]),
  ],
  expected: (x0, noise, _ac, t) => schedule.addNoise(x0, noise, t),
  gradient: {
    what: 'd/dx0 and d/dε',
    caseIndex: 1,
    // x_t is linear in x0 and ε, so the reference's gradients are the forward process applied to dy.
    grads: (f, [x0, noise, ac, t]) => tf.grads((a: tf.Tensor, b: tf.Tensor) => f(a, b, ac, t))([x0, noise], weightingFor(x0)),
    referenceGrads: ([x0, , , t]) => {
      const dy = weightingFor(x0);
      return [schedule.addNoise(dy, tf.zerosLike(dy), t), schedule.addNoise(tf.zerosLike(dy), dy, t)];
    },
  },
  mistakes: FORWARD_MISTAKES.map((m) => ({
    hint: m.hint,
    wrong: (x0: tf.Tensor, noise: tf.Tensor, ac: ArrayLike<number>, t: number[]) =>
      noisedWith(x0, noise, ac, t, m.signal, m.noise, m.index ? (tk, k) => m.index!(tk, k, t[0]) : undefined),
  })),
  generalHint: `${FORWARD}. Look up ᾱ for each item's t, take the square roots, reshape them to [B, 1, …, 1] and combine.`,
  errorHints: [
    [/must be a number\/boolean\/string or an array|TypedArray/, FLOAT64_HINT],
    [/broadcast|shape/i, BROADCAST_HINT],
  ],
};


// ---------------------------------------------------------------------------------------------
// ddim_step: one deterministic DDIM step (η = 0, ε-prediction)

type DdimArgs = [noisePred: tf.Tensor, sample: tf.Tensor, alphaProdT: number, alphaProdTPrev: number];

/** SD's DDIM (no clipping of x0, ᾱ_0 past the last step), 10 steps: t = 901, 801, …, 1. */
const ddim = DDIMScheduler.fromConfig({}, { ...SD_SCHEDULE, clip_sample: false, set_alpha_to_one: false, steps_offset: 1 });
ddim.setTimesteps(10);
const DDIM_JUMP = ddim.numTrainTimesteps / 10;

function ddimCase(name: string, shape: number[], t: number) {
  const prev = t - DDIM_JUMP;
  const aPrev = prev >= 0 ? ddim.alphasCumprod[prev] : ddim.finalAlphaCumprod;
  return { name, inputs: (rng: Random): DdimArgs => [randn(rng, shape), randn(rng, shape), ddim.alphasCumprod[t], aPrev] };
}

/** DDIMScheduler.step at the timestep whose ᾱ is alphaProdT (the cases take both ᾱ from its table). */
function ddimReference(noisePred: tf.Tensor, sample: tf.Tensor, alphaProdT: number, alphaProdTPrev: number): tf.Tensor {
  const t = ddim.alphasCumprod.indexOf(alphaProdT);
  const prev = t - DDIM_JUMP;
  if (t < 0 || (prev >= 0 ? ddim.alphasCumprod[prev] : ddim.finalAlphaCumprod) !== alphaProdTPrev) {
    throw new Error('ddim_step: the grader\'s inputs are not a step of its scheduler');
  }
  const { prevSample, predOriginalSample } = ddim.step(noisePred, t, sample);
  predOriginalSample?.dispose();
  return prevSample;
}

/** x0 = (x − c1·ε)/c2, x_prev = c3·x0 + c4·ε: the DDIM step with chosen coefficients. */
function ddimWith(eps: tf.Tensor, x: tf.Tensor, c1: number, c2: number, c3: number, c4: number): tf.Tensor {
  const x0 = tf.div(tf.sub(x, tf.mul(eps, c1)), c2);
  return tf.add(tf.mul(x0, c3), tf.mul(eps, c4));
}

export const ddimStepExercise: Exercise<DdimArgs> = {
  name: 'ddim_step',
  exportName: 'ddimStep',
  signature: '(noisePred: tf.Tensor, sample: tf.Tensor, alphaProdT: number, alphaProdTPrev: number): tf.Tensor',
  description: 'one deterministic DDIM step: x0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t, x_prev = √ᾱ_prev·x0 + √(1−ᾱ_prev)·ε',
  reference: 'src/schedule/ddim.ts DDIMScheduler.step (eta 0, epsilon prediction, no clipping)',
  notebook: '5 — sampling',
  checks: 'values at the first, a middle and the last step of 10 (batch 1, 2 and 3; non-square latents)',
  cases: [
    ddimCase('one latent 4×4×4, t = 501 → 401', [1, 4, 4, 4], 501),
    ddimCase('batch 2 of 8×6×4 (non-square), t = 901 → 801 (the first step)', [2, 8, 6, 4], 901),
    ddimCase('batch 3 of 5×3 (rank 3), t = 1 → the end (ᾱ_prev = ᾱ_0)', [3, 5, 3], 1),
  ],
  expected: ddimReference,
  mistakes: [
    { hint: 'x0 uses √(1−ᾱ_t), not 1−ᾱ_t: the noise in x_t was scaled by √(1−ᾱ_t), so subtract √(1−ᾱ_t)·ε before dividing by √ᾱ_t.', wrong: (e, x, a, p) => ddimWith(e, x, 1 - a, sqrt(a), sqrt(p), sqrt1m(p)) },
    { hint: 'x0 divides by √ᾱ_t, not ᾱ_t: x_t − √(1−ᾱ_t)·ε is √ᾱ_t·x0.', wrong: (e, x, a, p) => ddimWith(e, x, sqrt1m(a), a, sqrt(p), sqrt1m(p)) },
    { hint: 'the direction pointing to x_t is √(1−ᾱ_prev)·ε: take the square root of 1−ᾱ_prev.', wrong: (e, x, a, p) => ddimWith(e, x, sqrt1m(a), sqrt(a), sqrt(p), 1 - p) },
    { hint: 'x_prev = √ᾱ_prev·x0 + …: scale x0 by the square root of ᾱ_prev.', wrong: (e, x, a, p) => ddimWith(e, x, sqrt1m(a), sqrt(a), p, sqrt1m(p)) },
    { hint: 'the new noise term uses the previous timestep: √(1−ᾱ_prev)·ε, not √(1−ᾱ_t)·ε.', wrong: (e, x, a, p) => ddimWith(e, x, sqrt1m(a), sqrt(a), sqrt(p), sqrt1m(a)) },
    { hint: 'you swapped ᾱ_t and ᾱ_prev: x0 is recovered at the current t (ᾱ_t = alphaProdT), then re-noised at the previous one (ᾱ_prev = alphaProdTPrev).', wrong: (e, x, a, p) => ddimWith(e, x, sqrt1m(p), sqrt(p), sqrt(a), sqrt1m(a)) },
    { hint: 'you returned the predicted x0: the step returns x_prev = √ᾱ_prev·x0 + √(1−ᾱ_prev)·ε, the sample one step less noisy.', wrong: (e, x, a) => ddimWith(e, x, sqrt1m(a), sqrt(a), 1, 0) },
  ],
  generalHint: 'first estimate the clean sample x0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t, then jump to the previous timestep: x_prev = √ᾱ_prev·x0 + √(1−ᾱ_prev)·ε (η = 0: no fresh noise).',
};

// ---------------------------------------------------------------------------------------------
// info_nce: CLIP's symmetric contrastive loss

type InfoNceArgs = [imageEmbeds: tf.Tensor2D, textEmbeds: tf.Tensor2D, logitScale: number];

function infoNceCase(name: string, n: number, dim: number, logitScale: number) {
  // Embeddings of different lengths, so that forgetting to normalise shows.
  return { name, inputs: (rng: Random): InfoNceArgs => [randn(rng, [n, dim], 2) as tf.Tensor2D, randn(rng, [n, dim], 0.5) as tf.Tensor2D, logitScale] };
}

/** Cross-entropy with the diagonal as targets, of the rows (image → text) or the columns (text → image). */
function diagonalCE(logits: tf.Tensor2D, axis: 0 | 1): tf.Scalar {
  const logp = tf.sub(logits, tf.logSumExp(logits, axis, true));
  return tf.neg(tf.mean(tf.sum(tf.mul(logp, tf.eye(logits.shape[0])), axis))) as tf.Scalar;
}

/** The InfoNCE pieces with chosen mistakes. */
function infoNceWith(img: tf.Tensor2D, txt: tf.Tensor2D, s: number, o: { normalise?: boolean; exp?: boolean; dirs?: 'both' | 'i2t' | 't2i'; sum?: boolean; batchSum?: boolean }): tf.Scalar {
  const [i, t] = o.normalise === false ? [img, txt] : [l2Normalize(img), l2Normalize(txt)];
  const logits = tf.mul(tf.matMul(i, t, false, true), o.exp === false ? s : Math.exp(s)) as tf.Tensor2D;
  const i2t = diagonalCE(logits, 1);
  const t2i = diagonalCE(logits, 0);
  let loss = o.dirs === 'i2t' ? i2t : o.dirs === 't2i' ? t2i : tf.mul(tf.add(i2t, t2i), o.sum ? 1 : 0.5);
  if (o.batchSum) loss = tf.mul(loss, img.shape[0]);
  return loss as tf.Scalar;
}

export const infoNceExercise: Exercise<InfoNceArgs> = {
  name: 'info_nce',
  exportName: 'infoNCE',
  signature: '(imageEmbeds: tf.Tensor2D, textEmbeds: tf.Tensor2D, logitScale: number): tf.Scalar',
  description: 'symmetric InfoNCE: logits = exp(logitScale)·Î·T̂ᵀ of L2-normalised embeddings, mean of both cross-entropies with the diagonal as targets',
  reference: 'src/clip/clip.ts clipLoss (on l2Normalize-d embeddings)',
  notebook: '3 — CLIP',
  checks: 'values on 3 batches (4×8, 6×5, 3×16; logitScale 2.66, 1, 4.5 — all below clipLoss\'s cap ln 100), d/dimage and d/dtext',
  cases: [
    infoNceCase('4 pairs of 8-d embeddings, logitScale = ln(1/0.07) ≈ 2.66 (CLIP\'s initial value)', 4, 8, Math.log(1 / 0.07)),
    infoNceCase('6 pairs of 5-d embeddings, logitScale = 1', 6, 5, 1),
    infoNceCase('3 pairs of 16-d embeddings, logitScale = 4.5', 3, 16, 4.5),
  ],
  expected: (img, txt, s) => clipLoss(l2Normalize(img), l2Normalize(txt), s),
  gradient: {
    what: 'd/dimageEmbeds and d/dtextEmbeds',
    caseIndex: 1,
    grads: (f, [img, txt, s]) => tf.grads((a: tf.Tensor, b: tf.Tensor) => f(a as tf.Tensor2D, b as tf.Tensor2D, s))([img, txt]),
  },
  mistakes: [
    { hint: 'only one direction: InfoNCE is symmetric — average the image→text cross-entropy (softmax over each row of the logits) with the text→image one (over each column).', wrong: (i, t, s) => infoNceWith(i, t, s, { dirs: 'i2t' }) },
    { hint: 'only one direction: InfoNCE is symmetric — average the text→image cross-entropy (softmax over each column) with the image→text one (over each row).', wrong: (i, t, s) => infoNceWith(i, t, s, { dirs: 't2i' }) },
    {
      hint: 'forgot exp(logitScale): logitScale is the log of the inverse temperature (CLIP starts at ln(1/0.07)), the logits are exp(logitScale)·Î·T̂ᵀ. ' +
        '(sdlab\'s clipLoss also caps the scale at 100; these checks keep logitScale below ln 100, so the cap never matters here.)',
      wrong: (i, t, s) => infoNceWith(i, t, s, { exp: false }),
    },
    { hint: 'normalise the embeddings first: divide each row by its L2 norm (tf.norm(x, \'euclidean\', -1, true)), so the logits are cosine similarities times the scale.', wrong: (i, t, s) => infoNceWith(i, t, s, { normalise: false }) },
    { hint: 'average the two directions, don\'t add them: loss = ½·(CE_image→text + CE_text→image).', wrong: (i, t, s) => infoNceWith(i, t, s, { sum: true }) },
    { hint: 'take the mean over the batch, not the sum: each cross-entropy is averaged over the N pairs.', wrong: (i, t, s) => infoNceWith(i, t, s, { batchSum: true }) },
  ],
  generalHint: 'normalise both sets of embeddings (L2, per row), logits = exp(logitScale)·Î·T̂ᵀ [N, N]; pair i is the right answer for row i and for column i: loss = ½·(CE over rows + CE over columns), each a mean over the batch.',
  errorHints: [[/shape|matMul|inner dimensions/i, 'a shape error: Î is [N, D] and T̂ is [N, D], so the logits are tf.matMul(Î, T̂, false, true) — [N, N], one row per image, one column per caption.']],
};

// ---------------------------------------------------------------------------------------------
// attention: scaled-dot-product (cross-)attention

type AttentionArgs = [q: tf.Tensor3D, k: tf.Tensor3D, v: tf.Tensor3D];

function attentionCase(name: string, b: number, lq: number, lk: number, d: number, dv: number) {
  return { name, inputs: (rng: Random): AttentionArgs => [randn(rng, [b, lq, d]) as tf.Tensor3D, randn(rng, [b, lk, d]) as tf.Tensor3D, randn(rng, [b, lk, dv]) as tf.Tensor3D] };
}

/** softmax(q·kᵀ·scale) over `axis`, then ·v (or the weights alone). */
function attentionWith(q: tf.Tensor3D, k: tf.Tensor3D, v: tf.Tensor3D, scale: number, o: { axis?: number; softmax?: boolean; weights?: boolean } = {}): tf.Tensor3D {
  const scores = tf.mul(tf.matMul(q, k, false, true), scale) as tf.Tensor3D;
  const w = o.softmax === false ? scores : (tf.softmax(tf.transpose(scores, o.axis === 1 ? [0, 2, 1] : [0, 1, 2])) as tf.Tensor3D);
  const weights = o.axis === 1 ? (tf.transpose(w, [0, 2, 1]) as tf.Tensor3D) : w;
  return o.weights ? weights : (tf.matMul(weights, v) as tf.Tensor3D);
}

export const attentionExercise: Exercise<AttentionArgs> = {
  name: 'attention',
  exportName: 'attention',
  signature: '(q: tf.Tensor3D, k: tf.Tensor3D, v: tf.Tensor3D): tf.Tensor3D',
  description: 'scaled-dot-product attention softmax(q·kᵀ/√d)·v: image tokens (queries) attend to text tokens (keys, values)',
  reference: 'src/nn/attention.ts scaledDotProductAttention (one head)',
  notebook: '4 — the UNet (cross-attention)',
  checks: 'values on 3 shapes (self-attention 4×4; cross-attention 6 image × 3 text tokens, d 5, dv 7; batch 3 of 16 × 5), d/dq, d/dk, d/dv',
  cases: [
    attentionCase('1 × 4 queries, 4 keys, d = dv = 8', 1, 4, 4, 8, 8),
    attentionCase('batch 2: 6 image tokens attend to 3 text tokens, d = 5, dv = 7', 2, 6, 3, 5, 7),
    attentionCase('batch 3: 16 image tokens attend to 5 text tokens, d = 4, dv = 2', 3, 16, 5, 4, 2),
  ],
  expected: (q, k, v) => scaledDotProductAttention(q, k, v, 1),
  gradient: {
    what: 'd/dq, d/dk and d/dv',
    caseIndex: 1,
    grads: (f, [q, k, v]) => tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => f(a as tf.Tensor3D, b as tf.Tensor3D, c as tf.Tensor3D))([q, k, v], weightingFor(tf.zeros([q.shape[0], q.shape[1], v.shape[2]]))),
  },
  mistakes: [
    { hint: 'scale by 1/√d, not 1/d: q·k sums d products of unit-variance numbers, so its spread is √d; dividing by √d keeps the softmax from saturating.', wrong: (q, k, v) => attentionWith(q, k, v, 1 / q.shape[2]) },
    { hint: 'scale the scores by 1/√d (d = q.shape[2]): without it the softmax of large dot products is almost one-hot.', wrong: (q, k, v) => attentionWith(q, k, v, 1) },
    { hint: 'divide by √d, don\'t multiply: scores = q·kᵀ/√d.', wrong: (q, k, v) => attentionWith(q, k, v, Math.sqrt(q.shape[2])) },
    { hint: 'd is the size of the queries and keys (q.shape[2]), not of the values: scale by 1/√d with d = q.shape[2].', wrong: (q, k, v) => attentionWith(q, k, v, 1 / Math.sqrt(v.shape[2])) },
    { hint: 'softmax over the keys axis (last), not the queries: each query\'s weights over the keys must sum to 1 (tf.softmax works on the last axis of [B, Lq, Lk]).', wrong: (q, k, v) => attentionWith(q, k, v, 1 / Math.sqrt(q.shape[2]), { axis: 1 }) },
    { hint: 'forgot the softmax: the scores must become weights that are positive and sum to 1 over the keys, softmax(q·kᵀ/√d), before they mix v.', wrong: (q, k, v) => attentionWith(q, k, v, 1 / Math.sqrt(q.shape[2]), { softmax: false }) },
    { hint: 'you returned the attention weights [B, Lq, Lk]: multiply them by v to mix the values, giving [B, Lq, dv].', wrong: (q, k, v) => attentionWith(q, k, v, 1 / Math.sqrt(q.shape[2]), { weights: true }) },
  ],
  generalHint: 'scores = q·kᵀ/√d ([B, Lq, Lk]: tf.matMul(q, k, false, true)), weights = softmax over the last axis (the keys), output = weights·v ([B, Lq, dv]).',
  errorHints: [[/shape|inner dimensions|matMul/i, 'a shape error: q is [B, Lq, d], k is [B, Lk, d], v is [B, Lk, dv]; scores = tf.matMul(q, k, false, true) is [B, Lq, Lk], and scores·v is [B, Lq, dv].']],
};

// ---------------------------------------------------------------------------------------------
// guidance: classifier-free guidance

type GuidanceArgs = [uncond: tf.Tensor, cond: tf.Tensor, g: number];

function guidanceCase(name: string, shape: number[], g: number) {
  return { name, inputs: (rng: Random): GuidanceArgs => [randn(rng, shape), randn(rng, shape), g] };
}

const GUIDANCE_HINT = 'g multiplies (cond − uncond) and is added to uncond: ε̂ = ε_uncond + g·(ε_cond − ε_uncond), so g = 0 gives ε_uncond, g = 1 gives ε_cond and g > 1 goes past cond, away from uncond.';

export const guidanceExercise: Exercise<GuidanceArgs> = {
  name: 'guidance',
  exportName: 'classifierFreeGuidance',
  signature: '(uncond: tf.Tensor, cond: tf.Tensor, g: number): tf.Tensor',
  description: 'classifier-free guidance: ε̂ = ε_uncond + g·(ε_cond − ε_uncond)',
  reference: 'src/sample/pipeline.ts classifierFreeGuidance',
  notebook: '5 — sampling',
  checks: 'values at g = 7.5, 1.75, 0 and 1 (batch 1 to 3, non-square)',
  cases: [
    guidanceCase('one latent 4×4×4, g = 7.5 (SD\'s default)', [1, 4, 4, 4], 7.5),
    guidanceCase('batch 2 of 8×6×4 (non-square), g = 1.75 (the digits\' default)', [2, 8, 6, 4], 1.75),
    guidanceCase('batch 3 of 5 values, g = 0 (the unconditional model)', [3, 5], 0),
    guidanceCase('batch 2 of 3×3×1, g = 1 (the conditional model)', [2, 3, 3, 1], 1),
  ],
  expected: (u, c, g) => classifierFreeGuidance(u, c, g),
  mistakes: [
    { hint: GUIDANCE_HINT, wrong: (u, c, g) => tf.add(u, tf.mul(c, g)) },
    { hint: GUIDANCE_HINT, wrong: (u, c, g) => tf.add(c, tf.mul(tf.sub(c, u), g)) },
    { hint: GUIDANCE_HINT, wrong: (u, c, g) => tf.mul(tf.sub(c, u), g) },
    { hint: `the difference points from uncond to cond: (cond − uncond), not (uncond − cond). ${GUIDANCE_HINT}`, wrong: (u, c, g) => tf.add(u, tf.mul(tf.sub(u, c), g)) },
    { hint: `you swapped the roles of cond and uncond. ${GUIDANCE_HINT}`, wrong: (u, c, g) => tf.add(c, tf.mul(tf.sub(u, c), g)) },
  ],
  generalHint: GUIDANCE_HINT,
};

// ---------------------------------------------------------------------------------------------
// training_loss: one training step's loss

type Predict = ((xt: tf.Tensor, t: number[]) => tf.Tensor) & { weight?: tf.Tensor };
type LossArgs = [predict: Predict, x0: tf.Tensor, noise: tf.Tensor, alphasCumprod: ArrayLike<number>, t: number[]];

/** A toy noise predictor: w ⊙ x_t + t/1000 (it uses t, as a UNet does). */
function toyModel(w: tf.Tensor): Predict {
  const predict = (xt: tf.Tensor, t: number[]) => {
    const tt = isTensor(t) ? tf.cast(t, 'float32') : tf.tensor1d(Array.from(t as ArrayLike<number>));
    return tf.add(tf.mul(xt, w), tf.reshape(tf.div(tt, 1000), [xt.shape[0], ...Array(xt.rank - 1).fill(1)]));
  };
  return Object.assign(predict, { weight: w });
}

function lossCase(name: string, shape: number[], t: number[]) {
  return {
    name,
    inputs: (rng: Random): LossArgs => {
      const w = tf.add(randn(rng, [1, ...shape.slice(1)], 0.3), 0.5);
      return [toyModel(w), randn(rng, shape), randn(rng, shape), Float64Array.from(schedule.alphasCumprod), t];
    },
  };
}

/** mean((predict(x_t, t) − target)²) for a chosen x_t and target. */
const mse = (pred: tf.Tensor, target: tf.Tensor) => tf.mean(perExampleMse(pred, target)) as tf.Scalar;

function lossWith(args: LossArgs, o: { xt?: tf.Tensor; target?: 'noise' | 'x0' | 'xt'; reduce?: 'mean' | 'sum' | 'sumPerItem' | 'l1' } = {}): tf.Scalar {
  const [predict, x0, noise, , t] = args;
  const xt = o.xt ?? schedule.addNoise(x0, noise, t);
  const pred = predict(xt, t);
  const target = o.target === 'x0' ? x0 : o.target === 'xt' ? xt : noise;
  if (o.reduce === 'sum') return tf.sum(tf.squaredDifference(pred, target));
  if (o.reduce === 'sumPerItem') return tf.mul(mse(pred, target), x0.size / x0.shape[0]) as tf.Scalar;
  if (o.reduce === 'l1') return tf.mean(tf.abs(tf.sub(pred, target)));
  return mse(pred, target);
}

export const trainingLossExercise: Exercise<LossArgs> = {
  name: 'training_loss',
  exportName: 'noisePredictionLoss',
  signature: '(predict: (xt: tf.Tensor, t: number[]) => tf.Tensor, x0: tf.Tensor, noise: tf.Tensor, alphasCumprod: ArrayLike<number>, t: number[]): tf.Scalar',
  description: 'one training step\'s loss: noise x0 to x_t, predict ε from (x_t, t), mean((prediction − ε)²)',
  reference: 'src/schedule/forward.ts NoiseSchedule.addNoise, then src/train/losses.ts perExampleMse (diffusionLoss\'s MSE)',
  notebook: '4 — the UNet (one training step)',
  checks: 'values on 3 batches (one image; batch 3 of 6×5×2; batch 4 of rank 2), d/dweights of a toy model',
  cases: [
    lossCase('one image 4×4×1, t = [500]', [1, 4, 4, 1], [500]),
    lossCase('batch 3 of 6×5×2 (non-square), t = [10, 400, 900]', [3, 6, 5, 2], [10, 400, 900]),
    lossCase('batch 4 of 8 values (rank 2), t = [0, 998, 123, 600]', [4, 8], [0, 998, 123, 600]),
  ],
  expected: (...args) => lossWith(args),
  gradient: {
    what: 'd/dweights of the model',
    caseIndex: 1,
    grads: (f, [predict, x0, noise, ac, t]) => tf.grads((w: tf.Tensor) => f(toyModel(w), x0, noise, ac, t))([predict.weight!]),
  },
  mistakes: [
    { hint: 'the target is ε, not x0: the model is a noise predictor, so the loss compares its output with the noise that was added.', wrong: (...a) => lossWith(a, { target: 'x0' }) },
    { hint: 'the target is ε, not x_t: the loss compares the prediction with the noise that was added.', wrong: (...a) => lossWith(a, { target: 'xt' }) },
    { hint: 'the model sees the noisy x_t, not x0: first x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, then predict(x_t, t).', wrong: (...a) => lossWith(a, { xt: a[1] }) },
    { hint: 'take the mean of the squared errors, not the sum (tf.mean over every value): the loss must not grow with the batch or the image size.', wrong: (...a) => lossWith(a, { reduce: 'sum' }) },
    { hint: 'take the mean over every value (pixels too), not a sum per image: tf.mean of the squared errors.', wrong: (...a) => lossWith(a, { reduce: 'sumPerItem' }) },
    { hint: 'square the errors (MSE), not their absolute values.', wrong: (...a) => lossWith(a, { reduce: 'l1' }) },
    ...FORWARD_MISTAKES.map((m) => ({
      hint: `x_t is wrong — ${m.hint}`,
      wrong: (...a: LossArgs) => lossWith(a, { xt: noisedWith(a[1], a[2], a[3], a[4], m.signal, m.noise, m.index ? (tk, k) => m.index!(tk, k, a[4][0]) : undefined) }),
    })),
  ],
  generalHint: `${FORWARD}; the loss is mean((predict(x_t, t) − ε)²) over every value of the batch.`,
  errorHints: [
    [/must be a number\/boolean\/string or an array|TypedArray/, FLOAT64_HINT],
    [/broadcast|shape/i, BROADCAST_HINT],
  ],
};

/** Every exercise, in the order of the notebooks. */
export const EXERCISES: readonly Exercise[] = [
  addNoiseExercise,
  infoNceExercise,
  attentionExercise,
  trainingLossExercise,
  ddimStepExercise,
  guidanceExercise,
] as Exercise[];

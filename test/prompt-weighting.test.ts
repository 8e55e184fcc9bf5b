/**
 * A1111's prompt syntax (src/sample/prompt_weighting.ts) and how the pipeline encodes it
 * (StableDiffusionPipeline.encodeText): the parser against weights written by hand from A1111's
 * documented grammar, chunks of 75 tokens (comma backtrack), [B, k·77, D] embeddings whose
 * blocks are the encoder run on each chunk alone, emphasis against a float64 closed form, a
 * plain short prompt bit-identical to diffusers' single encode, and a 154-token context through
 * the UNet.
 */
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerNativeBackend } from '../src/backend/native.ts';
import { loadDiffusersPipeline } from '../src/sample/load.ts';
import type { StableDiffusionPipeline } from '../src/sample/pipeline.ts';
import { emptyChunk, parsePromptAttention, promptChunks } from '../src/sample/prompt_weighting.ts';
import { UsageError } from '../src/util/errors.ts';

const MODEL = path.resolve(import.meta.dirname, '../../shared/fixtures/sd1_tiny/model');
let pipe: StableDiffusionPipeline;

beforeAll(async () => {
  await tf.setBackend(registerNativeBackend() ? 'native' : 'cpu');
  pipe = loadDiffusersPipeline(MODEL);
});
afterAll(() => pipe?.dispose());

/** The text encoder's last hidden state for one row of ids [77, D]. */
function encodeIds(ids: number[]): Float32Array {
  return tf.tidy(() => pipe.textEncoder.forward(tf.tensor2d(ids, [1, ids.length], 'int32')).lastHiddenState.dataSync() as Float32Array);
}

describe('parsePromptAttention: A1111 grammar', () => {
  const b = 1.1;
  const cases: Array<[string, Array<[string, number]>]> = [
    ['a plain prompt', [['a plain prompt', 1]]],
    ['an (important) word', [['an ', 1], ['important', b], [' word', 1]]],
    ['((word))', [['word', b * b]]],
    ['(((word)))', [['word', b * b * b]]],
    ['[word]', [['word', 1 / b]]],
    ['[[word]]', [['word', 1 / (b * b)]]],
    ['(word:1.3)', [['word', 1.3]]],
    ['(word: 0.5 )', [['word', 0.5]]],
    ['a (b (c:2) d:0.5) e', [['a ', 1], ['b ', 0.5], ['c', 1], [' d', 0.5], [' e', 1]]],
    ['([word])', [['word', 1]]],
    ['\\(literal\\) \\[x\\]', [['(literal) [x]', 1]]],
    // Unbalanced: an open bracket weighs the rest; a stray closer or weight is text.
    ['(unbalanced', [['unbalanced', b]]],
    ['a [b', [['a ', 1], ['b', 1 / b]]],
    ['a) b]', [['a) b]', 1]]],
    ['word:1.3)', [['word:1.3)', 1]]],
    ['(word:abc)', [['word:abc', b]]],
    ['a BREAK b', [['a', 1], ['BREAK', -1], ['b', 1]]],
    ['', [['', 1]]],
  ];
  for (const [text, want] of cases) {
    it(JSON.stringify(text), () => {
      const got = parsePromptAttention(text);
      expect(got.map(([t]) => t)).toEqual(want.map(([t]) => t));
      got.forEach(([, w], i) => expect(w, `${text} run ${i}`).toBeCloseTo(want[i][1], 12));
    });
  }
  it('a weight that is not a number is one UsageError', () => {
    expect(() => parsePromptAttention('(word:1.2.3)')).toThrow(UsageError);
    expect(() => parsePromptAttention('(word:1.2.3)')).toThrow(/"1\.2\.3".*not a number/);
  });
});

describe('promptChunks: chunks of 75 tokens', () => {
  it('a short plain prompt is exactly tokenizer.encode', () => {
    const c = promptChunks(pipe.tokenizer, 'a photo of a cat');
    expect(c.ids).toEqual([pipe.tokenizer.encode('a photo of a cat').inputIds]);
    expect(c.weights).toBeNull();
  });
  it('100 tokens: 75 + 25, each framed bos … eos, pad to 77', () => {
    const cat = pipe.tokenizer.textIds!('cat');
    expect(cat).toHaveLength(1);
    const c = promptChunks(pipe.tokenizer, Array(100).fill('cat').join(' '));
    expect(c.tokenCount).toBe(100);
    expect(c.ids).toHaveLength(2);
    const bos = pipe.tokenizer.encode('').inputIds[0];
    for (const [row, n] of [[c.ids[0], 75], [c.ids[1], 25]] as const) {
      expect(row).toHaveLength(77);
      expect(row[0]).toBe(bos);
      expect(row.slice(1, 1 + n).every((t) => t === cat[0])).toBe(true);
      expect(row.slice(1 + n)).toEqual(emptyChunk(pipe.tokenizer).slice(1, 77 - n));
    }
  });
  it('a full chunk breaks after its last comma when that is within the last 20 tokens', () => {
    // 70 × cat, ",", 10 × dog: the 76th token (a dog) finds the comma 5 tokens back → chunk 1 ends at the comma.
    const text = `${Array(70).fill('cat').join(' ')}, ${Array(10).fill('dog').join(' ')}`;
    const c = promptChunks(pipe.tokenizer, text);
    const [comma] = pipe.tokenizer.textIds!(',');
    const [dog] = pipe.tokenizer.textIds!('dog');
    expect(c.ids).toHaveLength(2);
    expect(c.ids[0][71]).toBe(comma);
    expect(c.ids[0][72]).toBe(pipe.tokenizer.encode('').inputIds[1]); // eos right after the comma
    expect(c.ids[1].slice(1, 11)).toEqual(Array(10).fill(dog));
    // With the comma 30 tokens back (beyond 20), the chunk is cut at 75 as it stands.
    const far = promptChunks(pipe.tokenizer, `${Array(45).fill('cat').join(' ')}, ${Array(40).fill('dog').join(' ')}`);
    expect(far.ids[0].slice(1, 76).filter((t) => t === dog)).toHaveLength(29);
  });
  it('BREAK starts a new chunk', () => {
    const c = promptChunks(pipe.tokenizer, 'a cat BREAK a dog');
    expect(c.ids).toHaveLength(2);
    expect(c.ids[1]).toEqual(pipe.tokenizer.encode('a dog').inputIds);
  });
  it('--prompt-syntax plain reads brackets as text, as diffusers', () => {
    const plain = promptChunks(pipe.tokenizer, 'a (red) cat', { syntax: 'plain' });
    expect(plain.ids).toEqual([pipe.tokenizer.encode('a (red) cat').inputIds]);
    expect(plain.weights).toBeNull();
    // The escaped a1111 prompt is the same text: the same ids.
    expect(promptChunks(pipe.tokenizer, 'a \\(red\\) cat').ids).toEqual(plain.ids);
    expect(promptChunks(pipe.tokenizer, 'a (red) cat').ids).not.toEqual(plain.ids);
  });
});

describe('encodeText: chunks and emphasis', () => {
  it('a plain short prompt: bit-identical to one encoder call on tokenizer.encode (today\'s embeddings)', () => {
    const got = pipe.encodeText(['a photo of a cat']);
    const want = encodeIds(pipe.tokenizer.encode('a photo of a cat').inputIds);
    expect(got.shape).toEqual([1, 77, 32]);
    expect(Array.from(got.dataSync())).toEqual(Array.from(want));
    got.dispose();
  });
  it('>75 tokens: [B, 154, D], each 77-row block = the encoder on that chunk alone; a short prompt in the batch is padded with the empty chunk', () => {
    const long = Array(100).fill('cat').join(' ');
    const chunks = promptChunks(pipe.tokenizer, long);
    const z = pipe.encodeText([long, 'a dog']);
    expect(z.shape).toEqual([2, 154, 32]);
    const data = z.dataSync();
    const D = 32;
    const block = (row: number, c: number) => data.slice((row * 154 + c * 77) * D, (row * 154 + (c + 1) * 77) * D);
    expect(Array.from(block(0, 0))).toEqual(Array.from(encodeIds(chunks.ids[0])));
    expect(Array.from(block(0, 1))).toEqual(Array.from(encodeIds(chunks.ids[1])));
    expect(Array.from(block(1, 0))).toEqual(Array.from(encodeIds(pipe.tokenizer.encode('a dog').inputIds)));
    expect(Array.from(block(1, 1))).toEqual(Array.from(encodeIds(emptyChunk(pipe.tokenizer))));
    z.dispose();
  });
  it('emphasis: z·w rescaled to the unweighted mean, against a float64 closed form', () => {
    const text = 'a (red:1.3) cat on a [mat]';
    const chunks = promptChunks(pipe.tokenizer, text);
    expect(chunks.weights).not.toBeNull();
    const w = chunks.weights![0];
    // The hand-expected weights: bos 1, "a" 1, "red" 1.3, "cat on a" 1, "mat" 1/1.1, eos/padding 1.
    const ids = chunks.ids[0];
    const red = pipe.tokenizer.textIds!('red')[0];
    const mat = pipe.tokenizer.textIds!('mat')[0];
    ids.forEach((id, i) => expect(w[i], `position ${i}`).toBeCloseTo(id === red ? 1.3 : id === mat && i > 1 && i < 10 ? 1 / 1.1 : 1, 12));
    const z = encodeIds(ids);
    const D = 32;
    let mean = 0;
    let meanW = 0;
    for (let i = 0; i < 77; i++) for (let d = 0; d < D; d++) {
      mean += z[i * D + d];
      meanW += z[i * D + d] * w[i];
    }
    const ratio = mean / meanW; // the 77·D normalisations cancel
    const got = pipe.encodeText([text]);
    const g = got.dataSync();
    let err = 0;
    let scale = 0;
    for (let i = 0; i < 77; i++) for (let d = 0; d < D; d++) {
      const want = z[i * D + d] * w[i] * ratio;
      err = Math.max(err, Math.abs(g[i * D + d] - want));
      scale = Math.max(scale, Math.abs(want));
    }
    got.dispose();
    console.log(`emphasis vs float64 closed form: max rel error ${(err / scale).toExponential(2)}`);
    expect(err / scale, `max |got − closed form| / max|want| = ${(err / scale).toExponential(2)}`).toBeLessThan(1e-5);
    // And emphasis changes something: the "red" row is not the unweighted one.
    const redRow = ids.indexOf(red);
    expect(Math.abs(g[redRow * D] - z[redRow * D])).toBeGreaterThan(1e-4);
  });
  it('the UNet takes the 154-token context: a long prompt\'s second chunk changes the image', () => {
    const head = Array(75).fill('cat').join(' ');
    const run = (prompt: string) => {
      const out = pipe.call({ prompt, numInferenceSteps: 2, guidanceScale: 7.5, height: 16, width: 16, seed: 3 });
      const data = out.images.dataSync().slice();
      expect(Array.from(data).every(Number.isFinite)).toBe(true);
      tf.dispose([out.images, out.latents, out.promptEmbeds]);
      return data;
    };
    const short = run(head);
    const long = run(`${head} ${Array(20).fill('red dog').join(' ')}`);
    let diff = 0;
    for (let i = 0; i < short.length; i++) diff = Math.max(diff, Math.abs(short[i] - long[i]));
    expect(diff, 'max pixel difference made by tokens 76..').toBeGreaterThan(1e-4);
  });
});

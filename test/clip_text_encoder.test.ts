/**
 * TextEncoder (CLIP text transformer) against transformers 4.37 reference numbers in
 * ../shared/fixtures/sd1_tiny (case text_encoder: last_hidden_state and pooler_output for three
 * prompts tokenized by the fixture's CLIP tokenizer), plus the causal mask, the pooling rules,
 * checkpoint-key handling (position_ids, missing text_model. prefix) and config errors.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ClipTokenizer,
  TEXT_ENCODER_PRESETS,
  TextEncoder,
  type TextEncoderConfig,
  readTextEncoderConfig,
} from '../src/clip/index.ts';
import { loadWeights } from '../src/nn/checkpoint.ts';
import { readSafetensors } from '../src/io/safetensors.ts';
import { manualSeed } from '../src/nn/index.ts';
import { UsageError } from '../src/util/errors.ts';

const FIXTURE = path.resolve(import.meta.dirname, '../../shared/fixtures/sd1_tiny');
const TE_DIR = path.join(FIXTURE, 'model/text_encoder');
const manifest = JSON.parse(fs.readFileSync(path.join(FIXTURE, 'manifest.json'), 'utf8').replace(/(?<=[:[,]\s*)(-?Infinity|NaN)/g, 'null'));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-te-'));

let ref: ReturnType<typeof readSafetensors>;
let te: TextEncoder;

beforeAll(async () => {
  await tf.setBackend('cpu');
  ref = readSafetensors(path.join(FIXTURE, 'reference.safetensors'), (n) => n.startsWith('text_encoder.'));
  te = TextEncoder.fromPretrained(TE_DIR);
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const refTensor = (key: string) => {
  const t = ref.get(key);
  if (!t) throw new Error(`reference.safetensors has no ${key}`);
  return tf.tensor(t.data, t.shape);
};
const maxAbs = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]);

/** A small random text encoder (seeded) for behavioural tests. */
function tiny(overrides: Partial<TextEncoderConfig> = {}): TextEncoder {
  manualSeed(7);
  return new TextEncoder({
    ...TEXT_ENCODER_PRESETS.mnist,
    vocab_size: 20,
    hidden_size: 16,
    intermediate_size: 24,
    projection_dim: 8,
    num_hidden_layers: 2,
    num_attention_heads: 2,
    max_position_embeddings: 10,
    ...overrides,
  });
}

describe('TextEncoder vs transformers CLIPTextModel (sd1_tiny fixture)', () => {
  it('reads the fixture config (transformers keys, legacy eos_token_id 2) and every weight', () => {
    expect(te.config).toMatchObject({ hidden_size: 32, num_hidden_layers: 5, num_attention_heads: 4, intermediate_size: 37, hidden_act: 'quick_gelu', eos_token_id: 2, pooling: 'auto' });
    expect(te.text_projection).toBeNull();
    expect(te.namedParameters().length).toBe(2 + 5 * 16 + 2);
  });

  it('last_hidden_state and pooler_output match to 1e-5, from ids made by the fixture tokenizer', () => {
    const c = manifest.cases.text_encoder;
    const tok = ClipTokenizer.fromDirectory(path.join(FIXTURE, 'model/tokenizer'));
    const ids = (c.prompts as string[]).map((p) => tok.encode(p).inputIds);
    const refIds = refTensor(c.inputs.input_ids);
    expect(ids).toEqual(refIds.arraySync()); // same tokens as the reference run
    const out = te.forward(tf.tensor2d(ids, undefined, 'int32'));
    const lh = refTensor(c.outputs.last_hidden_state);
    const po = refTensor(c.outputs.pooler_output);
    expect(out.lastHiddenState.shape).toEqual([3, 77, 32]);
    expect(out.pooledOutput.shape).toEqual([3, 32]);
    const errH = maxAbs(out.lastHiddenState, lh);
    const errP = maxAbs(out.pooledOutput, po);
    // Brief: ≤ 1e-4. Observed ~1.2e-6 / ~1e-6 (upstream fp32 vs fp64: 9.3e-7).
    expect(errH).toBeLessThan(1e-5);
    expect(errP).toBeLessThan(1e-5);
    // Float ids (as the reference file stores them) work too.
    const again = te.forward(refIds as tf.Tensor2D);
    expect(maxAbs(again.lastHiddenState, out.lastHiddenState)).toBe(0);
  });

  it('pools at the first end-of-text token (positions 9, 1 and 23 in the three prompts)', () => {
    const refIds = refTensor(manifest.cases.text_encoder.inputs.input_ids) as tf.Tensor2D;
    expect(Array.from(te.eosPositions(refIds).dataSync())).toEqual([9, 1, 23]);
    const lh = refTensor(manifest.cases.text_encoder.outputs.last_hidden_state);
    const po = refTensor(manifest.cases.text_encoder.outputs.pooler_output);
    expect(maxAbs(tf.slice(lh, [1, 1, 0], [1, 1, 32]).reshape([32]), tf.slice(po, [1, 0], [1, 32]).reshape([32]))).toBe(0);
  });
});

describe('TextEncoder behaviour', () => {
  it('is causal: changing a later token changes nothing before it', () => {
    const enc = tiny();
    const a = [[1, 5, 6, 7, 8, 9, 2, 0]];
    const b = [[1, 5, 6, 7, 8, 11, 2, 0]]; // position 5 differs
    const ha = enc.forward(a).lastHiddenState;
    const hb = enc.forward(b).lastHiddenState;
    const before = (h: tf.Tensor) => tf.slice(h, [0, 0, 0], [1, 5, -1]);
    const after = (h: tf.Tensor) => tf.slice(h, [0, 5, 0], [1, 3, -1]);
    expect(maxAbs(before(ha), before(hb))).toBe(0);
    expect(maxAbs(after(ha), after(hb))).toBeGreaterThan(1e-3); // and the later positions do see it
    // Padding after <end> leaves the pooled output untouched.
    const c = [[1, 5, 6, 7, 8, 9, 2, 4]];
    expect(maxAbs(enc.forward(a).pooledOutput, enc.forward(c).pooledOutput)).toBe(0);
  });

  it("pooling rules: 'first_eos' takes the first eos, 'argmax' (and 'auto' with eos 2) the largest id", () => {
    const ids = [
      [1, 5, 17, 2, 0, 2],
      [1, 2, 0, 0, 0, 0],
    ];
    const row = (h: tf.Tensor, b: number, p: number) => tf.slice(h, [b, p, 0], [1, 1, -1]).reshape([-1]);
    const check = (pooling: TextEncoderConfig['pooling'], want: number[]) => {
      const enc = tiny({ pooling });
      const out = enc.forward(ids);
      expect(Array.from(enc.eosPositions(tf.tensor2d(ids, undefined, 'int32')).dataSync())).toEqual(want);
      want.forEach((p, b) => expect(maxAbs(tf.slice(out.pooledOutput, [b, 0], [1, -1]).reshape([-1]), row(out.lastHiddenState, b, p))).toBe(0));
      enc.dispose();
    };
    check('first_eos', [3, 1]);
    check('argmax', [2, 1]);
    check('auto', [2, 1]); // eos_token_id == 2: transformers' legacy argmax path
  });

  it('small vocabularies embed by one-hot matmul: exactly what a gather gives', () => {
    const enc = tiny();
    const ids = tf.tensor2d([[1, 19, 3, 2, 0], [1, 0, 7, 7, 2]], undefined, 'int32');
    const emb = enc.text_model.embeddings;
    const viaGather = tf.add(emb.token_embedding.forward(ids), emb.position_embedding.forward(tf.range(0, 5, 1, 'int32')));
    expect(maxAbs(emb.forward(ids), viaGather)).toBe(0);
  });

  it('projects the pooled output with text_projection (no bias) when configured', () => {
    const enc = tiny();
    expect(enc.namedParameters().map(([n]) => n)).toContain('text_projection.weight');
    expect(enc.text_projection!.bias).toBeNull();
    const out = enc.forward([[1, 4, 2, 0]]);
    expect(out.textEmbeds!.shape).toEqual([1, 8]);
    expect(maxAbs(out.textEmbeds!, tf.matMul(out.pooledOutput, enc.text_projection!.weight))).toBeLessThan(1e-6);
  });

  it('the MNIST preset is small: width 128, 4 heads, 16 positions, gelu', () => {
    const enc = new TextEncoder({ ...TEXT_ENCODER_PRESETS.mnist, vocab_size: 45 });
    expect(enc.numParameters()).toBeGreaterThan(3e5);
    expect(enc.numParameters()).toBeLessThan(1e6);
    expect(enc.forward([[1, 4, 5, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]).lastHiddenState.shape).toEqual([1, 16, 128]);
    expect(() => enc.forward([Array(17).fill(0)])).toThrow(/max_position_embeddings is 16/);
    enc.dispose();
  });
});

describe('TextEncoder loading', () => {
  /** Writes a safetensors file by hand, so it can hold an int64 tensor as hub checkpoints do. */
  function writeRaw(file: string, tensors: Array<[string, string, number[], Uint8Array]>) {
    const header: Record<string, unknown> = {};
    let off = 0;
    for (const [name, dtype, shape, bytes] of tensors) {
      header[name] = { dtype, shape, data_offsets: [off, off + bytes.length] };
      off += bytes.length;
    }
    let json = JSON.stringify(header);
    json += ' '.repeat((8 - (json.length % 8)) % 8);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    fs.writeFileSync(file, Buffer.concat([len, Buffer.from(json), ...tensors.map((t) => t[3])]));
  }

  it('skips an int64 position_ids buffer and accepts keys without the text_model. prefix', () => {
    const sd = te.stateDict();
    const positionIds = new BigInt64Array(77).map((_, i) => BigInt(i));
    const sub = path.join(dir, 'hub');
    fs.mkdirSync(sub);
    fs.copyFileSync(path.join(TE_DIR, 'config.json'), path.join(sub, 'config.json'));
    writeRaw(path.join(sub, 'model.safetensors'), [
      ['text_model.embeddings.position_ids', 'I64', [1, 77], new Uint8Array(positionIds.buffer)],
      // Old exports: no text_model. prefix.
      ...[...sd].map(([k, t]): [string, string, number[], Uint8Array] => [k.replace(/^text_model\./, ''), 'F32', t.shape, new Uint8Array(t.data.buffer)]),
    ]);
    const loaded = TextEncoder.fromPretrained(sub);
    const ids = [[49406, 320, 49407, 49407]];
    expect(maxAbs(loaded.forward(ids).lastHiddenState, te.forward(ids).lastHiddenState)).toBe(0);
  });

  it('names missing weights, unknown config keys and bad values in one line', () => {
    const small = tiny();
    // Reuse the fixture weights: every shape is wrong for the tiny model.
    expect(() => loadWeights(small, path.join(TE_DIR, 'model.safetensors'))).toThrow(/wrong shape: text_model\.embeddings\.position_embedding\.weight \[77,32\]/);
    expect(() => loadWeights(small, path.join(TE_DIR, 'model.safetensors'))).toThrow(/missing: text_projection\.weight/);
    const bad = path.join(dir, 'config.json');
    fs.writeFileSync(bad, JSON.stringify({ hidden_size: 32, num_hiden_layers: 2 }));
    expect(() => readTextEncoderConfig(bad)).toThrow(/unknown config key "num_hiden_layers"/);
    fs.writeFileSync(bad, JSON.stringify({ hidden_size: 30, num_attention_heads: 4 }));
    expect(() => readTextEncoderConfig(bad)).toThrow(UsageError);
    expect(() => readTextEncoderConfig(bad)).toThrow(/hidden_size 30 is not divisible by num_attention_heads 4/);
    fs.writeFileSync(bad, JSON.stringify({ hidden_act: 'swishy' }));
    expect(() => readTextEncoderConfig(bad)).toThrow(/unknown activation "swishy"/);
    expect(() => TextEncoder.fromPretrained(path.join(dir, 'nope'))).toThrow(/no config\.json/);
  });
});

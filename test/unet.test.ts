/**
 * UNet2DConditionModel against the diffusers v0.24 reference numbers in ../shared/fixtures/sd1_tiny
 * (case unet: fp16-exact weights, float32 references, NCHW tensors), plus config/loader checks.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  UNET_PRESETS,
  UNet2DConditionModel,
  mnistUnetConfig,
  parseUnetConfig,
  readUnetConfig,
} from '../src/unet/index.ts';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.ts';
import { manualSeed, skipInit } from '../src/nn/index.ts';
import { UsageError } from '../src/util/errors.ts';

const FIXTURE = path.resolve(import.meta.dirname, '../../shared/fixtures/sd1_tiny');
const UNET_DIR = path.join(FIXTURE, 'model/unet');
// Python's json writes bare (-)Infinity/NaN (scheduler configs); JSON.parse needs them quoted out.
const manifest = JSON.parse(fs.readFileSync(path.join(FIXTURE, 'manifest.json'), 'utf8').replace(/(?<=[:[,]\s*)(-?Infinity|NaN)/g, 'null'));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-unet-'));

let ref: ReturnType<typeof readSafetensors>;
let unet: UNet2DConditionModel;

beforeAll(async () => {
  await tf.setBackend('cpu');
  ref = readSafetensors(path.join(FIXTURE, 'reference.safetensors'));
  unet = UNet2DConditionModel.fromPretrained(UNET_DIR);
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function tensor(key: string): tf.Tensor {
  const t = ref.get(key);
  if (!t) throw new Error(`reference.safetensors has no ${key}`);
  return tf.tensor(t.data, t.shape);
}
/** A reference tensor (stored NCHW, see manifest descs) as NHWC. */
function nhwc(key: string): tf.Tensor4D {
  expect(manifest.tensors[key].shape.length).toBe(4);
  return tf.transpose(tensor(key), [0, 2, 3, 1]) as tf.Tensor4D;
}
// The brief allows 1e-4; observed 2.4e-6 (case0) and 3.1e-6 (case1), with an upstream
// fp32-vs-fp64 floor of 1.8e-6: hold 1.5e-5 (~5×).
const TOL = 1.5e-5;
const maxAbs = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]);

describe('UNet2DConditionModel vs diffusers (sd1_tiny fixture)', () => {
  it('loads the fixture config and every weight', () => {
    expect(unet.config.block_out_channels).toEqual([32, 64]);
    expect(unet.config.attention_head_dim).toBe(8);
    expect(unet.namedParameters().length).toBe(304);
    const st = readSafetensors(path.join(UNET_DIR, 'diffusion_pytorch_model.safetensors'));
    expect(unet.numParameters()).toBe([...st.values()].reduce((n, t) => n + t.data.length, 0));
  });

  it('case 0: per-sample timesteps [999, 1], batch 2', () => {
    const c = manifest.cases.unet[0];
    expect(c.timestep_python).toEqual([999, 1]);
    const t = tensor(c.inputs.timestep);
    expect(Array.from(t.dataSync())).toEqual([999, 1]);
    const out = unet.forward(nhwc(c.inputs.sample), t, tensor(c.inputs.encoder_hidden_states) as tf.Tensor3D);
    const want = nhwc(c.output);
    expect(out.shape).toEqual([2, 8, 8, 4]);
    const err = maxAbs(out, want);
    console.log(`unet case0 max abs error ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(TOL);
    // Timesteps as a plain array, and each sample on its own, give the same numbers.
    expect(maxAbs(unet.forward(nhwc(c.inputs.sample), [999, 1], tensor(c.inputs.encoder_hidden_states) as tf.Tensor3D), out)).toBe(0);
    const one = unet.forward(
      tf.slice(nhwc(c.inputs.sample), [1, 0, 0, 0], [1, -1, -1, -1]),
      1,
      tf.slice(tensor(c.inputs.encoder_hidden_states), [1, 0, 0], [1, -1, -1]) as tf.Tensor3D,
    );
    expect(maxAbs(one, tf.slice(want, [1, 0, 0, 0], [1, -1, -1, -1]))).toBeLessThanOrEqual(TOL);
  });

  it('case 1: one scalar timestep 500', () => {
    const c = manifest.cases.unet[1];
    expect(c.timestep_python).toBe(500);
    const ctx = tensor(c.inputs.encoder_hidden_states) as tf.Tensor3D;
    const out = unet.forward(nhwc(c.inputs.sample), 500, ctx);
    const err = maxAbs(out, nhwc(c.output));
    console.log(`unet case1 max abs error ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(TOL);
    expect(maxAbs(unet.forward(nhwc(c.inputs.sample), tf.scalar(500, 'int32'), ctx), out)).toBe(0);
  });

  it('sizes that are not a multiple of 2^levels upsample to the skip size', () => {
    const x = tf.randomNormal([1, 7, 5, 4]) as tf.Tensor4D;
    const ctx = tensor(manifest.cases.unet[1].inputs.encoder_hidden_states) as tf.Tensor3D;
    expect(unet.forward(x, 10, ctx).shape).toEqual([1, 7, 5, 4]);
  });

  it('wrong inputs are clear errors', () => {
    const x = tf.zeros([2, 8, 8, 4]) as tf.Tensor4D;
    const ctx = tf.zeros([2, 77, 32]) as tf.Tensor3D;
    expect(() => unet.forward(x, [1, 2, 3], ctx)).toThrow(/3 timesteps for a batch of 2/);
    expect(() => unet.forward(x, 1, tf.zeros([2, 77, 48]) as tf.Tensor3D)).toThrow(/expects \[B, L, 32\] \(cross_attention_dim/);
    expect(() => unet.forward(x, 1)).toThrow(/needs encoderHiddenStates/);
    expect(() => unet.forward(tf.zeros([2, 8, 8, 3]) as tf.Tensor4D, 1, ctx)).toThrow(/3 channels \(NHWC\).*in_channels 4/);
  });

  it('the weight loader names missing, unexpected and mis-shaped keys', () => {
    const sd = readSafetensors(path.join(UNET_DIR, 'diffusion_pytorch_model.safetensors'));
    sd.delete('conv_in.bias');
    const w = sd.get('mid_block.attentions.0.proj_in.weight')!;
    sd.delete('mid_block.attentions.0.proj_in.weight');
    sd.set('mid_block.attentions.0.proj_inn.weight', w);
    const k = sd.get('up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight')!;
    sd.set('up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight', { ...k, shape: [64, 16], data: k.data.slice(0, 64 * 16) });
    const bad = path.join(dir, 'bad');
    fs.mkdirSync(bad);
    fs.copyFileSync(path.join(UNET_DIR, 'config.json'), path.join(bad, 'config.json'));
    writeSafetensors(path.join(bad, 'diffusion_pytorch_model.safetensors'), sd, { dtype: 'F16' });
    let msg = '';
    try {
      UNet2DConditionModel.fromPretrained(bad);
    } catch (err) {
      expect(err).toBeInstanceOf(UsageError);
      msg = (err as Error).message;
    }
    expect(msg).toContain('weights do not fit the model');
    expect(msg).toContain('2 missing: conv_in.bias, mid_block.attentions.0.proj_in.weight');
    expect(msg).toContain('1 unexpected: mid_block.attentions.0.proj_inn.weight');
    expect(msg).toContain('1 with wrong shape: up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight [64,16] vs model [64,32]');
    expect(() => UNet2DConditionModel.fromPretrained(dir)).toThrow(/no config\.json/);
  });

  it('save → fromPretrained round trip is exact and keeps the config', () => {
    const out = path.join(dir, 'saved');
    unet.save(out);
    const cfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    expect(cfg._class_name).toBe('UNet2DConditionModel');
    expect(cfg.attention_head_dim).toBe(8);
    expect(cfg).not.toHaveProperty('class_embed_type'); // unsupported keys are not written
    const again = UNet2DConditionModel.fromPretrained(out);
    expect(again.config).toEqual(unet.config);
    const c = manifest.cases.unet[1];
    const ctx = tensor(c.inputs.encoder_hidden_states) as tf.Tensor3D;
    expect(maxAbs(again.forward(nhwc(c.inputs.sample), 3, ctx), unet.forward(nhwc(c.inputs.sample), 3, ctx))).toBe(0);
  });
});

describe('UNet config', () => {
  const fixtureCfg = () => JSON.parse(fs.readFileSync(path.join(UNET_DIR, 'config.json'), 'utf8'));
  const writeCfg = (name: string, obj: object) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, JSON.stringify(obj));
    return f;
  };

  it('reads every key diffusers writes; an unknown key is an error naming the file and key', () => {
    const good = readUnetConfig(path.join(UNET_DIR, 'config.json')); // has all 50-odd diffusers keys
    expect(good.cross_attention_dim).toBe(32);
    expect(good).not.toHaveProperty('dropout');
    const f = writeCfg('typo.json', { ...fixtureCfg(), cross_atention_dim: 8 });
    expect(() => readUnetConfig(f)).toThrow(UsageError);
    expect(() => readUnetConfig(f)).toThrow(`${f}: unknown config key "cross_atention_dim"`);
  });

  it('unsupported features are accepted only at their defaults', () => {
    for (const [key, value] of [
      ['class_embed_type', 'timestep'],
      ['addition_embed_type', 'text_time'],
      ['resnet_time_scale_shift', 'scale_shift'],
      ['dropout', 0.1],
      ['time_embedding_type', 'fourier'],
      ['reverse_transformer_layers_per_block', [[1], [1]]],
    ] as const) {
      expect(() => parseUnetConfig({ ...fixtureCfg(), [key]: value }, 'cfg.json')).toThrow(
        `cfg.json: config key "${key}" = ${JSON.stringify(value)} is not supported by sdlab's UNet`,
      );
    }
  });

  it('per-block lists, types and consistency are checked', () => {
    const base = fixtureCfg();
    expect(parseUnetConfig({ ...base, attention_head_dim: [4, 8] }).attention_head_dim).toEqual([4, 8]);
    expect(() => parseUnetConfig({ ...base, attention_head_dim: [4, 8, 8] })).toThrow(/attention_head_dim must have one entry per block_out_channels \(2\), got 3/);
    expect(() => parseUnetConfig({ ...base, attention_head_dim: 5 })).toThrow(/block_out_channels 64 is not divisible by attention_head_dim 5/);
    expect(() => parseUnetConfig({ ...base, num_attention_heads: 3 })).toThrow(/not divisible by num_attention_heads 3/);
    expect(() => parseUnetConfig({ ...base, layers_per_block: '2' })).toThrow(/layers_per_block must be a positive integer or a list/);
    expect(() => parseUnetConfig({ ...base, norm_eps: 'small' })).toThrow(/config key "norm_eps" must be a number/);
    expect(() => parseUnetConfig({ ...base, down_block_types: ['DownBlock2D', 'AttnDownBlock2D'] })).toThrow(/unsupported "AttnDownBlock2D"/);
    expect(() => parseUnetConfig({ ...base, mid_block_type: 'UNetMidBlock2DSimpleCrossAttn' })).toThrow(/mid_block_type: unsupported/);
    expect(() => parseUnetConfig({ ...base, cross_attention_dim: [32, 64] })).toThrow(/per-block widths \[32,64\] differ/);
    expect(() => parseUnetConfig({ ...base, _class_name: 'AutoencoderKL' })).toThrow(/expected "UNet2DConditionModel"/);
    expect(() => new UNet2DConditionModel({ ...UNET_PRESETS.mnist, norm_num_groups: 12 })).toThrow(/block_out_channels 32 is not divisible by norm_num_groups 12/);
  });
});

describe('UNet presets and training', () => {
  it('MNIST preset: 4×8×8 latents, text width is a parameter (default 128)', () => {
    manualSeed(0);
    const m = new UNet2DConditionModel(UNET_PRESETS.mnist);
    expect(m.config.cross_attention_dim).toBe(128);
    expect(m.numParameters()).toBe(1122628);
    const out = m.forward(tf.randomNormal([2, 8, 8, 4]) as tf.Tensor4D, [10, 500], tf.randomNormal([2, 12, 128]) as tf.Tensor3D);
    expect(out.shape).toEqual([2, 8, 8, 4]);
    m.dispose();
    const narrow = skipInit(() => new UNet2DConditionModel(mnistUnetConfig({ crossAttentionDim: 64 })));
    const k = narrow.namedParameters().find(([n]) => n.endsWith('attn2.to_k.weight'))![1];
    expect(k.variable.shape).toEqual([64, 32]); // [in = text width, out]
    narrow.dispose();
  });

  it('SD 1.x / 2.x presets have the 686 tensors of the real checkpoints (checked at 1/8 width)', () => {
    // Full width is 860 M parameters; the tensor count depends only on the topology.
      // (Heads 8 / [5, 10, 20, 20] still divide 40, 80, 160.)
    for (const preset of [UNET_PRESETS.sd1, UNET_PRESETS.sd2]) {
      const m = skipInit(() => new UNet2DConditionModel({ ...preset, block_out_channels: [40, 80, 160, 160], norm_num_groups: 8, cross_attention_dim: 16 }));
      const names = m.namedParameters().map(([n]) => n);
      expect(names.length).toBe(686);
      expect(names).toContain('up_blocks.0.upsamplers.0.conv.weight');
      expect(names).not.toContain('up_blocks.3.upsamplers.0.conv.weight');
      expect(names).not.toContain('down_blocks.3.attentions.0.norm.weight'); // DownBlock2D at the bottom
      const proj = m.namedParameters().find(([n]) => n === 'mid_block.attentions.0.proj_in.weight')![1];
      expect(proj.layout).toBe(preset.use_linear_projection ? 'linear' : 'conv');
      m.dispose();
    }
    expect(UNET_PRESETS.sd2.attention_head_dim).toEqual([5, 10, 20, 20]); // 64 channels per head
  });

  it('every parameter receives a gradient', () => {
    manualSeed(1);
    const m = new UNet2DConditionModel({
      ...mnistUnetConfig({ crossAttentionDim: 8 }),
      block_out_channels: [8, 16],
      norm_num_groups: 4,
      attention_head_dim: 2,
      mid_block_scale_factor: 1.5,
    });
    const x = tf.randomNormal([2, 4, 4, 4]) as tf.Tensor4D;
    const ctx = tf.randomNormal([2, 3, 8]) as tf.Tensor3D;
    const { grads } = tf.variableGrads(() => tf.mean(tf.square(m.forward(x, [3, 700], ctx))) as tf.Scalar, m.parameters());
    const dead = m.namedParameters().filter(([, p]) => tf.tidy(() => tf.max(tf.abs(grads[p.variable.name])).dataSync()[0]) === 0);
    expect(dead.map(([n]) => n)).toEqual([]);
    expect(Object.keys(grads).length).toBe(m.namedParameters().length);
    m.dispose();
  });
});

/**
 * AutoencoderKL against the diffusers v0.24 reference numbers in ../shared/fixtures/sd1_tiny
 * (cases vae_decode and vae_encode; fp16-exact weights, float32 references, NCHW tensors).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AutoencoderKL,
  VAE_PRESETS,
  klDivergence,
  readVaeConfig,
  vaeLegacyKeyMap,
} from '../src/autoencoder/index.ts';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.ts';
import { manualSeed } from '../src/nn/index.ts';
import { UsageError } from '../src/util/errors.ts';

const FIXTURE = path.resolve(import.meta.dirname, '../../shared/fixtures/sd1_tiny');
const VAE_DIR = path.join(FIXTURE, 'model/vae');
// Python's json writes bare (-)Infinity/NaN (scheduler configs); JSON.parse needs them quoted out.
const manifest = JSON.parse(fs.readFileSync(path.join(FIXTURE, 'manifest.json'), 'utf8').replace(/(?<=[:[,]\s*)(-?Infinity|NaN)/g, 'null'));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-vae-'));

let ref: ReturnType<typeof readSafetensors>;
let vae: AutoencoderKL;

beforeAll(async () => {
  await tf.setBackend('cpu');
  ref = readSafetensors(path.join(FIXTURE, 'reference.safetensors'));
  vae = AutoencoderKL.fromPretrained(VAE_DIR);
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A reference tensor (stored NCHW) as NHWC. */
function nhwc(key: string): tf.Tensor4D {
  const t = ref.get(key);
  if (!t) throw new Error(`reference.safetensors has no ${key}`);
  expect(t.shape.length).toBe(4);
  return tf.transpose(tf.tensor(t.data, t.shape) as tf.Tensor, [0, 2, 3, 1]) as tf.Tensor4D;
}
// The brief asks for ≤ 1e-4; we hold 2e-5 (observed: ~1e-6 decode, ~3e-6 encode; fp32 vs fp64
// upstream differs by 2.7e-6), which also catches subtler slips such as GroupNorm eps 1e-5.
const TOL = 2e-5;
const maxAbs = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]);

describe('AutoencoderKL vs diffusers (sd1_tiny fixture)', () => {
  it('loads the fixture config and every weight', () => {
    expect(vae.config.block_out_channels).toEqual([32, 64]);
    expect(vae.scalingFactor).toBe(0.18215);
    expect(vae.namedParameters().length).toBe(124);
    expect(vae.downsampleFactor).toBe(2);
  });

  it('vae_decode: decode(latents / scaling_factor) matches to 2e-5', () => {
    const c = manifest.cases.vae_decode;
    expect(c.scaling_factor).toBe(vae.scalingFactor);
    const z = nhwc(c.inputs.latents);
    const out = vae.decode(tf.div(z, vae.scalingFactor) as tf.Tensor4D);
    const want = nhwc(c.outputs.sample);
    expect(out.shape).toEqual(want.shape);
    const err = maxAbs(out, want);
    expect(err).toBeLessThanOrEqual(TOL);
    // image01 = (out/2 + 0.5).clamp(0, 1)
    const img = tf.clipByValue(tf.add(tf.div(out, 2), 0.5), 0, 1);
    expect(maxAbs(img, nhwc(c.outputs.image01))).toBeLessThanOrEqual(TOL);
    console.log(`vae_decode max abs error ${err.toExponential(2)}`);
  });

  it('vae_encode: posterior mean, logvar (clamped) and std match to 2e-5', () => {
    const c = manifest.cases.vae_encode;
    const dist = vae.encode(nhwc(c.inputs.image));
    const errMean = maxAbs(dist.mean, nhwc(c.outputs.mean));
    const errLogvar = maxAbs(dist.logvar, nhwc(c.outputs.logvar));
    const errStd = maxAbs(tf.exp(tf.mul(dist.logvar, 0.5)), nhwc(c.outputs.std));
    expect(dist.mean.shape).toEqual([1, 8, 8, 4]);
    expect(errMean).toBeLessThanOrEqual(TOL);
    expect(errLogvar).toBeLessThanOrEqual(TOL);
    expect(errStd).toBeLessThanOrEqual(TOL);
    console.log(`vae_encode max abs error mean ${errMean.toExponential(2)} logvar ${errLogvar.toExponential(2)}`);
  });

  it('legacy attention names (query/key/value/proj_attn) load to the same model', () => {
    const sd = readSafetensors(path.join(VAE_DIR, 'diffusion_pytorch_model.safetensors'));
    const legacy = new Map(
      [...sd].map(([k, v]) => [
        k.replace('.to_q.', '.query.').replace('.to_k.', '.key.').replace('.to_v.', '.value.').replace('.to_out.0.', '.proj_attn.'),
        v,
      ]),
    );
    expect([...legacy.keys()]).toContain('encoder.mid_block.attentions.0.proj_attn.weight');
    expect(vaeLegacyKeyMap('decoder.mid_block.attentions.0.query.bias')).toBe('decoder.mid_block.attentions.0.to_q.bias');
    expect(vaeLegacyKeyMap('decoder.up_blocks.0.resnets.1.conv1.weight')).toBe('decoder.up_blocks.0.resnets.1.conv1.weight');
    const legacyDir = path.join(dir, 'legacy');
    fs.mkdirSync(legacyDir);
    fs.copyFileSync(path.join(VAE_DIR, 'config.json'), path.join(legacyDir, 'config.json'));
    writeSafetensors(path.join(legacyDir, 'diffusion_pytorch_model.safetensors'), legacy, { dtype: 'F16' });
    const old = AutoencoderKL.fromPretrained(legacyDir);
    const z = nhwc(manifest.cases.vae_decode.inputs.latents);
    expect(maxAbs(old.decode(z), vae.decode(z))).toBe(0);
  });

  it('save → fromPretrained round trip is exact and keeps the config', () => {
    const out = path.join(dir, 'saved');
    vae.save(out);
    const cfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    expect(cfg._class_name).toBe('AutoencoderKL');
    expect(cfg.scaling_factor).toBe(0.18215);
    const again = AutoencoderKL.fromPretrained(out);
    const x = nhwc(manifest.cases.vae_encode.inputs.image);
    expect(maxAbs(again.encode(x).mean, vae.encode(x).mean)).toBe(0);
  });
});

describe('AutoencoderKL config and helpers', () => {
  const writeCfg = (name: string, obj: object) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, JSON.stringify(obj));
    return f;
  };
  const fixtureCfg = () => JSON.parse(fs.readFileSync(path.join(VAE_DIR, 'config.json'), 'utf8'));

  it('an unknown key is an error naming the file and the key; known diffusers keys are accepted', () => {
    const good = readVaeConfig(path.join(VAE_DIR, 'config.json')); // has _class_name, force_upcast, ...
    expect(good.latent_channels).toBe(4);
    const f = writeCfg('typo.json', { ...fixtureCfg(), latent_chanels: 8 });
    expect(() => readVaeConfig(f)).toThrow(UsageError);
    expect(() => readVaeConfig(f)).toThrow(`${f}: unknown config key "latent_chanels"`);
  });

  it('wrong types, wrong class and inconsistent configs are clear errors', () => {
    expect(() => readVaeConfig(writeCfg('type.json', { ...fixtureCfg(), layers_per_block: '2' }))).toThrow(/config key "layers_per_block" must be a number, got "2"/);
    expect(() => readVaeConfig(writeCfg('class.json', { ...fixtureCfg(), _class_name: 'UNet2DConditionModel' }))).toThrow(/_class_name is "UNet2DConditionModel", expected "AutoencoderKL"/);
    expect(() => readVaeConfig(writeCfg('groups.json', { ...fixtureCfg(), norm_num_groups: 24 }))).toThrow(/block_out_channels 32 is not divisible by norm_num_groups 24/);
    expect(() => readVaeConfig(writeCfg('blocks.json', { ...fixtureCfg(), block_out_channels: [32, 64, 64] }))).toThrow(/one entry per block_out_channels/);
    expect(() => readVaeConfig(writeCfg('json.json', {}).replace('json.json', 'missing.json'))).toThrow(/cannot read config \(ENOENT\)/);
  });

  it('MNIST preset: 1×32×32 images ↔ 4×8×8 latents', () => {
    manualSeed(0);
    const m = new AutoencoderKL(VAE_PRESETS.mnist);
    expect(m.numParameters()).toBe(953413);
    expect(m.downsampleFactor).toBe(4);
    const x = tf.randomUniform([1, 32, 32, 1], -1, 1) as tf.Tensor4D;
    const { mean, logvar, sample } = m.forward(x);
    expect(mean.shape).toEqual([1, 8, 8, 4]);
    expect(logvar.shape).toEqual([1, 8, 8, 4]);
    expect(sample.shape).toEqual([1, 32, 32, 1]);
  });

  it('sample = mean + exp(logvar/2)·noise; KL matches the closed form', () => {
    const mean = tf.tensor4d([0.5, -1, 2, 0], [1, 1, 2, 2]);
    const logvar = tf.tensor4d([0, Math.log(4), -2, 1], [1, 1, 2, 2]);
    const noise = tf.tensor4d([1, 1, -1, 2], [1, 1, 2, 2]);
    const z = vae.sample({ mean, logvar }, noise);
    expect(Array.from(z.dataSync())).toEqual([1.5, 1, 2 - Math.exp(-1), 2 * Math.exp(0.5)].map(Math.fround));
    const kl = klDivergence({ mean, logvar }).dataSync()[0];
    const want = [[0.5, 0], [-1, Math.log(4)], [2, -2], [0, 1]].reduce((s, [m, lv]) => s + 0.5 * (m! ** 2 + Math.exp(lv!) - 1 - lv!), 0);
    expect(kl).toBeCloseTo(want, 5);
  });
});

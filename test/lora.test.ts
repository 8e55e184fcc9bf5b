/**
 * LoRA merging (src/sample/lora.ts) against diffusers v0.24 on the sd1_pipelines fixture (case
 * lora.ddim: the kohya file tiny_lora_kohya.safetensors at scale 0.8, plus the scale-1.0 and
 * no-LoRA runs): prompt embeddings, the latents after every step, the final latents and the image,
 * from the diffusers folder and from the LDM single file. The same tensors renamed in the test to
 * diffusers/PEFT keys (and diffusers' older processor keys) must merge to the same weights, bit
 * for bit. The merge is also checked on its own against the unmerged forms y = W·x + f·up(down(x))
 * for a linear layer and for a 3×3 conv (kohya LoCon). Then the refusals: SDXL files, a LoRA for
 * another base model, broken files (nothing merged, the model unchanged), unknown keys (one
 * warning line), and the CLI's one-line errors.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type CliResult, cliAsync } from './helpers/cli-run.ts';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type SafeTensor, floatToBf16, readSafetensors, writeSafetensors } from '../src/io/safetensors.ts';
import { registerNativeBackend } from '../src/backend/native.ts';
import { createScheduler, readSchedulerConfig } from '../src/schedule/index.ts';
import { type StableDiffusionPipeline, loadDiffusersPipeline, loadLdmPipeline } from '../src/sample/index.ts';
import { type LoraSpec, applyLoras, mergeLoras, openLoras, parseLoraSpec } from '../src/sample/lora.ts';
import type { StateDict } from '../src/nn/module.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const TINY = path.resolve(ROOT, '../shared/fixtures/sd1_tiny');
const MODEL = path.join(TINY, 'model');
const FIXTURE = path.resolve(ROOT, '../shared/fixtures/sd1_pipelines');
const LORA = path.join(FIXTURE, 'lora/tiny_lora_kohya.safetensors');
const manifest = JSON.parse(fs.readFileSync(path.join(FIXTURE, 'manifest.json'), 'utf8').replace(/(?<=[:[,]\s*)(-?Infinity|NaN)/g, 'null'));
const CASE = manifest.cases.lora.ddim;
const sdConfig = readSchedulerConfig(path.join(MODEL, 'scheduler/scheduler_config.json'));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-lora-'));

/**
 * Tolerances (those of test/pipeline.test.ts, tighter than the fixture README's suggested 5e-5 /
 * 1e-4 / 1e-5). The fixture's float64 replay differs from these float32 references by 2.1e-6 of
 * max|latents| (final) and 1.3e-6 (image); we observe 3.1e-6 (every step and final), 1.9e-6
 * (image) and 1.7e-6 (embeddings) at scale 0.8, on the native and cpu backends. A wrong
 * alpha/rank factor, scale or layout moves the latents by O(1): the LoRA moves them by 26.
 */
const LATENT_REL_TOL = 3e-5;
const IMAGE_TOL = 1e-5;
const EMBED_TOL = 1e-5;

let ref: Map<string, SafeTensor>;
let kohya: Map<string, SafeTensor>;
const silent = { warn: () => {} };

beforeAll(async () => {
  await tf.setBackend(registerNativeBackend() ? 'native' : 'cpu');
  ref = readSafetensors(path.join(FIXTURE, 'reference.safetensors'), (n) => n.startsWith('lora.'));
  kohya = readSafetensors(LORA);
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function refTensor(key: string): tf.Tensor {
  const t = ref.get(key);
  if (!t) throw new Error(`reference.safetensors has no ${key}`);
  return tf.tensor(t.data, t.shape);
}
const toNchw = (x: tf.Tensor) => tf.transpose(x, [0, 3, 1, 2]);
const maxAbs = (a: tf.Tensor, b: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]);
const maxOf = (a: tf.Tensor) => tf.tidy(() => tf.max(tf.abs(a)).dataSync()[0]);

/** Runs the lora.ddim call on `pipe` and compares with the reference outputs `<prefix>.*`. */
function runCase(pipe: StableDiffusionPipeline, prefix: string, withSteps: boolean) {
  pipe.scheduler = createScheduler('ddim', sdConfig);
  const call = CASE.call;
  const init = tf.transpose(refTensor(call.latents), [0, 2, 3, 1]) as tf.Tensor4D;
  const stepRef = withSteps ? refTensor(CASE.outputs.step_latents) : null;
  const stepErrors: number[] = [];
  const timesteps: number[] = [];
  const out = pipe.call({
    prompt: call.prompt,
    numInferenceSteps: call.num_inference_steps,
    guidanceScale: call.guidance_scale,
    height: call.height,
    width: call.width,
    eta: call.eta,
    latents: init,
    callback: (s) => {
      timesteps.push(s.t);
      if (!stepRef) return;
      const want = tf.squeeze(tf.slice(stepRef, [s.i], [1]), [0]);
      stepErrors.push(maxAbs(toNchw(s.latents), want) / maxOf(want));
      want.dispose();
    },
  });
  const finalRef = refTensor(`${prefix}.final_latents`);
  const r = {
    timesteps,
    stepErrors,
    embedErr: maxAbs(out.promptEmbeds, refTensor(`${prefix}.prompt_embeds`)),
    finalErr: maxAbs(toNchw(out.latents), finalRef) / maxOf(finalRef),
    imageErr: maxAbs(out.images, refTensor(`${prefix}.image`)),
    latents: toNchw(out.latents),
  };
  tf.dispose([out.images, out.latents, out.promptEmbeds, init]);
  return r;
}

function expectMatches(r: ReturnType<typeof runCase>, label: string) {
  console.log(`${label}: embeds ${r.embedErr.toExponential(2)}, steps (rel) ≤ ${r.stepErrors.length ? Math.max(...r.stepErrors).toExponential(2) : '-'}, final (rel) ${r.finalErr.toExponential(2)}, image ${r.imageErr.toExponential(2)}`);
  expect(r.timesteps).toEqual(CASE.timesteps);
  expect(r.embedErr).toBeLessThanOrEqual(EMBED_TOL);
  for (const e of r.stepErrors) expect(e).toBeLessThanOrEqual(LATENT_REL_TOL);
  expect(r.finalErr).toBeLessThanOrEqual(LATENT_REL_TOL);
  expect(r.imageErr).toBeLessThanOrEqual(IMAGE_TOL);
}

/** The diffusers folder with `specs` merged (a fresh pipeline each time: merging is permanent). */
function pipeWith(specs: LoraSpec[]): StableDiffusionPipeline {
  const pipe = loadDiffusersPipeline(MODEL);
  if (specs.length) mergeLoras(pipe, openLoras(specs), silent);
  return pipe;
}

/** All UNet and text-encoder weights, PyTorch layout. */
function weights(pipe: StableDiffusionPipeline): StateDict {
  const sd: StateDict = new Map();
  for (const [k, v] of pipe.unet.stateDict()) sd.set(`unet.${k}`, v);
  for (const [k, v] of pipe.textEncoder.stateDict()) sd.set(`te.${k}`, v);
  return sd;
}

/** Names of the weights that differ between a and b (bit for bit). */
function differing(a: StateDict, b: StateDict): string[] {
  return [...a.keys()].filter((k) => {
    const x = a.get(k)!.data;
    const y = b.get(k)!.data;
    return x.length !== y.length || x.some((v, i) => !Object.is(v, y[i]));
  });
}

/** Writes `tensors` (name → SafeTensor-like) as a safetensors file in tmp. */
function writeLora(name: string, tensors: Map<string, { shape: readonly number[]; data: Float32Array }>, dtype: 'F16' | 'BF16' | 'F32' = 'F16'): string {
  const file = path.join(tmp, name);
  writeSafetensors(file, tensors, { dtype });
  return file;
}

/** The kohya fixture's tensors with renamed keys (`rename` returns the new key, or null to drop it). */
function renamed(rename: (key: string) => string | null): Map<string, SafeTensor> {
  const out = new Map<string, SafeTensor>();
  for (const [k, v] of kohya) {
    const n = rename(k);
    if (n !== null) out.set(n, v);
  }
  return out;
}

/** kohya key → module path, from the fixture manifest (written by the oracle, not derived here). */
const modulePath = new Map<string, { component: string; module: string }>(
  manifest.files.lora.modules.map((m: { key_prefix: string; component: string; module: string }) => [m.key_prefix, { component: m.component, module: m.module }]),
);

/** A kohya key in diffusers/PEFT spelling: unet.<path>.lora_A.weight / lora_B.weight / .alpha. */
function peftKey(key: string): string {
  const [prefix, ...rest] = key.split('.');
  const m = modulePath.get(prefix)!;
  const comp = m.component === 'unet' ? 'unet' : 'text_encoder';
  const suffix = rest.join('.');
  const part = suffix === 'lora_down.weight' ? 'lora_A.weight' : suffix === 'lora_up.weight' ? 'lora_B.weight' : 'alpha';
  return `${comp}.${m.module}.${part}`;
}

/** The same key in diffusers' older spelling (attention processors, LoRACompatible layers, PatchedLoraProjection). */
function oldDiffusersKey(key: string): string {
  const [prefix, ...rest] = key.split('.');
  const m = modulePath.get(prefix)!;
  const suffix = rest.join('.');
  const part = suffix === 'lora_down.weight' ? 'down.weight' : suffix === 'lora_up.weight' ? 'up.weight' : null;
  let mod: string;
  let lora: string;
  let am = /^(.*\.attn[12])\.(to_q|to_k|to_v|to_out\.0)$/.exec(m.module);
  if (m.component === 'unet' && am) {
    mod = `${am[1]}.processor`;
    lora = `${am[2].replace('.0', '')}_lora`;
  } else if ((am = /^(.*\.self_attn)\.(q|k|v|out)_proj$/.exec(m.module))) {
    mod = am[1];
    lora = `to_${am[2]}_lora`;
  } else {
    mod = m.module;
    lora = m.component === 'unet' ? 'lora' : 'lora_linear_layer';
  }
  const comp = m.component === 'unet' ? 'unet' : 'text_encoder';
  return part ? `${comp}.${mod}.${lora}.${part}` : `${comp}.${mod}.${lora}.alpha`;
}

describe('LoRA against diffusers (sd1_pipelines case lora.ddim)', () => {
  it('kohya file at scale 0.8: prompt embeddings, every step, final latents and image', () => {
    const pipe = loadDiffusersPipeline(MODEL);
    try {
      const [report] = mergeLoras(pipe, openLoras([{ file: LORA, scale: CASE.call.cross_attention_kwargs.scale }]), silent);
      expect(report.unetModules).toBe(manifest.files.lora.n_unet_modules);
      expect(report.textEncoderModules).toBe(manifest.files.lora.n_text_encoder_modules);
      expect(report.unusedKeys).toEqual([]);
      const r = runCase(pipe, 'lora.ddim', true);
      expectMatches(r, 'scale 0.8');
      expect(r.stepErrors).toHaveLength(10);
      r.latents.dispose();
    } finally {
      pipe.dispose();
    }
  });

  it('scale 1.0 (the default) and no LoRA match their references', () => {
    for (const [specs, prefix] of [
      [[parseLoraSpec(LORA)], 'lora.ddim.scale1'],
      [[], 'lora.ddim.nolora'],
    ] as const) {
      const pipe = pipeWith([...specs]);
      try {
        const r = runCase(pipe, prefix, false);
        expectMatches(r, prefix);
        r.latents.dispose();
      } finally {
        pipe.dispose();
      }
    }
  });

  it('the LDM single file with the LoRA gives the same numbers as the diffusers folder', () => {
    const ldm = loadLdmPipeline(path.join(TINY, 'ldm/sd1_tiny.safetensors'), {
      yaml: path.join(TINY, 'ldm/sd1_tiny.yaml'),
      tokenizer: path.join(MODEL, 'tokenizer'),
      textEncoderConfig: path.join(MODEL, 'text_encoder/config.json'),
      imageSize: 16,
    });
    try {
      applyLoras(ldm, [{ file: LORA, scale: 0.8 }], silent);
      const r = runCase(ldm, 'lora.ddim', true);
      expectMatches(r, 'LDM file, scale 0.8');
      r.latents.dispose();
    } finally {
      ldm.dispose();
    }
  });
});

describe('key layouts and dtypes: the same tensors merge to the same weights', () => {
  let base: StateDict;
  let merged: StateDict;
  beforeAll(() => {
    const p0 = pipeWith([]);
    base = weights(p0);
    p0.dispose();
    const p = pipeWith([{ file: LORA, scale: 0.8 }]);
    merged = weights(p);
    p.dispose();
  });

  it('the kohya merge changes exactly the 102 listed modules', () => {
    const changed = differing(base, merged).sort();
    const want = manifest.files.lora.modules.map((m: { component: string; module: string }) => `${m.component === 'unet' ? 'unet' : 'te'}.${m.module}.weight`).sort();
    expect(changed).toEqual(want);
  });

  it('diffusers/PEFT keys (unet.….lora_A/lora_B, text_encoder.…) and the older processor keys give bit-identical weights', () => {
    for (const [name, rename] of [
      ['peft.safetensors', peftKey],
      ['peft_base_model.safetensors', (k: string) => peftKey(k).replace(/\.lora_([AB])\.weight$/, '.lora_$1.default.weight')],
      ['diffusers_old.safetensors', oldDiffusersKey],
    ] as const) {
      const file = writeLora(name, renamed(rename));
      const p = pipeWith([{ file, scale: 0.8 }]);
      try {
        expect(differing(merged, weights(p)), name).toEqual([]);
      } finally {
        p.dispose();
      }
    }
  });

  it('kohya names in the original LDM UNet layout (lora_unet_input_blocks_4_1_…) give bit-identical weights', () => {
    // Each module's LDM name, found independently of sdlab's converter: the LDM single file holds
    // the same (random) values as the diffusers folder, so equal tensors mean the same weight.
    const ldm = readSafetensors(path.join(TINY, 'ldm/sd1_tiny.safetensors'), (k) => k.startsWith('model.diffusion_model.') && k.endsWith('.weight'));
    const diffusers = readSafetensors(path.join(MODEL, 'unet/diffusion_pytorch_model.safetensors'));
    const byValues = new Map<string, string>();
    for (const [k, v] of ldm) byValues.set(Array.from(v.data.subarray(0, 64)).join(','), k.slice('model.diffusion_model.'.length, -'.weight'.length));
    const ldmName = new Map<string, string>();
    for (const [prefix, m] of modulePath) {
      if (m.component !== 'unet') continue;
      const name = byValues.get(Array.from(diffusers.get(`${m.module}.weight`)!.data.subarray(0, 64)).join(','));
      expect(name, m.module).toBeDefined();
      ldmName.set(prefix, `lora_unet_${name!.replace(/\./g, '_')}`);
    }
    expect([...ldmName.values()].filter((n) => /^lora_unet_(input_blocks|middle_block|output_blocks)_/.test(n))).toHaveLength(72);
    const file = writeLora('kohya_ldm.safetensors', renamed((k) => {
      const [prefix, ...rest] = k.split('.');
      return ldmName.has(prefix) ? [ldmName.get(prefix), ...rest].join('.') : k;
    }));
    const p = pipeWith([{ file, scale: 0.8 }]);
    try {
      expect(differing(merged, weights(p))).toEqual([]);
    } finally {
      p.dispose();
    }
  });

  it('LDM-layout names of resnet convs, samplers, time embedding, conv_in/out resolve to the diffusers modules', () => {
    // The LDM (openaimodel) layout of this UNet (2 levels, 2 resnets each, attention on level 1), written out by hand.
    const expected: Record<string, string> = {
      input_blocks_0_0: 'conv_in',
      time_embed_0: 'time_embedding.linear_1',
      time_embed_2: 'time_embedding.linear_2',
      input_blocks_1_0_in_layers_2: 'down_blocks.0.resnets.0.conv1',
      input_blocks_3_0_op: 'down_blocks.0.downsamplers.0.conv',
      input_blocks_4_0_skip_connection: 'down_blocks.1.resnets.0.conv_shortcut',
      input_blocks_5_0_out_layers_3: 'down_blocks.1.resnets.1.conv2',
      middle_block_0_emb_layers_1: 'mid_block.resnets.0.time_emb_proj',
      middle_block_2_in_layers_2: 'mid_block.resnets.1.conv1',
      output_blocks_2_2_conv: 'up_blocks.0.upsamplers.0.conv',
      output_blocks_3_0_skip_connection: 'up_blocks.1.resnets.0.conv_shortcut',
      out_2: 'conv_out',
    };
    const pipe = loadDiffusersPipeline(MODEL);
    try {
      const params = new Map(pipe.unet.namedParameters());
      const tensors = new Map<string, { shape: readonly number[]; data: Float32Array }>();
      for (const [ldm, mod] of Object.entries(expected)) {
        const p = params.get(`${mod}.weight`);
        expect(p, mod).toBeDefined();
        const sh = p!.variable.shape as number[];
        const [out, inn, kh, kw] = p!.layout === 'conv' ? [sh[3], sh[2], sh[0], sh[1]] : [sh[1], sh[0], 1, 1];
        tensors.set(`lora_unet_${ldm}.lora_down.weight`, { shape: p!.layout === 'conv' ? [2, inn, kh, kw] : [2, inn], data: new Float32Array(2 * inn * kh * kw).fill(0.01) });
        tensors.set(`lora_unet_${ldm}.lora_up.weight`, { shape: p!.layout === 'conv' ? [out, 2, 1, 1] : [out, 2], data: new Float32Array(out * 2).fill(0.01) });
      }
      const before = weights(pipe);
      const [rep] = applyLoras(pipe, [{ file: writeLora('ldm_names.safetensors', tensors, 'F32'), scale: 1 }], silent);
      expect(rep.unusedKeys).toEqual([]);
      expect(differing(before, weights(pipe)).sort()).toEqual(Object.values(expected).map((m) => `unet.${m}.weight`).sort());
    } finally {
      pipe.dispose();
    }
  });

  it('a diffusers/PEFT file without .alpha tensors takes alpha from its lora_adapter_metadata (lora_alpha, alpha_pattern, use_rslora)', () => {
    // Per-module alphas from the manifest (no alpha: factor 1, i.e. alpha = r = 4), written as PEFT writes them:
    // one lora_alpha per model and alpha_pattern entries matched against the end of module names.
    const patterns: Record<string, Record<string, number>> = { unet: {}, text_encoder: {} };
    for (const m of manifest.files.lora.modules as Array<{ component: string; module: string; alpha: number | null; rank: number }>) {
      const comp = m.component === 'unet' ? 'unet' : 'text_encoder';
      const alpha = m.alpha ?? m.rank;
      if (alpha === 4) continue; // the lora_alpha below
      const tail = m.module.slice(m.module.search(/(attn[12]|mlp)\./));
      expect(patterns[comp][tail] ?? alpha).toBe(alpha); // one alpha per tail
      patterns[comp][tail] = alpha;
    }
    expect(Object.keys(patterns.unet).length).toBeGreaterThan(4);
    const noAlpha = renamed((k) => (k.endsWith('.alpha') ? null : peftKey(k)));
    for (const [name, rslora, div] of [['peft_meta.safetensors', false, 1], ['peft_meta_rslora.safetensors', true, 2]] as const) {
      // rsLoRA scales by alpha/√r = alpha/2 here: halved alphas give the same factors.
      const half = (o: Record<string, number>) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, v / div]));
      const meta = {
        'unet.lora_alpha': 4 / div, 'unet.alpha_pattern': half(patterns.unet), 'unet.r': 4, 'unet.use_rslora': rslora,
        'text_encoder.lora_alpha': 4 / div, 'text_encoder.alpha_pattern': half(patterns.text_encoder), 'text_encoder.r': 4, 'text_encoder.use_rslora': rslora,
      };
      const file = path.join(tmp, name);
      writeSafetensors(file, noAlpha, { dtype: 'F16', metadata: { format: 'pt', lora_adapter_metadata: JSON.stringify(meta) } });
      const p = pipeWith([{ file, scale: 0.8 }]);
      try {
        expect(differing(merged, weights(p)), name).toEqual([]);
      } finally {
        p.dispose();
      }
    }
  });

  it('F32 and BF16 files: F32 copies of the F16 values merge identically; BF16 equals F32 of the same bf16 values', () => {
    const f32 = writeLora('f32.safetensors', kohya, 'F32');
    const p = pipeWith([{ file: f32, scale: 0.8 }]);
    expect(differing(merged, weights(p))).toEqual([]);
    p.dispose();
    // bf16-exact values: what a BF16 file holds.
    const bf = new Map([...kohya].map(([k, v]) => {
      const d = new Float32Array(v.data.length);
      const u = new Uint32Array(1);
      const f = new Float32Array(u.buffer);
      v.data.forEach((x, i) => {
        u[0] = floatToBf16(x) << 16;
        d[i] = f[0];
      });
      return [k, { shape: v.shape, data: d }];
    }));
    const viaBf16 = pipeWith([{ file: writeLora('bf16.safetensors', bf, 'BF16'), scale: 0.8 }]);
    const viaF32 = pipeWith([{ file: writeLora('bf16_as_f32.safetensors', bf, 'F32'), scale: 0.8 }]);
    try {
      const a = weights(viaBf16);
      expect(differing(a, weights(viaF32))).toEqual([]);
      expect(differing(a, merged).length).toBeGreaterThan(0); // bf16 rounding did change the values
    } finally {
      viaBf16.dispose();
      viaF32.dispose();
    }
  });
});

describe('the merge against the unmerged LoRA forward', () => {
  it('linear: x·W\' = x·W + f·up(down(x)), f = scale·alpha/r', () => {
    const pipe = loadDiffusersPipeline(MODEL);
    try {
      const mod = 'down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k'; // 32 → 64: catches a transposed layout
      const p = new Map(pipe.unet.namedParameters()).get(`${mod}.weight`)!;
      const w0 = tf.clone(p.variable);
      const down = kohya.get('lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight')!;
      const up = kohya.get('lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight')!;
      const alpha = kohya.get('lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.alpha')!.data[0];
      applyLoras(pipe, [{ file: LORA, scale: 0.7 }], silent);
      const x = tf.randomNormal([5, 32], 0, 1, 'float32', 1);
      const merged = tf.matMul(x, p.variable);
      // x·Wᵢₙₜ (internal [in, out]) + f · (x·downᵀ)·upᵀ with the file's tensors as PyTorch [r, in] / [out, r]
      const h = tf.matMul(x, tf.tensor2d(down.data, down.shape as [number, number]), false, true);
      const lora = tf.matMul(h, tf.tensor2d(up.data, up.shape as [number, number]), false, true);
      const want = tf.add(tf.matMul(x, w0), tf.mul(lora, (0.7 * alpha) / 4));
      expect(alpha).toBe(8);
      expect(maxAbs(merged, want)).toBeLessThan(1e-5 * Math.max(1, maxOf(want)));
      expect(maxAbs(merged, tf.matMul(x, w0))).toBeGreaterThan(0.1); // the LoRA does something
    } finally {
      pipe.dispose();
    }
  });

  it('3×3 conv (kohya LoCon: down [r, in, 3, 3], up [out, r, 1, 1]): conv(x, W\') = conv(x, W) + f·conv1×1(conv3×3(x, down), up)', () => {
    const pipe = loadDiffusersPipeline(MODEL);
    try {
      const mod = 'down_blocks.1.resnets.0.conv1'; // 32 → 64, 3×3
      const p = new Map(pipe.unet.namedParameters()).get(`${mod}.weight`)!;
      const w0 = tf.clone(p.variable) as tf.Tensor4D;
      const r = 3;
      const downT = tf.randomNormal([r, 32, 3, 3], 0, 0.2, 'float32', 2); // PyTorch OIHW
      const upT = tf.randomNormal([64, r, 1, 1], 0, 0.2, 'float32', 3);
      const file = writeLora(
        'locon.safetensors',
        new Map([
          ['lora_unet_down_blocks_1_resnets_0_conv1.lora_down.weight', { shape: downT.shape, data: downT.dataSync() as Float32Array }],
          ['lora_unet_down_blocks_1_resnets_0_conv1.lora_up.weight', { shape: upT.shape, data: upT.dataSync() as Float32Array }],
          ['lora_unet_down_blocks_1_resnets_0_conv1.alpha', { shape: [], data: new Float32Array([1.5]) }],
        ]),
        'F32',
      );
      const [rep] = applyLoras(pipe, [{ file, scale: 2 }], silent);
      expect(rep.unetModules).toBe(1);
      const x = tf.randomNormal([2, 6, 6, 32], 0, 1, 'float32', 4) as tf.Tensor4D;
      const conv = (inp: tf.Tensor4D, k: tf.Tensor) => tf.conv2d(inp, k as tf.Tensor4D, 1, 'same');
      const hwio = (t: tf.Tensor) => tf.transpose(t, [2, 3, 1, 0]);
      const want = tf.add(conv(x, w0), tf.mul(conv(conv(x, hwio(downT)), hwio(upT)), (2 * 1.5) / r));
      const got = conv(x, p.variable);
      expect(maxAbs(got, want)).toBeLessThan(1e-5 * maxOf(want));
      expect(maxAbs(got, conv(x, w0))).toBeGreaterThan(0.1);
    } finally {
      pipe.dispose();
    }
  });
});

describe('refusals leave the model as it was', () => {
  it('a LoRA for another base model (a 1024-wide module) is refused naming the file and the first module that does not fit; nothing is merged', () => {
    const bad = new Map(kohya);
    // A late module (in file order, after every text-encoder module and many UNet ones) as SD 2.x would have it.
    const k = 'lora_unet_up_blocks_0_attentions_2_transformer_blocks_0_attn2_to_k';
    bad.set(`${k}.lora_down.weight`, { dtype: 'F16', shape: [4, 1024], data: new Float32Array(4 * 1024).fill(0.01) });
    const file = writeLora('sd2ish.safetensors', bad);
    const pipe = loadDiffusersPipeline(MODEL);
    try {
      const before = weights(pipe);
      // The good fixture first, then the bad file: the good one must not be merged either.
      expect(() => applyLoras(pipe, [{ file: LORA, scale: 1 }, { file, scale: 1 }], silent)).toThrow(
        new RegExp(`^--lora ${file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: not a LoRA for this model: UNet module up_blocks\\.0\\.attentions\\.2\\.transformer_blocks\\.0\\.attn2\\.to_k is \\[64,32\\] but the file's down/up weights are \\[4,1024\\]/\\[64,4\\]`),
      );
      expect(differing(before, weights(pipe))).toEqual([]);
    } finally {
      pipe.dispose();
    }
  });

  it('non-finite values, a down weight without its up weight, integer weights: one line each, nothing merged', () => {
    const nan = new Map(kohya);
    const up = kohya.get('lora_unet_up_blocks_0_attentions_2_transformer_blocks_0_ff_net_2.lora_up.weight')!;
    const d = up.data.slice();
    d[7] = NaN;
    nan.set('lora_unet_up_blocks_0_attentions_2_transformer_blocks_0_ff_net_2.lora_up.weight', { ...up, data: d });
    const half = new Map(kohya);
    half.delete('lora_unet_up_blocks_0_attentions_2_transformer_blocks_0_ff_net_2.lora_up.weight');
    // The fixture with one lora_down stored as I8 (safetensors written by hand: writeSafetensors writes floats only).
    const intKey = 'lora_unet_up_blocks_0_attentions_2_transformer_blocks_0_ff_net_2.lora_down.weight';
    const ints = writeLora('ints.safetensors', new Map([...kohya].filter(([k]) => k !== intKey)), 'F32');
    const intFile = path.join(tmp, 'ints_i8.safetensors');
    {
      const buf = fs.readFileSync(ints);
      const n = Number(buf.readBigUInt64LE(0));
      const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
      const end = buf.length - 8 - n;
      header[intKey] = { dtype: 'I8', shape: [4, 256], data_offsets: [end, end + 1024] };
      const h = Buffer.from(JSON.stringify(header));
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(h.length));
      fs.writeFileSync(intFile, Buffer.concat([len, h, buf.subarray(8 + n), Buffer.alloc(1024, 1)]));
    }
    const pipe = loadDiffusersPipeline(MODEL);
    try {
      const before = weights(pipe);
      expect(() => applyLoras(pipe, [{ file: writeLora('nan.safetensors', nan, 'F32'), scale: 1 }], silent)).toThrow(/nan\.safetensors: tensor "lora_unet_up_blocks_0_attentions_2_transformer_blocks_0_ff_net_2\.lora_up\.weight" holds non-finite values \(NaN at index 7\)/);
      expect(() => applyLoras(pipe, [{ file: writeLora('half.safetensors', half), scale: 1 }], silent)).toThrow(/half\.safetensors: UNet module up_blocks\.0\.attentions\.2\.transformer_blocks\.0\.ff\.net\.2 has a down weight but no up weight/);
      expect(() => applyLoras(pipe, [{ file: intFile, scale: 1 }], silent)).toThrow(/ints_i8\.safetensors: "lora_unet_up_blocks_0_attentions_2_transformer_blocks_0_ff_net_2\.lora_down\.weight" is I8; expected a float tensor/);
      expect(differing(before, weights(pipe))).toEqual([]);
    } finally {
      pipe.dispose();
    }
  });

  it('SDXL files (lora_te1_/lora_te2_, text_encoder_2.) are refused before any model is needed', () => {
    const t = { shape: [4, 32], data: new Float32Array(128) };
    for (const key of ['lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight', 'lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight', 'text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight']) {
      const file = writeLora('sdxl.safetensors', new Map([[key, t]]));
      expect(() => openLoras([{ file, scale: 1 }])).toThrow(/an SDXL LoRA .*sdlab runs SD 1\.x\/2\.x/);
    }
  });

  it('a file without LoRA weights (e.g. a model) and a LoRA that fits nothing here are refused', () => {
    expect(() => openLoras([{ file: path.join(MODEL, 'text_encoder/model.safetensors'), scale: 1 }])).toThrow(/model\.safetensors: no LoRA weights in it/);
    const other = writeLora('other.safetensors', renamed((k) => k.replace('lora_unet_', 'lora_unet_input_blocks_9_').replace('lora_te_', 'lora_te_x_')));
    const pipe = loadDiffusersPipeline(MODEL);
    try {
      expect(() => applyLoras(pipe, [{ file: other, scale: 1 }], silent)).toThrow(/other\.safetensors: none of its 294 keys fits this model's UNet or text encoder/);
    } finally {
      pipe.dispose();
    }
  });
});

describe('unknown keys: one warning line, the rest merged', () => {
  it('lists the count and the first few keys, and skips a module with a part sdlab cannot apply', () => {
    const extra = new Map<string, { shape: readonly number[]; data: Float32Array }>(kohya);
    const z = { shape: [4, 4], data: new Float32Array(16) };
    extra.set('lora_unet_nonexistent_block.lora_down.weight', z);
    extra.set('lora_unet_nonexistent_block.lora_up.weight', z);
    extra.set('zz_some_metadata_tensor', z);
    // A DoRA magnitude on one module: merging it without would be wrong, so the module is left out.
    extra.set('lora_unet_up_blocks_0_attentions_2_transformer_blocks_0_ff_net_2.dora_scale', { shape: [64, 1], data: new Float32Array(64) });
    const file = writeLora('extra.safetensors', extra);
    const lines: string[] = [];
    const pipe = loadDiffusersPipeline(MODEL);
    try {
      const [rep] = applyLoras(pipe, [{ file, scale: 1 }], { warn: (l) => lines.push(l) });
      expect(lines).toHaveLength(1);
      expect(lines[0]).not.toContain('\n');
      expect(lines[0]).toMatch(/^sdlab: warning: --lora .*extra\.safetensors: 6 keys not applied .*"zz_some_metadata_tensor", "lora_unet_nonexistent_block\.lora_down\.weight", "lora_unet_nonexistent_block\.lora_up\.weight", "lora_unet_up_blocks_0_attentions_2_transformer_blocks_0_ff_net_2\.dora_scale", … \(2 more\)\.$/);
      expect(rep.unetModules).toBe(71);
      expect(rep.textEncoderModules).toBe(30);
    } finally {
      pipe.dispose();
    }
  });
});

describe('--lora FILE[:scale]', () => {
  it('parses a scale after the last colon, else the whole value is the file', () => {
    expect(parseLoraSpec('a.safetensors')).toEqual({ file: 'a.safetensors', scale: 1 });
    expect(parseLoraSpec('dir/a.safetensors:0.8')).toEqual({ file: 'dir/a.safetensors', scale: 0.8 });
    expect(parseLoraSpec('a.safetensors:-1.5')).toEqual({ file: 'a.safetensors', scale: -1.5 });
    expect(() => parseLoraSpec('f:abc')).toThrow(/^--lora f:abc: scale "abc" is not a number \(expected FILE or FILE:SCALE/);
    expect(() => parseLoraSpec('f:1e9')).toThrow(/scale 1000000000 is outside \[-100, 100\]/);
    expect(() => parseLoraSpec('f:')).toThrow(/scale "" is not a number/);
    expect(() => parseLoraSpec('f:0x10')).toThrow(/scale "0x10" is not a number/);
    expect(parseLoraSpec('f:.5e1')).toEqual({ file: 'f', scale: 5 });
    const odd = path.join(tmp, 'odd:name.safetensors');
    fs.writeFileSync(odd, 'x');
    expect(parseLoraSpec(odd)).toEqual({ file: odd, scale: 1 });
  });
});

// ---------------------------------------------------------------------------------------------
// The CLI

/** Runs the CLI as a child process (backend 'cpu' unless given: the errors come before any work). */
const cli = (args: string[], backend = 'cpu') => cliAsync(args, { backend, timeoutMs: 120_000 });
const sdLines = (s: string) => s.split('\n').filter((l) => l.startsWith('sdlab: ') && !/pure-JS 'cpu' backend/.test(l));

describe('txt2img --lora', () => {
  const base = ['txt2img', '--model', MODEL, '--prompt', 'a photograph of an astronaut riding a horse', '--steps', '2', '--height', '32', '--width', '32', '--scheduler', 'ddim'];

  it.each([
    ['a missing file', () => 'missing.safetensors', /^sdlab: error: --lora missing\.safetensors: no such file\.$/],
    ['a bad scale', () => 'f:abc', /^error: option '--lora <file\[:scale\]>' argument 'f:abc' is invalid\. scale "abc" is not a number \(expected FILE or FILE:SCALE/],
    [
      'a corrupt file',
      () => {
        const f = path.join(tmp, 'corrupt.safetensors');
        fs.writeFileSync(f, Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 2, 3]));
        return f;
      },
      /corrupt\.safetensors: not a valid safetensors file/,
    ],
    ['a hostile header', () => {
      const f = path.join(tmp, 'hostile.safetensors');
      const h = Buffer.from(JSON.stringify({ 'lora_unet_x.lora_down.weight': { dtype: 'F32', shape: [1e9, 1e9], data_offsets: [0, 4] } }));
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(h.length));
      fs.writeFileSync(f, Buffer.concat([len, h, Buffer.alloc(4)]));
      return f;
    }, /hostile\.safetensors: not a valid safetensors file/],
    ['a LoRA for another base model (fails after the model loaded)', () => {
      const bad = new Map(kohya);
      bad.set('lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight', { dtype: 'F16', shape: [1024, 4], data: new Float32Array(4096) });
      return writeLora('cli_sd2ish.safetensors', bad);
    }, /cli_sd2ish\.safetensors: not a LoRA for this model: text encoder module text_model\.encoder\.layers\.0\.self_attn\.q_proj is \[32,32\]/],
  ])('%s: one line, exit 2, nothing written or replaced', async (_label, lora, pattern) => {
    const out = path.join(tmp, `cli-out-${Math.random().toString(36).slice(2)}`);
    const fresh = path.join(out, 'new'); // a directory that does not exist yet
    fs.mkdirSync(out);
    fs.writeFileSync(path.join(out, '0000.png'), 'an earlier image');
    const before = fs.statSync(path.join(out, '0000.png')).mtimeMs;
    for (const dir of [out, fresh]) {
      const r = await cli([...base, '--lora', lora(), '--out', dir]);
      expectOneLine(r, pattern);
    }
    expect(fs.readdirSync(out)).toEqual(['0000.png']);
    expect(fs.readFileSync(path.join(out, '0000.png'), 'utf8')).toBe('an earlier image');
    expect(fs.statSync(path.join(out, '0000.png')).mtimeMs).toBe(before);
  }, 120_000);

  /** Exit 2, exactly one line on stderr (besides the cpu backend's notice), no stack trace. */
  function expectOneLine(r: CliResult, pattern: RegExp) {
    expect(r.code, r.stderr).toBe(2);
    const lines = r.stderr.split('\n').filter((l) => l.trim() && !/pure-JS 'cpu' backend/.test(l));
    expect(lines).toHaveLength(1);
    // Flag values commander parses are reported in its words ("error: option …"), like --steps abc.
    expect(lines[0]).toMatch(/^(sdlab: )?error: /);
    expect(lines[0]).toMatch(pattern);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  }

  it('merges, says what it merged, records it in txt2img.json, warns once about unused keys', async () => {
    const extra = new Map<string, { shape: readonly number[]; data: Float32Array }>(kohya);
    extra.set('zz_unused', { shape: [1], data: new Float32Array(1) });
    const file = writeLora('cli_extra.safetensors', extra);
    const out = path.join(tmp, 'cli-ok');
    const r = await cli([...base, '--lora', `${file}:0.8`, '--lora', LORA, '--out', out], 'auto');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`lora ${file} at scale 0.8: 72 UNet and 30 text-encoder modules merged`);
    expect(r.stdout).toContain(`lora ${LORA} at scale 1: 72 UNet and 30 text-encoder modules merged`);
    expect(sdLines(r.stderr)).toEqual([`sdlab: warning: --lora ${file}: 1 key not applied (not a LoRA weight sdlab knows, or for a module this model lacks): "zz_unused".`]);
    const json = JSON.parse(fs.readFileSync(path.join(out, 'txt2img.json'), 'utf8'));
    expect(json.loras).toEqual([
      { file, scale: 0.8, unet_modules: 72, text_encoder_modules: 30 },
      { file: LORA, scale: 1, unet_modules: 72, text_encoder_modules: 30 },
    ]);
    expect(fs.existsSync(path.join(out, '0000.png'))).toBe(true);
  }, 120_000);
});

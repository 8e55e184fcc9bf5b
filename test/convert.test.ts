/**
 * `sdlab convert` and `.ckpt` single files, on the sd1_tiny fixture:
 *   - the LDM weights as a PyTorch checkpoint (written by scripts/make_ckpt_fixture.py with
 *     strided views, shared storages, zip64 and pickle protocol 4) → `sdlab convert` → a diffusers
 *     directory that sdlab's own diffusers loader reads, whose txt2img reproduces upstream
 *     diffusers' image (manifest case txt2img.ddim, scheduler built from the converted
 *     scheduler_config.json) and is bit-identical to the fixture's own diffusers directory;
 *   - the converted configs equal the fixture's diffusers configs key for key as sdlab reads
 *     them; --dtype fp16 of the (fp16-exact) fixture directory writes exactly its tensors;
 *   - the .ckpt loads as an LDM single file (loadLdmPipeline) with the same numbers;
 *   - CLI errors (child processes): one line, exit 2, nothing written (no OUT, no temporary
 *     directory), and a hostile checkpoint's payload never runs.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile, execFileSync } from 'node:child_process';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerNativeBackend } from '../src/backend/native.ts';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.ts';
import { readUnetConfig } from '../src/unet/index.ts';
import { readVaeConfig } from '../src/autoencoder/index.ts';
import { readTextEncoderConfig } from '../src/clip/text_encoder.ts';
import { type StableDiffusionPipeline, loadDiffusersPipeline, loadLdmPipeline } from '../src/sample/index.ts';
import { runConvert } from '../src/commands/convert.ts';
import { writeSd2Tiny } from './helpers/sd2-tiny.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const FIXTURE = path.resolve(ROOT, '../shared/fixtures/sd1_tiny');
const MODEL = path.join(FIXTURE, 'model');
const YAML = path.join(FIXTURE, 'ldm/sd1_tiny.yaml');
const TE_CONFIG = path.join(MODEL, 'text_encoder/config.json');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-convert-'));
const CKPT = path.join(tmp, 'sd1_tiny.ckpt');
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const manifest = JSON.parse(fs.readFileSync(path.join(FIXTURE, 'manifest.json'), 'utf8').replace(/(?<=[:[,]\s*)(-?Infinity|NaN)/g, 'null'));

/** Upstream's image error is ~1.6e-6 (test/pipeline.test.ts says why 1e-5). */
const IMAGE_TOL = 1e-5;

let ref: ReturnType<typeof readSafetensors>;

beforeAll(async () => {
  await tf.setBackend(registerNativeBackend() ? 'native' : 'cpu');
  ref = readSafetensors(path.join(FIXTURE, 'reference.safetensors'), (n) => n.startsWith('t2i.ddim.'));
  execFileSync('python3', [path.join(ROOT, 'scripts/make_ckpt_fixture.py'), 'ldm', path.join(FIXTURE, 'ldm/sd1_tiny.safetensors'), CKPT, '--views', '--zip64', '--protocol4']);
});

/** manifest case txt2img.ddim on `p` (its scheduler already DDIM): the image, and its error against upstream's. */
function ddimImage(p: StableDiffusionPipeline): { image: Float32Array; err: number } {
  const c = manifest.cases.txt2img.ddim;
  const lat = ref.get(c.call.latents)!;
  const timesteps: number[] = [];
  const out = p.call({
    prompt: c.call.prompt,
    negativePrompt: c.call.negative_prompt,
    numInferenceSteps: c.call.num_inference_steps,
    guidanceScale: c.call.guidance_scale,
    height: c.call.height,
    width: c.call.width,
    eta: c.call.eta,
    latents: tf.transpose(tf.tensor4d(lat.data, lat.shape as [number, number, number, number]), [0, 2, 3, 1]),
    callback: (s) => void timesteps.push(s.t),
  });
  expect(timesteps).toEqual(c.timesteps); // the converted scheduler_config.json gives upstream's schedule
  const image = out.images.dataSync() as Float32Array;
  const want = ref.get(c.outputs.image)!.data;
  let err = 0;
  for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(image[i] - want[i]));
  tf.dispose([out.images, out.latents, out.promptEmbeds]);
  return { image, err };
}

function withPipe<T>(p: StableDiffusionPipeline, fn: (p: StableDiffusionPipeline) => T): T {
  try {
    return fn(p);
  } finally {
    p.dispose();
  }
}

describe('convert: .ckpt → diffusers directory', () => {
  const out = path.join(tmp, 'from-ckpt');
  let direct: Float32Array;

  beforeAll(() => {
    const lines: string[] = [];
    runConvert({ input: CKPT, out, yaml: YAML, tokenizer: MODEL, textEncoderConfig: TE_CONFIG, imageSize: 16, log: (l) => lines.push(l) });
    expect(lines).toEqual([
      'unet: 304 tensors, 1.43 M parameters (fp32)',
      'vae: 124 tensors, 0.66 M parameters (fp32)',
      'text_encoder: 84 tensors, 1.62 M parameters (fp32)',
    ]);
    direct = withPipe(loadDiffusersPipeline(MODEL, { scheduler: 'ddim' }), (p) => ddimImage(p).image);
  });

  it('writes a complete diffusers layout, and nothing else beside it', () => {
    const files = (d: string): string[] => fs.readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(path.join(d, e.name)).map((f) => `${e.name}/${f}`) : [e.name]));
    expect(files(out).sort()).toEqual([
      'model_index.json',
      'scheduler/scheduler_config.json',
      'text_encoder/config.json',
      'text_encoder/model.safetensors',
      'tokenizer/merges.txt',
      'tokenizer/special_tokens_map.json',
      'tokenizer/tokenizer_config.json',
      'tokenizer/vocab.json',
      'unet/config.json',
      'unet/diffusion_pytorch_model.safetensors',
      'vae/config.json',
      'vae/diffusion_pytorch_model.safetensors',
    ]);
    expect(fs.readdirSync(tmp).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    const index = JSON.parse(fs.readFileSync(path.join(out, 'model_index.json'), 'utf8'));
    const fixtureIndex = JSON.parse(fs.readFileSync(path.join(MODEL, 'model_index.json'), 'utf8'));
    for (const k of ['_class_name', 'scheduler', 'text_encoder', 'tokenizer', 'unet', 'vae']) expect(index[k], k).toEqual(fixtureIndex[k]);
  });

  it("the configs are the fixture's diffusers configs, key for key as sdlab reads them", () => {
    expect(readUnetConfig(path.join(out, 'unet/config.json'))).toEqual(readUnetConfig(path.join(MODEL, 'unet/config.json')));
    expect(readVaeConfig(path.join(out, 'vae/config.json'))).toEqual(readVaeConfig(path.join(MODEL, 'vae/config.json')));
    expect(readTextEncoderConfig(path.join(out, 'text_encoder/config.json'))).toEqual(readTextEncoderConfig(TE_CONFIG));
  });

  it("txt2img from the converted directory: upstream's image, bit-identical to the fixture's directory", () => {
    const { image, err } = withPipe(loadDiffusersPipeline(out, { scheduler: 'ddim' }), ddimImage);
    console.log(`converted .ckpt: image max |Δ| vs diffusers ${err.toExponential(2)}`);
    expect(err).toBeLessThanOrEqual(IMAGE_TOL);
    expect(Array.from(image)).toEqual(Array.from(direct));
  });

  it('the .ckpt itself loads as an LDM single file, with the same numbers', () => {
    const p = loadLdmPipeline(CKPT, { yaml: YAML, tokenizer: MODEL, textEncoderConfig: TE_CONFIG, imageSize: 16, scheduler: 'ddim' });
    const { image, err } = withPipe(p, ddimImage);
    expect(err).toBeLessThanOrEqual(IMAGE_TOL);
    expect(Array.from(image)).toEqual(Array.from(direct));
  });

  it('--dtype fp16 of the fixture directory writes exactly its (fp16) tensors', () => {
    const half = path.join(tmp, 'half');
    runConvert({ input: MODEL, out: half, dtype: 'fp16' });
    for (const [sub, file] of [
      ['unet', 'diffusion_pytorch_model.safetensors'],
      ['vae', 'diffusion_pytorch_model.safetensors'],
      ['text_encoder', 'model.safetensors'],
    ]) {
      const a = readSafetensors(path.join(MODEL, sub, file));
      const b = readSafetensors(path.join(half, sub, file));
      expect([...b.keys()].sort(), sub).toEqual([...a.keys()].filter((k) => !k.endsWith('position_ids')).sort());
      for (const [k, t] of b) {
        expect(t.dtype).toBe('F16');
        expect(t.shape, k).toEqual(a.get(k)!.shape);
        if (!t.data.every((v, i) => v === a.get(k)!.data[i])) throw new Error(`${sub}/${k} differs`);
      }
    }
  });

  it('a diffusers folder with pickle (.bin) weights: read safely, written as safetensors', () => {
    const binDir = path.join(tmp, 'bin-model');
    fs.cpSync(MODEL, binDir, { recursive: true });
    const unetDir = path.join(binDir, 'unet');
    fs.chmodSync(unetDir, 0o755);
    fs.rmSync(path.join(unetDir, 'diffusion_pytorch_model.safetensors'), { force: true });
    execFileSync('python3', [path.join(ROOT, 'scripts/make_ckpt_fixture.py'), 'ldm', path.join(MODEL, 'unet/diffusion_pytorch_model.safetensors'), path.join(unetDir, 'diffusion_pytorch_model.bin'), '--plain']);
    const out2 = path.join(tmp, 'from-bin');
    runConvert({ input: binDir, out: out2 });
    const a = readSafetensors(path.join(MODEL, 'unet/diffusion_pytorch_model.safetensors'));
    const b = readSafetensors(path.join(out2, 'unet/diffusion_pytorch_model.safetensors'));
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
    for (const [k, t] of b) if (!t.data.every((v, i) => v === a.get(k)!.data[i])) throw new Error(`unet/${k} differs`);
  });
});

describe('convert and txt2img on the CLI: one line, exit 2, nothing written', () => {
  const cli = (args: string[]) =>
    new Promise<{ code: number; stderr: string; stdout: string }>((resolve) => {
      execFile(process.execPath, [path.join(ROOT, 'bin/sdlab.mjs'), ...args], { cwd: ROOT, timeout: 120_000 }, (err, stdout, stderr) => {
        resolve({ code: err ? Number((err as { code?: number }).code) : 0, stdout, stderr });
      });
    });
  const expectOneLine = (r: { code: number; stderr: string }, pattern: RegExp) => {
    expect(r.code, r.stderr).toBe(2);
    const lines = r.stderr.split('\n').filter((l) => l.trim());
    expect(lines, r.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(/^(sdlab: )?error: /); // commander's own option errors have no prefix
    expect(lines[0]).toMatch(pattern);
  };
  const leftovers = (dir: string) => fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'));

  it('a hostile checkpoint: refused by name, its payload never runs, no OUT', async () => {
    const evil = path.join(tmp, 'evil.ckpt');
    const marker = path.join(tmp, 'evil.pwned');
    execFileSync('python3', [path.join(ROOT, 'scripts/make_ckpt_fixture.py'), 'hostile', 'os_system', evil, marker]);
    const outDir = path.join(tmp, 'evil-out');
    expectOneLine(await cli(['convert', evil, outDir]), /evil\.ckpt: refused to load: the pickle uses the Python global "posix\.system"/);
    expectOneLine(await cli(['txt2img', '--model', evil, '--tokenizer', MODEL, '--prompt', 'x', '--out', path.join(tmp, 'evil-t2i')]), /refused to load: the pickle uses the Python global "posix\.system"/);
    expect(fs.existsSync(marker)).toBe(false);
    expect(fs.existsSync(outDir)).toBe(false);
    expect(leftovers(tmp)).toEqual([]);
  });

  it('an existing OUT is never replaced; bad flags and inputs are one line', async () => {
    const existing = path.join(tmp, 'existing');
    fs.mkdirSync(existing);
    fs.writeFileSync(path.join(existing, 'keep.txt'), 'mine');
    expectOneLine(await cli(['convert', MODEL, existing]), /existing: already exists; convert writes a new directory and never replaces one/);
    expect(fs.readdirSync(existing)).toEqual(['keep.txt']);
    expectOneLine(await cli(['convert', MODEL, path.join(tmp, 'o1'), '--dtype', 'bf8']), /--dtype.*expected one of fp16, fp32, got "bf8"/);
    expectOneLine(await cli(['convert', MODEL, path.join(tmp, 'o2'), '--yaml', YAML]), /--yaml is for single-file checkpoints; .* is a diffusers directory/);
    expectOneLine(await cli(['convert', path.join(tmp, 'nothing.ckpt'), path.join(tmp, 'o3')]), /nothing\.ckpt: no such file or directory/);
    // A checkpoint cut short: refused while reading, before OUT or a temporary directory exists.
    const whole = fs.readFileSync(CKPT);
    const cut = path.join(tmp, 'cut.ckpt');
    fs.writeFileSync(cut, whole.subarray(0, whole.length - 30));
    expectOneLine(await cli(['convert', cut, path.join(tmp, 'o4'), '--yaml', YAML]), /cut\.ckpt: not a valid PyTorch checkpoint \(zip archive\)/);
    // Weights that do not fit the yaml (the SD 1.x default architecture here): the shape check, before writing.
    expectOneLine(await cli(['convert', CKPT, path.join(tmp, 'o5'), '--text-encoder-config', TE_CONFIG]), /weights do not fit the model/);
    // A value fp16 cannot hold, found while writing: the temporary directory goes, OUT never appears.
    const big = readSafetensors(path.join(FIXTURE, 'ldm/sd1_tiny.safetensors'));
    const last = [...big.keys()].sort().at(-1)!;
    big.get(last)!.data[0] = 1e6;
    const bigFile = path.join(tmp, 'big.safetensors');
    writeSafetensors(bigFile, big);
    expectOneLine(await cli(['convert', bigFile, path.join(tmp, 'o6'), '--yaml', YAML, '--text-encoder-config', TE_CONFIG, '--dtype', 'fp16']), /holds 1000000, beyond float16's range \(±65504\); convert with --dtype fp32/);
    for (const o of ['o1', 'o2', 'o3', 'o4', 'o5', 'o6']) expect(fs.existsSync(path.join(tmp, o)), o).toBe(false);
    expect(leftovers(tmp)).toEqual([]);
  });

  it("--prediction sets the written scheduler's prediction_type over the yaml's parameterization; nothing else changes", () => {
    const sd2 = writeSd2Tiny(fs.mkdtempSync(path.join(tmp, 'sd2-')));
    const sched = (dir: string) => JSON.parse(fs.readFileSync(path.join(dir, 'scheduler/scheduler_config.json'), 'utf8')) as Record<string, unknown>;
    const unet = (dir: string) => fs.readFileSync(path.join(dir, 'unet/config.json'), 'utf8');
    const base = { input: sd2.file, yaml: sd2.yaml, textEncoderConfig: sd2.teConfig };
    const v = runConvert({ ...base, out: path.join(tmp, 'sd2-v') }).out;
    const eps = runConvert({ ...base, out: path.join(tmp, 'sd2-eps'), prediction: 'epsilon' }).out;
    expect(sched(v).prediction_type).toBe('v_prediction'); // the yaml's parameterization "v"
    expect(sched(eps)).toEqual({ ...sched(v), prediction_type: 'epsilon' });
    expect(unet(eps)).toBe(unet(v));
    // A diffusers input: only prediction_type changes.
    const d = runConvert({ input: MODEL, out: path.join(tmp, 'sd1-v'), prediction: 'v_prediction' }).out;
    const want = JSON.parse(fs.readFileSync(path.join(MODEL, 'scheduler/scheduler_config.json'), 'utf8')) as Record<string, unknown>;
    expect(want.prediction_type).not.toBe('v_prediction');
    expect(sched(d)).toEqual({ ...want, prediction_type: 'v_prediction' });
  });

  it('convert --help lists every flag', async () => {
    const r = await cli(['convert', '--help']);
    for (const flag of ['--dtype', '--yaml', '--tokenizer', '--text-encoder-config', '--image-size', '--prediction']) expect(r.stdout).toContain(flag);
  });
});

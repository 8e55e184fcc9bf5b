/**
 * LCM-distilled UNets (config time_cond_proj_dim: a guidance-scale embedding enters the time
 * embedding through cond_proj) against diffusers v0.24 on test/fixtures/lcm_unet
 * (scripts/lcm_unet_fixture.py: a tiny UNet of sd1_tiny's family, LatentConsistencyModelPipeline's
 * loop, 4 steps, guidance 8, explicit latents, upstream's draws recorded):
 *   - the guidance embedding against its closed form in float64, and against upstream's tensor;
 *   - the UNet with timestep_cond (and without: cond_proj unused) against upstream;
 *   - the whole pipeline (no CFG: the prompt's row only) with upstream's draws replayed: every
 *     step's latents and `denoised`, the final latents and the image, within the sd1_pipelines
 *     README's tolerances; the pipeline's LCM defaults (4 steps, guidance 8.5);
 *   - the CLI: txt2img --scheduler lcm --guidance 8 --steps 4 with upstream's latents and
 *     --rng torch gives upstream's image; a config with time_cond_proj_dim whose weights lack
 *     cond_proj → one line, exit 2, nothing written.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.ts';
import { readPng } from '../src/io/png.ts';
import { registerNativeBackend } from '../src/backend/native.ts';
import { guidanceScaleEmbedding } from '../src/nn/blocks.ts';
import { UNet2DConditionModel } from '../src/unet/unet.ts';
import { LCMScheduler } from '../src/schedule/index.ts';
import { type StableDiffusionPipeline, loadDiffusersPipeline } from '../src/sample/index.ts';
import { UsageError } from '../src/util/errors.ts';
import { EMBED_TOL, IMAGE_TOL, LATENT_REL_TOL, MODEL, ReplayGenerator, maxAbs, maxOf } from './helpers/pipeline-fixture.ts';
import { expectRefusedOneLine, runCli } from './helpers/cli-run.ts';

const FIX = path.resolve(import.meta.dirname, 'fixtures/lcm_unet');
const manifest = JSON.parse(fs.readFileSync(path.join(FIX, 'manifest.json'), 'utf8'));
const refs = readSafetensors(path.join(FIX, 'reference.safetensors'));
const ref = (key: string): tf.Tensor => {
  const t = refs.get(key);
  if (!t) throw new Error(`reference.safetensors has no ${key}`);
  return tf.tensor(t.data, t.shape);
};
/** NCHW reference → NHWC. */
const nhwc = (key: string) => tf.tidy(() => tf.transpose(ref(key), [0, 2, 3, 1]) as tf.Tensor4D);
/** Row i of a stacked [N, 1, C, H, W] reference, as NHWC [1, H, W, C]. */
const rowNhwc = (key: string, i: number) => tf.tidy(() => tf.transpose(tf.squeeze(tf.slice(ref(key), [i], [1]), [0]), [0, 2, 3, 1]) as tf.Tensor4D);

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-lcm-unet-'));
/** A diffusers folder: sd1_tiny's tokenizer, text encoder and VAE with the fixture's UNet and LCM scheduler. */
function modelDir(name: string, unetDir = path.join(FIX, 'unet')): string {
  const root = path.join(tmp, name);
  fs.mkdirSync(root, { recursive: true });
  for (const part of ['model_index.json', 'tokenizer', 'text_encoder', 'vae']) fs.symlinkSync(path.join(MODEL, part), path.join(root, part));
  fs.symlinkSync(unetDir, path.join(root, 'unet'));
  fs.symlinkSync(path.join(FIX, 'scheduler'), path.join(root, 'scheduler'));
  return root;
}
const LCM_MODEL = modelDir('lcm-model');
const loop = manifest.loop;

let pipe: StableDiffusionPipeline;
beforeAll(async () => {
  await tf.setBackend(registerNativeBackend() ? 'native' : 'cpu');
  pipe = loadDiffusersPipeline(LCM_MODEL);
});
afterAll(() => {
  pipe?.dispose();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/**
 * Float32 computes 1000·w·f_i with a relative error of a few ulps (f_i = exp(−i·step) inherits
 * i times the rounding of step, plus exp's and the product's), so sin/cos of arguments up to ~1e4
 * differ from float64 by up to ~6e-7 of the argument.
 */
const argTol = (arg: number) => 6e-7 * Math.abs(arg) + 1e-6;

describe('guidance-scale embedding (get_guidance_scale_embedding)', () => {
  it('matches the closed form in float64: [sin(1000·w·f_i), cos(1000·w·f_i)], f_i = 10000^(−i/(d/2 − 1)), odd d zero-padded', () => {
    for (const [w, d] of [[[7, 0.5, 0, -1], 32], [[3.5], 256], [[1.25, 4], 9]] as [number[], number][]) {
      const got = guidanceScaleEmbedding(w, d).arraySync();
      const half = Math.floor(d / 2);
      expect(got.length).toBe(w.length);
      w.forEach((wi, r) => {
        expect(got[r].length).toBe(d);
        for (let i = 0; i < half; i++) {
          const arg = 1000 * wi * Math.pow(10000, -i / (half - 1));
          const tol = argTol(arg);
          expect(Math.abs(got[r][i] - Math.sin(arg)), `w ${wi} d ${d} sin ${i}`).toBeLessThanOrEqual(tol);
          expect(Math.abs(got[r][half + i] - Math.cos(arg)), `w ${wi} d ${d} cos ${i}`).toBeLessThanOrEqual(tol);
        }
        if (d % 2 === 1) expect(got[r][d - 1]).toBe(0);
      });
    }
  });

  it("matches upstream's float32 tensors (unet.timestep_cond for w = [7, 0.5], loop.w_embedding for w = guidance − 1)", () => {
    const w = Array.from(ref('unet.w').dataSync());
    expect(w).toEqual([7, 0.5]);
    // torch's vectorised float32 exp is off by an ulp on some f_i, which 1000·w amplifies: the
    // same argument-relative bound as the closed form (observed: 1.1e-4 at w = 7, arg ≈ 7000·f_i).
    for (const [got, key, ws] of [[guidanceScaleEmbedding(w, 32), 'unet.timestep_cond', w], [guidanceScaleEmbedding([loop.guidance_scale - 1], 32), 'loop.w_embedding', [loop.guidance_scale - 1]]] as const) {
      const g = got.arraySync();
      const want = (ref(key) as tf.Tensor2D).arraySync();
      ws.forEach((wi, r) => {
        for (let i = 0; i < 16; i++) {
          const tol = argTol(1000 * wi * Math.pow(10000, -i / 15));
          expect(Math.abs(g[r][i] - want[r][i]), `${key} ${r} sin ${i}`).toBeLessThanOrEqual(tol);
          expect(Math.abs(g[r][16 + i] - want[r][16 + i]), `${key} ${r} cos ${i}`).toBeLessThanOrEqual(tol);
        }
      });
    }
  });
});

describe('UNet with time_cond_proj_dim', () => {
  it('has time_embedding.cond_proj (no bias) and matches upstream with timestep_cond and without it', () => {
    const unet = pipe.unet;
    expect(unet.config.time_cond_proj_dim).toBe(32);
    expect(unet.time_embedding.cond_proj?.bias).toBeNull();
    const sample = nhwc('unet.sample');
    const t = Array.from(ref('unet.timestep').dataSync());
    const ctx = ref('unet.encoder_hidden_states') as tf.Tensor3D;
    const cond = ref('unet.timestep_cond') as tf.Tensor2D;
    const want = nhwc('unet.out');
    const wantNo = nhwc('unet.out_nocond');
    const got = unet.forward(sample, t, ctx, { timestepCond: cond });
    const gotNo = unet.forward(sample, t, ctx);
    const err = maxAbs(got, want);
    const errNo = maxAbs(gotNo, wantNo);
    console.log(`lcm unet: max|ref| ${maxOf(want).toFixed(3)}, with timestep_cond max abs ${err.toExponential(2)}, without ${errNo.toExponential(2)}; cond moves the output by ${maxAbs(want, wantNo).toFixed(3)}`);
    expect(maxAbs(want, wantNo)).toBeGreaterThan(0.05); // the fixture exercises cond_proj
    expect(err).toBeLessThanOrEqual(1e-4);
    expect(errNo).toBeLessThanOrEqual(1e-4);
    expect(() => unet.forward(sample, t, ctx, { timestepCond: tf.zeros([2, 16]) as tf.Tensor2D })).toThrow(/timestep condition has shape \[2,16\], the model expects \[2, 32\]/);
    tf.dispose([sample, ctx, cond, want, wantNo, got, gotNo]);
  });

  it('a UNet without time_cond_proj_dim refuses a timestep condition', () => {
    const plain = UNet2DConditionModel.fromPretrained(path.join(MODEL, 'unet'));
    expect(plain.time_embedding.cond_proj).toBeNull();
    expect(() => plain.forward(tf.zeros([1, 8, 8, 4]) as tf.Tensor4D, 999, tf.zeros([1, 77, 32]) as tf.Tensor3D, { timestepCond: tf.zeros([1, 32]) as tf.Tensor2D })).toThrow(UsageError);
    plain.dispose();
  });
});

describe('LatentConsistencyModelPipeline against diffusers (lcm_unet fixture)', () => {
  const draws = () => new ReplayGenerator(Array.from({ length: loop.draws }, (_, i) => ref(`loop.randn.${i}`).dataSync() as Float32Array), 'lcm_unet');

  it("the model's scheduler is its LCMScheduler config; timesteps 999, 759, 499, 259", () => {
    expect(pipe.scheduler).toBeInstanceOf(LCMScheduler);
    pipe.scheduler.setTimesteps(loop.num_inference_steps);
    expect(pipe.scheduler.timesteps).toEqual(loop.timesteps);
  });

  it('the whole loop with upstream draws: no CFG, every step (latents, denoised), final latents, image', () => {
    const replay = draws();
    const stepErr: number[] = [];
    const denoisedErr: number[] = [];
    const ts: number[] = [];
    const out = pipe.call({
      prompt: loop.prompt,
      numInferenceSteps: loop.num_inference_steps,
      guidanceScale: loop.guidance_scale,
      height: loop.height,
      width: loop.width,
      latents: nhwc('loop.initial_latents'),
      generator: replay,
      callback: (st) => {
        ts.push(st.t);
        const want = rowNhwc('loop.step_latents', st.i);
        stepErr.push(maxAbs(st.latents, want) / maxOf(want));
        const wantD = rowNhwc('loop.denoised', st.i);
        denoisedErr.push(maxAbs(st.predOriginalSample, wantD) / maxOf(wantD));
        tf.dispose([want, wantD]);
      },
    });
    const finalRef = nhwc('loop.final_latents');
    const finalErr = maxAbs(out.latents, finalRef) / maxOf(finalRef);
    const imageErr = maxAbs(out.images, ref('loop.image'));
    const embedErr = maxAbs(out.promptEmbeds, ref('loop.prompt_embeds'));
    console.log(`lcm unet loop: embeds ${embedErr.toExponential(2)}, steps (rel) ≤ ${Math.max(...stepErr).toExponential(2)}, denoised (rel) ≤ ${Math.max(...denoisedErr).toExponential(2)}, final (rel) ${finalErr.toExponential(2)}, image ${imageErr.toExponential(2)}`);
    expect(ts).toEqual(loop.timesteps);
    expect(replay.used).toBe(loop.draws);
    expect(out.promptEmbeds.shape).toEqual([1, 77, 32]); // guidance 8, yet the prompt's row only
    expect(embedErr).toBeLessThanOrEqual(EMBED_TOL);
    expect(stepErr).toHaveLength(4);
    for (const e of [...stepErr, ...denoisedErr, finalErr]) expect(e).toBeLessThanOrEqual(LATENT_REL_TOL);
    expect(out.images.shape).toEqual([1, 32, 32, 3]);
    expect(imageErr).toBeLessThanOrEqual(IMAGE_TOL);
    tf.dispose([out.images, out.latents, out.promptEmbeds, finalRef]);
  });

  it("upstream's defaults: 4 steps and guidance 8.5 (a different image from guidance 8)", () => {
    const run = (g?: number) => {
      let n = 0;
      const out = pipe.call({ prompt: loop.prompt, guidanceScale: g, height: 32, width: 32, latents: nhwc('loop.initial_latents'), generator: draws(), callback: () => n++ });
      tf.dispose([out.latents, out.promptEmbeds]);
      return { n, images: out.images };
    };
    const dflt = run();
    const g85 = run(8.5);
    const g8 = run(8);
    expect(dflt.n).toBe(4);
    expect(maxAbs(dflt.images, g85.images)).toBe(0);
    expect(maxAbs(dflt.images, g8.images)).toBeGreaterThan(1e-3);
    tf.dispose([dflt.images, g85.images, g8.images]);
  });
});

describe('CLI', () => {
  it("txt2img --scheduler lcm --guidance 8 --steps 4 with upstream's latents and --rng torch gives upstream's image", () => {
    const lat = refs.get('loop.initial_latents')!;
    const init = path.join(tmp, 'init.safetensors');
    writeSafetensors(init, { latents: { shape: lat.shape, data: lat.data } });
    const out = path.join(tmp, 'cli');
    // upstream's step draws came from torch.Generator().manual_seed(1314) (scripts/lcm_unet_fixture.py)
    const r = runCli(['txt2img', '--model', LCM_MODEL, '--prompt', loop.prompt, '--scheduler', 'lcm', '--guidance', '8', '--steps', '4', '--height', '32', '--width', '32', '--init-latents', init, '--rng', 'torch', '--seed', '1314', '--out', out, '--backend', 'cpu']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/1 image 32x32, lcm 4 steps.*guidance 8/);
    const png = readPng(path.join(out, '0000.png'));
    const want = refs.get('loop.image')!.data;
    let d = 0;
    for (let i = 0; i < 32 * 32; i++) for (let c = 0; c < 3; c++) d = Math.max(d, Math.abs(png.data[4 * i + c] - Math.round(255 * want[3 * i + c])));
    expect(d).toBeLessThanOrEqual(1);
  }, 300_000);

  it("without --steps/--guidance the CLI takes the model's defaults (4 steps, guidance 8.5) and records them", () => {
    const out = path.join(tmp, 'cli-defaults');
    const r = runCli(['txt2img', '--model', LCM_MODEL, '--prompt', loop.prompt, '--height', '32', '--width', '32', '--out', out, '--backend', 'cpu']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/1 image 32x32, lcm 4 steps, guidance 8\.5,/);
    const json = JSON.parse(fs.readFileSync(path.join(out, 'txt2img.json'), 'utf8')) as { steps: number; guidance: number; scheduler: string };
    expect([json.steps, json.guidance, json.scheduler]).toEqual([4, 8.5, 'lcm']);
  }, 300_000);

  it('a config with time_cond_proj_dim whose weights lack cond_proj → one line, exit 2, nothing written', () => {
    const unetDir = path.join(tmp, 'unet-no-cond-proj');
    fs.mkdirSync(unetDir);
    fs.copyFileSync(path.join(FIX, 'unet/config.json'), path.join(unetDir, 'config.json'));
    const weights = readSafetensors(path.join(FIX, 'unet/diffusion_pytorch_model.safetensors'));
    expect(weights.delete('time_embedding.cond_proj.weight')).toBe(true);
    writeSafetensors(path.join(unetDir, 'diffusion_pytorch_model.safetensors'), weights, { dtype: 'F16' });
    const model = modelDir('no-cond-proj', unetDir);
    const out = path.join(tmp, 'never');
    const r = runCli(['txt2img', '--model', model, '--prompt', 'x', '--scheduler', 'lcm', '--steps', '1', '--height', '16', '--width', '16', '--out', out, '--backend', 'cpu']);
    expectRefusedOneLine(r, /time_embedding\.cond_proj\.weight/);
    expect(fs.existsSync(out)).toBe(false);
  }, 300_000);
});

/**
 * The WebGPU backend (src/backend/webgpu.ts: tfjs's webgpu backend on Dawn) against tfjs's `cpu`
 * backend, on whatever adapter Dawn finds: a GPU where there is one, Mesa's lavapipe software
 * adapter in CI (.ci/run installs mesa-vulkan-drivers from bookworm-backports). Skipped where no
 * adapter exists, except in CI, where a missing adapter fails.
 *   - synchronous reads of GPU tensors (dataSync, the path sdlab's code takes everywhere);
 *   - the forward pass and every parameter's gradient of the UNet, the VAE (encode → decode) and
 *     the text encoder, from the same weights and inputs on both backends;
 *   - one AdamW step (the optimizer's composition: webgpu has no fused kernel);
 *   - SD 1.x txt2img against diffusers (the sd1_tiny fixture), as test/pipeline.test.ts checks it;
 *   - `sdlab train all --preset tiny --backend webgpu` end to end (three trainers, sample sheet).
 * Error measure (bench/gpu.ts, shared with `npm run gpu-check`): max |webgpu − cpu| / max |cpu| over
 * each tensor (gradients: over all of a model's gradients).
 */
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { probeWebgpu } from '../src/backend/webgpu.ts';
import { selectBackend } from '../src/backend/index.ts';
import { scaledDotProductAttention } from '../src/ops/index.ts';
import { deviceLimits } from '../src/util/device_limits.ts';
import { Embedding } from '../src/nn/layers.ts';
import { manualSeed } from '../src/nn/module.ts';
import { PARITY_MODELS, modelParity, normals, on, relErr } from '../bench/gpu.ts';
import { AdamW } from '../src/train/optimizer.ts';
import { createScheduler, readSchedulerConfig } from '../src/schedule/index.ts';
import { loadDiffusersPipeline } from '../src/sample/index.ts';
import { readSafetensors } from '../src/io/safetensors.ts';
import { sdlab, tinyDigitsDir } from './helpers/tiny-data.ts';
import { MODEL, TINY } from './helpers/pipeline-fixture.ts';

const probe = await probeWebgpu();
const inCI = !!process.env.CI;

describe.skipIf(!probe.available && !inCI)(`webgpu backend (${probe.adapter})`, () => {
  beforeAll(() => {
    if (!probe.available) throw new Error(`CI needs a WebGPU adapter (mesa-vulkan-drivers from bookworm-backports): ${probe.detail}`);
  });
  afterAll(async () => {
    await tf.setBackend('cpu');
  });

  it('dataSync/arraySync of tensors computed on the GPU (Node has no OffscreenCanvas)', async () => {
    await tf.setBackend('webgpu');
    const a = normals([37, 53], 1), b = normals([53, 29], 2);
    const c = tf.matMul(a, b);
    const sync = c.dataSync() as Float32Array;       // the patched readSync
    const d = tf.relu(c);
    const asyncVals = await d.data();
    const [ref] = await on('cpu', () => [tf.matMul(normals([37, 53], 1), normals([53, 29], 2))]);
    expect(relErr([sync], [ref])).toBeLessThan(1e-5);
    expect(relErr([asyncVals], [ref.map((x) => Math.max(0, x))])).toBeLessThan(1e-5);
    await tf.setBackend('webgpu');
    const s = tf.sum(tf.square(normals([1000], 3)));
    expect(s.arraySync()).toBeCloseTo((await on('cpu', () => [tf.sum(tf.square(normals([1000], 3)))]))[0][0], 2);
    tf.dispose([a, b, c, d, s]);
  });

  it('addN of more tensors than a kernel may bind (a UNet has ~100 gradient norms to sum) is split, and frees its partial sums', async () => {
    await selectBackend('webgpu');
    const xs = Array.from({ length: 23 }, (_, i) => normals([5, 7], 40 + i));
    const before = tf.memory().numTensors;
    const want = xs.reduce((a, b) => a.add(b));
    const got = tf.addN(xs);
    expect(relErr([got.dataSync()], [want.dataSync()])).toBeLessThan(1e-6);
    expect(tf.memory().numTensors - before).toBe(22 + 1); // the reduce's 22 sums and addN's one result
    tf.dispose([...xs, got]);
    tf.disposeVariables();
  });

  it('under a binding limit, an embedding table and attention scores larger than one binding are split (util/device_limits.ts)', async () => {
    await selectBackend('webgpu');
    const saved = deviceLimits.maxBindingBytes;
    const work = () => {
      manualSeed(4);
      const emb = new Embedding(3000, 64); // 768 KB: over the 256 KB limit below
      const ids = tf.tensor2d([[0, 5, 2999, 17], [1, 1, 2, 3]], undefined, 'int32');
      const q = normals([2, 300, 16], 12) as tf.Tensor3D, k = normals([2, 300, 16], 13) as tf.Tensor3D, v = normals([2, 300, 16], 14) as tf.Tensor3D;
      const out = [emb.forward(ids), scaledDotProductAttention(q, k, v, 2)]; // scores 2·2·300·300·4 B = 1.4 MB
      emb.dispose();
      return out;
    };
    const run = async () => {
      const outs = tf.tidy(work);
      const vals = await Promise.all(outs.map((t) => t.data() as Promise<Float32Array>));
      tf.dispose(outs);
      return vals;
    };
    try {
      deviceLimits.maxBindingBytes = 256 * 1024; // (after selectBackend, which sets the adapter's)
      const g = await run();
      await selectBackend('cpu');
      const c = await run();
      expect(relErr([g[0]], [c[0]])).toBe(0);
      expect(relErr([g[1]], [c[1]])).toBeLessThan(1e-5);
    } finally {
      deviceLimits.maxBindingBytes = saved;
    }
  });

  it('at the adapter\'s own limit: an embedding table and attention scores larger than one binding still give the right numbers', async (ctx) => {
    await selectBackend('webgpu');
    const limit = deviceLimits.maxBindingBytes;
    if (limit > 2 ** 28) ctx.skip(); // a GPU with large bindings: tables past them are not worth building here
    // a table one binding cannot hold: without the CPU lookup the gather is rejected by the GPU
    const rows = Math.ceil(limit / (4 * 64)) + 100;
    const emb = new Embedding(rows, 64);
    const ids = [0, 7, rows - 1, 12345];
    const got = emb.forward(tf.tensor1d(ids, 'int32')).dataSync();
    const table = emb.weight.dataSync(); // (a read copies; it binds nothing)
    ids.forEach((id, k) => expect(Array.from(got.subarray(k * 64, (k + 1) * 64))).toEqual(Array.from(table.subarray(id * 64, (id + 1) * 64))));
    emb.dispose();
    // scores [2, 2, L, L] past the limit: without the chunk bound the one score matrix is rejected
    const L = Math.ceil(Math.sqrt(limit / 16)) + 16;
    const [q, k, v] = [normals([2, L, 32], 50), normals([2, L, 32], 51), normals([2, L, 32], 52)] as tf.Tensor3D[];
    const whole = await scaledDotProductAttention(q, k, v, 2).data();
    const chunked = await scaledDotProductAttention(q, k, v, 2, { maxScoreElements: 1 << 22 }).data();
    expect(relErr([whole], [chunked])).toBeLessThan(1e-6);
    tf.dispose([q, k, v]);
  }, 300_000);

  for (const model of PARITY_MODELS) {
    it(`${model.name}: forward and every parameter's gradient match the cpu backend`, async () => {
      const r = await modelParity('webgpu', model);
      console.log(`${r.name}: loss ${r.lossErr.toExponential(2)}, gradients ${r.gradErr.toExponential(2)} (${r.tensors} tensors)`);
      expect(r.lossErr).toBeLessThan(1e-5);
      expect(r.gradErr).toBeLessThan(1e-5);
    }, 300_000);
  }

  it('two AdamW steps (the optimizer composition, weight decay on) match the cpu backend', async () => {
    const step = () => {
      const vars = [normals([64, 33], 20), normals([33], 21)].map((t, i) => tf.variable(t, true, `p${i}`));
      const opt = new AdamW(vars.map((v, i) => [`p${i}`, v] as [string, tf.Variable]), { weightDecay: 0.01 });
      for (let k = 0; k < 2; k++) opt.applyGradients([normals([64, 33], 22 + k), normals([33], 30 + k)], 1e-2);
      const out = vars.map((v) => tf.keep(v.clone()));
      opt.dispose();
      vars.forEach((v) => v.dispose());
      return out;
    };
    expect(relErr(await on('webgpu', step), await on('cpu', step))).toBeLessThan(1e-6);
  });

  it('SD 1.x txt2img matches diffusers (sd1_tiny, ddim): text encoder, UNet with guidance, scheduler, VAE decode', async () => {
    await tf.setBackend('webgpu');
    const ref = readSafetensors(path.join(TINY, 'reference.safetensors'), (n) => n.startsWith('t2i.'));
    const refT = (k: string) => tf.tensor(ref.get(k)!.data, ref.get(k)!.shape);
    const c = JSON.parse(fs.readFileSync(path.join(TINY, 'manifest.json'), 'utf8').replace(/(?<=[:[,]\s*)(-?Infinity|NaN)/g, 'null')).cases.txt2img.ddim;
    const pipe = loadDiffusersPipeline(MODEL);
    pipe.scheduler = createScheduler('ddim', readSchedulerConfig(path.join(MODEL, 'scheduler/scheduler_config.json')));
    const out = pipe.call({
      prompt: c.call.prompt, negativePrompt: c.call.negative_prompt, numInferenceSteps: c.call.num_inference_steps,
      guidanceScale: c.call.guidance_scale, height: c.call.height, width: c.call.width, eta: c.call.eta,
      latents: tf.transpose(refT(c.call.latents), [0, 2, 3, 1]) as tf.Tensor4D,
    });
    const final = refT(c.outputs.final_latents);
    const latentErr = relErr([await tf.transpose(out.latents, [0, 3, 1, 2]).data()], [await final.data()]);
    const imageErr = relErr([await out.images.data()], [await refT(c.outputs.image).data()]) * tf.max(refT(c.outputs.image)).dataSync()[0];
    const embedErr = tf.max(tf.abs(tf.sub(out.promptEmbeds, refT(c.outputs.prompt_embeds)))).dataSync()[0];
    console.log(`sd1_tiny on webgpu: final latents (rel) ${latentErr.toExponential(2)}, image ${imageErr.toExponential(2)}, embeds ${embedErr.toExponential(2)}`);
    // test/pipeline.test.ts's tolerances (cpu and native): 3e-5 relative, 1e-5 absolute
    expect(latentErr).toBeLessThan(3e-5);
    expect(imageErr).toBeLessThan(1e-5);
    expect(embedErr).toBeLessThan(1e-5);
    pipe.dispose();
  }, 300_000);

  it('`sdlab train all --preset tiny --backend webgpu`: the three trainers, their losses as on cpu, and the sample sheet', async () => {
    const { tmp, dataDir } = tinyDigitsDir('sdlab-webgpu-', 40);
    const runs = { webgpu: path.join(tmp, 'gpu'), cpu: path.join(tmp, 'cpu') };
    const { stdout } = await sdlab(['train', 'all', '--preset', 'tiny', '--data', dataDir, '--backend', 'webgpu', '--run', runs.webgpu]);
    expect(stdout).toMatch(/unet\s+trained/);
    await sdlab(['train', 'all', '--preset', 'tiny', '--data', dataDir, '--backend', 'cpu', '--run', runs.cpu]);
    expect(fs.existsSync(path.join(runs.webgpu, 'samples/grid.png'))).toBe(true);
    // Each step sees the same weights and batch on both (the UNet's latents come from the VAE
    // just trained; the gradient-norm clip sums ~100 norms: the split addN): the losses agree.
    for (const stage of ['vae', 'clip', 'unet']) {
      const losses = (run: string) => (JSON.parse(fs.readFileSync(path.join(run, 'train', stage, 'history.json'), 'utf8')).steps as Array<{ loss: number }>).map((s) => s.loss);
      const [g, c] = [losses(runs.webgpu), losses(runs.cpu)];
      console.log(`train all tiny, ${stage}: losses webgpu ${g.join(', ')}; cpu ${c.join(', ')}`);
      expect(g).toHaveLength(c.length);
      g.forEach((l, i) => expect(Math.abs(l - c[i]) / Math.abs(c[i])).toBeLessThan(1e-5));
    }
    fs.rmSync(tmp, { recursive: true, force: true });
  }, 600_000);

  it('a kernel binding more than the adapter allows fails loudly at the next read (not garbage)', async (ctx) => {
    await selectBackend('webgpu');
    const limit = deviceLimits.maxBindingBytes;
    if (limit > 2 ** 28) ctx.skip(); // a GPU with large bindings: allocating past them is not worth it here
    const big = tf.zeros([Math.ceil(limit / 4) + 1024]);
    const y = tf.add(big, 1);
    expect(() => y.dataSync()).toThrow(/webgpu backend: the GPU rejected a kernel .*maxStorageBufferBindingSize/);
    tf.dispose([big, y]);
    // (last in this file: what a device does after a rejected kernel is not relied on by the others)
  });
});

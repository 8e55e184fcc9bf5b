/**
 * The public library API as a user imports it: `import { … } from 'sdlab'`. Inside the repository
 * the package's own name resolves (package self-reference, package.json "exports") to dist/,
 * which `npm run build` writes and `npm ci` runs through the `prepare` script. After changing
 * src/, run `npm run build`: this test fails with that instruction when dist/ is missing or
 * older than src/, rather than testing stale code.
 *
 * Checks that the names the README and the notebooks use resolve, and that a tiny random-weight
 * pipeline assembled only from the package's exports runs one text-to-image call end to end.
 *
 *   npm run build && npx vitest run test/api.test.ts
 */
import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type * as Sdlab from 'sdlab';

const ROOT = path.resolve(import.meta.dirname, '..');
const DIST_INDEX = path.join(ROOT, 'dist/index.js');

/** The most recently modified file under `dir` and its mtime. */
function newest(dir: string): { file: string; mtime: number } {
  let best = { file: '', mtime: 0 };
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    const cand = e.isDirectory() ? newest(p) : { file: p, mtime: fs.statSync(p).mtimeMs };
    if (cand.mtime > best.mtime) best = cand;
  }
  return best;
}

let sdlab: typeof Sdlab;

beforeAll(async () => {
  if (!fs.existsSync(DIST_INDEX)) {
    throw new Error('dist/index.js is missing: run `npm run build` (npm ci runs it through the prepare script).');
  }
  const src = newest(path.join(ROOT, 'src'));
  if (src.mtime > fs.statSync(DIST_INDEX).mtimeMs) {
    throw new Error(`dist/ is older than src/ (${path.relative(ROOT, src.file)} changed since the last build): run \`npm run build\`.`);
  }
  sdlab = await import('sdlab');
  await sdlab.useBackend(); // native when built, else cpu
});

describe("import … from 'sdlab'", () => {
  it('names the parts of Stable Diffusion, the loaders, the trainers and the grader', () => {
    for (const name of ['UNet2DConditionModel', 'AutoencoderKL', 'TextEncoder', 'DDIMScheduler', 'NoiseSchedule', 'StableDiffusionPipeline', 'loadRun', 'trainVae', 'checkExercise'] as const) {
      expect(typeof sdlab[name], name).toBe('function');
    }
    expect(sdlab.EXERCISES.map((e) => e.name)).toContain('add_noise');
  });

  it('names the own-data pieces (README "Data", datasets/README.md)', () => {
    for (const name of ['trainAll', 'loadDataset', 'loadImageFolder', 'datasetFromTf', 'readRunClasses', 'classPrompts', 'captionOf', 'captionTokenizer'] as const) {
      expect(typeof sdlab[name], name).toBe('function');
    }
    expect(sdlab.classPrompts({ classNames: [...sdlab.FASHION_MNIST_CLASSES] })[9]).toBe('an ankle boot');
  });

  it('a tiny random-weight pipeline built from the package API runs one call end to end', () => {
    const { TextEncoder, TEXT_ENCODER_PRESETS, mnistCaptionTokenizer, UNet2DConditionModel, mnistUnetConfig, AutoencoderKL, VAE_PRESETS, DDIMScheduler, StableDiffusionPipeline } = sdlab;
    const tokenizer = mnistCaptionTokenizer();
    const textEncoder = new TextEncoder({
      ...TEXT_ENCODER_PRESETS.mnist,
      vocab_size: tokenizer.vocabSize,
      hidden_size: 16,
      intermediate_size: 32,
      projection_dim: 16,
      num_hidden_layers: 1,
      num_attention_heads: 2,
    });
    const unet = new UNet2DConditionModel({ ...mnistUnetConfig({ crossAttentionDim: 16 }), sample_size: 4, block_out_channels: [8, 16], attention_head_dim: [2, 2], norm_num_groups: 4 });
    const levels = ['DownEncoderBlock2D', 'DownEncoderBlock2D'];
    const vae = new AutoencoderKL({ ...VAE_PRESETS.mnist, sample_size: 8, block_out_channels: [4, 4], down_block_types: levels, up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D'], norm_num_groups: 2 });
    const pipe = new StableDiffusionPipeline({ tokenizer, textEncoder, unet, vae, scheduler: DDIMScheduler.fromConfig() });
    try {
      const call = () => pipe.call({ prompt: 'a handwritten 7', numInferenceSteps: 2, guidanceScale: 2, seed: 0 });
      const a = call();
      expect(a.images.shape).toEqual([1, 8, 8, 1]); // 4×4 latents, one 2× VAE upsampling
      const px = a.images.dataSync();
      expect(px.every((v) => v >= 0 && v <= 1)).toBe(true);
      expect(Math.max(...px) - Math.min(...px)).toBeGreaterThan(0); // a picture, not a constant
      const b = call();
      expect(b.images.dataSync()).toEqual(px); // seeded: the same call gives the same image
      const png = sdlab.encodePng(sdlab.renderGrid(a.images, { scale: 2 })); // what saveImageGrid writes
      expect([...png.subarray(1, 4)].map((c) => String.fromCharCode(c)).join('')).toBe('PNG');
      for (const out of [a, b]) [out.images, out.latents, out.promptEmbeds].forEach((t) => t.dispose());
    } finally {
      pipe.dispose();
    }
  });
});

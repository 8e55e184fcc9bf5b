/**
 * `sdlab img2img` and `sdlab inpaint` on the command line (child processes, as users run them):
 * bad input fails with one line, exit 2 and nothing written; a run on the tiny fixture model
 * writes its PNG and settings; --save-latents writes the start noise (NCHW, the values the
 * seed's streams give) and --init-latents reproduces the run from it. `--rng torch` (the
 * TorchGenerator, src/util/torch_random.ts) must reproduce upstream's fixture images from the
 * seeds the fixture used.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type CliResult, cliAsync } from './helpers/cli-run.ts';
import { afterAll, describe, expect, it } from 'vitest';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.ts';
import { readPng } from '../src/io/png.ts';
import { imageGenerator, nhwcToNchw } from '../src/sample/noise.ts';
import { renderGrid, savePng } from '../src/viz/index.ts';
import { MODEL, PIPELINES, TINY, inpaintModelDir, manifest, refTensor } from './helpers/pipeline-fixture.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-sd-cli-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
const INIT = path.join(PIPELINES, 'init.png');
const MASK = path.join(PIPELINES, 'mask.png');
const model9 = inpaintModelDir(tmp);

/** The launcher in a child process (the fastest backend there is: native when built). */
const cli = (args: string[]) => cliAsync(args);

/** Every file under `dir` with its size and modification time. */
function snapshot(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      const st = fs.lstatSync(p);
      out.push(`${p} ${st.size} ${st.mtimeMs}`);
      if (e.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out.sort();
}

function expectOneLine(r: CliResult, pattern: RegExp, label: string): void {
  expect(r.code, `${label}: ${r.stderr}`).toBe(2);
  const lines = r.stderr.split('\n').filter((l) => l.trim());
  expect(lines, label).toHaveLength(1);
  expect(lines[0], label).toMatch(/^(sdlab: )?error: /); // commander's own parse errors have no prefix
  expect(lines[0], label).toMatch(pattern);
  expect(r.stderr, label).not.toMatch(/\n\s+at /);
}

// A 16×16 mask (the image is 32×32), a latents file of the wrong shape, a PNG that is not one.
const smallMask = path.join(tmp, 'small-mask.png');
const wrongLatents = path.join(tmp, 'wrong.safetensors');
writeSafetensors(wrongLatents, { latents: { shape: [1, 4, 8, 8], data: new Float32Array(256) } });
const notPng = path.join(tmp, 'not.png');
fs.writeFileSync(notPng, 'hello');

describe('img2img / inpaint: bad input → one line, exit 2, nothing written', () => {
  it('each case', async () => {
    // A real 16×16 PNG for the mask-size case: written by a run below would cost seconds, so encode one here.
    await savePng(smallMask, renderGrid([{ data: new Float32Array(256).fill(1), height: 16, width: 16, channels: 1 }], { pad: 0 }));
    const out = (name: string) => path.join(tmp, 'outs', name);
    const base = ['--model', MODEL, '--prompt', 'a cat', '--steps', '2'];
    const cases: Array<[string, string[], RegExp]> = [
      ['strength 0', ['img2img', ...base, '--init-image', INIT, '--strength', '0', '--out', out('a')], /--strength: expected a number in \(0, 1\], got 0\./],
      ['strength 1.5', ['img2img', ...base, '--init-image', INIT, '--strength', '1.5', '--out', out('b')], /--strength.*1\.5/],
      ['strength too small for the steps', ['img2img', ...base, '--init-image', INIT, '--strength', '0.3', '--out', out('c')], /int\(2 × 0\.3\) = 0 steps/],
      ['missing init image', ['img2img', ...base, '--init-image', path.join(tmp, 'none.png'), '--out', out('d')], /--init-image .*none\.png: no such file/],
      ['init image not a PNG', ['img2img', ...base, '--init-image', notPng, '--out', out('e')], /not\.png: cannot read PNG/],
      ['missing mask', ['inpaint', ...base, '--init-image', INIT, '--mask', path.join(tmp, 'none.png'), '--out', out('f')], /--mask .*none\.png: no such file/],
      ['mask size mismatch', ['inpaint', ...base, '--init-image', INIT, '--mask', smallMask, '--out', out('g')], /--mask .*small-mask\.png: 16×16 pixels, but --init-image .*init\.png is 32×32/],
      ['missing --init-latents', ['inpaint', ...base, '--init-image', INIT, '--mask', MASK, '--init-latents', path.join(tmp, 'none.safetensors'), '--out', out('h')], /--init-latents .*none\.safetensors: no such file/],
      ['--init-latents of the wrong shape', ['inpaint', ...base, '--init-image', INIT, '--mask', MASK, '--height', '32', '--width', '32', '--init-latents', wrongLatents, '--out', out('i')], /--init-latents .*wrong\.safetensors: shape \[1, 4, 8, 8\], expected \[1, 4, 16, 16\]/],
      ['--save-latents in a missing directory', ['img2img', ...base, '--init-image', INIT, '--save-latents', path.join(tmp, 'no-dir', 'l.safetensors'), '--out', out('j')], /--save-latents .*: the directory .*no-dir does not exist/],
      ['inpaint UNet for img2img', ['img2img', ...base, '--model', model9, '--init-image', INIT, '--out', out('k')], /an inpainting UNet \(9 input channels\): use `sdlab inpaint`/],
      ['img2img without --init-image', ['img2img', ...base, '--out', out('l')], /--init-image/],
    ];
    const before = snapshot(tmp);
    const results = await Promise.all(cases.map(([, args]) => cli(args)));
    cases.forEach(([label, , pattern], i) => expectOneLine(results[i], pattern, label));
    expect(snapshot(tmp)).toEqual(before);
  }, 300_000);
});

describe('img2img / inpaint runs (tiny fixture model)', () => {
  it('img2img writes its PNG and settings; --save-latents holds the seed streams\' noise; --init-latents reproduces the run', async () => {
    const a = path.join(tmp, 'i2i-a');
    const b = path.join(tmp, 'i2i-b');
    const lat = path.join(tmp, 'i2i.safetensors');
    const args = ['img2img', '--model', MODEL, '--init-image', INIT, '--prompt', 'a red cube', '--steps', '4', '--strength', '0.5', '--scheduler', 'euler', '--seed', '5', '--n', '2', '--batch', '2'];
    const r1 = await cli([...args, '--save-latents', lat, '--out', a]);
    expect(r1.code, r1.stderr).toBe(0);
    expect(fs.readdirSync(a).sort()).toEqual(['0000.png', '0001.png', 'grid.png', 'img2img.json']);
    const png = readPng(path.join(a, '0000.png'));
    expect([png.width, png.height]).toEqual([32, 32]); // the init image's size
    const settings = JSON.parse(fs.readFileSync(path.join(a, 'img2img.json'), 'utf8'));
    expect(settings).toMatchObject({ strength: 0.5, init_image: INIT, rng: 'sdlab', height: 32, width: 32, steps: 4 });
    // The start noise: per image, its stream's draws after the posterior sample (NHWC), stored NCHW.
    const saved = readSafetensors(lat).get('latents')!;
    expect(saved.shape).toEqual([2, 4, 16, 16]);
    for (const k of [0, 1]) {
      const g = imageGenerator(5, k);
      g.normalArray(16 * 16 * 4); // the posterior sample comes first
      const want = nhwcToNchw(g.normalArray(16 * 16 * 4), 1, 16, 16, 4);
      expect(Array.from(saved.data.subarray(k * 1024, (k + 1) * 1024))).toEqual(Array.from(want));
    }
    // Replaying the noise (the posterior samples still come from the same streams): the same images, byte for byte.
    const r2 = await cli([...args, '--init-latents', lat, '--out', b]);
    expect(r2.code, r2.stderr).toBe(0);
    for (const f of ['0000.png', '0001.png']) expect(fs.readFileSync(path.join(b, f)).equals(fs.readFileSync(path.join(a, f))), f).toBe(true);
  }, 300_000);

  it('txt2img --init-latents with upstream\'s latents (sd1_tiny case ddim) gives upstream\'s image; --save-latents writes them back unchanged', async () => {
    const ref = readSafetensors(path.join(TINY, 'reference.safetensors'), (n) => n === 't2i.ddim.initial_latents' || n === 't2i.ddim.image');
    const init = path.join(tmp, 't2i-init.safetensors');
    const lat = ref.get('t2i.ddim.initial_latents')!;
    writeSafetensors(init, { latents: { shape: lat.shape, data: lat.data } });
    const out = path.join(tmp, 't2i');
    const saved = path.join(tmp, 't2i-saved.safetensors');
    const r = await cli(['txt2img', '--model', MODEL, '--prompt', 'a photograph of an astronaut riding a horse', '--steps', '10', '--scheduler', 'ddim', '--height', '16', '--width', '16', '--init-latents', init, '--save-latents', saved, '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    const png = readPng(path.join(out, '0000.png'));
    const want = ref.get('t2i.ddim.image')!.data;
    let d = 0;
    for (let i = 0; i < 16 * 16; i++) for (let c = 0; c < 3; c++) d = Math.max(d, Math.abs(png.data[4 * i + c] - Math.round(255 * want[3 * i + c])));
    expect(d).toBeLessThanOrEqual(1);
    const back = readSafetensors(saved).get('latents')!;
    expect(back.shape).toEqual(lat.shape);
    expect(Array.from(back.data)).toEqual(Array.from(lat.data));
  }, 300_000);

  it('inpaint with the 9-channel UNet at the model\'s default size (the image resized to 16×16)', async () => {
    const out = path.join(tmp, 'inp');
    const r = await cli(['inpaint', '--model', model9, '--init-image', INIT, '--mask', MASK, '--prompt', 'a red cube', '--steps', '2', '--scheduler', 'ddim', '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/1 image 16x16, ddim 2 steps, strength 1/);
    expect(fs.readdirSync(out).sort()).toEqual(['0000.png', 'inpaint.json']);
    const png = readPng(path.join(out, '0000.png'));
    expect([png.width, png.height]).toEqual([16, 16]);
  }, 300_000);
});

describe('--rng torch reproduces upstream from the fixture\'s seeds', () => {
  /** max |png − round(255 · reference)| over the pixels (PNG is 8-bit). */
  function pngDiff(file: string, key: string): number {
    const png = readPng(file);
    const ref = refTensor(key).dataSync();
    let d = 0;
    for (let i = 0; i < png.width * png.height; i++) for (let c = 0; c < 3; c++) d = Math.max(d, Math.abs(png.data[4 * i + c] - Math.round(255 * ref[3 * i + c])));
    return d;
  }

  it('every img2img and inpaint case, from its seed alone (and its latents where upstream passed them): the same images and start noise', async () => {
    const prompt = manifest.cases.img2img.ddim.call.prompt;
    const latentsFile = (key: string) => {
      const file = path.join(tmp, `${key}.safetensors`);
      const t = refTensor(key);
      writeSafetensors(file, { latents: { shape: t.shape, data: t.dataSync() as Float32Array } });
      return file;
    };
    const common = ['--prompt', prompt, '--steps', '10', '--rng', 'torch'];
    // [case key, command + flags, the draw --save-latents must hold (the start noise)]
    const cases: Array<[string, string[], string]> = [
      ['img2img.ddim', ['img2img', '--model', MODEL, '--init-image', INIT, '--strength', '0.6', '--scheduler', 'ddim', '--seed', '3010'], 'img2img.ddim.randn.1'],
      ['img2img.euler', ['img2img', '--model', MODEL, '--init-image', INIT, '--strength', '0.6', '--scheduler', 'euler', '--seed', '3011'], 'img2img.euler.randn.1'],
      ['inpaint.ddim', ['inpaint', '--model', model9, '--init-image', INIT, '--mask', MASK, '--height', '32', '--width', '32', '--scheduler', 'ddim', '--seed', '3021', '--init-latents', latentsFile('inpaint.ddim.initial_latents')], 'inpaint.ddim.initial_latents'],
      ['inpaint.ddim_strength075', ['inpaint', '--model', model9, '--init-image', INIT, '--mask', MASK, '--height', '32', '--width', '32', '--strength', '0.75', '--scheduler', 'ddim', '--seed', '3022'], 'inpaint.ddim_strength075.randn.1'],
      ['inpaint.legacy4ch_ddim', ['inpaint', '--model', MODEL, '--init-image', INIT, '--mask', MASK, '--height', '32', '--width', '32', '--scheduler', 'ddim', '--seed', '3024', '--init-latents', latentsFile('inpaint.legacy4ch_ddim.initial_latents')], 'inpaint.legacy4ch_ddim.initial_latents'],
    ];
    const results = await Promise.all(cases.map(([key, args]) => cli([...args, ...common, '--save-latents', path.join(tmp, `${key}.saved.safetensors`), '--out', path.join(tmp, `torch-${key}`)])));
    cases.forEach(([key, , noiseKey], i) => {
      expect(results[i].code, `${key}: ${results[i].stderr}`).toBe(0);
      expect(pngDiff(path.join(tmp, `torch-${key}`, '0000.png'), `${key}.image`), key).toBeLessThanOrEqual(1);
      const saved = readSafetensors(path.join(tmp, `${key}.saved.safetensors`)).get('latents')!;
      const want = refTensor(noiseKey).dataSync();
      expect(saved.shape, key).toEqual([1, 4, 16, 16]);
      expect(Math.max(...saved.data.map((v, j) => Math.abs(v - want[j]))), key).toBe(0);
    });
  }, 300_000);
});

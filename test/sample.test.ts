/**
 * `sdlab sample` on a tiny run directory of random-weight models (helpers/random-run.ts), and
 * `sdlab txt2img` on the sd1_tiny fixture: files written, samples.json's exact format and
 * digits, PNG pixels equal to the pipeline's images for (seed, index), the --animate GIF; the
 * run's own sampling settings (sampling_config.json: used where no flag is given, flags win,
 * reported with where each came from, recorded in samples.json); digits written at the data's own
 * size from vae/canvas.json (or the padded canvas); old runs without either file (defaults and
 * notes); and bad input (missing run components, --steps 0, unknown scheduler, a bad
 * sampling_config.json, a single file without a tokenizer) exiting with code 2 and one line
 * (through main() in this process; one successful `sample` goes through the real launcher in a
 * child process).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { PNG } from 'pngjs';
import { GifReader } from 'omggif';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { registerNativeBackend } from '../src/backend/native.ts';
import { writeSampleSheet, samplePrompts, type SampleOptions } from '../src/sample/sheet.ts';
import { digitFromPrompt, parseDigitList, loadRunPipeline, latentTile, describeSampling } from '../src/sample/index.ts';
import { gridLayout } from '../src/viz/index.ts';
import { main } from '../src/cli.ts';
import { makeRandomRun } from './helpers/random-run.ts';

const execFileP = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '..');
const FIXTURE = path.resolve(ROOT, '../shared/fixtures/sd1_tiny');
let tmp: string;
let runDir: string;

const base = (out: string): SampleOptions => ({ run: runDir, n: 2, steps: 3, scheduler: 'ddim', guidance: 3, seed: 1, out, batch: 64, progress: null });

beforeAll(async () => {
  await tf.setBackend(registerNativeBackend() ? 'native' : 'cpu');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-sample-'));
  runDir = path.join(tmp, 'run');
  makeRandomRun(runDir);
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('prompts', () => {
  it('digitFromPrompt finds exactly one digit, as word or numeral', () => {
    expect(digitFromPrompt('a handwritten 7')).toBe(7);
    expect(digitFromPrompt('A thick, slanted SEVEN')).toBe(7);
    expect(digitFromPrompt('a 7, a seven')).toBe(7);
    expect(digitFromPrompt('zero')).toBe(0);
    expect(digitFromPrompt('a 3 or a five')).toBeNull();
    expect(digitFromPrompt('a handwritten digit')).toBeNull();
    expect(digitFromPrompt('')).toBeNull();
    expect(digitFromPrompt('the number 17')).toBeNull();
    expect(digitFromPrompt('someone')).toBeNull(); // "one" inside a word is not a digit
  });

  it('parseDigitList and the default prompt list', () => {
    expect(parseDigitList('0-9')).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(parseDigitList('1,4-6')).toEqual([1, 4, 5, 6]);
    expect(() => parseDigitList('5-2')).toThrow();
    expect(() => parseDigitList('10')).toThrow();
    expect(samplePrompts({ digits: [3, 7] })).toEqual(['a handwritten three', 'a handwritten seven']);
    expect(samplePrompts({ prompt: ['x'], digits: [1] })).toEqual(['x', 'a handwritten one']);
    expect(samplePrompts({})).toHaveLength(10);
  });

  it('latentTile tiles 4 channels 2×2, normalised to [0, 1], resized to the image size', () => {
    // 2×2 latent with 4 channels: channel c holds c everywhere → quadrants 0, 1/3, 2/3, 1.
    const data = new Float32Array(16).map((_, i) => i % 4);
    const t = latentTile(data, 2, 2, 4, 8, 8);
    expect([t.height, t.width]).toEqual([8, 8]);
    const at = (y: number, x: number) => t.data[y * 8 + x];
    expect([at(0, 0), at(0, 7), at(7, 0), at(7, 7)].map((v) => +v.toFixed(4))).toEqual([0, 0.3333, 0.6667, 1]);
  });
});

describe('sdlab sample (in process)', () => {
  it('writes one PNG per image, the grid and samples.json with the right digits', async () => {
    const out = path.join(tmp, 'sheet');
    const res = await writeSampleSheet({ ...base(out), prompt: ['a zorblax 7', '', 'a 3 or a five'], digits: [4], batch: 3 });
    const n = 4 * 2;
    expect(res.notes).toEqual([]);
    expect(fs.readdirSync(out).sort()).toEqual([...Array.from({ length: n }, (_, i) => `000${i}.png`), 'grid.png', 'samples.json']);
    const json = JSON.parse(fs.readFileSync(path.join(out, 'samples.json'), 'utf8'));
    const how = { scheduler: 'ddim', steps: 3, guidance: 3, eta: 0, guidance_interval: null };
    expect(json).toEqual([
      { file: '0000.png', prompt: 'a zorblax 7', digit: 7, seed: 1, index: 0, ...how },
      { file: '0001.png', prompt: 'a zorblax 7', digit: 7, seed: 1, index: 1, ...how },
      { file: '0002.png', prompt: '', digit: null, seed: 1, index: 2, ...how },
      { file: '0003.png', prompt: '', digit: null, seed: 1, index: 3, ...how },
      { file: '0004.png', prompt: 'a 3 or a five', digit: null, seed: 1, index: 4, ...how },
      { file: '0005.png', prompt: 'a 3 or a five', digit: null, seed: 1, index: 5, ...how },
      { file: '0006.png', prompt: 'a handwritten four', digit: 4, seed: 1, index: 6, ...how },
      { file: '0007.png', prompt: 'a handwritten four', digit: 4, seed: 1, index: 7, ...how },
    ]);
    expect(Object.keys(json[0])).toEqual(['file', 'prompt', 'digit', 'seed', 'index', 'scheduler', 'steps', 'guidance', 'eta', 'guidance_interval']);

    // Each PNG holds the pipeline's image for (seed, index): recompute image 5 on its own.
    const { pipeline } = loadRunPipeline(runDir, { scheduler: 'ddim' });
    const one = pipeline.call({ prompt: 'a 3 or a five', numInferenceSteps: 3, guidanceScale: 3, seed: 1, firstIndex: 5 });
    const want = one.images.dataSync();
    tf.dispose([one.images, one.latents, one.promptEmbeds]);
    pipeline.dispose();
    const png = PNG.sync.read(fs.readFileSync(path.join(out, '0005.png')));
    expect([png.width, png.height]).toEqual([16, 16]);
    let worst = 0;
    for (let p = 0; p < 256; p++) worst = Math.max(worst, Math.abs(png.data[p * 4] - Math.round(want[p] * 255)));
    expect(worst).toBeLessThanOrEqual(1); // batch-of-3 vs batch-of-1 rounding
    const other = PNG.sync.read(fs.readFileSync(path.join(out, '0004.png')));
    expect(Buffer.compare(other.data, png.data)).not.toBe(0);

    // The grid: one row per prompt, --n columns, at scale 2.
    const grid = PNG.sync.read(fs.readFileSync(path.join(out, 'grid.png')));
    const L = gridLayout(n, 16, 16, { rows: 4, cols: 2, scale: 2, rowLabels: ['7', '""', 'a 3 or a..', '4'] });
    expect([grid.width, grid.height]).toEqual([L.width, L.height]);
  });

  it('--animate writes a GIF with one frame per step: x_t beside the decoded x0, one row per prompt', async () => {
    const out = path.join(tmp, 'anim');
    const res = await writeSampleSheet({ ...base(out), prompt: ['a handwritten 2', 'a handwritten 5'], n: 3, steps: 4, animate: true });
    expect(res.files.gif).toBe(path.join(out, 'animation.gif'));
    const gif = new GifReader(fs.readFileSync(res.files.gif!));
    expect(gif.numFrames()).toBe(4);
    // Rows: the first image of each prompt (images 0 and 3).
    const L = gridLayout(4, 16, 16, { rows: 2, cols: 2, scale: 2, colLabels: ['x_t', 'x0'], rowLabels: ['2', '5'], title: 'step' });
    expect([gif.width, gif.height]).toEqual([L.width, L.height]);
    // The last frame's x0 cells are the final images: DDIM's last x0 is its output.
    const rgba = new Uint8Array(gif.width * gif.height * 4);
    gif.decodeAndBlitFrameRGBA(3, rgba);
    for (const [row, file] of [[0, '0000.png'], [1, '0003.png']] as const) {
      const png = PNG.sync.read(fs.readFileSync(path.join(out, file)));
      const { x, y } = L.cell(row, 1);
      let worst = 0;
      for (let py = 0; py < 16; py++) {
        for (let px = 0; px < 16; px++) worst = Math.max(worst, Math.abs(rgba[((y + 2 * py) * gif.width + x + 2 * px) * 4] - png.data[(py * 16 + px) * 4]));
      }
      expect(worst, file).toBeLessThanOrEqual(2);
    }
  });

  it('same seed, same PNGs whatever the batch size', async () => {
    const a = await writeSampleSheet({ ...base(path.join(tmp, 'b64')), prompt: ['a handwritten 1'], n: 3, batch: 64 });
    const b = await writeSampleSheet({ ...base(path.join(tmp, 'b1')), prompt: ['a handwritten 1'], n: 3, batch: 1 });
    const c = await writeSampleSheet({ ...base(path.join(tmp, 's2')), prompt: ['a handwritten 1'], n: 3, seed: 2 });
    for (let k = 0; k < 3; k++) {
      const pa = PNG.sync.read(fs.readFileSync(a.files.images[k])).data;
      const pb = PNG.sync.read(fs.readFileSync(b.files.images[k])).data;
      const pc = PNG.sync.read(fs.readFileSync(c.files.images[k])).data;
      expect(Math.max(...Array.from(pa, (v, i) => Math.abs(v - pb[i])))).toBeLessThanOrEqual(1);
      expect(Buffer.compare(pa, pc)).not.toBe(0);
    }
  });

  it('a run from before sdlab recorded schedule, sampling settings and canvas: defaults, each said in a note', async () => {
    const bare = path.join(tmp, 'bare-run');
    for (const sub of ['vae', 'clip', 'unet']) fs.cpSync(path.join(runDir, sub), path.join(bare, sub), { recursive: true });
    fs.rmSync(path.join(bare, 'vae', 'canvas.json'));
    const res = await writeSampleSheet({ run: bare, prompt: ['7'], n: 1, seed: 1, out: path.join(tmp, 'bare-out'), batch: 64, progress: null, steps: 2 });
    const notes = res.notes.join(' ');
    expect(notes).toMatch(/scheduler_config\.json not found: assuming .*scaled_linear betas 0\.00085\.\.0\.012, 1000 steps/);
    expect(notes).toMatch(/sampling_config\.json not found .*using the defaults \(ddim, 50 steps, guidance 3, eta 0\)/);
    expect(notes).toMatch(/canvas\.json not found: assuming the data fills the VAE's 16×16 canvas/);
    expect(res.sampling.settings).toEqual({ scheduler: 'ddim', steps: 2, guidance: 3, eta: 0, guidanceInterval: null });
    expect(res.sampling.from).toEqual({ scheduler: 'default', steps: 'flag', guidance: 'default', eta: 'default', guidanceInterval: 'default' });
    expect(fs.existsSync(path.join(tmp, 'bare-out', '0000.png'))).toBe(true);
  });

  it("samples with the run's sampling_config.json where no setting is given, and records what it used", async () => {
    const own = path.join(tmp, 'own-run');
    fs.cpSync(runDir, own, { recursive: true });
    // The diffusers class name is accepted for the scheduler.
    fs.writeFileSync(path.join(own, 'sampling_config.json'), JSON.stringify({ scheduler: 'EulerDiscreteScheduler', num_inference_steps: 3, guidance_scale: 2, eta: 0, source: 'a test' }));
    const out = path.join(tmp, 'own-out');
    const res = await writeSampleSheet({ run: own, prompt: ['a handwritten 5'], n: 2, seed: 1, out, batch: 64, progress: null });
    expect(res.notes).toEqual([]);
    // A file written before guidance_interval existed means every step.
    expect(res.sampling.settings).toEqual({ scheduler: 'euler', steps: 3, guidance: 2, eta: 0, guidanceInterval: null });
    expect(res.sampling.from).toEqual({ scheduler: 'run', steps: 'run', guidance: 'run', eta: 'run', guidanceInterval: 'run' });
    expect(describeSampling(res.sampling)).toBe(`euler, 3 steps, guidance 2, eta 0 (all from ${path.join(own, 'sampling_config.json')})`);
    expect(res.records[1]).toMatchObject({ scheduler: 'euler', steps: 3, guidance: 2, eta: 0, guidance_interval: null });
    // Independent: the pipeline called with those settings by hand draws the same image 1.
    const { pipeline } = loadRunPipeline(runDir, { scheduler: 'euler' });
    const one = pipeline.call({ prompt: 'a handwritten 5', numInferenceSteps: 3, guidanceScale: 2, seed: 1, firstIndex: 1 });
    const want = one.images.dataSync();
    tf.dispose([one.images, one.latents, one.promptEmbeds]);
    pipeline.dispose();
    const png = PNG.sync.read(fs.readFileSync(path.join(out, '0001.png')));
    let worst = 0;
    for (let p = 0; p < 256; p++) worst = Math.max(worst, Math.abs(png.data[p * 4] - Math.round(want[p] * 255)));
    expect(worst).toBeLessThanOrEqual(1);

    // A flag wins over the file, for that setting only.
    const res2 = await writeSampleSheet({ run: own, prompt: ['a handwritten 5'], n: 1, seed: 1, out: path.join(tmp, 'own-out2'), batch: 64, progress: null, guidance: 4 });
    expect(res2.sampling.settings).toEqual({ scheduler: 'euler', steps: 3, guidance: 4, eta: 0, guidanceInterval: null });
    expect(describeSampling(res2.sampling)).toMatch(/^euler, 3 steps, guidance 4, eta 0 \(guidance from --guidance; scheduler, steps, eta, guidance interval from .*sampling_config\.json\)$/);

    // A guidance interval in the file is used, said, and recorded; the flag "all" turns it off.
    fs.writeFileSync(path.join(own, 'sampling_config.json'), JSON.stringify({ scheduler: 'ddim', num_inference_steps: 4, guidance_scale: 2, eta: 0, guidance_interval: [200, 600] }));
    const res3 = await writeSampleSheet({ run: own, prompt: ['a handwritten 5'], n: 1, seed: 1, out: path.join(tmp, 'own-out3'), batch: 64, progress: null });
    expect(describeSampling(res3.sampling)).toBe(`ddim, 4 steps, guidance 2, guidance at t in [200, 600], eta 0 (all from ${path.join(own, 'sampling_config.json')})`);
    expect(res3.records[0].guidance_interval).toEqual([200, 600]);
    const res4 = await writeSampleSheet({ run: own, prompt: ['a handwritten 5'], n: 1, seed: 1, out: path.join(tmp, 'own-out4'), batch: 64, progress: null, guidanceInterval: null });
    expect(res4.sampling.settings.guidanceInterval).toBeNull();
    expect(res4.sampling.from.guidanceInterval).toBe('flag');
    // Independent: the interval run is the pipeline's with that interval, not the plain one.
    const { pipeline: p2 } = loadRunPipeline(own, { scheduler: 'ddim' });
    const pixels = (iv: [number, number] | null) => {
      const o = p2.call({ prompt: 'a handwritten 5', numInferenceSteps: 4, guidanceScale: 2, guidanceInterval: iv, seed: 1, firstIndex: 0 });
      const d = o.images.dataSync().slice();
      tf.dispose([o.images, o.latents, o.promptEmbeds]);
      return d;
    };
    const [withIv, plain] = [pixels([200, 600]), pixels(null)];
    p2.dispose();
    const png3 = PNG.sync.read(fs.readFileSync(path.join(tmp, 'own-out3', '0000.png')));
    let w3 = 0;
    let wPlain = 0;
    for (let p = 0; p < 256; p++) {
      w3 = Math.max(w3, Math.abs(png3.data[p * 4] - Math.round(withIv[p] * 255)));
      wPlain = Math.max(wPlain, Math.abs(png3.data[p * 4] - Math.round(plain[p] * 255)));
    }
    expect(w3).toBeLessThanOrEqual(1);
    expect(wPlain).toBeGreaterThan(1);
  });

  it("writes digits at the data's own size from vae/canvas.json; canvas 'padded' gives the VAE's canvas", async () => {
    const framed = path.join(tmp, 'framed-run');
    fs.cpSync(runDir, framed, { recursive: true });
    // 12×12 data on the 16×16 canvas, off centre, so a centred crop would be caught.
    fs.writeFileSync(path.join(framed, 'vae', 'canvas.json'), JSON.stringify({ native_height: 12, native_width: 12, sample_size: 16, pad_top: 1, pad_left: 3 }));
    const nat = await writeSampleSheet({ ...base(path.join(tmp, 'framed-native')), run: framed, prompt: ['a handwritten 2'], n: 2 });
    const pad = await writeSampleSheet({ ...base(path.join(tmp, 'framed-padded')), run: framed, prompt: ['a handwritten 2'], n: 2, canvas: 'padded' });
    expect([nat.width, nat.height, pad.width, pad.height]).toEqual([12, 12, 16, 16]);
    for (let k = 0; k < 2; k++) {
      const a = PNG.sync.read(fs.readFileSync(nat.files.images[k]));
      const b = PNG.sync.read(fs.readFileSync(pad.files.images[k]));
      expect([a.width, a.height, b.width, b.height]).toEqual([12, 12, 16, 16]);
      for (let y = 0; y < 12; y++) for (let x = 0; x < 12; x++) expect(a.data[4 * (y * 12 + x)]).toBe(b.data[4 * ((y + 1) * 16 + x + 3)]);
    }
    const grid = PNG.sync.read(fs.readFileSync(nat.files.grid));
    const L = gridLayout(2, 12, 12, { scale: 2, title: 'a handwritten 2' });
    expect([grid.width, grid.height]).toEqual([L.width, L.height]);
  });
});

describe('sdlab sample / txt2img (CLI)', () => {
  /** stderr lines that are not commander's "(run with --help for usage)" hint or the cpu-backend warning. */
  const errorLines = (stderr: string) => stderr.split('\n').filter((l) => l.trim() && !l.startsWith('(run with --help') && !/warning: using the slow/.test(l));

  /** The real launcher in a child process. */
  const spawnCli = async (...args: string[]) => {
    try {
      const { stdout, stderr } = await execFileP(process.execPath, [path.join(ROOT, 'bin/sdlab.mjs'), ...args], { cwd: ROOT, env: { ...process.env, SDLAB_BACKEND: 'auto' } });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };

  /** The same main() in this process (fast): its exit code and what it wrote to stderr. */
  const inProcess = async (...args: string[]) => {
    const chunks: string[] = [];
    const spy = vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => {
      chunks.push(String(s));
      return true;
    });
    const saved = process.exitCode;
    process.exitCode = undefined;
    try {
      await main(['node', 'sdlab', ...args, '--backend', tf.getBackend()]);
      return { code: process.exitCode ?? 0, stderr: chunks.join('') };
    } finally {
      spy.mockRestore();
      process.exitCode = saved;
    }
  };

  it('sample (the real launcher, in a child process) and txt2img write their files', async () => {
    const out = path.join(tmp, 'cli');
    const t2i = path.join(tmp, 't2i');
    const [ok, txt] = await Promise.all([
      spawnCli('sample', '--run', runDir, '--digits', '0-1', '--n', '2', '--steps', '2', '--seed', '1', '--out', out),
      inProcess('txt2img', '--model', path.join(FIXTURE, 'model'), '--prompt', 'a red cube', '--negative-prompt', 'blurry', '--n', '2', '--batch', '2', '--steps', '2', '--scheduler', 'euler', '--height', '16', '--width', '16', '--out', t2i),
    ]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toContain(`sampling: ddim, 2 steps, guidance 3, eta 0 (steps from --steps; scheduler, guidance, eta, guidance interval from ${path.join(runDir, 'sampling_config.json')})`);
    expect(fs.readdirSync(out).sort()).toEqual(['0000.png', '0001.png', '0002.png', '0003.png', 'grid.png', 'samples.json']); // no temp files left
    expect(JSON.parse(fs.readFileSync(path.join(out, 'samples.json'), 'utf8')).map((r: { digit: number }) => r.digit)).toEqual([0, 0, 1, 1]);
    expect(ok.stdout).toContain(path.join(out, 'samples.json'));

    expect(txt.code, txt.stderr).toBe(0);
    expect(fs.readdirSync(t2i).sort()).toEqual(['0000.png', '0001.png', 'grid.png', 'txt2img.json']);
    const png = PNG.sync.read(fs.readFileSync(path.join(t2i, '0000.png')));
    expect([png.width, png.height]).toEqual([16, 16]);
    const settings = JSON.parse(fs.readFileSync(path.join(t2i, 'txt2img.json'), 'utf8'));
    expect(settings).toMatchObject({ scheduler: 'euler', steps: 2, guidance: 7.5, negative_prompt: 'blurry', height: 16, width: 16 });
  });

  it('bad input exits 2 with one line', async () => {
    const noUnet = path.join(tmp, 'no-unet');
    for (const sub of ['vae', 'clip']) fs.cpSync(path.join(runDir, sub), path.join(noUnet, sub), { recursive: true });
    const x = path.join(tmp, 'x');
    const badFile = (name: string, content: string) => {
      const dir = path.join(tmp, name);
      fs.cpSync(runDir, dir, { recursive: true });
      fs.writeFileSync(path.join(dir, 'sampling_config.json'), content);
      return dir;
    };
    const cases = [
      [['sample', '--run', badFile('bad-key', '{"scheduler": "ddim", "num_inference_steps": 5, "guidance_scale": 2, "eta": 0, "cfg": 2}'), '--out', x], /sampling_config\.json: unknown key "cfg"/],
      [['sample', '--run', badFile('bad-guidance', '{"scheduler": "ddim", "num_inference_steps": 5, "guidance_scale": -1, "eta": 0}'), '--out', x], /sampling_config\.json: "guidance_scale" must be a number in \[0, 100\], got -1/],
      [['sample', '--run', badFile('bad-scheduler', '{"scheduler": "heun", "num_inference_steps": 5, "guidance_scale": 2, "eta": 0}'), '--out', x], /sampling_config\.json: "scheduler" must be one of ddpm, ddim.*got "heun"/],
      [['sample', '--run', badFile('bad-interval', '{"scheduler": "ddim", "num_inference_steps": 5, "guidance_scale": 2, "eta": 0, "guidance_interval": [600, 100]}'), '--out', x], /sampling_config\.json: "guidance_interval" must be null or \[lo, hi\] train timesteps with 0 <= lo <= hi, got \[600,100\]/],
      [['sample', '--run', badFile('bad-json', '{"scheduler": "ddim",'), '--out', x], /sampling_config\.json: not valid JSON/],
      [['sample', '--run', badFile('bad-missing', '{"scheduler": "ddim", "guidance_scale": 2, "eta": 0}'), '--out', x], /sampling_config\.json: missing "num_inference_steps"/],
      [['sample', '--run', runDir, '--canvas', 'square', '--out', x], /--canvas .*expected one of native, padded, got "square"/],
      [['sample', '--run', noUnet, '--out', x], /unet.*not found.*npx sdlab train unet --run /],
      [['sample', '--run', path.join(tmp, 'nothing'), '--out', x], /no such run directory.*npx sdlab train vae/],
      [['sample', '--run', runDir, '--steps', '0', '--out', x], /--steps .*expected an integer in \[1, 10000\], got 0/],
      [['sample', '--run', runDir, '--steps', '5000', '--out', x], /steps must be an integer in \[1, 1000\]/],
      [['sample', '--run', runDir, '--scheduler', 'heun', '--out', x], /--scheduler .*got "heun"/],
      [['txt2img', '--model', path.join(FIXTURE, 'ldm/sd1_tiny.safetensors'), '--prompt', 'x', '--out', x], /--tokenizer DIR/],
      [['txt2img', '--model', path.join(tmp, 'none'), '--prompt', 'x', '--out', x], /--model .*no such file or directory/],
    ] as const;
    for (const [args, pattern] of cases) {
      const r = await inProcess(...args);
      expect(r.code, r.stderr).toBe(2);
      const lines = errorLines(r.stderr);
      expect(lines.length, r.stderr).toBe(1);
      expect(lines[0]).toMatch(pattern);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
    expect(fs.existsSync(x)).toBe(false); // nothing written
  });
});

/**
 * Issue 15, items 3, 5 and 6: small inputs that asked for unbounded memory or time, numbers that
 * were not finite and came out as black images with exit 0, and impossible noise schedules.
 *
 *   - CLI cases, each a child process: exit code 2, exactly one line on stderr (no stack trace),
 *     done in seconds, a bounded peak memory (VmHWM from /proc, where there is one) and nothing
 *     written. Before the fixes these allocated gigabytes, ran for minutes, or wrote black PNGs.
 *   - In process: the one schedule check (scheduleBetas), the config bounds, buildChecked and
 *     shapeOnly, a checkpoint that does not fit its config failing before any allocation, NaN
 *     weights refused at load, the PNG header checks, and the pipeline's requireFinite.
 *
 *   npx vitest run test/bounds.test.ts
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { ROOT } from './helpers/tiny-data.ts';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.ts';
import { DDPM_BETA_DEFAULTS, NoiseSchedule, createScheduler, scheduleBetas, type NoiseScheduleConfig } from '../src/schedule/index.ts';
import { UNET_PRESETS, UNet2DConditionModel, mnistUnetConfig, planUnet } from '../src/unet/index.ts';
import { AutoencoderKL, VAE_PRESETS, validateVaeConfig } from '../src/autoencoder/index.ts';
import { TEXT_ENCODER_PRESETS, validateTextEncoderConfig } from '../src/clip/text_encoder.ts';
import { IMAGE_ENCODER_PRESETS, validateImageEncoderConfig } from '../src/clip/image_encoder.ts';
import { DigitClassifier } from '../src/eval/classifier.ts';
import { Linear, buildChecked, manualSeed, shapeOnly } from '../src/nn/index.ts';
import { LdmCheckpoint } from '../src/sample/load_single_file.ts';
import { loadDiffusersPipeline } from '../src/sample/load.ts';
import { readPng, readPngSize } from '../src/io/png.ts';
import { MAX_LAYERS_PER_BLOCK, MAX_LATENT_PIXELS, MAX_MODEL_PARAMS, MAX_TRAIN_TIMESTEPS } from '../src/util/limits.ts';

const FIXTURE = path.resolve(import.meta.dirname, '../../shared/fixtures/sd1_tiny');
const MODEL = path.join(FIXTURE, 'model');
let tmp: string;

beforeAll(async () => {
  await tf.setBackend('cpu');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-bounds-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------
// helpers

interface Outcome {
  code: number | null;
  stdout: string;
  stderr: string;
  seconds: number;
  /** CPU seconds the process used (user + system), or null without /proc: unlike wall time, not stretched by a busy machine. */
  cpuSeconds: number | null;
  /** Peak resident memory in MB (VmHWM), or null without /proc. */
  peakMb: number | null;
}

/** Clock ticks per second of /proc/<pid>/stat (USER_HZ: 100 on Linux). */
const TICKS = 100;

/**
 * Runs `sdlab <args>` as a child process, watching its peak memory and CPU time. A child past
 * 1.5 GB, 20 CPU seconds or 120 s is killed (a regression fails here rather than taking the
 * machine's memory or the test's time).
 */
function run(args: string[]): Promise<Outcome> {
  const started = Date.now();
  const child = spawn(process.execPath, ['bin/sdlab.mjs', ...args], { cwd: ROOT, env: { ...process.env, CI: '1' } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  let peakMb: number | null = null;
  let cpuSeconds: number | null = null;
  const watch = setInterval(() => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) peakMb = Math.max(peakMb ?? 0, Number(m[1]) / 1024);
      const stat = fs.readFileSync(`/proc/${child.pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // from field 3 (state) on
      cpuSeconds = (Number(fields[11]) + Number(fields[12])) / TICKS; // utime + stime
      if ((peakMb ?? 0) > 1536 || cpuSeconds > 20) child.kill('SIGKILL');
    } catch {
      // gone already, or no /proc
    }
  }, 20);
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  return new Promise((resolve) => {
    child.on('close', (code) => {
      clearInterval(watch);
      clearTimeout(timer);
      resolve({ code, stdout, stderr, seconds: (Date.now() - started) / 1000, cpuSeconds, peakMb });
    });
  });
}

/** sdlab's own stderr lines (not tfjs's banner). */
function ownLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.trim() !== '' && !/tfjs|TensorFlow|=====|node backend/.test(l));
}

/**
 * Exit code 2, one `sdlab: error:` line matching `pattern`, no stack trace; quick (starting the
 * CLI takes ~3 CPU seconds) and small (an idle CLI peaks near 250 MB).
 */
function expectRefused(o: Outcome, pattern: RegExp): void {
  const lines = ownLines(o.stderr);
  expect(lines, o.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^sdlab: error: /);
  expect(lines[0]).toMatch(pattern);
  expect(o.stderr).not.toMatch(/\n\s+at /);
  expect(o.code).toBe(2);
  if (o.cpuSeconds !== null) expect(o.cpuSeconds).toBeLessThan(10);
  if (o.peakMb !== null) expect(o.peakMb).toBeLessThan(1024);
}

/** Nothing but (at most) an empty directory at `dir`. */
function expectNothingWritten(dir: string): void {
  expect(fs.existsSync(dir) ? fs.readdirSync(dir) : []).toEqual([]);
}

/** A copy of the tiny SD model with `edit` applied to one of its JSON files. */
function modelWith(name: string, file: string, edit: (cfg: Record<string, unknown>) => void): string {
  const dir = path.join(tmp, name);
  fs.cpSync(MODEL, dir, { recursive: true });
  const f = path.join(dir, file);
  const cfg = JSON.parse(fs.readFileSync(f, 'utf8'));
  edit(cfg);
  fs.writeFileSync(f, JSON.stringify(cfg));
  return dir;
}

/** A zlib stream that inflates to `n` zero bytes, made without holding them (1 MiB deflated once, repeated). */
function zerosZlib(n: number): Buffer {
  const CHUNK = 1 << 20;
  // A full flush ends each copy byte-aligned with no back-references: copies concatenate.
  const full = zlib.deflateRawSync(Buffer.alloc(CHUNK), { finishFlush: zlib.constants.Z_FULL_FLUSH });
  const parts = [Buffer.from([0x78, 0x01])];
  let left = n;
  for (; left > CHUNK; left -= CHUNK) parts.push(full);
  parts.push(zlib.deflateRawSync(Buffer.alloc(left)));
  const adler = Buffer.alloc(4);
  adler.writeUInt32BE((n % 65521) * 65536 + 1); // Adler-32 of n zeros: a = 1, b = n
  parts.push(adler);
  return Buffer.concat(parts);
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function pngChunk(type: string, data: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  let crc = 0xffffffff;
  for (const b of body) crc = CRC_TABLE[(crc ^ b) & 0xff] ^ (crc >>> 8);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(data.length);
  const tail = Buffer.alloc(4);
  tail.writeUInt32BE((crc ^ 0xffffffff) >>> 0);
  return Buffer.concat([head, body, tail]);
}

/** A valid 8-bit grayscale PNG, all black; `idat` overrides the compressed pixel data. */
function blackPng(width: number, height: number, opts: { interlaced?: boolean; idat?: Buffer } = {}): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[12] = opts.interlaced ? 1 : 0;
  const idat = opts.idat ?? zerosZlib(height * (width + 1)); // a filter byte per row
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), pngChunk('IHDR', ihdr), pngChunk('IDAT', idat), pngChunk('IEND', Buffer.alloc(0))]);
}

// ---------------------------------------------------------------------------------------------
// CLI

describe('the CLI refuses in one line, fast and small', { timeout: 300_000 }, () => {
  const txt2img = (model: string, out: string) => ['txt2img', '--model', model, '--prompt', 'a cat', '--steps', '2', '--out', out, '--backend', 'cpu'];

  it('a UNet config with layers_per_block 1e9 (was: 3.7 GB, then bad_alloc)', async () => {
    const model = modelWith('layers', 'unet/config.json', (c) => (c.layers_per_block = 1_000_000_000));
    const out = path.join(tmp, 'layers-out');
    expectRefused(await run(txt2img(model, out)), /unet\/config\.json: layers_per_block 1000000000 is over sdlab's limit of 16\.$/);
    expectNothingWritten(out);
  });

  it('a UNet config with block_out_channels [33554432] (was: RangeError)', async () => {
    const model = modelWith('channels', 'unet/config.json', (c) => Object.assign(c, { block_out_channels: [33554432], down_block_types: ['DownBlock2D'], up_block_types: ['UpBlock2D'] }));
    const out = path.join(tmp, 'channels-out');
    expectRefused(await run(txt2img(model, out)), /unet\/config\.json: the model would have \S+ parameters, over sdlab's limit of 2e\+9 \(8 GB in float32\)\.$/);
    expectNothingWritten(out);
  });

  it('a scheduler config with num_train_timesteps 1e8 (was: V8 out of memory)', async () => {
    const model = modelWith('timesteps', 'scheduler/scheduler_config.json', (c) => (c.num_train_timesteps = 100_000_000));
    const out = path.join(tmp, 'timesteps-out');
    expectRefused(await run(txt2img(model, out)), /scheduler_config\.json: .*num_train_timesteps: expected an integer in \[2, 100000\] \(sdlab's limit\), got 100000000\.$/);
    expectNothingWritten(out);
  });

  it('a scheduler config with beta_end 1.5 (was: a black PNG and exit 0)', async () => {
    const model = modelWith('betas', 'scheduler/scheduler_config.json', (c) => (c.beta_end = 1.5));
    const out = path.join(tmp, 'betas-out');
    expectRefused(await run(txt2img(model, out)), /scheduler_config\.json: .*beta_start 0\.00085 and beta_end 1\.5: expected 0 < beta_start <= beta_end < 1\.$/);
    expectNothingWritten(out);
  });

  it('UNet weights holding a NaN (was: a black PNG and exit 0)', async () => {
    const model = path.join(tmp, 'nan-unet');
    fs.cpSync(MODEL, model, { recursive: true });
    const file = path.join(model, 'unet/diffusion_pytorch_model.safetensors');
    const tensors = readSafetensors(file);
    tensors.get('conv_out.weight')!.data[3] = NaN;
    writeSafetensors(file, tensors);
    const out = path.join(tmp, 'nan-unet-out');
    expectRefused(await run(txt2img(model, out)), /diffusion_pytorch_model\.safetensors: tensor "conv_out\.weight" holds non-finite values \(NaN at index 3\): the weights are broken\.$/);
    expectNothingWritten(out);
  });

  it('encode: a 1 MB PNG of 30000×30000 pixels and a 100000×1 one are refused from their header (was: 3.66 GB)', async () => {
    const big = path.join(tmp, 'big.png');
    fs.writeFileSync(big, blackPng(30000, 30000));
    expect(fs.statSync(big).size).toBeLessThan(2e6);
    const out = path.join(tmp, 'big-out');
    const args = (f: string) => ['encode', f, '--vae', path.join(MODEL, 'vae'), '--out', out, '--backend', 'cpu'];
    expectRefused(await run(args(big)), /big\.png: 30000×30000 pixels, over sdlab's limit of 4096 px a side and 16 Mpx\.$/);
    const long = path.join(tmp, 'long.png');
    fs.writeFileSync(long, blackPng(100000, 1));
    expectRefused(await run(args(long)), /long\.png: 100000×1 pixels, over sdlab's limit of 4096 px a side/);
    expectNothingWritten(out);
  });

  it('decode: 512×512 latents are refused from the header (was: minutes); NaN latents and an overflowing decoder too', async () => {
    const out = path.join(tmp, 'decode-out');
    const args = (f: string) => ['decode', f, '--vae', path.join(MODEL, 'vae'), '--out', out, '--backend', 'cpu'];
    const wide = path.join(tmp, 'wide.safetensors');
    writeSafetensors(wide, new Map([['latents', { shape: [1, 4, 512, 512], data: new Float32Array(4 * 512 * 512) }]]));
    expectRefused(await run(args(wide)), new RegExp(`wide\\.safetensors: latents of 512×512, over sdlab's limit of ${MAX_LATENT_PIXELS} latent pixels \\(128×128\\) per image\\.$`));
    const nan = path.join(tmp, 'nan.safetensors');
    writeSafetensors(nan, new Map([['latents', { shape: [1, 4, 8, 8], data: new Float32Array(256).fill(0.5).fill(NaN, 7, 8) }]]));
    expectRefused(await run(args(nan)), /nan\.safetensors: the latents hold NaN\/Inf values \(NaN at index 7\)\.$/);
    // Finite latents so large that the decoder's numbers overflow: no black PNG, one line.
    const huge = path.join(tmp, 'huge.safetensors');
    writeSafetensors(huge, new Map([['latents', { shape: [1, 4, 8, 8], data: new Float32Array(256).fill(3e38) }]]));
    expectRefused(await run(args(huge)), /huge\.safetensors: the decoded images hold NaN\/Inf values: the latents are finite, so the VAE decoder overflowed/);
    expectNothingWritten(out);
  });

  it('train unet --beta-start 0.5 --beta-end 0.1 fails before any work, like `noise` (one check)', async () => {
    const runDir = path.join(tmp, 'betas-run');
    const msg = /--beta-start\/--beta-end: beta_start 0\.5 and beta_end 0\.1: expected 0 < beta_start <= beta_end < 1\.$/;
    expectRefused(await run(['train', 'unet', '--run', runDir, '--beta-start', '0.5', '--beta-end', '0.1', '--backend', 'cpu']), msg);
    expect(fs.existsSync(runDir)).toBe(false);
    const out = path.join(tmp, 'noise-out');
    expectRefused(await run(['noise', '--beta-start', '0.5', '--beta-end', '0.1', '--out', out, '--backend', 'cpu']), msg);
    expectNothingWritten(out);
  });
});

// ---------------------------------------------------------------------------------------------
// The schedule check

describe('scheduleBetas: the one check of a noise schedule', () => {
  const cfg = (over: Partial<NoiseScheduleConfig>): NoiseScheduleConfig => ({ ...DDPM_BETA_DEFAULTS, ...over });
  const refuse = (over: Partial<NoiseScheduleConfig>, pattern: RegExp) => expect(() => scheduleBetas(cfg(over), 'here')).toThrow(pattern);

  it("accepts the schedules real models use, and returns the schedule's betas", () => {
    expect(Array.from(scheduleBetas(cfg({})))).toEqual(Array.from(new NoiseSchedule(cfg({})).betas));
    for (const beta_schedule of ['linear', 'scaled_linear', 'squaredcos_cap_v2'] as const) {
      expect(scheduleBetas(cfg({ beta_schedule, beta_start: 0.00085, beta_end: 0.012 }))).toHaveLength(1000);
    }
    // ᾱ_T = 0 is what rescale_betas_zero_snr asks for, not an error.
    const zero = scheduleBetas(cfg({ beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012, rescale_betas_zero_snr: true }));
    expect(zero[999]).toBe(1);
    expect(scheduleBetas(cfg({ beta_start: 0.01, beta_end: 0.01 }))[500]).toBeCloseTo(0.01, 8); // constant betas
    expect(scheduleBetas(cfg({ num_train_timesteps: MAX_TRAIN_TIMESTEPS, beta_start: 1e-5, beta_end: 1e-4 }))).toHaveLength(MAX_TRAIN_TIMESTEPS);
  });

  it('refuses what no schedule can be, in one line naming the source', () => {
    refuse({ num_train_timesteps: MAX_TRAIN_TIMESTEPS + 1 }, /^here: num_train_timesteps: expected an integer in \[2, 100000\] \(sdlab's limit\), got 100001\.$/);
    refuse({ num_train_timesteps: 1 }, /num_train_timesteps: expected an integer in \[2, 100000\]/);
    refuse({ num_train_timesteps: 10.5 }, /got 10\.5/);
    refuse({ beta_start: 0.5, beta_end: 0.1 }, /^here: beta_start 0\.5 and beta_end 0\.1: expected 0 < beta_start <= beta_end < 1\.$/);
    refuse({ beta_start: 0, beta_end: 0.02 }, /beta_start 0 and/);
    refuse({ beta_start: 0.0001, beta_end: 1 }, /beta_end 1:/);
    refuse({ beta_schedule: 'scaled_linear', beta_start: -0.1, beta_end: 0.012 }, /beta_start -0\.1/);
    refuse({ beta_start: NaN }, /beta_start NaN/);
    refuse({ num_train_timesteps: 3, trained_betas: [0.1, 0.2] }, /trained_betas: expected 3 values/);
    refuse({ num_train_timesteps: 3, trained_betas: [0.1, 1.5, 0.2] }, /^here: trained_betas\[1\]: expected 0 < beta < 1, got 1\.5\.$/);
    refuse({ num_train_timesteps: 3, trained_betas: [0.1, 0.2, 0] }, /trained_betas\[2\]/);
    // 1 - 0.99999999 rounds to 0 in float32: ᾱ would be 0 from there on (a division by zero when sampling).
    refuse({ num_train_timesteps: 3, trained_betas: [0.1, 0.99999999, 0.2] }, /ᾱ_t \(the signal left\) reaches 0 at timestep 1 of 3/);
    // DDPM's betas over 100× the steps remove all signal (ᾱ underflows float32) long before T.
    refuse({ num_train_timesteps: MAX_TRAIN_TIMESTEPS }, /reaches 0 at timestep \d+ of 100000: .*use smaller betas or fewer num_train_timesteps\.$/);
  });

  it('every scheduler is built through it (a scheduler config with bad betas cannot be built)', () => {
    for (const name of ['ddpm', 'ddim', 'pndm', 'euler', 'euler_a', 'dpm++2m']) {
      expect(() => createScheduler(name, { beta_end: 1.5 }), name).toThrow(/scheduler config: beta_start 0\.0001 and beta_end 1\.5/);
      expect(() => createScheduler(name, { trained_betas: [0.5, 2] , num_train_timesteps: 2 }), name).toThrow(/trained_betas\[1\]/);
    }
    expect(createScheduler('ddim', {}).numTrainTimesteps).toBe(1000);
  });
});

// ---------------------------------------------------------------------------------------------
// Config bounds and the shape-only build

describe('config bounds', () => {
  it('UNet: levels, layers per block, transformer layers, sample_size', () => {
    const base = mnistUnetConfig();
    expect(() => planUnet({ ...base, layers_per_block: MAX_LAYERS_PER_BLOCK })).not.toThrow();
    expect(() => planUnet({ ...base, layers_per_block: MAX_LAYERS_PER_BLOCK + 1 }, 'u')).toThrow(/^u: layers_per_block 17 is over sdlab's limit of 16\.$/);
    expect(() => planUnet({ ...base, layers_per_block: [1, 1e9] }, 'u')).toThrow(/layers_per_block 1000000000 is over/);
    expect(() => planUnet({ ...base, transformer_layers_per_block: 17 }, 'u')).toThrow(/transformer_layers_per_block 17 is over sdlab's limit of 16/);
    const nine = { ...base, block_out_channels: Array(9).fill(32), down_block_types: Array(9).fill('DownBlock2D'), up_block_types: Array(9).fill('UpBlock2D'), attention_head_dim: 2 };
    expect(() => planUnet(nine, 'u')).toThrow(/block_out_channels lists 9 levels, over sdlab's limit of 8/);
    expect(() => planUnet({ ...base, sample_size: 4097 }, 'u')).toThrow(/sample_size 4097 is over sdlab's limit of 4096/);
    expect(() => planUnet(UNET_PRESETS.sd1)).not.toThrow();
  });

  it('VAE, text encoder, image encoder and classifier', () => {
    expect(() => validateVaeConfig({ ...VAE_PRESETS.sd1, layers_per_block: 17 }, 'v')).toThrow(/^v: layers_per_block 17 is over sdlab's limit of 16\.$/);
    expect(() => validateVaeConfig({ ...VAE_PRESETS.sd1, sample_size: 5000 }, 'v')).toThrow(/sample_size must be an integer in \[1, 4096\] \(sdlab's limit\), got 5000/);
    const nine = { ...VAE_PRESETS.mnist, block_out_channels: Array(9).fill(32), down_block_types: Array(9).fill('DownEncoderBlock2D'), up_block_types: Array(9).fill('UpDecoderBlock2D') };
    expect(() => validateVaeConfig(nine, 'v')).toThrow(/lists 9 levels, over sdlab's limit of 8/);
    expect(() => validateVaeConfig(VAE_PRESETS.sd1)).not.toThrow();
    expect(() => validateTextEncoderConfig({ ...TEXT_ENCODER_PRESETS.sd1, num_hidden_layers: 65 }, 't')).toThrow(/^t: num_hidden_layers 65 is over sdlab's limit of 64\.$/);
    expect(() => validateTextEncoderConfig({ ...TEXT_ENCODER_PRESETS.sd1, max_position_embeddings: 1025 }, 't')).toThrow(/max_position_embeddings 1025 is over sdlab's limit of 1024/);
    expect(() => validateTextEncoderConfig(TEXT_ENCODER_PRESETS.sd1)).not.toThrow();
    expect(() => validateImageEncoderConfig({ ...IMAGE_ENCODER_PRESETS.mnist, block_out_channels: Array(9).fill(8) }, 'i')).toThrow(/lists 9 levels, over sdlab's limit of 8/);
    expect(() => validateImageEncoderConfig({ ...IMAGE_ENCODER_PRESETS.mnist, sample_size: 4097 }, 'i')).toThrow(/sample_size 4097 is over sdlab's limit of 4096/);
    expect(() => new DigitClassifier({ layers_per_block: 1e9 })).toThrow(/layers_per_block 1000000000 is over sdlab's limit of 16/);
  });
});

describe('buildChecked and shapeOnly', () => {
  it('a shape-only build has the real names and shapes, allocates nothing and draws nothing', () => {
    const before = tf.memory().numTensors;
    const dry = shapeOnly(() => new AutoencoderKL(VAE_PRESETS.mnist));
    expect(tf.memory().numTensors).toBe(before);
    manualSeed(4);
    const real = new AutoencoderKL(VAE_PRESETS.mnist);
    expect(dry.namedParameters().map(([n, p]) => [n, p.layout, p.variable.shape])).toEqual(real.namedParameters().map(([n, p]) => [n, p.layout, p.variable.shape]));
    expect(dry.numParameters()).toBe(real.numParameters());
    // A shape-only build between the seed and the real build leaves the real weights as they were.
    manualSeed(4);
    const again = buildChecked(() => new AutoencoderKL(VAE_PRESETS.mnist), 'vae');
    for (const [[n, a], [, b]] of real.namedParameters().map((e, i) => [e, again.namedParameters()[i]] as const)) {
      expect(Array.from(b.variable.dataSync()), n).toEqual(Array.from(a.variable.dataSync()));
    }
    real.dispose();
    again.dispose();
  });

  it(`refuses a model over MAX_MODEL_PARAMS (${MAX_MODEL_PARAMS}) before allocating any of it`, () => {
    const before = tf.memory().numBytes;
    const huge = { ...mnistUnetConfig(), block_out_channels: [8192, 8192], attention_head_dim: 8, norm_num_groups: 32 };
    expect(() => buildChecked(() => new UNet2DConditionModel(huge), 'big.json')).toThrow(/^big\.json: the model would have \S+ parameters, over sdlab's limit of 2e\+9 \(8 GB in float32\)\.$/);
    expect(tf.memory().numBytes).toBe(before);
  });
});

describe('weights checked against their config before the model is built', () => {
  it('a diffusers folder whose header disagrees with config.json: one line, nothing allocated', () => {
    const dir = path.join(tmp, 'mismatch-unet');
    fs.cpSync(path.join(MODEL, 'unet'), dir, { recursive: true });
    const cfgFile = path.join(dir, 'config.json');
    // 0.3 G parameters (1.2 GB) the old loader allocated before it looked at the file.
    fs.writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfgFile, 'utf8')), block_out_channels: [1024, 2048] }));
    const before = tf.memory().numBytes;
    expect(() => UNet2DConditionModel.fromPretrained(dir)).toThrow(/diffusion_pytorch_model\.safetensors: weights do not fit the model — \d+ with wrong shape: conv_in\.bias \[32\] vs model \[1024\]/);
    expect(tf.memory().numBytes).toBe(before);
  });

  it('an LDM single file whose yaml disagrees with the weights: the same, before allocating', () => {
    const yaml = path.join(tmp, 'wide.yaml');
    fs.writeFileSync(yaml, fs.readFileSync(path.join(FIXTURE, 'ldm/sd1_tiny.yaml'), 'utf8').replace('model_channels: 32', 'model_channels: 1024'));
    const ckpt = LdmCheckpoint.open(path.join(FIXTURE, 'ldm/sd1_tiny.safetensors'), { yaml });
    const before = tf.memory().numBytes;
    expect(() => ckpt.loadUnet()).toThrow(/sd1_tiny\.safetensors \(unet\): weights do not fit the model — .*wrong shape/);
    expect(tf.memory().numBytes).toBe(before);
    expect(ckpt.loadVae().numParameters()).toBeGreaterThan(0); // the rest of the file still loads
  });

  it('NaN or Inf values are refused at load, naming the tensor', () => {
    const lin = new Linear(3, 2);
    const sd = lin.stateDict();
    sd.get('bias')!.data[1] = -Infinity;
    expect(() => lin.loadStateDict(sd, { source: 'w.safetensors' })).toThrow(/^w\.safetensors: tensor "bias" holds non-finite values \(-Infinity at index 1\): the weights are broken\.$/);
    lin.dispose();
  });
});

// ---------------------------------------------------------------------------------------------
// PNG

describe('reading PNGs within the limits', () => {
  const write = (name: string, bytes: Buffer) => {
    const f = path.join(tmp, name);
    fs.writeFileSync(f, bytes);
    return f;
  };

  it('reads a normal PNG, and tells its size from the header alone', () => {
    const f = write('ok.png', blackPng(28, 20));
    expect(readPngSize(f)).toMatchObject({ width: 28, height: 20, interlaced: false });
    const png = readPng(f);
    expect([png.width, png.height, png.data.length]).toEqual([28, 20, 28 * 20 * 4]);
    expect(png.data[3]).toBe(255); // opaque black
  });

  it('refuses sizes over the limits, non-PNGs and non-files without decoding', () => {
    expect(() => readPngSize(write('side.png', blackPng(4097, 1)))).toThrow(/side\.png: 4097×1 pixels, over sdlab's limit of 4096 px a side and 16 Mpx\.$/);
    expect(() => readPngSize(write('edge.png', blackPng(4096, 1)))).not.toThrow();
    expect(() => readPng(write('text.png', Buffer.from('not a png at all, just text that is long enough')))).toThrow(/text\.png: cannot read PNG \(no PNG signature and IHDR header: not a PNG image\)\.$/);
    expect(() => readPng(tmp)).toThrow(/: is a directory; expected a PNG image\.$/);
    expect(() => readPng(path.join(tmp, 'missing.png'))).toThrow(/missing\.png: cannot read PNG \(ENOENT\)\.$/);
    expect(() => readPng(write('cut.png', blackPng(8, 8).subarray(0, 40)))).toThrow(/cut\.png: cannot read PNG \(invalid: /);
  });

  it('an interlaced PNG whose data inflates far beyond its header (a zlib bomb) is refused before it expands', () => {
    const f = write('bomb.png', blackPng(16, 16, { interlaced: true, idat: zerosZlib(64 << 20) }));
    expect(fs.statSync(f).size).toBeLessThan(200_000);
    expect(() => readPng(f)).toThrow(/bomb\.png: the compressed image data inflates beyond the \d+ bytes its 16×16 header allows\.$/);
  });
});

// ---------------------------------------------------------------------------------------------
// Non-finite numbers in the pipeline

describe('requireFinite: the pipeline never hands on NaN/Inf as images', () => {
  it('names non-finite weights that did not come through a file, or else the sampler', () => {
    const pipe = loadDiffusersPipeline(MODEL);
    try {
      const call = (g = 7.5) => pipe.call({ prompt: 'a cat', numInferenceSteps: 2, guidanceScale: g, seed: 0 });
      const ok = call();
      tf.dispose([ok.images, ok.latents, ok.promptEmbeds]);
      const set = (name: string, v: number): (() => void) => {
        const p = new Map(pipe.unet.namedParameters()).get(name)!;
        const kept = p.variable.clone();
        p.variable.assign(tf.fill(p.variable.shape, v));
        return () => (p.variable.assign(kept), kept.dispose());
      };
      // Finite but enormous weights: the sampled numbers overflow although every weight is finite.
      let restore = set('conv_out.bias', 3e38);
      expect(() => call()).toThrow(/^pipeline: the sampled latents hold NaN\/Inf values: the weights are finite, so sampling diverged \(scheduler PNDMScheduler, guidance 7\.5\): try another scheduler or a lower guidance\.$/);
      restore();
      restore = set('down_blocks.0.resnets.0.conv1.weight', NaN);
      expect(() => call()).toThrow(/^pipeline: the sampled latents hold NaN\/Inf values: the UNet's weights are not finite \(down_blocks\.0\.resnets\.0\.conv1\.weight\)\.$/);
      restore();
      const again = call();
      tf.dispose([again.images, again.latents, again.promptEmbeds]);
      expect(() => pipe.decodeLatents(tf.fill([1, 8, 8, 4], 3e38) as tf.Tensor4D)).toThrow(/^pipeline: the decoded images hold NaN\/Inf values: the latents were finite, so the VAE decoder overflowed\.$/);
    } finally {
      pipe.dispose();
    }
  });
});

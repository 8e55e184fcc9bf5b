/**
 * `sdlab noise`: see the forward (noising) process on real digits.
 *
 *   npx sdlab noise                               # writes out/noise/{noise_strip.png, noise.gif, alphas_cumprod.png}
 *   npx sdlab noise --n 6 --timesteps 0,50,200,999 --seed 3 --out /tmp/noise
 *
 * Diffusion training never runs the T small noising steps one by one: with ᾱ_t the running
 * product of (1 - beta), it jumps straight to any t,
 *
 *   x_t = sqrt(ᾱ_t) · x0 + sqrt(1 - ᾱ_t) · ε,     ε ~ N(0, I),  x0 in [-1, 1].
 *
 * The strip shows x_t at the chosen timesteps, one row per beta schedule (linear,
 * scaled_linear, squaredcos_cap_v2) for each digit. Each digit keeps one ε for every schedule and
 * timestep, so what changes along a row is only ᾱ_t, and between rows only the schedule. The GIF
 * plays t from 0 to T-1; alphas_cumprod.png plots ᾱ_t itself. Pictures show x_t mapped from
 * [-1, 1] to [0, 1] and clipped.
 */
import path from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { selectBackend, BACKEND_HELP } from '../backend/index.ts';
import { check } from '../util/errors.ts';
import { checkOutputDir } from '../util/fs.ts';
import { int, intList, float } from '../util/options.ts';
import { Random } from '../util/random.ts';
import { loadDataset, imageAt, type Dataset } from '../data/index.ts';
import { BETA_SCHEDULES, NoiseSchedule, type BetaSchedule } from '../schedule/index.ts';
import { renderGrid, savePng, saveGif, renderLossCurve, gridLayout, type FloatImage, type GridLayout } from '../viz/index.ts';
import { toSigned, toUnit } from '../data/pixels.ts';

export const NUM_TRAIN_TIMESTEPS = 1000;
export const DEFAULT_TIMESTEPS = [0, 100, 250, 500, 750, 999];

export interface NoiseOptions {
  out: string;
  seed: number;
  /** Number of digits. */
  n: number;
  timesteps: number[];
  schedules: BetaSchedule[];
  betaStart: number;
  betaEnd: number;
  /** Frames in the GIF (t evenly from 0 to T-1). */
  frames: number;
  /** Pixel scale of the pictures. */
  scale: number;
  /** IDX directory; undefined = embedded MNIST. */
  data?: string;
}

export interface NoiseResult {
  files: { strip: string; gif: string; alphas: string };
  /** Dataset indices and labels of the digits shown. */
  indices: number[];
  labels: number[];
  height: number;
  width: number;
  /** ᾱ_t for t = 0..T-1, per schedule. */
  alphasCumprod: Record<string, Float64Array>;
  /** Clean digits in [-1, 1], n*H*W. */
  x0: Float32Array;
  /** The ε used for each digit, n*H*W. */
  noise: Float32Array;
  /** xt[schedule][k]: x_t at timesteps[k] for all n digits (n*H*W, unclipped). */
  xt: Record<string, Float32Array[]>;
  /** Where each cell of the strip is: row = digit * schedules.length + schedule, col = timestep index. */
  stripLayout: GridLayout;
  /** The timesteps of the GIF frames. */
  gifTimesteps: number[];
  /** Where each cell of a GIF frame is: row = schedule, col = digit. */
  gifLayout: GridLayout;
}

/** Picks n digits with the seeded generator, preferring different labels. */
export function pickDigits(ds: Dataset, n: number, rng: Random): number[] {
  const order = rng.permutation(ds.n);
  const picked: number[] = [];
  const seen = new Set<number>();
  for (const i of order) {
    if (picked.length >= n) break;
    if (!seen.has(ds.labels[i])) {
      seen.add(ds.labels[i]);
      picked.push(i);
    }
  }
  for (const i of order) {
    if (picked.length >= n) break;
    if (!picked.includes(i)) picked.push(i);
  }
  return picked;
}

const toDisplay = (x: Float32Array): Float32Array => x.map(toUnit); // clipping happens when drawn

function images(flat: Float32Array, n: number, h: number, w: number): FloatImage[] {
  return Array.from({ length: n }, (_, i) => ({ data: flat.subarray(i * h * w, (i + 1) * h * w), height: h, width: w }));
}

/** Computes the forward process for a few digits and writes the pictures. */
export async function runNoise(opts: NoiseOptions): Promise<NoiseResult> {
  check(Number.isInteger(opts.n) && opts.n >= 1, `--n: expected an integer >= 1, got ${opts.n}.`);
  check(opts.timesteps.length > 0, '--timesteps: expected at least one timestep, e.g. 0,100,250,500,750,999.');
  for (const t of opts.timesteps) {
    check(Number.isInteger(t) && t >= 0 && t < NUM_TRAIN_TIMESTEPS, `--timesteps: expected integers in [0, ${NUM_TRAIN_TIMESTEPS - 1}], got ${t}.`);
  }
  check(opts.schedules.length > 0, `--schedules: expected one or more of ${BETA_SCHEDULES.join(', ')}.`);
  check(Number.isInteger(opts.frames) && opts.frames >= 2, `--frames: expected an integer >= 2, got ${opts.frames}.`);
  checkOutputDir('--out', opts.out);
  // Building the schedules checks the betas (the one check every schedule goes through).
  const schedules = opts.schedules.map(
    (name) => [name, new NoiseSchedule({ num_train_timesteps: NUM_TRAIN_TIMESTEPS, beta_start: opts.betaStart, beta_end: opts.betaEnd, beta_schedule: name, trained_betas: null }, '--beta-start/--beta-end')] as const,
  );

  const ds = loadDataset({ data: opts.data, limit: 10_000 });
  const rng = new Random(opts.seed);
  const indices = pickDigits(ds, opts.n, rng);
  const n = indices.length;
  check(n === opts.n, `--n ${opts.n}: the dataset only has ${ds.n} images.`);
  const { height: H, width: W } = ds;
  const px = H * W;

  const x0 = new Float32Array(n * px);
  indices.forEach((idx, k) => x0.set(imageAt(ds, idx).map(toSigned), k * px));
  const noise = rng.normalArray(n * px);

  // x_t of every digit at one timestep (the schedule's forward process; the target is not drawn).
  const noisy = (s: NoiseSchedule, t: number): Float32Array => s.noisedSample(x0, noise, [t], 'epsilon').noisy;

  // The strip: for each digit, one row per schedule; one column per timestep.
  const xt: Record<string, Float32Array[]> = {};
  for (const [name, s] of schedules) xt[name] = opts.timesteps.map((t) => noisy(s, t));
  const cells: FloatImage[] = [];
  const rowLabels: string[] = [];
  for (let d = 0; d < n; d++) {
    for (const [name] of schedules) {
      rowLabels.push(`${name} ${ds.labels[indices[d]]}`);
      for (const x of xt[name]) cells.push({ data: toDisplay(x.subarray(d * px, (d + 1) * px)), height: H, width: W });
    }
  }
  const gridOpts = {
    rows: n * schedules.length,
    cols: opts.timesteps.length,
    scale: opts.scale,
    rowLabels,
    colLabels: opts.timesteps.map((t) => `t=${t}`),
    title: 'x_t = sqrt(a_t) x0 + sqrt(1-a_t) eps',
    groupRows: schedules.length,
  };
  const strip = path.join(opts.out, 'noise_strip.png');
  await savePng(strip, renderGrid(cells, gridOpts));
  const stripLayout = gridLayout(cells.length, H, W, gridOpts);

  // The GIF: t from 0 to T-1; rows = schedules, columns = digits.
  const gifTimesteps = Array.from({ length: opts.frames }, (_, k) => Math.round((k * (NUM_TRAIN_TIMESTEPS - 1)) / (opts.frames - 1)));
  const gifOpts = { rows: schedules.length, cols: n, scale: opts.scale, rowLabels: schedules.map(([name]) => name), title: 't=999' };
  const frames = gifTimesteps.map((t) => {
    const frameCells = schedules.flatMap(([, s]) => images(toDisplay(noisy(s, t)), n, H, W));
    return renderGrid(frameCells, { ...gifOpts, title: `t=${String(t).padStart(3, ' ')}` });
  });
  const gifLayout = gridLayout(n * schedules.length, H, W, gifOpts);
  const gif = path.join(opts.out, 'noise.gif');
  await saveGif(gif, frames, { delayMs: 80, lastFrameDelayMs: 1200 });

  // ᾱ_t per schedule: how much of the signal is left at t.
  const alphasCumprod: Record<string, Float64Array> = {};
  for (const [name, s] of schedules) alphasCumprod[name] = s.alphasCumprod;
  const alphas = path.join(opts.out, 'alphas_cumprod.png');
  await savePng(
    alphas,
    renderLossCurve(
      schedules.map(([name, s]) => ({ name, values: Array.from(s.alphasCumprod) })),
      { title: 'signal left: alphas_cumprod', xLabel: 't', yLabel: 'alpha_bar', logY: false },
    ),
  );

  return { files: { strip, gif, alphas }, indices, labels: indices.map((i) => ds.labels[i]), height: H, width: W, alphasCumprod, x0, noise, xt, stripLayout, gifLayout, gifTimesteps };
}

function scheduleList(value: string): BetaSchedule[] {
  const names = value.split(',').map((s) => s.trim()).filter(Boolean);
  for (const s of names) {
    if (!(BETA_SCHEDULES as readonly string[]).includes(s)) {
      throw new InvalidArgumentError(`expected a comma-separated list of ${BETA_SCHEDULES.join(', ')}, got "${s}".`);
    }
  }
  return names as BetaSchedule[];
}

export function register(program: Command): void {
  program
    .command('noise')
    .description('draw the forward noising process x_t on real digits for each beta schedule (PNG strip + GIF)')
    .option('--out <dir>', 'output directory', 'out/noise')
    .option('--seed <n>', 'random seed (digits and noise)', int(0), 0)
    .option('--n <count>', 'number of digits', int(1, 32), 4)
    .option('--timesteps <list>', `comma-separated timesteps in [0, ${NUM_TRAIN_TIMESTEPS - 1}]`, intList(0, NUM_TRAIN_TIMESTEPS - 1), DEFAULT_TIMESTEPS)
    .option('--schedules <list>', 'comma-separated beta schedules', scheduleList, [...BETA_SCHEDULES])
    .option('--beta-start <x>', 'first beta (Stable Diffusion: 0.00085)', float(0, 1), 0.00085)
    .option('--beta-end <x>', 'last beta (Stable Diffusion: 0.012)', float(0, 1), 0.012)
    .option('--frames <count>', 'frames in the GIF', int(2, 1000), 50)
    .option('--scale <k>', 'pixel scale of the pictures', int(1, 8), 2)
    .option('--data <dir>', 'a directory: IDX files or an image folder (default: the embedded MNIST digits)')
    .option('--backend <name>', BACKEND_HELP, process.env.SDLAB_BACKEND ?? 'auto')
    .action(async (o: NoiseOptions & { backend: string }) => {
      await selectBackend(o.backend);
      const res = await runNoise(o);
      const T = NUM_TRAIN_TIMESTEPS;
      console.log(`images with labels ${res.labels.join(', ')} (dataset indices ${res.indices.join(', ')}), T = ${T}, betas ${o.betaStart}..${o.betaEnd}`);
      console.log(`ᾱ_t at t = ${o.timesteps.join(', ')}:`);
      for (const [name, a] of Object.entries(res.alphasCumprod)) {
        console.log(`  ${name.padEnd(18)} ${o.timesteps.map((t) => a[t].toFixed(4)).join('  ')}`);
      }
      console.log(`wrote ${res.files.strip}`);
      console.log(`wrote ${res.files.gif} (${res.gifTimesteps.length} frames, t = 0..${T - 1})`);
      console.log(`wrote ${res.files.alphas}`);
    });
}

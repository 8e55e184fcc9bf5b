/**
 * A sample sheet from a trained run (vae/ + clip/ + unet/ in a run directory): n images per
 * prompt, written one PNG each, as one grid and as samples.json — what `sdlab sample` writes and
 * what `sdlab train all` closes with.
 *
 *   const res = await writeSampleSheet({ run: 'runs/default', digits: [0, 1, 2], n: 8, seed: 0,
 *     out: 'out/sample', batch: 64 });        // steps, scheduler, guidance, eta: the run's own
 *
 * Sampling settings not given come from the run (<run>/sampling_config.json, src/sample/settings.ts),
 * else sdlab's defaults; res.sampling says which came from where.
 *
 * Files in `out`, each written atomically:
 *   0000.png, 0001.png, ...    one picture per image, at the data's own size (28×28 for MNIST: the
 *                              VAE's padded canvas cropped, src/data/canvas.ts), or the canvas
 *                              (32×32) with canvas: 'padded'
 *   grid.png                   all of them; one row per prompt when there are several
 *   samples.json               [{"file": "0000.png", "prompt": "...", "digit": 7, "seed": 1, "index": 0,
 *                                "scheduler": "ddim", "steps": 50, "guidance": 3, "eta": 0, "guidance_interval": [200, 600]}, ...]
 *                              (digit: the one digit the prompt names, else null — what `sdlab eval` reads)
 *   animation.gif              with animate: x_t beside the decoded x0 prediction at every step,
 *                              for the first image of each of the first 4 prompts (one prompt: its
 *                              first 4 images)
 *
 * Images are numbered prompt by prompt. Image k's noise comes from its own stream (seed, k), so the
 * same seed gives the same images whatever the batch size.
 */
import path from 'node:path';
import { check } from '../util/errors.ts';
import { Progress } from '../util/progress.ts';
import { writeFileAtomic } from '../util/fs.ts';
import { SCHEDULER_NAMES, type SchedulerName } from '../schedule/index.ts';
import { promptForDigit } from '../data/captions.ts';
import { CANVAS_MODES, type CanvasMode, toCanvasMode } from '../data/canvas.ts';
import { readRunClasses } from '../data/run_classes.ts';
import { type FloatImage, renderGrid, savePng } from '../viz/index.ts';
import { ReverseProcessAnimation } from './animate.ts';
import { loadRunPipeline } from './load.ts';
import { digitFromPrompt, parseDigitList } from './prompts.ts';
import { type ResolvedSampling, resolveSampling } from './settings.ts';

export interface SampleOptions {
  run: string;
  /** Prompts, in order (`sdlab sample --prompt`). */
  prompt?: string[];
  /** Adds "a handwritten <word>" for each, after the prompts (`--digits`). */
  digits?: number[];
  /** Images per prompt. */
  n: number;
  /** Sampling settings; each one not given comes from the run's sampling_config.json, else SAMPLING_DEFAULTS (settings.ts). */
  steps?: number;
  scheduler?: string;
  guidance?: number;
  /** DDIM η (0 = deterministic). */
  eta?: number;
  /** Guide only at train timesteps t in [lo, hi]; null = every step (overriding the run's). */
  guidanceInterval?: readonly [number, number] | null;
  seed: number;
  out: string;
  animate?: boolean;
  batch: number;
  /** 'native' (default): images at the data's own size (28×28 for MNIST); 'padded': the VAE's canvas (32×32). */
  canvas?: CanvasMode;
  /** Progress output (default: stderr); null for none. */
  progress?: NodeJS.WriteStream | null;
}

/** One entry of samples.json (keep the keys: `sdlab eval` reads them). */
export interface SampleRecord {
  file: string;
  prompt: string;
  digit: number | null;
  seed: number;
  index: number;
  /** How it was sampled (so `sdlab eval` can say what it scores). */
  scheduler: string;
  steps: number;
  guidance: number;
  eta: number;
  /** Guidance only at t in [lo, hi]; null = every step. */
  guidance_interval: readonly [number, number] | null;
}

export interface SampleResult {
  records: SampleRecord[];
  files: { images: string[]; grid: string; json: string; gif?: string };
  notes: string[];
  height: number;
  width: number;
  /** The settings used and where each came from (flag, the run's sampling_config.json, defaults). */
  sampling: ResolvedSampling;
}

/**
 * The prompts of a sheet: `prompt` first, then one per entry of `digits`; neither: one per class
 * the run was trained on (<run>/classes.json, e.g. "a sneaker"), or for a digit run the digits 0-9.
 */
export function samplePrompts(opts: Pick<SampleOptions, 'prompt' | 'digits'> & { run?: string }): string[] {
  const prompts = [...(opts.prompt ?? []), ...(opts.digits ?? []).map(promptForDigit)];
  if (prompts.length) return prompts;
  return (opts.run ? readRunClasses(opts.run)?.prompts : undefined) ?? parseDigitList('0-9').map(promptForDigit);
}

/** Samples images from a trained run and writes PNGs, the grid, samples.json (and the GIF). */
export async function writeSampleSheet(opts: SampleOptions): Promise<SampleResult> {
  check(Number.isInteger(opts.n) && opts.n >= 1, `--n: expected an integer >= 1, got ${opts.n}.`);
  check(opts.steps === undefined || (Number.isInteger(opts.steps) && opts.steps >= 1), `--steps: expected an integer >= 1, got ${opts.steps}.`);
  check(Number.isInteger(opts.batch) && opts.batch >= 1, `--batch: expected an integer >= 1, got ${opts.batch}.`);
  check(opts.scheduler === undefined || (SCHEDULER_NAMES as readonly string[]).includes(opts.scheduler), `--scheduler: expected one of ${SCHEDULER_NAMES.join(', ')}, got "${opts.scheduler}".`);
  const canvasMode = opts.canvas ?? 'native';
  check(CANVAS_MODES.includes(canvasMode), `--canvas: expected one of ${CANVAS_MODES.join(', ')}, got "${canvasMode}".`);
  const sampling = resolveSampling(opts.run, { scheduler: opts.scheduler as SchedulerName | undefined, steps: opts.steps, guidance: opts.guidance, eta: opts.eta, guidanceInterval: opts.guidanceInterval });
  const { scheduler, steps, guidance, eta, guidanceInterval } = sampling.settings;
  const prompts = samplePrompts(opts);
  // A run of other classes (a sneaker, a coat) has no digits, even where a class name holds a digit word.
  const digitOf = (prompt: string) => (readRunClasses(opts.run) ? null : digitFromPrompt(prompt));
  const perImage = prompts.flatMap((p) => new Array<string>(opts.n).fill(p));
  const total = perImage.length;
  const pad = Math.max(4, String(total - 1).length);
  const records: SampleRecord[] = perImage.map((prompt, index) => ({
    file: `${String(index).padStart(pad, '0')}.png`,
    prompt,
    digit: digitOf(prompt),
    seed: opts.seed,
    index,
    scheduler,
    steps,
    guidance,
    eta,
    guidance_interval: guidanceInterval,
  }));

  const { pipeline, notes: loadNotes, canvas } = loadRunPipeline(opts.run, { scheduler });
  const notes = [...sampling.notes, ...loadNotes];
  try {
    // Check the step count against the schedule before any work (one clear line).
    pipeline.scheduler.setTimesteps(steps);
    const stepsPerBatch = pipeline.scheduler.timesteps.length; // PNDM runs one more than asked
    const batches = Math.ceil(total / opts.batch);
    const progress = opts.progress === null ? null : new Progress({ total: batches * stepsPerBatch, label: 'sample', unit: 'step', stream: opts.progress });
    // Animate the first image of each of the first prompts (or the first images of one prompt),
    // among the first batch.
    let shown = prompts.map((_, p) => p * opts.n).filter((i) => i < opts.batch).slice(0, 4);
    if (shown.length < 2) shown = Array.from({ length: Math.min(4, total, opts.batch) }, (_, i) => i);
    const anim = opts.animate ? new ReverseProcessAnimation(pipeline, { indices: shown, labels: shown.map((i) => rowLabel(records[i])), canvas: canvasMode === 'native' ? canvas : undefined }) : null;
    const images: FloatImage[] = new Array(total);
    const files: string[] = [];
    await pipeline.generate({
      prompts: perImage,
      batchSize: opts.batch,
      numInferenceSteps: steps,
      guidanceScale: guidance,
      guidanceInterval,
      seed: opts.seed,
      eta,
      callback: (s) => {
        progress?.tick(1, `batch ${s.first / opts.batch + 1}/${batches}`);
        if (anim && s.first === 0) anim.record(s);
      },
      onBatch: async ({ first, images: batch, height, width, channels }) => {
        for (let k = 0; k < batch.length; k++) {
          // The data's own size unless the padded canvas was asked for (src/data/canvas.ts).
          const img: FloatImage = toCanvasMode({ data: batch[k], height, width, channels: channels as 1 | 3 }, canvas, canvasMode);
          images[first + k] = img;
          const file = path.join(opts.out, records[first + k].file);
          await savePng(file, renderGrid([img], { pad: 0 }));
          files.push(file);
        }
      },
    });
    progress?.finish();

    const { height, width } = images[0];
    const grid = path.join(opts.out, 'grid.png');
    const several = prompts.length > 1;
    await savePng(
      grid,
      renderGrid(images, {
        cols: several ? opts.n : undefined,
        rows: several ? prompts.length : undefined,
        scale: height <= 64 ? 2 : 1,
        rowLabels: several ? prompts.map((p) => rowLabel({ prompt: p, digit: digitOf(p) })) : undefined,
        title: several ? undefined : shorten(prompts[0] || '(unconditional)', 40),
      }),
    );
    const json = path.join(opts.out, 'samples.json');
    await writeFileAtomic(json, JSON.stringify(records, null, 1) + '\n');
    let gif: string | undefined;
    if (anim) {
      gif = path.join(opts.out, 'animation.gif');
      await anim.save(gif);
    }
    return { records, files: { images: files, grid, json, gif }, notes, height, width, sampling };
  } finally {
    pipeline.dispose();
  }
}

function shorten(s: string, n: number): string {
  return s.length > n ? `${s.slice(0, n - 2)}..` : s;
}

/** Row label: the digit when the prompt names one, else the start of the prompt. */
function rowLabel(r: { prompt: string; digit: number | null }): string {
  return r.digit !== null ? String(r.digit) : shorten(r.prompt || '""', 10);
}

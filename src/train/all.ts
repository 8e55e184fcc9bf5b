/**
 * `npx sdlab train all`: the whole digit generator in one go — VAE → CLIP → UNet on the embedded
 * digits — then a sample sheet (one row per digit, "a handwritten <digit>"). With --data (IDX files
 * or an image folder; --classes) or the API's `dataset`, the same on your own images: the sheet
 * then has one row per class (the run's classes.json, the first SHEET_MAX_ROWS).
 *
 *   npx sdlab train all --preset quick          # a few minutes (demos, CI smoke)
 *   npx sdlab train all --preset full           # the quality target (measured times: README, "Results")
 *   npx sdlab train all --resume                # after Ctrl-C: finished stages are kept, the
 *                                               # interrupted one continues exactly
 *
 * Each stage is the same trainer as `npx sdlab train vae|clip|unet` with the preset's settings
 * (presets.ts), writing into the same run directory. A stage whose training state is already
 * complete with the preset's epochs and batch size is skipped, so re-running after an
 * interruption redoes nothing. Timings per stage go to <run>/train/all.json. The preset's sampling
 * settings go to <run>/sampling_config.json (the UNet stage writes them). The closing sheet is
 * src/sample/sheet.ts, the same writer as `npx sdlab sample --digits 0-9`, at those settings.
 */
import fs from 'node:fs';
import path from 'node:path';
import type * as tf from '@tensorflow/tfjs';
import { type Dataset, type TfDataset, loadDataset, readRunClasses } from '../data/index.ts';
import { UsageError } from '../util/errors.ts';
import { formatDuration } from '../util/progress.ts';
import { writeFileAtomicSync } from '../util/fs.ts';
import { writeSampleSheet } from '../sample/sheet.ts';
import { formatSampling, samplingConfigPath, writeSamplingConfig } from '../sample/settings.ts';
import { trainClip } from './clip.ts';
import { type TrainAllPreset } from './presets.ts';
import { readStateInfo, statePath, trainDir } from './state.ts';
import { type TrainResult, trainLog } from './trainer.ts';
import { trainUnet } from './unet.ts';
import { resolveDataset, sourceSettings, trainVae } from './vae.ts';

/** Rows of the closing sample sheet for a non-digit run: its first classes. */
export const SHEET_MAX_ROWS = 10;

export interface TrainAllOptions {
  runDir: string;
  preset: TrainAllPreset;
  /** Name of the preset (recorded in all.json). */
  presetName: string;
  seed?: number;
  /** IDX directory or image folder for every stage (default: the embedded MNIST digits). */
  data?: string;
  /** Class names for labelled data without them (`--classes`), for every stage. */
  classes?: readonly string[];
  /** Library API: an in-memory Dataset or a tf.data.Dataset for every stage, instead of `data` (read into memory once). */
  dataset?: Dataset | TfDataset<tf.TensorContainer>;
  resume?: boolean;
  overwrite?: boolean;
  /** Where the sample sheet goes (default <run>/samples). */
  sheetDir?: string;
  /** Skip the sample sheet. */
  noSheet?: boolean;
  signal?: AbortSignal;
  handleSigint?: boolean;
  quiet?: boolean;
  log?: (line: string) => void;
  /** Name of the backend (recorded in all.json). */
  backend?: string;
}

export type StageName = 'vae' | 'clip' | 'unet';

export interface StageReport {
  stage: StageName;
  status: 'trained' | 'resumed' | 'skipped' | 'stopped';
  seconds: number;
  steps: number;
  examplesPerSecond: number;
  /** Headline number of the stage: PSNR (vae), zero-shot accuracy (clip), held-out loss (unet). */
  metric: Record<string, number>;
}

export interface TrainAllResult {
  stages: StageReport[];
  stopped: boolean;
  sheet: { dir: string; grid: string; json: string; seconds: number } | null;
  summaryFile: string;
  totalSeconds: number;
}

/** What a stage's stored settings must match for `train all` to count it as this run's. */
export interface StageWant {
  epochs: number;
  maxSteps?: number | undefined;
  batchSize: number;
  limit?: number | undefined;
  data?: string | undefined;
  /** sourceSettings of the data (src/train/vae.ts): {} for digits, else captions, class names, fingerprint. */
  source?: Record<string, unknown>;
}

/**
 * Whether a stage's training state is complete for the preset's (epochs, maxSteps, batch size,
 * limit, data and the data's source settings): 'done', 'partial' (a state to resume), 'none', or
 * a one-line reason it belongs to other settings.
 */
export function stageState(runDir: string, stage: StageName, want: StageWant): 'done' | 'partial' | 'none' | { mismatch: string } {
  const file = statePath(runDir, stage);
  if (!fs.existsSync(file)) return 'none';
  const info = readStateInfo(file);
  const s = info.settings;
  const diffs: string[] = [];
  const differs = (label: string, have: unknown, wanted: unknown, none: string) => {
    if ((have ?? null) !== (wanted ?? null)) diffs.push(`${label} ${String(have ?? none)} → ${String(wanted ?? none)}`);
  };
  differs('epochs', s.epochs, want.epochs, 'none');
  differs('max steps', s.maxSteps, want.maxSteps, 'none');
  differs('batch size', s.batchSize, want.batchSize, 'none');
  differs('limit', s.limit, want.limit, 'none');
  differs('data', s.data, want.data, 'embedded');
  const source = want.source ?? {};
  const short = (v: unknown) => (typeof v === 'string' && /^[0-9a-f]{64}$/.test(v) ? v.slice(0, 12) : Array.isArray(v) ? v.join(',') : v);
  for (const key of ['captions', 'classes', 'classNames', 'texts', 'fingerprint']) {
    if (JSON.stringify(s[key] ?? null) !== JSON.stringify(source[key] ?? null)) differs(key, short(s[key]), short(source[key]), 'none');
  }
  if (diffs.length) return { mismatch: diffs.join(', ') };
  return info.step >= info.totalSteps ? 'done' : 'partial';
}

/** Trains every stage of `opts.preset` into `opts.runDir`, then writes the sample sheet. */
export async function trainAll(opts: TrainAllOptions): Promise<TrainAllResult> {
  const log = trainLog(opts);
  // The data of every stage: --data / --classes on top of the preset; an in-memory or tf.data
  // dataset is read once and handed to each stage.
  const dataset = await resolveDataset(opts.dataset);
  const src = { ...(opts.data !== undefined ? { data: opts.data } : {}), ...(opts.classes !== undefined ? { classes: opts.classes } : {}), ...(dataset ? { dataset } : {}) };
  const p = Object.keys(src).length === 0 ? opts.preset : { ...opts.preset, vae: { ...opts.preset.vae, ...src }, clip: { ...opts.preset.clip, ...src }, unet: { ...opts.preset.unet, ...src } };
  const source = sourceSettings(loadDataset({ data: p.vae.data, classes: p.vae.classes, dataset }), { classes: p.vae.classes, dataset });
  const seed = opts.seed ?? 0;
  const common = {
    runDir: opts.runDir,
    seed,
    signal: opts.signal,
    handleSigint: opts.handleSigint,
    quiet: opts.quiet,
    log: opts.log,
  };
  const started = Date.now();
  const stages: StageReport[] = [];
  const summaryFile = path.join(opts.runDir, 'train', 'all.json');
  const writeSummary = (extra: Record<string, unknown> = {}) => {
    writeFileAtomicSync(
      summaryFile,
      JSON.stringify({ preset: opts.presetName, seed, backend: opts.backend ?? null, stages, totalSeconds: (Date.now() - started) / 1000, ...extra }, null, 2) + '\n',
    );
  };

  /** resume/overwrite flags for a stage, or null to skip it. */
  const plan = (stage: StageName, want: StageWant): { resume: boolean; overwrite: boolean } | null => {
    if (opts.overwrite) return { resume: false, overwrite: true };
    const st = stageState(opts.runDir, stage, { ...want, source });
    if (st === 'done') return null;
    if (st === 'none') return { resume: false, overwrite: false };
    if (st === 'partial') {
      if (!opts.resume) {
        throw new UsageError(`${statePath(opts.runDir, stage)}: an unfinished ${stage} training is there; pass --resume to continue it, or --overwrite to start the run over.`);
      }
      return { resume: true, overwrite: false };
    }
    throw new UsageError(`${opts.runDir} holds a ${stage} trained with other settings (${st.mismatch}) than --preset ${opts.presetName}; use another --run, or --overwrite to start over.`);
  };

  const stageDone = (r: StageReport) => {
    stages.push(r);
    writeSummary();
    const rate = r.examplesPerSecond ? `, ${r.examplesPerSecond.toFixed(1)} img/s` : '';
    const metric = Object.entries(r.metric).map(([k, v]) => `${k} ${v.toPrecision(4)}`).join(', ');
    log(`== ${r.stage}: ${r.status}${r.status === 'skipped' ? ' (already trained)' : ` in ${formatDuration(r.seconds)} (${r.steps} steps${rate})`}${metric ? `; ${metric}` : ''}`);
  };
  const skipped = (stage: StageName): StageReport => ({ stage, status: 'skipped', seconds: 0, steps: 0, examplesPerSecond: 0, metric: {} });

  /** One stage: skipped when already trained, else trained (or resumed) and reported. */
  const runStage = async <R extends TrainResult>(
    stage: StageName,
    what: string,
    want: StageWant,
    trainIt: (flags: { resume: boolean; overwrite: boolean }) => Promise<R>,
    finish: (r: R) => Record<string, number>,
  ): Promise<boolean> => {
    const flags = plan(stage, want);
    if (!flags) {
      stageDone(skipped(stage));
      return false;
    }
    log(`== ${stage}: training ${what} (${want.epochs} epochs)`);
    const t0 = Date.now();
    const r = await trainIt(flags);
    const metric = finish(r); // reads the metrics, then frees the models
    const stopped = r.stopped !== 'finished';
    stageDone({
      stage, status: stopped ? 'stopped' : flags.resume ? 'resumed' : 'trained', seconds: (Date.now() - t0) / 1000, steps: r.step,
      examplesPerSecond: r.examplesPerSecond, metric,
    });
    return stopped;
  };

  // ---- VAE → CLIP → UNet, each on the ones before it
  let stopped = await runStage('vae', 'the autoencoder', p.vae, (f) => trainVae({ ...p.vae, ...common, ...f }), (r) => {
    r.vae.dispose();
    return { psnr: r.psnr, scaling_factor: r.scalingFactor };
  });
  if (!stopped) {
    stopped = await runStage('clip', 'the text encoder', p.clip, (f) => trainClip({ ...p.clip, ...common, ...f }), (r) => {
      r.clip.dispose();
      return { zero_shot: r.zeroShotAccuracy };
    });
  }
  const samplingSource = `train all --preset ${opts.presetName}`;
  if (!stopped) {
    stopped = await runStage('unet', 'the diffusion model', p.unet, (f) => trainUnet({ ...p.unet, ...common, ...f, samplingSource }), (r) => {
      r.unet.dispose();
      if (r.emaUnet !== r.unet) r.emaUnet.dispose();
      return { val_loss: r.valLoss };
    });
  }

  if (stopped) {
    writeSummary({ stopped: true });
    return { stages, stopped: true, sheet: null, summaryFile, totalSeconds: (Date.now() - started) / 1000 };
  }

  // A UNet trained by an sdlab that did not record how to sample it gets the preset's settings.
  if (!fs.existsSync(samplingConfigPath(opts.runDir))) writeSamplingConfig(opts.runDir, p.unet.sampling, samplingSource);

  // ---- sample sheet
  let sheet: TrainAllResult['sheet'] = null;
  if (!opts.noSheet) {
    const dir = opts.sheetDir ?? path.join(opts.runDir, 'samples');
    // One row per class: the digits, or the first SHEET_MAX_ROWS prompts the run recorded.
    const classes = readRunClasses(opts.runDir);
    const prompts = classes?.prompts.slice(0, SHEET_MAX_ROWS);
    const s = p.unet.sampling;
    log(`== samples: ${p.sheet.n} per ${classes ? 'class' : 'digit'}, ${formatSampling(s)} → ${dir}`);
    const t0 = Date.now();
    const res = await writeSampleSheet({
      run: opts.runDir,
      ...(prompts ? { prompt: prompts } : { digits: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] }),
      n: p.sheet.n,
      ...s,
      seed,
      out: dir,
      batch: (prompts?.length ?? 10) * p.sheet.n,
      progress: opts.quiet ? null : undefined,
    });
    sheet = { dir, grid: res.files.grid, json: res.files.json, seconds: (Date.now() - t0) / 1000 };
  }
  const trainSeconds = stages.reduce((a, s) => a + s.seconds, 0);
  writeSummary({ trainSeconds, sheet });
  return { stages, stopped: false, sheet, summaryFile, totalSeconds: (Date.now() - started) / 1000 };
}

/** Where everything of a finished run is, as lines for the terminal. */
export function describeRun(runDir: string, res: TrainAllResult): string[] {
  const run = path.normalize(runDir) === path.normalize('runs/default') ? '' : ` --run ${runDir}`;
  const lines = [
    `models:      ${path.join(runDir, 'vae')}/  ${path.join(runDir, 'clip')}/  ${path.join(runDir, 'unet')}/  ${path.join(runDir, 'scheduler')}/`,
    `training:    ${trainDir(runDir, '<stage>')}/ (loss.png, history.json, pictures; unet/samples.png per epoch)`,
    `summary:     ${res.summaryFile}`,
  ];
  if (res.sheet) lines.push(`sample sheet: ${res.sheet.grid}`);
  lines.push(`sampling:    ${samplingConfigPath(runDir)} (what \`sdlab sample\` and \`sdlab eval\` use unless told otherwise)`);
  const classes = readRunClasses(runDir);
  if (classes) {
    lines.push(`next:        npx sdlab sample${run} --prompt ${JSON.stringify(classes.prompts[0])} --n 16`);
    return lines;
  }
  lines.push(
    `next:        npx sdlab sample${run} --prompt "a thick 7" --n 16`,
    // No sampling flags: the run's sampling_config.json holds the settings its quality figures were measured at.
    `             npx sdlab sample${run} --digits 0-9 --n 100 --out out/eval-samples && npx sdlab eval${run} --samples out/eval-samples`,
  );
  return lines;
}

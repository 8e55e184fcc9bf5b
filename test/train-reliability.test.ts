/**
 * No run is lost (issue 15), on `sdlab train vae` run as a real child process (tiny AutoencoderKL,
 * 8×8 digits, pure-JS cpu backend):
 *   - SIGTERM saves a checkpoint and exits like Ctrl-C (130); --resume ends byte-identical to an
 *     uninterrupted run;
 *   - periodic checkpoints (--checkpoint-every): a SIGKILL loses only the steps since the last
 *     one; 22 SIGKILLs at random moments (mid-update, mid-checkpoint, a few while starting up),
 *     each followed by --resume, end byte-identical to an uninterrupted run (weights, optimizer
 *     state, history); the same for `train unet` (its EMA lives in the state) with 5 kills;
 *   - --resume restores --val-limit;
 *   - a second trainer on the same run and task is refused with one line naming the holder's pid,
 *     and a stale lock (its process gone) is taken over.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-cpu';
import { readSafetensors } from '../src/io/safetensors.ts';
import { readHistory, readStateInfo, statePath, trainDir } from '../src/train/state.ts';
import { lockTask } from '../src/train/lock.ts';
import { trainVae, type VaeTrainOptions } from '../src/train/vae.ts';
import { Random } from '../src/util/random.ts';
import { ROOT, sdlab, tinyDigitsDir } from './helpers/tiny-data.ts';
import { TINY_VAE } from '../src/train/presets.ts';
import { tinyVaeRun } from './helpers/tiny-vae-run.ts';
import { writeFrozenParts } from './helpers/tiny-frozen-parts.ts';

let tmp: string;
let dataDir: string;

/** One epoch of 12 steps (48 digits, batch 4): an epoch end comes only at the very end. */
const opts = (runDir: string): VaeTrainOptions => tinyVaeRun(runDir, dataDir, { epochs: 1, limit: 48 });

/** The same run as `opts`, as CLI flags. */
const cliArgs = (runDir: string) => [
  'train', 'vae', '--backend', 'cpu', '--run', runDir, '--data', dataDir, '--limit', '48',
  '--seed', '5', '--epochs', '1', '--batch-size', '4', '--lr', '3e-3', '--weight-decay', '0.01', '--warmup', '2',
  '--min-lr-ratio', '0.1', '--kl-weight', '1e-4', '--channels', '4,4', '--norm-groups', '2', '--latent-channels', '2',
  '--sample-size', '8', '--no-mid-attention',
];

/** Every tensor of a run's exported model (<run>/<task>/) and training state, as raw bytes. */
function snapshot(runDir: string, task: 'vae' | 'unet'): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const [k, t] of readSafetensors(path.join(runDir, task, 'diffusion_pytorch_model.safetensors'))) out.set(`${task}/${k}`, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  for (const [k, t] of readSafetensors(statePath(runDir, task))) out.set(`state/${k}`, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  return out;
}

/** Names of the tensors that differ (byte for byte) between two runs, or that only one has. */
function differing(a: string, b: string, task: 'vae' | 'unet' = 'vae'): string[] {
  const sa = snapshot(a, task);
  const sb = snapshot(b, task);
  const names = new Set([...sa.keys(), ...sb.keys()]);
  return [...names].filter((k) => !sa.has(k) || !sb.has(k) || Buffer.compare(sa.get(k)!, sb.get(k)!) !== 0);
}

/** A run's history without the wall-clock seconds (everything else is a function of the updates). */
function historyOf(runDir: string, task: 'vae' | 'unet') {
  const h = readHistory(trainDir(runDir, task), task);
  return { steps: h.steps, epochs: h.epochs.map(({ seconds: _s, ...rest }) => rest) };
}

function start(args: string[]): ChildProcess & { stderrText: () => string; exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> } {
  const child = spawn(process.execPath, ['bin/sdlab.mjs', ...args], { cwd: ROOT, env: { ...process.env, CI: '1' } });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  child.stdout!.resume();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return Object.assign(child, { stderrText: () => err, exited });
}

/** The state file's step, or -1 when there is none. */
function stateStep(runDir: string, task: 'vae' | 'unet' = 'vae'): number {
  try {
    return readStateInfo(statePath(runDir, task)).step;
  } catch {
    return -1;
  }
}

/** Resolves once `cond()` holds (polled every few ms), or false once the child has exited. */
async function until(cond: () => boolean, child: { exitCode: number | null; signalCode: string | null }): Promise<boolean> {
  while (!cond()) {
    if (child.exitCode !== null || child.signalCode !== null) return cond();
    await sleep(5);
  }
  return true;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * SIGKILLs a trainer again and again until `kills` kills have landed mid-training. Each session
 * (`first` while there is no state yet, then `resume`) checkpoints every step and is killed a
 * random 0–maxDelayMs after its first new checkpoint: in an update, or in one of a checkpoint's
 * writes (history, state, exported model, loss curve). About one session in seven is killed
 * instead a random 0–1.5 s after it starts (loading the state, taking over the dead one's lock):
 * those count as `startupKills`. After every kill the state must still read, at a step no lower
 * than before. The run must be long enough never to finish inside the loop.
 */
async function killLoop(o: { dir: string; task: 'vae' | 'unet'; first: string[]; resume: string[]; kills: number; maxDelayMs: number; rng: Random }): Promise<{ kills: number; startupKills: number; step: number }> {
  let kills = 0;
  let startupKills = 0;
  while (kills < o.kills) {
    const before = stateStep(o.dir, o.task);
    const child = start(before < 0 ? o.first : o.resume);
    if (before >= 0 && o.rng.next() < 1 / 7) {
      await sleep(o.rng.next() * 1500);
      child.kill('SIGKILL');
    } else if (await until(() => stateStep(o.dir, o.task) > before, child)) {
      await sleep(o.rng.next() * o.maxDelayMs);
      child.kill('SIGKILL');
    }
    const { code, signal } = await child.exited;
    const after = stateStep(o.dir, o.task);
    // A session that was not killed either failed or finished the run: both defeat the loop.
    expect(signal, `session after ${kills} kills ended by itself (exit ${code}):\n${child.stderrText()}`).toBe('SIGKILL');
    expect(after, 'the saved state went back').toBeGreaterThanOrEqual(before);
    if (after > before) kills++;
    else startupKills++;
  }
  return { kills, startupKills, step: stateStep(o.dir, o.task) };
}

/** stderr lines that are sdlab's own (not tfjs's banner). */
function ownLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.trim() !== '' && !/tfjs|TensorFlow|=====|node backend/.test(l));
}

let straightDir: string;

beforeAll(async () => {
  await tf.setBackend('cpu');
  ({ tmp, dataDir } = tinyDigitsDir('sdlab-train-reliability-', 80));
  straightDir = path.join(tmp, 'straight');
  const res = await trainVae({ ...opts(straightDir), checkpointEvery: 0 });
  expect(res.step).toBe(12);
});

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('kills', () => {
  it('the CLI matches the in-process run it is compared with', async () => {
    const dir = path.join(tmp, 'cli-straight');
    await sdlab(cliArgs(dir));
    expect(differing(straightDir, dir)).toEqual([]);
  });

  it('SIGTERM saves a checkpoint and exits 130 like Ctrl-C; --resume ends byte-identical', async () => {
    const dir = path.join(tmp, 'sigterm');
    const child = start([...cliArgs(dir), '--checkpoint-every', '0', '--epochs', '3']);
    // The first epoch's checkpoint exists (step 12 of 36): stop during the second epoch.
    expect(await until(() => stateStep(dir) >= 12, child)).toBe(true);
    child.kill('SIGTERM');
    const { code } = await child.exited;
    expect(child.stderrText()).toMatch(/vae: SIGTERM: saving a checkpoint after this step/);
    expect(code).toBe(130);
    expect(child.stderrText()).toMatch(/vae: stopped \(interrupted\) at step \d+\/36/);
    const step = stateStep(dir);
    expect(step).toBeGreaterThanOrEqual(12);
    expect(step).toBeLessThan(36);
    expect(fs.existsSync(path.join(trainDir(dir, 'vae'), 'train.lock'))).toBe(false);
    const resumed = await sdlab(['train', 'vae', '--backend', 'cpu', '--run', dir, '--resume']);
    expect(resumed.stdout).toMatch(/vae: trained 36 steps/);
    // Compared with an uninterrupted run of the same 3 epochs.
    const full = path.join(tmp, 'sigterm-straight');
    await trainVae({ ...opts(full), epochs: 3 });
    expect(differing(full, dir)).toEqual([]);
  });

  it('SIGKILL after a periodic checkpoint loses only the steps since it', async () => {
    const dir = path.join(tmp, 'periodic');
    const child = start([...cliArgs(dir), '--checkpoint-every', '2']);
    expect(await until(() => stateStep(dir) >= 2, child)).toBe(true);
    child.kill('SIGKILL');
    await child.exited;
    const step = stateStep(dir);
    // A periodic checkpoint, before the only epoch end (step 12): without it nothing would be saved.
    expect(step % 2).toBe(0);
    expect(step).toBeGreaterThanOrEqual(2);
    expect(step).toBeLessThan(12);
    expect(readHistory(trainDir(dir, 'vae'), 'vae').epochs).toEqual([]);
    const resumed = await sdlab(['train', 'vae', '--backend', 'cpu', '--run', dir, '--resume']);
    expect(resumed.stderr).toContain(`vae: resuming ${statePath(dir, 'vae')} at step ${step}/12`);
    expect(resumed.stderr).toMatch(/taking over .*train\.lock from pid \d+, which is no longer running/);
    expect(differing(straightDir, dir)).toEqual([]);
  });

  it('22 SIGKILLs at random moments, each followed by --resume: byte-identical to an uninterrupted run', async () => {
    const dir = path.join(tmp, 'random-kills');
    // 10 epochs (120 steps): more than 22 short sessions can get through, so the loop never
    // reaches the end; the last resume stops 3 steps later and that is compared.
    const { kills, startupKills, step } = await killLoop({
      dir,
      task: 'vae',
      first: [...cliArgs(dir), '--epochs', '10', '--checkpoint-every', '1'],
      resume: ['train', 'vae', '--backend', 'cpu', '--run', dir, '--resume', '--checkpoint-every', '1'],
      kills: 22,
      maxDelayMs: 300,
      rng: new Random('reliability kills'),
    });
    expect(kills).toBeGreaterThanOrEqual(22);
    expect(startupKills).toBeGreaterThanOrEqual(1);
    const end = step + 3;
    expect(end).toBeLessThan(120);
    const last = await sdlab(['train', 'vae', '--backend', 'cpu', '--run', dir, '--resume', '--stop-at-step', String(end)]);
    expect(last.stdout).toMatch(new RegExp(`stopped \\(stop-at-step\\) at step ${end}/120`));
    const ref = path.join(tmp, 'random-kills-straight');
    await trainVae({ ...opts(ref), epochs: 10, stopAtStep: end, checkpointEvery: 0 });
    expect(differing(ref, dir)).toEqual([]);
    expect(historyOf(dir, 'vae')).toEqual(historyOf(ref, 'vae'));
  }, 480_000); // 22+ process starts: about a minute on two idle cores, several on a loaded machine

  it('train unet: 5 SIGKILLs at random moments, each followed by --resume: byte-identical weights, state and EMA', async () => {
    const dir = path.join(tmp, 'unet-kills');
    const ref = path.join(tmp, 'unet-kills-straight');
    writeFrozenParts(dir);
    fs.cpSync(dir, ref, { recursive: true });
    // 12 steps an epoch, 10 epochs; an EMA decay that has not reached its cap, so every step's EMA differs.
    const args = (run: string) => [
      'train', 'unet', '--backend', 'cpu', '--run', run, '--data', dataDir, '--limit', '48', '--val-limit', '8', '--seed', '3',
      '--epochs', '10', '--batch-size', '4', '--lr', '1e-2', '--warmup', '2', '--min-lr-ratio', '0.1', '--channels', '8,8',
      '--ema-decay', '0.99', '--grid-every', '0',
    ];
    const { kills, step } = await killLoop({
      dir,
      task: 'unet',
      first: [...args(dir), '--checkpoint-every', '1'],
      resume: ['train', 'unet', '--backend', 'cpu', '--run', dir, '--resume', '--checkpoint-every', '1'],
      kills: 5,
      maxDelayMs: 500,
      rng: new Random('reliability unet kills'),
    });
    expect(kills).toBeGreaterThanOrEqual(5);
    const end = step + 2;
    expect(end).toBeLessThan(120);
    await sdlab(['train', 'unet', '--backend', 'cpu', '--run', dir, '--resume', '--stop-at-step', String(end)]);
    // The uninterrupted run: the same CLI, in one session.
    await sdlab([...args(ref), '--stop-at-step', String(end)]);
    const diff = differing(ref, dir, 'unet');
    expect(diff).toEqual([]);
    expect([...snapshot(dir, 'unet').keys()].filter((k) => k.startsWith('state/ema.')).length).toBeGreaterThan(0);
    expect(historyOf(dir, 'unet')).toEqual(historyOf(ref, 'unet'));
  }, 300_000);
});

describe('--resume restores --val-limit', () => {
  it('validation on the same held-out digits before and after the resume', async () => {
    const dir = path.join(tmp, 'val-limit');
    const first = await sdlab([...cliArgs(dir), '--epochs', '2', '--val-limit', '5', '--stop-at-step', '17']);
    expect(first.stdout).toMatch(/stopped \(stop-at-step\) at step 17\/24/);
    expect(readStateInfo(statePath(dir, 'vae')).settings.valLimit).toBe(5);
    await sdlab(['train', 'vae', '--backend', 'cpu', '--run', dir, '--resume']);
    const ref = path.join(tmp, 'val-limit-straight');
    await trainVae({ ...opts(ref), epochs: 2, valLimit: 5 });
    const strip = (h: ReturnType<typeof readHistory>) => h.epochs.map(({ seconds: _s, ...rest }) => rest);
    const got = strip(readHistory(trainDir(dir, 'vae'), 'vae'));
    expect(got).toHaveLength(2);
    expect(got).toEqual(strip(readHistory(trainDir(ref, 'vae'), 'vae')));
    // A different --val-limit on resume is a different run: refused, like any other setting.
    const other = await sdlab(['train', 'vae', '--backend', 'cpu', '--run', dir, '--resume', '--val-limit', '6']).then(() => null, (e: { code: number; stderr: string }) => e);
    expect(other?.code).toBe(2);
    expect(other?.stderr).toMatch(/different settings \(valLimit 5 → 6\)/);
  });
});

describe('one trainer per run and task', () => {
  it('a second `train vae --run X` while one runs exits 2 with one line naming the holder pid', async () => {
    const dir = path.join(tmp, 'locked');
    const a = start([...cliArgs(dir), '--epochs', '1000']);
    const lockFile = path.join(trainDir(dir, 'vae'), 'train.lock');
    expect(await until(() => fs.existsSync(lockFile), a)).toBe(true);
    const b = await sdlab(['train', 'vae', '--backend', 'cpu', '--run', dir, '--overwrite']).then(() => null, (e: { code: number; stderr: string }) => e);
    expect(b?.code).toBe(2);
    const lines = ownLines(b!.stderr);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^sdlab: error: vae: .* is being trained by pid ${a.pid} `));
    a.kill('SIGTERM');
    expect((await a.exited).code).toBe(130);
    expect(fs.existsSync(lockFile)).toBe(false);
  });

  it('a stale lock (its process gone) is taken over with a note; a live one is not; another host\'s is respected', () => {
    const dir = path.join(tmp, 'stale', 'train', 'vae');
    fs.mkdirSync(dir, { recursive: true });
    const file = path.join(dir, 'train.lock');
    const dead = spawnSync(process.execPath, ['-e', '']).pid!;
    fs.writeFileSync(file, JSON.stringify({ pid: dead, host: os.hostname(), started: 'then' }));
    const notes: string[] = [];
    const lock = lockTask(dir, 'vae', (l) => notes.push(l));
    expect(notes.join('\n')).toMatch(new RegExp(`taking over .* from pid ${dead}, which is no longer running`));
    expect(JSON.parse(fs.readFileSync(file, 'utf8')).pid).toBe(process.pid);
    // Held by this (live) process: a second taker is refused.
    expect(() => lockTask(dir, 'vae', () => {})).toThrow(new RegExp(`being trained by pid ${process.pid} `));
    lock.release();
    expect(fs.existsSync(file)).toBe(false);
    fs.writeFileSync(file, JSON.stringify({ pid: dead, host: 'elsewhere.invalid', started: 'then' }));
    expect(() => lockTask(dir, 'vae', () => {})).toThrow(/being trained by pid \d+ on host elsewhere\.invalid/);
    // An empty lock (a crash while it was written) is stale.
    fs.writeFileSync(file, '');
    lockTask(dir, 'vae', () => {}).release();
    expect(fs.existsSync(file)).toBe(false);
  });
});

/**
 * No run is lost (issue 15), on `sdlab train vae` run as a real child process (tiny AutoencoderKL,
 * 8×8 digits, pure-JS cpu backend):
 *   - SIGTERM saves a checkpoint and exits like Ctrl-C (130); --resume ends byte-identical to an
 *     uninterrupted run;
 *   - periodic checkpoints (--checkpoint-every): a SIGKILL loses only the steps since the last
 *     one, and SIGKILLs at random moments (mid-update or mid-checkpoint) followed by --resume still
 *     end byte-identical;
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

/** Every tensor of a run's exported vae and training state, as raw bytes. */
function snapshot(runDir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const [k, t] of readSafetensors(path.join(runDir, 'vae/diffusion_pytorch_model.safetensors'))) out.set(`vae/${k}`, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  for (const [k, t] of readSafetensors(statePath(runDir, 'vae'))) out.set(`state/${k}`, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  return out;
}

/** Names of the tensors that differ (byte for byte) between two runs, or that only one has. */
function differing(a: string, b: string): string[] {
  const sa = snapshot(a);
  const sb = snapshot(b);
  const names = new Set([...sa.keys(), ...sb.keys()]);
  return [...names].filter((k) => !sa.has(k) || !sb.has(k) || Buffer.compare(sa.get(k)!, sb.get(k)!) !== 0);
}

function start(args: string[]): ChildProcess & { stderrText: () => string; exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> } {
  const child = spawn(process.execPath, ['bin/sdlab.mjs', ...args], { cwd: ROOT, env: { ...process.env, CI: '1' } });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  child.stdout!.resume();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return Object.assign(child, { stderrText: () => err, exited });
}

/** The state file's step, or -1 when there is none (or it is being replaced right now). */
function stateStep(runDir: string): number {
  try {
    return readStateInfo(statePath(runDir, 'vae')).step;
  } catch {
    return -1;
  }
}

/** Resolves once `cond()` holds (polled every few ms), or false once the child has exited. */
async function until(cond: () => boolean, child: { exitCode: number | null; signalCode: string | null }): Promise<boolean> {
  while (!cond()) {
    if (child.exitCode !== null || child.signalCode !== null) return cond();
    await new Promise((r) => setTimeout(r, 3));
  }
  return true;
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

  it('SIGKILLs at random moments (mid-update, mid-checkpoint), each followed by --resume: byte-identical at the end', async () => {
    const dir = path.join(tmp, 'random-kills');
    const rng = new Random('reliability kills');
    let kills = 0;
    for (let round = 0; round < 8; round++) {
      const before = stateStep(dir);
      const child = start(before < 0 ? [...cliArgs(dir), '--checkpoint-every', '1'] : ['train', 'vae', '--backend', 'cpu', '--run', dir, '--resume', '--checkpoint-every', '1']);
      // Once this session has saved a step, wait a random 0–40 ms (a checkpoint every step: the
      // kill lands in an update or in a checkpoint's writes) and kill.
      const progressed = await until(() => stateStep(dir) > before, child);
      if (progressed && stateStep(dir) < 12) {
        await new Promise((r) => setTimeout(r, Math.floor(rng.next() * 40)));
        child.kill('SIGKILL');
        kills++;
      }
      const { code, signal } = await child.exited;
      if (signal !== 'SIGKILL') expect(code, child.stderrText()).toBe(0);
      if (stateStep(dir) === 12 && signal !== 'SIGKILL') break;
    }
    expect(kills).toBeGreaterThanOrEqual(3);
    // Finish (or, if the last session finished, resume the finished run: it writes the final model again).
    await sdlab(['train', 'vae', '--backend', 'cpu', '--run', dir, '--resume']);
    expect(differing(straightDir, dir)).toEqual([]);
  });
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

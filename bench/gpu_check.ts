/**
 * `npm run gpu-check`: the one script to run on a machine with a GPU (issue 14), against the
 * native CPU backend on the same machine. Prints a table and writes gpu-check.json (to $OUT when
 * set, else the current directory):
 *   1. what is there: the WebGPU adapter (and its binding limit), tfjs-node-gpu and its CUDA libraries;
 *   2. parity with tfjs's cpu backend: UNet / VAE / text encoder forward and every gradient (bench/gpu.ts);
 *   3. training-step throughput, img/s: the MNIST UNet (batch 64) and VAE (batch 32) steps of `npm run bench`;
 *   4. `sdlab train all --preset full --backend webgpu` wall time (into a temporary run directory);
 *   5. one SD 1.5 UNet step at 512 px (CFG batch 2, 64×64 latents), random weights: seconds and GFLOP/s.
 * Each stage has a time limit (--full-limit S for stage 4, default 600) and what did not finish is
 * reported as such; the native figures come from the same machine in the same run.
 *
 *   npm run gpu-check                          # all stages
 *   npm run gpu-check -- --skip full,sd        # only what is quick
 *   scripts/gpu-bundle.sh                      # node + pruned node_modules + libvulkan for a bare GPU machine
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { probeBackend } from '../src/backend/index.ts';
import { missingCudaLibraries } from '../src/backend/cuda.ts';
import { probeWebgpu } from '../src/backend/webgpu.ts';
import { PARITY_MODELS, modelParity } from './gpu.ts';
import { UNET_BATCH, VAE_BATCH } from './cases.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (flag: string, dflt: string) => (args.includes(flag) ? args[args.indexOf(flag) + 1] : dflt);
const skip = new Set(opt('--skip', '').split(',').filter((s) => s));
const fullLimitS = Number(opt('--full-limit', '600'));
const out = path.join(process.env.OUT || '.', 'gpu-check.json');

const report: Record<string, unknown> = { date: new Date().toISOString(), host: os.hostname(), cpus: os.cpus().length, cpu: os.cpus()[0]?.model };
const save = () => fs.writeFileSync(out, JSON.stringify(report, null, 2));
const say = (s: string) => console.log(s);

/** `npm run bench` rows as JSON (one per line). */
function bench(extra: string[], limitS: number): Array<Record<string, unknown>> {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin/run-ts.mjs'), path.join(ROOT, 'bench/bench.ts'), '--json', ...extra],
    { cwd: ROOT, encoding: 'utf8', timeout: limitS * 1000, maxBuffer: 1 << 24, stdio: ['ignore', 'pipe', 'inherit'] });
  return (r.stdout ?? '').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
}

// 1. what is there
const w = await probeWebgpu();
const cuda = await probeBackend('cuda');
report.webgpu = w;
report.cuda = { available: cuda.available, detail: cuda.detail, missingLibraries: missingCudaLibraries().map((l) => l.soname) };
say(`webgpu: ${w.available ? w.detail : `missing: ${w.detail}`}`);
say(`cuda:   ${cuda.available ? 'available' : 'missing'}: ${cuda.detail}`);
save();
if (!w.available) {
  say(`no WebGPU adapter: nothing more to check (${out})`);
  process.exit(1);
}

// 2. parity
const parity = [];
for (const m of PARITY_MODELS) {
  const r = await modelParity('webgpu', m);
  parity.push({ ...r, ok: r.lossErr < 1e-5 && r.gradErr < 1e-5 });
  say(`parity: ${r.name}: loss ${r.lossErr.toExponential(2)}, gradients ${r.gradErr.toExponential(2)} (${r.tensors} tensors)`);
}
report.parity = parity;
save();

// 3. training steps, img/s
if (!skip.has('train-step')) {
  const rows = bench(['--backends', 'native,webgpu', '--cases', 'unet-train-step,vae-train-step', '--runs', '5'], 600);
  report.trainSteps = rows.map((r) => {
    const batch = r.case === 'unet-train-step' ? UNET_BATCH : VAE_BATCH;
    const ms = r.medianMs as number | null;
    return { case: r.case, backend: r.backend, medianMs: ms, imgPerS: ms ? Math.round((1000 * batch) / ms) : null };
  });
  for (const r of report.trainSteps as Array<Record<string, unknown>>) say(`train step: ${r.case} on ${r.backend}: ${r.medianMs} ms, ${r.imgPerS} img/s`);
  save();
}

// 4. train all --preset full on webgpu
if (!skip.has('full')) {
  const run = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-gpu-full-'));
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin/sdlab.mjs'), 'train', 'all', '--preset', 'full', '--backend', 'webgpu', '--run', run],
    { cwd: ROOT, encoding: 'utf8', timeout: fullLimitS * 1000, stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 26 });
  const s = (Date.now() - t0) / 1000;
  const summary = fs.existsSync(path.join(run, 'train/all.json')) ? JSON.parse(fs.readFileSync(path.join(run, 'train/all.json'), 'utf8')) : null;
  report.trainAllFull = { seconds: s, finished: r.status === 0, status: r.status ?? r.signal, limitS: fullLimitS, summary, tail: (r.stdout ?? '').split('\n').slice(-12) };
  say(`train all --preset full on webgpu: ${r.status === 0 ? `${s.toFixed(0)} s` : `not finished (${r.status ?? r.signal}) after ${s.toFixed(0)} s`}`);
  save();
}

// 5. one SD 1.5 UNet step
if (!skip.has('sd')) {
  const rows = bench(['--backends', 'native,webgpu', '--cases', 'fma-peak,sd15-unet-step', '--sd-runs', '2'], 600);
  report.sd15UnetStep = rows.filter((r) => r.case === 'sd15-unet-step').map((r) => ({ backend: r.backend, seconds: r.medianMs === null ? null : (r.medianMs as number) / 1000, gflops: r.gflops, maxRssKiB: r.maxRssKiB, note: r.note }));
  for (const r of report.sd15UnetStep as Array<Record<string, unknown>>) say(`sd15-unet-step on ${r.backend}: ${r.seconds ?? '-'} s, ${r.gflops ?? '-'} GFLOP/s`);
  save();
}
say(`wrote ${out}`);
process.exit(parity.every((p) => p.ok) ? 0 : 1);

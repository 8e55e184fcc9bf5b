#!/usr/bin/env node
// Builds the prebuilt native backends that ship in the npm package, so that `npm install sdlab`
// needs no compiler on Linux x64 and arm64:
//   native/prebuilds/linux-x64/sdlab_native.napi.glibc.node     (g++)
//   native/prebuilds/linux-arm64/sdlab_native.napi.glibc.node   (aarch64-linux-gnu-g++, Debian's g++-aarch64-linux-gnu)
// node-gyp-build finds them at run time by platform, arch and libc (src/backend/native.ts). They
// are N-API modules (one binary for every Node version), compiled for the baseline ISA with the
// AVX2 / AVX-512 / NEON kernels picked at run time. They need glibc >= 2.34 and the libstdc++ of
// g++ >= 12 (Debian 12, Ubuntu 22.04 and later); linking libstdc++ statically would pull in
// glibc 2.36 symbols (arc4random) and exclude Ubuntu 22.04. Where a prebuilt binary does not load,
// the install script compiles the addon instead (native/build.mjs).
//   node native/prebuild.mjs [--arch x64,arm64] [--out DIR]   (the package's `prepack` script; DIR
//                                                              defaults to native/prebuilds)
// Flags and sources come from binding.gyp, the node-gyp build's own, so both builds agree.
// Compilers: CXX for the host arch, SDLAB_CXX_ARM64 / SDLAB_CXX_X64 for cross builds. A cross
// compiler that is missing is reported and skipped (exit 0) unless SDLAB_PREBUILD_REQUIRE=1 (CI).
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const die = (msg) => {
  console.error(`sdlab prebuild: ${msg}`);
  process.exit(1);
};

const outIdx = process.argv.indexOf('--out');
const outRoot = outIdx > 0 ? path.resolve(process.argv[outIdx + 1] ?? die('--out: expected a directory')) : path.join(here, 'prebuilds');
const argIdx = process.argv.indexOf('--arch');
const archs = argIdx > 0 ? (process.argv[argIdx + 1] ?? '').split(',').filter(Boolean) : [...new Set([os.arch(), 'x64', 'arm64'])];
for (const a of archs) if (a !== 'x64' && a !== 'arm64') die(`--arch: expected x64 and/or arm64, got "${a}"`);
if (process.platform !== 'linux') die(`prebuilt binaries are built on Linux only (this is ${process.platform}); elsewhere npm install compiles with node-gyp`);

const gyp = JSON.parse(readFileSync(path.join(here, 'binding.gyp'), 'utf8')).targets[0];
const nodeInclude = [path.resolve(path.dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node'].find((d) =>
  existsSync(path.join(d, 'node_api.h')));
if (!nodeInclude) die("Node's headers (node_api.h) not found beside the node binary or in /usr/include/node");

const compilerFor = (arch) => {
  if (arch === os.arch()) return process.env.CXX || 'g++';
  return arch === 'arm64' ? process.env.SDLAB_CXX_ARM64 || 'aarch64-linux-gnu-g++' : process.env.SDLAB_CXX_X64 || 'x86_64-linux-gnu-g++';
};
const have = (cmd) => spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;

// Runs `cmd args` and resolves with its exit code, stderr collected.
const run = (cmd, args) => new Promise((resolve) => {
  const p = spawn(cmd, args, { stdio: ['ignore', 'inherit', 'pipe'] });
  let err = '';
  p.stderr.on('data', (d) => { err += d; });
  p.on('error', (e) => resolve({ code: -1, err: e.message }));
  p.on('close', (code) => resolve({ code, err }));
});

const jobs = Math.max(1, os.availableParallelism?.() ?? os.cpus().length);
let built = 0;
for (const arch of archs) {
  const cxx = compilerFor(arch);
  if (!have(cxx)) {
    const msg = `no compiler for linux-${arch} (${cxx}; Debian: apt-get install ${arch === 'arm64' ? 'g++-aarch64-linux-gnu' : 'g++-x86-64-linux-gnu'})`;
    if (process.env.SDLAB_PREBUILD_REQUIRE === '1') die(msg);
    console.warn(`sdlab prebuild: skipping linux-${arch}: ${msg}`);
    continue;
  }
  const t0 = Date.now();
  const tmp = mkdtempSync(path.join(os.tmpdir(), `sdlab-prebuild-${arch}-`));
  const cflags = [...gyp.cflags_cc, '-fPIC', '-pthread', '-DNODE_GYP_MODULE_NAME=sdlab_native', '-DBUILDING_NODE_EXTENSION', '-DNAPI_DISABLE_CPP_EXCEPTIONS', `-I${nodeInclude}`, '-Werror'];
  const sources = gyp.sources.map((s) => path.join(here, s));
  const objects = sources.map((s) => path.join(tmp, path.basename(s, '.cc') + '.o'));
  // Compile the sources `jobs` at a time.
  let next = 0;
  const failures = [];
  await Promise.all(Array.from({ length: Math.min(jobs, sources.length) }, async () => {
    while (next < sources.length) {
      const i = next++;
      const r = await run(cxx, [...cflags, '-c', sources[i], '-o', objects[i]]);
      if (r.code !== 0) failures.push(`${path.basename(sources[i])}: ${r.err.trim().split('\n').slice(0, 4).join(' | ')}`);
      else if (r.err.trim()) process.stderr.write(r.err);
    }
  }));
  if (failures.length) die(`linux-${arch} (${cxx}) failed: ${failures.join('; ')}`);
  const outDir = path.join(outRoot, `linux-${arch}`);
  mkdirSync(outDir, { recursive: true });
  const out = path.join(outDir, 'sdlab_native.napi.glibc.node');
  const partial = path.join(tmp, 'sdlab_native.node');
  const link = await run(cxx, ['-shared', ...gyp.ldflags, '-o', partial, ...objects]);
  if (link.code !== 0) die(`linux-${arch} link failed: ${link.err.trim().split('\n').slice(0, 4).join(' | ')}`);
  // Copied beside its final name, then renamed: a reader never sees a half-written binary.
  copyFileSync(partial, `${out}.tmp`);
  renameSync(`${out}.tmp`, out);
  rmSync(tmp, { recursive: true, force: true });
  built++;
  console.log(`sdlab prebuild: ${path.relative(process.cwd(), out)} (${cxx}, ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}
if (!built) die('nothing was built');

#!/usr/bin/env node
// Builds the native CPU backend (native/build/Release/sdlab_native.node) with node-gyp + g++.
// Runs as the package's `install` script during `npm ci`/`npm install`. It never fails the
// install: if the addon cannot be built, it prints one warning and sdlab uses tfjs's `cpu` backend.
// During an install of the package (not in a git checkout, where the sources may have changed), a
// prebuilt binary that fits this platform and loads (native/prebuilds, from native/prebuild.mjs)
// is used instead, and nothing is compiled: no compiler needed on Linux x64 / arm64.
//   node native/build.mjs            (SDLAB_SKIP_NATIVE=1 to skip; SDLAB_BUILD_FROM_SOURCE=1 to compile anyway)
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const warn = (why) => {
  console.warn(`sdlab: warning: native CPU backend not built (${why}); falling back to the slower tfjs 'cpu' backend.`);
  process.exit(0);
};

if (process.env.SDLAB_SKIP_NATIVE === '1') warn('SDLAB_SKIP_NATIVE=1');

// A prebuilt binary, when installing the package: node-gyp-build's choice among prebuilds/ only
// (PREBUILDS_ONLY: an old build/ must not count), tried in this process so that one that will not
// load here (an older glibc or libstdc++) falls through to compiling.
const inCheckout = existsSync(path.join(here, '..', '.git'));
if (process.env.npm_lifecycle_event === 'install' && !inCheckout && process.env.SDLAB_BUILD_FROM_SOURCE !== '1') {
  const require = createRequire(import.meta.url);
  process.env.PREBUILDS_ONLY = '1';
  try {
    const file = require('node-gyp-build').resolve(here);
    const addon = require(file);
    if (typeof addon.isa !== 'function') throw new Error('not the sdlab addon');
    console.log(`sdlab: using the prebuilt native CPU backend (${path.relative(path.join(here, '..'), file)}, kernels ${addon.isa()})`);
    process.exit(0);
  } catch (err) {
    console.log(`sdlab: no prebuilt native backend fits (${String(err.message).split('\n')[0]}); compiling it`);
  }
  delete process.env.PREBUILDS_ONLY;
}

// node-gyp from our dependencies, else the copy bundled with npm.
let gyp;
try {
  gyp = createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js');
} catch {
  const bundled = path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  if (existsSync(bundled)) gyp = bundled;
}
if (!gyp) warn('node-gyp not found');

// Node's headers ship with the node binary (e.g. /usr/include/node); point node-gyp at them so
// it never tries to download them (and so a user's ~/.npmrc does not matter).
const args = [gyp, 'rebuild', '--release', `--jobs=${os.availableParallelism?.() ?? os.cpus().length}`];
const env = { ...process.env };
const nodedir = path.resolve(path.dirname(process.execPath), '..');
if (existsSync(path.join(nodedir, 'include', 'node', 'node_api.h'))) {
  args.push(`--nodedir=${nodedir}`);
  env.npm_config_nodedir = nodedir; // an npm config value (even empty) would otherwise win
}

const r = spawnSync(process.execPath, args, { cwd: here, env, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
if (r.status !== 0) {
  const lines = `${r.stdout ?? ''}\n${r.stderr ?? ''}`.split('\n').filter((l) => /error/i.test(l)).slice(0, 3);
  if (lines.length) console.warn(lines.join('\n'));
  warn(r.error ? r.error.message : `node-gyp exited with ${r.status}`);
}
console.log('sdlab: built the native CPU backend (native/build/Release/sdlab_native.node)');

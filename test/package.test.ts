/**
 * The npm package as a user gets it, on a machine with no compiler: `npm pack` (its prepack
 * builds the prebuilt binaries, native/prebuild.mjs; its prepare the dist/ API) in a copy of the
 * repository, installed into an empty project with PATH holding only node, npm and sh (no g++,
 * cc, clang, make or python), and then the native backend must load from the prebuilt binary,
 * nothing having been compiled. Dependencies come from npm's cache (`npm ci` filled it) or the
 * registry.
 */
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '..');
const ARCH = `linux-${process.arch}`;
const PREBUILT = 'sdlab_native.napi.glibc.node';
const crossArch = process.arch === 'x64' ? 'arm64' : 'x64';
const haveCross = spawnSync(process.arch === 'x64' ? 'aarch64-linux-gnu-g++' : 'x86_64-linux-gnu-g++', ['--version'], { stdio: 'ignore' }).status === 0;

/** The environment of a user's shell: no npm_* variables from the `npm test` around us, PATH as given. */
function userEnv(PATH: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k) && k !== 'INIT_CWD' && k !== 'NODE_OPTIONS') env[k] = v;
  return { ...env, PATH };
}

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv): Promise<{ status: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { cwd, env });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    p.on('error', (e) => resolve({ status: -1, out: e.message }));
    p.on('close', (status) => resolve({ status, out }));
  });
}

let work = '';
let tarball = '';
let contents: string[] = [];
let project = '';
let bin = '';
let install = { status: null as number | null, out: '' };

describe.skipIf(process.platform !== 'linux')('the npm package on Linux without a compiler', () => {
  beforeAll(async () => {
    work = mkdtempSync(path.join(tmpdir(), 'sdlab-pack-'));
    // A copy of what the package is built from, so that packing writes nothing in the working
    // tree (dist/ and native/prebuilds/ there stay as they are for the other tests).
    const src = path.join(work, 'src-copy');
    mkdirSync(src);
    for (const f of ['package.json', 'package-lock.json', 'README.md', 'tsconfig.json', 'tsconfig.build.json', 'bin', 'src', 'datasets']) cpSync(path.join(ROOT, f), path.join(src, f), { recursive: true });
    cpSync(path.join(ROOT, 'native'), path.join(src, 'native'), { recursive: true, filter: (p) => !/[/\\](build|prebuilds)$/.test(p) });
    symlinkSync(path.join(ROOT, 'node_modules'), path.join(src, 'node_modules'));
    const pack = await run('npm', ['pack', '--pack-destination', work, '--json'], src, userEnv(process.env.PATH ?? ''));
    expect(pack.status, pack.out).toBe(0);
    tarball = path.join(work, readdirSync(work).find((f) => f.endsWith('.tgz'))!);
    contents = spawnSync('tar', ['tzf', tarball], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);

    // PATH: node, npm and sh only.
    bin = path.join(work, 'bin');
    mkdirSync(bin);
    for (const c of ['node', 'npm']) {
      const where = spawnSync('sh', ['-c', `command -v ${c}`], { encoding: 'utf8' }).stdout.trim();
      symlinkSync(where, path.join(bin, c));
    }
    symlinkSync('/bin/sh', path.join(bin, 'sh'));
    project = path.join(work, 'project');
    mkdirSync(project);
    writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'try-sdlab', private: true, type: 'module' }));
    install = await run('npm', ['install', tarball, '--prefer-offline', '--no-audit', '--no-fund'], project, userEnv(bin));
  }, 600_000);

  it('packs the API, the CLI, the native sources and the prebuilt binaries, and no tests', () => {
    for (const f of ['package/dist/index.js', 'package/dist/index.d.ts', 'package/bin/sdlab.mjs', 'package/src/cli.ts', 'package/native/src/gemm.cc',
      'package/native/binding.gyp', 'package/native/build.mjs', `package/native/prebuilds/${ARCH}/${PREBUILT}`]) expect(contents).toContain(f);
    // The other Linux arch too, wherever its cross compiler is installed (CI installs it).
    if (haveCross || process.env.CI) expect(contents).toContain(`package/native/prebuilds/linux-${crossArch}/${PREBUILT}`);
    expect(contents.filter((f) => /^package\/(test|bench|notebooks|native\/build)\//.test(f))).toEqual([]);
  });

  it('the project PATH has no compiler, make or python (so nothing could have been compiled)', () => {
    const r = spawnSync('sh', ['-c', 'for c in g++ c++ gcc cc clang clang++ make python3; do command -v $c; done; true'], { env: userEnv(bin), encoding: 'utf8' });
    expect(r.stdout.trim()).toBe('');
  });

  it('installs into an empty project and compiles nothing', () => {
    expect(install.status, install.out).toBe(0);
    const pkg = path.join(project, 'node_modules/sdlab');
    expect(existsSync(path.join(pkg, 'package.json'))).toBe(true);
    expect(existsSync(path.join(pkg, 'native/build'))).toBe(false);
  });

  it("the install script, run (npm rebuild --foreground-scripts), takes the prebuilt binary instead of compiling", async () => {
    const r = await run('npm', ['rebuild', 'sdlab', '--foreground-scripts'], project, userEnv(bin));
    expect(r.status, r.out).toBe(0);
    expect(r.out).toContain(`sdlab: using the prebuilt native CPU backend (native/prebuilds/${ARCH}/${PREBUILT}`);
    expect(existsSync(path.join(project, 'node_modules/sdlab/native/build'))).toBe(false);
  }, 120_000);

  it('`sdlab doctor` and the library API run on the native backend, loaded from the prebuilt binary', async () => {
    const doctor = await run('node', ['node_modules/sdlab/bin/sdlab.mjs', 'doctor'], project, userEnv(bin));
    expect(doctor.status, doctor.out).toBe(0);
    expect(doctor.out).toMatch(/^backend: +native/m);
    expect(doctor.out).toMatch(new RegExp(`^native: +kernels \\S+, prebuilt \\S*node_modules/sdlab/native/prebuilds/${ARCH}/${PREBUILT.replace(/\./g, '\\.')}$`, 'm'));
    writeFileSync(path.join(project, 'try.mjs'), `
      import * as tf from '@tensorflow/tfjs';
      import { useBackend } from 'sdlab';
      const sel = await useBackend();
      const a = tf.tensor2d([[1, 2, 3], [4, 5, 6]]), b = tf.tensor2d([[7, 8], [9, 10], [11, 12]]);
      console.log(JSON.stringify({ backend: tf.getBackend(), selected: sel.name, product: await tf.matMul(a, b).array() }));
    `);
    const api = await run('node', ['try.mjs'], project, userEnv(bin));
    expect(api.status, api.out).toBe(0);
    expect(JSON.parse(api.out.trim().split('\n').pop()!)).toEqual({ backend: 'native', selected: 'native', product: [[58, 64], [139, 154]] });
  }, 120_000);
});

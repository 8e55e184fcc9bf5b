/**
 * The CLI's edge: every bad output location, input file and size is one line on stderr and exit
 * code 2 — before any model or data is loaded, with nothing written or replaced — and failures of
 * the machine (a full disk, a read-only directory, an allocation too large) are one line too.
 *
 * The CLI cases run the real launcher (bin/sdlab.mjs) in child processes with a time limit, so a
 * case that used to hang (a FIFO as a weights file, --out under /proc) fails instead of hanging;
 * the same check for each other command runs main() in this process (cheaper than a launcher each).
 * The disk-full cases run in this process: fs calls are made to fail with ENOSPC part-way through
 * a write, and the previous file must survive intact with no temporary file left behind.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { type CliResult, cliAsync } from './helpers/cli-run.ts';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { UsageError, errorLine } from '../src/util/errors.ts';
import { checkOutputDir, makeDirs, writeFileAtomic, writeFileAtomicSync } from '../src/util/fs.ts';
import { readSafetensors, writeSafetensors } from '../src/io/safetensors.ts';
import { writeConfig } from '../src/io/config.ts';
import { VAE_PRESETS } from '../src/autoencoder/config.ts';
import { WordTokenizer } from '../src/clip/tokenizer_word.ts';
import { MAX_GENERATED_SIDE } from '../src/util/limits.ts';
import { main } from '../src/cli.ts';

const ROOT = path.resolve(__dirname, '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-cli-errors-'));
process.env.SDLAB_BACKEND = 'cpu'; // for the in-process cases (the children get it too)

/** Runs the launcher with `args` (cwd ROOT unless given), killed after `timeoutMs`. */
const cli = (args: string[], opts: { cwd?: string; timeoutMs?: number } = {}) => cliAsync(args, { backend: 'cpu', timeoutMs: 60_000, ...opts });

/** main() (src/cli.ts) in this process, with what it writes to stderr. */
async function inProcess(args: string[]): Promise<CliResult> {
  const chunks: string[] = [];
  const spy = vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => {
    chunks.push(String(s));
    return true;
  });
  const saved = process.exitCode;
  process.exitCode = undefined;
  try {
    await main(['node', 'sdlab', ...args]);
    return { code: Number(process.exitCode ?? 0), signal: null, stdout: '', stderr: chunks.join('') };
  } catch (err) {
    return { code: null, signal: null, stdout: '', stderr: `${chunks.join('')}${(err as Error).stack}` };
  } finally {
    spy.mockRestore();
    process.exitCode = saved;
  }
}

/** Every file and directory under `dir` with its size and modification time. */
function snapshot(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      const st = fs.lstatSync(p);
      out.push(`${path.relative(dir, p)} ${e.isDirectory() ? 'dir' : st.size} ${st.mtimeMs}`);
      if (e.isDirectory() && (st.mode & 0o500) === 0o500) walk(p);
    }
  };
  walk(dir);
  return out.sort();
}

/** The one-line contract: exit 2, exactly one line on stderr matching `pattern`, no stack trace. */
function expectOneLine(r: CliResult, pattern: RegExp, label: string): void {
  expect(r.signal, `${label}: killed (it hung)`).toBeNull();
  expect(r.code, `${label}: ${r.stderr}`).toBe(2);
  const lines = r.stderr.split('\n').filter((l) => l.trim());
  expect(lines, label).toHaveLength(1);
  expect(lines[0], label).toMatch(/^sdlab: error: /);
  expect(lines[0], label).toMatch(pattern);
  expect(r.stderr, label).not.toMatch(/\n\s+at /);
}

// ---------------------------------------------------------------------------------------------
// Inputs on disk for the CLI cases

const aFile = path.join(tmp, 'a-file.txt');
fs.writeFileSync(aFile, 'not a directory\n');
const latents = path.join(tmp, 'lat.safetensors');
writeSafetensors(latents, { latents: { shape: [1, 4, 8, 8], data: new Float32Array(256) } });
const emptyLatents = path.join(tmp, 'empty.safetensors');
writeSafetensors(emptyLatents, { latents: { shape: [0, 4, 8, 8], data: new Float32Array(0) } });
const dirAsLatents = path.join(tmp, 'dir.safetensors');
fs.mkdirSync(dirAsLatents);
/** A VAE directory with a valid config.json and `weights` (a directory or a FIFO) as its weights. */
function vaeDir(name: string, weights: 'dir' | 'fifo', configFifo = false): string {
  const d = path.join(tmp, name);
  fs.mkdirSync(d);
  if (configFifo) mkfifo(path.join(d, 'config.json'));
  else writeConfig(path.join(d, 'config.json'), 'AutoencoderKL', VAE_PRESETS.mnist);
  const w = path.join(d, 'diffusion_pytorch_model.safetensors');
  if (weights === 'dir') fs.mkdirSync(w);
  else mkfifo(w);
  return d;
}
function mkfifo(file: string): void {
  const r = spawnSync('mkfifo', [file]);
  if (r.status !== 0) throw new Error(`mkfifo ${file} failed`);
}
const vaeWithDirWeights = vaeDir('vae-dir-weights', 'dir');
// mkfifo is coreutils (every Debian has it): a machine without it fails here rather than skipping the FIFO cases.
const fifoPaths = { weights: vaeDir('vae-fifo-weights', 'fifo'), config: vaeDir('vae-fifo-config', 'dir', true), png: path.join(tmp, 'fifo.png') };
mkfifo(fifoPaths.png);

/** A directory this process cannot write in (chmod 555; as root, which ignores modes, /sys), or null. */
function unwritableDir(): { dir: string; why: string } | null {
  const ro = path.join(tmp, 'read-only');
  fs.mkdirSync(ro);
  fs.chmodSync(ro, 0o555);
  const canWrite = (d: string) => {
    try {
      fs.closeSync(fs.openSync(path.join(d, `.probe-${process.pid}`), 'wx'));
      fs.rmSync(path.join(d, `.probe-${process.pid}`), { force: true });
      return true;
    } catch {
      return false;
    }
  };
  if (!canWrite(ro)) return { dir: ro, why: 'chmod 555' };
  // Running as root (process.getuid?.() === 0): modes do not stop it; sysfs refuses new files.
  if (fs.existsSync('/sys') && !canWrite('/sys')) return { dir: '/sys', why: 'root: /sys' };
  return null;
}
const readOnly = unwritableDir();

// ---------------------------------------------------------------------------------------------

describe('outputs are checked before any work: one line, exit 2, nothing written', () => {
  const out = (name: string) => path.join(tmp, 'outs', name);

  // The launcher in a child process: the cases of issue 15 (the ones that loaded models, or hung,
  // before failing).
  const childCases: Array<[string, string[], RegExp]> = [
    ['sample, --out is a file', ['sample', '--out', aFile, '--n', '2', '--digits', '1', '--steps', '2'], /--out .*a-file\.txt: is a file, not a directory/],
    ['train vae, --run is a file', ['train', 'vae', '--run', aFile, '--steps', '2'], /--run .*a-file\.txt: is a file, not a directory/],
    ['txt2img 4096×4096', ['txt2img', '--model', path.join(tmp, 'no-model'), '--prompt', 'a cat', '--height', '4096', '--width', '4096', '--out', out('t2i')], new RegExp(`--height: expected an integer in \\[8, ${MAX_GENERATED_SIDE}\\] pixels, got 4096`)],
  ];
  it.each(childCases)('%s', async (label, args, pattern) => {
    const before = snapshot(tmp);
    const fileBefore = fs.readFileSync(aFile, 'utf8');
    expectOneLine(await cli(args), pattern, label);
    expect(snapshot(tmp), `${label}: something was written`).toEqual(before);
    expect(fs.readFileSync(aFile, 'utf8')).toBe(fileBefore);
  });

  // Every other command that writes, through the same main() in this process (a child process
  // each would cost seconds of start-up apiece).
  const inProcessCases: Array<[string, string[], RegExp]> = [
    ['sample, --out under a file', ['sample', '--out', path.join(aFile, 'x'), '--n', '2'], /--out .*a-file\.txt\/x: .*a-file\.txt is a file, not a directory/],
    ['train clip', ['train', 'clip', '--run', aFile, '--steps', '2'], /--run .*: is a file/],
    ['train unet', ['train', 'unet', '--run', aFile, '--steps', '2'], /--run .*: is a file/],
    ['train all', ['train', 'all', '--run', aFile, '--preset', 'tiny'], /--run .*: is a file/],
    ['noise', ['noise', '--out', aFile], /--out .*: is a file/],
    ['encode', ['encode', path.join(tmp, 'missing.png'), '--out', aFile], /--out .*: is a file/],
    ['decode', ['decode', latents, '--out', aFile], /--out .*: is a file/],
    ['interpolate', ['interpolate', '--out', aFile], /--out .*: is a file/],
    ['txt2img', ['txt2img', '--model', path.join(tmp, 'no-model'), '--prompt', 'a cat', '--out', aFile], /--out .*: is a file/],
    ['eval', ['eval', '--samples', latents, '--run', tmp, '--out', aFile], /--out .*: is a file/],
    ['clip-eval', ['clip-eval', '--run', tmp, '--out', aFile], /--out .*: is a file/],
  ];
  it.each(inProcessCases)('%s (in process)', async (label, args, pattern) => {
    const before = snapshot(tmp);
    expectOneLine(await inProcess(args), pattern, label);
    expect(snapshot(tmp), `${label}: something was written`).toEqual(before);
  });

  it('--out "" is refused (it used to write into the current directory)', async () => {
    const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'sdlab-cli-cwd-'));
    expectOneLine(await cli(['sample', '--out', '', '--n', '1'], { cwd }), /--out: empty path/, 'empty --out');
    expect(fs.readdirSync(cwd)).toEqual([]);
  });

  it.skipIf(!fs.existsSync('/proc/self'))('--out /proc/x ends at once (a recursive mkdir there used to loop forever)', async () => {
    const r = await cli(['noise', '--out', '/proc/sdlab-x/y'], { timeoutMs: 60_000 });
    expectOneLine(r, /--out \/proc\/sdlab-x\/y: cannot create files in \/proc \(ENOENT/, '/proc');
  });

  it.skipIf(!readOnly)(`a directory that cannot be written is refused before any work${readOnly ? ` (${readOnly.why})` : ' (skipped: running as root and no read-only directory found)'}`, async () => {
    const before = snapshot(tmp);
    const r = await cli(['sample', '--out', path.join(readOnly!.dir, 'sub'), '--n', '1']);
    expectOneLine(r, /--out .*sub: cannot create files in .* \((EACCES|EPERM|EROFS)/, 'read-only --out');
    expect(snapshot(tmp)).toEqual(before);
  });
});

describe('inputs that are not regular files, and empty latents: one line, exit 2, never a hang', () => {
  // [label, args, expected line, run in a child process (anything that could block: a FIFO)]
  const cases: Array<[string, () => string[], RegExp, boolean]> = [
    ['a directory as the latents file (EISDIR)', () => ['decode', dirAsLatents, '--out', path.join(tmp, 'outs', 'd1')], /dir\.safetensors: is a directory; expected a safetensors file/, false],
    ['latents with batch 0', () => ['decode', emptyLatents, '--out', path.join(tmp, 'outs', 'd3')], /empty\.safetensors: latents \[0, 4, 8, 8\] are empty/, false],
    ['a directory as the VAE weights (EISDIR)', () => ['decode', latents, '--vae', vaeWithDirWeights, '--out', path.join(tmp, 'outs', 'd2')], /diffusion_pytorch_model\.safetensors: is a directory; expected a safetensors file/, true],
    ['a FIFO as the VAE weights', () => ['decode', latents, '--vae', fifoPaths.weights, '--out', path.join(tmp, 'outs', 'd4')], /diffusion_pytorch_model\.safetensors: not a regular file \(a FIFO/, true],
    ['a FIFO as the VAE config.json', () => ['decode', latents, '--vae', fifoPaths.config, '--out', path.join(tmp, 'outs', 'd5')], /config\.json: not a regular file \(a FIFO/, true],
    ['a FIFO as a PNG to encode', () => ['encode', fifoPaths.png, '--out', path.join(tmp, 'outs', 'e1')], /fifo\.png: not a regular file \(a FIFO/, true],
  ];

  it.each(cases)('%s', async (label, args, pattern, child) => {
    const before = snapshot(tmp);
    expectOneLine(child ? await cli(args(), { timeoutMs: 60_000 }) : await inProcess(args()), pattern, label);
    expect(snapshot(tmp), `${label}: something was written`).toEqual(before);
  });

});

// ---------------------------------------------------------------------------------------------
// In process: the mapping at the CLI's edge, and writes that fail part-way

describe('errorLine: one line for input and machine errors, null (a stack trace) for bugs', () => {
  const sysErr = (code: string, syscall: string, p?: string) => Object.assign(new Error(`${code}: ${syscall}`), { code, syscall, ...(p ? { path: p } : {}) });

  it('file-system errors name the path, say it in words, and keep the code', () => {
    expect(errorLine(sysErr('ENOSPC', 'write', '/runs/x/state.safetensors'))).toBe('/runs/x/state.safetensors: no space left on the device (ENOSPC).');
    expect(errorLine(sysErr('EACCES', 'open', '/ro/a.png'))).toBe('/ro/a.png: permission denied (EACCES).');
    expect(errorLine(sysErr('EROFS', 'mkdir', '/mnt/ro'))).toBe('/mnt/ro: read-only file system (EROFS).');
    expect(errorLine(sysErr('ENOTDIR', 'mkdir', '/etc/passwd/x'))).toBe('/etc/passwd/x: a part of the path is not a directory (ENOTDIR).');
    expect(errorLine(sysErr('EISDIR', 'read', '/w'))).toBe('/w: is a directory, expected a file (EISDIR).');
    expect(errorLine(sysErr('EMFILE', 'open', '/f'))).toBe('/f: too many open files in this process (EMFILE).');
    expect(errorLine(sysErr('EEXIST', 'mkdir', '/d'))).toBe('/d: already exists (EEXIST).');
    expect(errorLine(sysErr('ENOSPC', 'write'))).toBe('write: no space left on the device (ENOSPC).'); // fd writes have no path
    expect(errorLine(Object.assign(sysErr('EXDEV', 'rename', '/a'), { dest: '/b' }))).toBe('/a → /b: cannot rename across file systems (EXDEV).');
  });

  it('a real errno error from fs maps too', () => {
    let err: unknown;
    try {
      fs.readFileSync(path.join(tmp, 'does-not-exist'));
    } catch (e) {
      err = e;
    }
    expect(errorLine(err)).toBe(`${path.join(tmp, 'does-not-exist')}: no such file or directory (ENOENT).`);
  });

  it('allocations too large are named; other RangeErrors and plain errors are bugs', () => {
    let big: unknown;
    try {
      new ArrayBuffer(2 ** 60);
    } catch (e) {
      big = e;
    }
    expect(big).toBeInstanceOf(RangeError);
    expect(errorLine(big)).toMatch(/^out of memory: .*\(RangeError: .*use smaller sizes\)\.$/);
    expect(errorLine(new RangeError('Invalid typed array length: 4294967296'))).toMatch(/^out of memory: Invalid typed array length/);
    expect(errorLine(new RangeError('Maximum call stack size exceeded'))).toBeNull();
    expect(errorLine(new Error('boom'))).toBeNull();
    expect(errorLine(new TypeError("Cannot read properties of undefined (reading 'x')"))).toBeNull();
    expect(errorLine(Object.assign(new Error('x'), { code: 'ERR_INVALID_ARG_TYPE' }))).toBeNull();
    expect(errorLine(new UsageError('--n: bad.'))).toBe('--n: bad.');
    expect(errorLine('a string')).toBeNull();
  });
});

describe('a full disk during a write leaves the previous file intact and no temporary file', () => {
  afterEach(() => vi.restoreAllMocks());
  const enospc = () => Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', syscall: 'write' });
  const entries = (d: string) => fs.readdirSync(d).sort();

  it('writeFileAtomic (PNGs, JSON): the write fails half-way', async () => {
    const d = fs.mkdtempSync(path.join(tmp, 'atomic-'));
    const file = path.join(d, 'grid.png');
    fs.writeFileSync(file, 'the old picture');
    const realOpen = fs.promises.open;
    vi.spyOn(fs.promises, 'open').mockImplementation(async (...args: Parameters<typeof fs.promises.open>) => {
      const h = await realOpen(...args);
      h.writeFile = async (data) => {
        await h.write(Buffer.from(data as Uint8Array).subarray(0, 3)); // some bytes land, then the disk is full
        throw enospc();
      };
      return h;
    });
    const err = await writeFileAtomic(file, new Uint8Array(1000).fill(7)).catch((e: unknown) => e);
    expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
    expect(fs.readFileSync(file, 'utf8')).toBe('the old picture');
    expect(entries(d)).toEqual(['grid.png']);
    expect(errorLine(err)).toBe('write: no space left on the device (ENOSPC).');
  });

  it('a checkpoint (writeSafetensors, streamed): the disk fills after the header', () => {
    const d = fs.mkdtempSync(path.join(tmp, 'ckpt-'));
    const file = path.join(d, 'state.safetensors');
    const old = new Float32Array(64).map((_, i) => i);
    writeSafetensors(file, { w: { shape: [64], data: old } });
    const oldBytes = fs.readFileSync(file);
    const realWrite = fs.writeSync;
    let calls = 0;
    vi.spyOn(fs, 'writeSync').mockImplementation(((...args: Parameters<typeof fs.writeSync>) => {
      if (++calls > 2) throw enospc(); // length and header written, the tensor bytes do not fit
      return (realWrite as (...a: unknown[]) => number)(...args);
    }) as typeof fs.writeSync);
    expect(() => writeSafetensors(file, { w: { shape: [64], data: new Float32Array(64).fill(-1) } })).toThrow(/ENOSPC/);
    expect(calls).toBeGreaterThan(2);
    vi.restoreAllMocks();
    expect(fs.readFileSync(file).equals(oldBytes)).toBe(true);
    expect(Array.from(readSafetensors(file).get('w')!.data)).toEqual(Array.from(old));
    expect(entries(d)).toEqual(['state.safetensors']);
  });

  it('writeFileAtomicSync and WordTokenizer.save (which now goes through it)', () => {
    const d = fs.mkdtempSync(path.join(tmp, 'tok-'));
    const tok = new WordTokenizer(['one', 'two']);
    const file = tok.save(d);
    const before = fs.readFileSync(file, 'utf8');
    vi.spyOn(fs, 'writeSync').mockImplementation(() => {
      throw enospc();
    });
    expect(() => new WordTokenizer(['one', 'two', 'three']).save(d)).toThrow(/ENOSPC/);
    expect(() => writeFileAtomicSync(path.join(d, 'other.json'), '{}')).toThrow(/ENOSPC/);
    vi.restoreAllMocks();
    expect(fs.readFileSync(file, 'utf8')).toBe(before);
    expect(entries(d)).toEqual([path.basename(file)]);
  });
});

describe('a kill during a checkpoint write never loses the previous checkpoint', () => {
  it('SIGKILL at random moments of repeated writes: the file is always one complete version', async () => {
    const d = fs.mkdtempSync(path.join(tmp, 'kill-'));
    const file = path.join(d, 'state.safetensors');
    // Two 16 MB versions written over each other in a loop until the child is killed.
    const script = `
      import { writeSafetensors } from './src/io/safetensors.ts';
      const n = 4 << 20;
      const v = [new Float32Array(n).fill(1), new Float32Array(n).fill(2)];
      writeSafetensors(${JSON.stringify(file)}, { w: { shape: [n], data: v[0] } });
      process.stdout.write('ready\\n');
      for (let i = 1; ; i++) writeSafetensors(${JSON.stringify(file)}, { w: { shape: [n], data: v[i % 2] } });
    `;
    let seed = 12345;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let k = 0; k < 5; k++) {
      const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
      await new Promise((r) => setTimeout(r, 20 + rand() * 300));
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      const w = readSafetensors(file).get('w')!.data; // a torn file would fail to parse or mix values
      expect(w.length).toBe(4 << 20);
      expect([1, 2]).toContain(w[0]);
      expect(w.every((x) => x === w[0])).toBe(true);
    }
    // A kill can leave a temporary file (never the checkpoint's name); it is ignored by readers.
    expect(fs.readdirSync(d).filter((f) => !f.endsWith('.tmp'))).toEqual(['state.safetensors']);
  }, 120_000);
});

describe('helpers in src/util/fs.ts', () => {
  it.skipIf(!fs.existsSync('/proc/self'))('makeDirs under /proc fails at once instead of looping (in a child: a loop would hang this process)', () => {
    const script = `import { makeDirs } from './src/util/fs.ts'; try { makeDirs('/proc/sdlab-x/y/z'); } catch (e) { console.log(e.code); }`;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8', timeout: 30_000, killSignal: 'SIGKILL' });
    expect(r.signal, 'it hung').toBeNull();
    expect(r.stdout.trim()).toBe('ENOENT');
    expect(() => makeDirs(path.join(aFile, 'sub'))).toThrow(/ENOTDIR/);
  });

  it('checkOutputDir creates nothing and accepts a new or existing writable directory', () => {
    const target = path.join(tmp, 'new', 'deeper');
    checkOutputDir('--out', target);
    checkOutputDir('--out', tmp);
    expect(fs.existsSync(path.join(tmp, 'new'))).toBe(false);
    expect(fs.readdirSync(tmp).filter((f) => f.startsWith('.sdlab-write-test'))).toEqual([]);
    expect(() => checkOutputDir('--run', aFile)).toThrow(UsageError);
  });
});

/**
 * File helpers: the one home of how sdlab writes files and checks the paths it is given.
 *
 * Outputs. Every output sdlab writes (pictures, weights, configs) goes through writeFileAtomic
 * (or writeStreamAtomicSync for large files): the bytes go to a temporary file in the same
 * directory, which is then renamed over the target. A rename within one directory is atomic, so
 * a reader (or a crash, a full disk, or Ctrl-C) never sees a half-written file: it sees the old
 * file or the new one, and a failed write removes its temporary file. Commands check where they
 * will write before any work (checkOutputDir: --out, --run), so a bad path is one line at once
 * instead of an error after minutes of sampling or training.
 *
 * Inputs. checkRegularFile refuses a directory or a FIFO/device where a file is expected
 * before anything opens it (opening a FIFO blocks until someone writes to it: forever).
 *
 * Directories are made by makeDirs, not fs.mkdirSync(..., { recursive: true }): Node's recursive
 * mkdir loops forever on some paths (e.g. /proc/x, where mkdir says ENOENT for a parent that
 * exists).
 */
import fs from 'node:fs';
import path from 'node:path';
import { UsageError, errnoWords } from './errors.ts';

function tempNameFor(file: string): string {
  const rand = Math.floor(Math.random() * 0x7fffffff).toString(36);
  return path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${rand}.tmp`);
}

/**
 * Creates `dir` and its missing parents, one level at a time (no loop: each missing level is
 * created once, and any failure is thrown as it is, with its code and path).
 */
export function makeDirs(dir: string): void {
  const missing: string[] = [];
  let p = path.resolve(dir);
  for (;;) {
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(p);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (st) {
      if (!st.isDirectory()) throw Object.assign(new Error(`ENOTDIR: not a directory, mkdir '${p}'`), { code: 'ENOTDIR', syscall: 'mkdir', path: p });
      break;
    }
    missing.push(p);
    const parent = path.dirname(p);
    if (parent === p) break; // the root itself is missing: mkdir below says why
    p = parent;
  }
  for (const d of missing.reverse()) {
    try {
      fs.mkdirSync(d);
    } catch (err) {
      // Another process may have made it since we looked.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || !fs.statSync(d).isDirectory()) throw err;
    }
  }
}

/** Writes `data` to `file` atomically, creating parent directories as needed. */
export async function writeFileAtomic(file: string, data: Uint8Array | string): Promise<void> {
  makeDirs(path.dirname(path.resolve(file)));
  const tmp = tempNameFor(file);
  let handle: fs.promises.FileHandle | undefined;
  try {
    handle = await fs.promises.open(tmp, 'w');
    await handle.writeFile(data);
    // Flush to disk before the rename, so a power cut cannot leave the new name with no bytes.
    await handle.sync();
    await handle.close();
    handle = undefined;
    await fs.promises.rename(tmp, file);
  } catch (err) {
    if (handle) await handle.close().catch(() => {});
    await fs.promises.rm(tmp, { force: true }).catch(() => {});
    throw err;
  }
}

/** Synchronous twin of writeFileAtomic, for code that cannot await. */
export function writeFileAtomicSync(file: string, data: Uint8Array | string): void {
  writeStreamAtomicSync(file, (write) => write(typeof data === 'string' ? Buffer.from(data, 'utf8') : data));
}

/**
 * Streams chunks into a temporary file next to `file`, fsyncs, then renames it over `file`:
 * writeFileAtomic without holding the whole file in memory (multi-GB weights, checkpoints).
 */
export function writeStreamAtomicSync(file: string, produce: (write: (chunk: Uint8Array) => void) => void): void {
  makeDirs(path.dirname(path.resolve(file)));
  const tmp = tempNameFor(file);
  let fd: number | undefined = fs.openSync(tmp, 'w');
  try {
    produce((chunk) => {
      let done = 0;
      while (done < chunk.length) done += fs.writeSync(fd!, chunk, done, chunk.length - done);
    });
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, file);
  } catch (err) {
    // Clean up without hiding the error that got us here.
    try {
      if (fd !== undefined) fs.closeSync(fd);
    } catch {
      /* already failing */
    }
    try {
      fs.rmSync(tmp, { force: true });
    } catch {
      /* already failing */
    }
    throw err;
  }
}

/**
 * Checks, before any work, that the directory `dir` (given by `flag`, e.g. "--out") can be
 * written: not empty, no part of it a file, and — by creating and removing a temporary file in
 * it, or in its nearest existing parent when it does not exist yet — writable by this process
 * (permissions, read-only mounts, /proc). Creates nothing that stays. Throws a UsageError
 * naming the flag.
 */
export function checkOutputDir(flag: string, dir: string): void {
  if (dir.trim() === '') throw new UsageError(`${flag}: empty path; give a directory to write to.`);
  const what = `${flag} ${dir}`;
  // The nearest part of the path that exists must be a directory.
  let p = path.resolve(dir);
  for (;;) {
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(p);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOTDIR') {
        // A parent is a file: go up and report that parent below.
      } else if (code !== 'ENOENT') {
        throw new UsageError(`${what}: cannot use ${p} (${code ?? String(err)}).`);
      } else if (isDanglingLink(p)) {
        throw new UsageError(`${what}: ${p} is a symbolic link to nothing; expected a directory.`);
      }
    }
    if (st) {
      if (!st.isDirectory()) {
        throw new UsageError(p === path.resolve(dir) ? `${what}: is a file, not a directory.` : `${what}: ${p} is a file, not a directory.`);
      }
      break;
    }
    const parent = path.dirname(p);
    if (parent === p) throw new UsageError(`${what}: no part of the path exists.`);
    p = parent;
  }
  // Permissions are not enough to know (root, read-only mounts, ACLs, /proc): try it.
  const probe = path.join(p, `.sdlab-write-test.${process.pid}.${Math.floor(Math.random() * 0x7fffffff).toString(36)}`);
  try {
    fs.closeSync(fs.openSync(probe, 'wx'));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new UsageError(`${what}: cannot create files in ${p} (${code}: ${errnoWords(code)}).`);
  }
  fs.rmSync(probe, { force: true });
}

function isDanglingLink(p: string): boolean {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

/**
 * Throws a UsageError if `file` exists but is not a regular file — a directory, or a FIFO,
 * socket or device (reading a FIFO blocks until someone writes to it). `what` says what the
 * file should be ("a safetensors file"). A missing or unreadable file is left to the caller's
 * read, which says so in its own words.
 */
export function checkRegularFile(file: string, what: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    return;
  }
  if (st.isDirectory()) throw new UsageError(`${file}: is a directory; expected ${what}.`);
  if (!st.isFile()) throw new UsageError(`${file}: not a regular file (a FIFO, socket or device); expected ${what}.`);
}

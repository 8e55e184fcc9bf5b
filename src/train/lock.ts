/**
 * One trainer per task and run directory: <run>/train/<task>/train.lock holds the pid and host
 * of the process training there. Two `sdlab train vae --run X` at once would otherwise both
 * write the same state and the last writer would win.
 *
 *   const lock = lockTask(dir, 'vae', log);   // throws a UsageError naming the holder's pid
 *   try { ... } finally { lock.release(); }
 *
 * The file is created with O_EXCL, so of two processes starting together exactly one gets it.
 * A lock whose process is gone (same host, pid not alive: a SIGKILL or a power cut) is stale:
 * it is taken over, with a note. A lock from another host cannot be checked and is respected.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { UsageError } from '../util/errors.ts';
import { makeDirs } from '../util/fs.ts';

export const LOCK_FILE = 'train.lock';

interface LockInfo {
  pid: number;
  host: string;
  started: string;
}

export interface TaskLock {
  file: string;
  /** Removes the lock file if it is still this process's. */
  release(): void;
}

/** Takes <dir>/train.lock for this process, or throws a UsageError naming the live holder. */
export function lockTask(dir: string, task: string, log: (line: string) => void): TaskLock {
  makeDirs(dir);
  const file = path.join(dir, LOCK_FILE);
  const mine: LockInfo = { pid: process.pid, host: os.hostname(), started: new Date().toISOString() };
  // Two tries: the second after removing a stale lock (another process may win that race).
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(file, JSON.stringify(mine) + '\n', { flag: 'wx' });
      return { file, release: () => releaseIfMine(file) };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const holder = readLock(file);
    if (holder && !isStale(holder)) {
      const where = holder.host === mine.host ? `pid ${holder.pid}` : `pid ${holder.pid} on host ${holder.host}`;
      throw new UsageError(`${task}: ${path.dirname(path.dirname(dir))} is being trained by ${where} (since ${holder.started}); wait for it, or stop it (Ctrl-C saves), or delete ${file} if that process is gone.`);
    }
    log(`${task}: taking over ${file} from ${holder ? `pid ${holder.pid}, which is no longer running` : 'an unreadable lock'}`);
    fs.rmSync(file, { force: true });
  }
  throw new UsageError(`${task}: could not take ${file} (another process took it first); try again.`);
}

function readLock(file: string): LockInfo | null {
  try {
    const v = JSON.parse(fs.readFileSync(file, 'utf8')) as LockInfo;
    return Number.isInteger(v.pid) && typeof v.host === 'string' ? v : null;
  } catch (err) {
    // Gone since we looked: not held. Empty or garbled (a crash while writing it): stale.
    return null;
  }
}

/** A lock is stale when it was taken on this host by a process that no longer runs. */
function isStale(l: LockInfo): boolean {
  if (l.host !== os.hostname()) return false;
  if (l.pid === process.pid) return false;
  try {
    process.kill(l.pid, 0);
    return false;
  } catch (err) {
    // EPERM: the process exists (another user's); ESRCH: it does not.
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

function releaseIfMine(file: string): void {
  const l = readLock(file);
  if (l && l.pid === process.pid && l.host === os.hostname()) fs.rmSync(file, { force: true });
}

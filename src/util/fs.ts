/**
 * File helpers. Every output sdlab writes (pictures, weights, configs) goes through
 * writeFileAtomic: the bytes go to a temporary file in the same directory, which is then
 * renamed over the target. A rename within one directory is atomic, so a reader (or a crash,
 * or Ctrl-C) never sees a half-written file: it sees the old file or the new one.
 */
import fs from 'node:fs';
import path from 'node:path';

function tempNameFor(file: string): string {
  const rand = Math.floor(Math.random() * 0x7fffffff).toString(36);
  return path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${rand}.tmp`);
}

/** Writes `data` to `file` atomically, creating parent directories as needed. */
export async function writeFileAtomic(file: string, data: Uint8Array | string): Promise<void> {
  await fs.promises.mkdir(path.dirname(path.resolve(file)), { recursive: true });
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
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  const tmp = tempNameFor(file);
  let fd: number | undefined;
  try {
    fd = fs.openSync(tmp, 'w');
    fs.writeFileSync(fd, data);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, file);
  } catch (err) {
    if (fd !== undefined) {
      try {
        fs.closeSync(fd);
      } catch {
        /* already failing */
      }
    }
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}

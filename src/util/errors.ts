/**
 * Errors that teach. A UsageError is bad input from the user (a flag, a file, a config key):
 * the CLI prints its one-line message and exits with code 2, without a stack trace. errorLine
 * gives that one line for every error that is the input's or the machine's (a full disk, a
 * read-only directory, an allocation too large), not only UsageErrors.
 */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** Throws a UsageError unless `cond` holds. */
export function check(cond: unknown, message: string): asserts cond {
  if (!cond) throw new UsageError(message);
}

/** Plain words for the errno codes file operations fail with. */
const ERRNO_WORDS: Record<string, string> = {
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
  ENOTDIR: 'a part of the path is not a directory',
  EISDIR: 'is a directory, expected a file',
  ENOENT: 'no such file or directory',
  EEXIST: 'already exists',
  EMFILE: 'too many open files in this process',
  ENFILE: 'too many open files on the system',
  ENAMETOOLONG: 'file name too long',
  ELOOP: 'too many levels of symbolic links',
  EIO: 'input/output error',
  EBUSY: 'resource busy',
  ENOTEMPTY: 'directory not empty',
  EXDEV: 'cannot rename across file systems',
  EFBIG: 'file too large',
  ENXIO: 'no such device or address',
  ENODEV: 'no such device',
};

/** Plain words for an errno code ("ENOSPC" → "no space left on the device"). */
export function errnoWords(code: string): string {
  return ERRNO_WORDS[code] ?? 'system error';
}

/** V8's messages for an allocation that cannot be made (a typed array, string or buffer too large). */
const ALLOCATION_FAILURE = /allocation failed|invalid (typed )?array length|invalid string length|array buffer|out of memory/i;

/**
 * The one line the CLI prints (after "sdlab: error: ") for an error that is the user's input or
 * the machine's state rather than a bug, or null for anything else (which keeps its stack trace):
 *   - a UsageError: its message;
 *   - a failed system call (an ErrnoException with an errno code: a full disk, a read-only or
 *     missing directory, too many open files, ...): "<path>: <plain words> (<code>)";
 *   - a RangeError from an allocation too large for this machine: its message, named as such.
 */
export function errorLine(err: unknown): string | null {
  if (err instanceof UsageError) return err.message;
  if (!(err instanceof Error)) return null;
  const e = err as NodeJS.ErrnoException & { dest?: string };
  if (typeof e.code === 'string' && /^E[A-Z0-9]+$/.test(e.code) && (e.syscall !== undefined || e.path !== undefined)) {
    const where = e.path ?? e.syscall;
    const also = e.dest ? ` → ${e.dest}` : '';
    return `${where}${also}: ${errnoWords(e.code)} (${e.code}).`;
  }
  if (err instanceof RangeError && ALLOCATION_FAILURE.test(err.message)) {
    return `out of memory: ${err.message.split('\n')[0]} (RangeError: the inputs ask for more memory than one array can hold; use smaller sizes).`;
  }
  return null;
}

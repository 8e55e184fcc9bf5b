/**
 * Errors that teach. A UsageError is bad input from the user (a flag, a file, a config key):
 * the CLI prints its one-line message and exits with code 2, without a stack trace.
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

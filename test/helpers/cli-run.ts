/**
 * Runs the sdlab CLI in a child process and checks the refusal contract: exit code 2, exactly
 * one line on stderr ("sdlab: error: ...", or commander's "error: option ..." for a flag value
 * its parser refused), no stack trace.
 */
import { execFile, spawnSync } from 'node:child_process';
import path from 'node:path';
import { expect } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../..');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  /** The signal that ended it (the timeout's SIGKILL), if one did (cliAsync only). */
  signal?: NodeJS.Signals | null;
}

/**
 * The launcher (bin/sdlab.mjs) in a child process, without blocking the test's event loop:
 * cwd the repository unless given, killed after timeoutMs (default 240 s), `backend` sets
 * SDLAB_BACKEND (default: the launcher's own choice, native when built).
 */
export function cliAsync(args: string[], opts: { cwd?: string; timeoutMs?: number; backend?: string } = {}): Promise<CliResult> {
  const env = opts.backend ? { ...process.env, SDLAB_BACKEND: opts.backend } : process.env;
  return new Promise((resolve) => {
    execFile(process.execPath, [path.join(ROOT, 'bin/sdlab.mjs'), ...args], { cwd: opts.cwd ?? ROOT, timeout: opts.timeoutMs ?? 240_000, killSignal: 'SIGKILL', env },
      (err, stdout, stderr) => {
        const e = err as (Error & { code?: number | string; signal?: NodeJS.Signals }) | null;
        resolve({ code: e ? (typeof e.code === 'number' ? e.code : null) : 0, signal: e?.signal ?? null, stdout, stderr });
      });
  });
}

export function runCli(args: string[]): CliResult {
  const r = spawnSync(process.execPath, ['bin/sdlab.mjs', ...args], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, CI: '1' }, timeout: 240_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

export function expectRefusedOneLine(r: CliResult, pattern: RegExp): void {
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '' && !/TensorFlow\.js|tfjs-node|^=+$|^Hi, looks like/.test(l));
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^(sdlab: )?error: /);
  expect(lines[0]).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at /);
  expect(r.code).toBe(2);
}

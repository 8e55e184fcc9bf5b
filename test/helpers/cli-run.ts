/**
 * Runs the sdlab CLI in a child process and checks the refusal contract: exit code 2, exactly
 * one line on stderr ("sdlab: error: ...", or commander's "error: option ..." for a flag value
 * its parser refused), no stack trace.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { expect } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../..');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
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

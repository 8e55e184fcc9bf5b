/**
 * The `sdlab` command line (commander). Each subcommand lives in src/commands/<name>.ts and
 * exports `register(program)`; this file wires them up and turns bad input — and failures of the
 * machine, such as a full disk (util/errors.ts errorLine) — into one clear line on stderr with
 * exit code 2.
 *
 *   npx sdlab --help
 */
import { Command, CommanderError } from 'commander';
import { errorLine } from './util/errors.ts';
import { commands } from './commands/index.ts';

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('sdlab')
    .description('Diffusion from scratch in TensorFlow.js: train a text-to-digit latent diffusion model, see diffusion, run Stable Diffusion 1.x.')
    .exitOverride()
    .configureOutput({ outputError: (str, write) => write(str) });
  for (const register of commands) register(program);
  // Every subcommand fails fast on unknown flags, and on exit goes through exitOverride.
  for (const cmd of program.commands) cmd.exitOverride();
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end here with code 0; usage errors were already printed.
      process.exitCode = err.exitCode === 0 ? 0 : 2;
      return;
    }
    // Bad input, a full disk, a read-only directory, an allocation too large: one line, exit 2.
    // Anything else is a bug and keeps its stack trace.
    const line = errorLine(err);
    if (line !== null) {
      process.stderr.write(`sdlab: error: ${line}\n`);
      process.exitCode = 2;
      return;
    }
    throw err;
  }
}

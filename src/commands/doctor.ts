/** `sdlab doctor`: which backend would run, versions, threads, and what the faster ones need. */
import type { Command } from 'commander';
import * as tf from '@tensorflow/tfjs';
import os from 'node:os';
import { selectBackend } from '../backend/index.ts';

export function register(program: Command): void {
  program
    .command('doctor')
    .description('print the backend sdlab would use, versions, threads, and what is missing for faster backends')
    .option('--backend <name>', 'backend to try: auto|cuda|tensorflow|native|cpu', process.env.SDLAB_BACKEND ?? 'auto')
    .action(async (opts: { backend: string }) => {
      const sel = await selectBackend(opts.backend);
      console.log(`backend:   ${sel.name} (${sel.reason})`);
      console.log(`tfjs:      ${tf.version.tfjs}`);
      console.log(`node:      ${process.version}`);
      console.log(`cpus:      ${os.cpus().length}`);
    });
}

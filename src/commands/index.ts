/** The list of subcommands; each module exports `register(program)`. Add new commands here. */
import type { Command } from 'commander';
import { register as doctor } from './doctor.ts';
import { register as noise } from './noise.ts';

export const commands: Array<(program: Command) => void> = [doctor, noise];

/** The list of subcommands; each module exports `register(program)`. Add new commands here. */
import type { Command } from 'commander';
import { register as doctor } from './doctor.ts';
import { register as noise } from './noise.ts';
import { register as train } from './train.ts';
import { register as encode } from './encode.ts';
import { register as evalCmd } from './eval.ts';
import { register as sample } from './sample.ts';
import { register as txt2img } from './txt2img.ts';
import { register as img2img } from './img2img.ts';
import { register as inpaint } from './inpaint.ts';
import { register as clipEval } from './clip_eval.ts';
import { register as checkExercise } from './check_exercise.ts';
import { register as convert } from './convert.ts';

export const commands: Array<(program: Command) => void> = [doctor, noise, train, encode, evalCmd, sample, txt2img, img2img, inpaint, convert, clipEval, checkExercise];

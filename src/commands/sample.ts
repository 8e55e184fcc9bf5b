/**
 * `sdlab sample`: digits from a run trained by sdlab (vae/ + clip/ + unet/ in --run).
 *
 *   npx sdlab sample --prompt "a handwritten 7" --n 64 --steps 50 --guidance 3 --seed 1
 *   npx sdlab sample --digits 0-9 --n 8                 # the sample sheet: one row per digit
 *   npx sdlab sample --prompt "a thick 3" --prompt "" --animate --out out/sample
 *
 * Writes a sample sheet to --out (default out/sample): one PNG per image, grid.png, samples.json
 * and, with --animate, animation.gif — src/sample/sheet.ts (writeSampleSheet) writes them and says
 * what each holds; this file parses the flags and reports. --n images per prompt; the same --seed
 * gives the same images whatever --batch is. An empty prompt samples unconditionally; words the
 * tokenizer does not know become <unk> and still sample.
 */
import type { Command } from 'commander';
import { selectBackend } from '../backend/index.ts';
import { checkOutputDir } from '../util/fs.ts';
import { float, int, oneOf } from '../util/options.ts';
import { SCHEDULER_NAMES } from '../schedule/index.ts';
import { parseDigitList } from '../sample/prompts.ts';
import { type SampleOptions, samplePrompts, writeSampleSheet } from '../sample/sheet.ts';

export function register(program: Command): void {
  program
    .command('sample')
    .description('generate digits from a trained run (PNGs + grid + samples.json; --animate for a GIF of the reverse process)')
    .option('--run <dir>', 'run directory holding vae/, clip/, unet/', 'runs/default')
    .option('--prompt <text>', 'a prompt (repeat for several; "" = unconditional)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--digits <list>', 'add one prompt "a handwritten <word>" per digit, e.g. 0-9 (the sample sheet; default when no --prompt)', parseDigitList)
    .option('--n <count>', 'images per prompt', int(1, 100_000), 8)
    .option('--steps <n>', 'denoising steps', int(1, 10_000), 50)
    .option('--scheduler <name>', `sampler: ${SCHEDULER_NAMES.join('|')}`, oneOf(SCHEDULER_NAMES), 'ddim')
    .option('--guidance <g>', 'classifier-free guidance scale (1 = conditional model only)', float(0, 100), 3)
    .option('--eta <x>', 'DDIM eta (0 = deterministic)', float(0, 1), 0)
    .option('--seed <n>', 'random seed (image k uses the stream (seed, k))', int(0), 0)
    .option('--batch <n>', 'images per UNet batch', int(1, 4096), 64)
    .option('--animate', 'also write animation.gif: x_t and the decoded x0 prediction at every step')
    .option('--out <dir>', 'output directory', 'out/sample')
    .option('--backend <name>', 'backend: auto|cuda|tensorflow|native|cpu', process.env.SDLAB_BACKEND ?? 'auto')
    .action(async (o: SampleOptions & { backend: string }) => {
      checkOutputDir('--out', o.out); // before loading the models and sampling
      const backend = await selectBackend(o.backend);
      const started = Date.now();
      const res = await writeSampleSheet(o);
      for (const note of res.notes) console.log(`note: ${note}`);
      const prompts = samplePrompts(o);
      console.log(`${res.records.length} images (${prompts.length} prompt${prompts.length > 1 ? 's' : ''} × ${o.n}), ${res.width}x${res.height}, ${o.scheduler} ${o.steps} steps, guidance ${o.guidance}, seed ${o.seed}, backend ${backend.name}, ${((Date.now() - started) / 1000).toFixed(1)} s`);
      console.log(`wrote ${res.files.images.length} PNGs to ${o.out}`);
      console.log(`wrote ${res.files.grid}`);
      console.log(`wrote ${res.files.json}`);
      if (res.files.gif) console.log(`wrote ${res.files.gif}`);
    });
}

/**
 * `sdlab sample`: digits from a run trained by sdlab (vae/ + clip/ + unet/ in --run).
 *
 *   npx sdlab sample --digits 0-9 --n 8                 # the sample sheet: one row per digit, the run's own settings
 *   npx sdlab sample --prompt "a handwritten 7" --n 64 --steps 25 --guidance 3 --seed 1
 *   npx sdlab sample --prompt "a thick 3" --prompt "" --animate --out out/sample
 *
 * Writes a sample sheet to --out (default out/sample): one PNG per image, grid.png, samples.json
 * and, with --animate, animation.gif — src/sample/sheet.ts (writeSampleSheet) writes them and says
 * what each holds; this file parses the flags and reports. The sampler, steps, guidance and eta
 * default to the run's own (<run>/sampling_config.json, written by training; src/sample/settings.ts)
 * and the first line says which were used and where each came from. Digits are written at the
 * data's own size (28×28), or the VAE's canvas with --canvas padded. --n images per prompt; the same --seed
 * gives the same images whatever --batch is. An empty prompt samples unconditionally; words the
 * tokenizer does not know become <unk> and still sample.
 */
import type { Command } from 'commander';
import { selectBackend, BACKEND_HELP } from '../backend/index.ts';
import { checkOutputDir } from '../util/fs.ts';
import { float, int, oneOf } from '../util/options.ts';
import { SCHEDULER_NAMES } from '../schedule/index.ts';
import { parseDigitList } from '../sample/prompts.ts';
import { type SampleOptions, samplePrompts, writeSampleSheet } from '../sample/sheet.ts';
import { SAMPLING_CONFIG_FILE, SAMPLING_DEFAULTS, describeSampling, parseGuidanceInterval } from '../sample/settings.ts';
import { CANVAS_MODES } from '../data/canvas.ts';

export function register(program: Command): void {
  program
    .command('sample')
    .description('generate digits from a trained run (PNGs + grid + samples.json; --animate for a GIF of the reverse process)')
    .option('--run <dir>', 'run directory holding vae/, clip/, unet/', 'runs/default')
    .option('--prompt <text>', 'a prompt (repeat for several; "" = unconditional)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--digits <list>', 'add one prompt "a handwritten <word>" per digit, e.g. 0-9 (default when no --prompt: one row per class the run was trained on, or the digits 0-9)', parseDigitList)
    .option('--n <count>', 'images per prompt', int(1, 100_000), 8)
    .option('--steps <n>', `denoising steps (default: the run's ${SAMPLING_CONFIG_FILE}, else ${SAMPLING_DEFAULTS.steps})`, int(1, 10_000))
    .option('--scheduler <name>', `sampler: ${SCHEDULER_NAMES.join('|')} (default: the run's, else ${SAMPLING_DEFAULTS.scheduler})`, oneOf(SCHEDULER_NAMES))
    .option('--guidance <g>', `classifier-free guidance scale, 1 = conditional model only (default: the run's, else ${SAMPLING_DEFAULTS.guidance})`, float(0, 100))
    .option('--eta <x>', `DDIM eta, 0 = deterministic (default: the run's, else ${SAMPLING_DEFAULTS.eta})`, float(0, 1))
    .option('--guidance-interval <lo,hi>', 'guide only at train timesteps lo..hi (the conditional model alone elsewhere), or "all" (default: the run\'s, else all)', parseGuidanceInterval)
    .option('--canvas <size>', "native: the data's own size (28×28 digits) | padded: the VAE's canvas (32×32)", oneOf(CANVAS_MODES), 'native')
    .option('--seed <n>', 'random seed (image k uses the stream (seed, k))', int(0), 0)
    .option('--batch <n>', 'images per UNet batch', int(1, 4096), 64)
    .option('--animate', 'also write animation.gif: x_t and the decoded x0 prediction at every step')
    .option('--out <dir>', 'output directory', 'out/sample')
    .option('--backend <name>', BACKEND_HELP, process.env.SDLAB_BACKEND ?? 'auto')
    .action(async (o: SampleOptions & { backend: string }) => {
      checkOutputDir('--out', o.out); // before loading the models and sampling
      const backend = await selectBackend(o.backend);
      const started = Date.now();
      const res = await writeSampleSheet(o);
      for (const note of res.notes) console.log(`note: ${note}`);
      const prompts = samplePrompts(o);
      console.log(`sampling: ${describeSampling(res.sampling)}`);
      console.log(`${res.records.length} images (${prompts.length} prompt${prompts.length > 1 ? 's' : ''} × ${o.n}), ${res.width}x${res.height}, seed ${o.seed}, backend ${backend.name}, ${((Date.now() - started) / 1000).toFixed(1)} s`);
      console.log(`wrote ${res.files.images.length} PNGs to ${o.out}`);
      console.log(`wrote ${res.files.grid}`);
      console.log(`wrote ${res.files.json}`);
      if (res.files.gif) console.log(`wrote ${res.files.gif}`);
    });
}

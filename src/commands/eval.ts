/**
 * `sdlab eval`: score generated digits with sdlab's own digit classifier.
 *
 *   npx sdlab eval                                              # samples 100 per digit at the run's own settings, then scores them
 *   npx sdlab eval --run runs/default --samples out/sample          # a directory with samples.json
 *   npx sdlab eval --run runs/default --samples samples.safetensors --n-real 1000 --out out/eval
 *   npx sdlab eval --samples out/sample --sanity                    # + the metric on real, blurred, noisy, repeated digits
 *
 * Reports (a) conditional accuracy: the share of samples classified as the digit their prompt
 * asked for, per digit and overall; (b) FID on three layers of the classifier against held-out
 * real digits (src/eval/features.ts), beside the real-vs-real baseline at the same set size, and
 * the near-duplicate rate of samples and real digits; (c) the class histogram (mode collapse).
 * --sanity adds the same numbers for sets with known answers (src/eval/sanity.ts). Writes
 * eval.json, histogram.png and misclassified.png to --out.
 *
 * Without --samples it first draws them: --n per digit ("a handwritten <digit>") with the run's
 * own sampling settings (<run>/sampling_config.json; --steps, --scheduler, --guidance, --eta
 * override) into <out>/samples, and says which settings it used and where they came from.
 *
 * The classifier is trained once per run directory (runs/<run>/classifier/; 8 epochs on the 9,000
 * embedded training digits took 24 min with the native backend on 2 busy cores, reaching 98.9%
 * on the 1,000 held-out digits) on the training split, and reused afterwards. The samples format
 * (samples.json = [{file, prompt, digit}], or safetensors images + digits) is described in
 * src/eval/samples.ts.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { selectBackend, BACKEND_HELP } from '../backend/index.ts';
import { check } from '../util/errors.ts';
import { checkOutputDir } from '../util/fs.ts';
import { float, int, oneOf } from '../util/options.ts';
import { runEval, formatReport } from '../eval/evaluate.ts';
import { formatSanityTable } from '../eval/sanity.ts';
import { SCHEDULER_NAMES } from '../schedule/index.ts';
import { writeSampleSheet } from '../sample/sheet.ts';
import { SAMPLING_DEFAULTS, SAMPLING_FLAGS, type SamplingSettings, parseGuidanceInterval, describeSampling, formatSampling, readSamplingConfig, samplingConfigPath } from '../sample/settings.ts';

interface EvalCliOptions {
  run: string;
  samples?: string;
  out: string;
  nReal?: number;
  seed: number;
  data?: string;
  epochs: number;
  retrain?: boolean;
  sanity?: boolean;
  n: number;
  steps?: number;
  scheduler?: SamplingSettings['scheduler'];
  guidance?: number;
  eta?: number;
  guidanceInterval?: [number, number] | null;
  batch: number;
  backend: string;
}

export function register(program: Command): void {
  program
    .command('eval')
    .description('score generated digits: conditional accuracy, FID vs held-out real digits (with its real-vs-real baseline), near-duplicates, class histogram; without --samples, draws them first at the run\'s own sampling settings')
    .option('--run <dir>', 'run directory (the classifier is trained once into <dir>/classifier/)', 'runs/default')
    .option('--samples <path>', 'generated samples: a directory of PNGs with samples.json, or a .safetensors file (images, digits); default: draw --n per digit now')
    .option('--out <dir>', 'output directory', 'out/eval')
    .option('--n-real <count>', 'held-out real digits to use (split into two halves for FID; default: all)', int(4))
    .option('--seed <n>', 'seed for picking the FID sets (and for drawing samples)', int(0), 0)
    .option('--data <dir>', 'directory of MNIST-style IDX files (default: the embedded MNIST digits)')
    .option('--epochs <count>', 'classifier training epochs, when it has to be trained', int(1, 1000), 8)
    .option('--retrain', 'train the classifier again even if the run has one')
    .option('--sanity', 'also score real held-out digits and degraded copies (blur, noise, repeats, one class, the VAE round trip): how far to trust the metric')
    .option('--n <count>', 'without --samples: images per digit to draw', int(1, 100_000), 100)
    .option('--steps <n>', `without --samples: denoising steps (default: the run's ${path.basename(samplingConfigPath('.'))}, else ${SAMPLING_DEFAULTS.steps})`, int(1, 10_000))
    .option('--scheduler <name>', `without --samples: sampler ${SCHEDULER_NAMES.join('|')} (default: the run's, else ${SAMPLING_DEFAULTS.scheduler})`, oneOf(SCHEDULER_NAMES))
    .option('--guidance <g>', `without --samples: guidance scale (default: the run's, else ${SAMPLING_DEFAULTS.guidance})`, float(0, 100))
    .option('--eta <x>', `without --samples: DDIM eta (default: the run's, else ${SAMPLING_DEFAULTS.eta})`, float(0, 1))
    .option('--guidance-interval <lo,hi>', "without --samples: guide only at train timesteps lo..hi, or \"all\" (default: the run's, else all)", parseGuidanceInterval)
    .option('--batch <n>', 'without --samples: images per UNet batch', int(1, 4096), 100)
    .option('--backend <name>', BACKEND_HELP, process.env.SDLAB_BACKEND ?? 'auto')
    .action(async (o: EvalCliOptions) => {
      check(fs.existsSync(o.run) && fs.statSync(o.run).isDirectory(), `--run ${o.run}: no such run directory (train a model first, or pass --run DIR).`);
      checkOutputDir('--out', o.out);
      const samplingFlags = (['steps', 'scheduler', 'guidance', 'eta', 'guidanceInterval'] as const).filter((k) => o[k] !== undefined);
      if (o.samples && samplingFlags.length) {
        check(false, `${SAMPLING_FLAGS[samplingFlags[0]]}: only for drawing samples; with --samples the images are already drawn (drop --samples to draw them now).`);
      }
      // A bad sampling_config.json is one line before any work.
      const stored = readSamplingConfig(o.run);
      const sel = await selectBackend(o.backend);
      let samples = o.samples;
      if (!samples) {
        samples = path.join(o.out, 'samples');
        const res = await writeSampleSheet({
          run: o.run, digits: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], n: o.n, seed: o.seed, out: samples, batch: o.batch,
          steps: o.steps, scheduler: o.scheduler, guidance: o.guidance, eta: o.eta, guidanceInterval: o.guidanceInterval,
        });
        for (const note of res.notes) console.log(`note: ${note}`);
        console.log(`sampled ${res.records.length} digits (${o.n} per digit, ${res.width}×${res.height}) into ${samples}: ${describeSampling(res.sampling)}`);
      }
      const res = await runEval({
        run: o.run, samples, out: o.out, nReal: o.nReal, seed: o.seed, data: o.data,
        epochs: o.epochs, retrain: o.retrain, backend: sel.name, sanity: o.sanity,
      });
      if (o.samples) {
        const s = res.sampling;
        if (s && s !== 'mixed') {
          console.log(`samples drawn with ${formatSampling({ ...s, scheduler: s.scheduler as SamplingSettings['scheduler'] })} (${path.join(o.samples, 'samples.json')})`);
          const differs = (['scheduler', 'steps', 'guidance', 'eta', 'guidanceInterval'] as const).filter((k) => stored && String(stored[k]) !== String(s[k]));
          if (stored && differs.length) console.log(`note: the run samples itself with ${formatSampling(stored)} (${samplingConfigPath(o.run)}); these samples differ in ${differs.join(', ')}.`);
        } else {
          console.log(`samples: ${s === 'mixed' ? 'drawn with mixed settings' : 'their sampling settings are not recorded'} (${o.samples})`);
        }
      }
      const t = res.classifier.training;
      console.log(`classifier: ${res.classifier.dir} (held-out accuracy ${(t.val_accuracy * 100).toFixed(2)}%, ${res.classifier.trainedNow ? `trained now in ${t.seconds.toFixed(0)} s` : 'cached'})`);
      console.log(formatReport(res.report));
      if (res.sanity) console.log(`\n${formatSanityTable(res.sanity)}`);
      for (const f of [res.files.json, res.files.histogram, res.files.misclassified]) if (f) console.log(`wrote ${f}`);
    });
}

/**
 * `sdlab clip-eval`: how good is the run's CLIP (text encoder + image encoder)?
 *
 *   npx sdlab clip-eval                                   # runs/default/clip on the held-out digits
 *   npx sdlab clip-eval --run /tmp/clip-run --template "the digit {digit}"
 *   npx sdlab clip-eval --prompt "a thick seven" --prompt "an upside-down 3"
 *
 * Prints zero-shot digit accuracy (one prompt per digit, the most similar prompt wins; per digit
 * too), text→image retrieval recall@1/@5 with generated captions (own image, and any image of the
 * caption's digit), and writes to --out: similarity.png (captions × images, one per digit) and
 * clip_eval.json (the numbers and the confusion matrix).
 *
 * --prompt TEXT shows how the tokenizer reads TEXT (unknown words become <unk>; a prompt longer
 * than the text encoder reads is cut, with a warning) and the held-out digits nearest to it.
 * The held-out digits are the split every sdlab trainer leaves out (never trained on).
 */
import fs from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { Command } from 'commander';
import { selectBackend, BACKEND_HELP } from '../backend/index.ts';
import { CLIPModel, WORD_TOKENIZER_FILE, type Tokenizer } from '../clip/index.ts';
import { cosineSimilarity, digitPrompts, evaluateClip, formatClipReport } from '../eval/clip.ts';
import { DIGIT_WORDS } from '../data/captions.ts';
import { type Dataset, classPrompts } from '../data/index.ts';
import { chunks, imagesAt } from '../train/data.ts';
import { clipValidationSet } from '../train/clip.ts';
import { UsageError, check } from '../util/errors.ts';
import { checkOutputDir, writeFileAtomicSync } from '../util/fs.ts';
import { int } from '../util/options.ts';

interface ClipEvalCliOptions {
  run: string;
  out: string;
  limit: number;
  data?: string;
  seed: number;
  template?: string;
  prompt: string[];
  top: number;
  backend: string;
}

/** The ten zero-shot prompts: `template` with {word} → "seven" and {digit} → "7", or the default "a handwritten seven". */
export function zeroShotPrompts(template?: string): string[] {
  if (template === undefined) return digitPrompts();
  if (!/\{(word|digit)\}/.test(template)) {
    throw new UsageError(`--template: "${template}" has no {word} or {digit} placeholder (e.g. "a handwritten {word}", "the digit {digit}").`);
  }
  return DIGIT_WORDS.map((w, d) => template.replaceAll('{word}', w).replaceAll('{digit}', String(d)));
}

/** Loads <run>/clip with its word tokenizer, or says what is missing and how to get it. */
export function loadRunClip(runDir: string): CLIPModel {
  const dir = path.join(runDir, 'clip');
  const train = `npx sdlab train clip${path.normalize(runDir) === path.normalize('runs/default') ? '' : ` --run ${runDir}`}`;
  if (!fs.existsSync(path.join(dir, 'config.json'))) throw new UsageError(`${dir}/config.json not found: no trained CLIP in --run ${runDir} (train one with \`${train}\`).`);
  const model = CLIPModel.fromPretrained(dir); // a corrupt tokenizer.json or config is a one-line error there
  if (!model.tokenizer) {
    throw new UsageError(`${path.join(dir, WORD_TOKENIZER_FILE)} not found: the text encoder's vocabulary is saved there with the model; restore it or retrain with \`${train}\`.`);
  }
  return model;
}

/** Image embeddings [N, P] of every digit in `ds`, in batches (the caller disposes them). */
export function embedImages(model: CLIPModel, ds: Dataset, batchSize = 256): tf.Tensor2D {
  const parts = [...chunks(ds.n, batchSize)].map((idx) => tf.tidy(() => model.encodeImage(imagesAt(ds, idx))));
  const out = tf.concat(parts, 0);
  tf.dispose(parts);
  return out;
}

/** How the tokenizer reads `text` (unknown words shown as <unk>) and the `top` held-out digits nearest to it. */
export function describePrompt(model: CLIPModel, tok: Tokenizer, val: Dataset, imageEmbeds: tf.Tensor2D, text: string, top: number): string {
  const enc = tok.encode(text);
  const words = tok.decode ? tok.decode(enc.inputIds) : enc.inputIds.join(' ');
  const txt = tf.tidy(() => model.encodeText(tf.tensor2d([enc.inputIds], undefined, 'int32')));
  const sim = cosineSimilarity(txt, imageEmbeds);
  txt.dispose();
  const order = Array.from({ length: val.n }, (_, i) => i).sort((a, b) => sim.data[b] - sim.data[a]).slice(0, top);
  // The most frequent digit among the nearest; a tie goes to the one seen first (the nearer).
  const counts = new Map<number, number>();
  for (const i of order) counts.set(val.labels[i], (counts.get(val.labels[i]) ?? 0) + 1);
  const best = [...counts].reduce((a, b) => (b[1] > a[1] ? b : a))[0];
  return [
    `prompt "${text}"`,
    `  tokens: ${words || '(none)'}${enc.truncated ? '   (truncated)' : ''}`,
    `  nearest ${order.length} held-out digits: ${order.map((i) => val.labels[i]).join(' ')}   (mostly ${best}; cosine ${sim.data[order[0]].toFixed(3)} … ${sim.data[order[order.length - 1]].toFixed(3)})`,
  ].join('\n');
}

export function register(program: Command): void {
  program
    .command('clip-eval')
    .description("evaluate the run's CLIP: zero-shot digit accuracy, text->image recall@1/@5, similarity matrix PNG")
    .option('--run <dir>', 'run directory holding clip/', 'runs/default')
    .option('--out <dir>', 'where similarity.png and clip_eval.json go', 'out/clip-eval')
    .option('--limit <n>', 'held-out digits to evaluate on (default: all 1000)', int(1), 1000)
    .option('--data <dir>', "the run's --data: IDX files or an image folder (default: the embedded MNIST digits)")
    .option('--seed <n>', 'seed for the generated captions', int(0), 0)
    .option('--template <text>', 'zero-shot prompt with {word} (seven) or {digit} (7); default "a handwritten {word}"')
    .option('--prompt <text>', 'also show the nearest held-out digits to this text (repeatable)', (v: string, prev: string[]) => [...prev, v], [] as string[])
    .option('--top <n>', 'how many nearest digits --prompt shows', int(1, 100), 10)
    .option('--backend <name>', BACKEND_HELP, process.env.SDLAB_BACKEND ?? 'auto')
    .action(async (o: ClipEvalCliOptions) => {
      check(fs.existsSync(o.run) && fs.statSync(o.run).isDirectory(), `--run ${o.run}: no such run directory (train a CLIP first: npx sdlab train clip --run ${o.run}).`);
      checkOutputDir('--out', o.out);
      const templated = o.template === undefined ? undefined : zeroShotPrompts(o.template);
      await selectBackend(o.backend);
      const model = loadRunClip(o.run);
      const val = clipValidationSet({ data: o.data, limit: o.limit, size: model.config.image_config.sample_size });
      // Without --template: the data's own prompts ("a handwritten seven", or "a sneaker" per class).
      const prompts = templated ?? classPrompts(val);
      const png = path.join(o.out, 'similarity.png');
      const report = await evaluateClip(model, val, { limit: o.limit, seed: o.seed, prompts, similarityPng: png });
      console.log(formatClipReport(report));
      console.log(`  zero-shot prompts: ${prompts.map((p) => `"${p}"`).join(', ')}`);
      if (o.prompt.length) {
        const images = embedImages(model, val);
        for (const text of o.prompt) console.log(describePrompt(model, model.tokenizer!, val, images, text, Math.min(o.top, val.n)));
        images.dispose();
      }
      const json = path.join(o.out, 'clip_eval.json');
      writeFileAtomicSync(json, JSON.stringify({ run: o.run, prompts, ...report }, null, 1) + '\n');
      console.log(`wrote ${png}\nwrote ${json}`);
      model.dispose();
    });
}

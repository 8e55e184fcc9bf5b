/**
 * A1111's "infotext": the generation settings stored in a PNG's `parameters` text chunk, as
 * AUTOMATIC1111's web UI writes and reads them (modules/processing.py create_infotext,
 * modules/infotext_utils.py parse_generation_parameters), so sdlab's PNGs open in A1111's
 * "PNG Info" and A1111's PNGs re-run with `--from-png`:
 *
 *   a photograph of an astronaut riding a horse
 *   Negative prompt: blurry
 *   Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: v1-5-pruned, sdlab model: /models/v1-5-pruned.safetensors, sdlab scheduler: dpm++2m, ...
 *
 * The prompt (may span lines), then "Negative prompt: ..." (omitted when empty), then one line of
 * `Key: value` pairs joined by ", "; a value holding ",", ":" or a newline is JSON-quoted (A1111's
 * quote()). A1111's keys come first, sdlab's own ("sdlab ...") at the end. Parsing follows A1111:
 * the last line is the settings line only when it has at least 3 pairs; "Size: WxH" is split.
 */
import { SCHEDULER_NAMES, type SchedulerName } from '../schedule/index.ts';

/** A1111's sampler name for each sdlab scheduler (PLMS is A1111's name for PNDM). */
export const A1111_SAMPLERS: Record<SchedulerName, string> = {
  ddpm: 'DDPM',
  ddim: 'DDIM',
  pndm: 'PLMS',
  euler: 'Euler',
  euler_a: 'Euler a',
  'dpm++2m': 'DPM++ 2M',
  lcm: 'LCM',
};

/** sdlab's scheduler for an A1111 sampler name ("DPM++ 2M Karras", A1111 before 1.9, gives karras too), or null. */
export function schedulerFromA1111(sampler: string): { scheduler: SchedulerName; karras: boolean } | null {
  const karras = / Karras$/.test(sampler);
  const base = sampler.replace(/ Karras$/, '');
  const hit = SCHEDULER_NAMES.find((n) => A1111_SAMPLERS[n] === base);
  return hit ? { scheduler: hit, karras } : null;
}

/** What one image was made with. */
export interface Infotext {
  prompt: string;
  negativePrompt: string;
  /** The settings line's pairs in order (values unquoted). */
  params: Array<[string, string | number]>;
}

/** A1111's quote(): JSON-quoted when the value holds a comma, a colon or a newline. */
function quote(v: string | number): string {
  const s = String(v);
  return /[,:\n]/.test(s) ? JSON.stringify(s) : s;
}

/** The `parameters` text (A1111's layout; see the file header). */
export function formatInfotext(info: Infotext): string {
  const line = info.params.map(([k, v]) => `${k}: ${quote(v)}`).join(', ');
  const negative = info.negativePrompt ? `\nNegative prompt: ${info.negativePrompt}` : '';
  return `${info.prompt}${negative}\n${line}`.trim();
}

const IMAGE_SIZE = /^(\d+)x(\d+)$/;
const KEY = /^\w[\w \-/]+$/;

/**
 * The `Key: value` pairs of a settings line, as A1111's re_param finds them (a key of word
 * characters, spaces, "-" and "/", a colon, then a JSON string or anything up to the next comma),
 * by a linear scan: a regex with backtracking over a hostile 4 MB line would take hours.
 * Text that is no pair is skipped up to the next comma, as findall skips it.
 */
function settingsPairs(line: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  let p = 0;
  while (p < line.length) {
    const colon = line.indexOf(':', p);
    const comma = line.indexOf(',', p);
    if (colon < 0) break;
    if (comma >= 0 && comma < colon) {
      p = comma + 1;
      continue;
    }
    const key = line.slice(p, colon).trim();
    let q = colon + 1;
    while (line[q] === ' ' || line[q] === '\t') q++;
    let value: string;
    if (line[q] === '"') {
      // A JSON string: up to the first unescaped quote.
      let e = q + 1;
      while (e < line.length && line[e] !== '"') e += line[e] === '\\' ? 2 : 1;
      value = line.slice(q, e + 1);
      q = e + 1;
      const next = line.indexOf(',', q);
      // Text between the closing quote and the comma: A1111's regex would not match a quoted value there.
      if (line.slice(q, next < 0 ? line.length : next).trim() !== '') value += line.slice(q, next < 0 ? line.length : next);
      p = next < 0 ? line.length : next + 1;
    } else {
      const next = line.indexOf(',', q);
      value = line.slice(q, next < 0 ? line.length : next);
      p = next < 0 ? line.length : next + 1;
    }
    if (KEY.test(key)) out.push([key, value.trim()]);
  }
  return out;
}

export interface ParsedInfotext {
  prompt: string;
  negativePrompt: string;
  /** key → value; "Size: 512x768" becomes "Size-1" = "512" (width) and "Size-2" = "768" (height), as A1111 does. */
  params: Map<string, string>;
}

/** Parses a `parameters` text as A1111 does (parse_generation_parameters): never throws. */
export function parseInfotext(text: string): ParsedInfotext {
  const lines = text.trim().split('\n');
  let last = lines.pop() ?? '';
  if (settingsPairs(last).length < 3) {
    lines.push(last);
    last = '';
  }
  let prompt = '';
  let negativePrompt = '';
  let negative = false;
  for (let line of lines) {
    line = line.trim();
    if (line.startsWith('Negative prompt:')) {
      negative = true;
      line = line.slice(16).trim();
    }
    if (negative) negativePrompt += (negativePrompt === '' ? '' : '\n') + line;
    else prompt += (prompt === '' ? '' : '\n') + line;
  }
  const params = new Map<string, string>();
  for (const [k, raw] of settingsPairs(last)) {
    let v = raw;
    if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) {
      try {
        const parsed: unknown = JSON.parse(v);
        if (typeof parsed === 'string') v = parsed;
      } catch {
        // A1111's unquote keeps the text as it is.
      }
    }
    const size = IMAGE_SIZE.exec(v);
    if (size) {
      params.set(`${k}-1`, size[1]);
      params.set(`${k}-2`, size[2]);
    } else params.set(k, v);
  }
  return { prompt, negativePrompt, params };
}

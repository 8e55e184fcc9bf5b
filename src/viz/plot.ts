/**
 * Loss curves as PNG, drawn pixel by pixel (axes, ticks, gridlines, lines, legend) with the
 * built-in 3x5 font: no plotting library needed.
 *
 *   await saveLossCurve('runs/default/unet/loss.png', [
 *     { name: 'train', values: trainLoss },
 *     { name: 'val', values: valLoss, steps: valSteps },
 *   ], { title: 'unet loss', smooth: 0.9 });
 *
 * The y axis is logarithmic when every value is positive and they span more than a factor of 20
 * (or when logY is set).
 */
import { writeFileAtomic } from '../util/fs.ts';
import { encodePng } from './png.ts';
import { Raster, textWidth, GLYPH_HEIGHT, type RGB } from './raster.ts';

export interface Series {
  name: string;
  values: readonly number[];
  /** x positions (e.g. training steps); default 0, 1, 2, ... */
  steps?: readonly number[];
  color?: RGB;
  /** Overrides PlotOptions.smooth for this series. */
  smooth?: number;
}

export interface PlotOptions {
  width?: number;
  height?: number;
  title?: string;
  xLabel?: string;
  yLabel?: string;
  /** true/false forces a log/linear y axis; default: automatic. */
  logY?: boolean;
  /**
   * Exponential moving average factor in [0, 1); when > 0 the raw curve is drawn faint under the
   * smoothed one. Series with fewer than 20 points (e.g. validation) are never smoothed.
   */
  smooth?: number;
  fontScale?: number;
}

export const PALETTE: readonly RGB[] = [
  [31, 119, 180],
  [255, 127, 14],
  [44, 160, 44],
  [214, 39, 40],
  [148, 103, 189],
  [140, 86, 75],
];

/** Round tick positions covering [lo, hi] (1, 2, 5 x 10^k steps). */
export function niceTicks(lo: number, hi: number, target = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / target;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}

/** Short labels for tick values: 0.25, 1500, 1E-4, 2.5E6. */
export function formatTick(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e-3 && a < 1e5) return String(Number(v.toPrecision(3)));
  return v.toExponential(1).replace('.0e', 'e').replace('e+', 'e').toUpperCase();
}

function ema(values: readonly number[], beta: number): number[] {
  const out: number[] = [];
  let m = 0;
  values.forEach((v, i) => {
    m = beta * m + (1 - beta) * v;
    out.push(m / (1 - beta ** (i + 1))); // bias-corrected, so the start is not pulled to 0
  });
  return out;
}

function fade(c: RGB, amount: number): RGB {
  return [c[0] + (255 - c[0]) * amount, c[1] + (255 - c[1]) * amount, c[2] + (255 - c[2]) * amount].map(Math.round) as unknown as RGB;
}

/** Draws the loss curve(s) into a Raster. */
export function renderLossCurve(input: readonly Series[] | readonly number[], opts: PlotOptions = {}): Raster {
  const series: Series[] = typeof input[0] === 'number' || input.length === 0 ? [{ name: 'loss', values: input as number[] }] : (input as Series[]).slice();
  const W = opts.width ?? 640;
  const H = opts.height ?? 360;
  const fs = opts.fontScale ?? 2;
  const white: RGB = [255, 255, 255];
  const ink: RGB = [30, 30, 30];
  const grid: RGB = [225, 225, 225];
  const r = new Raster(W, H, white);

  // Finite points only (a NaN loss must not break the picture).
  const pts = series.map((s) => {
    const xs = s.steps ?? s.values.map((_, i) => i);
    return s.values.map((v, i) => [xs[i], v] as [number, number]).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  });
  const all = pts.flat();
  const ys = all.map((p) => p[1]);
  const xs = all.map((p) => p[0]);
  const positive = ys.length > 0 && ys.every((y) => y > 0);
  const yMin0 = ys.length ? Math.min(...ys) : 0;
  const yMax0 = ys.length ? Math.max(...ys) : 1;
  const logY = positive && (opts.logY ?? yMax0 / yMin0 > 20);
  const fy = (y: number) => (logY ? Math.log10(y) : y);
  let yLo = fy(yMin0);
  let yHi = fy(yMax0);
  if (yHi - yLo < 1e-12) {
    yLo -= 0.5;
    yHi += 0.5;
  } else {
    const m = (yHi - yLo) * 0.05;
    yLo -= m;
    yHi += m;
  }
  let xLo = xs.length ? Math.min(...xs) : 0;
  let xHi = xs.length ? Math.max(...xs) : 1;
  if (xHi - xLo < 1e-12) xHi = xLo + 1;

  const lineH = GLYPH_HEIGHT * fs;
  const left = textWidth('-0.000', fs) + 14;
  const top = 10 + (opts.title ? lineH + 8 : 0) + (opts.yLabel ? lineH + 8 : 0);
  const right = 12;
  const bottom = 2 * lineH + 22;
  const pw = W - left - right;
  const ph = H - top - bottom;
  if (pw < 20 || ph < 20) throw new Error(`renderLossCurve: ${W}x${H} is too small for a plot.`);
  const px = (x: number) => left + ((x - xLo) / (xHi - xLo)) * pw;
  const py = (y: number) => top + ph - ((fy(y) - yLo) / (yHi - yLo)) * ph;

  // Y ticks: powers of ten on a log axis (with 2 and 5 when the range is narrow), else nice steps.
  let yTicks: number[];
  if (logY) {
    yTicks = [];
    const span = yHi - yLo;
    const mults = span < 1.5 ? [1, 2, 5] : [1];
    for (let k = Math.floor(yLo); k <= Math.ceil(yHi); k++) for (const m of mults) yTicks.push(m * 10 ** k);
    yTicks = yTicks.filter((v) => Math.log10(v) >= yLo && Math.log10(v) <= yHi);
  } else {
    yTicks = niceTicks(yLo, yHi);
  }
  for (const v of yTicks) {
    const y = Math.round(py(v));
    r.line(left, y, left + pw, y, grid);
    const label = formatTick(v);
    r.text(left - 6 - textWidth(label, fs), y - Math.floor(lineH / 2), label, ink, fs);
    r.line(left - 4, y, left, y, ink);
  }
  for (const v of niceTicks(xLo, xHi, 6)) {
    const x = Math.round(px(v));
    r.line(x, top, x, top + ph, grid);
    const label = formatTick(v);
    r.text(x - textWidth(label, fs) / 2, top + ph + 7, label, ink, fs);
    r.line(x, top + ph, x, top + ph + 4, ink);
  }
  // Axes.
  r.line(left, top, left, top + ph, ink);
  r.line(left, top + ph, left + pw, top + ph, ink);
  if (opts.title) r.text((W - textWidth(opts.title, fs)) / 2, 8, opts.title, ink, fs);
  if (opts.xLabel) r.text(left + (pw - textWidth(opts.xLabel, fs)) / 2, H - lineH - 4, opts.xLabel, ink, fs);
  // The y label goes above the y axis, horizontally (rotated text is more code than it is worth).
  if (opts.yLabel) r.text(Math.max(2, left - textWidth(opts.yLabel, fs) / 2), top - lineH - 6, opts.yLabel, ink, fs);

  // Lines.
  series.forEach((s, si) => {
    const smooth = s.smooth ?? opts.smooth ?? 0;
    const color = s.color ?? PALETTE[si % PALETTE.length];
    const p = pts[si];
    const draw = (points: [number, number][], c: RGB, thick: number) => {
      for (let i = 1; i < points.length; i++) {
        r.line(px(points[i - 1][0]), py(points[i - 1][1]), px(points[i][0]), py(points[i][1]), c, thick);
      }
      if (points.length === 1) r.fillRect(px(points[0][0]) - 1, py(points[0][1]) - 1, 3, 3, c);
    };
    if (smooth > 0 && p.length >= 20) {
      draw(p, fade(color, 0.65), 1);
      const sm = ema(p.map((q) => q[1]), smooth);
      draw(p.map((q, i) => [q[0], sm[i]] as [number, number]).filter((q) => !logY || q[1] > 0), color, 2);
    } else {
      draw(p, color, 2);
    }
  });

  // Legend (top right), only when there is more than one series or the series has a name.
  const names = series.map((s) => s.name);
  if (names.some((n) => n)) {
    const lw = Math.max(...names.map((n) => textWidth(n, fs))) + 26;
    let y = top + 6;
    series.forEach((s, si) => {
      const color = s.color ?? PALETTE[si % PALETTE.length];
      const x = left + pw - lw - 4;
      r.fillRect(x, y + Math.floor(lineH / 2) - 1, 14, 3, color);
      r.text(x + 20, y, s.name, ink, fs);
      y += lineH + 6;
    });
  }
  return r;
}

/** Draws the loss curve(s) and writes them to `file` as PNG (atomically). */
export async function saveLossCurve(file: string, input: readonly Series[] | readonly number[], opts: PlotOptions = {}): Promise<void> {
  await writeFileAtomic(file, encodePng(renderLossCurve(input, opts)));
}

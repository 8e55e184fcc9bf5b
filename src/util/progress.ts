/**
 * A small progress bar for long work: `[#####.....] 120/500 24%  3.1 it/s  ETA 2m03s  loss 0.041`.
 * Slower than one item a second, the rate reads as seconds per item (`4.21 s/step`, as tqdm does).
 * Draws in place on a TTY; elsewhere (CI, pipes) prints a line at most every few seconds.
 */
export interface ProgressOptions {
  total: number;
  label?: string;
  unit?: string;
  stream?: NodeJS.WriteStream;
  /** Minimum ms between redraws on a non-TTY stream. */
  logEveryMs?: number;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  if (h > 0) return `${h}h${String(m).padStart(2, '0')}m`;
  if (m > 0) return `${m}m${String(r).padStart(2, '0')}s`;
  return `${r}s`;
}

/** "6.74 step/s", or "4.21 s/step" below one item a second (what matters for slow steps). */
export function formatRate(perSecond: number, unit = 'it'): string {
  if (perSecond > 0 && perSecond < 1) return `${(1 / perSecond).toFixed(2)} s/${unit}`;
  return `${perSecond >= 10 ? perSecond.toFixed(0) : perSecond.toFixed(2)} ${unit}/s`;
}

export class Progress {
  private done = 0;
  private readonly start = Date.now();
  private lastDraw = 0;
  private readonly tty: boolean;
  private readonly stream: NodeJS.WriteStream;
  private info = '';

  constructor(private readonly opts: ProgressOptions) {
    this.stream = opts.stream ?? process.stderr;
    this.tty = Boolean(this.stream.isTTY) && !process.env.CI;
  }

  /** Advance by `n` items; `info` is shown after the rate (e.g. "loss 0.041"). */
  tick(n = 1, info?: string): void {
    this.done += n;
    if (info !== undefined) this.info = info;
    const now = Date.now();
    const every = this.tty ? 100 : (this.opts.logEveryMs ?? 5000);
    if (now - this.lastDraw >= every || this.done >= this.opts.total) {
      this.lastDraw = now;
      this.draw();
    }
  }

  line(): string {
    const { total, label = '', unit = 'it' } = this.opts;
    const elapsed = (Date.now() - this.start) / 1000;
    const rate = elapsed > 0 ? this.done / elapsed : 0;
    const frac = total > 0 ? Math.min(1, this.done / total) : 1;
    const width = 24;
    const fill = Math.round(frac * width);
    const bar = '#'.repeat(fill) + '.'.repeat(width - fill);
    const eta = rate > 0 ? (total - this.done) / rate : NaN;
    const r = formatRate(rate, unit);
    return `${label ? label + ' ' : ''}[${bar}] ${this.done}/${total} ${(frac * 100).toFixed(0)}% ${r} ETA ${formatDuration(eta)}${this.info ? '  ' + this.info : ''}`;
  }

  private draw(): void {
    if (this.tty) this.stream.write('\r\x1b[K' + this.line());
    else this.stream.write(this.line() + '\n');
  }

  /** Finish the bar (newline on a TTY) and return the elapsed seconds. */
  finish(): number {
    if (this.tty) this.stream.write('\r\x1b[K' + this.line() + '\n');
    return (Date.now() - this.start) / 1000;
  }
}

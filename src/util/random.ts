/**
 * Seeded pseudo-random numbers, so that data splits, shuffles, captions and noise pictures
 * come out the same for the same --seed on every machine.
 *
 *   const rng = new Random(42);
 *   rng.next();        // uniform in [0, 1)
 *   rng.int(10);       // integer in [0, 10)
 *   rng.normal();      // standard normal (Box-Muller)
 *   rng.shuffle(arr);  // in-place Fisher-Yates
 *
 * The generator is mulberry32 (32-bit state, fast, good enough for shuffling and pictures; not
 * for cryptography). Seeds are mixed with splitmix32 first so nearby seeds (0, 1, 2...) give
 * unrelated streams.
 */

/** splitmix32 finaliser: scrambles a 32-bit integer (used to turn seeds into states). */
export function mix32(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/** A mulberry32 stream: returns a function giving uniform numbers in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Turns any finite number (or a string) into a 32-bit seed. */
export function seedFrom(seed: number | string): number {
  if (typeof seed === 'string') {
    let h = 0x811c9dc5; // FNV-1a
    for (let i = 0; i < seed.length; i++) h = Math.imul(h ^ seed.charCodeAt(i), 0x01000193);
    return mix32(h);
  }
  // Fold the high bits of large seeds in too, so 2**32 and 0 differ.
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 4294967296) >>> 0;
  return mix32(lo ^ mix32(hi));
}

export class Random {
  private readonly uniform: () => number;
  private spare: number | null = null;

  constructor(seed: number | string = 0) {
    this.uniform = mulberry32(seedFrom(seed));
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.uniform();
  }

  /** Uniform in [lo, hi). */
  uniformRange(lo: number, hi: number): number {
    return lo + (hi - lo) * this.uniform();
  }

  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.uniform() * n);
  }

  /** Standard normal sample (Box-Muller; the second value of each pair is kept for the next call). */
  normal(): number {
    if (this.spare !== null) {
      const s = this.spare;
      this.spare = null;
      return s;
    }
    // 1 - u is in (0, 1], so the log is finite.
    const u = 1 - this.uniform();
    const v = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }

  /** A Float32Array of `n` standard normal samples. */
  normalArray(n: number): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.normal();
    return out;
  }

  /** One element of `items`, uniformly. */
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }

  /** Shuffles `items` in place (Fisher-Yates) and returns it. */
  shuffle<T, A extends { length: number; [i: number]: T }>(items: A): A {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const tmp = items[i];
      items[i] = items[j];
      items[j] = tmp;
    }
    return items;
  }

  /** A random permutation of 0..n-1. */
  permutation(n: number): Int32Array {
    const p = new Int32Array(n);
    for (let i = 0; i < n; i++) p[i] = i;
    return this.shuffle<number, Int32Array>(p);
  }

  /** An independent generator derived from this one (for sub-tasks that must not shift this stream). */
  fork(): Random {
    return new Random(Math.floor(this.uniform() * 4294967296));
  }
}

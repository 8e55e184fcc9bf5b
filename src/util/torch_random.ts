/**
 * torch's CPU random numbers, bit for bit: `TorchGenerator(seed)` gives exactly what
 * `g = torch.Generator('cpu').manual_seed(seed)` followed by `torch.randn(..., generator=g)`
 * (float32) and `torch.rand(..., generator=g)` give, so `--rng torch --seed S` starts from the
 * same noise as diffusers with `generator=torch.Generator("cpu").manual_seed(S)`.
 *
 *   const g = new TorchGenerator(42);
 *   g.normalArray(4 * 64 * 64);   // torch.randn(1, 4, 64, 64, generator=g), C order
 *   g.normalArray(4 * 64 * 64);   // the next torch.randn call on the same generator
 *   g.uniformArray(10);           // torch.rand(10, generator=g)
 *
 * What torch does (ATen: core/MT19937RNGEngine.h, CPUGeneratorImpl.cpp,
 * core/DistributionsHelper.h, core/TransformationHelper.h, native/cpu/DistributionTemplates.h,
 * native/cpu/avx_mathfun.h), reproduced here step by step:
 *   - manual_seed(s): a standard MT19937 seeded with the low 32 bits of s (init_genrand); the
 *     cached normal is dropped. Seeds 5 and 2^32 + 5 give the same stream.
 *   - a float uniform is (u32 & 0xFFFFFF) · 2^-24; a double uniform takes two u32 (hi, lo) and
 *     keeps the low 53 bits of hi·2^32 + lo, times 2^-53.
 *   - torch.randn of n ≥ 16 float32 values (the "vectorised" path): first n float uniforms; then
 *     Box–Muller on each block of 16 (u1 = 1 − d[j], u2 = d[j + 8], j < 8; d[j] = r·cos θ,
 *     d[j + 8] = r·sin θ with r = sqrt(−2 log u1), θ = 2π·u2); when 16 does not divide n, 16
 *     FRESH uniforms overwrite the last 16 slots and that block is transformed again (so the
 *     tail overlaps the previous block, and the call draws n + 16 numbers). On x86 CPUs with
 *     AVX2 (torch's dispatch picks that kernel on AVX2 and AVX-512 machines) log/sin/cos are the
 *     Cephes-style float32 polynomials of avx_mathfun.h, compiled by GCC with floating-point
 *     contraction, i.e. most multiply-adds are fused (one rounding). `log256`/`sincos256` below
 *     replay that arithmetic in float32 with the same fusions (found and checked against
 *     torch: see below), because a correctly rounded log/sin/cos differs in ~1% of values.
 *   - torch.randn of n < 16 values (the scalar path): per value a double-precision Box–Muller
 *     pair from two double uniforms (u1, u2): r = sqrt(−2 log(1 − u2)), θ = 2π·u1, return
 *     r·cos θ and cache r·sin θ in the generator; the next scalar draw (in this call or a later
 *     one, until reseeded) returns the cache first. Results are rounded to float32. The
 *     vectorised path neither uses nor clears that cache.
 *   - torch.rand: one float uniform per value.
 *
 * Checked against (test/torch-random.test.ts), bit for bit: every random tensor upstream
 * diffusers drew for ../shared/fixtures/sd1_pipelines and the seeded inputs of sd1_tiny (torch
 * 1.13 as Debian ships it), and test/fixtures/torch_random.json from Debian's python3-torch
 * 1.13.1 (scripts/torch_rng_reference.py: sizes 1–17 and tails of every length, streams mixing
 * both paths and torch.rand, seeds up to 2^64 − 1, SD-sized latents, 4 × 262 144 values by hash).
 * The kernels are unchanged in later torch releases' sources (2.x), so the same values are
 * expected there on x86 with AVX2. Not matched: torch on CPUs without AVX2 (ARM, e.g. Apple
 * silicon, or ATEN_CPU_CAPABILITY=default), whose n ≥ 16 path calls the C library's float
 * log/sin/cos — torch 1.13.1 itself differs there from its AVX2 values in 39% of values, by up
 * to 2e-6; and builds compiled without fused multiply-adds (about 1% of values 1 ulp apart).
 */
import { UsageError } from './errors.ts';

const f32 = Math.fround;
const TWO_POW_32 = 4294967296;
const MAX_SEED = (1n << 64n) - 1n;

// ---------------------------------------------------------------------------------------------
// float32 fused multiply-add: a·b + c rounded once
// ---------------------------------------------------------------------------------------------

const F64 = new Float64Array(1);
const U32 = new Uint32Array(F64.buffer);
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const LO = LITTLE_ENDIAN ? 0 : 1;
const HI = LITTLE_ENDIAN ? 1 : 0;

/**
 * fmaf(a, b, c) for float32 a, b, c. The product of two float32 values is exact in a double, so
 * only the sum rounds; summing in double with round-to-odd (53 ≥ 2·24 + 2 bits) and then rounding
 * to float32 rounds once, correctly — plain double rounding would be wrong at ties.
 */
function fmaf(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const bv = s - p;
  const err = p - (s - bv) + (c - bv); // exact: s + err = p + c (TwoSum)
  if (err === 0 || !Number.isFinite(s)) return f32(s);
  F64[0] = s;
  if ((U32[LO] & 1) === 0) {
    // Round to odd: step one unit in the last place towards the exact value.
    const away = err > 0 === s > 0;
    if (away) {
      U32[LO] = (U32[LO] + 1) >>> 0;
      if (U32[LO] === 0) U32[HI] += 1;
    } else {
      if (U32[LO] === 0) U32[HI] -= 1;
      U32[LO] = (U32[LO] - 1) >>> 0;
    }
  }
  return f32(F64[0]);
}

// ---------------------------------------------------------------------------------------------
// avx_mathfun.h's log and sincos (Cephes float32 polynomials), with GCC's fusions
// ---------------------------------------------------------------------------------------------

const LOG_P = [
  7.0376836292e-2, -1.151461031e-1, 1.167699874e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
  2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
].map(f32);
const LOG_Q1 = f32(-2.1219444e-4);
const LOG_Q2 = f32(0.693359375);
const SQRTHF = f32(0.707106781186547524);
const F32 = new Float32Array(1);
const I32 = new Int32Array(F32.buffer);

/** log256_ps for one lane; x is a normal positive float32 here (1 − u with u in [0, 1)). */
function log256(x: number): number {
  F32[0] = x;
  const bits = I32[0];
  let e = f32((bits >>> 23) - 0x7f + 1);
  I32[0] = (bits & ~0x7f800000) | 0x3f000000; // mantissa in [0.5, 1)
  let m = F32[0];
  if (m < SQRTHF) {
    e = f32(e - 1);
    m = f32(f32(m - 1) + m);
  } else {
    m = f32(m - 1);
  }
  const z = f32(m * m);
  let y = LOG_P[0];
  for (let k = 1; k < LOG_P.length; k++) y = fmaf(y, m, LOG_P[k]);
  y = f32(y * m);
  y = fmaf(y, z, f32(e * LOG_Q1)); // GCC fuses y·z here, not e·q1 (the other choice mismatches torch)
  y = f32(y - f32(z * 0.5));
  return fmaf(e, LOG_Q2, f32(m + y));
}

const DP1 = f32(-0.78515625);
const DP2 = f32(-2.4187564849853515625e-4);
const DP3 = f32(-3.77489497744594108e-8);
const SIN_P = [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1].map(f32);
const COS_P = [2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2].map(f32);
const FOPI = f32(1.27323954473516); // 4/π

/** sincos256_ps for one lane, x ≥ 0 (θ in [0, 2π)); writes [sin, cos] into `out`. */
function sincos256(x: number, out: [number, number]): void {
  let j = Math.trunc(f32(x * FOPI));
  j = (j + 1) & ~1;
  const y = j;
  x = fmaf(y, DP1, x);
  x = fmaf(y, DP2, x);
  x = fmaf(y, DP3, x);
  const z = f32(x * x);
  let c = fmaf(COS_P[0], z, COS_P[1]);
  c = fmaf(c, z, COS_P[2]);
  c = f32(c * z);
  c = fmaf(c, z, -f32(z * 0.5));
  c = f32(c + 1);
  let s = fmaf(SIN_P[0], z, SIN_P[1]);
  s = fmaf(s, z, SIN_P[2]);
  s = f32(s * z);
  s = fmaf(s, x, x);
  const sinPoly = (j & 2) === 0; // which polynomial is the sine; the other is the cosine
  const sin = sinPoly ? s : c;
  const cos = sinPoly ? c : s;
  out[0] = j & 4 ? -sin : sin;
  out[1] = ~(j - 2) & 4 ? -cos : cos;
}

const TWO_PI_F = f32(2 * Math.PI);

// ---------------------------------------------------------------------------------------------
// the generator
// ---------------------------------------------------------------------------------------------

/** Checks a seed as torch.Generator.manual_seed would take it (non-negative, below 2^64). */
export function checkTorchSeed(seed: number | bigint): bigint {
  const shown = typeof seed === 'bigint' ? `${seed}` : String(seed);
  if (typeof seed === 'number') {
    if (!Number.isInteger(seed)) throw new UsageError(`torch seed must be an integer from 0 to 2^64 - 1, got ${shown}`);
    if (!Number.isSafeInteger(seed) && seed > 0) {
      throw new UsageError(`torch seed ${shown} is too big to be exact as a number (above 2^53 - 1); pass it as a bigint`);
    }
  }
  const big = BigInt(seed);
  if (big < 0n) throw new UsageError(`torch seed must be an integer from 0 to 2^64 - 1, got ${shown}`);
  if (big > MAX_SEED) throw new UsageError(`torch seed must be an integer from 0 to 2^64 - 1, got ${shown} (too big)`);
  return big;
}

function checkCount(n: number, what: string): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new UsageError(`${what}: count must be a non-negative integer, got ${n}`);
}

/**
 * torch.Generator('cpu').manual_seed(seed): MT19937 plus the cached second normal of the scalar
 * path. Each normalArray/uniformArray call is one torch.randn/torch.rand call (C order, so any
 * shape with n elements gives the same values); successive calls continue the stream.
 */
export class TorchGenerator {
  /** The seed as given (torch's initial_seed()). */
  readonly seed: bigint;
  private readonly state = new Uint32Array(624);
  private index = 624;
  private cachedNormal: number | null = null;
  private readonly sincos: [number, number] = [0, 0];

  constructor(seed: number | bigint) {
    this.seed = checkTorchSeed(seed);
    const mt = this.state;
    mt[0] = Number(this.seed & 0xffffffffn);
    for (let i = 1; i < 624; i++) {
      const prev = mt[i - 1] ^ (mt[i - 1] >>> 30);
      mt[i] = (Math.imul(1812433253, prev) + i) >>> 0;
    }
  }

  /** The next 32-bit output of the MT19937 stream. */
  nextUint32(): number {
    if (this.index >= 624) this.twist();
    let y = this.state[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  private twist(): void {
    const mt = this.state;
    for (let i = 0; i < 624; i++) {
      const y = (mt[i] & 0x80000000) | (mt[(i + 1) % 624] & 0x7fffffff);
      mt[i] = mt[(i + 397) % 624] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
    }
    this.index = 0;
  }

  /** uniform_real_distribution<float>(0, 1): 24 random bits. */
  private uniformFloat(): number {
    return (this.nextUint32() & 0xffffff) / 16777216;
  }

  /** uniform_real_distribution<double>(0, 1): 53 random bits of random64() = hi·2^32 + lo. */
  private uniformDouble(): number {
    const hi = this.nextUint32();
    const lo = this.nextUint32();
    return ((hi & 0x1fffff) * TWO_POW_32 + lo) / 9007199254740992;
  }

  /** normal_distribution<double>: Box–Muller in double, the sine kept for the next draw. */
  private normalDouble(): number {
    if (this.cachedNormal !== null) {
      const v = this.cachedNormal;
      this.cachedNormal = null;
      return v;
    }
    const u1 = this.uniformDouble();
    const u2 = this.uniformDouble();
    const r = Math.sqrt(-2 * Math.log(1 - u2));
    const theta = 2 * Math.PI * u1;
    this.cachedNormal = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  /** Box–Muller on one block of 16 uniforms in place, as normal_fill_16_AVX2 does. */
  private normalBlock(d: Float32Array, o: number): void {
    const sc = this.sincos;
    for (let j = 0; j < 8; j++) {
      const u1 = f32(1 - d[o + j]);
      const u2 = d[o + j + 8];
      const radius = f32(Math.sqrt(f32(-2 * log256(u1))));
      sincos256(f32(TWO_PI_F * u2), sc);
      // fmadd(n, std = 1, mean = 0) turns −0 into +0.
      d[o + j] = f32(radius * sc[1]) + 0;
      d[o + j + 8] = f32(radius * sc[0]) + 0;
    }
  }

  /** torch.randn(n, generator=this) as float32. */
  normalArray(n: number): Float32Array {
    checkCount(n, 'torch randn');
    const d = new Float32Array(n);
    if (n < 16) {
      for (let i = 0; i < n; i++) d[i] = this.normalDouble();
      return d;
    }
    for (let i = 0; i < n; i++) d[i] = this.uniformFloat();
    for (let i = 0; i + 16 <= n; i += 16) this.normalBlock(d, i);
    if (n % 16 !== 0) {
      // torch redraws the last 16 and transforms them again (overlapping the previous block).
      for (let i = n - 16; i < n; i++) d[i] = this.uniformFloat();
      this.normalBlock(d, n - 16);
    }
    return d;
  }

  /** torch.rand(n, generator=this) as float32: uniform in [0, 1). */
  uniformArray(n: number): Float32Array {
    checkCount(n, 'torch rand');
    const d = new Float32Array(n);
    for (let i = 0; i < n; i++) d[i] = this.uniformFloat();
    return d;
  }
}

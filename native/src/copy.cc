// Box copies collapse the dims that are contiguous in both tensors first, so a slice of the
// channels of an NHWC tensor is a loop of short memcpys and a pad is a loop of whole rows.
#include "copy.h"

#include <algorithm>
#include <cstring>

#include "ops.h"
#include "pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define SDLAB_COPY_X86 1
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define SDLAB_COPY_NEON 1
#endif

namespace sdlab {

void copy_box(const float* src, const std::vector<long>& src_shape, const std::vector<long>& src_begin, float* dst,
              const std::vector<long>& dst_shape, const std::vector<long>& dst_begin, const std::vector<long>& size) {
  const int D = (int)size.size();
  long total = 1;
  for (long s : size) total *= s;
  if (total == 0) return;
  std::vector<long> ss(D), ds(D);
  for (int i = D - 1, a = 1, b = 1; i >= 0; --i) {
    ss[i] = a;
    ds[i] = b;
    a *= src_shape[i];
    b *= dst_shape[i];
  }
  long soff = 0, doff = 0;
  for (int i = 0; i < D; ++i) {
    soff += src_begin[i] * ss[i];
    doff += dst_begin[i] * ds[i];
  }
  // Dims (size, src stride, dst stride), innermost last, size-1 dims dropped, and a dim merged
  // into the next inner one when both tensors are contiguous across the pair.
  std::vector<long> n, sst, dst_;
  for (int i = 0; i < D; ++i) {
    if (size[i] == 1) continue;
    n.push_back(size[i]);
    sst.push_back(ss[i]);
    dst_.push_back(ds[i]);
  }
  for (int i = (int)n.size() - 2; i >= 0; --i) {
    if (sst[i] == n[i + 1] * sst[i + 1] && dst_[i] == n[i + 1] * dst_[i + 1]) {
      n[i] *= n[i + 1];
      sst[i] = sst[i + 1];
      dst_[i] = dst_[i + 1];
      n.erase(n.begin() + i + 1);
      sst.erase(sst.begin() + i + 1);
      dst_.erase(dst_.begin() + i + 1);
    }
  }
  const float* s0 = src + soff;
  float* d0 = dst + doff;
  if (n.empty()) {
    *d0 = *s0;
    return;
  }
  const int R = (int)n.size();
  const long L = n[R - 1], sl = sst[R - 1], dl = dst_[R - 1];
  const long rows = total / L;
  auto row = [&](const float* s, float* d, long len) {
    if (sl == 1 && dl == 1) std::memcpy(d, s, len * sizeof(float));
    else for (long i = 0; i < len; ++i) d[i * dl] = s[i * sl];
  };
  if (rows == 1) {
    parallel_for(L, 1 << 16, [&](long b, long e) { row(s0 + b * sl, d0 + b * dl, e - b); });
    return;
  }
  parallel_for(rows, std::max<long>(1, (1 << 15) / L), [&](long r0, long r1) {
    std::vector<long> idx(R, 0);
    long rem = r0, so = 0, dof = 0;
    for (int i = R - 2; i >= 0; --i) {
      idx[i] = rem % n[i];
      rem /= n[i];
      so += idx[i] * sst[i];
      dof += idx[i] * dst_[i];
    }
    for (long r = r0; r < r1; ++r) {
      row(s0 + so, d0 + dof, L);
      for (int i = R - 2; i >= 0; --i) {
        so += sst[i];
        dof += dst_[i];
        if (++idx[i] < n[i]) break;
        so -= sst[i] * n[i];
        dof -= dst_[i] * n[i];
        idx[i] = 0;
      }
    }
  });
}

void tile(const float* x, const std::vector<long>& shape, const std::vector<long>& reps, float* out) {
  const int D = (int)shape.size();
  if (D == 0) {
    out[0] = x[0];
    return;
  }
  std::vector<long> os(D);
  long total = 1;
  for (int i = 0; i < D; ++i) total *= (os[i] = shape[i] * reps[i]);
  if (total == 0) return;
  std::vector<long> xs(D);
  for (int i = D - 1, a = 1; i >= 0; --i) {
    xs[i] = a;
    a *= shape[i];
  }
  const long L = shape[D - 1], OL = os[D - 1], rows = total / OL;
  // Each output row (all dims but the last) reads one input row, repeated reps[D-1] times.
  parallel_for(rows, std::max<long>(1, (1 << 15) / OL), [&](long r0, long r1) {
    std::vector<long> idx(D, 0);
    long rem = r0;
    for (int i = D - 2; i >= 0; --i) {
      idx[i] = rem % os[i];
      rem /= os[i];
    }
    for (long r = r0; r < r1; ++r) {
      long off = 0;
      for (int i = 0; i < D - 1; ++i) off += (idx[i] % shape[i]) * xs[i];
      float* o = out + r * OL;
      for (long k = 0; k < reps[D - 1]; ++k) std::memcpy(o + k * L, x + off, L * sizeof(float));
      for (int i = D - 2; i >= 0; --i) {
        if (++idx[i] < os[i]) break;
        idx[i] = 0;
      }
    }
  });
}

void gather_hw(const float* in, long B, long H, long W, long C, const int* rows, long OH, const int* cols, long OW,
               float* out) {
  parallel_for(B * OH, std::max<long>(1, (1 << 14) / std::max<long>(1, OW * C)), [&](long r0, long r1) {
    for (long r = r0; r < r1; ++r) {
      long b = r / OH, y = r % OH;
      const float* src = in + (b * H + rows[y]) * W * C;
      float* dst = out + r * OW * C;
      if (C == 1)
        for (long x = 0; x < OW; ++x) dst[x] = src[cols[x]];
      else
        for (long x = 0; x < OW; ++x) std::memcpy(dst + x * C, src + cols[x] * C, C * sizeof(float));
    }
  });
}

void scatter_add_hw(const float* dy, long B, long OH, long OW, long C, const int* rows, const int* cols, float* dx,
                    long H, long W) {
  // Gather form: each input row (b, r) sums the dy rows that map to it, so threads never collide.
  std::vector<std::vector<long>> from(H);
  for (long y = 0; y < OH; ++y) from[rows[y]].push_back(y);
  parallel_for(B * H, std::max<long>(1, (1 << 14) / std::max<long>(1, W * C)), [&](long r0, long r1) {
    for (long r = r0; r < r1; ++r) {
      long b = r / H, h = r % H;
      float* d = dx + r * W * C;
      std::memset(d, 0, W * C * sizeof(float));
      for (long y : from[h]) {
        const float* g = dy + (b * OH + y) * OW * C;
        for (long x = 0; x < OW; ++x) {
          float* __restrict o = d + cols[x] * C;
          const float* __restrict s = g + x * C;
          for (long c = 0; c < C; ++c) o[c] += s[c];
        }
      }
    }
  });
}

// ---- float16 → float32 ----

namespace {

// Exact by construction: normal numbers re-bias the exponent (15 → 127), subnormals are
// mant · 2^-24 (exact in float32), infinities and NaNs keep their payload.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1fu) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else {
    const float f = (float)mant * 5.9604644775390625e-8f;  // 2^-24
    std::memcpy(&bits, &f, 4);
    bits |= sign;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

#ifdef SDLAB_COPY_X86
__attribute__((target("avx2,f16c"))) void halves_f16c(const uint16_t* src, float* dst, long n) {
  long i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + i))));
  for (; i < n; ++i) dst[i] = half_to_float(src[i]);
}
// F16C beside the vector paths' own test (ops.h use_simd: AVX2+FMA, not SDLAB_ISA=generic).
bool has_f16c() {
  static const bool yes = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return use_simd() && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);  // (clang's __builtin_cpu_supports has no "f16c")
  }();
  return yes;
}
#elif defined(SDLAB_COPY_NEON)
void halves_neon(const uint16_t* src, float* dst, long n) {
  long i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(src + i))));
  for (; i < n; ++i) dst[i] = half_to_float(src[i]);
}
#endif

// Round to nearest even, as F16C's vcvtps2ph with _MM_FROUND_TO_NEAREST_INT: overflow → ±Inf, NaN
// stays NaN (quiet), tiny values → subnormals or ±0.
inline uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, exp = (x >> 23) & 0xffu;
  uint32_t mant = x & 0x7fffffu;
  if (exp == 0xffu) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0u));
  const int e = (int)exp - 127 + 15;
  if (e >= 31) return (uint16_t)(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return (uint16_t)sign;
    mant |= 0x800000u;
    const int shift = 14 - e;
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return (uint16_t)(sign | h);
  }
  uint32_t h = ((uint32_t)e << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right (→ Inf at the top)
  return (uint16_t)(sign | h);
}

#ifdef SDLAB_COPY_X86
__attribute__((target("avx2,f16c"))) void floats_f16c(const float* src, uint16_t* dst, long n) {
  long i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i*)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) dst[i] = float_to_half(src[i]);
}
#elif defined(SDLAB_COPY_NEON)
void floats_neon(const float* src, uint16_t* dst, long n) {
  long i = 0;
  for (; i + 4 <= n; i += 4) vst1_u16(dst + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(src + i))));
  for (; i < n; ++i) dst[i] = float_to_half(src[i]);
}
#endif

}  // namespace

void load_halves(const uint16_t* src, float* dst, long n) {
#ifdef SDLAB_COPY_X86
  if (has_f16c()) return halves_f16c(src, dst, n);
#elif defined(SDLAB_COPY_NEON)
  if (use_simd()) return halves_neon(src, dst, n);
#endif
  for (long i = 0; i < n; ++i) dst[i] = half_to_float(src[i]);
}

void halves_to_floats(const uint16_t* src, float* dst, long n) {
  parallel_for(n, 1 << 16, [&](long b, long e) { load_halves(src + b, dst + b, e - b); });
}

void floats_to_halves(const float* src, uint16_t* dst, long n) {
  parallel_for(n, 1 << 16, [&](long b, long e) {
#ifdef SDLAB_COPY_X86
    if (has_f16c()) return floats_f16c(src + b, dst + b, e - b);
#elif defined(SDLAB_COPY_NEON)
    if (use_simd()) return floats_neon(src + b, dst + b, e - b);
#endif
    for (long i = b; i < e; ++i) dst[i] = float_to_half(src[i]);
  });
}

}  // namespace sdlab

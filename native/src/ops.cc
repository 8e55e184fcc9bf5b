// Memory-bound kernels. Broadcasting binary ops first merge adjacent dimensions that broadcast
// the same way, so the common cases (same shape, scalar, per-channel bias over NHWC) become one
// tight inner loop over contiguous memory. Reductions accumulate in double, like tfjs's cpu
// backend (which sums in JS numbers), so the two agree closely.
#include "ops.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "pool.h"
#include "vmath.h"

namespace sdlab {

#ifdef SDLAB_VMATH_X86
__attribute__((target("avx2,fma"))) float row_max_simd(const float* x, long n) {
  long i = 0;
  __m256 mv = _mm256_set1_ps(-INFINITY);
  for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
  alignas(32) float t[8];
  _mm256_store_ps(t, mv);
  float m = t[0];
  for (int k = 1; k < 8; ++k) m = t[k] > m ? t[k] : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}
#elif defined(SDLAB_VMATH_NEON)
float row_max_simd(const float* x, long n) {
  long i = 0;
  float32x4_t mv = vdupq_n_f32(-INFINITY);
  for (; i + 4 <= n; i += 4) mv = vmaxq_f32(mv, vld1q_f32(x + i));
  float m = vmaxvq_f32(mv);
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}
#else
float row_max_simd(const float* x, long n) {
  float m = -INFINITY;
  for (long i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}
#endif

bool use_simd() {
  static const bool yes = [] {
    const char* f = std::getenv("SDLAB_ISA");
#ifdef SDLAB_VMATH_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && !(f && std::string(f) == "generic");
#elif defined(SDLAB_VMATH_NEON)
    return !(f && std::string(f) == "generic");  // NEON is part of every aarch64 CPU
#else
    (void)f;
    return false;
#endif
  }();
  return yes;
}

namespace {

template <int OP>
inline float bop(float a, float b) {
  if (OP == BIN_ADD) return a + b;
  if (OP == BIN_SUB) return a - b;
  if (OP == BIN_MUL) return a * b;
  if (OP == BIN_DIV) return a / b;
  if (OP == BIN_SQDIFF) return (a - b) * (a - b);
  if (OP == BIN_MAX) return std::isnan(a) || std::isnan(b) ? NAN : (a > b ? a : b);
  if (OP == BIN_MIN) return std::isnan(a) || std::isnan(b) ? NAN : (a < b ? a : b);
  // Math.pow semantics (tfjs computes in double): NaN exponent, or ±1 to an infinite power, is NaN.
  if (b != b || (std::fabs(a) == 1.f && std::isinf(b))) return NAN;
  return (float)std::pow((double)a, (double)b);
}

template <int OP>
void bin_row(const float* __restrict a, long sa, const float* __restrict b, long sb, float* __restrict o, long n) {
  if (sa && sb) {
    for (long i = 0; i < n; ++i) o[i] = bop<OP>(a[i], b[i]);
  } else if (sb) {
    const float av = *a;
    for (long i = 0; i < n; ++i) o[i] = bop<OP>(av, b[i]);
  } else if (sa) {
    const float bv = *b;
    for (long i = 0; i < n; ++i) o[i] = bop<OP>(a[i], bv);
  } else {
    const float v = bop<OP>(*a, *b);
    for (long i = 0; i < n; ++i) o[i] = v;
  }
}

typedef void (*RowFn)(const float*, long, const float*, long, float*, long);
RowFn row_fn(int op) {
  switch (op) {
    case BIN_ADD: return bin_row<BIN_ADD>;
    case BIN_SUB: return bin_row<BIN_SUB>;
    case BIN_MUL: return bin_row<BIN_MUL>;
    case BIN_DIV: return bin_row<BIN_DIV>;
    case BIN_SQDIFF: return bin_row<BIN_SQDIFF>;
    case BIN_MAX: return bin_row<BIN_MAX>;
    case BIN_MIN: return bin_row<BIN_MIN>;
    default: return bin_row<BIN_POW>;
  }
}

}  // namespace

void binary(int op, const float* a, const std::vector<long>& as, const float* b, const std::vector<long>& bs,
            float* out, const std::vector<long>& os) {
  // Collapse to dims (n, a-broadcast?, b-broadcast?), dropping size-1 dims and merging runs.
  std::vector<long> n;
  std::vector<int> fa, fb;
  for (size_t i = 0; i < os.size(); ++i) {
    if (os[i] == 1) continue;
    int ia = as[i] != 1, ib = bs[i] != 1;
    if (!n.empty() && fa.back() == ia && fb.back() == ib) {
      n.back() *= os[i];
    } else {
      n.push_back(os[i]);
      fa.push_back(ia);
      fb.push_back(ib);
    }
  }
  long total = 1;
  for (long d : n) total *= d;
  if (total == 0) return;
  RowFn fn = row_fn(op);
  if (n.empty()) {
    fn(a, 1, b, 1, out, 1);
    return;
  }
  const int D = (int)n.size();
  std::vector<long> sa(D), sb(D);
  long ca = 1, cb = 1;
  for (int i = D - 1; i >= 0; --i) {
    sa[i] = fa[i] ? ca : 0;
    sb[i] = fb[i] ? cb : 0;
    if (fa[i]) ca *= n[i];
    if (fb[i]) cb *= n[i];
  }
  const long L = n[D - 1];
  const long rows = total / L;
  if (rows == 1) {
    parallel_for(L, 1 << 15, [&](long s, long e) { fn(a + s * sa[D - 1], sa[D - 1], b + s * sb[D - 1], sb[D - 1], out + s, e - s); });
    return;
  }
  // Short innermost rows (e.g. GroupNorm's [B, HW, G, C/G] against [B, 1, G, 1]): treat the
  // innermost dims [k, D) as one block of up to BLOCK elements; an operand that broadcasts
  // within the block is expanded once into a small buffer (again only when its offset moves),
  // so every block is one contiguous vectorisable loop instead of many tiny rows.
  constexpr long BLOCK = 4096;
  int k = D - 1;
  long blk = L;
  while (L < 64 && k > 0 && blk * n[k - 1] <= BLOCK) blk *= n[--k];
  if (k < D - 1) {
    auto kind = [&](const std::vector<int>& f) {  // 0: constant in the block, 1: dense, 2: mixed
      int on = 0;
      for (int i = k; i < D; ++i) on += f[i];
      return on == 0 ? 0 : (on == D - k ? 1 : 2);
    };
    const int ka = kind(fa), kb = kind(fb);
    const long brows = total / blk;
    parallel_for(brows, std::max<long>(1, (1 << 15) / blk), [&](long r0, long r1) {
      std::vector<long> idx(D, 0);
      std::vector<float> bufa(ka == 2 ? blk : 0), bufb(kb == 2 ? blk : 0);
      long lasta = -1, lastb = -1;
      // x[off + Σ idx_i·s_i] over the block dims, in order.
      auto expand = [&](const float* x, const std::vector<long>& st, long off, float* dst) {
        std::vector<long> j(D, 0);
        long o = off;
        for (long e = 0; e < blk; ++e) {
          dst[e] = x[o];
          for (int i = D - 1; i >= k; --i) {
            o += st[i];
            if (++j[i] < n[i]) break;
            o -= st[i] * n[i];
            j[i] = 0;
          }
        }
      };
      long rem = r0, offa = 0, offb = 0;
      for (int i = k - 1; i >= 0; --i) {
        idx[i] = rem % n[i];
        rem /= n[i];
        offa += idx[i] * sa[i];
        offb += idx[i] * sb[i];
      }
      for (long r = r0; r < r1; ++r) {
        const float* pa = a + offa;
        const float* pb = b + offb;
        if (ka == 2) {
          if (offa != lasta) expand(a, sa, offa, bufa.data());
          lasta = offa;
          pa = bufa.data();
        }
        if (kb == 2) {
          if (offb != lastb) expand(b, sb, offb, bufb.data());
          lastb = offb;
          pb = bufb.data();
        }
        fn(pa, ka ? 1 : 0, pb, kb ? 1 : 0, out + r * blk, blk);
        for (int i = k - 1; i >= 0; --i) {
          offa += sa[i];
          offb += sb[i];
          if (++idx[i] < n[i]) break;
          offa -= sa[i] * n[i];
          offb -= sb[i] * n[i];
          idx[i] = 0;
        }
      }
    });
    return;
  }
  parallel_for(rows, std::max<long>(1, (1 << 15) / L), [&](long r0, long r1) {
    // Offsets of row r0, then step a multi-index counter over the outer dims.
    std::vector<long> idx(D, 0);
    long rem = r0, offa = 0, offb = 0;
    for (int i = D - 2; i >= 0; --i) {
      idx[i] = rem % n[i];
      rem /= n[i];
      offa += idx[i] * sa[i];
      offb += idx[i] * sb[i];
    }
    for (long r = r0; r < r1; ++r) {
      fn(a + offa, sa[D - 1], b + offb, sb[D - 1], out + r * L, L);
      for (int i = D - 2; i >= 0; --i) {
        offa += sa[i];
        offb += sb[i];
        if (++idx[i] < n[i]) break;
        offa -= sa[i] * n[i];
        offb -= sb[i] * n[i];
        idx[i] = 0;
      }
    }
  });
}

namespace {
inline float uop(int op, float v, float alpha) {
  switch (op) {
    case UN_RELU: return v > 0.f ? v : (std::isnan(v) ? v : 0.f);
    case UN_RELU6: return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
    case UN_SIGMOID: return vm::sigmoid_s(v);
    case UN_TANH: return std::tanh(v);
    case UN_EXP: return vm::exp_s(v);
    case UN_LOG: return std::log(v);
    case UN_SQRT: return std::sqrt(v);
    case UN_RSQRT: return 1.f / std::sqrt(v);
    case UN_SQUARE: return v * v;
    case UN_NEG: return -v;
    case UN_ABS: return std::fabs(v);
    case UN_STEP: return std::isnan(v) ? NAN : (v > 0.f ? 1.f : alpha);
    case UN_LEAKYRELU: return v < 0.f ? alpha * v : v;
    case UN_ELU: return v < 0.f ? std::expm1(v) : v;
    case UN_ERF: return vm::erf_s(v);
    case UN_RECIPROCAL: return 1.f / v;
    default: return v;
  }
}

#ifdef SDLAB_VMATH_X86
// exp / sigmoid / erf, 8 at a time; the tail goes through the same vector code via a small buffer.
constexpr int UN_NORMCDF = 100;  // internal: Φ(x), for GELU

template <int OP>
__attribute__((target("avx2,fma"))) inline __m256 un8(__m256 v) {
  if (OP == UN_EXP) return vm::exp8(v);
  if (OP == UN_SIGMOID) return vm::sigmoid8(v);
  if (OP == UN_NORMCDF) return vm::normcdf8(v);
  return vm::erf8(v);
}

template <int OP>
__attribute__((target("avx2,fma"))) void unary_simd(const float* __restrict x, float* __restrict out, long n) {
  constexpr auto f = un8<OP>;
  long i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, f(_mm256_loadu_ps(x + i)));
  if (i < n) {
    alignas(32) float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(t, x + i, (n - i) * sizeof(float));
    _mm256_store_ps(t, f(_mm256_load_ps(t)));
    std::memcpy(out + i, t, (n - i) * sizeof(float));
  }
}
#elif defined(SDLAB_VMATH_NEON)
constexpr int UN_NORMCDF = 100;  // internal: Φ(x), for GELU

template <int OP>
inline float32x4_t un4(float32x4_t v) {
  if (OP == UN_EXP) return vm::exp4(v);
  if (OP == UN_SIGMOID) return vm::sigmoid4(v);
  if (OP == UN_NORMCDF) return vm::normcdf4(v);
  return vm::erf4(v);
}

template <int OP>
void unary_simd(const float* __restrict x, float* __restrict out, long n) {
  long i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(out + i, un4<OP>(vld1q_f32(x + i)));
  if (i < n) {
    alignas(16) float t[4] = {0, 0, 0, 0};
    std::memcpy(t, x + i, (n - i) * sizeof(float));
    vst1q_f32(t, un4<OP>(vld1q_f32(t)));
    std::memcpy(out + i, t, (n - i) * sizeof(float));
  }
}
#endif
}  // namespace

void unary(int op, const float* x_, float* out_, long n, float alpha_) {
  parallel_for(n, 1 << 15, [=](long s, long e) {
    // Locals (not captured references) so the compiler knows nothing aliases them and vectorises.
    const float* __restrict x = x_;
    float* __restrict out = out_;
    const float alpha = alpha_;
    switch (op) {  // the hottest ones get their own vectorisable loops
      case UN_RELU:
        for (long i = s; i < e; ++i) {
          float v = x[i];
          out[i] = v < 0.f ? 0.f : v;  // NaN compares false and passes through, like tfjs
        }
        break;
      case UN_SQUARE:
        for (long i = s; i < e; ++i) out[i] = x[i] * x[i];
        break;
      case UN_NEG:
        for (long i = s; i < e; ++i) out[i] = -x[i];
        break;
      case UN_STEP:
        for (long i = s; i < e; ++i) {
          float v = x[i], r = v > 0.f ? 1.f : alpha;
          out[i] = v != v ? v : r;  // branch-free, so it vectorises
        }
        break;
      case UN_LEAKYRELU:
        for (long i = s; i < e; ++i) {
          float v = x[i], r = alpha * v;
          out[i] = v < 0.f ? r : v;
        }
        break;
      case UN_SQRT:
        for (long i = s; i < e; ++i) out[i] = std::sqrt(x[i]);
        break;
      case UN_RSQRT:
        for (long i = s; i < e; ++i) out[i] = 1.f / std::sqrt(x[i]);
        break;
      case UN_ABS:
        for (long i = s; i < e; ++i) out[i] = std::fabs(x[i]);
        break;
      case UN_RECIPROCAL:
        for (long i = s; i < e; ++i) out[i] = 1.f / x[i];
        break;
      case UN_EXP:
      case UN_SIGMOID:
      case UN_ERF:
#ifdef SDLAB_VMATH_SIMD
        if (use_simd()) {
          if (op == UN_EXP) unary_simd<UN_EXP>(x + s, out + s, e - s);
          else if (op == UN_SIGMOID) unary_simd<UN_SIGMOID>(x + s, out + s, e - s);
          else unary_simd<UN_ERF>(x + s, out + s, e - s);
          break;
        }
#endif
        if (op == UN_EXP) for (long i = s; i < e; ++i) out[i] = vm::exp_s(x[i]);
        else if (op == UN_SIGMOID) for (long i = s; i < e; ++i) out[i] = vm::sigmoid_s(x[i]);
        else for (long i = s; i < e; ++i) out[i] = vm::erf_s(x[i]);
        break;
      default:
        for (long i = s; i < e; ++i) out[i] = uop(op, x[i], alpha);
    }
  });
}

void reduce(int op, const float* x, float* out, long outer, long red, long inner) {
  const bool is_sum = op == RED_SUM || op == RED_MEAN;
  const double scale = op == RED_MEAN && red > 0 ? 1.0 / red : 1.0;
  if (inner == 1) {
    parallel_for(outer, std::max<long>(1, (1 << 15) / std::max<long>(1, red)), [&](long o0, long o1) {
      for (long o = o0; o < o1; ++o) {
        const float* p = x + o * red;
        if (is_sum) {
          double s[4] = {0, 0, 0, 0};
          long r = 0;
          for (; r + 4 <= red; r += 4) {
            s[0] += p[r]; s[1] += p[r + 1]; s[2] += p[r + 2]; s[3] += p[r + 3];
          }
          for (; r < red; ++r) s[0] += p[r];
          out[o] = (float)(((s[0] + s[1]) + (s[2] + s[3])) * scale);
        } else {
          float m = red ? p[0] : (op == RED_MAX ? -INFINITY : INFINITY);
          bool nan = false;
          for (long r = 0; r < red; ++r) {
            float v = p[r];
            nan |= v != v;
            m = op == RED_MAX ? (v > m ? v : m) : (v < m ? v : m);
          }
          out[o] = nan ? NAN : m;
        }
      }
    });
    return;
  }
  // inner > 1: accumulate whole rows of `inner` values. Split over outer when there is enough of
  // it, otherwise over the reduced axis with per-thread partial rows (e.g. a bias gradient).
  auto run = [&](long o, long r0, long r1, double* acc) {
    const float* p = x + (o * red + r0) * inner;
    for (long r = r0; r < r1; ++r, p += inner) {
      if (is_sum)
        for (long i = 0; i < inner; ++i) acc[i] += p[i];
      else if (op == RED_MAX)
        for (long i = 0; i < inner; ++i) acc[i] = (p[i] > acc[i] || p[i] != p[i]) ? p[i] : acc[i];
      else
        for (long i = 0; i < inner; ++i) acc[i] = (p[i] < acc[i] || p[i] != p[i]) ? p[i] : acc[i];
    }
  };
  const double init = is_sum ? 0.0 : (op == RED_MAX ? -INFINITY : INFINITY);
  Pool& pool = Pool::get();
  const int T = pool.threads();
  if (outer >= T || outer * red * inner < (1 << 16) || T == 1) {
    parallel_for(outer, 1, [&](long o0, long o1) {
      std::vector<double> acc(inner);
      for (long o = o0; o < o1; ++o) {
        std::fill(acc.begin(), acc.end(), init);
        run(o, 0, red, acc.data());
        for (long i = 0; i < inner; ++i) out[o * inner + i] = (float)(acc[i] * scale);
      }
    });
    return;
  }
  for (long o = 0; o < outer; ++o) {
    int parts = (int)std::min<long>(T, red);
    std::vector<std::vector<double>> acc(parts, std::vector<double>(inner, init));
    pool.run(parts, [&](int t) { run(o, red * t / parts, red * (t + 1) / parts, acc[t].data()); });
    for (long i = 0; i < inner; ++i) {
      double v = acc[0][i];
      bool nan = v != v;
      for (int t = 1; t < parts; ++t) {
        double w = acc[t][i];
        nan |= w != w;
        if (is_sum) v += w;
        else if (op == RED_MAX) v = w > v ? w : v;
        else v = w < v ? w : v;
      }
      out[o * inner + i] = nan && !is_sum ? NAN : (float)(v * scale);
    }
  }
}

namespace {
template <class T>
void transpose_t(const T* x, const std::vector<long>& shape, const std::vector<long>& perm, T* out) {
  const int D = (int)shape.size();
  long total = 1;
  for (long d : shape) total *= d;
  if (total == 0) return;
  if (D == 0) {
    out[0] = x[0];
    return;
  }
  std::vector<long> in_stride(D), oshape(D), os(D);
  for (int i = D - 1, s = 1; i >= 0; --i) {
    in_stride[i] = s;
    s *= shape[i];
  }
  for (int i = 0; i < D; ++i) {
    oshape[i] = shape[perm[i]];
    os[i] = in_stride[perm[i]];  // input stride when moving along output dim i
  }
  const long L = oshape[D - 1], rows = total / L, sL = os[D - 1];
  parallel_for(rows, std::max<long>(1, (1 << 14) / L), [&](long r0, long r1) {
    std::vector<long> idx(D, 0);
    long rem = r0, off = 0;
    for (int i = D - 2; i >= 0; --i) {
      idx[i] = rem % oshape[i];
      rem /= oshape[i];
      off += idx[i] * os[i];
    }
    for (long r = r0; r < r1; ++r) {
      T* o = out + r * L;
      const T* p = x + off;
      if (sL == 1) std::memcpy(o, p, L * sizeof(T));
      else for (long i = 0; i < L; ++i) o[i] = p[i * sL];
      for (int i = D - 2; i >= 0; --i) {
        off += os[i];
        if (++idx[i] < oshape[i]) break;
        off -= os[i] * oshape[i];
        idx[i] = 0;
      }
    }
  });
}
}  // namespace

void transpose(const float* x, const std::vector<long>& shape, const std::vector<long>& perm, float* out) {
  transpose_t(x, shape, perm, out);
}

void transpose(const uint16_t* x, const std::vector<long>& shape, const std::vector<long>& perm, uint16_t* out) {
  transpose_t(x, shape, perm, out);
}

namespace {
// Row max, then o = exp(p - max) with the sum of o accumulated in double (like tfjs's cpu Sum), then o /= sum.
void softmax_row(const float* p, float* o, long cols) {
  float m = -INFINITY;
  for (long i = 0; i < cols; ++i) m = p[i] > m ? p[i] : m;
  for (long i = 0; i < cols; ++i) o[i] = vm::exp_s(p[i] - m);
  double s = 0;
  for (long i = 0; i < cols; ++i) s += o[i];
  float inv = (float)(1.0 / s);
  for (long i = 0; i < cols; ++i) o[i] *= inv;
}

#ifdef SDLAB_VMATH_X86
__attribute__((target("avx2,fma"))) void softmax_row_simd(const float* p, float* o, long cols) {
  long i = 0;
  const float m = row_max_simd(p, cols);
  const __m256 mb = _mm256_set1_ps(m);
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  for (i = 0; i + 8 <= cols; i += 8) {
    __m256 e = vm::exp8(_mm256_sub_ps(_mm256_loadu_ps(p + i), mb));
    _mm256_storeu_ps(o + i, e);
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  if (i < cols) {
    alignas(32) float r[8];
    for (int k = 0; k < 8; ++k) r[k] = i + k < cols ? p[i + k] - m : -INFINITY;  // exp(-inf) = 0 adds nothing
    __m256 e = vm::exp8(_mm256_load_ps(r));
    _mm256_store_ps(r, e);
    std::memcpy(o + i, r, (cols - i) * sizeof(float));
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  alignas(32) double d[4];
  _mm256_store_pd(d, _mm256_add_pd(s0, s1));
  const __m256 inv = _mm256_set1_ps((float)(1.0 / ((d[0] + d[1]) + (d[2] + d[3]))));
  for (i = 0; i + 8 <= cols; i += 8) _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_loadu_ps(o + i), inv));
  for (; i < cols; ++i) o[i] *= _mm256_cvtss_f32(inv);
}
#elif defined(SDLAB_VMATH_NEON)
void softmax_row_simd(const float* p, float* o, long cols) {
  long i = 0;
  const float m = row_max_simd(p, cols);
  const float32x4_t mb = vdupq_n_f32(m);
  float64x2_t s0 = vdupq_n_f64(0), s1 = s0;
  for (; i + 4 <= cols; i += 4) {
    const float32x4_t e = vm::exp4(vsubq_f32(vld1q_f32(p + i), mb));
    vst1q_f32(o + i, e);
    s0 = vaddq_f64(s0, vcvt_f64_f32(vget_low_f32(e)));
    s1 = vaddq_f64(s1, vcvt_high_f64_f32(e));
  }
  double s = vaddvq_f64(vaddq_f64(s0, s1));
  for (; i < cols; ++i) s += (o[i] = vm::exp_s(p[i] - m));
  const float inv = (float)(1.0 / s);
  const float32x4_t iv = vdupq_n_f32(inv);
  for (i = 0; i + 4 <= cols; i += 4) vst1q_f32(o + i, vmulq_f32(vld1q_f32(o + i), iv));
  for (; i < cols; ++i) o[i] *= inv;
}
#endif
}  // namespace

void softmax(const float* x, float* out, long rows, long cols) {
  const bool simd = use_simd();
  parallel_for(rows, std::max<long>(1, (1 << 14) / std::max<long>(1, cols)), [&](long r0, long r1) {
    for (long r = r0; r < r1; ++r) {
#ifdef SDLAB_VMATH_SIMD
      if (simd) {
        softmax_row_simd(x + r * cols, out + r * cols, cols);
        continue;
      }
#endif
      softmax_row(x + r * cols, out + r * cols, cols);
    }
  });
  (void)simd;
}

void reduce_axes(int op, const float* x, const std::vector<long>& shape, const std::vector<bool>& reduced, float* out) {
  // Drop size-1 dims, merge neighbours of the same kind: dims alternate kept / reduced.
  std::vector<long> n;
  std::vector<bool> red;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 1) continue;
    if (!n.empty() && red.back() == reduced[i]) n.back() *= shape[i];
    else {
      n.push_back(shape[i]);
      red.push_back(reduced[i]);
    }
  }
  long total = 1, count = 1;
  for (size_t i = 0; i < n.size(); ++i) {
    total *= n[i];
    if (red[i]) count *= n[i];
  }
  if (total == 0) return;
  // At most [kept] reduced [kept]: the plain kernel.
  int D = (int)n.size();
  int nred = 0;
  for (bool r : red) nred += r;
  if (nred <= 1) {
    long outer = 1, rr = 1, inner = 1;
    bool seen = false;
    for (int i = 0; i < D; ++i) {
      if (red[i]) { rr = n[i]; seen = true; }
      else if (!seen) outer *= n[i];
      else inner *= n[i];
    }
    return reduce(op, x, out, outer, rr, inner);
  }
  // General: parallel over the leading kept dim (if any); the rest walks memory in order and
  // accumulates (in double) into the output slot of each row.
  const bool is_sum = op == RED_SUM || op == RED_MEAN;
  const double init = is_sum ? 0.0 : (op == RED_MAX ? -INFINITY : INFINITY);
  const long outer = red[0] ? 1 : n[0];
  const int d0 = red[0] ? 0 : 1;
  std::vector<long> in_stride(D), out_stride(D, 0);
  for (int i = D - 1, a = 1, b = 1; i >= 0; --i) {
    in_stride[i] = a;
    a *= n[i];
    if (!red[i]) {
      out_stride[i] = b;
      b *= n[i];
    }
  }
  const long out_inner = outer > 0 ? (total / count) / outer : 0;  // output slots per outer index
  const long L = n[D - 1];
  const bool last_red = red[D - 1];
  const long rows = total / outer / L;
  const double scale = op == RED_MEAN ? 1.0 / count : 1.0;
  parallel_for(outer, 1, [&](long o0, long o1) {
    std::vector<double> acc(out_inner);
    std::vector<long> idx(D, 0);
    for (long o = o0; o < o1; ++o) {
      std::fill(acc.begin(), acc.end(), init);
      const float* base = x + o * (d0 ? in_stride[0] : 0);
      std::fill(idx.begin(), idx.end(), 0);
      long ioff = 0, ooff = 0;
      for (long r = 0; r < rows; ++r) {
        const float* p = base + ioff;
        if (last_red) {
          double& a = acc[ooff];
          if (is_sum) {
            double s = 0;
            for (long i = 0; i < L; ++i) s += p[i];
            a += s;
          } else {
            for (long i = 0; i < L; ++i) {
              float v = p[i];
              a = (op == RED_MAX ? v > a : v < a) || v != v ? v : a;
            }
          }
        } else {
          double* a = acc.data() + ooff;
          if (is_sum)
            for (long i = 0; i < L; ++i) a[i] += p[i];
          else
            for (long i = 0; i < L; ++i) {
              float v = p[i];
              a[i] = (op == RED_MAX ? v > a[i] : v < a[i]) || v != v ? v : a[i];
            }
        }
        for (int i = D - 2; i >= d0; --i) {
          ioff += in_stride[i];
          ooff += out_stride[i];
          if (++idx[i] < n[i]) break;
          ioff -= in_stride[i] * n[i];
          ooff -= out_stride[i] * n[i];
          idx[i] = 0;
        }
      }
      float* po = out + o * out_inner;
      for (long i = 0; i < out_inner; ++i) po[i] = (float)(acc[i] * scale);
    }
  });
}

// ---- fused normalisation and activations ----

namespace {

// σ(v[i]) for a row, vectorised where possible.
void sigmoid_row(const float* v, float* out, long n) {
#ifdef SDLAB_VMATH_SIMD
  if (use_simd()) return unary_simd<UN_SIGMOID>(v, out, n);
#endif
  for (long i = 0; i < n; ++i) out[i] = vm::sigmoid_s(v[i]);
}

void normcdf_row(const float* v, float* out, long n) {
#ifdef SDLAB_VMATH_SIMD
  if (use_simd()) return unary_simd<UN_NORMCDF>(v, out, n);
#endif
  for (long i = 0; i < n; ++i) out[i] = vm::normcdf_s(v[i]);
}

void exp_row(const float* v, float* out, long n) {
#ifdef SDLAB_VMATH_SIMD
  if (use_simd()) return unary_simd<UN_EXP>(v, out, n);
#endif
  for (long i = 0; i < n; ++i) out[i] = vm::exp_s(v[i]);
}

// Work split for [B, S, C] passes: tasks of (b, chunk of positions), at least ~16k values each.
struct Chunks {
  long per, n;  // positions per chunk, chunks per batch item
  Chunks(long S, long C) {
    per = std::max<long>(1, std::min<long>(S, (1 << 14) / std::max<long>(1, C)));
    n = (S + per - 1) / per;
  }
};

constexpr long ROW_TILE = 1024;  // channels processed per inner row step (bounds the row buffers)

}  // namespace

namespace {
// S == 1 (LayerNorm and the like): every row is its own batch item, statistics within the row.
void row_norm(const float* x, long B, long C, long G, const float* gamma, const float* beta, float eps, int act,
              float* y, float* mean, float* rstd) {
  const long Cg = C / G;
  parallel_for(B, std::max<long>(1, (1 << 13) / C), [&](long r0, long r1) {
    std::vector<float> sig(act ? C : 0);
    for (long r = r0; r < r1; ++r) {
      const float* __restrict xr = x + r * C;
      float* __restrict o = y + r * C;
      for (long g = 0; g < G; ++g) {
        double a = 0, q = 0;
        for (long c = g * Cg; c < (g + 1) * Cg; ++c) {
          a += xr[c];
          q += (double)xr[c] * xr[c];
        }
        const double m = a / Cg, var = std::max(0.0, q / Cg - m * m);
        const float mf = (float)m, rs = (float)(1.0 / std::sqrt(var + (double)eps));
        mean[r * G + g] = mf;
        rstd[r * G + g] = rs;
        for (long c = g * Cg; c < (g + 1) * Cg; ++c) o[c] = (xr[c] - mf) * rs * (gamma ? gamma[c] : 1.f) + (beta ? beta[c] : 0.f);
      }
      if (act == 1) {
        sigmoid_row(o, sig.data(), C);
        for (long c = 0; c < C; ++c) o[c] *= sig[c];
      }
    }
  });
}

void row_norm_grad(const float* dy, const float* x, long B, long C, long G, const float* gamma, const float* beta,
                   const float* mean, const float* rstd, int act, float* dx, float* dgamma, float* dbeta) {
  const long Cg = C / G;
  Pool& pool = Pool::get();
  const long parts = std::max<long>(1, std::min<long>(4 * pool.threads(), B * C / 8192));
  std::vector<double> acc((size_t)parts * C * 2, 0.0);  // per part: dgamma, dbeta partial sums
  pool.run((int)parts, [&](int p) {
    std::vector<float> xh(C), dz(C), sig(C), dg(C, 0.f), db(C, 0.f);
    const long r0 = B * p / parts, r1 = B * (p + 1) / parts;
    for (long r = r0; r < r1; ++r) {
      const float* __restrict xr = x + r * C;
      const float* __restrict g = dy + r * C;
      for (long c = 0; c < C; ++c) xh[c] = (xr[c] - mean[r * G + c / Cg]) * rstd[r * G + c / Cg];
      if (act == 1) {
        for (long c = 0; c < C; ++c) dz[c] = xh[c] * (gamma ? gamma[c] : 1.f) + (beta ? beta[c] : 0.f);
        sigmoid_row(dz.data(), sig.data(), C);
        for (long c = 0; c < C; ++c) dz[c] = g[c] * (sig[c] * (1.f + dz[c] * (1.f - sig[c])));
      } else {
        for (long c = 0; c < C; ++c) dz[c] = g[c];
      }
      for (long c = 0; c < C; ++c) {
        dg[c] += dz[c] * xh[c];
        db[c] += dz[c];
      }
      float* __restrict o = dx + r * C;
      for (long gi = 0; gi < G; ++gi) {
        double a1 = 0, a2 = 0;
        for (long c = gi * Cg; c < (gi + 1) * Cg; ++c) {
          const float dxh = dz[c] * (gamma ? gamma[c] : 1.f);
          a1 += dxh;
          a2 += (double)dxh * xh[c];
        }
        const float m1 = (float)(a1 / Cg), m2 = (float)(a2 / Cg), rs = rstd[r * G + gi];
        for (long c = gi * Cg; c < (gi + 1) * Cg; ++c) o[c] = rs * (dz[c] * (gamma ? gamma[c] : 1.f) - m1 - xh[c] * m2);
      }
      if ((r - r0) % 256 == 255 || r == r1 - 1) {  // flush float partials into double every 256 rows
        double* a = acc.data() + p * C * 2;
        for (long c = 0; c < C; ++c) {
          a[c] += dg[c];
          a[C + c] += db[c];
          dg[c] = db[c] = 0.f;
        }
      }
    }
  });
  for (long c = 0; c < C; ++c) {
    double a = 0, q = 0;
    for (long p = 0; p < parts; ++p) {
      a += acc[p * C * 2 + c];
      q += acc[p * C * 2 + C + c];
    }
    if (dgamma) dgamma[c] = (float)a;
    if (dbeta) dbeta[c] = (float)q;
  }
}
}  // namespace

void group_norm(const float* x, long B, long S, long C, long G, const float* gamma, const float* beta, float eps,
                int act, float* y, float* mean, float* rstd) {
  if (S == 1) return row_norm(x, B, C, G, gamma, beta, eps, act, y, mean, rstd);
  const long Cg = C / G;
  const Chunks ch(S, C);
  // Pass 1: per (b, chunk), per-channel sums of x and x² in double, folded into groups.
  std::vector<double> part((size_t)B * ch.n * G * 2, 0.0);
  parallel_for(B * ch.n, 1, [&](long t0, long t1) {
    std::vector<double> s1(C), s2(C);
    for (long t = t0; t < t1; ++t) {
      const long b = t / ch.n, q = t % ch.n, sb = q * ch.per, se = std::min(S, sb + ch.per);
      std::fill(s1.begin(), s1.end(), 0.0);
      std::fill(s2.begin(), s2.end(), 0.0);
      for (long sp = sb; sp < se; ++sp) {
        const float* r = x + (b * S + sp) * C;
        for (long c = 0; c < C; ++c) {
          const double v = r[c];
          s1[c] += v;
          s2[c] += v * v;
        }
      }
      double* pp = part.data() + t * G * 2;
      for (long c = 0; c < C; ++c) {
        pp[(c / Cg) * 2] += s1[c];
        pp[(c / Cg) * 2 + 1] += s2[c];
      }
    }
  });
  const double cnt = (double)S * Cg;
  for (long b = 0; b < B; ++b)
    for (long g = 0; g < G; ++g) {
      double a = 0, q = 0;
      for (long k = 0; k < ch.n; ++k) {
        a += part[((b * ch.n + k) * G + g) * 2];
        q += part[((b * ch.n + k) * G + g) * 2 + 1];
      }
      const double m = a / cnt, var = std::max(0.0, q / cnt - m * m);
      mean[b * G + g] = (float)m;
      rstd[b * G + g] = (float)(1.0 / std::sqrt(var + (double)eps));
    }
  // Pass 2: y = x·scale[c] + shift[c] (per batch item), then the activation.
  parallel_for(B * ch.n, 1, [&](long t0, long t1) {
    std::vector<float> scale(C), shift(C), sig(act ? C : 0);
    long cur = -1;
    for (long t = t0; t < t1; ++t) {
      const long b = t / ch.n, q = t % ch.n, sb = q * ch.per, se = std::min(S, sb + ch.per);
      if (b != cur) {
        for (long c = 0; c < C; ++c) {
          const float m = mean[b * G + c / Cg], r = rstd[b * G + c / Cg];
          const float gm = gamma ? gamma[c] : 1.f, bt = beta ? beta[c] : 0.f;
          scale[c] = r * gm;
          shift[c] = bt - m * r * gm;
        }
        cur = b;
      }
      for (long sp = sb; sp < se; ++sp) {
        const float* __restrict r = x + (b * S + sp) * C;
        float* __restrict o = y + (b * S + sp) * C;
        const float* __restrict sc = scale.data();
        const float* __restrict sh = shift.data();
        for (long c = 0; c < C; ++c) o[c] = r[c] * sc[c] + sh[c];
        if (act == 1) {
          sigmoid_row(o, sig.data(), C);
          const float* __restrict sg = sig.data();
          for (long c = 0; c < C; ++c) o[c] *= sg[c];
        }
      }
    }
  });
}

void group_norm_grad(const float* dy, const float* x, long B, long S, long C, long G, const float* gamma,
                     const float* beta, const float* mean, const float* rstd, int act, float* dx, float* dgamma,
                     float* dbeta) {
  if (S == 1) return row_norm_grad(dy, x, B, C, G, gamma, beta, mean, rstd, act, dx, dgamma, dbeta);
  const long Cg = C / G;
  const Chunks ch(S, C);
  const long tasks = B * ch.n;
  std::vector<float> gm(C), bt(C);
  for (long c = 0; c < C; ++c) {
    gm[c] = gamma ? gamma[c] : 1.f;
    bt[c] = beta ? beta[c] : 0.f;
  }
  // Per-thread row state: the group statistics spread over channels for the current batch item.
  struct Rows {
    std::vector<float> mc, rc, xh, dz, sig;
    long b = -1;
    explicit Rows(long C) : mc(C), rc(C), xh(C), dz(C), sig(C) {}
  };
  // xh = xhat, dz = the gradient before the activation, for position sp of item b.
  auto load = [&](Rows& w, long b, long sp) {
    if (w.b != b) {
      for (long c = 0; c < C; ++c) {
        w.mc[c] = mean[b * G + c / Cg];
        w.rc[c] = rstd[b * G + c / Cg];
      }
      w.b = b;
    }
    const float* __restrict r = x + (b * S + sp) * C;
    const float* __restrict g = dy + (b * S + sp) * C;
    float* __restrict xh = w.xh.data();
    float* __restrict dz = w.dz.data();
    const float* __restrict mc = w.mc.data();
    const float* __restrict rc = w.rc.data();
    for (long c = 0; c < C; ++c) xh[c] = (r[c] - mc[c]) * rc[c];
    if (act == 1) {
      // z = xhat·gamma + beta; silu'(z) = σ(z)·(1 + z·(1 − σ(z)))
      for (long c = 0; c < C; ++c) dz[c] = xh[c] * gm[c] + bt[c];
      sigmoid_row(dz, w.sig.data(), C);
      const float* __restrict sg = w.sig.data();
      for (long c = 0; c < C; ++c) {
        const float z = dz[c], sv = sg[c];
        dz[c] = g[c] * (sv * (1.f + z * (1.f - sv)));
      }
    } else {
      for (long c = 0; c < C; ++c) dz[c] = g[c];
    }
  };
  // Pass 1, per (b, chunk): per-channel sums of dxhat, dxhat·xhat (for the group means) and of
  // dz·xhat, dz (dgamma, dbeta), in float within a chunk, then double.
  std::vector<double> cpart((size_t)tasks * C * 4, 0.0);
  parallel_for(tasks, 1, [&](long t0, long t1) {
    Rows w(C);
    std::vector<float> a1(C), a2(C), dg(C), db(C);
    for (long t = t0; t < t1; ++t) {
      const long b = t / ch.n, q = t % ch.n, sb = q * ch.per, se = std::min(S, sb + ch.per);
      std::fill(a1.begin(), a1.end(), 0.f);
      std::fill(a2.begin(), a2.end(), 0.f);
      std::fill(dg.begin(), dg.end(), 0.f);
      std::fill(db.begin(), db.end(), 0.f);
      for (long sp = sb; sp < se; ++sp) {
        load(w, b, sp);
        const float* __restrict dz = w.dz.data();
        const float* __restrict xh = w.xh.data();
        for (long c = 0; c < C; ++c) {
          const float dxh = dz[c] * gm[c];
          a1[c] += dxh;
          a2[c] += dxh * xh[c];
          dg[c] += dz[c] * xh[c];
          db[c] += dz[c];
        }
      }
      double* cp = cpart.data() + t * C * 4;
      for (long c = 0; c < C; ++c) {
        cp[c * 4] = a1[c];
        cp[c * 4 + 1] = a2[c];
        cp[c * 4 + 2] = dg[c];
        cp[c * 4 + 3] = db[c];
      }
    }
  });
  const double cnt = (double)S * Cg;
  std::vector<double> g1(B * G, 0.0), g2(B * G, 0.0);
  for (long t = 0; t < tasks; ++t) {
    const long b = t / ch.n;
    const double* cp = cpart.data() + t * C * 4;
    for (long c = 0; c < C; ++c) {
      g1[b * G + c / Cg] += cp[c * 4];
      g2[b * G + c / Cg] += cp[c * 4 + 1];
    }
  }
  if (dgamma || dbeta)
    for (long c = 0; c < C; ++c) {
      double a = 0, q = 0;
      for (long t = 0; t < tasks; ++t) {
        a += cpart[(t * C + c) * 4 + 2];
        q += cpart[(t * C + c) * 4 + 3];
      }
      if (dgamma) dgamma[c] = (float)a;
      if (dbeta) dbeta[c] = (float)q;
    }
  // Pass 2: dx = rstd·(dxhat − mean(dxhat) − xhat·mean(dxhat·xhat)) per group.
  parallel_for(tasks, 1, [&](long t0, long t1) {
    Rows w(C);
    std::vector<float> m1(C), m2(C);
    long cur = -1;
    for (long t = t0; t < t1; ++t) {
      const long b = t / ch.n, q = t % ch.n, sb = q * ch.per, se = std::min(S, sb + ch.per);
      if (b != cur) {
        for (long c = 0; c < C; ++c) {
          m1[c] = (float)(g1[b * G + c / Cg] / cnt);
          m2[c] = (float)(g2[b * G + c / Cg] / cnt);
        }
        cur = b;
      }
      for (long sp = sb; sp < se; ++sp) {
        load(w, b, sp);
        const float* __restrict dz = w.dz.data();
        const float* __restrict xh = w.xh.data();
        const float* __restrict rc = w.rc.data();
        float* __restrict o = dx + (b * S + sp) * C;
        for (long c = 0; c < C; ++c) o[c] = rc[c] * (dz[c] * gm[c] - m1[c] - xh[c] * m2[c]);
      }
    }
  });
}

void activation(int op, const float* x, float* y, long n) {
  parallel_for(n, 1 << 14, [&](long s, long e) {
    float buf[ROW_TILE];
    for (long i0 = s; i0 < e; i0 += ROW_TILE) {
      const long m = std::min(ROW_TILE, e - i0);
      const float* __restrict xv = x + i0;
      float* __restrict yv = y + i0;
      if (op == 0) {
        sigmoid_row(xv, buf, m);
        for (long i = 0; i < m; ++i) yv[i] = xv[i] * buf[i];
      } else {
        normcdf_row(xv, buf, m);  // GELU = x·Φ(x)
        for (long i = 0; i < m; ++i) yv[i] = xv[i] * buf[i];
      }
    }
  });
}

void activation_grad(int op, const float* dy, const float* x, float* dx, long n) {
  parallel_for(n, 1 << 14, [&](long s, long e) {
    float buf[ROW_TILE], buf2[ROW_TILE];
    for (long i0 = s; i0 < e; i0 += ROW_TILE) {
      const long m = std::min(ROW_TILE, e - i0);
      const float* __restrict xv = x + i0;
      const float* __restrict g = dy + i0;
      float* __restrict o = dx + i0;
      if (op == 0) {
        // silu'(x) = σ(x)·(1 + x·(1 − σ(x)))
        sigmoid_row(xv, buf, m);
        for (long i = 0; i < m; ++i) o[i] = g[i] * (buf[i] * (1.f + xv[i] * (1.f - buf[i])));
      } else {
        // gelu'(x) = Φ(x) + x·φ(x), φ(x) = exp(−x²/2)/√(2π)
        for (long i = 0; i < m; ++i) buf2[i] = -0.5f * xv[i] * xv[i];
        normcdf_row(xv, buf, m);
        exp_row(buf2, buf2, m);
        const float k = (float)(0.5 * M_2_SQRTPI * M_SQRT1_2);  // 1/√(2π)
        for (long i = 0; i < m; ++i) o[i] = g[i] * (buf[i] + xv[i] * buf2[i] * k);
      }
    }
  });
}

// No FMA contraction here: a fused multiply-add rounds once where the tfjs ops round twice (the
// build passes -ffp-contract=off for the whole addon; this keeps it so for other g++ builds).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
void adamw(const float* p, const float* g, const float* m, const float* v, float* p_out, float* m_out, float* v_out,
           long n, const AdamHyper& h) {
  parallel_for(n, 1 << 14, [&](long s, long e) {
    for (long i = s; i < e; ++i) {
      const float gi = g[i];
      const float mi = m[i] * h.b1 + gi * h.c1;
      const float vi = v[i] * h.b2 + (gi * gi) * h.c2;
      const float pd = h.has_decay ? p[i] * h.decay : p[i];
      const float denom = std::sqrt(vi) / h.bc2 + h.eps;
      m_out[i] = mi;
      v_out[i] = vi;
      p_out[i] = pd - (mi / denom) * h.step;
    }
  });
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

}  // namespace sdlab

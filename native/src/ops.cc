// Memory-bound kernels. Broadcasting binary ops first merge adjacent dimensions that broadcast
// the same way, so the common cases (same shape, scalar, per-channel bias over NHWC) become one
// tight inner loop over contiguous memory. Reductions accumulate in double, like tfjs's cpu
// backend (which sums in JS numbers), so the two agree closely.
#include "ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "pool.h"

namespace sdlab {

namespace {

template <int OP>
inline float bop(float a, float b) {
  if (OP == BIN_ADD) return a + b;
  if (OP == BIN_SUB) return a - b;
  if (OP == BIN_MUL) return a * b;
  if (OP == BIN_DIV) return a / b;
  if (OP == BIN_SQDIFF) return (a - b) * (a - b);
  if (OP == BIN_MAX) return std::isnan(a) || std::isnan(b) ? NAN : (a > b ? a : b);
  return std::isnan(a) || std::isnan(b) ? NAN : (a < b ? a : b);
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
    default: return bin_row<BIN_MIN>;
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
    case UN_SIGMOID: return 1.f / (1.f + std::exp(-v));
    case UN_TANH: return std::tanh(v);
    case UN_EXP: return std::exp(v);
    case UN_LOG: return std::log(v);
    case UN_SQRT: return std::sqrt(v);
    case UN_RSQRT: return 1.f / std::sqrt(v);
    case UN_SQUARE: return v * v;
    case UN_NEG: return -v;
    case UN_ABS: return std::fabs(v);
    case UN_STEP: return std::isnan(v) ? NAN : (v > 0.f ? 1.f : alpha);
    case UN_LEAKYRELU: return v < 0.f ? alpha * v : v;
    case UN_ELU: return v < 0.f ? std::expm1(v) : v;
    default: return v;
  }
}
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

void transpose(const float* x, const std::vector<long>& shape, const std::vector<long>& perm, float* out) {
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
      float* o = out + r * L;
      const float* p = x + off;
      if (sL == 1) std::memcpy(o, p, L * sizeof(float));
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

void softmax(const float* x, float* out, long rows, long cols) {
  parallel_for(rows, std::max<long>(1, (1 << 14) / std::max<long>(1, cols)), [&](long r0, long r1) {
    for (long r = r0; r < r1; ++r) {
      const float* p = x + r * cols;
      float* o = out + r * cols;
      float m = -INFINITY;
      for (long i = 0; i < cols; ++i) m = p[i] > m ? p[i] : m;
      double s = 0;
      for (long i = 0; i < cols; ++i) {
        o[i] = std::exp(p[i] - m);
        s += o[i];
      }
      float inv = (float)(1.0 / s);
      for (long i = 0; i < cols; ++i) o[i] *= inv;
    }
  });
}

}  // namespace sdlab

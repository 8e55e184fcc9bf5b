// Standalone check of the vectorised memory-bound kernels without Node (for CPUs whose Node the
// tests cannot run, e.g. aarch64 under qemu): exp / sigmoid / erf / SiLU / GELU against double
// precision in ulps over a dense sweep and the special values, the vector paths against the
// scalar ones bit for bit, softmax, GroupNorm + SiLU, and AdamW against a float reference that
// rounds each operation (the tfjs composition's order), and float16 → float32 for all 65,536 bit
// patterns against the value computed in double.
//   g++ -O2 -std=c++17 -pthread -ffp-contract=off -Inative/src native/test/ops_check.cc native/src/ops.cc
//       native/src/copy.cc native/src/pool.cc -o /tmp/ops_check && /tmp/ops_check
// Prints the worst error per kernel and exits 1 if any exceeds its bound.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "copy.h"
#include "ops.h"
#include "pool.h"
#include "vmath.h"

namespace {

// Distance in units in the last place of float at the reference's magnitude (denormals: absolute).
double ulps(float got, double ref) {
  if (std::isnan(ref)) return std::isnan(got) ? 0 : 1e30;
  if (std::isinf((float)ref)) return got == (float)ref ? 0 : 1e30;  // past FLT_MAX: must round to inf
  const double a = std::max(std::fabs(ref), (double)FLT_MIN);
  int e;
  std::frexp(a, &e);
  return std::fabs(got - ref) / std::ldexp(1.0, e - 24);
}

bool report(const char* what, double worst, double bound) {
  const bool ok = worst <= bound;
  std::printf("%-34s worst %.3g (bound %g) %s\n", what, worst, bound, ok ? "OK" : "FAIL");
  return ok;
}

}  // namespace

int main() {
  sdlab::Pool::get().set_threads(2);
  std::printf("vector paths %s\n", sdlab::use_simd() ? "on" : "off (scalar)");
  bool ok = true;

  // Inputs: a dense sweep of [-110, 110] (both ends past exp's over/underflow and erf's saturation),
  // a fine sweep of [-4, 4], the special values, and odd counts so the tails are exercised.
  std::vector<float> x;
  for (long i = 0; i <= 220000; ++i) x.push_back(-110.0f + i * 0.001f);
  for (long i = 0; i <= 80001; ++i) x.push_back(-4.0f + i * 1e-4f);
  const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-30f, -1e-30f, 88.7f, 89.0f, -87.5f, -103.9f, -104.0f, 3.925f, -3.925f};
  for (float s : specials) x.push_back(s);
  const long n = (long)x.size();
  std::vector<float> y(n);

  struct Case { const char* name; int op; double (*ref)(double); double bound; };
  const Case cases[] = {
      {"exp", sdlab::UN_EXP, [](double v) { return std::exp(v); }, 2},
      {"sigmoid", sdlab::UN_SIGMOID, [](double v) { return 1 / (1 + std::exp(-v)); }, 3},
      {"erf", sdlab::UN_ERF, [](double v) { return std::erf(v); }, 3},
  };
  for (const Case& c : cases) {
    sdlab::unary(c.op, x.data(), y.data(), n, 0.f);
    double worst = 0;
    long mismatch = 0;
    for (long i = 0; i < n; ++i) {
      worst = std::max(worst, ulps(y[i], c.ref((double)x[i])));
      const float s = c.op == sdlab::UN_EXP ? sdlab::vm::exp_s(x[i])
                      : c.op == sdlab::UN_SIGMOID ? sdlab::vm::sigmoid_s(x[i])
                                                  : sdlab::vm::erf_s(x[i]);
      if (std::memcmp(&s, &y[i], 4) != 0 && !(std::isnan(s) && std::isnan(y[i]))) ++mismatch;
    }
    ok &= report(c.name, worst, c.bound);
    char what[64];
    std::snprintf(what, sizeof what, "%s: vector vs scalar, differing", c.name);
    ok &= report(what, (double)mismatch, 0);
  }
  {  // SiLU and GELU (x·Φ(x)): ulps where |y| ≥ 1e-6; absolute below, where GELU's Φ is 0 from x ≈ −5.55
    // on (Φ < 1.5e-8 there) and SiLU's σ is denormal.
    const double r2 = std::sqrt(0.5);
    for (int op = 0; op < 2; ++op) {
      sdlab::activation(op, x.data(), y.data(), n);
      double worst = 0, worst_abs = 0;
      for (long i = 0; i < n; ++i) {
        const double v = x[i];
        if (std::isinf(v) && op == 0 && v < 0) continue;  // −inf·σ(−inf) = −inf·0: NaN either way
        const double ref = op == 0 ? v / (1 + std::exp(-v)) : 0.5 * v * std::erfc(-v * r2);
        if (std::fabs(ref) >= 1e-6 || std::isnan(ref)) worst = std::max(worst, ulps(y[i], ref));
        else worst_abs = std::max(worst_abs, std::fabs(y[i] - ref));
      }
      ok &= report(op == 0 ? "silu (|y| >= 1e-6, ulps)" : "gelu (|y| >= 1e-6, ulps)", worst, 6);
      ok &= report(op == 0 ? "silu (|y| < 1e-6, absolute)" : "gelu (|y| < 1e-6, absolute)", worst_abs, 1e-7);
    }
  }

  std::mt19937 rng(3);
  std::uniform_real_distribution<float> U(-8, 8);
  {  // softmax over rows of several lengths (tails of every residue)
    double worst = 0;
    for (long cols : {1L, 3L, 7L, 8L, 77L, 256L, 1000L}) {
      const long rows = 5;
      std::vector<float> a(rows * cols), o(rows * cols);
      for (auto& v : a) v = U(rng);
      sdlab::softmax(a.data(), o.data(), rows, cols);
      for (long r = 0; r < rows; ++r) {
        double m = -INFINITY, s = 0;
        // exp of the float difference a − max, as the kernel (and tfjs) computes it
        auto e = [&](long i) { return std::exp((double)(float)(a[r * cols + i] - (float)m)); };
        for (long i = 0; i < cols; ++i) m = std::max(m, (double)a[r * cols + i]);
        for (long i = 0; i < cols; ++i) s += e(i);
        for (long i = 0; i < cols; ++i) worst = std::max(worst, ulps(o[r * cols + i], e(i) / s));
      }
    }
    ok &= report("softmax", worst, 8);
  }
  {  // GroupNorm + SiLU, [B, S, C] = [2, 37, 24], 6 groups
    const long B = 2, S = 37, C = 24, G = 6, cg = C / G;
    std::vector<float> a(B * S * C), gamma(C), beta(C), o(B * S * C), mean(B * G), rstd(B * G);
    for (auto& v : a) v = U(rng);
    for (auto& v : gamma) v = U(rng) / 8;
    for (auto& v : beta) v = U(rng) / 8;
    const float eps = 1e-5f;
    sdlab::group_norm(a.data(), B, S, C, G, gamma.data(), beta.data(), eps, 1, o.data(), mean.data(), rstd.data());
    double worst = 0;
    for (long b = 0; b < B; ++b)
      for (long g = 0; g < G; ++g) {
        double mu = 0, var = 0;
        for (long s = 0; s < S; ++s)
          for (long c = g * cg; c < (g + 1) * cg; ++c) mu += a[(b * S + s) * C + c];
        mu /= S * cg;
        for (long s = 0; s < S; ++s)
          for (long c = g * cg; c < (g + 1) * cg; ++c) var += std::pow(a[(b * S + s) * C + c] - mu, 2);
        var /= S * cg;
        for (long s = 0; s < S; ++s)
          for (long c = g * cg; c < (g + 1) * cg; ++c) {
            const double t = (a[(b * S + s) * C + c] - mu) / std::sqrt(var + eps) * gamma[c] + beta[c];
            worst = std::max(worst, std::fabs(o[(b * S + s) * C + c] - t / (1 + std::exp(-t))));
          }
      }
    ok &= report("group_norm + silu (absolute)", worst, 2e-6);
  }
  {  // AdamW: each operation rounded to float, in the composition's order (volatile: no contraction)
    const long N = 1001;
    std::vector<float> p(N), g(N), m(N), v(N), po(N), mo(N), vo(N);
    for (long i = 0; i < N; ++i) {
      p[i] = U(rng);
      g[i] = U(rng);
      m[i] = U(rng) / 8;
      v[i] = std::fabs(U(rng)) / 8;
    }
    const sdlab::AdamHyper h{0.9f, 0.1f, 0.999f, 0.001f, 0.99999f, 0.7f, 1e-8f, 1e-3f, true};
    sdlab::adamw(p.data(), g.data(), m.data(), v.data(), po.data(), mo.data(), vo.data(), N, h);
    long differing = 0;
    for (long i = 0; i < N; ++i) {
      volatile float t1 = m[i] * h.b1, t2 = g[i] * h.c1, mi = t1 + t2;
      volatile float g2 = g[i] * g[i], t3 = v[i] * h.b2, t4 = g2 * h.c2, vi = t3 + t4;
      volatile float pd = p[i] * h.decay, sq = std::sqrt((float)vi), q = sq / h.bc2, den = q + h.eps;
      volatile float r = mi / den, st = r * h.step, pn = pd - st;
      differing += mo[i] != mi || vo[i] != vi || po[i] != pn;
    }
    ok &= report("adamw: values differing from float ref", (double)differing, 0);
  }
  {  // float16 → float32: every bit pattern, against sign · 2^(e−15) · (1 + m/1024) (or m·2^−24) in double
    std::vector<uint16_t> h(65536);
    for (long i = 0; i < 65536; ++i) h[i] = (uint16_t)i;
    std::vector<float> f(65536);
    sdlab::halves_to_floats(h.data(), f.data(), 65536);
    long differing = 0;
    for (long i = 0; i < 65536; ++i) {
      const int e = (i >> 10) & 31, m = i & 1023;
      const double sign = (i & 0x8000) ? -1 : 1;
      const double ref = e == 31 ? (m ? NAN : sign * INFINITY) : e == 0 ? sign * std::ldexp((double)m, -24) : sign * std::ldexp(1 + m / 1024.0, e - 15);
      const bool same = std::isnan(ref) ? std::isnan(f[i]) : (f[i] == ref && std::signbit(f[i]) == std::signbit(ref));
      differing += !same;
    }
    ok &= report("float16 -> float32: differing", (double)differing, 0);
  }
  return ok ? 0 : 1;
}

// Standalone check of the fused attention kernel against a naive double-precision softmax(QKᵀ)V,
// without Node: random shapes that cross the kernel's row blocks and key tiles, odd head sizes,
// value widths that are not multiples of 16, one key, large scores, at 1 and 2 threads.
//   g++ -O2 -std=c++17 -pthread -Inative/src native/test/attention_check.cc native/src/attention.cc
//       native/src/gemm.cc native/src/copy.cc native/src/ops.cc native/src/pool.cc -o /tmp/attention_check && /tmp/attention_check
// Run it also with SDLAB_ISA=generic (the sgemm path). A probability e^(s − m) inherits the float
// rounding of its score s (relative 6e-8), so the allowed error is 1e-7·(16 + max|s|) per case;
// prints the worst error and its ratio to that bound and exits 1 when the ratio exceeds 1.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "attention.h"
#include "pool.h"

int main() {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> U(-1, 1);
  double worst = 0, worst_ratio = 0;
  int cases = 0;
  for (int it = 0; it < 60; ++it) {
    sdlab::Pool::get().set_threads(it % 2 ? 2 : 1);
    const long B = 1 + rng() % 2, H = 1 + rng() % 4;
    const long Lq = it % 3 == 0 ? 1 + rng() % 400 : 1 + rng() % 40;
    const long Lk = it % 4 == 0 ? 1 : (it % 3 == 1 ? 200 + rng() % 700 : 1 + rng() % 100);
    const long D = 1 + rng() % 48, Dv = 1 + rng() % 40;
    const float amp = it % 5 == 0 ? 6.0f : 1.0f;  // scores up to ~±36·D: the running maximum moves
    const float scale = 1.0f / std::sqrt((float)D);
    std::vector<float> q(B * Lq * H * D), k(B * Lk * H * D), v(B * Lk * H * Dv), out(B * Lq * H * Dv);
    for (auto& x : q) x = U(rng) * amp;
    for (auto& x : k) x = U(rng) * amp;
    for (auto& x : v) x = U(rng);
    sdlab::attention({B, Lq, Lk, H, D, Dv}, q.data(), k.data(), v.data(), scale, out.data());
    std::vector<double> s(Lk);
    double err = 0, smax = 0;
    for (long b = 0; b < B; ++b)
      for (long h = 0; h < H; ++h)
        for (long i = 0; i < Lq; ++i) {
          double m = -INFINITY, sum = 0;
          for (long j = 0; j < Lk; ++j) {
            double dot = 0;
            for (long d = 0; d < D; ++d) dot += (double)q[(b * Lq + i) * H * D + h * D + d] * (double)scale * k[(b * Lk + j) * H * D + h * D + d];
            s[j] = dot;
            smax = std::max(smax, std::fabs(dot));
            m = std::max(m, dot);
          }
          for (long j = 0; j < Lk; ++j) sum += (s[j] = std::exp(s[j] - m));
          for (long c = 0; c < Dv; ++c) {
            double o = 0;
            for (long j = 0; j < Lk; ++j) o += s[j] / sum * v[(b * Lk + j) * H * Dv + h * Dv + c];
            // Outputs are averages of values in [-1, 1]: error relative to that scale.
            err = std::max(err, std::fabs(o - out[(b * Lq + i) * H * Dv + h * Dv + c]));
          }
        }
    worst = std::max(worst, err);
    worst_ratio = std::max(worst_ratio, err / (1e-7 * (16 + smax)));
    ++cases;
  }
  std::printf("%d shapes; worst error %.2e, %.2f of its bound\n", cases, worst, worst_ratio);
  return worst_ratio <= 1 ? 0 : 1;
}

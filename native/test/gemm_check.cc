// Standalone check of the GEMM kernels without Node (e.g. on a machine with AVX-512):
//   g++ -O3 -std=c++17 -pthread -Inative/src native/test/gemm_check.cc native/src/gemm.cc native/src/copy.cc native/src/ops.cc native/src/pool.cc -o /tmp/gemm_check
//   SDLAB_ISA=avx512|avx2|generic /tmp/gemm_check [threads] [number of shapes to time, 1-5]
// Compares against a double-precision reference over random shapes/transposes, then times 1024^3.
#include <chrono>
#include <ctime>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "gemm.h"
#include "pool.h"

int main(int argc, char** argv) {
  int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  sdlab::Pool::get().set_threads(threads);
  std::printf("isa %s, %d thread(s)\n", sdlab::gemm_isa(), threads);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> U(-1, 1);
  double worst = 0;
  for (int t = 0; t < 300; ++t) {
    long M = 1 + rng() % 70, N = 1 + rng() % 70, K = 1 + rng() % (t % 3 ? 40 : 900);
    bool ta = rng() % 2, tb = rng() % 2, acc = rng() % 4 == 0;
    std::vector<float> A(M * K), B(K * N), C(M * N), bias(N);
    for (auto& v : A) v = U(rng);
    for (auto& v : B) v = U(rng);
    for (auto& v : C) v = U(rng);
    for (auto& v : bias) v = U(rng);
    std::vector<float> C0 = C;
    sdlab::Gemm g;
    g.M = M; g.N = N; g.K = K; g.A = A.data(); g.lda = ta ? M : K; g.transA = ta;
    g.B = B.data(); g.ldb = tb ? K : N; g.transB = tb; g.C = C.data(); g.ldc = N; g.accumulate = acc;
    g.bias = bias.data(); g.act = sdlab::ACT_RELU;
    sdlab::sgemm(g);
    for (long m = 0; m < M; ++m)
      for (long n = 0; n < N; ++n) {
        double s = acc ? C0[m * N + n] : 0;
        for (long k = 0; k < K; ++k) s += (double)(ta ? A[k * M + m] : A[m * K + k]) * (tb ? B[n * K + k] : B[k * N + n]);
        s += bias[n];
        s = s > 0 ? s : 0;
        worst = std::max(worst, std::fabs(s - C[m * N + n]) / std::sqrt((double)K));
      }
  }
  std::printf("max |err|/sqrt(K) = %.3g %s\n", worst, worst <= 1e-5 ? "OK" : "FAIL");
  // Timing: wall clock, and the process's CPU time (all threads), whose minimum over runs is
  // close to the cost on an idle machine even when other processes share the cores.
  auto cpu_ms = [] {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
  };
  const long shapes[][3] = {{1024, 1024, 1024}, {4096, 2880, 320}, {4096, 320, 4096}, {32768, 288, 32}, {288, 32768, 32}};
  const int nshapes = argc > 2 ? std::atoi(argv[2]) : 1;
  for (int si = 0; si < nshapes && si < 5; ++si) {
    const long M = shapes[si][0], K = shapes[si][1], N = shapes[si][2];
    std::vector<float> A(M * K, 0.5f), B(K * N, 0.25f), C(M * N);
    sdlab::Gemm g;
    g.M = M; g.N = N; g.K = K; g.A = A.data(); g.lda = K; g.B = B.data(); g.ldb = N; g.C = C.data(); g.ldc = N;
    std::vector<double> ms, cms;
    for (int i = 0; i < 11; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      double c0 = cpu_ms();
      sdlab::sgemm(g);
      cms.push_back(cpu_ms() - c0);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    std::sort(cms.begin(), cms.end());
    const double fl = 2.0 * M * N * K / 1e6;
    std::printf("sgemm %ldx%ldx%ld: wall median %.2f ms = %.1f GFLOP/s (%.1f per thread); CPU min %.2f ms = %.1f GFLOP/s per CPU-second\n",
                M, K, N, ms[5], fl / ms[5], fl / ms[5] / threads, cms[0], fl / cms[0]);
  }
  return worst <= 1e-5 ? 0 : 1;
}

// Winograd F(2×2, 3×3) convolution (see winograd.h). With d a 4×4 input tile, g a 3×3 filter,
//   Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A                 (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2015, eq. 8)
//   Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1],  G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1],
//   Aᵀ = [1 1 1 0; 0 1 −1 −1].
// Summed over input channels, the elementwise product becomes 16 matrix products, one per
// position ξ of the 4×4 tile:  M_ξ[tile, cout] = Σ_cin V_ξ[tile, cin] · U_ξ[cin, cout],
// with U = G g Gᵀ (the filter, transformed once per call) and V = Bᵀ d B (the input). Each
// product runs on the GEMM's 6×16 micro-kernel reading V in place; the transforms are additions
// vectorised over channels (NHWC keeps a pixel's channels contiguous).
//
// Work: the products do 16/36 = 1/2.25 of direct convolution's multiplications. Tiles are
// processed in chunks (each thread its own), so V and M stay near the cache; U is shared.
// Accuracy: the transforms only add and halve (exact up to one rounding per addition), so the
// result matches direct convolution to a few float ulps of the accumulated sums
// (test/native_conv.test.ts checks it against tfjs's cpu backend and a float64 loop).
#include "winograd.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "gemm.h"
#include "pool.h"

#if defined(__x86_64__) || defined(__i386__)
#define SDLAB_WINO_TARGET __attribute__((target("avx2,fma")))
#else
#define SDLAB_WINO_TARGET
#endif

namespace sdlab {

namespace {

constexpr int MR = 6, NR = 16;
constexpr long TILES_MAX = 96;  // tiles per chunk (a multiple of 6)
constexpr long KC = 256;        // input channels per GEMM block (a 256×16 filter panel is 16 KB, in L1)

// U[ξ][j][cin][16]: the transformed filter in the micro-kernel's 16-wide panels (zeros past Cout).
SDLAB_WINO_TARGET void transform_filter(const ConvShape& s, const float* w, float* U, long np) {
  const long Cin = s.Cin, Cout = s.Cout, Coutp = np * NR;
  parallel_for(Cin, 8, [&](long c0, long c1) {
    std::vector<float> g(9 * Coutp, 0.f), t(12 * Coutp), u(16 * Coutp);
    for (long c = c0; c < c1; ++c) {
      for (int k = 0; k < 9; ++k) std::memcpy(&g[k * Coutp], w + (k * Cin + c) * Cout, Cout * sizeof(float));
      // t = G g (4×3), per output channel o
      for (int col = 0; col < 3; ++col) {
        const float* __restrict g0 = &g[(0 * 3 + col) * Coutp];
        const float* __restrict g1 = &g[(1 * 3 + col) * Coutp];
        const float* __restrict g2 = &g[(2 * 3 + col) * Coutp];
        float* __restrict t0 = &t[(0 * 3 + col) * Coutp];
        float* __restrict t1 = &t[(1 * 3 + col) * Coutp];
        float* __restrict t2 = &t[(2 * 3 + col) * Coutp];
        float* __restrict t3 = &t[(3 * 3 + col) * Coutp];
        for (long o = 0; o < Coutp; ++o) {
          t0[o] = g0[o];
          t1[o] = 0.5f * (g0[o] + g1[o] + g2[o]);
          t2[o] = 0.5f * (g0[o] - g1[o] + g2[o]);
          t3[o] = g2[o];
        }
      }
      // u = t Gᵀ (4×4)
      for (int row = 0; row < 4; ++row) {
        const float* __restrict a = &t[(row * 3 + 0) * Coutp];
        const float* __restrict b = &t[(row * 3 + 1) * Coutp];
        const float* __restrict d = &t[(row * 3 + 2) * Coutp];
        float* __restrict u0 = &u[(row * 4 + 0) * Coutp];
        float* __restrict u1 = &u[(row * 4 + 1) * Coutp];
        float* __restrict u2 = &u[(row * 4 + 2) * Coutp];
        float* __restrict u3 = &u[(row * 4 + 3) * Coutp];
        for (long o = 0; o < Coutp; ++o) {
          u0[o] = a[o];
          u1[o] = 0.5f * (a[o] + b[o] + d[o]);
          u2[o] = 0.5f * (a[o] - b[o] + d[o]);
          u3[o] = d[o];
        }
      }
      for (int xi = 0; xi < 16; ++xi)
        for (long j = 0; j < np; ++j)
          std::memcpy(U + ((xi * np + j) * Cin + c) * NR, &u[xi * Coutp + j * NR], NR * sizeof(float));
    }
  });
}

// V[ξ][i][cin] = (Bᵀ d B)_ξ for the chunk's tiles i (zeros for padding rows up to a multiple of 6).
SDLAB_WINO_TARGET void transform_input(const ConvShape& s, const float* x, long t0, long nt, long ntp, long tH, long tW,
                                       const float* zeros, float* V) {
  const long Cin = s.Cin, plane = ntp * Cin;
  for (long i = 0; i < nt; ++i) {
    const long t = t0 + i, b = t / (tH * tW), ty = (t / tW) % tH, tx = t % tW;
    const float* d[16];
    for (int r = 0; r < 4; ++r)
      for (int c = 0; c < 4; ++c) {
        const long ih = 2 * ty - s.padTop + r, iw = 2 * tx - s.padLeft + c;
        d[r * 4 + c] = ih >= 0 && ih < s.H && iw >= 0 && iw < s.W ? x + ((b * s.H + ih) * s.W + iw) * Cin : zeros;
      }
    float* __restrict v = V + i * Cin;
    for (long ch = 0; ch < Cin; ++ch) {
      float e[16];
      // rows: Bᵀ d (per column c)
      for (int c = 0; c < 4; ++c) {
        const float d0 = d[c][ch], d1 = d[4 + c][ch], d2 = d[8 + c][ch], d3 = d[12 + c][ch];
        e[c] = d0 - d2;
        e[4 + c] = d1 + d2;
        e[8 + c] = d2 - d1;
        e[12 + c] = d1 - d3;
      }
      // columns: (Bᵀ d) B (per row r)
      for (int r = 0; r < 4; ++r) {
        const float a0 = e[r * 4], a1 = e[r * 4 + 1], a2 = e[r * 4 + 2], a3 = e[r * 4 + 3];
        v[(r * 4 + 0) * plane + ch] = a0 - a2;
        v[(r * 4 + 1) * plane + ch] = a1 + a2;
        v[(r * 4 + 2) * plane + ch] = a2 - a1;
        v[(r * 4 + 3) * plane + ch] = a1 - a3;
      }
    }
  }
  for (int xi = 0; xi < 16; ++xi) std::memset(V + xi * plane + nt * Cin, 0, (ntp - nt) * Cin * sizeof(float));
}

// out pixels of the chunk's tiles = Aᵀ M A (+ bias), from M[ξ][i][Coutp].
SDLAB_WINO_TARGET void transform_output(const ConvShape& s, const float* M, long t0, long nt, long ntp, long Coutp,
                                        long tH, long tW, const float* bias, float* out) {
  const long Cout = s.Cout, plane = ntp * Coutp;
  for (long i = 0; i < nt; ++i) {
    const long t = t0 + i, b = t / (tH * tW), ty = (t / tW) % tH, tx = t % tW;
    const long oh = 2 * ty, ow = 2 * tx;
    const bool down = oh + 1 < s.outH, right = ow + 1 < s.outW;
    float* __restrict y00 = out + ((b * s.outH + oh) * s.outW + ow) * Cout;
    float* __restrict y01 = right ? y00 + Cout : nullptr;
    float* __restrict y10 = down ? y00 + s.outW * Cout : nullptr;
    float* __restrict y11 = down && right ? y10 + Cout : nullptr;
    const float* m = M + i * Coutp;
    for (long o = 0; o < Cout; ++o) {
      float r0[4], r1[4];
      // Aᵀ m: two rows from four
      for (int c = 0; c < 4; ++c) {
        const float m0 = m[(0 * 4 + c) * plane + o], m1 = m[(1 * 4 + c) * plane + o];
        const float m2 = m[(2 * 4 + c) * plane + o], m3 = m[(3 * 4 + c) * plane + o];
        r0[c] = m0 + m1 + m2;
        r1[c] = m1 - m2 - m3;
      }
      const float bo = bias ? bias[o] : 0.f;
      y00[o] = r0[0] + r0[1] + r0[2] + bo;
      if (y01) y01[o] = r0[1] - r0[2] - r0[3] + bo;
      if (y10) y10[o] = r1[0] + r1[1] + r1[2] + bo;
      if (y11) y11[o] = r1[1] - r1[2] - r1[3] + bo;
    }
  }
}

// Minimum sizes for the transforms to pay off (measured on the SD and MNIST shapes).
constexpr long MIN_TILES = 64, MIN_CHANNELS = 32;

}  // namespace

bool winograd_applies(const ConvShape& s) {
  static const bool enabled = [] {
    const char* e = std::getenv("SDLAB_WINOGRAD");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  if (!enabled || !rows_kernel()) return false;
  if (s.kh != 3 || s.kw != 3 || s.sh != 1 || s.sw != 1 || s.dh != 1 || s.dw != 1) return false;
  if (s.Cin < MIN_CHANNELS || s.Cout < MIN_CHANNELS) return false;
  const long tiles = s.B * ((s.outH + 1) / 2) * ((s.outW + 1) / 2);
  return tiles >= MIN_TILES;
}

void conv2d_winograd(const ConvShape& s, const float* x, const float* w, float* out, const float* bias, int act,
                     float alpha) {
  const RowsKernel kern = rows_kernel();
  const long Cin = s.Cin, Cout = s.Cout, np = (Cout + NR - 1) / NR, Coutp = np * NR;
  const long tH = (s.outH + 1) / 2, tW = (s.outW + 1) / 2, T = s.B * tH * tW;
  // U, 64-byte aligned (the micro-kernel loads filter panels with aligned loads).
  std::vector<float> ubuf((size_t)(16 * np * Cin * NR) + 16);
  float* const U = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(ubuf.data()) + 63) & ~uintptr_t(63));
  transform_filter(s, w, U, np);
  const std::vector<float> zeros(Cin, 0.f);

  const int threads = Pool::get().threads();
  // Chunks of whole micro-tiles: at most TILES_MAX, and at least ~3 per thread when there are few tiles.
  long chunk = std::min<long>(TILES_MAX, (T + 3 * threads - 1) / (3 * threads));
  chunk = std::max<long>(MR, (chunk + MR - 1) / MR * MR);
  const long chunks = (T + chunk - 1) / chunk;
  const bool fuse_bias = act == ACT_LINEAR;
  Pool::get().run((int)chunks, [&](int ci) {
    const long t0 = ci * chunk, nt = std::min(chunk, T - t0), ntp = (nt + MR - 1) / MR * MR;
    thread_local std::vector<float> buf;
    const size_t need = (size_t)(16 * ntp * (Cin + Coutp));
    if (buf.size() < need) buf.resize(need);
    float* const V = buf.data();
    float* const M = V + 16 * ntp * Cin;
    transform_input(s, x, t0, nt, ntp, tH, tW, zeros.data(), V);
    for (int xi = 0; xi < 16; ++xi) {
      const float* Vx = V + xi * ntp * Cin;
      float* Mx = M + xi * ntp * Coutp;
      for (long k0 = 0; k0 < Cin; k0 += KC) {
        const long kc = std::min(KC, Cin - k0);
        for (long j = 0; j < np; ++j) {
          const float* panel = U + ((xi * np + j) * Cin + k0) * NR;
          for (long p = 0; p < ntp / MR; ++p) kern(kc, Vx + p * MR * Cin + k0, Cin, panel, Mx + p * MR * Coutp + j * NR, Coutp, NR, k0 > 0);
        }
      }
    }
    transform_output(s, M, t0, nt, ntp, Coutp, tH, tW, fuse_bias ? bias : nullptr, out);
    if (!fuse_bias) {  // bias and activation through the GEMM's epilogue, pixel by pixel
      for (long i = 0; i < nt; ++i) {
        const long t = t0 + i, b = t / (tH * tW), ty = (t / tW) % tH, tx = t % tW;
        for (long dy = 0; dy < 2 && 2 * ty + dy < s.outH; ++dy)
          epilogue(out + ((b * s.outH + 2 * ty + dy) * s.outW + 2 * tx) * Cout, Cout, 0, std::min<long>(2, s.outW - 2 * tx), Cout,
                   bias, act, alpha);
      }
    }
  });
}

}  // namespace sdlab

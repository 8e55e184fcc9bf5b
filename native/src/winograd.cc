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
// Work: the products do 16/36 = 1/2.25 of direct convolution's multiplications. Tiles go in
// chunks (V and M of a chunk ~24 MB), each in three parallel phases: input transform, the 16
// products (tasks: position ξ × block of 120 tiles), output transform.
// Accuracy: the transforms only add and halve (exact up to one rounding per addition), so the
// result matches direct convolution to a few float ulps of the accumulated sums
// (test/native_conv.test.ts checks it against tfjs's cpu backend and a float64 loop).
#include "winograd.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "copy.h"
#include "gemm.h"
#include "pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SDLAB_X86 1
#define SDLAB_WINO_TARGET __attribute__((target("avx2,fma")))
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define SDLAB_NEON 1
#define SDLAB_WINO_TARGET
#else
#define SDLAB_WINO_TARGET
#endif

namespace sdlab {

namespace {

constexpr int MR = 6, NR = 16;
constexpr long KC = 384;                   // input channels per GEMM block (a 384×16 filter panel is 24 KB, in L1)
constexpr long ROW_BLOCK = 120;            // tiles per GEMM task (120 rows × 384 channels of V: 180 KB, in L2)
constexpr long CHUNK_FLOATS = 6L << 20;    // V and M of one chunk of tiles: ~24 MB

// U[ξ][j][cin][16]: the transformed filter in the micro-kernel's 16-wide panels (zeros past Cout).
SDLAB_WINO_TARGET void transform_filter(const ConvShape& s, const float* w, const uint16_t* wh, float* U, long np) {
  const long Cin = s.Cin, Cout = s.Cout, Coutp = np * NR;
  parallel_for(Cin, 8, [&](long c0, long c1) {
    std::vector<float> g(9 * Coutp, 0.f), t(12 * Coutp), u(16 * Coutp);
    for (long c = c0; c < c1; ++c) {
      for (int k = 0; k < 9; ++k) {
        if (wh) load_halves(wh + (k * Cin + c) * Cout, &g[k * Coutp], Cout);
        else std::memcpy(&g[k * Coutp], w + (k * Cin + c) * Cout, Cout * sizeof(float));
      }
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

// Bᵀ d B for one channel (or 8 at once): d[r*4 + c] → v[ξ], ξ = r*4 + c.
template <class T, class Add, class Sub>
SDLAB_WINO_TARGET inline void input_tile(const T* d, T* v, Add add, Sub sub) {
  T e[16];
  for (int c = 0; c < 4; ++c) {  // rows: Bᵀ d
    e[c] = sub(d[c], d[8 + c]);
    e[4 + c] = add(d[4 + c], d[8 + c]);
    e[8 + c] = sub(d[8 + c], d[4 + c]);
    e[12 + c] = sub(d[4 + c], d[12 + c]);
  }
  for (int r = 0; r < 4; ++r) {  // columns: (Bᵀ d) B
    v[r * 4 + 0] = sub(e[r * 4], e[r * 4 + 2]);
    v[r * 4 + 1] = add(e[r * 4 + 1], e[r * 4 + 2]);
    v[r * 4 + 2] = sub(e[r * 4 + 2], e[r * 4 + 1]);
    v[r * 4 + 3] = sub(e[r * 4 + 1], e[r * 4 + 3]);
  }
}

// Aᵀ m A for one channel (or 8): m[ξ] → y[dy*2 + dx].
template <class T, class Add, class Sub>
SDLAB_WINO_TARGET inline void output_tile(const T* m, T* y, Add add, Sub sub) {
  T r0[4], r1[4];
  for (int c = 0; c < 4; ++c) {  // Aᵀ m: two rows from four
    r0[c] = add(add(m[c], m[4 + c]), m[8 + c]);
    r1[c] = sub(sub(m[4 + c], m[8 + c]), m[12 + c]);
  }
  y[0] = add(add(r0[0], r0[1]), r0[2]);
  y[1] = sub(sub(r0[1], r0[2]), r0[3]);
  y[2] = add(add(r1[0], r1[1]), r1[2]);
  y[3] = sub(sub(r1[1], r1[2]), r1[3]);
}

struct FAdd { float operator()(float a, float b) const { return a + b; } };
struct FSub { float operator()(float a, float b) const { return a - b; } };
#ifdef SDLAB_X86
struct VAdd { SDLAB_WINO_TARGET __m256 operator()(__m256 a, __m256 b) const { return _mm256_add_ps(a, b); } };
struct VSub { SDLAB_WINO_TARGET __m256 operator()(__m256 a, __m256 b) const { return _mm256_sub_ps(a, b); } };
#elif defined(SDLAB_NEON)
struct VAdd { float32x4_t operator()(float32x4_t a, float32x4_t b) const { return vaddq_f32(a, b); } };
struct VSub { float32x4_t operator()(float32x4_t a, float32x4_t b) const { return vsubq_f32(a, b); } };
#endif

// The tile's 16 input pixels (pointers to their Cin channels; `zeros` outside the image).
// An upsampled input (s.up > 1) is read at the source pixel of each virtual one.
inline void tile_inputs(const ConvShape& s, const float* x, long b, long ty, long tx, const float* zeros, const float** d) {
  const long u = s.up, Hx = s.H / u, Wx = s.W / u;
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) {
      const long ih = 2 * ty - s.padTop + r, iw = 2 * tx - s.padLeft + c;
      d[r * 4 + c] = ih >= 0 && ih < s.H && iw >= 0 && iw < s.W ? x + ((b * Hx + ih / u) * Wx + iw / u) * s.Cin : zeros;
    }
}

// V[ξ][i][cin] = (Bᵀ d B)_ξ for tiles [i0, i1) of the chunk starting at tile t0; planes of ntp rows.
SDLAB_WINO_TARGET void transform_input(const ConvShape& s, const float* x, long t0, long i0, long i1, long ntp, long tH,
                                       long tW, const float* zeros, float* V) {
  const long Cin = s.Cin, plane = ntp * Cin;
  for (long i = i0; i < i1; ++i) {
    const long t = t0 + i;
    const float* d[16];
    tile_inputs(s, x, t / (tH * tW), (t / tW) % tH, t % tW, zeros, d);
    float* v = V + i * Cin;
    long ch = 0;
#ifdef SDLAB_X86
    for (; ch + 8 <= Cin; ch += 8) {
      __m256 dv[16], vv[16];
      for (int k = 0; k < 16; ++k) dv[k] = _mm256_loadu_ps(d[k] + ch);
      input_tile(dv, vv, VAdd(), VSub());
      for (int k = 0; k < 16; ++k) _mm256_storeu_ps(v + k * plane + ch, vv[k]);
    }
#elif defined(SDLAB_NEON)
    for (; ch + 4 <= Cin; ch += 4) {
      float32x4_t dv[16], vv[16];
      for (int k = 0; k < 16; ++k) dv[k] = vld1q_f32(d[k] + ch);
      input_tile(dv, vv, VAdd(), VSub());
      for (int k = 0; k < 16; ++k) vst1q_f32(v + k * plane + ch, vv[k]);
    }
#endif
    for (; ch < Cin; ++ch) {
      float dv[16], vv[16];
      for (int k = 0; k < 16; ++k) dv[k] = d[k][ch];
      input_tile(dv, vv, FAdd(), FSub());
      for (int k = 0; k < 16; ++k) v[k * plane + ch] = vv[k];
    }
  }
}

// Output pixels of tiles [i0, i1) = Aᵀ M A (+ bias), from M[ξ][i][Coutp].
SDLAB_WINO_TARGET void transform_output(const ConvShape& s, const float* M, long t0, long i0, long i1, long ntp,
                                        long Coutp, long tH, long tW, const float* bias, float* out) {
  const long Cout = s.Cout, plane = ntp * Coutp;
  for (long i = i0; i < i1; ++i) {
    const long t = t0 + i, b = t / (tH * tW), ty = (t / tW) % tH, tx = t % tW;
    const long oh = 2 * ty, ow = 2 * tx;
    const bool down = oh + 1 < s.outH, right = ow + 1 < s.outW;
    float* y[4];
    y[0] = out + ((b * s.outH + oh) * s.outW + ow) * Cout;
    y[1] = right ? y[0] + Cout : nullptr;
    y[2] = down ? y[0] + s.outW * Cout : nullptr;
    y[3] = down && right ? y[2] + Cout : nullptr;
    const float* m = M + i * Coutp;
    long o = 0;
#ifdef SDLAB_X86
    for (; o + 8 <= Cout; o += 8) {
      __m256 mv[16], yv[4];
      for (int k = 0; k < 16; ++k) mv[k] = _mm256_loadu_ps(m + k * plane + o);
      output_tile(mv, yv, VAdd(), VSub());
      const __m256 bv = bias ? _mm256_loadu_ps(bias + o) : _mm256_setzero_ps();
      for (int k = 0; k < 4; ++k)
        if (y[k]) _mm256_storeu_ps(y[k] + o, _mm256_add_ps(yv[k], bv));
    }
#elif defined(SDLAB_NEON)
    for (; o + 4 <= Cout; o += 4) {
      float32x4_t mv[16], yv[4];
      for (int k = 0; k < 16; ++k) mv[k] = vld1q_f32(m + k * plane + o);
      output_tile(mv, yv, VAdd(), VSub());
      const float32x4_t bv = bias ? vld1q_f32(bias + o) : vdupq_n_f32(0);
      for (int k = 0; k < 4; ++k)
        if (y[k]) vst1q_f32(y[k] + o, vaddq_f32(yv[k], bv));
    }
#endif
    for (; o < Cout; ++o) {
      float mv[16], yv[4];
      for (int k = 0; k < 16; ++k) mv[k] = m[k * plane + o];
      output_tile(mv, yv, FAdd(), FSub());
      const float bo = bias ? bias[o] : 0.f;
      for (int k = 0; k < 4; ++k)
        if (y[k]) y[k][o] = yv[k] + bo;
    }
  }
}

// Minimum sizes for the transforms to pay off (measured on the SD and MNIST shapes: at 32
// channels the 16 products are too short, 32×32×32 → 32 took 1.4× as long as direct).
constexpr long MIN_TILES = 64, MIN_CHANNELS = 64;

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
                     float alpha, const uint16_t* wh) {
  const RowsKernel kern = rows_kernel();
  const long Cin = s.Cin, Cout = s.Cout, np = (Cout + NR - 1) / NR, Coutp = np * NR;
  const long tH = (s.outH + 1) / 2, tW = (s.outW + 1) / 2, T = s.B * tH * tW;
  // U, 64-byte aligned (the micro-kernel loads filter panels with aligned loads).
  std::vector<float> ubuf((size_t)(16 * np * Cin * NR) + 16);
  float* const U = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(ubuf.data()) + 63) & ~uintptr_t(63));
  transform_filter(s, w, wh, U, np);
  const std::vector<float> zeros(Cin, 0.f);
  // K blocks of equal size, at most KC channels.
  const long nkb = (Cin + KC - 1) / KC, kcb = (Cin + nkb - 1) / nkb;
  // Tiles per chunk: V and M of a chunk hold about CHUNK_FLOATS floats.
  long chunk = std::max<long>(ROW_BLOCK, CHUNK_FLOATS / (16 * (Cin + Coutp)));
  chunk = std::min(chunk, (T + MR - 1) / MR * MR) / MR * MR;  // a multiple of 6, at most the padded tile count
  std::vector<float> vm((size_t)(16 * chunk * (Cin + Coutp)));
  float* const V = vm.data();
  float* const M = V + 16 * chunk * Cin;
  const bool fuse_bias = act == ACT_LINEAR;
  for (long t0 = 0; t0 < T; t0 += chunk) {
    const long nt = std::min(chunk, T - t0), ntp = (nt + MR - 1) / MR * MR;
    // 1. V = Bᵀ d B for every tile of the chunk (zero rows up to a multiple of 6).
    parallel_for(nt, 4, [&](long i0, long i1) { transform_input(s, x, t0, i0, i1, ntp, tH, tW, zeros.data(), V); });
    for (int xi = 0; xi < 16; ++xi) std::memset(V + xi * ntp * Cin + nt * Cin, 0, (ntp - nt) * Cin * sizeof(float));
    // 2. M_ξ = V_ξ · U_ξ: tasks are (ξ, block of rows); a block's rows of V_ξ stay in L2 while
    //    every filter panel of U_ξ passes once through L1.
    const long rblocks = (ntp + ROW_BLOCK - 1) / ROW_BLOCK, rb = (ntp / MR + rblocks - 1) / rblocks * MR;  // even blocks
    Pool::get().run((int)(16 * rblocks), [&](int task) {
      const long xi = task / rblocks, r0 = (task % rblocks) * rb, r1 = std::min(ntp, r0 + rb);
      const float* Vx = V + xi * ntp * Cin;
      float* Mx = M + xi * ntp * Coutp;
      for (long k0 = 0; k0 < Cin; k0 += kcb) {
        const long kc = std::min(kcb, Cin - k0);
        for (long j = 0; j < np; ++j) {
          const float* panel = U + ((xi * np + j) * Cin + k0) * NR;
          for (long r = r0; r < r1; r += MR) kern(kc, Vx + r * Cin + k0, Cin, panel, Mx + r * Coutp + j * NR, Coutp, NR, k0 > 0);
        }
      }
    });
    // 3. out = Aᵀ M A (+ bias; other activations through the GEMM's epilogue, pixel by pixel).
    parallel_for(nt, 4, [&](long i0, long i1) {
      transform_output(s, M, t0, i0, i1, ntp, Coutp, tH, tW, fuse_bias ? bias : nullptr, out);
      if (fuse_bias) return;
      for (long i = i0; i < i1; ++i) {
        const long t = t0 + i, b = t / (tH * tW), ty = (t / tW) % tH, tx = t % tW;
        for (long dy = 0; dy < 2 && 2 * ty + dy < s.outH; ++dy)
          epilogue(out + ((b * s.outH + 2 * ty + dy) * s.outW + 2 * tx) * Cout, Cout, 0, std::min<long>(2, s.outW - 2 * tx), Cout,
                   bias, act, alpha);
      }
    });
  }
}

}  // namespace sdlab

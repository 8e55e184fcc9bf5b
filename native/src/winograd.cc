// Winograd convolution for 3×3 stride-1 NHWC convolutions (see winograd.h): F(4×4, 3×3) and
// F(2×2, 3×3). With d an a×a input tile (a = m + 2 for an m×m output tile) and g a 3×3 filter,
//   Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A                 (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2015, eq. 8; interpolation points 0, ±1 (m = 2), 0, ±1, ±2
// (m = 4), and ∞)
//   F(2×2): Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1],  G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1],
//           Aᵀ = [1 1 1 0; 0 1 −1 −1]
//   F(4×4): Bᵀ = [4 0 −5 0 1 0; 0 −4 −4 1 1 0; 0 4 −4 −1 1 0; 0 −2 −1 2 1 0; 0 2 −1 −2 1 0; 0 4 0 −5 0 1],
//           G = [¼ 0 0; −⅙ −⅙ −⅙; −⅙ ⅙ −⅙; 1⁄24 1⁄12 ⅙; 1⁄24 −1⁄12 ⅙; 0 0 1],
//           Aᵀ = [1 1 1 1 1 0; 0 1 −1 2 −2 0; 0 1 1 4 4 0; 0 1 −1 8 −8 1]
// Summed over input channels, the elementwise product becomes a² matrix products, one per
// position ξ of the tile:  M_ξ[tile, cout] = Σ_cin V_ξ[tile, cin] · U_ξ[cin, cout],
// with U = G g Gᵀ (the filter, transformed once per call) and V = Bᵀ d B (the input). Each
// product runs on the GEMM's 6×16 micro-kernel reading V in place; the transforms are a few
// additions and multiplications by small constants, vectorised over channels (NHWC keeps a
// pixel's channels contiguous), one axis of the tile at a time.
//
// Work: F(2×2) does 16/36 = 1/2.25 of direct convolution's multiplications, F(4×4) 36/144 = 1/4,
// and it writes and reads 36/16 = 2.25 transformed values per output pixel and channel instead
// of 4. Tiles go in chunks (V and M of a chunk ~24 MB), each in three parallel phases: input
// transform, the a² products (tasks: position ξ × block of 120 tiles), output transform.
// Accuracy: F(2×2)'s transforms only add and halve, so it matches direct convolution to a few
// float ulps of the accumulated sums; F(4×4)'s constants (up to 8, and 1/24) cost about one
// more decimal digit (native/test/conv_check.cc measures both against a float64 loop, and
// test/native_conv.test.ts against tfjs's cpu backend). SDLAB_WINOGRAD=2 keeps F(2×2) for all.
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

// A vector of channels, so that one transform body serves scalars, AVX2 and NEON.
#ifdef SDLAB_X86
struct Vec {
  __m256 v;
  static constexpr int width = 8;
  SDLAB_WINO_TARGET static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  SDLAB_WINO_TARGET void store(float* p) const { _mm256_storeu_ps(p, v); }
};
SDLAB_WINO_TARGET inline Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
SDLAB_WINO_TARGET inline Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
SDLAB_WINO_TARGET inline Vec operator*(Vec a, float c) { return {_mm256_mul_ps(a.v, _mm256_set1_ps(c))}; }
#elif defined(SDLAB_NEON)
struct Vec {
  float32x4_t v;
  static constexpr int width = 4;
  static Vec load(const float* p) { return {vld1q_f32(p)}; }
  void store(float* p) const { vst1q_f32(p, v); }
};
inline Vec operator+(Vec a, Vec b) { return {vaddq_f32(a.v, b.v)}; }
inline Vec operator-(Vec a, Vec b) { return {vsubq_f32(a.v, b.v)}; }
inline Vec operator*(Vec a, float c) { return {vmulq_n_f32(a.v, c)}; }
#endif

template <class T>
inline T load_as(const float* p);
template <>
inline float load_as<float>(const float* p) { return *p; }
inline void store_as(float v, float* p) { *p = v; }
#if defined(SDLAB_X86) || defined(SDLAB_NEON)
template <>
SDLAB_WINO_TARGET inline Vec load_as<Vec>(const float* p) { return Vec::load(p); }
SDLAB_WINO_TARGET inline void store_as(Vec v, float* p) { v.store(p); }
#endif

// The three 1-D transforms of one tile size, along one axis (stride s between elements):
//   input:  r = Bᵀ d   (a values from a)      output: y = Aᵀ m   (m values from a)
//   filter: u = G g    (a values from 3)
struct F2 {
  static constexpr int m = 2, a = 4;
  template <class T>
  SDLAB_WINO_TARGET static void input(const T* d, long sd, T* r, long sr) {
    const T d0 = d[0], d1 = d[sd], d2 = d[2 * sd], d3 = d[3 * sd];
    r[0] = d0 - d2;
    r[sr] = d1 + d2;
    r[2 * sr] = d2 - d1;
    r[3 * sr] = d1 - d3;
  }
  template <class T>
  SDLAB_WINO_TARGET static void output(const T* x, long sx, T* y, long sy) {
    const T m0 = x[0], m1 = x[sx], m2 = x[2 * sx], m3 = x[3 * sx];
    y[0] = m0 + m1 + m2;
    y[sy] = m1 - m2 - m3;
  }
  template <class T>
  SDLAB_WINO_TARGET static void filter(const T* g, long sg, T* u, long su) {
    const T g0 = g[0], g1 = g[sg], g2 = g[2 * sg];
    u[0] = g0;
    u[su] = (g0 + g1 + g2) * 0.5f;
    u[2 * su] = (g0 - g1 + g2) * 0.5f;
    u[3 * su] = g2;
  }
};

struct F4 {
  static constexpr int m = 4, a = 6;
  template <class T>
  SDLAB_WINO_TARGET static void input(const T* d, long sd, T* r, long sr) {
    const T d0 = d[0], d1 = d[sd], d2 = d[2 * sd], d3 = d[3 * sd], d4 = d[4 * sd], d5 = d[5 * sd];
    r[0] = (d0 * 4.f - d2 * 5.f) + d4;
    r[sr] = (d3 + d4) - (d1 + d2) * 4.f;
    r[2 * sr] = (d4 - d3) + (d1 - d2) * 4.f;
    r[3 * sr] = (d4 - d2) + (d3 - d1) * 2.f;
    r[4 * sr] = (d4 - d2) + (d1 - d3) * 2.f;
    r[5 * sr] = (d1 * 4.f - d3 * 5.f) + d5;
  }
  template <class T>
  SDLAB_WINO_TARGET static void output(const T* x, long sx, T* y, long sy) {
    const T m0 = x[0], m5 = x[5 * sx];
    const T p12 = x[sx] + x[2 * sx], n12 = x[sx] - x[2 * sx], p34 = x[3 * sx] + x[4 * sx], n34 = x[3 * sx] - x[4 * sx];
    y[0] = m0 + p12 + p34;
    y[sy] = n12 + n34 * 2.f;
    y[2 * sy] = p12 + p34 * 4.f;
    y[3 * sy] = (n12 + n34 * 8.f) + m5;
  }
  template <class T>
  SDLAB_WINO_TARGET static void filter(const T* g, long sg, T* u, long su) {
    const T g0 = g[0], g1 = g[sg], g2 = g[2 * sg];
    const T a = g0 * (1.f / 24.f) + g2 * (1.f / 6.f), b = g1 * (1.f / 12.f);
    u[0] = g0 * 0.25f;
    u[su] = (g0 + g1 + g2) * (-1.f / 6.f);
    u[2 * su] = (g0 - g1 + g2) * (-1.f / 6.f);
    u[3 * su] = a + b;
    u[4 * su] = a - b;
    u[5 * su] = g2;
  }
};

// Both axes of a tile: a×a → a×a (input), a×a → m×m (output).
template <class F, class T>
SDLAB_WINO_TARGET inline void input_tile(const T* d, T* v) {
  T e[F::a * F::a];
  for (int c = 0; c < F::a; ++c) F::input(d + c, F::a, e + c, F::a);  // Bᵀ d, column by column
  for (int r = 0; r < F::a; ++r) F::input(e + r * F::a, 1, v + r * F::a, 1);  // (Bᵀ d) B, row by row
}
template <class F, class T>
SDLAB_WINO_TARGET inline void output_tile(const T* x, T* y) {
  T e[F::m * F::a];
  for (int c = 0; c < F::a; ++c) F::output(x + c, F::a, e + c, F::a);  // Aᵀ M: m rows from a
  for (int r = 0; r < F::m; ++r) F::output(e + r * F::a, 1, y + r * F::m, 1);
}

// G g Gᵀ for one input channel and every output channel o < Coutp (a multiple of 16):
// g[k][o] (k = 3·row + col) → u[ξ][o], vectorised over o.
template <class F, class T>
SDLAB_WINO_TARGET inline void filter_block(const float* g, float* u, long Coutp, long o) {
  constexpr int A = F::a, P = A * A;
  T gg[9], t[3 * A], uu[P];
  for (int k = 0; k < 9; ++k) gg[k] = load_as<T>(g + k * Coutp + o);
  for (int col = 0; col < 3; ++col) F::filter(gg + col, 3, t + col, 3);  // G g: A×3
  for (int r = 0; r < A; ++r) F::filter(t + r * 3, 1, uu + r * A, 1);    // (G g) Gᵀ: A×A
  for (int xi = 0; xi < P; ++xi) store_as(uu[xi], u + xi * Coutp + o);
}
template <class F>
SDLAB_WINO_TARGET void filter_tile(const float* g, float* u, long Coutp) {
  long o = 0;
#if defined(SDLAB_X86) || defined(SDLAB_NEON)
  for (; o + Vec::width <= Coutp; o += Vec::width) filter_block<F, Vec>(g, u, Coutp, o);
#endif
  for (; o < Coutp; ++o) filter_block<F, float>(g, u, Coutp, o);
}

// U[ξ][j][cin][16]: the transformed filter in the micro-kernel's 16-wide panels (zeros past Cout).
template <class F>
SDLAB_WINO_TARGET void transform_filter(const ConvShape& s, const float* w, const uint16_t* wh, float* U, long np) {
  constexpr int A = F::a, P = A * A;
  const long Cin = s.Cin, Cout = s.Cout, Coutp = np * NR;
  parallel_for(Cin, 8, [&](long c0, long c1) {
    std::vector<float> g(9 * Coutp, 0.f), u(P * Coutp);
    for (long c = c0; c < c1; ++c) {
      for (int k = 0; k < 9; ++k) {
        if (wh) load_halves(wh + (k * Cin + c) * Cout, &g[k * Coutp], Cout);
        else std::memcpy(&g[k * Coutp], w + (k * Cin + c) * Cout, Cout * sizeof(float));
      }
      filter_tile<F>(g.data(), u.data(), Coutp);
      for (int xi = 0; xi < P; ++xi)
        for (long j = 0; j < np; ++j)
          std::memcpy(U + ((xi * np + j) * Cin + c) * NR, &u[xi * Coutp + j * NR], NR * sizeof(float));
    }
  });
}

// The tile's a×a input pixels (pointers to their Cin channels; `zeros` outside the image).
// An upsampled input (s.up > 1) is read at the source pixel of each virtual one.
template <class F>
inline void tile_inputs(const ConvShape& s, const float* x, long b, long ty, long tx, const float* zeros, const float** d) {
  const long u = s.up, Hx = s.H / u, Wx = s.W / u;
  for (int r = 0; r < F::a; ++r)
    for (int c = 0; c < F::a; ++c) {
      const long ih = F::m * ty - s.padTop + r, iw = F::m * tx - s.padLeft + c;
      d[r * F::a + c] = ih >= 0 && ih < s.H && iw >= 0 && iw < s.W ? x + ((b * Hx + ih / u) * Wx + iw / u) * s.Cin : zeros;
    }
}

// V[ξ][i][cin] = (Bᵀ d B)_ξ for tiles [i0, i1) of the chunk starting at tile t0; planes of ntp rows.
template <class F>
SDLAB_WINO_TARGET void transform_input(const ConvShape& s, const float* x, long t0, long i0, long i1, long ntp, long tH,
                                       long tW, const float* zeros, float* V) {
  constexpr int P = F::a * F::a;
  const long Cin = s.Cin, plane = ntp * Cin;
  for (long i = i0; i < i1; ++i) {
    const long t = t0 + i;
    const float* d[P];
    tile_inputs<F>(s, x, t / (tH * tW), (t / tW) % tH, t % tW, zeros, d);
    float* v = V + i * Cin;
    long ch = 0;
#if defined(SDLAB_X86) || defined(SDLAB_NEON)
    for (; ch + Vec::width <= Cin; ch += Vec::width) {
      Vec dv[P], vv[P];
      for (int k = 0; k < P; ++k) dv[k] = Vec::load(d[k] + ch);
      input_tile<F>(dv, vv);
      for (int k = 0; k < P; ++k) vv[k].store(v + k * plane + ch);
    }
#endif
    for (; ch < Cin; ++ch) {
      float dv[P], vv[P];
      for (int k = 0; k < P; ++k) dv[k] = d[k][ch];
      input_tile<F>(dv, vv);
      for (int k = 0; k < P; ++k) v[k * plane + ch] = vv[k];
    }
  }
}

// Output pixels of tiles [i0, i1) = Aᵀ M A (+ bias), from M[ξ][i][Coutp]; pixels past the
// image's edge (ragged last tiles) are not written.
template <class F>
SDLAB_WINO_TARGET void transform_output(const ConvShape& s, const float* M, long t0, long i0, long i1, long ntp,
                                        long Coutp, long tH, long tW, const float* bias, float* out) {
  constexpr int P = F::a * F::a, Q = F::m * F::m;
  const long Cout = s.Cout, plane = ntp * Coutp;
  for (long i = i0; i < i1; ++i) {
    const long t = t0 + i, b = t / (tH * tW), ty = (t / tW) % tH, tx = t % tW;
    const long oh = F::m * ty, ow = F::m * tx;
    float* y[Q];
    for (int dy = 0; dy < F::m; ++dy)
      for (int dx = 0; dx < F::m; ++dx)
        y[dy * F::m + dx] = oh + dy < s.outH && ow + dx < s.outW ? out + ((b * s.outH + oh + dy) * s.outW + ow + dx) * Cout : nullptr;
    const float* m = M + i * Coutp;
    long o = 0;
#if defined(SDLAB_X86) || defined(SDLAB_NEON)
    for (; o + Vec::width <= Cout; o += Vec::width) {
      Vec mv[P], yv[Q];
      for (int k = 0; k < P; ++k) mv[k] = Vec::load(m + k * plane + o);
      output_tile<F>(mv, yv);
      if (bias) {
        const Vec bv = Vec::load(bias + o);
        for (int k = 0; k < Q; ++k) yv[k] = yv[k] + bv;
      }
      for (int k = 0; k < Q; ++k)
        if (y[k]) yv[k].store(y[k] + o);
    }
#endif
    for (; o < Cout; ++o) {
      float mv[P], yv[Q];
      for (int k = 0; k < P; ++k) mv[k] = m[k * plane + o];
      output_tile<F>(mv, yv);
      const float bo = bias ? bias[o] : 0.f;
      for (int k = 0; k < Q; ++k)
        if (y[k]) y[k][o] = yv[k] + bo;
    }
  }
}

// Minimum sizes for the transforms to pay off (measured on the SD and MNIST shapes: at 32
// channels the 16 products are too short, 32×32×32 → 32 took 1.4× as long as direct).
constexpr long MIN_TILES = 64, MIN_CHANNELS = 64;

// SDLAB_WINOGRAD: "0" off, "2" F(2×2) only; otherwise F(4×4) from F4_MIN_TILES 4×4 tiles up.
// With fewer, its 36 transformed filter planes cost more to write and read than the products
// save (measured, direct-FLOP GFLOP/s, AVX-512 EPYC, 2 threads, F(4×4) vs F(2×2)): SD's UNet
// at 2×64×64×320, 512 tiles: 488 vs 373; 2×32×32×640, 128 tiles: 314 vs 323; 2×16×16×1280,
// 32 tiles: 129 vs 216; its VAE at 1×64×64×512, 256 tiles: 348 vs 325, 128×128 and up: 1.3-1.4×.
// And from F4_MIN_CHANNELS in and out: SD's layers (128 and up) gain, while small training
// models (the MNIST ones: 32-128 channels on small images) keep F(2×2)'s tighter rounding.
constexpr long F4_MIN_TILES = 256, F4_MIN_CHANNELS = 128;
int winograd_mode() {
  static const int mode = [] {
    const char* e = std::getenv("SDLAB_WINOGRAD");
    if (e && std::strcmp(e, "0") == 0) return 0;
    if (e && std::strcmp(e, "2") == 0) return 2;
    return 4;
  }();
  return mode;
}

template <class F>
void conv2d_winograd_f(const ConvShape& s, const float* x, const float* w, float* out, const float* bias, int act,
                       float alpha, const uint16_t* wh) {
  constexpr int A = F::a, P = A * A;
  const RowsKernel kern = rows_kernel();
  const long Cin = s.Cin, Cout = s.Cout, np = (Cout + NR - 1) / NR, Coutp = np * NR;
  const long tH = (s.outH + F::m - 1) / F::m, tW = (s.outW + F::m - 1) / F::m, T = s.B * tH * tW;
  // U, 64-byte aligned (the micro-kernel loads filter panels with aligned loads).
  BigBuffer ubuf((size_t)(P * np * Cin * NR) + 16);  // transform_filter writes all of it
  float* const U = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(ubuf.data()) + 63) & ~uintptr_t(63));
  transform_filter<F>(s, w, wh, U, np);
  const std::vector<float> zeros(Cin, 0.f);
  // K blocks of equal size, at most KC channels.
  const long nkb = (Cin + KC - 1) / KC, kcb = (Cin + nkb - 1) / nkb;
  // Tiles per chunk: V and M of a chunk hold about CHUNK_FLOATS floats.
  long chunk = std::max<long>(ROW_BLOCK, CHUNK_FLOATS / (P * (Cin + Coutp)));
  chunk = std::min(chunk, (T + MR - 1) / MR * MR) / MR * MR;  // a multiple of 6, at most the padded tile count
  BigBuffer vm((size_t)(P * chunk * (Cin + Coutp)));  // V: transformed and zero-padded below; M: written by the products
  float* const V = vm.data();
  float* const M = V + P * chunk * Cin;
  const bool fuse_bias = act == ACT_LINEAR;
  for (long t0 = 0; t0 < T; t0 += chunk) {
    const long nt = std::min(chunk, T - t0), ntp = (nt + MR - 1) / MR * MR;
    // 1. V = Bᵀ d B for every tile of the chunk (zero rows up to a multiple of 6).
    parallel_for(nt, 4, [&](long i0, long i1) { transform_input<F>(s, x, t0, i0, i1, ntp, tH, tW, zeros.data(), V); });
    for (int xi = 0; xi < P; ++xi) std::memset(V + xi * ntp * Cin + nt * Cin, 0, (ntp - nt) * Cin * sizeof(float));
    // 2. M_ξ = V_ξ · U_ξ: tasks are (ξ, block of rows); a block's rows of V_ξ stay in L2 while
    //    every filter panel of U_ξ passes once through L1.
    const long rblocks = (ntp + ROW_BLOCK - 1) / ROW_BLOCK, rb = (ntp / MR + rblocks - 1) / rblocks * MR;  // even blocks
    Pool::get().run((int)(P * rblocks), [&](int task) {
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
      transform_output<F>(s, M, t0, i0, i1, ntp, Coutp, tH, tW, fuse_bias ? bias : nullptr, out);
      if (fuse_bias) return;
      for (long i = i0; i < i1; ++i) {
        const long t = t0 + i, b = t / (tH * tW), ty = (t / tW) % tH, tx = t % tW;
        for (long dy = 0; dy < F::m && F::m * ty + dy < s.outH; ++dy)
          epilogue(out + ((b * s.outH + F::m * ty + dy) * s.outW + F::m * tx) * Cout, Cout, 0,
                   std::min<long>(F::m, s.outW - F::m * tx), Cout, bias, act, alpha);
      }
    });
  }
}

}  // namespace

bool winograd_applies(const ConvShape& s) {
  if (!winograd_mode() || !rows_kernel()) return false;
  if (s.kh != 3 || s.kw != 3 || s.sh != 1 || s.sw != 1 || s.dh != 1 || s.dw != 1) return false;
  if (s.Cin < MIN_CHANNELS || s.Cout < MIN_CHANNELS) return false;
  const long tiles = s.B * ((s.outH + 1) / 2) * ((s.outW + 1) / 2);
  return tiles >= MIN_TILES;
}

bool winograd_f4(const ConvShape& s) {
  return winograd_mode() == 4 && s.Cin >= F4_MIN_CHANNELS && s.Cout >= F4_MIN_CHANNELS &&
         s.B * ((s.outH + 3) / 4) * ((s.outW + 3) / 4) >= F4_MIN_TILES;
}

void conv2d_winograd(const ConvShape& s, const float* x, const float* w, float* out, const float* bias, int act,
                     float alpha, const uint16_t* wh) {
  if (winograd_f4(s)) conv2d_winograd_f<F4>(s, x, w, out, bias, act, alpha, wh);
  else conv2d_winograd_f<F2>(s, x, w, out, bias, act, alpha, wh);
}

}  // namespace sdlab

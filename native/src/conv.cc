// Convolutions as GEMMs. Rows of the im2col matrix are output pixels (b, oh, ow); columns are
// (ki, kj, cin), which matches the filter's row-major [kh*kw*Cin, Cout] layout, so
//   forward:          out   = cols · W
//   backprop filter:  dW    = colsᵀ · dy
//   backprop input:   dcols = dy · Wᵀ, then col2im (a gather, so threads never collide).
// With an AVX2 (or generic) kernel none of these matrices is built: the forward pass and the input
// gradient run the micro-kernel over pointers into x or dy (conv2d_indirect, and per stride phase
// conv2d_backprop_input_phases), and the filter gradient packs cols' panels straight from x
// (conv2d_backprop_filter_panels; pack_tap_run). The explicit im2col path (chunks of images, so
// cols stays near the L3 cache) remains for the AVX-512 kernel, whose tile has another shape
// (its filter gradient packs colsᵀ from x through the GEMM: pack_cols_t), and under SDLAB_IM2COL=1.
// Forward 3×3 stride-1 convolutions over enough pixels take Winograd F(2×2, 3×3) instead
// (winograd.cc: F(4×4, 3×3) on large images, 4× fewer multiplications, F(2×2, 3×3) on small
// ones, 2.25×), unless SDLAB_WINOGRAD=0 or SDLAB_IM2COL=1.
#include "conv.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "copy.h"
#include "gemm.h"
#include "pool.h"
#include "winograd.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SDLAB_CONV_SIMD 1  // the *_simd kernels below exist (AVX2+FMA; used when the GEMM runs AVX2)
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define SDLAB_CONV_SIMD 1  // NEON versions
#define SDLAB_CONV_NEON 1
#endif

namespace sdlab {

namespace {

constexpr long CHUNK_FLOATS = 4L << 20;  // ~16 MB of im2col per chunk

bool is_pointwise(const ConvShape& s) {
  return s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 && s.padTop == 0 && s.padLeft == 0 && s.outH == s.H &&
         s.outW == s.W;
}

// Images per chunk so that the cols matrix of a chunk holds about CHUNK_FLOATS floats.
long images_per_chunk(const ConvShape& s) {
  long per_image = s.outH * s.outW * s.kh * s.kw * s.Cin;
  return std::max<long>(1, std::min<long>(s.B, CHUNK_FLOATS / std::max<long>(1, per_image)));
}

// cols[r, (ki,kj,c)] for output rows r of images [b0, b1).
void im2col(const ConvShape& s, const float* x, long b0, long b1, float* cols) {
  const long Kc = s.kh * s.kw * s.Cin;
  const long rows = (b1 - b0) * s.outH * s.outW;
  parallel_for(rows, 64, [&](long rb, long re) {
    for (long r = rb; r < re; ++r) {
      long b = b0 + r / (s.outH * s.outW), rem = r % (s.outH * s.outW);
      long oh = rem / s.outW, ow = rem % s.outW;
      float* dst = cols + r * Kc;
      for (long ki = 0; ki < s.kh; ++ki) {
        long ih = oh * s.sh - s.padTop + ki * s.dh;
        for (long kj = 0; kj < s.kw; ++kj, dst += s.Cin) {
          long iw = ow * s.sw - s.padLeft + kj * s.dw;
          if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) {
            std::memset(dst, 0, s.Cin * sizeof(float));
          } else {
            const float* src = x + ((b * s.H + ih) * s.W + iw) * s.Cin;
            if (s.Cin == 1) *dst = *src; else std::memcpy(dst, src, s.Cin * sizeof(float));
          }
        }
      }
    }
  });
}

// dx[b, ih, iw, :] = sum over (ki,kj) hitting it of dcols[(b,oh,ow), (ki,kj,:)], images [b0,b1).
void col2im(const ConvShape& s, const float* dcols, long b0, long b1, float* dx) {
  const long Kc = s.kh * s.kw * s.Cin;
  const long rows = (b1 - b0) * s.H;
  parallel_for(rows, 4, [&](long rb, long re) {
    for (long r = rb; r < re; ++r) {
      long bl = r / s.H, ih = r % s.H, b = b0 + bl;
      float* out_row = dx + (b * s.H + ih) * s.W * s.Cin;
      std::memset(out_row, 0, s.W * s.Cin * sizeof(float));
      for (long ki = 0; ki < s.kh; ++ki) {
        long t = ih + s.padTop - ki * s.dh;
        if (t < 0 || t % s.sh) continue;
        long oh = t / s.sh;
        if (oh >= s.outH) continue;
        for (long iw = 0; iw < s.W; ++iw) {
          float* o = out_row + iw * s.Cin;
          for (long kj = 0; kj < s.kw; ++kj) {
            long u = iw + s.padLeft - kj * s.dw;
            if (u < 0 || u % s.sw) continue;
            long ow = u / s.sw;
            if (ow >= s.outW) continue;
            const float* src = dcols + ((bl * s.outH + oh) * s.outW + ow) * Kc + (ki * s.kw + kj) * s.Cin;
            for (long c = 0; c < s.Cin; ++c) o[c] += src[c];
          }
        }
      }
    }
  });
}

// ---- direct kernels for few output channels (e.g. a 32->1 output conv) ----
// With Cout <= 4 a GEMM has N or K <= 4: im2col/col2im traffic would dominate, so loop directly.
constexpr long SMALL_COUT = 4;

// wt[tap][co][c] = w[tap][c][co]: per-tap, per-output-channel contiguous filter rows.
std::vector<float> filter_by_cout(const ConvShape& s, const float* w) {
  const long taps = s.kh * s.kw;
  std::vector<float> wt(taps * s.Cout * s.Cin);
  for (long t = 0; t < taps; ++t)
    for (long c = 0; c < s.Cin; ++c)
      for (long co = 0; co < s.Cout; ++co) wt[(t * s.Cout + co) * s.Cin + c] = w[(t * s.Cin + c) * s.Cout + co];
  return wt;
}

// Calls f(xp, tap) for each tap of output pixel (b, oh, ow) that lands inside the image: xp its
// input pixel's Cin channels, tap = ki·kw + kj.
template <class F>
inline void for_each_tap(const ConvShape& s, const float* x, long b, long oh, long ow, F&& f) {
  for (long ki = 0; ki < s.kh; ++ki) {
    const long ih = oh * s.sh - s.padTop + ki * s.dh;
    if (ih < 0 || ih >= s.H) continue;
    for (long kj = 0; kj < s.kw; ++kj) {
      const long iw = ow * s.sw - s.padLeft + kj * s.dw;
      if (iw < 0 || iw >= s.W) continue;
      f(x + ((b * s.H + ih) * s.W + iw) * s.Cin, ki * s.kw + kj);
    }
  }
}

// One output pixel's Cout (<= 4) dot products over all taps (the portable path).
inline void small_pixel(const ConvShape& s, const float* x, const float* wt, long b, long oh, long ow, float* acc) {
  for (long co = 0; co < s.Cout; ++co) acc[co] = 0.f;
  for_each_tap(s, x, b, oh, ow, [&](const float* xp, long tap) {
    const float* wp = wt + tap * s.Cout * s.Cin;
    for (long co = 0; co < s.Cout; ++co) acc[co] += sdot(xp, wp + co * s.Cin, s.Cin);
  });
}

#ifdef SDLAB_CONV_SIMD
// The vector paths, written once over a vector type: AVX2+FMA (8 lanes) or NEON (4 lanes).
// flatten: the per-tap lambdas carry the AVX2 target, so for_each_tap (which does not) cannot
// inline them; flattening inlines both into the caller, as one loop nest.
#define SDLAB_FLATTEN __attribute__((flatten))
#if defined(SDLAB_CONV_NEON)
#define SDLAB_CONV_TARGET
struct Vec {
  typedef float32x4_t T;
  static constexpr long W = 4;
  static T zero() { return vdupq_n_f32(0.f); }
  static T load(const float* p) { return vld1q_f32(p); }
  static T fma(T a, T b, T c) { return vfmaq_f32(c, a, b); }  // a·b + c
  static T splat(float v) { return vdupq_n_f32(v); }
  static T add(T a, T b) { return vaddq_f32(a, b); }
  static void store(float* p, T a) { vst1q_f32(p, a); }
  static float sum(T a) { return vaddvq_f32(a); }
};
#else
#define SDLAB_CONV_TARGET __attribute__((target("avx2,fma")))
struct Vec {
  typedef __m256 T;
  static constexpr long W = 8;
  SDLAB_CONV_TARGET static T zero() { return _mm256_setzero_ps(); }
  SDLAB_CONV_TARGET static T load(const float* p) { return _mm256_loadu_ps(p); }
  SDLAB_CONV_TARGET static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  SDLAB_CONV_TARGET static T splat(float v) { return _mm256_set1_ps(v); }
  SDLAB_CONV_TARGET static T add(T a, T b) { return _mm256_add_ps(a, b); }
  SDLAB_CONV_TARGET static void store(float* p, T a) { _mm256_storeu_ps(p, a); }
  SDLAB_CONV_TARGET static float sum(T a) {
    alignas(32) float t[8];
    _mm256_store_ps(t, a);
    return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
  }
};
#endif

// Cout <= 4 output channels per pixel: accumulated W channels at a time and summed across lanes
// once per pixel (a dot product per tap would spend most of its time in the horizontal sums).
SDLAB_CONV_TARGET SDLAB_FLATTEN void small_rows_simd(const ConvShape& s, const float* x, const float* wt, long rb, long re, float* out) {
  constexpr long W = Vec::W;
  const long CW = s.Cin / W * W;
  for (long r = rb; r < re; ++r) {
    const long b = r / (s.outH * s.outW), rem = r % (s.outH * s.outW), oh = rem / s.outW, ow = rem % s.outW;
    Vec::T v[SMALL_COUT] = {Vec::zero(), Vec::zero(), Vec::zero(), Vec::zero()};
    float tail[SMALL_COUT] = {0, 0, 0, 0};
    for_each_tap(s, x, b, oh, ow, [&](const float* xp, long tap) SDLAB_CONV_TARGET {
      const float* wp = wt + tap * s.Cout * s.Cin;
      for (long c = 0; c < CW; c += W) {
        const Vec::T xv = Vec::load(xp + c);
        for (long co = 0; co < s.Cout; ++co) v[co] = Vec::fma(xv, Vec::load(wp + co * s.Cin + c), v[co]);
      }
      for (long c = CW; c < s.Cin; ++c)
        for (long co = 0; co < s.Cout; ++co) tail[co] += xp[c] * wp[co * s.Cin + c];
    });
    for (long co = 0; co < s.Cout; ++co) out[r * s.Cout + co] = Vec::sum(v[co]) + tail[co];
  }
}

// One output channel: four independent sums in registers, or the FMA latency sets the pace.
SDLAB_CONV_TARGET SDLAB_FLATTEN void small_rows_cout1_simd(const ConvShape& s, const float* x, const float* w, long rb, long re, float* out) {
  constexpr long W = Vec::W;
  const long C4W = s.Cin / (4 * W) * (4 * W), CW = s.Cin / W * W;
  for (long r = rb; r < re; ++r) {
    const long b = r / (s.outH * s.outW), rem = r % (s.outH * s.outW), oh = rem / s.outW, ow = rem % s.outW;
    Vec::T a0 = Vec::zero(), a1 = a0, a2 = a0, a3 = a0;
    float tail = 0.f;
    for_each_tap(s, x, b, oh, ow, [&](const float* xp, long tap) SDLAB_CONV_TARGET {
      const float* wp = w + tap * s.Cin;
      long c = 0;
      for (; c < C4W; c += 4 * W) {
        a0 = Vec::fma(Vec::load(xp + c), Vec::load(wp + c), a0);
        a1 = Vec::fma(Vec::load(xp + c + W), Vec::load(wp + c + W), a1);
        a2 = Vec::fma(Vec::load(xp + c + 2 * W), Vec::load(wp + c + 2 * W), a2);
        a3 = Vec::fma(Vec::load(xp + c + 3 * W), Vec::load(wp + c + 3 * W), a3);
      }
      for (; c < CW; c += W) a0 = Vec::fma(Vec::load(xp + c), Vec::load(wp + c), a0);
      for (; c < s.Cin; ++c) tail += xp[c] * wp[c];
    });
    out[r] = Vec::sum(Vec::add(Vec::add(a0, a1), Vec::add(a2, a3))) + tail;
  }
}
#endif

void conv2d_small(const ConvShape& s, const float* x, const float* w, float* out, const float* bias, int act, float alpha) {
  std::vector<float> wt = filter_by_cout(s, w);
  const long rows = s.B * s.outH * s.outW;
#ifdef SDLAB_CONV_SIMD
  const bool simd = indirect_kernel() != nullptr && std::strcmp(gemm_isa(), "generic") != 0;
#else
  const bool simd = false;
  (void)simd;
#endif
  parallel_for(rows, 256, [&](long rb, long re) {
#ifdef SDLAB_CONV_SIMD
    if (simd) {
      if (s.Cout == 1) small_rows_cout1_simd(s, x, w, rb, re, out);  // [taps, Cin, 1] is already per-tap rows
      else small_rows_simd(s, x, wt.data(), rb, re, out);
      epilogue(out, s.Cout, rb, re, s.Cout, bias, act, alpha);
      return;
    }
#endif
    for (long r = rb; r < re; ++r) {
      long b = r / (s.outH * s.outW), rem = r % (s.outH * s.outW), oh = rem / s.outW, ow = rem % s.outW;
      float acc[SMALL_COUT];
      small_pixel(s, x, wt.data(), b, oh, ow, acc);
      std::copy(acc, acc + s.Cout, out + r * s.Cout);
    }
    epilogue(out, s.Cout, rb, re, s.Cout, bias, act, alpha);
  });
}

void conv2d_backprop_input_small(const ConvShape& s, const float* dy, const float* w, float* dx) {
  std::vector<float> wt = filter_by_cout(s, w);
  parallel_for(s.B * s.H, 4, [&](long rb, long re) {
    for (long r = rb; r < re; ++r) {
      long b = r / s.H, ih = r % s.H;
      float* row = dx + r * s.W * s.Cin;
      std::fill(row, row + s.W * s.Cin, 0.f);
      for (long ki = 0; ki < s.kh; ++ki) {
        long t = ih + s.padTop - ki * s.dh;
        if (t < 0 || t % s.sh) continue;
        long oh = t / s.sh;
        if (oh >= s.outH) continue;
        for (long iw = 0; iw < s.W; ++iw) {
          float* __restrict o = row + iw * s.Cin;
          for (long kj = 0; kj < s.kw; ++kj) {
            long u = iw + s.padLeft - kj * s.dw;
            if (u < 0 || u % s.sw) continue;
            long ow = u / s.sw;
            if (ow >= s.outW) continue;
            const float* g = dy + ((b * s.outH + oh) * s.outW + ow) * s.Cout;
            const float* wp = wt.data() + (ki * s.kw + kj) * s.Cout * s.Cin;
            for (long co = 0; co < s.Cout; ++co) {
              const float gv = g[co];
              const float* __restrict wc = wp + co * s.Cin;
              for (long c = 0; c < s.Cin; ++c) o[c] += gv * wc[c];
            }
          }
        }
      }
    }
  });
}

// dW[tap][c][co] = sum over pixels of x[pixel at tap][c] * dy[pixel][co]: one task per (tap,
// output channel, block of 32 input channels) runs over all pixels with its sums in registers.
#ifdef SDLAB_CONV_SIMD
SDLAB_CONV_TARGET void filter_small_task_simd(const ConvShape& s, const float* x, const float* dy, long t, long co,
                                              long c0, long cn, float* res) {
  constexpr long W = Vec::W, NV = 32 / W;
  const long ki = t / s.kw, kj = t % s.kw, nv = cn / W;
  Vec::T a[NV];
  for (long v = 0; v < NV; ++v) a[v] = Vec::zero();
  float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (long b = 0; b < s.B; ++b)
    for (long oh = 0; oh < s.outH; ++oh) {
      const long ih = oh * s.sh - s.padTop + ki * s.dh;
      if (ih < 0 || ih >= s.H) continue;
      const float* g = dy + ((b * s.outH + oh) * s.outW) * s.Cout + co;
      for (long ow = 0; ow < s.outW; ++ow, g += s.Cout) {
        const long iw = ow * s.sw - s.padLeft + kj * s.dw;
        if (iw < 0 || iw >= s.W) continue;
        const float* xp = x + ((b * s.H + ih) * s.W + iw) * s.Cin + c0;
        const Vec::T gv = Vec::splat(*g);
#pragma GCC unroll 8
        for (long v = 0; v < NV; ++v)
          if (v < nv) a[v] = Vec::fma(gv, Vec::load(xp + v * W), a[v]);
        for (long c = nv * W; c < cn; ++c) tail[c - nv * W] += *g * xp[c];
      }
    }
  for (long v = 0; v < nv; ++v) Vec::store(res + v * W, a[v]);
  for (long c = nv * W; c < cn; ++c) res[c] = tail[c - nv * W];
}
#endif

void conv2d_backprop_filter_small(const ConvShape& s, const float* x, const float* dy, float* dw) {
  const long taps = s.kh * s.kw, F = taps * s.Cout * s.Cin, rows = s.B * s.outH * s.outW;
#ifdef SDLAB_CONV_SIMD
  if (indirect_kernel() != nullptr && std::strcmp(gemm_isa(), "generic") != 0) {
    const long nblk = (s.Cin + 31) / 32;
    parallel_for(taps * s.Cout * nblk, 1, [&](long t0, long t1) {
      float res[32];
      for (long t = t0; t < t1; ++t) {
        const long tap = t / (s.Cout * nblk), co = (t / nblk) % s.Cout, c0 = (t % nblk) * 32, cn = std::min<long>(32, s.Cin - c0);
        filter_small_task_simd(s, x, dy, tap, co, c0, cn, res);
        for (long c = 0; c < cn; ++c) dw[(tap * s.Cin + c0 + c) * s.Cout + co] = res[c];
      }
    });
    return;
  }
#endif
  Pool& pool = Pool::get();
  const int parts = (int)std::max<long>(1, std::min<long>(pool.threads(), rows / 1024));
  std::vector<std::vector<float>> acc(parts, std::vector<float>(F, 0.f));  // [tap][co][c] per part
  pool.run(parts, [&](int p) {
    float* a = acc[p].data();
    for (long r = rows * p / parts; r < rows * (p + 1) / parts; ++r) {
      long b = r / (s.outH * s.outW), rem = r % (s.outH * s.outW), oh = rem / s.outW, ow = rem % s.outW;
      const float* g = dy + r * s.Cout;
      for (long ki = 0; ki < s.kh; ++ki) {
        long ih = oh * s.sh - s.padTop + ki * s.dh;
        if (ih < 0 || ih >= s.H) continue;
        for (long kj = 0; kj < s.kw; ++kj) {
          long iw = ow * s.sw - s.padLeft + kj * s.dw;
          if (iw < 0 || iw >= s.W) continue;
          const float* __restrict xp = x + ((b * s.H + ih) * s.W + iw) * s.Cin;
          float* ap = a + (ki * s.kw + kj) * s.Cout * s.Cin;
          for (long co = 0; co < s.Cout; ++co) {
            const float gv = g[co];
            float* __restrict ac = ap + co * s.Cin;
            for (long c = 0; c < s.Cin; ++c) ac[c] += gv * xp[c];
          }
        }
      }
    }
  });
  for (long t = 0; t < taps; ++t)
    for (long co = 0; co < s.Cout; ++co)
      for (long c = 0; c < s.Cin; ++c) {
        float v = 0.f;
        for (int p = 0; p < parts; ++p) v += acc[p][(t * s.Cout + co) * s.Cin + c];
        dw[(t * s.Cin + c) * s.Cout + co] = v;
      }
}

// ---- im2col-free convolution ----
// The forward pass (and the stride-1 input gradient, a forward convolution of dy with the
// flipped filter) runs the GEMM micro-kernel over pointers to input pixels: for each tile of 6
// output pixels and each tap, 6 pointers to Cin-vectors of the input (or to zeros where the tap
// falls in the padding). No im2col matrix (9x the input for a 3x3 conv) is written or read back.

// K block of the indirect kernel: at most this many taps x channels per packed filter block (a
// 16-wide panel of 384 is 24 KB, as in the GEMM), taps split evenly between blocks.
constexpr long KCONV = 384;
constexpr long PANELS_PER_TASK = 8;  // 6-pixel tiles per task; the filter block is reused across them

// The implicit GEMM behind both: out[m, 0..N) = sum over taps t, channels c of
// in(m, t)[c] * w[t][c][0..N), where in(m, t) points at the Cin input floats that output row m
// reads at tap t (nullptr: padding, reads zeros). `ptrs(m, r, stride)` writes in(m, t) to
// r[t * stride] for every tap.
template <class RowPtrs>
void indirect_gemm(long M, long taps, long Cin, long N, const float* w, const uint16_t* wh, float* out, const float* bias,
                   int act, float alpha, IndirectKernel kern, const RowPtrs& ptrs) {
  const int MR = IND_MR, NR = IND_NR;
  const long np = (N + NR - 1) / NR, mp = (M + MR - 1) / MR;
  // K blocks: whole taps [t0, t1) x channels [c0, c1).
  struct Blk { long t0, t1, c0, c1, off; };
  std::vector<Blk> blocks;
  long total = 0;
  auto add = [&](long t0, long t1, long c0, long c1) {
    blocks.push_back({t0, t1, c0, c1, total});
    total += (t1 - t0) * (c1 - c0) * np * NR;
  };
  if (Cin <= KCONV) {
    const long nblk = (taps * Cin + KCONV - 1) / KCONV, tg = (taps + nblk - 1) / nblk;
    for (long t0 = 0; t0 < taps; t0 += tg) add(t0, std::min(taps, t0 + tg), 0, Cin);
  } else {
    for (long t = 0; t < taps; ++t)
      for (long c0 = 0; c0 < Cin; c0 += KCONV) add(t, t + 1, c0, std::min(Cin, c0 + KCONV));
  }
  // Filter [taps, Cin, N] packed per block and 16-wide column panel: [t][c][16], zero-padded.
  // In parallel: for a small image and a large filter (SD's 8×8 latents, 1280 channels: 59 MB of
  // weights for 128 output pixels) packing is a large part of the call.
  float* wp = scratch(1, (size_t)total);
  parallel_for((long)blocks.size() * np, 4, [&](long u0, long u1) {
    for (long u = u0; u < u1; ++u) {
      const Blk& b = blocks[u / np];
      const long j = u % np;
      const long blen = (b.t1 - b.t0) * (b.c1 - b.c0);
      float* d = wp + b.off + j * blen * NR;
      const long n0 = j * NR, nr = std::min<long>(NR, N - n0);
      for (long t = b.t0; t < b.t1; ++t)
        for (long c = b.c0; c < b.c1; ++c, d += NR) {
          long jj = 0;
          if (wh) {
            load_halves(wh + (t * Cin + c) * N + n0, d, nr);
            jj = nr;
          } else {
            const float* src = w + (t * Cin + c) * N + n0;
            for (; jj < nr; ++jj) d[jj] = src[jj];
          }
          for (; jj < NR; ++jj) d[jj] = 0.f;
        }
    }
  });
  const std::vector<float> zeros(Cin, 0.f);
  const long groups = (mp + PANELS_PER_TASK - 1) / PANELS_PER_TASK;
  // Few pixels (fewer row groups than ~2 per thread): split the column panels too, so every
  // thread has work while the filter is still read about once in all.
  const long T = Pool::get().threads();
  const long cgroups = groups >= 2 * T ? 1 : std::min(np, (2 * T + groups - 1) / groups);
  parallel_for(groups * cgroups, 1, [&](long u0, long u1) {
    std::vector<const float*> rows(PANELS_PER_TASK * taps * MR);
    for (long u = u0; u < u1; ++u) {
      const long g = u / cgroups, cg = u % cgroups;
      const long j0 = np * cg / cgroups, j1 = np * (cg + 1) / cgroups;
      const long p0 = g * PANELS_PER_TASK, p1 = std::min(mp, p0 + PANELS_PER_TASK);
      // rows[(p - p0) * taps * 6 + t * 6 + i]: input vector read by row p*6+i at tap t.
      for (long p = p0; p < p1; ++p) {
        const float** r = rows.data() + (p - p0) * taps * MR;
        for (int i = 0; i < MR; ++i) {
          const long m = p * MR + i;
          if (m < M) ptrs(m, r + i, (long)MR);
          for (long t = 0; t < taps; ++t)
            if (m >= M || !r[t * MR + i]) r[t * MR + i] = zeros.data();
        }
      }
      for (size_t bi = 0; bi < blocks.size(); ++bi) {
        const Blk& bk = blocks[bi];
        const long blen = (bk.t1 - bk.t0) * (bk.c1 - bk.c0);
        for (long j = j0; j < j1; ++j) {
          const float* bp = wp + bk.off + j * blen * NR;
          const int nr = (int)std::min<long>(NR, N - j * NR);
          for (long p = p0; p < p1; ++p) {
            const int mr = (int)std::min<long>(MR, M - p * MR);
            kern(bk.t1 - bk.t0, bk.c1 - bk.c0, bk.c0, rows.data() + (p - p0) * taps * MR + bk.t0 * MR, bp,
                 out + p * MR * N + j * NR, N, mr, nr, bi > 0);
          }
        }
      }
      const long n0 = j0 * NR, n1 = std::min(N, j1 * NR);
      if (n1 > n0) epilogue(out + n0, N, p0 * MR, std::min(M, p1 * MR), n1 - n0, bias ? bias + n0 : nullptr, act, alpha);
    }
  });
}

void conv2d_indirect(const ConvShape& s, const float* x, const float* w, const uint16_t* wh, float* out, const float* bias,
                     int act, float alpha, IndirectKernel kern) {
  const long P = s.outH * s.outW;
  indirect_gemm(s.B * P, s.kh * s.kw, s.Cin, s.Cout, w, wh, out, bias, act, alpha, kern,
                [&](long m, const float** r, long stride) {
                  const long b = m / P, oh = (m % P) / s.outW, ow = m % s.outW;
                  const long u = s.up, Hx = s.H / u, Wx = s.W / u;  // an upsampled input: its source pixels
                  for (long ki = 0; ki < s.kh; ++ki) {
                    const long ih = oh * s.sh - s.padTop + ki * s.dh;
                    for (long kj = 0; kj < s.kw; ++kj) {
                      const long iw = ow * s.sw - s.padLeft + kj * s.dw;
                      const bool in = ih >= 0 && ih < s.H && iw >= 0 && iw < s.W;
                      r[(ki * s.kw + kj) * stride] = in ? x + ((b * Hx + ih / u) * Wx + iw / u) * s.Cin : nullptr;
                    }
                  }
                });
}

// The input gradient, any stride, without col2im: dx[b, ih, iw] collects dy[b, oh, ow] · w[ki, kj]ᵀ
// over the taps with oh*sh = ih + padTop - ki*dh (and the same for columns). Which taps reach a
// pixel depends only on its phase (ih mod sh, iw mod sw), so each phase is a stride-1 implicit
// GEMM over its own sub-grid of dx, with its own subset of taps (for 3x3 stride 2: 4, 2, 2 and 1);
// the phases' taps add up to the filter, so the work is that of the forward convolution.
void conv2d_backprop_input_phases(const ConvShape& s, const float* dy, const float* w, float* dx, IndirectKernel kern) {
  const long Cin = s.Cin, Cout = s.Cout;
  const bool one_phase = s.sh == 1 && s.sw == 1;
  std::vector<float> sub;  // a phase's dense dx rows, scattered into dx afterwards (stride > 1 only)
  for (long ph = 0; ph < std::min(s.sh, s.H); ++ph)
    for (long pw = 0; pw < std::min(s.sw, s.W); ++pw) {
      const long nh = (s.H - ph + s.sh - 1) / s.sh, nw = (s.W - pw + s.sw - 1) / s.sw, M = s.B * nh * nw;
      // Taps that reach this phase, with the dy row/column offset they read at: oh = i + oh0.
      std::vector<long> tki, tkj, oh0, ow0;
      for (long ki = 0; ki < s.kh; ++ki) {
        const long q = ph + s.padTop - ki * s.dh;
        if (((q % s.sh) + s.sh) % s.sh) continue;
        for (long kj = 0; kj < s.kw; ++kj) {
          const long u = pw + s.padLeft - kj * s.dw;
          if (((u % s.sw) + s.sw) % s.sw) continue;
          tki.push_back(ki); tkj.push_back(kj); oh0.push_back(q / s.sh); ow0.push_back(u / s.sw);
        }
      }
      const long taps = (long)tki.size();
      float* o = dx;
      if (!one_phase) {
        sub.resize((size_t)M * Cin);
        o = sub.data();
      }
      if (taps == 0) {
        std::fill(o, o + M * Cin, 0.f);
      } else {
        // Filter of this phase as [tap][co][ci].
        std::vector<float> wt(taps * Cout * Cin);
        for (long t = 0; t < taps; ++t)
          for (long ci = 0; ci < Cin; ++ci)
            for (long co = 0; co < Cout; ++co)
              wt[(t * Cout + co) * Cin + ci] = w[((tki[t] * s.kw + tkj[t]) * Cin + ci) * Cout + co];
        indirect_gemm(M, taps, Cout, Cin, wt.data(), nullptr, o, nullptr, ACT_LINEAR, 0.f, kern,
                      [&](long m, const float** r, long stride) {
                        const long b = m / (nh * nw), i = (m % (nh * nw)) / nw, j = m % nw;
                        for (long t = 0; t < taps; ++t) {
                          const long oh = i + oh0[t], ow = j + ow0[t];
                          const bool in = oh >= 0 && oh < s.outH && ow >= 0 && ow < s.outW;
                          r[t * stride] = in ? dy + ((b * s.outH + oh) * s.outW + ow) * Cout : nullptr;
                        }
                      });
      }
      if (!one_phase)
        parallel_for(s.B * nh, 16, [&](long rb, long re) {
          for (long r = rb; r < re; ++r) {
            const long b = r / nh, i = r % nh;
            float* d = dx + ((b * s.H + ph + i * s.sh) * s.W + pw) * Cin;
            const float* src = sub.data() + r * nw * Cin;
            for (long j = 0; j < nw; ++j, d += s.sw * Cin, src += Cin) std::memcpy(d, src, Cin * sizeof(float));
          }
        });
    }
}

// The filter gradient dW[(t, c), co] = sum over pixels k of x[k at tap t][c] * dy[k][co] is a
// GEMM whose A (the transposed im2col matrix) is packed straight from x, 6 (tap, channel) rows
// at a time: for each pixel, the rows' values are a few contiguous channel runs of x.
struct ColsT {
  const ConvShape* s;
  const float* x;
};

// Copies n runs of len floats, from src (stride sstride) to dst (stride MR).
inline void copy_runs(const float* __restrict src, long sstride, float* __restrict dst, int dstride, int len, long n) {
  if (len == 6 && dstride == 6) {
    for (long q = 0; q < n; ++q, src += sstride, dst += 6) {
      dst[0] = src[0]; dst[1] = src[1]; dst[2] = src[2]; dst[3] = src[3]; dst[4] = src[4]; dst[5] = src[5];
    }
  } else if (len == IND_NR) {
    for (long q = 0; q < n; ++q, src += sstride, dst += dstride) std::memcpy(dst, src, IND_NR * sizeof(float));
  } else if (len == 1) {
    for (long q = 0; q < n; ++q, src += sstride, dst += dstride) *dst = *src;
  } else {
    for (long q = 0; q < n; ++q, src += sstride, dst += dstride)
      for (int c = 0; c < len; ++c) dst[c] = src[c];
  }
}

inline void zero_runs(float* dst, int dstride, int len, long n) {
  for (long q = 0; q < n; ++q, dst += dstride)
    for (int c = 0; c < len; ++c) dst[c] = 0.f;
}

// One run of columns of the im2col matrix, for output pixels [k0, k0 + kc): writes channels
// [c, c + len) of x read at tap (ki, kj) of pixel k0 + k to dst[k * dstride + 0..len) (zeros where
// the tap falls in the padding). Walks the pixels one output-row segment at a time: along a row
// the tap reads x at a fixed stride, inside [lo, hi) of the row, zeros outside.
void pack_tap_run(const ConvShape& s, const float* x, long ki, long kj, long c, int len, long k0, long kc, float* dst,
                  int dstride) {
  const long P = s.outH * s.outW;
  const long off = kj * s.dw - s.padLeft;  // iw = ow*sw + off
  const long lo = off >= 0 ? 0 : (-off + s.sw - 1) / s.sw;
  const long hi = std::max<long>(lo, std::min<long>(s.outW, s.W - off > 0 ? (s.W - off + s.sw - 1) / s.sw : 0));
  long b = k0 / P, rem = k0 % P, oh = rem / s.outW, ow = rem % s.outW;
  float* d = dst;
  for (long k = 0; k < kc;) {
    const long n = std::min(kc - k, s.outW - ow);
    const long ih = oh * s.sh - s.padTop + ki * s.dh;
    if (ih < 0 || ih >= s.H) {
      zero_runs(d, dstride, len, n);
    } else {
      const long e = ow + n;
      const long a1 = std::min(std::max(ow, lo), e), a2 = std::max(a1, std::min(e, hi));
      zero_runs(d, dstride, len, a1 - ow);
      const float* src = x + ((b * s.H + ih) * s.W + (a1 * s.sw + off)) * s.Cin + c;
      copy_runs(src, s.sw * s.Cin, d + (a1 - ow) * dstride, dstride, len, a2 - a1);
      zero_runs(d + (a2 - ow) * dstride, dstride, len, e - a2);
    }
    d += n * dstride;
    k += n;
    ow += n;
    if (ow == s.outW) {
      ow = 0;
      if (++oh == s.outH) {
        oh = 0;
        ++b;
      }
    }
  }
}

void pack_cols_t(const void* ctx, long m0, int mr, int MR, long k0, long kc, float* dst) {
  const ColsT& ct = *static_cast<const ColsT*>(ctx);
  const ConvShape& s = *ct.s;
  // Runs of rows that share a tap: rows [i0, i1) are channels [c, c + i1 - i0) of tap t.
  for (int i0 = 0; i0 < mr;) {
    const long m = m0 + i0, t = m / s.Cin, c = m % s.Cin;
    const int i1 = (int)std::min<long>(mr, i0 + (s.Cin - c));
    pack_tap_run(s, ct.x, t / s.kw, t % s.kw, c, i1 - i0, k0, kc, dst + i0, MR);
    i0 = i1;
  }
  if (mr < MR)
    for (long k = 0; k < kc; ++k)
      for (int i = mr; i < MR; ++i) dst[k * MR + i] = 0.f;
}

// The filter gradient with the operands swapped, for the usual case of few output channels:
// dWᵀ[co, (t, c)] = sum over pixels k of dy[k][co] * cols[k][(t, c)]. The big operand, the
// implicit im2col matrix, is now B, whose 16-wide panels are runs of contiguous channels of x
// (plain copies, not the 6-row transposes an A panel needs); each thread packs its own panels one
// K block at a time, just before the kernel reads them. dyᵀ (Cout rows) is the small, A side.
constexpr long KC_FILTER = 384;

void conv2d_backprop_filter_panels(const ConvShape& s, const float* x, const float* dy, float* dw, PackedKernel kern) {
  const int MR = IND_MR, NR = IND_NR;
  const long Cin = s.Cin, Cout = s.Cout, Kc = s.kh * s.kw * Cin, P = s.outH * s.outW, Kpix = s.B * P;
  const long np = (Kc + NR - 1) / NR, mp = (Cout + MR - 1) / MR, ldc = np * NR;
  const long nkb = (Kpix + KC_FILTER - 1) / KC_FILTER;
  const int T = Pool::get().threads();
  // Threads split the panels when there are enough of them, else the pixels (each part then
  // accumulates into its own copy of dWᵀ, summed at the end).
  const int kparts = np >= 2 * T ? 1 : (int)std::max<long>(1, std::min<long>(T, nkb));
  std::vector<std::vector<float>> C(kparts, std::vector<float>(mp * MR * ldc));
  // Column runs of panel j: columns [q, q + len) are channels [c, c + len) of tap (ki, kj).
  struct Run { long ki, kj, c, len, off; };
  auto runs_of = [&](long j) {
    std::vector<Run> runs;
    for (long q = j * NR; q < std::min(Kc, (j + 1) * NR);) {
      const long t = q / Cin, c = q % Cin, len = std::min(std::min(Kc, (j + 1) * NR) - q, Cin - c);
      runs.push_back({t / s.kw, t % s.kw, c, len, q - j * NR});
      q += len;
    }
    return runs;
  };
  const int tasks = kparts > 1 ? kparts : T;
  Pool::get().run(tasks, [&](int task) {
    const long jb = kparts > 1 ? 0 : np * task / tasks, je = kparts > 1 ? np : np * (task + 1) / tasks;
    const long kb0 = kparts > 1 ? nkb * task / kparts : 0, kb1 = kparts > 1 ? nkb * (task + 1) / kparts : nkb;
    float* const Cd = C[kparts > 1 ? task : 0].data();
    float* const Apk = scratch(2, (size_t)mp * MR * KC_FILTER);
    float* const Bp = scratch(3, (size_t)KC_FILTER * NR);
    std::vector<std::vector<Run>> runs;
    for (long j = jb; j < je; ++j) runs.push_back(runs_of(j));
    for (long kb = kb0; kb < kb1; ++kb) {
      const long k0 = kb * KC_FILTER, kc = std::min(KC_FILTER, Kpix - k0);
      // dyᵀ block: panel p holds dy[k0 + k][p*6 + i] at [k][i].
      for (long p = 0; p < mp; ++p) {
        float* d = Apk + p * kc * MR;
        const long m0 = p * MR, mr = std::min<long>(MR, Cout - m0);
        for (long k = 0; k < kc; ++k, d += MR) {
          const float* src = dy + (k0 + k) * Cout + m0;
          long i = 0;
          for (; i < mr; ++i) d[i] = src[i];
          for (; i < MR; ++i) d[i] = 0.f;
        }
      }
      for (long j = jb; j < je; ++j) {
        const std::vector<Run>& rj = runs[j - jb];
        const long width = rj.back().off + rj.back().len;
        if (width < NR)
          for (long k = 0; k < kc; ++k) std::memset(Bp + k * NR + width, 0, (NR - width) * sizeof(float));
        for (const Run& r : rj) pack_tap_run(s, x, r.ki, r.kj, r.c, (int)r.len, k0, kc, Bp + r.off, NR);
        for (long p = 0; p < mp; ++p)
          kern(kc, Apk + p * kc * MR, Bp, Cd + p * MR * ldc + j * NR, ldc, MR, NR, kb > kb0);
      }
    }
  });
  // dw[(t, c)][co] = sum over parts of dWᵀ[co][(t, c)].
  for (long q = 0; q < Kc; ++q)
    for (long co = 0; co < Cout; ++co) {
      float v = 0.f;
      for (int part = 0; part < kparts; ++part) v += C[part][co * ldc + q];
      dw[q * Cout + co] = v;
    }
}

}  // namespace

void conv2d(const ConvShape& s, const float* x, const float* w, float* out, const float* bias, int act, float alpha,
            const uint16_t* wh) {
  const long Kc = s.kh * s.kw * s.Cin, P = s.outH * s.outW;
  Gemm g;
  g.N = s.Cout; g.K = Kc; g.B = w; g.Bh = wh; g.ldb = s.Cout; g.ldc = s.Cout; g.lda = Kc;
  g.bias = bias; g.act = act; g.alpha = alpha;
  if (is_pointwise(s)) {
    g.M = s.B * P; g.A = x; g.C = out;
    sgemm(g);
    return;
  }
  if (s.Cout <= SMALL_COUT) {
    // Few output channels (a small filter): an fp16 one is unpacked whole first.
    std::vector<float> wf;
    if (wh) {
      wf.resize((size_t)Kc * s.Cout);
      halves_to_floats(wh, wf.data(), Kc * s.Cout);
      w = wf.data();
    }
    return conv2d_small(s, x, w, out, bias, act, alpha);
  }
  if (!std::getenv("SDLAB_IM2COL") && winograd_applies(s)) return conv2d_winograd(s, x, w, out, bias, act, alpha, wh);
  if (IndirectKernel kern = indirect_kernel(); kern && !std::getenv("SDLAB_IM2COL"))
    return conv2d_indirect(s, x, w, wh, out, bias, act, alpha, kern);
  const long ipc = images_per_chunk(s);
  float* cols = scratch(0, (size_t)ipc * P * Kc);
  for (long b0 = 0; b0 < s.B; b0 += ipc) {
    long b1 = std::min(s.B, b0 + ipc);
    im2col(s, x, b0, b1, cols);
    g.M = (b1 - b0) * P; g.A = cols; g.C = out + b0 * P * s.Cout;
    sgemm(g);
  }
}

bool conv2d_upsampled(const ConvShape& s, const float* x, const float* w, float* out, const float* bias, int act,
                      float alpha, const uint16_t* wh) {
  if (!std::getenv("SDLAB_IM2COL") && winograd_applies(s)) {
    conv2d_winograd(s, x, w, out, bias, act, alpha, wh);
    return true;
  }
  IndirectKernel kern = indirect_kernel();
  if (!kern || std::getenv("SDLAB_IM2COL") || is_pointwise(s) || s.Cout <= SMALL_COUT) return false;
  conv2d_indirect(s, x, w, wh, out, bias, act, alpha, kern);
  return true;
}

void conv2d_backprop_input(const ConvShape& s, const float* dy, const float* w, float* dx) {
  const long Kc = s.kh * s.kw * s.Cin, P = s.outH * s.outW;
  Gemm g;
  g.N = Kc; g.K = s.Cout; g.A = nullptr; g.lda = s.Cout; g.B = w; g.ldb = s.Cout; g.transB = true; g.ldc = Kc;
  if (is_pointwise(s)) {
    g.M = s.B * P; g.A = dy; g.C = dx;
    sgemm(g);
    return;
  }
  if (IndirectKernel kern = indirect_kernel(); kern && !std::getenv("SDLAB_IM2COL"))
    return conv2d_backprop_input_phases(s, dy, w, dx, kern);
  if (s.Cout <= SMALL_COUT) return conv2d_backprop_input_small(s, dy, w, dx);
  const long ipc = images_per_chunk(s);
  float* dcols = scratch(0, (size_t)ipc * P * Kc);
  for (long b0 = 0; b0 < s.B; b0 += ipc) {
    long b1 = std::min(s.B, b0 + ipc);
    g.M = (b1 - b0) * P; g.A = dy + b0 * P * s.Cout; g.C = dcols;
    sgemm(g);
    col2im(s, dcols, b0, b1, dx);
  }
}

void conv2d_backprop_filter(const ConvShape& s, const float* x, const float* dy, float* dw) {
  const long Kc = s.kh * s.kw * s.Cin, P = s.outH * s.outW;
  Gemm g;
  g.M = Kc; g.N = s.Cout; g.transA = true; g.lda = Kc; g.ldb = s.Cout; g.C = dw; g.ldc = s.Cout;
  if (is_pointwise(s)) {
    g.K = s.B * P; g.A = x; g.B = dy;
    sgemm(g);
    return;
  }
  if (s.Cout <= SMALL_COUT) return conv2d_backprop_filter_small(s, x, dy, dw);
  if (PackedKernel kern = packed_kernel(); kern && !std::getenv("SDLAB_IM2COL"))
    return conv2d_backprop_filter_panels(s, x, dy, dw, kern);
  if (!std::getenv("SDLAB_IM2COL")) {
    ColsT ct{&s, x};
    g.K = s.B * P; g.B = dy; g.pack_a = pack_cols_t; g.pack_a_ctx = &ct;
    sgemm(g);
    return;
  }
  const long ipc = images_per_chunk(s);
  float* cols = scratch(0, (size_t)ipc * P * Kc);
  for (long b0 = 0; b0 < s.B; b0 += ipc) {
    long b1 = std::min(s.B, b0 + ipc);
    im2col(s, x, b0, b1, cols);
    g.K = (b1 - b0) * P; g.A = cols; g.B = dy + b0 * P * s.Cout; g.accumulate = b0 > 0;
    sgemm(g);
  }
}

}  // namespace sdlab

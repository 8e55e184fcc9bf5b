// Convolutions as GEMMs. Rows of the im2col matrix are output pixels (b, oh, ow); columns are
// (ki, kj, cin), which matches the filter's row-major [kh*kw*Cin, Cout] layout, so
//   forward:          out   = cols · W
//   backprop filter:  dW    = colsᵀ · dy
//   backprop input:   dcols = dy · Wᵀ, then col2im (a gather, so threads never collide).
// The cols matrix is built in chunks of images so it stays near the L3 cache and memory stays bounded.
#include "conv.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "gemm.h"
#include "pool.h"

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

void conv2d_small(const ConvShape& s, const float* x, const float* w, float* out, const float* bias, int act, float alpha) {
  std::vector<float> wt = filter_by_cout(s, w);
  const long rows = s.B * s.outH * s.outW;
  parallel_for(rows, 256, [&](long rb, long re) {
    for (long r = rb; r < re; ++r) {
      long b = r / (s.outH * s.outW), rem = r % (s.outH * s.outW), oh = rem / s.outW, ow = rem % s.outW;
      float acc[SMALL_COUT] = {0, 0, 0, 0};
      for (long ki = 0; ki < s.kh; ++ki) {
        long ih = oh * s.sh - s.padTop + ki * s.dh;
        if (ih < 0 || ih >= s.H) continue;
        for (long kj = 0; kj < s.kw; ++kj) {
          long iw = ow * s.sw - s.padLeft + kj * s.dw;
          if (iw < 0 || iw >= s.W) continue;
          const float* xp = x + ((b * s.H + ih) * s.W + iw) * s.Cin;
          const float* wp = wt.data() + (ki * s.kw + kj) * s.Cout * s.Cin;
          for (long co = 0; co < s.Cout; ++co) acc[co] += sdot(xp, wp + co * s.Cin, s.Cin);
        }
      }
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

void conv2d_backprop_filter_small(const ConvShape& s, const float* x, const float* dy, float* dw) {
  const long taps = s.kh * s.kw, F = taps * s.Cout * s.Cin, rows = s.B * s.outH * s.outW;
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

}  // namespace

void conv2d(const ConvShape& s, const float* x, const float* w, float* out, const float* bias, int act, float alpha) {
  const long Kc = s.kh * s.kw * s.Cin, P = s.outH * s.outW;
  Gemm g;
  g.N = s.Cout; g.K = Kc; g.B = w; g.ldb = s.Cout; g.ldc = s.Cout; g.lda = Kc;
  g.bias = bias; g.act = act; g.alpha = alpha;
  if (is_pointwise(s)) {
    g.M = s.B * P; g.A = x; g.C = out;
    sgemm(g);
    return;
  }
  if (s.Cout <= SMALL_COUT) return conv2d_small(s, x, w, out, bias, act, alpha);
  const long ipc = images_per_chunk(s);
  float* cols = scratch(0, (size_t)ipc * P * Kc);
  for (long b0 = 0; b0 < s.B; b0 += ipc) {
    long b1 = std::min(s.B, b0 + ipc);
    im2col(s, x, b0, b1, cols);
    g.M = (b1 - b0) * P; g.A = cols; g.C = out + b0 * P * s.Cout;
    sgemm(g);
  }
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

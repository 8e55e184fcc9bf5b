// Fused attention (see attention.h). Per task (one batch entry, head and block of query rows):
// Qs = scale · Q[rows], then for each tile of keys j:
//   S = Qs · K[j]ᵀ                                      (rows × tile, in cache)
//   m' = max(m, rowmax S);  c = e^(m − m')
//   P = e^(S − m');  l = l·c + rowsum P;  O = O·c + P · V[j]
// and finally out = O / l. Exact up to float rounding: the rescaling by c makes every row's
// terms share the final maximum, as a two-pass softmax does.
//
// With the AVX2 GEMM micro-kernel (6×16, gemm.h packed_kernel) the products run on it directly:
// K and V are packed once per call into the kernel's 16-wide panels (shared by every row block:
// packing per block would cost as much as the products for head size 40) and Qs into 6-row
// panels; the probabilities feed the second product in place (the row-major variant). Elsewhere
// (AVX-512, generic builds) the two products are plain sgemm calls on the same tiles.
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "gemm.h"
#include "ops.h"
#include "pool.h"
#include "vmath.h"

namespace sdlab {

namespace {

// Query rows per task (a multiple of the micro-kernel's 6 rows) and keys per tile (a multiple
// of its 16 columns): the score tile (120 × 256 floats, 120 KB), Q's and O's panels stay in L2.
constexpr long ROWS = 120;
constexpr long KEYS = 256;
constexpr int MR = 6, NR = 16;

float row_max(const float* s, long n) {
  float m = -INFINITY;
  for (long i = 0; i < n; ++i) m = s[i] > m ? s[i] : m;
  return m;
}

// s[i] = e^(s[i] − m) in place; returns their sum.
float exp_shift_sum(float* s, long n, float m) {
  float sum = 0;
  for (long i = 0; i < n; ++i) sum += (s[i] = vm::exp_s(s[i] - m));
  return sum;
}

#ifdef SDLAB_VMATH_X86
__attribute__((target("avx2,fma"))) float row_max8(const float* s, long n) {
  __m256 mv = _mm256_set1_ps(-INFINITY);
  long i = 0;
  for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(s + i));
  alignas(32) float t[8];
  _mm256_store_ps(t, mv);
  float m = t[0];
  for (int k = 1; k < 8; ++k) m = t[k] > m ? t[k] : m;
  for (; i < n; ++i) m = s[i] > m ? s[i] : m;
  return m;
}

__attribute__((target("avx2,fma"))) float exp_shift_sum8(float* s, long n, float m) {
  const __m256 mb = _mm256_set1_ps(m);
  __m256 acc = _mm256_setzero_ps();
  long i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 e = vm::exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), mb));
    _mm256_storeu_ps(s + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, acc);
  float sum = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
  for (; i < n; ++i) sum += (s[i] = vm::exp_s(s[i] - m));
  return sum;
}
#endif

// The online-softmax update of one row of scores s[0, n): turns them into e^(s − m') in place and
// returns the factor c for the row's earlier terms (0 on the first tile).
inline float online_softmax_row(float* s, long n, bool first, float& m, float& l, bool simd) {
#ifdef SDLAB_VMATH_X86
  const float m1 = std::max(m, simd ? row_max8(s, n) : row_max(s, n));
  const float sum = simd ? exp_shift_sum8(s, n, m1) : exp_shift_sum(s, n, m1);
#else
  const float m1 = std::max(m, row_max(s, n));
  const float sum = exp_shift_sum(s, n, m1);
#endif
  (void)simd;
  const float c = first ? 0.0f : vm::exp_s(m - m1);
  l = l * c + sum;
  m = m1;
  return c;
}

// Per-thread buffers, grown as needed and reused across calls.
float* thread_buffer(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// The portable version: sgemm on the tiles (runs single-threaded inside a pool task).
void attention_gemm(const AttnShape& s, const float* q, const float* k, const float* v, float scale, float* out) {
  const long Lq = s.Lq, Lk = s.Lk, H = s.heads, D = s.D, Dv = s.Dv;
  const long ldq = H * D, ldk = H * D, ldv = H * Dv, ldo = H * Dv;
  const bool simd = use_simd();
  const long blocks = (Lq + ROWS - 1) / ROWS, tile = std::min(KEYS, Lk);
  Pool::get().run((int)(s.B * H * blocks), [&](int t) {
    const long b = t / (H * blocks), h = (t / blocks) % H, r0 = (t % blocks) * ROWS, rows = std::min(ROWS, Lq - r0);
    float* const Qs = thread_buffer((size_t)(rows * D + rows * tile + rows * Dv + 2 * rows));
    float* const S = Qs + rows * D;
    float* const O = S + rows * tile;
    float* const mx = O + rows * Dv;
    float* const l = mx + rows;
    for (long i = 0; i < rows; ++i) {
      const float* src = q + (b * Lq + r0 + i) * ldq + h * D;
      for (long d = 0; d < D; ++d) Qs[i * D + d] = src[d] * scale;
      mx[i] = -INFINITY;
      l[i] = 0;
    }
    std::fill(O, O + rows * Dv, 0.0f);
    for (long j0 = 0; j0 < Lk; j0 += tile) {
      const long n = std::min(tile, Lk - j0);
      Gemm g1;  // S = Qs · K[j0:j0+n]ᵀ
      g1.M = rows; g1.N = n; g1.K = D;
      g1.A = Qs; g1.lda = D;
      g1.B = k + (b * Lk + j0) * ldk + h * D; g1.ldb = ldk; g1.transB = true;
      g1.C = S; g1.ldc = tile;
      sgemm(g1);
      for (long i = 0; i < rows; ++i) {
        const float c = online_softmax_row(S + i * tile, n, j0 == 0, mx[i], l[i], simd);
        if (j0 > 0 && c != 1.0f)
          for (long d = 0; d < Dv; ++d) O[i * Dv + d] *= c;
      }
      Gemm g2;  // O += P · V[j0:j0+n]
      g2.M = rows; g2.N = Dv; g2.K = n;
      g2.A = S; g2.lda = tile;
      g2.B = v + (b * Lk + j0) * ldv + h * Dv; g2.ldb = ldv;
      g2.C = O; g2.ldc = Dv; g2.accumulate = true;
      sgemm(g2);
    }
    for (long i = 0; i < rows; ++i) {
      float* dst = out + (b * Lq + r0 + i) * ldo + h * Dv;
      const float inv = 1.0f / l[i];
      for (long d = 0; d < Dv; ++d) dst[d] = O[i * Dv + d] * inv;
    }
  });
}

// The micro-kernel version (AVX2 builds).
void attention_packed(PackedKernel kern, RowsKernel kern_rows, const AttnShape& s, const float* q, const float* k, const float* v, float scale,
                      float* out) {
  const long B = s.B, Lq = s.Lq, Lk = s.Lk, H = s.heads, D = s.D, Dv = s.Dv;
  const long ldq = H * D, ldk = H * D, ldv = H * Dv, ldo = H * Dv;
  const bool simd = use_simd();
  const long kpan = (Lk + NR - 1) / NR, Lkp = kpan * NR;  // key panels, keys padded to 16
  const long vpan = (Dv + NR - 1) / NR, Dvp = vpan * NR;  // value-column panels
  const long tile = std::min(KEYS, Lkp);
  // Packed K: per (b, h), panel j holds keys [16j, 16j+16) as [d][16] (zeros past Lk).
  // Packed V: per (b, h), panel c holds columns [16c, 16c+16) as [key][16] (zeros past Dv).
  const long kstride = Lkp * D, vstride = vpan * Lk * NR;
  std::vector<float> packed((size_t)(B * H * (kstride + vstride)) + 16);
  // The micro-kernel loads B panels with aligned loads: start on a 64-byte boundary (all
  // panel offsets are multiples of 16 floats).
  float* const Kp = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(packed.data()) + 63) & ~uintptr_t(63));
  float* const Vp = Kp + B * H * kstride;
  Pool::get().run((int)(B * H), [&](int t) {
    const long b = t / H, h = t % H;
    float* kp = Kp + t * kstride;
    for (long j = 0; j < kpan; ++j)
      for (long jj = 0; jj < NR; ++jj) {
        const long key = j * NR + jj;
        float* dst = kp + j * D * NR + jj;
        if (key < Lk) {
          const float* src = k + (b * Lk + key) * ldk + h * D;
          for (long d = 0; d < D; ++d) dst[d * NR] = src[d];
        } else {
          for (long d = 0; d < D; ++d) dst[d * NR] = 0.0f;
        }
      }
    float* vp = Vp + t * vstride;
    for (long key = 0; key < Lk; ++key) {
      const float* src = v + (b * Lk + key) * ldv + h * Dv;
      for (long c = 0; c < vpan; ++c) {
        float* dst = vp + (c * Lk + key) * NR;
        const long w = std::min<long>(NR, Dv - c * NR);
        for (long i = 0; i < w; ++i) dst[i] = src[c * NR + i];
        for (long i = w; i < NR; ++i) dst[i] = 0.0f;
      }
    }
  });

  const long blocks = (Lq + ROWS - 1) / ROWS;
  Pool::get().run((int)(B * H * blocks), [&](int t) {
    const long bh = t / blocks, b = bh / H, h = bh % H, r0 = (t % blocks) * ROWS, rows = std::min(ROWS, Lq - r0);
    const long rpan = (rows + MR - 1) / MR, rowsp = rpan * MR;
    float* const Qp = thread_buffer((size_t)(rowsp * D + rowsp * tile + rowsp * Dvp + 2 * rowsp));
    float* const S = Qp + rowsp * D;    // scores, then probabilities, [rowsp][tile]
    float* const O = S + rowsp * tile;  // [rowsp][Dvp]
    float* const mx = O + rowsp * Dvp;
    float* const l = mx + rowsp;
    // Qs in 6-row panels [rpan][d][6], zero rows past the block.
    for (long p = 0; p < rpan; ++p)
      for (int r = 0; r < MR; ++r) {
        const long i = p * MR + r;
        float* dst = Qp + p * D * MR + r;
        if (i < rows) {
          const float* src = q + (b * Lq + r0 + i) * ldq + h * D;
          for (long d = 0; d < D; ++d) dst[d * MR] = src[d] * scale;
        } else {
          for (long d = 0; d < D; ++d) dst[d * MR] = 0.0f;
        }
      }
    std::fill(mx, mx + rowsp, -INFINITY);
    std::fill(l, l + rowsp, 0.0f);
    std::fill(O, O + rowsp * Dvp, 0.0f);
    const float* kp = Kp + bh * kstride;
    const float* vp = Vp + bh * vstride;
    for (long j0 = 0; j0 < Lk; j0 += tile) {
      const long n = std::min(tile, Lk - j0), np = (n + NR - 1) / NR;
      for (long p = 0; p < rpan; ++p)  // S = Qs · K[j0:j0+n]ᵀ (full 16-wide panels: S has room)
        for (long j = 0; j < np; ++j)
          kern(D, Qp + p * D * MR, kp + (j0 / NR + j) * D * NR, S + p * MR * tile + j * NR, tile, MR, NR, false);
      for (long i = 0; i < rows; ++i) {
        float* si = S + i * tile;
        const float c = online_softmax_row(si, n, j0 == 0, mx[i], l[i], simd);
        if (j0 > 0 && c != 1.0f)
          for (long d = 0; d < Dv; ++d) O[i * Dvp + d] *= c;
      }
      // Padding rows of the last panel: zero probabilities (their scores came from zero queries).
      for (long i = rows; i < rowsp; ++i) std::fill(S + i * tile, S + i * tile + n, 0.0f);
      // O += P · V[j0:j0+n], P read in place; one V panel (n × 16) stays in L1 across the row panels.
      for (long c = 0; c < vpan; ++c)
        for (long p = 0; p < rpan; ++p)
          kern_rows(n, S + p * MR * tile, tile, vp + (c * Lk + j0) * NR, O + p * MR * Dvp + c * NR, Dvp, NR, true);
    }
    for (long i = 0; i < rows; ++i) {
      float* dst = out + (b * Lq + r0 + i) * ldo + h * Dv;
      const float inv = 1.0f / l[i];
      for (long d = 0; d < Dv; ++d) dst[d] = O[i * Dvp + d] * inv;
    }
  });
}

}  // namespace

void attention(const AttnShape& s, const float* q, const float* k, const float* v, float scale, float* out) {
  if (s.B <= 0 || s.Lq <= 0 || s.heads <= 0 || s.Dv <= 0) return;
  if (s.Lk <= 0) {  // softmax over no keys: 0/0, as the composition gives
    std::fill(out, out + s.B * s.Lq * s.heads * s.Dv, NAN);
    return;
  }
  PackedKernel kern = packed_kernel();
  RowsKernel kern_rows = rows_kernel();
  if (kern && kern_rows) return attention_packed(kern, kern_rows, s, q, k, v, scale, out);
  attention_gemm(s, q, k, v, scale, out);
}

}  // namespace sdlab

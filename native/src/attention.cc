// Fused attention (see attention.h). Per task (one batch entry, head and block of query rows):
// Qs = scale · Q[rows], then for each tile of keys j:
//   S = Qs · K[j]ᵀ                                      (rows × tile, in cache)
//   m' = max(m, rowmax S);  c = e^(m − m')
//   P = e^(S − m');  l = l·c + rowsum P;  O = O·c + P · V[j]
// and finally out = O / l. Exact up to float rounding: the rescaling by c makes every row's
// terms share the final maximum, as a two-pass softmax does.
//
// With the AVX2 or NEON GEMM micro-kernel (6×16, gemm.h packed_kernel) the products run on it directly,
// transposed (see attention_packed): K and V are packed once per call into the kernel's 6-row
// panels (shared by every row block: packing per block would cost as much as the products for
// head size 40). Elsewhere (AVX-512, generic builds) the two products are plain sgemm calls on the
// same tiles.
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "gemm.h"
#include "ops.h"
#include "pool.h"
#include "vmath.h"

namespace sdlab {

namespace {

// The portable path's query rows per task and keys per tile: the score tile (120 × 256 floats,
// 120 KB) and the block's Q and O stay in L2.
constexpr long ROWS = 120;
constexpr long KEYS = 256;

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
__attribute__((target("avx2,fma"))) float exp_shift_sum_simd(float* s, long n, float m) {
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
#elif defined(SDLAB_VMATH_NEON)
float exp_shift_sum_simd(float* s, long n, float m) {
  const float32x4_t mb = vdupq_n_f32(m);
  float32x4_t a0 = vdupq_n_f32(0), a1 = a0;
  long i = 0;
  for (; i + 8 <= n; i += 8) {
    const float32x4_t e0 = vm::exp4(vsubq_f32(vld1q_f32(s + i), mb)), e1 = vm::exp4(vsubq_f32(vld1q_f32(s + i + 4), mb));
    vst1q_f32(s + i, e0);
    vst1q_f32(s + i + 4, e1);
    a0 = vaddq_f32(a0, e0);
    a1 = vaddq_f32(a1, e1);
  }
  float sum = vaddvq_f32(vaddq_f32(a0, a1));
  for (; i < n; ++i) sum += (s[i] = vm::exp_s(s[i] - m));
  return sum;
}
#endif

// The online-softmax update of one row of scores s[0, n): turns them into e^(s − m') in place and
// returns the factor c for the row's earlier terms (0 on the first tile).
inline float online_softmax_row(float* s, long n, bool first, float& m, float& l, bool simd) {
#ifdef SDLAB_VMATH_SIMD
  const float m1 = std::max(m, simd ? row_max_simd(s, n) : row_max(s, n));
  const float sum = simd ? exp_shift_sum_simd(s, n, m1) : exp_shift_sum(s, n, m1);
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

// The portable version: sgemm on the tiles (runs single-threaded inside a pool task).
void attention_gemm(const AttnShape& s, const float* q, const float* k, const float* v, float scale, float* out) {
  const long Lq = s.Lq, Lk = s.Lk, H = s.heads, D = s.D, Dv = s.Dv;
  const long ldq = H * D, ldk = H * D, ldv = H * Dv, ldo = H * Dv;
  const bool simd = use_simd();
  const long blocks = (Lq + ROWS - 1) / ROWS, tile = std::min(KEYS, Lk);
  Pool::get().run((int)(s.B * H * blocks), [&](int t) {
    const long b = t / (H * blocks), h = (t / blocks) % H, r0 = (t % blocks) * ROWS, rows = std::min(ROWS, Lq - r0);
    // Per-thread scratch (pool.h; sgemm uses slots 1-3).
    float* const Qs = scratch(0, (size_t)(rows * D + rows * tile + rows * Dv + 2 * rows));
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

#ifdef SDLAB_VMATH_SIMD
// The micro-kernel version (AVX2 and NEON builds), transposed: it computes Sᵀ = K Qᵀ and Oᵀ = Vᵀ Pᵀ, so
// that keys and value channels are the 6-row side of the 6×16 tile and query rows the 16-wide
// side. Then Sᵀ comes out of the first product already in the 16-wide panels [key][16] that the
// second product reads, the softmax over keys runs down those panels (16 query rows per pair of
// vectors: no horizontal reductions), and the only padding is keys and value channels to a
// multiple of 6 (a head size of 40 wastes 5%, not the 17% of 16-wide panels).
constexpr long QROWS = 128;  // query rows per task: 8 panels of 16
constexpr long KTILE = 252;  // keys per tile: 42 panels of 6 (Sᵀ tile: 128 × 252 floats, 126 KB)

// One 16-row panel's online-softmax update over keys [0, n) of the tile st [key][16]: st becomes
// e^(s − m'), and m, l, c (16 each) the new maxima, sums and the factors for the earlier terms.
#ifdef SDLAB_VMATH_X86
__attribute__((target("avx2,fma"))) void softmax_panel(float* st, long n, bool first, float* m, float* l, float* c) {
  __m256 a0 = _mm256_set1_ps(-INFINITY), a1 = a0;
  for (long k = 0; k < n; ++k) {
    a0 = _mm256_max_ps(a0, _mm256_load_ps(st + k * 16));
    a1 = _mm256_max_ps(a1, _mm256_load_ps(st + k * 16 + 8));
  }
  const __m256 old0 = _mm256_loadu_ps(m), old1 = _mm256_loadu_ps(m + 8);
  const __m256 m0 = _mm256_max_ps(old0, a0), m1 = _mm256_max_ps(old1, a1);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  for (long k = 0; k < n; ++k) {
    const __m256 e0 = vm::exp8(_mm256_sub_ps(_mm256_load_ps(st + k * 16), m0));
    const __m256 e1 = vm::exp8(_mm256_sub_ps(_mm256_load_ps(st + k * 16 + 8), m1));
    _mm256_store_ps(st + k * 16, e0);
    _mm256_store_ps(st + k * 16 + 8, e1);
    s0 = _mm256_add_ps(s0, e0);
    s1 = _mm256_add_ps(s1, e1);
  }
  const __m256 c0 = first ? _mm256_setzero_ps() : vm::exp8(_mm256_sub_ps(old0, m0));
  const __m256 c1 = first ? _mm256_setzero_ps() : vm::exp8(_mm256_sub_ps(old1, m1));
  _mm256_storeu_ps(l, _mm256_fmadd_ps(_mm256_loadu_ps(l), c0, s0));
  _mm256_storeu_ps(l + 8, _mm256_fmadd_ps(_mm256_loadu_ps(l + 8), c1, s1));
  _mm256_storeu_ps(m, m0);
  _mm256_storeu_ps(m + 8, m1);
  _mm256_storeu_ps(c, c0);
  _mm256_storeu_ps(c + 8, c1);
}

// row[0, n) *= c[0, n), n a multiple of 8.
__attribute__((target("avx2,fma"))) void scale_row(float* row, const float* c, long n) {
  for (long i = 0; i < n; i += 8) _mm256_store_ps(row + i, _mm256_mul_ps(_mm256_load_ps(row + i), _mm256_loadu_ps(c + i)));
}
#else
void softmax_panel(float* st, long n, bool first, float* m, float* l, float* c) {
  float32x4_t a[4], old[4], mx[4], sum[4];
  for (int v = 0; v < 4; ++v) a[v] = vdupq_n_f32(-INFINITY);
  for (long k = 0; k < n; ++k)
    for (int v = 0; v < 4; ++v) a[v] = vmaxq_f32(a[v], vld1q_f32(st + k * 16 + 4 * v));
  for (int v = 0; v < 4; ++v) {
    old[v] = vld1q_f32(m + 4 * v);
    mx[v] = vmaxq_f32(old[v], a[v]);
    sum[v] = vdupq_n_f32(0);
  }
  for (long k = 0; k < n; ++k)
    for (int v = 0; v < 4; ++v) {
      const float32x4_t e = vm::exp4(vsubq_f32(vld1q_f32(st + k * 16 + 4 * v), mx[v]));
      vst1q_f32(st + k * 16 + 4 * v, e);
      sum[v] = vaddq_f32(sum[v], e);
    }
  for (int v = 0; v < 4; ++v) {
    const float32x4_t cv = first ? vdupq_n_f32(0) : vm::exp4(vsubq_f32(old[v], mx[v]));
    vst1q_f32(l + 4 * v, vfmaq_f32(sum[v], vld1q_f32(l + 4 * v), cv));
    vst1q_f32(m + 4 * v, mx[v]);
    vst1q_f32(c + 4 * v, cv);
  }
}

// row[0, n) *= c[0, n), n a multiple of 8.
void scale_row(float* row, const float* c, long n) {
  for (long i = 0; i < n; i += 4) vst1q_f32(row + i, vmulq_f32(vld1q_f32(row + i), vld1q_f32(c + i)));
}
#endif

void attention_packed(PackedKernel kern, const AttnShape& s, const float* q, const float* k, const float* v, float scale,
                      float* out) {
  const long B = s.B, Lq = s.Lq, Lk = s.Lk, H = s.heads, D = s.D, Dv = s.Dv;
  const long ldq = H * D, ldk = H * D, ldv = H * Dv, ldo = H * Dv;
  const long kpan = (Lk + 5) / 6;  // key panels of 6
  const long vpan = (Dv + 5) / 6;  // value-channel panels of 6
  // Packed K (the first product's 6-row side): per (b, h), panel p = keys [6p, 6p+6) as [d][6].
  // Packed V (the second's): per (b, h), panel c = value channels [6c, 6c+6) as [key][6].
  // Zeros past Lk and Dv. Shared by every row block of the head.
  const long kstride = kpan * D * 6, vstride = vpan * Lk * 6;
  std::vector<float> packed((size_t)(B * H * (kstride + vstride)));
  float* const Kp = packed.data();
  float* const Vp = Kp + B * H * kstride;
  Pool::get().run((int)(B * H), [&](int t) {
    const long b = t / H, h = t % H;
    float* kp = Kp + t * kstride;
    for (long key = 0; key < kpan * 6; ++key) {
      float* dst = kp + (key / 6) * D * 6 + key % 6;
      const float* src = k + (b * Lk + key) * ldk + h * D;
      for (long d = 0; d < D; ++d) dst[d * 6] = key < Lk ? src[d] : 0.0f;
    }
    float* vp = Vp + t * vstride;
    for (long key = 0; key < Lk; ++key) {
      const float* src = v + (b * Lk + key) * ldv + h * Dv;
      for (long ch = 0; ch < vpan * 6; ++ch) vp[((ch / 6) * Lk + key) * 6 + ch % 6] = ch < Dv ? src[ch] : 0.0f;
    }
  });

  const long blocks = (Lq + QROWS - 1) / QROWS;
  const long tile = std::min(KTILE, kpan * 6);
  Pool::get().run((int)(B * H * blocks), [&](int t) {
    const long bh = t / blocks, b = bh / H, h = bh % H, r0 = (t % blocks) * QROWS, rows = std::min(QROWS, Lq - r0);
    const long qpan = (rows + 15) / 16, rows16 = qpan * 16;
    // 64-byte-aligned per-thread scratch: the kernel loads its 16-wide operand with aligned loads.
    float* const Qp = scratch(0, (size_t)(qpan * D * 16 + qpan * tile * 16 + vpan * 6 * rows16 + 3 * rows16));
    float* const ST = Qp + qpan * D * 16;       // [qpan][key][16]
    float* const OT = ST + qpan * tile * 16;    // [vpan·6][rows16]
    float* const mx = OT + vpan * 6 * rows16;
    float* const l = mx + rows16;
    float* const cf = l + rows16;
    for (long i = 0; i < rows16; ++i) {  // Qs ᵀ in 16-wide panels [qpan][d][16], zero rows past the block
      float* dst = Qp + (i / 16) * D * 16 + i % 16;
      const float* src = q + (b * Lq + r0 + i) * ldq + h * D;
      for (long d = 0; d < D; ++d) dst[d * 16] = i < rows ? src[d] * scale : 0.0f;
    }
    std::fill(mx, mx + rows16, -INFINITY);
    std::fill(l, l + rows16, 0.0f);
    std::fill(OT, OT + vpan * 6 * rows16, 0.0f);
    const float* kp = Kp + bh * kstride;
    const float* vp = Vp + bh * vstride;
    for (long j0 = 0; j0 < Lk; j0 += tile) {
      const long n = std::min(tile, Lk - j0), np = (n + 5) / 6;
      for (long j = 0; j < qpan; ++j)  // Sᵀ = K[j0:j0+n] Qsᵀ
        for (long p = 0; p < np; ++p)
          kern(D, kp + (j0 / 6 + p) * D * 6, Qp + j * D * 16, ST + (j * tile + p * 6) * 16, 16, 6, 16, false);
      for (long j = 0; j < qpan; ++j) softmax_panel(ST + j * tile * 16, n, j0 == 0, mx + j * 16, l + j * 16, cf + j * 16);
      if (j0 > 0)
        for (long ch = 0; ch < Dv; ++ch) scale_row(OT + ch * rows16, cf, rows16);
      for (long c = 0; c < vpan; ++c)  // Oᵀ += Vᵀ[:, j0:j0+n] Pᵀ
        for (long j = 0; j < qpan; ++j)
          kern(n, vp + (c * Lk + j0) * 6, ST + j * tile * 16, OT + c * 6 * rows16 + j * 16, rows16, 6, 16, true);
    }
    for (long i = 0; i < rows; ++i) {
      float* dst = out + (b * Lq + r0 + i) * ldo + h * Dv;
      const float inv = 1.0f / l[i];
      for (long ch = 0; ch < Dv; ++ch) dst[ch] = OT[ch * rows16 + i] * inv;
    }
  });
}
#endif

}  // namespace

void attention(const AttnShape& s, const float* q, const float* k, const float* v, float scale, float* out) {
  if (s.B <= 0 || s.Lq <= 0 || s.heads <= 0 || s.Dv <= 0) return;
  if (s.Lk <= 0) {  // softmax over no keys: 0/0, as the composition gives
    std::fill(out, out + s.B * s.Lq * s.heads * s.Dv, NAN);
    return;
  }
#ifdef SDLAB_VMATH_SIMD
  if (PackedKernel kern = packed_kernel(); kern && use_simd()) return attention_packed(kern, s, q, k, v, scale, out);
#endif
  attention_gemm(s, q, k, v, scale, out);
}

}  // namespace sdlab

// Packed, register-tiled SGEMM (the BLIS recipe): B is packed once into K-blocks of NR-wide
// column panels shared by all threads; each thread packs its own MR-row panels of A per K
// block and runs an MR x NR micro-kernel that keeps the C tile in registers. The micro-kernel
// is picked at run time: AVX-512 (12x32), AVX2+FMA (6x16), NEON on aarch64 (6x16), or portable
// C++ (6x16).
#include "gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "copy.h"
#include "pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SDLAB_X86 1
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define SDLAB_NEON 1
#endif

namespace sdlab {

namespace {

// K block: at most KC_MAX rows, split evenly (K = 1024 -> 3 x 344, not 384 + 384 + 256): each
// block costs a pass that reads and writes C, so blocks are as few as the cache allows. A 16-wide
// B micro-panel of 384 rows is 24 KB, leaving room in L1 (32 KB) for the A panel streaming past
// it (512 rows fill L1 and measured slower on a busy machine).
constexpr long KC_MAX = 384;
// Rows of A packed per block (264 KB at KC 344, in L2): every block streams all of packed B
// from L3 once, so taller blocks mean less L3 traffic (measured: 96 rows fell to 0.88x OpenBLAS
// on a busy machine where 192 kept 1.0x; no difference on a quiet one).
constexpr long MC_ROWS = 192;

typedef void (*KernFn)(long kc, const float* A, const float* B, float* C, long ldc, int mr, int nr, bool acc);
// Full-height tile with A unpacked (row-major, stride lda); optional per ISA.
typedef void (*KernRowsFn)(long kc, const float* A, long lda, const float* B, float* C, long ldc, int nr, bool acc);

struct Kern {
  int MR, NR;
  KernFn fn;
  const char* name;
  KernRowsFn rows_fn = nullptr;
};

// Skip packing A when N is at most this: A is then read once per 16-wide B panel, in place. (Up to
// N = 384 while packing A was scalar; with the SIMD packing, packing wins from N = 128 on, measured.)
constexpr long DIRECT_A_MAX_N = 64;

// Copies an MR x NR register tile (held in `t`) into C, honouring partial tiles and accumulate.
inline void store_tile(const float* t, int MR, int NR, float* C, long ldc, int mr, int nr, bool acc) {
  for (int i = 0; i < mr; ++i) {
    float* c = C + i * ldc;
    const float* s = t + i * NR;
    if (acc)
      for (int j = 0; j < nr; ++j) c[j] += s[j];
    else
      for (int j = 0; j < nr; ++j) c[j] = s[j];
  }
  (void)MR;
}

#ifdef SDLAB_X86
// Starts fetching the C tile the kernel will read (accumulate) or write at its end: rows lie
// ldc apart, so the hardware prefetcher cannot guess them, and a miss per row after the K loop
// stalls the store phase (measured: +10% on 1024^3).
inline void prefetch_c(const float* C, long ldc, int mr) {
  for (int i = 0; i < mr; ++i) {
    _mm_prefetch((const char*)(C + i * ldc), _MM_HINT_T0);
    _mm_prefetch((const char*)(C + i * ldc + 15), _MM_HINT_T0);
  }
}
#endif

void kern_generic(long kc, const float* A, const float* B, float* C, long ldc, int mr, int nr, bool acc) {
  constexpr int MR = 6, NR = 16;
  float t[MR * NR] = {0};
  for (long k = 0; k < kc; ++k) {
    const float* a = A + k * MR;
    const float* b = B + k * NR;
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) t[i * NR + j] += a[i] * b[j];
  }
  store_tile(t, MR, NR, C, ldc, mr, nr, acc);
}

void kern_generic_ind(long ntaps, long clen, long coff, const float* const* rows, const float* B, float* C, long ldc,
                      int mr, int nr, bool acc) {
  constexpr int MR = 6, NR = 16;
  float t[MR * NR] = {0};
  for (long tp = 0; tp < ntaps; ++tp) {
    const float* const* r = rows + tp * MR;
    for (long c = 0; c < clen; ++c, B += NR)
      for (int i = 0; i < MR; ++i) {
        const float a = r[i][coff + c];
        for (int j = 0; j < NR; ++j) t[i * NR + j] += a * B[j];
      }
  }
  store_tile(t, MR, NR, C, ldc, mr, nr, acc);
}

#ifdef SDLAB_X86
__attribute__((target("avx2,fma"))) void kern_avx2(long kc, const float* A, const float* B, float* C, long ldc,
                                                    int mr, int nr, bool acc) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  prefetch_c(C, ldc, mr);
  for (long k = 0; k < kc; ++k) {
    __m256 b0 = _mm256_load_ps(B), b1 = _mm256_load_ps(B + 8);
    __m256 a;
    a = _mm256_broadcast_ss(A + 0); c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01);
    a = _mm256_broadcast_ss(A + 1); c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11);
    a = _mm256_broadcast_ss(A + 2); c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21);
    a = _mm256_broadcast_ss(A + 3); c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31);
    a = _mm256_broadcast_ss(A + 4); c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41);
    a = _mm256_broadcast_ss(A + 5); c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51);
    A += 6;
    B += 16;
  }
  if (mr == 6 && nr == 16) {
#define ROW(i, x0, x1)                                                              \
  {                                                                                 \
    float* c = C + (i) * ldc;                                                       \
    if (acc) {                                                                      \
      x0 = _mm256_add_ps(x0, _mm256_loadu_ps(c));                                   \
      x1 = _mm256_add_ps(x1, _mm256_loadu_ps(c + 8));                               \
    }                                                                               \
    _mm256_storeu_ps(c, x0);                                                        \
    _mm256_storeu_ps(c + 8, x1);                                                    \
  }
    ROW(0, c00, c01) ROW(1, c10, c11) ROW(2, c20, c21) ROW(3, c30, c31) ROW(4, c40, c41) ROW(5, c50, c51)
#undef ROW
    return;
  }
  alignas(32) float t[6 * 16];
  _mm256_store_ps(t + 0, c00); _mm256_store_ps(t + 8, c01);
  _mm256_store_ps(t + 16, c10); _mm256_store_ps(t + 24, c11);
  _mm256_store_ps(t + 32, c20); _mm256_store_ps(t + 40, c21);
  _mm256_store_ps(t + 48, c30); _mm256_store_ps(t + 56, c31);
  _mm256_store_ps(t + 64, c40); _mm256_store_ps(t + 72, c41);
  _mm256_store_ps(t + 80, c50); _mm256_store_ps(t + 88, c51);
  store_tile(t, 6, 16, C, ldc, mr, nr, acc);
}

// Same tile, but A read straight from row-major storage (6 rows, stride lda): skips packing A,
// which pays off when N is small (each A element then feeds only a few B panels).
__attribute__((target("avx2,fma"))) void kern_avx2_rows(long kc, const float* A, long lda, const float* B, float* C,
                                                         long ldc, int nr, bool acc) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  prefetch_c(C, ldc, 6);
  const float *a0 = A, *a1 = A + lda, *a2 = A + 2 * lda, *a3 = A + 3 * lda, *a4 = A + 4 * lda, *a5 = A + 5 * lda;
  for (long k = 0; k < kc; ++k) {
    __m256 b0 = _mm256_load_ps(B), b1 = _mm256_load_ps(B + 8);
    __m256 a;
    a = _mm256_broadcast_ss(a0 + k); c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01);
    a = _mm256_broadcast_ss(a1 + k); c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11);
    a = _mm256_broadcast_ss(a2 + k); c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21);
    a = _mm256_broadcast_ss(a3 + k); c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31);
    a = _mm256_broadcast_ss(a4 + k); c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41);
    a = _mm256_broadcast_ss(a5 + k); c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51);
    B += 16;
  }
  alignas(32) float t[6 * 16];
  _mm256_store_ps(t + 0, c00); _mm256_store_ps(t + 8, c01);
  _mm256_store_ps(t + 16, c10); _mm256_store_ps(t + 24, c11);
  _mm256_store_ps(t + 32, c20); _mm256_store_ps(t + 40, c21);
  _mm256_store_ps(t + 48, c30); _mm256_store_ps(t + 56, c31);
  _mm256_store_ps(t + 64, c40); _mm256_store_ps(t + 72, c41);
  _mm256_store_ps(t + 80, c50); _mm256_store_ps(t + 88, c51);
  if (nr == 16) {
    for (int i = 0; i < 6; ++i) {
      float* c = C + i * ldc;
      __m256 x0 = _mm256_load_ps(t + i * 16), x1 = _mm256_load_ps(t + i * 16 + 8);
      if (acc) {
        x0 = _mm256_add_ps(x0, _mm256_loadu_ps(c));
        x1 = _mm256_add_ps(x1, _mm256_loadu_ps(c + 8));
      }
      _mm256_storeu_ps(c, x0);
      _mm256_storeu_ps(c + 8, x1);
    }
    return;
  }
  store_tile(t, 6, 16, C, ldc, 6, nr, acc);
}

// 6 x 16 tile with the 6 A rows of each tap read through pointers (a convolution's input pixels,
// or a zero row for padding): the im2col matrix is never built.
__attribute__((target("avx2,fma"))) void kern_avx2_ind(long ntaps, long clen, long coff, const float* const* rows,
                                                        const float* B, float* C, long ldc, int mr, int nr, bool acc) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  prefetch_c(C, ldc, mr);
  for (long tp = 0; tp < ntaps; ++tp) {
    const float* const* r = rows + tp * 6;
    const float *a0 = r[0] + coff, *a1 = r[1] + coff, *a2 = r[2] + coff, *a3 = r[3] + coff, *a4 = r[4] + coff,
                *a5 = r[5] + coff;
    for (long k = 0; k < clen; ++k) {
      __m256 b0 = _mm256_load_ps(B), b1 = _mm256_load_ps(B + 8);
      __m256 a;
      a = _mm256_broadcast_ss(a0 + k); c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01);
      a = _mm256_broadcast_ss(a1 + k); c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11);
      a = _mm256_broadcast_ss(a2 + k); c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21);
      a = _mm256_broadcast_ss(a3 + k); c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31);
      a = _mm256_broadcast_ss(a4 + k); c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41);
      a = _mm256_broadcast_ss(a5 + k); c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51);
      B += 16;
    }
  }
  alignas(32) float t[6 * 16];
  _mm256_store_ps(t + 0, c00); _mm256_store_ps(t + 8, c01);
  _mm256_store_ps(t + 16, c10); _mm256_store_ps(t + 24, c11);
  _mm256_store_ps(t + 32, c20); _mm256_store_ps(t + 40, c21);
  _mm256_store_ps(t + 48, c30); _mm256_store_ps(t + 56, c31);
  _mm256_store_ps(t + 64, c40); _mm256_store_ps(t + 72, c41);
  _mm256_store_ps(t + 80, c50); _mm256_store_ps(t + 88, c51);
  if (nr == 16) {
    for (int i = 0; i < mr; ++i) {
      float* c = C + i * ldc;
      __m256 x0 = _mm256_load_ps(t + i * 16), x1 = _mm256_load_ps(t + i * 16 + 8);
      if (acc) {
        x0 = _mm256_add_ps(x0, _mm256_loadu_ps(c));
        x1 = _mm256_add_ps(x1, _mm256_loadu_ps(c + 8));
      }
      _mm256_storeu_ps(c, x0);
      _mm256_storeu_ps(c + 8, x1);
    }
    return;
  }
  store_tile(t, 6, 16, C, ldc, mr, nr, acc);
}

__attribute__((target("avx512f"))) void kern_avx512(long kc, const float* A, const float* B, float* C, long ldc,
                                                     int mr, int nr, bool acc) {
  constexpr int MR = 12;
  __m512 c[MR][2];
  for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm512_setzero_ps();
  for (long k = 0; k < kc; ++k) {
    __m512 b0 = _mm512_load_ps(B), b1 = _mm512_load_ps(B + 16);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      __m512 a = _mm512_set1_ps(A[i]);
      c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
      c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
    }
    A += MR;
    B += 32;
  }
  if (mr == MR && nr == 32) {
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      float* p = C + i * ldc;
      __m512 x0 = c[i][0], x1 = c[i][1];
      if (acc) {
        x0 = _mm512_add_ps(x0, _mm512_loadu_ps(p));
        x1 = _mm512_add_ps(x1, _mm512_loadu_ps(p + 16));
      }
      _mm512_storeu_ps(p, x0);
      _mm512_storeu_ps(p + 16, x1);
    }
    return;
  }
  alignas(64) float t[MR * 32];
  for (int i = 0; i < MR; ++i) {
    _mm512_store_ps(t + i * 32, c[i][0]);
    _mm512_store_ps(t + i * 32 + 16, c[i][1]);
  }
  store_tile(t, MR, 32, C, ldc, mr, nr, acc);
}
#endif

#ifdef SDLAB_NEON
// NEON (aarch64): the same 6 x 16 tile as AVX2, as 6 rows x 4 vectors of 4 lanes = 24 of the 32
// 128-bit registers for C, 4 for the B row, 2 for the 6 A values; each A value is used straight
// from its register lane (FMLA by element), so nothing is broadcast: per k, 4 + 2 vector loads
// (96 bytes) feed 24 FMAs.
#define SDLAB_NEON_ZERO                                                                            \
  float32x4_t c00 = vdupq_n_f32(0), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00, \
              c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, \
              c33 = c00, c40 = c00, c41 = c00, c42 = c00, c43 = c00, c50 = c00, c51 = c00, c52 = c00, c53 = c00;
#define SDLAB_NEON_ROW4(i, a, lane)                 \
  c##i##0 = vfmaq_laneq_f32(c##i##0, b0, a, lane); \
  c##i##1 = vfmaq_laneq_f32(c##i##1, b1, a, lane); \
  c##i##2 = vfmaq_laneq_f32(c##i##2, b2, a, lane); \
  c##i##3 = vfmaq_laneq_f32(c##i##3, b3, a, lane);
#define SDLAB_NEON_ROW2(i, a, lane)                \
  c##i##0 = vfmaq_lane_f32(c##i##0, b0, a, lane); \
  c##i##1 = vfmaq_lane_f32(c##i##1, b1, a, lane); \
  c##i##2 = vfmaq_lane_f32(c##i##2, b2, a, lane); \
  c##i##3 = vfmaq_lane_f32(c##i##3, b3, a, lane);
#define SDLAB_NEON_ROWN(i, x)               \
  c##i##0 = vfmaq_n_f32(c##i##0, b0, x); \
  c##i##1 = vfmaq_n_f32(c##i##1, b1, x); \
  c##i##2 = vfmaq_n_f32(c##i##2, b2, x); \
  c##i##3 = vfmaq_n_f32(c##i##3, b3, x);
#define SDLAB_NEON_LOAD_B                                                                      \
  const float32x4_t b0 = vld1q_f32(B), b1 = vld1q_f32(B + 4), b2 = vld1q_f32(B + 8), b3 = vld1q_f32(B + 12);

// Writes the register tile to C: full tiles straight from registers, partial ones through t.
#define SDLAB_NEON_STORE                                                                         \
  {                                                                                              \
    const float32x4_t r[6][4] = {{c00, c01, c02, c03}, {c10, c11, c12, c13}, {c20, c21, c22, c23}, \
                                 {c30, c31, c32, c33}, {c40, c41, c42, c43}, {c50, c51, c52, c53}}; \
    if (nr == 16) {                                                                              \
      for (int i = 0; i < mr; ++i) {                                                             \
        float* c = C + i * ldc;                                                                  \
        for (int j = 0; j < 4; ++j) vst1q_f32(c + 4 * j, acc ? vaddq_f32(r[i][j], vld1q_f32(c + 4 * j)) : r[i][j]); \
      }                                                                                          \
    } else {                                                                                     \
      alignas(16) float t[6 * 16];                                                               \
      for (int i = 0; i < 6; ++i)                                                                \
        for (int j = 0; j < 4; ++j) vst1q_f32(t + i * 16 + 4 * j, r[i][j]);                      \
      store_tile(t, 6, 16, C, ldc, mr, nr, acc);                                                 \
    }                                                                                            \
  }

void kern_neon(long kc, const float* A, const float* B, float* C, long ldc, int mr, int nr, bool acc) {
  SDLAB_NEON_ZERO
  for (long k = 0; k < kc; ++k, A += 6, B += 16) {
    SDLAB_NEON_LOAD_B
    const float32x4_t a03 = vld1q_f32(A);
    const float32x2_t a45 = vld1_f32(A + 4);
    SDLAB_NEON_ROW4(0, a03, 0) SDLAB_NEON_ROW4(1, a03, 1) SDLAB_NEON_ROW4(2, a03, 2) SDLAB_NEON_ROW4(3, a03, 3)
    SDLAB_NEON_ROW2(4, a45, 0) SDLAB_NEON_ROW2(5, a45, 1)
  }
  SDLAB_NEON_STORE
}

// A read in place (6 rows of stride lda), as kern_avx2_rows.
void kern_neon_rows(long kc, const float* A, long lda, const float* B, float* C, long ldc, int nr, bool acc) {
  SDLAB_NEON_ZERO
  const int mr = 6;
  const float *a0 = A, *a1 = A + lda, *a2 = A + 2 * lda, *a3 = A + 3 * lda, *a4 = A + 4 * lda, *a5 = A + 5 * lda;
  for (long k = 0; k < kc; ++k, B += 16) {
    SDLAB_NEON_LOAD_B
    SDLAB_NEON_ROWN(0, a0[k]) SDLAB_NEON_ROWN(1, a1[k]) SDLAB_NEON_ROWN(2, a2[k])
    SDLAB_NEON_ROWN(3, a3[k]) SDLAB_NEON_ROWN(4, a4[k]) SDLAB_NEON_ROWN(5, a5[k])
  }
  SDLAB_NEON_STORE
}

// A rows through pointers per tap, as kern_avx2_ind.
void kern_neon_ind(long ntaps, long clen, long coff, const float* const* rows, const float* B, float* C, long ldc,
                   int mr, int nr, bool acc) {
  SDLAB_NEON_ZERO
  for (long tp = 0; tp < ntaps; ++tp) {
    const float* const* r = rows + tp * 6;
    const float *a0 = r[0] + coff, *a1 = r[1] + coff, *a2 = r[2] + coff, *a3 = r[3] + coff, *a4 = r[4] + coff,
                *a5 = r[5] + coff;
    for (long k = 0; k < clen; ++k, B += 16) {
      SDLAB_NEON_LOAD_B
      SDLAB_NEON_ROWN(0, a0[k]) SDLAB_NEON_ROWN(1, a1[k]) SDLAB_NEON_ROWN(2, a2[k])
      SDLAB_NEON_ROWN(3, a3[k]) SDLAB_NEON_ROWN(4, a4[k]) SDLAB_NEON_ROWN(5, a5[k])
    }
  }
  SDLAB_NEON_STORE
}
#undef SDLAB_NEON_ZERO
#undef SDLAB_NEON_ROW4
#undef SDLAB_NEON_ROW2
#undef SDLAB_NEON_ROWN
#undef SDLAB_NEON_LOAD_B
#undef SDLAB_NEON_STORE
#endif

const Kern& kernel() {
  static const Kern k = [] {
    const char* force = std::getenv("SDLAB_ISA");  // "avx512" | "avx2" | "neon" | "generic" (tests, benchmarks)
    std::string f = force ? force : "";
#ifdef SDLAB_X86
    __builtin_cpu_init();
    bool has512 = __builtin_cpu_supports("avx512f");
    bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (has512 && (f.empty() || f == "avx512")) return Kern{12, 32, kern_avx512, "avx512"};
    if (has2 && f != "generic") return Kern{6, 16, kern_avx2, "avx2+fma", kern_avx2_rows};
#elif defined(SDLAB_NEON)
    if (f != "generic") return Kern{6, 16, kern_neon, "neon", kern_neon_rows};
#endif
    return Kern{6, 16, kern_generic, "generic"};
  }();
  return k;
}

#ifdef SDLAB_X86
// Packs 6 full rows (row-major, stride lda) x kc columns into [k][6]: 8 columns at a time as an
// 8x8 register transpose (rows 6, 7 are don't-care), each k's 6 values stored with an 8-wide
// store whose 2 extra lanes the next k's store overwrites. Writes up to 2 floats past dst + 6*kc.
__attribute__((target("avx2,fma"))) void pack_a6_avx2(const float* src, long lda, long kc, float* dst) {
  long k = 0;
  for (; k + 8 <= kc; k += 8) {
    // Six rows a page apart are six short streams the hardware prefetcher is slow to pick up.
    if ((k & 15) == 0)
      for (int i = 0; i < 6; ++i) _mm_prefetch((const char*)(src + i * lda + k + 64), _MM_HINT_T0);
    __m256 r0 = _mm256_loadu_ps(src + k), r1 = _mm256_loadu_ps(src + lda + k), r2 = _mm256_loadu_ps(src + 2 * lda + k),
           r3 = _mm256_loadu_ps(src + 3 * lda + k), r4 = _mm256_loadu_ps(src + 4 * lda + k),
           r5 = _mm256_loadu_ps(src + 5 * lda + k), r6 = r4, r7 = r5;
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
           t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
           t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE), u2 = _mm256_shuffle_ps(t1, t3, 0x44),
           u3 = _mm256_shuffle_ps(t1, t3, 0xEE), u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
           u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    float* d = dst + k * 6;
    _mm256_storeu_ps(d + 0, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + 6, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 12, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 18, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 24, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 30, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 36, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 42, _mm256_permute2f128_ps(u3, u7, 0x31));
  }
  for (; k < kc; ++k)
    for (int i = 0; i < 6; ++i) dst[k * 6 + i] = src[i * lda + k];
}
#endif

#ifdef SDLAB_NEON
// Packs 6 full rows x kc columns into [k][6], 4 columns at a time: rows 0-3 as a 4x4 transpose
// (TRN1/TRN2 + combine), rows 4-5 interleaved by ZIP.
void pack_a6_neon(const float* src, long lda, long kc, float* dst) {
  long k = 0;
  for (; k + 4 <= kc; k += 4) {
    const float32x4_t r0 = vld1q_f32(src + k), r1 = vld1q_f32(src + lda + k), r2 = vld1q_f32(src + 2 * lda + k),
                      r3 = vld1q_f32(src + 3 * lda + k), r4 = vld1q_f32(src + 4 * lda + k),
                      r5 = vld1q_f32(src + 5 * lda + k);
    const float32x4x2_t t01 = vtrnq_f32(r0, r1), t23 = vtrnq_f32(r2, r3), z45 = vzipq_f32(r4, r5);
    float* d = dst + k * 6;
    vst1q_f32(d + 0, vcombine_f32(vget_low_f32(t01.val[0]), vget_low_f32(t23.val[0])));
    vst1_f32(d + 4, vget_low_f32(z45.val[0]));
    vst1q_f32(d + 6, vcombine_f32(vget_low_f32(t01.val[1]), vget_low_f32(t23.val[1])));
    vst1_f32(d + 10, vget_high_f32(z45.val[0]));
    vst1q_f32(d + 12, vcombine_f32(vget_high_f32(t01.val[0]), vget_high_f32(t23.val[0])));
    vst1_f32(d + 16, vget_low_f32(z45.val[1]));
    vst1q_f32(d + 18, vcombine_f32(vget_high_f32(t01.val[1]), vget_high_f32(t23.val[1])));
    vst1_f32(d + 22, vget_high_f32(z45.val[1]));
  }
  for (; k < kc; ++k)
    for (int i = 0; i < 6; ++i) dst[k * 6 + i] = src[i * lda + k];
}
#endif

// Packs rows [p0*MR, p1*MR) x cols [k0, k0+kc) of op(A) into MR-row panels laid out [k][MR].
void pack_a(const Gemm& g, int MR, long p0, long p1, long k0, long kc, float* dst) {
  for (long p = p0; p < p1; ++p, dst += kc * MR) {
    long m0 = p * MR;
    int mr = (int)std::min<long>(MR, g.M - m0);
    if (g.pack_a) {
      g.pack_a(g.pack_a_ctx, m0, mr, MR, k0, kc, dst);
      continue;
    }
#ifdef SDLAB_X86
    if (!g.transA && MR == 6 && mr == 6 && kernel().fn == kern_avx2) {
      pack_a6_avx2(g.A + m0 * g.lda + k0, g.lda, kc, dst);
      continue;
    }
#elif defined(SDLAB_NEON)
    if (!g.transA && MR == 6 && mr == 6 && kernel().fn == kern_neon) {
      pack_a6_neon(g.A + m0 * g.lda + k0, g.lda, kc, dst);
      continue;
    }
#endif
    if (!g.transA) {
      for (int i = 0; i < mr; ++i) {
        const float* src = g.A + (m0 + i) * g.lda + k0;
        for (long k = 0; k < kc; ++k) dst[k * MR + i] = src[k];
      }
      for (int i = mr; i < MR; ++i)
        for (long k = 0; k < kc; ++k) dst[k * MR + i] = 0.f;
    } else {
      for (long k = 0; k < kc; ++k) {
        const float* src = g.A + (k0 + k) * g.lda + m0;
        float* d = dst + k * MR;
        int i = 0;
        for (; i < mr; ++i) d[i] = src[i];
        for (; i < MR; ++i) d[i] = 0.f;
      }
    }
  }
}

// Packs panel j (cols [j*NR, j*NR+NR)) x rows [k0, k0+kc) of a transposed B (stored [N,K]),
// laid out [k][NR].
void pack_bt_panel(const Gemm& g, int NR, long j, long k0, long kc, float* dst) {
  long n0 = j * NR;
  int nr = (int)std::min<long>(NR, g.N - n0);
  float row[512];
  for (int jj = 0; jj < nr; ++jj) {
    if (g.Bh) {
      // Columns of an fp16 B: unpacked a piece at a time (the KC block is at most 512 rows).
      load_halves(g.Bh + (n0 + jj) * g.ldb + k0, row, kc);
      for (long k = 0; k < kc; ++k) dst[k * NR + jj] = row[k];
      continue;
    }
    const float* src = g.B + (n0 + jj) * g.ldb + k0;
    for (long k = 0; k < kc; ++k) dst[k * NR + jj] = src[k];
  }
  for (int jj = nr; jj < NR; ++jj)
    for (long k = 0; k < kc; ++k) dst[k * NR + jj] = 0.f;
}

// Packs rows [kb, ke) of a plain B (stored [K,N]) in row order: each row read once, front to
// back, its NR-float pieces sent to their panels (panel by panel, B would be read a row apart per
// 64 bytes). Block k0 = k / KC * KC starts at Bpk + k0*Npad, its panel j at + j*kc*NR, laid out [k][NR].
void pack_b_rows(const Gemm& g, int NR, long KC, long Npad, long kb, long ke, float* Bpk) {
  const long N = g.N, np = Npad / NR;
  for (long k = kb; k < ke; ++k) {
    const long k0 = k / KC * KC, kc = std::min(KC, g.K - k0);
    float* dst = Bpk + k0 * Npad + (k - k0) * NR;
    if (g.Bh) {
      // An fp16 row unpacked straight into its panels: NR halves at a time.
      const uint16_t* src = g.Bh + k * g.ldb;
      long j = 0;
      for (; (j + 1) * NR <= N; ++j) load_halves(src + j * NR, dst + j * kc * NR, NR);
      if (j < np) {
        float* d = dst + j * kc * NR;
        load_halves(src + j * NR, d, N - j * NR);
        std::fill(d + (N - j * NR), d + NR, 0.f);
      }
      continue;
    }
    const float* src = g.B + k * g.ldb;
    long j = 0;
    for (; (j + 1) * NR <= N; ++j) std::memcpy(dst + j * kc * NR, src + j * NR, NR * sizeof(float));
    if (j < np) {
      float* d = dst + j * kc * NR;
      std::memcpy(d, src + j * NR, (N - j * NR) * sizeof(float));
      std::fill(d + (N - j * NR), d + NR, 0.f);
    }
  }
}

inline float act1(float v, int act, float alpha) {
  switch (act) {
    case ACT_RELU: return v > 0.f ? v : 0.f;
    case ACT_RELU6: return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
    case ACT_SIGMOID: return 1.f / (1.f + std::exp(-v));
    case ACT_LEAKYRELU: return v < 0.f ? alpha * v : v;
    case ACT_ELU: return v < 0.f ? std::expm1(v) : v;
    default: return v;
  }
}

void epilogue_region(float* C, long ldc, long m0, long m1, long n0, long n1, const float* bias, int act,
                     float alpha) {
  if (!bias && act == ACT_LINEAR) return;
  for (long m = m0; m < m1; ++m) {
    float* c = C + m * ldc;
    if (bias)
      for (long n = n0; n < n1; ++n) c[n] += bias[n];
    if (act == ACT_RELU) {
      for (long n = n0; n < n1; ++n) c[n] = c[n] > 0.f ? c[n] : 0.f;
    } else if (act != ACT_LINEAR) {
      for (long n = n0; n < n1; ++n) c[n] = act1(c[n], act, alpha);
    }
  }
}

// ---- matrix-vector products (N == 1 or M == 1): memory-bound, no packing ----

#ifdef SDLAB_X86
__attribute__((target("avx2,fma"))) float dot_avx2(const float* x, const float* y, long n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  long i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), s0);
  __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
  alignas(32) float t[8];
  _mm256_store_ps(t, s);
  float r = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
  for (; i < n; ++i) r += x[i] * y[i];
  return r;
}
#endif

#ifdef SDLAB_NEON
float dot_neon(const float* x, const float* y, long n) {
  float32x4_t s0 = vdupq_n_f32(0), s1 = s0, s2 = s0, s3 = s0;
  long i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = vfmaq_f32(s0, vld1q_f32(x + i), vld1q_f32(y + i));
    s1 = vfmaq_f32(s1, vld1q_f32(x + i + 4), vld1q_f32(y + i + 4));
    s2 = vfmaq_f32(s2, vld1q_f32(x + i + 8), vld1q_f32(y + i + 8));
    s3 = vfmaq_f32(s3, vld1q_f32(x + i + 12), vld1q_f32(y + i + 12));
  }
  for (; i + 4 <= n; i += 4) s0 = vfmaq_f32(s0, vld1q_f32(x + i), vld1q_f32(y + i));
  float r = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
  for (; i < n; ++i) r += x[i] * y[i];
  return r;
}
#endif

float dot(const float* x, const float* y, long n) {
#if defined(SDLAB_X86) || defined(SDLAB_NEON)
  static const bool simd = std::strcmp(kernel().name, "generic") != 0;
#ifdef SDLAB_X86
  if (simd) return dot_avx2(x, y, n);
#else
  if (simd) return dot_neon(x, y, n);
#endif
#endif
  float s[8] = {0};
  long i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += x[i + j] * y[i + j];
  float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; i < n; ++i) r += x[i] * y[i];
  return r;
}

// y[i] = sum_k v[k] * X(i, k) for i in [0, count): X(i,k) = X[i*ldx + k] when dot_form, else X[k*ldx + i].
void gemv(const float* X, long ldx, bool dot_form, const float* v, long K, float* y, long count) {
  if (dot_form) {
    parallel_for(count, std::max<long>(1, 65536 / std::max<long>(1, K)), [&](long b, long e) {
      for (long i = b; i < e; ++i) y[i] = dot(X + i * ldx, v, K);
    });
  } else {
    parallel_for(count, 4096, [&](long b, long e) {
      for (long i = b; i < e; ++i) y[i] = 0.f;
      for (long k = 0; k < K; ++k) {
        const float* x = X + k * ldx;
        float s = v[k];
        for (long i = b; i < e; ++i) y[i] += s * x[i];
      }
    });
  }
}

void sgemv_case(const Gemm& g) {
  std::vector<float> tmpv, y;
  if (g.N == 1) {
    // C[m] = sum_k A(m,k) b[k]
    const float* b = g.B;
    if (!g.transB && g.ldb != 1) {
      tmpv.resize(g.K);
      for (long k = 0; k < g.K; ++k) tmpv[k] = g.B[k * g.ldb];
      b = tmpv.data();
    }
    y.resize(g.M);
    gemv(g.A, g.lda, !g.transA, b, g.K, y.data(), g.M);
    for (long m = 0; m < g.M; ++m) {
      float v = y[m] + (g.accumulate ? g.C[m * g.ldc] : 0.f);
      if (g.bias) v += g.bias[0];
      g.C[m * g.ldc] = act1(v, g.act, g.alpha);
    }
  } else {
    // M == 1: C[n] = sum_k a[k] B(k,n)
    const float* a = g.A;
    if (g.transA && g.lda != 1) {
      tmpv.resize(g.K);
      for (long k = 0; k < g.K; ++k) tmpv[k] = g.A[k * g.lda];
      a = tmpv.data();
    }
    y.resize(g.N);
    gemv(g.B, g.ldb, g.transB, a, g.K, y.data(), g.N);
    for (long n = 0; n < g.N; ++n) {
      float v = y[n] + (g.accumulate ? g.C[n] : 0.f);
      if (g.bias) v += g.bias[n];
      g.C[n] = act1(v, g.act, g.alpha);
    }
  }
}

}  // namespace

const char* gemm_isa() { return kernel().name; }

// The 6×16 kernel family that the packed, row-major-A and indirect paths are written for
// (convolutions without im2col, Winograd, the fused attention): the GEMM's own kernel where it is
// 6×16, else (the 12×32 AVX-512 kernel, which has no such variants) the AVX2 one, which every
// AVX-512 CPU runs. Without it an AVX-512 machine fell back to im2col and skipped Winograd.
static const Kern& tile_kernel() {
  static const Kern k = [] {
#ifdef SDLAB_X86
    if (kernel().fn == kern_avx512 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      return Kern{6, 16, kern_avx2, "avx2+fma", kern_avx2_rows};
#endif
    return kernel();
  }();
  return k;
}

IndirectKernel indirect_kernel() {
  const Kern& k = tile_kernel();
#ifdef SDLAB_X86
  if (k.fn == kern_avx2) return kern_avx2_ind;
#elif defined(SDLAB_NEON)
  if (k.fn == kern_neon) return kern_neon_ind;
#endif
  if (k.fn == kern_generic) return kern_generic_ind;
  return nullptr;
}

// ---- the machine's FMA peak (for the benchmark: GEMM speed as a fraction of it) ----
// 12 independent FMA chains, enough to cover the FMA latency on 2 pipes; the vector width of
// the GEMM's own kernel. Returns a value that depends on the result, so nothing is optimised away.
#ifdef SDLAB_X86
__attribute__((target("avx2,fma"))) float fma_chains_avx2(long iters) {
  __m256 a0 = _mm256_set1_ps(0.f), a1 = _mm256_set1_ps(1.f), a2 = _mm256_set1_ps(2.f), a3 = _mm256_set1_ps(3.f),
         a4 = _mm256_set1_ps(4.f), a5 = _mm256_set1_ps(5.f), a6 = _mm256_set1_ps(6.f), a7 = _mm256_set1_ps(7.f),
         a8 = _mm256_set1_ps(8.f), a9 = _mm256_set1_ps(9.f), a10 = _mm256_set1_ps(10.f), a11 = _mm256_set1_ps(11.f);
  const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-6f);
  for (long n = 0; n < iters; ++n) {
    a0 = _mm256_fmadd_ps(a0, b, c); a1 = _mm256_fmadd_ps(a1, b, c); a2 = _mm256_fmadd_ps(a2, b, c);
    a3 = _mm256_fmadd_ps(a3, b, c); a4 = _mm256_fmadd_ps(a4, b, c); a5 = _mm256_fmadd_ps(a5, b, c);
    a6 = _mm256_fmadd_ps(a6, b, c); a7 = _mm256_fmadd_ps(a7, b, c); a8 = _mm256_fmadd_ps(a8, b, c);
    a9 = _mm256_fmadd_ps(a9, b, c); a10 = _mm256_fmadd_ps(a10, b, c); a11 = _mm256_fmadd_ps(a11, b, c);
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                           _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
  alignas(32) float t[8];
  _mm256_store_ps(t, s);
  return t[0];
}

__attribute__((target("avx512f"))) float fma_chains_avx512(long iters) {
  __m512 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps((float)i);
  const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-6f);
  for (long n = 0; n < iters; ++n) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(a[i], b, c);
  }
  __m512 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, a[i]);
  alignas(64) float t[16];  // not _mm512_reduce_add_ps: g++ 12's header warns (-Wuninitialized) inside it
  _mm512_store_ps(t, s);
  return t[0];
}
#endif

#ifdef SDLAB_NEON
// 24 chains, not 12: Apple's and Neoverse V cores have 4 FMA pipes of latency 4 (16 in flight).
float fma_chains_neon(long iters) {
  float32x4_t a[24];
  for (int i = 0; i < 24; ++i) a[i] = vdupq_n_f32((float)i);
  const float32x4_t b = vdupq_n_f32(0.999999f), c = vdupq_n_f32(1e-6f);
  for (long n = 0; n < iters; ++n) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; ++i) a[i] = vfmaq_f32(c, a[i], b);
  }
  float32x4_t s = a[0];
  for (int i = 1; i < 24; ++i) s = vaddq_f32(s, a[i]);
  return vgetq_lane_f32(s, 0);
}
#endif

FmaProbe fma_probe(long iters) {
  const Kern& k = kernel();
#ifdef SDLAB_X86
  if (k.fn == kern_avx512) return {fma_chains_avx512(iters), 12.0 * 32 * iters};
  if (k.fn == kern_avx2) return {fma_chains_avx2(iters), 12.0 * 16 * iters};
#elif defined(SDLAB_NEON)
  if (k.fn == kern_neon) return {fma_chains_neon(iters), 24.0 * 8 * iters};
#endif
  float a[12];
  for (int i = 0; i < 12; ++i) a[i] = (float)i;
  for (long n = 0; n < iters; ++n)
    for (int i = 0; i < 12; ++i) a[i] = a[i] * 0.999999f + 1e-6f;
  float s = 0.f;
  for (int i = 0; i < 12; ++i) s += a[i];
  return {s, 12.0 * 2 * iters};
}

PackedKernel packed_kernel() { return indirect_kernel() ? tile_kernel().fn : nullptr; }
RowsKernel rows_kernel() { return indirect_kernel() ? tile_kernel().rows_fn : nullptr; }

float sdot(const float* x, const float* y, long n) { return dot(x, y, n); }

void epilogue(float* C, long ldc, long m0, long m1, long N, const float* bias, int act, float alpha) {
  epilogue_region(C, ldc, m0, m1, 0, N, bias, act, alpha);
}

void sgemm(const Gemm& g) {
  const long M = g.M, N = g.N, K = g.K;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (long m = 0; m < M; ++m)
      if (!g.accumulate) std::memset(g.C + m * g.ldc, 0, N * sizeof(float));
    epilogue_region(g.C, g.ldc, 0, M, 0, N, g.bias, g.act, g.alpha);
    return;
  }
  if ((N == 1 || M == 1) && !g.pack_a) {
    if (!g.Bh) return sgemv_case(g);
    // Memory-bound and small: the fp16 B unpacked whole, then the float32 path.
    const long count = g.transB ? (N - 1) * g.ldb + K : (K - 1) * g.ldb + N;
    std::vector<float> b(count);
    halves_to_floats(g.Bh, b.data(), count);
    Gemm f = g;
    f.Bh = nullptr;
    f.B = b.data();
    return sgemv_case(f);
  }

  const Kern& kr = kernel();
  const int MR = kr.MR, NR = kr.NR;
  const long mp = (M + MR - 1) / MR, np = (N + NR - 1) / NR, Npad = np * NR;
  const long nkb0 = (K + KC_MAX - 1) / KC_MAX;
  const long KC = std::min(KC_MAX, ((K + nkb0 - 1) / nkb0 + 7) / 8 * 8);  // a multiple of 8 for pack_a6_avx2
  const long nkb = (K + KC - 1) / KC;
  const long MCP = std::max<long>(1, MC_ROWS / MR);  // A panels per packed block
  Pool& pool = Pool::get();
  int T = pool.threads();
  double flops = 2.0 * M * N * K;
  if (flops < 3e6) T = 1;

  // Pack all of op(B) once: block kb (rows [kb*KC, ...)) starts at kb*KC*Npad, panel j at +j*kc*NR.
  float* const Bpk = scratch(1, (size_t)K * Npad);
  if (!g.transB) {
    auto pack_rows = [&](long b, long e) { pack_b_rows(g, NR, KC, Npad, b, e, Bpk); };
    if (T == 1) pack_rows(0, K); else parallel_for(K, 16, pack_rows);
  } else {
    auto panels = [&](long b, long e) {
      for (long t = b; t < e; ++t) {
        long kb = t / np, j = t % np, k0 = kb * KC, kc = std::min(KC, K - k0);
        pack_bt_panel(g, NR, j, k0, kc, Bpk + k0 * Npad + j * kc * NR);
      }
    };
    if (T == 1) panels(0, nkb * np); else parallel_for(nkb * np, 1, panels);
  }

  // One thread's share: A panels [pb,pe) x B panels [jb,je) x K blocks [kbb,kbe), into Cd.
  const bool direct_a = kr.rows_fn && !g.pack_a && !g.transA && N <= DIRECT_A_MAX_N && (std::getenv("SDLAB_PACK_A") == nullptr);
  auto compute = [&](long pb, long pe, long jb, long je, long kbb, long kbe, float* Cd, long ldc, bool acc) {
    float* const Apk = scratch(2, (size_t)MCP * MR * KC + 8);  // + 8: pack_a6_avx2 overshoots
    for (long kb = kbb; kb < kbe; ++kb) {
      long k0 = kb * KC, kc = std::min(KC, K - k0);
      bool accum = acc || kb > kbb;
      for (long p0 = pb; p0 < pe; p0 += MCP) {
        long p1 = std::min(p0 + MCP, pe);
        if (direct_a) {
          // Full panels read A in place; only a ragged last panel is packed (zero-padded).
          bool ragged = p1 * MR > M;
          if (ragged) pack_a(g, MR, p1 - 1, p1, k0, kc, Apk);
          for (long j = jb; j < je; ++j) {
            const float* bpan = Bpk + k0 * Npad + j * kc * NR;
            int nr = (int)std::min<long>(NR, N - j * NR);
            for (long p = p0; p < p1; ++p) {
              float* cp = Cd + p * MR * ldc + j * NR;
              if (ragged && p == p1 - 1)
                kr.fn(kc, Apk, bpan, cp, ldc, (int)(M - p * MR), nr, accum);
              else
                kr.rows_fn(kc, g.A + p * MR * g.lda + k0, g.lda, bpan, cp, ldc, nr, accum);
            }
          }
          continue;
        }
        pack_a(g, MR, p0, p1, k0, kc, Apk);
        for (long j = jb; j < je; ++j) {
          const float* bpan = Bpk + k0 * Npad + j * kc * NR;
          int nr = (int)std::min<long>(NR, N - j * NR);
          for (long p = p0; p < p1; ++p) {
            int mr = (int)std::min<long>(MR, M - p * MR);
            kr.fn(kc, Apk + (p - p0) * kc * MR, bpan, Cd + p * MR * ldc + j * NR, ldc, mr, nr, accum);
          }
        }
      }
    }
  };
  auto rows = [&](long p) { return std::min(p * MR, M); };
  auto cols = [&](long j) { return std::min(j * NR, N); };

  if (T == 1) {
    compute(0, mp, 0, np, 0, nkb, g.C, g.ldc, g.accumulate);
    epilogue_region(g.C, g.ldc, 0, M, 0, N, g.bias, g.act, g.alpha);
  } else if (mp >= 2 * T || (mp >= T && np < 2 * T)) {
    // Row blocks of at most one packed A block, about 4 per thread, claimed as threads come
    // free: a core that the VM's neighbours slow down then takes fewer, instead of holding up
    // a fixed half of the work.
    const long chunk = std::max<long>(1, std::min(MCP, (mp + 4 * T - 1) / (4 * T))), tasks = (mp + chunk - 1) / chunk;
    pool.run((int)tasks, [&](int t) {
      const long pb = t * chunk, pe = std::min(mp, pb + chunk);
      compute(pb, pe, 0, np, 0, nkb, g.C, g.ldc, g.accumulate);
      epilogue_region(g.C, g.ldc, rows(pb), rows(pe), 0, N, g.bias, g.act, g.alpha);
    });
  } else if (np >= T) {
    const long chunk = std::max<long>(1, (np + 4 * T - 1) / (4 * T)), tasks = (np + chunk - 1) / chunk;
    pool.run((int)tasks, [&](int t) {
      const long jb = t * chunk, je = std::min(np, jb + chunk);
      compute(0, mp, jb, je, 0, nkb, g.C, g.ldc, g.accumulate);
      epilogue_region(g.C, g.ldc, 0, M, cols(jb), cols(je), g.bias, g.act, g.alpha);
    });
  } else if (nkb >= 2) {
    // Few output tiles, long K (e.g. a filter gradient): split K, then sum the partial products.
    int parts = (int)std::min<long>(T, nkb);
    std::vector<float*> part(parts, nullptr);
    pool.run(parts, [&](int t) {
      long kbb = nkb * t / parts, kbe = nkb * (t + 1) / parts;
      if (t == 0) {
        compute(0, mp, 0, np, kbb, kbe, g.C, g.ldc, g.accumulate);
      } else {
        part[t] = scratch(3, (size_t)mp * MR * N);
        compute(0, mp, 0, np, kbb, kbe, part[t], N, false);
      }
    });
    parallel_for(M, 64, [&](long b, long e) {
      for (long m = b; m < e; ++m) {
        float* c = g.C + m * g.ldc;
        for (int t = 1; t < parts; ++t) {
          const float* s = part[t] + m * N;
          for (long n = 0; n < N; ++n) c[n] += s[n];
        }
      }
      epilogue_region(g.C, g.ldc, b, e, 0, N, g.bias, g.act, g.alpha);
    });
  } else {
    compute(0, mp, 0, np, 0, nkb, g.C, g.ldc, g.accumulate);
    epilogue_region(g.C, g.ldc, 0, M, 0, N, g.bias, g.act, g.alpha);
  }
}

}  // namespace sdlab

// Vectorised float math for AVX2+FMA (8 lanes) and NEON (aarch64, 4 lanes): exp, sigmoid, erf, each within a
// couple of ulps of the correctly rounded result (checked against double precision in
// test/native_math.test.ts). The scalar versions run the same arithmetic one lane at a time,
// so a tensor's tail elements get bit-identical results to its vectorised body, and builds
// without AVX2 compute the same numbers.
//
// exp: n = round(x·log2 e), r = x − n·ln 2 (ln 2 split in two for Cody–Waite reduction),
//   exp(r) by its degree-7 Taylor polynomial (|r| ≤ ln2/2: truncation < 3e-9 relative), then
//   scaled by 2^n as two factors 2^(n/2)·2^(n−n/2), so results that are denormal or overflow
//   round correctly instead of wrapping the exponent.
// erf: |x| < 1: x·P(x²), P a degree-6 minimax fit of erf(x)/x (relative error 1.2e-9);
//   1 ≤ |x| < 3.925: 1 − exp(−x²)·R(|x| − 2.2125), R a degree-14 minimax fit of erfcx = erfc·e^{x²}
//   on [0.5, 3.925] (relative error 3.5e-9, so erfc itself is accurate too: see normcdf), with x²
//   split exactly into hi + lo by an FMA;
//   beyond: ±1 (erf rounds to 1 in float32 from 3.92 on). Coefficients: fitted for sdlab
//   (Lawson's iteration against mpmath), see the comment at ERF_P.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SDLAB_VMATH_X86 1
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define SDLAB_VMATH_NEON 1
#endif
#if defined(SDLAB_VMATH_X86) || defined(SDLAB_VMATH_NEON)
#define SDLAB_VMATH_SIMD 1  // one of the two vector versions below exists
#endif

namespace sdlab {
namespace vm {

constexpr float LOG2E = 1.44269504088896341f;
constexpr float LN2_HI = 0.693145751953125f;        // 12 significant bits: n·LN2_HI is exact
constexpr float LN2_LO = 1.42860682030941723212e-6f;  // ln 2 − LN2_HI
constexpr float EXP_HI = 89.0f;                      // exp(89) overflows float: inf
constexpr float EXP_LO = -104.0f;                    // exp(-104) < half the smallest denormal: 0
// 1/k! for k = 7 .. 2 (Horner from the top), then 1, 1.
constexpr float EXP_C[6] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f};

// erf(x)/x ≈ P(x²) on [0, 1], low to high degree.
constexpr float ERF_P[7] = {1.1283791657283390f, -0.37612625828629430f, 0.11283585182757808f, -0.026853813076962550f,
                            0.0051883295473653945f, -0.00080102082299323940f, 7.8539054962883940e-05f};
// erfc(x)·exp(x²) ≈ R(x − ERF_C0) on [0.5, 3.925], low to high degree.
constexpr float ERF_C0 = 2.2125f;
constexpr int ERF_RN = 15;
constexpr float ERF_R[ERF_RN] = {0.2344510798867159f, -0.09093314676096251f, 0.03326150154376537f, -0.01156127518540322f,
                                 0.003841014624513207f, -0.0012256215320889403f, 0.0003766775372325867f,
                                 -0.00011138218793252646f, 3.2210971682803194e-05f, -9.49430230819115e-06f,
                                 2.5184225059139004e-06f, -4.497959392446571e-07f, 1.338671598884178e-07f,
                                 -8.439889148670332e-08f, 1.9172580190129906e-08f};
constexpr float ERF_ONE_AT = 3.925f;

// ---- scalar versions (the same operations as the vector ones, lane by lane) ----

inline float pow2i(int n) {  // 2^n for n in [-126, 127]
  uint32_t bits = (uint32_t)(n + 127) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float exp_s(float x) {
  if (x != x) return x;
  x = x < EXP_HI ? x : EXP_HI;
  x = x > EXP_LO ? x : EXP_LO;
  float n = std::nearbyint(x * LOG2E);
  float r = std::fma(n, -LN2_HI, x);
  r = std::fma(n, -LN2_LO, r);
  float p = EXP_C[0];
  for (int i = 1; i < 6; ++i) p = std::fma(p, r, EXP_C[i]);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  int ni = (int)n, n1 = ni >> 1, n2 = ni - n1;
  return p * pow2i(n1) * pow2i(n2);
}

// e = exp(−|x|) never overflows; σ(x) = 1/(1+e) for x ≥ 0, e/(1+e) for x < 0 (keeps tiny results exact).
inline float sigmoid_s(float x) {
  float e = exp_s(-std::fabs(x));
  return (x < 0.0f ? e : 1.0f) / (1.0f + e);
}

inline float erf_s(float x) {
  if (x != x) return x;
  float a = std::fabs(x);
  float r;
  if (a < 1.0f) {
    float s = a * a, p = ERF_P[6];
    for (int i = 5; i >= 0; --i) p = std::fma(p, s, ERF_P[i]);
    r = a * p;
  } else if (a < ERF_ONE_AT) {
    float u = a - ERF_C0, q = ERF_R[ERF_RN - 1];
    for (int i = ERF_RN - 2; i >= 0; --i) q = std::fma(q, u, ERF_R[i]);
    float hi = a * a, lo = std::fma(a, a, -hi);  // a² = hi + lo exactly
    float e = exp_s(-hi) * (1.0f - lo);            // exp(-hi-lo) to first order in lo (|lo| < 1e-6)
    r = std::fma(-e, q, 1.0f);
  } else {
    r = 1.0f;
  }
  return std::copysign(r, x);
}

// Φ(x) = ½(1 + erf(x/√2)), without the cancellation of 1 + erf for x < 0: there (x/√2 < −½)
// 1 + erf(z) = erfc(|z|) = exp(−z²)·R(|z| − c0), the terms erf uses. Below x ≈ −5.55 (where
// Φ < 1.5e-8) it is 0.
inline float normcdf_s(float x) {
  if (x != x) return x;
  const float z = x * 0.70710678118654752f, a = std::fabs(z);
  if (z < -0.5f && a < ERF_ONE_AT) {
    float u = a - ERF_C0, q = ERF_R[ERF_RN - 1];
    for (int i = ERF_RN - 2; i >= 0; --i) q = std::fma(q, u, ERF_R[i]);
    // z² = x²/2 from x itself (hi + lo exactly), not from the rounded z: exp(−z²) is sensitive to it.
    float hi = x * x, lo = std::fma(x, x, -hi);
    hi *= 0.5f;
    lo *= 0.5f;
    return 0.5f * (exp_s(-hi) * (1.0f - lo) * q);
  }
  return 0.5f * (1.0f + erf_s(z));
}

#ifdef SDLAB_VMATH_X86
// ---- AVX2+FMA versions ----

__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(EXP_HI), x);  // min/max return the second operand for NaN: NaN propagates
  x = _mm256_max_ps(_mm256_set1_ps(EXP_LO), x);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
  __m256 p = _mm256_set1_ps(EXP_C[0]);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C[1]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C[2]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C[3]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C[4]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C[5]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  __m256i ni = _mm256_cvtps_epi32(n);  // exact: n is an integer
  __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  __m256i bias = _mm256_set1_epi32(127);
  __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  // NaN lanes: n was NaN and the integer path made garbage; put the NaN back.
  __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  return _mm256_blendv_ps(y, x, nan);
}

__attribute__((target("avx2,fma"))) inline __m256 sigmoid8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 e = exp8(_mm256_or_ps(x, _mm256_set1_ps(-0.0f)));  // exp(−|x|)
  __m256 num = _mm256_blendv_ps(one, e, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
  return _mm256_div_ps(num, _mm256_add_ps(one, e));
}

__attribute__((target("avx2,fma"))) inline __m256 erf8(__m256 x) {
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  __m256 sign = _mm256_and_ps(x, sign_mask);
  __m256 a = _mm256_andnot_ps(sign_mask, x);
  // small: a·P(a²)
  __m256 s = _mm256_mul_ps(a, a);
  __m256 p = _mm256_set1_ps(ERF_P[6]);
  for (int i = 5; i >= 0; --i) p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(ERF_P[i]));
  __m256 small = _mm256_mul_ps(a, p);
  // large: 1 − exp(−a²)·R(a − c0)
  __m256 u = _mm256_sub_ps(a, _mm256_set1_ps(ERF_C0));
  __m256 q = _mm256_set1_ps(ERF_R[ERF_RN - 1]);
  for (int i = ERF_RN - 2; i >= 0; --i) q = _mm256_fmadd_ps(q, u, _mm256_set1_ps(ERF_R[i]));
  __m256 lo = _mm256_fmsub_ps(a, a, s);  // a² − s exactly
  __m256 e = _mm256_mul_ps(exp8(_mm256_sub_ps(_mm256_setzero_ps(), s)), _mm256_sub_ps(_mm256_set1_ps(1.0f), lo));
  __m256 large = _mm256_fnmadd_ps(e, q, _mm256_set1_ps(1.0f));
  __m256 r = _mm256_blendv_ps(large, small, _mm256_cmp_ps(a, _mm256_set1_ps(1.0f), _CMP_LT_OQ));
  r = _mm256_blendv_ps(r, _mm256_set1_ps(1.0f), _mm256_cmp_ps(a, _mm256_set1_ps(ERF_ONE_AT), _CMP_GE_OQ));
  r = _mm256_or_ps(r, sign);
  return _mm256_blendv_ps(r, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));  // NaN stays NaN
}

// Φ(x), as normcdf_s.
__attribute__((target("avx2,fma"))) inline __m256 normcdf8(__m256 x) {
  const __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));
  const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), z);
  const __m256 half = _mm256_set1_ps(0.5f);
  __m256 direct = _mm256_mul_ps(half, _mm256_add_ps(_mm256_set1_ps(1.0f), erf8(z)));
  __m256 u = _mm256_sub_ps(a, _mm256_set1_ps(ERF_C0));
  __m256 q = _mm256_set1_ps(ERF_R[ERF_RN - 1]);
  for (int i = ERF_RN - 2; i >= 0; --i) q = _mm256_fmadd_ps(q, u, _mm256_set1_ps(ERF_R[i]));
  __m256 hi = _mm256_mul_ps(x, x), lo = _mm256_fmsub_ps(x, x, hi);  // z² = x²/2 = (hi + lo)/2 exactly
  hi = _mm256_mul_ps(hi, half);
  lo = _mm256_mul_ps(lo, half);
  __m256 e = _mm256_mul_ps(exp8(_mm256_sub_ps(_mm256_setzero_ps(), hi)), _mm256_sub_ps(_mm256_set1_ps(1.0f), lo));
  __m256 tail = _mm256_mul_ps(half, _mm256_mul_ps(e, q));
  __m256 use_tail = _mm256_and_ps(_mm256_cmp_ps(z, _mm256_set1_ps(-0.5f), _CMP_LT_OQ),
                                  _mm256_cmp_ps(a, _mm256_set1_ps(ERF_ONE_AT), _CMP_LT_OQ));
  return _mm256_blendv_ps(direct, tail, use_tail);
}
#endif

#ifdef SDLAB_VMATH_NEON
// ---- NEON versions (aarch64; the same operations as the AVX2 ones, 4 lanes) ----

inline float32x4_t exp4(float32x4_t x) {
  const float32x4_t x0 = x;
  x = vminq_f32(vdupq_n_f32(EXP_HI), x);  // NEON min/max return NaN for a NaN operand: NaN propagates
  x = vmaxq_f32(vdupq_n_f32(EXP_LO), x);
  const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(LOG2E)));  // to nearest, ties to even: as nearbyint
  float32x4_t r = vfmaq_f32(x, n, vdupq_n_f32(-LN2_HI));
  r = vfmaq_f32(r, n, vdupq_n_f32(-LN2_LO));
  float32x4_t p = vdupq_n_f32(EXP_C[0]);
  for (int i = 1; i < 6; ++i) p = vfmaq_f32(vdupq_n_f32(EXP_C[i]), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  const int32x4_t ni = vcvtq_s32_f32(n);  // exact: n is an integer (NaN lanes are replaced below)
  const int32x4_t n1 = vshrq_n_s32(ni, 1), n2 = vsubq_s32(ni, n1), bias = vdupq_n_s32(127);
  const float32x4_t s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n1, bias), 23));
  const float32x4_t s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n2, bias), 23));
  const float32x4_t y = vmulq_f32(vmulq_f32(p, s1), s2);
  return vbslq_f32(vceqq_f32(x0, x0), y, x0);  // NaN lanes: the NaN itself
}

inline float32x4_t sigmoid4(float32x4_t x) {
  const float32x4_t one = vdupq_n_f32(1.0f);
  const float32x4_t e = exp4(vnegq_f32(vabsq_f32(x)));  // exp(−|x|)
  const float32x4_t num = vbslq_f32(vcltq_f32(x, vdupq_n_f32(0.0f)), e, one);
  return vdivq_f32(num, vaddq_f32(one, e));
}

inline float32x4_t erf4(float32x4_t x) {
  const float32x4_t one = vdupq_n_f32(1.0f);
  const float32x4_t a = vabsq_f32(x);
  const float32x4_t s = vmulq_f32(a, a);
  float32x4_t p = vdupq_n_f32(ERF_P[6]);
  for (int i = 5; i >= 0; --i) p = vfmaq_f32(vdupq_n_f32(ERF_P[i]), p, s);
  const float32x4_t small = vmulq_f32(a, p);
  const float32x4_t u = vsubq_f32(a, vdupq_n_f32(ERF_C0));
  float32x4_t q = vdupq_n_f32(ERF_R[ERF_RN - 1]);
  for (int i = ERF_RN - 2; i >= 0; --i) q = vfmaq_f32(vdupq_n_f32(ERF_R[i]), q, u);
  const float32x4_t lo = vnegq_f32(vfmsq_f32(s, a, a));  // a² − s exactly
  const float32x4_t e = vmulq_f32(exp4(vnegq_f32(s)), vsubq_f32(one, lo));
  const float32x4_t large = vfmsq_f32(one, e, q);  // 1 − e·q
  float32x4_t r = vbslq_f32(vcltq_f32(a, one), small, large);
  r = vbslq_f32(vcgeq_f32(a, vdupq_n_f32(ERF_ONE_AT)), one, r);
  r = vbslq_f32(vdupq_n_u32(0x80000000u), x, r);  // the sign of x
  return vbslq_f32(vceqq_f32(x, x), r, x);         // NaN stays NaN
}

// Φ(x), as normcdf_s.
inline float32x4_t normcdf4(float32x4_t x) {
  const float32x4_t half = vdupq_n_f32(0.5f), one = vdupq_n_f32(1.0f);
  const float32x4_t z = vmulq_f32(x, vdupq_n_f32(0.70710678118654752f));
  const float32x4_t a = vabsq_f32(z);
  const float32x4_t direct = vmulq_f32(half, vaddq_f32(one, erf4(z)));
  const float32x4_t u = vsubq_f32(a, vdupq_n_f32(ERF_C0));
  float32x4_t q = vdupq_n_f32(ERF_R[ERF_RN - 1]);
  for (int i = ERF_RN - 2; i >= 0; --i) q = vfmaq_f32(vdupq_n_f32(ERF_R[i]), q, u);
  float32x4_t hi = vmulq_f32(x, x), lo = vnegq_f32(vfmsq_f32(hi, x, x));  // x² = hi + lo exactly
  hi = vmulq_f32(hi, half);
  lo = vmulq_f32(lo, half);
  const float32x4_t e = vmulq_f32(exp4(vnegq_f32(hi)), vsubq_f32(one, lo));
  const float32x4_t tail = vmulq_f32(half, vmulq_f32(e, q));
  const uint32x4_t use_tail = vandq_u32(vcltq_f32(z, vdupq_n_f32(-0.5f)), vcltq_f32(a, vdupq_n_f32(ERF_ONE_AT)));
  return vbslq_f32(use_tail, tail, direct);
}
#endif

}  // namespace vm
}  // namespace sdlab

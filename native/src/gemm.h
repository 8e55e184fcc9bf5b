// Single-precision GEMM, row-major: C[M,N] (+)= op(A)[M,K] · op(B)[K,N], then an optional
// per-column bias and activation (the "epilogue" of tfjs's fused kernels).
#pragma once
#include <cstdint>

namespace sdlab {

enum Act { ACT_LINEAR = 0, ACT_RELU = 1, ACT_RELU6 = 2, ACT_SIGMOID = 3, ACT_LEAKYRELU = 4, ACT_ELU = 5 };

struct Gemm {
  long M = 0, N = 0, K = 0;
  const float* A = nullptr;
  long lda = 0;
  bool transA = false;  // A stored [K,M]: A(m,k) = A[k*lda + m]
  const float* B = nullptr;
  long ldb = 0;
  bool transB = false;  // B stored [N,K]: B(k,n) = B[n*ldb + k]
  // Optional: B as float16 bits (weights kept in half precision), same layout; B is then ignored.
  // Unpacked to float32 while B is packed, so the product costs what it does in float32.
  const uint16_t* Bh = nullptr;
  float* C = nullptr;
  long ldc = 0;
  bool accumulate = false;     // C += product instead of C = product
  const float* bias = nullptr;  // length N, added after the product
  int act = ACT_LINEAR;
  float alpha = 0.2f;  // leakyrelu slope
  // Optional: A given implicitly (e.g. the im2col matrix of a convolution, never materialised).
  // pack_a(ctx, m0, mr, MR, k0, kc, dst) writes A[m0+i][k0+k] to dst[k*MR + i] for i < mr,
  // zeros for mr <= i < MR. A, lda and transA are then ignored.
  void (*pack_a)(const void* ctx, long m0, int mr, int MR, long k0, long kc, float* dst) = nullptr;
  const void* pack_a_ctx = nullptr;
};

void sgemm(const Gemm& g);
// Applies bias + activation to rows [m0,m1) of C (used by the fused kernels and the tests).
void epilogue(float* C, long ldc, long m0, long m1, long N, const float* bias, int act, float alpha);
const char* gemm_isa();

// Indirect micro-kernel (convolutions without im2col), tile MR x NR = 6 x 16:
//   C[i][0..nr) (+)= sum over t < ntaps, c < clen of rows[t*6 + i][coff + c] * B[(t*clen + c)*16 + 0..16)
// for i < mr (rows[t*6 + i] for i >= mr must still point at clen readable floats, e.g. zeros).
typedef void (*IndirectKernel)(long ntaps, long clen, long coff, const float* const* rows, const float* B, float* C,
                               long ldc, int mr, int nr, bool acc);
constexpr int IND_MR = 6, IND_NR = 16;
// The indirect kernel for this CPU, or nullptr where the GEMM uses a kernel of another shape (AVX-512).
IndirectKernel indirect_kernel();
// The packed micro-kernel of the same tile, on panels laid out A [k][6] and B [k][16]:
//   C[i][0..nr) (+)= sum over k < kc of A[k*6 + i] * B[k*16 + 0..16)   for i < mr;
// nullptr where indirect_kernel() is.
typedef void (*PackedKernel)(long kc, const float* A, const float* B, float* C, long ldc, int mr, int nr, bool acc);
PackedKernel packed_kernel();
// The same tile with A read in place, row-major (6 rows of stride lda), full height:
//   C[i][0..nr) (+)= sum over k < kc of A[i*lda + k] * B[k*16 + 0..16)   for i < 6;
// nullptr where packed_kernel() is.
typedef void (*RowsKernel)(long kc, const float* A, long lda, const float* B, float* C, long ldc, int nr, bool acc);
RowsKernel rows_kernel();
float sdot(const float* x, const float* y, long n);

// Runs iters rounds of 12 independent FMA chains in the GEMM kernel's vector width (one thread):
// the benchmark's measure of a core's peak. flops: floating-point operations done.
struct FmaProbe { float value; double flops; };
FmaProbe fma_probe(long iters);

}  // namespace sdlab

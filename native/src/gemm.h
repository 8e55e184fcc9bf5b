// Single-precision GEMM, row-major: C[M,N] (+)= op(A)[M,K] · op(B)[K,N], then an optional
// per-column bias and activation (the "epilogue" of tfjs's fused kernels).
#pragma once

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
  float* C = nullptr;
  long ldc = 0;
  bool accumulate = false;     // C += product instead of C = product
  const float* bias = nullptr;  // length N, added after the product
  int act = ACT_LINEAR;
  float alpha = 0.2f;  // leakyrelu slope
};

void sgemm(const Gemm& g);
// Applies bias + activation to rows [m0,m1) of C (used by the fused kernels and the tests).
void epilogue(float* C, long ldc, long m0, long m1, long N, const float* bias, int act, float alpha);
const char* gemm_isa();
float sdot(const float* x, const float* y, long n);

}  // namespace sdlab

// Elementwise, reduction, transpose and softmax kernels (memory-bound; multithreaded over rows).
#pragma once
#include <cstdint>
#include <vector>

namespace sdlab {

// Whether the vector paths run: AVX2+FMA on x86 (when the CPU has them), NEON on aarch64, unless
// SDLAB_ISA=generic switches them off.
bool use_simd();
// max of x[0, n) (−inf for n = 0), vectorised: call only when use_simd().
float row_max_simd(const float* x, long n);

enum BinaryOp { BIN_ADD = 0, BIN_SUB = 1, BIN_MUL = 2, BIN_DIV = 3, BIN_SQDIFF = 4, BIN_MAX = 5, BIN_MIN = 6, BIN_POW = 7 };
enum UnaryOp {
  UN_RELU = 0, UN_RELU6 = 1, UN_SIGMOID = 2, UN_TANH = 3, UN_EXP = 4, UN_LOG = 5, UN_SQRT = 6, UN_RSQRT = 7,
  UN_SQUARE = 8, UN_NEG = 9, UN_ABS = 10, UN_STEP = 11, UN_LEAKYRELU = 12, UN_ELU = 13, UN_ERF = 14, UN_RECIPROCAL = 15
};
enum ReduceOp { RED_SUM = 0, RED_MAX = 1, RED_MIN = 2, RED_MEAN = 3 };

// Shapes have equal rank; each input dim equals the output dim or is 1 (broadcast).
void binary(int op, const float* a, const std::vector<long>& as, const float* b, const std::vector<long>& bs,
            float* out, const std::vector<long>& os);
void unary(int op, const float* x, float* out, long n, float alpha);
// out[o, i] = op over r of x[o, r, i]
void reduce(int op, const float* x, float* out, long outer, long red, long inner);
// out = op over the dims with reduced[i] set (any set of axes; out holds the kept dims in order).
void reduce_axes(int op, const float* x, const std::vector<long>& shape, const std::vector<bool>& reduced, float* out);
void transpose(const float* x, const std::vector<long>& shape, const std::vector<long>& perm, float* out);
// The same on 16-bit elements (float16 weights moved to sdlab's layout as they load).
void transpose(const uint16_t* x, const std::vector<long>& shape, const std::vector<long>& perm, uint16_t* out);
void softmax(const float* x, float* out, long rows, long cols);

// Fused normalisation over x [B, S, C] (NHWC flattened: S positions, C channels) in G groups of
// C/G channels: statistics per (b, group) over S·C/G values (biased variance), then
// y = act((x − mean)·rstd·gamma[c] + beta[c]), act 0 = none, 1 = SiLU. GroupNorm is this with
// S = H·W; LayerNorm over the last axis is B = rows, S = 1, G = 1. Saves mean and rstd [B, G].
void group_norm(const float* x, long B, long S, long C, long G, const float* gamma, const float* beta, float eps,
                int act, float* y, float* mean, float* rstd);
// Its gradient given dy: dx [B, S, C], dgamma [C], dbeta [C].
void group_norm_grad(const float* dy, const float* x, long B, long S, long C, long G, const float* gamma,
                     const float* beta, const float* mean, const float* rstd, int act, float* dx, float* dgamma,
                     float* dbeta);
// Fused activations: op 0 = SiLU x·σ(x), 1 = exact GELU ½x(1 + erf(x/√2)).
void activation(int op, const float* x, float* y, long n);
// dx = dy · act'(x).
void activation_grad(int op, const float* dy, const float* x, float* dx, long n);

// One AdamW step for n parameters, each operation rounded to float32 in the order the tfjs
// composition in src/train/optimizer.ts uses (so both give the same bits):
//   m' = m·b1 + g·c1;  v' = v·b2 + (g·g)·c2;  p' = p·decay − (m' / (√v' / bc2 + eps))·step
// h = {b1, c1, b2, c2, decay, bc2, eps, step}; decay is skipped (p used as is) when has_decay is false.
struct AdamHyper { float b1, c1, b2, c2, decay, bc2, eps, step; bool has_decay; };
void adamw(const float* p, const float* g, const float* m, const float* v, float* p_out, float* m_out, float* v_out,
           long n, const AdamHyper& h);

}  // namespace sdlab

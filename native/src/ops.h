// Elementwise, reduction, transpose and softmax kernels (memory-bound; multithreaded over rows).
#pragma once
#include <vector>

namespace sdlab {

enum BinaryOp { BIN_ADD = 0, BIN_SUB = 1, BIN_MUL = 2, BIN_DIV = 3, BIN_SQDIFF = 4, BIN_MAX = 5, BIN_MIN = 6 };
enum UnaryOp {
  UN_RELU = 0, UN_RELU6 = 1, UN_SIGMOID = 2, UN_TANH = 3, UN_EXP = 4, UN_LOG = 5, UN_SQRT = 6, UN_RSQRT = 7,
  UN_SQUARE = 8, UN_NEG = 9, UN_ABS = 10, UN_STEP = 11, UN_LEAKYRELU = 12, UN_ELU = 13
};
enum ReduceOp { RED_SUM = 0, RED_MAX = 1, RED_MIN = 2, RED_MEAN = 3 };

// Shapes have equal rank; each input dim equals the output dim or is 1 (broadcast).
void binary(int op, const float* a, const std::vector<long>& as, const float* b, const std::vector<long>& bs,
            float* out, const std::vector<long>& os);
void unary(int op, const float* x, float* out, long n, float alpha);
// out[o, i] = op over r of x[o, r, i]
void reduce(int op, const float* x, float* out, long outer, long red, long inner);
void transpose(const float* x, const std::vector<long>& shape, const std::vector<long>& perm, float* out);
void softmax(const float* x, float* out, long rows, long cols);

}  // namespace sdlab

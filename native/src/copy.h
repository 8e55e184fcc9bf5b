// Data-movement kernels: box copies (slice, pad, concat, split), tile, and nearest-neighbour
// resize with its gradient. Pure copies (no arithmetic), so results equal tfjs's bit for bit.
// Also float16 → float32 (exact), for loading fp16 weight files.
#pragma once
#include <cstdint>
#include <vector>

namespace sdlab {

// dst[dst_begin + i] = src[src_begin + i] for every index i of the box `size` (all of equal rank).
void copy_box(const float* src, const std::vector<long>& src_shape, const std::vector<long>& src_begin, float* dst,
              const std::vector<long>& dst_shape, const std::vector<long>& dst_begin, const std::vector<long>& size);

// out = x tiled reps times along each dim (out shape = shape * reps).
void tile(const float* x, const std::vector<long>& shape, const std::vector<long>& reps, float* out);

// out[b, y, x, :] = in[b, rows[y], cols[x], :] (in [B, H, W, C], out [B, OH, OW, C]).
void gather_hw(const float* in, long B, long H, long W, long C, const int* rows, long OH, const int* cols, long OW,
               float* out);

// dx[b, r, c, :] = sum of dy[b, y, x, :] over y, x with rows[y] == r and cols[x] == c.
void scatter_add_hw(const float* dy, long B, long OH, long OW, long C, const int* rows, const int* cols, float* dx,
                    long H, long W);

// dst[i] = the float16 bits src[i] as float32, exactly (F16C on x86, FCVTL on aarch64, else bit
// arithmetic); multithreaded.
void halves_to_floats(const uint16_t* src, float* dst, long n);
// The same on the calling thread only: for kernels that unpack fp16 weights inside their own
// parallel loops (GEMM and convolution packing).
void load_halves(const uint16_t* src, float* dst, long n);
// dst[i] = src[i] rounded to float16 bits, to nearest even (F16C / FCVTN; exact for values that
// came from float16); multithreaded. For keeping fp16 weights in half precision in memory.
void floats_to_halves(const float* src, uint16_t* dst, long n);

}  // namespace sdlab

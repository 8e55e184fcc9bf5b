// Winograd convolution (Lavin & Gray 2015) for 3×3, stride-1, undilated NHWC convolutions:
// F(4×4, 3×3), 36 multiplications per 4×4 output tile and channel pair instead of 144, or
// F(2×2, 3×3) on small images, 16 per 2×2 tile instead of 36 (winograd.cc).
#pragma once
#include "conv.h"

namespace sdlab {

// Whether conv2d_winograd runs for this shape on this machine (AVX2 GEMM micro-kernel present,
// 3×3 stride 1 dilation 1, enough tiles and channels to pay for the transforms, and not
// switched off with SDLAB_WINOGRAD=0).
bool winograd_applies(const ConvShape& s);
// Whether it takes F(4×4, 3×3) for this shape (else F(2×2, 3×3)).
bool winograd_f4(const ConvShape& s);
// out[B,outH,outW,Cout] = conv(x, w) (+ bias, activation), as conv2d.
void conv2d_winograd(const ConvShape& s, const float* x, const float* w, float* out, const float* bias, int act,
                     float alpha, const uint16_t* wh = nullptr);

}  // namespace sdlab

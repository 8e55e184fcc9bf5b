// 2-D convolution (NHWC, filter [kh,kw,Cin,Cout]) as im2col/col2im around the GEMM.
#pragma once
#include <cstdint>

namespace sdlab {

struct ConvShape {
  long B, H, W, Cin;       // input
  long outH, outW, Cout;   // output
  long kh, kw, sh, sw, dh, dw, padTop, padLeft;
  // The input is x nearest-upsampled by this factor: H and W above are the upsampled sizes, x holds
  // H/up × W/up pixels and is read in place (forward only; the upsampled image is never made).
  long up = 1;
};

// out[B,outH,outW,Cout] = conv(x, w) (+ bias, activation)
// wh: the filter as float16 bits instead (weights kept in half precision; w is then ignored),
// unpacked where the filter is packed for the kernels, so it costs what float32 does.
void conv2d(const ConvShape& s, const float* x, const float* w, float* out, const float* bias, int act, float alpha,
            const uint16_t* wh = nullptr);
// conv2d of x upsampled (s.up > 1) where an im2col-free path takes it (Winograd or the indirect
// kernel); false, with nothing written, where neither does (the caller upsamples explicitly).
bool conv2d_upsampled(const ConvShape& s, const float* x, const float* w, float* out, const float* bias, int act,
                      float alpha, const uint16_t* wh = nullptr);
// dx[B,H,W,Cin] = gradient of conv2d wrt x, given dy[B,outH,outW,Cout]
void conv2d_backprop_input(const ConvShape& s, const float* dy, const float* w, float* dx);
// dw[kh,kw,Cin,Cout] = gradient of conv2d wrt w
void conv2d_backprop_filter(const ConvShape& s, const float* x, const float* dy, float* dw);

}  // namespace sdlab

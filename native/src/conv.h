// 2-D convolution (NHWC, filter [kh,kw,Cin,Cout]) as im2col/col2im around the GEMM.
#pragma once

namespace sdlab {

struct ConvShape {
  long B, H, W, Cin;       // input
  long outH, outW, Cout;   // output
  long kh, kw, sh, sw, dh, dw, padTop, padLeft;
};

// out[B,outH,outW,Cout] = conv(x, w) (+ bias, activation)
void conv2d(const ConvShape& s, const float* x, const float* w, float* out, const float* bias, int act, float alpha);
// dx[B,H,W,Cin] = gradient of conv2d wrt x, given dy[B,outH,outW,Cout]
void conv2d_backprop_input(const ConvShape& s, const float* dy, const float* w, float* dx);
// dw[kh,kw,Cin,Cout] = gradient of conv2d wrt w
void conv2d_backprop_filter(const ConvShape& s, const float* x, const float* dy, float* dw);

}  // namespace sdlab

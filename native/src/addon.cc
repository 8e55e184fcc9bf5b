// N-API bindings. Every function works in place on Float32Arrays owned by JavaScript (zero
// copy) and checks their lengths against the shapes it is given before touching memory.
#include <node_api.h>
#include <uv.h>

#include <algorithm>
#include <cstdlib>
#include <initializer_list>
#include <malloc.h>
#include <string>
#include <thread>

#include "attention.h"
#include "conv.h"
#include "copy.h"
#include "gemm.h"
#include "ops.h"
#include "pool.h"

namespace {

using namespace sdlab;

struct Err {
  std::string msg;
};

napi_value throw_err(napi_env env, const std::string& msg) {
  napi_throw_error(env, "SDLAB_NATIVE", msg.c_str());
  return nullptr;
}

struct Args {
  napi_env env;
  size_t argc = 16;
  napi_value argv[16];
  Args(napi_env e, napi_callback_info info) : env(e) { napi_get_cb_info(e, info, &argc, argv, nullptr, nullptr); }

  bool is_null(size_t i) const {
    if (i >= argc) return true;
    napi_valuetype t;
    napi_typeof(env, argv[i], &t);
    return t == napi_null || t == napi_undefined;
  }
  // Argument i as a typed array of one of `types`, at least `need` elements long; `kind` names
  // what was expected in the errors.
  struct Typed {
    napi_typedarray_type type;
    void* data;
    size_t length;
  };
  Typed typed(size_t i, size_t need, const char* what, std::initializer_list<napi_typedarray_type> types,
              const char* kind) const {
    if (i >= argc) throw Err{std::string(what) + ": missing argument"};
    bool is_ta = false;
    napi_is_typedarray(env, argv[i], &is_ta);
    if (!is_ta) throw Err{std::string(what) + ": expected " + kind};
    Typed t;
    napi_value buf;
    size_t off;
    napi_get_typedarray_info(env, argv[i], &t.type, &t.length, &t.data, &buf, &off);
    if (std::find(types.begin(), types.end(), t.type) == types.end()) throw Err{std::string(what) + ": expected " + kind};
    if (t.length < need)
      throw Err{std::string(what) + ": array of length " + std::to_string(t.length) + " is shorter than " + std::to_string(need)};
    return t;
  }
  float* f32(size_t i, size_t need, const char* what) const {
    return static_cast<float*>(typed(i, need, what, {napi_float32_array}, "a Float32Array").data);
  }
  const int* i32(size_t i, size_t need, const char* what) const {
    if (i >= argc) throw Err{std::string(what) + ": missing argument"};
    bool is_ta = false;
    napi_is_typedarray(env, argv[i], &is_ta);
    if (!is_ta) throw Err{std::string(what) + ": expected an Int32Array"};
    napi_typedarray_type type;
    size_t length;
    void* data;
    napi_value buf;
    size_t off;
    napi_get_typedarray_info(env, argv[i], &type, &length, &data, &buf, &off);
    if (type != napi_int32_array) throw Err{std::string(what) + ": expected an Int32Array"};
    if (length < need) throw Err{std::string(what) + ": Int32Array too short"};
    return static_cast<const int*>(data);
  }
  const float* opt_f32(size_t i, size_t need, const char* what) const { return is_null(i) ? nullptr : f32(i, need, what); }
  // A weight operand: a Float32Array, or a Uint16Array of float16 bits (weights kept in half
  // precision). Exactly one of the two pointers is set.
  struct Weights {
    const float* f = nullptr;
    const uint16_t* h = nullptr;
  };
  Weights weights(size_t i, size_t need, const char* what) const {
    const Typed t = typed(i, need, what, {napi_float32_array, napi_uint16_array}, "a Float32Array or a Uint16Array of float16 bits");
    Weights w;
    if (t.type == napi_float32_array) w.f = static_cast<const float*>(t.data);
    else w.h = static_cast<const uint16_t*>(t.data);
    return w;
  }
  uint16_t* u16(size_t i, size_t need, const char* what) const {
    return static_cast<uint16_t*>(typed(i, need, what, {napi_uint16_array}, "a Uint16Array").data);
  }
  double num(size_t i) const {
    double v = 0;
    if (i >= argc || napi_get_value_double(env, argv[i], &v) != napi_ok) throw Err{"expected a number argument"};
    return v;
  }
  long lng(size_t i) const {
    double v = num(i);
    if (v < 0) throw Err{"expected a non-negative integer"};
    return (long)v;
  }
  bool boolean(size_t i) const {
    bool v = false;
    if (i < argc) napi_get_value_bool(env, argv[i], &v);
    return v;
  }
  std::vector<long> ints(size_t i) const {
    bool is_arr = false;
    napi_is_array(env, argv[i], &is_arr);
    if (!is_arr) throw Err{"expected an array of integers"};
    uint32_t n;
    napi_get_array_length(env, argv[i], &n);
    std::vector<long> out(n);
    for (uint32_t k = 0; k < n; ++k) {
      napi_value e;
      napi_get_element(env, argv[i], k, &e);
      double d;
      napi_get_value_double(env, e, &d);
      out[k] = (long)d;
    }
    return out;
  }
};

template <typename F>
napi_value guarded(napi_env env, F&& f) {
  try {
    return f();
  } catch (const Err& e) {
    return throw_err(env, e.msg);
  } catch (const std::exception& e) {
    return throw_err(env, e.what());
  }
}

napi_value undefined(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

// matmul(A, B, C, batch, M, N, K, transA, transB, strideA, strideB, bias|null, act, alpha, accumulate)
// C[b] = op(A[b])·op(B[b]) for b < batch; strideA/strideB are element offsets between batches (0 = broadcast).
napi_value Matmul(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    long batch = a.lng(3), M = a.lng(4), N = a.lng(5), K = a.lng(6);
    bool ta = a.boolean(7), tb = a.boolean(8);
    long sA = a.lng(9), sB = a.lng(10);
    const float* A = a.f32(0, batch ? (batch - 1) * sA + M * K : 0, "matmul A");
    const Args::Weights B = a.weights(1, batch ? (batch - 1) * sB + K * N : 0, "matmul B");
    float* C = a.f32(2, batch * M * N, "matmul C");
    const float* bias = a.opt_f32(11, N, "matmul bias");
    int act = (int)a.num(12);
    float alpha = (float)a.num(13);
    bool acc = a.boolean(14);
    auto one = [&](long b) {
      Gemm g;
      g.M = M; g.N = N; g.K = K;
      g.A = A + b * sA; g.lda = ta ? M : K; g.transA = ta;
      if (B.h) g.Bh = B.h + b * sB; else g.B = B.f + b * sB;
      g.ldb = tb ? K : N; g.transB = tb;
      g.C = C + b * M * N; g.ldc = N; g.accumulate = acc;
      g.bias = bias; g.act = act; g.alpha = alpha;
      sgemm(g);
    };
    // Many small products (attention heads): one thread each, in parallel.
    if (batch > 1 && 2.0 * M * N * K < 4e6)
      parallel_for(batch, std::max<long>(1, (long)(2e5 / (2.0 * M * N * K + 1))), [&](long b0, long b1) {
        for (long b = b0; b < b1; ++b) one(b);
      });
    else
      for (long b = 0; b < batch; ++b) one(b);
    return undefined(env);
  });
}

ConvShape conv_shape(const std::vector<long>& v) {
  if (v.size() != 15) throw Err{"conv shape: expected 15 integers"};
  ConvShape s{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13], v[14]};
  if (s.sh < 1 || s.sw < 1 || s.dh < 1 || s.dw < 1) throw Err{"conv shape: strides and dilations must be >= 1"};
  return s;
}

// conv2d(x, w, out, shape[15], bias|null, act, alpha)
napi_value Conv2d(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    ConvShape s = conv_shape(a.ints(3));
    const float* x = a.f32(0, s.B * s.H * s.W * s.Cin, "conv2d x");
    const Args::Weights w = a.weights(1, s.kh * s.kw * s.Cin * s.Cout, "conv2d filter");
    float* out = a.f32(2, s.B * s.outH * s.outW * s.Cout, "conv2d out");
    const float* bias = a.opt_f32(4, s.Cout, "conv2d bias");
    conv2d(s, x, w.f, out, bias, (int)a.num(5), (float)a.num(6), w.h);
    return undefined(env);
  });
}

// conv2dUpsampled(x, w, out, shape[15], up, bias|null, act, alpha): conv2d of x nearest-upsampled by
// `up` (shape's H and W are the upsampled sizes); false, with nothing written, where no path takes it.
napi_value Conv2dUpsampled(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    ConvShape s = conv_shape(a.ints(3));
    s.up = a.lng(4);
    if (s.up < 1 || s.H % s.up || s.W % s.up) throw Err{"conv2dUpsampled: H and W must be multiples of up"};
    const float* x = a.f32(0, s.B * (s.H / s.up) * (s.W / s.up) * s.Cin, "conv2dUpsampled x");
    const Args::Weights w = a.weights(1, s.kh * s.kw * s.Cin * s.Cout, "conv2dUpsampled filter");
    float* out = a.f32(2, s.B * s.outH * s.outW * s.Cout, "conv2dUpsampled out");
    const float* bias = a.opt_f32(5, s.Cout, "conv2dUpsampled bias");
    napi_value v;
    napi_get_boolean(env, conv2d_upsampled(s, x, w.f, out, bias, (int)a.num(6), (float)a.num(7), w.h), &v);
    return v;
  });
}

// conv2dBackpropInput(dy, w, dx, shape[15])
napi_value Conv2dBackpropInput(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    ConvShape s = conv_shape(a.ints(3));
    const float* dy = a.f32(0, s.B * s.outH * s.outW * s.Cout, "conv2dBackpropInput dy");
    const float* w = a.f32(1, s.kh * s.kw * s.Cin * s.Cout, "conv2dBackpropInput filter");
    float* dx = a.f32(2, s.B * s.H * s.W * s.Cin, "conv2dBackpropInput dx");
    conv2d_backprop_input(s, dy, w, dx);
    return undefined(env);
  });
}

// conv2dBackpropFilter(x, dy, dw, shape[15])
napi_value Conv2dBackpropFilter(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    ConvShape s = conv_shape(a.ints(3));
    const float* x = a.f32(0, s.B * s.H * s.W * s.Cin, "conv2dBackpropFilter x");
    const float* dy = a.f32(1, s.B * s.outH * s.outW * s.Cout, "conv2dBackpropFilter dy");
    float* dw = a.f32(2, s.kh * s.kw * s.Cin * s.Cout, "conv2dBackpropFilter dw");
    conv2d_backprop_filter(s, x, dy, dw);
    return undefined(env);
  });
}

long prod(const std::vector<long>& v) {
  long p = 1;
  for (long d : v) p *= d;
  return p;
}

// binary(op, a, aShape, b, bShape, out, outShape): out = a (op) b with numpy broadcasting;
// shapes are given already padded to the same rank.
napi_value Binary(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    int op = (int)a.num(0);
    std::vector<long> as = a.ints(2), bs = a.ints(4), os = a.ints(6);
    if (as.size() != os.size() || bs.size() != os.size()) throw Err{"binary: shapes must have equal rank"};
    for (size_t i = 0; i < os.size(); ++i)
      if ((as[i] != os[i] && as[i] != 1) || (bs[i] != os[i] && bs[i] != 1)) throw Err{"binary: shapes do not broadcast"};
    const float* x = a.f32(1, prod(as), "binary a");
    const float* y = a.f32(3, prod(bs), "binary b");
    float* out = a.f32(5, prod(os), "binary out");
    binary(op, x, as, y, bs, out, os);
    return undefined(env);
  });
}

// unary(op, x, out, alpha)
napi_value Unary(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    int op = (int)a.num(0);
    size_t n;
    {
      napi_typedarray_type t;
      void* d;
      napi_value b;
      size_t o;
      napi_get_typedarray_info(env, a.argv[1], &t, &n, &d, &b, &o);
    }
    const float* x = a.f32(1, n, "unary x");
    float* out = a.f32(2, n, "unary out");
    unary(op, x, out, (long)n, (float)a.num(3));
    return undefined(env);
  });
}

// reduce(op, x, out, outer, reduce, inner): out[o, i] = op over r of x[o, r, i]
napi_value Reduce(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    int op = (int)a.num(0);
    long outer = a.lng(3), red = a.lng(4), inner = a.lng(5);
    const float* x = a.f32(1, outer * red * inner, "reduce x");
    float* out = a.f32(2, outer * inner, "reduce out");
    reduce(op, x, out, outer, red, inner);
    return undefined(env);
  });
}

// transpose(x, shape, perm, out): Float32Arrays, or Uint16Arrays of float16 bits
napi_value Transpose(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    std::vector<long> shape = a.ints(1), perm = a.ints(2);
    if (perm.size() != shape.size()) throw Err{"transpose: perm and shape differ in rank"};
    std::vector<bool> seen(shape.size(), false);
    for (long p : perm) {
      if (p < 0 || p >= (long)shape.size() || seen[p]) throw Err{"transpose: bad perm"};
      seen[p] = true;
    }
    // Float32Array, or Uint16Array (float16 bits) in and out.
    const Args::Weights x = a.weights(0, prod(shape), "transpose x");
    if (x.h) transpose(x.h, shape, perm, a.u16(3, prod(shape), "transpose out"));
    else transpose(x.f, shape, perm, a.f32(3, prod(shape), "transpose out"));
    return undefined(env);
  });
}

// softmax(x, out, rows, cols): softmax over the last axis
napi_value Softmax(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    long rows = a.lng(2), cols = a.lng(3);
    const float* x = a.f32(0, rows * cols, "softmax x");
    float* out = a.f32(1, rows * cols, "softmax out");
    softmax(x, out, rows, cols);
    return undefined(env);
  });
}

// reduceAxes(op, x, shape, reducedMask[], out): op over any set of axes; out holds the kept dims in order.
napi_value ReduceAxes(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    int op = (int)a.num(0);
    std::vector<long> shape = a.ints(2), mask = a.ints(3);
    if (mask.size() != shape.size()) throw Err{"reduceAxes: mask and shape differ in rank"};
    std::vector<bool> red(shape.size());
    long kept = 1;
    for (size_t i = 0; i < shape.size(); ++i) {
      red[i] = mask[i] != 0;
      if (!red[i]) kept *= shape[i];
    }
    const float* x = a.f32(1, prod(shape), "reduceAxes x");
    float* out = a.f32(4, kept, "reduceAxes out");
    reduce_axes(op, x, shape, red, out);
    return undefined(env);
  });
}

// copyBox(src, srcShape, srcBegin, dst, dstShape, dstBegin, size)
napi_value CopyBox(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    std::vector<long> ss = a.ints(1), sb = a.ints(2), ds = a.ints(4), db = a.ints(5), sz = a.ints(6);
    size_t D = sz.size();
    if (ss.size() != D || sb.size() != D || ds.size() != D || db.size() != D) throw Err{"copyBox: ranks differ"};
    for (size_t i = 0; i < D; ++i)
      if (sb[i] + sz[i] > ss[i] || db[i] + sz[i] > ds[i]) throw Err{"copyBox: box outside a tensor"};
    const float* src = a.f32(0, prod(ss), "copyBox src");
    float* dst = a.f32(3, prod(ds), "copyBox dst");
    copy_box(src, ss, sb, dst, ds, db, sz);
    return undefined(env);
  });
}

// tile(x, shape, reps, out)
napi_value Tile(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    std::vector<long> shape = a.ints(1), reps = a.ints(2);
    if (reps.size() != shape.size()) throw Err{"tile: reps and shape differ in rank"};
    long total = 1;
    for (size_t i = 0; i < shape.size(); ++i) total *= shape[i] * reps[i];
    const float* x = a.f32(0, prod(shape), "tile x");
    float* out = a.f32(3, total, "tile out");
    tile(x, shape, reps, out);
    return undefined(env);
  });
}

// gatherHW(x, [B,H,W,C], rows Int32Array(OH), cols Int32Array(OW), out): out[b,y,x] = x[b,rows[y],cols[x]]
napi_value GatherHW(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    std::vector<long> s = a.ints(1);
    if (s.size() != 6) throw Err{"gatherHW: expected [B, H, W, C, OH, OW]"};
    long B = s[0], H = s[1], W = s[2], C = s[3], OH = s[4], OW = s[5];
    const int* rows = a.i32(2, OH, "gatherHW rows");
    const int* cols = a.i32(3, OW, "gatherHW cols");
    for (long i = 0; i < OH; ++i) if (rows[i] < 0 || rows[i] >= H) throw Err{"gatherHW: row index out of range"};
    for (long i = 0; i < OW; ++i) if (cols[i] < 0 || cols[i] >= W) throw Err{"gatherHW: column index out of range"};
    const float* x = a.f32(0, B * H * W * C, "gatherHW x");
    float* out = a.f32(4, B * OH * OW * C, "gatherHW out");
    gather_hw(x, B, H, W, C, rows, OH, cols, OW, out);
    return undefined(env);
  });
}

// scatterAddHW(dy, [B,H,W,C,OH,OW], rows, cols, dx): dx[b,rows[y],cols[x]] += dy[b,y,x]
napi_value ScatterAddHW(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    std::vector<long> s = a.ints(1);
    if (s.size() != 6) throw Err{"scatterAddHW: expected [B, H, W, C, OH, OW]"};
    long B = s[0], H = s[1], W = s[2], C = s[3], OH = s[4], OW = s[5];
    const int* rows = a.i32(2, OH, "scatterAddHW rows");
    const int* cols = a.i32(3, OW, "scatterAddHW cols");
    for (long i = 0; i < OH; ++i) if (rows[i] < 0 || rows[i] >= H) throw Err{"scatterAddHW: row index out of range"};
    for (long i = 0; i < OW; ++i) if (cols[i] < 0 || cols[i] >= W) throw Err{"scatterAddHW: column index out of range"};
    const float* dy = a.f32(0, B * OH * OW * C, "scatterAddHW dy");
    float* dx = a.f32(4, B * H * W * C, "scatterAddHW dx");
    scatter_add_hw(dy, B, OH, OW, C, rows, cols, dx, H, W);
    return undefined(env);
  });
}

// attention(q, k, v, [B, Lq, Lk, heads, D, Dv], scale, out): out = softmax(scale·q kᵀ) v per head
napi_value Attention(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    std::vector<long> d = a.ints(3);
    if (d.size() != 6) throw Err{"attention: expected [B, Lq, Lk, heads, D, Dv]"};
    for (long x : d) if (x < 0) throw Err{"attention: negative size"};
    AttnShape s{d[0], d[1], d[2], d[3], d[4], d[5]};
    const float* q = a.f32(0, s.B * s.Lq * s.heads * s.D, "attention q");
    const float* k = a.f32(1, s.B * s.Lk * s.heads * s.D, "attention k");
    const float* v = a.f32(2, s.B * s.Lk * s.heads * s.Dv, "attention v");
    float scale = (float)a.num(4);
    float* out = a.f32(5, s.B * s.Lq * s.heads * s.Dv, "attention out");
    attention(s, q, k, v, scale, out);
    return undefined(env);
  });
}

// groupNorm(x, [B, S, C, G], gamma|null, beta|null, eps, act, y, mean, rstd)
napi_value GroupNorm(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    std::vector<long> d = a.ints(1);
    if (d.size() != 4 || d[3] < 1 || d[2] % d[3] != 0) throw Err{"groupNorm: expected [B, S, C, G] with G dividing C"};
    const long B = d[0], S = d[1], C = d[2], G = d[3];
    const float* x = a.f32(0, B * S * C, "groupNorm x");
    const float* gamma = a.opt_f32(2, C, "groupNorm gamma");
    const float* beta = a.opt_f32(3, C, "groupNorm beta");
    float eps = (float)a.num(4);
    int act = (int)a.num(5);
    float* y = a.f32(6, B * S * C, "groupNorm y");
    float* mean = a.f32(7, B * G, "groupNorm mean");
    float* rstd = a.f32(8, B * G, "groupNorm rstd");
    group_norm(x, B, S, C, G, gamma, beta, eps, act, y, mean, rstd);
    return undefined(env);
  });
}

// groupNormGrad(dy, x, [B, S, C, G], gamma|null, beta|null, mean, rstd, act, dx, dgamma|null, dbeta|null)
napi_value GroupNormGrad(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    std::vector<long> d = a.ints(2);
    if (d.size() != 4 || d[3] < 1 || d[2] % d[3] != 0) throw Err{"groupNormGrad: expected [B, S, C, G] with G dividing C"};
    const long B = d[0], S = d[1], C = d[2], G = d[3];
    const float* dy = a.f32(0, B * S * C, "groupNormGrad dy");
    const float* x = a.f32(1, B * S * C, "groupNormGrad x");
    const float* gamma = a.opt_f32(3, C, "groupNormGrad gamma");
    const float* beta = a.opt_f32(4, C, "groupNormGrad beta");
    const float* mean = a.f32(5, B * G, "groupNormGrad mean");
    const float* rstd = a.f32(6, B * G, "groupNormGrad rstd");
    int act = (int)a.num(7);
    float* dx = a.f32(8, B * S * C, "groupNormGrad dx");
    float* dgamma = a.is_null(9) ? nullptr : a.f32(9, C, "groupNormGrad dgamma");
    float* dbeta = a.is_null(10) ? nullptr : a.f32(10, C, "groupNormGrad dbeta");
    group_norm_grad(dy, x, B, S, C, G, gamma, beta, mean, rstd, act, dx, dgamma, dbeta);
    return undefined(env);
  });
}

size_t length_of(napi_env env, napi_value v) {
  napi_typedarray_type t;
  size_t n = 0;
  void* d;
  napi_value b;
  size_t o;
  if (napi_get_typedarray_info(env, v, &t, &n, &d, &b, &o) != napi_ok) throw Err{"expected a Float32Array"};
  return n;
}

// activation(op, x, y): y = act(x); op 0 = SiLU, 1 = exact GELU
napi_value Activation(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    int op = (int)a.num(0);
    size_t n = length_of(env, a.argv[1]);
    activation(op, a.f32(1, n, "activation x"), a.f32(2, n, "activation y"), (long)n);
    return undefined(env);
  });
}

// activationGrad(op, dy, x, dx): dx = dy * act'(x)
napi_value ActivationGrad(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    int op = (int)a.num(0);
    size_t n = length_of(env, a.argv[2]);
    activation_grad(op, a.f32(1, n, "activationGrad dy"), a.f32(2, n, "activationGrad x"), a.f32(3, n, "activationGrad dx"), (long)n);
    return undefined(env);
  });
}

// adamw(p, g, m, v, pOut, mOut, vOut, [b1, c1, b2, c2, decay, bc2, eps, step], hasDecay)
napi_value AdamW(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    const size_t n = length_of(env, a.argv[0]);
    const float* h = a.f32(7, 8, "adamw hyperparameters");
    const AdamHyper hp{h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], a.boolean(8)};
    adamw(a.f32(0, n, "adamw p"), a.f32(1, n, "adamw g"), a.f32(2, n, "adamw m"), a.f32(3, n, "adamw v"),
          a.f32(4, n, "adamw pOut"), a.f32(5, n, "adamw mOut"), a.f32(6, n, "adamw vOut"), (long)n, hp);
    return undefined(env);
  });
}

napi_value SetThreads(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    long n = a.lng(0);
    if (n < 1) n = 1;
    if (n > 256) n = 256;
    Pool::get().set_threads((int)n);
    return undefined(env);
  });
}

napi_value Threads(napi_env env, napi_callback_info) {
  napi_value v;
  napi_create_int32(env, Pool::get().threads(), &v);
  return v;
}

napi_value Isa(napi_env env, napi_callback_info) {
  napi_value v;
  const char* s = gemm_isa();
  napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v);
  return v;
}

// halvesToFloats(src: Uint16Array, dst: Float32Array): dst = src's float16 bits as float32, exactly.
napi_value HalvesToFloats(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    const Args::Typed src = a.typed(0, 0, "halvesToFloats", {napi_uint16_array}, "a Uint16Array");
    float* dst = a.f32(1, src.length, "halvesToFloats: dst");
    halves_to_floats(static_cast<const uint16_t*>(src.data), dst, (long)src.length);
    return undefined(env);
  });
}

// floatsToHalves(src: Float32Array, dst: Uint16Array): dst = src rounded to float16 bits (nearest even).
napi_value FloatsToHalves(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    const Args::Typed src = a.typed(0, 0, "floatsToHalves: src", {napi_float32_array}, "a Float32Array");
    uint16_t* dst = a.u16(1, src.length, "floatsToHalves: dst");
    floats_to_halves(static_cast<const float*>(src.data), dst, (long)src.length);
    return undefined(env);
  });
}

// release(buffer: ArrayBuffer): detaches it, which frees its memory now rather than at V8's next
// garbage collection (which may come gigabytes later: a 512-px VAE decode frees 256 MB tensors).
// Every view of it then has length 0. Only for buffers nothing else can reach (BufferPool).
napi_value Release(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    bool is_ab = false;
    if (a.argc > 0) napi_is_arraybuffer(env, a.argv[0], &is_ab);
    if (!is_ab) throw Err{"release: expected an ArrayBuffer"};
    bool detached = true;
    napi_is_detached_arraybuffer(env, a.argv[0], &detached);
    napi_value v;
    napi_get_boolean(env, !detached && napi_detach_arraybuffer(env, a.argv[0]) == napi_ok, &v);
    return v;
  });
}

// adviseHuge(array: Float32Array | Uint16Array): advise_huge (pool.h) on its memory, for fresh buffers that JS
// allocates (tensor outputs, weights) before anything writes them, and advise_heap_growth for
// the heap they may have grown.
napi_value AdviseHuge(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    const Args::Typed t = a.typed(0, 0, "adviseHuge", {napi_float32_array, napi_uint16_array}, "a Float32Array or Uint16Array");
    if (t.data) advise_huge(t.data, t.length * (t.type == napi_float32_array ? sizeof(float) : sizeof(uint16_t)));
    advise_heap_growth();
    return undefined(env);
  });
}

// trimMemory(): hands the C heap's free pages back to the system (malloc_trim), for the moments
// when a program moves to work of another shape (SD: text encoder → UNet → VAE decode). The
// allocator keeps freed memory for reuse (Init's mallopt); without this, each phase's freed
// buffers stay resident while the next phase allocates sizes that do not fit them. Returns
// whether the C library has it (glibc).
napi_value TrimMemory(napi_env env, napi_callback_info) {
  bool done = false;
#ifdef M_MMAP_THRESHOLD
  malloc_trim(0);
  done = true;
#endif
  napi_value v;
  napi_get_boolean(env, done, &v);
  return v;
}

// fmaPeak(iters): every pool thread runs the FMA probe at once; returns the FLOPs done in all.
napi_value FmaPeak(napi_env env, napi_callback_info info) {
  return guarded(env, [&]() -> napi_value {
    Args a(env, info);
    const long iters = a.lng(0);
    Pool& pool = Pool::get();
    std::vector<double> flops(pool.threads(), 0.0);
    std::vector<float> sink(pool.threads(), 0.f);
    pool.run(pool.threads(), [&](int t) {
      FmaProbe p = fma_probe(iters);
      flops[t] = p.flops;
      sink[t] = p.value;
    });
    double total = 0;
    for (double f : flops) total += f;
    if (sink[0] != sink[0]) total = -1;  // never (the chains converge to 1e-6/1e-6 = 1): keeps sink live
    napi_value v;
    napi_create_double(env, total, &v);
    return v;
  });
}

napi_value HardwareThreads(napi_env env, napi_callback_info) {
  napi_value v;
  napi_create_int32(env, (int)std::thread::hardware_concurrency(), &v);
  return v;
}

// One turn of Node's event loop from inside a synchronous call: lets the WebGPU backend
// (src/backend/webgpu.ts) wait for a buffer map that Dawn completes from the loop, so
// tensor.dataSync() works there as in a browser. Timers and I/O callbacks due meanwhile run
// too; promise continuations do not (no microtask checkpoint happens inside a native call).
napi_value PumpEventLoop(napi_env env, napi_callback_info) {
  uv_loop_t* loop = nullptr;
  napi_value v;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    napi_get_boolean(env, false, &v);
    return v;
  }
  uv_run(loop, UV_RUN_ONCE);
  napi_get_boolean(env, true, &v);
  return v;
}

napi_value Init(napi_env env, napi_value exports) {
#ifdef M_MMAP_THRESHOLD
  // Tensors come and go every step; by default glibc maps and unmaps each large buffer, so every
  // new tensor pays page faults on first touch (slow in VMs). Keep freed memory for reuse instead,
  // below 100 MB a block (SD's UNet: up to 84 MB; at 32 MB its step took 1.5× as long). Larger
  // ones (the VAE decoder's 128-256 MB activations at 512 px) are mapped on their own and returned
  // whole when freed: kept in the heap, they stranded several hundred MB between sizes.
  // SDLAB_MALLOC_TUNE=0 disables this.
  const char* tune = std::getenv("SDLAB_MALLOC_TUNE");
  if (!tune || std::string(tune) != "0") {
    mallopt(M_MMAP_THRESHOLD, 100 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  }
  advise_heap_init();
#endif
  struct {
    const char* name;
    napi_callback cb;
  } fns[] = {{"matmul", Matmul},
             {"conv2d", Conv2d},
             {"conv2dUpsampled", Conv2dUpsampled},
             {"conv2dBackpropInput", Conv2dBackpropInput},
             {"conv2dBackpropFilter", Conv2dBackpropFilter},
             {"binary", Binary},
             {"unary", Unary},
             {"reduce", Reduce},
             {"transpose", Transpose},
             {"softmax", Softmax},
             {"reduceAxes", ReduceAxes},
             {"copyBox", CopyBox},
             {"tile", Tile},
             {"gatherHW", GatherHW},
             {"scatterAddHW", ScatterAddHW},
             {"attention", Attention},
             {"groupNorm", GroupNorm},
             {"groupNormGrad", GroupNormGrad},
             {"activation", Activation},
             {"activationGrad", ActivationGrad},
             {"adamw", AdamW},
             {"fmaPeak", FmaPeak},
             {"halvesToFloats", HalvesToFloats},
             {"floatsToHalves", FloatsToHalves},
             {"release", Release},
             {"trimMemory", TrimMemory},
             {"adviseHuge", AdviseHuge},
             {"setThreads", SetThreads},
             {"threads", Threads},
             {"isa", Isa},
             {"hardwareThreads", HardwareThreads},
             {"pumpEventLoop", PumpEventLoop}};
  for (auto& f : fns) {
    napi_value fn;
    napi_create_function(env, f.name, NAPI_AUTO_LENGTH, f.cb, nullptr, &fn);
    napi_set_named_property(env, exports, f.name, fn);
  }
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)

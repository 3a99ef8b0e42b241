// Helpers shared by the CPU kernels: dtype dispatch, argument checks, the K x K DCT matrix and the
// separable transform of a strip of blocks. Only the LibTorch stable ABI (torch/csrc/stable, torch/headeronly)
// is used, so the library works with every torch >= 2.10 (TORCH_TARGET_VERSION, set by setup.py).
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Exception.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace covkernels {

using Tensor = torch::stable::Tensor;
using torch::headeronly::ScalarType;

// Accumulation type of a storage type: float for the half types (as ATen's opmath_type).
template <typename T>
struct OpMath {
  using type = T;
};
template <>
struct OpMath<torch::headeronly::Half> {
  using type = float;
};
template <>
struct OpMath<torch::headeronly::BFloat16> {
  using type = float;
};
template <typename T>
using opmath_t = typename OpMath<T>::type;

// float32, float64, float16, bfloat16: one templated kernel body per op, no per-dtype copies. The body (a
// lambda) is written inside each case, so it sees that case's scalar_t.
#define CK_CASE(ENUM, TYPE, ...) \
  case ScalarType::ENUM: {       \
    using scalar_t = TYPE;       \
    return __VA_ARGS__();        \
  }
#define CK_DISPATCH_FLOATING(DTYPE, NAME, ...)                                       \
  [&] {                                                                              \
    switch (DTYPE) {                                                                 \
      CK_CASE(Float, float, __VA_ARGS__)                                             \
      CK_CASE(Double, double, __VA_ARGS__)                                           \
      CK_CASE(Half, torch::headeronly::Half, __VA_ARGS__)                            \
      CK_CASE(BFloat16, torch::headeronly::BFloat16, __VA_ARGS__)                    \
      default:                                                                       \
        STD_TORCH_CHECK(false, NAME, ": dtype must be float32/float64/float16/bfloat16"); \
    }                                                                                \
  }()
#define CK_DISPATCH_FLOAT_DOUBLE(DTYPE, NAME, ...)               \
  [&] {                                                          \
    switch (DTYPE) {                                             \
      CK_CASE(Float, float, __VA_ARGS__)                         \
      CK_CASE(Double, double, __VA_ARGS__)                       \
      default:                                                   \
        STD_TORCH_CHECK(false, NAME, ": dtype must be float32/float64"); \
    }                                                            \
  }()

template <typename T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

inline std::string shape_str(const Tensor& t) {
  std::string s = "(";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + ")";
}

// sizes of `t` from dimension `from` on equal those of `like`
inline bool same_sizes(const Tensor& t, const Tensor& like, int64_t from = 0) {
  if (t.dim() - from != like.dim()) return false;
  for (int64_t d = 0; d < like.dim(); ++d)
    if (t.size(d + from) != like.size(d)) return false;
  return true;
}

inline void check_cpu_contiguous(const Tensor& t, const char* name) {
  STD_TORCH_CHECK(t.is_cpu(), name, " must be a CPU tensor");
  STD_TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

inline void check_same(const Tensor& t, const Tensor& like, const char* name) {
  check_cpu_contiguous(t, name);
  STD_TORCH_CHECK(same_sizes(t, like), name, " must have shape ", shape_str(like), ", got ", shape_str(t));
  STD_TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have the dtype of x_t");
}

inline void check_block_tiles(int64_t block, int64_t h, int64_t w) {
  STD_TORCH_CHECK(block >= 1 && h % block == 0 && w % block == 0, "block=", block, " does not tile ", h, "x", w);
}

template <class F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  torch::stable::parallel_for(begin, end, grain, f);  // ATen's intra-op pool (OpenMP), through the C shim
}

// Orthonormal DCT-II matrix (k x k, row-major: coeffs = M signal), computed in double and rounded once,
// as the reference does; `transpose` gives the inverse.
template <typename acc_t>
std::vector<acc_t> dct_matrix(int64_t k, bool transpose) {
  std::vector<acc_t> m(static_cast<size_t>(k * k));
  const double pi = 3.14159265358979323846;
  for (int64_t u = 0; u < k; ++u) {
    for (int64_t i = 0; i < k; ++i) {
      double v = std::cos(pi * (2.0 * i + 1.0) * u / (2.0 * k)) * std::sqrt(2.0 / k);
      if (u == 0) v /= std::sqrt(2.0);
      m[transpose ? i * k + u : u * k + i] = static_cast<acc_t>(v);
    }
  }
  return m;
}

// Geometry of a strip-of-blocks loop: a work item is K rows x `tile` columns of one plane. Tiles of about
// 2K elements keep a few float buffers per thread in L1 while the column loops stay long enough to
// vectorise.
struct Tiling {
  int64_t k, h, w, tile, tiles_per_row, items_per_plane;
  Tiling(int64_t k_, int64_t h_, int64_t w_) : k(k_), h(h_), w(w_) {
    tile = std::min(w, std::max<int64_t>(k, (2048 / k) / k * k));
    tiles_per_row = (w + tile - 1) / tile;
    items_per_plane = (h / k) * tiles_per_row;
  }
  int64_t row0(int64_t item) const { return (item / tiles_per_row) * k; }
  int64_t col0(int64_t item) const { return (item % tiles_per_row) * tile; }
  int64_t width(int64_t item) const { return std::min(tile, w - col0(item)); }
};

// out = M X M^T on every K x K block of a (K, tw) strip (row stride tw). x and out may alias; tmp holds
// K * tw values. K = 1 is the identity. Rows first (long unit-stride loops over the strip), then the
// short per-block column products.
template <typename acc_t>
void transform_strip(const acc_t* x, acc_t* out, acc_t* tmp, const acc_t* m, int64_t k, int64_t tw) {
  if (k == 1) {
    if (out != x) std::copy(x, x + tw, out);
    return;
  }
  for (int64_t u = 0; u < k; ++u) {
    acc_t* t = tmp + u * tw;
    std::fill(t, t + tw, acc_t(0));
    for (int64_t i = 0; i < k; ++i) {
      const acc_t a = m[u * k + i];
      const acc_t* xi = x + i * tw;
      for (int64_t c = 0; c < tw; ++c) t[c] += a * xi[c];
    }
  }
  for (int64_t u = 0; u < k; ++u) {
    for (int64_t b = 0; b < tw; b += k) {
      const acc_t* t = tmp + u * tw + b;
      acc_t* o = out + u * tw + b;
      for (int64_t v = 0; v < k; ++v) {
        acc_t s = 0;
        for (int64_t j = 0; j < k; ++j) s += t[j] * m[v * k + j];
        o[v] = s;
      }
    }
  }
}

}  // namespace covkernels

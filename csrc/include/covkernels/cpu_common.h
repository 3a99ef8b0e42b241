// Helpers shared by the CPU kernels: dtype dispatch, argument checks, the K x K DCT matrix and the
// separable transform of a strip of blocks.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

// float32, float64, float16, bfloat16: one templated kernel body per op, no per-dtype copies.
#define CK_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

namespace covkernels {

inline void check_cpu_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

inline void check_same(const at::Tensor& t, const at::Tensor& like, const char* name) {
  check_cpu_contiguous(t, name);
  TORCH_CHECK(t.sizes() == like.sizes(), name, " must have shape ", like.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have dtype ", like.scalar_type(), ", got ",
              t.scalar_type());
}

inline void check_block_tiles(int64_t block, int64_t h, int64_t w) {
  TORCH_CHECK(block >= 1 && h % block == 0 && w % block == 0, "block=", block, " does not tile ", h, "x", w);
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

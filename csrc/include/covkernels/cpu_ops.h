// The CPU fused kernels of covkernels._C. Every op mirrors a function of covkernels/ops/<op>/reference.py
// (shapes and semantics in its docstring) and writes into a caller-allocated `out` (the Python side
// NaN-poisons it first, so an element a kernel forgets to write fails the tests). Storage dtypes: float32,
// float64, float16, bfloat16; arithmetic in float32 (float64 for float64 tensors). Threads: ATen's intra-op
// pool (OpenMP), i.e. torch.get_num_threads(). Tensors are torch::stable::Tensor (LibTorch stable ABI).
#pragma once

#include <cstdint>
#include <optional>
#include <tuple>

#include "covkernels/cpu_common.h"

namespace covkernels {

// Stream ids and the counter layout are the reference's (covkernels/ops/rng/reference.py); the caller
// passes them, so they are defined in one place.
struct Counters {
  uint64_t seed;
  int64_t sample_offset;
  int64_t step;
};

// out (B, ...): standard normals at counters (flat index within the sample, sample_offset + b, step, stream).
void philox_normal_out(Tensor& out, Counters ctr, int64_t stream);

// Orthonormal blockwise DCT-II (inverse = transpose) of every block x block tile of the last two dims,
// coefficients in place. x, out: (..., H, W) with H, W multiples of block; block = 1 is the identity.
void block_dct2_out(const Tensor& x, Tensor& out, int64_t block, bool inverse);

// out (B, C, H, W): the probe tangent F^T z, z the Rademacher probe at `stream` (block = 1: F = I).
void probe_tangent_out(Tensor& out, Counters ctr, int64_t stream, int64_t block);

struct StepParams {
  double ratio;   // sigma_down / sigma_t
  double var0;    // sigma_up^2
  double scale2;  // (sigma_t - sigma_down)^2
  std::optional<double> c_max;
  int64_t block;  // 1: identity basis (or coefficient space)
  bool channel_average;
  int64_t noise_stream;
  int64_t probe_stream;  // stream of probe 0; probe p uses probe_stream + p
  bool noise_only;       // write F^T(std * xi) instead of x_s (callers with a dense basis add the mean)
};

// The whole cov_ddim / diag_hutchinson update: out = m + F^T(sqrt(var0 + scale2 * c) * xi),
// m = D + ratio (x_t - D), c = clamp(mean_p z_p * (F Jv_p)) (channel-averaged). denoised, x_t, out:
// (B, C, H, W); jvps: (P, B, C, H, W); all contiguous, one dtype.
void structured_step_out(const Tensor& denoised, const Tensor& x_t, const Tensor& jvps,
                         Tensor& out, Counters ctr, const StepParams& p);

// One Lanczos iteration (reference: lanczos_update). aq (B, N) with basis' dtype; basis (k, B, N)
// float32/float64, rows 0..j filled; writes q_{j+1} into basis[j + 1] when that row exists.
// Returns (h (B, j + 1), beta (B,)).
std::tuple<Tensor, Tensor> lanczos_update(const Tensor& aq, Tensor& basis, int64_t j,
                                                  bool reorthogonalize, double breakdown_tol, double tiny);

// out = D + ratio (x_t - D) + sum_j coef[b, j] basis[j]. denoised, x_t, out (B, N); basis (k, B, N) in
// the accumulation dtype of x_t; coef (B, k') in that dtype, k' <= k.
void lanczos_synthesis_out(const Tensor& denoised, const Tensor& x_t, const Tensor& basis,
                           const Tensor& coef, Tensor& out, double ratio);

}  // namespace covkernels

// CPU fused cov_ddim / diag_hutchinson step (covkernels/ops/noise/reference.py::structured_step) and the
// probe tangent. Per work item (one sample, a strip of K rows x tile columns of every channel) the probes
// and the noise are regenerated from their counters, the coefficients live in a thread-local buffer and
// never touch memory: read Jv (P times), D and x_t once, write x_s once, as the Triton kernel does.
#include "covkernels/cpu_common.h"
#include "covkernels/cpu_ops.h"
#include "covkernels/philox.h"

namespace covkernels {

namespace {

struct StripCursor {  // where a work item's strip lives in one (C, H, W) sample
  int64_t row0, col0, tw, plane, w;
  int64_t offset(int64_t c) const { return c * plane + row0 * w + col0; }  // also the counter element
};

}  // namespace

void probe_tangent_out(Tensor& out, Counters ctr, int64_t stream, int64_t block) {
  check_cpu_contiguous(out, "out");
  STD_TORCH_CHECK(out.dim() == 4, "out must be (B, C, H, W)");
  const int64_t bsz = out.size(0), ch = out.size(1), h = out.size(2), w = out.size(3);
  check_block_tiles(block, h, w);
  if (out.numel() == 0) return;
  const Tiling tiling(block, h, w);
  CK_DISPATCH_FLOATING(out.scalar_type(), "probe_tangent", [&] {
    using acc_t = opmath_t<scalar_t>;
    const std::vector<acc_t> mt = dct_matrix<acc_t>(block, /*transpose=*/true);
    scalar_t* dst = ptr<scalar_t>(out);
    parallel_for(0, bsz * ch * tiling.items_per_plane, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(2 * block * tiling.tile);
      acc_t *a = buf.data(), *tmp = a + block * tiling.tile;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t plane = item / tiling.items_per_plane, local = item % tiling.items_per_plane;
        const int64_t b = plane / ch, c = plane % ch;
        const StripCursor s{tiling.row0(local), tiling.col0(local), tiling.width(local), h * w, w};
        const auto sample = static_cast<uint32_t>(ctr.sample_offset + b);
        for (int64_t i = 0; i < block; ++i)
          for (int64_t j = 0; j < s.tw; ++j)
            a[i * s.tw + j] = philox_rademacher_at(ctr.seed, static_cast<uint32_t>(s.offset(c) + i * w + j), sample,
                                                   static_cast<uint32_t>(ctr.step), static_cast<uint32_t>(stream));
        transform_strip(a, a, tmp, mt.data(), block, s.tw);
        scalar_t* o = dst + b * ch * h * w + s.offset(c);
        for (int64_t i = 0; i < block; ++i)
          for (int64_t j = 0; j < s.tw; ++j) o[i * w + j] = static_cast<scalar_t>(a[i * s.tw + j]);
      }
    });
  });
}

void structured_step_out(const Tensor& denoised, const Tensor& x_t, const Tensor& jvps,
                         Tensor& out, Counters ctr, const StepParams& p) {
  check_cpu_contiguous(x_t, "x_t");
  STD_TORCH_CHECK(x_t.dim() == 4, "x_t must be (B, C, H, W)");
  check_same(denoised, x_t, "denoised");
  check_same(out, x_t, "out");
  check_cpu_contiguous(jvps, "jvps");
  STD_TORCH_CHECK(jvps.dim() == 5 && jvps.size(0) >= 1 && same_sizes(jvps, x_t, 1),
              "jvps must be (P, B, C, H, W) with P >= 1 and (B, C, H, W) = ", shape_str(x_t), ", got ",
              shape_str(jvps));
  STD_TORCH_CHECK(jvps.scalar_type() == x_t.scalar_type(), "jvps must have the dtype of x_t");
  const int64_t k = p.block, probes = jvps.size(0);
  const int64_t bsz = x_t.size(0), ch = x_t.size(1), h = x_t.size(2), w = x_t.size(3);
  check_block_tiles(k, h, w);
  if (x_t.numel() == 0) return;
  const Tiling tiling(k, h, w);
  const int64_t sample_size = ch * h * w;
  CK_DISPATCH_FLOATING(x_t.scalar_type(), "structured_step", [&] {
    using acc_t = opmath_t<scalar_t>;
    const std::vector<acc_t> m = dct_matrix<acc_t>(k, false), mt = dct_matrix<acc_t>(k, true);
    const scalar_t *d_ptr = ptr<scalar_t>(denoised), *x_ptr = ptr<scalar_t>(x_t);
    const scalar_t* jv_ptr = ptr<scalar_t>(jvps);
    scalar_t* out_ptr = ptr<scalar_t>(out);
    const auto ratio = static_cast<acc_t>(p.ratio), var0 = static_cast<acc_t>(p.var0);
    const auto scale2 = static_cast<acc_t>(p.scale2);
    const auto step = static_cast<uint32_t>(ctr.step);
    parallel_for(0, bsz * tiling.items_per_plane, 1, [&](int64_t begin, int64_t end) {
      const int64_t n = k * tiling.tile;
      std::vector<acc_t> buf(4 * n);
      acc_t *est = buf.data(), *a = est + n, *coef = a + n, *tmp = coef + n;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / tiling.items_per_plane, local = item % tiling.items_per_plane;
        const StripCursor s{tiling.row0(local), tiling.col0(local), tiling.width(local), h * w, w};
        const auto sample = static_cast<uint32_t>(ctr.sample_offset + b);
        const int64_t tn = k * s.tw;
        // sum_p z_p * (F Jv_p) over the probes of channel c, added into est
        auto accumulate = [&](int64_t c) {
          for (int64_t pr = 0; pr < probes; ++pr) {
            const scalar_t* src = jv_ptr + pr * bsz * sample_size + b * sample_size + s.offset(c);
            for (int64_t i = 0; i < k; ++i)
              for (int64_t j = 0; j < s.tw; ++j) a[i * s.tw + j] = static_cast<acc_t>(src[i * w + j]);
            transform_strip(a, coef, tmp, m.data(), k, s.tw);
            const auto stream = static_cast<uint32_t>(p.probe_stream + pr);
            for (int64_t i = 0; i < k; ++i)
              for (int64_t j = 0; j < s.tw; ++j) {
                const auto elem = static_cast<uint32_t>(s.offset(c) + i * w + j);
                est[i * s.tw + j] += philox_rademacher_at(ctr.seed, elem, sample, step, stream) * coef[i * s.tw + j];
              }
          }
        };
        // est (sum over `count` estimates) -> std = sqrt(var0 + scale2 * clamp(mean)), in place
        auto to_std = [&](int64_t count) {
          const acc_t inv = acc_t(1) / static_cast<acc_t>(count);
          for (int64_t e = 0; e < tn; ++e) {
            acc_t c = std::max(est[e] * inv, acc_t(0));
            if (p.c_max) c = std::min(c, static_cast<acc_t>(*p.c_max));
            est[e] = std::sqrt(var0 + scale2 * c);
          }
        };
        // x_s = D + ratio (x_t - D) + F^T(std * xi) for channel c (or the noise alone)
        auto emit = [&](int64_t c) {
          const auto stream = static_cast<uint32_t>(p.noise_stream);
          for (int64_t i = 0; i < k; ++i)
            for (int64_t j = 0; j < s.tw; ++j) {
              const auto elem = static_cast<uint32_t>(s.offset(c) + i * w + j);
              a[i * s.tw + j] = est[i * s.tw + j] * philox_normal_at(ctr.seed, elem, sample, step, stream);
            }
          transform_strip(a, coef, tmp, mt.data(), k, s.tw);
          const int64_t base = b * sample_size + s.offset(c);
          for (int64_t i = 0; i < k; ++i)
            for (int64_t j = 0; j < s.tw; ++j) {
              const int64_t at = base + i * w + j;
              acc_t v = coef[i * s.tw + j];
              if (!p.noise_only) {
                const auto d = static_cast<acc_t>(d_ptr[at]);
                v += d + ratio * (static_cast<acc_t>(x_ptr[at]) - d);
              }
              out_ptr[at] = static_cast<scalar_t>(v);
            }
        };
        if (p.channel_average) {
          std::fill(est, est + tn, acc_t(0));
          for (int64_t c = 0; c < ch; ++c) accumulate(c);
          to_std(ch * probes);
          for (int64_t c = 0; c < ch; ++c) emit(c);
        } else {
          for (int64_t c = 0; c < ch; ++c) {
            std::fill(est, est + tn, acc_t(0));
            accumulate(c);
            to_std(probes);
            emit(c);
          }
        }
      }
    });
  });
}

}  // namespace covkernels
